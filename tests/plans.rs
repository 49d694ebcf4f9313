//! The workers' batch statements keep their plans when the statistics turn
//! against them. After a broadcast, ANALYZE sees one message_id in nearly
//! every transmission; statements that find a message's transmissions must
//! still probe the index per message instead of reading the table per
//! message (that was 3.8 s for one inbound batch of 200).

mod common;

use common::TestDb;
use serde_json::{json, Value};
use sqlx::Row;

/// Every (node type, relation) pair of an EXPLAIN (FORMAT JSON) plan.
fn nodes(plan: &Value, out: &mut Vec<(String, String)>) {
    let kind = plan["Node Type"].as_str().unwrap_or_default().to_string();
    let rel = plan["Relation Name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    out.push((kind, rel));
    if let Some(children) = plan["Plans"].as_array() {
        for c in children {
            nodes(c, out);
        }
    }
}

/// Every scan of the named tables in the plan finds its rows by key (an
/// index condition), never by reading the table or a whole index.
fn assert_by_key(what: &str, plan: &Value, tables: &[&str]) {
    let kind = plan["Node Type"].as_str().unwrap_or_default();
    let rel = plan["Relation Name"].as_str().unwrap_or_default();
    if tables.contains(&rel) && kind.ends_with("Scan") {
        assert!(
            kind == "Bitmap Heap Scan" || plan.get("Index Cond").is_some(),
            "{what} reads {rel} without a key: {plan}"
        );
    }
    if let Some(children) = plan["Plans"].as_array() {
        for c in children {
            assert_by_key(what, c, tables);
        }
    }
}

fn assert_probes_only(what: &str, explain: &Value) {
    let mut all = Vec::new();
    nodes(&explain[0]["Plan"], &mut all);
    for (kind, rel) in &all {
        assert!(
            !(kind == "Seq Scan" && (rel == "transmissions" || rel == "connections")),
            "{what} reads all of {rel}: {all:?}"
        );
        assert_ne!(kind, "Merge Join", "{what} merge-joins: {all:?}");
    }
}

/// The mark's plan: probes only, and `messages` reached by key.
fn assert_mark_probes_by_key(what: &str, explain: &Value) {
    assert_probes_only(what, explain);
    assert_by_key(what, &explain[0]["Plan"], &["messages"]);
}

/// The plan PostgreSQL caches for `sql` once it settles on a generic one
/// (prepared with parameter `types`, in a worker's kind of transaction,
/// which forces generic plans), as EXPLAIN (FORMAT JSON).
async fn generic_plan(db: &TestDb, types: &str, sql: &str) -> Value {
    let mut tx = db.pool.begin_with(dbrouter::db::BEGIN_KEYED).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE statement({types}) AS {sql}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let nulls = vec!["NULL"; types.split(',').count()].join(", ");
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) EXECUTE statement({nulls})"
    )))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    plan
}

/// A database right after a 20,000-identity broadcast was expanded (its
/// expansion analyzes the table once 10,000 are in), with 300 inbound
/// messages queued since.
async fn after_a_large_broadcast() -> TestDb {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let audience: Vec<String> = (0..20_000).map(|i| format!("+2557{i:08}")).collect();
    db.broadcast("gw", &audience, "Clinic closed on Friday")
        .await;
    db.exec("SELECT dbrouter.fan_out(100)").await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions")
            .await,
        20_000
    );
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text)
         SELECT 'gw', '+2558' || lpad(i::text, 8, '0'), 'echo ' || i FROM generate_series(1, 300) i",
    )
    .await;
    db
}

#[tokio::test]
async fn inbound_batches_after_a_large_broadcast_probe_by_index() {
    let db = after_a_large_broadcast().await;
    let stats = db
        .scalar_str(
            "SELECT n_distinct::text FROM pg_stats
              WHERE schemaname = 'dbrouter' AND tablename = 'transmissions' AND attname = 'message_id'",
        )
        .await;
    assert_eq!(
        stats, "-0.5",
        "the override survives the expansion's ANALYZE"
    );

    // Planned as a worker plans them: in an inbound batch's transaction.
    let mut tx = db.pool.begin_with(dbrouter::db::BEGIN_KEYED).await.unwrap();
    let (claim,): (Value,) = sqlx::query_as(concat!(
        "EXPLAIN (FORMAT JSON) ",
        include_str!("../sql/inbound_claim.sql")
    ))
    .bind(200i64)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_probes_only("the inbound claim", &claim);

    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM dbrouter.messages WHERE direction = 'I' ORDER BY id LIMIT 200",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // Marks only (a chunk without replies): the reply arrays are empty.
    let none: Vec<Option<String>> = vec![None; ids.len()];
    let (mark,): (Value,) = sqlx::query_as(concat!(
        "EXPLAIN (FORMAT JSON) ",
        include_str!("../sql/inbound_write.sql")
    ))
    .bind(Vec::<i64>::new())
    .bind(Vec::<i32>::new())
    .bind(Vec::<String>::new())
    .bind(Vec::<i64>::new())
    .bind(Vec::<Option<i64>>::new())
    .bind(60.0f64)
    .bind(&ids)
    .bind(&none)
    .bind(&none)
    .bind(&none)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_mark_probes_by_key("the inbound mark", &mark);
    tx.rollback().await.unwrap();
    db.drop().await;
}

