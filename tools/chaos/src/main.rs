//! `dbrouter-chaos`: the fault drill that `bin/chaos` runs.
//!
//! Pushes a mixed load (inbound messages answered by apps, broadcasts, a
//! backend that fails some sends, one that hangs past its timeout, one that
//! refuses some identities for good, an `http` engine backend in front of
//! a stand-in gateway that answers some calls 503 or 429, and an `smpp`
//! engine backend bound to an SMSC that refuses some submits and is itself
//! restarted now and then) through several `dbrouter worker` processes while
//! killing, stopping and disconnecting them and restarting PostgreSQL. Then it waits for the queues to settle and checks that nothing
//! was lost, nothing is stuck, and duplicates stay within what the README
//! promises. Exits non-zero, naming ids to look at, when an invariant breaks.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tokio::time::Instant;

mod smsc;

#[derive(Parser, Debug, Clone)]
#[command(name = "dbrouter-chaos", about = "Fault drill for dbrouter")]
struct Args {
    /// Database the drill sets up and checks (connects directly).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Database URL the workers use (e.g. through PgBouncer); default: --database-url.
    #[arg(long, env = "CHAOS_WORKER_URL")]
    worker_url: Option<String>,
    /// Command prefix that runs pg_ctl for this cluster, e.g.
    /// "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/x/pgdata".
    #[arg(long, env = "CHAOS_PG_CTL")]
    pg_ctl: String,
    /// The dbrouter binary.
    #[arg(
        long,
        env = "CHAOS_DBROUTER",
        default_value = "target/release/dbrouter"
    )]
    dbrouter: String,
    /// How long faults are injected.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the drill's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Inbound messages enqueued per tick (10 ticks a second).
    #[arg(long, default_value_t = 20)]
    inbound_per_tick: usize,
    /// Identities per broadcast (one broadcast every ~3 s).
    #[arg(long, default_value_t = 2000)]
    broadcast_size: usize,
    /// Mean time between faults.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Workers poll instead of LISTEN and use unnamed statements (PgBouncer).
    #[arg(long)]
    poll_only: bool,
    /// How long to wait for the queues to settle after the faults stop.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

// Worker settings of the drill, also the base of the duplicate bound.
const CONCURRENCY: usize = 3;
const BATCH: usize = 50;
// The smsc backend's binds per worker and window per bind: what an SMSC
// restart can leave accepted but unanswered, per worker.
const SMPP_BINDS: usize = 2;
const SMPP_WINDOW: usize = 10;
/// Kinds of fault (see `inject`).
const FAULTS: u32 = 7;
const LEASE: &str = "3s";
const LEASE_SECS: u64 = 3;

