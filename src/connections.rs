//! A worker process's connections: its pool (opened lazily, each new
//! connection warmed up) and their health (when a connection must be
//! pinged before use).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

use crate::db;
use crate::error::Result;
use crate::inbound;

/// A pooled connection idle this long is pinged before use.
const PING_IF_IDLE: Duration = Duration::from_secs(1);
/// After a connection was found dead, every connection is pinged before
/// use for this long: its pool mates probably died with it (a restart, a
/// cut), and each would otherwise fail a batch of its own.
const PING_ALL_FOR: Duration = Duration::from_secs(10);

/// Whether this process's connections can be trusted without a ping.
#[derive(Debug, Default)]
pub struct Health {
    /// Until when every pooled connection is pinged before use.
    suspect_until: Mutex<Option<Instant>>,
}

impl Health {
    /// A connection of this process was found dead: ping them all for a while.
    pub fn suspect(&self) {
        if let Ok(mut until) = self.suspect_until.lock() {
            *until = Some(Instant::now() + PING_ALL_FOR);
        }
    }

    fn suspicious(&self) -> bool {
        self.suspect_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(true)
    }
}

/// The pool a worker process runs on: at most `max_connections`, opened
/// lazily (a worker started while the database is down waits for it), and
/// each new connection warmed up before its first use: the hot statements
/// (the inbound claim and write) run once with nothing to do in a
/// transaction that is rolled back, so the first batches on a
/// new connection (at start, and whenever the pool replaces one) are not
/// the ones that pay for preparing and planning them. Skipped without
/// prepared statements (behind PgBouncer the next transaction may get
/// another server connection); a warm-up that fails is logged and the
/// connection used as it is.
///
/// A connection is pinged before use only when it sat idle in the pool for
/// a second or more (sqlx pings every time by default): under traffic the
/// ping was one more round trip before every batch, on the latency path
/// too, and a connection in use a moment ago is rarely the one that died.
/// One that died anyway (the server restarted within the second) fails its
/// batch's first statement: that batch's transaction is gone with it, the
/// lane retries (a batch's outcomes are written again at once, on another
/// connection), sqlx drops the dead one when it comes back to the pool,
/// and for the next 10 s every connection is pinged again
/// ([`Health::suspect`]; so does a lost LISTEN connection), so its pool
/// mates are found out before use.
pub fn connect_lazy(url: &str, max_connections: u32, health: Arc<Health>) -> Result<PgPool> {
    Ok(db::pool_options(max_connections)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let health = health.clone();
            Box::pin(async move {
                // Ok(false): closed and another taken, without a warning.
                let trusted = meta.idle_for < PING_IF_IDLE && !health.suspicious();
                Ok(trusted || conn.ping().await.is_ok())
            })
        })
        .after_connect(|conn, _| {
            Box::pin(async move {
                if db::prepared() {
                    if let Err(e) = warm_up(conn).await {
                        tracing::debug!(error = %e, "connection warm-up failed; going on without it");
                    }
                }
                Ok(())
            })
        })
        .connect_lazy_with(db::connect_options(url)?))
}

async fn warm_up(conn: &mut PgConnection) -> sqlx::Result<()> {
    let mut tx = conn.begin_with(db::BEGIN_KEYED).await?;
    inbound::warm_up(&mut tx).await?;
    tx.rollback().await
}
