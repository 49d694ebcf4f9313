//! The backends a worker sends through, loaded from `dbrouter.backends` and
//! reloaded when they change, without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::backends::{self, Backend};
use crate::config::{check_lease, WorkerConfig};
use crate::error::Result;

/// One backend row, built.
#[derive(Clone)]
pub struct BackendEntry {
    pub id: i32,
    pub name: String,
    pub engine: String,
    pub batch_size: u32,
    pub enabled: bool,
    pub timeout: Duration,
    /// The engine, or why the row's configuration is unusable.
    pub engine_impl: std::result::Result<Arc<dyn Backend>, String>,
    updated_at: DateTime<Utc>,
}

impl BackendEntry {
    /// Enabled and correctly configured: its messages may be sent now.
    pub fn can_send(&self) -> bool {
        self.enabled && self.engine_impl.is_ok()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i32,
    name: String,
    engine: String,
    config: serde_json::Value,
    batch_size: Option<i32>,
    enabled: bool,
    updated_at: DateTime<Utc>,
}

/// Load (or reload, reusing unchanged entries of `previous`) every backend.
pub async fn load(
    pool: &PgPool,
    cfg: &WorkerConfig,
    previous: &[BackendEntry],
) -> Result<Vec<BackendEntry>> {
    let mut conn = crate::db::Conn::acquire(pool).await?;
    let rows: Vec<Row> = sqlx::query_as(include_str!("../sql/backends_load.sql"))
        .persistent(crate::db::prepared())
        .fetch_all(conn.get())
        .await?;
    conn.done().await?;
    let old: HashMap<i32, &BackendEntry> = previous.iter().map(|e| (e.id, e)).collect();
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(e) = old.get(&row.id) {
            if e.updated_at == row.updated_at {
                entries.push((*e).clone());
                continue;
            }
        }
        entries.push(build_entry(row, pool, cfg));
    }
    Ok(entries)
}

fn build_entry(row: Row, pool: &PgPool, cfg: &WorkerConfig) -> BackendEntry {
    let mut timeout = cfg.send_timeout;
    let engine_impl =
        backends::build(&row.name, &row.engine, &row.config, pool).and_then(|built| {
            if let Some(t) = built.common.timeout {
                timeout = t;
                check_lease(
                    cfg.lease,
                    t,
                    &format!("backend {:?}'s config.timeout", row.name),
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(built.backend)
        });
    if let Err(problem) = &engine_impl {
        tracing::error!(backend = %row.name, %problem, "backend is misconfigured; its messages stay queued until the row is fixed");
    }
    BackendEntry {
        id: row.id,
        name: row.name,
        engine: row.engine,
        batch_size: row
            .batch_size
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(cfg.batch_size),
        enabled: row.enabled,
        timeout,
        engine_impl,
        updated_at: row.updated_at,
    }
}

/// Check every backend's configuration without a worker (for `status`).
pub async fn problems(pool: &PgPool, cfg: &WorkerConfig) -> Result<Vec<(String, String)>> {
    let entries = load(pool, cfg, &[]).await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| e.engine_impl.err().map(|p| (e.name, p)))
        .collect())
}
