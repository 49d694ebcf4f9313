//! Traffic control and message lifecycle: rate limits, priorities,
//! fairness, pause, cancel, expiry, send-at, idempotent keys, opt-outs,
//! identity normalisation, throttling and retention.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{numbered, spawn_worker, test_config, wait_until, TestDb};
use dbrouter::apps::{Echo, OptOut};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(120);

/// Run an in-process worker until the returned token is cancelled.
fn run_in_background(
    worker: Arc<dbrouter::worker::Worker>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(async move {
        worker.run(s).await.expect("worker run");
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_holds_across_three_worker_processes_and_spares_other_backends() {
    let db = TestDb::new().await;
    db.backend("limited", "database", json!({}), None).await;
    db.backend("fast", "database", json!({}), None).await;
    const RATE: f64 = 25.0;
    const BURST: i64 = 5;
    const SLACK: f64 = 1.0;
    db.exec(&format!(
        "UPDATE dbrouter.backends SET rate_limit = {RATE}, rate_burst = {BURST} WHERE name = 'limited'"
    ))
    .await;
    let n = 150;
    db.broadcast("limited", &numbered("+2557", n), "limited")
        .await;
    db.broadcast("fast", &numbered("+2556", 1000), "fast").await;
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            spawn_worker(
                &db.url,
                &[
                    "--apps",
                    "echo",
                    "--poll-interval",
                    "200ms",
                    "--concurrency",
                    "2",
                ],
            )
        })
        .collect();
    wait_until("every transmission is sent", LONG, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status <> 'S'")
            .await
            == 0
    })
    .await;
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }

    // Every window of consecutive sends holds at most the burst plus the
    // rate times its length, with one second of slack: tokens are taken at
    // claim time and sends recorded a moment later, and on a loaded machine
    // a worker can stall in between (without a limiter, all 150 go out in
    // a fraction of a second and break this by over 100).
    let times: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM sent_at)::float8 FROM dbrouter.database_backend_sends
          WHERE backend = 'limited' ORDER BY sent_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(times.len(), n, "each transmission sent once");
    let mut worst = 0.0_f64;
    for i in 0..times.len() {
        for j in i..times.len() {
            let allowed = BURST as f64 + RATE * (times[j].0 - times[i].0 + SLACK);
            worst = worst.max((j - i + 1) as f64 - allowed);
        }
    }
    assert!(
        worst <= 0.0,
        "a window held {worst:.1} sends more than the limit allows"
    );
    let span = times[n - 1].0 - times[0].0;
    let rate = (n as f64 - BURST as f64 - RATE * SLACK) / span;
    assert!(
        rate <= RATE,
        "overall {rate:.1}/s over {span:.2}s exceeds the limit of {RATE}/s"
    );

    // The limited backend never held the fast one back: the fast backend
    // was done before the limited one had sent half of its messages.
    let limited_sent_when_fast_done = db
        .scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends
              WHERE backend = 'limited'
                AND sent_at <= (SELECT max(sent_at) FROM dbrouter.database_backend_sends
                                 WHERE backend = 'fast')",
        )
        .await;
    assert!(
        limited_sent_when_fast_done < (n / 2) as i64,
        "the fast backend finished only after {limited_sent_when_fast_done} limited sends"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_overtakes_a_20000_recipient_broadcast() {
    let db = TestDb::new().await;
    // A slow gateway: every batch takes 10 ms.
    db.backend("sim", "database", json!({"delay": "10ms"}), None)
        .await;
    let broadcast = db
        .broadcast("sim", &numbered("+2557", 20_000), "bulk")
        .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+255600000001', 'hello')")
        .await;
    let inbound = db
        .scalar_i64("SELECT max(id) FROM dbrouter.messages WHERE direction = 'I'")
        .await;
    let mut cfg = test_config();
    cfg.concurrency = 2;
    let worker = db.worker(cfg.clone()).await;
    let (stop, handle) = run_in_background(worker);
    wait_until("the broadcast is under way", LONG, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await
            >= 1000
    })
    .await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO dbrouter.outbox (backend, identity, text, in_response_to) VALUES ('sim', '+255600000001', 'your answer', $1)")
        .bind(inbound)
        .execute(&mut *tx)
        .await
        .unwrap();
    let (sends_before,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM dbrouter.database_backend_sends")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    wait_until("everything is sent", LONG, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE due_at IS NOT NULL")
            .await
            == 0
    })
    .await;
    stop.cancel();
    handle.await.unwrap();

    let reply_send = db
        .scalar_i64("SELECT id FROM dbrouter.database_backend_sends WHERE text = 'your answer'")
        .await;
    let bulk_between = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM dbrouter.database_backend_sends
              WHERE message_id = {broadcast} AND id < {reply_send}"
        ))
        .await
        - sends_before;
    // Batches already claimed when the reply arrived may finish first, plus
    // at most one more per lane; never the rest of the broadcast.
    let bound = 2 * cfg.concurrency as i64 * cfg.batch_size as i64;
    assert!(
        bulk_between <= bound,
        "{bulk_between} broadcast sends went between the reply's enqueue and its send (bound {bound})"
    );
    assert!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM dbrouter.database_backend_sends WHERE message_id = {broadcast} AND id > {reply_send}"
        ))
        .await
            > 10_000,
        "the reply went out before the broadcast finished"
    );
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status::text FROM dbrouter.messages WHERE id = {broadcast}"
        ))
        .await,
        "S"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_busy_backend_does_not_starve_the_others() {
    let db = TestDb::new().await;
    db.backend("busy", "database", json!({}), Some(100)).await;
    db.backend("quiet", "database", json!({}), Some(100)).await;
    db.broadcast("busy", &numbered("+2557", 3000), "lots").await;
    db.broadcast("quiet", &numbered("+2558", 20), "a few").await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    let busy_before_quiet_done = db
        .scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends
              WHERE backend = 'busy'
                AND id < (SELECT max(id) FROM dbrouter.database_backend_sends WHERE backend = 'quiet')",
        )
        .await;
    assert!(
        busy_before_quiet_done <= 100,
        "{busy_before_quiet_done} busy sends went before the quiet backend's 20 were done"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
            .await,
        3020
    );
    db.drop().await;
}

