//! SIGKILL the server at random moments while clients upload, restart it, and check that
//! every upload resumes from the server's `BITS-Received-Content-Range` and lands byte for byte,
//! and that the server never holds fewer bytes than it has acknowledged.
//! `BITS_CRASH_UPLOADS` sets the number of uploads (default 60).

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Tally {
    completed: usize,
    /// Acks that reported fewer bytes than an earlier Ack had confirmed.
    lost_acknowledged: Vec<String>,
    /// Sessions the server forgot.
    lost_sessions: Vec<String>,
    /// Published files that differ from what was sent.
    corrupted: Vec<String>,
    retries: usize,
}

fn bits(
    conn: &mut Conn,
    path: &str,
    packet: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut h = vec![("BITS-Packet-Type", packet)];
    h.extend_from_slice(headers);
    conn.try_send("BITS_POST", path, &h, body)
}

/// Uploads `data` the way a BITS client does: on any transport failure reconnect and go on
/// from the offset the server reports.
fn resilient_upload(addr: SocketAddr, path: &str, data: &[u8], frag: usize, tally: &Mutex<Tally>) {
    let total = data.len() as u64;
    let mut sid: Option<String> = None;
    let mut acked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    let note = |f: &dyn Fn(&mut Tally)| f(&mut tally.lock().unwrap());
    'connect: loop {
        assert!(
            Instant::now() < deadline,
            "{path}: no progress for too long"
        );
        let Ok(mut conn) = Conn::try_new(addr) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        loop {
            let Some(id) = sid.clone() else {
                match bits(
                    &mut conn,
                    path,
                    "Create-Session",
                    &[("BITS-Supported-Protocols", PROTOCOL)],
                    b"",
                ) {
                    Ok(r) if r.status == 200 => sid = Some(r.session()),
                    Ok(r) if r.status == 503 => std::thread::sleep(Duration::from_millis(20)),
                    Ok(r) => panic!("{path}: Create-Session got {} {:?}", r.status, r.headers),
                    Err(_) => {
                        note(&|t| t.retries += 1);
                        continue 'connect;
                    }
                }
                continue;
            };
            if total > 0 && acked == total {
                match bits(
                    &mut conn,
                    path,
                    "Close-Session",
                    &[("BITS-Session-Id", &id)],
                    b"",
                ) {
                    Ok(r) if r.status == 200 => return,
                    Ok(r) if r.status == 503 => continue,
                    Ok(r) => panic!("{path}: Close-Session got {} {:?}", r.status, r.headers),
                    Err(_) => {
                        note(&|t| t.retries += 1);
                        continue 'connect;
                    }
                }
            }
            let end = (acked + frag as u64).min(total);
            let range = if total == 0 {
                "bytes */0".to_string()
            } else {
                format!("bytes {}-{}/{}", acked, end - 1, total)
            };
            let body = &data[acked as usize..end as usize];
            match bits(
                &mut conn,
                path,
                "Fragment",
                &[("BITS-Session-Id", &id), ("Content-Range", &range)],
                body,
            ) {
                Ok(r) if r.status == 200 || r.status == 416 => {
                    let received = r.received().expect("received on fragment Ack");
                    if received < acked || r.status == 416 {
                        let msg = format!(
                            "{path}: server reports {received} after acknowledging {acked}"
                        );
                        note(&|t| t.lost_acknowledged.push(msg.clone()));
                        return;
                    }
                    acked = received;
                    if total == 0 {
                        // The empty upload is complete once its one fragment is acknowledged.
                        return close_empty(&mut conn, addr, path, &id, tally);
                    }
                }
                Ok(r) if r.status == 503 => std::thread::sleep(Duration::from_millis(20)),
                Ok(r) if r.header("bits-error-code") == Some("0x8020001F") => {
                    let msg = format!("{path}: session {id} lost at {acked}/{total}");
                    note(&|t| t.lost_sessions.push(msg.clone()));
                    return;
                }
                Ok(r) => panic!("{path}: Fragment got {} {:?}", r.status, r.headers),
                Err(_) => {
                    note(&|t| t.retries += 1);
                    continue 'connect;
                }
            }
        }
    }
}

fn close_empty(conn: &mut Conn, addr: SocketAddr, path: &str, id: &str, tally: &Mutex<Tally>) {
    let mut first = true;
    loop {
        if !first {
            match Conn::try_new(addr) {
                Ok(c) => *conn = c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        first = false;
        match bits(conn, path, "Close-Session", &[("BITS-Session-Id", id)], b"") {
            Ok(r) if r.status == 200 => return,
            Ok(r) if r.status == 503 => continue,
            Ok(r) => panic!("{path}: Close-Session got {} {:?}", r.status, r.headers),
            Err(_) => tally.lock().unwrap().retries += 1,
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing() {
    let uploads: usize = std::env::var("BITS_CRASH_UPLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    const CLIENTS: usize = 4;
    let mut server =
        Server::start("session_lock_timeout = \"2s\"\n[[vdir]]\nallow_overwrites = true");
    let addr = server.addr;
    let root = server.root();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut kills = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
                if done.load(Ordering::SeqCst) {
                    break;
                }
                server.restart();
                kills += 1;
            }
            (server, kills)
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (tally, next, root) = (tally.clone(), next.clone(), root.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + c as u64 * 7919);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= uploads {
                        break;
                    }
                    let size = match i % 10 {
                        0 => 0,
                        1 => 1,
                        _ => rng.below(6 << 20) as usize,
                    };
                    let frag = 1024 + rng.below(256 << 10) as usize;
                    let data = pattern(size, i as u64 + 1);
                    let name = format!("f{i}.bin");
                    resilient_upload(addr, &format!("/upload/{name}"), &data, frag, &tally);
                    let mut t = tally.lock().unwrap();
                    match std::fs::read(root.join(&name)) {
                        Ok(got) if got == data => t.completed += 1,
                        Ok(got) => t.corrupted.push(format!(
                            "{name}: {} bytes, expected {}",
                            got.len(),
                            data.len()
                        )),
                        Err(e) if t.lost_acknowledged.is_empty() && t.lost_sessions.is_empty() => t
                            .corrupted
                            .push(format!("{name}: missing after Close ({e})")),
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    done.store(true, Ordering::SeqCst);
    let (mut server, kills) = killer.join().expect("killer");
    let t = tally.lock().unwrap();
    eprintln!(
        "crash test: {uploads} uploads, {kills} SIGKILLs, {} transport retries, {} byte-identical, \
         {} corrupted, {} lost acknowledged, {} lost sessions",
        t.retries,
        t.completed,
        t.corrupted.len(),
        t.lost_acknowledged.len(),
        t.lost_sessions.len()
    );
    assert!(server.is_running(), "server not running at the end");
    assert!(t.corrupted.is_empty(), "corrupted: {:?}", t.corrupted);
    assert!(
        t.lost_acknowledged.is_empty(),
        "lost: {:?}",
        t.lost_acknowledged
    );
    assert!(
        t.lost_sessions.is_empty(),
        "lost sessions: {:?}",
        t.lost_sessions
    );
    assert_eq!(t.completed, uploads);
    assert!(kills >= 20, "only {kills} kills happened");
}
