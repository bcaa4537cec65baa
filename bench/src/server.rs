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
fn binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bitsd = exe.with_file_name("bitsd");
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
        let config_path = dir.join("bitsd.toml");
        std::fs::write(
            &config_path,
            format!(
                "listen = \"127.0.0.1:0\"\nspool_dir = \"{}/spool\"\n{config}",
                dir.display()
            ),
        )?;
        let mut cmd = Command::new(binary()?);
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
}

impl Drop for Bitsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
