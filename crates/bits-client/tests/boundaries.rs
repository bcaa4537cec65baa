//! The client's trust boundaries (issue 14, finding 10): what `bits` does when the server —
//! or whoever controls a redirect, a reply URL, a `BITS-Host-Id` or the local directories —
//! misbehaves. Every test drives the real `bits` binary (or the library) against the scripted
//! fake server in `support`, on loopback only.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{assert_code, pattern, scripted, server_pki, text, Emulator, Env, Fake, Req, Resp};

const P: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";
const SID: &str = "{00000000-0000-0000-0000-000000000001}";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A minimal, correct BITS upload server: one session at a time, fragments appended in order.
#[derive(Default)]
struct Emu {
    held: Vec<u8>,
    sessions: u32,
}

impl Emulator for Emu {
    fn handle(&mut self, r: &Req) -> Resp {
        Emu::handle(self, r)
    }
}

impl Emu {
    fn sid(&self) -> String {
        format!("{{00000000-0000-0000-0000-0000000000{:02}}}", self.sessions)
    }

    fn handle(&mut self, r: &Req) -> Resp {
        match r.packet().to_ascii_lowercase().as_str() {
            "ping" => Resp::ack(200, &[]),
            "create-session" => {
                self.sessions += 1;
                self.held.clear();
                let sid = self.sid();
                Resp::ack(200, &[("BITS-Protocol", P), ("BITS-Session-Id", &sid)])
            }
            "fragment" => {
                let (first, _, _) = self.range(r);
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

    fn range(&self, r: &Req) -> (u64, u64, u64) {
        r.range()
    }

    /// Whether this Fragment request completes the file.
    fn completes(r: &Req) -> bool {
        let (first, len, total) = r.range();
        first + len == total
    }
}

/// Runs a command, killing it (and failing the test) if it runs longer than `limit`.
fn run_bounded(mut c: Command, limit: Duration) -> Output {
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

/// A fake BITS server whose completing Fragment Ack names `reply_url` as `BITS-Reply-URL`.
fn naming_reply_url(reply_url: &str) -> Fake {
    let reply_url = reply_url.to_string();
    scripted::<Emu>(move |r, e| {
        if r.packet() == "Fragment" && Emu::completes(r) {
            let mut resp = e.handle(r);
            resp.headers
                .push(("BITS-Reply-URL".into(), reply_url.clone()));
            return Some(resp);
        }
        None
    })
    .0
}

fn auth_of(r: &Req) -> Option<&str> {
    r.header("Authorization")
}

/// A TLS front (certificate for 127.0.0.1 from a fresh CA) that forwards every connection to
/// `backend`; returns its address and the CA's PEM. Runs on its own thread and runtime.
fn tls_front(backend: std::net::SocketAddr) -> (std::net::SocketAddr, String) {
    let (ca, cert, key) = server_pki("boundaries CA");
    let certs = vec![cert.der().clone()];
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    (addr, ca.pem())
}

// ---------------------------------------------------------------------------------------------
// Credentials never cross origins

/// The reply URL names another origin (another port): the reply GET goes there without the
/// Basic credentials, which every request to the job's own origin carries.
#[test]
fn finding10_credentials_not_sent_to_a_foreign_reply_url() {
    let other = Fake::start(|_| Resp::new(200, &[]).body(b"reply".to_vec()));
    let reply_url = other.url("/r.bin");
    let fake = naming_reply_url(&reply_url);
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 1));
    let out = env.path("reply.out");
    let o = env
        .cmd(&[
            "upload-reply",
            file.to_str().unwrap(),
            &fake.url("/up/a.bin"),
            "-o",
            out.to_str().unwrap(),
            "--user",
            "alice",
        ])
        .env("BITS_PASSWORD", "secret")
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(std::fs::read(&out).unwrap(), b"reply");
    assert!(fake.requests().iter().all(|r| auth_of(r).is_some()));
    let got = other.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        auth_of(&got[0]),
        None,
        "credentials leaked to {}",
        other.addr
    );
}

/// A download redirected to another origin loses the credentials; a redirect within the same
/// origin keeps them.
#[test]
fn finding10_credentials_not_sent_across_a_redirect() {
    let other = Fake::start(|_| Resp::new(200, &[]).body(b"payload".to_vec()));
    let target = other.url("/file");
    let fake = Fake::start(move |r| match r.target.as_str() {
        "/a" => Resp::new(302, &[("Location", "/b")]),
        "/b" => Resp::new(302, &[("Location", &target)]),
        _ => Resp::new(404, &[]),
    });
    let env = Env::quiet();
    let dest = env.path("out.bin");
    let o = env
        .cmd(&[
            "download",
            &fake.url("/a"),
            dest.to_str().unwrap(),
            "--user",
            "alice",
        ])
        .env("BITS_PASSWORD", "secret")
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), b"payload");
    let same = fake.requests();
    assert_eq!(same.len(), 2);
    assert!(same.iter().all(|r| auth_of(r).is_some()));
    assert_eq!(auth_of(&other.requests()[0]), None);
}

