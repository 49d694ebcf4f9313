//! What the CLI does besides running a worker: enqueue, backends, status.

use std::fmt::Write as _;

use sqlx::PgPool;

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::registry;

/// Turn a database error raised by our own checks (or by a value the
/// database cannot read, like a malformed timestamp) into a plain input
/// error. P0001 is a plpgsql RAISE in an operator function.
fn input_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db)
            if db
                .code()
                .as_deref()
                .is_some_and(|c| c.starts_with("23") || c.starts_with("22") || c == "P0001") =>
        {
            Error::Input(db.message().to_string())
        }
        _ => Error::Db(e),
    }
}

/// Enqueue an inbound message (like RapidSMS's message tester). Returns its id.
pub async fn receive(
    pool: &PgPool,
    backend: &str,
    identity: &str,
    text: &str,
    external_id: Option<&str>,
) -> Result<i64> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO dbrouter.inbox (backend, identity, text, external_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(backend)
    .bind(identity)
    .bind(text)
    .bind(external_id)
    .execute(&mut *tx)
    .await
    .map_err(input_error)?;
    let (id,): (i64,) = sqlx::query_as("SELECT currval('dbrouter.messages_id_seq')")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Options of an outbound message (all optional).
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Not before this time (anything PostgreSQL reads as a timestamptz).
    pub send_at: Option<String>,
    /// Unsent transmissions end E "expired" this long after send_at (or now).
    pub expires_after: Option<std::time::Duration>,
    /// Higher goes first; default 0.
    pub priority: i32,
    /// Enqueueing the same key again returns the first message.
    pub client_key: Option<String>,
}

/// Enqueue one outbound text to one or more identities. Returns the message
/// id (the first message's when `client_key` was used before).
pub async fn send(
    pool: &PgPool,
    backend: &str,
    identities: &[String],
    text: &str,
    opts: &SendOptions,
) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "SELECT dbrouter.broadcast($1, $2, $3,
                send_at => $4::timestamptz,
                expires_at => coalesce($4::timestamptz, now()) + make_interval(secs => $5),
                priority => $6,
                client_key => $7)",
    )
    .bind(backend)
    .bind(identities)
    .bind(text)
    .bind(opts.send_at.as_deref())
    .bind(opts.expires_after.map(|d| d.as_secs_f64()))
    .bind(opts.priority)
    .bind(opts.client_key.as_deref())
    .fetch_one(pool)
    .await
    .map_err(input_error)?;
    Ok(id)
}

/// Cancel an outbound message; returns how many transmissions ended now.
pub async fn cancel(pool: &PgPool, message_id: i64) -> Result<i32> {
    let (n,): (i32,) = sqlx::query_as("SELECT dbrouter.cancel_message($1)")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .map_err(input_error)?;
    Ok(n)
}

