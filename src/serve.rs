//! `dbrouter serve`: the HTTP receiver for gateways. Inbound messages in
//! each gateway's own format become `dbrouter.inbox` rows; delivery reports
//! become `dbrouter.receipts` rows, which workers apply in batches.
//!
//! This module routes, authenticates, limits (see [`crate::listen`]) and
//! commits; each gateway's own routes and parsing live with its engine:
//! - [`crate::gateways::kannel`]: `GET|POST /kannel/{backend}/receive`
//!   (get-url, post-url), `GET /kannel/{backend}/dlr` (dlr-url);
//! - [`crate::gateways::vumi`]: `POST /vumi/{backend}/message`, `/event`;
//! - [`crate::gateways::http`]: `POST /http/{backend}/receive`, `/report`;
//! - here: `GET /healthz` — 200 when the database answers, 503 otherwise.
//!
//! `{backend}` is a backend's name; its engine must match the route's.
//! Every gateway route needs the backend's `config.inbound`: a `secret`
//! (query `secret=` or header `X-Dbrouter-Secret`) or `basic` auth. A
//! request is answered only after its row is committed; concurrent requests
//! are committed together (one INSERT per ~2 ms group), so the receiver is
//! not capped at one commit per request. Bad or unauthenticated requests
//! get a 4xx naming the problem and write nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::charset;
use crate::gateways;
use crate::gateways::gateway::InboundAuth;
pub use crate::listen::Limits;

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// How long a group waits for more requests before it is committed.
const GROUP_WINDOW: Duration = Duration::from_millis(2);
/// Most rows per group.
const GROUP_MAX: usize = 500;
/// How long the backend table is cached.
const BACKENDS_TTL: Duration = Duration::from_secs(2);
/// How long a request waits for the backends to be read before it is
/// answered 503: a gateway retries; one that is kept waiting holds a
/// connection and may give up without retrying.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long a row may wait for its group's write to begin (behind a write
/// the database is slow to take) before its request is answered 503
/// without writing it. The write itself is bounded by the receiver's
/// statement_timeout and lock_timeout (db::connect_lazy_receiver), so a
/// request is answered within about 1 + 3 (a connection) + 4 s, and a 503
/// means its row was not written.
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// What a 503 tells the gateway to wait before retrying, in seconds.
const RETRY_AFTER_SECS: &str = "2";

/// A request's failure, as its HTTP answer.
#[derive(Debug)]
pub struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.0, format!("{}\n", self.1)).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        r
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, msg.into())
}

/// One inbox row.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    pub(crate) backend: String,
    pub(crate) identity: String,
    pub(crate) text: String,
    pub(crate) external_id: Option<String>,
    pub(crate) fields: Value,
}

/// One receipts row.
#[derive(Debug, Clone)]
pub(crate) struct Receipt {
    pub(crate) backend_id: i32,
    pub(crate) transmission_id: Option<i64>,
    pub(crate) gateway_id: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) detail: Option<String>,
}

/// The backends by name, as last read.
type Backends = Arc<HashMap<String, BackendInfo>>;

#[derive(Clone)]
pub(crate) struct BackendInfo {
    pub(crate) id: i32,
    pub(crate) engine: String,
    pub(crate) auth: Option<InboundAuth>,
}

pub(crate) struct AppState {
    pool: PgPool,
    /// The last read of the backends; never held across a database call.
    backends: Mutex<Option<(Instant, Backends)>>,
    inbound: mpsc::Sender<(Inbound, Waiter)>,
    receipts: mpsc::Sender<(Receipt, Waiter)>,
}

/// The router, with its group committers running on `pool`.
pub fn router(pool: PgPool) -> Router {
    let (inbound, inbound_rx) = mpsc::channel(10_000);
    let (receipts, receipts_rx) = mpsc::channel(10_000);
    tokio::spawn(group_commit(pool.clone(), inbound_rx, write_inbound));
    tokio::spawn(group_commit(pool.clone(), receipts_rx, write_receipts));
    let state = Arc::new(AppState {
        pool,
        backends: Mutex::new(None),
        inbound,
        receipts,
    });
    Router::new()
        .route("/healthz", get(healthz))
        .merge(gateways::kannel::routes())
        .merge(gateways::vumi::routes())
        .merge(gateways::http::routes())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state)
}

