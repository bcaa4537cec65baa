//! Benchmarks that report ratios against a baseline measured in the same run.
//!
//! `cargo run --release -p bench -- durability` uploads one large file in 8 MiB fragments to a
//! freshly started `bitsd` in the safe (fsync) and the unsafe (no fsync) mode, and compares both
//! with `dd ... conv=fsync` of the same size on the same file system.
//!
//! `cargo run --release -p bench -- farm` starts one SeaweedFS on loopback and compares the
//! upload throughput of one bitsd node with that of three nodes sharing its bucket.
//!
//! `small`, `idle`, `download` and `cpu` measure many small uploads, memory of idle sessions,
//! GET throughput against `cat`, and instructions per MiB ingested; `all` runs everything.

mod cpu;
mod download;
mod farm;
mod idle;
#[path = "../../crates/bits-server/tests/support/seaweed.rs"]
mod seaweed;
mod server;
mod small;
mod wire;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use server::Bitsd;

#[derive(Parser)]
#[command(about = "bitsd benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Large upload: safe mode vs unsafe mode vs dd conv=fsync.
    Durability {
        /// Upload size in MiB.
        #[arg(long, default_value_t = 2048)]
        mib: u64,
        /// Fragment size in MiB.
        #[arg(long, default_value_t = 8)]
        fragment_mib: u64,
        /// Repetitions; the median of each figure is reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Directory on the file system to measure (default: a temp dir under ./target).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Many concurrent uploads: 1 bitsd node vs a farm of nodes sharing one SeaweedFS bucket.
    Farm {
        /// Size of each uploaded file in MiB (sent in 1 MiB fragments).
        #[arg(long, default_value_t = 8)]
        file_mib: u64,
        /// Concurrent uploads (client threads) in each case.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Files each client thread uploads, one after the other.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Runs; each measures both cases, in alternating order. Figures are totals.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Nodes in the farm case (at least 2).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Many small uploads from concurrent clients: uploads/s and latency per packet type.
    Small {
        #[arg(long, default_value_t = 2000)]
        uploads: usize,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 64)]
        file_kib: usize,
        /// Measure another BITS server started by hand instead (peer comparison): its loopback
        /// address, e.g. 127.0.0.1:8000. bitsd is not started then.
        #[arg(long)]
        peer: Option<std::net::SocketAddr>,
        /// URL path prefix of the peer's upload directory.
        #[arg(long, default_value = "/upload/")]
        peer_prefix: String,
    },
    /// Open sessions left idle mid-upload: server memory and file descriptors.
    Idle {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
    },
    /// GET of a large file (whole and ranged) against `cat file > /dev/null`.
    Download {
        #[arg(long, default_value_t = 2048)]
        mib: u64,
    },
    /// Instructions per MiB ingested (perf stat, or callgrind where counters are unavailable).
    Cpu {
        #[arg(long, default_value_t = 256)]
        mib: u64,
    },
    /// Every benchmark above with its defaults (durability with one run), one after another.
    All,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Durability {
            mib,
            fragment_mib,
            runs,
            dir,
        } => durability(mib, fragment_mib, runs, dir),
        Cmd::Farm {
            file_mib,
            concurrency,
            rounds,
            runs,
            nodes,
        } => farm::farm(file_mib, concurrency, rounds, runs, nodes),
        Cmd::Small {
            uploads,
            clients,
            file_kib,
            peer,
            peer_prefix,
        } => print(small::run(
            uploads,
            clients,
            file_kib,
            peer.map(|a| (a, peer_prefix)),
        )),
        Cmd::Idle { sessions } => print(idle::run(sessions)),
        Cmd::Download { mib } => print(download::run(mib)),
        Cmd::Cpu { mib } => print(cpu::run(mib)),
        Cmd::All => {
            println!("# bitsd benchmarks\n\n## Durability: 2 GiB upload vs dd conv=fsync\n");
            durability(2048, 8, 1, None)?;
            println!("\n## Many small uploads\n");
            print(small::run(2000, 32, 64, None))?;
            println!("\n## Idle sessions\n");
            print(idle::run(1000))?;
            println!("\n## Download vs cat\n");
            print(download::run(2048))?;
            println!("\n## CPU per MiB ingested\n");
            print(cpu::run(256))?;
            println!("\n## Farm: 1 node vs 3 nodes\n");
            farm::farm(8, 64, 2, 2, 3)
        }
    }
}

