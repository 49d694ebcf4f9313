//! `dbrouter-bench`: the benchmark that `bin/bench` runs.
//!
//! Measures dbrouter end to end on a throwaway cluster and, on the same
//! cluster in the same run, the bare SQL of the same shape (the bounds), so
//! the figures can be read as ratios on a shared, noisy machine. Prints a
//! Markdown table and writes JSON.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod smsc;
mod stand_in;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dbrouter-bench",
    about = "Benchmark dbrouter against same-run bounds"
)]
struct Args {
    /// Server URL (any database); each run makes its own database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The cluster's postmaster pid (for PostgreSQL's CPU time).
    #[arg(long)]
    postmaster_pid: u32,
    /// The dbrouter binary.
    #[arg(long, default_value = "target/release/dbrouter")]
    dbrouter: String,
    /// Inbound messages per round-trip run.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Identities of the broadcast run.
    #[arg(long, default_value_t = 100_000)]
    broadcast: usize,
    /// Final messages already in the tables for the history run (0: skip it).
    #[arg(long, default_value_t = 5_000_000)]
    history: usize,
    /// Single inserts of the latency run.
    #[arg(long, default_value_t = 500)]
    latency_samples: usize,
    /// How long the claim-200 bound runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    claim_for: Duration,
    /// Worker process counts of the round-trip runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// The sqlxmq peer binary (tools/sqlxmq-peer); no peer row without it.
    #[arg(long)]
    sqlxmq_peer: Option<String>,
    /// sqlxmq's migrations directory (its schema, applied by the peer).
    #[arg(long)]
    sqlxmq_migrations: Option<String>,
    /// Jobs the peer drains.
    #[arg(long, default_value_t = 20_000)]
    sqlxmq_jobs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench.json")]
    json: String,
    /// SQL run on every fresh database right after the migrate, for trying
    /// a schema change out (an index, a fillfactor) before writing it as a
    /// migration.
    #[arg(long)]
    setup_sql: Option<String>,
    /// The stand-in gateway's sendsms URL (set once it is listening).
    #[arg(skip)]
    gateway_url: String,
    /// The stand-in SMSC's URL (set once it is listening).
    #[arg(skip)]
    smsc_url: String,
    /// The role the workers run as (SET at connection start): the worker
    /// role, as a deployment runs them, under the row-level security of
    /// messages. None: the cluster's superuser (no row-level security), for
    /// the comparison row.
    #[arg(skip = Some("dbrouter_worker".to_string()))]
    worker_role: Option<String>,
    /// Run the workers with --metrics-addr and scrape each every 5 s, as a
    /// Prometheus server would (the comparison row of the metrics' cost).
    #[arg(skip)]
    scraped: bool,
    /// Run only these parts (for working on one figure); the table leaves
    /// out the rows of the others.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bounds,round-trip,broadcast,latency,smpp,peer,history"
    )]
    only: Vec<Part>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Debug)]
enum Part {
    Bounds,
    RoundTrip,
    Broadcast,
    Latency,
    Smpp,
    Peer,
    History,
}

#[derive(Serialize, Default, Debug, Clone)]
struct RoundTrip {
    workers: usize,
    messages: usize,
    history: usize,
    seconds: f64,
    msgs_per_s: f64,
    worker_cpu_s: f64,
    postgres_cpu_s: f64,
    cpu_ms_per_msg: f64,
    worker_peak_rss_mib: f64,
}

/// The backend a run sends through.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Via {
    /// dbrouter's `kannel` engine to the stand-in gateway: the real path.
    Gateway,
    /// The `database` engine, which records each send (the test double).
    Database,
    /// dbrouter's `smpp` engine to the stand-in SMSC, with these binds
    /// (per worker) and this window (per bind).
    Smpp { binds: usize, window: usize },
}

/// A broadcast through SMPP with one setting of binds and window.
#[derive(Serialize, Debug, Clone)]
struct SmppBroadcast {
    binds: usize,
    window: usize,
    per_s: f64,
}

#[derive(Serialize, Default, Debug)]
struct Results {
    machine: String,
    claim200_rows_per_s: f64,
    copy_rows_per_s: f64,
    /// Requests per second the stand-in gateway answers on its own.
    gateway_requests_per_s: f64,
    /// The 2-worker round trip through the `database` engine.
    database_round_trip: Option<RoundTrip>,
    /// The 2-worker round trip with the workers as the superuser (no
    /// row-level security), beside the same as the worker role.
    superuser_round_trip: Option<RoundTrip>,
    /// The 2-worker round trip with --metrics-addr, scraped every 5 s.
    scraped_round_trip: Option<RoundTrip>,
    /// The broadcast end to end on tables holding a round trip's history.
    broadcast_after_round_trip_per_s: f64,
    wakeup_p50_ms: f64,
    wakeup_p99_ms: f64,
    round_trips: Vec<RoundTrip>,
    history_run: Option<RoundTrip>,
    /// The same, with `dbrouter purge` deleting that history meanwhile.
    purge_run: Option<RoundTrip>,
    /// The 2-worker round trip right after the broadcast run, on its tables.
    after_broadcast_run: Option<RoundTrip>,
    /// History messages the purge deleted during that run.
    purged: i64,
    broadcast_identities: usize,
    broadcast_call_ids_per_s: f64,
    broadcast_end_to_end_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    sqlxmq_jobs_per_s: Option<f64>,
    /// Submits per second the stand-in SMSC answers on its own.
    smsc_submits_per_s: f64,
    smpp_broadcasts: Vec<SmppBroadcast>,
    /// The 2-worker round trip with replies through SMPP.
    smpp_round_trip: Option<RoundTrip>,
}