/// Count every answered request by its route and status
/// (`dbrouter_serve_requests_total`, src/metrics.rs).
async fn count_request(
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    crate::metrics::served(
        route.as_ref().map_or("unmatched", |r| r.as_str()),
        response.status().as_u16(),
    );
    response
}

/// Serve on `listener` until `shutdown` resolves, with the default limits.
pub async fn serve(
    pool: PgPool,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(pool, listener, shutdown, Limits::default()).await
}

/// Serve on `listener` until `shutdown` resolves (see [`crate::listen`]).
pub async fn serve_with(
    pool: PgPool,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> std::io::Result<()> {
    crate::listen::run(router(pool), listener, shutdown, limits).await
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    match sqlx::query("SELECT 1").execute(&st.pool).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        // The database's error (host names, roles) goes to the log, not to
        // whoever asks.
        Err(e) => unavailable(e).into_response(),
    }
}

// ---------------------------------------------------------------------------
// Backends and authentication.
// ---------------------------------------------------------------------------

impl AppState {
    fn cached_backends(&self) -> Option<Backends> {
        let cache = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .filter(|(at, _)| at.elapsed() < BACKENDS_TTL)
            .map(|(_, map)| map.clone())
    }

    async fn backends(&self) -> Result<Backends, Refusal> {
        if let Some(map) = self.cached_backends() {
            return Ok(map);
        }
        // Read without the cache's lock held: concurrent requests may read
        // too, none waits for another's database call.
        let read = sqlx::query_as("SELECT id, name, engine, config FROM dbrouter.backends")
            .fetch_all(&self.pool);
        let rows: Vec<(i32, String, String, Value)> = tokio::time::timeout(READ_DEADLINE, read)
            .await
            .map_err(|_| database_down())?
            .map_err(unavailable)?;
        let map: HashMap<String, BackendInfo> = rows
            .into_iter()
            .map(|(id, name, engine, config)| {
                // (a reference that cannot be resolved leaves the backend
                // without credentials: every request to it is refused)
                let auth = config
                    .get("inbound")
                    .and_then(|v| match crate::gateways::secrets::resolve(v) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            tracing::error!(backend = %name, error = %e, "cannot resolve config.inbound");
                            None
                        }
                    })
                    .and_then(|v| serde_json::from_value::<InboundAuth>(v).ok());
                (name, BackendInfo { id, engine, auth })
            })
            .collect();
        let map = Arc::new(map);
        *self.backends.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), map.clone()));
        Ok(map)
    }

    /// The backend named in the path, if its engine is `engine` and the
    /// request carries its inbound credentials.
    pub(crate) async fn authorize(
        &self,
        name: &str,
        engine: &str,
        headers: &HeaderMap,
        query_secret: Option<&str>,
    ) -> Result<BackendInfo, Refusal> {
        let backends = self.backends().await?;
        let Some(b) = backends.get(name).filter(|b| b.engine == engine) else {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("no {engine} backend named {name:?}"),
            ));
        };
        // An empty secret, or basic auth with an empty user or password,
        // would let anyone in: it counts as none.
        let Some(auth) = b
            .auth
            .as_ref()
            .filter(|a| a.secret.as_deref().is_some_and(|s| !s.is_empty()) || basic_set(&a.basic))
        else {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!("backend {name:?} accepts nothing: set config.inbound.secret (or config.inbound.basic with a username and a password)"),
            ));
        };
        let given_secret = headers
            .get("x-dbrouter-secret")
            .and_then(|v| v.to_str().ok())
            .or(query_secret);
        let secret_ok = match (&auth.secret, given_secret) {
            (Some(want), Some(got)) if !want.is_empty() => same(want.as_bytes(), got.as_bytes()),
            _ => false,
        };
        let basic_ok = match (&auth.basic, basic_credentials(headers)) {
            (Some(want), Some((user, pass))) if basic_set(&auth.basic) => {
                same(want.username.as_bytes(), user.as_bytes())
                    & same(want.password.as_bytes(), pass.as_bytes())
            }
            _ => false,
        };
        if secret_ok || basic_ok {
            Ok(b.clone())
        } else {
            Err(Refusal(
                StatusCode::UNAUTHORIZED,
                format!("wrong or missing credentials for backend {name:?}"),
            ))
        }
    }
}

