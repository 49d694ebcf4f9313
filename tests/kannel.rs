//! dbrouter behind a real Kannel (Debian's `kannel`: bearerbox and smsbox;
//! bin/test installs it), configured with docs/kannel/kannel.conf — the
//! README's config — and Kannel's fake SMSC protocol on the operator side:
//! the test is the SMSC, connected to bearerbox's `smsc = fake` port,
//! speaking one message per line. `dbrouter serve` and `dbrouter worker`
//! run as processes, so they can be killed and restarted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, spawn_serve, spawn_worker, wait_until, Proc, TestDb};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(90);
const SECRET: &str = "s3cret";

/// A Kannel binary: on PATH or in /usr/sbin (Debian's place, often not on
/// a user's PATH).
fn kannel_bin(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!("{name} is not installed: bin/test installs Debian's kannel package (apt-get install kannel)")
    })
}

fn replace_once(conf: &mut String, from: &str, to: &str) {
    assert!(
        conf.contains(from),
        "docs/kannel/kannel.conf no longer contains {from:?}: keep tests/kannel.rs in step"
    );
    *conf = conf.replace(from, to);
}

/// bearerbox and smsbox on free ports, their files in a temp dir.
struct Kannel {
    dir: PathBuf,
    conf: PathBuf,
    bearerbox: Proc,
    smsbox: Option<Proc>,
    boxes: u16,
    sendsms: u16,
    smsc: u16,
}

enum Receive {
    GetUrl,
    PostUrl,
    /// get-url with `mo-recode = false`: UCS-2 arrives as raw UTF-16BE.
    GetUrlRaw,
}

