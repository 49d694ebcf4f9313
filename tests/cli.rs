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

    let audience: Vec<String> = (0..1500).map(|i| format!("+9{i}")).collect();
    let big = db.broadcast("sms", &audience, "big news").await;

    let status = text(&dbrouter(url, &["status"]));
    assert!(status.contains("sms") && status.contains(" Q "), "{status}");
    assert!(
        status.contains(&format!(
            "broadcast {big} (sms): 1500 identities in 2 part(s) not yet given transmissions"
        )),
        "{status}"
    );

    let run = dbrouter(url, &["worker", "--apps", "echo", "--exit-when-idle"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        3 + 1500,
        "--exit-when-idle waits for the broadcast's parts too"
    );
    assert!(!text(&dbrouter(url, &["status"])).contains("not yet given"));

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

#[tokio::test]
async fn traffic_controls_from_the_command_line() {
    let db = TestDb::new().await;
    let url = db.url.as_str();
    let run = |args: &[&str]| {
        let o = dbrouter(url, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        text(&o)
    };
    run(&["backend", "add", "sms", "--engine", "database"]);
    run(&[
        "backend",
        "set",
        "sms",
        "--rate-limit",
        "30",
        "--rate-burst",
        "60",
        "--expire-replies-after",
        "1h",
        "--number-format",
        "e164",
        "--country-code",
        "255",
    ]);
    assert_eq!(
        db.scalar_str(
            "SELECT rate_limit || '/' || rate_burst || '/' || expire_replies_after || '/' || number_format || '/' || country_code
               FROM dbrouter.backends"
        )
        .await,
        "30/60/01:00:00/e164/255"
    );
    run(&["backend", "pause", "sms", "--reason", "maintenance"]);
    let status = run(&["status"]);
    assert!(
        status.contains("\"sms\" is paused (maintenance)"),
        "{status}"
    );
    assert!(
        status.contains("rate-limited to 30 messages/s (burst 60)"),
        "{status}"
    );
    run(&["backend", "resume", "sms"]);
    assert!(!run(&["status"]).contains("paused"));

    let first = run(&[
        "send",
        "--backend",
        "sms",
        "--identity",
        "0712 345 678",
        "--send-at",
        "2099-01-01 09:00+00",
        "--expires-after",
        "2h",
        "--priority",
        "-5",
        "--key",
        "reminder-1",
        "Reminder",
    ]);
    let again = run(&[
        "send",
        "--backend",
        "sms",
        "--identity",
        "+255700000000",
        "--key",
        "reminder-1",
        "Other",
    ]);
    assert_eq!(first, again, "the same key gives the first message");
    assert_eq!(
        db.scalar_str(
            "SELECT c.identity || '/' || m.priority || '/' || (m.expires_at - m.send_at) || '/' || t.due_at
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id
               JOIN dbrouter.connections c ON c.id = t.connection_id"
        )
        .await,
        "+255712345678/-5/02:00:00/2099-01-01 09:00:00+00"
    );
    let bad = dbrouter(
        url,
        &["send", "--backend", "sms", "--identity", "12ab", "x"],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("is not a valid phone number"),
        "{}",
        text(&bad)
    );
    let bad = dbrouter(
        url,
        &[
            "send",
            "--backend",
            "sms",
            "--identity",
            "+255712345678",
            "--send-at",
            "soonish",
            "x",
        ],
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("soonish"), "{}", text(&bad));

    let id = db.scalar_i64("SELECT id FROM dbrouter.messages").await;
    let cancelled = run(&["cancel", &id.to_string()]);
    assert!(
        cancelled.contains("1 unsent transmissions ended"),
        "{cancelled}"
    );
    let bad = dbrouter(url, &["cancel", "424242"]);
    assert!(
        text(&bad).contains("no message with id 424242"),
        "{}",
        text(&bad)
    );

    run(&["optout", "add", "sms", "0712 000 111"]);
    assert!(run(&["optout", "list"]).contains("+255712000111"));
    assert!(run(&["optout", "remove", "sms", "+255712000111"]).contains("opted back in"));
    assert!(!run(&["optout", "list"]).contains("+255712000111"));
    db.drop().await;
}

/// Logs written to a pipe carry no colour codes, and a failed send is
/// logged with its backend, transmission and error (a few per window).
#[tokio::test]
async fn failed_sends_are_logged_plainly_to_a_pipe() {
    let db = TestDb::new().await;
    db.backend(
        "sms",
        "database",
        serde_json::json!({"fail": {"error": "gateway down"}}),
        None,
    )
    .await;
    let ids: Vec<String> = (1..=20).map(|i| format!("+2557000000{i:02}")).collect();
    db.broadcast("sms", &ids, "hi").await;
    let out = Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(["worker", "--exit-when-idle", "--max-attempts", "1"])
        .env("DATABASE_URL", &db.url)
        .env("DBROUTER_LOG", "warn")
        .output()
        .expect("run dbrouter");
    assert!(out.status.success(), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("send failed")).collect();
    assert_eq!(lines.len(), 5, "five logged, the rest counted: {log}");
    assert!(
        lines[0].contains("backend=\"sms\"")
            && lines[0].contains("transmission=")
            && lines[0].contains("gateway down"),
        "{log}"
    );
    db.drop().await;
}

/// DBROUTER_LOG_FORMAT=json: every line a JSON object whose fields are
/// keys of their own (a log shipper reads the backend and the transmission
/// without parsing text); a format it does not know stops it at once.
#[tokio::test]
async fn logs_are_json_lines_when_asked() {
    let db = TestDb::new().await;
    db.backend(
        "sms",
        "database",
        serde_json::json!({"fail": {"error": "gateway down"}}),
        None,
    )
    .await;
    db.broadcast("sms", &["+255700000001".into()], "hi").await;
    let out = Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(["worker", "--exit-when-idle", "--max-attempts", "1"])
        .env("DATABASE_URL", &db.url)
        .env("DBROUTER_LOG", "warn")
        .env("DBROUTER_LOG_FORMAT", "json")
        .output()
        .expect("run dbrouter");
    assert!(out.status.success(), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["message"] == "send failed")
        .unwrap_or_else(|| panic!("no send failure logged: {log}"));
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["backend"], "sms");
    assert!(failed["transmission"].as_i64().is_some(), "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("gateway down")),
        "{failed}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .arg("status")
        .env("DATABASE_URL", &db.url)
        .env("DBROUTER_LOG_FORMAT", "xml")
        .output()
        .expect("run dbrouter");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("use text (the default) or json"),
        "{}",
        text(&out)
    );
    db.drop().await;
}

/// `backend add --help` names every engine.
#[test]
fn backend_add_help_names_every_engine() {
    let out = Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(["backend", "add", "--help"])
        .output()
        .expect("run dbrouter");
    let help = String::from_utf8_lossy(&out.stdout);
    for engine in ["kannel", "smpp", "vumi", "http", "database", "console"] {
        assert!(help.contains(engine), "{engine}: {help}");
    }
}

/// `--metrics-addr`: a worker serves Prometheus metrics: what it did
/// (messages processed, sends by outcome, send latency as a histogram) and
/// the queues as the database has them (due transmissions per backend, a
/// paused backend).
#[tokio::test]
async fn a_worker_serves_prometheus_metrics() {
    let db = TestDb::new().await;
    db.backend("sms", "database", serde_json::json!({}), None)
        .await;
    db.backend("held", "database", serde_json::json!({}), None)
        .await;
    db.exec("SELECT dbrouter.pause_backend('held', 'maintenance')")
        .await;
    db.broadcast("held", &["+255700000009".into()], "waits")
        .await;
    let port = common::free_port();
    let mut worker = common::spawn_worker(
        &db.url,
        &[
            "--apps",
            "echo",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ],
    );
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sms', '+255700000001', 'echo hi')")
        .await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let wanted = [
        "dbrouter_inbound_total{outcome=\"processed\"} 1",
        "dbrouter_sends_total{backend=\"sms\",outcome=\"sent\"} 1",
        "dbrouter_send_seconds_bucket{backend=\"sms\",le=\"+Inf\"} 1",
        "dbrouter_queue_due{backend=\"held\"} 1",
        "dbrouter_queue_due{backend=\"sms\"} 0",
        "dbrouter_backend_paused{backend=\"held\"} 1",
        "dbrouter_backend_paused{backend=\"sms\"} 0",
        "dbrouter_inbound_queued 0",
    ];
    let scraped = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    common::wait_until("the metrics", std::time::Duration::from_secs(30), || {
        let (url, scraped) = (url.clone(), scraped.clone());
        async move {
            let Ok(r) = reqwest::get(&url).await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            let all = wanted.iter().all(|w| text.lines().any(|l| l == *w));
            *scraped.lock().unwrap() = text;
            all
        }
    })
    .await;
    let scrape = scraped.lock().unwrap().clone();
    assert!(
        scrape.contains("# TYPE dbrouter_send_seconds histogram"),
        "{scrape}"
    );
    let _ = worker.kill();
    let _ = worker.wait();
    db.drop().await;
}

/// `dbrouter serve --metrics-addr`: requests counted by route and status,
/// rows per group commit.
#[tokio::test]
async fn serve_serves_prometheus_metrics() {
    let db = TestDb::new().await;
    db.receiving_backend("k", "kannel").await;
    let (port, metrics) = (common::free_port(), common::free_port());
    let mut serve = common::Proc(
        Command::new(env!("CARGO_BIN_EXE_dbrouter"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .env("DATABASE_URL", &db.url)
            .env("DBROUTER_LOG", "error")
            .spawn()
            .expect("spawn dbrouter serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    common::wait_until("serve answers", std::time::Duration::from_secs(20), || {
        let url = format!("{base}/healthz");
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
    let ok = reqwest::get(format!(
        "{base}/kannel/k/receive?secret=s3&sender=%2B255700000001&text=hi"
    ))
    .await
    .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let refused = reqwest::get(format!(
        "{base}/kannel/k/receive?secret=nope&sender=%2B1&text=hi"
    ))
    .await
    .unwrap();
    let refused = refused.status().as_u16();
    assert!(refused == 401 || refused == 403, "{refused}");
    let wanted = [
        "dbrouter_serve_requests_total{route=\"/kannel/{backend}/receive\",status=\"200\"} 1".to_string(),
        format!("dbrouter_serve_requests_total{{route=\"/kannel/{{backend}}/receive\",status=\"{refused}\"}} 1"),
        "dbrouter_serve_commit_rows_count 1".to_string(),
    ];
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    common::wait_until(
        "serve's metrics",
        std::time::Duration::from_secs(20),
        || {
            let (url, wanted) = (url.clone(), wanted.clone());
            async move {
                let Ok(r) = reqwest::get(&url).await else {
                    return false;
                };
                let text = r.text().await.unwrap_or_default();
                wanted.iter().all(|w| text.lines().any(|l| l == w))
            }
        },
    )
    .await;
    let _ = serve.kill();
    let _ = serve.wait();
    db.drop().await;
}

#[tokio::test]
async fn broadcast_follows_to_the_end_and_purge_reports_progress_in_plain_lines() {
    let db = TestDb::new().await;
    let url = db.url.as_str();
    db.backend("sms", "database", serde_json::json!({}), None)
        .await;
    db.exec("SELECT dbrouter.opt_out('sms', '+3')").await;
    let list = std::env::temp_dir().join(format!("{}-recipients.txt", db.name));
    std::fs::write(&list, "# clinic list\n+1\n\n+2\n+3\n+2\n").unwrap();
    let _worker = common::spawn_worker(url, &["--poll-interval", "200ms"]);

    // Piped (as here), the progress is plain lines on stderr, no control codes;
    // the command returns once every transmission has ended.
    let out = dbrouter(
        url,
        &[
            "broadcast",
            "--backend",
            "sms",
            "--file",
            list.to_str().unwrap(),
            "Clinic closed today",
        ],
    );
    std::fs::remove_file(&list).ok();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("queued broadcast "), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "control codes in a pipe: {stderr:?}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("3 of 3 transmissions ended (100%): 2 sent, 0 delivered, 1 failed"),
        "{stderr}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
            .await,
        2
    );

    // --detach returns at once; a missing file says which.
    let out = dbrouter(
        url,
        &[
            "broadcast",
            "--backend",
            "sms",
            "--identity",
            "+4",
            "--detach",
            "x",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = dbrouter(
        url,
        &[
            "broadcast",
            "--backend",
            "sms",
            "--file",
            "/nonexistent/list",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot read the phone numbers from /nonexistent/list"),
        "{}",
        text(&out)
    );

    // Purge: the messages made old, then a line of progress and the total.
    common::wait_until(
        "every message ended",
        std::time::Duration::from_secs(30),
        || async {
            db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE status IN ('Q', 'P')")
                .await
                == 0
        },
    )
    .await;
    db.exec("UPDATE dbrouter.messages SET created_at = now() - interval '40 days', updated_at = now() - interval '40 days'")
        .await;
    let out = dbrouter(url, &["purge", "--older-than", "30d", "--batch-size", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("old ids walked (100%): 2 messages purged"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("purged 2 messages"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn status_watch_draws_again_until_interrupted() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let db = TestDb::new().await;
    let mut child = common::Proc(
        Command::new(env!("CARGO_BIN_EXE_dbrouter"))
            .args(["status", "--watch", "--interval", "100ms"])
            .env("DATABASE_URL", &db.url)
            .env("DBROUTER_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run dbrouter status --watch"),
    );
    // Read every line to the end in a thread (a reader gone early would make
    // the next drawing fail to write), telling each drawing's header.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("dbrouter status at ") {
                let _ = tx.send(());
            }
        }
    });
    for n in 1..=3 {
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("drawing {n} did not come"));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "Ctrl-C ends the watch cleanly: {status:?}"
    );
    reader.join().unwrap();
}
