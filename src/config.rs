//! Worker settings (the CLI fills them from flags and environment).

use std::time::Duration;

use crate::error::{Error, Result};

/// How a worker process claims, sends and retries.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most transmissions (outbound) or messages (inbound) per batch, unless a
    /// backend sets its own `batch_size`.
    pub batch_size: u32,
    /// Batches in flight at once in this process (one lane each).
    pub concurrency: usize,
    /// How often to look for work when no notification arrives.
    pub poll_interval: Duration,
    /// Do not LISTEN (for transaction-pooling poolers); rely on polling.
    pub poll_only: bool,
    /// How long a claimed outbound transmission stays P before another worker
    /// may take it again. Must be at least twice every backend's send timeout.
    pub lease: Duration,
    /// Default deadline of one backend send call.
    pub send_timeout: Duration,
    /// Deadline for the apps to process one inbound batch.
    pub app_timeout: Duration,
    /// First retry delay; doubles with each attempt, with ±50 % jitter.
    pub retry_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Attempts per transmission before it stays E for good.
    pub max_attempts: u32,
    /// How long the parts of a long message from a phone wait for the rest
    /// before they are delivered as they are, flagged (SMPP).
    pub reassembly_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 200,
            concurrency: 4,
            poll_interval: Duration::from_secs(5),
            poll_only: false,
            lease: Duration::from_secs(60),
            send_timeout: Duration::from_secs(20),
            app_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(3600),
            max_attempts: 5,
            reassembly_timeout: Duration::from_secs(3600),
        }
    }
}

impl WorkerConfig {
    /// Refuse settings that would break the worker's guarantees.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(Error::Config(format!(
                "--batch-size must be between 1 and 10000, got {}",
                self.batch_size
            )));
        }
        if self.concurrency == 0 {
            return Err(Error::Config("--concurrency must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("--max-attempts must be at least 1".into()));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config("--poll-interval must be above zero".into()));
        }
        check_lease(self.lease, self.send_timeout, "--send-timeout")
    }
}

/// The lease must outlast a send by a margin, or a slow but successful send
/// would routinely be repeated by another worker.
pub fn check_lease(lease: Duration, timeout: Duration, what: &str) -> Result<()> {
    if lease < timeout * 2 {
        return Err(Error::Config(format!(
            "the lease ({}) must be at least twice {what} ({}); raise --lease or lower the timeout",
            humantime::format_duration(lease),
            humantime::format_duration(timeout)
        )));
    }
    Ok(())
}
