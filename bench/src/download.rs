//! `bench download`: GET throughput of bitsd over loopback vs `cat file > /dev/null` of the same
//! file, measured in the same run with a warm page cache.
//!
//! A file of `mib` MiB is written straight into the root of the vdir `/upload/` (files there
//! are served by GET at `/upload/<name>`), read once with `cat` to warm the page cache, then
//! each case runs three times and the median is reported:
//!
//! * `cat file > /dev/null` (the baseline),
//! * one GET of the whole file on a raw `TcpStream`, the body read into a discarding buffer,
//! * the same file in 8 ranged GETs of `mib / 8` MiB each, one after the other on one
//!   keep-alive connection (as a BITS download job fetches it),
//! * the same 8 ranged GETs on 8 connections at once (extra row, for reference).
//!
//! The target: a whole-file GET reaches at least 0.8 x the `cat` throughput.

use crate::stats::median;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Chart, Headline, Report};
use crate::server::Bitsd;

const RUNS: usize = 3;
const PARTS: u64 = 8;
const TARGET: f64 = 0.8;
const NAME: &str = "download-bench.bin";

pub fn run(mib: u64) -> Result<Report> {
    let mib = mib.max(PARTS);
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let root = dir.path().join("uploads");
    std::fs::create_dir_all(&root)?;
    let file = root.join(NAME);
    write_file(&file, mib)?;
    let config = format!(
        "[[vdir]]\nprefix = \"/upload/\"\nroot = \"{}\"\n",
        root.display()
    );
    let server = Bitsd::start(dir.path(), &config)?;
    let url = format!("/upload/{NAME}");
    let total = mib << 20;

    // Warm the page cache (and check the server serves the whole file) before measuring.
    cat(&file)?;
    let got = get(server.addr, &url, None)?;
    if got != total {
        bail!("GET returned {got} bytes, expected {total}");
    }

    let (mut c, mut wire, mut whole, mut seq, mut par) = (vec![], vec![], vec![], vec![], vec![]);
    for r in 0..RUNS {
        let secs = cat(&file)?;
        c.push(mib as f64 / secs);
        let secs = sendfile_loopback(&file, total)?;
        wire.push(mib as f64 / secs);
        let secs = timed(|| expect(get(server.addr, &url, None)?, total))?;
        whole.push(mib as f64 / secs);
        let secs = timed(|| ranged_sequential(server.addr, &url, total))?;
        seq.push(mib as f64 / secs);
        let secs = timed(|| ranged_parallel(server.addr, &url, total))?;
        par.push(mib as f64 / secs);
        eprintln!(
            "download run {}: cat {:.0}, sendfile {:.0}, GET {:.0}, 8 ranged GETs {:.0}, 8 parallel {:.0} MiB/s",
            r + 1,
            c[r],
            wire[r],
            whole[r],
            seq[r],
            par[r]
        );
    }
    drop(server);
    let (c, wire, whole, seq, par) = (
        median(&c),
        median(&wire),
        median(&whole),
        median(&seq),
        median(&par),
    );
    let verdict = |v: f64| {
        if v / c >= TARGET {
            "yes"
        } else {
            "no"
        }
    };
    let part = mib / PARTS;
    let mut out = String::new();
    writeln!(
        out,
        "| case | MiB/s | ratio vs cat | >= {TARGET} x cat | ratio vs loopback sendfile |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    writeln!(
        out,
        "| `cat file > /dev/null` (warm cache) | {c:.0} | 1.00 | - | {:.2} |",
        c / wire
    )?;
    writeln!(
        out,
        "| `sendfile(2)` of the file over a loopback TCP socket, no HTTP (network ceiling) | {wire:.0} | {:.2} | {} | 1.00 |",
        wire / c,
        verdict(wire)
    )?;
    for (case, v) in [
        ("bitsd GET, whole file, 1 request".to_string(), whole),
        (
            format!(
                "bitsd GET, 8 ranged requests of {part} MiB, sequential, 1 keep-alive connection"
            ),
            seq,
        ),
        (
            format!("bitsd GET, 8 ranged requests of {part} MiB, 8 connections at once"),
            par,
        ),
    ] {
        writeln!(
            out,
            "| {case} | {v:.0} | {:.2} | {} | {:.2} |",
            v / c,
            verdict(v),
            v / wire
        )?;
    }
    writeln!(
        out,
        "({mib} MiB file in the vdir root, page cache warmed by one cat and one GET first; \
         loopback, raw HTTP/1.1 client reading Content-Length bytes into a 1 MiB discarding \
         buffer; median of {RUNS} runs; {} core(s) shared by bitsd, client and cat)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    Ok(Report::table(out)
        .with_chart(Chart {
            name: "bench-download".to_string(),
            title: format!("Reading a {mib} MiB file from the page cache"),
            unit: "MiB/s".to_string(),
            bars: vec![
                ("cat file > /dev/null".to_string(), c),
                ("sendfile over loopback TCP".to_string(), wire),
                ("bitsd GET, whole file".to_string(), whole),
                ("bitsd GET, 8 ranges, sequential".to_string(), seq),
                ("bitsd GET, 8 ranges, parallel".to_string(), par),
            ],
            line: Some((format!("target {TARGET} x cat"), TARGET * c)),
        })
        .with_headline(Headline {
            figure: format!("GET of a {mib} MiB file"),
            value: format!("{whole:.0} MiB/s ({:.2} x loopback sendfile)", whole / wire),
            baseline: format!("cat to /dev/null: {c:.0} MiB/s"),
            ratio: whole / c,
            target: format!(">= {TARGET} x cat"),
            met: Some(whole / c >= TARGET),
        }))
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed().as_secs_f64())
}

