//! Inbound: claim queued inbound messages, run the apps, write the replies and
//! mark the messages R or E, all in the claiming transaction.
//!
//! The claim's row locks are the crash protection: if the worker dies, the
//! transaction aborts and the messages are queued again. Apps run under a
//! deadline (`--app-timeout`) so they cannot hold the transaction open for
//! long. Replies are written with one array INSERT into messages and
//! transmissions, in the same statement as the marks (see `sql/inbound_write.sql`
//! for why not COPY or the outbox). A message whose replies the database
//! refuses (a poison message) is isolated by splitting the batch under
//! savepoints and ends E alone.
//!
//! A reply is written one of two ways ([`BackendEntry::sends_replies_at_once`]):
//! P under this worker's lease, handed back to be sent by this worker right
//! after the commit (`outbound::complete`), or Q, to be claimed like any
//! outbound work.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use futures::future::join_all;
use futures::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use tokio::time::Instant;

use crate::apps::{IncomingMessage, OptChange, Pipeline, Verdict};
use crate::config::WorkerConfig;
use crate::db::is_transient;
use crate::error::Result;
use crate::outbound::Claimed;
use crate::registry::BackendEntry;

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: i64,
    text: String,
    external_id: Option<String>,
    fields: serde_json::Value,
    identity: Option<String>,
    backend: Option<String>,
    connection_id: Option<i64>,
    backend_id: Option<i32>,
}

/// One message's result: its replies, or why it failed.
struct Processed {
    id: i64,
    /// The sender: replies go back to this connection.
    connection_id: i64,
    backend_id: i32,
    identity: String,
    external_id: Option<String>,
    result: std::result::Result<Vec<String>, String>,
    /// An opt-out change the apps asked for (only applied on success).
    opt_change: Option<OptChange>,
}

/// Replies this worker sends itself right after the commit: inserted P under
/// its lease (`token`), so no other worker sends them unless that lease
/// expires (the worker died), and no claim is needed for them.
pub struct HandOff {
    pub token: i64,
    pub claimed_at: Instant,
    /// Per backend id, the reply transmissions to send.
    pub replies: Vec<(i32, Vec<Claimed>)>,
}

/// What one inbound batch did.
pub struct Batch {
    pub claimed: usize,
    pub hand_off: Option<HandOff>,
}

/// Process one batch on `conn`. Replies to backends in `send_now` are
/// handed back to be sent by the caller after the commit; replies to other
/// backends are queued. Gives the connection back when the batch's
/// transaction ended cleanly (else it was closed).
pub async fn run_batch(
    conn: PoolConnection<Postgres>,
    cfg: &WorkerConfig,
    pipeline: &Pipeline,
    send_now: &HashMap<i32, &BackendEntry>,
) -> Result<Batch> {
    let claim_started = Instant::now();
    let (mut tx, rows) = begin_and_claim(conn, i64::from(cfg.batch_size)).await?;
    crate::metrics::claim("inbound", claim_started.elapsed());
    if rows.is_empty() {
        tx.end("ROLLBACK").await?;
        return Ok(Batch {
            claimed: 0,
            hand_off: None,
        });
    }
    let n = rows.len();
    let deadline = Instant::now() + cfg.app_timeout;
    let processed = join_all(
        rows.into_iter()
            .map(|row| run_apps(pipeline, row, deadline, cfg)),
    )
    .await;
    let claimed_at = Instant::now();
    let lease = Lease {
        token: rand::random(),
        seconds: cfg.lease.as_secs_f64(),
        send_now,
    };
    let replies = match write(tx.conn(), &processed, &lease).await {
        Ok(w) => w,
        Err(e) => {
            tx.abandon().await;
            return Err(e);
        }
    };
    tx.end("COMMIT").await?;
    tracing::debug!(n, "processed inbound batch");
    let errored = processed.iter().filter(|p| p.result.is_err()).count();
    crate::metrics::inbound(n - errored, errored);
    let mut by_backend: HashMap<i32, Vec<Claimed>> = HashMap::new();
    for (backend_id, c) in replies {
        by_backend.entry(backend_id).or_default().push(c);
    }
    let hand_off = (!by_backend.is_empty()).then(|| HandOff {
        token: lease.token,
        claimed_at,
        replies: by_backend.into_iter().collect(),
    });
    Ok(Batch {
        claimed: n,
        hand_off,
    })
}

/// Run the claim and the write once with nothing to claim or write, inside
/// `tx` (which the caller rolls back), so that PostgreSQL holds their plans
/// (cached statements of this connection) before the first real batch.
/// Cold, the first batch on each connection took ~5 ms more (planning the
/// write, compiling the triggers it fired then).
pub(crate) async fn warm_up(tx: &mut PgConnection) -> std::result::Result<(), sqlx::Error> {
    let _: Vec<Row> = sqlx::query_as(CLAIM_SQL)
        .persistent(crate::db::prepared())
        .bind(0_i64)
        .fetch_all(&mut *tx)
        .await?;
    write_statement(tx, &Replies::default(), &Marks::default()).await?;
    Ok(())
}

