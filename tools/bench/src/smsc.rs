//! The stand-in SMSC of the SMPP rows: the `smpp34` crate's server (another
//! project than dbrouter's SMPP client), in the bench's process, accepting
//! every bind and answering every `submit_sm` at once with a fresh id. Its
//! own bound is measured in the same run with a load generator (dbrouter's
//! client crate, 4 binds, 100 submits in flight on each), so the SMPP rows
//! can say how much of it dbrouter used.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use rusmpp::pdus::{BindTransceiver, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::InterfaceVersion;
use smpp34::{
    bind_transceiver, bind_transceiver_resp, submit_sm, submit_sm_resp, SmppConnectionInformation,
    SmppServer, SmppServerListener,
};

struct Handler {
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
        req.accept("StandIn".to_string(), Some(0x34))
    }

    async fn on_submit_sm(
        &self,
        req: submit_sm,
        _c: &SmppConnectionInformation,
        _s: &String,
    ) -> submit_sm_resp {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.accept(format!("{id:x}"))
    }
}

pub struct StandInSmsc {
    pub url: String,
    /// Dropping it stops the server's runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl StandInSmsc {
    /// On a runtime (and threads) of its own, as a separate SMSC would be,
    /// so the bench's own tasks never delay its answers.
    pub async fn start() -> Result<StandInSmsc> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return,
            };
            rt.block_on(async move {
                let mut server = SmppServer::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port,
                    Arc::new(Handler {
                        next_id: AtomicU64::new(1),
                    }),
                );
                server.start().await;
                let _ = ready_tx.send(());
                let _ = stop_rx.await;
                server.stop().await;
            });
            rt.shutdown_background();
        });
        ready_rx
            .await
            .context("the stand-in SMSC's runtime did not start")?;
        Ok(StandInSmsc {
            url: format!("smpp://127.0.0.1:{port}"),
            _stop: stop_tx,
        })
    }

    /// Submits per second the stand-in answers on its own, for `for_how_long`.
    pub async fn bound(&self, for_how_long: Duration) -> Result<f64> {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + for_how_long;
        let mut binds = Vec::new();
        for _ in 0..4 {
            let (client, _events) = rusmppc::ConnectionBuilder::new()
                .disable_interface_version_check()
                .response_timeout(Duration::from_secs(10))
                .connect(&self.url)
                .await
                .context("the stand-in SMSC's load generator could not connect")?;
            client
                .bind_transceiver(
                    BindTransceiver::builder()
                        .system_id(COctetString::from_str("load")?)
                        .password(COctetString::from_str("load")?)
                        .interface_version(InterfaceVersion::Smpp3_4)
                        .build(),
                )
                .await?;
            for _ in 0..100 {
                let (client, done) = (client.clone(), done.clone());
                binds.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let submit = SubmitSm::builder()
                            .destination_addr(COctetString::from_str("255700000001")?)
                            .short_message(OctetString::from_slice(b"load")?)
                            .build();
                        client.submit_sm(submit).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }));
            }
        }
        for b in binds {
            b.await??;
        }
        Ok(done.load(Ordering::Relaxed) as f64 / for_how_long.as_secs_f64())
    }
}
