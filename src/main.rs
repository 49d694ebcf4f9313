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
    /// Create or upgrade the dbrouter schema, and create and grant its roles
    /// (needs the schema's owner; CREATEROLE the first time).
    Migrate {
        /// The roles are this followed by enqueue, worker, admin, readonly.
        #[arg(long, env = "DBROUTER_ROLE_PREFIX", default_value = db::DEFAULT_ROLE_PREFIX)]
        role_prefix: String,
    },
    /// Process messages until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Receive messages and delivery reports from gateways over HTTP.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "DBROUTER_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Database connections for the receiver.
        #[arg(long, env = "DBROUTER_SERVE_CONNECTIONS", default_value_t = 8)]
        connections: u32,
        /// Most client connections at once; more wait to be accepted.
        #[arg(long, env = "DBROUTER_SERVE_MAX_CLIENTS", default_value_t = 4096)]
        max_clients: usize,
        /// A client's time to send a request's headers (and to stay idle).
        #[arg(long, env = "DBROUTER_SERVE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        header_timeout: Duration,
        /// A request's time to be complete and answered (else 408).
        #[arg(long, env = "DBROUTER_SERVE_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
        request_timeout: Duration,
        /// On SIGTERM, how long requests in flight may take to finish.
        #[arg(long, env = "DBROUTER_SERVE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        shutdown_timeout: Duration,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long, env = "DBROUTER_SERVE_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Serve the web console; `--set-password` makes or changes a user.
    Console(ConsoleArgs),
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
        /// Not before this time (e.g. "2026-12-01 09:00+03").
        #[arg(long)]
        send_at: Option<String>,
        /// Unsent transmissions end E "expired" this long after send-at (or now).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_after: Option<Duration>,
        /// Higher goes first (-1000 to 1000; replies are 1, bulk 0).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Idempotency key: sending the same key again returns the first message.
        #[arg(long)]
        key: Option<String>,
        text: String,
    },
    /// Send one text to many phones (from a file, one a line), then follow
    /// it to the end: a progress bar on a terminal, plain lines otherwise.
    Broadcast {
        #[arg(long, env = "DBROUTER_BACKEND")]
        backend: String,
        /// A file of phone numbers, one a line ("-": standard input).
        #[arg(long, required_unless_present = "identities")]
        file: Option<std::path::PathBuf>,
        /// Repeat for several recipients (besides or instead of --file).
        #[arg(long = "identity")]
        identities: Vec<String>,
        /// Not before this time (e.g. "2026-12-01 09:00+03").
        #[arg(long)]
        send_at: Option<String>,
        /// Idempotency key: the same key again follows the first broadcast.
        #[arg(long)]
        key: Option<String>,
        /// Enqueue and exit without following.
        #[arg(long)]
        detach: bool,
        text: String,
    },
    /// Cancel an outbound message: unsent transmissions end E "cancelled".
    Cancel { message_id: i64 },
    /// Delete final messages older than an age, in small batches.
    Purge {
        /// e.g. 30d.
        #[arg(long, env = "DBROUTER_PURGE_OLDER_THAN", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Messages per transaction.
        #[arg(long, env = "DBROUTER_PURGE_BATCH_SIZE", default_value_t = 1000)]
        batch_size: i32,
        /// Pause between batches, to leave the database to the workers.
        #[arg(long, env = "DBROUTER_PURGE_PAUSE", default_value = "10ms", value_parser = humantime::parse_duration)]
        pause: Duration,
    },
    /// Opt identities out of (or back into) broadcasts and outbox sends.
    #[command(subcommand)]
    Optout(OptoutCommand),
    /// Queue depths, misconfigured backends and recent errors.
    Status {
        /// Show it again every --interval until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Manage backends.
    #[command(subcommand)]
    Backend(BackendCommand),
}

