//! What the pages show: the templates' data, and the small formatting rules
//! every page shares (times in UTC, ages, status words).

use askama::Template;
use axum::http::StatusCode;
use axum::response::Html;
use chrono::{DateTime, Utc};

use super::auth::Session;
use super::{Failure, Shared};

/// Render a template into a page.
pub fn render(t: &impl Template) -> Result<Html<String>, Failure> {
    Ok(Html(t.render()?))
}

/// The frame of every page behind the login: who is logged in, the CSRF
/// token its forms carry, what the user may do, and which tab is open.
pub struct Chrome {
    pub title: String,
    pub nav: &'static str,
    pub user: String,
    pub csrf: String,
    pub can_change: bool,
    pub can_enqueue: bool,
}

impl Chrome {
    pub fn new(
        console: &Shared,
        session: &Session,
        nav: &'static str,
        title: impl Into<String>,
    ) -> Chrome {
        Chrome {
            title: title.into(),
            nav,
            user: session.user.clone(),
            csrf: session.csrf.clone(),
            can_change: !session.read_only,
            can_enqueue: !session.read_only && console.rights.enqueue,
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub nonce: &'a str,
    pub next: &'a str,
    pub problem: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    // The error page has no fallible parts; should it fail, say so plainly.
    Html(
        page.render()
            .unwrap_or_else(|_| format!("{status}: {message}")),
    )
}

/// "2026-12-07 06:30:12" (UTC; the pages say so in their headings).
pub fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Seconds as "3m 12s"; whole seconds.
pub fn age(seconds: Option<f64>) -> String {
    seconds
        .map(|s| {
            humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64))
                .to_string()
        })
        .unwrap_or_default()
}

/// A status letter as a word, and its CSS class.
pub fn status(direction: &str, status: &str) -> (&'static str, &'static str) {
    match (direction, status) {
        ("I", "Q") => ("queued", "wait"),
        ("I", "R") => ("handled", "ok"),
        (_, "Q") => ("queued", "wait"),
        (_, "P") => ("sending", "wait"),
        (_, "S") => ("sent", "ok"),
        (_, "D") => ("delivered", "ok"),
        (_, "R") => ("received", "ok"),
        (_, "E") => ("error", "bad"),
        _ => ("unknown", "wait"),
    }
}

/// A text cut to `n` characters for a table cell.
pub fn short(text: &str, n: usize) -> String {
    let mut chars = text.chars();
    let cut: String = chars.by_ref().take(n).collect();
    if chars.next().is_some() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// 12345 as "12,345".
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_cuts() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(-1234567), "-1,234,567");
        assert_eq!(short("héllo", 3), "hél…");
        assert_eq!(short("hé", 3), "hé");
    }
}
