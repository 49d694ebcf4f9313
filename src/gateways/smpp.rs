//! SMPP 3.4 straight to an operator's SMSC (`engine = 'smpp'`): dbrouter is
//! the ESME. Sends go out as `submit_sm`, one per part, through the
//! backend's binds; what the SMSC delivers (`deliver_sm`) is either a
//! message from a phone (into `dbrouter.inbox`) or a delivery receipt (into
//! `dbrouter.receipts`, applied by the workers like any gateway's).
//!
//! Where the binds live: each worker process holds `binds` transceiver binds
//! to each SMPP backend it has loaded, opened at once (so messages from
//! phones arrive even when nothing is being sent) and kept up (enquire_link;
//! re-bound with backoff after a drop) until the backend's row changes or
//! the worker stops. Sends use any bound bind, at most `window`
//! unacknowledged `submit_sm` on each. A worker that dies with submits in
//! flight leaves their transmissions P under its lease; another worker
//! sends them again when the lease expires, so an SMSC that had accepted
//! one delivers it twice: at most `binds × window` messages per killed
//! worker (docs/GATEWAYS.md, SMPP).
//!
//! Receiving: a `deliver_sm` is answered only after what it carried is
//! committed, so an SMSC whose answer was lost sends it again (a receipt
//! applied twice changes nothing; a message from a phone is then a
//! duplicate, as SMPP gives it no id to recognise it by).
//!
//! The client is the `rusmppc` crate (docs/GATEWAYS.md says why).

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::{MessageSubmissionRequestTlvValue, TlvValue};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmpp::{CommandStatus, Pdu};
use rusmppc::{Client, ConnectionBuilder, Event};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Backend, Outcome, SendError, SendRequest};
use crate::gsm;
use crate::segments::{self, Encoding};

/// The engine: its settings, its binds, and the tasks that keep them up.
pub struct Smpp {
    inner: Arc<Inner>,
    pool: PgPool,
    /// Whether [`Backend::start`] has started the binds.
    started: std::sync::Once,
    /// The tasks it started, for [`Backend::stop`] to wait for.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
    /// Stops the bind tasks when the engine is dropped (a reloaded row).
    _stop: DropGuard,
}

struct Inner {
    name: String,
    config: Config,
    /// The sender of every submit, resolved once from the config.
    source: Source,
    /// How long the backend waits after a throttling answer.
    throttle_wait: Duration,
    /// The TLS settings when `config.tls_ca` names a CA; else rusmppc's
    /// (the web's roots).
    tls: Option<rustls::ClientConfig>,
    binds: Vec<Bind>,
    next: AtomicUsize,
    /// Woken whenever a bind comes up.
    up: Notify,
    /// Woken whenever a bind's state changes (for [`report`]).
    changed: Notify,
    /// The 8-bit reference of the next concatenated message.
    reference: AtomicUsize,
}

/// `source_addr` with its TON/NPI: 1/1 when it is a number, 5/0 when a
/// name, 0/0 when empty (the SMSC's default), unless the config says.
struct Source {
    addr: COctetString<1, 21>,
    ton: Ton,
    npi: Npi,
}

impl Source {
    fn from_config(c: &Config) -> Result<Source, String> {
        let source = c.source_addr.as_deref().unwrap_or_default();
        let digits = source.trim_start_matches('+');
        let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        let (ton, npi) = match (numeric, source.is_empty()) {
            (true, _) => (1, 1),
            (false, true) => (0, 0),
            (false, false) => (5, 0),
        };
        Ok(Source {
            addr: COctetString::from_str(digits).map_err(|_| {
                format!("config.source_addr {source:?} must be at most 20 ASCII characters")
            })?,
            ton: Ton::from(c.source_ton.unwrap_or(ton)),
            npi: Npi::from(c.source_npi.unwrap_or(npi)),
        })
    }
}