#[derive(Args)]
struct ConsoleArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "DBROUTER_CONSOLE_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    listen: String,
    /// Make the user (or change their password) and exit. The password is
    /// read from DBROUTER_CONSOLE_PASSWORD, else asked for (or read from stdin).
    #[arg(long)]
    set_password: bool,
    /// The user --set-password makes.
    #[arg(long, env = "DBROUTER_CONSOLE_USER", default_value = "admin")]
    user: String,
    /// Nobody changes anything through this console; with --set-password,
    /// the user may look but not change anything.
    #[arg(long, env = "DBROUTER_CONSOLE_READ_ONLY")]
    read_only: bool,
    /// Mark the session cookie Secure (the console is behind HTTPS).
    #[arg(long, env = "DBROUTER_CONSOLE_SECURE_COOKIES")]
    secure_cookies: bool,
    /// How long a login lasts.
    #[arg(long, env = "DBROUTER_CONSOLE_SESSION_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Database connections for the console.
    #[arg(long, env = "DBROUTER_CONSOLE_CONNECTIONS", default_value_t = 4)]
    connections: u32,
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend.
    Add {
        name: String,
        /// kannel, smpp, vumi, http, database or console.
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
    /// Stop sending through a backend; its messages stay queued.
    Pause {
        name: String,
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// Send through a paused backend again.
    Resume { name: String },
    /// Change a backend's traffic settings.
    Set {
        name: String,
        #[arg(long)]
        batch_size: Option<i32>,
        /// Messages per second across all workers.
        #[arg(long, conflicts_with = "no_rate_limit")]
        rate_limit: Option<f64>,
        /// Messages that may go at once after an idle spell.
        #[arg(long)]
        rate_burst: Option<i32>,
        #[arg(long)]
        no_rate_limit: bool,
        /// Default deadline of non-reply messages (e.g. 1d); "none" removes it.
        #[arg(long, value_parser = parse_optional_duration)]
        expire_after: Option<OptionalDuration>,
        /// Default deadline of replies (e.g. 1h); "none" removes it.
        #[arg(long, value_parser = parse_optional_duration)]
        expire_replies_after: Option<OptionalDuration>,
        /// as-is or e164.
        #[arg(long)]
        number_format: Option<String>,
        /// Country code for national numbers under e164 (e.g. 255); "none" removes it.
        #[arg(long)]
        country_code: Option<String>,
    },
}

#[derive(Subcommand)]
enum OptoutCommand {
    /// Opt an identity out.
    Add { backend: String, identity: String },
    /// Opt an identity back in.
    Remove { backend: String, identity: String },
    /// List opted-out identities.
    List,
}

/// A duration, or "none".
#[derive(Clone, Copy)]
struct OptionalDuration(Option<Duration>);

fn parse_optional_duration(s: &str) -> std::result::Result<OptionalDuration, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(OptionalDuration(None));
    }
    humantime::parse_duration(s)
        .map(|d| OptionalDuration(Some(d)))
        .map_err(|e| format!("{e} (a duration like 1h, or none)"))
}

