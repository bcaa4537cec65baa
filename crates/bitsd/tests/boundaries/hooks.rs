//! Boundaries: hooks. Anonymous clients decide how many events the server emits; the events an
//! operator relies on (`upload_completed`, owed in the session record) must not be crowded out
//! by the cheap ones (`session_created`/`session_cancelled`) however many a client provokes.

use crate::common::*;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the server logs when the hook queue turns a cheap event away.
const DROPPED: &str = "hook event dropped: the hook queue is full";

/// The `upload_completed` events the command hook wrote to `file` so far, by session.
fn completed_sessions(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "upload_completed")
        .filter_map(|e| e["session"].as_str().map(str::to_string))
        .collect()
}

/// Waits (up to `limit`) until `file` holds an `upload_completed` event for every session in
/// `want`; returns how long that took.
fn wait_for_completions(
    server: &Server,
    file: &Path,
    want: &[String],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got: HashSet<String> = completed_sessions(file).into_iter().collect();
        let missing = want.iter().filter(|s| !got.contains(*s)).count();
        if missing == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{missing} of {} upload_completed events not delivered within {limit:?}; log tail:\n{}",
            want.len(),
            tail(&server.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `threads` connections each creating and cancelling sessions until `stop` is set (or `cap`
/// pairs each); returns the pairs made.
fn flood(
    server: &Server,
    threads: usize,
    cap: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..threads)
        .map(|t| {
            let (addr, stop) = (server.addr, Arc::clone(stop));
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let mut n = 0;
                while n < cap && !stop.load(Ordering::Relaxed) {
                    let path = format!("/upload/flood-{t}-{n}.bin");
                    let sid = conn.create(&path).session();
                    conn.cancel(&path, &sid).assert_ack(200, None);
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// Floods until the server logs that it drops cheap events (or `limit` passes).
fn flood_until_dropping(
    server: &Server,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    let threads = flood(server, 4, 2_000, stop);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.log_text().contains(DROPPED) {
        assert!(
            Instant::now() < deadline,
            "the flood never filled the hook queue"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    threads
}

/// A tiny upload, completed and closed; returns its session id.
fn tiny_upload(conn: &mut Conn, name: &str) -> String {
    let path = format!("/upload/{name}");
    let sid = upload(conn, &path, name.as_bytes(), 1 << 20);
    conn.close(&path, &sid).assert_ack(200, None);
    sid
}

fn events_file(server: &Server) -> PathBuf {
    server.dir.path().join("events.jsonl")
}

/// Issue 14, finding 7: with a slow command hook, thousands of Create+Cancel pairs from several
/// connections fill the hook queue; a real upload completed then is still delivered, without a
/// restart, within seconds (it used to be dropped and only redelivered at the next start).
#[test]
fn finding_7_a_flood_of_cheap_events_does_not_drop_upload_completed() {
    let vdir = "[vdir.hooks]\n\
                command = [\"sh\", \"-c\", \"sleep 1; cat >> {root}/events.jsonl\"]\n\
                timeout = \"30s\"\n";
    let server = Server::start_vdir("", vdir);
    let stop = Arc::new(AtomicBool::new(false));
    let flooders = flood_until_dropping(&server, &stop);
    // The flood goes on while the upload completes: its event meets a full queue.
    let sid = tiny_upload(&mut server.conn(), "real.bin");
    stop.store(true, Ordering::Relaxed);
    let pairs: usize = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    let took = wait_for_completions(
        &server,
        &events_file(&server),
        std::slice::from_ref(&sid),
        Duration::from_secs(15),
    );
    eprintln!("flood of {pairs} Create+Cancel pairs; upload_completed delivered {took:?} after the upload");
}
