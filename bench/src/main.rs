//! Benchmarks that report ratios against a baseline measured in the same run.
//!
//! `cargo run --release -p bench -- durability` uploads one large file in 8 MiB fragments to a
//! freshly started `bitsd` in the safe (fsync) and the unsafe (no fsync) mode, and compares both
//! with `dd ... conv=fsync` of the same size on the same file system.
//!
//! `cargo run --release -p bench -- farm` starts one SeaweedFS on loopback and compares the
//! upload throughput of one bitsd node with that of three nodes sharing its bucket.
//!
//! `cargo run --release -p bench -- publish` uploads 2 GiB in 8 MiB fragments through one node
//! on SeaweedFS: the publishing (final) Ack against the median Fragment Ack, and ingest
//! against a raw S3 PUT of the same bytes. `publish-azure` is its twin on Azurite (512 MiB by
//! default): the final Ack (one `Put Block List`) against the median Fragment Ack, and the
//! node's peak memory.
//!
//! `small`, `idle`, `download` and `cpu` measure many small uploads, memory of idle sessions,
//! GET throughput against `cat`, and instructions per MiB ingested; `all` runs everything.

#[path = "../../crates/bits-server/tests/support/azurite.rs"]
mod azurite;
mod cpu;
mod download;
mod farm;
mod idle;
mod plot;
mod publish;
mod publish_azure;
mod report;
#[path = "../../crates/bits-server/tests/support/seaweed.rs"]
mod seaweed;
mod server;
mod small;
mod startup;
mod stats;
mod wire;