#[tokio::test]
async fn pause_keeps_messages_queued_until_resume() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({}), None).await;
    // The worker loads the backends before the pause: the claim itself must
    // still refuse to take the paused backend's messages.
    let worker = db.worker(test_config()).await;
    db.exec("SELECT dbrouter.pause_backend('sim', 'gateway maintenance')")
        .await;
    let msg = db.broadcast("sim", &numbered("+2557", 10), "hold on").await;
    assert_eq!(worker.drain().await.unwrap(), 0);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        0
    );
    let status = dbrouter::admin::status(&db.pool, &dbrouter::WorkerConfig::default())
        .await
        .unwrap();
    assert!(
        status.contains("\"sim\" is paused (gateway maintenance)"),
        "{status}"
    );

    db.exec("SELECT dbrouter.resume_backend('sim')").await;
    // (a worker that saw the pause notices the resume at its next reload)
    wait_until("the resumed backend sends", Duration::from_secs(60), || {
        let worker = worker.clone();
        async move { worker.drain().await.unwrap() == 10 }
    })
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        10
    );
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status::text FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        "S"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_mid_broadcast_ends_unsent_and_keeps_sent() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({"delay": "20ms"}), Some(50))
        .await;
    let msg = db.broadcast("sim", &numbered("+2557", 3000), "oops").await;
    let worker = db.worker(test_config()).await;
    let (stop, handle) = run_in_background(worker);
    wait_until("some of the broadcast is sent", LONG, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
            .await
            >= 200
    })
    .await;
    let ended = db
        .scalar_i64(&format!("SELECT dbrouter.cancel_message({msg})::bigint"))
        .await;
    wait_until("nothing is in flight", LONG, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE due_at IS NOT NULL")
            .await
            == 0
    })
    .await;
    stop.cancel();
    handle.await.unwrap();

    let sent = db
        .scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
        .await;
    let cancelled = db
        .scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions WHERE status = 'E' AND last_error = 'cancelled'",
        )
        .await;
    assert!((200..3000).contains(&sent), "sent {sent}");
    assert_eq!(
        sent + cancelled,
        3000,
        "every transmission is S or cancelled"
    );
    assert!(ended >= cancelled - 2 * 50, "cancel ended {ended} at once");
    // No cancelled transmission reached the gateway; every S did, once.
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        sent
    );
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status::text || (cancelled_at IS NOT NULL)::text FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        "Etrue"
    );
    db.assert_invariants().await;
    let err = sqlx::query("SELECT dbrouter.cancel_message(999999)")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no message with id 999999"),
        "{err}"
    );
    db.drop().await;
}

