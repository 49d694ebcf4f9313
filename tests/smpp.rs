//! The `smpp` engine against an SMSC from another project (the `smpp34`
//! crate's server, tests/common/smsc.rs): bind, messages from phones in,
//! replies and broadcasts out in parts, receipts to D, throttling, refused
//! destinations and credentials, an SMSC restarted mid-broadcast.

mod common;
#[path = "common/smsc.rs"]
mod smsc;

use std::sync::Arc;
use std::time::Duration;

use common::{test_config, wait_until, TestDb};
use dbrouter::worker::Worker;
use serde_json::json;
use smsc::Smsc;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(20);

/// A worker (answering with `echo`) running in the background until the
/// returned token is cancelled.
async fn run_worker(db: &TestDb) -> (Arc<Worker>, CancellationToken) {
    let worker = db.worker(test_config()).await;
    run(worker)
}

/// A worker without apps (only the inbound side is looked at), bound to
/// the SMSC before this returns.
async fn run_receiver(db: &TestDb, smsc: &Smsc, cfg: dbrouter::WorkerConfig) -> CancellationToken {
    let worker = db.worker_with(cfg, vec![]).await;
    let (_w, stop) = run(worker);
    wait_until("the worker bound", LIMIT, || async {
        smsc.bound_sessions() == 1
    })
    .await;
    stop
}

fn run(worker: Arc<Worker>) -> (Arc<Worker>, CancellationToken) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let stop = CancellationToken::new();
    tokio::spawn(worker.clone().run(stop.clone()));
    (worker, stop)
}

async fn scalar(db: &TestDb, sql: &str) -> String {
    db.scalar_str(sql).await
}

/// A message from a phone comes in over the bind, `echo` answers it, the
/// reply goes out as a `submit_sm`, and the SMSC's receipt (its id in
/// another case and with leading zeros) makes it D.
#[tokio::test]
async fn a_message_in_a_reply_out_and_its_receipt_to_delivered() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    db.backend("op", "smpp", smsc.config(), None).await;
    let (_w, stop) = run_worker(&db).await;
    wait_until("the worker bound", LIMIT, || async {
        smsc.bound_sessions() == 1
    })
    .await;

    // GSM 7-bit, unpacked: @ is 0x00, € the escape then 0x65
    smsc.deliver("255700000001", 0, 0, b"echo hi \x00 \x1b\x65".to_vec())
        .await;
    wait_until("the reply submitted", LIMIT, || async {
        !smsc.submitted().is_empty()
    })
    .await;
    let sent = smsc.submitted();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].destination, "255700000001");
    assert_eq!(sent[0].source, "4321");
    assert_eq!(sent[0].data_coding, 0);
    assert_eq!(sent[0].registered_delivery & 1, 1, "receipts asked for");
    assert_eq!(
        dbrouter::gsm::decode_unpacked(&sent[0].short_message).unwrap(),
        "hi @ €"
    );
    assert_eq!(
        scalar(&db, "SELECT identity || ':' || text FROM dbrouter.messages m JOIN dbrouter.transmissions t ON t.message_id = m.id JOIN dbrouter.connections c ON c.id = t.connection_id WHERE m.direction = 'I'").await,
        "+255700000001:echo hi @ €"
    );
    wait_until("the reply S", LIMIT, || async {
        scalar(
            &db,
            "SELECT string_agg(status, '') FROM dbrouter.messages WHERE direction = 'O'",
        )
        .await
            == "S"
    })
    .await;
    assert_eq!(
        scalar(&db, "SELECT t.external_id FROM dbrouter.transmissions t JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.direction = 'O'").await,
        sent[0].id.trim_start_matches('0').to_lowercase()
    );

    smsc.receipt(&sent[0].id, "DELIVRD").await;
    wait_until("the reply D", LIMIT, || async {
        scalar(
            &db,
            "SELECT string_agg(status, '') FROM dbrouter.messages WHERE direction = 'O'",
        )
        .await
            == "D"
    })
    .await;
    stop.cancel();
    db.assert_invariants().await;
    db.drop().await;
    smsc.stop().await;
}

