//! Connecting and migrating.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::error::Result;

/// The schema migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The one process-wide setting left (issue 17 removed the others): set
/// once at startup from `--no-prepared-statements`, read by every worker
/// statement. Threading it through each call instead (the pool cannot carry
/// it: sqlx's statement cache set to 0 still prepares named statements, and
/// leaks them) would add a parameter to some 30 functions for a flag that
/// never changes while the process runs.
static PREPARED: AtomicBool = AtomicBool::new(true);

/// Whether worker queries use named (cached) prepared statements. PgBouncer
/// before 1.21 in transaction mode hands each transaction to any server
/// connection, where a named statement may be missing or already taken; with
/// this off, every statement is parsed unnamed, which works through it.
pub fn set_prepared_statements(on: bool) {
    PREPARED.store(on, Ordering::Relaxed);
}

/// See [`set_prepared_statements`]; pass to `Query::persistent`.
pub fn prepared() -> bool {
    PREPARED.load(Ordering::Relaxed)
}

/// How the inbound batch's transaction begins (one round trip): its claim,
/// replies and mark never read a whole
/// table: every row they touch is found by key (`= ANY (ARRAY(...))`, a
/// scalar subquery, or a `LIMIT` subquery that PostgreSQL cannot flatten
/// into a hash or merge join). Without sequential scans, a plan cannot go
/// back to reading tables the statistics call tiny (right after a
/// broadcast's ANALYZE no inbound message is queued) while a backlog grows
/// under a plan PostgreSQL cached for the statement; JIT stays off because
/// the seq-scan penalty would otherwise push cheap plans over its threshold.
/// Since no plan of theirs then depends on the parameters' values, they are
/// planned once per connection (generic plans) instead of for every batch:
/// PostgreSQL re-planned the replies and the mark on every call (0.5-0.7 ms
/// each on the latency path). (The outbound claim keeps custom plans: its
/// generic plan cannot see `LIMIT $2`.)
pub const BEGIN_KEYED: &str = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL jit = off; \
                               SET LOCAL plan_cache_mode = force_generic_plan";

/// A pooled connection for one worker statement. With prepared statements off
/// it holds a transaction: sqlx parses a statement and executes it in two
/// round trips, and PgBouncer in transaction mode may hand the second to
/// another server connection unless a transaction keeps it.
pub enum Conn {
    Plain(PoolConnection<Postgres>),
    InTransaction(Transaction<'static, Postgres>),
}

impl Conn {
    pub async fn acquire(pool: &PgPool) -> std::result::Result<Conn, sqlx::Error> {
        Ok(if prepared() {
            Conn::Plain(pool.acquire().await?)
        } else {
            Conn::InTransaction(pool.begin().await?)
        })
    }

    pub fn get(&mut self) -> &mut PgConnection {
        match self {
            Conn::Plain(c) => c,
            Conn::InTransaction(t) => t,
        }
    }

    /// Commit when in a transaction.
    pub async fn done(self) -> std::result::Result<(), sqlx::Error> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::InTransaction(t) => t.commit().await,
        }
    }
}

/// Open a pool to `url` with at most `max_connections` connections.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("dbrouter");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// `url` with its database name replaced by `db` (for tools that create
/// databases: the tests, the bench).
pub fn with_database(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let scheme_end = main.find("://").map(|i| i + 3).unwrap_or(0);
    let end = main[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(main.len());
    match query {
        Some(q) => format!("{}/{db}?{q}", &main[..end]),
        None => format!("{}/{db}", &main[..end]),
    }
}

/// Apply every migration not yet applied, then the schema files that changed
/// (`schema.rs`).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrate_with_roles(pool, DEFAULT_ROLE_PREFIX).await
}

/// The roles' names start with this unless `dbrouter migrate --role-prefix`.
pub const DEFAULT_ROLE_PREFIX: &str = "dbrouter_";

/// [`migrate`], the roles named `prefix` + enqueue, worker, admin,
/// readonly (created when missing, granted exactly their lists:
/// `dbrouter.grant_roles`, schema/90_roles.sql).
pub async fn migrate_with_roles(pool: &PgPool, prefix: &str) -> Result<()> {
    MIGRATOR.run(pool).await?;
    crate::schema::apply(pool).await?;
    sqlx::query("SELECT dbrouter.grant_roles($1)")
        .bind(prefix)
        .execute(pool)
        .await?;
    Ok(())
}

/// Open a pool without connecting yet: a worker started while the database
/// is down (or restarting) waits for it instead of exiting.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url)?))
}

