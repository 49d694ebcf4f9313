//! Inbound processing: apps, replies, R/E marks, poison isolation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{test_config, PoisonReply, TestDb};
use dbrouter::apps::{App, AppError, DefaultReply, Echo, IncomingMessage};
use serde_json::json;

struct Failing;

#[async_trait]
impl App for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        if msg.text.contains("boom") {
            return Err(AppError::new("kaboom"));
        }
        if msg.text == "panic" {
            panic!("app bug");
        }
        Ok(false)
    }
}

struct Slow;

#[async_trait]
impl App for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        if msg.text == "slow" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(false)
    }
}

struct DropSpam;

#[async_trait]
impl App for DropSpam {
    fn name(&self) -> &str {
        "dropspam"
    }
    async fn filter(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        Ok(msg.text.starts_with("spam"))
    }
}

#[tokio::test]
async fn echo_replies_carry_in_response_to_and_reach_the_backend_with_external_id() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text, external_id) VALUES
           ('gw', '+1', 'echo hello world', 'gw-77'),
           ('gw', '+2', 'ping', NULL),
           ('gw', '+3', 'nothing to see', NULL)",
    )
    .await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();

    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status = 'R'"
        )
        .await,
        3
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.direction = 'I' AND t.status = 'R'").await,
        3
    );
    // Replies: one per handled message, each in_response_to its inbound.
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(o.text || '<-' || i.text, ',' ORDER BY o.id)
               FROM dbrouter.messages o JOIN dbrouter.messages i ON i.id = o.in_response_to
              WHERE o.direction = 'O'"
        )
        .await,
        "hello world<-echo hello world,pong<-ping"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'O' AND status = 'S'"
        )
        .await,
        2
    );
    // The backend saw the inbound's gateway id with the reply, and its identity.
    assert_eq!(
        db.scalar_str(
            "SELECT identity || '|' || text || '|' || reply_to_external_id FROM dbrouter.database_backend_sends
              WHERE reply_to_external_id IS NOT NULL"
        )
        .await,
        "+1|hello world|gw-77"
    );
    assert_eq!(
        db.scalar_str("SELECT external_id FROM dbrouter.messages WHERE text = 'echo hello world'")
            .await,
        "gw-77"
    );
    db.drop().await;
}

/// Three `database` backends: `gw` plain, `sim` simulating failures for +9,
/// `ext` with `own_commit` (it records its sends itself, like a gateway).
async fn database_backends(db: &TestDb) {
    db.backend("gw", "database", json!({}), None).await;
    db.backend(
        "sim",
        "database",
        json!({"fail": {"identities": ["+9"]}}),
        None,
    )
    .await;
    db.backend("ext", "database", json!({"own_commit": true}), None)
        .await;
}

/// One delivery path for every engine: a reply is written P with the
/// inbound mark, then sent after that commit. The `database` engine's
/// record of the send commits with the S that records it (exactly once);
/// with `own_commit` it commits on its own first, like a gateway's.
#[tokio::test]
async fn database_engine_replies_are_sent_after_the_inbound_commit() {
    let db = TestDb::new().await;
    database_backends(&db).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text, external_id) VALUES
           ('gw', '+1', 'echo one', 'in-1'), ('sim', '+3', 'echo three', 'in-3'),
           ('ext', '+2', 'echo two', 'in-2')",
    )
    .await;
    db.worker(test_config()).await.drain().await.unwrap();
    // xmin: the transaction that wrote each row's current version.
    let same_txn = |backend: &'static str| {
        let db = &db;
        async move {
            db.scalar_str(&format!(
                "SELECT string_agg((i.xmin <> t.xmin)::text || '/' || (t.xmin = s.xmin)::text, ',')
                   FROM dbrouter.messages i
                   JOIN dbrouter.messages o ON o.in_response_to = i.id
                   JOIN dbrouter.transmissions t ON t.message_id = o.id AND t.status = 'S'
                   JOIN dbrouter.database_backend_sends s ON s.transmission_id = t.id
                  WHERE s.backend = '{backend}' AND i.status = 'R' AND o.status = 'S'"
            ))
            .await
        }
    };
    assert_eq!(same_txn("gw").await, "true/true");
    assert_eq!(same_txn("sim").await, "true/true");
    assert_eq!(same_txn("ext").await, "true/false");
    // Every path records the same thing: the reply, its transmission, the
    // answered message's gateway id, the first attempt, a call of its own.
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(s.backend || '|' || s.identity || '|' || s.text || '|'
                               || s.reply_to_external_id || '|' || s.attempt
                               || '|' || (s.message_id = t.message_id)
                               || '|' || (o.in_response_to = s.in_response_to)
                               || '|' || (t.attempts = 1 AND t.sent_at IS NOT NULL
                                          AND o.sent_at IS NOT NULL AND o.n_done = 1),
                               ',' ORDER BY s.backend)
               FROM dbrouter.database_backend_sends s
               JOIN dbrouter.transmissions t ON t.id = s.transmission_id
               JOIN dbrouter.messages o ON o.id = t.message_id"
        )
        .await,
        "ext|+2|two|in-2|1|true|true|true,gw|+1|one|in-1|1|true|true|true,\
         sim|+3|three|in-3|1|true|true|true"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(DISTINCT call_id) FROM dbrouter.database_backend_sends")
            .await,
        3,
        "each reply recorded once, in a call of its own"
    );
    db.assert_invariants().await;
    db.drop().await;
}