impl Kannel {
    fn start(serve: &str, receive: Receive) -> Kannel {
        let dir = std::env::temp_dir().join(format!(
            "dbrouter-kannel-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("store")).unwrap();
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kannel");
        let mut conf = std::fs::read_to_string(docs.join("kannel.conf")).unwrap();
        if let Receive::GetUrlRaw = receive {
            replace_once(&mut conf, "mo-recode = true", "mo-recode = false");
        }
        if let Receive::PostUrl = receive {
            let at = conf.find("group = sms-service").unwrap();
            conf.truncate(at);
            let post = std::fs::read_to_string(docs.join("post-url.conf")).unwrap();
            let at = post.find("group = sms-service").unwrap();
            conf.push_str(&post[at..]);
        }
        let (admin, boxes, sendsms, smsc) = (free_port(), free_port(), free_port(), free_port());
        replace_once(
            &mut conf,
            "admin-port = 13000",
            &format!("admin-port = {admin}"),
        );
        replace_once(
            &mut conf,
            "smsbox-port = 13001",
            &format!("smsbox-port = {boxes}"),
        );
        replace_once(
            &mut conf,
            "bearerbox-port = 13001",
            &format!("bearerbox-port = {boxes}"),
        );
        replace_once(
            &mut conf,
            "sendsms-port = 13013",
            &format!("sendsms-port = {sendsms}"),
        );
        replace_once(&mut conf, "port = 10000", &format!("port = {smsc}"));
        replace_once(&mut conf, "/var/log/kannel", dir.to_str().unwrap());
        replace_once(
            &mut conf,
            "/var/spool/kannel/store",
            dir.join("store").to_str().unwrap(),
        );
        replace_once(&mut conf, "http://127.0.0.1:8080", serve);
        let path = dir.join("kannel.conf");
        std::fs::write(&path, conf).unwrap();
        let bearerbox = Self::spawn("bearerbox", &dir, &path);
        let mut k = Kannel {
            dir,
            conf: path,
            bearerbox,
            smsbox: None,
            boxes,
            sendsms,
            smsc,
        };
        k.start_smsbox();
        k
    }

    fn spawn(name: &str, dir: &Path, conf: &Path) -> Proc {
        let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
        Proc(
            Command::new(kannel_bin(name))
                .arg(conf)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}")),
        )
    }

    /// smsbox, once bearerbox takes boxes (smsbox gives up at once if it
    /// cannot connect).
    fn start_smsbox(&mut self) {
        let deadline = std::time::Instant::now() + LONG;
        while std::net::TcpStream::connect(("127.0.0.1", self.boxes)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "bearerbox never listened for boxes\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.smsbox = Some(Self::spawn("smsbox", &self.dir, &self.conf));
    }

    fn kill_smsbox(&mut self) {
        if let Some(mut p) = self.smsbox.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Stop smsbox as an operator does (SIGTERM), and wait until it is gone.
    fn stop_smsbox(&mut self) {
        if let Some(mut p) = self.smsbox.take() {
            let pid = nix::unistd::Pid::from_raw(p.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = p.wait();
        }
    }

    fn sendsms_url(&self) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/sendsms", self.sendsms)
    }

    /// Kannel's log files, for a failure's message.
    fn logs(&self) -> String {
        ["bearerbox.log", "smsbox.log", "smsbox.out"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {f}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Kannel {
    fn drop(&mut self) {
        self.kill_smsbox();
        let _ = self.bearerbox.kill();
        let _ = self.bearerbox.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Kannel's files are kept in {}", self.dir.display());
        }
    }
}

/// The operator's side: Kannel's fake SMSC protocol, `from to type data`
/// per line. Sends MOs; keeps every MT Kannel hands it, as (to, text).
struct Smsc {
    writer: OwnedWriteHalf,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Smsc {
    async fn connect(port: u16) -> Smsc {
        let deadline = tokio::time::Instant::now() + LONG;
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("bearerbox never accepted the fake SMSC on port {port}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (reader, writer) = stream.into_split();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).split(b'\n');
            while let Ok(Some(line)) = lines.next_segment().await {
                if let Some(mt) = parse_mt(&line) {
                    seen.lock().unwrap().push(mt);
                }
            }
        });
        Smsc { writer, got }
    }

    /// An MO as GSM text (one line: no newline in it).
    async fn text(&mut self, from: &str, text: &str) {
        assert!(!text.contains('\n'));
        self.line(format!("{from} 15015 text {text}\n")).await;
    }

    /// An MO as UCS-2, as a phone sends emoji and other scripts.
    async fn ucs2(&mut self, from: &str, text: &str) {
        let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let data = percent_encoding::percent_encode(&bytes, percent_encoding::NON_ALPHANUMERIC);
        self.line(format!("{from} 15015 ucs2 {data}\n")).await;
    }

    async fn line(&mut self, line: String) {
        self.writer.write_all(line.as_bytes()).await.unwrap();
    }

    fn got(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }
}

/// One line Kannel sent the fake SMSC: `from to text|ucs-2|data payload`.
fn parse_mt(line: &[u8]) -> Option<(String, String)> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let (_from, to, kind, data) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let to = String::from_utf8_lossy(to).into_owned();
    let text = match kind {
        b"text" => String::from_utf8_lossy(data).into_owned(),
        b"ucs-2" => {
            // Kannel's URL-encoding writes a 0x20 byte as '+'.
            let plus: Vec<u8> = data
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            let bytes: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => format!(
            "<{} {}>",
            String::from_utf8_lossy(kind),
            String::from_utf8_lossy(data)
        ),
    };
    Some((to, text))
}

async fn serve_up(base: &str) {
    wait_until("serve answers /healthz", LONG, || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// A database with the `kannel` backend, serve and a worker (echo app,
/// quick retries) running against it, and Kannel in front.
struct Setup {
    db: TestDb,
    kannel: Kannel,
    smsc: Smsc,
    serve: Proc,
    serve_port: u16,
    _worker: Proc,
}

async fn setup(receive: Receive) -> Setup {
    let db = TestDb::new().await;
    let serve_port = free_port();
    let base = format!("http://127.0.0.1:{serve_port}");
    let serve = spawn_serve(&db.url, serve_port);
    let kannel = Kannel::start(&base, receive);
    db.backend(
        "kannel",
        "kannel",
        json!({"url": kannel.sendsms_url(), "username": "dbrouter", "password": "change-me-too",
               "from": "15015",
               "dlr_url": format!("{base}/kannel/kannel/dlr?secret={SECRET}"),
               "inbound": {"secret": SECRET}, "timeout": "10s"}),
        None,
    )
    .await;
    let worker = spawn_worker(
        &db.url,
        &[
            "--apps",
            "echo",
            "--retry-backoff",
            "200ms",
            "--max-backoff",
            "1s",
            "--max-attempts",
            "1000",
            "--poll-interval",
            "200ms",
        ],
    );
    serve_up(&base).await;
    let smsc = Smsc::connect(kannel.smsc).await;
    Setup {
        db,
        kannel,
        smsc,
        serve,
        serve_port,
        _worker: worker,
    }
}

impl Setup {
    /// Stop everything and drop the database.
    async fn finish(self) {
        let Setup {
            db,
            kannel,
            mut serve,
            _worker: mut worker,
            ..
        } = self;
        drop(kannel);
        let _ = serve.kill();
        let _ = worker.kill();
        db.drop().await;
    }

    async fn wait_for_mt(&self, n: usize) -> Vec<(String, String)> {
        let what = format!("Kannel hands the SMSC {n} messages");
        let logs = || self.kannel.logs();
        wait_until_or(&what, || async { self.smsc.got().len() >= n }, logs).await;
        self.smsc.got()
    }

    async fn inbound_texts(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT text FROM dbrouter.messages WHERE direction = 'I' ORDER BY id")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }
}

/// wait_until, with Kannel's logs in the failure.
async fn wait_until_or<F, Fut>(what: &str, mut check: F, logs: impl Fn() -> String)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LONG;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phone → SMSC → Kannel → serve → worker (echo) → Kannel → SMSC: texts in
/// GSM and UCS-2, emoji, newlines, tabs and double spaces arrive exactly
/// both ways; delivery reports turn every reply D. Then a broadcast whose
/// smsbox is stopped for 5 s halfway: nothing is lost, and its reports
/// arrive too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_go_through_a_real_kannel_both_ways_exactly() {
    let mut s = setup(Receive::GetUrl).await;
    let phone = "+255700000001";
    let sent = [
        ("text", "echo hello  world"),
        ("ucs2", "echo café 😀 ✓"),
        ("ucs2", "echo line one\nline two\tand a tab"),
        ("text", "echo Price: 5€ [ok] {x}"),
    ];
    for (kind, text) in sent {
        match kind {
            "text" => s.smsc.text(phone, text).await,
            _ => s.smsc.ucs2(phone, text).await,
        }
    }
    let mut got = s.wait_for_mt(sent.len()).await;
    got.sort();
    let mut want: Vec<(String, String)> = sent
        .iter()
        .map(|(_, t)| (phone.to_string(), t["echo ".len()..].to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want, "the replies, byte for byte");
    let mut stored = s.inbound_texts().await;
    stored.sort();
    let mut sent_texts: Vec<String> = sent.iter().map(|(_, t)| t.to_string()).collect();
    sent_texts.sort();
    assert_eq!(stored, sent_texts, "the messages, byte for byte");
    wait_until(
        "every reply's delivery report arrives (D)",
        LONG,
        || async { s.db.message_states().await == "IR4,OD4" },
    )
    .await;

    // A broadcast, with smsbox (sendsms) down for 5 s in the middle.
    let identities: Vec<String> = (0..200).map(|i| format!("+2557100{i:05}")).collect();
    let msg = s.db.broadcast("kannel", &identities, "news").await;
    wait_until("the broadcast starts reaching the SMSC", LONG, || async {
        s.smsc.got().iter().any(|(_, t)| t == "news")
    })
    .await;
    s.kannel.stop_smsbox();
    // The outage itself: a gateway down for a while, not a wait for a state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.kannel.start_smsbox();
    let logs = || s.kannel.logs();
    wait_until_or(
        "every identity of the broadcast is delivered (D)",
        || async {
            s.db.scalar_str(&format!(
                "SELECT status::text FROM dbrouter.messages WHERE id = {msg}"
            ))
            .await
                == "D"
        },
        logs,
    )
    .await;
    let reached: std::collections::HashSet<String> = s
        .smsc
        .got()
        .into_iter()
        .filter(|(_, t)| t == "news")
        .map(|(to, _)| to)
        .collect();
    let missing: Vec<&String> = identities
        .iter()
        .filter(|i| !reached.contains(*i))
        .collect();
    assert!(missing.is_empty(), "never reached the SMSC: {missing:?}");
    s.db.assert_invariants().await;
    s.finish().await;
}

/// The post-url variant (text as the body, its charset in Content-Type),
/// and `serve` killed and restarted while messages arrive: Kannel retries
/// (http-request-retry) and dbrouter stores each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_url_works_and_a_serve_restart_loses_nothing() {
    let mut s = setup(Receive::PostUrl).await;
    s.smsc
        .ucs2("+255700000002", "echo 😀 by post\nsecond line")
        .await;
    s.smsc.text("+255700000002", "echo plain  post").await;
    let mut got = s.wait_for_mt(2).await;
    got.sort();
    assert_eq!(
        got,
        [
            ("+255700000002".to_string(), "plain  post".to_string()),
            (
                "+255700000002".to_string(),
                "😀 by post\nsecond line".to_string()
            ),
        ]
    );

    let n = 30;
    for i in 0..n {
        if i == 10 {
            let _ = s.serve.kill();
            let _ = s.serve.wait();
        }
        s.smsc.text("+255700000003", &format!("restart {i}")).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // serve was down while the last 20 arrived (1.2 s or so).
    s.serve = spawn_serve(&s.db.url, s.serve_port);
    let logs = || s.kannel.logs();
    wait_until_or(
        "every message sent across the restart is stored",
        || async {
            s.db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE text LIKE 'restart %'")
                .await
                >= n
        },
        logs,
    )
    .await;
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT text FROM dbrouter.messages WHERE text LIKE 'restart %' ORDER BY text",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    let mut want: Vec<String> = (0..n).map(|i| format!("restart {i}")).collect();
    want.sort();
    assert_eq!(texts, want, "each once, none lost");
    s.finish().await;
}

/// Without `mo-recode`, Kannel hands a phone's UCS-2 on as raw UTF-16BE
/// (`coding=2&charset=UTF-16BE`): stored and answered exactly all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_ucs2_from_kannel_without_mo_recode_arrives_exactly() {
    let mut s = setup(Receive::GetUrlRaw).await;
    s.smsc
        .ucs2(
            "+255700000004",
            "echo Привет 😀
ok",
        )
        .await;
    let got = s.wait_for_mt(1).await;
    assert_eq!(
        got,
        [(
            "+255700000004".to_string(),
            "Привет 😀
ok"
            .to_string()
        )]
    );
    assert_eq!(
        s.inbound_texts().await,
        ["echo Привет 😀
ok"]
    );
    s.finish().await;
}

/// The README and docs/GATEWAYS.md show the configs the tests run.
#[test]
fn the_docs_show_the_tested_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (doc, f) in [
        ("README.md", "kannel.conf"),
        ("docs/GATEWAYS.md", "post-url.conf"),
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let conf = std::fs::read_to_string(root.join("docs/kannel").join(f)).unwrap();
        assert!(
            text.contains(conf.trim_end()),
            "{doc} must show docs/kannel/{f} as it is"
        );
    }
}
