//! Failed sends in the log, rate-limited per backend: the first few of
//! every window are logged one by one (backend, transmission, error), the
//! rest are counted and reported in one line when the next window opens. A
//! gateway that is down fails every send; the log should say so, not drown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gateways::Outcome;

/// Lines per window, and the window.
const LINES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct FailureLog {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    skipped: u64,
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog {
            state: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                skipped: 0,
            }),
        }
    }
}

impl FailureLog {
    /// Log the failures among `outcomes` of backend `backend`.
    pub fn record(&self, backend: &str, outcomes: &[(i64, Outcome)]) {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (transmission, outcome) in outcomes {
            let Some(error) = outcome.error() else {
                continue;
            };
            if w.started.elapsed() >= WINDOW {
                if w.skipped > 0 {
                    tracing::warn!(
                        backend,
                        failed = w.skipped,
                        "more sends failed than were logged"
                    );
                }
                *w = Window {
                    started: Instant::now(),
                    logged: 0,
                    skipped: 0,
                };
            }
            if w.logged < LINES {
                w.logged += 1;
                tracing::warn!(backend, transmission, error, "send failed");
            } else {
                w.skipped += 1;
            }
        }
    }
}
