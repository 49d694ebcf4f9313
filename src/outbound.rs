//! Outbound: claim due transmissions of one backend, send them, record the
//! outcomes.
//!
//! 1. [`claim`] marks up to a batch of due transmissions P under a fresh lease
//!    token and commits (short transaction; the lease protects them after).
//! 2. [`send`] runs the apps' outgoing phase and calls the backend once per
//!    message of the batch, each call under the backend's timeout and all
//!    under a batch deadline of half the lease.
//! 3. [`finish`] records every outcome in one transaction, fenced by the lease
//!    token, retrying on transient database errors.
//!
//! A send that outlives its lease can be repeated by another worker: delivery
//! is at-least-once on that path (see the README).
//!
//! Replies the inbound batch wrote P under its own lease skip the claim:
//! that worker calls [`complete`] (send, then finish) right after its commit.
//! Every engine takes these same steps.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;

use crate::apps::{OutgoingMessage, Pipeline};
use crate::config::WorkerConfig;
use crate::db::{is_transient, Conn};
use crate::error::Result;
use crate::gateways::{Outcome, Recipient, SendRequest};
use crate::registry::BackendEntry;

/// Send calls of one batch in flight at once.
const SEND_PARALLELISM: usize = 32;

/// A claimed transmission.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub transmission_id: i64,
    pub message_id: i64,
    pub attempts: i32,
    pub identity: String,
    pub text: String,
    pub in_response_to: Option<i64>,
    pub reply_to_external_id: Option<String>,
}

/// Claim up to `limit` due transmissions of backend `backend_id`.
pub async fn claim(
    pool: &PgPool,
    backend_id: i32,
    limit: u32,
    token: i64,
    lease: Duration,
) -> Result<Vec<Claimed>> {
    let mut conn = Conn::acquire(pool).await?;
    let rows = claim_on(conn.get(), backend_id, i64::from(limit), token, lease).await?;
    conn.done().await?;
    Ok(rows)
}

const CLAIM_SQL: &str = include_str!("../sql/outbound_claim.sql");

async fn claim_on(
    conn: &mut PgConnection,
    backend_id: i32,
    limit: i64,
    token: i64,
    lease: Duration,
) -> std::result::Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as::<_, Claimed>(CLAIM_SQL)
        .persistent(crate::db::prepared())
        .bind(backend_id)
        .bind(limit)
        .bind(token)
        .bind(lease.as_secs_f64())
        .fetch_all(conn)
        .await
}

/// Claim for a rate-limited backend: take tokens from its bucket (shared by
/// every worker process), claim at most that many, hand back the unused
/// ones, all in one transaction. When the bucket is empty, nothing is
/// claimed and the result says how long until the next token. With
/// `tenant_limited` (the backend serves a tenant with a rate limit), the
/// claimed rows of limited tenants take their tenants' tokens too, and
/// those not covered go back to the queue (sql/hold_over_tenant_limits.sql).
pub async fn claim_limited(
    pool: &PgPool,
    backend_id: i32,
    limit: u32,
    token: i64,
    lease: Duration,
    tenant_limited: bool,
) -> Result<(Vec<Claimed>, Option<Duration>)> {
    let mut tx = pool.begin().await?;
    let (granted, wait): (i32, f64) = sqlx::query_as(include_str!("../sql/take_tokens.sql"))
        .persistent(crate::db::prepared())
        .bind(backend_id)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
    if granted <= 0 {
        tx.rollback().await?;
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_millis(10));
        return Ok((Vec::new(), Some(wait.max(Duration::from_millis(1)))));
    }
    let mut rows = claim_on(&mut tx, backend_id, i64::from(granted), token, lease).await?;
    let mut tenant_wait = None;
    if tenant_limited && !rows.is_empty() {
        let ids: Vec<i64> = rows.iter().map(|r| r.transmission_id).collect();
        let held: Vec<(i64, f64)> =
            sqlx::query_as(include_str!("../sql/hold_over_tenant_limits.sql"))
                .persistent(crate::db::prepared())
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        if !held.is_empty() {
            tenant_wait = held.iter().map(|h| h.1).reduce(f64::min);
            let held: std::collections::HashSet<i64> = held.into_iter().map(|h| h.0).collect();
            rows.retain(|r| !held.contains(&r.transmission_id));
        }
    }
    let unused = granted - i32::try_from(rows.len()).unwrap_or(granted);
    if unused > 0 {
        sqlx::query(include_str!("../sql/return_tokens.sql"))
            .persistent(crate::db::prepared())
            .bind(backend_id)
            .bind(unused)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // all held back: the lane may wait for the first tenant token
    let wait = tenant_wait.filter(|_| rows.is_empty()).map(|w| {
        Duration::try_from_secs_f64(w)
            .unwrap_or(Duration::from_millis(10))
            .max(Duration::from_millis(1))
    });
    Ok((rows, wait))
}