use crate::stats::median;
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
    /// One large upload through one node on SeaweedFS: median Fragment Ack, the final
    /// (publishing) Ack, and ingest throughput against a raw S3 PUT of the same bytes.
    Publish {
        /// Upload size in MiB.
        #[arg(long, default_value_t = 2048)]
        mib: u64,
        /// Fragment size in MiB.
        #[arg(long, default_value_t = 8)]
        fragment_mib: u64,
        /// Runs (upload and raw PUT each); medians are reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// `publish` on Azure Blob Storage (Azurite): median Fragment Ack, the final (publishing)
    /// Ack, ingest against sequential Put Blocks, and the node's peak memory.
    PublishAzure {
        /// Upload size in MiB.
        #[arg(long, default_value_t = 512)]
        mib: u64,
        /// Fragment size in MiB.
        #[arg(long, default_value_t = 8)]
        fragment_mib: u64,
        /// Runs; medians are reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
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
        /// Directory on the file system to measure (default: a temp dir under ./target).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Rounds, alternating baseline and server; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Open sessions left idle mid-upload: server memory and file descriptors.
    Idle {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Then this many of the sessions get a second fragment whose body stalls after 16 KiB
        /// (each on a new connection), and bitsd's memory is read with them all waiting.
        #[arg(long, default_value_t = 0)]
        stalled: usize,
        /// Sessions that keep a connection of their own open (default: all); the rest are made
        /// over a few shared keep-alive connections, for counts beyond the descriptor limit.
        #[arg(long)]
        connections: Option<usize>,
        /// Size of each session's first fragment.
        #[arg(long, default_value_t = 64)]
        fragment_kib: usize,
    },
    /// Restart with many open sessions: time to the listener, the first Ping, the first
    /// Create-Session and the end of the registry build, cold page cache; optionally against
    /// the previous release's binary on the same sessions in its layout.
    Startup {
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// A bitsd of the previous release, started on the same sessions in its spool layout
        /// in alternating rounds.
        #[arg(long)]
        legacy_binary: Option<std::path::PathBuf>,
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
    /// Every benchmark above with its defaults (durability with one run), one after another;
    /// writes the tables and a summary into `<docs>/benchmarks.md` (between the generated-section
    /// markers) and the charts into `<docs>/img/`.
    All {
        /// The docs directory to write to.
        #[arg(long, default_value = "docs")]
        docs: std::path::PathBuf,
        /// Print the Markdown only; write no files.
        #[arg(long)]
        no_write: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Durability {
            mib,
            fragment_mib,
            runs,
            dir,
        } => print(durability(mib, fragment_mib, runs, dir)),
        Cmd::Farm {
            file_mib,
            concurrency,
            rounds,
            runs,
            nodes,
        } => print(farm::farm(file_mib, concurrency, rounds, runs, nodes)),
        Cmd::Publish {
            mib,
            fragment_mib,
            runs,
        } => print(publish::publish(mib, fragment_mib, runs)),
        Cmd::PublishAzure {
            mib,
            fragment_mib,
            runs,
        } => print(publish_azure::publish_azure(mib, fragment_mib, runs)),
        Cmd::Small {
            uploads,
            clients,
            file_kib,
            peer,
            peer_prefix,
            dir,
            rounds,
        } => print(small::run(
            uploads,
            clients,
            file_kib,
            peer.map(|a| (a, peer_prefix)),
            dir.as_deref(),
            rounds,
        )),
        Cmd::Startup {
            sessions,
            rounds,
            legacy_binary,
        } => print(startup::run(sessions, rounds, legacy_binary)),
        Cmd::Idle {
            sessions,
            stalled,
            connections,
            fragment_kib,
        } => print(idle::run(idle::Shape {
            connections,
            fragment_kib,
            stalled,
            ..idle::Shape::sessions(sessions)
        })),
        Cmd::Download { mib } => print(download::run(mib)),
        Cmd::Cpu { mib } => print(cpu::run(mib)),
        Cmd::All { docs, no_write } => all(&docs, no_write),
    }
}

/// Runs every benchmark; the document is written even when one of them fails (its section then
/// says why), so a long run is never lost to one broken case.
fn all(docs: &Path, no_write: bool) -> Result<()> {
    let started = Instant::now();
    type Run = Box<dyn FnOnce() -> Result<report::Report>>;
    let cases: Vec<(&str, Run)> = vec![
        (
            "Durability: 2 GiB upload vs dd conv=fsync",
            Box::new(|| durability(2048, 8, 3, None)),
        ),
        (
            "Many small uploads",
            Box::new(|| small::run(2000, 32, 64, None, None, 3)),
        ),
        (
            "Many small uploads on tmpfs (syncs free: the server's CPU path)",
            Box::new(|| {
                let shm = Path::new("/dev/shm");
                if !shm.is_dir() {
                    bail!("no /dev/shm here");
                }
                small::run(2000, 32, 64, None, Some(&shm.join("bitsd-bench")), 3)
            }),
        ),
        (
            "Idle sessions",
            Box::new(|| idle::run(idle::Shape::sessions(1000))),
        ),
        ("Download vs cat", Box::new(|| download::run(2048))),
        ("CPU per MiB ingested", Box::new(|| cpu::run(256))),
        (
            "Farm: 1 node vs 3 nodes",
            Box::new(|| farm::farm(8, 64, 2, 2, 3)),
        ),
    ];
    let mut sections = Vec::new();
    for (title, run) in cases {
        eprintln!("== {title}");
        let t = Instant::now();
        let outcome = run();
        if let Err(e) = &outcome {
            eprintln!("{title} failed: {e:#}");
        }
        sections.push((title, outcome, t.elapsed().as_secs_f64()));
    }
    let img = docs.join("img");
    let mut md = String::new();
    md.push_str(&format!(
        "Generated by `cargo run --release -p bench -- all` on {} in {:.0} s.\n\n{}\n\n",
        today(),
        started.elapsed().as_secs_f64(),
        machine()
    ));
    md.push_str("| figure | value | same-run baseline | ratio | target | met |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for (_, outcome, _) in &sections {
        for h in outcome.iter().flat_map(|r| &r.headlines) {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {} |\n",
                h.figure,
                h.value,
                h.baseline,
                h.ratio,
                h.target,
                match h.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "-",
                }
            ));
        }
    }
    for (title, outcome, secs) in &sections {
        md.push_str(&format!("\n### {title}\n\n"));
        match outcome {
            Ok(r) => {
                md.push_str(&r.markdown);
                if let (Some(chart), false) = (&r.chart, no_write) {
                    match plot::draw(chart, &img) {
                        Ok(file) => md.push_str(&format!("\n![{}](img/{file})\n", chart.title)),
                        Err(e) => eprintln!("chart {}: {e:#}", chart.name),
                    }
                }
                md.push_str(&format!("\n({secs:.0} s)\n"));
            }
            Err(e) => md.push_str(&format!("Failed: {e:#}\n")),
        }
    }
    println!("{md}");
    if !no_write {
        let path = docs.join("benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, splice(&doc, &md))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} and charts in {}", path.display(), img.display());
    }
    Ok(())
}

const BEGIN: &str = "<!-- bench all: begin (generated, do not edit) -->";
const END: &str = "<!-- bench all: end -->";

/// `doc` with the generated section replaced by `generated` (appended when there is none).
fn splice(doc: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{generated}\n{END}");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{doc}\n## Latest full run\n\n{block}\n"),
    }
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// CPU model and count, memory, kernel, and the file system the benchmarks write to.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, v)| v.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / (1024.0 * 1024.0));
    let kernel = read("/proc/sys/kernel/osrelease");
    let data = std::fs::canonicalize("target").unwrap_or_default();
    let mount = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && data.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} {} ({})", f[2], f[0], f[3])))
        })
        .max()
        .map_or("unknown".to_string(), |(_, m)| m);
    format!(
        "Machine: {cores} x {model}, {mem_gib:.0} GiB RAM, Linux {}, bench data on {mount}.",
        kernel.trim()
    )
}

fn print(report: Result<report::Report>) -> Result<()> {
    println!("{}", report?.markdown);
    Ok(())
}