/// Basic auth is configured with a user and a password, both non-empty.
fn basic_set(basic: &Option<crate::gateways::gateway::Basic>) -> bool {
    basic
        .as_ref()
        .is_some_and(|b| !b.username.is_empty() && !b.password.is_empty())
}

/// Constant-time comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = v.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn unavailable(e: sqlx::Error) -> Refusal {
    tracing::warn!(error = %e, "database error in serve");
    database_down()
}

fn database_down() -> Refusal {
    Refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is not reachable; retry later".into(),
    )
}

// ---------------------------------------------------------------------------
// Group commit.
// ---------------------------------------------------------------------------

/// A request waiting for its row's commit, and since when.
struct Waiter {
    answer: oneshot::Sender<Result<(), Refusal>>,
    since: Instant,
}

/// Collect rows for up to GROUP_WINDOW (or GROUP_MAX rows), write them with
/// one statement, answer every request after the commit. When the database
/// refuses the group for something in it, each row is written alone, so only
/// the bad one is refused.
async fn group_commit<T, F, Fut>(pool: PgPool, mut rx: mpsc::Receiver<(T, Waiter)>, write: F)
where
    T: Clone + Send + 'static,
    F: Fn(PgPool, Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + GROUP_WINDOW;
        while group.len() < GROUP_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => group.push(item),
                _ => break,
            }
        }
        // Rows that waited too long behind a slow write are not written:
        // their requests get a 503 now, and their gateways send them again.
        let (late, on_time): (Vec<_>, Vec<_>) = group
            .into_iter()
            .partition(|(_, w)| w.since.elapsed() > QUEUE_WAIT || w.answer.is_closed());
        for (_, w) in late {
            let _ = w.answer.send(Err(database_down()));
        }
        let group = on_time;
        if group.is_empty() {
            continue;
        }
        let rows: Vec<T> = group.iter().map(|(r, _)| r.clone()).collect();
        crate::metrics::group_commit(rows.len());
        match write(pool.clone(), rows).await {
            Ok(()) => {
                for (_, w) in group {
                    let _ = w.answer.send(Ok(()));
                }
            }
            Err(e) if group.len() > 1 && !not_now(&e) => {
                for (row, w) in group {
                    let r = write(pool.clone(), vec![row]).await.map_err(refusal);
                    let _ = w.answer.send(r);
                }
            }
            Err(e) => {
                let transient = not_now(&e);
                let msg = match &e {
                    sqlx::Error::Database(db) => db.message().to_string(),
                    _ => e.to_string(),
                };
                for (_, w) in group {
                    let _ = w.answer.send(Err(if transient {
                        database_down()
                    } else {
                        bad(msg.clone())
                    }));
                }
            }
        }
    }
}

/// Whether the database could not take a write now (down, restarting, a
/// statement timeout or a lock it could not get) rather than refused it.
fn not_now(e: &sqlx::Error) -> bool {
    crate::db::is_transient(e)
        || matches!(e, sqlx::Error::Database(db)
                    if db.code().is_some_and(|c| matches!(c.as_ref(), "57014" | "55P03")))
}

fn refusal(e: sqlx::Error) -> Refusal {
    if not_now(&e) {
        return unavailable(e);
    }
    match &e {
        sqlx::Error::Database(db) => bad(db.message().to_string()),
        _ => unavailable(e),
    }
}

async fn write_inbound(pool: PgPool, rows: Vec<Inbound>) -> Result<(), sqlx::Error> {
    let mut backend = Vec::with_capacity(rows.len());
    let mut identity = Vec::with_capacity(rows.len());
    let mut text = Vec::with_capacity(rows.len());
    let mut external_id = Vec::with_capacity(rows.len());
    let mut fields = Vec::with_capacity(rows.len());
    for r in rows {
        backend.push(r.backend);
        identity.push(r.identity);
        text.push(r.text);
        external_id.push(r.external_id);
        fields.push(r.fields);
    }
    sqlx::query(include_str!("../sql/serve_inbox.sql"))
        .bind(&backend)
        .bind(&identity)
        .bind(&text)
        .bind(&external_id)
        .bind(&fields)
        .execute(&pool)
        .await?;
    Ok(())
}

