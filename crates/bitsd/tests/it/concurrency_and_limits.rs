//! Concurrent requests for one session, session limits, and graceful shutdown.

use crate::common::*;

use std::time::{Duration, Instant};

const URL: &str = "/upload/a.bin";

/// A client retry on a new connection while the first attempt is still "sending" (a half-dead
/// connection) must not wait for the stale request's timeouts: the stale request is stopped,
/// keeps what it stored, and the retry continues from there.
#[test]
fn retry_preempts_a_stalled_fragment_and_keeps_its_bytes() {
    let s = Server::start("session_lock_timeout = \"20s\"\nbody_idle_timeout = \"60s\"");
    let data = pattern(200_000, 3);
    let mut c = s.conn();
    let r = c.create(URL);
    r.assert_ack(200, None);
    let sid = r.session();

    // First attempt: headers for the whole file, then only half the body, then silence.
    let mut stale = s.conn();
    let head = request_bytes(
        "BITS_POST",
        URL,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 0-199999/200000"),
            ("Content-Length", "200000"),
        ],
        b"",
    );
    stale.write_raw(&head);
    stale.write_raw(&data[..100_000]);
    std::thread::sleep(Duration::from_millis(300));

    // The retry: from 0 again, as a client that never saw an Ack would.
    let started = Instant::now();
    let mut retry = s.conn();
    let r = retry.fragment(URL, &sid, 0, &data, 200_000);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(200_000));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retry waited {:?}",
        started.elapsed()
    );
    retry.close(URL, &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn concurrent_fragments_of_one_session_never_interleave() {
    let s = Server::start("");
    let data = pattern(1 << 20, 5);
    let mut c = s.conn();
    let r = c.create(URL);
    r.assert_ack(200, None);
    let sid = r.session();
    // Eight connections race to send the same fragments; every Ack is consistent and the
    // result is exact.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (addr, sid, data) = (s.addr, sid.clone(), data.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut off = 0usize;
                while off < data.len() {
                    let end = (off + 65536).min(data.len());
                    let r = c.fragment(URL, &sid, off as u64, &data[off..end], data.len() as u64);
                    match r.status {
                        200 | 416 => off = r.received().unwrap() as usize,
                        503 => {}
                        other => panic!("unexpected {other} {:?}", r.headers),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    c.close(URL, &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn open_session_limit_gives_503_until_a_session_ends() {
    let s = Server::start("max_open_sessions = 2");
    let mut c = s.conn();
    let a = c.create("/upload/a.bin").session();
    c.create("/upload/b.bin").assert_ack(200, None);
    c.create("/upload/c.bin")
        .assert_ack(503, Some(("0x801901F7", "0x5")));
    c.cancel("/upload/a.bin", &a).assert_ack(200, None);
    c.create("/upload/c.bin").assert_ack(200, None);
}

/// Issue 30: 0 is "no limit" for every session and size limit, as leaving the key out is.
/// Before, a vdir's `max_open_sessions = 0` answered every Create-Session 503, a
/// `max_upload_size = 0` refused every non-empty upload and `spool_quota = 0` every fragment.
#[test]
fn zero_means_no_limit_for_every_session_and_size_limit() {
    let s = Server::start_vdir(
        "max_open_sessions = 0\nmax_anonymous_sessions = 0\nmax_anonymous_sessions_per_ip = 0\n\
         spool_quota = 0\nmax_spool_bytes_per_identity = 0\nmax_sessions_per_identity = 0",
        "max_open_sessions = 0\nmax_upload_size = 0\nmax_sessions_per_identity = 0",
    );
    let mut c = s.conn();
    for i in 0..3 {
        c.create(&format!("/upload/open-{i}.bin"))
            .assert_ack(200, None);
    }
    let data = pattern(100_000, 30);
    upload(&mut c, URL, &data, 40_000);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn sigterm_lets_an_in_flight_fragment_finish() {
    let mut s = Server::start("shutdown_grace = \"10s\"");
    let data = pattern(300_000, 9);
    let mut c = s.conn();
    let r = c.create(URL);
    r.assert_ack(200, None);
    let sid = r.session();
    let head = request_bytes(
        "BITS_POST",
        URL,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 0-299999/300000"),
            ("Content-Length", "300000"),
        ],
        b"",
    );
    c.write_raw(&head);
    c.write_raw(&data[..150_000]);
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: plain kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(s.pid() as i32, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    if let Err(e) = c.try_write_raw(&data[150_000..]) {
        panic!(
            "connection dropped during shutdown ({e}); log:\n{}",
            s.log_text()
        );
    }
    let r = c.read_response(false);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(300_000));
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.is_running() {
        assert!(
            Instant::now() < deadline,
            "bitsd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 30: under an open-file limit far below `max_connections` (here `prlimit --nofile=64`,
/// soft and hard), 200 idle connections wait in the backlog instead of taking the descriptors
/// an upload in flight needs: it completes, `/healthz` answers, nothing fails with "Too many
/// open files", and the start-up log says how many connections the limit fits.
#[test]
fn idle_connections_under_a_low_fd_limit_do_not_stall_an_upload() {
    let s = Server::start_wrapped(
        "admin = { listen = \"127.0.0.1:0\" }",
        &["prlimit", "--nofile=64:64", "--"],
    );
    let data = pattern(1 << 20, 9);
    let mut c = s.conn();
    let r = c.create("/upload/fd.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    let frag = 128 << 10;
    c.fragment("/upload/fd.bin", &sid, 0, &data[..frag], data.len() as u64)
        .assert_ack(200, None);
    // Connected from threads: whatever the backlog, a client waiting to be accepted must not
    // hold up the test's own upload.
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(held));
    let addr = s.addr;
    let idle: Vec<_> = (0..200)
        .map(|_| {
            let held = held.clone();
            std::thread::spawn(move || {
                let conn = std::net::TcpStream::connect(addr);
                // Held until the test drops `hold`.
                let _ = held.lock().map(|rx| rx.recv());
                drop(conn);
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut off = frag;
    while off < data.len() {
        let end = (off + frag).min(data.len());
        let r = c.fragment(
            "/upload/fd.bin",
            &sid,
            off as u64,
            &data[off..end],
            data.len() as u64,
        );
        assert_eq!(
            r.status,
            200,
            "fragment at {off}: {:?}\n{}",
            r.headers,
            s.log_text()
        );
        off = end;
    }
    c.close("/upload/fd.bin", &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("fd.bin")).unwrap(), data);
    let health = Conn::new(s.admin_addr.expect("admin")).send("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    drop(hold);
    for t in idle {
        let _ = t.join();
    }
    let log = s.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    assert!(log.contains("serving at most 15 at once"), "{log}");
}