#[derive(Args)]
struct WorkerArgs {
    /// Apps, in order.
    #[arg(
        long,
        env = "DBROUTER_APPS",
        value_delimiter = ',',
        default_value = "optout,echo,keyword,default"
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
    /// How long the parts of a long message from a phone (SMPP) wait for the
    /// rest before they are delivered as they are, flagged.
    #[arg(long, env = "DBROUTER_REASSEMBLY_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    reassembly_timeout: Duration,
    /// Parse every statement unnamed (for PgBouncer before 1.21 in transaction
    /// mode, with --poll-only).
    #[arg(long, env = "DBROUTER_NO_PREPARED_STATEMENTS")]
    no_prepared_statements: bool,
    /// Exit once no work is due instead of waiting for more.
    #[arg(long, env = "DBROUTER_EXIT_WHEN_IDLE")]
    exit_when_idle: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9187).
    #[arg(long, env = "DBROUTER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
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
            reassembly_timeout: self.reassembly_timeout,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DBROUTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // DBROUTER_LOG_FORMAT=json: one JSON object a line, every field (backend,
    // transmission, message ids, error) a key of its own, for log shippers.
    match std::env::var("DBROUTER_LOG_FORMAT").as_deref() {
        Ok("json") => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        Err(_) | Ok("" | "text") => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour only on a terminal: not in files, pipes or journald.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Ok(other) => {
            eprintln!(
                "DBROUTER_LOG_FORMAT={other:?} is not a log format; use text (the default) or json"
            );
            std::process::exit(2);
        }
    }
    let cli = Cli::parse();
    // Long-running commands stop gracefully on SIGTERM/SIGINT; watch from
    // the first instruction after parsing, before any connection is made.
    let shutdown = match cli.command {
        Command::Worker(_) | Command::Serve { .. } => stop_on_signal()?,
        Command::Console(ref c) if !c.set_password => stop_on_signal()?,
        // Following long work: a signal stops the following, not the work.
        Command::Status { watch: true, .. } | Command::Broadcast { detach: false, .. } => {
            stop_on_signal()?
        }
        _ => CancellationToken::new(),
    };
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
        Command::Migrate { role_prefix } => {
            let pool = connect(2).await?;
            db::migrate_with_roles(&pool, role_prefix).await?;
            println!("dbrouter schema is up to date");
        }
        Command::Worker(args) => {
            let cfg = args.config();
            cfg.validate()?;
            db::set_prepared_statements(!args.no_prepared_statements);
            let max = u32::try_from(cfg.concurrency * 2 + 4).unwrap_or(u32::MAX);
            let health = std::sync::Arc::new(dbrouter::connections::Health::default());
            let pool = dbrouter::connections::connect_lazy(&cli.database_url, max, health.clone())
                .context("DATABASE_URL is not a valid URL")?;
            let settings = AppSettings {
                default_reply: args.default_reply.clone(),
            };
            let pipeline = Pipeline::from_names(&args.apps, &pool, &settings)?;
            if let Some(addr) = args.metrics_addr {
                dbrouter::metrics::install(addr).map_err(anyhow::Error::msg)?;
                tokio::spawn(dbrouter::metrics::sample(pool.clone()));
                tracing::info!(%addr, "metrics at http://{addr}/metrics");
            }
            let Some(worker) = start_worker(pool, health, cfg, pipeline, &shutdown).await? else {
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
        Command::Serve {
            listen,
            connections,
            max_clients,
            header_timeout,
            request_timeout,
            shutdown_timeout,
            metrics_addr,
        } => {
            let pool = db::connect_lazy_receiver(&cli.database_url, *connections)
                .context("DATABASE_URL is not a valid URL")?;
            if let Some(addr) = metrics_addr {
                dbrouter::metrics::install(*addr).map_err(anyhow::Error::msg)?;
                tracing::info!(%addr, "metrics at http://{addr}/metrics");
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}; is it in use?"))?;
            let open_files = dbrouter::listen::raise_open_files();
            tracing::info!(address = %listen, open_files, "receiving from gateways");
            let limits = dbrouter::listen::Limits {
                max_connections: *max_clients,
                header_timeout: *header_timeout,
                request_timeout: *request_timeout,
                shutdown_timeout: *shutdown_timeout,
            };
            let stop = async move { shutdown.cancelled().await };
            dbrouter::serve::serve_with(pool, listener, stop, limits)
                .await
                .context("the HTTP receiver failed")?;
            tracing::info!("receiver stopped");
        }
        Command::Console(args) if args.set_password => {
            // The variable, else asked for without echo on a terminal, else
            // the first line of standard input (`echo ... | dbrouter console
            // --set-password`).
            let password = match std::env::var("DBROUTER_CONSOLE_PASSWORD") {
                Ok(p) => p,
                Err(_) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    rpassword::prompt_password(format!("password for console user {}: ", args.user))
                        .context(
                            "cannot read the password; set DBROUTER_CONSOLE_PASSWORD or type it",
                        )?
                }
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let pool = connect(1).await?;
            let new = dbrouter::console::set_password(&pool, &args.user, &password, args.read_only)
                .await?;
            println!(
                "{} console user {}{}",
                if new {
                    "made"
                } else {
                    "changed the password of"
                },
                args.user,
                if args.read_only { " (read-only)" } else { "" }
            );
        }
        Command::Console(args) => {
            let pool = db::connect_lazy_receiver(&cli.database_url, args.connections)
                .context("DATABASE_URL is not a valid URL")?;
            let options = dbrouter::console::Options {
                read_only: args.read_only,
                secure_cookies: args.secure_cookies,
                session_ttl: args.session_ttl,
            };
            let app = dbrouter::console::router(pool, options).await.context(
                "cannot start the console (has `dbrouter migrate` run? is the database up?)",
            )?;
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}; is it in use?", args.listen))?;
            tracing::info!(address = %args.listen, "console at http://{}/", args.listen);
            let stop = async move { shutdown.cancelled().await };
            dbrouter::listen::run(app, listener, stop, dbrouter::listen::Limits::default())
                .await
                .context("the console failed")?;
            tracing::info!("console stopped");
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
            send_at,
            expires_after,
            priority,
            key,
            text,
        } => {
            let pool = connect(1).await?;
            let opts = admin::SendOptions {
                send_at: send_at.clone(),
                expires_after: *expires_after,
                priority: *priority,
                client_key: key.clone(),
            };
            let id = admin::send(&pool, backend, identities, text, &opts).await?;
            println!("queued outbound message {id}");
        }
        Command::Broadcast {
            backend,
            file,
            identities,
            send_at,
            key,
            detach,
            text,
        } => {
            let mut recipients = identities.clone();
            if let Some(file) = file {
                recipients.extend(read_identities(file)?);
            }
            let pool = connect(1).await?;
            let opts = admin::SendOptions {
                send_at: send_at.clone(),
                client_key: key.clone(),
                ..Default::default()
            };
            let id = admin::send(&pool, backend, &recipients, text, &opts).await?;
            println!("queued broadcast {id} to {} identities", recipients.len());
            if !detach {
                follow(&pool, id, &shutdown).await?;
            }
        }
        Command::Cancel { message_id } => {
            let pool = connect(1).await?;
            let n = admin::cancel(&pool, *message_id).await?;
            println!("cancelled message {message_id}: {n} unsent transmissions ended");
        }
        Command::Purge {
            older_than,
            batch_size,
            pause,
        } => {
            let pool = connect(1).await?;
            let span = admin::purge_span(&pool, *older_than).await?;
            let (first, end) = span.unwrap_or((0, 0));
            let total = u64::try_from(end - first).unwrap_or(0);
            // Nothing to walk, nothing to draw.
            let mut meter =
                (total > 0).then(|| dbrouter::progress::Meter::new(total, "old ids walked"));
            let n = admin::purge(&pool, *older_than, *batch_size, *pause, |purged, last| {
                if let Some(meter) = meter.as_mut() {
                    let walked = u64::try_from(last - first).unwrap_or(0).min(total);
                    meter.update(walked, total, &format!("{purged} messages purged"));
                }
            })
            .await?;
            if let Some(meter) = meter {
                meter.finish(total, total, &format!("{n} messages purged"));
            }
            println!(
                "purged {n} messages older than {}",
                humantime::format_duration(*older_than)
            );
        }
        Command::Optout(cmd) => {
            let pool = connect(1).await?;
            match cmd {
                OptoutCommand::Add { backend, identity } => {
                    admin::opt(&pool, backend, identity, true).await?;
                    println!("{identity} on {backend} is opted out");
                }
                OptoutCommand::Remove { backend, identity } => {
                    if admin::opt(&pool, backend, identity, false).await? {
                        println!("{identity} on {backend} is opted back in");
                    } else {
                        println!("{identity} on {backend} was not opted out");
                    }
                }
                OptoutCommand::List => print!("{}", admin::opt_out_list(&pool).await?),
            }
        }
        Command::Status { watch, interval } => {
            let pool = connect(2).await?;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            loop {
                let status = admin::status(&pool, &WorkerConfig::default()).await?;
                if !watch {
                    print!("{status}");
                    break;
                }
                let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
                if tty {
                    // Clear the screen and draw again from the top.
                    print!("\x1b[2J\x1b[H");
                }
                print!(
                    "dbrouter status at {now} (every {})\n\n{status}\n",
                    humantime::format_duration(*interval)
                );
                std::io::Write::flush(&mut std::io::stdout())?;
                tokio::select! {
                    _ = tokio::time::sleep(*interval) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
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
                BackendCommand::Pause { name, reason } => {
                    admin::backend_pause(&pool, name, reason).await?;
                    println!("paused backend {name}: its messages stay queued");
                }
                BackendCommand::Resume { name } => {
                    admin::backend_resume(&pool, name).await?;
                    println!("resumed backend {name}");
                }
                BackendCommand::Set {
                    name,
                    batch_size,
                    rate_limit,
                    rate_burst,
                    no_rate_limit,
                    expire_after,
                    expire_replies_after,
                    number_format,
                    country_code,
                } => {
                    let settings = admin::BackendSettings {
                        batch_size: *batch_size,
                        rate_limit: if *no_rate_limit {
                            Some(None)
                        } else {
                            rate_limit.map(Some)
                        },
                        rate_burst: *rate_burst,
                        expire_after: expire_after.map(|d| d.0),
                        expire_replies_after: expire_replies_after.map(|d| d.0),
                        number_format: number_format.clone(),
                        country_code: country_code
                            .as_ref()
                            .map(|c| (!c.eq_ignore_ascii_case("none")).then(|| c.clone())),
                    };
                    admin::backend_set(&pool, name, &settings).await?;
                    println!("updated backend {name}");
                }
            }
        }
    }
    Ok(())
}

