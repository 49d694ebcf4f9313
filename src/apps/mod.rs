//! Apps: what answers a message.
//!
//! Apps follow RapidSMS's phases. Inbound, in order, each app in the
//! configured order:
//! - `filter`: returning `true` drops the message (no later phase runs and no
//!   reply is sent; the message still ends R);
//! - `parse`: every app may annotate the message;
//! - `handle`: the first app returning `true` handles it; later apps skip;
//! - `default`: only when no app handled it; the first returning `true` stops;
//! - `cleanup`: every app.
//!
//! Outbound, `outgoing` runs for every outbound message before each send, apps
//! in reverse order; returning `false` cancels the send (the transmissions end
//! E with "cancelled by app ...").
//!
//! An app returning an error marks the inbound message E with that error; its
//! replies are not written. Other messages of the batch are unaffected.

mod default;
mod echo;
mod keyword;
mod optout;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;

pub use default::DefaultReply;
pub use echo::Echo;
pub use keyword::Keyword;
pub use optout::OptOut;

/// An app's failure; becomes the inbound message's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AppError(pub String);

impl AppError {
    pub fn new(msg: impl Into<String>) -> Self {
        AppError(msg.into())
    }
}

/// An inbound message as apps see it.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub id: i64,
    pub backend: String,
    pub identity: String,
    pub text: String,
    /// The gateway's id for this message, if it gave one.
    pub external_id: Option<String>,
    /// Extra fields from the enqueueing INSERT (a JSON object).
    pub fields: serde_json::Value,
    /// Set by the `handle` phase when an app took the message.
    pub handled: bool,
    /// Replies queued by apps; sent to this message's connection.
    pub responses: Vec<String>,
    /// Set by the `optout` app: opt the sender out or back in. Applied with
    /// the message's R mark, in the same transaction.
    pub opt_change: Option<OptChange>,
}

/// An opt-out change for the sender's connection (backend + identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptChange {
    /// Opted out by this keyword: broadcasts and outbox skip the sender.
    Stop { keyword: String },
    /// Opted back in.
    Start { keyword: String },
}

impl IncomingMessage {
    /// Queue a reply to the sender.
    pub fn respond(&mut self, text: impl Into<String>) {
        self.responses.push(text.into());
    }
}

/// An outbound message about to be sent, as `outgoing` sees it.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub id: i64,
    pub backend: String,
    pub text: String,
    pub identities: Vec<String>,
    pub in_response_to: Option<i64>,
}

/// One app. Every phase has a default that does nothing, so an app
/// implements only the phases it needs.
#[async_trait]
pub trait App: Send + Sync {
    /// The name used in `--apps` and in error messages.
    fn name(&self) -> &str;

    async fn filter(&self, _msg: &mut IncomingMessage) -> Result<bool, AppError> {
        Ok(false)
    }
    async fn parse(&self, _msg: &mut IncomingMessage) -> Result<(), AppError> {
        Ok(())
    }
    async fn handle(&self, _msg: &mut IncomingMessage) -> Result<bool, AppError> {
        Ok(false)
    }
    async fn default(&self, _msg: &mut IncomingMessage) -> Result<bool, AppError> {
        Ok(false)
    }
    async fn cleanup(&self, _msg: &mut IncomingMessage) -> Result<(), AppError> {
        Ok(())
    }
    /// Whether this app has an outgoing phase: [`App::outgoing`] is only
    /// called on apps that say so. (Knowing that no app looks at outgoing
    /// messages lets a worker write a reply to a `database` backend already
    /// sent, in the statement that creates it.)
    fn has_outgoing(&self) -> bool {
        false
    }
    /// Look at a message about to be sent; `Ok(false)` cancels the send.
    /// Only called when [`App::has_outgoing`] is true.
    async fn outgoing(&self, _msg: &OutgoingMessage) -> Result<bool, AppError> {
        Ok(true)
    }
}

/// Settings of the built-in apps.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// The `default` app's reply.
    pub default_reply: String,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            default_reply: "Sorry, I did not understand that.".into(),
        }
    }
}

/// The configured apps, in order.
#[derive(Clone, Default)]
pub struct Pipeline {
    apps: Vec<Arc<dyn App>>,
}

/// What the inbound phases made of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Processed; these replies go to the sender.
    Replies(Vec<String>),
    /// A filter dropped it; nothing is sent.
    Filtered,
}

impl Pipeline {
    pub fn new(apps: Vec<Arc<dyn App>>) -> Self {
        Pipeline { apps }
    }

    /// Build the built-in apps named in `names` (e.g. `echo,keyword,default`).
    pub fn from_names(
        names: &[String],
        pool: &PgPool,
        settings: &AppSettings,
    ) -> crate::error::Result<Self> {
        let mut apps: Vec<Arc<dyn App>> = Vec::new();
        for name in names {
            let app: Arc<dyn App> = match name.trim() {
                "echo" => Arc::new(Echo),
                "keyword" => Arc::new(Keyword::new(pool.clone())),
                "optout" => Arc::new(OptOut::new(pool.clone())),
                "default" => Arc::new(DefaultReply::new(settings.default_reply.clone())),
                "" => continue,
                other => {
                    return Err(crate::error::Error::Config(format!(
                    "unknown app {other:?}; the built-in apps are optout, echo, keyword, default"
                )))
                }
            };
            apps.push(app);
        }
        Ok(Pipeline { apps })
    }

    /// Run the inbound phases on one message.
    pub async fn incoming(&self, msg: &mut IncomingMessage) -> Result<Verdict, AppError> {
        let ctx = |app: &Arc<dyn App>, phase: &str| {
            let name = app.name().to_string();
            let phase = phase.to_string();
            move |e: AppError| AppError(format!("app {name:?} failed in {phase}: {e}"))
        };
        for app in &self.apps {
            if app.filter(msg).await.map_err(ctx(app, "filter"))? {
                return Ok(Verdict::Filtered);
            }
        }
        for app in &self.apps {
            app.parse(msg).await.map_err(ctx(app, "parse"))?;
        }
        for app in &self.apps {
            if app.handle(msg).await.map_err(ctx(app, "handle"))? {
                msg.handled = true;
                break;
            }
        }
        if !msg.handled {
            for app in &self.apps {
                if app.default(msg).await.map_err(ctx(app, "default"))? {
                    break;
                }
            }
        }
        for app in &self.apps {
            app.cleanup(msg).await.map_err(ctx(app, "cleanup"))?;
        }
        Ok(Verdict::Replies(std::mem::take(&mut msg.responses)))
    }

    /// Run the outgoing phase (apps in reverse order). `Ok(Some(app))` means
    /// that app cancelled the send.
    pub async fn outgoing(&self, msg: &OutgoingMessage) -> Result<Option<String>, AppError> {
        for app in self.apps.iter().rev().filter(|a| a.has_outgoing()) {
            let go_on = app
                .outgoing(msg)
                .await
                .map_err(|e| AppError(format!("app {:?} failed in outgoing: {e}", app.name())))?;
            if !go_on {
                return Ok(Some(app.name().to_string()));
            }
        }
        Ok(None)
    }
}
