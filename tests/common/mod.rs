//! Test support: a fresh, migrated database per test on the server in
//! DATABASE_URL (bin/test starts a throwaway one), and helpers to wait for
//! conditions instead of sleeping.
#![allow(dead_code)]

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dbrouter::apps::{App, AppError, Echo, IncomingMessage, Pipeline};
use dbrouter::worker::Worker;
use dbrouter::WorkerConfig;
use serde_json::Value;
use sqlx::PgPool;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

/// A loopback port free now, for a process (or a server started later) to
/// listen on, from below the kernel's ephemeral range (32768 and up on
/// Linux): a port `bind(0)` handed out could be handed again to any test's
/// outgoing connection before the server binds it (it happened to
/// bearerbox: "Address already in use").
pub fn free_port() -> u16 {
    loop {
        let port = rand::random::<u16>() % 12_000 + 20_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn base_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests with bin/test, which starts a throwaway PostgreSQL",
    )
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        dbrouter::db::migrate(&db.pool).await.expect("migrate");
        db
    }

    /// A fresh database, not migrated.
    pub async fn empty() -> TestDb {
        let base = base_url();
        let admin = dbrouter::db::connect(&base, 1)
            .await
            .expect("connect to DATABASE_URL");
        let name = format!(
            "dbrouter_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = dbrouter::db::with_database(&base, &name);
        let pool = dbrouter::db::connect(&url, 20)
            .await
            .expect("connect to test database");
        TestDb { pool, url, name }
    }

    /// Add a backend; returns its id.
    pub async fn backend(
        &self,
        name: &str,
        engine: &str,
        config: Value,
        batch_size: Option<i32>,
    ) -> i32 {
        let (id,): (i32,) = sqlx::query_as(
            "INSERT INTO dbrouter.backends (name, engine, config, batch_size) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(engine)
        .bind(config)
        .bind(batch_size)
        .fetch_one(&self.pool)
        .await
        .expect("add backend");
        id
    }

    /// A backend that only receives (its gateway address leads nowhere),
    /// through `dbrouter serve` with the secret "s3".
    pub async fn receiving_backend(&self, name: &str, engine: &str) -> i32 {
        self.backend(
            name,
            engine,
            serde_json::json!({"url": "http://127.0.0.1:9/", "inbound": {"secret": "s3"}}),
            None,
        )
        .await
    }

    /// `dbrouter.broadcast(backend, identities, text)`; returns the message id.
    pub async fn broadcast(&self, backend: &str, identities: &[String], text: &str) -> i64 {
        let (id,): (i64,) = sqlx::query_as("SELECT dbrouter.broadcast($1, $2, $3)")
            .bind(backend)
            .bind(identities)
            .bind(text)
            .fetch_one(&self.pool)
            .await
            .expect("broadcast");
        id
    }

    /// Wait until `n` transmissions are claimed (P).
    pub async fn wait_claimed(&self, n: i64) {
        wait_until(
            "the batch is claimed (P)",
            Duration::from_secs(60),
            || async {
                self.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'P'")
                    .await
                    == n
            },
        )
        .await;
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        n
    }

    pub async fn scalar_str(&self, sql: &str) -> String {
        let (s,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        s
    }

    pub async fn worker(&self, cfg: WorkerConfig) -> Arc<Worker> {
        self.worker_with(cfg, vec![Arc::new(Echo)]).await
    }

    /// A worker with `echo` on a pool of the test's own.
    pub async fn worker_on(&self, pool: &PgPool) -> Arc<Worker> {
        Worker::new(
            pool.clone(),
            Default::default(),
            test_config(),
            Pipeline::new(vec![Arc::new(Echo)]),
        )
        .await
        .expect("start worker")
    }

    pub async fn worker_with(&self, cfg: WorkerConfig, apps: Vec<Arc<dyn App>>) -> Arc<Worker> {
        Worker::new(
            self.pool.clone(),
            Default::default(),
            cfg,
            Pipeline::new(apps),
        )
        .await
        .expect("start worker")
    }

    /// How many messages are in each direction and status, e.g. "IR1,OS3".
    pub async fn message_states(&self) -> String {
        self.scalar_str(
            "SELECT coalesce(string_agg(direction || status || n, ',' ORDER BY direction, status), '')
               FROM (SELECT direction, status, count(*) AS n FROM dbrouter.messages
                      GROUP BY 1, 2) x",
        )
        .await
    }

    /// Message counters must always equal a recount of the transmissions
    /// (and, for n_total, of the identities of parts not yet expanded).
    /// Every invariant of `sql/invariants.sql` holds.
    pub async fn assert_invariants(&self) {
        for check in dbrouter::invariants::checks() {
            let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(check.sql))
                .fetch_all(&self.pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", check.name));
            assert!(ids.is_empty(), "{}: {} {ids:?}", check.name, check.ids_of);
        }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        if let Ok(admin) = dbrouter::db::connect(&base_url(), 1).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&admin)
            .await;
        }
    }
}

/// Replies with text the database refuses (PostgreSQL's text cannot hold
/// NUL) when the message says "poison".
pub struct PoisonReply;

#[async_trait]
impl App for PoisonReply {
    fn name(&self) -> &str {
        "poison"
    }
    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        if msg.text == "poison" {
            msg.respond("bad\0byte");
            return Ok(true);
        }
        if msg.text == "too long" {
            // Over messages.text's 10,000 characters.
            msg.respond("x".repeat(10_001));
            return Ok(true);
        }
        Ok(false)
    }
}

/// `n` identities: the prefix and a six-digit number (000000, 000001, ...).
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:06}")).collect()
}

/// Settings for in-process tests: one lane, retries due at once.
pub fn test_config() -> WorkerConfig {
    WorkerConfig {
        batch_size: 200,
        concurrency: 1,
        poll_interval: Duration::from_millis(200),
        poll_only: false,
        lease: Duration::from_secs(30),
        send_timeout: Duration::from_secs(5),
        app_timeout: Duration::from_secs(5),
        retry_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        max_attempts: 5,
        reassembly_timeout: Duration::from_secs(3600),
    }
}

/// Wait until `check` returns true, polling; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A child process that is killed when dropped, so a test that fails
/// halfway leaves no worker running behind it.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start a `dbrouter worker` process on `url` with extra arguments.
pub fn spawn_worker(url: &str, args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_dbrouter"))
            .arg("worker")
            .args(args)
            .env("DATABASE_URL", url)
            .env("DBROUTER_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dbrouter worker"),
    )
}

/// `dbrouter serve` as a process on `port` (so a test can kill it).
pub fn spawn_serve(url: &str, port: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_dbrouter"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", url)
            .env("DBROUTER_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dbrouter serve"),
    )
}

/// `dbrouter serve` in this process, on a free port; its base URL.
pub async fn receiver(db: &TestDb) -> String {
    receiver_on(db.pool.clone()).await
}

/// `dbrouter serve` on `pool`, in this process, on a free port.
pub async fn receiver_on(pool: PgPool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        dbrouter::serve::serve(pool, listener, std::future::pending())
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

/// A GET's status and body.
pub async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