/// Long and unicode texts go in parts with a concatenation header, each
/// part's bytes exactly the text's; the message records its segments.
#[tokio::test]
async fn long_and_unicode_texts_go_in_concatenated_parts() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    db.backend("op", "smpp", smsc.config(), None).await;
    let long = "0123456789".repeat(20); // 200 GSM characters: 2 parts
    let emoji = format!("Привет {}", "😀".repeat(40)); // UCS-2, 87 units: 2 parts
    db.broadcast("op", &["+255700000001".into()], &long).await;
    db.broadcast("op", &["+255700000002".into()], &emoji).await;
    let (_w, stop) = run_worker(&db).await;
    wait_until("both messages S", LIMIT, || async {
        scalar(
            &db,
            "SELECT string_agg(status, '' ORDER BY id) FROM dbrouter.messages",
        )
        .await
            == "SS"
    })
    .await;
    stop.cancel();
    assert_eq!(
        scalar(
            &db,
            "SELECT string_agg(encoding || segments, ',' ORDER BY id) FROM dbrouter.messages"
        )
        .await,
        "gsm72,ucs22"
    );
    let sent = smsc.submitted();
    assert_eq!(sent.len(), 4);
    for dest in ["255700000001", "255700000002"] {
        let mut parts: Vec<_> = sent.iter().filter(|s| s.destination == dest).collect();
        parts.sort_by_key(|s| s.short_message[5]);
        assert!(parts.iter().all(|p| p.esm_class & 0x40 != 0), "UDHI set");
        let reference = parts[0].short_message[3];
        let mut joined = Vec::new();
        for (k, p) in parts.iter().enumerate() {
            assert_eq!(&p.short_message[..6], &[5, 0, 3, reference, 2, k as u8 + 1]);
            joined.extend_from_slice(&p.short_message[6..]);
        }
        let text = if dest.ends_with('1') {
            assert_eq!(parts[0].data_coding, 0);
            assert_eq!(parts[0].short_message.len(), 6 + 153);
            dbrouter::gsm::decode_unpacked(&joined).unwrap()
        } else {
            assert_eq!(parts[0].data_coding, 8);
            let units: Vec<u16> = joined
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).expect("no surrogate pair cut in two")
        };
        assert_eq!(&text, if dest.ends_with('1') { &long } else { &emoji });
    }
    db.drop().await;
    smsc.stop().await;
}

/// ESME_RTHROTTLED puts the transmission back for later without using an
/// attempt; ESME_RINVDSTADR ends it E for good.
#[tokio::test]
async fn throttling_waits_and_a_refused_destination_fails_for_good() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    let mut config = smsc.config();
    config["throttle_wait"] = json!("200ms");
    db.backend("op", "smpp", config, None).await;
    smsc.throttle_next(1);
    smsc.refuse_destination("255700000009");
    db.broadcast("op", &["+255700000001".into()], "one").await;
    db.broadcast("op", &["+255700000009".into()], "two").await;
    let (_w, stop) = run_worker(&db).await;
    wait_until("both final", LIMIT, || async {
        scalar(&db, "SELECT string_agg(t.status || coalesce(t.due_at::text, '-'), ',' ORDER BY t.id) FROM dbrouter.transmissions t").await == "S-,E-"
    })
    .await;
    stop.cancel();
    assert_eq!(
        scalar(
            &db,
            "SELECT string_agg(attempts::text, ',' ORDER BY id) FROM dbrouter.transmissions"
        )
        .await,
        "1,1",
        "the throttled send used no attempt"
    );
    let error = scalar(
        &db,
        "SELECT last_error FROM dbrouter.transmissions ORDER BY id DESC LIMIT 1",
    )
    .await;
    assert!(error.contains("EsmeRinvdstadr"), "{error}");
    db.drop().await;
    smsc.stop().await;
}

/// Credentials the SMSC refuses: nothing is sent, the backend is paused
/// with the reason, the message waits Q.
#[tokio::test]
async fn refused_credentials_pause_the_backend() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    let mut config = smsc.config();
    config["password"] = json!("wrong");
    db.backend("op", "smpp", config, None).await;
    db.broadcast("op", &["+255700000001".into()], "hello").await;
    let (_w, stop) = run_worker(&db).await;
    wait_until("the backend paused", LIMIT, || async {
        !scalar(
            &db,
            "SELECT coalesce(pause_reason, '') FROM dbrouter.backends",
        )
        .await
        .is_empty()
    })
    .await;
    stop.cancel();
    let reason = scalar(&db, "SELECT pause_reason FROM dbrouter.backends").await;
    assert!(reason.contains("credentials"), "{reason}");
    assert!(
        !reason.contains("wrong"),
        "no password in the reason: {reason}"
    );
    assert!(smsc.submitted().is_empty());
    assert_eq!(
        scalar(&db, "SELECT status FROM dbrouter.transmissions").await,
        "Q"
    );
    db.drop().await;
    smsc.stop().await;
}

