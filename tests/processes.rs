//! Worker processes: several at once, killed, stopped, disconnected.

mod common;

use std::process::Child;
use std::time::Duration;

use common::{spawn_worker, wait_until, Proc, TestDb};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal worker");
}

/// Wait for a child to exit, without blocking the runtime.
async fn wait_exit(mut child: Proc, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait worker") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("worker did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn two_worker_processes_process_each_message_exactly_once() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let values: Vec<String> = (0..2000)
        .map(|i| format!("('gw', '+{i}', 'echo {i}')"))
        .collect();
    db.exec(&format!(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES {}",
        values.join(",")
    ))
    .await;
    let args = [
        "--apps",
        "echo",
        "--concurrency",
        "3",
        "--batch-size",
        "50",
        "--poll-interval",
        "200ms",
    ];
    let workers = [spawn_worker(&db.url, &args), spawn_worker(&db.url, &args)];
    wait_until("every reply is sent", Duration::from_secs(120), || async {
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'O' AND status = 'S'",
        )
        .await
            == 2000
    })
    .await;
    for w in &workers {
        signal(w, Signal::SIGTERM);
    }
    for w in workers {
        assert!(
            wait_exit(w, Duration::from_secs(30)).await.success(),
            "SIGTERM exits 0"
        );
    }
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status = 'R'"
        )
        .await,
        2000
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE direction = 'O'")
            .await,
        2000
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(DISTINCT in_response_to) FROM dbrouter.messages WHERE direction = 'O'"
        )
        .await,
        2000,
        "one reply per inbound message"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        2000,
        "no send twice"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends s JOIN dbrouter.messages m ON m.id = s.message_id JOIN dbrouter.messages i ON i.id = m.in_response_to WHERE i.text = 'echo ' || m.text").await,
        2000
    );
    db.drop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_send_loses_nothing() {
    let db = TestDb::new().await;
    // The first worker's sends hang (5s) past its lease (2s).
    db.backend("gw", "database", json!({"delay": "5s"}), None)
        .await;
    let identities: Vec<String> = (0..30).map(|i| format!("+{i}")).collect();
    db.broadcast("gw", &identities, "important").await;
    let args = [
        "--lease",
        "2s",
        "--send-timeout",
        "1s",
        "--poll-interval",
        "200ms",
        "--retry-backoff",
        "0s",
    ];
    let first = spawn_worker(&db.url, &args);
    db.wait_claimed(30).await;
    signal(&first, Signal::SIGKILL);
    let _ = wait_exit(first, Duration::from_secs(10)).await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'P'")
            .await,
        30
    );

    db.exec("UPDATE dbrouter.backends SET config = '{}'").await;
    let second = spawn_worker(&db.url, &args);
    wait_until(
        "the lease expires and another worker sends",
        Duration::from_secs(60),
        || async {
            db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
                .await
                == 30
        },
    )
    .await;
    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(second, Duration::from_secs(30)).await.success());
    assert_eq!(
        db.scalar_str("SELECT status::text FROM dbrouter.messages")
            .await,
        "S"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(DISTINCT transmission_id) FROM dbrouter.database_backend_sends"
        )
        .await,
        30,
        "every identity was sent"
    );
    assert_eq!(
        db.scalar_i64("SELECT min(attempts)::bigint FROM dbrouter.transmissions")
            .await,
        2
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn sigterm_finishes_the_in_flight_batch_then_exits_0() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({"delay": "1s"}), None)
        .await;
    let identities: Vec<String> = (0..20).map(|i| format!("+{i}")).collect();
    db.broadcast("gw", &identities, "hi").await;
    let worker = spawn_worker(&db.url, &["--poll-interval", "200ms"]);
    db.wait_claimed(20).await;
    signal(&worker, Signal::SIGTERM);
    assert!(
        wait_exit(worker, Duration::from_secs(30)).await.success(),
        "exit 0"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
            .await,
        20
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        20
    );
    db.drop().await;
}

