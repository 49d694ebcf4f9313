//! The schema's functions, views and triggers: `schema/*.sql`, each file a
//! set of `CREATE OR REPLACE` statements, embedded in the binary. `dbrouter
//! migrate` runs the numbered migrations (table changes), then [`apply`]s
//! every file whose text differs from the one last applied to this database
//! (`dbrouter.schema_files`), in file-name order, in one transaction.
//! `schema.sql` at the top of the repository is what a fresh migrate makes
//! (`pg_dump --schema-only`); `tests/schema.rs` keeps it true.

use sqlx::PgPool;

use crate::error::{Error, Result};

/// Every file of `schema/`, in the order they are applied.
pub const FILES: &[(&str, &str)] = &[
    ("10_rules.sql", include_str!("../schema/10_rules.sql")),
    ("15_rollup.sql", include_str!("../schema/15_rollup.sql")),
    (
        "20_references.sql",
        include_str!("../schema/20_references.sql"),
    ),
    ("30_enqueue.sql", include_str!("../schema/30_enqueue.sql")),
    ("40_traffic.sql", include_str!("../schema/40_traffic.sql")),
    ("50_receipts.sql", include_str!("../schema/50_receipts.sql")),
    (
        "60_retention.sql",
        include_str!("../schema/60_retention.sql"),
    ),
    ("70_backends.sql", include_str!("../schema/70_backends.sql")),
    ("80_views.sql", include_str!("../schema/80_views.sql")),
    ("90_roles.sql", include_str!("../schema/90_roles.sql")),
];

/// Apply the files whose text changed since they were last applied; returns
/// their names. Concurrent migrates take turns (an advisory lock) and the
/// second finds nothing left to do.
pub async fn apply(pool: &PgPool) -> Result<Vec<&'static str>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dbrouter.schema_files'))")
        .execute(&mut *tx)
        .await?;
    let applied: Vec<(String, String)> =
        sqlx::query_as("SELECT name, body FROM dbrouter.schema_files")
            .fetch_all(&mut *tx)
            .await?;
    let mut changed = Vec::new();
    for &(name, body) in FILES {
        if applied.iter().any(|(n, b)| n == name && b == body) {
            continue;
        }
        sqlx::raw_sql(body)
            .execute(&mut *tx)
            .await
            .map_err(|error| Error::SchemaFile { file: name, error })?;
        sqlx::query(
            "INSERT INTO dbrouter.schema_files (name, body) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body, applied_at = now()",
        )
        .bind(name)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        changed.push(name);
    }
    tx.commit().await?;
    Ok(changed)
}

/// Refuse to work on a database whose schema files are not this binary's:
/// the statements a worker runs and the schema's functions and triggers
/// change together (a worker of one version on the schema of another could,
/// say, roll a message's counters up twice or never).
pub async fn check(pool: &PgPool) -> Result<()> {
    let mut conn = crate::db::Conn::acquire(pool).await?;
    let applied: Vec<(String, String)> =
        sqlx::query_as("SELECT name, body FROM dbrouter.schema_files")
            .persistent(crate::db::prepared())
            .fetch_all(conn.get())
            .await?;
    conn.done().await?;
    for &(name, body) in FILES {
        if !applied.iter().any(|(n, b)| n == name && b == body) {
            return Err(Error::SchemaMismatch { file: name });
        }
    }
    Ok(())
}
