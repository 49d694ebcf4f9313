//! Outbound: batching, rollup, retries, partial failures, leases.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{test_config, wait_until, TestDb};
use dbrouter::apps::{App, AppError, Echo, OutgoingMessage};
use dbrouter::gateways::Outcome;
use dbrouter::outbound;
use serde_json::json;
use tokio::time::Instant;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Sizes of the claimed batches the database backend saw, per backend, in order.
async fn batch_sizes(db: &TestDb, backend: &str) -> Vec<i64> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT count(*) FROM dbrouter.database_backend_sends WHERE backend = $1
          GROUP BY batch ORDER BY min(id)",
    )
    .bind(backend)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(n,)| n).collect()
}

async fn status_of(db: &TestDb, message: i64) -> String {
    db.scalar_str(&format!(
        "SELECT status::text FROM dbrouter.messages WHERE id = {message}"
    ))
    .await
}

#[tokio::test]
async fn transmissions_are_batched_per_backend_across_messages() {
    let db = TestDb::new().await;
    db.backend("a", "database", json!({}), Some(4)).await;
    db.backend("b", "database", json!({}), Some(4)).await;
    let mut values = Vec::new();
    for i in 0..7 {
        values.push(format!("('a', '+a{i}', 'to a {i}')"));
    }
    for i in 0..6 {
        values.push(format!("('b', '+b{i}', 'to b {i}')"));
    }
    db.exec(&format!(
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES {}",
        values.join(",")
    ))
    .await;
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(batch_sizes(&db, "a").await, vec![4, 3]);
    assert_eq!(batch_sizes(&db, "b").await, vec![4, 2]);
    // One send call per message, even though a batch is recorded at once.
    assert_eq!(
        db.scalar_i64("SELECT count(DISTINCT call_id) FROM dbrouter.database_backend_sends")
            .await,
        13
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM (SELECT call_id FROM dbrouter.database_backend_sends GROUP BY call_id HAVING count(DISTINCT message_id) > 1) c").await,
        0
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE status = 'S'")
            .await,
        13
    );
    db.drop().await;
}

#[tokio::test]
async fn default_batch_is_200_and_configured_sizes_are_honoured() {
    let db = TestDb::new().await;
    db.backend("dflt", "database", json!({}), None).await;
    db.backend("own", "database", json!({}), Some(70)).await;
    db.broadcast("dflt", &ids("+d", 201), "hello").await;
    db.broadcast("own", &ids("+o", 201), "hello").await;
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(batch_sizes(&db, "dflt").await, vec![200, 1]);
    assert_eq!(batch_sizes(&db, "own").await, vec![70, 70, 61]);

    // A worker configured with another default (--batch-size 50).
    db.backend("cfg", "database", json!({}), None).await;
    db.broadcast("cfg", &ids("+c", 201), "hello").await;
    let mut cfg = test_config();
    cfg.batch_size = 50;
    db.worker(cfg).await.drain().await.unwrap();
    assert_eq!(batch_sizes(&db, "cfg").await, vec![50, 50, 50, 50, 1]);
    db.drop().await;
}

#[tokio::test]
async fn rollup_function_follows_rapidsms_order() {
    let db = TestDb::new().await;
    // (total, error, done, delivered) -> status
    let cases = [
        ((2, 0, 2, 2), "D"), // all D
        ((2, 0, 2, 1), "S"), // S + D
        ((2, 0, 2, 0), "S"), // all S
        ((2, 1, 1, 1), "E"), // E + D
        ((3, 1, 0, 0), "E"), // E + Q
        ((2, 0, 1, 0), "P"), // Q + S
        ((2, 0, 1, 1), "P"), // Q + D
    ];
    for ((t, e, d, dl), want) in cases {
        let got = db
            .scalar_str(&format!(
                "SELECT dbrouter.rollup({t}, {e}, {d}, {dl})::text"
            ))
            .await;
        assert_eq!(got, want, "rollup({t},{e},{d},{dl})");
    }
    db.drop().await;
}