/// Send a claimed batch; returns an outcome per transmission.
pub async fn send(
    entry: &BackendEntry,
    pipeline: &Pipeline,
    token: i64,
    claimed: &[Claimed],
    batch_deadline: Instant,
) -> Vec<(i64, Outcome)> {
    let backend = match &entry.engine_impl {
        Ok(b) => b.clone(),
        Err(problem) => {
            let o = Outcome::retryable(format!(
                "backend {:?} is misconfigured: {problem}",
                entry.name
            ));
            return claimed
                .iter()
                .map(|c| (c.transmission_id, o.clone()))
                .collect();
        }
    };
    let (mut out, requests) = prepare(entry, pipeline, token, claimed).await;
    let timed_out = || {
        Outcome::retryable(format!(
            "send timed out after {}",
            humantime::format_duration(entry.timeout)
        ))
    };
    if backend.sends_batches() {
        // One call for the whole batch, under one deadline.
        let started = Instant::now();
        let deadline = batch_deadline.min(started + entry.timeout);
        let call = AssertUnwindSafe(backend.send_batch(&requests)).catch_unwind();
        let results = match tokio::time::timeout_at(deadline, call).await {
            Err(_) => vec![Err(timed_out()); requests.len()],
            Ok(Err(_panic)) => {
                vec![Err(Outcome::retryable("the backend panicked while sending")); requests.len()]
            }
            Ok(Ok(Err(e))) => vec![Err(e.into()); requests.len()],
            Ok(Ok(Ok(per_request))) => {
                let mut r: Vec<_> = per_request
                    .into_iter()
                    .map(|x| x.map_err(Outcome::from))
                    .collect();
                r.resize(
                    requests.len(),
                    Err(Outcome::retryable(
                        "the backend returned no outcome for this message",
                    )),
                );
                r
            }
        };
        let took = started.elapsed();
        for (req, result) in requests.iter().zip(results) {
            out.extend(outcomes_for(req, result));
        }
        entry.failures.record(&entry.name, &out);
        crate::metrics::sends(&entry.name, &out, took);
        return out;
    }
    // One call per message, several in flight, each under its own deadline.
    let timeout = entry.timeout;
    let calls: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let backend = backend.clone();
            let backend_name = entry.name.as_str();
            async move {
                let started = Instant::now();
                let deadline = batch_deadline.min(started + timeout);
                let call = AssertUnwindSafe(backend.send(&req)).catch_unwind();
                let result = match tokio::time::timeout_at(deadline, call).await {
                    Err(_) => Err(Outcome::retryable(format!(
                        "send timed out after {}",
                        humantime::format_duration(timeout)
                    ))),
                    Ok(Err(_panic)) => {
                        Err(Outcome::retryable("the backend panicked while sending"))
                    }
                    Ok(Ok(r)) => r.map_err(Outcome::from),
                };
                let outcomes = outcomes_for(&req, result);
                crate::metrics::sends(backend_name, &outcomes, started.elapsed());
                outcomes
            }
        })
        .collect();
    let sent: Vec<Vec<(i64, Outcome)>> = stream::iter(calls)
        .buffer_unordered(SEND_PARALLELISM)
        .collect()
        .await;
    out.extend(sent.into_iter().flatten());
    entry.failures.record(&entry.name, &out);
    out
}

