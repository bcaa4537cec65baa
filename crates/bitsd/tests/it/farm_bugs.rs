//! Issue 15, completion and naming bugs: the reply path's copy leaving `.bits-partial-<id>`
//! behind across file systems, `upload_completed` on notification vdirs, a crash between the
//! S3 commit and the record, and object keys that are the names the clients uploaded.

use crate::common::*;
use crate::{app, seaweed};

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

fn start(config: &str) -> Server {
    Server::start_with(config, false)
}

/// Starts a server that SIGKILLs itself right after its first `commit` (test-only fault point,
/// set for that process only).
fn start_crashing_after_commit(config: &str) -> Server {
    Server::start_full(
        config,
        false,
        &[("BITSD_TEST_CRASH_AFTER", "commit")],
        &[],
        |_| {},
    )
}

/// A directory on another file system than the temp dir (where the spool is), if any.
fn other_fs_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let (Ok(a), Ok(b)) = (
        std::fs::metadata(shm),
        std::fs::metadata(std::env::temp_dir()),
    ) else {
        println!("note: no /dev/shm; cross-file-system case skipped");
        return None;
    };
    if a.dev() == b.dev() {
        println!("note: /dev/shm shares the temp dir's file system; skipped");
        return None;
    }
    Some(tempfile::tempdir_in(shm).expect("tempdir in /dev/shm"))
}

fn hooks_toml(events: &Path) -> String {
    format!(
        "[vdir.hooks]\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\nevents = [\"upload_completed\"]\n",
        events.display()
    )
}

/// The `upload_completed` events appended to `file`, once `want` have arrived (or the wait
/// is over), and after a pause in which no more may come.
fn completed_events(file: &Path, want: usize) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .filter(|e: &serde_json::Value| e["event"] == "upload_completed")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while read().len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    read()
}

/// Creates a session and sends `data` in two fragments; returns the id and the last Ack.
fn upload_two(c: &mut Conn, url: &str, data: &[u8]) -> (String, Response) {
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();
    let half = data.len() / 2;
    let total = data.len() as u64;
    c.fragment(url, &sid, 0, &data[..half], total)
        .assert_ack(200, None);
    let last = c.fragment(url, &sid, half as u64, &data[half..], total);
    (sid, last)
}

fn bucket_client(weed: &seaweed::SeaweedFs) -> object_store::aws::AmazonS3 {
    weed.client()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn s3_config(weed: &seaweed::SeaweedFs, vdir_extra: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"spool\"\n\
         access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = false\n{vdir_extra}",
        weed.endpoint, weed.bucket
    )
}

/// Notification with `BITS-Copy-File-To-Destination`, the root on another file system than
/// the spool: the published file is there, the server's `.bits-partial-<id>` copy is not, and
/// exactly one `upload_completed` is delivered (a retransmit adds none). Without the copy, the
/// completion fires once too, and nothing appears at the destination.
#[test]
fn notification_copy_across_file_systems_releases_the_partial_and_reports_once() {
    let Some(shm) = other_fs_dir() else { return };
    let root = shm.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let events_dir = tempfile::tempdir().unwrap();
    let events = events_dir.path().join("events.jsonl");
    let application = app::App::start(app::Behaviour {
        copy: Some("true".into()),
        ..app::Behaviour::default()
    });
    let s = start(&format!(
        "[[vdir]]\nprefix = \"/upload/\"\nroot = \"{}\"\nnotification_type = \"by_value\"\n\
         notification_url = \"{}\"\n{}",
        root.display(),
        application.url("/notify"),
        hooks_toml(&events)
    ));
    assert_ne!(
        std::fs::metadata(s.spool()).unwrap().dev(),
        std::fs::metadata(&root).unwrap().dev(),
        "the spool must be on another file system for this test"
    );
    let mut c = s.conn();
    let data = pattern(200_000, 1501);
    let (sid, last) = upload_two(&mut c, "/upload/copied.bin", &data);
    last.assert_ack(200, None);
    let reply_url = last
        .header("bits-reply-url")
        .expect("reply url")
        .to_string();
    assert!(std::fs::read(root.join("copied.bin")).unwrap() == data);
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["copied.bin".to_string()], "left in the root");
    // A retransmitted last fragment: the same answer, no second event, no second call.
    let half = data.len() / 2;
    let again = c.fragment(
        "/upload/copied.bin",
        &sid,
        half as u64,
        &data[half..],
        data.len() as u64,
    );
    again.assert_ack(200, None);
    assert_eq!(again.header("bits-reply-url"), Some(reply_url.as_str()));
    let got = completed_events(&events, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["destination"], "copied.bin");
    assert_eq!(got[0]["size"], data.len());
    assert_eq!(application.count(), 1);
    c.close("/upload/copied.bin", &sid).assert_ack(200, None);

    // Without the copy: completed once, nothing published.
    application.set(|b| b.copy = None);
    let (sid, last) = upload_two(&mut c, "/upload/kept.bin", &data);
    last.assert_ack(200, None);
    assert!(!root.join("kept.bin").exists());
    c.close("/upload/kept.bin", &sid).assert_ack(200, None);
    let got = completed_events(&events, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["destination"], "kept.bin");
}