#[tokio::test]
async fn message_status_rolls_up_from_real_transitions() {
    let db = TestDb::new().await;
    db.backend(
        "gw",
        "database",
        json!({"fail": {"identities": ["+bad"], "permanent": true, "error": "number barred"}}),
        None,
    )
    .await;
    let all_d = db
        .broadcast("gw", &["+1".into(), "+2".into()], "all d")
        .await;
    let s_d = db
        .broadcast("gw", &["+3".into(), "+4".into()], "s and d")
        .await;
    let any_e = db
        .broadcast("gw", &["+5".into(), "+bad".into()], "one e")
        .await;
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(status_of(&db, all_d).await, "S");
    db.exec(&format!(
        "SELECT dbrouter.mark_delivered(ARRAY(SELECT id FROM dbrouter.transmissions WHERE message_id IN ({all_d}, {any_e})))"
    ))
    .await;
    db.exec(&format!(
        "SELECT dbrouter.mark_delivered(ARRAY(SELECT min(id) FROM dbrouter.transmissions WHERE message_id = {s_d}))"
    ))
    .await;
    assert_eq!(status_of(&db, all_d).await, "D");
    assert_eq!(status_of(&db, s_d).await, "S");
    assert_eq!(status_of(&db, any_e).await, "E");
    assert_eq!(
        db.scalar_str("SELECT last_error FROM dbrouter.transmissions t JOIN dbrouter.connections c ON c.id = t.connection_id WHERE c.identity = '+bad'").await,
        "number barred"
    );

    // Q + S -> P: claim and finish only one of two transmissions.
    let q_s = db
        .broadcast("gw", &["+6".into(), "+7".into()], "q and s")
        .await;
    let backend_id = db
        .scalar_i64("SELECT id::bigint FROM dbrouter.backends WHERE name = 'gw'")
        .await as i32;
    let claimed = outbound::claim(&db.pool, backend_id, 1, 42, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(status_of(&db, q_s).await, "P", "claiming starts processing");
    let sent = [(
        claimed[0].transmission_id,
        Outcome::sent(Some("gw-1".into())),
    )];
    let n = outbound::finish(
        &db.pool,
        &test_config(),
        42,
        &sent,
        None,
        Instant::now() + Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(status_of(&db, q_s).await, "P");
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT external_id FROM dbrouter.transmissions WHERE id = {}",
            claimed[0].transmission_id
        ))
        .await,
        "gw-1",
        "the gateway's id is stored"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn failed_identities_give_partial_success_and_retries_never_resend_sent_ones() {
    let db = TestDb::new().await;
    db.backend(
        "gw",
        "database",
        json!({"fail": {"identities": ["+2", "+4"], "attempts": 2, "error": "gateway busy"}}),
        None,
    )
    .await;
    let msg = db.broadcast("gw", &ids("+", 6), "news").await;
    let worker = db.worker(test_config()).await;
    // First pass only: the failing identities are E (retryable), others S.
    let pass = worker.work_once().await.unwrap();
    assert_eq!(pass.claimed, 6);
    assert_eq!(status_of(&db, msg).await, "E");
    assert_eq!(
        db.scalar_i64(&format!("SELECT count(*) FROM dbrouter.transmissions WHERE message_id = {msg} AND status = 'E' AND due_at IS NOT NULL")).await,
        2
    );
    db.assert_invariants().await;
    // Retries (backoff 0 in tests) until they succeed on attempt 3.
    worker.drain().await.unwrap();
    assert_eq!(status_of(&db, msg).await, "S");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        6,
        "each identity recorded exactly once"
    );
    assert_eq!(
        db.scalar_str("SELECT string_agg(identity || '@' || attempt, ',' ORDER BY identity) FROM dbrouter.database_backend_sends WHERE attempt > 1").await,
        "+2@3,+4@3"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.attempts WHERE error = 'gateway busy' AND NOT final"
        )
        .await,
        4
    );
    db.assert_invariants().await;
    db.drop().await;
}

