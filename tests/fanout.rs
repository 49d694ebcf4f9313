//! Large broadcasts are stored in parts and fanned out by the workers
//! (migrations/0007_fanout.sql): accepted at once, every identity ends with
//! exactly one transmission, whatever happens to the worker expanding it.

mod common;

use common::{numbered, test_config, TestDb};
use serde_json::json;

async fn parts(db: &TestDb) -> String {
    db.scalar_str(
        "SELECT coalesce(string_agg(cardinality(identities)::text, ',' ORDER BY message_id, part), '')
           FROM dbrouter.fanouts",
    )
    .await
}

async fn transmissions(db: &TestDb) -> i64 {
    db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions")
        .await
}

#[tokio::test]
async fn a_large_broadcast_is_accepted_in_parts_and_expanded_by_the_workers() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    // 2,500 distinct identities, 100 of them given twice.
    let mut audience = numbered("+2557", 2500);
    audience.extend(numbered("+2557", 100));
    let msg = db.broadcast("gw", &audience, "big news").await;

    assert_eq!(
        parts(&db).await,
        "1000,1000,500",
        "sorted distinct identities in parts"
    );
    assert_eq!(transmissions(&db).await, 0, "nothing expanded by the call");
    assert_eq!(db.message_states().await, "OQ1");
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT parts || ' ' || identities FROM dbrouter.fanouts_waiting WHERE message_id = {msg}"
        ))
        .await,
        "3 2500"
    );
    db.assert_invariants().await;

    let worker = db.worker(test_config()).await;
    assert_eq!(
        worker.drain().await.unwrap(),
        2500,
        "each transmission claimed once"
    );
    assert_eq!(parts(&db).await, "");
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(DISTINCT connection_id) FROM dbrouter.transmissions
              WHERE message_id = {msg} AND status = 'S'"
        ))
        .await,
        2500
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        2500
    );
    assert_eq!(db.message_states().await, "OS1");
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn up_to_a_thousand_identities_are_written_by_the_call_itself() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.broadcast("gw", &numbered("+2557", 1000), "news").await;
    assert_eq!(parts(&db).await, "");
    assert_eq!(transmissions(&db).await, 1000);
    db.drop().await;
}

#[tokio::test]
async fn an_expansion_rolled_back_leaves_its_part_and_concurrent_ones_take_others() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let msg = db.broadcast("gw", &numbered("+2557", 2500), "news").await;

    // A worker that dies mid-part: its transaction is rolled back.
    let mut dying = db.pool.begin().await.unwrap();
    let (n,): (i32,) = sqlx::query_as("SELECT dbrouter.fan_out(1)")
        .fetch_one(&mut *dying)
        .await
        .unwrap();
    assert_eq!(n, 1000);
    // Meanwhile another worker skips the part being expanded.
    let mut other = db.pool.begin().await.unwrap();
    let (n,): (i32,) = sqlx::query_as("SELECT dbrouter.fan_out(5)")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert_eq!(n, 1500, "the two parts nobody holds");
    dying.rollback().await.unwrap();
    other.commit().await.unwrap();

    assert_eq!(parts(&db).await, "1000", "the rolled-back part waits");
    assert_eq!(transmissions(&db).await, 1500);
    db.assert_invariants().await;

    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    assert_eq!(parts(&db).await, "");
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(DISTINCT connection_id) FROM dbrouter.transmissions WHERE message_id = {msg}"
        ))
        .await,
        2500,
        "one transmission per identity"
    );
    assert_eq!(db.message_states().await, "OS1");
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn an_opt_out_recorded_after_the_call_applies_when_the_part_is_expanded() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let audience = numbered("+2557", 1500);
    let msg = db.broadcast("gw", &audience, "news").await;
    db.exec("SELECT dbrouter.opt_out('gw', '+2557001200')")
        .await;

    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(
            "SELECT t.status || ' ' || t.last_error FROM dbrouter.transmissions t
               JOIN dbrouter.connections c ON c.id = t.connection_id
              WHERE c.identity = '+2557001200'"
        )
        .await,
        "E opted out"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        1499
    );
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT n_error || ' ' || n_done || ' ' || status FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        "1 1499 E",
        "a broadcast that skipped anyone rolls up to E"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn cancelling_ends_the_parts_not_yet_expanded_too() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let msg = db.broadcast("gw", &numbered("+2557", 2500), "news").await;
    db.exec("SELECT dbrouter.fan_out(1)").await;
    assert_eq!(parts(&db).await, "1000,500");

    let ended = db
        .scalar_i64(&format!("SELECT dbrouter.cancel_message({msg})::bigint"))
        .await;
    assert_eq!(
        ended, 2500,
        "the expanded part's 1,000 and the waiting 1,500"
    );
    assert_eq!(parts(&db).await, "");
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions WHERE status = 'E' AND last_error = 'cancelled'"
        )
        .await,
        2500
    );
    let worker = db.worker(test_config()).await;
    assert_eq!(worker.drain().await.unwrap(), 0, "nothing left to send");
    assert_eq!(db.message_states().await, "OE1");
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn bad_input_in_a_large_broadcast_writes_nothing() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let mut audience = numbered("+2557", 1500);
    audience[1234] = " ".into();
    let err = sqlx::query("SELECT dbrouter.broadcast('gw', $1, 'news')")
        .bind(&audience)
        .execute(&db.pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("identity is empty"), "{err}");
    assert_eq!(parts(&db).await, "");
    assert_eq!(db.message_states().await, "");
    db.drop().await;
}

