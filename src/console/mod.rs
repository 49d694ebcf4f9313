//! The web console, `dbrouter console`: what an operator who would rather
//! look than query uses beside psql. Server-rendered pages (askama templates
//! in `templates/`, checked at compile time) and one small script of our own
//! that refreshes the live parts of a page; every page works without it.
//!
//! - [`auth`]: console users (argon2 passwords), sessions, CSRF on every form.
//! - [`backends`]: the backends page (the start page), pause/resume/requeue.
//! - [`messages`]: the message log, a message's page, cancel and requeue.
//! - [`broadcast`]: compose, preview, send, then the message's page shows
//!   its progress.
//! - [`tester`]: pretend to be a phone, like RapidSMS's httptester.
//!
//! What a user may change is bounded by their console role (read-only or
//! not) and by the database role the console connects as: a console whose
//! role cannot pause a backend is read-only for everyone, one that cannot
//! enqueue has no broadcast or test page (README "Web console").

mod auth;
mod backends;
mod broadcast;
mod messages;
mod tester;
mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

pub use auth::set_password;

/// How the console runs (`dbrouter console` flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// No changes from anyone: a look-only console.
    pub read_only: bool,
    /// Mark the session cookie Secure (the console is behind HTTPS).
    pub secure_cookies: bool,
    /// How long a login lasts.
    pub session_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_only: false,
            secure_cookies: false,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// What the console's database role may do, read once at start.
#[derive(Debug, Clone, Copy)]
struct Rights {
    change: bool,
    enqueue: bool,
}

struct Console {
    pool: PgPool,
    options: Options,
    rights: Rights,
}

type Shared = Arc<Console>;

/// The console's routes on `pool` (served by [`crate::listen::run`]). Reads
/// the database role's rights first.
pub async fn router(pool: PgPool, options: Options) -> crate::error::Result<Router> {
    let (change, enqueue): (bool, bool) = sqlx::query_as(
        "SELECT has_function_privilege('dbrouter.pause_backend(text, text)', 'EXECUTE'),
                has_function_privilege('dbrouter.broadcast(text, text[], text, timestamptz, timestamptz, integer, text)', 'EXECUTE')
                AND has_table_privilege('dbrouter.inbox', 'INSERT')",
    )
    .fetch_one(&pool)
    .await?;
    if !change {
        tracing::warn!("the console's database role cannot pause a backend: the console is read-only (README \"Web console\")");
    }
    let shared = Arc::new(Console {
        pool,
        options,
        rights: Rights { change, enqueue },
    });
    let pages = Router::new()
        .route("/", get(backends::page))
        .route("/backends/table", get(backends::table))
        .route("/backends/{name}/pause", post(backends::pause))
        .route("/backends/{name}/resume", post(backends::resume))
        .route("/backends/{name}/requeue", post(backends::requeue))
        .route("/messages", get(messages::log))
        .route("/messages/{id}", get(messages::page))
        .route("/messages/{id}/progress", get(messages::progress))
        .route("/messages/{id}/cancel", post(messages::cancel))
        .route("/messages/{id}/requeue", post(messages::requeue))
        .route("/broadcast", get(broadcast::compose))
        .route("/broadcast/preview", post(broadcast::preview))
        .route("/broadcast/edit", post(broadcast::edit))
        .route("/broadcast/send", post(broadcast::send))
        .route("/test", get(tester::page).post(tester::send))
        .route("/test/conversation", get(tester::conversation))
        .route("/logout", post(auth::logout))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            auth::require_session,
        ));
    Ok(Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/static/console.css", get(stylesheet))
        .route("/static/console.js", get(script))
        .merge(pages)
        .layer(middleware::map_response(security_headers))
        .with_state(shared))
}

async fn stylesheet() -> Response {
    static_file("text/css; charset=utf-8", include_str!("console.css"))
}

async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", include_str!("console.js"))
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// No framing, no sniffing, scripts and styles only from the console itself,
/// and no page kept in a shared cache.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// What a console request can fail with; each is a page that says what to do.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Input(String),
    #[error("the database did not answer in time; narrow the search (a date range, a backend) and try again")]
    Timeout,
    #[error("the database failed; the console's log has the error")]
    Db(sqlx::Error),
    #[error("the page could not be drawn; the console's log has the error")]
    Render(#[from] askama::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // query_canceled: the console's statement_timeout.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => Failure::Timeout,
            // Our functions' own refusals and values the database cannot read
            // are the user's to fix; the message says how.
            sqlx::Error::Database(db)
                if db.code().as_deref().is_some_and(|c| {
                    c == "P0001" || c.starts_with("22") || c.starts_with("23")
                }) =>
            {
                Failure::Input(db.message().to_string())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                Failure::Forbidden(format!(
                    "the console's database role may not do that ({}); grant it the right role (README \"Web console\")",
                    db.message()
                ))
            }
            _ => Failure::Db(e),
        }
    }
}

/// What the library's operator functions ([`crate::admin`]) refuse is the
/// user's to fix; a database error is sorted as above.
impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Db(e) => e.into(),
            other => Failure::Input(other.to_string()),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = match &self {
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::Forbidden(_) => StatusCode::FORBIDDEN,
            Failure::Input(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Failure::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Db(e) => {
                tracing::error!(error = %e, "console: database error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Failure::Render(e) => {
                tracing::error!(error = %e, "console: template error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, view::error_page(status, &self.to_string())).into_response()
    }
}

type Page = Result<Response, Failure>;

/// The backends' names, for the pages' pickers.
async fn backend_names(console: &Console) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM dbrouter.backends ORDER BY name")
        .fetch_all(&console.pool)
        .await
}