/// The SMSC goes away in the middle of a broadcast and comes back on the
/// same port: the binds come back and every identity is sent; none lost.
#[tokio::test]
async fn an_smsc_restarted_mid_broadcast_loses_nothing() {
    let smsc = Smsc::start().await;
    let port = smsc.port;
    let db = TestDb::new().await;
    db.backend("op", "smpp", smsc.config(), Some(50)).await;
    let ids: Vec<String> = (0..600).map(|i| format!("+2557{i:08}")).collect();
    let (_w, stop) = run_worker(&db).await;
    wait_until("the worker bound", LIMIT, || async {
        smsc.bound_sessions() == 1
    })
    .await;
    db.broadcast("op", &ids, "news").await;
    wait_until("some sent", LIMIT, || async {
        smsc.submitted().len() >= 50
    })
    .await;
    let before = smsc.submitted();
    smsc.stop().await;
    let smsc = Smsc::start_on(port).await;
    wait_until("every identity final", Duration::from_secs(90), || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status IN ('S', 'E') AND due_at IS NULL").await == 600
    })
    .await;
    stop.cancel();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmissions WHERE status = 'S'")
            .await,
        600
    );
    let mut reached: Vec<String> = before
        .iter()
        .chain(smsc.submitted().iter())
        .map(|s| s.destination.clone())
        .collect();
    reached.sort();
    let total = reached.len();
    reached.dedup();
    assert_eq!(reached.len(), 600, "every identity reached the SMSC");
    // Duplicates only for submits in flight when the SMSC went away.
    assert!(total - 600 <= 10, "{} duplicates", total - 600);
    db.assert_invariants().await;
    db.drop().await;
    smsc.stop().await;
}

/// A long message from a phone in parts (a user data header with an 8-bit
/// reference, or SAR TLVs), out of order and one part sent twice, arrives
/// as one message, whole.
#[tokio::test]
async fn a_long_message_from_a_phone_arrives_whole() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    db.backend("op", "smpp", smsc.config(), None).await;
    let stop = run_receiver(&db, &smsc, test_config()).await;

    let text: String = "Привет, это длинное сообщение. ".repeat(5); // UCS-2, 155 units
    let units: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let pieces: Vec<&[u8]> = units.chunks(134).collect(); // 67 units a part
    assert_eq!(pieces.len(), 3);
    for k in [2usize, 0, 2, 1] {
        let mut sm = vec![5, 0, 3, 0x2A, 3, k as u8 + 1];
        sm.extend_from_slice(pieces[k]);
        smsc.deliver("255700000001", 0x40, 8, sm).await;
    }
    wait_until("one message", LIMIT, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await
            == 1
    })
    .await;
    assert_eq!(
        scalar(&db, "SELECT text FROM dbrouter.messages").await,
        text
    );
    assert_eq!(
        scalar(&db, "SELECT fields::text FROM dbrouter.messages").await,
        r#"{"parts": 3}"#
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.inbound_parts")
            .await,
        0
    );
    stop.cancel();
    db.drop().await;
    smsc.stop().await;
}

/// Parts whose message never completes are delivered as they are after
/// --reassembly-timeout, flagged, never dropped.
#[tokio::test]
async fn parts_that_never_complete_are_delivered_flagged() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    db.backend("op", "smpp", smsc.config(), None).await;
    let mut cfg = test_config();
    cfg.reassembly_timeout = Duration::from_secs(1);
    let stop = run_receiver(&db, &smsc, cfg).await;
    for (k, piece) in [(1u8, &b"first "[..]), (3, &b"third"[..])] {
        let mut sm = vec![6, 8, 4, 0x01, 0x02, 3, k]; // 16-bit reference 0x0102
        sm.extend_from_slice(piece);
        smsc.deliver("255700000001", 0x40, 0, sm).await;
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM dbrouter.inbound_parts")
            .await,
        2
    );
    wait_until("the parts delivered", LIMIT, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.messages")
            .await
            == 1
    })
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT text || ' ' || fields::text FROM dbrouter.messages"
        )
        .await,
        r#"first third {"parts": 3, "incomplete": true, "parts_received": [1, 3]}"#
    );
    stop.cancel();
    db.drop().await;
    smsc.stop().await;
}

