//! Gateways that misbehave cannot leak secrets, exhaust a worker, count a
//! redirect as a send, or turn one identity into two recipients. The
//! stand-ins here speak raw HTTP over loopback so they can break the rules.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{test_config, TestDb};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a stand-in does with each connection.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Reads the request and closes without answering.
    Hangs,
    /// Answers 200 and streams a body that never ends.
    Floods,
    /// Answers 302 to `to`.
    Redirects(SocketAddr),
    /// Answers 200 "0: Accepted".
    Accepts,
}

struct StandIn {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    /// Body bytes a flood got out before the client hung up.
    flooded: Arc<AtomicUsize>,
}

async fn stand_in(how: Misbehaviour) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let flooded = Arc::new(AtomicUsize::new(0));
    let (seen, count, flood) = (requests.clone(), connections.clone(), flooded.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (seen, flood) = (seen.clone(), flood.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                match how {
                    Misbehaviour::Hangs => {}
                    Misbehaviour::Floods => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                            .await;
                        let chunk = vec![b'x'; 64 * 1024];
                        // Until the client hangs up.
                        while sock.write_all(&chunk).await.is_ok() {
                            flood.fetch_add(chunk.len(), Ordering::SeqCst);
                        }
                    }
                    Misbehaviour::Redirects(to) => {
                        let _ = sock
                            .write_all(
                                format!(
                                    "HTTP/1.1 302 Found\r\nLocation: http://{to}/elsewhere?key=1\r\nContent-Length: 0\r\n\r\n"
                                )
                                .as_bytes(),
                            )
                            .await;
                    }
                    Misbehaviour::Accepts => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n0: Accepted")
                            .await;
                    }
                }
            });
        }
    });
    StandIn {
        addr,
        requests,
        connections,
        flooded,
    }
}

async fn outcome(db: &TestDb) -> String {
    db.scalar_str(
        "SELECT string_agg(status || ':' || coalesce(last_error, ''), ' | ' ORDER BY id)
           FROM dbrouter.transmissions",
    )
    .await
}

/// A gateway that drops the connection mid-request: the error stored,
/// shown by `status` and in `recent_errors`, names what happened without
/// the request's URL, the credentials in its query string, the secret in
/// the dlr-url or the message's text. `backend list` masks them too.
#[tokio::test]
async fn a_dropped_connection_leaves_no_secret_in_any_error() {
    let db = TestDb::new().await;
    let gw = stand_in(Misbehaviour::Hangs).await;
    db.backend(
        "gw",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", gw.addr),
               "username": "kuser", "password": "Pa55word-xyz",
               "dlr_url": "http://dbrouter:8080/kannel/gw/dlr?secret=Dlr-S3cret",
               "inbound": {"secret": "In-S3cret"}}),
        None,
    )
    .await;
    db.broadcast("gw", &["+255700000001".into()], "my bank pin is 4321")
        .await;
    let mut cfg = test_config();
    cfg.max_attempts = 1;
    db.worker(cfg.clone()).await.drain().await.unwrap();
    assert_eq!(gw.connections.load(Ordering::SeqCst), 1);
    let stored = db
        .scalar_str(
            "SELECT string_agg(error, ' | ') || ' | ' || (SELECT string_agg(last_error, ' | ')
                      FROM dbrouter.transmissions)
               FROM dbrouter.attempts",
        )
        .await;
    let status = dbrouter::admin::status(&db.pool, &cfg).await.unwrap();
    let list = dbrouter::admin::backend_list(&db.pool).await.unwrap();
    assert!(
        stored.contains("request failed") && stored.contains(&gw.addr.to_string()),
        "the error still says what failed where: {stored}"
    );
    for (what, text) in [
        ("stored", &stored),
        ("status", &status),
        ("backend list", &list),
    ] {
        for secret in [
            "Pa55word-xyz",
            "Dlr-S3cret",
            "In-S3cret",
            "bank pin",
            "sendsms?",
        ] {
            assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
        }
    }
    assert!(list.contains("kuser"), "only secrets are masked: {list}");
    db.drop().await;
}