/// Run the outgoing phase per message: the cancelled ones get their
/// outcomes now, the others become send requests.
async fn prepare(
    entry: &BackendEntry,
    pipeline: &Pipeline,
    token: i64,
    claimed: &[Claimed],
) -> (Vec<(i64, Outcome)>, Vec<SendRequest>) {
    let mut cancelled = Vec::new();
    let mut requests = Vec::new();
    for rows in group_by_message(claimed) {
        let first = &rows[0];
        let outgoing = OutgoingMessage {
            id: first.message_id,
            backend: entry.name.clone(),
            text: first.text.clone(),
            identities: rows.iter().map(|r| r.identity.clone()).collect(),
            in_response_to: first.in_response_to,
        };
        let too_long = entry.max_parts.and_then(|max| {
            let n = crate::segments::segments(&first.text);
            (n > max).then(|| {
                Outcome::permanent(format!(
                    "the text takes {n} parts ({}); backend {:?} allows at most {max} (config.max_parts); not sent",
                    crate::segments::encoding(&first.text).as_str(),
                    entry.name
                ))
            })
        });
        let verdict = match too_long {
            Some(o) => Some(o),
            None => match pipeline.outgoing(&outgoing).await {
                Ok(None) => None,
                Ok(Some(app)) => Some(Outcome::permanent(format!("cancelled by app {app:?}"))),
                Err(e) => Some(Outcome::retryable(e.to_string())),
            },
        };
        if let Some(o) = verdict {
            cancelled.extend(rows.iter().map(|r| (r.transmission_id, o.clone())));
            continue;
        }
        requests.push(SendRequest {
            backend: entry.name.clone(),
            batch: token,
            message_id: first.message_id,
            text: first.text.clone(),
            recipients: rows
                .iter()
                .map(|r| Recipient {
                    transmission_id: r.transmission_id,
                    identity: r.identity.clone(),
                    attempt: r.attempts,
                })
                .collect(),
            in_response_to: first.in_response_to,
            reply_to_external_id: first.reply_to_external_id.clone(),
        });
    }
    (cancelled, requests)
}

/// One outcome per recipient of `req`: the backend's, or the call's failure
/// for all of them. Missing outcomes count as retryable failures.
fn outcomes_for(
    req: &SendRequest,
    result: std::result::Result<Vec<Outcome>, Outcome>,
) -> Vec<(i64, Outcome)> {
    let ids = req.recipients.iter().map(|r| r.transmission_id);
    match result {
        Err(o) => ids.map(|id| (id, o.clone())).collect(),
        Ok(outcomes) => {
            let n = outcomes.len();
            let total = req.recipients.len();
            let mut out: Vec<(i64, Outcome)> = ids.clone().zip(outcomes).collect();
            for id in ids.skip(n) {
                out.push((
                    id,
                    Outcome::retryable(format!(
                        "backend returned {n} outcomes for {total} identities"
                    )),
                ));
            }
            out
        }
    }
}

fn group_by_message(claimed: &[Claimed]) -> Vec<Vec<Claimed>> {
    let mut groups: Vec<Vec<Claimed>> = Vec::new();
    for c in claimed {
        match groups.last_mut() {
            Some(g) if g[0].message_id == c.message_id => g.push(c.clone()),
            _ => groups.push(vec![c.clone()]),
        }
    }
    groups
}

