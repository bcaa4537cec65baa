//! Capture and replay (issue 20): a real upload made with the `bits` CLI is captured by one
//! bitsd, then `bitsd replay` plays it against a fresh bitsd (no difference)
//! and against one with a smaller `max_fragment_size` (exactly the expected differences).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// A temporary directory of mode 0700: bitsd refuses a capture directory others may enter.
fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn capture_config(dir: &Path) -> String {
    format!("capture_dir = {:?}\n", dir.display().to_string())
}

/// The capture files in `dir`, by name.
fn captures(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn replay(file: &Path, s: &Server) -> (i32, String) {
    replay_to(file, &format!("http://{}", s.addr), &[])
}

fn replay_to(file: &Path, url: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .arg("replay")
        .arg(file)
        .arg("--url")
        .arg(url)
        .args(extra)
        .output()
        .expect("bitsd replay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The one file a replay with the default prefix wrote for `name`: `replay-<time>-<name>`.
fn replayed(s: &Server, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = captures(&s.root())
        .into_iter()
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            file.starts_with("replay-") && file.ends_with(&format!("Z-{name}"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{:?}", captures(&s.root()));
    found[0].clone()
}

/// The `bits` CLI binary, built next to bitsd (`cargo test --workspace --all-targets` builds it;
/// a run of this package alone builds it here).
pub(crate) fn bits_cli() -> PathBuf {
    let bits = Path::new(env!("CARGO_BIN_EXE_bitsd")).with_file_name("bits");
    if !bits.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--quiet", "-p", "bits-client", "--bin", "bits"])
            .status()
            .expect("cargo build of the bits CLI")
            .success();
        assert!(ok && bits.exists(), "could not build {}", bits.display());
    }
    bits
}

/// Uploads `data` as `name` with the `bits` CLI, in fragments of `fragment` bytes.
fn upload_with_cli(s: &Server, name: &str, data: &[u8], fragment: u64) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, data).unwrap();
    let out = Command::new(bits_cli())
        .arg("upload")
        .arg("--fragment-size")
        .arg(fragment.to_string())
        .arg(&file)
        .arg(format!("http://{}/upload/{name}", s.addr))
        .env("BITS_STATE_DIR", dir.path().join("jobs"))
        .output()
        .expect("bits upload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(s.upload_path(name)).unwrap(), data);
}

#[test]
fn a_captured_upload_replays_without_differences_and_shows_a_config_change() {
    let cap = private_dir();
    let s = Server::start(&format!(
        "{}[[vdir]]\nmax_fragment_size = 1048576\n",
        capture_config(cap.path())
    ));
    let data = pattern(2_500_000, 30);
    upload_with_cli(&s, "captured.bin", &data, 1 << 20);

    let files = captures(cap.path());
    let session_file = files
        .iter()
        .find(|p| p.file_name().unwrap() != "no-session.jsonl")
        .unwrap_or_else(|| panic!("no session capture in {files:?}"))
        .clone();
    let text = std::fs::read_to_string(&session_file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let packets: Vec<&str> = lines
        .iter()
        .map(|l| {
            l["request"]["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0] == "bits-packet-type")
                .and_then(|h| h[1].as_str())
                .unwrap()
        })
        .collect();
    assert_eq!(
        packets,
        [
            "Create-Session",
            "Fragment",
            "Fragment",
            "Fragment",
            "Close-Session"
        ],
        "{text}"
    );
    // Bodies are summarised, never stored: lengths and digests of what arrived.
    assert_eq!(lines[1]["request"]["body"]["len"], 1 << 20);
    assert_eq!(lines[3]["request"]["body"]["len"], 2_500_000 - (2 << 20));
    assert!(!text.contains(&String::from_utf8_lossy(&data[..64]).into_owned()));
    assert_eq!(lines[1]["response"]["status"], 200);

    // A fresh bitsd with the same configuration answers the same.
    let fresh = Server::start("[[vdir]]\nmax_fragment_size = 1048576\n");
    let (code, out) = replay(&session_file, &fresh);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("5 exchanges replayed, 0 with different answers"),
        "{out}"
    );
    // The replay really uploaded (regenerated bytes of the recorded lengths), under a name of
    // its own: `replay-<time>-captured.bin`.
    assert_eq!(
        std::fs::metadata(replayed(&fresh, "captured.bin"))
            .unwrap()
            .len(),
        2_500_000
    );
    assert!(!fresh.upload_path("captured.bin").exists());

    // A server that takes smaller fragments: every Fragment gets 413 instead of 200, with the
    // error headers and without the received count; Create and Close answer as before (a Close
    // of an incomplete session is 200).
    let small = Server::start("[[vdir]]\nmax_fragment_size = 65536\n");
    let (code, out) = replay(&session_file, &small);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("5 exchanges replayed, 3 with different answers"),
        "{out}"
    );
    let expected_per_fragment = [
        "  status: 200 -> 413",
        "  bits-error-code: (absent) -> 0x8019019D",
        "  bits-error-context: (absent) -> 0x5",
    ];
    for (n, range) in [
        (2, "bytes 0-1048575/2500000"),
        (3, "bytes 1048576-2097151/2500000"),
        (4, "bytes 2097152-2499999/2500000"),
    ] {
        let block: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.starts_with(&format!("#{n} Fragment {range}")))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        for want in expected_per_fragment {
            assert!(block.contains(&want), "#{n}: {block:?}\n{out}");
        }
        assert!(
            block
                .iter()
                .any(|l| l.starts_with("  bits-received-content-range: ")
                    && l.ends_with("-> (absent)")),
            "#{n}: {block:?}"
        );
        assert_eq!(block.len(), 4, "#{n}: {block:?}");
    }
    assert!(!small.upload_path("captured.bin").exists());
}

#[test]
fn secrets_never_reach_the_capture() {
    let cap = private_dir();
    let users = tempfile::tempdir().unwrap();
    let file = users.path().join("users");
    add_user(&file, "alice", "s3cret-pass");
    let s = Server::start(&format!(
        "{}[[vdir]]\nauth = \"basic\"\nusers_file = {:?}\n",
        capture_config(cap.path()),
        file.display().to_string()
    ));
    let mut c = s.conn();
    let basic = "Basic YWxpY2U6czNjcmV0LXBhc3M="; // alice:s3cret-pass
    let r = c.bits(
        "/upload/secret.bin",
        "Create-Session",
        &[
            ("BITS-Supported-Protocols", PROTOCOL),
            ("Authorization", basic),
            ("Cookie", "session=topsecretcookie"),
        ],
        b"",
    );
    r.assert_ack(200, None);
    let sid = r.session();
    c.bits(
        "/upload/secret.bin",
        "Cancel-Session",
        &[("BITS-Session-Id", &sid), ("Authorization", basic)],
        b"",
    )
    .assert_ack(200, None);
    // And a refused one (wrong password) lands in no-session.jsonl.
    c.bits(
        "/upload/secret.bin",
        "Ping",
        &[("Authorization", "Basic YWxpY2U6d3Jvbmc=")],
        b"",
    );
    let mut all = String::new();
    for f in captures(cap.path()) {
        all.push_str(&std::fs::read_to_string(f).unwrap());
    }
    assert!(all.contains("Basic [redacted]"), "{all}");
    for secret in [
        "YWxpY2U6czNjcmV0LXBhc3M",
        "YWxpY2U6d3Jvbmc",
        "topsecretcookie",
        "s3cret",
    ] {
        assert!(!all.contains(secret), "{secret} in the capture:\n{all}");
    }
    assert_eq!(all.lines().count(), 3, "{all}");
}

/// Made-up session ids do not each get a capture file: a flood of them lands in one file.
#[test]
fn unknown_session_ids_share_one_capture_file() {
    let cap = private_dir();
    let s = Server::start(&capture_config(cap.path()));
    let mut c = s.conn();
    for i in 0..50 {
        let sid = format!("{{A0FF5911-4144-45B3-BF27-{i:012X}}}");
        c.bits(
            "/upload/x.bin",
            "Close-Session",
            &[("BITS-Session-Id", &sid)],
            b"",
        )
        .assert_ack(500, Some(SESSION_NOT_FOUND));
    }
    let files = captures(cap.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("no-session.jsonl"));
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap().lines().count(),
        50
    );
}

/// A capture replays against an HTTPS-only server too (what an IIS site usually is), checked
/// against `--cacert`; without it the test CA is not trusted and the replay fails.
#[test]
fn a_capture_replays_over_https() {
    let cap = private_dir();
    let s = Server::start(&capture_config(cap.path()));
    upload_with_cli(&s, "tls.bin", &pattern(300_000, 31), 100_000);
    let file = captures(cap.path())
        .into_iter()
        .find(|p| p.file_name().unwrap() != "no-session.jsonl")
        .expect("a session capture");

    let pki = crate::common::pki::Pki::new("replay CA");
    let dir = tempfile::tempdir().unwrap();
    let tls = crate::common::pki::tls_table(dir.path(), &pki, false);
    let https = Server::start_with(
        &format!(
            "http_enabled = false\n{tls}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\n"
        ),
        false,
    );
    let url = format!("https://localhost:{}", https.tls_addr.expect("tls").port());
    let ca = dir.path().join("ca.pem");
    let (code, out) = replay_to(&file, &url, &["--cacert", ca.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("5 exchanges replayed, 0 with different answers"),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(replayed(&https, "tls.bin"))
            .unwrap()
            .len(),
        300_000
    );

    let (code, out) = replay_to(&file, &url, &[]);
    assert_eq!(code, 2, "{out}");
}

/// Everything the capture files in `dir` hold.
fn all_captured(dir: &Path) -> String {
    captures(dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// Space the files in `dir` take on disk (what `du` counts) and their number.
fn du(dir: &Path) -> (u64, usize) {
    use std::os::unix::fs::MetadataExt;
    let files = captures(dir);
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().blocks() * 512)
        .sum();
    (bytes, files.len())
}

/// Headers the old deny-list let through verbatim.
const CREDENTIAL_HEADERS: [(&str, &str); 6] = [
    ("X-Api-Key", "apikey-secret-1"),
    ("X-Amz-Security-Token", "amz-secret-2"),
    ("X-Forwarded-Authorization", "Bearer fwd-secret-3"),
    ("Cookie2", "sid=cookie2-secret-4"),
    ("Authorization", "bare-token-secret-5"),
    ("Proxy-Authorization", "Negotiate proxy-secret-6"),
];

/// Finding 3: a capture keeps the values of an allow-list only (BITS headers, framing, `Host`,
/// `User-Agent`); any other value, and any query string, is `[redacted]` with the name kept.
/// The old capture kept all six credentials above and `?token=` verbatim.
#[test]
fn finding3_credentials_in_any_header_or_query_never_reach_the_capture() {
    let cap = private_dir();
    let s = Server::start(&capture_config(cap.path()));
    let mut c = s.conn();
    let mut headers = vec![("BITS-Supported-Protocols", PROTOCOL)];
    headers.extend_from_slice(&CREDENTIAL_HEADERS);
    let r = c.bits(
        "/upload/tok.bin?token=query-secret-7",
        "Create-Session",
        &headers,
        b"",
    );
    r.assert_ack(200, None);
    let sid = r.session();
    c.cancel("/upload/tok.bin", &sid).assert_ack(200, None);
    let all = all_captured(cap.path());
    for secret in [
        "apikey-secret-1",
        "amz-secret-2",
        "fwd-secret-3",
        "cookie2-secret-4",
        "bare-token-secret-5",
        "proxy-secret-6",
        "query-secret-7",
        "secret",
    ] {
        assert!(!all.contains(secret), "{secret} in the capture:\n{all}");
    }
    let first: serde_json::Value = serde_json::from_str(all.lines().next().unwrap()).unwrap();
    assert_eq!(first["request"]["target"], "/upload/tok.bin?[redacted]");
    let recorded: Vec<(String, String)> =
        serde_json::from_value(first["request"]["headers"].clone()).unwrap();
    let value = |name: &str| {
        recorded
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} not recorded: {recorded:?}"))
    };
    for name in [
        "x-api-key",
        "x-amz-security-token",
        "x-forwarded-authorization",
        "cookie2",
        "authorization",
    ] {
        assert_eq!(value(name), "[redacted]", "{name}");
    }
    assert_eq!(value("proxy-authorization"), "Negotiate [redacted]");
    assert_eq!(value("bits-packet-type"), "Create-Session");
    assert_eq!(value("bits-supported-protocols"), PROTOCOL);
    assert_eq!(value("content-length"), "0");
    assert_eq!(value("user-agent"), "Microsoft BITS/7.8");
    assert_eq!(value("host"), "127.0.0.1");
}

/// `bitsd serve` with `args` (and a throwaway spool and root): its exit status and output if
/// it exits within 20 s; a server that starts instead is stopped and reported as `None`.
fn serve_once(args: &[&std::ffi::OsStr]) -> Option<(i32, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--spool")
        .arg(tmp.path().join("spool"))
        .arg("--root")
        .arg(tmp.path().join("uploads"))
        .args(args)
        .env_remove("BITSD_CONFIG")
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bitsd serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return Some((out.status.code().unwrap_or(-1), text));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn check_config_of(capture: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bitsd.toml");
    std::fs::write(
        &config,
        format!(
            "spool_dir = {:?}\n{}[[vdir]]\nroot = {:?}\n",
            dir.path().join("spool").display().to_string(),
            capture_config(capture),
            dir.path().join("uploads").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Finding 3: `--capture DIR` on a directory others can read or enter (the old server made a
/// 1777 directory 0700 and went on), or on one of another user, is refused at start-up and by
/// `check-config`, and left as it is; a missing directory is still created 0700.
#[test]
fn finding3_an_open_or_foreign_capture_dir_is_refused_not_changed() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    for mode in [0o1777, 0o755, 0o750] {
        let dir = tmp.path().join(format!("open-{mode:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let served = serve_once(&["--capture".as_ref(), dir.as_os_str()]);
        assert_eq!(mode_of(&dir), mode, "the mode was changed");
        let (code, out) = served.expect("bitsd started with an open capture_dir");
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains(&format!("has mode {mode:04o}")) && out.contains("chmod 0700"),
            "{out}"
        );
        let (ok, out) = check_config_of(&dir);
        assert!(
            !ok && out.contains(&format!("has mode {mode:04o}")),
            "{out}"
        );
    }
    // Another user's directory (the suite runs as root; nobody is 65534).
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (code, out) = serve_once(&["--capture".as_ref(), theirs.as_os_str()])
        .expect("bitsd started with another user's capture_dir");
    assert!(code != 0 && out.contains("belongs to uid 65534"), "{out}");
    let (ok, out) = check_config_of(&theirs);
    assert!(!ok && out.contains("belongs to uid 65534"), "{out}");

    // Missing: created 0700, and check-config does not mind.
    let missing = tmp.path().join("new/capture");
    let (ok, out) = check_config_of(&missing);
    assert!(ok, "{out}");
    let s = Server::start(&capture_config(&missing));
    s.conn()
        .bits("/upload/x", "Ping", &[], b"")
        .assert_ack(200, None);
    assert_eq!(mode_of(&missing), 0o700);
}

/// Create+Cancel pairs as fast as one connection sends them: one capture file each.
fn create_cancel_pairs(s: &Server, n: usize) {
    let mut c = s.conn();
    for i in 0..n {
        let path = format!("/upload/pair-{i}.bin");
        let r = c.create(&path);
        assert_eq!(r.status, 200, "{:?}\n{}", r.headers, s.log_text());
        let sid = r.session();
        c.cancel(&path, &sid).assert_ack(200, None);
    }
}

/// Finding 3: `capture_max_bytes` holds the space the capture takes on disk, counted in blocks
/// (one short file per session takes a whole block), from what the directory holds at
/// start-up: a restart does not grant a fresh budget. The old server counted the bytes it had
/// written in this run: 30 sessions of about 1.2 KB each fit a 40 KiB budget while taking
/// 120 KiB, and a restart started from zero again.
#[test]
fn finding3_the_byte_budget_counts_blocks_on_disk_across_restarts() {
    let cap = private_dir();
    let budget = 40 << 10;
    let mut s = Server::start(&format!(
        "{}capture_max_bytes = {budget}\n",
        capture_config(cap.path())
    ));
    create_cancel_pairs(&s, 30);
    let (bytes, files) = du(cap.path());
    assert!(bytes <= budget, "{bytes} bytes on disk in {files} files");
    assert!(files >= 5, "{files}");
    assert!(s.log_text().contains("capture_max_bytes reached"));
    s.restart();
    create_cancel_pairs(&s, 10);
    assert_eq!(
        du(cap.path()),
        (bytes, files),
        "a restart granted a new budget"
    );
}

/// Finding 3: `capture_max_files` (new) bounds the number of files, also across restarts.
#[test]
fn finding3_the_file_budget_counts_files_across_restarts() {
    let cap = private_dir();
    let mut s = Server::start(&format!(
        "{}capture_max_files = 8\n",
        capture_config(cap.path())
    ));
    create_cancel_pairs(&s, 5);
    assert_eq!(du(cap.path()).1, 5);
    s.restart();
    create_cancel_pairs(&s, 10);
    assert_eq!(du(cap.path()).1, 8);
    assert!(s.log_text().contains("capture_max_files reached"));
}

/// A stand-in for the server replayed to: answers every request head with `answer` and keeps
/// the bytes it received, and how many connections and request heads it saw.
struct Recorder {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const ACK: &str = "HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0\r\n\r\n";

impl Recorder {
    /// `read_bodies = false`: answer after the head, without reading the body, and close.
    fn start(answer: &'static str, read_bodies: bool) -> Recorder {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Recorder {
            addr: listener.local_addr().unwrap(),
            got: Default::default(),
            connections: Default::default(),
            requests: Default::default(),
        };
        let (got, connections, requests) =
            (r.got.clone(), r.connections.clone(), r.requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                connections.fetch_add(1, Ordering::SeqCst);
                let (got, requests) = (got.clone(), requests.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut head = Vec::new();
                        loop {
                            let mut line = Vec::new();
                            match reader.read_until(b'\n', &mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            head.extend_from_slice(&line);
                            if line == b"\r\n" || line == b"\n" {
                                break;
                            }
                        }
                        got.lock().unwrap().extend_from_slice(&head);
                        requests.fetch_add(1, Ordering::SeqCst);
                        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                        if read_bodies {
                            let len: u64 = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            let mut body = Vec::new();
                            if text.contains("transfer-encoding: chunked") {
                                while !body.ends_with(b"0\r\n\r\n") {
                                    if reader.read_until(b'\n', &mut body).unwrap_or(0) == 0 {
                                        return;
                                    }
                                }
                            } else if (&mut reader).take(len).read_to_end(&mut body).is_err() {
                                return;
                            }
                            got.lock().unwrap().extend_from_slice(&body);
                        }
                        if reader.get_mut().write_all(answer.as_bytes()).is_err() || !read_bodies {
                            return;
                        }
                    }
                });
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.connections.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }
}

/// One capture line: a `BITS_POST`-like request with these parts and a 200 answer.
fn capture_line(method: &str, target: &str, headers: &[(&str, &str)], len: u64) -> String {
    serde_json::json!({
        "at_ms": 1,
        "request": {
            "method": method,
            "target": target,
            "version": "HTTP/1.1",
            "headers": headers,
            "body": {"len": len, "sha256": ""},
        },
        "response": {"status": 200, "headers": [["bits-packet-type", "Ack"]]},
    })
    .to_string()
}

fn write_capture(dir: &Path, lines: &[String]) -> PathBuf {
    let file = dir.join("capture.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

fn ping() -> String {
    capture_line(
        "BITS_POST",
        "/upload/a.bin",
        &[("bits-packet-type", "Ping"), ("content-length", "0")],
        0,
    )
}

/// Finding 4: CR, LF, NUL (or any control character) in a method, target, header name or value
/// would put hidden requests on the wire. Every line is checked before anything is sent; the
/// error names the line. The old replay sent line 1, then the smuggled requests of line 2.
#[test]
fn finding4_control_characters_in_a_capture_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let smuggled = "Ping\r\nContent-Length: 0\r\n\r\nBITS_POST /upload/evil.bin HTTP/1.1\r\nBITS-Packet-Type: Create-Session";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "header value",
            capture_line(
                "BITS_POST",
                "/upload/a.bin",
                &[("bits-packet-type", smuggled), ("content-length", "0")],
                0,
            ),
            "the value of header \"bits-packet-type\" holds a control character",
        ),
        (
            "NUL in a value",
            capture_line(
                "BITS_POST",
                "/upload/a.bin",
                &[("bits-packet-type", "Ping\0"), ("content-length", "0")],
                0,
            ),
            "holds a control character",
        ),
        (
            "header name",
            capture_line(
                "BITS_POST",
                "/upload/a.bin",
                &[
                    ("x-a: b\r\nbits-packet-type", "Ping"),
                    ("content-length", "0"),
                ],
                0,
            ),
            "is not an HTTP token",
        ),
        (
            "method",
            capture_line(
                "GET /upload/evil.bin HTTP/1.1\r\n\r\nBITS_POST",
                "/upload/a.bin",
                &[("bits-packet-type", "Ping"), ("content-length", "0")],
                0,
            ),
            "is not an HTTP token",
        ),
        (
            "target",
            capture_line(
                "BITS_POST",
                "/upload/a.bin HTTP/1.1\r\n\r\nGET /evil",
                &[("bits-packet-type", "Ping"), ("content-length", "0")],
                0,
            ),
            "holds a character a request line cannot carry",
        ),
    ];
    for (what, bad, message) in cases {
        let recorder = Recorder::start(ACK, true);
        let file = write_capture(dir.path(), &[ping(), bad]);
        let (code, out) = replay_to(&file, &recorder.url(), &[]);
        assert_eq!(
            recorder.counts(),
            (0, 0),
            "{what}: sent before the capture was checked:\n{}",
            recorder.text()
        );
        assert_eq!(code, 2, "{what}: {out}");
        assert!(
            out.contains(&format!("line 2 of {}", file.display())) && out.contains(message),
            "{what}: {out}"
        );
    }
}

/// Finding 4: a body longer than its `Content-Length` would be read as the next request; a
/// claimed length of 2^40 made the old replay allocate it (and abort). Lengths must agree with
/// the framing and stay under `--max-body`; bodies are streamed, never allocated whole.
#[test]
fn finding4_body_lengths_are_capped_checked_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than Content-Length: refused, nothing sent (the old replay sent 95 bytes of body
    // as a request of their own).
    let recorder = Recorder::start(ACK, true);
    let file = write_capture(
        dir.path(),
        &[capture_line(
            "BITS_POST",
            "/upload/a.bin",
            &[("bits-packet-type", "Ping"), ("content-length", "5")],
            100,
        )],
    );
    let (code, out) = replay_to(&file, &recorder.url(), &[]);
    assert_eq!(recorder.counts(), (0, 0), "{}", recorder.text());
    assert!(
        code == 2 && out.contains("line 1 of") && out.contains("with Content-Length 5"),
        "{out}"
    );

    // A Fragment whose body is longer than its range.
    let file = write_capture(
        dir.path(),
        &[capture_line(
            "BITS_POST",
            "/upload/a.bin",
            &[
                ("bits-packet-type", "Fragment"),
                ("content-range", "bytes 0-9/100"),
                ("transfer-encoding", "chunked"),
            ],
            11,
        )],
    );
    let (code, out) = replay_to(&file, &recorder.url(), &[]);
    assert!(
        code == 2 && out.contains("for Content-Range \"bytes 0-9/100\""),
        "{out}"
    );

    // 2^40 bytes: over the default --max-body (1 GiB), refused up front.
    let huge = 1u64 << 40;
    let file = write_capture(
        dir.path(),
        &[capture_line(
            "BITS_POST",
            "/upload/a.bin",
            &[
                ("bits-packet-type", "Fragment"),
                ("content-range", &format!("bytes 0-{}/{huge}", huge - 1)),
                ("content-length", &huge.to_string()),
            ],
            huge,
        )],
    );
    let (code, out) = replay_to(&file, &recorder.url(), &[]);
    assert!(code == 2 && out.contains("over --max-body"), "{out}");
    assert_eq!(recorder.counts(), (0, 0));

    // Allowed by the caps, it is streamed: the server refuses after the head and closes, and
    // the replay ends with an error, not an allocation failure.
    let closing = Recorder::start(
        "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    let caps = [
        "--max-body",
        "1099511627776",
        "--max-total",
        "1099511627776",
    ];
    let (code, out) = replay_to(&file, &closing.url(), &caps);
    assert_eq!(code, 2, "{out}");
    assert!(!out.contains("memory allocation"), "{out}");
    assert_eq!(closing.counts(), (1, 1));

    // The sum of all bodies is capped too.
    let two = capture_line(
        "BITS_POST",
        "/upload/a.bin",
        &[("bits-packet-type", "Ping"), ("content-length", "600")],
        600,
    );
    let file = write_capture(dir.path(), &[two.clone(), two]);
    let (code, out) = replay_to(&file, &recorder.url(), &["--max-total", "1000"]);
    assert!(
        code == 2 && out.contains("over --max-total (1000)"),
        "{out}"
    );
    assert_eq!(recorder.counts(), (0, 0));
}

/// Finding 4: replaying a capture into the server that recorded it (with `allow_overwrites`)
/// replaced the real upload with made-up bytes and reported no difference. The replay now
/// refuses that server, and writes under `replay-<time>-<name>` anywhere, so a replay cannot
/// overwrite a real upload; `--force` lifts both.
#[test]
fn finding4_a_replay_never_overwrites_the_recorded_upload() {
    let cap = private_dir();
    let s = Server::start(&format!(
        "{}[[vdir]]\nallow_overwrites = true\n",
        capture_config(cap.path())
    ));
    let data = pattern(300_000, 41);
    upload_with_cli(&s, "real.bin", &data, 100_000);
    let file = captures(cap.path())
        .into_iter()
        .find(|p| p.file_name().unwrap() != "no-session.jsonl")
        .expect("a session capture");
    let url = format!("http://{}", s.addr);

    let (code, out) = replay_to(&file, &url, &[]);
    assert_eq!(
        std::fs::read(s.upload_path("real.bin")).unwrap(),
        data,
        "{out}"
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("line 1 of {}", file.display()))
            && out.contains(&format!("recorded by the server at {url}"))
            && out.contains("--force"),
        "{out}"
    );
    // The same server reached by another of its names (localhost) is recognised too.
    let (code, out) = replay_to(&file, &format!("http://localhost:{}", s.addr.port()), &[]);
    assert_eq!(code, 2, "{out}");

    // --force with a prefix: into the recording server, beside the real upload.
    let (code, out) = replay_to(&file, &url, &["--force", "--prefix", "again-"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(s.upload_path("real.bin")).unwrap(), data);
    assert_eq!(
        std::fs::metadata(s.upload_path("again-real.bin"))
            .unwrap()
            .len(),
        300_000
    );

    // Another server: the default prefix keeps the replay off the recorded name.
    let other = Server::start("[[vdir]]\nallow_overwrites = true\n");
    std::fs::write(other.upload_path("real.bin"), b"someone else's upload").unwrap();
    let (code, out) = replay(&file, &other);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read(other.upload_path("real.bin")).unwrap(),
        b"someone else's upload"
    );
    assert_eq!(
        std::fs::metadata(replayed(&other, "real.bin"))
            .unwrap()
            .len(),
        300_000
    );
    let (code, out) = replay_to(&file, &url, &["--prefix", ""]);
    assert!(code == 2 && out.contains("only with --force"), "{out}");
}

/// Finding 3: a capture with redacted values replays: redacted headers and queries are left
/// out rather than sent as `[redacted]`, and the answers compare as the capture recorded them.
#[test]
fn finding3_a_redacted_capture_replays_without_sending_redacted_values() {
    let cap = private_dir();
    let s = Server::start(&capture_config(cap.path()));
    let mut c = s.conn();
    let mut headers = vec![("BITS-Supported-Protocols", PROTOCOL)];
    headers.extend_from_slice(&CREDENTIAL_HEADERS);
    let sid = c
        .bits("/upload/r.bin?token=q", "Create-Session", &headers, b"")
        .session();
    c.cancel("/upload/r.bin", &sid).assert_ack(200, None);
    let file = captures(cap.path())
        .into_iter()
        .find(|p| p.file_name().unwrap() != "no-session.jsonl")
        .expect("a session capture");

    let recorder = Recorder::start(ACK, true);
    let (_, out) = replay_to(&file, &recorder.url(), &[]);
    let sent = recorder.text();
    for (name, _) in CREDENTIAL_HEADERS {
        assert!(
            !sent
                .to_ascii_lowercase()
                .contains(&name.to_ascii_lowercase()),
            "{name} sent:\n{sent}\n{out}"
        );
    }
    assert!(
        !sent.contains("[redacted]") && !sent.contains('?'),
        "{sent}"
    );
    let request_line = sent.lines().next().unwrap_or_default();
    assert!(
        request_line.starts_with("BITS_POST /upload/replay-")
            && request_line.ends_with("Z-r.bin HTTP/1.1"),
        "{sent}\n{out}"
    );
    assert!(sent.contains("bits-packet-type: Create-Session"), "{sent}");

    let fresh = Server::start("");
    let (code, out) = replay(&file, &fresh);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 exchanges replayed, 0 with different answers"),
        "{out}"
    );
}