#[tokio::test]
async fn an_app_failure_marks_only_that_message_e() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES
           ('gw', '+1', 'ping'), ('gw', '+2', 'boom'), ('gw', '+3', 'ping'), ('gw', '+4', 'panic')",
    )
    .await;
    let worker = db
        .worker_with(test_config(), vec![Arc::new(Failing), Arc::new(Echo)])
        .await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str("SELECT status || ':' || error FROM dbrouter.messages WHERE text = 'boom'")
            .await,
        "E:app \"failing\" failed in handle: kaboom"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE text = 'ping' AND status = 'R'"
        )
        .await,
        2
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE direction = 'O'")
            .await,
        2
    );
    // The failure is in the attempt history and the errors view.
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(error, ' | ' ORDER BY message_id) FROM dbrouter.recent_errors WHERE direction = 'I'"
        )
        .await,
        "app \"failing\" failed in handle: kaboom | an app panicked: app bug"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_poison_message_ends_e_while_the_rest_of_its_batch_succeeds() {
    let db = TestDb::new().await;
    let worker = fifty_with_one(&db, "poison").await;
    worker.drain().await.unwrap();
    assert_only_it_failed(&db, "poison", "0x00").await;
    db.drop().await;
}

/// The message saying `text` alone ended E, with the database's refusal
/// (naming `cause`); the other 49 were answered and their replies sent.
async fn assert_only_it_failed(db: &TestDb, text: &str, cause: &str) {
    let failed = db
        .scalar_str(&format!(
            "SELECT status || ':' || error FROM dbrouter.messages WHERE text = '{text}'"
        ))
        .await;
    assert!(failed.starts_with("E:the database refused"), "{failed}");
    assert!(failed.contains(cause), "{failed}");
    assert_eq!(db.message_states().await, "IE1,IR49,OS49");
}

/// Fifty messages to backend `gw`, the eighteenth saying `text` (which
/// PoisonReply answers with what the database refuses), the rest echoed;
/// and a worker with those apps.
async fn fifty_with_one(db: &TestDb, text: &str) -> Arc<dbrouter::worker::Worker> {
    db.backend("gw", "database", json!({}), None).await;
    let values: Vec<String> = (0..50)
        .map(|i| match i {
            17 => format!("('gw', '+{i}', '{text}')"),
            _ => format!("('gw', '+{i}', 'echo {i}')"),
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES {}",
        values.join(",")
    ))
    .await;
    db.worker_with(test_config(), vec![Arc::new(PoisonReply), Arc::new(Echo)])
        .await
}

/// The same isolation when a reply breaks a CHECK (too long) rather than
/// holding text PostgreSQL cannot store.
#[tokio::test]
async fn a_reply_refused_by_a_check_is_isolated_the_same_way() {
    let db = TestDb::new().await;
    let worker = fifty_with_one(&db, "too long").await;
    let pass = worker.work_once().await.unwrap();
    assert_eq!(pass.claimed, 50);
    assert_only_it_failed(&db, "too long", "message_text_length").await;
    db.assert_invariants().await;
    db.drop().await;
}

/// Replies a sender's text cannot confuse: quotes, backslashes, array
/// syntax, the word NULL, spaces, control characters, non-ASCII, nothing.
struct Tricky;

const TRICKY: [&str; 7] = [
    "quote \" backslash \\ single ' dollar $$ E'x' \\N",
    "{a,b} NULL",
    "NULL",
    "  spaced  ",
    "line\nbreak\ttab",
    "é 🎉 ∑",
    "",
];

#[async_trait]
impl App for Tricky {
    fn name(&self) -> &str {
        "tricky"
    }
    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        for t in TRICKY {
            msg.respond(t);
        }
        Ok(true)
    }
}

