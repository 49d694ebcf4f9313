//! Prometheus metrics (`--metrics-addr`): counters and histograms recorded
//! where the work happens, gauges sampled from the database every few
//! seconds (cheap statements on the partial indexes, never a full scan).
//! Without `--metrics-addr` nothing is installed and every recording is a
//! no-op. The exposition is `metrics-exporter-prometheus`'s.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `dbrouter_sends_total` | counter | backend, outcome (sent, retryable, permanent, throttled, unauthorized) |
//! | `dbrouter_send_seconds` | histogram | backend (one gateway call: a message, or a whole batch for batch engines) |
//! | `dbrouter_inbound_total` | counter | outcome (processed, errored) |
//! | `dbrouter_claim_seconds` | histogram | direction (inbound, outbound) |
//! | `dbrouter_receipts_applied_total` | counter | |
//! | `dbrouter_queue_due` | gauge | backend: transmissions due now |
//! | `dbrouter_queue_oldest_due_seconds` | gauge | backend: how long the longest-due has waited |
//! | `dbrouter_backend_paused`, `dbrouter_backend_throttled` | gauge | backend (1 or 0) |
//! | `dbrouter_backend_rate_tokens` | gauge | backend: tokens in its bucket (rate-limited ones) |
//! | `dbrouter_smpp_binds_up` | gauge | backend: binds up, every worker's (`dbrouter.bind_states`) |
//! | `dbrouter_receipts_waiting` | gauge | delivery reports not yet applied |
//! | `dbrouter_inbound_queued` | gauge | messages from phones waiting for the apps |
//! | `dbrouter_pool_connections` | gauge | state (idle, busy) |
//! | `dbrouter_serve_requests_total` | counter | `dbrouter serve`: route (its template, e.g. `/kannel/{backend}/receive`), status |
//! | `dbrouter_serve_commit_rows` | histogram | `dbrouter serve`: rows per group commit |

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use sqlx::PgPool;

use crate::gateways::Outcome;

/// How often the gauges are read from the database.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Serve `/metrics` on `addr` (from a task of the current runtime).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full("dbrouter_serve_commit_rows".into()),
            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// One gateway call's outcomes.
pub fn sends(backend: &str, outcomes: &[(i64, Outcome)], took: Duration) {
    histogram!("dbrouter_send_seconds", "backend" => backend.to_string()).record(took);
    for (_, outcome) in outcomes {
        let kind = match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::Failed {
                permanent: true, ..
            } => "permanent",
            Outcome::Failed { .. } => "retryable",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Unauthorized { .. } => "unauthorized",
        };
        counter!("dbrouter_sends_total", "backend" => backend.to_string(), "outcome" => kind)
            .increment(1);
    }
}

/// An inbound batch's messages, once committed.
pub fn inbound(processed: usize, errored: usize) {
    counter!("dbrouter_inbound_total", "outcome" => "processed").increment(processed as u64);
    counter!("dbrouter_inbound_total", "outcome" => "errored").increment(errored as u64);
}

/// How long a claim took.
pub fn claim(direction: &'static str, took: Duration) {
    histogram!("dbrouter_claim_seconds", "direction" => direction).record(took);
}

/// A request `dbrouter serve` answered.
pub fn served(route: &str, status: u16) {
    counter!("dbrouter_serve_requests_total", "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
}

/// Rows written by one of serve's group commits.
pub fn group_commit(rows: usize) {
    histogram!("dbrouter_serve_commit_rows").record(rows as f64);
}

/// Delivery reports applied by housekeeping.
pub fn receipts_applied(n: i64) {
    counter!("dbrouter_receipts_applied_total").increment(u64::try_from(n).unwrap_or(0));
}

/// Read the gauges from the database every [`SAMPLE_EVERY`] until the
/// process ends; a failed read is logged at debug and tried again.
pub async fn sample(pool: PgPool) {
    loop {
        if let Err(e) = sample_once(&pool).await {
            tracing::debug!(error = %e, "could not sample the metrics' gauges");
        }
        gauge!("dbrouter_pool_connections", "state" => "idle").set(pool.num_idle() as f64);
        gauge!("dbrouter_pool_connections", "state" => "busy")
            .set(pool.size().saturating_sub(pool.num_idle() as u32) as f64);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// A row of sql/metrics_backends.sql.
#[derive(sqlx::FromRow)]
struct BackendGauges {
    name: String,
    due: i64,
    oldest: f64,
    paused: bool,
    throttled: bool,
    tokens: Option<f64>,
    binds_up: i64,
}

async fn sample_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    let rows: Vec<BackendGauges> = sqlx::query_as(include_str!("../sql/metrics_backends.sql"))
        .fetch_all(pool)
        .await?;
    for BackendGauges {
        name: backend,
        due,
        oldest,
        paused,
        throttled,
        tokens,
        binds_up,
    } in rows
    {
        gauge!("dbrouter_queue_due", "backend" => backend.clone()).set(due as f64);
        gauge!("dbrouter_queue_oldest_due_seconds", "backend" => backend.clone()).set(oldest);
        gauge!("dbrouter_backend_paused", "backend" => backend.clone())
            .set(f64::from(u8::from(paused)));
        gauge!("dbrouter_backend_throttled", "backend" => backend.clone())
            .set(f64::from(u8::from(throttled)));
        if let Some(tokens) = tokens {
            gauge!("dbrouter_backend_rate_tokens", "backend" => backend.clone()).set(tokens);
        }
        gauge!("dbrouter_smpp_binds_up", "backend" => backend).set(binds_up as f64);
    }
    let (receipts, inbound): (i64, i64) = sqlx::query_as(include_str!("../sql/metrics_totals.sql"))
        .fetch_one(pool)
        .await?;
    gauge!("dbrouter_receipts_waiting").set(receipts as f64);
    gauge!("dbrouter_inbound_queued").set(inbound as f64);
    Ok(())
}
