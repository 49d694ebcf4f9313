//! Kannel: sending through its `sendsms` interface, and what `dbrouter
//! serve` receives from it (messages by get-url or post-url, delivery
//! reports by dlr-url).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::Value;

use super::gateway::{self, InboundAuth};
use super::{Backend, Outcome, SendError, SendRequest};
use crate::charset;
use crate::gsm;
use crate::serve::{bad, text_fields, AppState, Inbound, Receipt, Refusal, TextSet};

/// Kannel's `sendsms` HTTP interface (a GET per call).
///
/// Each message goes as UTF-8 with `coding=0` (GSM 7-bit) when every
/// character is in the GSM 03.38 alphabet or its extension table, else
/// `coding=2` (UCS-2), so emoji and other scripts arrive intact; `coding`
/// in the config pins one for every message, `charset` names another
/// encoding of the text than UTF-8 (rarely right: dbrouter sends UTF-8).
///
/// Config:
/// ```json
/// {"url": "http://kannel:13013/cgi-bin/sendsms", "username": "u", "password": "p",
///  "from": "1234", "smsc": "vodacom",
///  "params": {"priority": "1"},
///  "dlr_url": "http://dbrouter:8080/kannel/sms/dlr?secret=s3cret", "dlr_mask": 31,
///  "inbound": {"secret": "s3cret"}, "timeout": "20s"}
/// ```
/// With `dlr_url`, Kannel is asked for delivery reports: one call per
/// identity, each with a `dlr-url` carrying its transmission id (`t=`) and
/// Kannel's report type (`type=%d`), so every report matches exactly one
/// transmission. Without it, one call carries up to 100 identities (Kannel
/// sends to each number of a space-separated `to`).
pub struct Kannel {
    config: Config,
    gw: gateway::Gateway,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    username: Option<String>,
    password: Option<String>,
    from: Option<String>,
    smsc: Option<String>,
    charset: Option<String>,
    coding: Option<u8>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    dlr_url: Option<String>,
    dlr_mask: Option<u8>,
    #[serde(default)]
    #[allow(dead_code)]
    inbound: Option<InboundAuth>,
}

/// Identities per call without delivery reports.
const MAX_RECIPIENTS: usize = 100;

impl Kannel {
    pub fn from_config(raw: &Value, timeout: Option<std::time::Duration>) -> Result<Self, String> {
        let config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| format!("invalid config for the kannel engine: {e}"))?;
        let gw = gateway::Gateway::new(raw, &config.url, timeout)?;
        if let Some(d) = &config.dlr_url {
            gateway::parse_url("config.dlr_url", d)?;
        }
        if let Some(c) = config.coding {
            if c > 2 {
                return Err(format!("config.coding must be 0, 1 or 2, got {c}"));
            }
        }
        Ok(Kannel { config, gw })
    }

    /// Kannel's `dlr-url` for one transmission.
    fn dlr_url(&self, base: &str, transmission_id: i64) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}t={transmission_id}&type=%d")
    }

    async fn call(&self, to: &[&str], text: &str, dlr: Option<String>) -> Result<(), Outcome> {
        let mut q: Vec<(&str, String)> = vec![("to", to.join(" ")), ("text", text.to_string())];
        let c = &self.config;
        for (k, v) in [
            ("username", &c.username),
            ("password", &c.password),
            ("from", &c.from),
            ("smsc", &c.smsc),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        // The text goes as UTF-8 (what reqwest encodes); the coding is
        // chosen per message unless the backend pins one.
        let coding = c.coding.unwrap_or(if gsm::is_gsm7(text) { 0 } else { 2 });
        q.push(("coding", coding.to_string()));
        q.push((
            "charset",
            c.charset.clone().unwrap_or_else(|| "UTF-8".into()),
        ));
        if let Some(dlr) = dlr {
            q.push(("dlr-mask", c.dlr_mask.unwrap_or(31).to_string()));
            q.push(("dlr-url", dlr));
        }
        for (k, v) in &c.params {
            q.push((k.as_str(), v.clone()));
        }
        let request = self.gw.client.get(self.gw.url.clone()).query(&q);
        self.gw.send(request, text).await.map(|_| ())
    }
}

/// Why Kannel cannot be given this identity, if it cannot: Kannel splits
/// `to` at spaces, so an identity holding one would reach two people.
fn refused(identity: &str) -> Option<Outcome> {
    identity.contains(char::is_whitespace).then(|| {
        Outcome::permanent(format!(
            "identity {identity:?} contains whitespace, which Kannel reads as a second recipient; not sent"
        ))
    })
}

