//! The gateway the real-path runs send to: a stand-in for Kannel's
//! `sendsms` that accepts every request the way Kannel does (HTTP 202,
//! `0: Accepted for delivery`), counts them, and, while asked to, notes when
//! each recipient's message arrived (for the latency run). It runs in the
//! bench's own process, so its CPU is not counted as dbrouter's.
//!
//! It must not be the bottleneck: [`StandIn::bound`] measures how many
//! requests per second it answers to a load generator shaped like
//! dbrouter's `kannel` engine (keep-alive connections, 32 requests in
//! flight), in the same run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::time::Instant;

#[derive(Default)]
struct Shared {
    requests: AtomicU64,
    recording: AtomicBool,
    /// Recipient → when its message arrived (seconds since the epoch).
    arrivals: Mutex<HashMap<String, f64>>,
}

pub struct StandIn {
    /// The `sendsms` URL, for a `kannel` backend's `url`.
    pub url: String,
    shared: Arc<Shared>,
}

async fn sendsms(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, &'static str) {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if shared.recording.load(Ordering::Relaxed) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if let (Some(to), Ok(mut arrivals)) = (q.get("to"), shared.arrivals.lock()) {
            arrivals.entry(to.clone()).or_insert(now);
        }
    }
    (StatusCode::ACCEPTED, "0: Accepted for delivery")
}

impl StandIn {
    pub async fn start() -> Result<StandIn> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/cgi-bin/sendsms", get(sendsms))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: the stand-in gateway stopped: {e}");
            }
        });
        Ok(StandIn {
            url: format!("http://{addr}/cgi-bin/sendsms"),
            shared,
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Note arrivals from now on (forgetting earlier ones), or stop.
    pub fn record(&self, on: bool) {
        if let Ok(mut a) = self.shared.arrivals.lock() {
            a.clear();
        }
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    /// When each recipient's first message arrived, since `record(true)`.
    pub fn arrivals(&self) -> HashMap<String, f64> {
        self.shared
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Requests per second it answers on its own: `for_` of 32 keep-alive
    /// requests in flight, each a sendsms call like the engine's.
    pub async fn bound(&self, for_: Duration) -> Result<f64> {
        let client = reqwest::Client::new();
        let before = self.requests();
        let start = Instant::now();
        let end = start + for_;
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let client = client.clone();
                let url = self.url.clone();
                tokio::spawn(async move {
                    let q = [
                        ("to", format!("+25570{i:07}")),
                        ("text", "Clinic closed on Friday".to_string()),
                        ("username", "bench".to_string()),
                        ("password", "bench".to_string()),
                        ("coding", "0".to_string()),
                        ("charset", "UTF-8".to_string()),
                    ];
                    while Instant::now() < end {
                        client.get(&url).query(&q).send().await?.bytes().await?;
                    }
                    Ok::<(), reqwest::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        Ok((self.requests() - before) as f64 / start.elapsed().as_secs_f64())
    }
}
