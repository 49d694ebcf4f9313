//! The backends page (the console's start page): each backend's state, its
//! queue and its last 15 minutes (sql/console/backends.sql), with pause,
//! resume and requeue (the same functions as psql: dbrouter.pause_backend,
//! resume_backend, requeue_backend — a requeue leaves opted-out, cancelled
//! and expired transmissions alone).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::auth::Session;
use super::view::{self, age, count, Chrome};
use super::{Page, Shared};

const BACKENDS: &str = include_str!("../../sql/console/backends.sql");

pub struct Row {
    name: String,
    engine: String,
    state: &'static str,
    state_class: &'static str,
    state_detail: String,
    paused: bool,
    rate: String,
    binds: String,
    due: String,
    oldest: String,
    leased: String,
    later: String,
    sent: String,
    delivered: String,
    failed: String,
}

#[derive(Template)]
#[template(path = "backends.html")]
struct BackendsPage {
    chrome: Chrome,
    notice: Option<String>,
    table: String,
}

#[derive(Template)]
#[template(path = "backends_table.html")]
struct BackendsTable {
    chrome: Chrome,
    rows: Vec<Row>,
}

/// A row of sql/console/backends.sql.
#[derive(sqlx::FromRow)]
struct Fetched {
    name: String,
    engine: String,
    pause_reason: Option<String>,
    throttled_until: Option<DateTime<Utc>>,
    rate_limit: Option<f64>,
    due: i64,
    oldest_due_seconds: Option<f64>,
    leased: i64,
    later: i64,
    sent: i64,
    delivered: i64,
    failed: i64,
    binds_up: i64,
    binds: i64,
}

async fn rows(console: &Shared) -> Result<Vec<Row>, sqlx::Error> {
    let fetched: Vec<Fetched> = sqlx::query_as(BACKENDS).fetch_all(&console.pool).await?;
    Ok(fetched
        .into_iter()
        .map(|b| {
            let (state, state_class, state_detail) = match (&b.pause_reason, b.throttled_until) {
                (Some(reason), _) => ("paused", "bad", reason.clone()),
                (None, Some(until)) => (
                    "throttled",
                    "wait",
                    format!("by the gateway until {} UTC", view::when(Some(until))),
                ),
                (None, None) if b.binds > 0 && b.binds_up == 0 => {
                    ("no bind up", "bad", String::new())
                }
                (None, None) => ("sending", "ok", String::new()),
            };
            Row {
                paused: b.pause_reason.is_some(),
                rate: b.rate_limit.map(|r| format!("{r}/s")).unwrap_or_default(),
                binds: if b.binds > 0 {
                    format!("{} of {} binds up", b.binds_up, b.binds)
                } else {
                    String::new()
                },
                due: count(b.due),
                oldest: age(b.oldest_due_seconds),
                leased: count(b.leased),
                later: count(b.later),
                sent: count(b.sent),
                delivered: count(b.delivered),
                failed: count(b.failed),
                name: b.name,
                engine: b.engine,
                state,
                state_class,
                state_detail,
            }
        })
        .collect())
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
    backend: Option<String>,
    n: Option<i64>,
}

pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Query(done): Query<Done>,
) -> Page {
    let table = BackendsTable {
        chrome: Chrome::new(&console, &session, "backends", "Backends"),
        rows: rows(&console).await?,
    }
    .render()?;
    // What the last action did, told by the redirect after it: a fixed
    // sentence per action, so a link cannot make the page say anything else.
    let notice = match (done.done.as_deref(), done.backend) {
        (Some("paused"), Some(b)) => Some(format!(
            "Paused {b}: its messages stay queued until it is resumed."
        )),
        (Some("resumed"), Some(b)) => Some(format!("Resumed {b}.")),
        (Some("requeued"), Some(b)) => Some(format!(
            "Requeued {} failed transmissions of {b}.",
            count(done.n.unwrap_or(0))
        )),
        _ => None,
    };
    Ok(view::render(&BackendsPage {
        chrome: Chrome::new(&console, &session, "backends", "Backends"),
        notice,
        table,
    })?
    .into_response())
}

/// The table alone, for the page's refresh.
pub async fn table(State(console): State<Shared>, Extension(session): Extension<Session>) -> Page {
    Ok(view::render(&BackendsTable {
        chrome: Chrome::new(&console, &session, "backends", "Backends"),
        rows: rows(&console).await?,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub struct PauseForm {
    reason: Option<String>,
}

pub async fn pause(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<PauseForm>,
) -> Page {
    let reason = form
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("paused by {} in the console", session.user));
    crate::admin::backend_pause(&console.pool, &name, &reason).await?;
    tracing::info!(user = %session.user, backend = %name, %reason, "console: backend paused");
    Ok(Redirect::to(&format!("/?done=paused&backend={name}")).into_response())
}

pub async fn resume(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Page {
    crate::admin::backend_resume(&console.pool, &name).await?;
    tracing::info!(user = %session.user, backend = %name, "console: backend resumed");
    Ok(Redirect::to(&format!("/?done=resumed&backend={name}")).into_response())
}

pub async fn requeue(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Page {
    let (n,): (i32,) = sqlx::query_as("SELECT dbrouter.requeue_backend($1)")
        .bind(&name)
        .fetch_one(&console.pool)
        .await?;
    tracing::info!(user = %session.user, backend = %name, requeued = n, "console: failed transmissions requeued");
    Ok(Redirect::to(&format!("/?done=requeued&backend={name}&n={n}")).into_response())
}