#[async_trait]
impl Backend for Kannel {
    async fn send(&self, req: &SendRequest) -> Result<Vec<Outcome>, SendError> {
        let sent = || Outcome::sent(None);
        if let Some(base) = &self.config.dlr_url {
            // One call per identity, several in flight, outcomes in order.
            let calls: Vec<_> = req
                .recipients
                .iter()
                .map(|r| async move {
                    if let Some(o) = refused(&r.identity) {
                        return o;
                    }
                    let dlr = self.dlr_url(base, r.transmission_id);
                    match self.call(&[&r.identity], &req.text, Some(dlr)).await {
                        Ok(()) => sent(),
                        Err(o) => o,
                    }
                })
                .collect();
            return Ok(gateway::in_order(calls).await);
        }
        let mut out: Vec<Option<Outcome>> = req
            .recipients
            .iter()
            .map(|r| refused(&r.identity))
            .collect();
        let fine: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
        for chunk in fine.chunks(MAX_RECIPIENTS) {
            let to: Vec<&str> = chunk
                .iter()
                .map(|&i| req.recipients[i].identity.as_str())
                .collect();
            let o = match self.call(&to, &req.text, None).await {
                Ok(()) => sent(),
                Err(o) => o,
            };
            for &i in chunk {
                out[i] = Some(o.clone());
            }
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_else(sent)).collect())
    }
}

// ---------------------------------------------------------------------------
// Receiving: the routes `dbrouter serve` gives this gateway.
// ---------------------------------------------------------------------------

/// Kannel's get-url/post-url and its dlr-url.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/kannel/{backend}/receive",
            get(receive_get).post(receive_post),
        )
        .route("/kannel/{backend}/dlr", get(dlr))
}

/// An inbound message as Kannel sends it, its text already decoded.
#[derive(Debug)]
struct KannelMessage {
    sender: Option<String>,
    text: Option<String>,
    id: Option<String>,
    to: Option<String>,
    secret: Option<String>,
}

async fn kannel_receive(
    st: &AppState,
    backend: &str,
    headers: &HeaderMap,
    m: KannelMessage,
) -> Result<Response, Refusal> {
    st.authorize(backend, "kannel", headers, m.secret.as_deref())
        .await?;
    let sender = m.sender.ok_or_else(|| {
        bad("sender is missing (get-url: sender=%p; post-url: send-sender = true)")
    })?;
    let text = m
        .text
        .ok_or_else(|| bad("text is missing (get-url: text=%b)"))?;
    let mut fields = serde_json::Map::new();
    if let Some(to) = m.to {
        fields.insert("to".into(), Value::String(to));
    }
    st.enqueue(Inbound {
        backend: backend.to_string(),
        identity: sender,
        text,
        external_id: m.id.filter(|s| !s.is_empty()),
        fields: Value::Object(fields),
    })
    .await?;
    // An empty body: Kannel would text a body back to the sender.
    Ok(StatusCode::OK.into_response())
}

/// get-url: every field in the query; the text in the set `%C` names
/// (`charset=`), or by `%c` (`coding=`: 2 is UCS-2), else UTF-8.
async fn receive_get(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let mut q = text_fields(query.unwrap_or_default().as_bytes(), TextSet::FromFields)?;
    let m = KannelMessage {
        sender: q.remove("sender"),
        text: q.remove("text"),
        id: q.remove("id"),
        to: q.remove("to"),
        secret: q.remove("secret"),
    };
    kannel_receive(&st, &backend, &headers, m).await
}

/// post-url: the text is the body, in the set its Content-Type names (or
/// by `X-Kannel-Coding`); the sender in `X-Kannel-From` (send-sender =
/// true), or any field in the query as with get-url.
async fn receive_post(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let mut q = text_fields(query.unwrap_or_default().as_bytes(), TextSet::FromFields)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let charset = charset::content_type_charset(&content_type)
        .map(str::to_string)
        .or_else(|| q.get("charset").cloned());
    let coding = header("x-kannel-coding").or_else(|| q.get("coding").cloned());
    let enc = charset::named(charset.as_deref(), coding.as_deref()).map_err(bad)?;
    let text = charset::decode(&body, enc, "the body").map_err(bad)?;
    let m = KannelMessage {
        sender: q.remove("sender").or_else(|| header("x-kannel-from")),
        text: Some(text),
        id: q.remove("id"),
        to: q.remove("to").or_else(|| header("x-kannel-to")),
        secret: q.remove("secret"),
    };
    kannel_receive(&st, &backend, &headers, m).await
}

#[derive(Debug, Deserialize)]
struct KannelDlr {
    t: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    answer: Option<String>,
    secret: Option<String>,
}

async fn dlr(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    Query(d): Query<KannelDlr>,
) -> Result<Response, Refusal> {
    let b = st
        .authorize(&backend, "kannel", &headers, d.secret.as_deref())
        .await?;
    let tid: i64 =
        d.t.as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("t (the transmission id) is missing or not a number"))?;
    let kind: u32 = d
        .kind
        .as_deref()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("type (Kannel's %d) is missing or not a number"))?;
    // Kannel's report types: 1 delivered, 2 failed, 4 buffered, 8 accepted
    // by the SMSC, 16 rejected by the SMSC.
    let outcome = match kind {
        1 => "D",
        2 | 16 => "E",
        4 | 8 => "B",
        other => return Err(bad(format!("unknown Kannel report type {other}"))),
    };
    st.record(Receipt {
        backend_id: b.id,
        transmission_id: Some(tid),
        gateway_id: None,
        outcome,
        detail: d.answer.filter(|a| !a.is_empty()),
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}