#[tokio::test]
async fn past_their_deadline_messages_end_expired_instead_of_going_out() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({}), None).await;
    db.exec("SELECT dbrouter.pause_backend('sim', 'outage')")
        .await;
    db.exec(
        "INSERT INTO dbrouter.outbox (backend, identity, text, expires_at)
         VALUES ('sim', '+255700000001', 'stale soon', now() + interval '300 ms'),
                ('sim', '+255700000002', 'still fine', now() + interval '1 hour')",
    )
    .await;
    wait_until("the first deadline passes", LONG, || async {
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions WHERE expires_at < clock_timestamp()",
        )
        .await
            == 1
    })
    .await;
    db.exec("SELECT dbrouter.resume_backend('sim')").await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(m.text || ':' || t.status || ':' || coalesce(t.last_error, ''), ',' ORDER BY m.id)
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id"
        )
        .await,
        "stale soon:E:expired,still fine:S:"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        1
    );
    db.assert_invariants().await;

    // The backend's default deadline for replies, also for replies the
    // worker writes itself.
    db.exec("UPDATE dbrouter.backends SET expire_replies_after = '1 hour', expire_after = '1 day'")
        .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+255700000003', 'ping')")
        .await;
    worker.drain().await.unwrap();
    db.broadcast("sim", &numbered("+2559", 1), "bulk").await;
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(m.text || ':' || (t.expires_at - m.created_at)::text, ',' ORDER BY m.id)
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id
              WHERE m.text IN ('pong', 'bulk')"
        )
        .await,
        "pong:01:00:00,bulk:1 day"
    );
    db.drop().await;
}

#[tokio::test]
async fn nothing_goes_out_before_send_at() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({}), None).await;
    let worker = db.worker(test_config()).await;
    let _broadcast: (i64,) = sqlx::query_as(
        "SELECT dbrouter.broadcast('sim', ARRAY['+255700000001', '+255700000002'], 'later',
                                   send_at => now() + interval '2 s')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    db.exec(
        "INSERT INTO dbrouter.outbox (backend, identity, text, send_at)
         VALUES ('sim', '+255700000003', 'later too', now() + interval '2 s')",
    )
    .await;
    assert_eq!(worker.drain().await.unwrap(), 0, "nothing is due yet");
    // Both messages' send_at (the outbox one is a few ms later than the
    // broadcast's; waiting for the broadcast's alone made this test flaky).
    wait_until("send_at passes", LONG, || async {
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages
              WHERE send_at IS NOT NULL AND send_at <= clock_timestamp()",
        )
        .await
            == 2
    })
    .await;
    assert_eq!(worker.drain().await.unwrap(), 3);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends s
               JOIN dbrouter.messages m ON m.id = s.message_id
              WHERE s.sent_at >= m.send_at"
        )
        .await,
        3,
        "every send happened at or after its send_at"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_keys_make_enqueue_idempotent_under_concurrency() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({}), None).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let (id,): (i64,) = sqlx::query_as(
                "SELECT dbrouter.broadcast('sim', $1, 'once', client_key => 'campaign-42')",
            )
            .bind(vec![
                format!("+25570000000{i}"),
                "+255700000009".to_string(),
            ])
            .fetch_one(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO dbrouter.outbox (backend, identity, text, client_key)
                 VALUES ('sim', '+255711111111', 'single', 'order-7')",
            )
            .execute(&pool)
            .await
            .unwrap();
            id
        }));
    }
    let mut returned = Vec::new();
    for t in tasks {
        returned.push(t.await.unwrap());
    }
    returned.dedup();
    assert_eq!(returned.len(), 1, "every call returned the first message");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE client_key = 'campaign-42'")
            .await,
        1
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM dbrouter.transmissions WHERE message_id = {}",
            returned[0]
        ))
        .await,
        2,
        "only the first call's identities"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE client_key = 'order-7'")
            .await,
        1
    );
    // A key repeated inside one statement counts once too.
    db.exec(
        "INSERT INTO dbrouter.outbox (backend, identity, text, client_key)
         VALUES ('sim', '+255722222222', 'a', 'k'), ('sim', '+255733333333', 'b', 'k')",
    )
    .await;
    assert_eq!(
        db.scalar_str("SELECT string_agg(text, ',') FROM dbrouter.messages WHERE client_key = 'k'")
            .await,
        "a"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions")
            .await,
        4
    );
    db.drop().await;
}

