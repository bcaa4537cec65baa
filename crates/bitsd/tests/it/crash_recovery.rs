//! SIGKILL the server at random moments while bits-client uploads, restart it, and check that
//! every upload resumes from the server's `BITS-Received-Content-Range` and lands byte for byte,
//! and that the server never holds fewer bytes than it has acknowledged.
//! `BITS_CRASH_UPLOADS` sets the number of uploads (default 60).

use crate::common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Tally {
    completed: usize,
    /// Acks that reported fewer bytes than an earlier Ack had confirmed.
    lost_acknowledged: Vec<String>,
    /// Sessions the server forgot.
    lost_sessions: Vec<String>,
    /// Published files that differ from what was sent.
    corrupted: Vec<String>,
    retries: usize,
}

/// Watches an upload the way the durability promise is stated: within one session, the
/// acknowledged offset never goes down, and the session is never lost.
struct Witness<'a> {
    path: String,
    session: Option<String>,
    acked: u64,
    tally: &'a Mutex<Tally>,
}

impl bits_client::Observer for Witness<'_> {
    fn checkpoint(&mut self, state: bits_client::Checkpoint<'_>) -> std::io::Result<()> {
        if let bits_client::Checkpoint::Upload(u) = state {
            let session = u.session.as_ref().map(|s| s.id.clone());
            if session.is_some() && session == self.session && u.acked < self.acked {
                let msg = format!(
                    "{}: server reports {} after acknowledging {}",
                    self.path, u.acked, self.acked
                );
                self.tally.lock().unwrap().lost_acknowledged.push(msg);
            }
            self.session = session;
            self.acked = u.acked;
        }
        Ok(())
    }

    fn event(&mut self, event: &bits_client::Event<'_>) -> std::ops::ControlFlow<()> {
        match event {
            bits_client::Event::Retrying { .. } => self.tally.lock().unwrap().retries += 1,
            bits_client::Event::Restarted { error } => {
                let msg = format!("{}: session lost at {} ({error})", self.path, self.acked);
                self.tally.lock().unwrap().lost_sessions.push(msg);
            }
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// Uploads `data` with the bits-client library, which reconnects after every transport failure
/// (Ping, then a fragment from the offset the server reports), as the Windows client does.
fn resilient_upload(addr: SocketAddr, name: &str, data: &[u8], frag: usize, tally: &Mutex<Tally>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, data).unwrap();
    let url = bits_client::Url::parse(&format!("http://{addr}/upload/{name}")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = bits_client::Client::builder()
        .retry(bits_client::RetryPolicy::quick(
            1000,
            Duration::from_millis(20),
        ))
        .connect_timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut state = bits_client::UploadState::new(&file, &url, frag as u64).unwrap();
    let mut witness = Witness {
        path: format!("/upload/{name}"),
        session: None,
        acked: 0,
        tally,
    };
    let upload = async {
        tokio::time::timeout(
            Duration::from_secs(180),
            client.upload(&mut state, &mut witness),
        )
        .await
    };
    match rt.block_on(upload) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{name}: upload failed: {e}"),
        Err(_) => panic!("{name}: no completion within 180 s"),
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing() {
    let uploads: usize = std::env::var("BITS_CRASH_UPLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    const CLIENTS: usize = 4;
    let mut server =
        Server::start("session_lock_timeout = \"2s\"\n[[vdir]]\nallow_overwrites = true");
    let addr = server.addr;
    let root = server.root();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut kills = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
                if done.load(Ordering::SeqCst) {
                    break;
                }
                server.restart();
                kills += 1;
            }
            (server, kills)
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (tally, next, root) = (tally.clone(), next.clone(), root.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + c as u64 * 7919);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= uploads {
                        break;
                    }
                    let size = match i % 10 {
                        0 => 0,
                        1 => 1,
                        _ => rng.below(6 << 20) as usize,
                    };
                    let frag = 1024 + rng.below(256 << 10) as usize;
                    let data = pattern(size, i as u64 + 1);
                    let name = format!("f{i}.bin");
                    resilient_upload(addr, &name, &data, frag, &tally);
                    let mut t = tally.lock().unwrap();
                    match std::fs::read(root.join(&name)) {
                        Ok(got) if got == data => t.completed += 1,
                        Ok(got) => t.corrupted.push(format!(
                            "{name}: {} bytes, expected {}",
                            got.len(),
                            data.len()
                        )),
                        Err(e) if t.lost_acknowledged.is_empty() && t.lost_sessions.is_empty() => t
                            .corrupted
                            .push(format!("{name}: missing after Close ({e})")),
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    done.store(true, Ordering::SeqCst);
    let (mut server, kills) = killer.join().expect("killer");
    let t = tally.lock().unwrap();
    eprintln!(
        "crash test: {uploads} uploads, {kills} SIGKILLs, {} transport retries, {} byte-identical, \
         {} corrupted, {} lost acknowledged, {} lost sessions",
        t.retries,
        t.completed,
        t.corrupted.len(),
        t.lost_acknowledged.len(),
        t.lost_sessions.len()
    );
    assert!(server.is_running(), "server not running at the end");
    assert!(t.corrupted.is_empty(), "corrupted: {:?}", t.corrupted);
    assert!(
        t.lost_acknowledged.is_empty(),
        "lost: {:?}",
        t.lost_acknowledged
    );
    assert!(
        t.lost_sessions.is_empty(),
        "lost sessions: {:?}",
        t.lost_sessions
    );
    assert_eq!(t.completed, uploads);
    assert!(kills >= 20, "only {kills} kills happened");
}

/// A spool written by the previous release (one directory per session: `meta.json`, `data`) as
/// that release left it mid-upload (its record and 1 000 of 3 000 bytes, captured from it): the
/// new binary converts it once at start-up and the client finishes the upload.
#[test]
fn an_old_spool_is_converted_and_its_upload_finishes() {
    let data = pattern(3000, 26);
    let sid = "{C7936523-0ED7-4213-BA0C-6198B65A95F6}";
    let mut server = Server::start("");
    server.kill();
    let old = server
        .spool()
        .join("sessions/c7936523-0ed7-4213-ba0c-6198b65a95f6");
    std::fs::create_dir_all(&old).unwrap();
    let record = format!(
        r#"{{
  "id": "{sid}",
  "vdir": "/upload/",
  "url": "/upload/mid.bin",
  "destination": {{
    "root": "{root}",
    "path": "mid.bin"
  }},
  "owner": null,
  "client": "127.0.0.1",
  "total": 3000,
  "received": 1000,
  "state": "receiving",
  "created_at": 1796646595904,
  "last_activity": 1796646595933,
  "ended_at": null,
  "reply_url": null,
  "app_forbidden": false
}}"#,
        root = server.root().display()
    );
    std::fs::write(old.join("meta.json"), record).unwrap();
    std::fs::write(old.join("data"), &data[..1000]).unwrap();
    // A torn tombstone without data, and a torn record with data, as a power loss left them.
    let sessions = server.spool().join("sessions");
    let torn = sessions.join("6f9619ff-8b86-d011-b42d-00c04fc964ff");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("meta.json"), b"").unwrap();
    std::fs::write(torn.join("data"), b"").unwrap();
    let with_data = sessions.join("7f9619ff-8b86-d011-b42d-00c04fc964ff");
    std::fs::create_dir_all(&with_data).unwrap();
    std::fs::write(with_data.join("meta.json"), b"{\"id\":").unwrap();
    std::fs::write(with_data.join("data"), b"acknowledged?").unwrap();
    server.launch_again();
    assert!(!old.exists(), "the old session directory stays");
    assert!(!torn.exists(), "torn record without data removed");
    assert!(
        with_data.join("data").exists(),
        "data of an unreadable record kept"
    );
    let log = server.log_text();
    assert!(log.contains("torn by a crash"), "{log}");
    assert!(log.contains("spool converted"), "{log}");
    // The client resumes where the old server left it.
    let mut c = server.conn();
    let r = c.fragment("/upload/mid.bin", sid, 0, &data[..1], 3000);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(1000));
    c.fragment("/upload/mid.bin", sid, 1000, &data[1000..], 3000)
        .assert_ack(200, None);
    c.close("/upload/mid.bin", sid).assert_ack(200, None);
    assert_eq!(std::fs::read(server.upload_path("mid.bin")).unwrap(), data);
    // A second start converts nothing again: the session stays closed.
    server.restart();
    server
        .conn()
        .close("/upload/mid.bin", sid)
        .assert_ack(200, None);
}