/// The counters are kept by triggers on `transmissions`, so a statement
/// dbrouter did not write (an operator's UPDATE in psql) rolls its messages
/// up too, and `dbrouter.recount` rebuilds counters someone broke by hand.
#[tokio::test]
async fn any_statement_on_transmissions_rolls_its_messages_up() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let msg = db.broadcast("gw", &ids("+", 3), "news").await;
    let sql = format!(
        "SELECT status || ':' || n_error || ':' || n_done || ':' || n_delivered || ':'
                || (sent_at IS NOT NULL) || ':' || (delivered_at IS NOT NULL)
           FROM dbrouter.messages WHERE id = {msg}"
    );
    assert_eq!(db.scalar_str(&sql).await, "Q:0:0:0:false:false");
    // By hand: one sent, one failed for good, in one statement.
    db.exec(&format!(
        "UPDATE dbrouter.transmissions t
            SET status = CASE WHEN c.identity = '+0' THEN 'S' ELSE 'E' END, due_at = NULL,
                sent_at = CASE WHEN c.identity = '+0' THEN now() END
           FROM dbrouter.connections c
          WHERE c.id = t.connection_id AND t.message_id = {msg} AND c.identity IN ('+0', '+1')"
    ))
    .await;
    assert_eq!(db.scalar_str(&sql).await, "E:1:1:0:false:false");
    // The failed one sent after all, the third too, then all delivered.
    db.exec(&format!(
        "UPDATE dbrouter.transmissions SET status = 'S', due_at = NULL, sent_at = now() WHERE message_id = {msg} AND status <> 'S'"
    ))
    .await;
    assert_eq!(db.scalar_str(&sql).await, "S:0:3:0:true:false");
    db.exec(&format!(
        "UPDATE dbrouter.transmissions SET status = 'D' WHERE message_id = {msg}"
    ))
    .await;
    assert_eq!(db.scalar_str(&sql).await, "D:0:3:3:true:true");
    db.assert_invariants().await;
    // Counters broken by hand (the triggers only add deltas), then rebuilt.
    db.exec(&format!(
        "UPDATE dbrouter.messages SET n_delivered = 0, n_done = 1, status = 'P' WHERE id = {msg}"
    ))
    .await;
    assert_eq!(
        db.scalar_str(&format!("SELECT dbrouter.recount({msg})::text"))
            .await,
        "D"
    );
    assert_eq!(db.scalar_str(&sql).await, "D:0:3:3:true:true");
    db.assert_invariants().await;
    db.drop().await;
}

/// Retries of transmissions that failed while a backend simulated failures
/// go out once it stops, and the message's counters (the retried E taken
/// back, the S added) come out right.
#[tokio::test]
async fn retries_after_failures_keep_the_counters_right() {
    let db = TestDb::new().await;
    db.backend(
        "gw",
        "database",
        json!({"fail": {"identities": ["+2", "+4"], "error": "gateway busy"}}),
        None,
    )
    .await;
    let msg = db.broadcast("gw", &ids("+", 6), "news").await;
    let pass = db.worker(test_config()).await.work_once().await.unwrap();
    assert_eq!(pass.claimed, 6);
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status || ':' || n_done || ':' || n_error FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        "E:4:2"
    );
    db.exec("UPDATE dbrouter.backends SET config = '{}' WHERE name = 'gw'")
        .await;
    let worker = db.worker(test_config()).await;
    let pass = worker.work_once().await.unwrap();
    assert_eq!(pass.claimed, 2, "the two retries, in one batch");
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status || ':' || n_done || ':' || n_error || ':' || (sent_at IS NOT NULL)
               FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        "S:6:0:true"
    );
    // Recorded once each, as one call (one message), at their second attempt.
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(s.identity || '@' || s.attempt || '=' || t.status || t.attempts,
                               ',' ORDER BY s.identity)
               FROM dbrouter.database_backend_sends s
               JOIN dbrouter.transmissions t ON t.id = s.transmission_id
              WHERE s.attempt > 1"
        )
        .await,
        "+2@2=S2,+4@2=S2"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(DISTINCT call_id) FROM dbrouter.database_backend_sends WHERE attempt = 2"
        )
        .await,
        1
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions
              WHERE due_at IS NOT NULL OR lease_token IS NOT NULL OR sent_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(worker.drain().await.unwrap(), 0, "nothing left to send");
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn retries_stop_after_max_attempts_and_requeue_starts_again() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({"fail": {"error": "down"}}), None)
        .await;
    let msg = db.broadcast("gw", &["+1".into()], "hi").await;
    let mut cfg = test_config();
    cfg.max_attempts = 3;
    db.worker(cfg.clone()).await.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(&format!("SELECT status || attempts || coalesce(due_at::text, '-') FROM dbrouter.transmissions WHERE message_id = {msg}")).await,
        "E3-"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts")
            .await,
        3
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts WHERE final")
            .await,
        1
    );

    // The operator fixes the backend and requeues its errored transmissions.
    db.exec("UPDATE dbrouter.backends SET config = '{}' WHERE name = 'gw'")
        .await;
    assert_eq!(
        db.scalar_i64("SELECT dbrouter.requeue_backend('gw')::bigint")
            .await,
        1
    );
    assert_eq!(status_of(&db, msg).await, "P");
    let worker = db.worker(cfg).await;
    worker.drain().await.unwrap();
    assert_eq!(status_of(&db, msg).await, "S");
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn requeue_message_reprocesses_an_errored_inbound() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'ping')")
        .await;
    // No apps can answer: a timeout-free failure is simplest with a bad app.
    struct Broken;
    #[async_trait]
    impl App for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        async fn handle(&self, _m: &mut dbrouter::apps::IncomingMessage) -> Result<bool, AppError> {
            Err(AppError::new("not configured"))
        }
    }
    db.worker_with(test_config(), vec![Arc::new(Broken)])
        .await
        .drain()
        .await
        .unwrap();
    let id = db
        .scalar_i64("SELECT id FROM dbrouter.messages WHERE direction = 'I'")
        .await;
    assert_eq!(status_of(&db, id).await, "E");
    assert_eq!(
        db.scalar_i64(&format!("SELECT dbrouter.requeue_message({id})::bigint"))
            .await,
        1
    );
    assert_eq!(status_of(&db, id).await, "Q");
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(status_of(&db, id).await, "R");
    db.drop().await;
}

