//! The `bits-client` library against a real bitsd: uploads of all shapes, resume across a
//! server restart, a session lost behind the client's back, 413 steering, upload-reply,
//! downloads that resume or restart, Basic auth and client certificates over TLS.
//!
//! The server's log (one `bits packet="Fragment" … range="bytes a-b/n" status=… received=…`
//! line per fragment, one `download method=GET … status=…` line per GET) is the witness for
//! what went over the wire.

use crate::common::pki::{tls_table, Issued, Pki};
use crate::common::*;

use crate::app;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bits_client::{
    Checkpoint, Client, DownloadState, Error, ErrorKind, Event, NoObserver, Observer, RetryPolicy,
    TlsOptions, UploadState, Url,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn client() -> Client {
    client_with(Client::builder())
}

fn client_with(b: bits_client::ClientBuilder) -> Client {
    b.retry(RetryPolicy::quick(20, Duration::from_millis(50)))
        .idle_timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn url(s: &Server, name: &str) -> Url {
    Url::parse(&format!("http://{}/upload/{name}", s.addr)).unwrap()
}

fn local_file(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// One `packet="Fragment"` line of the server log.
#[derive(Debug, Clone, PartialEq)]
struct Frag {
    session: String,
    first: u64,
    last: u64,
    total: u64,
    status: u16,
    received: Option<u64>,
}

/// `name=value` (value up to the next space) or `name="value"`.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next();
    }
    rest.split(' ').next()
}

fn packets<'a>(log: &'a str, packet: &str) -> Vec<&'a str> {
    let needle = format!("packet=\"{packet}\"");
    log.lines().filter(|l| l.contains(&needle)).collect()
}

