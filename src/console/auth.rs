//! Console users, their sessions, and CSRF.
//!
//! - A user's password is hashed with argon2 (`dbrouter console
//!   --set-password`), in `dbrouter.console_users` (migration 0018).
//! - Logging in makes a session: 32 random bytes in an HttpOnly, SameSite=Strict
//!   cookie; the table keeps only their SHA-256, with the session's CSRF token
//!   and its expiry.
//! - Every POST behind the login must carry the session's CSRF token as the
//!   form field `csrf` ([`require_session`] checks it before any handler
//!   runs, so no form can forget it). The login form itself is protected by a
//!   token in a cookie of its own that the form must repeat.

use std::sync::LazyLock;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::body::{to_bytes, Body};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use rand::RngCore;
use serde::Deserialize;
use sqlx::PgPool;

use super::view::{self, LoginPage};
use super::{Failure, Page, Shared};
use crate::error::{Error, Result};

const SESSION_COOKIE: &str = "dbrouter_session";
const LOGIN_COOKIE: &str = "dbrouter_login";
/// The most a console form may send (a broadcast's recipient list is the largest).
const MAX_FORM_BYTES: usize = 4 << 20;

/// The logged-in user of a request, put there by [`require_session`].
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    pub read_only: bool,
}

/// Set (or change) a console user's password; `read_only` users may look
/// but not change anything. Returns whether the user is new.
pub async fn set_password(
    pool: &PgPool,
    user: &str,
    password: &str,
    read_only: bool,
) -> Result<bool> {
    if password.chars().count() < 12 {
        return Err(Error::Input(
            "a console password must be at least 12 characters long".into(),
        ));
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|hashed| hashed)
    .map_err(|e| Error::Config(format!("hashing the password failed: {e}")))?;
    let (inserted,): (bool,) = sqlx::query_as(
        "INSERT INTO dbrouter.console_users (name, password_hash, read_only) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE
            SET password_hash = excluded.password_hash, read_only = excluded.read_only, updated_at = now()
         RETURNING xmax = 0",
    )
    .bind(user)
    .bind(&hash)
    .bind(read_only)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("console_user_name") => Error::Input(format!(
            "{user:?} is not a console user name: letters, digits, and _ . @ - (at most 64)"
        )),
        _ => Error::Db(e),
    })?;
    // A new password ends the user's sessions.
    sqlx::query("DELETE FROM dbrouter.console_sessions WHERE user_name = $1")
        .bind(user)
        .execute(pool)
        .await?;
    Ok(inserted)
}

/// 32 random bytes, hex.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Where to go after logging in: only a path of this console.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && p.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            p
        }
        _ => "/",
    }
}

/// Every route behind the login: load the session (or send the browser to
/// the login page), and refuse a POST whose `csrf` field is not the
/// session's or that a read-only user makes.
pub async fn require_session(
    State(console): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let token = cookie(request.headers(), SESSION_COOKIE).map(str::to_string);
    let session = match token {
        Some(t) => match find_session(&console.pool, &t).await {
            Ok(s) => s,
            Err(e) => return Failure::from(e).into_response(),
        },
        None => None,
    };
    let Some(mut session) = session else {
        if request.method() == Method::GET {
            let next = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let to = format!(
                "/login?next={}",
                percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC)
            );
            return Redirect::to(&to).into_response();
        }
        return Failure::Forbidden(
            "you are not logged in (or your session ended); log in again".into(),
        )
        .into_response();
    };
    session.read_only |= console.options.read_only || !console.rights.change;
    let mut request = request;
    if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
            return Failure::Input(format!(
                "the form is larger than {} MiB",
                MAX_FORM_BYTES >> 20
            ))
            .into_response();
        };
        let sent = form_field(&bytes, "csrf");
        if !sent.is_some_and(|s| same_secret(&s, &session.csrf)) {
            tracing::warn!(user = %session.user, path = %parts.uri.path(), "console: a form without this session's CSRF token was refused");
            return Failure::Forbidden(
                "this form is stale or did not come from this console (its CSRF token does not match); reload the page and try again".into(),
            )
            .into_response();
        }
        if session.read_only && parts.uri.path() != "/logout" {
            return Failure::Forbidden(
                "this console is read-only for you; nothing was changed".into(),
            )
            .into_response();
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

async fn find_session(
    pool: &PgPool,
    token: &str,
) -> std::result::Result<Option<Session>, sqlx::Error> {
    let row: Option<(String, String, bool)> = sqlx::query_as(
        "SELECT s.user_name, s.csrf, u.read_only
           FROM dbrouter.console_sessions s
           JOIN dbrouter.console_users u ON u.name = s.user_name
          WHERE s.token_sha256 = sha256(convert_to($1, 'UTF8')) AND s.expires_at > now()",
    )
    .bind(token)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(user, csrf, read_only)| Session {
        user,
        csrf,
        read_only,
    }))
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_form(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Page {
    login_page(&console, &headers, q.next.as_deref(), None, StatusCode::OK)
}

/// The login form. Its token is the browser's login cookie when it has one
/// (a second tab, or a request that led here, must not make the first tab's
/// form stale), else a new one.
fn login_page(
    console: &Shared,
    headers: &HeaderMap,
    next: Option<&str>,
    problem: Option<&str>,
    status: StatusCode,
) -> Page {
    let nonce = cookie(headers, LOGIN_COOKIE)
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .unwrap_or_else(token);
    let html = view::render(&LoginPage {
        nonce: &nonce,
        next: local_path(next),
        problem,
    })?;
    Ok((
        status,
        [(
            header::SET_COOKIE,
            set_cookie(
                LOGIN_COOKIE,
                &nonce,
                "/login",
                3600,
                console.options.secure_cookies,
            ),
        )],
        html,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    nonce: String,
    next: Option<String>,
}

/// A hash to verify against when the user does not exist, so an unknown
/// name takes as long to refuse as a wrong password.
static DECOY: LazyLock<Option<String>> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"decoy", &SaltString::generate(&mut OsRng))
        .ok()
        .map(|h| h.to_string())
});

