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

/// Kannel's MO texts arrive exactly, in whichever set Kannel names: UTF-8,
/// raw UTF-16BE (UCS-2 from a phone, without mo-recode), Latin-1; with
/// newlines, tabs and double spaces (`%b`). Bytes not valid in their set
/// are refused with a 400 naming it, and nothing is written.
#[tokio::test]
async fn kannel_texts_are_decoded_in_the_set_kannel_names() {
    let db = TestDb::new().await;
    let base = receiver(&db).await;
    db.backend(
        "sms",
        "kannel",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    db.backend(
        "web",
        "http",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let get_url = |q: &str| format!("{base}/kannel/sms/receive?secret=s3&sender=%2B1&{q}");
    // (query, stored text)
    let good = [
        (
            "coding=0&charset=UTF-8&text=two++spaces%09tab%0Anew+line",
            "two  spaces\ttab\nnew line",
        ),
        (
            "coding=2&charset=UTF-16BE&text=%00c%00a%00f%00%E9%00+%D8%3D%DE%00",
            "café 😀",
        ),
        ("coding=2&text=%04%16%04%16", "ЖЖ"),
        ("charset=ISO-8859-1&text=caf%E9", "café"),
        ("text=caf%C3%A9", "café"),
    ];
    for (q, _) in good {
        let (code, body) = get(&get_url(q)).await;
        assert_eq!(code, 200, "{q}: {body}");
    }
    let bad = [
        ("text=caf%E9", "the text is not valid UTF-8"),
        (
            "coding=0&charset=UTF-8&text=caf%E9",
            "the text is not valid UTF-8",
        ),
        (
            "coding=2&charset=UTF-16BE&text=%D8%3D",
            "the text is not valid UTF-16BE",
        ),
        ("coding=1&text=%00%01", "binary"),
    ];
    for (q, why) in bad {
        let (code, body) = get(&get_url(q)).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body.contains(why), "{q}: {body}");
    }
    let client = reqwest::Client::new();
    let post = |ct: &'static str, coding: &'static str, body: Vec<u8>| {
        client
            .post(format!("{base}/kannel/sms/receive?secret=s3"))
            .header("X-Kannel-From", "+1")
            .header("X-Kannel-Coding", coding)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    let r = post(
        "text/plain; charset=\"UTF-16BE\"",
        "2",
        "😀 ok\n"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = post("text/plain; charset=\"UTF-8\"", "0", b"caf\xe9".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .post(format!("{base}/http/web/receive?secret=s3"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("identity=%2B2&text=caf%E9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not valid UTF-8"));
    let mut want: Vec<&str> = good.iter().map(|(_, t)| *t).collect();
    want.push("😀 ok\n");
    assert_eq!(
        db.scalar_str("SELECT string_agg(text, '|' ORDER BY id) FROM dbrouter.messages")
            .await,
        want.join("|"),
        "only the good ones, exactly"
    );
    db.drop().await;
}
