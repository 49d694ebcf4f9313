//! Least privilege, as real roles on the real database: what each of the
//! four roles `dbrouter migrate` creates may do, and the clear refusal of
//! everything else (the README's role table, every cell a case here); an
//! enqueueing role sees and cancels only its own messages; the SECURITY
//! DEFINER functions ignore a hostile search_path.

mod common;

use common::TestDb;
use sqlx::PgPool;

/// Run `sql` as `role` (SET ROLE) in a transaction rolled back after, so
/// the cases leave nothing behind; Err is the database's message.
async fn as_role(pool: &PgPool, role: &str, sql: &str) -> Result<(), String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *tx)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        });
    let _ = tx.rollback().await;
    result
}

/// Run `sql` as `role` and commit it.
async fn commit_as(pool: &PgPool, role: &str, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}; {sql}")))
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{role}: {sql}: {e}"));
    tx.commit().await.unwrap();
}

/// A database migrated with roles of a prefix of its own (roles are the
/// cluster's; other tests' use the default), and two application login
/// roles granted the enqueue role.
async fn setup() -> (TestDb, String) {
    let db = TestDb::empty().await;
    let prefix = format!("r{}_", rand::random::<u32>());
    dbrouter::db::migrate_with_roles(&db.pool, &prefix)
        .await
        .expect("migrate with roles");
    db.exec(&format!(
        "CREATE ROLE {prefix}app1; CREATE ROLE {prefix}app2; CREATE ROLE {prefix}app3;
         GRANT {prefix}enqueue TO {prefix}app1, {prefix}app2, {prefix}app3;"
    ))
    .await;
    db.backend("sms", "database", serde_json::json!({}), None)
        .await;
    (db, prefix)
}

async fn teardown(db: TestDb, prefix: &str) {
    db.drop().await;
    let base = dbrouter::db::connect(&common::base_url(), 1)
        .await
        .expect("connect");
    for r in [
        "app1", "app2", "app3", "enqueue", "worker", "admin", "readonly",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {prefix}{r}"
        )))
        .execute(&base)
        .await
        .expect("drop role");
    }
}

