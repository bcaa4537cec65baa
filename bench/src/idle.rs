//! `bench idle`: memory and file descriptors of bitsd holding many idle sessions mid-upload.
//!
//! Opens `sessions` sessions (1 MiB uploads) and sends the first fragment (64 KiB by default)
//! of each. The first `connections` sessions get a connection of their own, kept open; the rest
//! (fleet-scale counts, beyond what one process's descriptors allow) are made over a few shared
//! keep-alive connections. Then it measures bitsd's VmRSS, VmHWM and open file descriptors
//! (`/proc/<pid>/status`, `/proc/<pid>/fd`) first with every connection still open, then after
//! the client closed them all. The target is at most 64 MiB RSS.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Chart, Headline, Report};
use crate::server::Bitsd;
use crate::wire::Conn;

const TOTAL: usize = 1 << 20;
/// Shared keep-alive connections (one per thread) making the sessions beyond `connections`.
const SHARED_CONNECTIONS: usize = 4;
const TARGET_RSS_MIB: f64 = 64.0;
/// Time given to bitsd to settle (and notice closed connections) before each reading.
const SETTLE: Duration = Duration::from_secs(2);

pub(crate) struct Reading {
    rss_kib: u64,
    pub(crate) hwm_kib: u64,
    threads: u64,
    fds: usize,
}

pub(crate) fn read_proc(pid: u32) -> Result<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count();
    Ok(Reading {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
        fds,
    })
}

/// What `bench idle` opens.
pub struct Shape {
    pub sessions: usize,
    /// Sessions whose own connection stays open (the rest share a few); `None`: all of them.
    pub connections: Option<usize>,
    pub fragment_kib: usize,
    pub stalled: usize,
}

impl Shape {
    pub fn sessions(sessions: usize) -> Shape {
        Shape {
            sessions,
            connections: None,
            fragment_kib: 64,
            stalled: 0,
        }
    }
}