/// Issue 27: EIO on the destination directory's fsync right after publishing. The completing
/// fragment is answered 500, and the session ends in one state either way: published when the
/// client retransmits (Close 200), or unpublished when it cancels (Cancel 200, the name free
/// again) — also when taking the publication back failed too.
#[test]
fn eio_on_the_publish_fsync_ends_in_one_consistent_state() {
    let data = pattern(70_000, 27);
    for (fault, cancel) in [
        ("publish-dir-fsync", false),
        ("publish-dir-fsync", true),
        ("publish-dir-fsync-no-undo", true),
        ("publish-dir-fsync-no-undo", false),
    ] {
        let s = Server::start_env("", &[("BITSD_TEST_FAULT", fault)]);
        let mut c = s.conn();
        let sid = c.create("/upload/eio.bin").session();
        let r = c.fragment("/upload/eio.bin", &sid, 0, &data, data.len() as u64);
        assert_eq!(r.status, 500, "{fault}: {:?}", r.headers);
        let visible = s.upload_path("eio.bin").exists();
        assert_eq!(visible, fault.ends_with("no-undo"), "{fault}");
        if cancel {
            c.cancel("/upload/eio.bin", &sid).assert_ack(200, None);
            assert!(
                !s.upload_path("eio.bin").exists(),
                "{fault}: published after Cancel\n{}",
                s.log_text()
            );
            // The name is free: a new upload of it succeeds.
            let again = c.create("/upload/eio.bin").session();
            c.fragment("/upload/eio.bin", &again, 0, &data, data.len() as u64)
                .assert_ack(200, None);
            c.close("/upload/eio.bin", &again).assert_ack(200, None);
        } else {
            let r = c.fragment("/upload/eio.bin", &sid, 0, &data, data.len() as u64);
            r.assert_ack(200, None);
            c.close("/upload/eio.bin", &sid).assert_ack(200, None);
        }
        assert_eq!(
            std::fs::read(s.upload_path("eio.bin")).unwrap(),
            data,
            "{fault}"
        );
        assert!(
            files_below(&s.root()).len() == 1,
            "{fault}: {:?}",
            files_below(&s.root())
        );
    }
}
