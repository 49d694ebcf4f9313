//! The generic HTTP engine for the many SMS APIs, and its receive and
//! report endpoints on `dbrouter serve` (form or JSON).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::Value;

use super::gateway::{self, Basic, InboundAuth};
use super::{Backend, Outcome, SendError, SendRequest};
use crate::serve::{bad, fields_of, AppState, Inbound, Receipt, Refusal, Secret};

/// A generic engine for the many HTTP SMS APIs.
///
/// Config (every field but `url` optional):
/// ```json
/// {"url": "https://api.example.com/v1/sms", "method": "POST",
///  "headers": {"Authorization": "Bearer KEY"}, "basic": {"username": "u", "password": "p"},
///  "query": {"from": "ACME"},
///  "json": {"to": "{identities_list}", "body": "{text}", "ref": "{message_id}"},
///  "form": {"to": "{identity}", "msg": "{text}"},
///  "recipients": "one", "separator": ",", "gateway_id": "id",
///  "inbound": {"secret": "s3cret"}, "timeout": "20s"}
/// ```
/// Templates (in `query`, `form`, `json` strings and `headers`):
/// `{text}`, `{identity}` (with `"recipients": "many"`: all of the call's
/// identities joined by `separator`), `{identities}` (the same, joined),
/// `{message_id}`, `{transmission_id}` (one identity per call only) and, as
/// a whole JSON string only, `{identities_list}` (a JSON array). One of
/// `json` or `form` makes the body (none: no body). `recipients`: `one`
/// call per identity (default) or `many` identities per call (up to 100).
/// Success is a 2xx whose body contains `success_contains` (when set: some
/// APIs answer 200 with an error in the body; such an answer is a retryable
/// failure); other statuses follow the shared failure policy. The gateway's
/// id is read from the top-level JSON field `gateway_id` names.
pub struct Http {
    config: Config,
    gw: gateway::Gateway,
    method: reqwest::Method,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    basic: Option<Basic>,
    #[serde(default)]
    query: BTreeMap<String, String>,
    json: Option<Value>,
    form: Option<BTreeMap<String, String>>,
    recipients: Option<String>,
    separator: Option<String>,
    gateway_id: Option<String>,
    success_contains: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    inbound: Option<InboundAuth>,
}

const PLACEHOLDERS: &[&str] = &[
    "text",
    "identity",
    "identities",
    "message_id",
    "transmission_id",
    "identities_list",
];
const MAX_RECIPIENTS: usize = 100;

