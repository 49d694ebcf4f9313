//! Real gateways: the kannel, vumi and http engines against a stand-in
//! gateway on loopback, and `dbrouter serve` receiving messages and
//! delivery reports.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{get, receiver, spawn_serve, test_config, wait_until, TestDb};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// What the stand-in gateway saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: String,
}

impl Seen {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// How the stand-in answers: scripted answers first, then `otherwise`.
#[derive(Clone)]
enum Answer {
    Status(u16, Vec<(&'static str, String)>, String),
    Hang,
}

#[derive(Default)]
struct Gw {
    /// Answers chosen by a substring of the body (before the script).
    rules: Mutex<Vec<(String, Answer)>>,
    seen: Mutex<Vec<Seen>>,
    script: Mutex<VecDeque<Answer>>,
    otherwise: Mutex<Option<Answer>>,
}

async fn gateway_handler(
    State(gw): State<Arc<Gw>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body_text = String::from_utf8_lossy(&body).to_string();
    let ruled = gw
        .rules
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| body_text.contains(k.as_str()))
        .map(|(_, a)| a.clone());
    let query = uri
        .query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap())
        .unwrap_or_default();
    gw.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    });
    let answer = ruled
        .or_else(|| gw.script.lock().unwrap().pop_front())
        .or_else(|| gw.otherwise.lock().unwrap().clone())
        .unwrap_or(Answer::Status(
            202,
            vec![],
            "0: Accepted for delivery".into(),
        ));
    match answer {
        Answer::Status(code, headers, body) => {
            let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
            for (k, v) in headers {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            r
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn stand_in() -> (Arc<Gw>, SocketAddr) {
    let gw = Arc::new(Gw::default());
    let app = axum::Router::new()
        .fallback(gateway_handler)
        .with_state(gw.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (gw, addr)
}

fn status_of(db: &TestDb) -> impl std::future::Future<Output = String> + '_ {
    db.scalar_str(
        "SELECT string_agg(status::text || coalesce(':' || last_error, ''), ',' ORDER BY id) FROM dbrouter.transmissions",
    )
}

#[tokio::test]
async fn kannel_requests_carry_every_setting_and_one_dlr_url_per_transmission() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    db.backend(
        "k",
        "kannel",
        json!({"url": format!("http://{addr}/cgi-bin/sendsms"), "username": "u", "password": "p",
               "from": "1234", "smsc": "voda", "charset": "UTF-8", "coding": 2,
               "params": {"priority": "1"}}),
        None,
    )
    .await;
    db.backend(
        "kd",
        "kannel",
        json!({"url": format!("http://{addr}/cgi-bin/sendsms"),
               "dlr_url": "http://router:8080/kannel/kd/dlr?secret=s", "dlr_mask": 3}),
        None,
    )
    .await;
    db.broadcast("k", &["+1".into(), "+2".into()], "héllo & bye")
        .await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    {
        let seen = gw.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "two identities, one call: {seen:?}");
        let s = &seen[0];
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("GET", "/cgi-bin/sendsms")
        );
        for (k, v) in [
            ("to", "+1 +2"),
            ("text", "héllo & bye"),
            ("username", "u"),
            ("password", "p"),
            ("from", "1234"),
            ("smsc", "voda"),
            ("charset", "UTF-8"),
            ("coding", "2"),
            ("priority", "1"),
        ] {
            assert_eq!(s.q(k), Some(v), "{k}");
        }
        assert_eq!(s.q("dlr-url"), None);
    }
    gw.seen.lock().unwrap().clear();
    db.broadcast("kd", &["+3".into(), "+4".into()], "with reports")
        .await;
    worker.drain().await.unwrap();
    let mut seen = gw.seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.q("to").map(str::to_string));
    assert_eq!(seen.len(), 2, "one call per identity with reports");
    let ids: Vec<i64> = sqlx::query_as::<_, (i64,)>(
        "SELECT t.id FROM dbrouter.transmissions t JOIN dbrouter.connections c ON c.id = t.connection_id
          WHERE c.identity IN ('+3', '+4') ORDER BY c.identity",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(i,)| i)
    .collect();
    for (s, id) in seen.iter().zip(ids) {
        assert_eq!(s.q("dlr-mask"), Some("3"));
        assert_eq!(
            s.q("dlr-url"),
            Some(format!("http://router:8080/kannel/kd/dlr?secret=s&t={id}&type=%d").as_str())
        );
    }
    assert_eq!(status_of(&db).await, "S,S,S,S");
    db.drop().await;
}

