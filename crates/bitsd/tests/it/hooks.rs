//! Event hooks against a real bitsd: a webhook receiver on loopback gets the completed event
//! with the SHA-256 of the upload (computed while the fragments streamed in, across a cut
//! fragment and a restart) and a valid HMAC signature; a command hook gets every event kind.

use crate::common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// One request the receiver got: lower-cased header names, the body, and what it answered.
#[derive(Clone, Debug)]
struct Delivery {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    accepted: bool,
}

impl Delivery {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("event JSON")
    }
}

/// A webhook receiver on a free loopback port; answers every request 200 and records it.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    /// Answer 200 (else 503).
    accepting: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let accepting = Arc::new(AtomicBool::new(true));
        let (sink, open) = (got.clone(), accepting.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (sink, open) = (sink.clone(), open.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn);
                    let mut headers = Vec::new();
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let accepted = open.load(Ordering::SeqCst);
                    sink.lock().unwrap().push(Delivery {
                        headers,
                        body,
                        accepted,
                    });
                    let answer: &[u8] = if accepted {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else {
                        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    };
                    let _ = reader.get_mut().write_all(answer);
                });
            }
        });
        Receiver {
            addr,
            got,
            accepting,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits up to 15 s for a delivery of event `kind`.
    fn wait_for(&self, kind: &str) -> Delivery {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(d) = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|d| d.accepted && d.header("x-bitsd-event") == Some(kind))
            {
                return d.clone();
            }
            assert!(Instant::now() < deadline, "no {kind} event delivered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn webhook_reports_the_sha256_of_an_upload_cut_and_resumed_across_a_restart() {
    let receiver = Receiver::start();
    let hooks = format!(
        "[vdir.hooks]\nwebhook_url = \"http://{}/events\"\nwebhook_secret = \"s3cret\"\n\
         events = [\"upload_completed\"]\ninitial_backoff = \"20ms\"\n",
        receiver.addr
    );
    let mut server = Server::start_vdir("admin = { listen = \"127.0.0.1:0\" }", &hooks);
    let data = pattern((3 << 20) + 12_345, 77);
    let total = data.len() as u64;
    let path = "/upload/hooked.bin";
    let mut conn = server.conn();
    let sid = conn.create(path).session();
    let first = (1 << 20) + 3;
    conn.fragment(path, &sid, 0, &data[..first], total)
        .assert_ack(200, None);

    // A fragment cut part way: the server keeps what arrived, then restarts.
    let second_end = first + (2 << 20);
    let range = format!("bytes {first}-{}/{total}", second_end - 1);
    let head = request_bytes(
        "BITS_POST",
        path,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", &range),
            ("Content-Length", &(second_end - first).to_string()),
        ],
        &data[first..first + 1_500_000],
    );
    let mut cut = server.conn();
    cut.write_raw(&head);
    std::thread::sleep(Duration::from_millis(300));
    drop(cut);
    std::thread::sleep(Duration::from_millis(300));
    server.restart();

    // Resume the way a BITS client does: from the offset the server reports.
    let mut conn = server.conn();
    let probe = conn.fragment(path, &sid, 0, &data[..1], total);
    probe.assert_ack(200, None);
    let held = probe.received().expect("received range") as usize;
    assert!(held >= first, "server lost acknowledged bytes: {held}");
    conn.fragment(path, &sid, held as u64, &data[held..], total)
        .assert_ack(200, None);
    conn.close(path, &sid).assert_ack(200, None);

    let d = receiver.wait_for("upload_completed");
    let event = d.json();
    assert_eq!(event["event"], "upload_completed");
    assert_eq!(event["size"], total);
    assert_eq!(event["sha256"], hex_sha256(&data));
    assert_eq!(event["destination"], "hooked.bin");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&d.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(d.header("x-bitsd-signature"), Some(expected.as_str()));
    assert_eq!(
        std::fs::read(server.upload_path("hooked.bin")).unwrap(),
        data
    );
    // The delivery shows in the metrics (counted once the receiver's 200 is in).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admin = server.admin_addr.expect("admin listener");
        let metrics = Conn::new(admin).send("GET", "/metrics", &[], b"");
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        if text.contains("bitsd_hook_deliveries_total{outcome=\"delivered\"} 1") {
            assert!(text.contains("bitsd_hook_deliveries_total{outcome=\"failed\"} 0"));
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn command_hook_gets_created_completed_cancelled_and_expired_events() {
    let vdir = "session_timeout = \"1s\"\n[vdir.hooks]\n\
                command = [\"sh\", \"-c\", \"cat >> {root}/events.jsonl\"]\n";
    let server = Server::start_vdir("cleanup_interval = \"1s\"", vdir);
    let events_file = server.root().parent().unwrap().join("events.jsonl");
    let mut conn = server.conn();
    let data = pattern(70_000, 5);
    let done = upload(&mut conn, "/upload/done.bin", &data, 30_000);
    conn.close("/upload/done.bin", &done).assert_ack(200, None);
    let cancelled = conn.create("/upload/cancelled.bin").session();
    conn.cancel("/upload/cancelled.bin", &cancelled)
        .assert_ack(200, None);
    let idle = conn.create("/upload/idle.bin").session();

    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let text = std::fs::read_to_string(&events_file).unwrap_or_default();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect();
        if events.iter().any(|e| e["event"] == "session_expired") {
            break events;
        }
        assert!(Instant::now() < deadline, "events so far: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let of = |sid: &str, kind: &str| {
        events
            .iter()
            .filter(|e| e["event"] == kind && e["session"] == sid)
            .count()
    };
    assert_eq!(of(&done, "session_created"), 1);
    assert_eq!(of(&done, "upload_completed"), 1);
    assert_eq!(of(&cancelled, "session_created"), 1);
    assert_eq!(of(&cancelled, "session_cancelled"), 1);
    assert_eq!(of(&idle, "session_expired"), 1);
    let completed = events
        .iter()
        .find(|e| e["event"] == "upload_completed")
        .unwrap();
    assert_eq!(completed["sha256"], hex_sha256(&data));
    assert_eq!(completed["size"], data.len());
}

/// The completion event is recorded as owed with the completion itself: a receiver that is down
/// when the server is SIGKILLed still gets it after the restart, under the same delivery id, and
/// once delivered it is not sent again by later restarts.
#[test]
fn an_owed_completion_event_survives_a_crash_and_is_delivered_once() {
    let receiver = Receiver::start();
    receiver.accepting.store(false, Ordering::SeqCst);
    let hooks = format!(
        "[vdir.hooks]\nwebhook_url = \"http://{}/events\"\nevents = [\"upload_completed\"]\n\
         max_attempts = 1000\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"\n",
        receiver.addr
    );
    let mut server = Server::start_vdir("", &hooks);
    let data = pattern(200_000, 9);
    let mut conn = server.conn();
    let sid = upload(&mut conn, "/upload/owed.bin", &data, 64_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.deliveries().len() < 2 {
        assert!(Instant::now() < deadline, "no delivery attempts");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let refused = receiver.deliveries();
    let first_id = refused[0].header("x-bitsd-delivery").unwrap().to_string();
    assert!(refused.iter().all(|d| !d.accepted));

    receiver.accepting.store(true, Ordering::SeqCst);
    server.restart();
    let delivered = receiver.wait_for("upload_completed");
    assert_eq!(
        delivered.header("x-bitsd-delivery"),
        Some(first_id.as_str())
    );
    let event = delivered.json();
    assert_eq!(event["session"], sid.as_str());
    assert_eq!(event["sha256"], hex_sha256(&data));
    assert_eq!(event["size"], data.len());

    // Delivered: the record forgets it (in the background, a moment later), and a restart
    // sends nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("owed completion event settled") {
        assert!(
            Instant::now() < deadline,
            "the owed event is never forgotten"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = server.record(&sid).expect("record");
    assert!(rec["pending_hook"].is_null(), "{rec}");
    server.restart();
    std::thread::sleep(Duration::from_millis(700));
    let accepted = receiver.deliveries().iter().filter(|d| d.accepted).count();
    assert_eq!(accepted, 1, "{:?}", receiver.deliveries().len());
    // The session itself is intact: Close still works.
    server
        .conn()
        .close("/upload/owed.bin", &sid)
        .assert_ack(200, None);
}

/// SIGTERM waits (within `shutdown_grace`) for hook deliveries still under way.
#[test]
fn graceful_shutdown_lets_queued_hook_deliveries_finish() {
    let vdir = "[vdir.hooks]\n\
                command = [\"sh\", \"-c\", \"sleep 1; cat >> {root}/events.jsonl\"]\n\
                events = [\"session_created\"]\n";
    let mut server = Server::start_vdir("shutdown_grace = \"10s\"", vdir);
    let events_file = server.root().parent().unwrap().join("events.jsonl");
    let sid = server.conn().create("/upload/late.bin").session();
    // SAFETY: plain kill(2) on the child the harness started.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "bitsd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&events_file).unwrap_or_default();
    assert!(
        text.contains(sid.as_str()),
        "the session_created event was not delivered before exit: {text:?}\n{}",
        server.log_text()
    );
}