/// Record a batch's outcomes (fenced by `token`). Returns how many rows were
/// still this batch's to record. Retries transient errors until `give_up`.
/// When the database refuses the batch for what is in it, the batch is split
/// until the transmission at fault is found, and that one is ended E alone.
///
/// `record_as` is the backend's name when its engine's sends are written by
/// this statement ([`BackendEntry::recorded_as`]).
pub async fn finish(
    pool: &PgPool,
    cfg: &WorkerConfig,
    token: i64,
    outcomes: &[(i64, Outcome)],
    record_as: Option<&str>,
    give_up: Instant,
) -> Result<u64> {
    let mut pending = vec![outcomes];
    let mut recorded = 0;
    while let Some(chunk) = pending.pop() {
        match finish_chunk(pool, cfg, token, chunk, record_as, give_up).await {
            Ok(n) => recorded += n,
            Err(e) if matches!(e, sqlx::Error::Database(_)) && !is_transient(&e) => {
                if let [(id, _)] = chunk {
                    tracing::warn!(transmission = id, error = %e, "cannot record this outcome: ending it E");
                    let mut conn = Conn::acquire(pool).await?;
                    let ended: i32 =
                        sqlx::query_scalar(include_str!("../sql/outbound_quarantine.sql"))
                            .persistent(crate::db::prepared())
                            .bind(token)
                            .bind(id)
                            .bind(format!(
                                "the database refused this transmission's outcome: {e}"
                            ))
                            .fetch_one(conn.get())
                            .await?;
                    conn.done().await?;
                    recorded += u64::from(ended == 1);
                } else {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    pending.push(b);
                    pending.push(a);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(recorded)
}

async fn finish_chunk(
    pool: &PgPool,
    cfg: &WorkerConfig,
    token: i64,
    outcomes: &[(i64, Outcome)],
    record_as: Option<&str>,
    give_up: Instant,
) -> std::result::Result<u64, sqlx::Error> {
    let arrays = OutcomeArrays::new(outcomes);
    // The first retry goes at once: the usual transient error here is a
    // pooled connection that died while idle, and the next one is fine.
    let mut pause = Duration::ZERO;
    loop {
        let result = record_outcomes(pool, cfg, token, &arrays, record_as).await;
        match result {
            Ok(n) => return Ok(u64::try_from(n).unwrap_or(0)),
            Err(e) if is_transient(&e) && Instant::now() + pause < give_up => {
                tracing::warn!(error = %e, "could not record a batch's outcomes; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A batch's outcomes as the finish statement's arrays.
struct OutcomeArrays {
    ids: Vec<i64>,
    sent: Vec<bool>,
    gateway_ids: Vec<Option<String>>,
    errors: Vec<Option<String>>,
    permanent: Vec<bool>,
    retry_after: Vec<Option<f64>>,
    /// The parts of texts sent in several: transmission, part number, id.
    part_of: Vec<i64>,
    part_number: Vec<i32>,
    part_id: Vec<String>,
}

impl OutcomeArrays {
    fn new(outcomes: &[(i64, Outcome)]) -> Self {
        let mut ids = Vec::with_capacity(outcomes.len());
        let mut sent = Vec::with_capacity(outcomes.len());
        let mut gateway_ids: Vec<Option<String>> = Vec::with_capacity(outcomes.len());
        let mut errors: Vec<Option<String>> = Vec::with_capacity(outcomes.len());
        let mut permanent = Vec::with_capacity(outcomes.len());
        let mut retry_after: Vec<Option<f64>> = Vec::with_capacity(outcomes.len());
        let (mut part_of, mut part_number, mut part_id) = (Vec::new(), Vec::new(), Vec::new());
        for (id, o) in outcomes {
            retry_after.push(o.requeue_after().map(|d| d.as_secs_f64()));
            ids.push(*id);
            match o {
                Outcome::Sent { gateway_id, parts } => {
                    sent.push(true);
                    gateway_ids.push(gateway_id.clone());
                    for (k, part) in parts.iter().enumerate() {
                        part_of.push(*id);
                        part_number.push(i32::try_from(k + 1).unwrap_or(i32::MAX));
                        part_id.push(part.clone());
                    }
                }
                _ => {
                    sent.push(false);
                    gateway_ids.push(None);
                }
            }
            errors.push(o.error().map(str::to_string));
            permanent.push(matches!(
                o,
                Outcome::Failed {
                    permanent: true,
                    ..
                }
            ));
        }
        OutcomeArrays {
            ids,
            sent,
            gateway_ids,
            errors,
            permanent,
            retry_after,
            part_of,
            part_number,
            part_id,
        }
    }
}

async fn record_outcomes(
    pool: &PgPool,
    cfg: &WorkerConfig,
    token: i64,
    c: &OutcomeArrays,
    record_as: Option<&str>,
) -> std::result::Result<i64, sqlx::Error> {
    let mut conn = Conn::acquire(pool).await?;
    let (n,): (i64,) = sqlx::query_as(include_str!("../sql/outbound_finish.sql"))
        .persistent(crate::db::prepared())
        .bind(token)
        .bind(&c.ids)
        .bind(&c.sent)
        .bind(&c.gateway_ids)
        .bind(&c.errors)
        .bind(&c.permanent)
        .bind(i32::try_from(cfg.max_attempts).unwrap_or(i32::MAX))
        .bind(cfg.retry_backoff.as_secs_f64())
        .bind(cfg.max_backoff.as_secs_f64())
        .bind(&c.retry_after)
        .bind(record_as)
        .bind(&c.part_of)
        .bind(&c.part_number)
        .bind(&c.part_id)
        .fetch_one(conn.get())
        .await?;
    conn.done().await?;
    Ok(n)
}

/// What one outbound batch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ran {
    /// Transmissions claimed (a full batch means there may be more).
    pub claimed: usize,
    /// When nothing could be claimed because of a rate limit or a gateway's
    /// Retry-After: how long until it is worth looking again.
    pub wait: Option<Duration>,
}

/// Claim, send and record one batch of `entry`.
pub async fn run_batch(
    pool: &PgPool,
    cfg: &WorkerConfig,
    pipeline: &Pipeline,
    entry: &BackendEntry,
) -> Result<Ran> {
    if let Some(wait) = entry.throttled_for() {
        return Ok(Ran {
            claimed: 0,
            wait: Some(wait),
        });
    }
    let token: i64 = rand::random();
    let claimed_at = Instant::now();
    let (claimed, wait) = if entry.rate_limited || entry.tenant_limited {
        claim_limited(
            pool,
            entry.id,
            entry.batch_size,
            token,
            cfg.lease,
            entry.tenant_limited,
        )
        .await?
    } else {
        (
            claim(pool, entry.id, entry.batch_size, token, cfg.lease).await?,
            None,
        )
    };
    crate::metrics::claim("outbound", claimed_at.elapsed());
    if !claimed.is_empty() {
        complete(pool, cfg, pipeline, entry, token, &claimed, claimed_at).await?;
    }
    Ok(Ran {
        claimed: claimed.len(),
        wait,
    })
}

/// Act on what the gateway said about the backend itself: wait (every worker
/// stops claiming for it until then) or pause it (credentials refused).
pub async fn slow_down_if_asked(
    pool: &PgPool,
    entry: &BackendEntry,
    outcomes: &[(i64, Outcome)],
) -> Result<()> {
    if let Some(wait) = outcomes.iter().filter_map(|(_, o)| o.throttle()).max() {
        throttle(pool, entry, wait).await?;
    }
    if let Some((_, Outcome::Unauthorized { error })) = outcomes
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Unauthorized { .. }))
    {
        pause(pool, entry, error).await?;
    }
    Ok(())
}

/// The gateway asked us to wait: every worker stops claiming for this
/// backend until then.
async fn throttle(pool: &PgPool, entry: &BackendEntry, wait: Duration) -> Result<()> {
    tracing::warn!(backend = %entry.name, wait = %humantime::format_duration(wait), "the gateway asked us to slow down; pausing claims");
    let mut conn = Conn::acquire(pool).await?;
    sqlx::query(include_str!("../sql/throttle_backend.sql"))
        .persistent(crate::db::prepared())
        .bind(entry.id)
        .bind(wait.as_secs_f64())
        .execute(conn.get())
        .await?;
    conn.done().await?;
    Ok(())
}

/// The gateway refused our credentials: pause the backend (its messages stay
/// queued) until an operator fixes the row and resumes it.
async fn pause(pool: &PgPool, entry: &BackendEntry, error: &str) -> Result<()> {
    tracing::error!(backend = %entry.name, %error, "the gateway refused our credentials; pausing the backend");
    let mut conn = Conn::acquire(pool).await?;
    sqlx::query(include_str!("../sql/pause_backend.sql"))
        .persistent(crate::db::prepared())
        .bind(&entry.name)
        .bind(format!(
            "the gateway refused our credentials ({error}); fix the backend's config, then resume it"
        ))
        .execute(conn.get())
        .await?;
    conn.done().await?;
    Ok(())
}

/// Send transmissions this worker holds under lease `token` (taken at
/// `claimed_at`) and record the outcomes.
pub async fn complete(
    pool: &PgPool,
    cfg: &WorkerConfig,
    pipeline: &Pipeline,
    entry: &BackendEntry,
    token: i64,
    claimed: &[Claimed],
    claimed_at: Instant,
) -> Result<()> {
    let outcomes = send(entry, pipeline, token, claimed, claimed_at + cfg.lease / 2).await;
    let give_up = claimed_at + cfg.lease;
    let recorded = finish(pool, cfg, token, &outcomes, entry.recorded_as(), give_up).await?;
    slow_down_if_asked(pool, entry, &outcomes).await?;
    if recorded < outcomes.len() as u64 {
        tracing::warn!(
            backend = %entry.name,
            claimed = outcomes.len(),
            recorded,
            "lease expired before the outcomes were recorded; another worker owns the rest"
        );
    }
    tracing::debug!(backend = %entry.name, n = claimed.len(), "sent batch");
    Ok(())
}
