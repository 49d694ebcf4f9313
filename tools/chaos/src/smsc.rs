//! The drill's SMSC for the `smsc` backend (the `smpp` engine): the `smpp34`
//! crate's server (another project than dbrouter's SMPP client). It answers
//! about 5 % of `submit_sm` with ESME_RSYSERR and 3 % with ESME_RTHROTTLED;
//! the rest are recorded in `chaos_smpp_submits` (destination and text)
//! before it accepts them, so an accepted submit is one the drill can count.
//! When the record cannot be written (PostgreSQL restarting), the submit
//! gets ESME_RSYSERR, as an SMSC whose store is down would answer.
//!
//! The drill restarts it now and then (a fault of its own): it runs on a
//! runtime of its own, so a stop kills every session at once.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use smpp34::{
    bind_transceiver, bind_transceiver_resp, submit_sm, submit_sm_resp, SmppConnectionInformation,
    SmppError, SmppServer, SmppServerListener,
};
use sqlx::PgPool;

/// Where the SMSC records what it accepted; turned into
/// `dbrouter.database_backend_sends` rows by [`attribute`] after the drill.
pub const CREATE: &str = "CREATE TABLE IF NOT EXISTS chaos_smpp_submits (
    identity text NOT NULL, text text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())";

struct Handler {
    pool: PgPool,
    next_id: AtomicU64,
}

#[async_trait]
impl SmppServerListener for Handler {
    async fn on_bind_transceiver(
        &self,
        req: bind_transceiver,
        _c: &SmppConnectionInformation,
        _s: &String,
    ) -> bind_transceiver_resp {
        req.accept("ChaosSMSC".to_string(), Some(0x34))
    }

    async fn on_submit_sm(
        &self,
        req: submit_sm,
        _c: &SmppConnectionInformation,
        _s: &String,
    ) -> submit_sm_resp {
        let roll: f64 = rand::random();
        if roll < 0.05 {
            return req.reject(SmppError::ESME_RSYSERR);
        }
        if roll < 0.08 {
            return req.reject(SmppError::ESME_RTHROTTLED);
        }
        // the drill's texts are GSM and short: one septet a byte, one part
        let text = String::from_utf8_lossy(&req.short_message).into_owned();
        let recorded =
            sqlx::query("INSERT INTO chaos_smpp_submits (identity, text) VALUES ($1, $2)")
                .bind(format!("+{}", req.destination_addr))
                .bind(text)
                .execute(&self.pool)
                .await;
        match recorded {
            Ok(_) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                req.accept(format!("{id:x}"))
            }
            Err(_) => req.reject(SmppError::ESME_RSYSERR),
        }
    }
}

pub struct Smsc {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Smsc {
    /// On a free port.
    pub async fn start(database_url: &str) -> Result<Smsc> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Smsc::start_on(database_url, port).await
    }

    /// On `port` (a restarted SMSC comes back where it was).
    pub async fn start_on(database_url: &str, port: u16) -> Result<Smsc> {
        let pool = dbrouter::db::connect_lazy(database_url, 8)?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let handler = Handler {
                    pool,
                    next_id: AtomicU64::new(rand::random::<u32>().into()),
                };
                let mut server =
                    SmppServer::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port, Arc::new(handler));
                server.start().await;
                let _ = ready_tx.send(());
                let _ = stop_rx.await;
                server.stop().await;
            });
            rt.shutdown_background();
        });
        ready_rx.await.context("the drill's SMSC did not start")?;
        Ok(Smsc {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Kill it: the listener and every session at once.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// After the drill: each accepted submit becomes a send of the transmission
/// it carried (found by identity and text, which the drill keeps unique per
/// message), so the drill's checks count SMPP sends like every backend's.
pub async fn attribute(pool: &PgPool) -> Result<u64> {
    let done = sqlx::query(
        "INSERT INTO dbrouter.database_backend_sends
                (call_id, batch, backend, message_id, transmission_id, identity, text, attempt)
         SELECT nextval('dbrouter.database_backend_calls'), 0, 'smsc', t.message_id, t.id, s.identity, s.text, 0
           FROM chaos_smpp_submits s
           JOIN dbrouter.backends b ON b.name = 'smsc'
           JOIN dbrouter.connections c ON c.backend_id = b.id AND c.identity = s.identity
           JOIN dbrouter.transmissions t ON t.connection_id = c.id
           JOIN dbrouter.messages m ON m.id = t.message_id AND m.text = s.text",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
