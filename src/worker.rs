//! `dbrouter worker`: lanes that claim and process batches until shutdown.
//!
//! Each of `--concurrency` lanes loops: one inbound batch, then one part of
//! a large broadcast to expand into transmissions (when there may be one;
//! see `fanout`), then one outbound batch per enabled backend (starting at a
//! different backend each pass, so one busy backend does not always go
//! first). After a pass in which some batch came back full (or a part was
//! expanded), the lane goes again at once and wakes one more lane;
//! otherwise it waits for a wake-up or the poll interval, whichever comes
//! first. A notification (LISTEN on channel `dbrouter`) wakes one lane, so
//! the lanes at work grow with the backlog rather than every lane racing for
//! every insert. Notifications can be lost while the listener is
//! reconnecting, so the poll is the safety net, and after every reconnect
//! (and every configuration change, and every large broadcast) all lanes
//! are woken to look. A rate-limited or throttled backend makes the lane
//! wait only until its next token (or the end of the Retry-After).
//!
//! About once a second each worker also does its housekeeping
//! (`housekeeping.rs`: expiry, delivery reports).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, RwLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apps::Pipeline;
use crate::config::WorkerConfig;
use crate::connections::Health;
use crate::db;
use crate::error::Result;
use crate::housekeeping::{self, Housekeeping};
use crate::registry::{self, BackendEntry};
use crate::{fanout, inbound, outbound};

/// The channel enqueues notify.
pub const CHANNEL: &str = "dbrouter";

/// One worker process's shared state.
pub struct Worker {
    pool: PgPool,
    cfg: WorkerConfig,
    pipeline: Pipeline,
    backends: RwLock<Arc<Vec<BackendEntry>>>,
    loaded_at: Mutex<Instant>,
    config_dirty: AtomicBool,
    wake: Notify,
    /// Whether some large broadcast may have parts left to expand: set by
    /// its notification, by polls and reconnects; cleared by a pass that
    /// found none (so passes do not ask when there is nothing).
    fanouts: AtomicBool,
    next_backend: AtomicUsize,
    housekeeping: Housekeeping,
    /// Its pool's connection health (`connections::connect_lazy`).
    health: Arc<Health>,
}

/// What one pass over the queues found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Rows claimed in this pass.
    pub claimed: usize,
    /// Transmissions written by expanding a large broadcast's part.
    pub expanded: usize,
    /// Whether some batch was full (there may be more right away).
    pub full: bool,
    /// The soonest a rate-limited or throttled backend can go on.
    pub wait: Option<Duration>,
}

impl Worker {
    /// Validate the settings and load the backends.
    /// `health` is the one its pool was made with
    /// ([`crate::connections::connect_lazy`]), so that a connection found
    /// dead has the pool ping the others.
    pub async fn new(
        pool: PgPool,
        health: Arc<Health>,
        cfg: WorkerConfig,
        pipeline: Pipeline,
    ) -> Result<Arc<Self>> {
        cfg.validate()?;
        crate::schema::check(&pool).await?;
        let backends = registry::load(&pool, &cfg, &[]).await?;
        Ok(Arc::new(Worker {
            pool,
            cfg,
            pipeline,
            backends: RwLock::new(Arc::new(backends)),
            loaded_at: Mutex::new(Instant::now()),
            config_dirty: AtomicBool::new(false),
            wake: Notify::new(),
            fanouts: AtomicBool::new(true),
            next_backend: AtomicUsize::new(0),
            housekeeping: Housekeeping::default(),
            health,
        }))
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Run until `shutdown` is cancelled; in-flight batches finish first.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        let listener =
            (!self.cfg.poll_only).then(|| tokio::spawn(self.clone().listen(shutdown.clone())));
        let housekeeping = tokio::spawn(self.clone().housekeeping(shutdown.clone()));
        let lanes: Vec<_> = (0..self.cfg.concurrency)
            .map(|_| tokio::spawn(self.clone().lane(shutdown.clone())))
            .collect();
        for lane in lanes {
            if let Err(e) = lane.await {
                tracing::error!(error = %e, "a worker lane panicked");
            }
        }
        if let Some(l) = listener {
            l.abort();
        }
        housekeeping.abort();
        // what the engines hold open (SMPP binds) is closed in good order
        for entry in self.backends.read().await.iter() {
            if let Ok(engine) = &entry.engine_impl {
                engine.stop().await;
            }
        }
        Ok(())
    }

