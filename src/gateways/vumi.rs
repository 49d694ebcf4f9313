//! Vumi: sending through its HTTP API, and what `dbrouter serve` receives
//! from it (messages and events).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::gateway::{self, Basic, InboundAuth};
use super::{Backend, Outcome, SendError, SendRequest};
use crate::serve::{bad, json_body, text_field, AppState, Inbound, Receipt, Refusal, Secret};

/// Vumi's HTTP API: a JSON POST per identity,
/// `{"content": ..., "to_addr": [identity], "in_reply_to": ...}`.
///
/// Config:
/// ```json
/// {"url": "http://vumi:9000/send", "basic": {"username": "u", "password": "p"},
///  "inbound": {"secret": "s3cret"}, "timeout": "20s"}
/// ```
/// `in_reply_to` carries the gateway id of the message a reply answers, when
/// it has one. One call per identity, so the `message_id` Vumi answers with
/// is one transmission's gateway id, and Vumi's events (ack, nack,
/// delivery_report) for it match exactly that transmission.
pub struct Vumi {
    config: Config,
    gw: gateway::Gateway,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    basic: Option<Basic>,
    #[serde(default)]
    #[allow(dead_code)]
    inbound: Option<InboundAuth>,
}

impl Vumi {
    pub fn from_config(raw: &Value, timeout: Option<std::time::Duration>) -> Result<Self, String> {
        let config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| format!("invalid config for the vumi engine: {e}"))?;
        let gw = gateway::Gateway::new(raw, &config.url, timeout)?;
        Ok(Vumi { config, gw })
    }

    async fn call(&self, identity: &str, req: &SendRequest) -> Outcome {
        let mut body = json!({"content": req.text, "to_addr": [identity]});
        if let Some(ext) = &req.reply_to_external_id {
            body["in_reply_to"] = json!(ext);
        }
        let mut request = self.gw.client.post(self.gw.url.clone()).json(&body);
        if let Some(b) = &self.config.basic {
            request = request.basic_auth(&b.username, Some(&b.password));
        }
        match self.gw.send(request, &req.text).await {
            Ok(body) => Outcome::sent(serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v.get("message_id")
                    .and_then(|id| id.as_str().map(str::to_string))
            })),
            Err(o) => o,
        }
    }
}

#[async_trait]
impl Backend for Vumi {
    async fn send(&self, req: &SendRequest) -> Result<Vec<Outcome>, SendError> {
        let calls: Vec<_> = req
            .recipients
            .iter()
            .map(|r| self.call(&r.identity, req))
            .collect();
        Ok(gateway::in_order(calls).await)
    }
}

// ---------------------------------------------------------------------------
// Receiving: the routes `dbrouter serve` gives this gateway.
// ---------------------------------------------------------------------------

/// Vumi's push URL (messages) and event URL.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/vumi/{backend}/message", post(message))
        .route("/vumi/{backend}/event", post(event))
}

async fn message(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    Query(s): Query<Secret>,
    body: Bytes,
) -> Result<Response, Refusal> {
    st.authorize(&backend, "vumi", &headers, s.secret.as_deref())
        .await?;
    let v = json_body(&body)?;
    let from = text_field(&v, "from_addr").ok_or_else(|| bad("from_addr is missing"))?;
    let content = match v.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        _ => return Err(bad("content must be a string")),
    };
    let mut fields = serde_json::Map::new();
    for k in [
        "to_addr",
        "transport_name",
        "transport_type",
        "session_event",
    ] {
        if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
            fields.insert(k.into(), x.clone());
        }
    }
    st.enqueue(Inbound {
        backend,
        identity: from,
        text: content,
        external_id: text_field(&v, "message_id"),
        fields: Value::Object(fields),
    })
    .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response())
}

async fn event(
    State(st): State<Arc<AppState>>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    Query(s): Query<Secret>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let b = st
        .authorize(&backend, "vumi", &headers, s.secret.as_deref())
        .await?;
    let v = json_body(&body)?;
    let id = text_field(&v, "user_message_id").ok_or_else(|| bad("user_message_id is missing"))?;
    let kind = text_field(&v, "event_type").unwrap_or_default();
    let (outcome, detail) = match kind.as_str() {
        "ack" => ("B", None),
        "nack" => ("E", text_field(&v, "nack_reason")),
        "delivery_report" => match text_field(&v, "delivery_status").as_deref() {
            Some("delivered") => ("D", None),
            Some("failed") => ("E", Some("delivery_report: failed".to_string())),
            Some("pending") => ("B", None),
            other => return Err(bad(format!("unknown delivery_status {other:?}"))),
        },
        other => return Err(bad(format!("unknown event_type {other:?}"))),
    };
    st.record(Receipt {
        backend_id: b.id,
        transmission_id: None,
        gateway_id: Some(id),
        outcome,
        detail,
    })
    .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response())
}
