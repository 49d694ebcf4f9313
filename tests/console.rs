//! The web console (`dbrouter console`) as people use it: in a real browser,
//! Debian's chromium driven through its chromedriver (bin/test installs
//! both), against a real `dbrouter console` and `dbrouter worker`. Every
//! page is kept as a screenshot at a laptop's and at a phone's size in
//! target/console-screenshots/. The forms' CSRF checks and the read-only
//! user are tested over plain HTTP, as an attacker's page or script would
//! send them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, spawn_worker, wait_until, Proc, TestDb};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

fn set_password(url: &str, user: &str, password: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(["console", "--set-password", "--user", user])
        .args(extra)
        .env("DATABASE_URL", url)
        .env("DBROUTER_CONSOLE_PASSWORD", password)
        .env("DBROUTER_LOG", "error")
        .output()
        .expect("run dbrouter console --set-password")
}

/// `dbrouter console` on a free port, once it answers; its base URL.
async fn start_console(db: &TestDb) -> (Proc, String) {
    let port = free_port();
    let proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_dbrouter"))
            .args(["console", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &db.url)
            .env("DBROUTER_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dbrouter console"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let login = format!("{base}/login");
    wait_until("the console answers", Duration::from_secs(30), || async {
        reqwest::get(&login)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    (proc, base)
}

/// A console and a worker on a database with one backend, `sms`, recording
/// what it sends (the `database` engine), and the console user `admin`.
async fn setup() -> (TestDb, Proc, Proc, String) {
    let db = TestDb::new().await;
    db.backend("sms", "database", json!({}), None).await;
    let out = set_password(&db.url, "admin", PASSWORD, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = spawn_worker(
        &db.url,
        &["--poll-interval", "200ms", "--retry-backoff", "0s"],
    );
    let (console, base) = start_console(&db).await;
    (db, worker, console, base)
}

struct Browser {
    client: Client,
    _driver: Proc,
    _profile: PathBuf,
}

/// Headless chromium through a chromedriver of our own on a free port.
async fn browser() -> Browser {
    let port = free_port();
    let driver = Proc(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "run chromedriver (Debian: apt-get install chromium-driver; bin/test installs it)",
            ),
    );
    let profile = std::env::temp_dir().join(format!("dbrouter-chromium-{port}"));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().cloned().unwrap_or_default();
    let webdriver = format!("http://127.0.0.1:{port}");
    // fantoccini's rustls, with the crypto the product already uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut client = None;
    for _ in 0..200 {
        let mut builder = ClientBuilder::rustls().expect("a TLS config for the WebDriver client");
        match builder.capabilities(caps.clone()).connect(&webdriver).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            // chromedriver is still starting.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Browser {
        client: client.expect("chromedriver did not start a chromium session within 20 s"),
        _driver: driver,
        _profile: profile,
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed never closed its session, and chromedriver is
        // killed, not asked: end the chromium it started (found by its
        // profile) so a failed run leaves no browser behind.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("--user-data-dir={}", self._profile.display()))
            .status();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/console-screenshots");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

async fn wait_for(c: &Client, xpath: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::XPath(xpath))
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let page = c.source().await.unwrap_or_default();
            panic!("no {xpath} on the page within 30 s ({e}); at {url}:\n{page}")
        }
    }
}

async fn fill(c: &Client, css: &str, text: &str) {
    let field = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no field {css}: {e}"));
    field.clear().await.expect("clear field");
    field.send_keys(text).await.expect("type into field");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} to click: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn an_operator_works_through_the_console_in_chromium() {
    let (db, _worker, _console, base) = setup().await;
    let b = browser().await;
    let c = &b.client;

    // Not logged in: the login page, which refuses a wrong password.
    c.goto(&format!("{base}/messages"))
        .await
        .expect("open the console");
    wait_for(c, "//h1[.='Log in']").await;
    screenshot(c, "login").await;
    fill(c, "input[name=user]", "admin").await;
    fill(c, "input[name=password]", "not the password").await;
    click(c, "form button[type=submit]").await;
    wait_for(
        c,
        "//p[@role='alert'][contains(., 'wrong user name or password')]",
    )
    .await;
    fill(c, "input[name=user]", "admin").await;
    fill(c, "input[name=password]", PASSWORD).await;
    click(c, "form button[type=submit]").await;
    // Back where the browser was going.
    wait_for(c, "//h1[.='Messages']").await;

    // Backends: pause with a reason, then resume.
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(c, "//tr[@data-backend='sms']//span[.='sending']").await;
    screenshot(c, "backends").await;
    fill(
        c,
        "tr[data-backend=sms] input[name=reason]",
        "maintenance window",
    )
    .await;
    click(c, "tr[data-backend=sms] form[action$='/pause'] button").await;
    wait_for(c, "//p[@role='status'][contains(., 'Paused sms')]").await;
    wait_for(
        c,
        "//tr[@data-backend='sms']//small[.='maintenance window']",
    )
    .await;
    assert_eq!(
        db.scalar_str("SELECT pause_reason FROM dbrouter.backends WHERE name = 'sms'")
            .await,
        "maintenance window"
    );
    screenshot(c, "backends-paused").await;
    click(c, "tr[data-backend=sms] form[action$='/resume'] button").await;
    wait_for(c, "//p[@role='status'][contains(., 'Resumed sms')]").await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.backends WHERE paused_at IS NULL")
            .await,
        1
    );

    // Find a message by its text and open it.
    db.exec("INSERT INTO dbrouter.outbox (backend, identity, text) VALUES ('sms', '+255700000042', 'Your results are ready')")
        .await;
    wait_until("the message is sent", Duration::from_secs(30), || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE status = 'S'")
            .await
            == 1
    })
    .await;
    c.goto(&format!("{base}/messages")).await.unwrap();
    fill(c, "input[name=q]", "results are").await;
    click(c, "form.filters button[type=submit]").await;
    wait_for(
        c,
        "//table[contains(@class,'messages')]//a[contains(., 'Your results are ready')]",
    )
    .await;
    screenshot(c, "messages").await;
    click(c, "table.messages a.text").await;
    wait_for(c, "//h1[starts-with(., 'Message')]").await;
    wait_for(c, "//td[.='+255700000042']").await;
    wait_for(c, "//h1/span[.='sent']").await;
    screenshot(c, "message").await;

    // A broadcast: preview counts the duplicate and the opted-out phone,
    // then the message's page follows it to the end.
    db.exec("SELECT dbrouter.opt_out('sms', '+255700000003')")
        .await;
    c.goto(&format!("{base}/broadcast")).await.unwrap();
    fill(
        c,
        "textarea[name=recipients]",
        "+255700000001\n+255700000002\n+255700000002\n+255700000003",
    )
    .await;
    fill(c, "textarea[name=text]", "The clinic opens at 9 tomorrow.").await;
    screenshot(c, "broadcast").await;
    click(c, "form[action='/broadcast/preview'] button").await;
    wait_for(c, "//h1[.='Preview']").await;
    assert_eq!(text_of(c, "[data-recipients]").await, "3");
    assert_eq!(text_of(c, "[data-duplicates]").await, "1");
    assert!(text_of(c, "[data-opted-out]").await.starts_with('1'));
    assert_eq!(text_of(c, "[data-will-send]").await, "2");
    screenshot(c, "broadcast-preview").await;
    click(c, "form[action='/broadcast/send'] button").await;
    wait_for(c, "//p[contains(., 'finished')]").await;
    // Finished, the page is drawn once more, its table too.
    wait_for(c, "//tr[td='+255700000002']//span[.='sent']").await;
    wait_for(c, "//tr[td='+255700000003']//td[.='opted out']").await;
    screenshot(c, "broadcast-progress").await;
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(c.identity || ':' || t.status || ':' || coalesce(t.last_error, ''), ' ' ORDER BY c.identity)
               FROM dbrouter.transmissions t JOIN dbrouter.connections c ON c.id = t.connection_id
               JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.text = 'The clinic opens at 9 tomorrow.'"
        )
        .await,
        "+255700000001:S: +255700000002:S: +255700000003:E:opted out"
    );

    // The test page: a phone says "echo hello phone"; the echo app's reply
    // appears in the conversation.
    c.goto(&format!("{base}/test")).await.unwrap();
    fill(c, "input[name=identity]", "+255700000099").await;
    fill(c, "input[name=text]", "echo hello phone").await;
    click(c, "form[action='/test'] button").await;
    wait_for(
        c,
        "//ol[@class='conversation']/li[@class='phone']//a[.='echo hello phone']",
    )
    .await;
    wait_for(
        c,
        "//ol[@class='conversation']/li[@class='reply']//a[.='hello phone']",
    )
    .await;
    screenshot(c, "test").await;
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.database_backend_sends WHERE identity = '+255700000099' AND text = 'hello phone'"
        )
        .await,
        1,
        "the reply went out through the backend"
    );

    // The same pages at a phone's size.
    c.set_window_size(390, 844)
        .await
        .expect("phone-sized window");
    for (name, path) in [
        ("phone-backends", "/"),
        ("phone-messages", "/messages"),
        ("phone-broadcast", "/broadcast"),
        ("phone-test", "/test"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        wait_for(c, "//h1").await;
        // Nothing wider than the screen but the tables, which scroll in their box.
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth",
                vec![],
            )
            .await
            .expect("measure the page");
        assert!(
            overflow.as_i64().unwrap_or(1) <= 0,
            "{path} is wider than a phone: {overflow}"
        );
        screenshot(c, name).await;
    }

    // Logging out ends the session.
    c.set_window_size(1280, 900).await.unwrap();
    c.goto(&format!("{base}/")).await.unwrap();
    click(c, "form[action='/logout'] button").await;
    wait_for(c, "//h1[.='Log in']").await;
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(c, "//h1[.='Log in']").await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.console_sessions")
            .await,
        0
    );

    // A session that ends while a live page is open (expired, or its user's
    // password changed): the page's next refresh takes the browser to the
    // login instead of drawing the login form inside the table.
    fill(c, "input[name=user]", "admin").await;
    fill(c, "input[name=password]", PASSWORD).await;
    click(c, "form button[type=submit]").await;
    wait_for(c, "//h1[.='Backends']").await;
    db.exec("DELETE FROM dbrouter.console_sessions").await;
    wait_for(c, "//h1[.='Log in']").await;

    b.client.clone().close().await.expect("close chromium");
}

