//! A throwaway Azurite blob service (`azurite-blob`, Microsoft's Azure Storage emulator) for
//! tests: loopback only, a free port, data in a temp dir, one container created. Stopped on drop
//! (SIGTERM, SIGKILL after 2 s), also when the test panics; if the test process itself is
//! killed, the kernel kills Azurite too (`PR_SET_PDEATHSIG`).
//!
//! Nothing is installed here: `azurite-blob` is looked for on PATH, then in
//! `$AZURITE_DIR/node_modules/.bin`, then in `~/.cache/bitsd/azurite/node_modules/.bin` (where
//! `scripts/test.sh` installs it with `npm install azurite@3.37.0`). Without it
//! [`Azurite::start`] returns `None` and says so: the caller skips its test.

use std::io::Read;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The emulator's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (public, documented by Microsoft).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The `npm install` that `scripts/test.sh` runs.
pub const INSTALL: &str = "npm install --no-audit --no-fund azurite@3.37.0";

pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:<port>/devstoreaccount1` (path-style: the account is in the path).
    pub endpoint: String,
    pub container: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite and creates `container`, or `None` (with a message on stderr) when
    /// `azurite-blob` is not installed. The port is picked free but only bound by Azurite
    /// later, so an instance that fails to start is started again on a fresh port (three
    /// tries).
    pub fn start(container: &str) -> Option<Azurite> {
        let Some(bin) = azurite_binary() else {
            eprintln!(
                "skipping: azurite-blob not found on PATH, in $AZURITE_DIR or in \
                 ~/.cache/bitsd/azurite (scripts/test.sh installs it: `{INSTALL}`)"
            );
            return None;
        };
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&bin, container) {
                Ok(a) => return Some(a),
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "Azurite did not start in three tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start(bin: &PathBuf, container: &str) -> Result<Azurite, String> {
        let dir = tempfile::tempdir().expect("temp dir for azurite");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("azurite data dir");
        let log = std::fs::File::create(dir.path().join("azurite.log")).expect("azurite log");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .arg("--location")
            .arg(&data)
            .args(["--silent", "--skipApiVersionCheck"])
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
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut me = Azurite {
            child,
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            container: container.to_string(),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(format!(
                    "azurite exited early ({status}):\n{}",
                    me.log_tail()
                ));
            }
            let last = match me.create_container(container) {
                Ok(201) | Ok(409) => break,
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "Azurite not ready after 60 s ({last}):\n{}",
                    me.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(me)
    }

    /// Creates a container with a Shared Key signed `PUT ?restype=container`; the status.
    pub fn create_container(&self, name: &str) -> std::io::Result<u16> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let version = "2021-08-06";
        let path = format!("/{ACCOUNT}/{name}");
        // Path-style: the canonicalized resource is the account, then the URL path.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{ACCOUNT}{path}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("account key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "PUT {path}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad answer: {text}")))
    }

    /// A service SAS token for the whole container (read, add, create, write, delete, list;
    /// expires in 2099), for testing `sas_token`.
    #[allow(dead_code)]
    pub fn container_sas(&self) -> String {
        let (version, perms, expiry) = ("2023-11-03", "racwdl", "2099-01-01T00:00:00Z");
        let to_sign = format!(
            "{perms}\n\n{expiry}\n/blob/{ACCOUNT}/{}\n\n\n\n{version}\nc\n\n\n\n\n\n\n",
            self.container
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("account key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sig: String = sig
            .chars()
            .map(|c| match c {
                '+' => "%2B".to_string(),
                '/' => "%2F".to_string(),
                '=' => "%3D".to_string(),
                c => c.to_string(),
            })
            .collect();
        format!("sv={version}&sp={perms}&se={expiry}&sr=c&sig={sig}")
    }

    /// A plain object_store client on the container (the account key), to look at what the
    /// server stored.
    #[allow(dead_code)]
    pub fn client(&self) -> object_store::azure::MicrosoftAzure {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(KEY)
            .with_container_name(&self.container)
            .with_endpoint(self.endpoint.clone())
            .with_allow_http(true)
            .build()
            .expect("an object_store client for Azurite")
    }

    /// bitsd's `[storage]` table for this container, sessions under `spool`.
    #[allow(dead_code)]
    pub fn storage_toml(&self) -> String {
        format!(
            "[storage]\nbackend = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{}\"\n\
             prefix = \"spool\"\naccess_key = \"{KEY}\"\nendpoint = \"{}\"\nallow_http = true\n",
            self.container, self.endpoint
        )
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Azurite {
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

/// `azurite-blob` from PATH, `$AZURITE_DIR` or the directory `scripts/test.sh` installs to.
fn azurite_binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("azurite-blob")));
    }
    if let Some(dir) = std::env::var_os("AZURITE_DIR") {
        candidates.push(PathBuf::from(dir).join("node_modules/.bin/azurite-blob"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates
            .push(PathBuf::from(home).join(".cache/bitsd/azurite/node_modules/.bin/azurite-blob"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// A free loopback port (bound and released; Azurite binds it moments later).
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