fn print(report: Result<String>) -> Result<()> {
    println!("{}", report?);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn durability(
    mib: u64,
    fragment_mib: u64,
    runs: usize,
    dir: Option<std::path::PathBuf>,
) -> Result<()> {
    let base = dir.unwrap_or_else(|| Path::new("target").join("bench-data"));
    std::fs::create_dir_all(&base)?;
    let (mut dd, mut safe, mut unsafe_) = (vec![], vec![], vec![]);
    for run in 0..runs.max(1) {
        let work = tempfile::tempdir_in(&base)?;
        dd.push(dd_fsync(work.path(), mib)?);
        safe.push(upload_run(work.path(), mib, fragment_mib, true)?);
        unsafe_.push(upload_run(work.path(), mib, fragment_mib, false)?);
        eprintln!(
            "run {}: dd {:.0} MiB/s, safe {:.0} MiB/s, unsafe {:.0} MiB/s",
            run + 1,
            dd[run],
            safe[run],
            unsafe_[run]
        );
    }
    let (dd, safe, unsafe_) = (median(dd), median(safe), median(unsafe_));
    println!("| mode | MiB/s | ratio vs dd conv=fsync |");
    println!("|---|---|---|");
    println!("| dd bs=8M conv=fsync | {dd:.0} | 1.00 |");
    println!("| bitsd safe (fsync) | {safe:.0} | {:.2} |", safe / dd);
    println!(
        "| bitsd unsafe (fsync = false) | {unsafe_:.0} | {:.2} |",
        unsafe_ / dd
    );
    println!(
        "({mib} MiB upload, {fragment_mib} MiB fragments, median of {} run(s), dir {})",
        runs.max(1),
        base.display()
    );
    Ok(())
}

/// `dd if=/dev/zero bs=8M count=N conv=fsync` into `dir`, in MiB/s.
fn dd_fsync(dir: &Path, mib: u64) -> Result<f64> {
    let out = dir.join("dd.bin");
    let started = Instant::now();
    let status = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .arg("bs=8M")
        .arg(format!("count={}", mib / 8))
        .arg("conv=fsync")
        .stderr(std::process::Stdio::null())
        .status()
        .context("running dd")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("dd failed: {status}");
    }
    std::fs::remove_file(out)?;
    Ok((mib / 8 * 8) as f64 / secs)
}

/// Uploads `mib` MiB in `fragment_mib` fragments to a fresh bitsd; MiB/s from the first
/// fragment to the Ack of the last one (which includes publishing the file).
fn upload_run(dir: &Path, mib: u64, fragment_mib: u64, fsync: bool) -> Result<f64> {
    let frag = (fragment_mib << 20) as usize;
    let config = format!(
        "fsync = {fsync}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"\nmax_fragment_size = {max}\n",
        root = dir.display(),
        max = frag * 2
    );
    let server = Bitsd::start(dir, &config)?;
    let total = mib << 20;
    let body: Vec<u8> = (0..frag)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let mut conn = TcpStream::connect(server.addr)?;
    conn.set_nodelay(true)?;
    let path = "/upload/bench.bin";
    let created = request(
        &mut conn,
        path,
        &[
            ("BITS-Packet-Type", "Create-Session"),
            (
                "BITS-Supported-Protocols",
                "{7df0354d-249b-430f-820d-3d2a9bef4931}",
            ),
        ],
        &[],
    )?;
    let sid = header(&created, "bits-session-id")
        .context("no session id")?
        .to_string();
    let started = Instant::now();
    let mut off = 0u64;
    while off < total {
        let len = (frag as u64).min(total - off);
        let range = format!("bytes {}-{}/{}", off, off + len - 1, total);
        let resp = request(
            &mut conn,
            path,
            &[
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", &sid),
                ("Content-Range", &range),
            ],
            &body[..len as usize],
        )?;
        if !resp.starts_with("HTTP/1.1 200") {
            bail!("fragment at {off}: {resp}");
        }
        off += len;
    }
    let secs = started.elapsed().as_secs_f64();
    request(
        &mut conn,
        path,
        &[
            ("BITS-Packet-Type", "Close-Session"),
            ("BITS-Session-Id", &sid),
        ],
        &[],
    )?;
    drop(server);
    std::fs::remove_dir_all(dir.join("uploads"))?;
    std::fs::remove_dir_all(dir.join("spool"))?;
    Ok(mib as f64 / secs)
}

/// Sends one BITS_POST and returns the response head (Acks have no body).
fn request(
    conn: &mut TcpStream,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<String> {
    let mut head = format!(
        "BITS_POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    let mut resp = Vec::new();
    let mut byte = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            bail!("connection closed");
        }
        resp.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&resp).into_owned())
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}
