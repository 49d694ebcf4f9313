//! The test page, like RapidSMS's httptester: the console pretends to be a
//! phone on a backend. A message typed here goes into `dbrouter.inbox` as a
//! gateway's would; the workers run the apps on it, and their replies (sent
//! through the backend for real) appear in the conversation, which follows
//! the phone from its first message on (sql/console/conversation.sql).

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::auth::Session;
use super::view::{self, status, when, Chrome};
use super::{Failure, Page, Shared};

const CONVERSATION: &str = include_str!("../../sql/console/conversation.sql");

#[derive(Deserialize, Default)]
pub struct Phone {
    #[serde(default)]
    backend: String,
    #[serde(default)]
    identity: String,
    /// The conversation's first message (an inbound message id).
    first: Option<i64>,
    #[serde(default)]
    text: String,
}

pub struct Line {
    id: i64,
    from_phone: bool,
    text: String,
    when: String,
    status: &'static str,
    status_class: &'static str,
    error: String,
}

#[derive(Template)]
#[template(path = "conversation.html")]
struct Conversation {
    rows: Vec<Line>,
}

#[derive(Template)]
#[template(path = "test.html")]
struct TestPage {
    chrome: Chrome,
    backends: Vec<String>,
    backend: String,
    identity: String,
    first: Option<i64>,
    conversation: String,
    problem: Option<String>,
}

/// id, direction, status, text, created_at, last_error.
type LineRow = (i64, String, String, String, DateTime<Utc>, Option<String>);

async fn conversation_of(console: &Shared, first: i64) -> Result<Conversation, Failure> {
    let rows: Vec<LineRow> = sqlx::query_as(CONVERSATION)
        .bind(first)
        .fetch_all(&console.pool)
        .await?;
    Ok(Conversation {
        rows: rows
            .into_iter()
            .map(|(id, direction, st, text, created_at, error)| {
                let (status, status_class) = status(&direction, &st);
                Line {
                    id,
                    from_phone: direction == "I",
                    text,
                    when: when(Some(created_at)),
                    status,
                    status_class,
                    error: error.unwrap_or_default(),
                }
            })
            .collect(),
    })
}

async fn test_page(
    console: &Shared,
    session: &Session,
    phone: Phone,
    problem: Option<String>,
) -> Page {
    let backends = super::backend_names(console).await?;
    let conversation = match phone.first {
        Some(first) => conversation_of(console, first).await?.render()?,
        None => String::new(),
    };
    Ok(view::render(&TestPage {
        chrome: Chrome::new(console, session, "test", "Test"),
        backends,
        backend: phone.backend,
        identity: if phone.identity.is_empty() {
            "+15550100".into()
        } else {
            phone.identity
        },
        first: phone.first,
        conversation,
        problem,
    })?
    .into_response())
}

pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Query(phone): Query<Phone>,
) -> Page {
    test_page(&console, &session, phone, None).await
}

pub async fn send(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(mut phone): Form<Phone>,
) -> Page {
    let received = crate::admin::receive(
        &console.pool,
        &phone.backend,
        phone.identity.trim(),
        &phone.text,
        None,
    )
    .await;
    let id = match received {
        Ok(id) => id,
        Err(crate::Error::Input(problem)) => {
            return test_page(&console, &session, phone, Some(problem)).await
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user = %session.user, message = id, backend = %phone.backend, "console: test message from a phone");
    // The same phone goes on with the same conversation; another starts anew.
    let first = match phone.first {
        Some(first) if same_phone(&console, first, id).await? => first,
        _ => id,
    };
    phone.first = Some(first);
    let q = serde_urlencoded::to_string([
        ("backend", phone.backend.as_str()),
        ("identity", phone.identity.trim()),
        ("first", &first.to_string()),
    ])
    .map_err(|e| Failure::Input(e.to_string()))?;
    Ok(Redirect::to(&format!("/test?{q}")).into_response())
}

async fn same_phone(console: &Shared, a: i64, b: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT connection_id FROM dbrouter.transmissions WHERE message_id = $1 LIMIT 1)
              = (SELECT connection_id FROM dbrouter.transmissions WHERE message_id = $2 LIMIT 1)",
    )
    .bind(a)
    .bind(b)
    .fetch_one(&console.pool)
    .await
    .map(|same: Option<bool>| same.unwrap_or(false))
}

#[derive(Deserialize)]
pub struct First {
    first: i64,
}

/// The conversation alone, for the page's refresh.
pub async fn conversation(State(console): State<Shared>, Query(q): Query<First>) -> Page {
    Ok(view::render(&conversation_of(&console, q.first).await?)?.into_response())
}