/// Purge final messages older than `older_than`, one small transaction per
/// batch, pausing `pause` between batches so workers are never starved.
/// `on_batch` hears, after each batch, the messages purged so far and the
/// last id walked. Returns how many messages were purged.
pub async fn purge(
    pool: &PgPool,
    older_than: std::time::Duration,
    batch_size: i32,
    pause: std::time::Duration,
    mut on_batch: impl FnMut(i64, i64),
) -> Result<i64> {
    let mut after = 0_i64;
    let mut total = 0_i64;
    loop {
        let (purged, last): (i32, Option<i64>) = sqlx::query_as(
            "SELECT purged, last_id FROM dbrouter.purge_batch(make_interval(secs => $1), $2, $3)",
        )
        .bind(older_than.as_secs_f64())
        .bind(after)
        .bind(batch_size)
        .fetch_one(pool)
        .await
        .map_err(input_error)?;
        total += i64::from(purged);
        let Some(last) = last else {
            return Ok(total);
        };
        after = last;
        on_batch(total, last);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The ids a purge of messages older than `older_than` walks: from the
/// first message to about the first one created after the cut (ids grow
/// with time), found by bisection on the primary key (some 30 lookups, no
/// scan). `None` when there are no messages.
pub async fn purge_span(
    pool: &PgPool,
    older_than: std::time::Duration,
) -> Result<Option<(i64, i64)>> {
    let (first, last): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT min(id), max(id) FROM dbrouter.messages")
            .fetch_one(pool)
            .await?;
    let (Some(first), Some(mut high)) = (first, last) else {
        return Ok(None);
    };
    let mut low = first;
    while low < high {
        let mid = low + (high - low) / 2;
        let old: Option<bool> = sqlx::query_scalar(
            "SELECT created_at < now() - make_interval(secs => $2)
               FROM dbrouter.messages WHERE id >= $1 ORDER BY id LIMIT 1",
        )
        .bind(mid)
        .bind(older_than.as_secs_f64())
        .fetch_optional(pool)
        .await?;
        if old == Some(true) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    Ok(Some((first, low)))
}

/// An outbound message's progress, from its counters (no count over its
/// transmissions): how many there are in all, sent, delivered, failed, and
/// identities of a large broadcast not yet written as transmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub total: i64,
    pub sent: i64,
    pub delivered: i64,
    pub failed: i64,
    pub expanding: i64,
}

impl Progress {
    pub fn ended(&self) -> i64 {
        self.sent + self.delivered + self.failed
    }

    pub fn finished(&self) -> bool {
        self.expanding == 0 && self.ended() >= self.total
    }
}

pub async fn progress(pool: &PgPool, message_id: i64) -> Result<Progress> {
    let row: Option<(i32, i32, i32, i32, i64)> = sqlx::query_as(
        "SELECT m.n_total, m.n_done, m.n_delivered, m.n_error,
                coalesce((SELECT sum(cardinality(f.identities)) FROM dbrouter.fanouts f
                           WHERE f.message_id = m.id), 0)::bigint
           FROM dbrouter.messages m WHERE m.id = $1 AND m.direction = 'O'",
    )
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    let Some((total, done, delivered, failed, expanding)) = row else {
        return Err(Error::Input(format!(
            "there is no outbound message {message_id}"
        )));
    };
    Ok(Progress {
        total: i64::from(total),
        sent: i64::from(done - delivered),
        delivered: i64::from(delivered),
        failed: i64::from(failed),
        expanding,
    })
}

/// Pause a backend: its messages stay queued until it is resumed.
pub async fn backend_pause(pool: &PgPool, name: &str, reason: &str) -> Result<()> {
    sqlx::query("SELECT dbrouter.pause_backend($1, $2)")
        .bind(name)
        .bind(reason)
        .execute(pool)
        .await
        .map_err(input_error)?;
    Ok(())
}

pub async fn backend_resume(pool: &PgPool, name: &str) -> Result<()> {
    sqlx::query("SELECT dbrouter.resume_backend($1)")
        .bind(name)
        .execute(pool)
        .await
        .map_err(input_error)?;
    Ok(())
}

/// Traffic settings of a backend; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct BackendSettings {
    pub batch_size: Option<i32>,
    /// Messages per second; `Some(None)` removes the limit.
    pub rate_limit: Option<Option<f64>>,
    pub rate_burst: Option<i32>,
    pub expire_after: Option<Option<std::time::Duration>>,
    pub expire_replies_after: Option<Option<std::time::Duration>>,
    pub number_format: Option<String>,
    pub country_code: Option<Option<String>>,
}

pub async fn backend_set(pool: &PgPool, name: &str, s: &BackendSettings) -> Result<()> {
    let secs = |d: &Option<Option<std::time::Duration>>| d.map(|d| d.map(|d| d.as_secs_f64()));
    let done = sqlx::query(
        "UPDATE dbrouter.backends SET
            batch_size = CASE WHEN $2 THEN $3 ELSE batch_size END,
            rate_limit = CASE WHEN $4 THEN $5 ELSE rate_limit END,
            rate_burst = CASE WHEN $6 THEN $7 ELSE rate_burst END,
            expire_after = CASE WHEN $8 THEN make_interval(secs => $9) ELSE expire_after END,
            expire_replies_after = CASE WHEN $10 THEN make_interval(secs => $11) ELSE expire_replies_after END,
            number_format = coalesce($12, number_format),
            country_code = CASE WHEN $13 THEN $14 ELSE country_code END
          WHERE name = $1",
    )
    .bind(name)
    .bind(s.batch_size.is_some())
    .bind(s.batch_size)
    .bind(s.rate_limit.is_some())
    .bind(s.rate_limit.flatten())
    .bind(s.rate_burst.is_some())
    .bind(s.rate_burst)
    .bind(s.expire_after.is_some())
    .bind(secs(&s.expire_after).flatten())
    .bind(s.expire_replies_after.is_some())
    .bind(secs(&s.expire_replies_after).flatten())
    .bind(s.number_format.as_deref())
    .bind(s.country_code.is_some())
    .bind(s.country_code.clone().flatten())
    .execute(pool)
    .await
    .map_err(input_error)?;
    if done.rows_affected() == 0 {
        return Err(Error::Input(format!("no backend named {name:?}")));
    }
    Ok(())
}

/// Opt an identity out (or back in, with `out = false`) by hand.
pub async fn opt(pool: &PgPool, backend: &str, identity: &str, out: bool) -> Result<bool> {
    if out {
        sqlx::query("SELECT dbrouter.opt_out($1, $2)")
            .bind(backend)
            .bind(identity)
            .execute(pool)
            .await
            .map_err(input_error)?;
        Ok(true)
    } else {
        let (removed,): (bool,) = sqlx::query_as("SELECT dbrouter.opt_in($1, $2)")
            .bind(backend)
            .bind(identity)
            .fetch_one(pool)
            .await
            .map_err(input_error)?;
        Ok(removed)
    }
}

/// The opted-out identities, as a table.
pub async fn opt_out_list(pool: &PgPool) -> Result<String> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT backend, identity, keyword, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS')
           FROM dbrouter.opted_out ORDER BY backend, identity",
    )
    .fetch_all(pool)
    .await?;
    let mut out = format!(
        "{:<20} {:<20} {:<12} since\n",
        "backend", "identity", "keyword"
    );
    for (backend, identity, keyword, at) in rows {
        let _ = writeln!(out, "{backend:<20} {identity:<20} {keyword:<12} {at}");
    }
    Ok(out)
}