/// The pool of `dbrouter serve`: a request waits for a connection at most
/// 3 s and a statement runs at most 4 s (or waits 4 s for a lock), so a
/// database that is down or a locked table gets a quick 503 (a request is
/// answered within seconds; see serve's QUEUE_WAIT) instead of a gateway
/// kept waiting.
pub fn connect_lazy_receiver(url: &str, max_connections: u32) -> Result<PgPool> {
    let options =
        connect_options(url)?.options([("statement_timeout", "4s"), ("lock_timeout", "4s")]);
    Ok(pool_options(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

/// How dbrouter connects to `url` (its application name set).
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.application_name("dbrouter"))
}

/// A pool of at most `max_connections`, waiting up to 10 s for one.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// Whether an error is worth retrying the same statement for: the connection
/// went away or cannot be made yet, the pool timed out, or Postgres resolved
/// a deadlock or serialization conflict by cancelling us.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection exceptions (08, also what PgBouncer reports when the
            // server is away), admin/crash shutdown and "starting up" (57P0x),
            // too many connections, serialization failure, deadlock
            code.starts_with("08")
                || code.starts_with("57P0")
                || matches!(code.as_ref(), "53300" | "40001" | "40P01")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{with_database, MIGRATOR};

    /// Migrations that have landed are never edited (a database migrated
    /// with them would refuse the next `dbrouter migrate`); changes go in a
    /// new migration. Add a line here when a migration lands.
    #[test]
    fn landed_migrations_are_unchanged() {
        let landed = [
            (1, "750f0d6ac0a065ab61dd55f333fd7f09e7162ee50bbb96ae02bc1285feba9ca23d65d4b271fcd21b3671a59ed68bf4ce"),
            (2, "8376be7f4772b474ad8df6769ecd063f9d48adc5c2a971b862d077df3c27329736d80f3c43aef6c740c4abc8ab3e6491"),
            (3, "87c242d48da33f660c510b759bdc941b4116ada3c04ba6c316e76da5182d814c24905112bbdcdb5e189a499c5975acd3"),
            (4, "b4d76308ef2a26a7c681bd2d721a342207427d722a272f68c7bfed11e702be8b79acc69117ae767ac745175df9ee53d2"),
            (5, "0bad1ead2d2ea65c5f6f19ed4b8999154e806eafb428dcb9908e899eba1f352115749d5b98e80d4b409a080f61da8b35"),
            (6, "c29891749aebb1c762d8cf77db2a79bfcfdf4a1d6fda2896c878db1deab697b61176bbc47dc5b289aaac4c82883c0111"),
            (7, "74c8fcf0c03e152910a3dbd3fe3668ddc7475f17f54ebb31fa8c8b08ff47ece51f20ddd3dfe59267ee750eb1789fc2d9"),
            (8, "aa2e8a5e55ed7ab2a13f7fde50fdc74f61151077ece81bf64635388f4ff545ef5a38a3e9fd0013f972f3c49a385a6c1a"),
            (9, "55ece307d5c845a5d097c90c37524dcd8b2cb7cbfb49536ddf4791191cd0feff52e5f8a938fd0d3db82885e76e3b4a62"),
            (10, "6598c6b647fa3f675638a5c689aa07ed0f48ac22d01b9600f9b11b2ab5ccb99e802c32c3a822c31e688808629af8e21c"),
            (11, "2c7ed874455f322cb83a2ee2e547274fe11aad81ba886d82f32edd072641d3ce919d5f40ffa69f5504cee5189b0cbf45"),
            (12, "3a601714810e367957c84bcfc199f31ed2ef918d4a46a134e43b95006ab19a26a2530ebf2403e27e107975fc969a4b38"),
            (13, "0cfa2ea5726894a1370b5eac8ac2af577fafb65b47b8b38fa95741daf96fdeabe0368a52d0d04dfc188651d5e8666ac0"),
            (14, "5b836ba3984eda8ad9f54aec6572cf066c6c40e555718a6c47dce9760e181555faeb63ba022d4535f20578bd4f75f478"),
            (15, "2b2367ac58d01ea844e8120eda6af0563fe23b8e1c24f4f6a0d7ea008eb9a77f9978a93a8d262d45cadf23d1748e2fa4"),
            (16, "471bdbbe5628ea660116a6a7436c377d75145eeac4c9d7de95b9bb921bc432d76041a775cc6cd4cde049b2e50ccd8873"),
            (17, "37bd2eb99b9fbf8688e77f9697a32c34391d0ef65bd572ecffc8c6c91a2c8cee6ef3e74b3c97bf709b8db95b164b7594"),
            (18, "393f971f4951eb3bf72856954080baad2bebfaf882faf3ea2bd5c735be8e596639224340adef77cb1f3e322888d56fd3"),
        ];
        for (version, checksum) in landed {
            let m = MIGRATOR
                .iter()
                .find(|m| m.version == version)
                .unwrap_or_else(|| panic!("migration {version} is missing"));
            let hex: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex, checksum,
                "migration {version} was edited after it landed"
            );
        }
    }

    #[test]
    fn replaces_the_database_name_and_keeps_the_rest() {
        assert_eq!(
            with_database("postgres://u@h:5432/a?sslmode=disable", "b"),
            "postgres://u@h:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "b"),
            "postgres://u@h:5432/b"
        );
    }
}
