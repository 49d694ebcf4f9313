#![allow(dead_code)]
//! An SMSC for the SMPP tests: the `smpp34` crate's server (another project
//! than dbrouter's client, `rusmppc`), in the test's process, on a free
//! loopback port. It accepts binds with one system_id/password, answers
//! every `submit_sm` with an id (or with a status a test sets), keeps what
//! it was sent, and pushes messages from phones and delivery receipts to a
//! bound ESME on demand.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use smpp34::server::ESME;
use smpp34::{
    bind_transceiver, bind_transceiver_resp, submit_sm, submit_sm_resp, SmppConnectionInformation,
    SmppError, SmppServer, SmppServerListener,
};

pub const SYSTEM_ID: &str = "dbrouter";
pub const PASSWORD: &str = "secret1";

/// One `submit_sm` as the SMSC received it.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub source: String,
    pub destination: String,
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    pub short_message: Vec<u8>,
    pub tlvs: Vec<(u16, Vec<u8>)>,
}

#[derive(Default)]
struct State {
    submitted: Mutex<Vec<Submitted>>,
    esmes: Mutex<HashMap<String, Arc<ESME>>>,
    binds: AtomicUsize,
    next_id: AtomicU64,
    /// Answer the next this many submits with ESME_RTHROTTLED.
    throttle: AtomicUsize,
    /// Answer every submit to this destination with ESME_RINVDSTADR.
    invalid_destination: Mutex<Option<String>>,
}

struct Handler(Arc<State>);

#[async_trait]
impl SmppServerListener for Handler {
    async fn on_bind_transceiver(
        &self,
        req: bind_transceiver,
        _c: &SmppConnectionInformation,
        _s: &String,
    ) -> bind_transceiver_resp {
        if req.system_id == SYSTEM_ID && req.password == PASSWORD {
            self.0.binds.fetch_add(1, Ordering::SeqCst);
            req.accept("TestSMSC".to_string(), Some(0x34))
        } else {
            req.reject(SmppError::ESME_RINVPASWD)
        }
    }

    async fn on_esme_bound(&self, esme: ESME, session_id: &String) {
        lock(&self.0.esmes).insert(session_id.clone(), Arc::new(esme));
    }

    async fn on_esme_unbound(&self, session_id: &String) {
        lock(&self.0.esmes).remove(session_id);
    }

    async fn on_submit_sm(
        &self,
        req: submit_sm,
        _c: &SmppConnectionInformation,
        _s: &String,
    ) -> submit_sm_resp {
        let s = &self.0;
        if s.throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return req.reject(SmppError::ESME_RTHROTTLED);
        }
        if lock(&s.invalid_destination).as_deref() == Some(req.destination_addr.as_str()) {
            return req.reject(SmppError::ESME_RINVDSTADR);
        }
        // Hex ids with leading zeros and capitals, as some SMSCs give them.
        let id = format!("00{:X}", 0xA000 + s.next_id.fetch_add(1, Ordering::SeqCst));
        lock(&s.submitted).push(Submitted {
            id: id.clone(),
            source: req.source_addr.clone(),
            destination: req.destination_addr.clone(),
            esm_class: req.esm_class,
            data_coding: req.data_coding,
            registered_delivery: req.registered_delivery,
            short_message: req.short_message.clone(),
            tlvs: req.tlvs.iter().map(|t| (t.tag, t.value.clone())).collect(),
        });
        req.accept(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Smsc {
    pub port: u16,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Smsc {
    pub async fn start() -> Smsc {
        Smsc::start_on(crate::common::free_port()).await
    }

    /// On a given port (a restarted SMSC comes back where it was). The
    /// server runs on a runtime of its own, so [`Smsc::stop`] kills it
    /// whole, every session with it, as a crashed SMSC goes.
    pub async fn start_on(port: u16) -> Smsc {
        Smsc::start_with(port, 300_000).await
    }

    /// One that closes a session after `inactivity_ms` without a PDU from
    /// the ESME (as SMSCs do to idle binds).
    pub async fn start_closing_idle(inactivity_ms: u64) -> Smsc {
        Smsc::start_with(crate::common::free_port(), inactivity_ms).await
    }

    async fn start_with(port: u16, inactivity_ms: u64) -> Smsc {
        let state = Arc::new(State::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(Handler(state.clone()));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the SMSC's runtime");
            rt.block_on(async move {
                // (smpp34's defaults but the inactivity timer; its own
                // enquire_link every 30 s is far off in these tests)
                let mut server = SmppServer::new_with_default_timers(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port,
                    handler,
                    5000,
                    30000,
                    inactivity_ms,
                    30000,
                    1500,
                );
                server.start().await;
                let _ = ready_tx.send(());
                let _ = stop_rx.await;
                server.stop().await;
            });
            rt.shutdown_background();
        });
        ready_rx.await.expect("the SMSC started");
        Smsc {
            port,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Kill the SMSC: the listener and every session at once.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    pub fn url(&self) -> String {
        format!("smpp://127.0.0.1:{}", self.port)
    }

    /// A backend config for this SMSC.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url(), "system_id": SYSTEM_ID, "password": PASSWORD,
            "source_addr": "4321", "enquire_link": "1s", "response_timeout": "3s"
        })
    }

    pub fn submitted(&self) -> Vec<Submitted> {
        lock(&self.state.submitted).clone()
    }

    pub fn binds(&self) -> usize {
        self.state.binds.load(Ordering::SeqCst)
    }

    pub fn bound_sessions(&self) -> usize {
        lock(&self.state.esmes).len()
    }

    pub fn throttle_next(&self, n: usize) {
        self.state.throttle.store(n, Ordering::SeqCst);
    }

    pub fn refuse_destination(&self, destination: &str) {
        *lock(&self.state.invalid_destination) = Some(destination.to_string());
    }

    fn esme(&self) -> Arc<ESME> {
        lock(&self.state.esmes)
            .values()
            .next()
            .cloned()
            .expect("a bound ESME")
    }

    /// A message from a phone: `deliver_sm` with this coding and these bytes.
    pub async fn deliver(
        &self,
        from: &str,
        esm_class: u8,
        data_coding: u8,
        short_message: Vec<u8>,
    ) {
        let resp = self
            .esme()
            .deliver_sm()
            .source_addr_ton(1)
            .source_addr_npi(1)
            .source_addr(from.to_string())
            .destination_addr("4321".to_string())
            .esm_class(esm_class)
            .data_coding(data_coding)
            .short_message(short_message)
            .send()
            .await
            .expect("deliver_sm answered");
        let _ = resp;
    }

    /// A delivery receipt for `id` (as the SMSC gave it), in the text form
    /// of SMPP 3.4's Appendix B only (no TLVs), with `stat`.
    pub async fn receipt(&self, id: &str, stat: &str) {
        let text = format!(
            "id:{id} sub:001 dlvrd:001 submit date:2612070100 done date:2612070101 stat:{stat} err:000 text:"
        );
        self.esme()
            .deliver_sm()
            .source_addr("4321".to_string())
            .destination_addr("255700000001".to_string())
            .esm_class(0x04)
            .short_message(text.into_bytes())
            .send()
            .await
            .expect("deliver_sm answered");
    }
}
