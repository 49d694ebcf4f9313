//! Large broadcasts, fanned out by the workers: `broadcast()` stores more
//! than 1,000 identities in parts (`dbrouter.fanouts`), and each worker pass
//! expands a part into its connections and transmissions
//! (`sql/fan_out.sql`; migrations/0007_fanout.sql says why).

use sqlx::PgPool;

use crate::db::Conn;
use crate::error::Result;

/// Parts expanded per call (1,000 identities each).
const PARTS: i32 = 1;

/// Expand up to one part; the transmissions written.
pub async fn expand(pool: &PgPool) -> Result<usize> {
    let mut conn = Conn::acquire(pool).await?;
    let (n,): (i32,) = sqlx::query_as(include_str!("../sql/fan_out.sql"))
        .persistent(crate::db::prepared())
        .bind(PARTS)
        .fetch_one(conn.get())
        .await?;
    conn.done().await?;
    Ok(usize::try_from(n).unwrap_or(0))
}