/// A logged-in session over plain HTTP: its cookie and its CSRF token.
async fn log_in(base: &str, user: &str, password: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let login_cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = form.text().await.unwrap();
    let nonce = between(&page, "name=\"nonce\" value=\"", "\"");
    let r = post(
        &http,
        &format!("{base}/login"),
        &login_cookie,
        &[
            ("user", user),
            ("password", password),
            ("nonce", &nonce),
            ("next", "/"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303, "logged in as {user}");
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("dbrouter_session="))
        .expect("a session cookie");
    let page = get(&http, &format!("{base}/"), &session)
        .await
        .text()
        .await
        .unwrap();
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"");
    (session, csrf)
}

/// A POST of a form with a session's cookie.
async fn post<F: serde::Serialize + ?Sized>(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    form: &F,
) -> reqwest::Response {
    http.post(url)
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

/// A GET with a session's cookie.
async fn get(http: &reqwest::Client, url: &str, cookie: &str) -> reqwest::Response {
    http.get(url).header("cookie", cookie).send().await.unwrap()
}

fn between(page: &str, start: &str, end: &str) -> String {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {page}"))
        + start.len();
    page[from..].split(end).next().unwrap().to_string()
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_or_by_a_read_only_user_change_nothing() {
    let (db, _worker, _console, base) = setup().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let paused = || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.backends WHERE paused_at IS NOT NULL")
            .await
    };

    // Not logged in: pages lead to the login, forms are refused.
    let r = http
        .get(format!("{base}/messages?q=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Fmessages%3Fq%3Dx");
    let r = http
        .post(format!("{base}/backends/sms/pause"))
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let (session, csrf) = log_in(&base, "admin", PASSWORD).await;
    for token in [
        None,
        Some("0".repeat(64)),
        // One character off (the last, changed whatever it was).
        Some(format!(
            "{}{}",
            &csrf[..63],
            if csrf.ends_with('0') { '1' } else { '0' }
        )),
    ] {
        let mut form = vec![("reason", "forged".to_string())];
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        let r = post(
            &http,
            &format!("{base}/backends/sms/pause"),
            &session,
            &form,
        )
        .await;
        assert_eq!(r.status(), 403);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("CSRF token does not match"));
        assert_eq!(paused().await, 0, "a forged form paused the backend");
    }
    let r = post(
        &http,
        &format!("{base}/backends/sms/pause"),
        &session,
        &[("reason", "real"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(paused().await, 1);

    // A broadcast form sent twice (a double click, a reload) is one broadcast.
    let send = [
        ("csrf", csrf.as_str()),
        ("key", "0123456789abcdef0123"),
        ("backend", "sms"),
        ("recipients", "+1555000001, +1555000002"),
        ("text", "once"),
        ("send_at", ""),
    ];
    let mut at = vec![];
    for _ in 0..2 {
        let r = post(&http, &format!("{base}/broadcast/send"), &session, &send).await;
        assert_eq!(r.status(), 303);
        at.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    assert_eq!(at[0], at[1]);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE text = 'once'")
            .await,
        1
    );
    // Bad input is a clear error and writes nothing.
    let mut bad = send;
    bad[1] = ("key", "fedcba9876543210fedc");
    bad[3] = ("recipients", "   ");
    let r = post(&http, &format!("{base}/broadcast/send"), &session, &bad).await;
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("the identity list is empty"));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages WHERE direction = 'O'")
            .await,
        1
    );

    // A read-only user sees no buttons, and their forms are refused.
    let out = set_password(&db.url, "viewer", "just looking around", &["--read-only"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (viewer, viewer_csrf) = log_in(&base, "viewer", "just looking around").await;
    let page = get(&http, &format!("{base}/"), &viewer)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("read-only") && !page.contains("/resume\""),
        "{page}"
    );
    let r = post(
        &http,
        &format!("{base}/backends/sms/resume"),
        &viewer,
        &[("csrf", &viewer_csrf)],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(paused().await, 1, "a read-only user resumed a backend");

    // A password piped in (no variable, no terminal) is the first line.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_dbrouter"))
        .args(["console", "--set-password", "--user", "piped"])
        .env("DATABASE_URL", &db.url)
        .env("DBROUTER_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run dbrouter console --set-password");
    {
        use std::io::Write;
        let mut stdin = piped.stdin.take().expect("stdin");
        stdin.write_all(b"a password from a pipe\n").unwrap();
    }
    assert!(piped.wait().unwrap().success());
    log_in(&base, "piped", "a password from a pipe").await;

    // Passwords: too short is refused; only hashes are stored.
    let out = set_password(&db.url, "x", "short", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"));
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.console_users WHERE password_hash LIKE '$argon2id$%'"
        )
        .await,
        3
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM dbrouter.console_sessions WHERE token_sha256 = sha256(convert_to('{}', 'UTF8'))",
            session.trim_start_matches("dbrouter_session=")
        ))
        .await,
        1,
        "sessions are kept by their hash"
    );
    // A new password ends the user's sessions.
    let out = set_password(&db.url, "admin", "another long password", &[]);
    assert!(out.status.success());
    let r = get(&http, &format!("{base}/"), &session).await;
    assert_eq!(r.status(), 303);
}