/// Phone numbers, one a line, from a file or ("-") standard input; blank
/// lines and `#` comments are skipped.
fn read_identities(path: &std::path::Path) -> Result<Vec<String>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the phone numbers from standard input")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the phone numbers from {}", path.display()))?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Follow a broadcast until every transmission has ended (SIGINT/SIGTERM
/// stop the following, not the broadcast). Says so when nothing moves for a minute:
/// no worker is running, or the backend is paused or rate-limited.
async fn follow(pool: &sqlx::PgPool, id: i64, stop: &CancellationToken) -> Result<()> {
    let mut p = admin::progress(pool, id).await?;
    let total = |p: &admin::Progress| u64::try_from(p.total).unwrap_or(0);
    let ended = |p: &admin::Progress| u64::try_from(p.ended()).unwrap_or(0);
    let detail = |p: &admin::Progress| {
        format!(
            "{} sent, {} delivered, {} failed",
            p.sent, p.delivered, p.failed
        )
    };
    let mut meter = dbrouter::progress::Meter::new(total(&p), "transmissions ended");
    let mut moved = std::time::Instant::now();
    let mut warned = false;
    while !p.finished() {
        meter.update(ended(&p), total(&p), &detail(&p));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => {
                eprintln!("stopped following; broadcast {id} goes on (dbrouter cancel {id} stops it)");
                return Ok(());
            }
        }
        let next = admin::progress(pool, id).await?;
        if next != p {
            moved = std::time::Instant::now();
            warned = false;
        } else if !warned && moved.elapsed() > Duration::from_secs(60) {
            tracing::warn!(message = id, "no progress for a minute: is a worker running, and is the backend paused or rate-limited? (dbrouter status)");
            warned = true;
        }
        p = next;
    }
    meter.finish(ended(&p), total(&p), &detail(&p));
    Ok(())
}

/// Start the worker, waiting (not exiting) while the database is unreachable,
/// so a worker started during a database restart does not crash in a loop.
/// `None` when shut down before the database came back.
async fn start_worker(
    pool: sqlx::PgPool,
    health: std::sync::Arc<dbrouter::connections::Health>,
    cfg: WorkerConfig,
    pipeline: Pipeline,
    shutdown: &CancellationToken,
) -> Result<Option<std::sync::Arc<Worker>>> {
    let mut pause = Duration::from_millis(200);
    loop {
        match Worker::new(pool.clone(), health.clone(), cfg.clone(), pipeline.clone()).await {
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

/// Watch SIGTERM and SIGINT; the token is cancelled on the first of them.
/// The handlers are installed before this returns (not in a task that runs
/// later), so a signal that arrives while the worker is still connecting
/// is a graceful stop too, not the default "die at once".
fn stop_on_signal() -> Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight batches");
        token.cancel();
    });
    Ok(shutdown)
}