pub async fn login(
    State(console): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Page {
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same_secret(c, &form.nonce)) {
        return login_page(
            &console,
            &headers,
            form.next.as_deref(),
            Some("the login form expired or did not come from this console; try again"),
            StatusCode::FORBIDDEN,
        );
    }
    let stored: Option<(String,)> =
        sqlx::query_as("SELECT password_hash FROM dbrouter.console_users WHERE name = $1")
            .bind(&form.user)
            .fetch_optional(&console.pool)
            .await?;
    let known = stored.is_some();
    let hash = stored
        .map(|(h,)| h)
        .or_else(|| DECOY.clone())
        .unwrap_or_default();
    let password = form.password;
    let verified = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false);
    if !(known && verified) {
        tracing::warn!(user = %form.user, "console: a login was refused");
        return login_page(
            &console,
            &headers,
            form.next.as_deref(),
            Some("wrong user name or password"),
            StatusCode::UNAUTHORIZED,
        );
    }
    let session = token();
    let ttl = console.options.session_ttl;
    sqlx::query("DELETE FROM dbrouter.console_sessions WHERE expires_at < now()")
        .execute(&console.pool)
        .await?;
    sqlx::query(
        "INSERT INTO dbrouter.console_sessions (token_sha256, user_name, csrf, expires_at)
         VALUES (sha256(convert_to($1, 'UTF8')), $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(&session)
    .bind(&form.user)
    .bind(token())
    .bind(ttl.as_secs_f64())
    .execute(&console.pool)
    .await?;
    tracing::info!(user = %form.user, "console: logged in");
    let secure = console.options.secure_cookies;
    Ok((
        // Both cookies: a plain header array would keep only the last.
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &session, "/", ttl.as_secs(), secure),
            ),
            (
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, "", "/login", 0, secure),
            ),
        ]),
        Redirect::to(local_path(form.next.as_deref())),
    )
        .into_response())
}

pub async fn logout(
    State(console): State<Shared>,
    headers: HeaderMap,
    Extension(session): Extension<Session>,
) -> Page {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        sqlx::query("DELETE FROM dbrouter.console_sessions WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))")
            .bind(token)
            .execute(&console.pool)
            .await?;
    }
    tracing::info!(user = %session.user, "console: logged out");
    Ok((
        [(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", "/", 0, console.options.secure_cookies),
        )],
        Redirect::to("/login"),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path(Some("/messages?q=a")), "/messages?q=a");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
        // Never anything a Location header cannot carry.
        assert_eq!(local_path(Some("/a\nSet-Cookie: x=1")), "/");
        assert_eq!(local_path(Some("/é")), "/");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; dbrouter_session_x=2; dbrouter_session=3"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("3"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
