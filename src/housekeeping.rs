//! What each worker does about once a second, off the lanes' path (so a
//! message never waits behind it): end transmissions whose deadline passed
//! or whose message was cancelled (E "expired"/"cancelled"; the claim never
//! takes them), apply the delivery reports `dbrouter serve` recorded, and
//! deliver long messages from phones whose parts waited too long.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::db::Conn;
use crate::error::Result;

/// How often each worker runs it.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Rows handled per statement.
const LIMIT: i32 = 1000;

/// When this worker last ran it.
#[derive(Default)]
pub struct Housekeeping {
    ran_at: Mutex<Option<Instant>>,
}

impl Housekeeping {
    /// Run it, unless this worker did less than [`INTERVAL`] ago.
    pub async fn run_if_due(&self, pool: &PgPool, reassembly_timeout: Duration) -> Result<()> {
        {
            let mut at = self.ran_at.lock().await;
            if at.is_some_and(|t| t.elapsed() < INTERVAL) {
                return Ok(());
            }
            *at = Some(Instant::now());
        }
        let expired = in_batches(pool, include_str!("../sql/expire_due.sql")).await?;
        if expired > 0 {
            tracing::info!(n = expired, "ended expired or cancelled transmissions");
        }
        let applied = in_batches(pool, include_str!("../sql/apply_receipts.sql")).await?;
        if applied > 0 {
            tracing::debug!(n = applied, "applied delivery reports");
            crate::metrics::receipts_applied(applied);
        }
        let mut conn = Conn::acquire(pool).await?;
        let (flushed,): (i32,) = sqlx::query_as(include_str!("../sql/flush_parts.sql"))
            .persistent(crate::db::prepared())
            .bind(reassembly_timeout.as_secs_f64())
            .fetch_one(conn.get())
            .await?;
        conn.done().await?;
        if flushed > 0 {
            tracing::warn!(
                n = flushed,
                "delivered long messages whose parts did not all arrive"
            );
        }
        Ok(())
    }
}

/// Run `sql` (taking a batch limit, returning how many it handled) until a
/// batch comes back short: a burst (an outage's backlog) is cleared in a
/// few statements; anything past ten waits for the next round. Returns the
/// total.
async fn in_batches(pool: &PgPool, sql: &'static str) -> Result<i64> {
    let mut total = 0;
    for _ in 0..10 {
        let mut conn = Conn::acquire(pool).await?;
        let (n,): (i32,) = sqlx::query_as(sql)
            .persistent(crate::db::prepared())
            .bind(LIMIT)
            .fetch_one(conn.get())
            .await?;
        conn.done().await?;
        total += i64::from(n);
        if n < LIMIT {
            break;
        }
    }
    Ok(total)
}