const CLAIM_SQL: &str = include_str!("../sql/inbound_claim.sql");
const WRITE_SQL: &str = include_str!("../sql/inbound_write.sql");

/// An inbound batch's transaction on a pooled connection. Not sqlx's
/// `Transaction`: dropped, that only queues its ROLLBACK, and the claimed
/// messages stay locked until the pool gets round to it. Dropped before it
/// ends (an error whose rollback failed too), its
/// connection is closed instead of going back to the pool mid-transaction:
/// the server then aborts the transaction, which releases the claimed
/// messages at once.
struct BatchTx {
    conn: PoolConnection<Postgres>,
    open: bool,
}

impl BatchTx {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// COMMIT or ROLLBACK.
    async fn end(&mut self, sql: &'static str) -> std::result::Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(self.conn()).await?;
        self.open = false;
        Ok(())
    }

    /// Roll back after an error, if the connection still answers (else
    /// it is closed on drop).
    async fn abandon(mut self) {
        if let Err(e) = self.end("ROLLBACK").await {
            tracing::debug!(error = %e, "rollback failed; closing the connection");
        }
    }
}

impl Drop for BatchTx {
    fn drop(&mut self) {
        // Not back to the pool mid-transaction.
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// Begin the batch's transaction, claim up to `batch` messages and take the
/// savepoint of the first chunk's write (see [`write`]). A failure on the
/// way rolls the transaction back (or closes the connection if that fails
/// too), as a failed write does.
async fn begin_and_claim(
    conn: PoolConnection<Postgres>,
    batch: i64,
) -> Result<(BatchTx, Vec<Row>)> {
    let mut tx = BatchTx { conn, open: true };
    match claim(tx.conn(), batch).await {
        Ok(claim) => Ok((tx, claim)),
        Err(e) => {
            tx.abandon().await;
            Err(e)
        }
    }
}

/// The steps of [`begin_and_claim`]: BEGIN (with the settings of
/// [`crate::db::BEGIN_KEYED`]), the claim as a bound, cached statement, and
/// the first chunk's savepoint.
async fn claim(conn: &mut PgConnection, batch: i64) -> Result<Vec<Row>> {
    sqlx::raw_sql(crate::db::BEGIN_KEYED)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query_as(CLAIM_SQL)
        .persistent(crate::db::prepared())
        .bind(batch)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::raw_sql("SAVEPOINT chunk").execute(&mut *conn).await?;
    Ok(rows)
}

/// The lease replies are inserted under when their backend can send now.
struct Lease<'a> {
    token: i64,
    seconds: f64,
    send_now: &'a HashMap<i32, &'a BackendEntry>,
}

async fn run_apps(
    pipeline: &Pipeline,
    row: Row,
    deadline: Instant,
    cfg: &WorkerConfig,
) -> Processed {
    let (Some(identity), Some(backend), Some(connection_id), Some(backend_id)) =
        (row.identity, row.backend, row.connection_id, row.backend_id)
    else {
        return Processed {
            id: row.id,
            connection_id: 0,
            backend_id: 0,
            identity: String::new(),
            external_id: None,
            opt_change: None,
            result: Err("this inbound message has no transmission (sender); enqueue inbound messages through dbrouter.inbox".into()),
        };
    };
    let mut msg = IncomingMessage {
        id: row.id,
        backend,
        identity: identity.clone(),
        text: row.text,
        external_id: row.external_id.clone(),
        fields: row.fields,
        handled: false,
        responses: Vec::new(),
        opt_change: None,
    };
    // A panicking app fails its message, not the worker.
    let apps = AssertUnwindSafe(pipeline.incoming(&mut msg)).catch_unwind();
    let result = match tokio::time::timeout_at(deadline, apps).await {
        Err(_) => Err(format!(
            "the apps did not finish within {} (--app-timeout)",
            humantime::format_duration(cfg.app_timeout)
        )),
        Ok(Err(panic)) => Err(format!("an app panicked: {}", panic_text(&panic))),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Ok(Ok(Verdict::Filtered))) => Ok(Vec::new()),
        Ok(Ok(Ok(Verdict::Replies(r)))) => Ok(r),
    };
    Processed {
        id: row.id,
        connection_id,
        backend_id,
        identity,
        external_id: row.external_id,
        opt_change: msg.opt_change.take(),
        result,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Write replies and marks, isolating messages the database refuses.
///
/// Each chunk is written under a savepoint, so a refusal undoes only that
/// chunk and keeps the claim's locks. The savepoint is not released after a
/// chunk that went in (COMMIT releases it): that would be one more round
/// trip on the latency path. A chunk refused is split in halves until the
/// refused message is alone; it is then marked E with the error.
///
/// Returns the replies written P under the lease, per backend id.
async fn write(
    tx: &mut PgConnection,
    items: &[Processed],
    lease: &Lease<'_>,
) -> Result<Vec<(i32, Claimed)>> {
    let mut handed = Vec::new();
    let mut pending: Vec<&[Processed]> = vec![items];
    // The first chunk's savepoint came with the claim (begin_and_claim).
    let mut first = true;
    while let Some(chunk) = pending.pop() {
        if !std::mem::take(&mut first) {
            sqlx::raw_sql("SAVEPOINT chunk").execute(&mut *tx).await?;
        }
        match write_chunk(tx, chunk, lease).await {
            Ok(h) => handed.extend(h),
            Err(e) if matches!(e, sqlx::Error::Database(_)) && !is_transient(&e) => {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT chunk")
                    .execute(&mut *tx)
                    .await?;
                if let [one] = chunk {
                    tracing::warn!(message = one.id, error = %e, "poison message: marking it E");
                    let error = format!("the database refused this message's replies: {e}");
                    let marks = Marks {
                        ids: vec![one.id],
                        errors: vec![Some(error)],
                        actions: vec![None],
                        keywords: vec![None],
                    };
                    write_statement(tx, &Replies::default(), &marks).await?;
                } else {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    pending.push(b);
                    pending.push(a);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(handed)
}

/// Replies (with their marks) of one chunk; returns those written P under
/// the lease.
async fn write_chunk(
    conn: &mut PgConnection,
    chunk: &[Processed],
    lease: &Lease<'_>,
) -> std::result::Result<Vec<(i32, Claimed)>, sqlx::Error> {
    let mut replies = Replies {
        lease_seconds: lease.seconds,
        ..Replies::default()
    };
    let mut sources = Vec::new();
    for p in chunk {
        if let Ok(texts) = &p.result {
            let now = lease.send_now.contains_key(&p.backend_id);
            for text in texts {
                replies.connections.push(p.connection_id);
                replies.backends.push(p.backend_id);
                replies.texts.push(text.as_str());
                replies.in_response_to.push(p.id);
                replies.tokens.push(now.then_some(lease.token));
                sources.push((p, text));
            }
        }
    }
    let (actions, keywords) = chunk
        .iter()
        .map(|p| match &p.opt_change {
            Some(OptChange::Stop { keyword }) => (Some("stop"), Some(keyword.as_str())),
            Some(OptChange::Start { keyword }) => (Some("start"), Some(keyword.as_str())),
            None => (None, None),
        })
        .unzip();
    let marks = Marks {
        ids: chunk.iter().map(|p| p.id).collect(),
        errors: chunk
            .iter()
            .map(|p| p.result.as_ref().err().cloned())
            .collect(),
        actions,
        keywords,
    };
    let rows = write_statement(&mut *conn, &replies, &marks).await?;
    let mut handed = Vec::new();
    for (transmission_id, message_id, ord) in rows {
        let Some(i) = usize::try_from(ord - 1).ok() else {
            continue;
        };
        // Only replies inserted P under this lease are ours to send; queued
        // ones (backend not sending now) wait for a claim.
        let (Some((p, text)), Some(Some(_))) = (sources.get(i), replies.tokens.get(i)) else {
            continue;
        };
        handed.push((
            p.backend_id,
            Claimed {
                transmission_id,
                message_id,
                attempts: 1,
                identity: p.identity.clone(),
                text: (*text).clone(),
                in_response_to: Some(p.id),
                reply_to_external_id: p.external_id.clone(),
            },
        ));
    }

    Ok(handed)
}

/// The replies of a chunk, one array per column (`sql/inbound_write.sql`),
/// with the length in seconds of the lease they are written under.
#[derive(Default)]
struct Replies<'a> {
    lease_seconds: f64,
    connections: Vec<i64>,
    backends: Vec<i32>,
    texts: Vec<&'a str>,
    in_response_to: Vec<i64>,
    tokens: Vec<Option<i64>>,
}

/// The marks of a chunk: per message, its error (None: R) and opt-out change.
#[derive(Default)]
struct Marks<'a> {
    ids: Vec<i64>,
    errors: Vec<Option<String>>,
    actions: Vec<Option<&'static str>>,
    keywords: Vec<Option<&'a str>>,
}

/// Replies and marks in one statement; each reply's transmission id,
/// message id and position.
async fn write_statement(
    conn: &mut PgConnection,
    replies: &Replies<'_>,
    marks: &Marks<'_>,
) -> std::result::Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    sqlx::query_as(WRITE_SQL)
        .persistent(crate::db::prepared())
        .bind(&replies.connections)
        .bind(&replies.backends)
        .bind(&replies.texts)
        .bind(&replies.in_response_to)
        .bind(&replies.tokens)
        .bind(replies.lease_seconds)
        .bind(&marks.ids)
        .bind(&marks.errors)
        .bind(&marks.actions)
        .bind(&marks.keywords)
        .fetch_all(conn)
        .await
}
