//! The client against a fake IIS: fixed responses replayed from the spec's reference
//! exchanges (spec §16, [MC-BUP §4.1, §4.2]) with IIS's quirks — no `BITS-Session-Id` in
//! Fragment Acks, header names in any case, a relative backslash reply URL, `BITS-Host-Id` —
//! plus scripted servers for the client's error handling (413, 416, lost sessions, Close and
//! Cancel retry rules, Host-Id fallback, context-7 errors).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bits_client::{
    Client, DownloadState, Error, ErrorKind, NoObserver, RetryPolicy, UploadState, Url,
    MIN_FRAGMENT_SIZE,
};
use support::{pattern, scripted, Emulator, Fake, Recorder, Req, Resp};

const P: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";

fn client() -> Client {
    Client::builder()
        .retry(RetryPolicy::quick(4, Duration::from_millis(20)))
        .idle_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn file_with(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// A scripted BITS server: correct fragment handling (spec §7) unless a hook answers first.

#[derive(Default)]
struct Emu {
    held: Vec<u8>,
    total: Option<u64>,
    sessions: u32,
    session: String,
    done: bool,
}

impl Emulator for Emu {
    fn handle(&mut self, r: &Req) -> Resp {
        Emu::handle(self, r)
    }
}

impl Emu {
    fn session_id(n: u32) -> String {
        format!("{{00000000-0000-0000-0000-0000000000{n:02}}}")
    }

    fn handle(&mut self, r: &Req) -> Resp {
        if r.method != "BITS_POST" {
            return Resp::new(404, &[]);
        }
        match r.packet().to_ascii_lowercase().as_str() {
            "ping" => Resp::ack(200, &[]),
            "create-session" => {
                self.sessions += 1;
                self.session = Emu::session_id(self.sessions);
                self.held.clear();
                self.total = None;
                self.done = false;
                let sid = self.session.clone();
                Resp::ack(200, &[("BITS-Protocol", P), ("BITS-Session-Id", &sid)])
            }
            "fragment" => {
                let (first, len, total) = r.range();
                assert_eq!(r.body.len() as u64, len, "Content-Length = range length");
                self.total = Some(total);
                let next = self.held.len() as u64;
                if first > next {
                    let n = next.to_string();
                    return Resp::ack(416, &[("BITS-Received-Content-Range", &n)]);
                }
                let skip = (next - first) as usize;
                if skip < r.body.len() {
                    self.held.extend_from_slice(&r.body[skip..]);
                }
                let n = self.held.len().to_string();
                if self.held.len() as u64 == total {
                    self.done = true;
                }
                Resp::ack(200, &[("BITS-Received-Content-Range", &n)])
            }
            "close-session" | "cancel-session" => Resp::ack(200, &[]),
            other => panic!("unexpected packet {other:?}"),
        }
    }
}

fn fragments(fake: &Fake) -> Vec<(u64, u64)> {
    fake.requests()
        .iter()
        .filter(|r| r.packet().eq_ignore_ascii_case("fragment"))
        .map(|r| {
            let (f, l, _) = r.range();
            (f, l)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reference exchanges

/// [MC-BUP §4.1] / spec §16: a 4892-byte file in one fragment, answered with IIS's exact
/// headers. The Fragment Ack has no `BITS-Session-Id`, its header names are lower case; the
/// Close Ack's are upper case.
#[tokio::test]
async fn mc_bup_4_1_plain_upload_against_iis_responses() {
    const SID: &str = "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}";
    let fake = Fake::start(|r| match r.packet() {
        "Create-Session" => Resp::new(
            200,
            &[
                ("Pragma", "no-cache"),
                ("BITS-Packet-Type", "Ack"),
                ("BITS-Protocol", P),
                ("BITS-Session-Id", SID),
                ("Content-Length", "0"),
                ("Accept-encoding", "identity"),
                ("Server", "Microsoft-IIS/6.0"),
            ],
        ),
        "Fragment" => Resp::new(
            200,
            &[
                ("bits-packet-type", "Ack"),
                ("content-length", "0"),
                ("bits-received-content-range", "4892"),
            ],
        ),
        "Ping" => Resp::new(200, &[("BITS-Packet-Type", "Ack"), ("Content-Length", "0")]),
        "Close-Session" => Resp::new(200, &[("BITS-PACKET-TYPE", "ACK"), ("CONTENT-LENGTH", "0")]),
        other => panic!("unexpected {other:?}"),
    });
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(4892, 41);
    let file = file_with(&dir, "rfc2119.txt", &data);
    let url = Url::parse(&fake.url("/upload/2000mb-rfc2119.txt")).unwrap();
    let mut state = UploadState::new(&file, &url, 1 << 20).unwrap();
    let out = client().upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(out.bytes, 4892);
    assert_eq!(out.session_id, SID);
    assert_eq!(out.fragments, 1);
    assert_eq!(
        fake.sequence(),
        ["Create-Session", "Fragment", "Close-Session"]
    );
    let reqs = fake.requests();
    for r in &reqs {
        assert_eq!(r.method, "BITS_POST");
        assert_eq!(r.target, "/upload/2000mb-rfc2119.txt");
        assert!(r.header("Content-Length").is_some(), "{r:?}");
    }
    let create = &reqs[0];
    assert_eq!(create.header("Content-Length"), Some("0"));
    assert_eq!(create.header("BITS-Supported-Protocols"), Some(P));
    assert_eq!(create.header("BITS-Session-Id"), None);
    let frag = &reqs[1];
    assert_eq!(frag.header("BITS-Session-Id"), Some(SID));
    assert_eq!(frag.header("Content-Range"), Some("bytes 0-4891/4892"));
    assert_eq!(frag.header("Content-Length"), Some("4892"));
    assert_eq!(frag.header("Content-Name"), Some("rfc2119.txt"));
    assert_eq!(frag.body, data);
    assert_eq!(reqs[2].header("BITS-Session-Id"), Some(SID));
    assert_eq!(reqs[2].header("Content-Length"), Some("0"));
}

/// [MC-BUP §4.2]: upload-reply to a farm node. The Create-Session Ack names a Host-Id
/// (`localhost` here), so everything after it goes there, starting with a Ping; the final
/// Fragment Ack carries IIS's relative, backslash-separated reply URL, which resolves against
/// the destination URL's directory and is fetched with a GET before Close-Session.
#[tokio::test]
async fn mc_bup_4_2_upload_reply_host_id_and_backslash_reply_url() {
    const SID: &str = "{C85B4E0A-9EB9-4114-BFA4-8A43B4710091}";
    const REPLY_PATH: &str = "/upload-ref-isapi-WebFarm/BITS-Sessions/Replies/%7BC85B4E0A-9EB9-4114-BFA4-8A43B4710091%7D/responsefile.bin";
    let reply = pattern(10240, 42);
    let reply2 = reply.clone();
    let held = Arc::new(Mutex::new(0u64));
    let fake = Fake::start(move |r| {
        if r.method == "GET" {
            assert_eq!(r.target, REPLY_PATH);
            return Resp::new(
                200,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Last-Modified", "Tue, 01 Apr 2025 10:00:00 GMT"),
                    ("ETag", "\"80b2-27fc\""),
                    ("Accept-Ranges", "bytes"),
                ],
            )
            .body(reply2.clone());
        }
        match r.packet() {
            "Create-Session" => Resp::new(
                200,
                &[
                    ("BITS-Packet-Type", "Ack"),
                    ("BITS-Protocol", P),
                    ("BITS-Session-Id", SID),
                    ("BITS-Host-Id", "localhost"),
                    ("BITS-Host-Id-Fallback-Timeout", "110"),
                    ("Content-Length", "0"),
                    ("Accept-encoding", "identity"),
                ],
            ),
            "Ping" => Resp::new(200, &[("BITS-Packet-Type", "Ack"), ("Content-Length", "0")]),
            "Fragment" => {
                let (first, len, total) = r.range();
                let mut h = held.lock().unwrap();
                assert_eq!(first, *h, "fragments arrive in order");
                *h = first + len;
                let n = h.to_string();
                let mut headers = vec![
                    ("BITS-Packet-Type", "Ack"),
                    ("Content-Length", "0"),
                    ("BITS-Received-Content-Range", n.as_str()),
                ];
                let url = format!("BITS-Sessions\\Replies\\{SID}\\responsefile.bin");
                if *h == total {
                    headers.push(("BITS-Reply-URL", url.as_str()));
                }
                Resp::new(200, &headers)
            }
            "Close-Session" => {
                Resp::new(200, &[("BITS-Packet-Type", "Ack"), ("Content-Length", "0")])
            }
            other => panic!("unexpected {other:?}"),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(20_000, 43);
    let file = file_with(&dir, "2100mb-rfc2119.txt", &data);
    let reply_file = dir.path().join("reply.bin");
    let url = Url::parse(&fake.url("/upload-ref-isapi-WebFarm/2100mb-rfc2119.txt")).unwrap();
    let mut state = UploadState::new(&file, &url, 8192)
        .unwrap()
        .with_reply(&reply_file);
    let mut rec = Recorder::default();
    let out = client().upload(&mut state, &mut rec).await.unwrap();
    assert_eq!(std::fs::read(&reply_file).unwrap(), reply);
    assert_eq!(out.reply_bytes, Some(10240));
    let port = fake.addr.port();
    assert_eq!(
        out.reply_url.as_deref(),
        Some(format!("http://localhost:{port}{REPLY_PATH}").as_str())
    );
    assert_eq!(
        fake.sequence(),
        [
            "Create-Session".to_string(),
            "Ping".into(),
            "Fragment".into(),
            "Fragment".into(),
            "Fragment".into(),
            format!("GET {REPLY_PATH}"),
            "Close-Session".into(),
        ]
    );
    let reqs = fake.requests();
    assert_eq!(reqs[0].header("Host"), Some(fake.addr.to_string().as_str()));
    for r in &reqs[1..] {
        assert_eq!(
            r.header("Host"),
            Some(format!("localhost:{port}").as_str()),
            "after Create-Session every request goes to the Host-Id host: {r:?}"
        );
    }
    let get = &reqs[5];
    assert_eq!(get.header("Accept-Encoding"), Some("identity"));
    assert!(rec
        .events
        .iter()
        .any(|e| e.starts_with("host-id http://localhost:")));
}

// ---------------------------------------------------------------------------------------------
// Host-Id fallback

/// The Host-Id host refuses connections; after BITS-Host-Id-Fallback-Timeout (1 s) the client
/// goes back to the original URL (here the same server, which still has the session).
#[tokio::test]
async fn unreachable_host_id_falls_back_after_the_timeout() {
    let (fake, emu) = scripted::<Emu>(|r, e| {
        if r.packet() == "Create-Session" {
            e.sessions += 1;
            e.session = Emu::session_id(e.sessions);
            let sid = e.session.clone();
            // Nothing listens on 127.0.0.2 (the fake binds 127.0.0.1 only).
            return Some(Resp::ack(
                200,
                &[
                    ("BITS-Protocol", P),
                    ("BITS-Session-Id", &sid),
                    ("BITS-Host-Id", "127.0.0.2"),
                    ("BITS-Host-Id-Fallback-Timeout", "1"),
                ],
            ));
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(30_000, 44);
    let file = file_with(&dir, "a.bin", &data);
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 16_384).unwrap();
    let c = Client::builder()
        .retry(RetryPolicy::quick(30, Duration::from_millis(100)))
        .build()
        .unwrap();
    let mut rec = Recorder::default();
    let started = Instant::now();
    let out = c.upload(&mut state, &mut rec).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(emu.lock().unwrap().held, data);
    assert_eq!(out.restarts, 0);
    let fallback = rec.events.iter().position(|e| e.starts_with("fallback "));
    assert!(fallback.is_some(), "{:?}", rec.events);
    let host_id = format!("host-id http://127.0.0.2:{}/upload/a.bin", fake.addr.port());
    assert!(rec.events.contains(&host_id), "{:?}", rec.events);
    // The session no longer names the Host-Id: a resume would not go there again.
    assert_eq!(state.session.as_ref().unwrap().host_id, None);
    assert_eq!(fake.sequence()[0], "Create-Session");
    assert_eq!(
        fake.sequence()[1],
        "Ping",
        "first message on the original host after falling back"
    );
}

// ---------------------------------------------------------------------------------------------
// Offsets come from the server

/// The server acknowledges less than was sent (200 with a smaller Received) and later answers a
/// fragment with 416: each time the next fragment starts exactly where the server says.
#[tokio::test]
async fn resumes_from_the_servers_offset_not_from_what_was_sent() {
    let mut n = 0;
    let (fake, emu) = scripted::<Emu>(move |r, e| {
        if r.packet() != "Fragment" {
            return None;
        }
        n += 1;
        let (first, len, _) = r.range();
        match n {
            // Keeps only half of the second fragment.
            2 => {
                let keep = (len / 2) as usize;
                let start = (e.held.len() as u64 - first) as usize;
                e.held.extend_from_slice(&r.body[start..keep]);
                let v = e.held.len().to_string();
                Some(Resp::ack(200, &[("BITS-Received-Content-Range", &v)]))
            }
            // "Loses" data: claims to hold only 10000 bytes.
            3 => {
                e.held.truncate(10_000);
                Some(Resp::ack(416, &[("BITS-Received-Content-Range", "10000")]))
            }
            _ => None,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(40_000, 45);
    let file = file_with(&dir, "a.bin", &data);
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 8192).unwrap();
    client().upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(emu.lock().unwrap().held, data);
    let starts: Vec<u64> = fragments(&fake).iter().map(|(f, _)| *f).collect();
    assert_eq!(&starts[..4], &[0, 8192, 12288, 10000]);
    assert_eq!(starts[4], 18192);
}

// ---------------------------------------------------------------------------------------------
// 413

/// A body limit of 20 000 bytes answered with a bare 413 (no BITS headers, as a front end
/// would): the client halves 1 MiB fragments until they fit.
#[tokio::test]
async fn shrinks_fragments_on_413() {
    let (fake, emu) = scripted::<Emu>(|r, _| {
        (r.packet() == "Fragment" && r.body.len() > 20_000).then(|| Resp::new(413, &[]))
    });
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(100_000, 46);
    let file = file_with(&dir, "a.bin", &data);
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 1 << 20).unwrap();
    let mut rec = Recorder::default();
    let out = client().upload(&mut state, &mut rec).await.unwrap();
    assert_eq!(emu.lock().unwrap().held, data);
    // Halving starts from the refused request (the whole 100 000-byte file, not 1 MiB).
    assert_eq!(out.fragment_size, 12_500);
    assert_eq!(state.fragment_size, 12_500, "the smaller size is persisted");
    let lens: Vec<u64> = fragments(&fake).iter().map(|(_, l)| *l).collect();
    assert_eq!(&lens[..3], &[100_000, 50_000, 25_000]);
    assert_eq!(&lens[3..], &[12_500; 8]);
    assert!(rec.events.iter().any(|e| e == "shrunk 12500"));
}

/// A server that refuses every body: the client goes down to 5 KiB, never below, then fails
/// with a typed fatal error.
#[tokio::test]
async fn never_shrinks_below_5_kib() {
    let (fake, _) = scripted::<Emu>(|r, _| (r.packet() == "Fragment").then(|| Resp::new(413, &[])));
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "a.bin", &pattern(200_000, 47));
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536).unwrap();
    let err = client()
        .upload(&mut state, &mut NoObserver)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::FragmentTooLarge {
                fragment_size: 5120,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Fatal);
    let lens: Vec<u64> = fragments(&fake).iter().map(|(_, l)| *l).collect();
    assert_eq!(lens, [65_536, 32_768, 16_384, 8192, 5120]);
    assert!(lens.iter().all(|l| *l >= MIN_FRAGMENT_SIZE));
}

// ---------------------------------------------------------------------------------------------
// Lost sessions, retries, errors

/// `BG_E_SESSION_NOT_FOUND` on a fragment: a new Create-Session and everything again from 0.
#[tokio::test]
async fn session_not_found_on_a_fragment_restarts_from_byte_zero() {
    let mut n = 0;
    let (fake, emu) = scripted::<Emu>(move |r, _| {
        if r.packet() == "Fragment" {
            n += 1;
            if n == 3 {
                return Some(Resp::ack(
                    500,
                    &[
                        ("BITS-Error-Code", "0x8020001F"),
                        ("BITS-Error-Context", "0x5"),
                    ],
                ));
            }
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(50_000, 48);
    let file = file_with(&dir, "a.bin", &data);
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 10_000).unwrap();
    let mut rec = Recorder::default();
    let out = client().upload(&mut state, &mut rec).await.unwrap();
    assert_eq!(out.restarts, 1);
    assert_eq!(emu.lock().unwrap().held, data);
    assert_eq!(out.session_id, Emu::session_id(2));
    let reqs = fake.requests();
    let creates = reqs
        .iter()
        .filter(|r| r.packet() == "Create-Session")
        .count();
    assert_eq!(creates, 2);
    let starts: Vec<u64> = fragments(&fake).iter().map(|(f, _)| *f).collect();
    assert_eq!(
        starts,
        [0, 10_000, 20_000, 0, 10_000, 20_000, 30_000, 40_000]
    );
    let after = reqs
        .iter()
        .skip_while(|r| r.packet() != "Fragment" || r.range().0 != 20_000)
        .skip(1)
        .find(|r| r.packet() == "Fragment")
        .unwrap();
    assert_eq!(
        after.header("BITS-Session-Id"),
        Some(Emu::session_id(2).as_str())
    );
    assert!(rec.events.contains(&"restarted".to_string()));
}

/// 503 on every fragment: retried (each retry after a Ping, as Windows resumes) until the
/// budget is spent, then a transient error that still carries status and HRESULT.
#[tokio::test]
async fn transient_errors_are_retried_with_a_ping_then_reported() {
    let (fake, _) = scripted::<Emu>(|r, _| {
        (r.packet() == "Fragment").then(|| {
            Resp::ack(
                503,
                &[
                    ("BITS-Error-Code", "0x801901F7"),
                    ("BITS-Error-Context", "0x5"),
                ],
            )
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "a.bin", &pattern(10_000, 49));
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536).unwrap();
    let err = client()
        .upload(&mut state, &mut NoObserver)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 5, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.hresult().map(|h| h.0), Some(0x8019_01F7));
    assert_eq!(err.context(), Some(bits_proto::ErrorContext::RemoteFile));
    let seq = fake.sequence();
    assert_eq!(
        &seq[1..],
        [
            "Fragment", "Ping", "Fragment", "Ping", "Fragment", "Ping", "Fragment", "Ping",
            "Fragment"
        ]
    );
    // The session survives for a later resume.
    assert!(state.session.is_some());
}

/// Server-application errors (context 0x7) follow the application table: 500 is retried,
/// 403 is final at once.
#[tokio::test]
async fn server_application_errors_follow_the_context_7_rules() {
    let mut calls = 0;
    let (fake, _) = scripted::<Emu>(move |r, e| {
        if r.packet() == "Fragment" && r.range().0 + r.range().1 == r.range().2 {
            calls += 1;
            if calls == 1 {
                e.handle(r); // the server has the bytes; the application failed
                return Some(Resp::ack(
                    500,
                    &[
                        ("BITS-Error-Code", "0x801901F4"),
                        ("BITS-Error-Context", "0x7"),
                    ],
                ));
            }
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "a.bin", &pattern(10_000, 50));
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536).unwrap();
    let out = client().upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(out.retries, 1);
    assert_eq!(
        fake.sequence(),
        [
            "Create-Session",
            "Fragment",
            "Ping",
            "Fragment",
            "Close-Session"
        ]
    );

    let (fake, _) = scripted::<Emu>(|r, _| {
        (r.packet() == "Fragment").then(|| {
            Resp::ack(
                403,
                &[
                    ("BITS-Error-Code", "0x80190193"),
                    ("BITS-Error-Context", "0x7"),
                ],
            )
        })
    });
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536).unwrap();
    let err = client()
        .upload(&mut state, &mut NoObserver)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert_eq!(err.status(), Some(403));
    assert_eq!(
        err.context(),
        Some(bits_proto::ErrorContext::RemoteApplication)
    );
    assert_eq!(fake.sequence(), ["Create-Session", "Fragment"]);
}

/// Close-Session is resent on 5xx unless the code is BG_E_SESSION_NOT_FOUND, never on 4xx;
/// Cancel-Session likewise.
#[tokio::test]
async fn close_and_cancel_follow_the_retry_rules() {
    async fn run_close(answers: Vec<Resp>) -> (Result<(), Error>, usize) {
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let (fake, _) = scripted::<Emu>(move |r, _| {
            if r.packet() == "Close-Session" {
                return answers.lock().unwrap().next();
            }
            None
        });
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(&dir, "a.bin", &pattern(1000, 51));
        let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
        let mut state = UploadState::new(&file, &url, 65_536).unwrap();
        let r = client()
            .upload(&mut state, &mut NoObserver)
            .await
            .map(|_| ());
        let closes = fake
            .sequence()
            .iter()
            .filter(|p| *p == "Close-Session")
            .count();
        (r, closes)
    }
    let e = |status, code: &str| {
        Resp::ack(
            status,
            &[("BITS-Error-Code", code), ("BITS-Error-Context", "0x5")],
        )
    };
    // 503, 500 → resent; then 200.
    let (r, n) = run_close(vec![e(503, "0x801901F7"), e(500, "0x801901F4")]).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(n, 3);
    // 501 is a 5xx too: resent.
    let (r, n) = run_close(vec![e(501, "0x80070005")]).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(n, 2);
    // BG_E_SESSION_NOT_FOUND: not resent; the session is gone, which is what Close wanted.
    let (r, n) = run_close(vec![e(500, "0x8020001F")]).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(n, 1);
    // 404: never resent, reported.
    let (r, n) = run_close(vec![e(404, "0x80070003")]).await;
    let err = r.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert_eq!(n, 1);

    // Cancel-Session: 502 resent, then 200; the session is forgotten.
    let mut cancels = 0;
    let (fake, _) = scripted::<Emu>(move |r, _| {
        if r.packet() == "Cancel-Session" {
            cancels += 1;
            if cancels == 1 {
                return Some(e(502, "0x801901F6"));
            }
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "a.bin", &pattern(100_000, 52));
    let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536).unwrap();
    let mut stop = Recorder {
        stop_at: Some(65_536),
        ..Default::default()
    };
    let err = client().upload(&mut state, &mut stop).await.unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    client().cancel(&mut state, &mut NoObserver).await.unwrap();
    assert!(state.session.is_none());
    let seq = fake.sequence();
    assert_eq!(seq.iter().filter(|p| *p == "Cancel-Session").count(), 2);
    let cancel = fake
        .requests()
        .into_iter()
        .find(|r| r.packet() == "Cancel-Session")
        .unwrap();
    assert_eq!(
        cancel.header("BITS-Session-Id"),
        Some(Emu::session_id(1).as_str())
    );
}

#[tokio::test]
async fn protocol_mismatch_non_bits_servers_and_auth_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "a.bin", b"hello");
    let cases: Vec<(Resp, ErrorKind, &str)> = vec![
        (
            Resp::ack(
                200,
                &[
                    ("BITS-Protocol", "{11111111-1111-1111-1111-111111111111}"),
                    ("BITS-Session-Id", "{00000000-0000-0000-0000-000000000001}"),
                ],
            ),
            ErrorKind::Protocol,
            "ProtocolMismatch",
        ),
        (
            Resp::new(200, &[("Content-Type", "text/html")]),
            ErrorKind::Protocol,
            "NotBitsServer",
        ),
        (
            Resp::new(401, &[("WWW-Authenticate", "Basic realm=\"bits\"")]),
            ErrorKind::Auth,
            "Auth",
        ),
        (
            Resp::ack(
                400,
                &[
                    ("BITS-Error-Code", "0x80070057"),
                    ("BITS-Error-Context", "0x5"),
                ],
            ),
            ErrorKind::Fatal,
            "Server",
        ),
    ];
    for (resp, kind, variant) in cases {
        let resp = Arc::new(Mutex::new(Some(resp)));
        let fake = Fake::start(move |_| resp.lock().unwrap().take().expect("one request"));
        let url = Url::parse(&fake.url("/upload/a.bin")).unwrap();
        let mut state = UploadState::new(&file, &url, 65_536).unwrap();
        let err = client()
            .upload(&mut state, &mut NoObserver)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err:?}");
        assert!(format!("{err:?}").starts_with(variant), "{err:?}");
        assert_eq!(fake.sequence(), ["Create-Session"]);
    }
}

/// A zero-length file is one empty fragment, `bytes */0` (docs/decisions.md #18).
#[tokio::test]
async fn zero_byte_upload_sends_one_empty_fragment() {
    let (fake, emu) = scripted::<Emu>(|r, e| {
        if r.packet() == "Fragment" {
            assert_eq!(r.header("Content-Range"), Some("bytes */0"));
            assert_eq!(r.header("Content-Length"), Some("0"));
            e.done = true;
            return Some(Resp::ack(200, &[("BITS-Received-Content-Range", "0")]));
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "empty", b"");
    let url = Url::parse(&fake.url("/upload/empty")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536).unwrap();
    let out = client().upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(out.bytes, 0);
    assert!(emu.lock().unwrap().done);
    assert_eq!(
        fake.sequence(),
        ["Create-Session", "Fragment", "Close-Session"]
    );
}

// ---------------------------------------------------------------------------------------------
// Downloads against odd servers

#[tokio::test]
async fn downloads_follow_redirects_and_need_a_content_length() {
    let data = pattern(3000, 53);
    let d2 = data.clone();
    let fake = Fake::start(move |r| match r.target.as_str() {
        "/old" => Resp::new(302, &[("Location", "/new")]),
        "/noloc" => Resp::new(302, &[]),
        "/new" => Resp::new(200, &[]).body(d2.clone()),
        "/chunked" => Resp {
            status: 200,
            headers: vec![("Transfer-Encoding".into(), "chunked".into())],
            body: b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
            close: false,
            trickle: None,
        },
        _ => Resp::new(404, &[]),
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.bin");
    let mut state = DownloadState::new(&Url::parse(&fake.url("/old")).unwrap(), &dest);
    let out = client()
        .download(&mut state, &mut NoObserver)
        .await
        .unwrap();
    assert_eq!(out.bytes, 3000);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    let mut state = DownloadState::new(&Url::parse(&fake.url("/chunked")).unwrap(), &dest);
    let err = client()
        .download(&mut state, &mut NoObserver)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    assert!(err.to_string().contains("BG_E_MISSING_FILE_SIZE"), "{err}");

    let mut state = DownloadState::new(&Url::parse(&fake.url("/gone")).unwrap(), &dest);
    let err = client()
        .download(&mut state, &mut NoObserver)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.kind(), ErrorKind::Fatal);

    // A redirect without Location breaks the protocol: no retry, but nothing says the
    // transfer itself is impossible (a job is kept).
    let mut state = DownloadState::new(&Url::parse(&fake.url("/noloc")).unwrap(), &dest);
    let err = client()
        .download(&mut state, &mut NoObserver)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
}

/// The reply download of an upload-reply job is cut mid-body: the GET is repeated with
/// `Range` + `If-Range` and the 206 completes the reply; Close-Session comes after.
#[tokio::test]
async fn reply_download_resumes_with_range_after_a_cut() {
    let reply = pattern(10_240, 54);
    let r2 = reply.clone();
    let mut gets = 0;
    let (fake, _) = scripted::<Emu>(move |r, e| {
        if r.method == "GET" {
            gets += 1;
            let lm = ("Last-Modified", "Tue, 01 Apr 2025 10:00:00 GMT");
            let etag = ("ETag", "\"r1\"");
            if gets == 1 {
                // Promise 10240 bytes, send 4000, hang up.
                let mut resp = Resp::new(200, &[("Content-Length", "10240"), lm, etag])
                    .body(r2[..4000].to_vec());
                resp.close = true;
                return Some(resp);
            }
            assert_eq!(r.header("Range"), Some("bytes=4000-"));
            assert_eq!(r.header("If-Range"), Some("\"r1\""));
            return Some(
                Resp::new(
                    206,
                    &[("Content-Range", "bytes 4000-10239/10240"), lm, etag],
                )
                .body(r2[4000..].to_vec()),
            );
        }
        if r.packet() == "Fragment" {
            let resp = e.handle(r);
            if e.done {
                let n = e.held.len().to_string();
                return Some(Resp::ack(
                    200,
                    &[
                        ("BITS-Received-Content-Range", &n),
                        ("BITS-Reply-URL", "replies/r.bin"),
                    ],
                ));
            }
            return Some(resp);
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(&dir, "a.bin", &pattern(5000, 55));
    let out_file = dir.path().join("reply.bin");
    let url = Url::parse(&fake.url("/vdir/sub/a.bin")).unwrap();
    let mut state = UploadState::new(&file, &url, 65_536)
        .unwrap()
        .with_reply(&out_file);
    let mut rec = Recorder::default();
    let out = client().upload(&mut state, &mut rec).await.unwrap();
    assert_eq!(std::fs::read(&out_file).unwrap(), reply);
    assert_eq!(out.reply_bytes, Some(10_240));
    assert_eq!(
        fake.sequence(),
        [
            "Create-Session",
            "Fragment",
            "GET /vdir/sub/replies/r.bin",
            "GET /vdir/sub/replies/r.bin",
            "Close-Session"
        ]
    );
    // The reply download was checkpointed inside the upload's state.
    assert!(rec.checkpoints >= 4, "{}", rec.checkpoints);
    assert!(rec.events.iter().any(|e| e.starts_with("reply http://")));
}