/// `BITS-Host-Id` names another host: the session's later requests go there without the
/// credentials (the Cancel of the session, to the original origin, still carries them).
#[test]
fn finding10_credentials_not_sent_to_a_host_id_host() {
    let (fake, _) = scripted::<Emu>(|r, e| {
        if r.packet() == "Create-Session" {
            let mut resp = e.handle(r);
            resp.headers
                .push(("BITS-Host-Id".into(), "localhost".into()));
            return Some(resp);
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 2));
    let o = env
        .cmd(&[
            "upload",
            file.to_str().unwrap(),
            &fake.url("/up/a.bin"),
            "--user",
            "alice",
        ])
        .env("BITS_PASSWORD", "secret")
        .output()
        .unwrap();
    assert_code(&o, 0);
    let reqs = fake.requests();
    let (to_node, to_origin): (Vec<&Req>, Vec<&Req>) = reqs
        .iter()
        .partition(|r| r.header("Host").unwrap_or("").starts_with("localhost"));
    assert!(!to_node.is_empty(), "nothing went to the Host-Id host");
    assert!(to_node.iter().all(|r| auth_of(r).is_none()), "{to_node:?}");
    assert!(to_origin.iter().all(|r| auth_of(r).is_some()));
}

/// An https job whose server names an http reply URL: refused (policy, exit 9) with the
/// reason, and nothing is fetched in cleartext.
#[test]
fn finding10_https_job_refuses_an_http_reply_url() {
    let plain = Fake::start(|_| Resp::new(200, &[]).body(b"reply".to_vec()));
    let reply_url = plain.url("/r.bin");
    let fake = naming_reply_url(&reply_url);
    let (front, ca) = tls_front(fake.addr);
    let env = Env::quiet();
    let ca_path = env.file("ca.pem", ca.as_bytes());
    let file = env.file("a.bin", &pattern(3000, 3));
    let out = env.path("reply.out");
    let o = env
        .cmd(&[
            "upload-reply",
            file.to_str().unwrap(),
            &format!("https://{front}/up/a.bin"),
            "-o",
            out.to_str().unwrap(),
            "--cacert",
            ca_path.to_str().unwrap(),
            "--user",
            "alice",
        ])
        .env("BITS_PASSWORD", "secret")
        .output()
        .unwrap();
    assert_code(&o, 9);
    assert!(
        text(&o.stderr).contains("https") && text(&o.stderr).contains("http://"),
        "{}",
        text(&o.stderr)
    );
    assert!(plain.requests().is_empty(), "fetched an http reply URL");
    assert!(!out.exists());
}

/// A `file:` reply URL is refused as a policy refusal (exit 9), not a usage error, and the
/// session is cancelled.
#[test]
fn finding10_file_reply_url_is_a_policy_refusal() {
    let fake = naming_reply_url("file:///etc/passwd");
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 4));
    let out = env.path("reply.out");
    let o = env.run(&[
        "upload-reply",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_code(&o, 9);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "policy", "{v}");
    assert!(fake.sequence().contains(&"Cancel-Session".to_string()));
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// The local file changing during the last fragment

/// The file is rewritten while its only fragment is in flight: the server's completing Ack
/// must not end the job with exit 0. The upload starts over (Cancel-Session, a new
/// Create-Session, everything from byte 0) and the server ends up with the new content.
#[test]
fn finding10_file_changed_during_the_last_fragment_restarts_the_upload() {
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 5));
    let new_content = pattern(3500, 6);
    let (path, nc) = (file.clone(), new_content.clone());
    let mut changed = false;
    let (fake, emu) = scripted::<Emu>(move |r, _| {
        if r.packet() == "Fragment" && !changed {
            changed = true;
            std::fs::write(&path, &nc).unwrap();
        }
        None
    });
    let o = env.run(&["upload", file.to_str().unwrap(), &fake.url("/up/a.bin")]);
    assert_code(&o, 0);
    assert_eq!(
        emu.lock().unwrap().held,
        new_content,
        "torn upload published"
    );
    let seq = fake.sequence();
    assert_eq!(
        seq,
        [
            "Create-Session",
            "Fragment",
            "Cancel-Session",
            "Create-Session",
            "Fragment",
            "Close-Session"
        ]
    );
}