static DB_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh database, migrated, with one backend named `bench` that sends
/// `via` the stand-in gateway or the `database` engine.
async fn fresh_db(args: &Args, what: &str, via: Via) -> Result<(PgPool, String)> {
    let admin = dbrouter::db::connect(&args.database_url, 1).await?;
    let name = format!(
        "bench_{what}_{}",
        DB_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let url = dbrouter::db::with_database(&args.database_url, &name);
    let pool = dbrouter::db::connect(&url, 8).await?;
    dbrouter::db::migrate(&pool).await?;
    if let Some(sql) = &args.setup_sql {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .context("--setup-sql failed")?;
    }
    // Without a dlr_url (no delivery reports asked for), so the engine sends
    // a broadcast 100 identities per sendsms call; with one it makes a call
    // per identity (docs/BENCHMARKS.md has both figures).
    let (engine, config) = match via {
        Via::Gateway => (
            "kannel",
            serde_json::json!({
                "url": args.gateway_url, "username": "bench", "password": "bench"
            }),
        ),
        Via::Database => ("database", serde_json::json!({})),
        Via::Smpp { binds, window } => (
            "smpp",
            serde_json::json!({
                "url": args.smsc_url, "system_id": "bench", "password": "bench",
                "binds": binds, "window": window, "receipts": false
            }),
        ),
    };
    sqlx::query("INSERT INTO dbrouter.backends (name, engine, config) VALUES ('bench', $1, $2)")
        .bind(engine)
        .bind(config)
        .execute(&pool)
        .await?;
    Ok((pool, url))
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (utime + stime, cutime + cstime, ppid) in ticks from /proc/pid/stat.
fn proc_stat(pid: u32) -> Option<(u64, u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ") ": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((num(11)? + num(12)?, num(13)? + num(14)?, num(1)? as u32))
}

/// CPU seconds of the cluster: the postmaster, its reaped children, and its
/// live children.
fn postgres_cpu(postmaster: u32, tck: f64) -> f64 {
    let mut ticks = 0u64;
    if let Some((own, reaped, _)) = proc_stat(postmaster) {
        ticks += own + reaped;
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((own, _, ppid)) = proc_stat(pid) {
                if ppid == postmaster {
                    ticks += own;
                }
            }
        }
    }
    ticks as f64 / tck
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn spawn_workers(args: &Args, url: &str, n: usize) -> Result<Vec<Child>> {
    let url = match &args.worker_role {
        Some(role) => format!(
            "{url}{}options=-c%20role%3D{role}",
            if url.contains('?') { '&' } else { '?' }
        ),
        None => url.to_string(),
    };
    let mut scrape = vec![];
    let children = (0..n)
        .map(|_| {
            let mut worker = Command::new(&args.dbrouter);
            worker.args(["worker", "--apps", "echo", "--poll-interval", "1s"]);
            if args.scraped {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                worker.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
                scrape.push(format!("http://127.0.0.1:{port}/metrics"));
            }
            worker
                .env("DATABASE_URL", &url)
                .env("DBROUTER_LOG", "error")
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", args.dbrouter))
        })
        .collect::<Result<Vec<_>>>()?;
    if !scrape.is_empty() {
        tokio::spawn(scrape_every_5s(scrape));
    }
    Ok(children)
}

/// Scrape every worker's /metrics every 5 s, as Prometheus would, until
/// they have answered once and then all stop answering (the run is over).
async fn scrape_every_5s(urls: Vec<String>) {
    let http = reqwest::Client::new();
    let mut answered = false;
    loop {
        let mut any = false;
        for url in &urls {
            if let Ok(r) = http.get(url).send().await {
                any |= r.bytes().await.is_ok();
            }
        }
        if answered && !any {
            return;
        }
        answered |= any;
        // Until the first answer, look again soon: the workers are starting.
        let pause = if answered { 5_000 } else { 100 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn stop_workers(pool: &PgPool, children: Vec<Child>) -> Result<()> {
    for c in &children {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &c.id().to_string()])
            .status();
    }
    for mut c in children {
        let start = Instant::now();
        while c.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                // What the server is busy with, for the report.
                let busy: Vec<(String,)> = sqlx::query_as(
                    "SELECT format('backend %s busy for %s, waiting on %s/%s: %s', pid,
                                   now() - query_start, wait_event_type, wait_event, left(query, 300))
                       FROM pg_stat_activity
                      WHERE state <> 'idle' AND pid <> pg_backend_pid()",
                )
                .fetch_all(pool)
                .await
                .unwrap_or_default();
                for (line,) in busy {
                    eprintln!("bench: {line}");
                }
                c.kill()?;
                bail!("a worker did not stop within 60 s (what the server was doing is above)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn wait_listening(pool: &PgPool, n: usize) -> Result<()> {
    let start = Instant::now();
    loop {
        let (k,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(pool)
        .await?;
        if k as usize >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("workers did not start listening within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until nothing is queued, in flight or awaiting a retry. The check
/// costs the system under test next to nothing: it stops at the first live
/// entry of the queues' partial indexes (counting the 100,000 rows in
/// flight took ~30 ms of a core every 100 ms, and a sequential scan for the
/// first due row re-reads every row already sent).
async fn wait_idle(pool: &PgPool, poll: Duration) -> Result<()> {
    loop {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await?;
        let (busy,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM dbrouter.messages WHERE direction = 'I' AND status = 'Q')
                 OR EXISTS (SELECT 1 FROM dbrouter.transmissions WHERE due_at IS NOT NULL)
                 OR EXISTS (SELECT 1 FROM dbrouter.fanouts)",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if !busy {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

async fn insert_inbound(pool: &PgPool, from: usize, n: usize) -> Result<()> {
    const CHUNK: usize = 1000;
    let mut i = from;
    while i < from + n {
        let end = (i + CHUNK).min(from + n);
        let mut sql = String::with_capacity(CHUNK * 40);
        sql.push_str("INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ");
        for k in i..end {
            if k > i {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('bench', '+{}', 'echo {k}')",
                255_700_000_000u64 + k as u64
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await?;
        i = end;
    }
    Ok(())
}

async fn round_trip(args: &Args, workers: usize, tck: f64, via: Via) -> Result<RoundTrip> {
    let (pool, url) = fresh_db(args, &format!("rt{workers}"), via).await?;
    run_round_trip(args, &pool, &url, workers, 0, tck, false).await
}

/// One round-trip run on `pool`'s database (which may hold history); with
/// `purge`, `dbrouter purge --older-than 30d` runs beside it the whole time.
async fn run_round_trip(
    args: &Args,
    pool: &PgPool,
    url: &str,
    workers: usize,
    history: usize,
    tck: f64,
    purge: bool,
) -> Result<RoundTrip> {
    let (first_new,): (i64,) = sqlx::query_as("SELECT coalesce(max(id), 0) FROM dbrouter.messages")
        .fetch_one(pool)
        .await?;
    let (identities_from,): (i64,) = sqlx::query_as("SELECT count(*) FROM dbrouter.connections")
        .fetch_one(pool)
        .await?;
    let children = spawn_workers(args, url, workers)?;
    wait_listening(pool, workers).await?;
    let mut purger = if purge {
        Some(
            Command::new(&args.dbrouter)
                .args(["purge", "--older-than", "30d"])
                .env("DATABASE_URL", url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {} purge", args.dbrouter))?,
        )
    } else {
        None
    };
    let worker_cpu = |children: &[Child]| -> f64 {
        children
            .iter()
            .filter_map(|c| proc_stat(c.id()))
            .map(|(own, _, _)| own as f64 / tck)
            .sum()
    };
    let pg0 = postgres_cpu(args.postmaster_pid, tck);
    let w0 = worker_cpu(&children);
    let start = Instant::now();
    let producer = {
        let pool = pool.clone();
        let n = args.messages;
        let from = usize::try_from(identities_from).unwrap_or(0);
        tokio::spawn(async move { insert_inbound(&pool, from, n).await })
    };
    producer.await??;
    wait_idle(pool, Duration::from_millis(100)).await?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(p) = purger.as_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    let pg1 = postgres_cpu(args.postmaster_pid, tck);
    let w1 = worker_cpu(&children);
    let rss = children
        .iter()
        .map(|c| peak_rss_mib(c.id()))
        .fold(0.0, f64::max);
    stop_workers(pool, children).await?;
    let (sent,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM dbrouter.messages
          WHERE direction = 'O' AND status = 'S' AND in_response_to > $1",
    )
    .bind(first_new)
    .fetch_one(pool)
    .await?;
    if sent as usize != args.messages {
        bail!(
            "round trip: {sent} replies sent for {} messages",
            args.messages
        );
    }
    let worker_cpu_s = w1 - w0;
    let postgres_cpu_s = pg1 - pg0;
    Ok(RoundTrip {
        workers,
        messages: args.messages,
        history,
        seconds,
        msgs_per_s: args.messages as f64 / seconds,
        worker_cpu_s,
        postgres_cpu_s,
        cpu_ms_per_msg: (worker_cpu_s + postgres_cpu_s) * 1000.0 / args.messages as f64,
        worker_peak_rss_mib: rss,
    })
}

/// `n` final messages (half inbound R, half outbound S) with their
/// transmissions, 40 days old (so the purge run has work), written set-wise,
/// then vacuumed, analysed and checkpointed.
async fn fill_history(pool: &PgPool, n: usize) -> Result<()> {
    let started = Instant::now();
    let n = n as i64;
    let stmts = [
        "INSERT INTO dbrouter.connections (backend_id, identity)
         SELECT 1, '+1' || lpad(i::text, 9, '0') FROM generate_series(1, 100000) i",
        "INSERT INTO dbrouter.messages (direction, status, text, n_total, n_done, sent_at,
                                        created_at, updated_at)
         SELECT CASE WHEN i % 2 = 0 THEN 'I' ELSE 'O' END,
                CASE WHEN i % 2 = 0 THEN 'R' ELSE 'S' END,
                'history ' || i, 1, CASE WHEN i % 2 = 0 THEN 0 ELSE 1 END,
                CASE WHEN i % 2 = 1 THEN now() END,
                now() - interval '40 days', now() - interval '40 days'
           FROM generate_series(1, $1) i",
        "INSERT INTO dbrouter.transmissions (message_id, connection_id, backend_id, status, attempts, sent_at)
         SELECT m.id, c0.first + m.id % 100000, 1, m.status, 1, m.sent_at
           FROM dbrouter.messages m, (SELECT min(id) AS first FROM dbrouter.connections) c0",
    ];
    // The rows are consistent by construction, so the foreign-key triggers
    // (two row-level checks per transmission) are skipped for the fill:
    // session_replication_role = replica, superuser only, this transaction only.
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    for sql in stmts {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(n)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    // The fill wrote gigabytes of WAL; without a checkpoint here, the one it
    // started flushes the fill's pages (and the first change of every page
    // after it is a full-page image) during the measured run, which then
    // measures the fill rather than the history.
    sqlx::raw_sql("CHECKPOINT").execute(pool).await?;
    eprintln!(
        "bench: {n} history messages written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The broadcast run on fresh tables; then the 2-worker round trip on the
/// same tables, whose statistics now say one message has nearly every
/// transmission (a plan that trusted them read the whole table per inbound
/// message).
async fn broadcast(args: &Args, tck: f64) -> Result<(f64, f64, RoundTrip)> {
    let (pool, url) = fresh_db(args, "broadcast", Via::Gateway).await?;
    let (call, total) = run_broadcast(args, &pool, &url).await?;
    eprintln!("bench: round trip after the broadcast");
    let after = run_round_trip(args, &pool, &url, 2, 0, tck, false).await?;
    Ok((call, total, after))
}

/// The broadcast on tables that already hold a 2-worker round trip's
/// history (all of it final): its end-to-end rate.
async fn broadcast_after_round_trip(args: &Args, tck: f64) -> Result<f64> {
    let (pool, url) = fresh_db(args, "rt_broadcast", Via::Gateway).await?;
    run_round_trip(args, &pool, &url, 2, 0, tck, false).await?;
    eprintln!("bench: broadcast after that round trip");
    let (_, total) = run_broadcast(args, &pool, &url).await?;
    Ok(total)
}

/// One broadcast of `args.broadcast` identities with 2 workers: the call's
/// rate and the end-to-end rate (until every transmission is sent).
async fn run_broadcast(args: &Args, pool: &PgPool, url: &str) -> Result<(f64, f64)> {
    let children = spawn_workers(args, url, 2)?;
    wait_listening(pool, 2).await?;
    let ids: Vec<String> = (0..args.broadcast)
        .map(|i| format!("+{}", 255_700_000_000u64 + i as u64))
        .collect();
    let start = Instant::now();
    sqlx::query("SELECT dbrouter.broadcast('bench', $1, 'Clinic closed on Friday')")
        .bind(&ids)
        .execute(pool)
        .await?;
    let call = start.elapsed().as_secs_f64();
    wait_idle(pool, Duration::from_millis(100)).await?;
    let total = start.elapsed().as_secs_f64();
    stop_workers(pool, children).await?;
    let (sent,): (i64,) = sqlx::query_as(
        "SELECT n_done::bigint FROM dbrouter.messages WHERE direction = 'O' AND in_response_to IS NULL
          ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    if sent as usize != args.broadcast {
        bail!("broadcast: {sent} of {} sent", args.broadcast);
    }
    Ok((args.broadcast as f64 / call, args.broadcast as f64 / total))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Insert → reply at the gateway: from the commit of the INSERT into
/// dbrouter.inbox (its time from track_commit_timestamp, which bin/bench
/// turns on; a marker row written by the same statement keeps that
/// transaction's id) to the stand-in gateway receiving the reply (the same
/// host's clock).
///
/// Its bound, the bare wake-up (a client inserts a row and NOTIFYs in one
/// statement; a LISTENing client updates that row; commit to commit too), is
/// measured interleaved with it, one sample of each in turn, 20 ms apart, on
/// two databases of the cluster, so both see the same cluster at the same
/// time. Measured apart, the bound came from the quiet cluster at the start
/// of the run and the latency from one still absorbing the round-trip and
/// broadcast runs (one such run: wake-up p99 1.11 ms, latency p99 3.99 ms).
/// Returns (latency p50, p99, max; wake-up p50, p99).
async fn latency(args: &Args, gateway: &stand_in::StandIn) -> Result<(f64, f64, f64, f64, f64)> {
    let (wake_pool, _) = fresh_db(args, "wake", Via::Database).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_wake (id bigserial PRIMARY KEY,
                                  inserted_by xid8 NOT NULL DEFAULT pg_current_xact_id(),
                                  done_at timestamptz)",
    )
    .execute(&wake_pool)
    .await?;
    let mut listener = PgListener::connect_with(&wake_pool).await?;
    listener.listen("bench").await?;
    let samples = args.latency_samples;
    let updater = {
        let pool = wake_pool.clone();
        tokio::spawn(async move {
            for _ in 0..samples {
                let n = listener.recv().await?;
                let id: i64 = n.payload().parse()?;
                sqlx::query("UPDATE bench_wake SET done_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&pool)
                    .await?;
            }
            Ok::<(), anyhow::Error>(())
        })
    };

    let (pool, url) = fresh_db(args, "latency", Via::Gateway).await?;
    let children = spawn_workers(args, &url, 2)?;
    gateway.record(true);
    wait_listening(&pool, 2).await?;
    sqlx::raw_sql("CREATE TABLE bench_marks (identity text PRIMARY KEY)")
        .execute(&pool)
        .await?;
    for i in 0..samples {
        sqlx::query(
            "WITH r AS (INSERT INTO bench_wake DEFAULT VALUES RETURNING id)
             SELECT pg_notify('bench', id::text) FROM r",
        )
        .execute(&wake_pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        sqlx::query(
            "WITH mark AS (INSERT INTO bench_marks (identity) VALUES ($1))
             INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('bench', $1, $2)",
        )
        .bind(format!("+{}", 255_700_000_000u64 + i as u64))
        .bind(format!("echo {i}"))
        .execute(&pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    updater.await??;
    wait_idle(&pool, Duration::from_millis(50)).await?;
    stop_workers(&pool, children).await?;
    let arrivals = gateway.arrivals();
    gateway.record(false);
    let committed: Vec<(String, f64)> = sqlx::query_as(
        "SELECT identity, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM bench_marks",
    )
    .fetch_all(&pool)
    .await?;
    let mut sent = Vec::with_capacity(committed.len());
    for (identity, at) in committed {
        let arrived = arrivals.get(&identity).with_context(|| {
            format!("latency: the reply to {identity} never reached the gateway")
        })?;
        sent.push((arrived - at) * 1000.0);
    }
    sent.sort_by(f64::total_cmp);
    let woken = commit_to_commit_ms(
        &wake_pool,
        "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)
                                 - pg_xact_commit_timestamp(inserted_by::text::xid))::float8 * 1000
           FROM bench_wake",
    )
    .await?;
    Ok((
        percentile(&sent, 0.5),
        percentile(&sent, 0.99),
        sent.last().copied().unwrap_or(0.0),
        percentile(&woken, 0.5),
        percentile(&woken, 0.99),
    ))
}

/// The milliseconds `sql` returns, sorted.
async fn commit_to_commit_ms(pool: &PgPool, sql: &'static str) -> Result<Vec<f64>> {
    let rows: Vec<(f64,)> = sqlx::query_as(sql).fetch_all(pool).await?;
    let mut ms: Vec<f64> = rows.into_iter().map(|(v,)| v).collect();
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

async fn bound_claim(args: &Args) -> Result<f64> {
    let (pool, url) = fresh_db(args, "claim", Via::Database).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_claim (id bigserial PRIMARY KEY, status char(1) NOT NULL DEFAULT 'Q', payload text);
         INSERT INTO bench_claim (payload) SELECT 'job ' || i FROM generate_series(1, 3000000) i;
         CREATE INDEX ON bench_claim (id) WHERE status = 'Q';",
    )
    .execute(&pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE bench_claim")
        .execute(&pool)
        .await?;
    let until = Instant::now() + args.claim_for;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let pool = dbrouter::db::connect(&url, 1).await?;
            let mut rows = 0u64;
            while Instant::now() < until {
                let done = sqlx::query(
                    "UPDATE bench_claim SET status = 'P'
                      WHERE id IN (SELECT id FROM bench_claim WHERE status = 'Q'
                                    ORDER BY id LIMIT 200 FOR UPDATE SKIP LOCKED)",
                )
                .execute(&pool)
                .await?;
                rows += done.rows_affected();
            }
            Ok::<u64, anyhow::Error>(rows)
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await??;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// The fastest of three COPYs (one COPY of 100,000 rows takes ~0.15-0.25 s
/// here, and a single one measured anywhere from 384,000 to 755,000 rows/s
/// between runs on this machine: the bound is what the cluster can do, so
/// a slow draw must not lower it).
async fn bound_copy(args: &Args) -> Result<f64> {
    let (pool, _) = fresh_db(args, "copy", Via::Database).await?;
    // The rows a broadcast must write at the least: one queue row per
    // identity, with its key and due time (no router, no other index).
    let mut data = String::with_capacity(100_000 * 24);
    for i in 0..100_000u64 {
        data.push_str(&format!("1\t+{}\n", 255_700_000_000u64 + i));
    }
    let mut best: f64 = 0.0;
    for round in 0..3 {
        let table = format!("bench_copy_{round}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (
                 id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 message_id bigint NOT NULL,
                 identity   text NOT NULL,
                 status     char(1) NOT NULL DEFAULT 'Q',
                 due_at     timestamptz DEFAULT now(),
                 created_at timestamptz NOT NULL DEFAULT now())"
        )))
        .execute(&pool)
        .await?;
        let mut conn = pool.acquire().await?;
        let start = Instant::now();
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} (message_id, identity) FROM STDIN"))
            .await?;
        copy.send(data.as_bytes()).await?;
        let n = copy.finish().await?;
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// sqlxmq draining empty jobs on a fresh database of the same cluster.
async fn sqlxmq_peer(args: &Args, peer: &str, migrations: &str) -> Result<f64> {
    let (pool, url) = fresh_db(args, "sqlxmq", Via::Database).await?;
    pool.close().await;
    let out = Command::new(peer)
        .arg(args.sqlxmq_jobs.to_string())
        .env("DATABASE_URL", &url)
        .env("SQLXMQ_MIGRATIONS", migrations)
        .output()
        .with_context(|| format!("cannot run {peer}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the sqlxmq peer failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("jobs_per_s="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected output from the sqlxmq peer: {stdout}"))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cpus} cores, {mem_gib:.0} GiB")
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    let gateway = stand_in::StandIn::start().await?;
    args.gateway_url = gateway.url.clone();
    let tck = clk_tck();
    let mut r = Results {
        machine: machine(),
        ..Results::default()
    };
    let run = |part| args.only.contains(&part);
    if run(Part::Bounds) {
        eprintln!("bench: bounds");
        r.claim200_rows_per_s = bound_claim(&args).await?;
        r.copy_rows_per_s = bound_copy(&args).await?;
        r.gateway_requests_per_s = gateway.bound(Duration::from_secs(3)).await?;
    }
    if run(Part::RoundTrip) {
        for &w in &args.workers {
            eprintln!("bench: round trip through the gateway, {w} worker(s)");
            r.round_trips
                .push(round_trip(&args, w, tck, Via::Gateway).await?);
        }
        eprintln!("bench: round trip through the database engine, 2 workers");
        r.database_round_trip = Some(round_trip(&args, 2, tck, Via::Database).await?);
        eprintln!("bench: round trip through the gateway, 2 workers as the superuser");
        let superuser = Args {
            worker_role: None,
            ..args.clone()
        };
        r.superuser_round_trip = Some(round_trip(&superuser, 2, tck, Via::Gateway).await?);
        eprintln!(
            "bench: round trip through the gateway, 2 workers with metrics scraped every 5 s"
        );
        let scraped = Args {
            scraped: true,
            ..args.clone()
        };
        r.scraped_round_trip = Some(round_trip(&scraped, 2, tck, Via::Gateway).await?);
    }
    if run(Part::Broadcast) {
        eprintln!("bench: broadcast");
        r.broadcast_identities = args.broadcast;
        let after;
        (
            r.broadcast_call_ids_per_s,
            r.broadcast_end_to_end_per_s,
            after,
        ) = broadcast(&args, tck).await?;
        r.after_broadcast_run = Some(after);
        eprintln!("bench: broadcast on tables holding a round trip's history");
        r.broadcast_after_round_trip_per_s = broadcast_after_round_trip(&args, tck).await?;
    }
    if run(Part::Latency) {
        eprintln!("bench: latency");
        (
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.latency_max_ms,
            r.wakeup_p50_ms,
            r.wakeup_p99_ms,
        ) = latency(&args, &gateway).await?;
    }
    if run(Part::Smpp) {
        let smsc = smsc::StandInSmsc::start().await?;
        args.smsc_url = smsc.url.clone();
        eprintln!("bench: the stand-in SMSC alone");
        r.smsc_submits_per_s = smsc.bound(Duration::from_secs(3)).await?;
        for (binds, window) in [(1, 10), (1, 100), (4, 10), (4, 100)] {
            eprintln!("bench: broadcast through SMPP, {binds} bind(s), window {window}");
            let (pool, url) =
                fresh_db(&args, "smpp_broadcast", Via::Smpp { binds, window }).await?;
            let (_, per_s) = run_broadcast(&args, &pool, &url).await?;
            r.smpp_broadcasts.push(SmppBroadcast {
                binds,
                window,
                per_s,
            });
        }
        eprintln!("bench: round trip through SMPP, 2 workers");
        r.smpp_round_trip = Some(
            round_trip(
                &args,
                2,
                tck,
                Via::Smpp {
                    binds: 1,
                    window: 10,
                },
            )
            .await?,
        );
    }
    if let (true, Some(peer), Some(migrations)) =
        (run(Part::Peer), &args.sqlxmq_peer, &args.sqlxmq_migrations)
    {
        eprintln!("bench: sqlxmq peer");
        r.sqlxmq_jobs_per_s = Some(sqlxmq_peer(&args, peer, migrations).await?);
    }
    if run(Part::History) && args.history > 0 {
        eprintln!("bench: round trip over {} history messages", args.history);
        let (pool, url) = fresh_db(&args, "history", Via::Gateway).await?;
        fill_history(&pool, args.history).await?;
        r.history_run =
            Some(run_round_trip(&args, &pool, &url, 2, args.history, tck, false).await?);
        eprintln!("bench: round trip while dbrouter purge deletes that history");
        let old =
            "SELECT count(*) FROM dbrouter.messages WHERE created_at < now() - interval '30 days'";
        let (before,): (i64,) = sqlx::query_as(old).fetch_one(&pool).await?;
        r.purge_run = Some(run_round_trip(&args, &pool, &url, 2, args.history, tck, true).await?);
        let (after,): (i64,) = sqlx::query_as(old).fetch_one(&pool).await?;
        r.purged = before - after;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&r)?)?;
    print!("{}", table(&r));
    Ok(())
}

fn table(r: &Results) -> String {
    let by_workers: HashMap<usize, &RoundTrip> =
        r.round_trips.iter().map(|t| (t.workers, t)).collect();
    let claim = r.claim200_rows_per_s;
    let mut out = String::new();
    out.push_str(&format!("Machine: {}\n\n", r.machine));
    out.push_str(
        "| measure | value | bound (same run) | ratio | target |\n|---|---|---|---|---|\n",
    );
    for t in &r.round_trips {
        out.push_str(&format!(
            "| round trip through the gateway, {} worker(s) | {:.0} msgs/s | claim-200 {:.0} rows/s | {:.3} | ≥ 0.15 |\n",
            t.workers,
            t.msgs_per_s,
            claim,
            t.msgs_per_s / claim
        ));
    }
    for t in &r.round_trips {
        out.push_str(&format!(
            "| CPU per round trip, {} worker(s) (workers + PostgreSQL) | {:.3} ms ({:.1} + {:.1} s) | | | ≤ 0.15 ms |\n",
            t.workers, t.cpu_ms_per_msg, t.worker_cpu_s, t.postgres_cpu_s
        ));
    }
    if let (Some(two), Some(four)) = (by_workers.get(&2), by_workers.get(&4)) {
        out.push_str(&format!(
            "| 4 workers vs 2 | {:.2} × | | | ≥ 0.9 |\n",
            four.msgs_per_s / two.msgs_per_s
        ));
    }
    if r.broadcast_identities > 0 {
        out.push_str(&format!(
            "| broadcast call ({} identities) | {:.0} ids/s | COPY {:.0} rows/s | {:.3} | ≥ 0.25 |\n",
            r.broadcast_identities,
            r.broadcast_call_ids_per_s,
            r.copy_rows_per_s,
            r.broadcast_call_ids_per_s / r.copy_rows_per_s
        ));
        out.push_str(&format!(
            "| broadcast end to end through the gateway, fresh tables | {:.0} transmissions/s | claim-200 {:.0} rows/s | {:.3} | ≥ 0.30 |\n",
            r.broadcast_end_to_end_per_s,
            claim,
            r.broadcast_end_to_end_per_s / claim
        ));
        out.push_str(&format!(
            "| the same on tables holding a round trip's history | {:.0} transmissions/s | claim-200 {:.0} rows/s | {:.3} | ≥ 0.30 |\n",
            r.broadcast_after_round_trip_per_s,
            claim,
            r.broadcast_after_round_trip_per_s / claim
        ));
    }
    if r.latency_max_ms > 0.0 {
        out.push_str(&format!(
            "| latency insert commit → reply at the gateway, p50 | {:.2} ms | wake-up p50 {:.2} ms | {:.2} | ≤ 3 |\n",
            r.latency_p50_ms,
            r.wakeup_p50_ms,
            r.latency_p50_ms / r.wakeup_p50_ms
        ));
        out.push_str(&format!(
            "| latency insert commit → reply at the gateway, p99 | {:.2} ms | wake-up p99 {:.2} ms | {:.2} | ≤ 4 |\n",
            r.latency_p99_ms,
            r.wakeup_p99_ms,
            r.latency_p99_ms / r.wakeup_p99_ms
        ));
        out.push_str(&format!(
            "| latency max | {:.2} ms | | | |\n",
            r.latency_max_ms
        ));
    }
    if let (Some(h), Some(two)) = (&r.history_run, by_workers.get(&2)) {
        out.push_str(&format!(
            "| round trip, 2 workers, {} history messages | {:.0} msgs/s | empty tables {:.0} msgs/s | {:.2} | ≥ 0.90 |\n",
            h.history,
            h.msgs_per_s,
            two.msgs_per_s,
            h.msgs_per_s / two.msgs_per_s
        ));
    }
    if let (Some(a), Some(two)) = (&r.after_broadcast_run, by_workers.get(&2)) {
        out.push_str(&format!(
            "| round trip, 2 workers, right after the {}-identity broadcast | {:.0} msgs/s | empty tables {:.0} msgs/s | {:.2} | ≥ 0.90 (ours) |\n",
            r.broadcast_identities,
            a.msgs_per_s,
            two.msgs_per_s,
            a.msgs_per_s / two.msgs_per_s
        ));
    }
    if let (Some(p), Some(h)) = (&r.purge_run, &r.history_run) {
        out.push_str(&format!(
            "| the same while `dbrouter purge` deletes history ({} messages purged, {:.0}/s) | {:.0} msgs/s | without purge {:.0} msgs/s | {:.2} | |\n",
            r.purged,
            r.purged as f64 / p.seconds,
            p.msgs_per_s,
            h.msgs_per_s,
            p.msgs_per_s / h.msgs_per_s
        ));
    }
    if r.gateway_requests_per_s > 0.0 {
        if let Some(two) = by_workers.get(&2) {
            out.push_str(&format!(
                "| the stand-in gateway alone (it must not be the bottleneck) | {:.0} requests/s | round trip, 2 workers {:.0} msgs/s | {:.2} of it used | |\n",
                r.gateway_requests_per_s,
                two.msgs_per_s,
                two.msgs_per_s / r.gateway_requests_per_s
            ));
        }
    }
    if let (Some(su), Some(two)) = (&r.superuser_round_trip, by_workers.get(&2)) {
        out.push_str(&format!(
            "| round trip, 2 workers as `dbrouter_worker` (row-level security on messages) | {:.0} msgs/s | as the superuser (none) {:.0} msgs/s | {:.2} | ≥ 0.90 |\n",
            two.msgs_per_s,
            su.msgs_per_s,
            two.msgs_per_s / su.msgs_per_s
        ));
    }
    if let (Some(sc), Some(two)) = (&r.scraped_round_trip, by_workers.get(&2)) {
        out.push_str(&format!(
            "| round trip, 2 workers with `--metrics-addr`, scraped every 5 s | {:.0} msgs/s, {:.3} CPU ms/msg | without {:.0} msgs/s, {:.3} CPU ms/msg | {:.2} (CPU {:.2}) | ≥ 0.98 |\n",
            sc.msgs_per_s,
            sc.cpu_ms_per_msg,
            two.msgs_per_s,
            two.cpu_ms_per_msg,
            sc.msgs_per_s / two.msgs_per_s,
            two.cpu_ms_per_msg / sc.cpu_ms_per_msg
        ));
    }
    if let Some(d) = &r.database_round_trip {
        out.push_str(&format!(
            "| round trip through the `database` engine (the test double), 2 workers | {:.0} msgs/s | claim-200 {:.0} rows/s | {:.3} | |\n",
            d.msgs_per_s,
            claim,
            d.msgs_per_s / claim
        ));
        out.push_str(&format!(
            "| CPU per round trip, `database` engine, 2 workers | {:.3} ms | | | |\n",
            d.cpu_ms_per_msg
        ));
    }
    for b in &r.smpp_broadcasts {
        let http = r.broadcast_end_to_end_per_s;
        out.push_str(&format!(
            "| broadcast end to end through SMPP, {} bind(s) per worker, window {} | {:.0} transmissions/s | the gateway path {:.0} | {:.2} | ≥ 0.8 |\n",
            b.binds,
            b.window,
            b.per_s,
            http,
            if http > 0.0 { b.per_s / http } else { f64::INFINITY }
        ));
    }
    if let Some(t) = &r.smpp_round_trip {
        let two = by_workers.get(&2).map_or(0.0, |t| t.msgs_per_s);
        out.push_str(&format!(
            "| round trip with replies through SMPP, 2 workers, 1 bind, window 10 | {:.0} msgs/s | the gateway path {:.0} msgs/s | {:.2} | |\n",
            t.msgs_per_s,
            two,
            if two > 0.0 { t.msgs_per_s / two } else { f64::INFINITY }
        ));
    }
    if r.smsc_submits_per_s > 0.0 {
        let best = r
            .smpp_broadcasts
            .iter()
            .map(|b| b.per_s)
            .fold(0.0, f64::max);
        out.push_str(&format!(
            "| the stand-in SMSC alone (it must not be the bottleneck) | {:.0} submits/s | fastest SMPP broadcast {:.0}/s | {:.2} of it used | |\n",
            r.smsc_submits_per_s,
            best,
            best / r.smsc_submits_per_s
        ));
    }
    if let (Some(peer), Some(two)) = (r.sqlxmq_jobs_per_s, by_workers.get(&2)) {
        out.push_str(&format!(
            "| peer: sqlxmq draining empty jobs | {peer:.0} jobs/s | dbrouter round trips, 2 workers: {:.0} msgs/s | {:.1} × in dbrouter's favour | |\n",
            two.msgs_per_s,
            two.msgs_per_s / peer
        ));
    }
    let rss = r
        .round_trips
        .iter()
        .map(|t| t.worker_peak_rss_mib)
        .fold(0.0, f64::max);
    out.push_str(&format!("| worker peak RSS | {rss:.1} MiB | | | |\n"));
    out
}