/// Texts, identities and gateway ids arrive exactly as the app and the
/// gateway gave them, whichever engine sends them; whatever the session's quoting
/// settings (`backslash_quote = off`). Values are always bound, never
/// written into the SQL.
#[tokio::test]
async fn replies_arrive_exactly_as_given() {
    let db = TestDb::new().await;
    database_backends(&db).await;
    db.exec(&format!(
        "ALTER DATABASE {} SET backslash_quote = off",
        db.name
    ))
    .await;
    let strict = dbrouter::db::connect(&db.url, 4).await.unwrap();
    db.exec(
        r#"INSERT INTO dbrouter.inbox (backend, identity, text, external_id) VALUES
             ('gw', $q$+1 'a\"$q$, 'hi', $q$in "1" \ '{x}'$q$), ('ext', '+2', 'hi', NULL)"#,
    )
    .await;
    let worker = dbrouter::worker::Worker::new(
        strict.clone(),
        Default::default(),
        test_config(),
        dbrouter::apps::Pipeline::new(vec![Arc::new(Tricky)]),
    )
    .await
    .unwrap();
    let pass = worker.work_once().await.unwrap();
    assert_eq!(pass.claimed, 2);
    for backend in ["gw", "ext"] {
        let texts: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT s.text, s.identity, s.reply_to_external_id
               FROM dbrouter.database_backend_sends s
              WHERE s.backend = $1 ORDER BY s.transmission_id",
        )
        .bind(backend)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let (identity, gateway_id) = match backend {
            "gw" => (r#"+1 'a\""#, Some(r#"in "1" \ '{x}'"#.to_string())),
            _ => ("+2", None),
        };
        let want: Vec<(String, String, Option<String>)> = TRICKY
            .iter()
            .map(|t| (t.to_string(), identity.to_string(), gateway_id.clone()))
            .collect();
        assert_eq!(texts, want, "{backend}");
    }
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sim', '+3', 'hi')")
        .await;
    let pass = worker.work_once().await.unwrap();
    assert_eq!(pass.claimed, 1);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'O' AND status = 'S'"
        )
        .await,
        21
    );
    db.assert_invariants().await;
    strict.close().await;
    db.drop().await;
}

#[tokio::test]
async fn a_slow_app_is_cut_by_the_deadline() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'slow'), ('gw', '+2', 'ping')")
        .await;
    let mut cfg = test_config();
    cfg.app_timeout = Duration::from_millis(300);
    let worker = db
        .worker_with(cfg, vec![Arc::new(Slow), Arc::new(Echo)])
        .await;
    worker.drain().await.unwrap();
    let slow = db
        .scalar_str("SELECT status || ':' || error FROM dbrouter.messages WHERE text = 'slow'")
        .await;
    assert!(
        slow.starts_with("E:the apps did not finish within 300ms"),
        "{slow}"
    );
    assert_eq!(
        db.scalar_str("SELECT status::text FROM dbrouter.messages WHERE text = 'ping'")
            .await,
        "R"
    );
    db.drop().await;
}

#[tokio::test]
async fn phases_follow_rapidsms_rules() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES
           ('gw', '+1', 'spam spam'), ('gw', '+2', 'ping'), ('gw', '+3', 'what?')",
    )
    .await;
    let worker = db
        .worker_with(
            test_config(),
            vec![
                Arc::new(DropSpam),
                Arc::new(Echo),
                Arc::new(DefaultReply::new("huh?".into())),
            ],
        )
        .await;
    worker.drain().await.unwrap();
    // Filtered: processed (R) but no reply. Handled: no default. Unhandled: default.
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(i.text || '=' || i.status || '>' || coalesce(o.text, '-'), ',' ORDER BY i.id)
               FROM dbrouter.messages i LEFT JOIN dbrouter.messages o ON o.in_response_to = i.id
              WHERE i.direction = 'I'"
        )
        .await,
        "spam spam=R>-,ping=R>pong,what?=R>huh?"
    );
    db.drop().await;
}

#[tokio::test]
async fn keyword_app_replies_from_the_keywords_table() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("INSERT INTO dbrouter.keywords (keyword, reply) VALUES ('hours', 'Open 9-5')")
        .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'HOURS please'), ('gw', '+2', 'other')")
        .await;
    let pipeline = dbrouter::apps::Pipeline::from_names(
        &["keyword".into(), "default".into()],
        &db.pool,
        &dbrouter::apps::AppSettings {
            default_reply: "try HOURS".into(),
        },
    )
    .unwrap();
    let worker =
        dbrouter::worker::Worker::new(db.pool.clone(), Default::default(), test_config(), pipeline)
            .await
            .unwrap();
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(text, ',' ORDER BY id) FROM dbrouter.messages WHERE direction = 'O'"
        )
        .await,
        "Open 9-5,try HOURS"
    );
    db.drop().await;
}

#[tokio::test]
async fn replies_to_a_disabled_backend_wait_queued_and_go_once_it_is_enabled() {
    let db = TestDb::new().await;
    db.backend("gw", "database", json!({}), None).await;
    db.exec("UPDATE dbrouter.backends SET enabled = false")
        .await;
    db.exec("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'ping')")
        .await;
    let worker = db.worker(test_config()).await;
    worker.drain().await.unwrap();
    assert_eq!(
        db.scalar_str("SELECT string_agg(m.direction || m.status || t.status, ',' ORDER BY m.id) FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id").await,
        "IRR,OQQ",
        "processed, reply queued, nothing sent"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await,
        0
    );
    db.exec("UPDATE dbrouter.backends SET enabled = true").await;
    common::wait_until("the reply goes out", Duration::from_secs(30), || async {
        worker.drain().await.unwrap();
        db.scalar_i64("SELECT count(*) FROM dbrouter.database_backend_sends")
            .await
            == 1
    })
    .await;
    db.drop().await;
}