/// Add a backend.
pub async fn backend_add(
    pool: &PgPool,
    name: &str,
    engine: &str,
    config: &serde_json::Value,
    batch_size: Option<i32>,
) -> Result<()> {
    // A secret reference this process cannot resolve (the variable lives
    // where the workers run) leaves the config unchecked here; the workers
    // check it when they load it.
    match crate::gateways::secrets::resolve(config) {
        Err(unresolved) => tracing::warn!(
            backend = name,
            "{unresolved}; the config is checked by the workers"
        ),
        Ok(_) => {
            if let Err(problem) = crate::gateways::build(name, engine, config, pool) {
                return Err(Error::Input(format!("backend {name:?}: {problem}")));
            }
        }
    }
    sqlx::query(
        "INSERT INTO dbrouter.backends (name, engine, config, batch_size) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(engine)
    .bind(config)
    .bind(batch_size)
    .execute(pool)
    .await
    .map_err(input_error)?;
    Ok(())
}

/// Remove a backend; refused (by the database) when it has history.
pub async fn backend_remove(pool: &PgPool, name: &str) -> Result<()> {
    let done = sqlx::query("DELETE FROM dbrouter.backends WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23001") => Error::Input(format!(
                "{}; disable it instead: UPDATE dbrouter.backends SET enabled = false WHERE name = '{name}'",
                db.message()
            )),
            _ => Error::Db(e),
        })?;
    if done.rows_affected() == 0 {
        return Err(Error::Input(format!("no backend named {name:?}")));
    }
    Ok(())
}

/// A table of the backends.
pub async fn backend_list(pool: &PgPool) -> Result<String> {
    let rows: Vec<(String, String, bool, Option<i32>, serde_json::Value)> = sqlx::query_as(
        "SELECT name, engine, enabled, batch_size, config FROM dbrouter.backends ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let mut out = format!(
        "{:<20} {:<10} {:<8} {:<6} config\n",
        "name", "engine", "enabled", "batch"
    );
    for (name, engine, enabled, batch, config) in rows {
        let batch = batch.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        // Passwords, keys and headers are masked: this table gets pasted.
        let config = crate::gateways::secrets::masked(&config);
        let _ = writeln!(
            out,
            "{name:<20} {engine:<10} {enabled:<8} {batch:<6} {config}"
        );
    }
    Ok(out)
}

/// What `status` says about a backend besides its queues.
#[derive(sqlx::FromRow)]
struct BackendState {
    name: String,
    enabled: bool,
    paused: Option<String>,
    throttled: Option<String>,
    rate: Option<f64>,
    burst: Option<i32>,
}

