//! The library's error type.

/// Errors the library returns; the binary adds context with `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("could not migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("could not migrate the database: schema/{file} failed: {error}")]
    SchemaFile {
        file: &'static str,
        error: sqlx::Error,
    },
    #[error(
        "the database's schema/{file} is not this dbrouter's (another version migrated it, \
         or none did): stop the workers of any other version, then run `dbrouter migrate` \
         with this one"
    )]
    SchemaMismatch { file: &'static str },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