/// A file that changes during every last fragment: the restart budget runs out and `bits`
/// fails with exit 7, never 0.
#[test]
fn finding10_file_that_keeps_changing_fails_instead_of_exiting_0() {
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 7));
    let path = file.clone();
    let mut n = 0;
    let (fake, _) = scripted::<Emu>(move |r, _| {
        if r.packet() == "Fragment" {
            n += 1;
            std::fs::write(&path, pattern(3000 + n * 10, n as u64)).unwrap();
        }
        None
    });
    let o = env.run(&["upload", file.to_str().unwrap(), &fake.url("/up/a.bin")]);
    assert_code(&o, 7);
    assert!(text(&o.stderr).contains("changed"), "{}", text(&o.stderr));
    assert!(!fake.sequence().contains(&"Close-Session".to_string()));
}

// ---------------------------------------------------------------------------------------------
// Retries against an oscillating server

/// The server's acknowledged offset alternates between two values: each rise used to count as
/// progress and reset the retry budget, so `bits` sent fragments forever. Progress now counts
/// against the best offset acknowledged, so `--retries 3` ends the job (exit 3) after a
/// bounded number of fragments.
#[test]
fn finding10_oscillating_acks_exhaust_the_retries() {
    let mut flip = false;
    let (fake, _) = scripted::<Emu>(move |r, _| match r.packet() {
        "Fragment" => {
            flip = !flip;
            let n = if flip { "10240" } else { "5120" };
            Some(Resp::ack(200, &[("BITS-Received-Content-Range", n)]))
        }
        _ => None,
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(100_000, 8));
    let mut c = env.cmd(&[
        "upload",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "--retries",
        "3",
        "--fragment-size",
        "5K",
    ]);
    c.args(["--retry-delay", "1ms"]);
    let o = run_bounded(c, Duration::from_secs(20));
    assert_code(&o, 3);
    let fragments = fake
        .sequence()
        .iter()
        .filter(|p| p.as_str() == "Fragment")
        .count();
    eprintln!("oscillating server: {fragments} fragments, exit 3");
    assert!(fragments <= 40, "{fragments} fragments");
}

/// The oscillation through lost sessions: every new session gains the same 10 KiB and is then
/// lost (`BG_E_SESSION_NOT_FOUND`). Each session "progressed", so the restart budget never ran
/// out; counted against the best offset, the third fruitless restart ends the job.
#[test]
fn finding10_sessions_lost_at_the_same_offset_give_up() {
    let (fake, _) = scripted::<Emu>(move |r, e| {
        if r.packet() == "Fragment" {
            let (first, _, _) = r.range();
            if first >= 10_240 {
                return Some(Resp::ack(
                    500,
                    &[
                        ("BITS-Error-Code", "0x8020001F"),
                        ("BITS-Error-Context", "0x5"),
                    ],
                ));
            }
            return Some(e.handle(r));
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(100_000, 13));
    let c = env.cmd(&[
        "upload",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "--fragment-size",
        "5K",
    ]);
    let o = run_bounded(c, Duration::from_secs(20));
    assert_ne!(o.status.code(), Some(0));
    let creates = fake
        .sequence()
        .iter()
        .filter(|p| p.as_str() == "Create-Session")
        .count();
    eprintln!("sessions lost at the same offset: {creates} sessions");
    assert!(creates <= 5, "{creates} sessions");
}

// ---------------------------------------------------------------------------------------------
// Local files and directories

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `--state-dir` naming an existing directory (a sticky, world-writable one here, like /tmp)
/// leaves its mode alone — and is refused, since others could write jobs into it (see
/// `trust.rs` finding 1); a directory the client creates is private (0700).
#[cfg(unix)]
#[test]
fn finding10_state_dir_keeps_the_mode_of_an_existing_directory() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::quiet();
    let shared = env.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bits"))
        .arg("--state-dir")
        .arg(&shared)
        .arg("jobs")
        .output()
        .unwrap();
    assert_code(&o, 5);
    assert!(
        text(&o.stderr).contains("writable by group or others"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(mode(&shared), 0o1777);
    let fresh = env.path("new/state");
    let o = Command::new(env!("CARGO_BIN_EXE_bits"))
        .arg("--state-dir")
        .arg(&fresh)
        .arg("jobs")
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(mode(&fresh), 0o700);
}

/// `FILE.bits-part` is a symlink planted by someone who can write to the destination
/// directory: the download never writes through it (the link's target keeps its content) and
/// the destination ends up a regular file with the downloaded bytes.
#[cfg(unix)]
#[test]
fn finding10_partial_download_does_not_follow_a_planted_symlink() {
    let body = pattern(4000, 9);
    let b2 = body.clone();
    let fake = Fake::start(move |_| Resp::new(200, &[("ETag", "\"v1\"")]).body(b2.clone()));
    let env = Env::quiet();
    let victim = env.file("victim", b"precious");
    let dest = env.path("out.bin");
    std::os::unix::fs::symlink(&victim, env.path("out.bin.bits-part")).unwrap();
    let o = env.run(&["download", &fake.url("/f"), dest.to_str().unwrap()]);
    assert_code(&o, 0);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(&dest).unwrap().is_symlink());
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

/// Same, on resume: a job that already holds part of the file finds its partial file replaced
/// by a symlink. Nothing is appended to the link's target.
#[cfg(unix)]
#[tokio::test]
async fn finding10_resumed_download_does_not_follow_a_planted_symlink() {
    use bits_client::{Client, DownloadState, NoObserver, RemoteVersion, Url};
    let body = pattern(4000, 10);
    let b2 = body.clone();
    let fake = Fake::start(move |r| match r.header("Range") {
        Some("bytes=8-") => Resp::new(
            206,
            &[("ETag", "\"v1\""), ("Content-Range", "bytes 8-3999/4000")],
        )
        .body(b2[8..].to_vec()),
        _ => Resp::new(200, &[("ETag", "\"v1\"")]).body(b2.clone()),
    });
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let dest = dir.path().join("out.bin");
    let mut state = DownloadState::new(&Url::parse(&fake.url("/f")).unwrap(), &dest);
    state.remote = Some(RemoteVersion {
        size: 4000,
        etag: Some("\"v1\"".into()),
        last_modified: None,
    });
    std::os::unix::fs::symlink(&victim, state.partial_path()).unwrap();
    let client = Client::new().unwrap();
    let out = client.download(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(out.bytes, 4000);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!std::fs::symlink_metadata(&dest).unwrap().is_symlink());
}

// ---------------------------------------------------------------------------------------------
// Size bounds and encodings

/// A download larger than `--max-size` is refused before a byte is written (policy, exit 9);
/// the default bound is named in `--help`.
#[test]
fn finding10_download_bounded_by_max_size() {
    let fake = Fake::start(|_| Resp::new(200, &[]).body(vec![7; 3000]));
    let env = Env::quiet();
    let dest = env.path("out.bin");
    let o = env.run(&[
        "download",
        &fake.url("/f"),
        dest.to_str().unwrap(),
        "--max-size",
        "2K",
    ]);
    assert_code(&o, 9);
    assert!(
        text(&o.stderr).contains("--max-size"),
        "{}",
        text(&o.stderr)
    );
    assert!(!dest.exists());
    assert!(!env.path("out.bin.bits-part").exists());
    let help = env.run(&["--help"]);
    assert!(text(&help.stdout).contains("--max-size"));
}

/// A reply larger than `--max-size` is refused the same way.
#[test]
fn finding10_reply_bounded_by_max_size() {
    let (fake, _) = scripted::<Emu>(move |r, e| {
        if r.method == "GET" {
            return Some(Resp::new(200, &[]).body(vec![1; 5000]));
        }
        if r.packet() == "Fragment" && Emu::completes(r) {
            let mut resp = e.handle(r);
            resp.headers.push(("BITS-Reply-URL".into(), "r.bin".into()));
            return Some(resp);
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 11));
    let out = env.path("reply.out");
    let o = env.run(&[
        "upload-reply",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "-o",
        out.to_str().unwrap(),
        "--max-size",
        "4K",
    ]);
    assert_code(&o, 9);
    assert!(!out.exists());
}

/// A download announcing more bytes than the file system has free is refused before writing
/// (local I/O, exit 5), even with the size bound lifted.
#[test]
fn finding10_download_bounded_by_free_space() {
    let fake = Fake::start(|_| {
        let mut r = Resp::new(200, &[("Content-Length", "4611686018427387904")]);
        r.close = true;
        r
    });
    let env = Env::quiet();
    let dest = env.path("out.bin");
    let o = env.run(&[
        "download",
        &fake.url("/f"),
        dest.to_str().unwrap(),
        "--max-size",
        "0",
        "--retries",
        "0",
    ]);
    assert_code(&o, 5);
    assert!(text(&o.stderr).contains("free"), "{}", text(&o.stderr));
}

/// A `Content-Encoding: gzip` answer (to a request that asked for identity) is never saved as
/// the file.
#[test]
fn finding10_content_encoded_download_is_refused() {
    let fake = Fake::start(|_| {
        Resp::new(200, &[("Content-Encoding", "gzip")]).body(vec![0x1f, 0x8b, 8, 0, 0])
    });
    let env = Env::quiet();
    let dest = env.path("out.bin");
    let o = env.run(&["download", &fake.url("/f"), dest.to_str().unwrap()]);
    assert_code(&o, 9);
    assert!(
        text(&o.stderr).contains("Content-Encoding"),
        "{}",
        text(&o.stderr)
    );
    assert!(!dest.exists());
}

// ---------------------------------------------------------------------------------------------
// BITS-Host-Id

/// A Create-Session Ack whose `BITS-Host-Id` cannot be used: the session it created is
/// cancelled (at the original URL) before the client gives up or retries.
#[test]
fn finding10_unusable_host_id_cancels_its_session() {
    let (fake, _) = scripted::<Emu>(|r, _| {
        if r.packet() == "Create-Session" {
            return Some(Resp::ack(
                200,
                &[
                    ("BITS-Protocol", P),
                    ("BITS-Session-Id", SID),
                    ("BITS-Host-Id", "bad host"),
                ],
            ));
        }
        None
    });
    let env = Env::quiet();
    let file = env.file("a.bin", &pattern(3000, 12));
    let o = env.run(&[
        "upload",
        file.to_str().unwrap(),
        &fake.url("/up/a.bin"),
        "--retries",
        "1",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let reqs = fake.requests();
    let creates = reqs
        .iter()
        .filter(|r| r.packet() == "Create-Session")
        .count();
    let cancels: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.packet() == "Cancel-Session")
        .collect();
    assert!(creates >= 1);
    assert_eq!(cancels.len(), creates, "{:?}", fake.sequence());
    assert!(cancels
        .iter()
        .all(|r| r.header("BITS-Session-Id") == Some(SID)));
    assert!(!fake.sequence().contains(&"Fragment".to_string()));
}

// ---------------------------------------------------------------------------------------------
// Exit codes

#[test]
fn finding10_exit_codes_are_documented() {
    let env = Env::quiet();
    let help = text(&env.run(&["--help"]).stdout);
    for needle in ["2 usage", "4 server", "5 local", "6 auth", "9 policy"] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}