#[tokio::test]
async fn vumi_and_http_engines_send_their_formats_and_keep_gateway_ids() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    db.backend(
        "v",
        "vumi",
        json!({"url": format!("http://{addr}/vumi/send"), "basic": {"username": "acct", "password": "tok"}}),
        None,
    )
    .await;
    db.backend(
        "h",
        "http",
        json!({"url": format!("http://{addr}/api/sms"), "method": "POST",
               "headers": {"Authorization": "Bearer KEY"}, "query": {"ref": "{message_id}"},
               "json": {"to": "{identities_list}", "body": "{text}"},
               "recipients": "many", "gateway_id": "id"}),
        None,
    )
    .await;
    *gw.otherwise.lock().unwrap() = Some(Answer::Status(
        200,
        vec![("content-type", "application/json".into())],
        r#"{"message_id": "vumi-1", "id": 77}"#.into(),
    ));
    // a reply to an inbound message that had a gateway id
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text, external_id) VALUES ('v', '+5', 'hi', 'in-9')")
        .await;
    db.exec(
        "INSERT INTO dbrouter.outbox (backend, identity, text, in_response_to)
         SELECT 'v', '+5', 'answer', max(id) FROM dbrouter.messages",
    )
    .await;
    let msg = db
        .broadcast("h", &["+6".into(), "+7".into()], "news \"quoted\"")
        .await;
    // no apps: the inbound message gets no reply of its own
    let worker = db.worker_with(test_config(), vec![]).await;
    worker.drain().await.unwrap();
    let seen = gw.seen.lock().unwrap().clone();
    let v = seen.iter().find(|s| s.path == "/vumi/send").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&v.body).unwrap(),
        json!({"content": "answer", "to_addr": ["+5"], "in_reply_to": "in-9"})
    );
    assert_eq!(
        v.headers.get("authorization").unwrap(),
        "Basic YWNjdDp0b2s="
    );
    let h = seen.iter().find(|s| s.path == "/api/sms").unwrap();
    assert_eq!(seen.iter().filter(|s| s.path == "/api/sms").count(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&h.body).unwrap(),
        json!({"to": ["+6", "+7"], "body": "news \"quoted\""})
    );
    assert_eq!(h.q("ref"), Some(msg.to_string().as_str()));
    assert_eq!(h.headers.get("authorization").unwrap(), "Bearer KEY");
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(t.external_id, ',' ORDER BY t.id) FROM dbrouter.transmissions t
               JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.direction = 'O'"
        )
        .await,
        "vumi-1,77,77"
    );
    db.drop().await;
}

