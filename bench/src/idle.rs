//! `bench idle`: memory and file descriptors of bitsd holding many idle sessions mid-upload.
//!
//! Opens `sessions` sessions (1 MiB uploads), each on its own connection, and sends the first
//! 64 KiB fragment of each; then measures bitsd's VmRSS, VmHWM and open file descriptors
//! (`/proc/<pid>/status`, `/proc/<pid>/fd`) first with every connection still open, then after
//! the client closed them all. The target is at most 64 MiB RSS.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Chart, Headline, Report};
use crate::server::Bitsd;
use crate::wire::Conn;

const FRAGMENT: usize = 64 << 10;
const TOTAL: usize = 1 << 20;
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

pub fn run(sessions: usize, stalled: usize) -> Result<Report> {
    let sessions = sessions.max(1);
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

    let body: Vec<u8> = (0..FRAGMENT)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let range = format!("bytes 0-{}/{TOTAL}", FRAGMENT - 1);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(sessions);
    let mut sids = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let path = format!("/upload/idle-{i}.bin");
        let mut conn = Conn::open(server.addr)?;
        let sid = crate::wire::create_session(&mut conn, &path)?;
        let resp = conn.post(
            &path,
            &[
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", &sid),
                ("Content-Range", &range),
            ],
            &body,
        )?;
        if resp.status != 200 {
            bail!("{path} Fragment: HTTP {} {:?}", resp.status, resp.headers);
        }
        conns.push(conn);
        sids.push(sid);
        if (i + 1) % 200 == 0 {
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
    let second = format!("bytes {FRAGMENT}-{}/{TOTAL}", 2 * FRAGMENT - 1);
    for (i, sid) in sids.iter().take(stalled).enumerate() {
        let mut conn = Conn::open(server.addr)?;
        let head = format!(
            "BITS_POST /upload/idle-{i}.bin HTTP/1.1\r\nHost: {}\r\nBITS-Packet-Type: Fragment\r\n\
             BITS-Session-Id: {sid}\r\nContent-Range: {second}\r\nContent-Length: {FRAGMENT}\r\n\r\n",
            server.addr
        );
        conn.write_raw(head.as_bytes())?;
        conn.write_raw(&body[..16 << 10])?;
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
        (format!("{sessions} idle sessions, connections open"), &open),
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
            "| {stalled} fragment bodies stalled after 16 KiB (issue 18 target 512 MiB) | {:.1} | {:.1} | {} | {} | {:.2} |\n",
            mib(r.rss_kib),
            mib(r.hwm_kib),
            r.fds,
            r.threads,
            mib(r.rss_kib) / 512.0
        ));
    }
    out.push_str(&format!(
        "\n(fs backend, fsync = true; each session: 1 MiB upload, first 64 KiB fragment sent, \
         own connection; sessions opened one after the other in {setup_secs:.1} s; readings \
         {} s after the last change)\n",
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

#[cfg(test)]
mod tests {
    /// Small smoke run: `cargo test -p bench --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn idle_smoke() {
        let table = super::run(50, 5).unwrap().markdown;
        println!("{table}");
    }
}
