//! `dbrouter serve` protects itself and tells the truth: empty credentials
//! let nobody in, health checks do not leak the database's error text.

mod common;

use std::time::Duration;

use common::{get, receiver, receiver_on, TestDb};
use serde_json::json;

#[tokio::test]
async fn empty_basic_credentials_let_nobody_in() {
    let db = TestDb::new().await;
    let base = receiver(&db).await;
    db.backend(
        "blank",
        "kannel",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"basic": {"username": "", "password": ""}}}),
        None,
    )
    .await;
    for auth in ["Basic Og==", "Basic Zm9vOg=="] {
        let r = reqwest::Client::new()
            .get(format!("{base}/kannel/blank/receive?sender=1&text=x"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{auth}");
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        0
    );
    db.drop().await;
}

#[tokio::test]
async fn healthz_says_unavailable_without_the_database_error() {
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://secret_role:pw@127.0.0.1:9/secret_db")
        .unwrap();
    let base = receiver_on(nowhere).await;
    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!(code, 503);
    assert_eq!(body, "the database is not reachable; retry later\n");
}
