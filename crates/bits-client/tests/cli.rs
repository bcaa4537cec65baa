//! The `bits` binary against a real `bitsd` (the binary next to it in target/<profile>/, built
//! with `cargo build -p bitsd` if missing) on a free loopback port with a temp dir.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{assert_code, server_pki, text, Env, Fake, Resp};

// ---------------------------------------------------------------------------------------------
// bitsd

/// `target/<profile>/bitsd`, built once if it is not there yet.
fn bitsd_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bits = PathBuf::from(env!("CARGO_BIN_EXE_bits"));
        let bitsd = bits.with_file_name("bitsd");
        if !bitsd.exists() {
            let release = bits.to_string_lossy().contains("/release/");
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "-p", "bitsd", "--quiet"]);
            if release {
                cmd.arg("--release");
            }
            let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
            assert!(ok && bitsd.exists(), "could not build {}", bitsd.display());
        }
        bitsd
    })
}

/// A running bitsd in its own temp dir; killed on drop.
struct Bitsd {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    dir: tempfile::TempDir,
    child: Child,
}

impl Bitsd {
    /// `vdir` holds extra keys of the `/upload/` vdir, `top` extra top-level keys/tables.
    fn start(top: &str, vdir: &str) -> Bitsd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("uploads")).unwrap();
        let d = dir.path().display();
        let config = format!(
            "listen = \"127.0.0.1:0\"\nspool_dir = \"{d}/spool\"\n{top}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{d}/uploads\"\n{vdir}\n"
        );
        std::fs::write(dir.path().join("bitsd.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("bitsd.log")).unwrap();
        let mut child = Command::new(bitsd_binary())
            .args(["serve", "--config"])
            .arg(dir.path().join("bitsd.toml"))
            .env("BITSD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn bitsd");
        // Lines through a channel: the start-up deadline holds even if bitsd prints nothing,
        // and the reader keeps draining stdout afterwards.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut tls_addr) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bitsd did not start within 20 s");
            };
            if let Some(a) = line.strip_prefix("bitsd listening on ") {
                addr = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.strip_prefix("bitsd listening (tls) on ") {
                tls_addr = Some(a.trim().parse().unwrap());
            } else if line == "bitsd ready" {
                break;
            }
        }
        Bitsd {
            addr: addr.expect("bitsd did not start"),
            tls_addr,
            dir,
            child,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/upload/{name}", self.addr)
    }

    fn uploaded(&self, name: &str) -> PathBuf {
        self.dir.path().join("uploads").join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bitsd.log")).unwrap_or_default()
    }
}

impl Drop for Bitsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// bits

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