/// Every action of the README's role table against every role: allowed
/// where the table says so, refused with "permission denied" elsewhere.
#[tokio::test]
async fn each_role_can_do_exactly_its_list() {
    let (db, p) = setup().await;
    // a message of app1's to act on
    commit_as(
        &db.pool,
        &format!("{p}app1"),
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+255700000001', 'mine')",
    )
    .await;
    let mine = db.scalar_i64("SELECT max(id) FROM dbrouter.messages").await;

    // (action, SQL, roles allowed)
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "insert into outbox",
            "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+1', 'x')"
                .into(),
            &["enqueue", "worker"],
        ),
        (
            "insert into inbox",
            "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sms', '+1', 'x')".into(),
            &["enqueue", "worker"],
        ),
        (
            "broadcast()",
            "SELECT dbrouter.broadcast('sms', ARRAY['+1', '+2'], 'x')".into(),
            &["enqueue", "worker"],
        ),
        (
            "broadcast_preview()",
            "SELECT * FROM dbrouter.broadcast_preview('sms', ARRAY['+1', '+2'], 'x')".into(),
            &["enqueue", "worker", "admin"],
        ),
        (
            "read console users (their password hashes)",
            "SELECT * FROM dbrouter.console_users".into(),
            &["worker", "admin"],
        ),
        (
            "segments()",
            "SELECT dbrouter.segments('x')".into(),
            &["enqueue", "worker", "admin"],
        ),
        (
            "read my_messages",
            "SELECT * FROM dbrouter.my_messages".into(),
            &["enqueue", "worker", "admin"],
        ),
        (
            "read messages (enqueue: its own, by row-level security)",
            "SELECT * FROM dbrouter.messages".into(),
            &["enqueue", "worker", "admin"],
        ),
        (
            "requeue_my_message() of its own",
            "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+1', 'x');
             SELECT dbrouter.requeue_my_message((SELECT max(id) FROM dbrouter.my_messages))"
                .into(),
            &["enqueue", "worker"],
        ),
        (
            "cancel_my_message() of its own",
            "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+1', 'x');
             SELECT dbrouter.cancel_my_message((SELECT max(id) FROM dbrouter.my_messages))"
                .into(),
            &["enqueue", "worker"],
        ),
        (
            "add a tenant",
            "INSERT INTO dbrouter.tenants (name) VALUES ('t')".into(),
            &["worker", "admin"],
        ),
        (
            "read tenant_roles",
            "SELECT * FROM dbrouter.tenant_roles".into(),
            &["worker", "admin"],
        ),
        (
            "read tenant_stats",
            "SELECT * FROM dbrouter.tenant_stats".into(),
            &["worker", "admin", "readonly"],
        ),
        (
            "read transmissions",
            "SELECT * FROM dbrouter.transmissions".into(),
            &["worker", "admin"],
        ),
        (
            "read backends (config, secrets)",
            "SELECT config FROM dbrouter.backends".into(),
            &["worker", "admin"],
        ),
        (
            "add a backend",
            "INSERT INTO dbrouter.backends (name, engine) VALUES ('b2', 'console')".into(),
            &["worker", "admin"],
        ),
        (
            "pause_backend()",
            "SELECT dbrouter.pause_backend('sms', 'x')".into(),
            &["worker", "admin"],
        ),
        (
            "resume_backend()",
            "SELECT dbrouter.resume_backend('sms')".into(),
            &["worker", "admin"],
        ),
        (
            "requeue_backend()",
            "SELECT dbrouter.requeue_backend('sms')".into(),
            &["worker", "admin"],
        ),
        (
            "requeue_message()",
            format!("SELECT dbrouter.requeue_message({mine})"),
            &["worker", "admin"],
        ),
        (
            "cancel_message() (any message)",
            format!("SELECT dbrouter.cancel_message({mine})"),
            &["worker", "admin"],
        ),
        (
            "opt_out()",
            "SELECT dbrouter.opt_out('sms', '+1')".into(),
            &["worker", "admin"],
        ),
        (
            "edit opt-out keywords",
            "DELETE FROM dbrouter.opt_out_keywords".into(),
            &["worker", "admin"],
        ),
        (
            "purge (a batch of it)",
            "SELECT dbrouter.purge_batch('30 days')".into(),
            &["worker", "admin"],
        ),
        (
            "read stats",
            "SELECT * FROM dbrouter.stats".into(),
            &["worker", "admin", "readonly"],
        ),
        (
            "read fanouts_waiting",
            "SELECT * FROM dbrouter.fanouts_waiting".into(),
            &["worker", "admin", "readonly"],
        ),
        (
            "read bind_states",
            "SELECT * FROM dbrouter.bind_states".into(),
            &["worker", "admin", "readonly"],
        ),
        (
            "read recent_errors (identities)",
            "SELECT * FROM dbrouter.recent_errors".into(),
            &["worker", "admin"],
        ),
        (
            "read opted_out (identities)",
            "SELECT * FROM dbrouter.opted_out".into(),
            &["worker", "admin"],
        ),
        (
            "update a transmission by hand",
            "UPDATE dbrouter.transmissions SET status = status".into(),
            &["worker"],
        ),
        (
            "delete receipts",
            "DELETE FROM dbrouter.receipts".into(),
            &["worker"],
        ),
        (
            "write schema_files",
            "UPDATE dbrouter.schema_files SET body = body".into(),
            &[],
        ),
        (
            "DDL in the schema",
            "CREATE TABLE dbrouter.x (i int)".into(),
            &[],
        ),
        (
            "grant_roles()",
            format!("SELECT dbrouter.grant_roles('{p}')"),
            &[],
        ),
    ];
    let roles = ["enqueue", "worker", "admin", "readonly"];
    let mut wrong = Vec::new();
    for (action, sql, allowed) in &cases {
        for role in roles {
            let result = as_role(&db.pool, &format!("{p}{role}"), sql).await;
            let should = allowed.contains(&role);
            match (&result, should) {
                (Ok(()), true) => {}
                (Err(e), false) if e.contains("permission denied") => {}
                _ => wrong.push(format!(
                    "{role} / {action}: {result:?}, expected {}",
                    if should {
                        "allowed"
                    } else {
                        "permission denied"
                    }
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // CALL purge commits as it goes, so outside a transaction block
    let mut conn = db.pool.acquire().await.unwrap();
    for (role, allowed) in [("admin", true), ("enqueue", false)] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {p}{role}")))
            .execute(&mut *conn)
            .await
            .unwrap();
        let purge = sqlx::raw_sql("CALL dbrouter.purge('30 days')")
            .execute(&mut *conn)
            .await;
        assert_eq!(purge.is_ok(), allowed, "{role}: {purge:?}");
    }
    sqlx::raw_sql("RESET ROLE")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    teardown(db, &p).await;
}

/// An application (a login role granted the enqueue role) sees and cancels
/// its own messages only; another's is answered exactly as a missing one.
#[tokio::test]
async fn an_application_sees_and_cancels_only_its_own_messages() {
    let (db, p) = setup().await;
    let (app1, app2) = (format!("{p}app1"), format!("{p}app2"));
    for (app, text) in [(&app1, "one"), (&app2, "two")] {
        commit_as(
            &db.pool,
            app,
            &format!(
                "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+255700000001', '{text}');
                 SELECT dbrouter.broadcast('sms', ARRAY['+255700000002'], '{text} broadcast');"
            ),
        )
        .await;
    }
    assert_eq!(
        db.scalar_str("SELECT string_agg(enqueued_by || ':' || text, ', ' ORDER BY id) FROM dbrouter.messages").await,
        format!("{app1}:one, {app1}:one broadcast, {app2}:two, {app2}:two broadcast")
    );
    let theirs = db
        .scalar_i64(&format!(
            "SELECT min(id) FROM dbrouter.messages WHERE enqueued_by = '{app1}'"
        ))
        .await;
    let own = db
        .scalar_i64(&format!(
            "SELECT min(id) FROM dbrouter.messages WHERE enqueued_by = '{app2}'"
        ))
        .await;

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {app2}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT text FROM dbrouter.my_messages ORDER BY id")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, ["two", "two broadcast"]);
    let cancelled: i32 = sqlx::query_scalar("SELECT dbrouter.cancel_my_message($1)")
        .bind(own)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(cancelled, 1);
    tx.commit().await.unwrap();

    let refused = as_role(
        &db.pool,
        &app2,
        &format!("SELECT dbrouter.cancel_my_message({theirs})"),
    )
    .await
    .unwrap_err();
    let missing = as_role(&db.pool, &app2, "SELECT dbrouter.cancel_my_message(999999)")
        .await
        .unwrap_err();
    assert_eq!(
        refused.replace(&format!("message {theirs} "), "message N "),
        missing.replace("message 999999 ", "message N "),
        "another's message is answered as a missing one"
    );
    assert!(
        refused.contains(&format!("no message {theirs} of {app2}")),
        "{refused}"
    );
    assert_eq!(
        db.scalar_str("SELECT string_agg(text || ':' || coalesce(cancelled_at IS NOT NULL, false)::text, ', ' ORDER BY id) FROM dbrouter.messages").await,
        "one:false, one broadcast:false, two:true, two broadcast:false"
    );
    teardown(db, &p).await;
}

/// The functions that run as the schema's owner pin their search_path: a
/// role that puts a schema of its own first, with functions shadowing the
/// built-ins they call, enqueues normally and runs none of its functions.
#[tokio::test]
async fn definer_functions_ignore_a_hostile_search_path() {
    let (db, p) = setup().await;
    let app = format!("{p}app1");
    db.exec(&format!(
        "CREATE SCHEMA evil_{p} AUTHORIZATION {app};
         SET ROLE {app};
         CREATE FUNCTION evil_{p}.length(text) RETURNS integer LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
         CREATE FUNCTION evil_{p}.regexp_replace(text, text, text, text) RETURNS text LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
         CREATE FUNCTION evil_{p}.cardinality(anyarray) RETURNS integer LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
         RESET ROLE;"
    ))
    .await;
    let hostile = format!("SET LOCAL search_path = evil_{p}, pg_catalog; ");
    // the shadows work where nothing pins the path
    let shadowed = as_role(&db.pool, &app, &format!("{hostile} SELECT length('x')")).await;
    assert!(shadowed.is_err_and(|e| e.contains("hijacked")));
    for sql in [
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', ' +255 700 000 001 ', 'x')",
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sms', '+255700000001', 'x')",
        "SELECT dbrouter.broadcast('sms', ARRAY['+1', '+2'], 'x')",
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('nope', '+1', 'x')",
    ] {
        let result = as_role(&db.pool, &app, &format!("{hostile} {sql}")).await;
        match result {
            Ok(()) => {}
            Err(e) => assert!(
                !e.contains("hijacked") && e.contains("unknown backend 'nope'"),
                "{sql}: {e}"
            ),
        }
    }
    teardown(db, &p).await;
}

/// A pool whose every connection runs as `role` (SET ROLE after connect;
/// works whatever the cluster's authentication).
async fn pool_as(db: &TestDb, role: &str) -> PgPool {
    let set = format!("SET ROLE {role}");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .after_connect(move |conn, _| {
            let set = set.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(dbrouter::db::connect_options(&db.url).expect("url"))
        .await
        .expect("connect")
}

/// A worker under the worker role does the whole round trip of a message
/// an application enqueued; an admin gets `dbrouter status` and pauses a
/// backend; the enqueue role can do neither.
#[tokio::test]
async fn a_worker_and_an_admin_run_under_their_roles() {
    let (db, p) = setup().await;
    let app = pool_as(&db, &format!("{p}app1")).await;
    sqlx::query("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('sms', '+255700000001', 'echo hi')")
        .execute(&app)
        .await
        .unwrap();

    let worker_pool = pool_as(&db, &format!("{p}worker")).await;
    let worker = db.worker_on(&worker_pool).await;
    worker.drain().await.unwrap();
    assert_eq!(db.message_states().await, "IR1,OS1");
    assert_eq!(
        db.scalar_str("SELECT string_agg(text, ',') FROM dbrouter.database_backend_sends")
            .await,
        "hi"
    );

    let admin = pool_as(&db, &format!("{p}admin")).await;
    let report = dbrouter::admin::status(&admin, &common::test_config())
        .await
        .expect("status as admin");
    assert!(report.contains("sms"), "{report}");
    sqlx::query("SELECT dbrouter.pause_backend('sms', 'maintenance')")
        .execute(&admin)
        .await
        .unwrap();
    let status = dbrouter::admin::status(&app, &common::test_config()).await;
    assert!(
        status
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "{:?}",
        status.map(|_| ())
    );
    for pool in [app, worker_pool, admin] {
        pool.close().await;
    }
    drop(worker);
    teardown(db, &p).await;
}

/// After sends that failed against a gateway whose config holds
/// credentials, nothing the enqueue or readonly role can read (every
/// relation it has SELECT on) contains them.
#[tokio::test]
async fn no_secret_is_readable_by_enqueue_or_readonly() {
    let (db, p) = setup().await;
    db.backend(
        "gw",
        "kannel",
        serde_json::json!({"url": "http://127.0.0.1:9/cgi-bin/sendsms", "username": "kuser",
                           "password": "Pa55word-xyz", "inbound": {"secret": "In-S3cret"}}),
        None,
    )
    .await;
    db.broadcast("gw", &["+255700000001".into()], "hello").await;
    let mut cfg = common::test_config();
    cfg.max_attempts = 1;
    db.worker(cfg).await.drain().await.unwrap();
    assert!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts")
            .await
            > 0,
        "a send failed"
    );
    for role in ["enqueue", "readonly"] {
        let role = format!("{p}{role}");
        let readable: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'dbrouter' AND c.relkind IN ('r', 'v', 'm')
                AND has_table_privilege($1, c.oid, 'SELECT')",
        )
        .bind(&role)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(!readable.is_empty(), "{role} reads something");
        let as_role = pool_as(&db, &role).await;
        for rel in readable {
            for secret in ["Pa55word-xyz", "In-S3cret"] {
                let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {rel} t WHERE t::text LIKE '%{secret}%'"
                )))
                .fetch_one(&as_role)
                .await
                .unwrap_or_else(|e| panic!("{role} reading {rel}: {e}"));
                assert_eq!(found, 0, "{role} reads {secret} in {rel}");
            }
        }
        as_role.close().await;
    }
    teardown(db, &p).await;
}

