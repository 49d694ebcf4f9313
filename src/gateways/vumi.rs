use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use super::gateway::{self, Basic, InboundAuth};
use super::{Backend, Outcome, SendError, SendRequest};

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
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<String>,
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
            Ok(body) => Outcome::Sent {
                gateway_id: serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                    v.get("message_id")
                        .and_then(|id| id.as_str().map(str::to_string))
                }),
            },
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