// steady and picky record their sends in the transaction that marks them
// S (the database engine's default: exactly once); flaky and slow commit
// them on their own first, like an external gateway (at least once).
const BACKENDS: &[(&str, &str)] = &[
    ("steady", r#"{}"#),
    (
        "flaky",
        r#"{"own_commit": true, "fail": {"rate": 0.3, "error": "flaky gateway"}}"#,
    ),
    (
        "slow",
        r#"{"own_commit": true, "delay": "2s", "delay_rate": 0.05, "timeout": "1s"}"#,
    ),
    (
        "picky",
        r#"{"fail": {"identities": ["+7000", "+7001", "+7002"], "permanent": true, "error": "number barred"}}"#,
    ),
];

struct Workers {
    args: Args,
    children: Vec<Child>,
}

impl Workers {
    fn spawn_one(args: &Args) -> Result<Child> {
        // Workers run as dbrouter_worker (set at connection start), as a
        // deployment runs them: under the row-level security of messages.
        // Through PgBouncer (--worker-url) they connect as its user.
        let url = args.worker_url.clone().unwrap_or_else(|| {
            let url = &args.database_url;
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}options=-c%20role%3Ddbrouter_worker")
        });
        let mut cmd = Command::new(&args.dbrouter);
        cmd.arg("worker")
            .args(["--apps", "echo,default"])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .args(["--batch-size", &BATCH.to_string()])
            .args([
                "--lease",
                LEASE,
                "--send-timeout",
                "1s",
                "--app-timeout",
                "2s",
            ])
            .args([
                "--poll-interval",
                "500ms",
                "--retry-backoff",
                "200ms",
                "--max-backoff",
                "2s",
            ])
            .args(["--max-attempts", "6"])
            .env("DATABASE_URL", url)
            .env("DBROUTER_LOG", "error")
            .stdin(Stdio::null());
        if args.poll_only {
            cmd.arg("--poll-only").arg("--no-prepared-statements");
        }
        cmd.spawn()
            .with_context(|| format!("cannot start {}", args.dbrouter))
    }

    fn start(args: &Args) -> Result<Self> {
        let children = (0..args.workers)
            .map(|_| Self::spawn_one(args))
            .collect::<Result<_>>()?;
        Ok(Workers {
            args: args.clone(),
            children,
        })
    }

    fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self.children[i].id().to_string();
        let status = Command::new("kill").args(["-s", sig, &pid]).status()?;
        if !status.success() {
            bail!("kill -s {sig} {pid} failed");
        }
        Ok(())
    }

    /// Wait until worker `i` has installed its SIGTERM handler (bit 14 of
    /// SigCgt in `/proc/<pid>/status`), so a SIGTERM tests the graceful stop
    /// and not the default action on a process that has only just started.
    async fn wait_handles_term(&mut self, i: usize, limit: Duration) -> Result<()> {
        let path = format!("/proc/{}/status", self.children[i].id());
        let start = Instant::now();
        loop {
            if self.children[i].try_wait()?.is_some() {
                return Ok(()); // exited already; wait_exit reports how
            }
            let status = std::fs::read_to_string(&path).unwrap_or_default();
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << (15 - 1)) != 0);
            if caught {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "worker {} did not install its SIGTERM handler within {limit:?}",
                    self.children[i].id()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM worker `i` once it handles SIGTERM.
    async fn terminate(&mut self, i: usize) -> Result<()> {
        self.wait_handles_term(i, Duration::from_secs(10)).await?;
        self.signal(i, "TERM")
    }

    async fn wait_exit(&mut self, i: usize, limit: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.children[i].try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > limit {
                bail!(
                    "worker {} did not exit within {limit:?}",
                    self.children[i].id()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        self.children[i] = Self::spawn_one(&self.args)?;
        Ok(())
    }

    /// Restart any worker that exited on its own (it should not).
    fn revive(&mut self, figures: &mut Figures) -> Result<()> {
        for i in 0..self.children.len() {
            if let Some(status) = self.children[i].try_wait()? {
                figures.unexpected_exits += 1;
                eprintln!("chaos: worker exited by itself ({status}); restarting it");
                self.restart(i)?;
            }
        }
        Ok(())
    }
}

#[derive(Default, Debug)]
struct Figures {
    settle_secs: f64,
    /// Fault kinds not injected yet.
    pending: Vec<u32>,
    workers: usize,
    inbound_acked: usize,
    inbound_ambiguous: usize,
    broadcasts_acked: usize,
    broadcast_transmissions: usize,
    broadcasts_ambiguous: usize,
    sigkills: usize,
    sigterms: usize,
    sigterm_bad_exits: usize,
    pg_restarts_fast: usize,
    pg_restarts_immediate: usize,
    connection_cuts: usize,
    pauses: usize,
    smsc_restarts: usize,
    unexpected_exits: usize,
}

/// A stand-in HTTP gateway for the `gateway` backend (the `http` engine):
/// about 10 % of calls get a 503, 3 % a 429 with Retry-After 1; the rest are
/// recorded in `dbrouter.database_backend_sends` (so the drill's checks see
/// them like the `database` engine's) before a 200. When the record cannot
/// be written (the database is restarting) the call gets a 503.
async fn stand_in_gateway(args: &Args) -> Result<std::net::SocketAddr> {
    use axum::extract::{Form, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::collections::HashMap;

    async fn send(
        State(pool): State<PgPool>,
        Form(f): Form<HashMap<String, String>>,
    ) -> axum::response::Response {
        let roll: f64 = rand::random();
        if roll < 0.10 {
            return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
        }
        if roll < 0.13 {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response();
        }
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
        let (Some(t), Some(m)) = (num("t"), num("m")) else {
            return (StatusCode::BAD_REQUEST, "t and m are required").into_response();
        };
        let recorded = sqlx::query(
            "INSERT INTO dbrouter.database_backend_sends
                    (call_id, batch, backend, message_id, transmission_id, identity, text, attempt)
             VALUES (nextval('dbrouter.database_backend_calls'), 0, 'gateway', $1, $2, $3, $4, 0)",
        )
        .bind(m)
        .bind(t)
        .bind(f.get("to").cloned().unwrap_or_default())
        .bind(f.get("text").cloned().unwrap_or_default())
        .execute(&pool)
        .await;
        match recorded {
            Ok(_) => (StatusCode::OK, "accepted").into_response(),
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "cannot record").into_response(),
        }
    }

    let pool = dbrouter::db::connect_lazy(&args.database_url, 8)?;
    let app = axum::Router::new()
        .route("/send", axum::routing::post(send))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("chaos: the stand-in gateway stopped: {e}");
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let pool = dbrouter::db::connect(&args.database_url, 4)
        .await
        .context("cannot connect to the drill's database")?;
    dbrouter::db::migrate(&pool).await?;
    let gateway = stand_in_gateway(&args).await?;
    sqlx::query(
        "INSERT INTO dbrouter.backends (name, engine, config) VALUES ('gateway', 'http', $1)
         ON CONFLICT (name) DO UPDATE SET engine = EXCLUDED.engine, config = EXCLUDED.config",
    )
    .bind(serde_json::json!({
        "url": format!("http://{gateway}/send"),
        "form": {"t": "{transmission_id}", "m": "{message_id}", "to": "{identity}", "text": "{text}"},
        "timeout": "1s",
    }))
    .execute(&pool)
    .await?;
    sqlx::raw_sql(smsc::CREATE).execute(&pool).await?;
    let mut smsc = Some(smsc::Smsc::start(&args.database_url).await?);
    let smsc_port = smsc.as_ref().map_or(0, |s| s.port);
    sqlx::query(
        "INSERT INTO dbrouter.backends (name, engine, config) VALUES ('smsc', 'smpp', $1)
         ON CONFLICT (name) DO UPDATE SET engine = EXCLUDED.engine, config = EXCLUDED.config",
    )
    .bind(serde_json::json!({
        "url": format!("smpp://127.0.0.1:{smsc_port}"),
        "system_id": "chaos", "password": "chaos", "source_addr": "4321",
        "binds": SMPP_BINDS, "window": SMPP_WINDOW,
        "enquire_link": "1s", "response_timeout": "1s", "throttle_wait": "100ms",
        "timeout": "1s",
    }))
    .execute(&pool)
    .await?;
    let names: Vec<&str> = BACKENDS
        .iter()
        .map(|(n, _)| *n)
        .chain(["gateway", "smsc"])
        .collect();
    for (name, config) in BACKENDS {
        sqlx::query(
            "INSERT INTO dbrouter.backends (name, engine, config) VALUES ($1, 'database', $2::jsonb)
             ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config",
        )
        .bind(name)
        .bind(config)
        .execute(&pool)
        .await?;
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut figures = Figures {
        pending: (0..FAULTS).collect(),
        workers: args.workers,
        ..Figures::default()
    };
    let mut workers = Workers::start(&args)?;
    let mut acked_inbound: Vec<String> = Vec::new();
    let mut acked_broadcasts: Vec<i64> = Vec::new();

    println!(
        "chaos: seed {} for {}, {} workers{}",
        args.seed,
        humantime::format_duration(args.duration),
        args.workers,
        if args.poll_only {
            ", poll-only through the worker URL"
        } else {
            ""
        }
    );
    let start = Instant::now();
    let mut next_fault = start + jitter(&mut rng, args.fault_every);
    let mut next_broadcast = start;
    let mut immediate_done = false;
    let mut seq: u64 = 0;
    while start.elapsed() < args.duration {
        // Load: a multi-row INSERT of inbound messages every tick.
        let mut texts = Vec::with_capacity(args.inbound_per_tick);
        let mut sql = String::from("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ");
        for i in 0..args.inbound_per_tick {
            seq += 1;
            let backend = names[rng.gen_range(0..names.len())];
            let text = format!("echo c{}-{seq}", args.seed);
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{backend}', '+{}', '{text}')",
                1000 + seq % 5000
            ));
            texts.push(text);
        }
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
            Ok(_) => {
                figures.inbound_acked += texts.len();
                acked_inbound.extend(texts);
            }
            Err(_) => figures.inbound_ambiguous += texts.len(),
        }
        if Instant::now() >= next_broadcast {
            next_broadcast = Instant::now() + jitter(&mut rng, Duration::from_secs(3));
            // each backend in turn, the SMPP one first (a quick drill has
            // only a few broadcasts)
            let turn = figures.broadcasts_acked + figures.broadcasts_ambiguous;
            let backend = names[(names.len() - 1 + turn) % names.len()];
            let ids: Vec<String> = (0..args.broadcast_size)
                .map(|i| format!("+{}", 7000 + i))
                .collect();
            match sqlx::query_as::<_, (i64,)>("SELECT dbrouter.broadcast($1, $2, $3)")
                .bind(backend)
                .bind(&ids)
                .bind(format!("broadcast {seq}"))
                .fetch_one(&pool)
                .await
            {
                Ok((id,)) => {
                    figures.broadcasts_acked += 1;
                    figures.broadcast_transmissions += ids.len();
                    acked_broadcasts.push(id);
                }
                Err(_) => figures.broadcasts_ambiguous += 1,
            }
        }
        if Instant::now() >= next_fault {
            let force_immediate = !immediate_done && start.elapsed() > args.duration / 2;
            inject(
                &args,
                &pool,
                &mut workers,
                &mut smsc,
                &mut rng,
                &mut figures,
                force_immediate,
            )
            .await?;
            immediate_done |= figures.pg_restarts_immediate > 0;
            next_fault = Instant::now() + jitter(&mut rng, args.fault_every);
        }
        workers.revive(&mut figures)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !immediate_done {
        inject(
            &args,
            &pool,
            &mut workers,
            &mut smsc,
            &mut rng,
            &mut figures,
            true,
        )
        .await?;
    }
    // A short drill may end before every kind of fault had its turn.
    while !figures.pending.is_empty() {
        inject(
            &args,
            &pool,
            &mut workers,
            &mut smsc,
            &mut rng,
            &mut figures,
            false,
        )
        .await?;
    }

    println!(
        "chaos: faults stopped; waiting up to {} for the queues to settle",
        humantime::format_duration(args.settle)
    );
    let settle_start = Instant::now();
    let settled = settle(&pool, &mut workers, &mut figures, args.settle).await?;
    figures.settle_secs = settle_start.elapsed().as_secs_f64();
    for i in 0..workers.children.len() {
        workers.terminate(i).await?;
    }
    for i in 0..workers.children.len() {
        let status = workers.wait_exit(i, Duration::from_secs(30)).await?;
        if !status.success() {
            figures.sigterm_bad_exits += 1;
        }
    }
    if let Some(smsc) = smsc.take() {
        smsc.stop().await;
    }
    smsc::attribute(&pool).await?;
    let ok = check(&pool, &figures, &acked_inbound, &acked_broadcasts, settled).await?;
    if !ok {
        bail!("chaos: invariants broken (seed {}); see above", args.seed);
    }
    println!("chaos: all invariants hold");
    Ok(())
}

fn jitter(rng: &mut StdRng, mean: Duration) -> Duration {
    mean.mul_f64(rng.gen_range(0.5..1.5))
}

#[allow(clippy::too_many_arguments)]
async fn inject(
    args: &Args,
    pool: &PgPool,
    workers: &mut Workers,
    smsc: &mut Option<smsc::Smsc>,
    rng: &mut StdRng,
    figures: &mut Figures,
    force_immediate: bool,
) -> Result<()> {
    // Every kind of fault once (in a random order), then at random.
    let which = if force_immediate {
        3
    } else if !figures.pending.is_empty() {
        let i = rng.gen_range(0..figures.pending.len());
        figures.pending.swap_remove(i)
    } else {
        rng.gen_range(0..FAULTS)
    };
    let w = rng.gen_range(0..workers.children.len());
    match which {
        0 => {
            workers.signal(w, "KILL")?;
            workers.wait_exit(w, Duration::from_secs(10)).await?;
            figures.sigkills += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
            workers.restart(w)?;
        }
        1 => {
            workers.terminate(w).await?;
            // In-flight batches finish: at most a send timeout plus a commit.
            let status = workers.wait_exit(w, Duration::from_secs(30)).await?;
            if !status.success() {
                figures.sigterm_bad_exits += 1;
            }
            figures.sigterms += 1;
            workers.restart(w)?;
        }
        2 | 3 => {
            let mode = if which == 3 { "immediate" } else { "fast" };
            pg_ctl(args, &["restart", "-m", mode, "-w", "-t", "60"])?;
            if which == 3 {
                figures.pg_restarts_immediate += 1;
            } else {
                figures.pg_restarts_fast += 1;
            }
        }
        5 => {
            // Freeze a worker past its lease (a send "slower than the lease"):
            // another worker re-claims its batch; when it thaws, its late
            // finish must change nothing.
            workers.signal(w, "STOP")?;
            tokio::time::sleep(Duration::from_secs(LEASE_SECS + 2)).await;
            workers.signal(w, "CONT")?;
            figures.pauses += 1;
        }
        6 => {
            // The SMSC dies with submits in flight and comes back on its
            // port: the binds are lost and bound again.
            if let Some(old) = smsc.take() {
                let port = old.port;
                old.stop().await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
                *smsc = Some(smsc::Smsc::start_on(&args.database_url, port).await?);
                figures.smsc_restarts += 1;
            }
        }
        _ => {
            let cut = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name = 'dbrouter' AND pid <> pg_backend_pid()",
            )
            .execute(pool)
            .await;
            if cut.is_ok() {
                figures.connection_cuts += 1;
            }
        }
    }
    Ok(())
}

