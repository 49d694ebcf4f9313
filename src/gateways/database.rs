use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;

use super::{Backend, Outcome, Recipient, SendError, SendRequest};

/// Records every send in `dbrouter.database_backend_sends`, one row per
/// accepted identity. By default the row is written in the same transaction
/// that marks the transmission S (exactly once, no extra commit); with
/// `"own_commit": true` it is committed on its own first, like an external
/// gateway, so a crash in between shows up as a duplicate send (the fault
/// drill uses this to exercise the at-least-once path).
///
/// Config (all optional), for exercising retries and partial failures:
/// ```json
/// {"own_commit": true,
///  "fail": {"attempts": 2, "identities": ["+255700000001"], "permanent": false,
///           "error": "simulated failure"},
///  "delay": "200ms"}
/// ```
/// `fail` fails the listed identities (all when `identities` is absent) on
/// their first `attempts` attempts (every attempt when absent); with
/// `"rate": 0.2` only that fraction of those sends fails, at random; with
/// `"retry_after": "2s"` the failures are throttling (like HTTP 429 with
/// Retry-After: the backend waits, no attempt is used up). `delay`
/// waits before recording, like a slow gateway; with `"delay_rate": 0.1` only
/// that fraction of calls is slow.
pub struct Database {
    name: String,
    pool: PgPool,
    config: Config,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    own_commit: bool,
    #[serde(default)]
    fail: Option<Fail>,
    #[serde(default, with = "humantime_serde_opt")]
    delay: Option<Duration>,
    #[serde(default)]
    delay_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fail {
    attempts: Option<i32>,
    identities: Option<HashSet<String>>,
    #[serde(default)]
    permanent: bool,
    error: Option<String>,
    rate: Option<f64>,
    #[serde(default, with = "humantime_serde_opt")]
    retry_after: Option<Duration>,
}

fn check_rate(what: &str, rate: Option<f64>) -> Result<(), String> {
    match rate {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            Err(format!("{what} must be between 0 and 1, got {r}"))
        }
        _ => Ok(()),
    }
}

/// True with probability `rate` (always when there is no rate).
fn chance(rate: Option<f64>) -> bool {
    rate.is_none_or(|r| rand::random::<f64>() < r)
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Database {
    pub fn from_config(name: &str, config: &Value, pool: PgPool) -> Result<Self, String> {
        let config: Config = serde_json::from_value(config.clone())
            .map_err(|e| format!("invalid config for the database engine: {e}"))?;
        check_rate("delay_rate", config.delay_rate)?;
        check_rate("fail.rate", config.fail.as_ref().and_then(|f| f.rate))?;
        Ok(Database {
            name: name.to_string(),
            pool,
            config,
        })
    }

    fn fails(&self, identity: &str, attempt: i32) -> Option<Outcome> {
        let fail = self.config.fail.as_ref()?;
        if let Some(n) = fail.attempts {
            if attempt > n {
                return None;
            }
        }
        if let Some(ids) = &fail.identities {
            if !ids.contains(identity) {
                return None;
            }
        }
        if !chance(fail.rate) {
            return None;
        }
        let error = fail
            .error
            .clone()
            .unwrap_or_else(|| "simulated failure".into());
        Some(match fail.retry_after {
            Some(after) => Outcome::throttled(error, after),
            None => Outcome::Failed {
                error,
                permanent: fail.permanent,
            },
        })
    }
}

impl Database {
    /// Record every accepted identity of these calls in one statement, on
    /// its own connection and transaction (like a gateway accepting them).
    async fn record(&self, calls: &[(&SendRequest, Vec<&Recipient>)]) -> Result<(), sqlx::Error> {
        let mut call = Vec::new();
        let mut message_id = Vec::new();
        let mut text = Vec::new();
        let mut in_response_to = Vec::new();
        let mut reply_to = Vec::new();
        let mut transmission_id = Vec::new();
        let mut identity = Vec::new();
        let mut attempt = Vec::new();
        for (i, (req, accepted)) in calls.iter().enumerate() {
            for r in accepted {
                call.push(i32::try_from(i).unwrap_or(i32::MAX));
                message_id.push(req.message_id);
                text.push(req.text.as_str());
                in_response_to.push(req.in_response_to);
                reply_to.push(req.reply_to_external_id.as_deref());
                transmission_id.push(r.transmission_id);
                identity.push(r.identity.as_str());
                attempt.push(r.attempt);
            }
        }
        if call.is_empty() {
            return Ok(());
        }
        let mut conn = crate::db::Conn::acquire(&self.pool).await?;
        sqlx::query(include_str!("../../sql/database_backend_record.sql"))
            .persistent(crate::db::prepared())
            .bind(&self.name)
            .bind(calls[0].0.batch)
            .bind(&call)
            .bind(&message_id)
            .bind(&text)
            .bind(&in_response_to)
            .bind(&reply_to)
            .bind(&transmission_id)
            .bind(&identity)
            .bind(&attempt)
            .execute(conn.get())
            .await?;
        conn.done().await
    }

    fn outcomes(&self, req: &SendRequest) -> Vec<Outcome> {
        req.recipients
            .iter()
            .map(|r| {
                self.fails(&r.identity, r.attempt)
                    .unwrap_or(Outcome::sent(None))
            })
            .collect()
    }
}

fn accepted<'a>(req: &'a SendRequest, outcomes: &[Outcome]) -> Vec<&'a Recipient> {
    req.recipients
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Sent { .. }))
        .map(|(r, _)| r)
        .collect()
}

#[async_trait]
impl Backend for Database {
    async fn send(&self, req: &SendRequest) -> Result<Vec<Outcome>, SendError> {
        let mut results = self.send_batch(std::slice::from_ref(req)).await?;
        results.pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// A whole batch is one "gateway call" per message but one statement.
    fn sends_batches(&self) -> bool {
        true
    }

    fn recorded_with_outcome(&self) -> bool {
        !self.config.own_commit
    }

    async fn send_batch(
        &self,
        reqs: &[SendRequest],
    ) -> Result<Vec<Result<Vec<Outcome>, SendError>>, SendError> {
        if let Some(delay) = self.config.delay {
            if chance(self.config.delay_rate) {
                tokio::time::sleep(delay).await;
            }
        }
        let outcomes: Vec<Vec<Outcome>> = reqs.iter().map(|r| self.outcomes(r)).collect();
        if self.recorded_with_outcome() {
            // The finish statement records the sends it marks S.
            return Ok(outcomes.into_iter().map(Ok).collect());
        }
        let calls: Vec<_> = reqs
            .iter()
            .zip(&outcomes)
            .map(|(r, o)| (r, accepted(r, o)))
            .collect();
        self.record(&calls).await.map_err(|e| {
            SendError::retryable(format!("database backend could not record the send: {e}"))
        })?;
        Ok(outcomes.into_iter().map(Ok).collect())
    }
}