async fn write_receipts(pool: PgPool, rows: Vec<Receipt>) -> Result<(), sqlx::Error> {
    let backend_id: Vec<i32> = rows.iter().map(|r| r.backend_id).collect();
    let transmission_id: Vec<Option<i64>> = rows.iter().map(|r| r.transmission_id).collect();
    let gateway_id: Vec<Option<String>> = rows.iter().map(|r| r.gateway_id.clone()).collect();
    let outcome: Vec<&str> = rows.iter().map(|r| r.outcome).collect();
    let detail: Vec<Option<String>> = rows.iter().map(|r| r.detail.clone()).collect();
    sqlx::query(include_str!("../sql/serve_receipts.sql"))
        .bind(&backend_id)
        .bind(&transmission_id)
        .bind(&gateway_id)
        .bind(&outcome)
        .bind(&detail)
        .execute(&pool)
        .await?;
    Ok(())
}

impl AppState {
    pub(crate) async fn enqueue(&self, row: Inbound) -> Result<(), Refusal> {
        if row.identity.trim().is_empty() {
            return Err(bad("the sender is missing or empty"));
        }
        submit(&self.inbound, row).await
    }

    pub(crate) async fn record(&self, row: Receipt) -> Result<(), Refusal> {
        submit(&self.receipts, row).await
    }
}

/// Hand a row to its group committer and wait for the commit's answer
/// (bounded: see QUEUE_WAIT).
async fn submit<T>(committer: &mpsc::Sender<(T, Waiter)>, row: T) -> Result<(), Refusal> {
    let shutting_down = || Refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    let (answer, rx) = oneshot::channel();
    let waiter = Waiter {
        answer,
        since: Instant::now(),
    };
    committer
        .send((row, waiter))
        .await
        .map_err(|_| shutting_down())?;
    rx.await.map_err(|_| shutting_down())?
}

// ---------------------------------------------------------------------------
// What the gateways' receive handlers share (each gateway's own routes are
// in its module under src/gateways/).
// ---------------------------------------------------------------------------

/// Which character set a form's `text` field is in.
pub(crate) enum TextSet<'a> {
    /// The one a Content-Type names (`None`: UTF-8).
    Named(Option<&'a str>),
    /// The one the form's own `charset` and `coding` fields name (Kannel's
    /// get-url `%C` and `%c`).
    FromFields,
}

/// A form's fields as text: UTF-8, except `text`, which is decoded in the
/// set `set` says (see [`crate::charset`]). A field that is not valid in
/// its set refuses the request.
pub(crate) fn text_fields(raw: &[u8], set: TextSet) -> Result<HashMap<String, String>, Refusal> {
    let mut out = HashMap::new();
    let mut text = None;
    for (k, v) in charset::form_pairs(raw) {
        let k = charset::decode(&k, encoding_rs::UTF_8, "a field name").map_err(bad)?;
        if k == "text" {
            text = Some(v);
            continue;
        }
        let v =
            charset::decode(&v, encoding_rs::UTF_8, &format!("the field {k:?}")).map_err(bad)?;
        out.insert(k, v);
    }
    if let Some(bytes) = text {
        let enc = match set {
            TextSet::Named(charset) => charset::named(charset, None),
            TextSet::FromFields => charset::named(
                out.get("charset").map(String::as_str),
                out.get("coding").map(String::as_str),
            ),
        }
        .map_err(bad)?;
        let t = charset::decode(&bytes, enc, "the text").map_err(bad)?;
        out.insert("text".to_string(), t);
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Secret {
    pub(crate) secret: Option<String>,
}

pub(crate) fn json_body(body: &Bytes) -> Result<Value, Refusal> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    Ok(v)
}

pub(crate) fn text_field(v: &Value, name: &str) -> Option<String> {
    match v.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A form or JSON body as string fields.
pub(crate) fn fields_of(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<HashMap<String, String>, Refusal> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let v = json_body(body)?;
        let mut out = HashMap::new();
        if let Value::Object(o) = &v {
            for k in o.keys() {
                if let Some(s) = text_field(&v, k) {
                    out.insert(k.clone(), s);
                }
            }
        }
        Ok(out)
    } else {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        text_fields(
            body,
            TextSet::Named(charset::content_type_charset(content_type)),
        )
    }
}
