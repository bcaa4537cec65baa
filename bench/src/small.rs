//! `bench small`: many small uploads against one bitsd (fs backend, safe fsync mode).
//!
//! `clients` threads share `uploads` uploads of `file_kib` KiB each; every upload is
//! Create-Session, one Fragment with the whole file, Close-Session, sent as raw HTTP/1.1 on
//! one keep-alive connection per thread. Reports uploads/s over the wall time and the p50/p99
//! latency of each packet type (every request is timed), and the ratio against the target of
//! 2000 uploads/s.

use crate::stats::{median, percentile};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::report::{Chart, Headline, Report};
use crate::server::Bitsd;
use crate::wire::Conn;

/// The target throughput.
const TARGET_UPLOADS_S: f64 = 2000.0;

/// Latencies in seconds of one packet type.
#[derive(Default)]
struct Latencies {
    create: Vec<f64>,
    fragment: Vec<f64>,
    close: Vec<f64>,
}

/// Runs the workload against a fresh bitsd, or, with `peer` = (loopback address, upload URL
/// prefix such as `/upload/`), against another BITS server started by hand — the peer
/// comparison. Only loopback peers are accepted.
pub fn run(
    uploads: usize,
    clients: usize,
    file_kib: usize,
    peer: Option<(std::net::SocketAddr, String)>,
    dir: Option<&Path>,
    rounds: usize,
) -> Result<Report> {
    let rounds = rounds.max(1);
    if let Some((addr, _)) = &peer {
        if !addr.ip().is_loopback() {
            bail!("peer {addr} is not a loopback address");
        }
    }
    let (uploads, clients, file_kib) = (uploads.max(1), clients.max(1), file_kib.max(1));
    let clients = clients.min(uploads);
    let base = dir.map_or_else(|| Path::new("target").join("bench-data"), Path::to_path_buf);
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let size = file_kib << 10;
    let config = format!(
        "fsync = true\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"\n\
         max_fragment_size = {max}\n",
        root = dir.path().display(),
        max = size.max(1 << 20)
    );
    let server = match &peer {
        None => Some(Bitsd::start(dir.path(), &config)?),
        Some(_) => None,
    };
    let (addr, prefix) = match (&peer, &server) {
        (Some((a, p)), _) => (*a, p.clone()),
        (None, Some(s)) => (s.addr, "/upload/".to_string()),
        (None, None) => bail!("no server to measure"),
    };
    let who = if peer.is_some() {
        "peer server"
    } else {
        "bitsd"
    };
    eprintln!("small: {who} at {addr}; {uploads} uploads of {file_kib} KiB from {clients} clients");
    let body: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();

    // Rounds alternate the baseline (the least a durable server must do per upload on this
    // disk) and the server, so that drift of the disk between runs hits both alike.
    let (mut base_secs, mut server_secs, mut lat) = (Vec::new(), Vec::new(), Latencies::default());
    for round in 0..rounds {
        let measure_baseline = || -> Result<f64> {
            let b = durable_files_baseline(dir.path(), uploads, clients, &body)?;
            eprintln!(
                "small: round {}: baseline (write + fdatasync + rename + dir fsync, {clients} threads): {:.0} files/s",
                round + 1,
                uploads as f64 / b
            );
            Ok(b)
        };
        if peer.is_none() && round % 2 == 0 {
            base_secs.push(measure_baseline()?);
        }
        let (secs, l) = run_clients(addr, &prefix, round, uploads, clients, &body)?;
        eprintln!(
            "small: round {}: {who}: {:.0} uploads/s",
            round + 1,
            uploads as f64 / secs
        );
        server_secs.push(secs);
        lat.create.extend(l.create);
        lat.fragment.extend(l.fragment);
        lat.close.extend(l.close);
        if peer.is_none() && round % 2 == 1 {
            base_secs.push(measure_baseline()?);
        }
    }
    let ratios: Vec<f64> = base_secs
        .iter()
        .zip(&server_secs)
        .map(|(b, s)| b / s)
        .collect();
    let baseline = (!base_secs.is_empty()).then(|| median(&base_secs));
    let secs = median(&server_secs);
    // The ratio of each round, then their median: robust to drift between rounds.
    let ratio = (!ratios.is_empty()).then(|| median(&ratios));
    if let Some(server) = server {
        drop(server);
        let published = std::fs::read_dir(dir.path().join("uploads"))?.count();
        if published != uploads * rounds {
            bail!("{published} files published, expected {}", uploads * rounds);
        }
    }
    let rate = uploads as f64 / secs;
    let mib = (uploads * size) as f64 / (1 << 20) as f64;
    eprintln!(
        "small: {uploads} uploads in {secs:.2} s: {rate:.0} uploads/s ({:.2} of the target {TARGET_UPLOADS_S:.0}/s)",
        rate / TARGET_UPLOADS_S
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    out.push_str("| case | uploads | clients | file KiB | seconds | uploads/s | MiB/s | ratio vs baseline | ratio vs target 2000 uploads/s |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    if let Some(b) = baseline {
        let brate = uploads as f64 / b;
        out.push_str(&format!(
            "| baseline: write + fdatasync + rename + dir fsync per file (no HTTP) | {uploads} | {clients} | {file_kib} | {b:.2} | {brate:.0} | {:.1} | 1.00 | {:.2} |\n",
            mib / b,
            brate / TARGET_UPLOADS_S
        ));
    }
    out.push_str(&format!(
        "| {who} | {uploads} | {clients} | {file_kib} | {secs:.2} | {rate:.0} | {:.1} | {} | {:.2} |\n\n",
        mib / secs,
        ratio.map_or("-".to_string(), |r| format!("{r:.2}")),
        rate / TARGET_UPLOADS_S
    ));
    out.push_str("| packet type | requests | p50 ms | p99 ms | max ms |\n");
    out.push_str("|---|---|---|---|---|\n");
    for (name, v) in [
        ("Create-Session", lat.create),
        ("Fragment", lat.fragment),
        ("Close-Session", lat.close),
    ] {
        out.push_str(&format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} |\n",
            v.len(),
            percentile(&v, 0.50) * 1e3,
            percentile(&v, 0.99) * 1e3,
            percentile(&v, 1.0) * 1e3
        ));
    }
    out.push_str(&format!(
        "\n(fs backend, fsync = true, one fragment per upload, one keep-alive connection per \
         client; bitsd and the {clients} client threads share this machine's {cores} core(s); \
         {rounds} round(s), baseline and server alternating, median seconds per case, ratio = \
         median of the rounds' ratios{}; latencies over all rounds)\n",
        if ratios.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    let mut bars = Vec::new();
    if let Some(b) = baseline {
        bars.push((
            "baseline: durable file writes".to_string(),
            uploads as f64 / b,
        ));
    }
    bars.push((format!("{who}: BITS uploads"), rate));
    let report = Report::table(out).with_chart(Chart {
        name: format!("bench-small-{}", fs_name(&base)),
        title: format!("{uploads} uploads of {file_kib} KiB, {clients} clients"),
        unit: "uploads/s".to_string(),
        bars,
        line: Some(("target 2000 uploads/s".to_string(), TARGET_UPLOADS_S)),
    });
    Ok(match baseline {
        Some(b) => report.with_headline(Headline {
            figure: format!(
                "{uploads} uploads of {file_kib} KiB, {clients} clients, on {}",
                fs_name(&base)
            ),
            value: format!(
                "{rate:.0} uploads/s ({:.2} x target)",
                rate / TARGET_UPLOADS_S
            ),
            baseline: format!(
                "durable file writes, no HTTP: {:.0} files/s",
                uploads as f64 / b
            ),
            ratio: ratio.unwrap_or(b / secs),
            target: format!(">= {TARGET_UPLOADS_S:.0} uploads/s"),
            met: Some(rate >= TARGET_UPLOADS_S),
        }),
        None => report,
    })
}

/// `clients` threads upload `uploads` files of `body` between them (names tagged with
/// `round`); wall seconds from the common start and every request's latency.
fn run_clients(
    addr: std::net::SocketAddr,
    prefix: &str,
    round: usize,
    uploads: usize,
    clients: usize,
    body: &[u8],
) -> Result<(f64, Latencies)> {
    let done = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    let barrier = Barrier::new(clients + 1);
    std::thread::scope(|scope| -> Result<(f64, Latencies)> {
        let workers: Vec<_> = (0..clients)
            .map(|w| {
                let (barrier, done, body, prefix) = (&barrier, &done, &body, &prefix);
                scope.spawn(move || -> Result<Latencies> {
                    // Connect before the start signal, but always reach the barrier.
                    let conn = Conn::open(addr);
                    barrier.wait();
                    let mut conn = conn?;
                    let mut lat = Latencies::default();
                    for i in (w..uploads).step_by(clients) {
                        let path = format!("{prefix}small-r{round}-{i}.bin");
                        upload(&mut conn, &path, body, &mut lat)
                            .with_context(|| format!("upload {path}"))?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let progress = scope.spawn(|| {
            let start = Instant::now();
            let mut last = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(2) {
                    last = Instant::now();
                    let n = done.load(Ordering::Relaxed);
                    eprintln!(
                        "small: {n}/{uploads} uploads after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        });
        barrier.wait();
        let started = Instant::now();
        let mut all = Latencies::default();
        let mut first_error = None;
        for w in workers {
            match w
                .join()
                .unwrap_or_else(|_| Err(anyhow!("client thread panicked")))
            {
                Ok(l) => {
                    all.create.extend(l.create);
                    all.fragment.extend(l.fragment);
                    all.close.extend(l.close);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        finished.store(true, Ordering::Relaxed);
        let _ = progress.join();
        match first_error {
            Some(e) => Err(e),
            None => Ok((secs, all)),
        }
    })
}

/// `clients` threads write `uploads` files of `body` the way a crash-safe server publishes an
/// upload — temporary file, write, `fdatasync`, rename into place, `fsync` of the directory —
/// in a directory on the same file system. Seconds for all of them.
fn durable_files_baseline(dir: &Path, uploads: usize, clients: usize, body: &[u8]) -> Result<f64> {
    use std::io::Write;
    let base = dir.join("baseline");
    let (tmp, out) = (base.join("tmp"), base.join("out"));
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|w| {
                let (tmp, out) = (&tmp, &out);
                scope.spawn(move || -> Result<()> {
                    for i in (w..uploads).step_by(clients) {
                        let t = tmp.join(format!("{i}"));
                        let mut f = std::fs::File::create(&t)?;
                        f.write_all(body)?;
                        f.sync_data()?;
                        drop(f);
                        std::fs::rename(&t, out.join(format!("small-{i}.bin")))?;
                        std::fs::File::open(out)?.sync_all()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .unwrap_or_else(|_| Err(anyhow!("baseline thread panicked")))?;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&base)?;
    Ok(secs)
}

/// Create-Session, one Fragment with all of `body`, Close-Session; each request timed.
fn upload(conn: &mut Conn, path: &str, body: &[u8], lat: &mut Latencies) -> Result<()> {
    let t = Instant::now();
    let sid = crate::wire::create_session(conn, path)?;
    lat.create.push(t.elapsed().as_secs_f64());
    let range = format!("bytes 0-{}/{}", body.len() - 1, body.len());
    let t = Instant::now();
    let resp = conn.post(
        path,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", &range),
        ],
        body,
    )?;
    lat.fragment.push(t.elapsed().as_secs_f64());
    if resp.status != 200 {
        bail!("Fragment: HTTP {} {:?}", resp.status, resp.headers);
    }
    let t = Instant::now();
    let closed = conn.post(
        path,
        &[
            ("BITS-Packet-Type", "Close-Session"),
            ("BITS-Session-Id", &sid),
        ],
        &[],
    )?;
    lat.close.push(t.elapsed().as_secs_f64());
    if closed.status != 200 {
        bail!("Close-Session: HTTP {} {:?}", closed.status, closed.headers);
    }
    Ok(())
}

/// The file system type `dir` lives on (from /proc/mounts), e.g. `ext4` or `tmpfs`.
fn fs_name(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or_else(|| "unknown".to_string(), |(_, t)| t)
}

#[cfg(test)]
mod tests {
    /// Small smoke run: `cargo test -p bench --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn small_smoke() {
        let table = super::run(200, 8, 16, None, None, 1).unwrap().markdown;
        println!("{table}");
    }
}