#[tokio::test]
async fn stop_opts_out_and_start_opts_back_in() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({}), None).await;
    let worker = db
        .worker_with(
            test_config(),
            vec![Arc::new(OptOut::new(db.pool.clone())), Arc::new(Echo)],
        )
        .await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text)
         VALUES ('sim', '+255700000001', '  Stop! '), ('sim', '+255700000003', 'stop the music')",
    )
    .await;
    worker.drain().await.unwrap();
    // The confirmation still goes to the person who said STOP.
    assert_eq!(
        db.scalar_str("SELECT string_agg(identity || ':' || left(text, 17), ',') FROM dbrouter.database_backend_sends")
            .await,
        "+255700000001:You are unsubscri"
    );
    assert_eq!(
        db.scalar_str("SELECT string_agg(identity || ':' || keyword, ',') FROM dbrouter.opted_out")
            .await,
        "+255700000001:stop"
    );

    let msg = db
        .broadcast(
            "sim",
            &["+255700000001".to_string(), "+255700000002".to_string()],
            "news",
        )
        .await;
    db.exec(
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sim', '+255700000001', 'direct')",
    )
    .await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(c.identity || ':' || t.status || ':' || coalesce(t.last_error, ''), ',' ORDER BY c.identity, m.id)
               FROM dbrouter.transmissions t
               JOIN dbrouter.connections c ON c.id = t.connection_id
               JOIN dbrouter.messages m ON m.id = t.message_id
              WHERE m.text IN ('news', 'direct')"
        )
        .await,
        "+255700000001:E:opted out,+255700000001:E:opted out,+255700000002:S:"
    );
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status::text FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        "E"
    );
    db.assert_invariants().await;

    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+255700000001', 'START')")
        .await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.opt_outs")
            .await,
        0
    );
    db.broadcast("sim", &["+255700000001".to_string()], "welcome back")
        .await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends WHERE text = 'welcome back'"
        )
        .await,
        1
    );
    db.drop().await;
}

