//! `bench startup`: how long a restart takes with many open sessions in the spool.
//!
//! The spool is made once (records through the session database, a 1 KiB data file each, as
//! idle sessions mid-upload), then bitsd is started `rounds` times on it (and stopped with
//! SIGTERM, as a restart does), each time after dropping the page cache (cold start; needs root, else the figures are warm-cache and say
//! so). Each round reports: the time to the listener ("listening"), to the first answered Ping,
//! to the first answered Create-Session (which waits for the registry), to the end of the
//! registry build, and the resident memory once built. With `--legacy-binary`, the same
//! sessions in the previous release's layout (one directory with `meta.json` per session) are
//! started with that binary in alternating rounds: the same run's baseline.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bits_proto::SessionId;
use bits_server::store::sessions_db::SessionsDb;
use bits_server::store::{Destination, SessionRecord, SessionState};

use crate::report::Report;
use crate::stats::median;
use crate::wire::Conn;

const DATA: usize = 1024;

fn record(i: usize, root: &Path, now: u64) -> SessionRecord {
    SessionRecord {
        id: SessionId::random(),
        vdir: "/upload/".into(),
        url: format!("/upload/s{i}.bin"),
        destination: Destination {
            root: root.display().to_string(),
            path: format!("s{i}.bin"),
        },
        owner: None,
        client: Some(std::net::IpAddr::from([
            10,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ])),
        total: Some(1 << 20),
        received: DATA as u64,
        state: SessionState::Receiving,
        created_at: now,
        last_activity: now,
        ended_at: None,
        reply_url: None,
        app_forbidden: false,
        sha256: None,
        pending_hook: None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The spool of today's layout: `sessions.redb` and `data/<uuid>`.
fn make_spool(spool: &Path, root: &Path, sessions: usize) -> Result<()> {
    let data = spool.join("data");
    std::fs::create_dir_all(&data)?;
    let db = SessionsDb::open(&spool.join("sessions.redb"), false)?;
    let now = now_ms();
    let bytes = vec![0x5a; DATA];
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..sessions {
        let rec = record(i, root, now);
        std::fs::write(data.join(rec.id.as_uuid().hyphenated().to_string()), &bytes)?;
        batch.push(rec);
        if batch.len() == 10_000 || i + 1 == sessions {
            db.import(&batch)?;
            batch.clear();
        }
    }
    Ok(())
}

/// The same sessions in the previous release's layout: `sessions/<uuid>/{meta.json,data}`.
fn make_legacy_spool(spool: &Path, root: &Path, sessions: usize) -> Result<()> {
    let now = now_ms();
    let bytes = vec![0x5a; DATA];
    for i in 0..sessions {
        let rec = record(i, root, now);
        let dir = spool
            .join("sessions")
            .join(rec.id.as_uuid().hyphenated().to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&rec)?)?;
        std::fs::write(dir.join("data"), &bytes)?;
    }
    Ok(())
}

/// Drops the page cache; false when not allowed (not root).
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

struct Round {
    listening: f64,
    ping: f64,
    create: f64,
    built: Option<f64>,
    rss_mib: f64,
}

fn config(dir: &Path, spool: &Path, root: &Path) -> Result<PathBuf> {
    let path = dir.join("bitsd.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nspool_dir = \"{}\"\nmax_open_sessions = 10000000\n\
             max_anonymous_sessions = 0\nmax_anonymous_sessions_per_ip = 0\n\
             [[vdir]]\nprefix = \"/upload/\"\nroot = \"{}\"\n",
            spool.display(),
            root.display()
        ),
    )?;
    Ok(path)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// One cold start of `binary` with `config`: the timings of one round.
fn round(binary: &Path, config: &Path, new_layout: bool) -> Result<Round> {
    let started = Instant::now();
    let mut child: Child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("BITSD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting bitsd")?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<(String, f64)>();
    let out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    for stream in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err) as Box<dyn std::io::Read + Send>,
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send((line, started.elapsed().as_secs_f64()));
            }
        });
    }
    let result = (|| -> Result<Round> {
        let deadline = started + Duration::from_secs(600);
        let mut addr: Option<SocketAddr> = None;
        let mut listening = 0.0;
        let mut built = None;
        while addr.is_none() {
            let (line, at) = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("bitsd never listened")?;
            if let Some(a) = line.strip_prefix("bitsd listening on ") {
                addr = Some(a.trim().parse()?);
                listening = at;
            }
        }
        let addr = addr.context("no address")?;
        let ping = loop {
            if let Ok(mut c) = Conn::open(addr) {
                if let Ok(r) = c.post("/upload/ping", &[("BITS-Packet-Type", "Ping")], b"") {
                    if r.status == 200 {
                        break started.elapsed().as_secs_f64();
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no Ping answered");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut c = Conn::open(addr)?;
        let r = c.post(
            "/upload/new-after-restart.bin",
            &[
                ("BITS-Packet-Type", "Create-Session"),
                (
                    "BITS-Supported-Protocols",
                    "{7df0354d-249b-430f-820d-3d2a9bef4931}",
                ),
            ],
            b"",
        )?;
        if r.status != 200 {
            bail!("Create-Session answered {}", r.status);
        }
        let create = started.elapsed().as_secs_f64();
        if let Some(sid) = r.header("BITS-Session-Id") {
            let sid = sid.to_string();
            let _ = c.post(
                "/upload/new-after-restart.bin",
                &[
                    ("BITS-Packet-Type", "Cancel-Session"),
                    ("BITS-Session-Id", &sid),
                ],
                b"",
            );
        }
        if new_layout {
            while built.is_none() {
                let (line, at) = rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .context("the registry was never built")?;
                if line.contains("registry built") {
                    built = Some(at);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(Round {
            listening,
            ping,
            create,
            built,
            rss_mib: rss_mib(pid),
        })
    })();
    // A restart as an operator makes one: SIGTERM, and the process closes its files.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result
}

pub fn run(sessions: usize, rounds: usize, legacy: Option<PathBuf>) -> Result<Report> {
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let root = dir.path().join("uploads");
    std::fs::create_dir_all(&root)?;
    let spool = dir.path().join("spool");
    eprintln!("startup: writing {sessions} open sessions");
    make_spool(&spool, &root, sessions)?;
    let binary = crate::server::binary()?;
    let cfg = config(dir.path(), &spool, &root)?;
    let legacy = match legacy {
        Some(bin) => {
            let ldir = dir.path().join("legacy");
            std::fs::create_dir_all(&ldir)?;
            let lspool = ldir.join("spool");
            eprintln!("startup: writing the same count in the previous layout");
            make_legacy_spool(&lspool, &root, sessions)?;
            Some((bin, config(&ldir, &lspool, &root)?))
        }
        None => None,
    };
    let mut cold = true;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..rounds.max(1) {
        let mut run_ours = || -> Result<()> {
            cold &= drop_caches();
            let r = round(&binary, &cfg, true)?;
            eprintln!(
                "round {i} bitsd: listening {:.3} s, ping {:.3} s, create {:.3} s, built {:.3} s, rss {:.1} MiB",
                r.listening,
                r.ping,
                r.create,
                r.built.unwrap_or(0.0),
                r.rss_mib
            );
            ours.push(r);
            Ok(())
        };
        run_ours()?;
        if let Some((bin, lcfg)) = &legacy {
            cold &= drop_caches();
            let r = round(bin, lcfg, false)?;
            eprintln!(
                "round {i} previous release: listening {:.3} s, ping {:.3} s, create {:.3} s, rss {:.1} MiB",
                r.listening, r.ping, r.create, r.rss_mib
            );
            theirs.push(r);
        }
    }
    let mut md = format!(
        "### Start-up with {sessions} open sessions ({} page cache, {} rounds)\n\n\
         | | listening (s) | first Ping (s) | first Create (s) | registry built (s) | RSS (MiB) |\n\
         |---|---|---|---|---|---|\n",
        if cold { "cold" } else { "warm" },
        rounds.max(1)
    );
    let row = |name: &str, rs: &[Round]| {
        let m = |f: &dyn Fn(&Round) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
        format!(
            "| {name} (median) | {:.3} | {:.3} | {:.3} | {} | {:.1} |\n",
            m(&|r| r.listening),
            m(&|r| r.ping),
            m(&|r| r.create),
            if rs.iter().all(|r| r.built.is_some()) {
                format!("{:.3}", m(&|r| r.built.unwrap_or(0.0)))
            } else {
                "—".into()
            },
            m(&|r| r.rss_mib)
        )
    };
    md.push_str(&row("bitsd", &ours));
    if !theirs.is_empty() {
        md.push_str(&row("previous release", &theirs));
    }
    for (i, r) in ours.iter().enumerate() {
        md.push_str(&format!(
            "| round {i} bitsd | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
            r.listening,
            r.ping,
            r.create,
            r.built.unwrap_or(0.0),
            r.rss_mib
        ));
    }
    for (i, r) in theirs.iter().enumerate() {
        md.push_str(&format!(
            "| round {i} previous release | {:.3} | {:.3} | {:.3} | — | {:.1} |\n",
            r.listening, r.ping, r.create, r.rss_mib
        ));
    }
    Ok(Report::table(md))
}