/// The values a call's templates are filled with.
struct Vars<'a> {
    text: &'a str,
    identities: Vec<&'a str>,
    separator: &'a str,
    message_id: i64,
    transmission_id: Option<i64>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> String {
        match name {
            "text" => self.text.to_string(),
            "identity" | "identities" => self.identities.join(self.separator),
            "message_id" => self.message_id.to_string(),
            "transmission_id" => self
                .transmission_id
                .map(|t| t.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn fill(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            match after.find('}') {
                Some(end) if PLACEHOLDERS.contains(&&after[..end]) => {
                    out.push_str(&self.get(&after[..end]));
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn fill_json(&self, template: &Value) -> Value {
        match template {
            Value::String(s) if s == "{identities_list}" => Value::Array(
                self.identities
                    .iter()
                    .map(|i| Value::String(i.to_string()))
                    .collect(),
            ),
            Value::String(s) => Value::String(self.fill(s)),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.fill_json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), self.fill_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Every `{name}` in `s` must be a known placeholder.
fn check_template(what: &str, s: &str) -> Result<(), String> {
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        if let Some(end) = after.find('}') {
            let name = &after[..end];
            if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !PLACEHOLDERS.contains(&name)
            {
                return Err(format!(
                    "{what}: unknown placeholder {{{name}}}; the placeholders are {}",
                    PLACEHOLDERS.join(", ")
                ));
            }
        }
        rest = after;
    }
    Ok(())
}

fn check_json(what: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) => check_template(what, s),
        Value::Array(a) => a.iter().try_for_each(|v| check_json(what, v)),
        Value::Object(o) => o.values().try_for_each(|v| check_json(what, v)),
        _ => Ok(()),
    }
}

impl Http {
    pub fn from_config(raw: &Value, timeout: Option<std::time::Duration>) -> Result<Self, String> {
        let config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| format!("invalid config for the http engine: {e}"))?;
        let gw = gateway::Gateway::new(raw, &config.url, timeout)?;
        let method = config
            .method
            .as_deref()
            .unwrap_or("POST")
            .to_ascii_uppercase();
        let method = match method.as_str() {
            "GET" | "POST" | "PUT" => reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|e| format!("config.method: {e}"))?,
            other => {
                return Err(format!(
                    "config.method must be GET, POST or PUT, not {other}"
                ))
            }
        };
        match config.recipients.as_deref() {
            None | Some("one") | Some("many") => {}
            Some(other) => {
                return Err(format!(
                    "config.recipients must be \"one\" or \"many\", not {other:?}"
                ))
            }
        }
        if config.json.is_some() && config.form.is_some() {
            return Err("config: give json or form for the body, not both".into());
        }
        for (k, v) in config.query.iter().chain(&config.headers) {
            check_template(&format!("config {k:?}"), v)?;
        }
        if let Some(form) = &config.form {
            for (k, v) in form {
                check_template(&format!("config.form.{k}"), v)?;
            }
        }
        if let Some(j) = &config.json {
            check_json("config.json", j)?;
        }
        if config.separator.as_deref() == Some("") {
            return Err("config.separator must not be empty".into());
        }
        Ok(Http { config, gw, method })
    }

    fn many(&self) -> bool {
        self.config.recipients.as_deref() == Some("many")
    }

    async fn call(&self, vars: Vars<'_>) -> Outcome {
        let c = &self.config;
        let query: Vec<(&String, String)> =
            c.query.iter().map(|(k, v)| (k, vars.fill(v))).collect();
        let mut request = self
            .gw
            .client
            .request(self.method.clone(), self.gw.url.clone())
            .query(&query);
        for (k, v) in &c.headers {
            request = request.header(k.as_str(), vars.fill(v));
        }
        if let Some(b) = &c.basic {
            request = request.basic_auth(&b.username, Some(&b.password));
        }
        if let Some(j) = &c.json {
            request = request.json(&vars.fill_json(j));
        } else if let Some(form) = &c.form {
            let form: Vec<(&String, String)> =
                form.iter().map(|(k, v)| (k, vars.fill(v))).collect();
            request = request.form(&form);
        }
        match self.gw.send(request, vars.text).await {
            Ok(body)
                if c.success_contains
                    .as_ref()
                    .is_some_and(|want| !body.contains(want.as_str())) =>
            {
                let excerpt: String = body.trim().chars().take(200).collect();
                self.gw.scrubbed(
                    Outcome::retryable(format!(
                        "{} answered 2xx without {:?}: {excerpt}",
                        self.gw.shown(),
                        c.success_contains.as_deref().unwrap_or_default()
                    )),
                    vars.text,
                )
            }
            Ok(body) => Outcome::sent(c.gateway_id.as_ref().and_then(|field| {
                let v: Value = serde_json::from_str(&body).ok()?;
                match v.get(field)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            })),
            Err(o) => o,
        }
    }
}

/// Why this API cannot be given `identity`, if it cannot: the separator
/// inside one identity would make it two recipients.
fn refused(identity: &str, separator: &str) -> Option<Outcome> {
    identity.contains(separator).then(|| {
        Outcome::permanent(format!(
            "identity {identity:?} contains the recipient separator {separator:?}, which the gateway reads as a second recipient; not sent"
        ))
    })
}

#[async_trait]
impl Backend for Http {
    async fn send(&self, req: &SendRequest) -> Result<Vec<Outcome>, SendError> {
        let separator = self.config.separator.as_deref().unwrap_or(",");
        let mut out: Vec<Option<Outcome>> = req
            .recipients
            .iter()
            .map(|r| refused(&r.identity, separator))
            .collect();
        let fine: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
        if self.many() {
            for chunk in fine.chunks(MAX_RECIPIENTS) {
                let vars = Vars {
                    text: &req.text,
                    identities: chunk
                        .iter()
                        .map(|&i| req.recipients[i].identity.as_str())
                        .collect(),
                    separator,
                    message_id: req.message_id,
                    transmission_id: None,
                };
                let o = self.call(vars).await;
                for &i in chunk {
                    out[i] = Some(o.clone());
                }
            }
        } else {
            let calls: Vec<_> = fine
                .iter()
                .map(|&i| {
                    let r = &req.recipients[i];
                    self.call(Vars {
                        text: &req.text,
                        identities: vec![r.identity.as_str()],
                        separator,
                        message_id: req.message_id,
                        transmission_id: Some(r.transmission_id),
                    })
                })
                .collect();
            for (i, o) in fine.iter().zip(gateway::in_order(calls).await) {
                out[*i] = Some(o);
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::permanent("not sent")))
            .collect())
    }
}

// ---------------------------------------------------------------------------
// Receiving: the routes `dbrouter serve` gives this gateway.
// ---------------------------------------------------------------------------

/// The generic engine's endpoints: form or JSON.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/http/{backend}/receive", post(receive))
        .route("/http/{backend}/report", post(report))
}