#[tokio::test]
async fn e164_normalisation_unifies_connections_and_refuses_bad_numbers() {
    let db = TestDb::new().await;
    db.backend("tz", "database", json!({}), None).await;
    db.exec("UPDATE dbrouter.backends SET number_format = 'e164', country_code = '255'")
        .await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('tz', '0712 345 678', 'hi')",
    )
    .await;
    db.broadcast(
        "tz",
        &[
            "+255712345678".to_string(),
            "00255 712-345-678".to_string(),
            "(0712) 345.678".to_string(),
        ],
        "one person",
    )
    .await;
    assert_eq!(
        db.scalar_str("SELECT string_agg(identity, ',') FROM dbrouter.connections")
            .await,
        "+255712345678"
    );
    assert_eq!(
        db.scalar_i64("SELECT n_total::bigint FROM dbrouter.messages WHERE text = 'one person'")
            .await,
        1
    );
    let before = db
        .scalar_i64("SELECT count(*) FROM dbrouter.messages")
        .await;
    for bad in [
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('tz', '+255712345678', 'ok'), ('tz', '12ab', 'bad')",
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('tz', '0712', 'short')",
        "SELECT dbrouter.broadcast('tz', ARRAY['+255712345678', '+0712345678'], 'x')",
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(bad.to_string()))
            .execute(&db.pool)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is not a valid phone number for backend 'tz'"),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        before,
        "bad input wrote nothing"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_throttling_gateway_pauses_its_backend_without_using_up_attempts() {
    let db = TestDb::new().await;
    db.backend(
        "sim",
        "database",
        json!({"fail": {"retry_after": "400ms", "error": "429 Too Many Requests"}}),
        None,
    )
    .await;
    db.backend("other", "database", json!({}), None).await;
    let worker = db.worker(test_config()).await;
    db.broadcast("sim", &numbered("+2557", 3), "hi").await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions
              WHERE status = 'Q' AND attempts = 0 AND due_at > now()"
        )
        .await,
        3,
        "throttled: queued again for later, no attempt used"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.backends WHERE name = 'sim' AND throttled_until > now()"
        )
        .await,
        1
    );
    // Other backends carry on meanwhile.
    db.broadcast("other", &numbered("+2558", 2), "meanwhile")
        .await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends WHERE backend = 'other'"
        )
        .await,
        2
    );
    // The gateway recovers (its config reloads on the next poll).
    db.exec("UPDATE dbrouter.backends SET config = '{}' WHERE name = 'sim'")
        .await;
    wait_until("the Retry-After passes", LONG, || async {
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.backends WHERE name = 'sim' AND throttled_until < clock_timestamp()",
        )
        .await
            == 1
    })
    .await;
    wait_until("the throttled messages are sent", LONG, || async {
        worker.drain().await.unwrap();
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
            .await
            == 5
    })
    .await;
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(DISTINCT t.attempts || '/' || a.attempt || '/' || a.error, ',')
               FROM dbrouter.transmissions t JOIN dbrouter.attempts a ON a.transmission_id = t.id"
        )
        .await,
        "1/1/429 Too Many Requests"
    );
    db.drop().await;
}

#[tokio::test]
async fn purge_removes_old_final_messages_and_keeps_the_rest() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({}), None).await;
    db.backend("down", "database", json!({}), None).await;
    db.backend(
        "bad",
        "database",
        json!({"fail": {"permanent": true, "error": "barred"}}),
        None,
    )
    .await;
    db.exec("SELECT dbrouter.pause_backend('down', 'kept in flight')")
        .await;
    let worker = db.worker(test_config()).await;
    // old: two answered inbound (R) with their replies (S), a sent
    // broadcast, a failed send (E, with attempt history), one in flight
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+255700000001', 'ping'),
                                                                   ('sim', '+255700000002', 'ping')",
    )
    .await;
    db.broadcast("sim", &numbered("+2557", 3), "old news").await;
    db.broadcast("bad", &numbered("+2559", 1), "failed").await;
    db.broadcast("down", &numbered("+2558", 2), "never sent")
        .await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts")
            .await,
        1
    );
    // Age everything but the second inbound's reply: its inbound must stay
    // (a kept message answers it).
    db.exec(
        "UPDATE dbrouter.messages SET created_at = now() - interval '40 days', updated_at = now() - interval '40 days'
          WHERE in_response_to IS DISTINCT FROM (SELECT max(id) FROM dbrouter.messages WHERE direction = 'I')",
    )
    .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+255700000009', 'young')")
        .await;
    worker.drain().await.unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(["purge", "--older-than", "30d", "--batch-size", "2"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("purged 4 messages"), "{stdout}");
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(direction || ':' || text, ',' ORDER BY id) FROM dbrouter.messages"
        )
        .await,
        "I:ping,O:never sent,O:pong,I:young"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions t
              WHERE NOT EXISTS (SELECT 1 FROM dbrouter.messages m WHERE m.id = t.message_id)"
        )
        .await,
        0
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts")
            .await,
        0
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends s
              WHERE NOT EXISTS (SELECT 1 FROM dbrouter.transmissions t WHERE t.id = s.transmission_id)"
        )
        .await,
        0
    );
    // Nothing left to purge: a second run is a no-op.
    let (n, last): (i32, Option<i64>) =
        sqlx::query_as("SELECT purged, last_id FROM dbrouter.purge_batch('30 days')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((n, last.is_some()), (0, true));
    db.drop().await;
}
