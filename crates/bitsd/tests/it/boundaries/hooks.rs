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

/// The events the command hook delivered so far, one file each (appends to one shared file
/// could interleave: the event and its newline reach the command in separate writes).
fn delivered_events(server: &Server) -> Vec<serde_json::Value> {
    let Ok(dir) = std::fs::read_dir(events_dir(server)) else {
        return vec![];
    };
    dir.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// The sessions of the `upload_completed` events delivered so far (one per delivery).
fn completed_sessions(server: &Server) -> Vec<String> {
    delivered_events(server)
        .into_iter()
        .filter(|e| e["event"] == "upload_completed")
        .filter_map(|e| e["session"].as_str().map(str::to_string))
        .collect()
}

/// Waits (up to `limit`) until the hook has delivered an `upload_completed` event for every
/// session in `want`; returns how long that took.
fn wait_for_completions(server: &Server, want: &[String], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got: HashSet<String> = completed_sessions(server).into_iter().collect();
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

fn events_dir(server: &Server) -> PathBuf {
    server.dir.path().join("events")
}

/// Start-up setup: the hook's output directory, and the gate closed (see [`GATED_HOOK`]).
fn gated(dir: &Path) {
    std::fs::create_dir(dir.join("events")).unwrap();
    std::fs::write(dir.join("gate"), b"").unwrap();
}

/// Start-up setup: the hook's output directory.
fn ungated(dir: &Path) {
    std::fs::create_dir(dir.join("events")).unwrap();
}

/// Issue 14, finding 7: with a slow command hook, thousands of Create+Cancel pairs from several
/// connections fill the hook queue; a real upload completed then is still delivered, without a
/// restart, within seconds (it used to be dropped and only redelivered at the next start).
#[test]
fn finding_7_a_flood_of_cheap_events_does_not_drop_upload_completed() {
    let vdir = "[[vdir]]\n[vdir.hooks]\n\
                command = [\"sh\", \"-c\", \"sleep 1; cat > {root}/events/$BITSD_DELIVERY.$$\"]\n\
                timeout = \"30s\"\n";
    let server = Server::start_prepared(vdir, true, ungated);
    let stop = Arc::new(AtomicBool::new(false));
    let flooders = flood_until_dropping(&server, &stop);
    // The flood goes on while the upload completes: its event meets a full queue.
    let sid = tiny_upload(&mut server.conn(), "real.bin");
    stop.store(true, Ordering::Relaxed);
    let pairs: usize = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    let took = wait_for_completions(&server, std::slice::from_ref(&sid), Duration::from_secs(15));
    eprintln!("flood of {pairs} Create+Cancel pairs; upload_completed delivered {took:?} after the upload");
}

/// A command hook that blocks while `{root}/gate` exists, then writes the event to a file of
/// its own in `{root}/events/`.
const GATED_HOOK: &str = "[vdir.hooks]\n\
    command = [\"sh\", \"-c\", \"while [ -e {root}/gate ]; do sleep 0.1; done; cat > {root}/events/$BITSD_DELIVERY.$$\"]\n\
    timeout = \"120s\"\n";

/// More completions than the owed-event lane holds (256), made from several connections.
const TINY_UPLOADS: usize = 320;

fn tiny_uploads(server: &Server, threads: usize, each: usize) -> Vec<String> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                (0..each)
                    .map(|n| tiny_upload(&mut conn, &format!("tiny-{t}-{n}.bin")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Completions are cheap when the files are tiny: a flood of them (on top of a flood of cheap
/// events) overflows the owed-event lane. The overflow stays owed in the session records and
/// is emitted again once the lane has room: every completion is delivered without a restart.
#[test]
fn finding_7_a_flood_of_tiny_completed_uploads_is_deferred_not_lost() {
    let server = Server::start_prepared(&format!("[[vdir]]\n{GATED_HOOK}"), true, gated);
    let stop = Arc::new(AtomicBool::new(false));
    let flooders = flood_until_dropping(&server, &stop);
    let started = Instant::now();
    let sids = tiny_uploads(&server, 4, TINY_UPLOADS / 4);
    let uploads_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let pairs: usize = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    std::fs::remove_file(server.dir.path().join("gate")).unwrap();
    let took = wait_for_completions(&server, &sids, Duration::from_secs(60));
    let delivered = completed_sessions(&server);
    // The path under test was taken: some completions found the owed lane full.
    assert!(
        server.log_text().contains("owed-event lane full"),
        "the owed-event lane never overflowed"
    );
    let log = server.log_text();
    eprintln!(
        "{pairs} Create+Cancel pairs, {} tiny uploads in {uploads_took:?}; all delivered {took:?} after the gate opened ({} deliveries, {} redo passes, {} cheap events dropped, peak RSS {} KiB)",
        sids.len(),
        delivered.len(),
        log.matches("owed upload_completed events emitted again").count(),
        log.matches(DROPPED).count(),
        server.peak_rss_kib()
    );
}

/// SIGKILL while owed completion events are queued, waiting on a blocked hook, and deferred
/// (more than the lane holds): after the restart every one is delivered, under the id recorded
/// at completion, though the start-up redelivery itself overflows the lane.
#[test]
fn finding_7_owed_events_queued_and_deferred_survive_a_crash() {
    let mut server = Server::start_prepared(&format!("[[vdir]]\n{GATED_HOOK}"), true, gated);
    let sids = tiny_uploads(&server, 4, TINY_UPLOADS / 4);
    assert!(
        server.log_text().contains("owed-event lane full"),
        "the owed-event lane never overflowed"
    );
    server.kill();
    // Every one is still owed in its record, with the id the receiver will see.
    let db = SessionsDbHandle::open(&server.spool());
    let owed: HashSet<String> = sids
        .iter()
        .map(|sid| {
            let rec = db.get(sid).expect("record");
            rec["pending_hook"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{sid} owes nothing: {rec}"))
                .to_string()
        })
        .collect();
    drop(db);
    std::fs::remove_file(server.dir.path().join("gate")).unwrap();
    server.restart();
    let took = wait_for_completions(&server, &sids, Duration::from_secs(60));
    let ids: HashSet<String> = delivered_events(&server)
        .into_iter()
        .filter(|e| e["event"] == "upload_completed")
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        ids, owed,
        "delivered under other ids than the recorded ones"
    );
    eprintln!(
        "{} owed events delivered {took:?} after the restart",
        sids.len()
    );
}
