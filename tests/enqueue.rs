//! Enqueueing by plain SQL: inbox, outbox, broadcast, validation, NOTIFY.

mod common;

use common::TestDb;
use serde_json::json;
use sqlx::postgres::PgListener;

#[tokio::test]
async fn inbox_insert_creates_connection_message_and_transmission() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text, external_id, fields)
         VALUES ('gw', '+255700000001', 'hello', 'ext-1', '{\"k\": 1}'),
                ('gw', '+255700000001', 'again', NULL, NULL),
                ('gw', '+255700000002', 'hi', NULL, NULL)",
    )
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.connections")
            .await,
        2
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status = 'Q'"
        )
        .await,
        3
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmissions WHERE status = 'Q' AND due_at IS NULL"
        )
        .await,
        3
    );
    assert_eq!(
        db.scalar_str("SELECT external_id || ':' || (fields->>'k') FROM dbrouter.messages WHERE text = 'hello'").await,
        "ext-1:1"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.inbox").await,
        0,
        "inbox is a staging table"
    );
    db.drop().await;
}

#[tokio::test]
async fn copy_into_inbox_and_outbox_works_set_wise() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("gw\t+1{i:05}\tmsg {i}\n"));
    }
    let mut copy = conn
        .copy_in_raw("COPY dbrouter.inbox (backend, identity, text) FROM STDIN")
        .await
        .unwrap();
    copy.send(data.clone().into_bytes()).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 1000);
    let mut copy = conn
        .copy_in_raw("COPY dbrouter.outbox (backend, identity, text) FROM STDIN")
        .await
        .unwrap();
    copy.send(data.into_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    drop(conn);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.connections")
            .await,
        1000
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE direction = 'I'")
            .await,
        1000
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.direction = 'O' AND t.due_at IS NOT NULL").await,
        1000
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.inbox").await,
        0
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.outbox").await,
        0
    );
    db.drop().await;
}

#[tokio::test]
async fn broadcast_dedupes_identities_and_returns_the_message() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let identities: Vec<String> = (0..5000).map(|i| format!("+2{}", i % 3000)).collect();
    let (id,): (i64,) = sqlx::query_as("SELECT dbrouter.broadcast('gw', $1, 'news')")
        .bind(&identities)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Over 1,000 identities: the workers expand them (here, by hand).
    db.exec("SELECT dbrouter.fan_out(10)").await;
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM dbrouter.transmissions WHERE message_id = {id}"
        ))
        .await,
        3000
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT n_total::bigint FROM dbrouter.messages WHERE id = {id}"
        ))
        .await,
        3000
    );
    db.drop().await;
}

async fn expect_refused(db: &TestDb, sql: &str, needle: &str) {
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&db.pool)
        .await
        .expect_err(&format!("{sql} should be refused"));
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "{sql}: error {msg:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn bad_inserts_are_refused_with_clear_errors_and_write_nothing() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    // Every bad statement also carries a good row: nothing may be half-written.
    let cases = [
        ("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','ok'), ('nope','+1','x')", "unknown backend 'nope'"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','ok'), (NULL,'+1','x')", "backend is NULL"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','ok'), ('gw','  ','x')", "identity is empty"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','ok'), ('gw',NULL,'x')", "identity is NULL"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','ok'), ('gw','+2',NULL)", "text is NULL"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','ok'), ('gw','+2',repeat('x', 10001))", "limit is 10000"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text, fields) VALUES ('gw','+1','ok', NULL), ('gw','+2','x','[1]')", "fields must be a JSON object"),
        ("INSERT INTO dbrouter.inbox (backend, identity, text, fields) VALUES ('gw','+2','x','{oops')", "invalid input syntax for type json"),
        ("INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('gw','+1','ok'), ('nope','+1','x')", "unknown backend 'nope'"),
        ("INSERT INTO dbrouter.outbox (backend, identity, text, in_response_to) VALUES ('gw','+1','ok', NULL), ('gw','+1','x', 424242)", "in_response_to 424242 is not a message id"),
        ("SELECT dbrouter.broadcast('nope', ARRAY['+1'], 'x')", "unknown backend 'nope'"),
        ("SELECT dbrouter.broadcast('gw', ARRAY['+1', ''], 'x')", "identity is empty"),
        ("SELECT dbrouter.broadcast('gw', ARRAY[]::text[], 'x')", "identity list is empty"),
        ("SELECT dbrouter.broadcast('gw', ARRAY['+1'], NULL)", "text is NULL"),
        ("UPDATE dbrouter.messages SET status = 'X'", "message_status"),
    ];
    db.exec("INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('gw', '+9', 'seed')")
        .await;
    for (sql, needle) in cases {
        expect_refused(&db, sql, needle).await;
    }
    expect_refused(
        &db,
        "UPDATE dbrouter.transmissions SET status = 'Z'",
        "transmission_status",
    )
    .await;
    expect_refused(
        &db,
        "UPDATE dbrouter.transmissions SET attempts = -1",
        "transmission_attempts",
    )
    .await;
    expect_refused(
        &db,
        "UPDATE dbrouter.messages SET direction = 'X'",
        "message_direction",
    )
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        1,
        "only the seed message"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.connections")
            .await,
        1
    );
    db.drop().await;
}

#[tokio::test]
async fn enqueue_notifies_once_per_transaction() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen_all(["dbrouter", "sentinel"]).await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    for _ in 0..3 {
        sqlx::query("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw','+1','a'), ('gw','+2','b')")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('gw','+1','a'), ('gw','+2','b')")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("SELECT dbrouter.broadcast('gw', ARRAY['+3','+4'], 'c')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A later transaction's notification marks the end of the first one's.
    sqlx::query("SELECT pg_notify('sentinel', '')")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut wakeups = 0;
    loop {
        let n = listener.recv().await.unwrap();
        if n.channel() == "sentinel" {
            break;
        }
        wakeups += 1;
    }
    assert_eq!(wakeups, 1, "one notification for the whole transaction");
    drop(listener);
    db.drop().await;
}

#[tokio::test]
async fn removing_a_backend_with_history_is_refused() {
    let db = TestDb::new().await;
    db.backend("used", "database", json!({}), None).await;
    db.backend("unused", "database", json!({}), None).await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('used', '+1', 'x')")
        .await;
    let err = dbrouter::admin::backend_remove(&db.pool, "used")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has message history") && err.contains("enabled = false"),
        "{err}"
    );
    dbrouter::admin::backend_remove(&db.pool, "unused")
        .await
        .unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.backends")
            .await,
        1
    );
    db.drop().await;
}

#[tokio::test]
async fn message_ids_follow_the_order_of_the_inserted_rows() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.backend("other", "database", json!({}), None).await;
    // Alternate backends and repeat senders, so joins have reasons to reorder.
    let values: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "('{}', '+{}', '{i}')",
                if i % 2 == 0 { "gw" } else { "other" },
                i % 7
            )
        })
        .collect();
    for table in ["inbox", "outbox"] {
        db.exec(&format!(
            "INSERT INTO dbrouter.{table} (backend, identity, text) VALUES {}",
            values.join(",")
        ))
        .await;
    }
    for direction in ["I", "O"] {
        let out_of_order = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM (SELECT text::int AS n, lag(text::int) OVER (ORDER BY id) AS prev
                                         FROM dbrouter.messages WHERE direction = '{direction}') s
                  WHERE n < prev"
            ))
            .await;
        assert_eq!(out_of_order, 0, "direction {direction}");
    }
    db.drop().await;
}