/// On S3 with notification and copy, the process dies right after `commit` (which deletes the
/// fragment objects) and before the record says so. After a restart the retransmitted last
/// fragment gets the success Ack and the same reply, the application is not asked again, the
/// object is in the bucket and one `upload_completed` is delivered.
#[test]
fn s3_crash_between_commit_and_record_is_finished_by_the_retransmit() {
    let weed = seaweed::SeaweedFs::start("bits-crash");
    let events_dir = tempfile::tempdir().unwrap();
    let events = events_dir.path().join("events.jsonl");
    let application = app::App::start(app::Behaviour {
        copy: Some("true".into()),
        ..app::Behaviour::default()
    });
    let config = s3_config(
        &weed,
        &format!(
            "notification_type = \"by_value\"\nnotification_url = \"{}\"\n{}",
            application.url("/notify"),
            hooks_toml(&events)
        ),
    );
    let mut s = start_crashing_after_commit(&config);
    let url = "/upload/crash.bin";
    let data = pattern(300_000, 1503);
    let total = data.len() as u64;
    let half = data.len() / 2;
    let mut c = s.conn();
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();
    c.fragment(url, &sid, 0, &data[..half], total)
        .assert_ack(200, None);
    let range = format!("bytes {half}-{}/{total}", total - 1);
    let headers = [
        ("BITS-Packet-Type", "Fragment"),
        ("BITS-Session-Id", sid.as_str()),
        ("Content-Range", range.as_str()),
    ];
    let died = Conn::new(s.addr).try_send("BITS_POST", url, &headers, &data[half..]);
    assert!(died.is_err(), "the fault point did not stop the server");
    // The socket closes as the process exits, a moment before it can be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!s.is_running(), "bitsd still runs after the fault point");
    s.kill();
    // The application answered once; the parts are gone, the record is not yet complete.
    assert_eq!(application.count(), 1);
    let store = bucket_client(&weed);
    assert!(
        block_on(store.head(&ObjectPath::parse("uploads/crash.bin").unwrap())).is_ok(),
        "commit ran before the crash"
    );

    s.clear_env();
    s.restart();
    let r = Conn::new(s.addr).send("BITS_POST", url, &headers, &data[half..]);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(total));
    let reply_url = r.header("bits-reply-url").expect("reply url").to_string();
    assert!(reply_url.ends_with(&format!(
        "/upload/BITS-Sessions/Replies/{}/responsefile.bin",
        spool_name(&sid)
    )));
    let reply_path = format!("/{}", reply_url.splitn(4, '/').nth(3).unwrap());
    let g = Conn::new(s.addr).send("GET", &reply_path, &[], b"");
    assert_eq!(g.status, 200);
    let reversed: Vec<u8> = data.iter().rev().copied().collect();
    assert!(g.body == reversed, "the reply stored before the crash");
    // Once more: still the same answer.
    let r2 = Conn::new(s.addr).send("BITS_POST", url, &headers, &data[half..]);
    r2.assert_ack(200, None);
    assert_eq!(r2.header("bits-reply-url"), Some(reply_url.as_str()));
    assert_eq!(application.count(), 1, "the application was asked again");
    let got = completed_events(&events, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["size"], data.len());
    let stored = block_on(async {
        store
            .get(&ObjectPath::parse("uploads/crash.bin").unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert!(stored == data[..]);
    Conn::new(s.addr).close(url, &sid).assert_ack(200, None);
}

/// Published keys are the decoded names, as a plain S3 listing shows them; a name whose key
/// would pass S3's 1 024 bytes is refused at Create-Session with 400, and nothing is stored.
#[test]
fn s3_keys_are_the_raw_names_and_overlong_ones_are_refused_at_create() {
    let weed = seaweed::SeaweedFs::start("bits-names");
    let s = start(&s3_config(&weed, ""));
    let mut c = s.conn();
    let names = [
        ("~tilde", "~tilde"),
        ("a%7Bb%7D", "a{b}"),
        ("100%25%20done", "100% done"),
        ("with%20space.txt", "with space.txt"),
        ("%C3%A9t%C3%A9-%E6%97%A5%E6%9C%AC.bin", "été-日本.bin"),
    ];
    for (i, (sent, _)) in names.iter().enumerate() {
        let url = format!("/upload/{sent}");
        let sid = upload(&mut c, &url, &pattern(1000 + i, 1505 + i as u64), 600);
        c.close(&url, &sid).assert_ack(200, None);
    }
    // A second upload to a raw name is refused: the existing object is found by that name.
    let again = c.create("/upload/~tilde");
    assert!(again.status >= 400, "{:?}", again.headers);

    // 1 024 bytes of key with the root `uploads/`: fits; one byte more does not.
    let seg = "k".repeat(200);
    let name = format!("{seg}/{seg}/{seg}/{seg}/{}", "k".repeat(1024 - 8 - 4 * 201));
    assert_eq!("uploads/".len() + name.len(), 1024);
    let fits = format!("/upload/{name}");
    let r = c.create(&fits);
    r.assert_ack(200, None);
    c.cancel(&fits, &r.session()).assert_ack(200, None);
    c.create(&format!("{fits}x"))
        .assert_ack(400, Some(E_INVALIDARG));
    // Two-byte characters count twice: 511 characters, 1 027 bytes of key.
    let wide_seg = "%C3%A9".repeat(127);
    let wide = format!("/upload/{wide_seg}/{wide_seg}/{wide_seg}/{wide_seg}");
    c.create(&wide).assert_ack(400, Some(E_INVALIDARG));

    let store = bucket_client(&weed);
    let mut listed: Vec<String> = block_on(
        store
            .list(Some(&ObjectPath::parse("uploads").unwrap()))
            .map_ok(|m| m.location.to_string())
            .try_collect(),
    )
    .unwrap();
    listed.sort();
    let mut want: Vec<String> = names
        .iter()
        .map(|(_, raw)| format!("uploads/{raw}"))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    for (i, (_, raw)) in names.iter().enumerate() {
        let got = block_on(async {
            store
                .get(&ObjectPath::parse(format!("uploads/{raw}")).unwrap())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        assert!(got == pattern(1000 + i, 1505 + i as u64)[..], "{raw}");
    }
}