/// A text sent in parts is D only when every part's receipt says
/// delivered, and E as soon as one part's says it failed; each part and its
/// SMSC id is visible from SQL.
#[tokio::test]
async fn receipts_count_per_part() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    db.backend("op", "smpp", smsc.config(), None).await;
    let text = "x".repeat(200); // 2 parts
    db.broadcast(
        "op",
        &["+255700000001".into(), "+255700000002".into()],
        &text,
    )
    .await;
    let (_w, stop) = run_worker(&db).await;
    wait_until("both sent, two parts each", LIMIT, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmission_parts")
            .await
            == 4
    })
    .await;
    let sent = smsc.submitted();
    let id = |dest: &str, part: u8| {
        sent.iter()
            .find(|s| s.destination == dest && s.short_message[5] == part)
            .map(|s| s.id.clone())
            .expect("that part was submitted")
    };
    let state = || async {
        scalar(
            &db,
            "SELECT string_agg(c.identity || ':' || t.status, ',' ORDER BY c.identity)
               FROM dbrouter.transmissions t JOIN dbrouter.connections c ON c.id = t.connection_id",
        )
        .await
    };
    smsc.receipt(&id("255700000001", 1), "DELIVRD").await;
    smsc.receipt(&id("255700000002", 1), "DELIVRD").await;
    wait_until("the first parts D", LIMIT, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.transmission_parts WHERE status = 'D'")
            .await
            == 2
    })
    .await;
    assert_eq!(
        state().await,
        "+255700000001:S,+255700000002:S",
        "one part is not the text"
    );
    smsc.receipt(&id("255700000001", 2), "DELIVRD").await;
    smsc.receipt(&id("255700000002", 2), "UNDELIV").await;
    wait_until("both final", LIMIT, || async {
        state().await == "+255700000001:D,+255700000002:E"
    })
    .await;
    let error = scalar(
        &db,
        "SELECT last_error FROM dbrouter.transmissions WHERE status = 'E'",
    )
    .await;
    assert!(
        error.starts_with("delivery failed: part 2: UNDELIV"),
        "{error}"
    );
    assert_eq!(
        scalar(&db, "SELECT status FROM dbrouter.messages").await,
        "E"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM dbrouter.transmission_parts p
               JOIN dbrouter.transmissions t ON t.id = p.transmission_id
              WHERE p.part = 1 AND p.gateway_id = t.external_id"
        )
        .await,
        2,
        "the first part's id is the transmission's"
    );
    stop.cancel();
    db.assert_invariants().await;
    db.drop().await;
    smsc.stop().await;
}

/// Each bind's state is in `dbrouter.bind_states` and `dbrouter status`:
/// up, then down with the reason when the SMSC goes, gone when the worker
/// stops; a dead worker's rows show as stale and are forgotten after an
/// hour. `status` itself opens no bind.
#[tokio::test]
async fn bind_states_are_visible_from_sql_and_status() {
    let smsc = Smsc::start().await;
    let db = TestDb::new().await;
    let mut config = smsc.config();
    config["binds"] = json!(2);
    db.backend("op", "smpp", config, None).await;
    let backend_id = db
        .scalar_i64("SELECT id::bigint FROM dbrouter.backends WHERE name = 'op'")
        .await;
    // a worker that died five minutes ago, and one that died long ago
    db.exec(&format!(
        "INSERT INTO dbrouter.binds (backend_id, worker, bind, instance, up, state, seen_at)
         VALUES ({backend_id}, 'gone:1', 0, 1, true, 'bound', now() - interval '5 minutes'),
                ({backend_id}, 'gone:2', 0, 1, true, 'bound', now() - interval '2 hours')"
    ))
    .await;
    let (_w, stop) = run_worker(&db).await;
    let up = "SELECT count(*) FROM dbrouter.bind_states WHERE up";
    wait_until("both binds up in dbrouter.bind_states", LIMIT, || async {
        db.scalar_i64(up).await == 2
    })
    .await;
    wait_until("the long-dead worker's row forgotten", LIMIT, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.binds WHERE worker = 'gone:2'")
            .await
            == 0
    })
    .await;
    let status = || async {
        dbrouter::admin::status(&db.pool, &test_config())
            .await
            .expect("status")
    };
    let report = status().await;
    assert!(report.contains("\"op\": 2 of 3 SMPP binds up"), "{report}");
    assert!(
        report.contains("worker gone:1 bind 0: stale: its worker has not reported since"),
        "{report}"
    );
    assert_eq!(smsc.binds(), 2, "status checked the config without a bind");
    assert_eq!(
        scalar(
            &db,
            "SELECT string_agg(bind::text, ',' ORDER BY bind) FROM dbrouter.bind_states WHERE up"
        )
        .await,
        "0,1"
    );

    smsc.stop().await;
    wait_until("both binds down", LIMIT, || async {
        db.scalar_i64(up).await == 0
    })
    .await;
    let report = status().await;
    assert!(report.contains("\"op\": 0 of 3 SMPP binds up"), "{report}");
    assert!(report.contains("bind 1: down: "), "{report}");

    stop.cancel();
    wait_until("the stopped worker's rows gone", LIMIT, || async {
        db.scalar_i64("SELECT count(*) FROM dbrouter.binds WHERE worker <> 'gone:1'")
            .await
            == 0
    })
    .await;
    db.drop().await;
}

