//! The `dbrouter` command line.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use dbrouter::apps::{AppSettings, Pipeline};
use dbrouter::{admin, db, worker::Worker, WorkerConfig};

#[derive(Parser)]
#[command(
    name = "dbrouter",
    version,
    about = "A PostgreSQL-native SMS message router"
)]
struct Cli {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://localhost/dbrouter"
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the dbrouter schema.
    Migrate,
    /// Process messages until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Enqueue an inbound message, as if a gateway had received it.
    Receive {
        #[arg(long, env = "DBROUTER_BACKEND")]
        backend: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        external_id: Option<String>,
        text: String,
    },
    /// Enqueue an outbound message to one or more identities.
    Send {
        #[arg(long, env = "DBROUTER_BACKEND")]
        backend: String,
        /// Repeat for several recipients.
        #[arg(long = "identity", required = true)]
        identities: Vec<String>,
        text: String,
    },
    /// Queue depths, misconfigured backends and recent errors.
    Status,
    /// Manage backends.
    #[command(subcommand)]
    Backend(BackendCommand),
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend.
    Add {
        name: String,
        /// database or console.
        #[arg(long)]
        engine: String,
        /// Engine settings as a JSON object.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Batch size for this backend (default: the worker's --batch-size).
        #[arg(long)]
        batch_size: Option<i32>,
    },
    /// List backends.
    List,
    /// Remove a backend that has no message history.
    Remove { name: String },
}

#[derive(Args)]
struct WorkerArgs {
    /// Apps, in order.
    #[arg(
        long,
        env = "DBROUTER_APPS",
        value_delimiter = ',',
        default_value = "echo,keyword,default"
    )]
    apps: Vec<String>,
    /// Reply of the `default` app.
    #[arg(
        long,
        env = "DBROUTER_DEFAULT_REPLY",
        default_value = "Sorry, I did not understand that."
    )]
    default_reply: String,
    /// Most messages or transmissions per batch (a backend's batch_size overrides it).
    #[arg(long, env = "DBROUTER_BATCH_SIZE", default_value_t = 200)]
    batch_size: u32,
    /// Batches in flight at once in this process.
    #[arg(long, env = "DBROUTER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// How often to look for work without a notification.
    #[arg(long, env = "DBROUTER_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Do not LISTEN (for PgBouncer in transaction mode); poll only.
    #[arg(long, env = "DBROUTER_POLL_ONLY")]
    poll_only: bool,
    /// How long a claimed outbound transmission is reserved (≥ 2 × send timeout).
    #[arg(long, env = "DBROUTER_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Deadline of one backend send call (a backend's config.timeout overrides it).
    #[arg(long, env = "DBROUTER_SEND_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    send_timeout: Duration,
    /// Deadline for the apps to process an inbound batch.
    #[arg(long, env = "DBROUTER_APP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    app_timeout: Duration,
    /// First retry delay; doubles each attempt, with jitter.
    #[arg(long, env = "DBROUTER_RETRY_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
    /// Longest retry delay.
    #[arg(long, env = "DBROUTER_MAX_BACKOFF", default_value = "1h", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// Attempts per transmission before it stays E.
    #[arg(long, env = "DBROUTER_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,
    /// Parse every statement unnamed (for PgBouncer before 1.21 in transaction
    /// mode, with --poll-only).
    #[arg(long, env = "DBROUTER_NO_PREPARED_STATEMENTS")]
    no_prepared_statements: bool,
    /// Exit once no work is due instead of waiting for more.
    #[arg(long, env = "DBROUTER_EXIT_WHEN_IDLE")]
    exit_when_idle: bool,
}

impl WorkerArgs {
    fn config(&self) -> WorkerConfig {
        WorkerConfig {
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            poll_interval: self.poll_interval,
            poll_only: self.poll_only,
            lease: self.lease,
            send_timeout: self.send_timeout,
            app_timeout: self.app_timeout,
            retry_backoff: self.retry_backoff,
            max_backoff: self.max_backoff,
            max_attempts: self.max_attempts,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DBROUTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let connect = |n: u32| {
        let url = cli.database_url.clone();
        async move {
            db::connect(&url, n).await.with_context(|| {
                "cannot connect to PostgreSQL; check DATABASE_URL and that the server is up"
                    .to_string()
            })
        }
    };
    match &cli.command {
        Command::Migrate => {
            let pool = connect(2).await?;
            db::migrate(&pool).await?;
            println!("dbrouter schema is up to date");
        }
        Command::Worker(args) => {
            let cfg = args.config();
            cfg.validate()?;
            db::set_prepared_statements(!args.no_prepared_statements);
            let max = u32::try_from(cfg.concurrency * 2 + 4).unwrap_or(u32::MAX);
            let pool = db::connect_lazy(&cli.database_url, max)
                .context("DATABASE_URL is not a valid URL")?;
            let settings = AppSettings {
                default_reply: args.default_reply.clone(),
            };
            let pipeline = Pipeline::from_names(&args.apps, &pool, &settings)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let Some(worker) = start_worker(pool, cfg, pipeline, &shutdown).await? else {
                return Ok(());
            };
            if args.exit_when_idle {
                let n = worker.drain().await?;
                tracing::info!(processed = n, "no more due work; exiting");
                return Ok(());
            }
            tracing::info!(concurrency = worker.config().concurrency, "worker started");
            worker.run(shutdown).await?;
            tracing::info!("worker stopped");
        }
        Command::Receive {
            backend,
            identity,
            external_id,
            text,
        } => {
            let pool = connect(1).await?;
            let id = admin::receive(&pool, backend, identity, text, external_id.as_deref()).await?;
            println!("queued inbound message {id}");
        }
        Command::Send {
            backend,
            identities,
            text,
        } => {
            let pool = connect(1).await?;
            let id = admin::send(&pool, backend, identities, text).await?;
            println!("queued outbound message {id}");
        }
        Command::Status => {
            let pool = connect(2).await?;
            print!("{}", admin::status(&pool, &WorkerConfig::default()).await?);
        }
        Command::Backend(cmd) => {
            let pool = connect(1).await?;
            match cmd {
                BackendCommand::Add {
                    name,
                    engine,
                    config,
                    batch_size,
                } => {
                    let config: serde_json::Value = serde_json::from_str(config)
                        .context("--config must be a JSON object, e.g. '{\"timeout\": \"20s\"}'")?;
                    admin::backend_add(&pool, name, engine, &config, *batch_size).await?;
                    println!("added backend {name}");
                }
                BackendCommand::List => print!("{}", admin::backend_list(&pool).await?),
                BackendCommand::Remove { name } => {
                    admin::backend_remove(&pool, name).await?;
                    println!("removed backend {name}");
                }
            }
        }
    }
    Ok(())
}

/// Start the worker, waiting (not exiting) while the database is unreachable,
/// so a worker started during a database restart does not crash in a loop.
/// `None` when shut down before the database came back.
async fn start_worker(
    pool: sqlx::PgPool,
    cfg: WorkerConfig,
    pipeline: Pipeline,
    shutdown: &CancellationToken,
) -> Result<Option<std::sync::Arc<Worker>>> {
    let mut pause = Duration::from_millis(200);
    loop {
        match Worker::new(pool.clone(), cfg.clone(), pipeline.clone()).await {
            Ok(w) => return Ok(Some(w)),
            Err(dbrouter::Error::Db(e)) if db::is_transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "database not reachable yet; waiting for it");
            }
            Err(e) => {
                return Err(e).context("cannot start the worker (has `dbrouter migrate` run?)")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing in-flight batches");
    shutdown.cancel();
}
