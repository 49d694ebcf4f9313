//! Odd and hand-written data: the worker ends what it cannot handle E with a
//! reason and carries on; it never stops on it.

mod common;

use common::{test_config, TestDb};
use serde_json::json;

#[tokio::test]
async fn odd_but_valid_text_and_fields_round_trip_through_copy() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let odd = "tab\there, newline\nthere, backslash \\ and \\N, quote ' \" , emoji 🎉, RTL שלום, \r\n end";
    let long = format!("echo {}", "x".repeat(9_995));
    sqlx::query(
        "INSERT INTO dbrouter.inbox (backend, identity, text, fields) VALUES
           ('gw', '+1', $1, '{\"nested\": {\"a\": [1, null, \"\\u00e9\"]}, \"emoji\": \"🎉\"}'),
           ('gw', '+2', $2, NULL)",
    )
    .bind(format!("echo {odd}"))
    .bind(&long)
    .execute(&db.pool)
    .await
    .unwrap();
    db.worker(test_config()).await.drain().await.unwrap();
    let (sent,): (String,) =
        sqlx::query_as("SELECT text FROM dbrouter.database_backend_sends WHERE identity = '+1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(sent, odd, "the reply survives COPY's text format unchanged");
    assert_eq!(
        db.scalar_i64("SELECT length(text)::bigint FROM dbrouter.database_backend_sends WHERE identity = '+2'").await,
        9_995
    );
    db.drop().await;
}

#[tokio::test]
async fn a_hand_written_inbound_message_without_a_sender_ends_e() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("INSERT INTO dbrouter.messages (direction, status, text) VALUES ('I', 'Q', 'orphan')")
        .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'ping')")
        .await;
    db.worker(test_config()).await.drain().await.unwrap();
    let orphan = db
        .scalar_str("SELECT status || ':' || error FROM dbrouter.messages WHERE text = 'orphan'")
        .await;
    assert!(
        orphan.starts_with("E:this inbound message has no transmission"),
        "{orphan}"
    );
    assert_eq!(
        db.scalar_str("SELECT status::text FROM dbrouter.messages WHERE text = 'ping'")
            .await,
        "R"
    );
    db.drop().await;
}

#[tokio::test]
async fn an_outcome_the_database_refuses_ends_that_transmission_e_alone() {
    let db = TestDb::new().await;
    let backend = db.backend("gw", "database", json!({}), None).await;
    // Written by hand with counters that cannot take a sent transmission.
    db.exec(&format!(
        "WITH m AS (INSERT INTO dbrouter.messages (direction, status, text, n_total) VALUES ('O', 'Q', 'broken', 0) RETURNING id),
              c AS (INSERT INTO dbrouter.connections (backend_id, identity) VALUES ({backend}, '+9') RETURNING id)
         INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status, due_at)
         SELECT m.id, c.id, {backend}, 'Q', now() FROM m, c"
    ))
    .await;
    let good = db
        .broadcast("gw", &["+1".into(), "+2".into(), "+3".into()], "fine")
        .await;
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status::text FROM dbrouter.messages WHERE id = {good}"
        ))
        .await,
        "S"
    );
    let broken = db
        .scalar_str(
            "SELECT m.status || ':' || t.status || ':' || coalesce(t.due_at::text, 'final') || ':' || t.last_error
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id WHERE m.text = 'broken'",
        )
        .await;
    assert!(
        broken.starts_with("E:E:final:the database refused"),
        "{broken}"
    );
    assert!(broken.contains("message_counters"), "{broken}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts WHERE final")
            .await,
        1
    );
    db.drop().await;
}

/// The transmissions' reference check runs for every statement that
/// inserts them, dbrouter's own writers included, and no session can switch
/// it off (migration 0009 removed the setting that let one skip it).
#[tokio::test]
async fn every_writer_goes_through_the_reference_check() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    // The check, counting its runs (and letting every row through).
    db.exec(
        "CREATE TABLE public.check_runs (n integer);
         CREATE OR REPLACE FUNCTION dbrouter.transmissions_check_refs() RETURNS trigger
         LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.check_runs VALUES (1); RETURN NULL; END $$",
    )
    .await;
    let runs = || db.scalar_i64("SELECT count(*) FROM public.check_runs");
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'echo hi')")
        .await;
    assert_eq!(runs().await, 1, "the inbox");
    db.exec("INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('gw', '+2', 'hello')")
        .await;
    assert_eq!(runs().await, 2, "the outbox");
    db.broadcast("gw", &["+3".to_string(), "+4".to_string()], "all")
        .await;
    assert_eq!(runs().await, 3, "broadcast()");
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(runs().await, 4, "the worker's replies");
    assert_eq!(db.message_states().await, "IR1,OS3");
    // The setting that once skipped it changes nothing.
    sqlx::raw_sql(
        "BEGIN; SET LOCAL dbrouter.refs_checked = on;
         INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id)
         SELECT id, 888888, 1 FROM dbrouter.messages WHERE direction = 'I';
         COMMIT",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(runs().await, 5, "a session cannot skip it");
    db.drop().await;
}

/// Transmissions are checked once per statement (not by per-row foreign
/// keys); the rules still hold for hand-written SQL.
#[tokio::test]
async fn references_are_enforced_for_hand_written_sql() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'ping')")
        .await;
    let refused = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            let e = sqlx::query(sql).execute(&pool).await.unwrap_err();
            let db_err = e.as_database_error().expect("a database error").to_owned();
            assert_eq!(db_err.code().as_deref(), Some("23503"), "{sql}: {e}");
            db_err.message().to_string()
        }
    };
    let m = refused(
        "INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id)
         SELECT 999999, id, backend_id FROM dbrouter.connections",
    )
    .await;
    assert!(m.contains("message 999999, which does not exist"), "{m}");
    let m = refused(
        "INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id)
         SELECT id, 888888, 1 FROM dbrouter.messages",
    )
    .await;
    assert!(m.contains("connection 888888"), "{m}");
    let m =
        refused("INSERT INTO dbrouter.connections (backend_id, identity) VALUES (777, '+2')").await;
    assert!(m.contains("backend 777"), "{m}");
    let m = refused("DELETE FROM dbrouter.messages").await;
    assert!(m.contains("transmissions still refer to it"), "{m}");
    let m = refused("DELETE FROM dbrouter.connections").await;
    assert!(m.contains("transmissions still refer to it"), "{m}");
    let m = refused("UPDATE dbrouter.transmissions SET message_id = message_id").await;
    assert!(m.contains("cannot be changed"), "{m}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions")
            .await,
        1,
        "nothing written by the refused statements"
    );
    db.drop().await;
}