async fn receive(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    Query(s): Query<Secret>,
    body: Bytes,
) -> Result<Response, Refusal> {
    st.authorize(&backend, "http", &headers, s.secret.as_deref())
        .await?;
    let f = fields_of(&headers, &body)?;
    let identity = f
        .get("identity")
        .cloned()
        .ok_or_else(|| bad("identity is missing"))?;
    let text = f
        .get("text")
        .cloned()
        .ok_or_else(|| bad("text is missing"))?;
    st.enqueue(Inbound {
        backend,
        identity,
        text,
        external_id: f.get("external_id").cloned().filter(|s| !s.is_empty()),
        fields: Value::Object(serde_json::Map::new()),
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn report(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    Query(s): Query<Secret>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let b = st
        .authorize(&backend, "http", &headers, s.secret.as_deref())
        .await?;
    let f = fields_of(&headers, &body)?;
    let transmission_id = match f.get("transmission_id") {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| bad("transmission_id is not a number"))?,
        ),
        None => None,
    };
    let gateway_id = f.get("gateway_id").cloned();
    if transmission_id.is_none() && gateway_id.is_none() {
        return Err(bad("give transmission_id or gateway_id"));
    }
    let outcome = match f.get("status").map(String::as_str) {
        Some("delivered") => "D",
        Some("failed") => "E",
        Some("buffered") | Some("pending") | Some("accepted") => "B",
        other => {
            return Err(bad(format!(
                "status must be delivered, failed or buffered, not {other:?}"
            )))
        }
    };
    st.record(Receipt {
        backend_id: b.id,
        transmission_id,
        gateway_id,
        outcome,
        detail: f.get("detail").cloned(),
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_unknown_placeholders_are_refused() {
        let v = Vars {
            text: "hi {there}",
            identities: vec!["+1", "+2"],
            separator: ";",
            message_id: 7,
            transmission_id: None,
        };
        assert_eq!(
            v.fill("to={identities}&m={message_id}&t={text}"),
            "to=+1;+2&m=7&t=hi {there}"
        );
        assert_eq!(
            v.fill_json(&serde_json::json!({"to": "{identities_list}", "x": ["{text}", 3]})),
            serde_json::json!({"to": ["+1", "+2"], "x": ["hi {there}", 3]})
        );
        assert!(check_template("q", "{txt}")
            .unwrap_err()
            .contains("unknown placeholder {txt}"));
        assert!(check_template("q", "{\"a\": 1} {text}").is_ok());
    }
}
