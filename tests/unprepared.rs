//! The worker without named prepared statements (`--no-prepared-statements`,
//! for PgBouncer before 1.21 in transaction mode). A test binary of its own:
//! the setting is process-wide.

mod common;

use std::sync::Arc;

use common::{test_config, PoisonReply, TestDb};
use dbrouter::apps::{App, Echo, Pipeline};
use dbrouter::worker::Worker;
use serde_json::json;

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
    let apps: Vec<Arc<dyn App>> = vec![Arc::new(PoisonReply), Arc::new(Echo)];
    let worker = Worker::new(pool.clone(), Default::default(), cfg, Pipeline::new(apps))
        .await
        .unwrap();
    worker.drain().await.unwrap();
    assert_eq!(
        db.message_states().await,
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