#[tokio::test]
async fn the_failure_policy_retries_fails_throttles_and_pauses() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    let url = format!("http://{addr}/send");
    // 2 s: long enough that no answer but the hanging one times out on a
    // loaded machine (300 ms did, beside the slow-client tests).
    db.backend("g", "http", json!({"url": url, "timeout": "2s"}), None)
        .await;
    let worker = db.worker(test_config()).await;
    let run = |answer: Answer| {
        let gw = gw.clone();
        let db = &db;
        let worker = worker.clone();
        async move {
            db.exec("DELETE FROM dbrouter.attempts; DELETE FROM dbrouter.transmissions; DELETE FROM dbrouter.messages;")
                .await;
            gw.script.lock().unwrap().push_back(answer);
            *gw.otherwise.lock().unwrap() = Some(Answer::Status(200, vec![], "ok".into()));
            db.broadcast("g", &["+1".into()], "x").await;
            // Until the gateway has given its scripted answer: a worker whose
            // view of the backend is younger than its poll interval may still
            // see the throttle the previous case set (and cleared), and
            // send nothing on its first pass.
            wait_until("the gateway is asked", Duration::from_secs(30), || async {
                worker.drain().await.unwrap();
                gw.script.lock().unwrap().is_empty()
            })
            .await;
            db.scalar_str(
                "SELECT status || '|' || attempts || '|' || (due_at IS NOT NULL) || '|' || coalesce(last_error, '')
                   FROM dbrouter.transmissions",
            )
            .await
        }
    };
    // 5xx: retryable; the worker's zero backoff retries at once, then 200
    assert_eq!(
        run(Answer::Status(503, vec![], "busy".into())).await,
        format!("S|2|false|HTTP 503 from {url}: busy")
    );
    // a permanent 4xx: E at once, no retry
    assert_eq!(
        run(Answer::Status(422, vec![], "bad number".into())).await,
        format!("E|1|false|HTTP 422 from {url}: bad number")
    );
    // timeout and refused connection: retryable, the error says which
    // (the HTTP client's timeout and the worker's call deadline are both
    // 300 ms here; either may fire first, and both say so)
    let r = run(Answer::Hang).await;
    assert!(
        r.starts_with("S|2|false|") && r.contains("timed out"),
        "{r}"
    );
    // 429 with Retry-After: queued again, no attempt used, backend throttled
    let r = run(Answer::Status(
        429,
        vec![("retry-after", "120".into())],
        "slow down".into(),
    ))
    .await;
    assert_eq!(r, format!("Q|0|true|HTTP 429 from {url}: slow down"));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.backends WHERE throttled_until > now() + interval '100 s'")
            .await,
        1
    );
    db.exec("UPDATE dbrouter.backends SET throttled_until = NULL")
        .await;
    // 401: queued again and the backend paused with the reason
    let r = run(Answer::Status(401, vec![], "bad key".into())).await;
    assert_eq!(r, format!("Q|0|true|HTTP 401 from {url}: bad key"));
    let status = dbrouter::admin::status(&db.pool, &dbrouter::WorkerConfig::default())
        .await
        .unwrap();
    assert!(
        status.contains("is paused (the gateway refused our credentials (HTTP 401"),
        "{status}"
    );
    db.exec("SELECT dbrouter.resume_backend('g')").await;
    // (a worker notices the resume when it next reloads the backends)
    wait_until("the resumed backend sends", LONG, || async {
        worker.drain().await.unwrap();
        db.scalar_str("SELECT status::text FROM dbrouter.transmissions")
            .await
            == "S"
    })
    .await;
    // nobody listening
    db.exec("UPDATE dbrouter.backends SET config = '{\"url\": \"http://127.0.0.1:9/send\"}'")
        .await;
    db.exec("DELETE FROM dbrouter.attempts; DELETE FROM dbrouter.transmissions; DELETE FROM dbrouter.messages;")
        .await;
    db.broadcast("g", &["+1".into()], "x").await;
    let mut cfg = test_config();
    cfg.max_attempts = 1;
    let once = db.worker(cfg).await;
    once.drain().await.unwrap();
    let r = db
        .scalar_str("SELECT status || '|' || last_error FROM dbrouter.transmissions")
        .await;
    assert!(
        r.starts_with("E|could not connect (") && r.ends_with("http://127.0.0.1:9/send"),
        "{r}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_receives_kannel_messages_and_the_reply_goes_back_through_kannel() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    let base = receiver(&db).await;
    db.backend(
        "sms",
        "kannel",
        json!({"url": format!("http://{addr}/cgi-bin/sendsms"),
               "dlr_url": format!("{base}/kannel/sms/dlr?secret=s3"),
               "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let (code, body) = get(&format!(
        "{base}/kannel/sms/receive?secret=s3&sender=%2B255700000001&text=ping&id=kan-1"
    ))
    .await;
    assert_eq!((code, body.as_str()), (200, ""));
    // Kannel retries the same message: nothing new
    let (code, _) = get(&format!(
        "{base}/kannel/sms/receive?secret=s3&sender=%2B255700000001&text=ping&id=kan-1"
    ))
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        1
    );
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    let seen = gw.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].q("to"), Some("+255700000001"));
    assert_eq!(seen[0].q("text"), Some("pong"));

    // Delivery reports, through the dlr-url the worker gave Kannel.
    let dlr = seen[0].q("dlr-url").unwrap().replace("%d", "8");
    assert_eq!(get(&dlr).await.0, 200); // accepted by the SMSC: no change
    assert_eq!(get(&dlr.replace("type=8", "type=1")).await.0, 200); // delivered
    assert_eq!(get(&dlr.replace("type=8", "type=1")).await.0, 200); // again
    assert_eq!(get(&dlr.replace("type=8", "type=4")).await.0, 200); // a late "buffered"
    wait_until("the reports are applied", LONG, || async {
        worker.drain().await.unwrap();
        db.scalar_i64("SELECT count(*) FROM dbrouter.receipts")
            .await
            == 0
    })
    .await;
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(m.direction || m.status || '/' || t.status, ',' ORDER BY m.id)
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id"
        )
        .await,
        "IR/R,OD/D"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vumi_events_and_reports_before_the_send_is_recorded() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    let base = receiver(&db).await;
    db.backend(
        "v",
        "vumi",
        json!({"url": format!("http://{addr}/send"), "inbound": {"basic": {"username": "vumi", "password": "pw"}}}),
        None,
    )
    .await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}/vumi/v/{path}"))
            .basic_auth("vumi", Some("pw"))
            .json(&body)
            .send()
    };
    // inbound in Vumi's format
    let r = post(
        "message",
        json!({"message_id": "vm-1", "from_addr": "+27820000001", "to_addr": "1234",
               "content": "hello", "transport_name": "smpp", "message_type": "user_message"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        db.scalar_str("SELECT text || '|' || external_id || '|' || (fields->>'to_addr') FROM dbrouter.messages")
            .await,
        "hello|vm-1|1234"
    );
    // A report can arrive before the worker records the send: it waits.
    *gw.otherwise.lock().unwrap() = Some(Answer::Status(
        200,
        vec![],
        r#"{"message_id": "out-1"}"#.into(),
    ));
    db.broadcast("v", &["+27820000002".into(), "+27820000003".into()], "news")
        .await;
    post(
        "event",
        json!({"event_type": "delivery_report", "user_message_id": "out-1", "delivery_status": "failed"}),
    )
    .await
    .unwrap();
    let worker = db.worker_with(test_config(), vec![]).await;
    worker.drain().await.unwrap();
    // both sends got "out-1" from the stand-in: the report names the first
    wait_until("the early report is applied", LONG, || async {
        worker.drain().await.unwrap();
        db.scalar_i64("SELECT count(*) FROM dbrouter.receipts")
            .await
            == 0
    })
    .await;
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(t.status || coalesce(':' || t.last_error, ''), ',' ORDER BY t.id)
               FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id
              WHERE m.direction = 'O'"
        )
        .await,
        "E:delivery failed: delivery_report: failed,S"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn serve_refuses_bad_requests_and_writes_nothing() {
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
        "open",
        "kannel",
        json!({"url": "http://127.0.0.1:9/"}),
        None,
    )
    .await;
    db.backend(
        "v",
        "vumi",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let client = reqwest::Client::new();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client.get(format!("{base}/kannel/sms/receive?sender=1&text=x")),
            401,
            "wrong or missing credentials",
        ),
        (
            client.get(format!(
                "{base}/kannel/sms/receive?secret=nope&sender=1&text=x"
            )),
            401,
            "wrong or missing credentials",
        ),
        (
            client.get(format!(
                "{base}/kannel/open/receive?secret=&sender=1&text=x"
            )),
            403,
            "set config.inbound.secret",
        ),
        (
            client.get(format!(
                "{base}/kannel/nope/receive?secret=s3&sender=1&text=x"
            )),
            404,
            "no kannel backend named \"nope\"",
        ),
        (
            client.get(format!("{base}/kannel/v/receive?secret=s3&sender=1&text=x")),
            404,
            "no kannel backend named \"v\"",
        ),
        (
            client.get(format!("{base}/kannel/sms/receive?secret=s3&text=x")),
            400,
            "sender is missing",
        ),
        (
            client.get(format!(
                "{base}/kannel/sms/receive?secret=s3&sender=%20&text=x"
            )),
            400,
            "sender is missing or empty",
        ),
        (
            client.get(format!(
                "{base}/kannel/sms/receive?secret=s3&sender=1&text={}",
                "x".repeat(10_001)
            )),
            400,
            "limit is 10000",
        ),
        (
            client.get(format!("{base}/kannel/sms/dlr?secret=s3&t=abc&type=1")),
            400,
            "not a number",
        ),
        (
            client
                .post(format!("{base}/vumi/v/message?secret=s3"))
                .body("{not json"),
            400,
            "not JSON",
        ),
        (
            client
                .post(format!("{base}/vumi/v/message?secret=s3"))
                .json(&json!({"content": "x"})),
            400,
            "from_addr is missing",
        ),
        (
            client
                .post(format!("{base}/vumi/v/event"))
                .header("x-dbrouter-secret", "s3")
                .json(&json!({"event_type": "odd", "user_message_id": "1"})),
            400,
            "unknown event_type",
        ),
        (
            client
                .post(format!("{base}/vumi/v/message?secret=s3"))
                .body(vec![b'x'; 100 * 1024]),
            413,
            "",
        ),
    ];
    for (req, code, says) in cases {
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, code, "{text}");
        assert!(text.contains(says), "{code}: {text}");
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        0
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.receipts")
            .await,
        0
    );
    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_clients_are_committed_in_groups() {
    let db = TestDb::new().await;
    let base = receiver(&db).await;
    db.backend(
        "h",
        "http",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let client = reqwest::Client::new();
    let per_client = 20;
    let mut tasks = Vec::new();
    for c in 0..50 {
        let client = client.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let r = client
                    .post(format!("{base}/http/h/receive"))
                    .header("x-dbrouter-secret", "s3")
                    .form(&[
                        ("identity", format!("+2557{c:04}")),
                        ("text", format!("message {i}")),
                        ("external_id", format!("{c}-{i}")),
                    ])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // every request was answered after its row committed
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        50 * per_client
    );
    let transactions = db
        .scalar_i64("SELECT count(DISTINCT xmin::text) FROM dbrouter.messages")
        .await;
    assert!(
        transactions < 50 * per_client / 2,
        "{transactions} commits for {} messages: requests were not grouped",
        50 * per_client
    );
    db.drop().await;
}

#[tokio::test]
async fn per_identity_calls_fail_alone_and_a_2xx_can_still_be_a_failure() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    db.backend(
        "h",
        "http",
        json!({"url": format!("http://{addr}/sms"), "form": {"to": "{identity}", "msg": "{text}"},
               "success_contains": "\"ok\""}),
        None,
    )
    .await;
    // one call per identity (several in flight): +1 accepted, +2 refused
    // for good, +3 answered 200 with an error in the body
    gw.rules.lock().unwrap().extend([
        (
            "to=%2B1".to_string(),
            Answer::Status(200, vec![], r#"{"status": "ok"}"#.into()),
        ),
        (
            "to=%2B2".to_string(),
            Answer::Status(400, vec![], "invalid number".into()),
        ),
        (
            "to=%2B3".to_string(),
            Answer::Status(200, vec![], r#"{"status": "error"}"#.into()),
        ),
    ]);
    db.broadcast("h", &["+1".into(), "+2".into(), "+3".into()], "hi")
        .await;
    let mut cfg = test_config();
    cfg.max_attempts = 1;
    let worker = db.worker(cfg).await;
    worker.drain().await.unwrap();
    let mut forms: Vec<String> = gw
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.body.clone())
        .collect();
    forms.sort();
    assert_eq!(
        forms,
        ["msg=hi&to=%2B1", "msg=hi&to=%2B2", "msg=hi&to=%2B3"]
    );
    let url = format!("http://{addr}/sms");
    assert_eq!(
        status_of(&db).await,
        format!(
            "S,E:HTTP 400 from {url}: invalid number,E:{url} answered 2xx without \"\\\"ok\\\"\": {{\"status\": \"error\"}}"
        )
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broadcasts_thousands_of_reports_roll_up_to_delivered() {
    let db = TestDb::new().await;
    let (_gw, addr) = stand_in().await;
    let base = receiver(&db).await;
    db.backend(
        "sms",
        "kannel",
        json!({"url": format!("http://{addr}/cgi-bin/sendsms"),
               "dlr_url": format!("{base}/kannel/sms/dlr?secret=s3"),
               "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let n = 2000;
    let identities: Vec<String> = (0..n).map(|i| format!("+2557{i:08}")).collect();
    let msg = db.broadcast("sms", &identities, "big news").await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM dbrouter.transmissions ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    // 50 clients post every report twice (a "buffered" then a "delivered"),
    // in no particular order, all for one message.
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(n / 50) {
        let client = client.clone();
        let base = base.clone();
        let chunk: Vec<i64> = chunk.iter().map(|(i,)| *i).collect();
        tasks.push(tokio::spawn(async move {
            for kind in [4, 1] {
                for id in &chunk {
                    let r = client
                        .get(format!(
                            "{base}/kannel/sms/dlr?secret=s3&t={id}&type={kind}"
                        ))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("every report is applied", LONG, || async {
        worker.drain().await.unwrap();
        db.scalar_i64("SELECT count(*) FROM dbrouter.receipts")
            .await
            == 0
    })
    .await;
    assert_eq!(
        db.scalar_str(&format!(
            "SELECT status || '/' || n_delivered || '/' || (delivered_at IS NOT NULL) FROM dbrouter.messages WHERE id = {msg}"
        ))
        .await,
        format!("D/{n}/true")
    );
    db.assert_invariants().await;
    db.drop().await;
}

/// `dbrouter serve` as its own process on `port`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_killed_mid_load_loses_nothing_and_retries_duplicate_nothing() {
    let db = TestDb::new().await;
    db.backend(
        "h",
        "http",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let up = |client: reqwest::Client, base: String| async move {
        wait_until("serve answers /healthz", LONG, || {
            let client = client.clone();
            let base = base.clone();
            async move {
                matches!(client.get(format!("{base}/healthz")).send().await, Ok(r) if r.status() == 200)
            }
        })
        .await;
    };
    let mut serve = spawn_serve(&db.url, port);
    up(client.clone(), base.clone()).await;

    // 20 gateways' worth of clients, each message retried until a 200, as a
    // gateway does; every retry carries the same gateway id.
    let per_client = 50;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..20 {
        let client = client.clone();
        let base = base.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let id = format!("{c}-{i}");
                loop {
                    let r = client
                        .post(format!("{base}/http/h/receive"))
                        .header("x-dbrouter-secret", "s3")
                        .form(&[
                            ("identity", format!("+2557{c:04}")),
                            ("text", id.clone()),
                            ("external_id", id.clone()),
                        ])
                        .send()
                        .await;
                    if matches!(&r, Ok(r) if r.status() == 200) {
                        acked.lock().unwrap().push(id);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    // Kill the receiver (no goodbye) once some messages are in, then start
    // a new one on the same port.
    wait_until("some messages are in", LONG, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await
            >= 200
    })
    .await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    let mut serve = spawn_serve(&db.url, port);
    up(client.clone(), base.clone()).await;
    for t in tasks {
        t.await.unwrap();
    }
    serve.kill().unwrap();
    serve.wait().unwrap();

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 20 * per_client);
    // every acknowledged message is there, once
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        20 * per_client as i64
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(DISTINCT external_id) FROM dbrouter.messages WHERE external_id = text"
        )
        .await,
        20 * per_client as i64
    );
    db.drop().await;
}

#[tokio::test]
async fn kannel_post_url_takes_the_text_from_the_body_and_the_sender_from_its_header() {
    let db = TestDb::new().await;
    let base = receiver(&db).await;
    db.backend(
        "sms",
        "kannel",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{base}/kannel/sms/receive?secret=s3&id=kan-2"))
        .header("X-Kannel-From", "+255700000002")
        .header("X-Kannel-To", "15015")
        .body("posted text")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        db.scalar_str(
            "SELECT c.identity || '|' || m.text || '|' || m.external_id || '|' || (m.fields->>'to')
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id
               JOIN dbrouter.connections c ON c.id = t.connection_id"
        )
        .await,
        "+255700000002|posted text|kan-2|15015"
    );
    db.drop().await;
}

#[tokio::test]
async fn an_empty_inbound_secret_lets_nobody_in() {
    let db = TestDb::new().await;
    let base = receiver(&db).await;
    db.backend(
        "blank",
        "kannel",
        json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": ""}}),
        None,
    )
    .await;
    for url in [
        format!("{base}/kannel/blank/receive?secret=&sender=1&text=x"),
        format!("{base}/kannel/blank/receive?sender=1&text=x"),
    ] {
        let (code, body) = get(&url).await;
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("set config.inbound.secret"), "{body}");
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await,
        0
    );
    db.drop().await;
}

/// `max_parts` on any engine: a text of more SMS parts ends E at once,
/// permanently, with the count in its error and nothing sent; a text
/// within it goes. A value out of range makes the row misconfigured.
#[tokio::test]
async fn texts_over_max_parts_end_unsent() {
    let db = TestDb::new().await;
    let (gw, addr) = stand_in().await;
    db.backend(
        "h",
        "http",
        json!({"url": format!("http://{addr}/api/sms"), "form": {"to": "{identity}", "text": "{text}"},
               "max_parts": 2}),
        None,
    )
    .await;
    let three = "x".repeat(153 * 2 + 1); // 3 parts of GSM 7-bit
    let two_ucs2 = "ж".repeat(134); // 2 parts of UCS-2
    db.broadcast("h", &["+6".into()], &three).await;
    db.broadcast("h", &["+7".into()], &two_ucs2).await;
    let worker = db.worker_with(test_config(), vec![]).await;
    worker.drain().await.unwrap();
    let seen = gw.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "only the text within max_parts was sent");
    assert!(seen[0].body.contains("to=%2B7"), "{}", seen[0].body);
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(t.status || coalesce(t.due_at::text, '') || ':' || coalesce(t.last_error, ''), ' | ' ORDER BY t.id)
               FROM dbrouter.transmissions t"
        )
        .await,
        "E:the text takes 3 parts (gsm7); backend \"h\" allows at most 2 (config.max_parts); not sent | S:"
    );

    db.exec(
        "UPDATE dbrouter.backends SET config = config || '{\"max_parts\": 0}' WHERE name = 'h'",
    )
    .await;
    let report = dbrouter::admin::status(&db.pool, &test_config())
        .await
        .unwrap();
    assert!(
        report.contains("config.max_parts must be a number from 1 to 255, got 0"),
        "{report}"
    );
    db.drop().await;
}