/// An SMSC that closes idle sessions (here after 2 s without a PDU) keeps
/// a bind whose `enquire_link` runs every second; a bind that never asks
/// (every hour) is closed and binds again. Both are awaited on the second
/// SMSC's bind count, so the first has had the same idle time.
#[tokio::test]
async fn enquire_link_keeps_an_idle_bind() {
    let kept = Smsc::start_closing_idle(2000).await;
    let control = Smsc::start_closing_idle(2000).await;
    let db = TestDb::new().await;
    db.backend("kept", "smpp", kept.config(), None).await;
    let mut config = control.config();
    config["enquire_link"] = json!("1h");
    db.backend("silent", "smpp", config, None).await;
    let (_w, stop) = run_worker(&db).await;
    wait_until(
        "the silent bind closed for idleness and bound again",
        LIMIT,
        || async { control.binds() >= 3 },
    )
    .await;
    assert_eq!(
        kept.binds(),
        1,
        "the bind with enquire_link was never closed"
    );
    assert_eq!(kept.bound_sessions(), 1);
    stop.cancel();
    db.drop().await;
    kept.stop().await;
    control.stop().await;
}

/// `smpps://` through stunnel (Debian's stunnel4, the usual TLS front of an
/// SMSC) to the test SMSC, whose certificate a private CA signed, that CA
/// named in `tls_ca`: a message in, its reply out, over TLS. A backend that
/// does not trust the CA never binds, and says why.
#[tokio::test]
async fn smpps_binds_over_tls_trusting_the_configured_ca() {
    let smsc = Smsc::start().await;
    let dir = std::env::temp_dir().join(format!("dbrouter-tls-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    // a private CA, and the SMSC's certificate for "localhost" signed by it
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out smsc.csr",
        "x509 -req -in smsc.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem",
    ] {
        let made = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&made.stderr));
    }
    let port = common::free_port();
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[smpp]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{}\ncert = {}\nkey = {}\n",
            smsc.port,
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let stunnel = if std::path::Path::new("/usr/bin/stunnel4").exists() {
        "stunnel4"
    } else {
        "stunnel"
    };
    let mut tunnel = common::Proc(
        std::process::Command::new(stunnel)
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stunnel (bin/test installs Debian's stunnel4)"),
    );
    wait_until("stunnel listening", LIMIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;

    let db = TestDb::new().await;
    let mut config = smsc.config();
    config["url"] = json!(format!("smpps://localhost:{port}"));
    config["tls_ca"] = json!(ca.display().to_string());
    db.backend("op", "smpp", config.clone(), None).await;
    let mut untrusting = config;
    untrusting.as_object_mut().unwrap().remove("tls_ca");
    db.backend("other", "smpp", untrusting, None).await;
    let (_w, stop) = run_worker(&db).await;
    wait_until("the TLS bind up", LIMIT, || async {
        smsc.bound_sessions() == 1
    })
    .await;
    smsc.deliver("255700000001", 0, 0, b"echo over tls".to_vec())
        .await;
    wait_until("the reply submitted", LIMIT, || async {
        !smsc.submitted().is_empty()
    })
    .await;
    assert_eq!(
        dbrouter::gsm::decode_unpacked(&smsc.submitted()[0].short_message).unwrap(),
        "over tls"
    );
    wait_until("the untrusting bind's failure recorded", LIMIT, || async {
        db.scalar_str("SELECT coalesce(string_agg(state, ''), '') FROM dbrouter.bind_states WHERE backend = 'other'")
            .await
            .contains("certificate")
    })
    .await;
    assert_eq!(smsc.binds(), 1, "only the trusting backend bound");
    stop.cancel();
    let _ = tunnel.0.kill();
    db.drop().await;
    smsc.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
