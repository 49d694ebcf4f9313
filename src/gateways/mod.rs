//! Gateways: where messages go and where they come from. One module per
//! gateway holds its engine (send) and, for those that talk back, the
//! routes `dbrouter serve` gives it (receive, delivery reports).
//!
//! A backend engine implements [`Backend::send`]: one text to some identities
//! of one message, returning an [`Outcome`] per identity, in order. Backends
//! are rows in `dbrouter.backends`; [`build`] turns a row's engine and config
//! into an implementation, or a configuration error that names the problem.

mod console;
mod database;
pub mod gateway;
pub mod http;
pub mod kannel;
pub mod secrets;
pub mod smpp;
pub mod vumi;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::PgPool;

pub use console::Console;
pub use database::Database;
pub use http::Http;
pub use kannel::Kannel;
pub use vumi::Vumi;

/// One identity of a send call.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub transmission_id: i64,
    pub identity: String,
    /// 1 for the first attempt.
    pub attempt: i32,
}

/// One send call: one message's text to some of its identities.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub backend: String,
    /// The claimed batch this call belongs to (its lease token).
    pub batch: i64,
    pub message_id: i64,
    pub text: String,
    pub recipients: Vec<Recipient>,
    /// The inbound message this one replies to.
    pub in_response_to: Option<i64>,
    /// That inbound message's gateway id, for gateways that thread replies.
    pub reply_to_external_id: Option<String>,
}

/// What happened to one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the gateway, with its message id if it gave one. A text
    /// sent in several parts (SMPP) also has every part's id, in order (the
    /// first is `gateway_id`), so a receipt can name any part.
    Sent {
        gateway_id: Option<String>,
        parts: Vec<String>,
    },
    /// Not sent. A permanent failure is not retried.
    Failed { error: String, permanent: bool },
    /// Not sent because the gateway asked us to slow down (HTTP 429 with
    /// Retry-After): queued again for after `retry_after` without using up
    /// an attempt, and the whole backend waits that long.
    Throttled {
        error: String,
        retry_after: Duration,
    },
    /// Not sent because the gateway refused our credentials (HTTP 401/403):
    /// queued again without using up an attempt, and the backend is paused
    /// with this error as the reason until an operator resumes it.
    Unauthorized { error: String },
}

impl Outcome {
    /// Accepted, in one part.
    pub fn sent(gateway_id: Option<String>) -> Self {
        Outcome::Sent {
            gateway_id,
            parts: Vec::new(),
        }
    }
    pub fn retryable(error: impl Into<String>) -> Self {
        Outcome::Failed {
            error: error.into(),
            permanent: false,
        }
    }
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Failed {
            error: error.into(),
            permanent: true,
        }
    }
    pub fn throttled(error: impl Into<String>, retry_after: Duration) -> Self {
        Outcome::Throttled {
            error: error.into(),
            retry_after,
        }
    }
    /// When this transmission goes back to the queue without using up an
    /// attempt: after this long.
    pub fn requeue_after(&self) -> Option<Duration> {
        match self {
            Outcome::Throttled { retry_after, .. } => Some(*retry_after),
            Outcome::Unauthorized { .. } => Some(Duration::ZERO),
            _ => None,
        }
    }

    /// How long the gateway asked the whole backend to wait, if it did.
    pub fn throttle(&self) -> Option<Duration> {
        match self {
            Outcome::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The error, unless sent.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Sent { .. } => None,
            Outcome::Failed { error, .. }
            | Outcome::Throttled { error, .. }
            | Outcome::Unauthorized { error } => Some(error),
        }
    }
}

/// A failure of the whole call (every identity failed the same way).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    pub error: String,
    pub permanent: bool,
    /// The gateway asked us to wait this long (see [`Outcome::Throttled`]).
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn retryable(error: impl Into<String>) -> Self {
        SendError {
            error: error.into(),
            permanent: false,
            retry_after: None,
        }
    }
}

impl From<SendError> for Outcome {
    fn from(e: SendError) -> Self {
        match e.retry_after {
            Some(retry_after) => Outcome::Throttled {
                error: e.error,
                retry_after,
            },
            None => Outcome::Failed {
                error: e.error,
                permanent: e.permanent,
            },
        }
    }
}

