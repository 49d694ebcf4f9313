//! The backends a worker sends through, loaded from `dbrouter.backends` and
//! reloaded when they change, without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::config::{check_lease, WorkerConfig};
use crate::error::Result;
use crate::gateways::{self, Backend};

/// One backend row, built.
#[derive(Clone)]
pub struct BackendEntry {
    pub id: i32,
    pub name: String,
    pub engine: String,
    pub batch_size: u32,
    pub enabled: bool,
    /// Why an operator (or a gateway refusing our credentials) paused it.
    pub paused: Option<String>,
    /// Whether a rate limit applies (claims then take tokens first).
    pub rate_limited: bool,
    /// Whether it is granted to a tenant with a rate limit (claims then
    /// take that tenant's tokens too).
    pub tenant_limited: bool,
    /// A gateway asked us to wait until then (HTTP 429 Retry-After).
    pub throttled_until: Option<DateTime<Utc>>,
    pub timeout: Duration,
    /// Texts of more SMS parts end E unsent (`config.max_parts`).
    pub max_parts: Option<usize>,
    /// The engine, or why the row's configuration is unusable.
    pub engine_impl: std::result::Result<Arc<dyn Backend>, String>,
    /// Failed sends, logged a few at a time.
    pub failures: Arc<crate::failure_log::FailureLog>,
    config: serde_json::Value,
}

impl BackendEntry {
    /// Enabled, not paused and correctly configured: its messages may be
    /// claimed (the claim itself also honours rate limits and throttling).
    pub fn can_send(&self) -> bool {
        self.enabled && self.paused.is_none() && self.engine_impl.is_ok()
    }

    /// How long until a gateway's Retry-After ends, if it has not yet.
    pub fn throttled_for(&self) -> Option<Duration> {
        let until = self.throttled_until?;
        (until - Utc::now()).to_std().ok().filter(|d| !d.is_zero())
    }

    /// The backend's name when its engine's sends are written by the
    /// statement that records them S (the `database` engine,
    /// [`crate::gateways::Backend::recorded_with_outcome`]); that is how an
    /// outcome is recorded, not a path of its own.
    pub fn recorded_as(&self) -> Option<&str> {
        self.engine_impl
            .as_ref()
            .is_ok_and(|b| b.recorded_with_outcome())
            .then_some(self.name.as_str())
    }

    /// The one delivery decision for a reply to this backend, made when the
    /// inbound batch writes it: true, it is written P under the answering
    /// worker's lease and sent by that worker right after the commit
    /// (`inbound::run_batch`, then `outbound::complete`); false, it is
    /// written Q and claimed like any outbound work (`outbound::run_batch`).
    /// Only when nothing (a pause, a rate limit, a Retry-After) says it
    /// must wait its turn. Every engine goes the same way.
    pub fn sends_replies_at_once(&self) -> bool {
        self.can_send() && !self.rate_limited && self.throttled_for().is_none()
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
    pause_reason: Option<String>,
    rate_limited: bool,
    throttled_until: Option<DateTime<Utc>>,
    tenant_limited: bool,
}

/// Load (or reload, reusing unchanged entries of `previous`) every backend,
/// and start the engines built anew (a worker's).
pub async fn load(
    pool: &PgPool,
    cfg: &WorkerConfig,
    previous: &[BackendEntry],
) -> Result<Vec<BackendEntry>> {
    load_and(pool, cfg, previous, true).await
}

async fn load_and(
    pool: &PgPool,
    cfg: &WorkerConfig,
    previous: &[BackendEntry],
    start: bool,
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
        match old.get(&row.id) {
            // Same engine and config (the row unchanged, or only its state:
            // pause, throttle, limits, a tenant's limit): keep the built
            // engine (and its connections), take the state from the row.
            Some(e) if e.engine == row.engine && e.config == row.config => {
                let mut e = (*e).clone();
                e.batch_size = batch_size(row.batch_size, cfg);
                e.enabled = row.enabled;
                e.paused = row.pause_reason;
                e.rate_limited = row.rate_limited;
                e.throttled_until = row.throttled_until;
                e.tenant_limited = row.tenant_limited;
                entries.push(e);
            }
            _ => {
                let entry = build_entry(row, pool, cfg);
                if let (true, Ok(engine)) = (start, &entry.engine_impl) {
                    engine.start();
                }
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

fn build_entry(row: Row, pool: &PgPool, cfg: &WorkerConfig) -> BackendEntry {
    let mut timeout = cfg.send_timeout;
    let mut max_parts = None;
    let engine_impl =
        gateways::build(&row.name, &row.engine, &row.config, pool).and_then(|built| {
            max_parts = built.common.max_parts;
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
        config: row.config,
        batch_size: batch_size(row.batch_size, cfg),
        enabled: row.enabled,
        paused: row.pause_reason,
        rate_limited: row.rate_limited,
        throttled_until: row.throttled_until,
        tenant_limited: row.tenant_limited,
        timeout,
        max_parts,
        engine_impl,
        failures: Default::default(),
    }
}

fn batch_size(row: Option<i32>, cfg: &WorkerConfig) -> u32 {
    row.and_then(|b| u32::try_from(b).ok())
        .unwrap_or(cfg.batch_size)
}

/// Check every backend's configuration without a worker (for `status`).
pub async fn problems(pool: &PgPool, cfg: &WorkerConfig) -> Result<Vec<(String, String)>> {
    let entries = load_and(pool, cfg, &[], false).await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| e.engine_impl.err().map(|p| (e.name, p)))
        .collect())
}