fn pg_ctl(args: &Args, extra: &[&str]) -> Result<()> {
    let mut parts = args.pg_ctl.split_whitespace();
    let program = parts.next().context("--pg-ctl is empty")?;
    let status = Command::new(program)
        .args(parts)
        .args(extra)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", args.pg_ctl))?;
    if !status.success() {
        bail!("{} {} failed", args.pg_ctl, extra.join(" "));
    }
    Ok(())
}

/// Wait until nothing is queued, in flight or waiting for a retry.
async fn settle(
    pool: &PgPool,
    workers: &mut Workers,
    figures: &mut Figures,
    limit: Duration,
) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        workers.revive(figures)?;
        let busy: Result<(i64,), _> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status = 'Q')
                  + (SELECT count(*) FROM dbrouter.transmissions WHERE due_at IS NOT NULL)
                  + (SELECT count(*) FROM dbrouter.fanouts)",
        )
        .fetch_one(pool)
        .await;
        if let Ok((0,)) = busy {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(false)
}

async fn count(pool: &PgPool, sql: &str) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// The figures table, and whether every check held.
struct Report {
    ok: bool,
}

impl Report {
    fn info(&self, name: &str, value: impl std::fmt::Display) {
        println!("| {name:<52} | {value:>12} |       |");
    }