/// The `dbrouter status` report: queue depths, misconfigured backends,
/// recent errors.
pub async fn status(pool: &PgPool, cfg: &WorkerConfig) -> Result<String> {
    let mut out = String::new();
    let rows: Vec<(String, String, String, i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT direction::text, status::text, backend, transmissions, messages,
                extract(epoch FROM oldest_age)::float8
           FROM dbrouter.stats ORDER BY backend, direction, status",
    )
    .fetch_all(pool)
    .await?;
    let _ = writeln!(
        out,
        "{:<20} {:<4} {:<7} {:>12} {:>10} {:>12}",
        "backend", "dir", "status", "transmissions", "messages", "oldest"
    );
    for (direction, status, backend, t, m, age) in rows {
        let age = age
            .map(|s| {
                humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64))
                    .to_string()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{backend:<20} {direction:<4} {status:<7} {t:>12} {m:>10} {age:>12}"
        );
    }
    let waiting: Vec<(i64, String, i64, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT message_id, backend, parts, identities::bigint, failing_parts, error
           FROM dbrouter.fanouts_waiting ORDER BY message_id LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    for (message, backend, parts, identities, failing, error) in waiting {
        let _ = writeln!(
            out,
            "\nbroadcast {message} ({backend}): {identities} identities in {parts} part(s) not yet given transmissions; the workers expand them"
        );
        if let Some(error) = error {
            let _ = writeln!(
                out,
                "  {failing} part(s) failed to expand and are retried every minute: {error} (SELECT * FROM dbrouter.fanouts WHERE error IS NOT NULL)"
            );
        }
    }
    let states: Vec<BackendState> = sqlx::query_as(
        "SELECT name, enabled, pause_reason AS paused,
                    CASE WHEN throttled_until > now()
                         THEN to_char(throttled_until, 'YYYY-MM-DD HH24:MI:SS') END AS throttled,
                    rate_limit AS rate, rate_burst AS burst
               FROM dbrouter.backends ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    for BackendState {
        name,
        enabled,
        paused,
        throttled,
        rate,
        burst,
    } in states
    {
        if !enabled {
            let _ = writeln!(
                out,
                "\nbackend {name:?} is disabled: its messages stay queued"
            );
        }
        if let Some(reason) = paused {
            let _ = writeln!(
                out,
                "\nbackend {name:?} is paused ({reason}): its messages stay queued; dbrouter backend resume {name}"
            );
        }
        if let Some(until) = throttled {
            let _ = writeln!(
                out,
                "\nbackend {name:?} is throttled until {until}: the gateway asked us to wait"
            );
        }
        if let Some(rate) = rate {
            let burst = burst.map_or_else(|| "one second's worth".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "\nbackend {name:?} is rate-limited to {rate} messages/s (burst {burst})"
            );
        }
    }
    let binds: Vec<(String, String, i32, bool, String, String)> = sqlx::query_as(
        "SELECT backend, worker, bind, up, state, to_char(since, 'YYYY-MM-DD HH24:MI:SS')
           FROM dbrouter.bind_states ORDER BY backend, worker, bind",
    )
    .fetch_all(pool)
    .await?;
    for backend in binds.chunk_by(|a, b| a.0 == b.0) {
        let up = backend.iter().filter(|b| b.3).count();
        let _ = writeln!(
            out,
            "\nbackend {:?}: {up} of {} SMPP binds up (SELECT * FROM dbrouter.bind_states)",
            backend[0].0,
            backend.len()
        );
        for (_, worker, bind, _, state, since) in backend.iter().filter(|b| !b.3) {
            let _ = writeln!(
                out,
                "  worker {worker} bind {bind}: {state} (since {since})"
            );
        }
    }
    for (name, problem) in registry::problems(pool, cfg).await? {
        let _ = writeln!(out, "\nbackend {name:?} is misconfigured: {problem}");
    }
    let errors: Vec<(String, String, String, i64, i32, bool, String)> = sqlx::query_as(
        "SELECT to_char(failed_at, 'YYYY-MM-DD HH24:MI:SS'), backend, identity, message_id, attempt, final, error
           FROM dbrouter.recent_errors LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    if !errors.is_empty() {
        let _ = writeln!(
            out,
            "\nrecent errors (SELECT * FROM dbrouter.recent_errors for more):"
        );
        // Errors are scrubbed when written; these may predate that.
        let configs: Vec<(String, serde_json::Value)> =
            sqlx::query_as("SELECT name, config FROM dbrouter.backends")
                .fetch_all(pool)
                .await?;
        let secrets: std::collections::HashMap<String, Vec<String>> = configs
            .into_iter()
            .map(|(name, config)| (name, crate::gateways::secrets::of(&config)))
            .collect();
        for (at, backend, identity, msg, attempt, fin, error) in errors {
            let fin = if fin { "final" } else { "will retry" };
            let error = crate::gateways::secrets::scrub(
                &error,
                secrets.get(&backend).map_or(&[][..], Vec::as_slice),
                "",
            );
            let _ = writeln!(
                out,
                "  {at} {backend} {identity} message {msg} attempt {attempt} ({fin}): {error}"
            );
        }
    }
    Ok(out)
}