/// One bind: its client while bound, its window, and its state in words.
struct Bind {
    client: Mutex<Option<Client>>,
    window: Semaphore,
    state: Mutex<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `smpp://host:port`, or `smpps://` for TLS (rustls, the web's roots).
    url: String,
    /// A PEM file of the CA certificates to trust for `smpps://` instead of
    /// the web's roots (an operator's private CA, or the SMSC's own
    /// self-signed certificate).
    #[serde(default)]
    tls_ca: Option<String>,
    system_id: String,
    password: String,
    #[serde(default)]
    system_type: String,
    /// Binds per worker process (each a transceiver).
    #[serde(default = "one")]
    binds: usize,
    /// Unacknowledged `submit_sm` per bind.
    #[serde(default = "ten")]
    window: usize,
    /// The sender shown on phones (a number or an alphanumeric name).
    #[serde(default)]
    source_addr: Option<String>,
    #[serde(default)]
    source_ton: Option<u8>,
    #[serde(default)]
    source_npi: Option<u8>,
    #[serde(default = "one_u8")]
    dest_ton: u8,
    #[serde(default = "one_u8")]
    dest_npi: u8,
    /// Ask the SMSC for delivery receipts.
    #[serde(default = "yes")]
    receipts: bool,
    /// How a text of several parts goes: `udh` (a concatenation header in
    /// each part), `sar` (SAR TLVs), `payload` (one `submit_sm` with the
    /// whole text in `message_payload`; the SMSC splits it).
    #[serde(default)]
    concatenation: Concatenation,
    /// How long a `submit_sm` may wait for its response.
    #[serde(default)]
    response_timeout: Option<String>,
    /// Keepalive interval.
    #[serde(default)]
    enquire_link: Option<String>,
    /// How long the backend waits after ESME_RTHROTTLED / ESME_RMSGQFUL.
    #[serde(default)]
    throttle_wait: Option<String>,
    /// How receipts write the id `submit_sm_resp` gave: `same`, or
    /// `decimal` / `hex` when the SMSC reports in the other base.
    #[serde(default)]
    receipt_ids: ReceiptIds,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Concatenation {
    #[default]
    Udh,
    Sar,
    Payload,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ReceiptIds {
    #[default]
    Same,
    Decimal,
    Hex,
}

fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn one_u8() -> u8 {
    1
}
fn yes() -> bool {
    true
}

fn duration(what: &str, v: &Option<String>, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| format!("config.{what} {s:?} is not a duration like \"10s\": {e}")),
    }
}

impl Smpp {
    /// Check the config and build the engine; [`Backend::start`] opens its
    /// binds (each retried with backoff until it is up; each bind's state is
    /// kept in words for the errors of sends that find none up).
    pub fn from_config(name: &str, raw: &Value, pool: &PgPool) -> Result<Self, String> {
        let config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| format!("invalid config for the smpp engine: {e}"))?;
        if !(config.url.starts_with("smpp://")
            || config.url.starts_with("smpps://")
            || config.url.starts_with("ssmpp://"))
        {
            return Err(format!(
                "config.url {:?} must be smpp://host:port (or smpps:// for TLS)",
                config.url
            ));
        }
        if config.binds == 0 || config.binds > 64 {
            return Err("config.binds must be 1 to 64".into());
        }
        if config.window == 0 || config.window > 1000 {
            return Err("config.window must be 1 to 1000".into());
        }
        for (what, v) in [
            ("response_timeout", &config.response_timeout),
            ("enquire_link", &config.enquire_link),
        ] {
            duration(what, v, Duration::ZERO)?;
        }
        let throttle_wait = duration(
            "throttle_wait",
            &config.throttle_wait,
            Duration::from_secs(1),
        )?;
        let source = Source::from_config(&config)?;
        let tls = config.tls_ca.as_deref().map(tls_trusting).transpose()?;
        COctetString::<1, 16>::from_str(&config.system_id)
            .map_err(|_| "config.system_id must be 1 to 15 ASCII characters".to_string())?;
        COctetString::<1, 9>::from_str(&config.password)
            .map_err(|_| "config.password must be 1 to 8 ASCII characters".to_string())?;
        let binds = (0..config.binds)
            .map(|_| Bind {
                client: Mutex::new(None),
                window: Semaphore::new(config.window),
                state: Mutex::new("connecting".into()),
            })
            .collect();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            config,
            source,
            throttle_wait,
            tls,
            binds,
            next: AtomicUsize::new(0),
            up: Notify::new(),
            changed: Notify::new(),
            reference: AtomicUsize::new(rand::random::<u8>().into()),
        });
        let stop = CancellationToken::new();
        Ok(Smpp {
            inner,
            pool: pool.clone(),
            started: std::sync::Once::new(),
            tasks: Mutex::new(Vec::new()),
            stop: stop.clone(),
            _stop: stop.drop_guard(),
        })
    }

    /// Start the binds and the task reporting their states (once).
    fn start_binds(&self) {
        self.started.call_once(|| {
            let (inner, pool, stop) = (&self.inner, &self.pool, &self.stop);
            let mut tasks = lock(&self.tasks);
            tasks.push(tokio::spawn(report(
                inner.clone(),
                pool.clone(),
                stop.child_token(),
            )));
            for i in 0..inner.binds.len() {
                tasks.push(tokio::spawn(keep_bound(
                    inner.clone(),
                    i,
                    pool.clone(),
                    stop.child_token(),
                )));
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keep bind `i` up until `stop`: connect, bind, answer what the SMSC
/// delivers; after a drop, again with backoff (1 s doubling to 1 min).
async fn keep_bound(inner: Arc<Inner>, i: usize, pool: PgPool, stop: CancellationToken) {
    let bind = &inner.binds[i];
    let mut backoff = Duration::from_secs(1);
    let mut receiver = Receiver::new(&inner, pool);
    loop {
        let connected = tokio::select! {
            r = connect(&inner.config, inner.tls.clone()) => r,
            _ = stop.cancelled() => return,
        };
        match connected {
            Ok((client, mut events)) => {
                backoff = Duration::from_secs(1);
                *lock(&bind.client) = Some(client.clone());
                inner.set_state(i, BOUND.into());
                inner.up.notify_waiters();
                tracing::info!(backend = %inner.name, bind = i, "SMPP bound");
                loop {
                    let event = tokio::select! {
                        e = events.next() => e,
                        _ = stop.cancelled() => {
                            *lock(&bind.client) = None;
                            let _ = tokio::time::timeout(Duration::from_secs(2), client.unbind()).await;
                            let _ = client.close().await;
                            return;
                        }
                    };
                    match event {
                        None => break,
                        Some(Event::Incoming(command)) => {
                            let seq = command.sequence_number();
                            match command.pdu() {
                                Some(Pdu::DeliverSm(d)) => {
                                    let status = receiver.deliver(d).await;
                                    let _ = client
                                        .status(status)
                                        .deliver_sm_resp(seq, DeliverSmResp::default())
                                        .await;
                                }
                                Some(Pdu::Unbind) => {
                                    // the SMSC is closing this bind: agree, then bind again
                                    let _ = client.unbind_resp(seq).await;
                                    let _ = client.close().await;
                                }
                                _ => {}
                            }
                        }
                        Some(Event::Error(e)) => {
                            tracing::warn!(backend = %inner.name, bind = i, error = %e, "SMPP connection error");
                        }
                    }
                }
                *lock(&bind.client) = None;
                inner.set_state(i, "down: the connection closed; binding again".into());
                tracing::warn!(backend = %inner.name, bind = i, "SMPP bind lost; binding again");
            }
            Err(e) => {
                inner.set_state(i, format!("down: {e}"));
                tracing::warn!(backend = %inner.name, bind = i, error = %e, retry_in = ?backoff, "SMPP bind failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// A bind's state when it is up.
const BOUND: &str = "bound";

impl Inner {
    fn set_state(&self, i: usize, state: String) {
        *lock(&self.binds[i].state) = state;
        self.changed.notify_one();
    }
}

/// Keep this worker's rows in `dbrouter.binds` true until `stop`: written
/// when a bind's state changes and every 30 s (so a row not refreshed for
/// long belongs to a worker that died), deleted on stop. Each engine
/// instance (a reloaded backend builds a new one) tags its rows, so the old
/// instance's delete leaves the new one's rows alone. A database that cannot
/// be reached only delays the report: the binds never wait for it.
async fn report(inner: Arc<Inner>, pool: PgPool, stop: CancellationToken) {
    let worker = format!(
        "{}:{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    );
    let instance: i64 = rand::random();
    loop {
        let states: Vec<String> = inner.binds.iter().map(|b| lock(&b.state).clone()).collect();
        let written = sqlx::query(include_str!("../../sql/smpp_bind_states.sql"))
            .bind(&inner.name)
            .bind(&worker)
            .bind(instance)
            .bind(&states)
            .bind(BOUND)
            .execute(&pool);
        if let Err(e) = written.await {
            tracing::debug!(backend = %inner.name, error = %e, "could not record the SMPP bind states");
        }
        tokio::select! {
            _ = inner.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.cancelled() => break,
        }
    }
    let forgotten = sqlx::query(include_str!("../../sql/smpp_bind_forget.sql"))
        .bind(&worker)
        .bind(instance)
        .execute(&pool);
    if let Err(e) = forgotten.await {
        tracing::debug!(backend = %inner.name, error = %e, "could not forget the SMPP bind states");
    }
}

/// TLS settings trusting the CA certificates of the PEM file `path` (and
/// nothing else).
fn tls_trusting(path: &str) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("config.tls_ca: cannot read {path}: {e}"))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| format!("config.tls_ca: {path} is not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("config.tls_ca: a certificate of {path} is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("config.tls_ca: {path} holds no certificate"));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Connect and bind as a transceiver.
async fn connect(
    c: &Config,
    tls: Option<rustls::ClientConfig>,
) -> Result<(Client, BoxStream<'static, Event>), String> {
    let response_timeout = duration(
        "response_timeout",
        &c.response_timeout,
        Duration::from_secs(10),
    )?;
    let enquire_link = duration("enquire_link", &c.enquire_link, Duration::from_secs(30))?;
    // (rusmppc speaks SMPP 5.0 and by default refuses to send a 3.4 bind;
    // dbrouter binds as 3.4, what SMSCs take, and sends only 3.4 PDUs)
    let mut builder = ConnectionBuilder::new();
    match tls {
        Some(tls) => builder = builder.rustls_config(tls),
        // smpps:// with the web's roots: rusmppc builds the TLS config from
        // rustls's process-wide crypto provider, which rustls cannot choose
        // when a dependency compiles in aws-lc-rs beside the ring this crate
        // asks for (the browser tests' WebDriver client does). Choose ring;
        // an already chosen provider stays.
        None => {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }
    let (client, events, connection) = builder
        .disable_interface_version_check()
        .enquire_link_interval(enquire_link)
        .response_timeout(response_timeout)
        .no_spawn()
        .connect(&c.url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", c.url))?;
    tokio::spawn(repoll(connection));
    let bind = BindTransceiver::builder()
        .system_id(COctetString::from_str(&c.system_id).map_err(|e| e.to_string())?)
        .password(COctetString::from_str(&c.password).map_err(|e| e.to_string())?)
        .system_type(COctetString::from_str(&c.system_type).map_err(|e| e.to_string())?)
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    match client.bind_transceiver(bind).await {
        Ok(_) => Ok((client, events.boxed())),
        Err(e) => {
            let _ = client.close().await;
            Err(match status_of(&e) {
                Some(CommandStatus::EsmeRinvpaswd | CommandStatus::EsmeRinvsysid) => {
                    format!("{REFUSED_CREDENTIALS} ({e})")
                }
                _ => format!("bind refused: {e}"),
            })
        }
    }
}

/// Drive rusmppc's connection, polling it again every 5 ms besides its own
/// wake-ups. rusmppc 0.4.0 takes at most five new requests per poll and,
/// when nothing is left to read from the socket, returns without waking
/// itself for the rest: with more than five submits queued and every
/// earlier one answered, a bind stood still until the batch's send timeout
/// (window 100: every broadcast; window 10 with one bind: now and then).
/// A spare poll finds nothing to do and costs microseconds.
async fn repoll(connection: impl std::future::Future<Output = ()>) {
    let mut connection = std::pin::pin!(connection);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    std::future::poll_fn(|cx| loop {
        if connection.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        if tick.poll_tick(cx).is_pending() {
            return std::task::Poll::Pending;
        }
    })
    .await
}

/// How a bind's state says the SMSC refused system_id/password.
const REFUSED_CREDENTIALS: &str = "the SMSC refused the credentials";

/// The command status an SMSC answered with, when the error is one.
fn status_of(e: &rusmppc::error::Error) -> Option<CommandStatus> {
    match e {
        rusmppc::error::Error::UnexpectedResponse { response } => Some(response.status()),
        _ => None,
    }
}

/// One part of a text, ready for `submit_sm`.
struct Part {
    esm_class: EsmClass,
    data_coding: DataCoding,
    short_message: Vec<u8>,
    tlvs: Vec<MessageSubmissionRequestTlvValue>,
}

/// `text` as the `submit_sm`s that carry it.
fn parts(text: &str, how: Concatenation, reference: u8) -> Result<Vec<Part>, String> {
    let encoding = segments::encoding(text);
    let (coding, encode): (DataCoding, fn(&str) -> Vec<u8>) = match encoding {
        Encoding::Gsm7 => (DataCoding::McSpecific, |t| {
            gsm::encode_unpacked(t).unwrap_or_default()
        }),
        Encoding::Ucs2 => (DataCoding::Ucs2, |t| {
            t.encode_utf16().flat_map(u16::to_be_bytes).collect()
        }),
    };
    let pieces = segments::split(text);
    let total = pieces.len();
    if how == Concatenation::Payload && total > 1 {
        return Ok(vec![Part {
            esm_class: EsmClass::default(),
            data_coding: coding,
            short_message: Vec::new(),
            tlvs: vec![MessageSubmissionRequestTlvValue::MessagePayload(
                rusmpp::values::MessagePayload::new(rusmpp::types::AnyOctetString::from_slice(
                    &encode(text),
                )),
            )],
        }]);
    }
    let total_u8 = u8::try_from(total)
        .map_err(|_| format!("the text takes {total} parts; at most 255 can be joined"))?;
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(k, piece)| {
            let seq = (k + 1) as u8;
            let mut short_message = Vec::new();
            let mut esm_class = EsmClass::default();
            let mut tlvs = Vec::new();
            if total > 1 {
                match how {
                    Concatenation::Udh | Concatenation::Payload => {
                        short_message.extend([0x05, 0x00, 0x03, reference, total_u8, seq]);
                        esm_class = esm_class.with_udhi_indicator();
                    }
                    Concatenation::Sar => {
                        tlvs.push(MessageSubmissionRequestTlvValue::SarMsgRefNum(u16::from(
                            reference,
                        )));
                        tlvs.push(MessageSubmissionRequestTlvValue::SarTotalSegments(total_u8));
                        tlvs.push(MessageSubmissionRequestTlvValue::SarSegmentSeqnum(seq));
                    }
                }
            }
            short_message.extend(encode(piece));
            Part {
                esm_class,
                data_coding: coding,
                short_message,
                tlvs,
            }
        })
        .collect())
}

/// What an SMSC's answer to a `submit_sm` means for the transmission.
/// docs/GATEWAYS.md has this table.
fn outcome_of(status: CommandStatus, throttle_wait: Duration) -> Outcome {
    use CommandStatus::*;
    let code = u32::from(status);
    let what = format!("the SMSC answered {status:?} ({code:#04x})");
    match status {
        EsmeRthrottled | EsmeRmsgqful => Outcome::throttled(what, throttle_wait),
        EsmeRinvpaswd | EsmeRinvsysid | EsmeRbindfail => Outcome::Unauthorized { error: what },
        EsmeRinvdstadr | EsmeRinvsrcadr | EsmeRinvdstton | EsmeRinvdstnpi | EsmeRinvsrcton
        | EsmeRinvsrcnpi | EsmeRinvmsglen | EsmeRinvdcs | EsmeRinvesmclass | EsmeRinvnumdests
        | EsmeRinvdestflag | EsmeRinvsertyp | EsmeRinvtlvstream | EsmeRinvtlvlen
        | EsmeRinvtlvval | EsmeRinvrepflag | EsmeRinvprtflg | EsmeRinvregdlvflg => {
            Outcome::permanent(what)
        }
        _ => Outcome::retryable(what),
    }
}

impl Inner {
    /// A bound client and a window slot on it, waiting up to `wait` for a
    /// bind to come up.
    async fn slot(&self, wait: Duration) -> Option<(Client, tokio::sync::SemaphorePermit<'_>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // (registered before looking, so a bind coming up meanwhile
            // still wakes this)
            let woken = self.up.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let n = self.binds.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for k in 0..n {
                let bind = &self.binds[(start + k) % n];
                let client = lock(&bind.client).clone();
                if let Some(client) = client {
                    if let Ok(permit) = bind.window.acquire().await {
                        return Some((client, permit));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return None;
            }
        }
    }

    async fn submit(&self, identity: &str, part: &Part) -> Outcome {
        let c = &self.config;
        let Some((client, _permit)) = self.slot(Duration::from_secs(5)).await else {
            let states: Vec<String> = self.binds.iter().map(|b| lock(&b.state).clone()).collect();
            if states.iter().all(|s| s.contains(REFUSED_CREDENTIALS)) {
                // (pauses the backend, this as the reason; no attempt used)
                return Outcome::Unauthorized {
                    error: format!("{} {REFUSED_CREDENTIALS}; check config.system_id and config.password, then resume the backend", c.url),
                };
            }
            return Outcome::retryable(format!(
                "no SMPP bind to {} is up ({})",
                c.url,
                states.join("; ")
            ));
        };
        let destination = identity.trim_start_matches('+');
        let Ok(destination) = COctetString::<1, 21>::from_str(destination) else {
            return Outcome::permanent(format!(
                "identity {identity:?} is not an SMPP address (at most 20 ASCII characters)"
            ));
        };
        let Ok(short_message) = OctetString::from_vec(part.short_message.clone()) else {
            return Outcome::permanent("a part is longer than 254 bytes".to_string());
        };
        let submit = SubmitSm::builder()
            .source_addr_ton(self.source.ton)
            .source_addr_npi(self.source.npi)
            .source_addr(self.source.addr.clone())
            .dest_addr_ton(Ton::from(c.dest_ton))
            .dest_addr_npi(Npi::from(c.dest_npi))
            .destination_addr(destination)
            .esm_class(part.esm_class)
            .registered_delivery(if c.receipts {
                RegisteredDelivery::request_all()
            } else {
                RegisteredDelivery::default()
            })
            .data_coding(part.data_coding)
            .short_message(short_message)
            .tlvs(part.tlvs.clone())
            .build();
        match client.submit_sm(submit).await {
            Ok(resp) => Outcome::sent(Some(normalise_id(&resp.message_id().to_string()))),
            Err(e) => match status_of(&e) {
                Some(status) => outcome_of(status, self.throttle_wait),
                None => Outcome::retryable(format!("submit_sm to {} failed: {e}", c.url)),
            },
        }
    }
}

/// An SMSC's message id as stored and matched: lowercase, without leading
/// zeros (SMSCs disagree on both between the submit answer and the receipt).
pub fn normalise_id(id: &str) -> String {
    let id = id.trim().trim_end_matches('\0').to_ascii_lowercase();
    let trimmed = id.trim_start_matches('0');
    if trimmed.is_empty() && !id.is_empty() {
        "0".into()
    } else {
        trimmed.to_string()
    }
}

/// A receipt's id in the base the submit answer used.
fn receipt_id(id: &str, how: ReceiptIds) -> String {
    let id = normalise_id(id);
    match how {
        ReceiptIds::Same => id,
        // the receipt is decimal, the submit answer was hex
        ReceiptIds::Decimal => id.parse::<u128>().map(|n| format!("{n:x}")).unwrap_or(id),
        // the receipt is hex, the submit answer was decimal
        ReceiptIds::Hex => u128::from_str_radix(&id, 16)
            .map(|n| n.to_string())
            .unwrap_or(id),
    }
}

#[async_trait]
impl Backend for Smpp {
    fn start(&self) {
        self.start_binds();
    }

    async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn send(&self, req: &SendRequest) -> Result<Vec<Outcome>, SendError> {
        let inner = &self.inner;
        let reference = inner.reference.fetch_add(1, Ordering::Relaxed) as u8;
        let parts =
            parts(&req.text, inner.config.concatenation, reference).map_err(|e| SendError {
                error: e,
                permanent: true,
                retry_after: None,
            })?;
        let per_recipient = req.recipients.iter().map(|r| {
            let parts = &parts;
            async move {
                let sent =
                    futures::future::join_all(parts.iter().map(|p| inner.submit(&r.identity, p)))
                        .await;
                // Sent only when every part was (with every part's id when
                // there are several); else the first failure.
                if let Some(failed) = sent.iter().find(|o| !matches!(o, Outcome::Sent { .. })) {
                    return failed.clone();
                }
                let ids: Vec<String> = sent
                    .into_iter()
                    .map(|o| match o {
                        Outcome::Sent { gateway_id, .. } => gateway_id.unwrap_or_default(),
                        _ => String::new(),
                    })
                    .collect();
                Outcome::Sent {
                    gateway_id: ids.first().cloned(),
                    parts: if ids.len() > 1 { ids } else { Vec::new() },
                }
            }
        });
        Ok(futures::future::join_all(per_recipient).await)
    }

    fn sends_batches(&self) -> bool {
        true
    }

    async fn send_batch(
        &self,
        reqs: &[SendRequest],
    ) -> Result<Vec<Result<Vec<Outcome>, SendError>>, SendError> {
        Ok(futures::future::join_all(reqs.iter().map(|r| self.send(r))).await)
    }
}

/// What the SMSC delivers, written to the database.
struct Receiver {
    backend: String,
    backend_id: Option<i32>,
    receipt_ids: ReceiptIds,
    pool: PgPool,
}

impl Receiver {
    fn new(inner: &Inner, pool: PgPool) -> Self {
        Receiver {
            backend: inner.name.clone(),
            backend_id: None,
            receipt_ids: inner.config.receipt_ids,
            pool,
        }
    }

    /// Write one `deliver_sm`; the status to answer it with (ESME_ROK once
    /// committed; a system error, which the SMSC retries, when the database
    /// could not take it; an application error for what can never be read).
    async fn deliver(&mut self, d: &DeliverSm) -> CommandStatus {
        let result = match parse(d) {
            Ok(Delivered::Receipt {
                id,
                outcome,
                detail,
            }) => {
                self.receipt(receipt_id(&id, self.receipt_ids), outcome, detail)
                    .await
            }
            Ok(Delivered::Message { from, text, part }) => self.message(from, text, part).await,
            Err(e) => {
                tracing::warn!(backend = %self.backend, error = %e, "SMPP deliver_sm refused");
                return CommandStatus::EsmeRxPAppn;
            }
        };
        match result {
            Ok(()) => CommandStatus::EsmeRok,
            Err(e) => {
                tracing::warn!(backend = %self.backend, error = %e, "cannot record an SMPP deliver_sm; the SMSC will send it again");
                CommandStatus::EsmeRsyserr
            }
        }
    }

    /// A message, or a part of a long one (held until its message is whole:
    /// dbrouter.receive_part).
    async fn message(
        &self,
        from: String,
        text: String,
        part: Option<(u16, u8, u8)>,
    ) -> Result<(), sqlx::Error> {
        let query = match part {
            Some((reference, total, number)) => {
                sqlx::query(include_str!("../../sql/smpp_receive_part.sql"))
                    .bind(self.backend.clone())
                    .bind(from)
                    .bind(i32::from(reference))
                    .bind(i32::from(total))
                    .bind(i32::from(number))
                    .bind(text)
            }
            None => sqlx::query(include_str!("../../sql/serve_inbox.sql"))
                .bind(vec![self.backend.clone()])
                .bind(vec![from])
                .bind(vec![text])
                .bind(vec![None::<String>])
                .bind(vec![Value::Object(Default::default())]),
        };
        query.execute(&self.pool).await.map(|_| ())
    }

    async fn receipt(
        &mut self,
        id: String,
        outcome: &'static str,
        detail: Option<String>,
    ) -> Result<(), sqlx::Error> {
        let backend_id = match self.backend_id {
            Some(id) => id,
            None => {
                let id: i32 =
                    sqlx::query_scalar("SELECT id FROM dbrouter.backends WHERE name = $1")
                        .bind(&self.backend)
                        .fetch_one(&self.pool)
                        .await?;
                self.backend_id = Some(id);
                id
            }
        };
        sqlx::query(include_str!("../../sql/serve_receipts.sql"))
            .bind(vec![backend_id])
            .bind(vec![None::<i64>])
            .bind(vec![Some(id)])
            .bind(vec![outcome])
            .bind(vec![detail])
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// What a `deliver_sm` carries.
#[derive(Debug, PartialEq)]
enum Delivered {
    Receipt {
        id: String,
        outcome: &'static str,
        detail: Option<String>,
    },
    Message {
        from: String,
        text: String,
        /// (reference, total, number) of a part of a long message
        part: Option<(u16, u8, u8)>,
    },
}

/// Read a `deliver_sm`: a receipt (the receipt bits of esm_class, or a
/// receipted_message_id) or a message from a phone.
fn parse(d: &DeliverSm) -> Result<Delivered, String> {
    let esm = u8::from(d.esm_class);
    let mut receipted = None;
    let mut state = None;
    let mut payload = None;
    let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
    for tlv in d.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => receipted = Some(id.to_string()),
            Some(TlvValue::MessageState(s)) => state = Some(u8::from(*s)),
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.as_ref().to_vec()),
            Some(TlvValue::SarMsgRefNum(r)) => sar_ref = Some(*r),
            Some(TlvValue::SarTotalSegments(t)) => sar_total = Some(*t),
            Some(TlvValue::SarSegmentSeqnum(n)) => sar_seq = Some(*n),
            _ => {}
        }
    }
    let body: Vec<u8> = payload.unwrap_or_else(|| d.short_message().as_ref().to_vec());
    let is_receipt = esm & 0x3C == 0x04 || esm & 0x3C == 0x20 || receipted.is_some();
    if is_receipt {
        let text = String::from_utf8_lossy(&body).into_owned();
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        let id = receipted.or_else(|| field("id:")).ok_or(
            "a delivery receipt without a message id (no receipted_message_id, no id: in its text)",
        )?;
        let stat = field("stat:");
        let outcome = match (state, stat.as_deref()) {
            (Some(2), _) | (None, Some("DELIVRD")) => "D",
            (Some(3 | 4 | 5 | 8), _)
            | (None, Some("EXPIRED" | "DELETED" | "UNDELIV" | "REJECTD")) => "E",
            _ => "B",
        };
        let detail = Some(match (&stat, field("err:")) {
            (Some(s), Some(e)) => format!("{s} err:{e}"),
            (Some(s), None) => s.clone(),
            (None, _) => format!("message_state {}", state.unwrap_or(0)),
        });
        return Ok(Delivered::Receipt {
            id,
            outcome,
            detail,
        });
    }
    let coding = u8::from(d.data_coding);
    let mut body = body.as_slice();
    let mut part = match (sar_ref, sar_total, sar_seq) {
        (Some(r), Some(t), Some(n)) => Some((r, t, n)),
        _ => None,
    };
    if esm & 0x40 != 0 {
        // A user data header: skipped, its concatenation element kept
        // (0x00: 8-bit reference, 0x08: 16-bit).
        let len = usize::from(
            *body
                .first()
                .ok_or("an empty message with a user data header")?,
        );
        let mut header = body
            .get(1..=len)
            .ok_or("a user data header longer than the message")?;
        while let [iei, iel, rest @ ..] = header {
            let (element, next) = rest.split_at(usize::from(*iel).min(rest.len()));
            match (iei, element) {
                (0x00, [r, t, n]) => part = Some((u16::from(*r), *t, *n)),
                (0x08, [r1, r2, t, n]) => part = Some((u16::from_be_bytes([*r1, *r2]), *t, *n)),
                _ => {}
            }
            header = next;
        }
        body = &body[len + 1..];
    }
    let text = match coding & 0x0F {
        0 => gsm::decode_unpacked(body)?,
        8 => String::from_utf16(
            &body
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect::<Vec<_>>(),
        )
        .map_err(|_| "UCS-2 text that is not valid UTF-16".to_string())?,
        1 => String::from_utf8(body.to_vec())
            .map_err(|_| "IA5 text that is not ASCII".to_string())?,
        3 => body.iter().map(|&b| char::from(b)).collect(),
        other => {
            return Err(format!(
                "data_coding {other:#04x} is not text dbrouter can read"
            ))
        }
    };
    let source = d.source_addr.to_string();
    let ton = u8::from(d.source_addr_ton);
    let from = if ton == 1 && source.bytes().all(|b| b.is_ascii_digit()) {
        format!("+{source}")
    } else {
        source
    };
    Ok(Delivered::Message {
        from,
        text,
        part: part.filter(|&(_, total, _)| total > 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_normalised_for_matching() {
        assert_eq!(normalise_id("000A1b"), "a1b");
        assert_eq!(normalise_id("0000"), "0");
        assert_eq!(receipt_id("0255", ReceiptIds::Decimal), "ff");
        assert_eq!(receipt_id("FF", ReceiptIds::Hex), "255");
        assert_eq!(receipt_id("00ff", ReceiptIds::Same), "ff");
    }

    #[test]
    fn long_texts_become_concatenated_parts() {
        let text = "x".repeat(200);
        let p = parts(&text, Concatenation::Udh, 7).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(&p[0].short_message[..6], &[5, 0, 3, 7, 2, 1]);
        assert_eq!(p[0].short_message.len(), 6 + 153);
        assert_eq!(&p[1].short_message[..6], &[5, 0, 3, 7, 2, 2]);
        let p = parts(&text, Concatenation::Sar, 7).unwrap();
        assert_eq!(p[0].short_message.len(), 153);
        assert_eq!(p[0].tlvs.len(), 3);
        let p = parts(&text, Concatenation::Payload, 7).unwrap();
        assert_eq!(p.len(), 1);
        let p = parts("Привет", Concatenation::Udh, 7).unwrap();
        assert_eq!(p[0].short_message.len(), 12);
        assert_eq!(u8::from(p[0].data_coding), 8);
    }
}
