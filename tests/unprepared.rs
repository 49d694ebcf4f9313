//! The worker without named prepared statements (`--no-prepared-statements`,
//! for PgBouncer before 1.21 in transaction mode). A test binary of its own:
//! the setting is process-wide.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{test_config, TestDb};
use dbrouter::apps::{App, AppError, Echo, IncomingMessage, Pipeline};
use dbrouter::worker::Worker;
use serde_json::json;

/// Replies with text the database refuses when the message says "poison".
struct Poison;

#[async_trait]
impl App for Poison {
    fn name(&self) -> &str {
        "poison"
    }
    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        if msg.text == "poison" {
            msg.respond("bad\0byte");
            return Ok(true);
        }
        Ok(false)
    }
}

#[tokio::test]
async fn inbound_batches_and_their_poison_isolation_run_without_named_statements() {
    dbrouter::db::set_prepared_statements(false);
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text)
         SELECT 'gw', '+' || g, CASE WHEN g = 2 THEN 'poison' ELSE 'echo ' || g END
           FROM generate_series(1, 5) g",
    )
    .await;
    // One connection, so the check below looks at the worker's own session.
    let pool = dbrouter::db::connect(&db.url, 1).await.unwrap();
    let mut cfg = test_config();
    cfg.batch_size = 3;
    let apps: Vec<Arc<dyn App>> = vec![Arc::new(Poison), Arc::new(Echo)];
    let worker = Worker::new(pool.clone(), cfg, Pipeline::new(apps))
        .await
        .unwrap();
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(direction || status || n, ',' ORDER BY direction, status)
               FROM (SELECT direction, status, count(*) AS n FROM dbrouter.messages
                      GROUP BY 1, 2) x"
        )
        .await,
        "IE1,IR4,OS4",
        "the poison message alone ends E; the others are answered"
    );
    // (this query itself unnamed, or it would be the one found)
    let (named,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_prepared_statements")
        .persistent(false)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(named, 0, "the worker's session holds no named statement");
    pool.close().await;
    db.drop().await;
}