#[tokio::test]
async fn a_finish_after_the_lease_expired_changes_nothing() {
    let db = TestDb::new().await;
    let backend = db.backend("gw", "database", json!({}), None).await;
    let msg = db.broadcast("gw", &["+1".into(), "+2".into()], "hi").await;
    let first = outbound::claim(&db.pool, backend, 10, 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    wait_until("the lease expires", Duration::from_secs(10), || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE due_at > now()")
            .await
            == 0
    })
    .await;
    let second = outbound::claim(&db.pool, backend, 10, 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(second.len(), 2, "expired leases are claimable again");
    assert!(second.iter().all(|c| c.attempts == 2));

    let cfg = test_config();
    let give_up = Instant::now() + Duration::from_secs(5);
    let late: Vec<_> = first
        .iter()
        .map(|c| (c.transmission_id, Outcome::permanent("late and wrong")))
        .collect();
    assert_eq!(
        outbound::finish(&db.pool, &cfg, 1, &late, None, give_up)
            .await
            .unwrap(),
        0
    );
    // A late "sent" from the first lease records no send of the database
    // engine either: the record is written only for rows the finish owns.
    let late_sent: Vec<_> = first
        .iter()
        .map(|c| (c.transmission_id, Outcome::sent(None)))
        .collect();
    assert_eq!(
        outbound::finish(&db.pool, &cfg, 1, &late_sent, Some("gw"), give_up)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        0
    );
    assert_eq!(
        db.scalar_i64(&format!("SELECT count(*) FROM dbrouter.transmissions WHERE message_id = {msg} AND status = 'P' AND lease_token = 2")).await,
        2
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts")
            .await,
        0
    );
    let ok: Vec<_> = second
        .iter()
        .map(|c| (c.transmission_id, Outcome::sent(None)))
        .collect();
    assert_eq!(
        outbound::finish(&db.pool, &cfg, 2, &ok, Some("gw"), give_up)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(identity || ':' || batch || ':' || attempt, ',' ORDER BY identity)
               FROM dbrouter.database_backend_sends"
        )
        .await,
        "+1:2:2,+2:2:2",
        "recorded once, by the batch that owned the rows"
    );
    assert_eq!(status_of(&db, msg).await, "S");
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn many_batches_of_one_broadcast_finishing_concurrently_end_sent() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), Some(10)).await;
    let msg = db.broadcast("gw", &ids("+", 2000), "big news").await;
    let mut cfg = test_config();
    cfg.concurrency = 8;
    let worker = db.worker(cfg).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let w = worker.clone();
            tokio::spawn(async move { w.drain().await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 2000, "every transmission claimed exactly once");
    assert_eq!(status_of(&db, msg).await, "S");
    assert_eq!(
        db.scalar_i64(
            "SELECT count(DISTINCT transmission_id) FROM dbrouter.database_backend_sends"
        )
        .await,
        2000
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        2000
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM dbrouter.messages WHERE id = {msg} AND sent_at IS NOT NULL"
        ))
        .await,
        1
    );
    db.assert_invariants().await;
    db.drop().await;
}

struct Censor;

#[async_trait]
impl App for Censor {
    fn name(&self) -> &str {
        "censor"
    }
    fn has_outgoing(&self) -> bool {
        true
    }
    async fn outgoing(&self, msg: &OutgoingMessage) -> Result<bool, AppError> {
        Ok(!msg.text.contains("secret"))
    }
}