fn durability(
    mib: u64,
    fragment_mib: u64,
    runs: usize,
    dir: Option<std::path::PathBuf>,
) -> Result<report::Report> {
    let base = dir.unwrap_or_else(|| Path::new("target").join("bench-data"));
    std::fs::create_dir_all(&base)?;
    let (mut dd, mut safe, mut unsafe_, mut peak) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs.max(1) {
        let work = tempfile::tempdir_in(&base)?;
        dd.push(dd_fsync(work.path(), mib, fragment_mib)?);
        let (rate, rss) = upload_run(work.path(), mib, fragment_mib, true)?;
        safe.push(rate);
        peak.push(rss);
        unsafe_.push(upload_run(work.path(), mib, fragment_mib, false)?.0);
        eprintln!(
            "run {}: dd {:.0} MiB/s, safe {:.0} MiB/s (peak RSS {:.1} MiB), unsafe {:.0} MiB/s",
            run + 1,
            dd[run],
            safe[run],
            peak[run],
            unsafe_[run]
        );
    }
    let (dd, safe, unsafe_) = (median(&dd), median(&safe), median(&unsafe_));
    let peak = median(&peak);
    let mut out = String::new();
    out.push_str("| mode | MiB/s | ratio vs dd conv=fsync of the same bytes |\n|---|---|---|\n");
    out.push_str(&format!("| dd bs=8M conv=fsync | {dd:.0} | 1.00 |\n"));
    out.push_str(&format!(
        "| bitsd safe (fsync), peak RSS {peak:.1} MiB | {safe:.0} | {:.2} |\n",
        safe / dd
    ));
    out.push_str(&format!(
        "| bitsd unsafe (fsync = false) | {unsafe_:.0} | {:.2} |\n",
        unsafe_ / dd
    ));
    out.push_str(&format!(
        "({mib} MiB upload, {fragment_mib} MiB fragments, median of {} run(s), dir {})\n",
        runs.max(1),
        base.display()
    ));
    Ok(report::Report::table(out)
        .with_chart(report::Chart {
            name: "bench-durability".to_string(),
            title: format!("One {mib} MiB upload in {fragment_mib} MiB fragments"),
            unit: "MiB/s".to_string(),
            bars: vec![
                ("dd bs=8M conv=fsync".to_string(), dd),
                ("bitsd, safe (fsync)".to_string(), safe),
                ("bitsd, unsafe (no fsync)".to_string(), unsafe_),
            ],
            line: Some(("target 0.90 x dd".to_string(), 0.9 * dd)),
        })
        .with_headline(report::Headline {
            figure: format!("{mib} MiB upload, {fragment_mib} MiB fragments, safe mode"),
            value: format!("{safe:.0} MiB/s"),
            baseline: format!("dd conv=fsync: {dd:.0} MiB/s"),
            ratio: safe / dd,
            target: ">= 0.90 x dd".to_string(),
            met: Some(safe / dd >= 0.9),
        }))
}

/// The bytes every fragment of `bench durability`'s upload carries (a fixed pseudo-random
/// pattern: not zeros, which file systems and devices may treat specially).
fn fragment_body(frag: usize) -> Vec<u8> {
    (0..frag)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

/// `dd if=SOURCE bs=8M conv=fsync` into `dir`, in MiB/s, where SOURCE is a file in /dev/shm
/// holding exactly the bytes the upload sends (its fragment repeated): the same work on the
/// same bytes. (dd from /dev/zero ran 2-4x slower here than from such a file, which flattered
/// every ratio against it.)
fn dd_fsync(dir: &Path, mib: u64, fragment_mib: u64) -> Result<f64> {
    let shm = Path::new("/dev/shm");
    let source_dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let source = tempfile::NamedTempFile::new_in(source_dir)?;
    {
        use std::io::Write as _;
        let body = fragment_body((fragment_mib << 20) as usize);
        let mut f = std::io::BufWriter::new(source.as_file());
        for _ in 0..(mib / fragment_mib.max(1)) {
            f.write_all(&body)?;
        }
        f.flush()?;
    }
    let out = dir.join("dd.bin");
    let started = Instant::now();
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", source.path().display()))
        .arg(format!("of={}", out.display()))
        .arg("bs=8M")
        .arg("conv=fsync")
        .stderr(std::process::Stdio::null())
        .status()
        .context("running dd")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("dd failed: {status}");
    }
    std::fs::remove_file(out)?;
    Ok(mib as f64 / secs)
}

/// MiB/s of the upload, and bitsd's peak RSS in MiB.
fn upload_run(dir: &Path, mib: u64, fragment_mib: u64, fsync: bool) -> Result<(f64, f64)> {
    let frag = (fragment_mib << 20) as usize;
    let config = format!(
        "fsync = {fsync}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"\nmax_fragment_size = {max}\n",
        root = dir.display(),
        max = frag * 2
    );
    let server = Bitsd::start(dir, &config)?;
    let body = fragment_body(frag);
    let mut conn = wire::Conn::open(server.addr)?;
    let started = Instant::now();
    wire::upload(&mut conn, "/upload/bench.bin", mib << 20, &body)?;
    let secs = started.elapsed().as_secs_f64();
    let peak = idle::read_proc(server.pid())?.hwm_kib as f64 / 1024.0;
    drop(server);
    std::fs::remove_dir_all(dir.join("uploads"))?;
    std::fs::remove_dir_all(dir.join("spool"))?;
    Ok((mib as f64 / secs, peak))
}
