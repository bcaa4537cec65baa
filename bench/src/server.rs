//! Starting a `bitsd` process for a benchmark, on a free loopback port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct Bitsd {
    pub addr: SocketAddr,
    child: Child,
}

/// The `bitsd` binary next to this one (built by `cargo build --release -p bitsd`, which this
/// runs when the binary is missing).
pub fn binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe has no directory")?;
    // Test binaries live in target/<profile>/deps; bitsd is one level up.
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let bitsd = dir.join("bitsd");
    if !bitsd.exists() {
        let profile = if exe.to_string_lossy().contains("/release/") {
            "--release"
        } else {
            "--quiet"
        };
        let ok = Command::new("cargo")
            .args(["build", "-p", "bitsd", profile])
            .status()?
            .success();
        if !ok || !bitsd.exists() {
            bail!("could not build {}", bitsd.display());
        }
    }
    Ok(bitsd)
}

impl Bitsd {
    /// Starts bitsd with `config` (TOML, without `listen` and `spool_dir`) in `dir`.
    pub fn start(dir: &Path, config: &str) -> Result<Bitsd> {
        Bitsd::start_wrapped(dir, config, &[])
    }

    /// Like [`Bitsd::start`], but runs bitsd under `wrapper` (e.g. `["perf", "stat", ...]` or
    /// `["valgrind", "--tool=callgrind", ...]`): the command line becomes
    /// `wrapper... bitsd serve --config ...`. An empty `wrapper` runs bitsd directly.
    pub fn start_wrapped(dir: &Path, config: &str, wrapper: &[&str]) -> Result<Bitsd> {
        let config_path = dir.join("bitsd.toml");
        std::fs::write(
            &config_path,
            format!(
                "listen = \"127.0.0.1:0\"\nspool_dir = \"{}/spool\"\n{config}",
                dir.display()
            ),
        )?;
        let bitsd = binary()?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bitsd);
                c
            }
            None => Command::new(&bitsd),
        };
        cmd.args(["serve", "--config"])
            .arg(&config_path)
            .env("BITSD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // If the bench itself is killed (no Drop runs), the kernel kills bitsd too.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting bitsd")?;
        let stdout = child.stdout.take().context("bitsd stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("bitsd listening on ") {
                        break a.trim().parse()?;
                    }
                }
                _ => bail!("bitsd exited before listening"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Bitsd { addr, child })
    }

    /// The process id of the running bitsd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Bitsd {
    /// Stops the process with SIGINT (bitsd shuts down gracefully; a perf/valgrind wrapper
    /// writes its totals) and waits up to `timeout` for it to exit, then kills it.
    pub fn stop(mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with our own child's pid; it has not been waited for yet.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("process {pid} did not exit within {timeout:?} of SIGINT");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Bitsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