#[tokio::test]
async fn a_message_with_parts_waiting_cannot_be_deleted_and_its_key_is_kept() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let audience = numbered("+2557", 1500);
    let first: (i64,) =
        sqlx::query_as("SELECT dbrouter.broadcast('gw', $1, 'news', client_key => 'k1')")
            .bind(&audience)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let again: (i64,) =
        sqlx::query_as("SELECT dbrouter.broadcast('gw', $1, 'news', client_key => 'k1')")
            .bind(&audience)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(first, again);
    assert_eq!(parts(&db).await, "1000,500", "the repeat wrote nothing");

    let err = sqlx::query("DELETE FROM dbrouter.messages WHERE id = $1")
        .bind(first.0)
        .execute(&db.pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("still refer to it"), "{err}");
    db.drop().await;
}

#[tokio::test]
async fn a_part_the_database_refuses_waits_with_its_error_and_the_rest_goes_on() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let msg = db.broadcast("gw", &numbered("+2557", 2500), "news").await;
    // Nothing dbrouter writes should make this happen: a part broken by hand.
    db.exec(&format!(
        "UPDATE dbrouter.fanouts SET identities = ARRAY[''] WHERE message_id = {msg} AND part = 1"
    ))
    .await;
    db.exec("INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('gw', '+1', 'other')")
        .await;

    let worker = db.worker(test_config()).await;
    assert_eq!(
        worker.drain().await.unwrap(),
        1 + 1500,
        "the other message and the parts behind the broken one are sent"
    );
    assert_eq!(parts(&db).await, "1");
    let error = db
        .scalar_str("SELECT error FROM dbrouter.fanouts WHERE retry_at > now()")
        .await;
    assert!(error.contains("connection_identity_format"), "{error}");
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT failing_parts FROM dbrouter.fanouts_waiting WHERE message_id = {msg}"
        ))
        .await,
        1
    );
    let status = dbrouter::admin::status(&db.pool, &test_config())
        .await
        .unwrap();
    assert!(status.contains("1 part(s) failed to expand"), "{status}");

    // Mended, it goes at its next try.
    db.exec(&format!(
        "UPDATE dbrouter.fanouts SET identities = ARRAY['+19'], retry_at = NULL WHERE message_id = {msg}"
    ))
    .await;
    assert_eq!(worker.drain().await.unwrap(), 1);
    assert_eq!(parts(&db).await, "");
    db.drop().await;
}