/// A first broadcast planned while `connections` is recorded empty (here:
/// VACUUM ANALYZE right after install) must not read that table once per
/// identity while the statement (now: its parts' expansion) fills it (71 s for 100,000 identities before
/// the enqueue functions ran without sequential scans). Counted in
/// sequential scans of the table, not in seconds: the rows the statement adds
/// are invisible to its own scans, so only the number of scans shows it.
#[tokio::test]
async fn a_first_broadcast_after_vacuum_of_empty_tables_does_not_rescan_per_identity() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("VACUUM ANALYZE dbrouter.connections").await;
    let audience: Vec<String> = (0..5_000).map(|i| format!("+2557{i:08}")).collect();
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT dbrouter.broadcast('gw', $1, 'Clinic closed on Friday')")
        .bind(&audience)
        .execute(&mut *conn)
        .await
        .unwrap();
    // Its connections are written as its parts are expanded.
    let (n,): (i32,) = sqlx::query_as("SELECT dbrouter.fan_out(100)")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 5_000);
    // Make this session's table counters visible to the next transaction.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    drop(conn);
    let scans = db
        .scalar_i64(
            "SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables
              WHERE schemaname = 'dbrouter' AND relname = 'connections'",
        )
        .await;
    assert!(
        scans < 10,
        "{scans} sequential scans of connections for a {}-identity broadcast",
        audience.len()
    );
    db.drop().await;
}

/// The plan PostgreSQL caches for a worker's mark (`sql/inbound_write.sql`,
/// replies and marks) once it settles on a generic one, made while the
/// statistics (from broadcast()'s ANALYZE) say no inbound message is queued
/// and the queue is still short, and then kept while a backlog grows: it
/// must find the marked messages by key. (Joined
/// to an unnest() of the results, the cached plan scanned every queued
/// message and re-read the arrays for each: 1 to 15 s per mark of 200 in
/// the bench.)
#[tokio::test]
async fn the_generic_plan_of_the_mark_finds_messages_by_key_whatever_the_statistics() {
    let db = after_a_large_broadcast().await;
    let mark = generic_plan(
        &db,
        "bigint[], integer[], text[], bigint[], bigint[], float8, bigint[], text[], text[], text[]",
        include_str!("../sql/inbound_write.sql"),
    )
    .await;
    assert_mark_probes_by_key("the generic plan of the inbound mark", &mark);
    db.drop().await;
}

/// A worker's pool warms each new connection up (`connections::connect_lazy`):
/// before its first batch, the connection already holds the hot statements
/// prepared with their generic plans (cold, the first batch on each
/// connection paid ~5 ms for them, which set the bench's latency p99), and
/// the warm-up left nothing behind.
#[tokio::test]
async fn a_workers_new_connection_holds_its_plans_before_the_first_batch() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    let pool = dbrouter::connections::connect_lazy(&db.url, 2, Default::default()).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let prepared: Vec<(String, i64)> =
        sqlx::query_as("SELECT statement, generic_plans FROM pg_prepared_statements")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    for statement in [
        include_str!("../sql/inbound_claim.sql"),
        include_str!("../sql/inbound_write.sql"),
    ] {
        let first_line = statement.lines().next().unwrap_or_default();
        assert!(
            prepared
                .iter()
                // (the claim is prepared with SQL PREPARE: its text comes after "PREPARE ... AS")
                .any(|(text, generic)| text.contains(first_line) && *generic >= 1),
            "not prepared with a generic plan: {first_line}\n{prepared:?}"
        );
    }
    // Outside a transaction block every statement is its own transaction,
    // whose start is the statement's.
    // (A simple query: with the extended protocol the statement's clock
    // starts after its Parse.)
    let ended: bool = sqlx::raw_sql("SELECT now() = statement_timestamp()")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert!(ended, "the warm-up's transaction was left open");
    let written = db
        .scalar_i64(
            "SELECT (SELECT count(*) FROM dbrouter.messages)
                  + (SELECT count(*) FROM dbrouter.transmissions)
                  + (SELECT count(*) FROM dbrouter.database_backend_sends)",
        )
        .await;
    assert_eq!(written, 0, "the warm-up wrote nothing");
    drop(conn);

    // And the real batches run on those prepared statements (the warm-up
    // binds the same types): an inbound message answered, a queued
    // outbound one sent.
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+255700000001', 'echo hi');
         INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('gw', '+255700000002', 'hello')",
    )
    .await;
    let worker = db.worker_on(&pool).await;
    assert_eq!(worker.drain().await.unwrap(), 2);
    let sent = db
        .scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
        .await;
    assert_eq!(sent, 2, "the reply and the outbound message were sent");
    pool.close().await;
    db.drop().await;
}
