//! The command line, run as a user would.

mod common;

use std::process::{Command, Output};

use common::TestDb;

fn dbrouter(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("DBROUTER_LOG", "error")
        .output()
        .expect("run dbrouter")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn backend_receive_send_worker_and_status_from_the_command_line() {
    let db = TestDb::new().await;
    let url = db.url.as_str();

    let bad = dbrouter(
        url,
        &[
            "backend",
            "add",
            "sms",
            "--engine",
            "database",
            "--config",
            r#"{"fail": 3}"#,
        ],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("invalid config for the database engine"),
        "{}",
        text(&bad)
    );
    let bad = dbrouter(
        url,
        &["backend", "add", "sms", "--engine", "carrier-pigeon"],
    );
    assert!(text(&bad).contains("unknown engine"), "{}", text(&bad));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.backends")
            .await,
        0
    );

    let ok = dbrouter(
        url,
        &[
            "backend",
            "add",
            "sms",
            "--engine",
            "database",
            "--batch-size",
            "50",
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&dbrouter(url, &["backend", "list"])).contains("sms"));

    let bad = dbrouter(
        url,
        &["receive", "--backend", "nope", "--identity", "+1", "ping"],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("unknown backend 'nope'"),
        "{}",
        text(&bad)
    );

    let ok = dbrouter(
        url,
        &[
            "receive",
            "--backend",
            "sms",
            "--identity",
            "+1",
            "--external-id",
            "x9",
            "ping",
        ],
    );
    assert!(
        text(&ok).starts_with("queued inbound message"),
        "{}",
        text(&ok)
    );
    let ok = dbrouter(
        url,
        &[
            "send",
            "--backend",
            "sms",
            "--identity",
            "+2",
            "--identity",
            "+3",
            "hello",
        ],
    );
    assert!(
        text(&ok).starts_with("queued outbound message"),
        "{}",
        text(&ok)
    );

    let status = text(&dbrouter(url, &["status"]));
    assert!(status.contains("sms") && status.contains(" Q "), "{status}");

    let run = dbrouter(url, &["worker", "--apps", "echo", "--exit-when-idle"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        3
    );

    let bad = dbrouter(url, &["worker", "--lease", "10s", "--send-timeout", "6s"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("must be at least twice"),
        "{}",
        text(&bad)
    );

    let bad = dbrouter(url, &["backend", "remove", "sms"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("disable it instead"), "{}", text(&bad));
    db.drop().await;
}