/// `dbrouter serve` and a worker, both under the worker role: a message
/// from a phone in through serve, the reply out through Kannel's sendsms
/// (a stand-in), its delivery report in through serve, applied: D.
#[tokio::test]
async fn serve_and_a_worker_take_a_message_and_its_report_under_the_worker_role() {
    use axum::extract::{Query, State};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let (db, p) = setup().await;
    type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/cgi-bin/sendsms",
            axum::routing::get(
                |State(seen): State<Seen>, Query(q): Query<HashMap<String, String>>| async move {
                    seen.lock().unwrap().push(q);
                    (axum::http::StatusCode::ACCEPTED, "0: Accepted for delivery")
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let worker_pool = pool_as(&db, &format!("{p}worker")).await;
    let base = common::receiver_on(worker_pool.clone()).await;
    db.backend(
        "k",
        "kannel",
        serde_json::json!({"url": format!("http://{gateway}/cgi-bin/sendsms"),
                           "dlr_url": format!("{base}/kannel/k/dlr?secret=s3"),
                           "inbound": {"secret": "s3"}}),
        None,
    )
    .await;
    let (code, body) = common::get(&format!(
        "{base}/kannel/k/receive?secret=s3&sender=%2B255700000001&text=ping&id=kan-1"
    ))
    .await;
    assert_eq!((code, body.as_str()), (200, ""));
    let worker = db.worker_on(&worker_pool).await;
    worker.drain().await.unwrap();
    let dlr = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].get("text").map(String::as_str), Some("pong"));
        seen[0]["dlr-url"].replace("%d", "1")
    };
    assert_eq!(common::get(&dlr).await.0, 200);
    common::wait_until(
        "the report applied",
        std::time::Duration::from_secs(20),
        || async {
            worker.drain().await.unwrap();
            db.scalar_str(
                "SELECT string_agg(m.direction || m.status || '/' || t.status, ',' ORDER BY m.id)
               FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id",
            )
            .await
                == "IR/R,OD/D"
        },
    )
    .await;
    assert_eq!(
        db.scalar_str("SELECT enqueued_by FROM dbrouter.messages WHERE direction = 'I'")
            .await,
        format!("{p}worker"),
        "serve's messages are the worker role's"
    );
    worker_pool.close().await;
    drop(worker);
    teardown(db, &p).await;
}

