//! A person's STOP, an operator's cancel and a deadline hold: requeueing a
//! backend or a message after an outage sends again only what failed to
//! send; a STOP that arrives after enqueue holds for anything not yet sent;
//! a delivery report moves only a transmission that was sent.

mod common;

use common::*;
use serde_json::json;

/// Every identity's outbound transmission, as "identity=status:last_error", in order.
async fn outcomes(db: &TestDb) -> String {
    db.scalar_str(
        "SELECT string_agg(c.identity || '=' || t.status || ':' || coalesce(t.last_error, ''),
                           ',' ORDER BY c.identity)
           FROM dbrouter.transmissions t JOIN dbrouter.connections c ON c.id = t.connection_id
           JOIN dbrouter.messages m ON m.id = t.message_id AND m.direction = 'O'",
    )
    .await
}

async fn sent_to(db: &TestDb) -> String {
    db.scalar_str(
        "SELECT coalesce(string_agg(identity, ',' ORDER BY identity), '')
           FROM dbrouter.database_backend_sends",
    )
    .await
}

/// `fixed`: the backend's config once the outage is over — `{}` (the send
/// recorded by the statement that records the S) or `own_commit` (the send
/// committed first, as a gateway's would be).
async fn requeue_after_an_outage(fixed: serde_json::Value) {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({"fail": {"error": "down"}}), None)
        .await;
    // +5 opted out before the broadcast; +1..+4 fail during the outage.
    db.exec("SELECT dbrouter.opt_out('gw', '+5')").await;
    let first = db
        .broadcast(
            "gw",
            &["+1", "+2", "+3", "+4", "+5"].map(String::from),
            "hi",
        )
        .await;
    // +6's broadcast is cancelled during the outage; +7's expires.
    let cancelled = db.broadcast("gw", &["+6".into()], "sale").await;
    db.exec(&format!("SELECT dbrouter.cancel_message({cancelled})"))
        .await;
    db.broadcast("gw", &["+7".into()], "today only").await;
    db.exec(
        "UPDATE dbrouter.transmissions t SET expires_at = now() - interval '1 second'
           FROM dbrouter.connections c WHERE c.id = t.connection_id AND c.identity = '+7'",
    )
    .await;
    db.exec("SELECT dbrouter.expire_due()").await;
    let mut cfg = test_config();
    cfg.max_attempts = 1;
    db.worker(cfg.clone()).await.drain().await.unwrap();
    // +8's message is queued when the outage ends; +8 sends STOP after
    // enqueue, before anything is sent.
    db.broadcast("gw", &["+8".into()], "later").await;
    db.exec("SELECT dbrouter.opt_out('gw', '+8')").await;
    assert_eq!(
        outcomes(&db).await,
        "+1=E:down,+2=E:down,+3=E:down,+4=E:down,+5=E:opted out,+6=E:cancelled,+7=E:expired,+8=Q:"
    );

    // The outage ends; the operator requeues the backend.
    db.exec(&format!(
        "UPDATE dbrouter.backends SET config = '{fixed}' WHERE name = 'gw'"
    ))
    .await;
    assert_eq!(
        db.scalar_i64("SELECT dbrouter.requeue_backend('gw')::bigint")
            .await,
        4,
        "only the four that failed to send"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT dbrouter.requeue_message({cancelled})::bigint"
        ))
        .await,
        0,
        "a cancelled message stays cancelled"
    );
    db.worker(cfg).await.drain().await.unwrap();
    assert_eq!(sent_to(&db).await, "+1,+2,+3,+4");
    assert_eq!(
        outcomes(&db).await,
        "+1=S:down,+2=S:down,+3=S:down,+4=S:down,+5=E:opted out,+6=E:cancelled,+7=E:expired,+8=E:opted out"
    );
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status FROM dbrouter.messages WHERE id = {first}"
        ))
        .await,
        "E",
        "one of its identities opted out"
    );

    // A "delivered" report for a transmission that was never sent (+5)
    // changes nothing; for one that was (+1) it is applied.
    db.exec(
        "INSERT INTO dbrouter.receipts (backend_id, transmission_id, outcome)
         SELECT t.backend_id, t.id, 'D'
           FROM dbrouter.transmissions t JOIN dbrouter.connections c ON c.id = t.connection_id
          WHERE c.identity IN ('+1', '+5')",
    )
    .await;
    db.exec("SELECT dbrouter.apply_receipts()").await;
    assert_eq!(
        outcomes(&db).await,
        "+1=D:down,+2=S:down,+3=S:down,+4=S:down,+5=E:opted out,+6=E:cancelled,+7=E:expired,+8=E:opted out"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn requeue_sends_only_what_failed_when_recorded_with_the_s() {
    requeue_after_an_outage(json!({})).await;
}

#[tokio::test]
async fn requeue_sends_only_what_failed_when_recorded_apart() {
    requeue_after_an_outage(json!({"own_commit": true})).await;
}

/// Replies are not held back by the STOP they answer: the confirmation of a
/// STOP that waits queued (its backend paused) goes out once it resumes.
#[tokio::test]
async fn a_queued_stop_confirmation_still_goes_out() {
    let db = TestDb::new().await;
    db.backend("sim", "database", json!({"own_commit": true}), None)
        .await;
    db.exec("SELECT dbrouter.pause_backend('sim', 'maintenance')")
        .await;
    let worker = db
        .worker_with(
            test_config(),
            vec![
                std::sync::Arc::new(dbrouter::apps::OptOut::new(db.pool.clone())),
                std::sync::Arc::new(dbrouter::apps::Echo),
            ],
        )
        .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+1', 'STOP')")
        .await;
    worker.drain().await.unwrap();
    assert_eq!(outcomes(&db).await, "+1=Q:", "the confirmation waits");
    db.exec("SELECT dbrouter.resume_backend('sim')").await;
    // (a worker that saw the pause notices the resume at its next reload)
    wait_until(
        "the confirmation is sent",
        std::time::Duration::from_secs(60),
        || async {
            worker.drain().await.unwrap();
            outcomes(&db).await != "+1=Q:"
        },
    )
    .await;
    assert_eq!(sent_to(&db).await, "+1");
    assert_eq!(outcomes(&db).await, "+1=S:");
    db.assert_invariants().await;
    db.drop().await;
}