    /// Expiry sweep and delivery reports (`housekeeping.rs`), about once a
    /// second, off the lanes' path.
    async fn housekeeping(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self
                .housekeeping
                .run_if_due(&self.pool, self.cfg.reassembly_timeout)
                .await
            {
                tracing::warn!(error = %e, "housekeeping failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(housekeeping::INTERVAL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Process until a pass finds no due work (used by tests and `--exit-when-idle`).
    pub async fn drain(&self) -> Result<usize> {
        let mut total = 0;
        self.fanouts.store(true, Ordering::Release);
        loop {
            self.housekeeping
                .run_if_due(&self.pool, self.cfg.reassembly_timeout)
                .await?;
            let pass = self.work_once().await?;
            total += pass.claimed;
            if pass.claimed == 0 && pass.expanded == 0 {
                return Ok(total);
            }
        }
    }

    /// One inbound batch, then one outbound batch per enabled backend.
    pub async fn work_once(&self) -> Result<Pass> {
        self.refresh_backends().await?;
        let mut pass = Pass::default();
        let backends = self.backends.read().await.clone();
        let send_now: HashMap<i32, &BackendEntry> = backends
            .iter()
            .filter(|e| e.sends_replies_at_once())
            .map(|e| (e.id, e))
            .collect();
        let conn = self.pool.acquire().await?;
        let batch = inbound::run_batch(conn, &self.cfg, &self.pipeline, &send_now).await?;
        pass.claimed += batch.claimed;
        pass.full |= batch.claimed >= self.cfg.batch_size as usize;
        if let Some(hand_off) = batch.hand_off {
            for (backend_id, replies) in &hand_off.replies {
                let Some(entry) = send_now.get(backend_id) else {
                    continue; // not reachable: replies are only handed off for send_now
                };
                outbound::complete(
                    &self.pool,
                    &self.cfg,
                    &self.pipeline,
                    entry,
                    hand_off.token,
                    replies,
                    hand_off.claimed_at,
                )
                .await?;
            }
        }

        if self.fanouts.swap(false, Ordering::AcqRel) {
            match fanout::expand(&self.pool).await {
                Ok(0) => {}
                Ok(n) => {
                    // Maybe more parts: this lane goes again (and recruits).
                    self.fanouts.store(true, Ordering::Release);
                    pass.expanded += n;
                    pass.full = true;
                }
                Err(e) => {
                    // Tried again next pass; the sends below do not wait
                    // on a part that cannot be expanded now.
                    self.fanouts.store(true, Ordering::Release);
                    tracing::warn!(error = %e, "could not expand a broadcast's part; will retry");
                }
            }
        }

        let start = self.next_backend.fetch_add(1, Ordering::Relaxed);
        for i in 0..backends.len() {
            let entry = &backends[(start + i) % backends.len()];
            if !entry.can_send() {
                continue;
            }
            let ran = outbound::run_batch(&self.pool, &self.cfg, &self.pipeline, entry).await?;
            pass.claimed += ran.claimed;
            pass.full |= ran.claimed >= entry.batch_size as usize;
            if let Some(w) = ran.wait {
                pass.wait = Some(pass.wait.map_or(w, |p| p.min(w)));
            }
        }
        Ok(pass)
    }

    async fn refresh_backends(&self) -> Result<()> {
        let mut loaded_at = self.loaded_at.lock().await;
        let dirty = self.config_dirty.swap(false, Ordering::AcqRel);
        if !dirty && loaded_at.elapsed() < self.cfg.poll_interval {
            return Ok(());
        }
        let previous = self.backends.read().await.clone();
        match registry::load(&self.pool, &self.cfg, &previous).await {
            Ok(entries) => {
                *self.backends.write().await = Arc::new(entries);
                *loaded_at = Instant::now();
                Ok(())
            }
            Err(e) => {
                if dirty {
                    self.config_dirty.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    /// Every lane looks (after a reconnect or a configuration change).
    fn wake_lanes(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// One more lane looks: a notification is one enqueue, and a lane that
    /// finds a full batch recruits the next, so the lanes at work follow the
    /// backlog instead of every lane of every process racing for each
    /// insert (which cost CPU in skipped locked rows).
    fn wake_one(&self) {
        self.wake.notify_one();
    }

    async fn lane(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let wait = match self.work_once().await {
                Ok(pass) => {
                    failures = 0;
                    if pass.full {
                        // More is waiting: bring in another lane, go again.
                        self.wake_one();
                        continue;
                    }
                    pass.wait
                        .map_or(self.cfg.poll_interval, |w| w.min(self.cfg.poll_interval))
                }
                Err(e) => {
                    if matches!(&e, crate::error::Error::Db(db) if db::is_transient(db)) {
                        self.health.suspect();
                    }
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
                    tracing::warn!(error = %e, retry_in = ?pause, "worker pass failed; will retry");
                    pause
                }
            };
            tokio::select! {
                _ = self.wake.notified(), if failures == 0 => {}
                _ = tokio::time::sleep(wait) => {
                    // The poll is the safety net for fan-outs too.
                    self.fanouts.store(true, Ordering::Release);
                }
                _ = shutdown.cancelled() => break,
            }
        }
    }

    async fn listen(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(200);
        loop {
            let connected = async {
                let mut l = PgListener::connect_with(&self.pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                r = connected => match r {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN; polling until it works");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            pause = Duration::from_millis(200);
            // Anything enqueued while we were not listening: look now.
            self.config_dirty.store(true, Ordering::Release);
            self.fanouts.store(true, Ordering::Release);
            self.wake_lanes();
            loop {
                tokio::select! {
                    r = listener.try_recv() => match r {
                        Ok(Some(n)) => {
                            if n.payload() == "config" {
                                self.config_dirty.store(true, Ordering::Release);
                                self.wake_lanes();
                            } else if n.payload() == "fanout" {
                                // A large broadcast: every lane helps expand it.
                                self.fanouts.store(true, Ordering::Release);
                                self.wake_lanes();
                            } else {
                                self.wake_one();
                            }
                        }
                        Ok(None) => {
                            self.health.suspect();
                            tracing::warn!("listener connection lost; reconnected");
                            self.config_dirty.store(true, Ordering::Release);
                            self.fanouts.store(true, Ordering::Release);
                            self.wake_lanes();
                        }
                        Err(e) => {
                            self.health.suspect();
                            tracing::warn!(error = %e, "listener failed; reconnecting");
                            break;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