#[tokio::test]
async fn a_worker_reconnects_and_listens_again_after_its_connections_are_cut() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    // A long poll interval: only a notification can wake it quickly.
    let worker = spawn_worker(&db.url, &["--apps", "echo", "--poll-interval", "1h"]);
    wait_until("the worker listens", Duration::from_secs(60), || async {
        listener_pid(&db).await != 0
    })
    .await;
    let old = listener_pid(&db).await;
    db.exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{}' AND application_name = 'dbrouter' AND pid <> pg_backend_pid()",
        db.name
    ))
    .await;
    wait_until(
        "the worker listens again",
        Duration::from_secs(60),
        || async {
            let now = listener_pid(&db).await;
            now != 0 && now != old
        },
    )
    .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'ping')")
        .await;
    wait_until(
        "the new message is answered",
        Duration::from_secs(60),
        || async {
            db.scalar_i64(
                "SELECT count(*) FROM dbrouter.messages WHERE direction = 'O' AND status = 'S'",
            )
            .await
                == 1
        },
    )
    .await;
    signal(&worker, Signal::SIGTERM);
    assert!(wait_exit(worker, Duration::from_secs(30)).await.success());
    db.drop().await;
}

async fn listener_pid(db: &TestDb) -> i64 {
    db.scalar_i64(&format!(
        "SELECT coalesce(max(pid), 0)::bigint FROM pg_stat_activity
          WHERE datname = '{}' AND query LIKE 'LISTEN%'",
        db.name
    ))
    .await
}

#[tokio::test]
async fn poll_only_mode_works_without_listen() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let worker = spawn_worker(
        &db.url,
        &["--apps", "echo", "--poll-only", "--poll-interval", "100ms"],
    );
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'ping')")
        .await;
    wait_until(
        "the message is answered by polling",
        Duration::from_secs(60),
        || async {
            db.scalar_i64(
                "SELECT count(*) FROM dbrouter.messages WHERE direction = 'O' AND status = 'S'",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(listener_pid(&db).await, 0, "poll-only workers never LISTEN");
    signal(&worker, Signal::SIGTERM);
    assert!(wait_exit(worker, Duration::from_secs(30)).await.success());
    db.drop().await;
}

#[tokio::test]
async fn replies_handed_to_a_worker_that_dies_are_sent_by_another_after_the_lease() {
    let db = TestDb::new().await;
    // The first worker commits the replies (P under its lease) and then hangs
    // in the send; it is killed there. (own_commit: sent after the commit,
    // like a gateway; by default the database engine sends in the inbound
    // transaction and there is nothing to hand over.)
    db.backend(
        "gw",
        "database",
        json!({"own_commit": true, "delay": "5s"}),
        None,
    )
    .await;
    let values: Vec<String> = (0..10).map(|i| format!("('gw', '+{i}', 'ping')")).collect();
    db.exec(&format!(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES {}",
        values.join(",")
    ))
    .await;
    let args = [
        "--apps",
        "echo",
        "--lease",
        "2s",
        "--send-timeout",
        "1s",
        "--poll-interval",
        "200ms",
    ];
    let first = spawn_worker(&db.url, &args);
    wait_until(
        "the inbound batch commits with its replies leased",
        Duration::from_secs(60),
        || async {
            db.scalar_i64(
                "SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status = 'R'",
            )
            .await
                == 10
                && db
                    .scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'P'")
                    .await
                    == 10
        },
    )
    .await;
    signal(&first, Signal::SIGKILL);
    let _ = wait_exit(first, Duration::from_secs(10)).await;
    db.exec("UPDATE dbrouter.backends SET config = '{\"own_commit\": true}'")
        .await;
    let second = spawn_worker(&db.url, &args);
    wait_until(
        "another worker sends the replies",
        Duration::from_secs(60),
        || async {
            db.scalar_i64(
                "SELECT count(*) FROM dbrouter.messages WHERE direction = 'O' AND status = 'S'",
            )
            .await
                == 10
        },
    )
    .await;
    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(second, Duration::from_secs(30)).await.success());
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.direction = 'O' AND t.attempts = 2").await,
        10,
        "the handed-off attempt counts as the first"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(DISTINCT transmission_id) FROM dbrouter.database_backend_sends"
        )
        .await,
        10
    );
    db.drop().await;
}

/// A worker's pool pings a connection only after it sat idle for a second
/// (connections::connect_lazy): one that died while idle that long is replaced
/// before use, not handed to a batch to fail on.
#[tokio::test]
async fn a_connection_that_died_while_idle_is_replaced_before_use() {
    let db = TestDb::new().await;
    let pool = dbrouter::connections::connect_lazy(&db.url, 1, Default::default()).unwrap();
    let (before,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    db.exec(&format!("SELECT pg_terminate_backend({before})"))
        .await;
    // The state under test is the idle time itself, so it is slept through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (after,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the dead connection was replaced, not used");
    assert_ne!(before, after);
    pool.close().await;
    db.drop().await;
}
