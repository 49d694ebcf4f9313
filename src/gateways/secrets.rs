//! Secrets in a backend's config: which values they are, masked for
//! display (`backend list`), and scrubbed out of error texts before those
//! are stored (`attempts.error`, `transmissions.last_error`) or logged.
//!
//! A config value is secret when its key names one (password, secret,
//! token, key, auth, signature, credential…), when it is a header (an
//! `Authorization: Bearer …` is the usual API key), or when it is a query
//! value or the password of a URL (`dlr_url`'s `?secret=`). dbrouter
//! decides this by name because gateways' configs are free-form: a
//! deployment that keeps a key under an innocent name (`"from"`) should
//! rename it.

use serde_json::Value;

/// The config with every secret reference resolved: a value written
/// `{"env": "NAME"}` becomes that environment variable of the process
/// reading the config, `{"file": "/path"}` that file's contents (one
/// trailing newline dropped), so a credential need not be stored in the
/// database at all. Resolved by each worker when it loads a backend (and
/// by `serve` for `inbound`); `backend list` and `status` show the
/// reference, never the value. An object whose only key is `env` or `file`
/// is a reference wherever it stands.
pub fn resolve(config: &Value) -> Result<Value, String> {
    resolve_at(config, "config")
}

fn resolve_at(v: &Value, path: &str) -> Result<Value, String> {
    // (an object whose only key is env or file, with a string: a reference)
    let reference = match v {
        Value::Object(o) if o.len() == 1 => o.iter().next(),
        _ => None,
    };
    match (reference.map(|(k, r)| (k.as_str(), r)), v) {
        (Some(("env", Value::String(name))), _) => std::env::var(name).map(Value::String).map_err(|_| {
            format!("{path}: the environment variable {name} (named by {{\"env\": \"{name}\"}}) is not set in this process; set it where the worker and serve run")
        }),
        (Some(("file", Value::String(file))), _) => std::fs::read_to_string(file)
            .map(|s| Value::String(s.strip_suffix('\n').unwrap_or(&s).to_string()))
            .map_err(|e| format!("{path}: cannot read the file {file} (named by {{\"file\": ...}}): {e}")),
        (_, Value::Object(o)) => Ok(Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_at(v, &format!("{path}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        )),
        (_, Value::Array(a)) => Ok(Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| resolve_at(v, &format!("{path}[{i}]")))
                .collect::<Result<_, String>>()?,
        )),
        (_, other) => Ok(other.clone()),
    }
}

/// What a masked value shows.
pub const MASK: &str = "***";
/// Values shorter than this are not scrubbed from errors (they would mangle
/// ordinary words); they are still masked in `backend list`.
const MIN_SCRUBBED: usize = 4;

fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "pass",
        "secret",
        "token",
        "key",
        "auth",
        "signature",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// The config with every secret replaced by [`MASK`].
pub fn masked(config: &Value) -> Value {
    mask(config, None, false)
}

fn mask(v: &Value, key: Option<&str>, in_headers: bool) -> Value {
    match v {
        Value::String(s) if in_headers || key.is_some_and(secret_key) => {
            Value::String(if s.is_empty() {
                String::new()
            } else {
                MASK.into()
            })
        }
        Value::String(s) => Value::String(masked_url(s).unwrap_or_else(|| s.clone())),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let headers = in_headers || k.eq_ignore_ascii_case("headers");
                    (k.clone(), mask(v, Some(k), headers))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| mask(x, key, in_headers)).collect()),
        other => other.clone(),
    }
}

/// A URL with its password and query values masked; None if `s` is not an
/// absolute http(s) URL with something to mask.
fn masked_url(s: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(s).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let mut changed = false;
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
        changed = true;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), MASK.to_string()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    changed.then(|| url.to_string())
}

/// Every secret value of a config (see the module doc), for [`scrub`].
pub fn of(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(config, None, false, &mut out);
    out.retain(|s| s.chars().count() >= MIN_SCRUBBED);
    // Longest first, so a secret that contains another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn collect(v: &Value, key: Option<&str>, in_headers: bool, out: &mut Vec<String>) {
    match v {
        Value::String(s) if in_headers || key.is_some_and(secret_key) => {
            out.push(s.clone());
            // "Bearer KEY": the key alone too.
            if let Some((_, rest)) = s.split_once(' ') {
                out.push(rest.trim().to_string());
            }
        }
        Value::String(s) => {
            if let Ok(url) = reqwest::Url::parse(s) {
                out.extend(url.password().map(str::to_string));
                out.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
            }
        }
        Value::Object(o) => {
            for (k, v) in o {
                let headers = in_headers || k.eq_ignore_ascii_case("headers");
                collect(v, Some(k), headers, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, key, in_headers, out)),
        _ => {}
    }
}

/// `error` without the secrets, the message's text and the query strings
/// of any URL in it: what may be stored and shown.
pub fn scrub(error: &str, secrets: &[String], text: &str) -> String {
    let mut out = strip_queries(error);
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    if text.chars().count() >= MIN_SCRUBBED && out.contains(text) {
        out = out.replace(text, "<message text>");
    }
    out
}

/// Every `scheme://…?query` in `s` with its query (and fragment) cut.
fn strip_queries(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | '<'))
            .map_or(rest.len(), |e| at + e);
        let url = &rest[..end];
        match url.find(['?', '#']) {
            Some(q) if q > at => out.push_str(&url[..q]),
            _ => out.push_str(url),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({
            "url": "http://kannel:13013/cgi-bin/sendsms",
            "username": "tester", "password": "hunter22", "from": "ACME",
            "dlr_url": "http://u:pw12@dbrouter:8080/kannel/sms/dlr?secret=s3cret",
            "headers": {"Authorization": "Bearer sk-live-123"},
            "basic": {"username": "u", "password": "letmein"},
            "query": {"api_key": "k-999", "sender": "ACME"},
            "inbound": {"secret": "inb0und"}
        })
    }

    #[test]
    fn masks_secrets_and_keeps_the_rest() {
        let m = masked(&config());
        assert_eq!(m["password"], "***");
        assert_eq!(m["username"], "tester");
        assert_eq!(m["from"], "ACME");
        assert_eq!(m["url"], "http://kannel:13013/cgi-bin/sendsms");
        assert_eq!(
            m["dlr_url"],
            "http://u:***@dbrouter:8080/kannel/sms/dlr?secret=***"
        );
        assert_eq!(m["headers"]["Authorization"], "***");
        assert_eq!(m["basic"]["password"], "***");
        assert_eq!(m["query"]["api_key"], "***");
        assert_eq!(m["query"]["sender"], "ACME");
        assert_eq!(m["inbound"]["secret"], "***");
        let shown = m.to_string();
        for s in [
            "hunter22", "s3cret", "pw12", "sk-live", "letmein", "k-999", "inb0und",
        ] {
            assert!(!shown.contains(s), "{s} in {shown}");
        }
    }

    #[test]
    fn scrubs_secrets_text_and_query_strings_from_errors() {
        let secrets = of(&config());
        let e = "request failed (error sending request for url \
                 (http://kannel:13013/cgi-bin/sendsms?to=%2B1&password=x)): \
                 gateway said: bad key sk-live-123 for 'hello there'";
        assert_eq!(
            scrub(e, &secrets, "hello there"),
            "request failed (error sending request for url \
             (http://kannel:13013/cgi-bin/sendsms)): \
             gateway said: bad key *** for '<message text>'"
        );
        assert_eq!(
            scrub("HTTP 500 from http://gw/x", &secrets, "hi"),
            "HTTP 500 from http://gw/x"
        );
    }
}
