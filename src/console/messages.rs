//! The message log (sql/console/messages.sql) and a message's page: its
//! transmissions, failed attempts, parts and delivery reports, the message
//! it answers and its replies; an outbound message's progress (live while
//! anything is unsent), with cancel and requeue.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::auth::Session;
use super::view::{self, count, short, status, when, Chrome};
use super::{Failure, Page, Shared};

const LOG: &str = include_str!("../../sql/console/messages.sql");
const TRANSMISSIONS: &str = include_str!("../../sql/console/transmissions.sql");

/// A console query may take this long before the database cancels it.
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '10s'";

/// The log's search form, as typed (kept as text to show it back).
#[derive(Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    before: Option<i64>,
}

fn some(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// `%`, `_` and `\` match themselves in the text search.
fn like_escaped(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub struct Row {
    id: i64,
    when: String,
    arrow: &'static str,
    direction_title: &'static str,
    who: String,
    text: String,
    status: &'static str,
    status_class: &'static str,
}

#[derive(Template)]
#[template(path = "messages.html")]
struct LogPage {
    chrome: Chrome,
    f: Filter,
    backends: Vec<String>,
    statuses: Vec<(&'static str, &'static str)>,
    rows: Vec<Row>,
    next: Option<String>,
    problem: Option<String>,
}

/// id, direction, status, text, created_at, n_total, and the first
/// transmission's identity and backend (none yet for a broadcast still
/// being expanded).
type LogRow = (
    i64,
    String,
    String,
    String,
    DateTime<Utc>,
    i32,
    Option<String>,
    Option<String>,
);

pub async fn log(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Query(f): Query<Filter>,
) -> Page {
    let chrome = Chrome::new(&console, &session, "messages", "Messages");
    let backends = super::backend_names(&console).await?;
    let statuses = vec![
        ("Q", "queued"),
        ("P", "sending"),
        ("S", "sent"),
        ("D", "delivered"),
        ("R", "handled"),
        ("E", "error"),
    ];
    // Dates are whole days in UTC; "until 2026-12-07" means through that day.
    let date = |s: &str, what: &str, days: u64| -> Result<Option<DateTime<Utc>>, String> {
        let Some(d) = some(s) else { return Ok(None) };
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .ok()
            .and_then(|day| day.checked_add_days(chrono::Days::new(days)))
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map(|t| Some(t.and_utc()))
            .ok_or_else(|| format!("{what} {d:?} is not a date; write it as 2026-12-31"))
    };
    // A date that is not one is said on the page; nothing is searched.
    let (found, problem) = match (date(&f.since, "from", 0), date(&f.until, "until", 1)) {
        (Ok(since), Ok(until)) => (search(&console, &f, since, until).await?, None),
        (Err(p), _) | (_, Err(p)) => (vec![], Some(p)),
    };
    let more = found.len() > 50;
    let rows: Vec<Row> = found
        .into_iter()
        .take(50)
        .map(
            |(id, direction, st, text, created_at, n_total, identity, backend)| {
                let (status, status_class) = status(&direction, &st);
                let inbound = direction == "I";
                let who = match (identity, backend) {
                    (Some(identity), Some(backend)) if n_total > 1 => format!(
                        "{identity} and {} more on {backend}",
                        count(i64::from(n_total) - 1)
                    ),
                    (Some(identity), Some(backend)) => format!("{identity} on {backend}"),
                    _ => format!("{} recipients, being written", count(i64::from(n_total))),
                };
                Row {
                    id,
                    when: when(Some(created_at)),
                    arrow: if inbound { "←" } else { "→" },
                    direction_title: if inbound {
                        "from the phone"
                    } else {
                        "to the phone"
                    },
                    who,
                    text: short(&text, 80),
                    status,
                    status_class,
                }
            },
        )
        .collect();
    let next = match rows.last() {
        Some(last) if more => {
            let mut q: Vec<(&str, String)> = [
                ("q", &f.q),
                ("identity", &f.identity),
                ("backend", &f.backend),
                ("direction", &f.direction),
                ("status", &f.status),
                ("since", &f.since),
                ("until", &f.until),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.clone()))
            .collect();
            q.push(("before", last.id.to_string()));
            serde_urlencoded::to_string(&q)
                .ok()
                .map(|q| format!("/messages?{q}"))
        }
        _ => None,
    };
    Ok(view::render(&LogPage {
        chrome,
        f,
        backends,
        statuses,
        rows,
        next,
        problem,
    })?
    .into_response())
}

/// sql/console/messages.sql with the form's filters, under the console's
/// statement timeout.
async fn search(
    console: &Shared,
    f: &Filter,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let mut tx = console.pool.begin().await?;
    sqlx::query(STATEMENT_TIMEOUT).execute(&mut *tx).await?;
    let found = sqlx::query_as(LOG)
        .bind(f.before)
        .bind(some(&f.q).map(like_escaped))
        .bind(some(&f.status))
        .bind(some(&f.direction))
        .bind(since)
        .bind(until)
        .bind(some(&f.identity))
        .bind(some(&f.backend))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(found)
}

pub struct Message {
    id: i64,
    outbound: bool,
    direction: &'static str,
    status: &'static str,
    status_class: &'static str,
    text: String,
    created: String,
    send_at: String,
    expires_at: String,
    encoding: String,
    segments: i32,
    enqueued_by: String,
    error: String,
    total: i32,
}

pub struct Link {
    id: i64,
    text: String,
}

pub struct Transmission {
    id: i64,
    backend: String,
    identity: String,
    status: &'static str,
    status_class: &'static str,
    attempts: i32,
    due: String,
    sent: String,
    delivered: String,
    external_id: String,
    last_error: String,
}

pub struct Attempt {
    when: String,
    transmission: i64,
    attempt: i32,
    error: String,
    last: bool,
    requeued: bool,
}

pub struct Part {
    transmission: i64,
    part: i32,
    gateway_id: String,
    report: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    chrome: Chrome,
    m: Message,
    notice: Option<String>,
    parent: Option<Link>,
    replies: Vec<Link>,
    transmissions: Vec<Transmission>,
    more_transmissions: i64,
    attempts: Vec<Attempt>,
    parts: Vec<Part>,
    progress: String,
    live: bool,
}

#[derive(Template)]
#[template(path = "progress.html")]
struct Progress {
    total: i64,
    ended: i64,
    total_text: String,
    ended_text: String,
    waiting: String,
    sent: String,
    delivered: String,
    failed: String,
    finished: bool,
    expanding: i64,
    expanding_text: String,
}

/// An outbound message's progress ([`crate::admin::progress`]: its
/// counters, no count over a broadcast's rows); `None` for an inbound or
/// missing message.
async fn progress_of(console: &Shared, id: i64) -> Result<Option<Progress>, Failure> {
    let p = match crate::admin::progress(&console.pool, id).await {
        Ok(p) => p,
        Err(crate::Error::Input(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let ended = p.ended();
    Ok(Some(Progress {
        total: p.total,
        ended,
        total_text: count(p.total),
        ended_text: count(ended),
        waiting: count(p.total - ended),
        sent: count(p.sent),
        delivered: count(p.delivered),
        failed: count(p.failed),
        finished: p.finished(),
        expanding: p.expanding,
        expanding_text: count(p.expanding),
    }))
}

/// The progress alone, for the message page's refresh.
pub async fn progress(State(console): State<Shared>, Path(id): Path<i64>) -> Page {
    let Some(p) = progress_of(&console, id).await? else {
        return Err(Failure::NotFound(format!(
            "there is no outbound message {id}"
        )));
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], view::render(&p)?).into_response())
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
    n: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    direction: String,
    status: String,
    text: String,
    created_at: DateTime<Utc>,
    send_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    encoding: Option<String>,
    segments: Option<i32>,
    enqueued_by: Option<String>,
    error: Option<String>,
    in_response_to: Option<i64>,
    n_total: i32,
}

/// A row of sql/console/transmissions.sql.
#[derive(sqlx::FromRow)]
struct TransmissionRow {
    id: i64,
    backend: String,
    identity: String,
    status: String,
    attempts: i32,
    due_at: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    external_id: Option<String>,
    last_error: Option<String>,
}

pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    Query(done): Query<Done>,
) -> Page {
    // The progress before anything else: states only move forward, so the
    // message and its tables are never older than a progress that says finished (a
    // finished page is not refreshed).
    let (progress, live) = match progress_of(&console, id).await? {
        Some(p) => (p.render()?, !p.finished),
        None => (String::new(), false),
    };
    let row: Option<MessageRow> = sqlx::query_as(
        "SELECT direction::text AS direction, status::text AS status, text, created_at, send_at, expires_at, encoding, segments,
                enqueued_by, error, in_response_to, n_total
           FROM dbrouter.messages WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&console.pool)
    .await?;
    let Some(row) = row else {
        return Err(Failure::NotFound(format!(
            "there is no message {id} (purged, or never written)"
        )));
    };
    let direction = row.direction;
    let (status_word, status_class) = status(&direction, &row.status);
    let outbound = direction == "O";
    let m = Message {
        id,
        outbound,
        direction: if outbound {
            "to phones"
        } else {
            "from a phone"
        },
        status: status_word,
        status_class,
        text: row.text,
        created: when(Some(row.created_at)),
        send_at: when(row.send_at),
        expires_at: when(row.expires_at),
        encoding: row.encoding.unwrap_or_default(),
        segments: row.segments.unwrap_or(1),
        enqueued_by: row.enqueued_by.unwrap_or_default(),
        error: row.error.unwrap_or_default(),
        total: row.n_total,
    };
    let parent = match row.in_response_to {
        Some(p) => sqlx::query_as::<_, (i64, String)>(
            "SELECT id, text FROM dbrouter.messages WHERE id = $1",
        )
        .bind(p)
        .fetch_optional(&console.pool)
        .await?
        .map(|(id, text)| Link {
            id,
            text: short(&text, 80),
        }),
        None => None,
    };
    let replies = sqlx::query_as::<_, (i64, String)>(
        "SELECT id, text FROM dbrouter.messages WHERE in_response_to = $1 ORDER BY id LIMIT 20",
    )
    .bind(id)
    .fetch_all(&console.pool)
    .await?
    .into_iter()
    .map(|(id, text)| Link {
        id,
        text: short(&text, 80),
    })
    .collect();
    let rows: Vec<TransmissionRow> = sqlx::query_as(TRANSMISSIONS)
        .bind(id)
        .fetch_all(&console.pool)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let transmissions = rows
        .into_iter()
        .map(|t| {
            let (status, status_class) = status(&direction, &t.status);
            Transmission {
                id: t.id,
                backend: t.backend,
                identity: t.identity,
                status,
                status_class,
                attempts: t.attempts,
                due: if t.status == "Q" {
                    when(t.due_at)
                } else {
                    String::new()
                },
                sent: when(t.sent_at),
                delivered: when(t.delivered_at),
                external_id: t.external_id.unwrap_or_default(),
                last_error: t.last_error.unwrap_or_default(),
            }
        })
        .collect();
    let attempts = sqlx::query_as::<_, (DateTime<Utc>, i64, i32, String, bool, bool)>(
        "SELECT failed_at, transmission_id, attempt, error, final, requeued
           FROM dbrouter.attempts WHERE transmission_id = ANY($1) ORDER BY id LIMIT 100",
    )
    .bind(&ids)
    .fetch_all(&console.pool)
    .await?
    .into_iter()
    .map(
        |(failed_at, transmission, attempt, error, last, requeued)| Attempt {
            when: when(Some(failed_at)),
            transmission,
            attempt,
            error,
            last,
            requeued,
        },
    )
    .collect();
    let parts = sqlx::query_as::<_, (i64, i32, String, String, Option<String>)>(
        "SELECT transmission_id, part, gateway_id, status::text, detail
           FROM dbrouter.transmission_parts WHERE transmission_id = ANY($1) ORDER BY transmission_id, part LIMIT 200",
    )
    .bind(&ids)
    .fetch_all(&console.pool)
    .await?
    .into_iter()
    .map(|(transmission, part, gateway_id, st, detail)| Part {
        transmission,
        part,
        gateway_id,
        report: match (st.as_str(), detail) {
            ("D", _) => "delivered".to_string(),
            ("E", d) => format!("failed{}", d.map(|d| format!(": {d}")).unwrap_or_default()),
            _ => "no report yet".to_string(),
        },
    })
    .collect();
    let notice = match done.done.as_deref() {
        Some("cancelled") => Some(format!(
            "Cancelled: {} unsent transmissions ended.",
            count(done.n.unwrap_or(0))
        )),
        Some("requeued") => Some(format!(
            "Requeued {} failed transmissions.",
            count(done.n.unwrap_or(0))
        )),
        Some("sent") => {
            Some("The broadcast is queued; this page follows its progress.".to_string())
        }
        _ => None,
    };
    Ok(view::render(&MessagePage {
        chrome: Chrome::new(&console, &session, "messages", format!("Message {id}")),
        more_transmissions: i64::from(m.total) - 100,
        m,
        notice,
        parent,
        replies,
        transmissions,
        attempts,
        parts,
        progress,
        live,
    })?
    .into_response())
}

pub async fn cancel(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
) -> Page {
    let n = crate::admin::cancel(&console.pool, id).await?;
    tracing::info!(user = %session.user, message = id, ended = n, "console: message cancelled");
    Ok(Redirect::to(&format!("/messages/{id}?done=cancelled&n={n}")).into_response())
}

pub async fn requeue(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
) -> Page {
    let n: i32 = sqlx::query_scalar("SELECT dbrouter.requeue_message($1)")
        .bind(id)
        .fetch_one(&console.pool)
        .await?;
    tracing::info!(user = %session.user, message = id, requeued = n, "console: failed transmissions requeued");
    Ok(Redirect::to(&format!("/messages/{id}?done=requeued&n={n}")).into_response())
}
