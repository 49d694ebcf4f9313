//! Compose a broadcast, preview it (dbrouter.broadcast_preview: recipients
//! after duplicates, opted out, problems, encoding and parts, time at the
//! backend's rate limit), send it (dbrouter.broadcast), then follow it on
//! the message's page. The preview hands the send form a fresh idempotency
//! key, so a second click or a resubmitted form sends nothing twice.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use axum::{Extension, Form};
use serde::Deserialize;

use super::auth::Session;
use super::view::{self, count, Chrome};
use super::{Page, Shared};

#[derive(Deserialize, Default)]
pub struct Draft {
    #[serde(default)]
    backend: String,
    #[serde(default)]
    recipients: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    send_at: String,
    /// The preview's idempotency key (send only).
    #[serde(default)]
    key: String,
}

impl Draft {
    fn identities(&self) -> Vec<String> {
        self.recipients
            .split(['\n', ',', ';'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn send_at(&self) -> Option<&str> {
        Some(self.send_at.trim()).filter(|s| !s.is_empty())
    }
}

#[derive(Template)]
#[template(path = "broadcast.html")]
struct ComposePage {
    chrome: Chrome,
    backends: Vec<String>,
    form: Draft,
    problem: Option<String>,
}

pub struct Preview {
    given: String,
    recipients: String,
    duplicates: String,
    opted_out: String,
    will_send: String,
    problems: Vec<String>,
    encoding: String,
    segments: i32,
    parts_total: String,
    max_parts: Option<i32>,
    eta: String,
}

#[derive(Template)]
#[template(path = "preview.html")]
struct PreviewPage {
    chrome: Chrome,
    form: Draft,
    p: Preview,
    key: String,
}

async fn compose_page(
    console: &Shared,
    session: &Session,
    form: Draft,
    problem: Option<String>,
) -> Page {
    Ok(view::render(&ComposePage {
        chrome: Chrome::new(console, session, "broadcast", "Broadcast"),
        backends: super::backend_names(console).await?,
        form,
        problem,
    })?
    .into_response())
}

pub async fn compose(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
) -> Page {
    compose_page(&console, &session, Draft::default(), None).await
}

/// Back from the preview to the form, as it was.
pub async fn edit(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(form): Form<Draft>,
) -> Page {
    compose_page(&console, &session, form, None).await
}

type PreviewRow = (
    i32,
    i32,
    i32,
    i32,
    Vec<String>,
    String,
    i32,
    Option<i32>,
    Option<f64>,
    Option<f64>,
);

pub async fn preview(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(form): Form<Draft>,
) -> Page {
    let identities = form.identities();
    let (
        given,
        recipients,
        duplicates,
        opted_out,
        mut problems,
        encoding,
        segments,
        max_parts,
        rate,
        eta,
    ): PreviewRow = sqlx::query_as("SELECT * FROM dbrouter.broadcast_preview($1, $2, $3)")
        .bind(&form.backend)
        .bind(&identities)
        .bind(&form.text)
        .fetch_one(&console.pool)
        .await?;
    if let Some(at) = form.send_at() {
        // Read by PostgreSQL, as broadcast() will read it.
        if let Err(e) = sqlx::query("SELECT $1::timestamptz")
            .bind(at)
            .execute(&console.pool)
            .await
        {
            problems.push(format!("\"not before\" {at:?} is not a time PostgreSQL reads ({e}); write it like 2026-12-24 09:00+03"));
        }
    }
    if form.text.trim().is_empty() {
        problems.push("the text is empty".into());
    }
    let will_send = i64::from(recipients - opted_out);
    let eta = match (rate, eta) {
        (Some(rate), Some(seconds)) => format!(
            "about {} at the backend's rate limit of {rate}/s",
            humantime::format_duration(std::time::Duration::from_secs(
                seconds.ceil().max(0.0) as u64
            ))
        ),
        _ => "as fast as the workers and the gateway go (the backend has no rate limit)".into(),
    };
    let p = Preview {
        given: count(i64::from(given)),
        recipients: count(i64::from(recipients)),
        duplicates: count(i64::from(duplicates)),
        opted_out: count(i64::from(opted_out)),
        will_send: count(will_send),
        problems,
        encoding,
        segments,
        parts_total: count(will_send * i64::from(segments)),
        max_parts,
        eta,
    };
    Ok(view::render(&PreviewPage {
        chrome: Chrome::new(&console, &session, "broadcast", "Preview"),
        key: super::auth::token(),
        form,
        p,
    })?
    .into_response())
}

pub async fn send(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(form): Form<Draft>,
) -> Page {
    if form.key.len() < 16 {
        return compose_page(
            &console,
            &session,
            form,
            Some("preview the broadcast before sending it".into()),
        )
        .await;
    }
    let identities = form.identities();
    let options = crate::admin::SendOptions {
        send_at: form.send_at().map(str::to_string),
        client_key: Some(format!("console:{}", form.key)),
        ..Default::default()
    };
    let sent = crate::admin::send(
        &console.pool,
        &form.backend,
        &identities,
        &form.text,
        &options,
    )
    .await;
    let id = match sent.map_err(super::Failure::from) {
        Ok(id) => id,
        Err(super::Failure::Input(problem)) => {
            return compose_page(&console, &session, form, Some(problem)).await
        }
        Err(e) => return Err(e),
    };
    tracing::info!(user = %session.user, message = id, backend = %form.backend, recipients = identities.len(), "console: broadcast sent");
    Ok(Redirect::to(&format!("/messages/{id}?done=sent")).into_response())
}