/// Tenants: app1 and app3 are tenant "acme", app2 tenant "zeta". A tenant
/// reads (row-level security and my_messages), cancels and requeues its
/// own messages only, and learns nothing of the other's: not their rows,
/// counts or ids, not whether a backend it was not granted exists; it
/// sends only through its granted backends; client keys are per tenant.
/// The worker, under its role, still sees and sends everything.
#[tokio::test]
async fn tenants_are_isolated_by_the_database() {
    let (db, p) = setup().await;
    let (app1, app2, app3) = (format!("{p}app1"), format!("{p}app2"), format!("{p}app3"));
    db.backend("shared", "database", serde_json::json!({}), None)
        .await;
    db.exec(&format!(
        "INSERT INTO dbrouter.tenants (name) VALUES ('acme'), ('zeta');
         INSERT INTO dbrouter.tenant_roles (role, tenant) VALUES ('{app1}', 'acme'), ('{app3}', 'acme'), ('{app2}', 'zeta');
         INSERT INTO dbrouter.tenant_backends (tenant, backend_id)
              SELECT 'acme', id FROM dbrouter.backends WHERE name IN ('sms', 'shared')
              UNION ALL SELECT 'zeta', id FROM dbrouter.backends WHERE name = 'shared';"
    ))
    .await;
    commit_as(
        &db.pool,
        &app1,
        "INSERT INTO dbrouter.outbox (backend, identity, text, client_key) VALUES ('sms', '+255700000001', 'acme 1', 'k1');
         SELECT dbrouter.broadcast('shared', ARRAY['+255700000002', '+255700000003'], 'acme broadcast');",
    )
    .await;
    // the same key in another tenant is another message; in the same tenant, the same one
    commit_as(
        &db.pool,
        &app2,
        "INSERT INTO dbrouter.outbox (backend, identity, text, client_key) VALUES ('shared', '+255700000001', 'zeta 1', 'k1');",
    )
    .await;
    commit_as(
        &db.pool,
        &app3,
        "INSERT INTO dbrouter.outbox (backend, identity, text, client_key) VALUES ('sms', '+255700000001', 'acme again', 'k1');",
    )
    .await;
    assert_eq!(
        db.scalar_str("SELECT string_agg(coalesce(tenant, '-') || ':' || text, ', ' ORDER BY id) FROM dbrouter.messages").await,
        "acme:acme 1, acme:acme broadcast, zeta:zeta 1"
    );

    // zeta may not use sms, and cannot tell it from a backend that does not exist
    let refused = as_role(
        &db.pool,
        &app2,
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+1', 'x')",
    )
    .await
    .unwrap_err();
    let unknown = as_role(
        &db.pool,
        &app2,
        "INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('nope', '+1', 'x')",
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("backend 'sms' is unknown or not granted to tenant 'zeta'"),
        "{refused}"
    );
    assert_eq!(
        refused.replace("'sms'", "'B'"),
        unknown.replace("'nope'", "'B'")
    );
    let refused = as_role(
        &db.pool,
        &app2,
        "SELECT dbrouter.broadcast('sms', ARRAY['+1'], 'x')",
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("not granted to tenant 'zeta'"),
        "{refused}"
    );
    // the preview tells nothing more of a backend not granted than of none
    let preview = |backend: &'static str| {
        let pool = db.pool.clone();
        let role = app2.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
                .execute(&mut *tx)
                .await
                .unwrap();
            let row: (i32, Vec<String>, Option<f64>) = sqlx::query_as(
                "SELECT recipients, problems, rate_limit FROM dbrouter.broadcast_preview($1, ARRAY['+1'], 'x')",
            )
            .bind(backend)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            row
        }
    };
    let (not_granted, none) = (preview("sms").await, preview("nope").await);
    assert_eq!(not_granted.0, 0);
    assert!(
        not_granted.1[0].contains("not granted to tenant 'zeta'"),
        "{not_granted:?}"
    );
    assert_eq!(
        (not_granted.1[0].replace("'sms'", "'B'"), not_granted.2),
        (none.1[0].replace("'nope'", "'B'"), none.2)
    );

    // what each reads: its tenant's rows, through the table and the view
    for (app, expected) in [
        (&app1, "acme 1,acme broadcast"),
        (&app3, "acme 1,acme broadcast"),
        (&app2, "zeta 1"),
    ] {
        let pool = pool_as(&db, app).await;
        for from in ["dbrouter.messages", "dbrouter.my_messages"] {
            let seen: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(string_agg(text, ',' ORDER BY id), '') FROM {from}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(seen, expected, "{app} reading {from}");
        }
        let counted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dbrouter.messages WHERE text LIKE 'zeta%' OR text LIKE 'acme%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            counted as usize,
            expected.split(',').count(),
            "{app} counts only its own"
        );
        pool.close().await;
    }

    // cancel and requeue: another tenant's id is answered as a missing one
    let zeta = db
        .scalar_i64("SELECT id FROM dbrouter.messages WHERE tenant = 'zeta'")
        .await;
    let acme = db
        .scalar_i64("SELECT min(id) FROM dbrouter.messages WHERE tenant = 'acme'")
        .await;
    for f in ["cancel_my_message", "requeue_my_message"] {
        let theirs = as_role(&db.pool, &app1, &format!("SELECT dbrouter.{f}({zeta})"))
            .await
            .unwrap_err();
        let missing = as_role(&db.pool, &app1, &format!("SELECT dbrouter.{f}(999999)"))
            .await
            .unwrap_err();
        assert_eq!(
            theirs.replace(&format!("message {zeta} "), "message N "),
            missing.replace("message 999999 ", "message N "),
            "{f}"
        );
        assert!(theirs.contains("of tenant acme"), "{theirs}");
    }
    // app3 cancels what app1 of the same tenant enqueued
    assert_eq!(
        as_role(
            &db.pool,
            &app3,
            &format!("SELECT dbrouter.cancel_my_message({acme})")
        )
        .await,
        Ok(())
    );

    // the worker under its role sees every tenant's messages and sends them
    let worker_pool = pool_as(&db, &format!("{p}worker")).await;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM dbrouter.messages")
        .fetch_one(&worker_pool)
        .await
        .unwrap();
    assert_eq!(seen, 3);
    db.worker_on(&worker_pool).await.drain().await.unwrap();
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(text || ':' || status, ', ' ORDER BY id) FROM dbrouter.messages"
        )
        .await,
        "acme 1:S, acme broadcast:S, zeta 1:S"
    );
    assert_eq!(
        db.scalar_str("SELECT string_agg(tenant || ' ' || status || ' ' || messages, ', ' ORDER BY tenant) FROM dbrouter.tenant_stats").await,
        "acme S 2, zeta S 1"
    );
    worker_pool.close().await;
    teardown(db, &p).await;
}

