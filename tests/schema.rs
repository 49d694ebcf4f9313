//! The schema's current state: `schema.sql` is what `dbrouter migrate` makes
//! of an empty database, and an upgrade from the last schema without
//! `schema/` files (migration 0008) ends at exactly the same schema.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestDb;
use serde_json::json;

/// `pg_dump --schema-only` of the `dbrouter` schema, without what differs
/// from one dump to the next (pg_dump's version and its per-dump
/// `\restrict` key) or from one server to the next (owners, grants).
async fn dump(db: &TestDb) -> String {
    let (major,): (i32,) =
        sqlx::query_as("SELECT current_setting('server_version_num')::int / 10000")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // bin/test names the throwaway cluster's binaries; else the server's.
    let pg_dump = std::env::var("DBROUTER_TEST_PGBIN")
        .map(|d| Path::new(&d).join("pg_dump"))
        .ok()
        .filter(|p| p.is_file())
        .or_else(|| {
            Some(Path::new(&format!("/usr/lib/postgresql/{major}/bin/pg_dump")).to_path_buf())
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| "pg_dump".into());
    let out = Command::new(&pg_dump)
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema=dbrouter",
            "--dbname",
        ])
        .arg(&db.url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_dump.display()));
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.starts_with("-- Dumped from")
                && !l.starts_with("-- Dumped by")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn committed() -> (std::path::PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.sql");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    (path, text)
}

/// A fresh migrate makes exactly `schema.sql`. After a schema change, write
/// the new one with `DBROUTER_WRITE_SCHEMA=1 bin/test --test schema` (or
/// `cargo test --test schema` with DATABASE_URL set) and commit it.
#[tokio::test]
async fn schema_sql_is_what_a_fresh_migrate_makes() {
    let db = TestDb::new().await;
    let now = dump(&db).await;
    let (path, text) = committed();
    if std::env::var_os("DBROUTER_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &now).unwrap();
    } else {
        assert!(
            now == text,
            "schema.sql is not what a fresh migrate makes: run \
             DBROUTER_WRITE_SCHEMA=1 cargo test --test schema, then review and commit schema.sql"
        );
    }
    db.drop().await;
}

/// A database migrated as of migration 0008 (before `schema/` existed),
/// holding messages, upgrades to the same schema as a fresh one, keeps its
/// rows, and works.
#[tokio::test]
async fn an_upgrade_from_0008_ends_at_the_same_schema() {
    let db = TestDb::empty().await;
    dbrouter::db::MIGRATOR.run_to(8, &db.pool).await.unwrap();
    db.backend("gw", "database", json!({}), None).await;
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+1', 'echo before')",
    )
    .await;
    dbrouter::db::migrate(&db.pool).await.unwrap();
    let (_, text) = committed();
    let upgraded = dump(&db).await;
    if upgraded != text {
        let first = upgraded
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let around = |s: &str| {
            s.lines()
                .skip(first.saturating_sub(3))
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the upgraded schema differs from schema.sql at line {}:\n{}\n--- schema.sql:\n{}",
            first + 1,
            around(&upgraded),
            around(&text)
        );
    }
    db.exec(
        "INSERT INTO dbrouter.inbox (backend, identity, text) VALUES ('gw', '+2', 'echo after')",
    )
    .await;
    db.worker(common::test_config())
        .await
        .drain()
        .await
        .unwrap();
    assert_eq!(db.message_states().await, "IR2,OS2");
    db.assert_invariants().await;
    db.drop().await;
}

/// A file is applied again when its text changes (here: the record of it
/// no longer matches), and only then.
#[tokio::test]
async fn a_schema_file_is_applied_when_its_text_changes() {
    let db = TestDb::new().await;
    assert!(
        dbrouter::schema::apply(&db.pool).await.unwrap().is_empty(),
        "nothing changed since the migrate"
    );
    // A function changed by hand, and the record of its file made stale.
    db.exec(
        "CREATE OR REPLACE FUNCTION dbrouter.rollup(n_total integer, n_error integer, n_done integer, n_delivered integer)
         RETURNS char(1) LANGUAGE sql IMMUTABLE AS $$ SELECT 'X'::char(1) $$;
         UPDATE dbrouter.schema_files SET body = 'stale' WHERE name = '15_rollup.sql'",
    )
    .await;
    assert_eq!(
        dbrouter::schema::apply(&db.pool).await.unwrap(),
        vec!["15_rollup.sql"]
    );
    assert_eq!(
        db.scalar_str("SELECT dbrouter.rollup(1, 0, 1, 0)::text")
            .await,
        "S"
    );
    db.drop().await;
}

/// A worker refuses a database whose schema files are not its own (another
/// version migrated it), saying what to run, instead of working with
/// functions and triggers its statements do not match.
#[tokio::test]
async fn a_worker_refuses_a_schema_of_another_version() {
    let db = TestDb::new().await;
    db.exec("UPDATE dbrouter.schema_files SET body = 'older' WHERE name = '15_rollup.sql'")
        .await;
    let refused = dbrouter::worker::Worker::new(
        db.pool.clone(),
        Default::default(),
        common::test_config(),
        dbrouter::apps::Pipeline::new(vec![]),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        refused.contains("schema/15_rollup.sql") && refused.contains("dbrouter migrate"),
        "{refused}"
    );
    dbrouter::db::migrate(&db.pool).await.unwrap();
    assert!(dbrouter::schema::check(&db.pool).await.is_ok());
    db.drop().await;
}