/// A backend engine.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Send one message to its recipients. The result has one outcome per
    /// recipient, in the same order; a shorter or longer list is treated as
    /// a failure of the missing identities.
    async fn send(&self, req: &SendRequest) -> Result<Vec<Outcome>, SendError>;

    /// Open what the engine keeps open (the SMPP engine's binds), for the
    /// worker that loaded it; closed when the engine is dropped. Building an
    /// engine alone opens nothing: `dbrouter status` and `backend add` build
    /// them to check their configs.
    fn start(&self) {}

    /// Close what [`Backend::start`] opened and wait for it (a worker's
    /// clean stop: the SMPP engine unbinds and deletes its bind states).
    async fn stop(&self) {}

    /// Whether the worker should hand this engine a whole batch at once with
    /// [`Backend::send_batch`] (one call, one deadline) instead of calling
    /// [`Backend::send`] once per message.
    fn sends_batches(&self) -> bool {
        false
    }

    /// Whether this engine's "send" is a write to dbrouter's own database
    /// that the worker makes in the transaction recording the outcomes
    /// (see `sql/outbound_finish.sql`): the send and its S commit together,
    /// so it happens exactly once, even across crashes. Only the `database`
    /// engine does this.
    fn recorded_with_outcome(&self) -> bool {
        false
    }

    /// Send every message of a batch in one call; one result per request, in
    /// order. Only called when [`Backend::sends_batches`] is true.
    async fn send_batch(
        &self,
        reqs: &[SendRequest],
    ) -> Result<Vec<Result<Vec<Outcome>, SendError>>, SendError> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.send(req).await);
        }
        Ok(out)
    }
}

/// Settings every engine shares, from the backend's config (read here; the
/// engines get the config without them).
#[derive(Debug, Clone)]
pub struct Common {
    /// Deadline of one send call (`"timeout": "20s"`).
    pub timeout: Option<Duration>,
    /// A text of more SMS parts than this ends E, permanently, unsent
    /// (`"max_parts": 3`).
    pub max_parts: Option<usize>,
}

/// The keys of [`Common`].
const COMMON_KEYS: [&str; 2] = ["timeout", "max_parts"];

/// A built backend with its shared settings.
pub struct Built {
    pub backend: Arc<dyn Backend>,
    pub common: Common,
}

/// Build the engine `engine` for backend `name` from its `config`.
pub fn build(name: &str, engine: &str, config: &Value, pool: &PgPool) -> Result<Built, String> {
    let resolved = secrets::resolve(config)?;
    let config = &resolved;
    let timeout = match config.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            humantime::parse_duration(s)
                .map_err(|e| format!("config.timeout {s:?} is not a duration like \"20s\": {e}"))?,
        ),
        Some(other) => {
            return Err(format!(
                "config.timeout must be a string like \"20s\", got {other}"
            ))
        }
    };
    let max_parts = match config.get("max_parts") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=255).contains(n))
                .ok_or_else(|| {
                    format!("config.max_parts must be a number from 1 to 255, got {v}")
                })?,
        ),
    };
    let mut own = config.clone();
    if let Some(keys) = own.as_object_mut() {
        for key in COMMON_KEYS {
            keys.remove(key);
        }
    }
    let config = &own;
    let backend: Arc<dyn Backend> = match engine {
        "database" => Arc::new(Database::from_config(name, config, pool.clone())?),
        "console" => Arc::new(Console::new(name)),
        "kannel" => Arc::new(Kannel::from_config(config, timeout)?),
        "vumi" => Arc::new(Vumi::from_config(config, timeout)?),
        "http" => Arc::new(Http::from_config(config, timeout)?),
        "smpp" => Arc::new(smpp::Smpp::from_config(name, config, pool)?),
        other => {
            return Err(format!(
            "unknown engine {other:?}; the engines are kannel, smpp, vumi, http, database, console"
        ))
        }
    };
    Ok(Built {
        backend,
        common: Common { timeout, max_parts },
    })
}