fn expect(got: u64, want: u64) -> Result<()> {
    if got != want {
        bail!("read {got} bytes, expected {want}");
    }
    Ok(())
}

/// Writes `mib` MiB of non-zero, non-repeating-per-page bytes.
fn write_file(path: &Path, mib: u64) -> Result<()> {
    let chunk: Vec<u8> = (0..(8usize << 20))
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let mut f = std::fs::File::create(path)?;
    let mut left = mib << 20;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// The same bytes over loopback TCP with no HTTP and no user-space copy on the sending side
/// (`sendfile(2)` from the page cache), read by the same client loop: the fastest any server
/// could deliver this file to this client on this machine. In seconds.
fn sendfile_loopback(file: &Path, total: u64) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let src = std::fs::File::open(file)?;
    let sender = std::thread::spawn(move || -> Result<()> {
        let (sock, _) = listener.accept()?;
        let mut left = total;
        while left > 0 {
            let want = left.min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the duration of the call; a null offset
            // pointer makes the kernel use and advance the file's own position.
            let n = unsafe {
                libc::sendfile(
                    sock.as_raw_fd(),
                    src.as_raw_fd(),
                    std::ptr::null_mut(),
                    want,
                )
            };
            if n <= 0 {
                bail!("sendfile: {}", std::io::Error::last_os_error());
            }
            left -= n as u64;
        }
        Ok(())
    });
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = total;
    while left > 0 {
        let got = conn.read(&mut buf)?;
        if got == 0 {
            bail!("sendfile peer closed with {left} bytes missing");
        }
        left -= got as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    sender
        .join()
        .unwrap_or_else(|_| bail!("sendfile thread panicked"))?;
    Ok(secs)
}

/// `sh -c 'cat file > /dev/null'`, in seconds.
fn cat(file: &Path) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg("cat \"$1\" > /dev/null")
        .arg("sh")
        .arg(file)
        .status()
        .context("running cat")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("cat failed: {status}");
    }
    Ok(secs)
}

fn connect(addr: SocketAddr) -> Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    // A large buffer so body bytes are not copied through a small one.
    Ok(BufReader::with_capacity(1 << 20, s))
}

/// One GET (optionally of `range`, inclusive) on `conn`; returns the body length read.
fn get_on(conn: &mut BufReader<TcpStream>, url: &str, range: Option<(u64, u64)>) -> Result<u64> {
    let mut head = format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some((first, last)) = range {
        head.push_str(&format!("Range: bytes={first}-{last}\r\n"));
    }
    head.push_str("\r\n");
    conn.get_mut().write_all(head.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let want = if range.is_some() { 206 } else { 200 };
    let mut len = None;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            bail!("connection closed in the response head");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse::<u64>()?);
            }
        }
    }
    if status != want {
        bail!("GET {url} {range:?}: HTTP {status}, expected {want}");
    }
    let len = len.context("no Content-Length")?;
    // Read the body into a discarding buffer: drain what BufReader holds, then read directly.
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let got = conn.read(&mut buf[..n])?;
        if got == 0 {
            bail!("connection closed with {left} body bytes missing");
        }
        left -= got as u64;
    }
    Ok(len)
}

fn get(addr: SocketAddr, url: &str, range: Option<(u64, u64)>) -> Result<u64> {
    get_on(&mut connect(addr)?, url, range)
}

fn part_range(total: u64, i: u64) -> (u64, u64) {
    let part = total / PARTS;
    let first = i * part;
    let last = if i == PARTS - 1 {
        total - 1
    } else {
        first + part - 1
    };
    (first, last)
}

fn ranged_sequential(addr: SocketAddr, url: &str, total: u64) -> Result<()> {
    let mut conn = connect(addr)?;
    let mut got = 0;
    for i in 0..PARTS {
        got += get_on(&mut conn, url, Some(part_range(total, i)))?;
    }
    expect(got, total)
}

fn ranged_parallel(addr: SocketAddr, url: &str, total: u64) -> Result<()> {
    let got = std::thread::scope(|s| {
        let parts: Vec<_> = (0..PARTS)
            .map(|i| s.spawn(move || get(addr, url, Some(part_range(total, i)))))
            .collect();
        parts
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("client thread panicked")))
            .sum::<Result<u64>>()
    })?;
    expect(got, total)
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "benchmark: starts bitsd; run with --ignored --nocapture"]
    fn download_small() {
        let table = super::run(64).unwrap().markdown;
        println!("{table}");
        assert!(table.contains("| `cat file > /dev/null`"));
    }
}
