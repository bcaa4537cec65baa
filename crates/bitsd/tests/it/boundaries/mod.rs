//! Trust boundaries (issue 14): each finding of the attack review, reproduced against a real
//! bitsd on loopback. One module per boundary; `docs/security.md` maps each row of the threat
//! model to the test that holds it.

mod auth;
mod hooks;
mod logs;
mod storage;
mod vdirs;

/// The value of an `Authorization: Basic` header.
pub fn basic(user: &str, password: &str) -> String {
    basic_raw(format!("{user}:{password}").as_bytes())
}

/// `Basic base64(credentials)`, over raw bytes so tests can send what no client would.
pub fn basic_raw(credentials: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// Runs `bitsd check-config` on `config`; returns success and stderr.
pub fn check_config(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bitsd.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .current_dir(dir.path())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