/// Fast deterministic bytes (8 at a time).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits for a child, sampling its peak RSS (VmHWM, KiB) meanwhile. (wait4's ru_maxrss would
/// also count the memory of this test process from before the exec.)
fn wait_with_rss(mut child: Child) -> (std::process::ExitStatus, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        peak = peak.max(hwm);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `packet="Fragment"` line of bitsd's log: (first, last, status, received).
fn fragments(log: &str) -> Vec<(u64, u64, u16, Option<u64>)> {
    fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        let rest = &line[start..];
        match rest.strip_prefix('"') {
            Some(q) => q.split('"').next(),
            None => rest.split(' ').next(),
        }
    }
    log.lines()
        .filter(|l| l.contains("packet=\"Fragment\""))
        .filter_map(|l| {
            let range = field(l, "range")?.strip_prefix("bytes ")?;
            let (span, _) = range.split_once('/')?;
            let (a, b) = span.split_once('-')?;
            Some((
                a.parse().ok()?,
                b.parse().ok()?,
                field(l, "status")?.parse().ok()?,
                field(l, "received").and_then(|v| v.parse().ok()),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn upload_then_the_file_is_on_the_server() {
    let s = Bitsd::start("", "");
    let env = Env::new();
    let content = data(300_001, 1);
    let file = env.file("a.bin", &content);
    let o = env.run(&[
        "upload",
        file.to_str().unwrap(),
        &s.url("a.bin"),
        "--fragment-size",
        "64K",
    ]);
    assert_code(&o, 0);
    assert_eq!(std::fs::read(s.uploaded("a.bin")).unwrap(), content);
    assert!(text(&o.stdout).contains("uploaded"), "{}", text(&o.stdout));
    assert!(env.jobs().is_empty(), "finished jobs leave no state");
    // Plain progress lines (stderr is not a terminal).
    assert!(
        text(&o.stderr).contains("bytes (100%)"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(fragments(&s.log()).len(), 5);
}

#[test]
fn json_results_and_errors() {
    let s = Bitsd::start("", "");
    let env = Env::new();
    let file = env.file("j.bin", &data(10_000, 2));
    let o = env.run(&[
        "--json",
        "-q",
        "upload",
        file.to_str().unwrap(),
        &s.url("j.bin"),
    ]);
    assert_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["ok"], true);
    assert_eq!(v["command"], "upload");
    assert_eq!(v["bytes"], 10_000);
    assert_eq!(v["fragments"], 1);
    let sid = v["session_id"].as_str().unwrap();
    assert!(
        sid.starts_with('{') && sid.ends_with('}') && sid.len() == 38,
        "{sid}"
    );
    assert!(v["job"].as_str().is_some_and(|j| j.len() == 16));

    // A destination directory that does not exist: 404 + ERROR_PATH_NOT_FOUND, fatal (4).
    let o = env.run(&[
        "--json",
        "upload",
        file.to_str().unwrap(),
        &s.url("no/such/dir.bin"),
    ]);
    assert_code(&o, 4);
    let v = json(&o);
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["error"]["kind"], "fatal");
    assert_eq!(v["error"]["status"], 404);
    assert_eq!(v["error"]["hresult"], "0x80070003");
    assert_eq!(v["error"]["context"], "0x5");
    assert_eq!(v["error"]["resumable"], false);
    assert!(env.jobs().is_empty(), "fatal errors drop the job");

    let o = env.run(&["--json", "ping", &s.url("x")]);
    assert_code(&o, 0);
    assert_eq!(json(&o)["command"], "ping");
}

/// `bits upload` of 64 MiB in 1 MiB fragments is SIGKILLed mid-transfer; the same command
/// again finishes it. bitsd's log proves that no range below the offset acknowledged at kill
/// time was sent again — except at most the one fragment whose Ack the dead process may have
/// received but not yet recorded — and the second run's memory stays flat.
#[test]
fn killed_upload_resumes_without_resending_acknowledged_bytes() {
    const MIB: u64 = 1 << 20;
    let s = Bitsd::start("", "");
    let env = Env::new();
    let content = data(64 << 20, 3);
    let file = env.file("big.bin", &content);
    let args = [
        "upload",
        file.to_str().unwrap(),
        &s.url("big.bin"),
        "--fragment-size",
        "1048576",
    ];
    // Throttled so that the kill lands mid-upload.
    let mut first = env
        .cmd(&args)
        .args(["--limit-rate", "24M"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no progress: {}", s.log());
        assert!(
            first.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        let acked = fragments(&s.log())
            .iter()
            .filter_map(|f| f.3)
            .max()
            .unwrap_or(0);
        if acked >= 8 * MIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL: no chance to clean up
    first.wait().unwrap();
    // Let bitsd notice the cut connection and log the half-sent fragment.
    std::thread::sleep(Duration::from_millis(300));
    let before = s.log();
    let pre = fragments(&before);
    let acked = pre
        .iter()
        .filter(|f| f.2 == 200)
        .filter_map(|f| f.3)
        .max()
        .unwrap();
    let last_acked_first = pre.iter().find(|f| f.3 == Some(acked)).unwrap().0;
    assert!(acked < 64 * MIB);
    assert_eq!(env.jobs().len(), 1, "the job survives the kill");

    // The same command again, at full speed.
    let second = env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, rss_kib) = wait_with_rss(second);
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(s.uploaded("big.bin")).unwrap(), content);
    assert!(env.jobs().is_empty());

    let after = s.log()[before.len()..].to_string();
    let post = fragments(&after);
    let below: Vec<_> = post.iter().filter(|f| f.0 < acked).collect();
    assert!(
        below.len() <= 1 && below.iter().all(|f| f.0 == last_acked_first),
        "acknowledged at kill: {acked}; resent: {below:?}"
    );
    let resent: u64 = below.iter().map(|f| f.1 - f.0 + 1).sum();
    assert!(resent <= MIB);
    assert_eq!(post.last().and_then(|f| f.3), Some(64 * MIB));
    // One session for the whole upload: the second run resumed it (after a Ping).
    assert_eq!(s.log().matches("packet=\"Create-Session\"").count(), 1);
    assert!(after.contains("packet=\"Ping\""));
    // Streaming from disk: a 64 MiB file does not make a 64 MiB process.
    assert!(rss_kib < 40 * 1024, "peak RSS {rss_kib} KiB");
}

/// An interrupted job is listed by `bits jobs` and finished by `bits resume`.
#[test]
fn resume_finishes_a_killed_job() {
    let s = Bitsd::start("", "");
    let env = Env::new();
    let content = data(6 << 20, 4);
    let file = env.file("r.bin", &content);
    let mut child = env
        .cmd(&[
            "upload",
            file.to_str().unwrap(),
            &s.url("r.bin"),
            "--fragment-size",
            "256K",
            "--limit-rate",
            "4M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fragments(&s.log()).iter().filter(|f| f.2 == 200).count() < 3 {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = env.run(&["--json", "jobs"]);
    assert_code(&o, 0);
    let v = json(&o);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["command"], "upload");
    // The log shows 3 Acks; the third may have come after the client's last checkpoint.
    assert!(jobs[0]["acknowledged"].as_u64().unwrap() >= 2 * (256 << 10));
    let o = env.run(&["resume"]);
    assert_code(&o, 0);
    assert!(
        text(&o.stdout).contains("resumed at byte"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(std::fs::read(s.uploaded("r.bin")).unwrap(), content);
    assert!(env.jobs().is_empty());
    let o = env.run(&["resume"]);
    assert_code(&o, 0);
    assert!(text(&o.stdout).contains("no unfinished jobs"));
}

/// A job whose local file changed is started over from scratch.
#[test]
fn changed_local_file_restarts_the_job() {
    let s = Bitsd::start("", "allow_overwrites = true");
    let env = Env::new();
    let file = env.file("c.bin", &data(2 << 20, 5));
    // A transfer that cannot finish (nothing listens on this port) leaves a job behind...
    let dead = "http://127.0.0.1:9/upload/c.bin";
    let o = env.run(&["upload", file.to_str().unwrap(), dead, "--retries", "0"]);
    assert_code(&o, 3);
    assert_eq!(env.jobs().len(), 1);
    let o = env.run(&["--json", "jobs"]);
    assert_eq!(json(&o)["jobs"][0]["url"], dead);
    // ...`cancel` removes it.
    let o = env.run(&["cancel", "--all"]);
    assert_code(&o, 0);
    assert!(env.jobs().is_empty());

    // Now a real partial upload, then the file changes, then the same command.
    let mut child = env
        .cmd(&[
            "upload",
            file.to_str().unwrap(),
            &s.url("c.bin"),
            "--fragment-size",
            "128K",
            "--limit-rate",
            "2M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fragments(&s.log()).iter().filter(|f| f.2 == 200).count() < 2 {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let changed = data(1 << 20, 6);
    std::fs::write(&file, &changed).unwrap();
    let o = env.run(&[
        "upload",
        file.to_str().unwrap(),
        &s.url("c.bin"),
        "--fragment-size",
        "128K",
    ]);
    assert_code(&o, 0);
    assert!(
        text(&o.stderr).contains("changed since the upload started"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(s.uploaded("c.bin")).unwrap(), changed);
    let log = s.log();
    assert_eq!(log.matches("packet=\"Create-Session\"").count(), 2);
    assert_eq!(
        log.matches("packet=\"Cancel-Session\"").count(),
        1,
        "the old session is released"
    );
}

#[test]
fn download_and_upload_reply_on_stdout() {
    // The server application: answers every notification with a fixed receipt.
    let app = Fake::start(|_| Resp::new(200, &[]).body(b"receipt for you".to_vec()));
    let s = Bitsd::start(
        "",
        &format!(
            "notification_type = \"by_value\"\nnotification_url = \"{}\"\nallow_overwrites = true",
            app.url("/notify")
        ),
    );
    let env = Env::new();
    let file = env.file("u.bin", &data(50_000, 7));
    let o = env.run(&["upload-reply", file.to_str().unwrap(), &s.url("u.bin")]);
    assert_code(&o, 0);
    assert_eq!(o.stdout, b"receipt for you");
    let out = env.dir.path().join("reply.txt");
    let o = env.run(&[
        "--json",
        "upload-reply",
        file.to_str().unwrap(),
        &s.url("u.bin"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_code(&o, 0);
    assert_eq!(std::fs::read(&out).unwrap(), b"receipt for you");
    assert_eq!(json(&o)["reply_bytes"], 15);
    let o = env.run(&[
        "--json",
        "upload-reply",
        file.to_str().unwrap(),
        &s.url("u.bin"),
    ]);
    assert_code(&o, 0);
    assert_eq!(json(&o)["reply"], "receipt for you");
    assert!(env.jobs().is_empty());
    // No scratch files are left in the state directory (the id key stays, with the locks).
    let left: Vec<_> = std::fs::read_dir(env.state())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock") && n != "id.key")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Download a published file.
    let content = data(1_500_000, 8);
    std::fs::write(s.uploaded("pub.bin"), &content).unwrap();
    let dest = env.dir.path().join("down.bin");
    let o = env.run(&[
        "--json",
        "download",
        &s.url("pub.bin"),
        dest.to_str().unwrap(),
    ]);
    assert_code(&o, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert_eq!(json(&o)["bytes"], 1_500_000);
}

#[test]
fn usage_and_local_errors() {
    let env = Env::new();
    let o = env.run(&["upload"]);
    assert_code(&o, 2);
    let f = env.file("x", b"x");
    let o = env.run(&[
        "upload",
        f.to_str().unwrap(),
        "http://127.0.0.1:9/u/x",
        "--fragment-size",
        "100",
    ]);
    assert_code(&o, 2);
    let o = env.run(&["upload", f.to_str().unwrap(), "ftp://h/x"]);
    assert_code(&o, 2);
    let o = env.run(&["upload", "/no/such/file", "http://127.0.0.1:9/u/x"]);
    assert_code(&o, 5);
    let o = env.run(&[
        "--json",
        "upload",
        "/no/such/file",
        "http://127.0.0.1:9/u/x",
    ]);
    assert_eq!(json(&o)["error"]["kind"], "local_io");
    // A user without a password source (no BITS_PASSWORD, no terminal).
    let o = env.run(&["ping", "http://127.0.0.1:9/u/x", "--user", "alice"]);
    assert_code(&o, 2);
    assert!(
        text(&o.stderr).contains("BITS_PASSWORD"),
        "{}",
        text(&o.stderr)
    );
}

/// TLS with a private CA and Basic auth: `--cacert` + `--user` (password from BITS_PASSWORD)
/// works; no trust → exit 6; `--insecure` works only when given, and warns.
#[test]
fn tls_basic_auth_cacert_and_insecure() {
    let pki_dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = server_pki("cli test CA");
    let d = pki_dir.path();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
    let users = d.join("users");
    let mut child = Command::new(bitsd_binary())
        .args(["passwd", "--password-stdin"])
        .arg(&users)
        .arg("alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "wonderland").unwrap();
    assert!(child.wait().unwrap().success());
    let s = Bitsd::start(
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
            d.display()
        ),
        &format!(
            "auth = \"basic\"\nrequire_tls = true\nusers_file = \"{}\"",
            users.display()
        ),
    );
    let url = format!("https://{}/upload/t.bin", s.tls_addr.unwrap());
    let env = Env::new();
    let content = data(100_000, 9);
    let file = env.file("t.bin", &content);
    let ca = d.join("ca.pem");
    let run = |extra: &[&str], password: Option<&str>| {
        let mut c = env.cmd(&[
            "upload",
            file.to_str().unwrap(),
            &url,
            "--user",
            "alice",
            "--retries",
            "0",
        ]);
        c.args(extra);
        if let Some(p) = password {
            c.env("BITS_PASSWORD", p);
        }
        c.output().unwrap()
    };
    let o = run(&["--cacert", ca.to_str().unwrap()], Some("wonderland"));
    assert_code(&o, 0);
    assert!(!text(&o.stderr).contains("--insecure"));
    assert_eq!(std::fs::read(s.uploaded("t.bin")).unwrap(), content);
    std::fs::remove_file(s.uploaded("t.bin")).unwrap();
    // Wrong password: authentication failure.
    let o = run(&["--cacert", ca.to_str().unwrap()], Some("nope"));
    assert_code(&o, 6);
    let _ = env.run(&["cancel", "--all"]);
    // The system roots do not trust the test CA; nothing falls back to insecure by itself.
    let o = run(&[], Some("wonderland"));
    assert_code(&o, 6);
    let _ = env.run(&["cancel", "--all"]);
    let o = run(&["--insecure"], Some("wonderland"));
    assert_code(&o, 0);
    assert!(
        text(&o.stderr).contains("warning: --insecure"),
        "{}",
        text(&o.stderr)
    );
}
