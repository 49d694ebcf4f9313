//! What the HTTP engines (kannel, vumi, http) share: one pooled client per
//! backend, and one reading of a gateway's answer into an [`Outcome`].
//!
//! Failure policy:
//! - 2xx: sent;
//! - 401, 403: our credentials are wrong: the transmissions go back to the
//!   queue and the backend is paused (a broadcast is not failed because of a
//!   typo in a password);
//! - 429 (and 408 with a Retry-After): throttled: queued again for after the
//!   Retry-After (10 s when a 429 gives none), the backend waits as long;
//! - 400, 404, 413, 422 and other 4xx: permanent: E at once, no retry;
//! - 5xx, other statuses, timeouts, refused or broken connections:
//!   retryable, with the usual backoff.
//!
//! Errors name what happened (status and a short body excerpt, timeout,
//! connection refused) and the gateway's address without its query string,
//! which may hold credentials; every error is scrubbed of the config's
//! secrets and the message's text ([`super::secrets`]) before it is stored.
//!
//! A gateway cannot make a worker misbehave: redirects are not followed (a
//! 3xx is a failure naming the redirect, never a send), and at most
//! [`BODY_CAP`] bytes of an answer are read.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode};
use serde::Deserialize;

use super::Outcome;

/// Retry-After for a 429 that gives none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Body excerpts in errors, in characters.
const EXCERPT: usize = 200;

/// Calls of one message in flight at once (one call per identity).
const CALLS_IN_FLIGHT: usize = 16;
/// The most of a gateway's answer that is read; the rest is dropped with
/// the connection. Every gateway answers a send in far less.
pub const BODY_CAP: usize = 64 * 1024;

/// One backend's gateway: its client, address and the secrets to keep out
/// of errors.
pub struct Gateway {
    pub client: Client,
    pub url: reqwest::Url,
    secrets: Vec<String>,
}

impl Gateway {
    /// From a backend's config: `config.url` and the shared settings.
    pub fn new(
        config: &serde_json::Value,
        url: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, String> {
        Ok(Gateway {
            client: client(timeout)?,
            url: parse_url("config.url", url)?,
            secrets: super::secrets::of(config),
        })
    }

    /// Send one request carrying `text`: the answer's body on success,
    /// otherwise the outcome, its error scrubbed.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        text: &str,
    ) -> Result<String, Outcome> {
        send(request, &self.url)
            .await
            .map_err(|o| self.scrubbed(o, text))
    }

    /// `o` with its error scrubbed of secrets and `text`.
    pub fn scrubbed(&self, o: Outcome, text: &str) -> Outcome {
        let clean = |e: String| super::secrets::scrub(&e, &self.secrets, text);
        match o {
            Outcome::Sent { .. } => o,
            Outcome::Failed { error, permanent } => Outcome::Failed {
                error: clean(error),
                permanent,
            },
            Outcome::Throttled { error, retry_after } => Outcome::Throttled {
                error: clean(error),
                retry_after,
            },
            Outcome::Unauthorized { error } => Outcome::Unauthorized {
                error: clean(error),
            },
        }
    }

    /// The address to show in errors.
    pub fn shown(&self) -> String {
        shown(&self.url)
    }
}

/// Run per-identity calls, several at once, outcomes in their order.
pub async fn in_order<F>(calls: Vec<F>) -> Vec<Outcome>
where
    F: std::future::Future<Output = Outcome>,
{
    use futures::stream::{self, StreamExt};
    stream::iter(calls)
        .buffered(CALLS_IN_FLIGHT)
        .collect()
        .await
}

/// A pooled client for one backend; `timeout` bounds every request.
pub fn client(timeout: Option<Duration>) -> Result<Client, String> {
    let mut b = Client::builder()
        .user_agent(concat!("dbrouter/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(32);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A URL from config: must parse and be http(s).
pub fn parse_url(what: &str, s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| {
        format!(
            "{what} {:?} is not a URL: {e}",
            super::secrets::scrub(s, &[], "")
        )
    })?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("{what} must be http or https, not {other}")),
    }
}