/// A tenant's rate limit holds across backends and workers, beside the
/// backends' own: acme (20/s, bursts of 5) sends its broadcast no faster,
/// through a backend it shares with zeta, whose broadcast (no limit) is not
/// held back by acme's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_rate_limit_holds_and_spares_other_tenants() {
    let (db, p) = setup().await;
    let (app1, app2) = (format!("{p}app1"), format!("{p}app2"));
    const RATE: f64 = 20.0;
    const BURST: i64 = 5;
    const SLACK: f64 = 1.0;
    db.exec(&format!(
        "INSERT INTO dbrouter.tenants (name, rate_limit, rate_burst) VALUES ('acme', {RATE}, {BURST});
         INSERT INTO dbrouter.tenants (name) VALUES ('zeta');
         INSERT INTO dbrouter.tenant_roles (role, tenant) VALUES ('{app1}', 'acme'), ('{app2}', 'zeta');
         INSERT INTO dbrouter.tenant_backends (tenant, backend_id)
              SELECT t, id FROM dbrouter.backends, unnest(ARRAY['acme', 'zeta']) AS t WHERE name = 'sms';"
    ))
    .await;
    let n = 60;
    let ids = |prefix: &str, n: usize| -> String {
        (0..n)
            .map(|i| format!("'{prefix}{i:06}'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    commit_as(
        &db.pool,
        &app1,
        &format!(
            "SELECT dbrouter.broadcast('sms', ARRAY[{}], 'acme')",
            ids("+255710", n)
        ),
    )
    .await;
    commit_as(
        &db.pool,
        &app2,
        &format!(
            "SELECT dbrouter.broadcast('sms', ARRAY[{}], 'zeta')",
            ids("+255720", 300)
        ),
    )
    .await;
    let stops: Vec<_> = {
        let mut stops = Vec::new();
        for _ in 0..2 {
            let pool = pool_as(&db, &format!("{p}worker")).await;
            let worker = db.worker_on(&pool).await;
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(worker.run(stop.clone()));
            stops.push((stop, pool));
        }
        stops
    };
    common::wait_until(
        "every transmission sent",
        std::time::Duration::from_secs(60),
        || async {
            db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status <> 'S'")
                .await
                == 0
        },
    )
    .await;
    for (stop, _) in &stops {
        stop.cancel();
    }
    let times: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM s.sent_at)::float8 FROM dbrouter.database_backend_sends s
           JOIN dbrouter.messages m ON m.id = s.message_id
          WHERE m.tenant = 'acme' ORDER BY s.sent_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(times.len(), n, "each of acme's sent once");
    // (the window rule of tests/traffic.rs: without the limiter all 60 go
    // out in well under a second and break it by 30 or more)
    let mut worst = 0.0_f64;
    for i in 0..times.len() {
        for j in i..times.len() {
            let allowed = BURST as f64 + RATE * (times[j].0 - times[i].0 + SLACK);
            worst = worst.max((j - i + 1) as f64 - allowed);
        }
    }
    assert!(
        worst <= 0.0,
        "a window held {worst:.1} of acme's sends more than its limit allows"
    );
    let zeta_done_with_acme_at = db
        .scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends s JOIN dbrouter.messages m ON m.id = s.message_id
              WHERE m.tenant = 'acme'
                AND s.sent_at <= (SELECT max(s2.sent_at) FROM dbrouter.database_backend_sends s2
                                    JOIN dbrouter.messages m2 ON m2.id = s2.message_id WHERE m2.tenant = 'zeta')",
        )
        .await;
    assert!(
        zeta_done_with_acme_at < (n / 2) as i64,
        "zeta's 300 were done while acme had sent {zeta_done_with_acme_at} of {n}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.attempts")
            .await,
        0,
        "holding back for the limit records no failed attempt"
    );
    assert_eq!(
        db.scalar_i64("SELECT max(attempts)::bigint FROM dbrouter.transmissions")
            .await,
        1,
        "a transmission put back does not count the claim's attempt"
    );
    db.assert_invariants().await;
    for (_, pool) in stops {
        pool.close().await;
    }
    teardown(db, &p).await;
}