/// A gateway that answers with an endless body: the worker reads a capped
/// prefix, hangs up, and the send counts (the gateway said 200). Before the
/// cap, a worker read for as long as its timeout allowed (gigabytes).
#[tokio::test]
async fn an_endless_answer_is_cut_and_the_send_counts() {
    let db = TestDb::new().await;
    let gw = stand_in(Misbehaviour::Floods).await;
    db.backend(
        "gw",
        "http",
        json!({"url": format!("http://{}/send", gw.addr), "form": {"to": "{identity}", "text": "{text}"},
               "timeout": "10s"}),
        None,
    )
    .await;
    db.broadcast("gw", &["+1".into()], "hi").await;
    db.worker(test_config()).await.drain().await.unwrap();
    assert_eq!(outcome(&db).await, "S:");
    // The cap, plus what the two sockets' buffers held when it hung up.
    let flooded = gw.flooded.load(Ordering::SeqCst);
    assert!(
        flooded < 32 << 20,
        "{flooded} bytes were sent before the worker hung up"
    );
    db.drop().await;
}

/// A 302 to another host is a failure that says so, not a send, and the
/// other host hears nothing.
#[tokio::test]
async fn a_redirect_is_not_followed_and_not_a_send() {
    let db = TestDb::new().await;
    let elsewhere = stand_in(Misbehaviour::Accepts).await;
    let gw = stand_in(Misbehaviour::Redirects(elsewhere.addr)).await;
    db.backend(
        "gw",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", gw.addr)}),
        None,
    )
    .await;
    db.broadcast("gw", &["+1".into()], "hi").await;
    let mut cfg = test_config();
    cfg.max_attempts = 1;
    db.worker(cfg).await.drain().await.unwrap();
    assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
    let got = outcome(&db).await;
    assert!(
        got.starts_with("E:HTTP 302 from") && got.contains("does not follow redirects"),
        "{got}"
    );
    assert!(!got.contains("key=1"), "{got}");
    db.drop().await;
}

/// An identity holding the engine's recipient separator is refused alone,
/// before any request; the others of its message go out as usual.
#[tokio::test]
async fn an_identity_that_would_be_two_recipients_is_refused() {
    let db = TestDb::new().await;
    let kannel = stand_in(Misbehaviour::Accepts).await;
    let http = stand_in(Misbehaviour::Accepts).await;
    db.backend(
        "k",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", kannel.addr)}),
        None,
    )
    .await;
    db.backend(
        "h",
        "http",
        json!({"url": format!("http://{}/send", http.addr), "recipients": "many",
               "form": {"to": "{identities}", "text": "{text}"}}),
        None,
    )
    .await;
    db.broadcast(
        "k",
        &["+255700000001 +255700000002".into(), "+255700000003".into()],
        "hi",
    )
    .await;
    db.broadcast("h", &["+1,+2".into(), "+3".into()], "hi")
        .await;
    db.worker(test_config()).await.drain().await.unwrap();
    let got = outcome(&db).await;
    assert!(
        got.starts_with("E:identity \"+255700000001 +255700000002\" contains whitespace")
            && got.contains(" | S: | E:identity \"+1,+2\" contains the recipient separator \",\"")
            && got.ends_with(" | S:"),
        "{got}"
    );
    let k = kannel.requests.lock().unwrap().clone();
    assert_eq!(k.len(), 1);
    assert!(k[0].contains("to=%2B255700000003&"), "{}", k[0]);
    assert_eq!(http.requests.lock().unwrap().len(), 1);
    db.drop().await;
}