/// The address to show in errors: no query string, no credentials.
pub fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// One request's result: the body on success, the outcome otherwise.
pub async fn send(request: reqwest::RequestBuilder, url: &reqwest::Url) -> Result<String, Outcome> {
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Err(transport_error(e, url)),
    };
    let status = response.status();
    let headers = response.headers().clone();
    // At most BODY_CAP bytes; a body cut short or broken off still counts
    // for its status (the gateway has answered).
    let mut body = Vec::new();
    while body.len() < BODY_CAP {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(BODY_CAP - body.len())])
            }
            Ok(None) | Err(_) => break,
        }
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    match classify(status, &headers, &body, url) {
        None => Ok(body),
        Some(o) => Err(o),
    }
}

/// A request that got no answer. reqwest's own text names the whole
/// request URL (query string, credentials and all): it is dropped, and the
/// error is told from its kind and its causes.
fn transport_error(e: reqwest::Error, url: &reqwest::Url) -> Outcome {
    let at = shown(url);
    let e = e.without_url();
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    let why = causes.last().cloned().unwrap_or_else(|| e.to_string());
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        format!("could not connect ({why})")
    } else {
        format!("request failed ({why})")
    };
    Outcome::retryable(format!("{what}: {at}"))
}

/// `None` for success; otherwise how the transmissions fare.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    url: &reqwest::Url,
) -> Option<Outcome> {
    if status.is_success() {
        return None;
    }
    let excerpt: String = body.trim().chars().take(EXCERPT).collect();
    let error = if excerpt.is_empty() {
        format!("HTTP {} from {}", status.as_u16(), shown(url))
    } else {
        format!("HTTP {} from {}: {excerpt}", status.as_u16(), shown(url))
    };
    if status.is_redirection() {
        let to = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| super::secrets::scrub(l, &[], ""))
            .unwrap_or_default();
        return Some(Outcome::retryable(format!(
            "HTTP {} from {} redirects to {to:?}; dbrouter does not follow redirects: set config.url to the final address",
            status.as_u16(),
            shown(url)
        )));
    }
    let retry_after = retry_after(headers);
    Some(match status.as_u16() {
        401 | 403 => Outcome::Unauthorized { error },
        429 => Outcome::throttled(error, retry_after.unwrap_or(DEFAULT_RETRY_AFTER)),
        408 => match retry_after {
            Some(after) => Outcome::throttled(error, after),
            None => Outcome::retryable(error),
        },
        400..=499 => Outcome::permanent(error),
        _ => Outcome::retryable(error),
    })
}

/// Retry-After as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// HTTP basic auth from config (`"username"` and `"password"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basic {
    pub username: String,
    pub password: String,
}

/// How the gateway authenticates to `dbrouter serve` (inbound messages and
/// delivery reports): a shared secret (`?secret=` or the
/// `X-Dbrouter-Secret` header) or basic auth.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InboundAuth {
    pub secret: Option<String>,
    pub basic: Option<Basic>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> reqwest::Url {
        reqwest::Url::parse("http://user:pw@gw.example:13013/cgi-bin/sendsms?password=hunter2")
            .unwrap()
    }

    #[test]
    fn statuses_map_to_the_failure_policy() {
        let h = HeaderMap::new();
        let u = url();
        assert_eq!(classify(StatusCode::ACCEPTED, &h, "0: Accepted", &u), None);
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &h, "", &u),
            Some(Outcome::Unauthorized { .. })
        ));
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, &h, "bad number", &u),
            Some(Outcome::Failed {
                permanent: true,
                ..
            })
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h, "", &u),
            Some(Outcome::Failed {
                permanent: false,
                ..
            })
        ));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, "", &u).and_then(|o| o.throttle()),
            Some(DEFAULT_RETRY_AFTER)
        );
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, &h, "", &u).and_then(|o| o.throttle()),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn errors_never_show_credentials() {
        let o = classify(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            "  missing to  ",
            &url(),
        );
        let Some(Outcome::Failed { error, .. }) = o else {
            panic!("{o:?}")
        };
        assert_eq!(
            error,
            "HTTP 400 from http://gw.example:13013/cgi-bin/sendsms: missing to"
        );
    }
}