pub fn run(shape: Shape) -> Result<Report> {
    let sessions = shape.sessions.max(1);
    let stalled = shape.stalled.min(sessions);
    let own = shape.connections.unwrap_or(sessions).min(sessions);
    let fragment = (shape.fragment_kib.clamp(1, 512)) << 10;
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let config = format!(
        "fsync = true\n\
         # Every session comes from one loopback address: lift the per-address and anonymous\n\
         # limits (they would refuse the 1 001st), keep the server-wide one above the count.\n\
         max_anonymous_sessions_per_ip = 0\nmax_anonymous_sessions = 0\n\
         max_open_sessions = {max}\nmax_connections = {max}\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"\n",
        max = sessions.max(1000) + stalled + 100,
        root = dir.path().display(),
    );
    let server = Bitsd::start(dir.path(), &config)?;
    let pid = server.pid();
    eprintln!(
        "idle: bitsd at {} (pid {pid}); opening {sessions} sessions",
        server.addr
    );
    std::thread::sleep(SETTLE);
    let fresh = read_proc(pid)?;

    let body: Vec<u8> = (0..fragment)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let started = Instant::now();
    // The shared connections first: the readings with connections open come right after
    // the last own connection is made, before any of them reaches the keep-alive timeout.
    let mut sids = Vec::with_capacity(sessions);
    let addr = server.addr;
    std::thread::scope(|scope| -> Result<()> {
        let threads: Vec<_> = (0..SHARED_CONNECTIONS)
            .map(|t| {
                let body = &body;
                scope.spawn(move || -> Result<Vec<(usize, String)>> {
                    let mut conn = Conn::open(addr)?;
                    let mut sids = Vec::new();
                    for i in (own + t..sessions).step_by(SHARED_CONNECTIONS) {
                        sids.push((i, open_session(&mut conn, i, body)?));
                        if (i + 1) % 10_000 == 0 {
                            eprintln!(
                                "idle: ~{} sessions open after {:.1} s",
                                i + 1,
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Ok(sids)
                })
            })
            .collect();
        for t in threads {
            sids.extend(
                t.join()
                    .map_err(|_| anyhow::anyhow!("a session thread panicked"))??,
            );
        }
        Ok(())
    })?;
    let mut conns = Vec::with_capacity(own);
    for i in 0..own {
        let mut conn = Conn::open(server.addr)?;
        sids.push((i, open_session(&mut conn, i, &body)?));
        conns.push(conn);
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "idle: {} sessions open after {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let open = read_proc(pid)?;
    eprintln!("idle: read with {} connections open", conns.len());
    drop(conns);
    std::thread::sleep(SETTLE);
    let closed = read_proc(pid)?;
    // Stalled uploads: a second fragment whose body stops after 16 KiB, one connection each.
    let mut waiting = Vec::with_capacity(stalled);
    let second = format!("bytes {fragment}-{}/{TOTAL}", 2 * fragment - 1);
    for (i, sid) in sids.iter().take(stalled) {
        let mut conn = Conn::open(server.addr)?;
        let head = format!(
            "BITS_POST /upload/idle-{i}.bin HTTP/1.1\r\nHost: {}\r\nBITS-Packet-Type: Fragment\r\n\
             BITS-Session-Id: {sid}\r\nContent-Range: {second}\r\nContent-Length: {fragment}\r\n\r\n",
            server.addr
        );
        conn.write_raw(head.as_bytes())?;
        conn.write_raw(&body[..(16 << 10).min(fragment / 2)])?;
        waiting.push(conn);
    }
    let stalled_reading = if stalled > 0 {
        std::thread::sleep(SETTLE);
        eprintln!("idle: read with {stalled} fragment bodies stalled");
        Some(read_proc(pid)?)
    } else {
        None
    };
    drop(waiting);
    drop(server);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::new();
    out.push_str("| state | VmRSS MiB | VmHWM MiB | open fds | threads | RSS vs target 64 MiB |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for (state, r) in [
        ("fresh bitsd, no sessions".to_string(), &fresh),
        (
            format!("{sessions} idle sessions, {own} connections open"),
            &open,
        ),
        (
            format!("{sessions} idle sessions, connections closed"),
            &closed,
        ),
    ] {
        let rss = mib(r.rss_kib);
        out.push_str(&format!(
            "| {state} | {rss:.1} | {:.1} | {} | {} | {:.2} ({}) |\n",
            mib(r.hwm_kib),
            r.fds,
            r.threads,
            rss / TARGET_RSS_MIB,
            if rss <= TARGET_RSS_MIB { "ok" } else { "over" }
        ));
    }
    if let Some(r) = &stalled_reading {
        out.push_str(&format!(
            "| {stalled} fragment bodies stalled mid-body (issue 18 target 512 MiB) | {:.1} | {:.1} | {} | {} | {:.2} |\n",
            mib(r.rss_kib),
            mib(r.hwm_kib),
            r.fds,
            r.threads,
            mib(r.rss_kib) / 512.0
        ));
    }
    out.push_str(&format!(
        "\n(fs backend, fsync = true; each session: 1 MiB upload, first {} KiB fragment sent; \
         {own} on a connection of their own, the rest over {SHARED_CONNECTIONS} shared ones; \
         sessions opened in {setup_secs:.1} s; readings {} s after the last change)\n",
        fragment >> 10,
        SETTLE.as_secs()
    ));
    let rss = mib(open.rss_kib);
    Ok(Report::table(out)
        .with_chart(Chart {
            name: "bench-idle".to_string(),
            title: format!("bitsd memory with {sessions} idle sessions"),
            unit: "VmRSS MiB".to_string(),
            bars: vec![
                ("fresh bitsd".to_string(), mib(fresh.rss_kib)),
                (format!("{sessions} idle sessions, connections open"), rss),
                (
                    format!("{sessions} idle sessions, connections closed"),
                    mib(closed.rss_kib),
                ),
            ],
            line: Some(("limit 64 MiB".to_string(), TARGET_RSS_MIB)),
        })
        .with_headline(Headline {
            figure: format!("{sessions} idle open sessions"),
            value: format!("{rss:.1} MiB RSS, {} fds", open.fds),
            baseline: format!("fresh bitsd: {:.1} MiB", mib(fresh.rss_kib)),
            ratio: rss / TARGET_RSS_MIB,
            target: format!("<= {TARGET_RSS_MIB:.0} MiB (ratio is RSS / limit)"),
            met: Some(rss <= TARGET_RSS_MIB),
        }))
}

/// Creates session `i` and sends its first fragment (`body`) on `conn`; its id.
fn open_session(conn: &mut Conn, i: usize, body: &[u8]) -> Result<String> {
    let path = format!("/upload/idle-{i}.bin");
    let sid = crate::wire::create_session(conn, &path)?;
    let range = format!("bytes 0-{}/{TOTAL}", body.len() - 1);
    let resp = conn.post(
        &path,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", &range),
        ],
        body,
    )?;
    if resp.status != 200 {
        bail!("{path} Fragment: HTTP {} {:?}", resp.status, resp.headers);
    }
    Ok(sid)
}

#[cfg(test)]
mod tests {
    /// Small smoke run: `cargo test -p bench --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn idle_smoke() {
        let shape = super::Shape {
            connections: Some(20),
            stalled: 5,
            ..super::Shape::sessions(50)
        };
        let table = super::run(shape).unwrap().markdown;
        println!("{table}");
    }
}