fn fragment_log(log: &str) -> Vec<Frag> {
    packets(log, "Fragment")
        .into_iter()
        .filter_map(|l| {
            let range = field(l, "range")?.strip_prefix("bytes ")?;
            let (span, total) = range.split_once('/')?;
            let (first, last) = span.split_once('-')?;
            Some(Frag {
                session: field(l, "session")?.to_string(),
                first: first.parse().ok()?,
                last: last.parse().ok()?,
                total: total.parse().ok()?,
                status: field(l, "status")?.parse().ok()?,
                received: field(l, "received").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// Statuses of the GETs of `path`, in order.
fn get_statuses(log: &str, path: &str) -> Vec<u16> {
    log.lines()
        .filter(|l| l.contains("download method=GET") && field(l, "path") == Some(path))
        .filter_map(|l| field(l, "status")?.parse().ok())
        .collect()
}

/// Asserts the fragments of one clean upload: contiguous, all 200, covering `total` bytes.
#[track_caller]
fn assert_contiguous(frags: &[Frag], total: u64) {
    let mut next = 0;
    for f in frags {
        assert_eq!(f.status, 200, "{frags:#?}");
        assert_eq!(f.first, next, "{frags:#?}");
        assert_eq!(f.total, total);
        next = f.last + 1;
        assert_eq!(f.received, Some(next));
    }
    assert_eq!(next, total);
}

async fn upload_and_check(
    s: &Server,
    name: &str,
    data: &[u8],
    frag: u64,
) -> bits_client::UploadOutcome {
    let dir = tempfile::tempdir().unwrap();
    let file = local_file(dir.path(), name, data);
    let mut state = UploadState::new(&file, &url(s, name), frag).unwrap();
    let out = client().upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(std::fs::read(s.upload_path(name)).unwrap(), data, "{name}");
    assert_eq!(out.bytes, data.len() as u64);
    assert_eq!(out.resumed_from, 0);
    assert_eq!(out.restarts, 0);
    assert_eq!(out.retries, 0);
    out
}

/// An observer that runs `f` on every upload checkpoint.
struct OnCheckpoint<F>(F);

impl<F: FnMut(&UploadState) + Send> Observer for OnCheckpoint<F> {
    fn checkpoint(&mut self, state: Checkpoint<'_>) -> std::io::Result<()> {
        if let Checkpoint::Upload(u) = state {
            (self.0)(u);
        }
        Ok(())
    }
}

/// Stops a transfer once `at` bytes are done.
struct StopAt(u64);

impl Observer for StopAt {
    fn event(&mut self, e: &Event<'_>) -> ControlFlow<()> {
        match e {
            Event::Progress { done, .. } if *done >= self.0 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Uploads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_zero_bytes() {
    let s = Server::start("");
    let out = upload_and_check(&s, "empty.bin", b"", 65_536).await;
    assert_eq!(out.fragments, 1);
    let log = s.log_text();
    let frag = packets(&log, "Fragment");
    assert_eq!(frag.len(), 1);
    assert_eq!(field(frag[0], "range"), Some("bytes */0"));
    assert_eq!(field(frag[0], "status"), Some("200"));
    assert_eq!(packets(&log, "Close-Session").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_one_byte() {
    let s = Server::start("");
    let out = upload_and_check(&s, "one.bin", b"x", 65_536).await;
    assert_eq!(out.fragments, 1);
    assert_contiguous(&fragment_log(&s.log_text()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_exactly_one_fragment() {
    let s = Server::start("");
    let data = pattern(65_536, 1);
    let out = upload_and_check(&s, "one-frag.bin", &data, 65_536).await;
    assert_eq!(out.fragments, 1);
    let frags = fragment_log(&s.log_text());
    assert_contiguous(&frags, 65_536);
    assert_eq!(frags.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_many_fragments_and_odd_sizes() {
    let s = Server::start("");
    // 1_000_003 bytes in 64 KiB fragments: 15 full ones and a 16_963-byte tail.
    let data = pattern(1_000_003, 2);
    let out = upload_and_check(&s, "odd.bin", &data, 65_536).await;
    assert_eq!(out.fragments, 16);
    assert_eq!(out.bytes_sent, 1_000_003);
    let frags = fragment_log(&s.log_text());
    assert_contiguous(&frags, 1_000_003);
    assert_eq!(frags.last().map(|f| f.last - f.first + 1), Some(16_963));
    // One byte more than a fragment: a full fragment and a 1-byte one.
    let data = pattern(65_537, 3);
    let out = upload_and_check(&s, "plus-one.bin", &data, 65_536).await;
    assert_eq!(out.fragments, 2);
    // Many small fragments (the protocol minimum, 5 KiB).
    let data = pattern(200_000, 4);
    let out = upload_and_check(&s, "small-frags.bin", &data, 5120).await;
    assert_eq!(out.fragments, 40);
    assert_eq!(packets(&s.log_text(), "Create-Session").len(), 3);
    assert_eq!(packets(&s.log_text(), "Close-Session").len(), 3);
}

/// bitsd is SIGKILLed and restarted while a fragment is on the wire (the client is throttled
/// to 512 KiB/s so that a fragment takes 250 ms). The client sees the connection fail, retries
/// after a Ping, and continues the same session from what the restarted server says it holds:
/// no second Create-Session, no byte below the acknowledged offset again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_server_restarts_mid_upload() {
    const FRAG: u64 = 128 << 10;
    let s = Arc::new(Mutex::new(Server::start("")));
    let (addr, path) = {
        let g = s.lock().unwrap();
        (url(&g, "restart.bin"), g.upload_path("restart.bin"))
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(6 * FRAG as usize, 5);
    let file = local_file(dir.path(), "restart.bin", &data);
    let mut state = UploadState::new(&file, &addr, FRAG).unwrap();
    // The restart happens on another thread, 40 ms into the fragment after the third Ack.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let s2 = s.clone();
    let killer = std::thread::spawn(move || {
        if rx.recv().is_ok() {
            std::thread::sleep(Duration::from_millis(40));
            s2.lock().unwrap().restart();
        }
    });
    let acked_at_restart = Arc::new(Mutex::new(None));
    let at = acked_at_restart.clone();
    let mut observer = OnCheckpoint(move |u: &UploadState| {
        let mut at = at.lock().unwrap();
        if at.is_none() && u.acked >= 3 * FRAG {
            *at = Some(u.acked);
            let _ = tx.send(());
        }
    });
    let c = client_with(Client::builder().upload_rate_limit(Some(512 << 10)));
    let out = c.upload(&mut state, &mut observer).await.unwrap();
    killer.join().unwrap();
    let acked = acked_at_restart.lock().unwrap().expect("restarted");
    let s = s.lock().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert!(out.retries >= 1, "{out:?}");
    assert_eq!(out.restarts, 0);
    let log = s.log_text();
    assert_eq!(packets(&log, "Create-Session").len(), 1, "{log}");
    // Everything the restarted server logged (after its second start) is at or after the
    // offset acknowledged before the restart, and starts with a Ping.
    let second = log
        .match_indices("recovery done")
        .nth(1)
        .expect("restarted")
        .0;
    let after = &log[second..];
    let ping = after
        .find("packet=\"Ping\"")
        .expect("a Ping after the restart");
    let first_frag = after
        .find("packet=\"Fragment\"")
        .expect("fragments after the restart");
    assert!(ping < first_frag, "{after}");
    let frags = fragment_log(after);
    assert!(
        frags.iter().all(|f| f.first >= acked),
        "acked {acked}: {frags:#?}"
    );
    assert!(frags.iter().all(|f| f.session == out.session_id));
    assert_eq!(frags.last().and_then(|f| f.received), Some(6 * FRAG));
}

/// The session disappears on the server (cancelled by someone else): the next fragment gets
/// 500 + BG_E_SESSION_NOT_FOUND, and the client starts over with a new Create-Session from
/// byte 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_session_restarts_from_byte_zero() {
    let s = Server::start("");
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(600_000, 6);
    let file = local_file(dir.path(), "lost.bin", &data);
    let mut state = UploadState::new(&file, &url(&s, "lost.bin"), 100_000).unwrap();
    let addr = s.addr;
    let mut done = false;
    let mut observer = OnCheckpoint(move |u: &UploadState| {
        if !done && u.acked >= 200_000 {
            done = true;
            let sid = u.session.as_ref().unwrap().id.clone();
            Conn::new(addr)
                .cancel("/upload/lost.bin", &sid)
                .assert_ack(200, None);
        }
    });
    let out = client().upload(&mut state, &mut observer).await.unwrap();
    assert_eq!(out.restarts, 1);
    assert_eq!(std::fs::read(s.upload_path("lost.bin")).unwrap(), data);
    let log = s.log_text();
    assert_eq!(packets(&log, "Create-Session").len(), 2);
    let frags = fragment_log(&log);
    let lost = frags.iter().position(|f| f.status == 500).expect("a 500");
    assert!(log.contains("code=0x8020001F"));
    assert_eq!(frags[lost].first, 200_000);
    assert_ne!(frags[lost + 1].session, frags[0].session);
    assert_contiguous(&frags[lost + 1..], 600_000);
}

/// A vdir that takes at most 64 KiB per request answers the client's 1 MiB fragments with 413
/// (0x8019019D); the client halves until the server accepts, and never goes below 5 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrinks_fragments_on_413_from_the_vdir_limit() {
    let s = Server::start("[[vdir]]\nmax_fragment_size = 65536");
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3 << 20, 7);
    let file = local_file(dir.path(), "big.bin", &data);
    let mut state = UploadState::new(&file, &url(&s, "big.bin"), 1 << 20).unwrap();
    let out = client().upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(std::fs::read(s.upload_path("big.bin")).unwrap(), data);
    assert_eq!(out.fragment_size, 65_536);
    let log = s.log_text();
    let frags = fragment_log(&log);
    let refused: Vec<u64> = frags
        .iter()
        .filter(|f| f.status == 413)
        .map(|f| f.last - f.first + 1)
        .collect();
    assert_eq!(refused, [1 << 20, 512 << 10, 256 << 10, 128 << 10]);
    assert!(log.contains("code=0x8019019D"));
    let accepted: Vec<&Frag> = frags.iter().filter(|f| f.status == 200).collect();
    assert!(accepted.iter().all(|f| f.last - f.first < 65_536));
    assert_eq!(accepted.len(), 48);
}

/// Upload-reply against a by-value notifying vdir: the reply (the upload reversed, from the
/// test application) is fetched from BITS-Reply-URL before Close-Session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_reply_fetches_the_reply_then_closes() {
    let app = app::App::start(app::Behaviour::default());
    let s = Server::start(&format!(
        "[[vdir]]\nnotification_type = \"by_value\"\nnotification_url = \"{}\"",
        app.url("/notify")
    ));
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(300_000, 8);
    let file = local_file(dir.path(), "report.bin", &data);
    let reply = dir.path().join("reply.bin");
    let mut state = UploadState::new(&file, &url(&s, "report.bin"), 65_536)
        .unwrap()
        .with_reply(&reply);
    let out = client().upload(&mut state, &mut NoObserver).await.unwrap();
    let mut expected = data.clone();
    expected.reverse();
    assert_eq!(std::fs::read(&reply).unwrap(), expected);
    assert_eq!(out.reply_bytes, Some(300_000));
    assert_eq!(app.count(), 1);
    let reply_url = out.reply_url.clone().expect("reply URL");
    let reply_path = Url::parse(&reply_url).unwrap().path().to_string();
    assert!(
        reply_path.starts_with("/upload/BITS-Sessions/Replies/"),
        "{reply_url}"
    );
    let log = s.log_text();
    assert_eq!(get_statuses(&log, &reply_path), [200]);
    // Order on the wire: last fragment, reply GET, Close-Session.
    let last_frag = log.rfind("packet=\"Fragment\"").unwrap();
    let get = log.find("download method=GET").unwrap();
    let close = log.find("packet=\"Close-Session\"").unwrap();
    assert!(last_frag < get && get < close, "{log}");
    // After Close-Session the reply is gone.
    assert_eq!(s.conn().send("GET", &reply_path, &[], b"").status, 404);
}

// ---------------------------------------------------------------------------------------------
// Downloads

fn publish(s: &Server, name: &str, data: &[u8]) {
    std::fs::create_dir_all(s.root()).unwrap();
    std::fs::write(s.upload_path(name), data).unwrap();
}

/// A download cut after 1 MiB continues with `Range: bytes=<held>-` + `If-Range` (206) and
/// keeps the bytes it had; the file gets the server's time stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_resumes_with_range_and_if_range() {
    let s = Server::start("");
    let data = pattern(3 << 20, 9);
    publish(&s, "dl.bin", &data);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dl.bin");
    let mut state = DownloadState::new(&url(&s, "dl.bin"), &dest);
    let err = client()
        .download(&mut state, &mut StopAt(1 << 20))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    let held = state.received();
    assert!((1 << 20..3 << 20).contains(&held), "{held}");
    assert!(!dest.exists());
    let remote = state.remote.clone().expect("validators kept");
    assert!(remote.etag.is_some() && remote.last_modified.is_some());
    // Resume, as `bits download` does after a restart: from the persisted state.
    let mut state: DownloadState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let out = client()
        .download(&mut state, &mut NoObserver)
        .await
        .unwrap();
    assert_eq!(out.resumed_from, held);
    assert_eq!(out.restarts, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!state.partial_path().exists());
    assert_eq!(get_statuses(&s.log_text(), "/upload/dl.bin"), [200, 206]);
    let server_mtime = std::fs::metadata(s.upload_path("dl.bin"))
        .unwrap()
        .modified()
        .unwrap();
    let local_mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
    let secs =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(local_mtime), secs(server_mtime));
}

/// The remote file changes between the cut and the resume: `If-Range` no longer matches, the
/// server sends the whole new file (200), and the client starts over from byte 0 with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_restarts_when_the_remote_file_changed() {
    let s = Server::start("");
    publish(&s, "chg.bin", &pattern(3 << 20, 10));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("chg.bin");
    let mut state = DownloadState::new(&url(&s, "chg.bin"), &dest);
    let err = client()
        .download(&mut state, &mut StopAt(1 << 20))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    // New content under the same name (new inode, new time stamp, other size).
    let new = pattern((2 << 20) + 17, 11);
    let tmp = s.root().join(".new");
    std::fs::write(&tmp, &new).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(7))
        .unwrap();
    std::fs::rename(&tmp, s.upload_path("chg.bin")).unwrap();
    let out = client()
        .download(&mut state, &mut NoObserver)
        .await
        .unwrap();
    assert_eq!(out.restarts, 1);
    assert_eq!(out.bytes, new.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), new);
    assert_eq!(get_statuses(&s.log_text(), "/upload/chg.bin"), [200, 200]);
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A server with an HTTPS listener; `vdir` holds the vdir's auth keys.
fn tls_server(pki: &Pki, dir: &Path, client_ca: bool, vdir: &str) -> Server {
    let tls = tls_table(dir, pki, client_ca);
    Server::start_with(
        &format!("{tls}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\n{vdir}\n"),
        false,
    )
}

fn https_url(s: &Server, name: &str) -> Url {
    Url::parse(&format!(
        "https://{}/upload/{name}",
        s.tls_addr.expect("tls")
    ))
    .unwrap()
}

fn trusting(pki: &Pki) -> TlsOptions {
    TlsOptions {
        ca_pem: Some(pki.ca.pem().into_bytes()),
        ..TlsOptions::default()
    }
}

/// Basic auth over TLS with a private CA: right credentials upload; wrong or missing ones get
/// a typed authentication error; an untrusted certificate is a typed TLS error unless the
/// caller explicitly accepts any certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_tls() {
    let pki = Pki::new("bits-client test CA");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "alice", "wonderland");
    let s = tls_server(
        &pki,
        dir.path(),
        false,
        &format!(
            "auth = \"basic\"\nrequire_tls = true\nusers_file = \"{}\"",
            users.display()
        ),
    );
    let data = pattern(300_000, 12);
    let file = local_file(dir.path(), "secret.bin", &data);
    let target = https_url(&s, "secret.bin");

    let alice = client_with(
        Client::builder()
            .tls(trusting(&pki))
            .credentials("alice", "wonderland"),
    );
    alice.ping(&target).await.unwrap();
    let mut state = UploadState::new(&file, &target, 65_536).unwrap();
    let out = alice.upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(out.bytes, 300_000);
    assert_eq!(std::fs::read(s.upload_path("secret.bin")).unwrap(), data);
    let log = s.log_text();
    assert!(
        packets(&log, "Fragment")
            .iter()
            .all(|l| l.contains("user=basic:alice")),
        "{log}"
    );

    let other = https_url(&s, "other.bin");
    let fail = |c: Client| {
        let (file, other) = (file.clone(), other.clone());
        async move {
            let mut state = UploadState::new(&file, &other, 65_536).unwrap();
            c.upload(&mut state, &mut NoObserver).await.unwrap_err()
        }
    };
    let wrong = client_with(
        Client::builder()
            .tls(trusting(&pki))
            .credentials("alice", "nope"),
    );
    let err = fail(wrong).await;
    assert!(
        matches!(
            err,
            Error::Auth {
                status: 401,
                had_credentials: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Auth);
    let anonymous = client_with(Client::builder().tls(trusting(&pki)));
    let err = fail(anonymous).await;
    assert!(
        matches!(
            err,
            Error::Auth {
                status: 401,
                had_credentials: false,
                ..
            }
        ),
        "{err:?}"
    );
    // The system roots do not know the test CA.
    let untrusting = client_with(Client::builder().credentials("alice", "wonderland"));
    let err = fail(untrusting).await;
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Auth);
    // Explicitly accepting any certificate works (and is only ever explicit).
    let insecure = client_with(
        Client::builder()
            .tls(TlsOptions {
                accept_invalid_certs: true,
                ..TlsOptions::default()
            })
            .credentials("alice", "wonderland"),
    );
    insecure.ping(&target).await.unwrap();
}

/// A vdir that identifies users by TLS client certificate: the client's certificate gets it in,
/// no certificate is refused at the handshake (a typed TLS error, not a retry loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_over_tls() {
    let pki = Pki::new("bits-client test CA");
    let dir = tempfile::tempdir().unwrap();
    let s = tls_server(&pki, dir.path(), true, "auth = \"client_cert\"");
    let Issued {
        cert_pem: cert,
        key_pem: key,
    } = pki.issue("carol", false, false);
    let data = pattern(100_000, 13);
    let file = local_file(dir.path(), "carol.bin", &data);
    let with_cert = client_with(Client::builder().tls(TlsOptions {
        identity_pem: Some((cert.into_bytes(), key.into_bytes())),
        ..trusting(&pki)
    }));
    let mut state = UploadState::new(&file, &https_url(&s, "carol.bin"), 65_536).unwrap();
    with_cert.upload(&mut state, &mut NoObserver).await.unwrap();
    assert_eq!(std::fs::read(s.upload_path("carol.bin")).unwrap(), data);
    assert!(s.log_text().contains("user=cert:carol"));

    let without = client_with(Client::builder().tls(trusting(&pki)));
    let err = without.ping(&https_url(&s, "x.bin")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
}