/// Kannel is told each message's coding: GSM 7-bit when every character
/// is in the GSM 03.38 alphabet or its extension, else UCS-2 — always with
/// `charset=UTF-8`, which is what is sent — unless the backend pins one.
#[tokio::test]
async fn kannel_gets_a_coding_chosen_per_message() {
    let db = TestDb::new().await;
    let free = stand_in(Misbehaviour::Accepts).await;
    let pinned = stand_in(Misbehaviour::Accepts).await;
    db.backend(
        "k",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", free.addr)}),
        None,
    )
    .await;
    db.backend(
        "p",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", pinned.addr), "coding": 0}),
        None,
    )
    .await;
    for text in ["Price: 5€ [ok] {x}", "café 😀"] {
        db.broadcast("k", &["+1".into()], text).await;
        db.broadcast("p", &["+1".into()], text).await;
    }
    db.worker(test_config()).await.drain().await.unwrap();
    let query = |s: &StandIn| -> Vec<String> {
        let mut q: Vec<String> = s
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let target = r.split(' ').nth(1).unwrap_or_default();
                let pairs: Vec<(String, String)> =
                    serde_urlencoded::from_str(target.split_once('?').unwrap().1).unwrap();
                let get = |k: &str| {
                    pairs
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                format!("{}|{}|{}", get("coding"), get("charset"), get("text"))
            })
            .collect();
        q.sort();
        q
    };
    assert_eq!(
        query(&free),
        ["0|UTF-8|Price: 5€ [ok] {x}", "2|UTF-8|café 😀"]
    );
    assert_eq!(
        query(&pinned),
        ["0|UTF-8|Price: 5€ [ok] {x}", "0|UTF-8|café 😀"]
    );
    db.drop().await;
}

/// Credentials by reference: `{"env": ...}` and `{"file": ...}` are
/// resolved by the worker and reach the gateway; no table holds them and
/// `backend list` shows the reference. A variable the process lacks makes
/// the backend misconfigured (named in `status`); its messages wait.
#[tokio::test]
async fn secrets_by_reference_reach_the_gateway_and_no_table() {
    let db = TestDb::new().await;
    let gw = stand_in(Misbehaviour::Accepts).await;
    let n: u32 = rand::random();
    let var = format!("DBROUTER_TEST_PW_{n}");
    let password = format!("Env-Pa55-{n}");
    // (a variable of this test's own name; no other test reads it)
    std::env::set_var(&var, &password);
    let file = std::env::temp_dir().join(format!("dbrouter-test-user-{n}"));
    std::fs::write(&file, "file-user\n").unwrap();
    db.backend(
        "gw",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", gw.addr),
               "username": {"file": file}, "password": {"env": var}}),
        None,
    )
    .await;
    let unset = format!("DBROUTER_TEST_UNSET_{n}");
    db.backend(
        "gw2",
        "kannel",
        json!({"url": format!("http://{}/cgi-bin/sendsms", gw.addr), "password": {"env": unset}}),
        None,
    )
    .await;
    db.broadcast("gw", &["+255700000001".into()], "hello").await;
    db.broadcast("gw2", &["+255700000002".into()], "hello")
        .await;
    db.worker(test_config()).await.drain().await.unwrap();

    let requests = gw.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].contains(&format!("password={password}"))
            && requests[0].contains("username=file-user"),
        "{}",
        requests[0]
    );
    assert_eq!(outcome(&db).await, "S: | Q:");
    let list = dbrouter::admin::backend_list(&db.pool).await.unwrap();
    assert!(list.contains(&var) && !list.contains(&password), "{list}");
    let status = dbrouter::admin::status(&db.pool, &test_config())
        .await
        .unwrap();
    assert!(
        status.contains(&format!(
            "backend \"gw2\" is misconfigured: config.password: the environment variable {unset}"
        )),
        "{status}"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'dbrouter'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for table in tables {
        let found = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM {table} t WHERE t::text LIKE '%{password}%' OR t::text LIKE '%file-user%'"
            ))
            .await;
        assert_eq!(found, 0, "{table} holds a resolved secret");
    }
    let _ = std::fs::remove_file(&file);
    db.drop().await;
}