#[tokio::test]
async fn an_app_can_cancel_an_outgoing_send() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let secret = db
        .broadcast("gw", &["+1".into(), "+2".into()], "the secret")
        .await;
    let fine = db.broadcast("gw", &["+1".into()], "fine").await;
    db.worker_with(test_config(), vec![Arc::new(Censor), Arc::new(Echo)])
        .await
        .drain()
        .await
        .unwrap();
    assert_eq!(status_of(&db, secret).await, "E");
    assert_eq!(status_of(&db, fine).await, "S");
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT DISTINCT last_error FROM dbrouter.transmissions WHERE message_id = {secret}"
        ))
        .await,
        "cancelled by app \"censor\""
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        1
    );
    db.drop().await;
}

#[tokio::test]
async fn misconfigured_and_disabled_backends_keep_their_messages_queued() {
    let db = TestDb::new().await;
    db.backend("broken", "nope", json!({}), None).await;
    db.backend("off", "database", json!({}), None).await;
    db.backend("ok", "database", json!({}), None).await;
    db.exec("UPDATE dbrouter.backends SET enabled = false WHERE name = 'off'")
        .await;
    let broken = db.broadcast("broken", &["+1".into()], "a").await;
    let off = db.broadcast("off", &["+1".into()], "b").await;
    let ok = db.broadcast("ok", &["+1".into()], "c").await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    assert_eq!(
        status_of(&db, ok).await,
        "S",
        "other backends are not held up"
    );
    assert_eq!(status_of(&db, broken).await, "Q");
    assert_eq!(status_of(&db, off).await, "Q");
    let report = dbrouter::admin::status(&db.pool, &test_config())
        .await
        .unwrap();
    assert!(
        report.contains("backend \"broken\" is misconfigured: unknown engine \"nope\""),
        "{report}"
    );
    assert!(report.contains("backend \"off\" is disabled"), "{report}");

    // Fixing the rows takes effect without restarting the worker.
    db.exec("UPDATE dbrouter.backends SET engine = 'database', enabled = true")
        .await;
    wait_until(
        "the fixed backends send",
        Duration::from_secs(30),
        || async {
            worker.drain().await.unwrap();
            db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE status = 'S'")
                .await
                == 3
        },
    )
    .await;
    db.drop().await;
}

#[tokio::test]
async fn a_slow_send_times_out_with_a_clear_error() {
    let db = TestDb::new().await;
    db.backend(
        "gw",
        "database",
        json!({"delay": "10s", "timeout": "200ms"}),
        None,
    )
    .await;
    let msg = db.broadcast("gw", &["+1".into()], "hi").await;
    let mut cfg = test_config();
    cfg.max_attempts = 1;
    db.worker(cfg).await.drain().await.unwrap();
    assert_eq!(status_of(&db, msg).await, "E");
    assert_eq!(
        db.scalar_str("SELECT error FROM dbrouter.attempts").await,
        "send timed out after 200ms"
    );
    db.drop().await;
}

#[tokio::test]
async fn lease_shorter_than_twice_the_timeout_is_refused() {
    let db = TestDb::new().await;
    let mut cfg = test_config();
    cfg.lease = Duration::from_secs(5);
    cfg.send_timeout = Duration::from_secs(3);
    let err =
        dbrouter::worker::Worker::new(db.pool.clone(), Default::default(), cfg, Default::default())
            .await
            .err()
            .expect("refused")
            .to_string();
    assert!(err.contains("must be at least twice"), "{err}");
    // A backend whose own timeout breaks the rule is reported, not used.
    db.backend("slow", "database", json!({"timeout": "1m"}), None)
        .await;
    let report = dbrouter::admin::status(&db.pool, &test_config())
        .await
        .unwrap();
    assert!(
        report.contains("backend \"slow\" is misconfigured"),
        "{report}"
    );
    db.drop().await;
}

#[tokio::test]
async fn an_engine_called_once_per_message_sends_every_message() {
    let db = TestDb::new().await;
    db.backend("log", "console", json!({}), Some(3)).await;
    let a = db.broadcast("log", &ids("+a", 5), "first").await;
    let b = db.broadcast("log", &ids("+b", 4), "second").await;
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(status_of(&db, a).await, "S");
    assert_eq!(status_of(&db, b).await, "S");
    db.assert_invariants().await;
    db.drop().await;
}