    fn check(&mut self, name: &str, value: impl std::fmt::Display, good: bool, detail: &str) {
        let verdict = if good { "ok" } else { "BROKEN" };
        println!("| {name:<52} | {value:>12} | {verdict:<6}|");
        if !good {
            self.ok = false;
            if !detail.is_empty() {
                println!("|   look at: {detail}");
            }
        }
    }

    /// An invariant stated as "this query (one id column) returns nothing":
    /// prints how many rows break it and the first ten ids.
    async fn none(&mut self, pool: &PgPool, name: &str, what: &str, sql: &str) -> Result<()> {
        let (n, first): (i64, Vec<i64>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), coalesce((array_agg(x.id ORDER BY x.id))[1:10], '{{}}')
               FROM ({sql}) AS x(id)"
        )))
        .fetch_one(pool)
        .await?;
        self.check(name, n, n == 0, &format!("{what} {first:?}"));
        Ok(())
    }
}

async fn check(
    pool: &PgPool,
    f: &Figures,
    acked_inbound: &[String],
    acked_broadcasts: &[i64],
    settled: bool,
) -> Result<bool> {
    let mut r = Report { ok: true };
    println!("| {:<52} | {:>12} | check |", "figure", "value");
    println!("|{:-<54}|{:-<14}|-------|", "", "");
    r.info("inbound messages enqueued (acknowledged)", f.inbound_acked);
    r.info(
        "inbound messages with an unknown enqueue outcome",
        f.inbound_ambiguous,
    );
    r.info("broadcasts enqueued (acknowledged)", f.broadcasts_acked);
    r.info(
        "broadcast transmissions enqueued",
        f.broadcast_transmissions,
    );
    r.info("SIGKILLs of workers", f.sigkills);
    r.info("SIGTERMs of workers", f.sigterms);
    r.info("PostgreSQL restarts -m fast", f.pg_restarts_fast);
    r.info("PostgreSQL restarts -m immediate", f.pg_restarts_immediate);
    r.info("connection cuts (pg_terminate_backend)", f.connection_cuts);
    r.info("workers frozen past their lease (SIGSTOP)", f.pauses);
    r.info("SMSC restarts (sessions killed)", f.smsc_restarts);

    let present: HashSet<String> =
        sqlx::query_as::<_, (String,)>("SELECT text FROM dbrouter.messages WHERE direction = 'I'")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(t,)| t)
            .collect();
    let lost: Vec<&String> = acked_inbound
        .iter()
        .filter(|t| !present.contains(*t))
        .collect();
    let first: Vec<_> = lost.iter().take(10).collect();
    r.check(
        "inbound messages lost",
        lost.len(),
        lost.is_empty(),
        &format!("{first:?}"),
    );
    let present: HashSet<i64> = sqlx::query_as::<_, (i64,)>(
        "SELECT id FROM dbrouter.messages WHERE direction = 'O' AND in_response_to IS NULL",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(i,)| i)
    .collect();
    let lost: Vec<&i64> = acked_broadcasts
        .iter()
        .filter(|id| !present.contains(*id))
        .collect();
    r.check(
        "broadcasts lost",
        lost.len(),
        lost.is_empty(),
        &format!("{lost:?}"),
    );

    // Large broadcasts are expanded by the workers, a part at a time: every
    // identity of an acknowledged one ends up with exactly one transmission.
    let ids: Vec<String> = acked_broadcasts.iter().map(i64::to_string).collect();
    r.none(
        pool,
        "broadcasts without one transmission per identity",
        "messages",
        &format!(
            "SELECT m.id FROM dbrouter.messages m
              WHERE m.id = ANY ('{{{}}}'::bigint[])
                AND m.n_total <> (SELECT count(*) FROM dbrouter.transmissions t WHERE t.message_id = m.id)",
            ids.join(",")
        ),
    )
    .await?;

    r.check(
        "seconds for the queues to settle after the faults",
        format!("{:.1}", f.settle_secs),
        settled,
        "",
    );
    r.none(
        pool,
        "inbound messages still Q",
        "messages",
        "SELECT id FROM dbrouter.messages WHERE direction = 'I' AND status = 'Q'",
    )
    .await?;
    r.none(
        pool,
        "transmissions still Q, P or awaiting a retry",
        "transmissions",
        "SELECT id FROM dbrouter.transmissions WHERE status IN ('Q', 'P') OR due_at IS NOT NULL",
    )
    .await?;
    r.info(
        "inbound messages final (R or E)",
        count(
            pool,
            "SELECT count(*) FROM dbrouter.messages WHERE direction = 'I' AND status IN ('R', 'E')",
        )
        .await?,
    );
    r.info(
        "outbound transmissions final (S, D or E)",
        count(
            pool,
            "SELECT count(*) FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id
              WHERE m.direction = 'O' AND t.due_at IS NULL",
        )
        .await?,
    );
    r.none(
        pool,
        "inbound messages answered more than once",
        "messages",
        "SELECT in_response_to FROM dbrouter.messages WHERE in_response_to IS NOT NULL
          GROUP BY in_response_to HAVING count(*) > 1",
    )
    .await?;
    r.none(
        pool,
        "processed (R) inbound without its reply",
        "messages",
        "SELECT id FROM dbrouter.messages WHERE direction = 'I' AND status = 'R'
          EXCEPT SELECT in_response_to FROM dbrouter.messages WHERE in_response_to IS NOT NULL",
    )
    .await?;
    r.none(
        pool,
        "transmissions S without a send",
        "transmissions",
        "SELECT t.id FROM dbrouter.transmissions t WHERE t.status IN ('S', 'D')
            AND NOT EXISTS (SELECT 1 FROM dbrouter.database_backend_sends s WHERE s.transmission_id = t.id)",
    )
    .await?;
    let dup = count(
        pool,
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM dbrouter.database_backend_sends
          GROUP BY transmission_id HAVING count(*) > 1) d",
    )
    .await?;
    // The README's promise: a transmission is sent again only when its
    // worker lost it mid-send (killed, or cut from the database past the
    // lease, or frozen past it). Each such event can repeat at most the
    // batches in flight: a killed or frozen worker's own; a restart or cut
    // touches every worker.
    // An SMSC restart repeats at most what it had accepted and not yet
    // answered: every worker's binds × window.
    let per_worker = (CONCURRENCY * BATCH) as i64;
    let everyone = (f.pg_restarts_fast + f.pg_restarts_immediate + f.connection_cuts) * f.workers;
    let smsc = (f.smsc_restarts * f.workers * SMPP_BINDS * SMPP_WINDOW) as i64;
    let bound = per_worker * (f.sigkills + f.pauses + everyone) as i64 + smsc;
    r.check(
        &format!("extra sends (bound {bound})"),
        dup,
        dup <= bound,
        "",
    );
    r.none(
        pool,
        "repeats where the send commits with the S",
        "transmissions",
        "SELECT transmission_id FROM dbrouter.database_backend_sends
          WHERE backend IN ('steady', 'picky')
          GROUP BY transmission_id HAVING count(*) > 1",
    )
    .await?;
    r.none(
        pool,
        "duplicates without a re-claim",
        "transmissions",
        "SELECT s.transmission_id FROM dbrouter.database_backend_sends s
           JOIN dbrouter.transmissions t ON t.id = s.transmission_id
          WHERE t.attempts = 1 GROUP BY s.transmission_id HAVING count(*) > 1",
    )
    .await?;
    r.none(
        pool,
        "E transmissions without a recorded error",
        "transmissions",
        "SELECT t.id FROM dbrouter.transmissions t WHERE t.status = 'E'
            AND NOT EXISTS (SELECT 1 FROM dbrouter.attempts a WHERE a.transmission_id = t.id)",
    )
    .await?;
    r.info(
        "failed attempts recorded",
        count(pool, "SELECT count(*) FROM dbrouter.attempts").await?,
    );
    r.info(
        "sends accepted by the stand-in HTTP gateway",
        count(
            pool,
            "SELECT count(*) FROM dbrouter.database_backend_sends WHERE backend = 'gateway'",
        )
        .await?,
    );
    r.info(
        "submits accepted by the SMSC",
        count(
            pool,
            "SELECT count(*) FROM dbrouter.database_backend_sends WHERE backend = 'smsc'",
        )
        .await?,
    );
    let unmatched = count(
        pool,
        "SELECT (SELECT count(*) FROM chaos_smpp_submits)
              - (SELECT count(*) FROM dbrouter.database_backend_sends WHERE backend = 'smsc')",
    )
    .await?;
    r.check(
        "SMSC submits not matching one transmission",
        unmatched,
        unmatched == 0,
        "SELECT * FROM chaos_smpp_submits",
    );
    r.info(
        "HTTP 503/429 answers recorded as failed attempts",
        count(
            pool,
            "SELECT count(*) FROM dbrouter.attempts WHERE error LIKE 'HTTP 503%' OR error LIKE 'HTTP 429%'",
        )
        .await?,
    );
    // Not in sql/invariants.sql: an operator's requeue starts attempts
    // from zero again and keeps the history; the drill never requeues.
    r.none(
        pool,
        "more failures recorded than attempts",
        "transmissions",
        "SELECT t.id FROM dbrouter.transmissions t
          WHERE (SELECT count(*) FROM dbrouter.attempts a
                  WHERE a.transmission_id = t.id AND NOT a.requeued) > t.attempts",
    )
    .await?;
    // What holds of the tables whatever happened (sql/invariants.sql; the
    // tests check the same after their own work).
    for c in dbrouter::invariants::checks() {
        r.none(pool, c.name, c.ids_of, c.sql).await?;
    }
    r.check(
        "workers that exited on their own",
        f.unexpected_exits,
        f.unexpected_exits == 0,
        "",
    );
    r.check(
        "SIGTERMs that did not exit 0",
        f.sigterm_bad_exits,
        f.sigterm_bad_exits == 0,
        "",
    );
    Ok(r.ok)
}
