//! What the CLI does besides running a worker: enqueue, backends, status.

use std::fmt::Write as _;

use sqlx::PgPool;

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::registry;

/// Turn a database error raised by our own checks into a plain input error.
fn input_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref().is_some_and(|c| c.starts_with("23")) => {
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

/// Enqueue one outbound text to one or more identities. Returns the message id.
pub async fn send(pool: &PgPool, backend: &str, identities: &[String], text: &str) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as("SELECT dbrouter.broadcast($1, $2, $3)")
        .bind(backend)
        .bind(identities)
        .bind(text)
        .fetch_one(pool)
        .await
        .map_err(input_error)?;
    Ok(id)
}

/// Add a backend.
pub async fn backend_add(
    pool: &PgPool,
    name: &str,
    engine: &str,
    config: &serde_json::Value,
    batch_size: Option<i32>,
) -> Result<()> {
    if let Err(problem) = crate::backends::build(name, engine, config, pool) {
        return Err(Error::Input(format!("backend {name:?}: {problem}")));
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
        let _ = writeln!(
            out,
            "{name:<20} {engine:<10} {enabled:<8} {batch:<6} {config}"
        );
    }
    Ok(out)
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
    let disabled: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM dbrouter.backends WHERE NOT enabled ORDER BY name")
            .fetch_all(pool)
            .await?;
    for (name,) in disabled {
        let _ = writeln!(
            out,
            "\nbackend {name:?} is disabled: its messages stay queued"
        );
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
        for (at, backend, identity, msg, attempt, fin, error) in errors {
            let fin = if fin { "final" } else { "will retry" };
            let _ = writeln!(
                out,
                "  {at} {backend} {identity} message {msg} attempt {attempt} ({fin}): {error}"
            );
        }
    }
    Ok(out)
}
