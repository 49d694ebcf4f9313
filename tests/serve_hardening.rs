//! `dbrouter serve` protects itself and tells the truth: empty credentials
//! let nobody in, health checks do not leak the database's error text,
//! texts are decoded in the set the gateway names, a database that cannot
//! take a write gets a quick 503, and slow clients cannot take it down.

mod common;

use std::time::Duration;

use common::{get, receiver, receiver_on, wait_until, Proc, TestDb};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    db.receiving_backend("sms", "kannel").await;
    db.receiving_backend("web", "http").await;
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

/// A request to a backend while the database is away: 503 with a
/// Retry-After, at once.
#[tokio::test]
async fn a_database_that_is_away_gets_a_503_to_retry() {
    let nowhere = dbrouter::db::connect_lazy_receiver("postgres://u@127.0.0.1:9/x", 2).unwrap();
    let base = receiver_on(nowhere).await;
    let r = reqwest::get(format!(
        "{base}/kannel/sms/receive?secret=s3&sender=%2B1&text=hi"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
}

/// `dbrouter.inbox` locked by someone else: every request is answered 503
/// (the first group's by its statement's lock timeout, the rest because
/// they waited too long behind it) and writes nothing, even once the lock
/// is gone; then requests are stored again. Before, the 8th of 8
/// concurrent requests waited ~80 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_inbox_gets_503s_not_hung_requests() {
    let db = TestDb::new().await;
    db.receiving_backend("sms", "kannel").await;
    let pool = dbrouter::db::connect_lazy_receiver(&db.url, 4).unwrap();
    let base = receiver_on(pool).await;
    // The backends are read once before the lock (as a running serve has).
    let (code, _) = get(&format!(
        "{base}/kannel/sms/receive?secret=s3&sender=%2B1&text=before&id=b"
    ))
    .await;
    assert_eq!(code, 200);
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE dbrouter.inbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let requests = (0..8).map(|i| {
        let client = client.clone();
        let url =
            format!("{base}/kannel/sms/receive?secret=s3&sender=%2B1&text=during+{i}&id=d{i}");
        async move { client.get(url).send().await.unwrap() }
    });
    for r in futures::future::join_all(requests).await {
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
    }
    locker.rollback().await.unwrap();
    let (code, _) = get(&format!(
        "{base}/kannel/sms/receive?secret=s3&sender=%2B1&text=after&id=a"
    ))
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        db.scalar_str("SELECT string_agg(text, ',' ORDER BY id) FROM dbrouter.messages")
            .await,
        "before,after"
    );
    db.drop().await;
}

/// At most `max_connections` clients at once: one more waits to be
/// accepted until another leaves.
#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let db = TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = dbrouter::serve::Limits {
        max_connections: 3,
        header_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    tokio::spawn(dbrouter::serve::serve_with(
        db.pool.clone(),
        listener,
        std::future::pending(),
        limits,
    ));
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let url = format!("http://{addr}/healthz");
    assert!(
        client.get(&url).send().await.is_err(),
        "a fourth connection is not served while three are open"
    );
    idle.pop();
    wait_until(
        "a freed slot serves the next client",
        Duration::from_secs(30),
        || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    drop(idle);
    db.drop().await;
}

/// 1,500 clients that send half a request and stall, against a `dbrouter
/// serve` started with the usual soft limit of 1,024 open files: a real
/// request is still answered, the server closes every stalled connection
/// after its header timeout, and SIGTERM ends the process. (Before: the
/// process ran out of files near 1,000 connections, every request timed out,
/// no stalled connection was ever closed and SIGTERM hung.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_cannot_take_serve_down() {
    use std::os::unix::process::CommandExt;
    let db = TestDb::new().await;
    dbrouter::listen::raise_open_files();
    let port = common::free_port();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_dbrouter"));
    serve
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--header-timeout",
            "15s",
        ])
        .env("DATABASE_URL", &db.url)
        .env("DBROUTER_LOG", "error")
        .stdin(std::process::Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in between.
    unsafe {
        serve.pre_exec(|| {
            let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
            rlimit::setrlimit(rlimit::Resource::NOFILE, 1024.min(hard), hard)
        });
    }
    let mut serve = Proc(serve.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    wait_until("serve answers", Duration::from_secs(60), || async {
        reqwest::get(format!("{base}/healthz")).await.is_ok()
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..1500 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Answered well before the stalled connections time out: it was
    // accepted while they were all open (it needs the raised file limit).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(7))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    eprintln!(
        "a real request beside 1,500 stalled connections was answered in {:?}",
        started.elapsed()
    );
    for (i, mut s) in stalled.into_iter().enumerate() {
        let mut buf = [0u8; 256];
        // The server's 408 or its close, whichever it sends: then EOF.
        loop {
            match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("stalled connection {i} was never closed by the server"),
            }
        }
    }
    let _stall = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut status = None;
    wait_until("serve exits on SIGTERM", Duration::from_secs(60), || {
        status = serve.try_wait().unwrap();
        let done = status.is_some();
        async move { done }
    })
    .await;
    assert!(status.unwrap().success());
    db.drop().await;
}
