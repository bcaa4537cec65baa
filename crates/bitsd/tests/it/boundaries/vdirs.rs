//! Boundaries: which vdir a request reaches, who may continue a session, where its upload
//! lands, and what cheap requests can exhaust (findings 1, 2, 3, 5, 8 and 9 of issue 14).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{basic, check_config};
use crate::common::pki::{client_config, tls_table, Pki};
use crate::common::*;

const E_ACCESSDENIED: (&str, &str) = ("0x80070005", "0x5");

fn with_auth<'a>(auth: &'a str, h: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("Authorization", auth)];
    v.extend_from_slice(h);
    v
}

/// `/nested/` (anonymous) and `/nested/inner/` (Basic, alice/wonderland), separate roots.
fn nested_server() -> Server {
    Server::start_prepared(
        "[[vdir]]\nprefix = \"/nested/\"\nroot = \"{root}/nested\"\n\
         [[vdir]]\nprefix = \"/nested/inner/\"\nroot = \"{root}/inner\"\nauth = \"basic\"\n\
         users_file = \"{root}/users\"\n",
        false,
        |dir| {
            std::fs::create_dir_all(dir.join("nested")).unwrap();
            std::fs::create_dir_all(dir.join("inner")).unwrap();
            std::fs::write(dir.join("inner/f.txt"), b"protected").unwrap();
            add_user(&dir.join("users"), "alice", "wonderland");
        },
    )
}

/// Finding 1: a percent-encoded letter in a prefix segment got the anonymous vdir's auth and
/// the protected vdir's files. Prefixes are now matched on decoded segments.
#[test]
fn finding1_encoded_prefix_does_not_bypass_auth() {
    let s = nested_server();
    let mut c = s.conn();
    for path in [
        "/nested/%69nner/f.txt",
        "/nested/%49NNER/f.txt",
        "/%6eested/inner/f.txt",
        "/NESTED/INNER/f.txt",
    ] {
        let r = c.send("GET", path, &[], b"");
        assert_eq!(r.status, 401, "GET {path}: {:?}", r.headers);
        let r = c.create(path);
        assert_eq!(r.status, 401, "Create-Session {path}: {:?}", r.headers);
    }
    let auth = basic("alice", "wonderland");
    let r = c.send(
        "GET",
        "/nested/%69nner/f.txt",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"protected"[..]));
    // Encoded separators never split or join segments.
    for path in ["/nested%2Finner/f.txt", "/nested%5Cinner/f.txt"] {
        assert_eq!(c.send("GET", path, &[], b"").status, 404, "{path}");
    }
    assert_eq!(files_below(&s.dir.path().join("inner")).len(), 1);
}

/// Finding 1, config side: roots that overlap across different auth are refused, naming both.
#[test]
fn finding1_check_config_refuses_roots_overlapping_across_auth() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "alice", "wonderland");
    let d = dir.path().display();
    let (ok, err) = check_config(&format!(
        "spool_dir = \"{d}/spool\"\n\
         [[vdir]]\nprefix = \"/nested/\"\nroot = \"{d}/files\"\n\
         [[vdir]]\nprefix = \"/private/\"\nroot = \"{d}/files/inner\"\nauth = \"basic\"\nusers_file = \"{}\"\n",
        users.display()
    ));
    assert!(!ok);
    assert!(
        err.contains("vdir[0].root") && err.contains("vdir[1].root"),
        "{err}"
    );
    // The same policy may share a root.
    let (ok, err) = check_config(&format!(
        "spool_dir = \"{d}/spool\"\n\
         [[vdir]]\nprefix = \"/a/\"\nroot = \"{d}/files\"\n\
         [[vdir]]\nprefix = \"/b/\"\nroot = \"{d}/files/inner\"\n"
    ));
    assert!(ok, "{err}");
}

/// Finding 2: a session continues only through the vdir that created it.
#[test]
fn finding2_sessions_do_not_cross_vdirs() {
    let s = Server::start_prepared(
        "[[vdir]]\nprefix = \"/a/\"\nroot = \"{root}/a\"\n[[vdir]]\nprefix = \"/b/\"\nroot = \"{root}/b\"\n",
        false,
        |dir| {
            std::fs::create_dir_all(dir.join("a")).unwrap();
            std::fs::create_dir_all(dir.join("b")).unwrap();
        },
    );
    let mut c = s.conn();
    let sid = c.create("/a/x.bin").session();
    let data = pattern(2000, 2);
    c.fragment("/b/x.bin", &sid, 0, &data, 2000)
        .assert_ack(403, Some(E_ACCESSDENIED));
    c.close("/b/x.bin", &sid)
        .assert_ack(403, Some(E_ACCESSDENIED));
    c.cancel("/b/x.bin", &sid)
        .assert_ack(403, Some(E_ACCESSDENIED));
    // Untouched: the owner's vdir continues from 0 and publishes into its own root only.
    c.fragment("/a/x.bin", &sid, 0, &data, 2000)
        .assert_ack(200, None);
    c.close("/a/x.bin", &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.dir.path().join("a/x.bin")).unwrap(), data);
    assert!(files_below(&s.dir.path().join("b")).is_empty());
}

/// Finding 2: a session born on a `require_tls` vdir over TLS cannot be finished over plain
/// HTTP through another vdir; and `cert:alice` is not `basic:alice` even on the same vdir
/// (the vdir's auth mode changed across a restart).
#[test]
fn finding2_sessions_keep_their_tls_rule_and_auth_scheme() {
    let pki = Pki::new("boundaries CA");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "alice", "wonderland");
    let tls = tls_table(dir.path(), &pki, true);
    let vdirs = |secure_auth: &str| {
        format!(
            "{tls}\n[[vdir]]\nprefix = \"/secure/\"\nroot = \"{{root}}/secure\"\nrequire_tls = true\n\
             auth = \"{secure_auth}\"\nusers_file = \"{u}\"\n\
             [[vdir]]\nprefix = \"/plain/\"\nroot = \"{{root}}/plain\"\nauth = \"basic\"\nusers_file = \"{u}\"\n",
            u = users.display()
        )
    };
    let mut s = Server::start_prepared(&vdirs("client_cert"), false, |d| {
        std::fs::create_dir_all(d.join("secure")).unwrap();
        std::fs::create_dir_all(d.join("plain")).unwrap();
    });
    let alice_cert = client_config(&pki, Some(&pki.issue("alice", false, false)));
    let mut t = Conn::try_tls(s.tls_addr.unwrap(), alice_cert.clone()).unwrap();
    let sid = t.create("/secure/x.bin").session();
    let data = pattern(3000, 22);
    t.fragment("/secure/x.bin", &sid, 0, &data[..1000], 3000)
        .assert_ack(200, None);

    // The rest of the upload as Basic alice.
    let auth = basic("alice", "wonderland");
    let finish = |c: &mut Conn, path: &str| {
        c.send(
            "BITS_POST",
            path,
            &with_auth(
                &auth,
                &[
                    ("BITS-Packet-Type", "Fragment"),
                    ("BITS-Session-Id", &sid),
                    ("Content-Range", "bytes 1000-2999/3000"),
                ],
            ),
            &data[1000..],
        )
    };
    // Plain HTTP, through the other vdir.
    finish(&mut s.conn(), "/plain/x.bin").assert_ack(403, Some(E_ACCESSDENIED));

    // Same vdir, now Basic: the principal basic:alice is not cert:alice.
    drop(t);
    s.set_extra_config(&vdirs("basic"));
    s.restart();
    // The listener asks every TLS client for a certificate while a client CA is configured.
    let mut b = Conn::try_tls(s.tls_addr.unwrap(), alice_cert).unwrap();
    finish(&mut b, "/secure/x.bin").assert_ack(403, Some(E_ACCESSDENIED));
    assert!(files_below(&s.dir.path().join("secure")).is_empty());
    assert!(files_below(&s.dir.path().join("plain")).is_empty());
    std::mem::forget(dir);
}

/// Finding 3: a user named like the spool directory gets no root there (and cannot read or
/// overwrite session records through uploads or downloads).
#[test]
fn finding3_per_user_root_never_lands_on_the_spool() {
    let s = Server::start_prepared(
        "[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/{user}\"\nauth = \"basic\"\n\
         users_file = \"{root}/users\"\nallow_overwrites = true\n",
        false,
        |dir| {
            add_user(&dir.join("users"), "spool", "pw");
            add_user(&dir.join("users"), "alice", "pw");
        },
    );
    let mut c = s.conn();
    let alice = basic("alice", "pw");
    let r = c.bits(
        "/upload/a.bin",
        "Create-Session",
        &with_auth(&alice, &[("BITS-Supported-Protocols", PROTOCOL)]),
        b"",
    );
    assert_eq!(r.status, 200);
    let sid = r.session();
    let spool = basic("spool", "pw");
    for name in [
        "sessions.redb".to_string(),
        format!("data/{}", spool_name(&sid)),
    ] {
        let r = c.send(
            "GET",
            &format!("/upload/{name}"),
            &[("Authorization", &spool)],
            b"",
        );
        assert_eq!(r.status, 403, "{:?}", String::from_utf8_lossy(&r.body));
        let r = c.bits(
            &format!("/upload/{name}"),
            "Create-Session",
            &with_auth(&spool, &[("BITS-Supported-Protocols", PROTOCOL)]),
            b"",
        );
        r.assert_ack(403, Some(E_ACCESSDENIED));
    }
    assert!(s.log_text().contains("overlaps the spool"));
}

/// Finding 3: the destination is derived from the configuration, never read from the record:
/// a record rewritten on disk to name another root still publishes into the vdir root.
#[test]
fn finding3_a_rewritten_record_cannot_move_the_destination() {
    let mut s = Server::start("");
    let elsewhere = tempfile::tempdir().unwrap();
    let sid = s.conn().create("/upload/x.bin").session();
    let data = pattern(2000, 3);
    s.conn()
        .fragment("/upload/x.bin", &sid, 0, &data[..1000], 2000)
        .assert_ack(200, None);
    let root = elsewhere.path().display().to_string();
    s.with_records(|db| {
        let mut rec = db.get(&sid).expect("record");
        rec["destination"]["root"] = root.into();
        db.put(&rec);
    });
    let mut c = s.conn();
    c.fragment("/upload/x.bin", &sid, 1000, &data[1000..], 2000)
        .assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("x.bin")).unwrap(), data);
    assert!(files_below(elsewhere.path()).is_empty());
    // A path rewritten to climb out is refused, not published.
    let sid = c.create("/upload/y.bin").session();
    s.with_records(|db| {
        let mut rec = db.get(&sid).expect("record");
        rec["destination"]["path"] = "../escaped.bin".into();
        db.put(&rec);
    });
    let mut c = s.conn();
    let r = c.fragment("/upload/y.bin", &sid, 0, &data[..10], 10);
    assert_eq!(r.status, 400, "{:?}", r.headers);
    assert!(!s.dir.path().join("escaped.bin").exists());
}

/// Finding 5: a flood of Create+Cancel from 8 connections (1 000 pairs, five times
/// `max_tombstones`) leaves a spool bounded by the tombstone cap, not by the flood.
#[test]
fn finding5_tombstones_are_bounded() {
    const CAP: usize = 200;
    let s = Server::start(&format!("max_tombstones = {CAP}"));
    std::thread::scope(|scope| {
        for w in 0..8 {
            let s = &s;
            scope.spawn(move || {
                let mut c = s.conn();
                for n in 0..125 {
                    let url = format!("/upload/w{w}-{n}.bin");
                    let sid = c.create(&url).session();
                    c.cancel(&url, &sid).assert_ack(200, None);
                }
            });
        }
    });
    let entries = count_entries(&s.spool().join("sessions"));
    // A tombstone is a directory and its record: at most two entries each, and a few
    // sessions' worth of slack for ones being removed.
    assert!(
        entries <= 2 * CAP + 16,
        "{entries} entries after 1 000 pairs"
    );
}

/// Files and directories below `dir`, recursively (what inodes the spool holds).
fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    1 + if e.file_type().is_ok_and(|t| t.is_dir()) {
                        count_entries(&e.path())
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Finding 5: anonymous sessions are capped per address and in total, leaving room for
/// authenticated clients on another vdir.
#[test]
fn finding5_anonymous_sessions_cannot_lock_out_authenticated_users() {
    let s = Server::start_prepared(
        "max_open_sessions = 6\nmax_anonymous_sessions = 4\nmax_anonymous_sessions_per_ip = 3\n\
         [[vdir]]\nprefix = \"/anon/\"\nroot = \"{root}/anon\"\n\
         [[vdir]]\nprefix = \"/users/\"\nroot = \"{root}/users-files\"\nauth = \"basic\"\nusers_file = \"{root}/users\"\n",
        false,
        |dir| {
            std::fs::create_dir_all(dir.join("anon")).unwrap();
            std::fs::create_dir_all(dir.join("users-files")).unwrap();
            add_user(&dir.join("users"), "alice", "pw");
        },
    );
    let mut c = s.conn();
    for i in 0..3 {
        assert_eq!(c.create(&format!("/anon/{i}")).status, 200);
    }
    let r = c.create("/anon/3");
    assert_eq!(r.status, 503, "per-address cap: {:?}", r.headers);
    let auth = basic("alice", "pw");
    for i in 0..3 {
        let r = c.bits(
            &format!("/users/{i}"),
            "Create-Session",
            &with_auth(&auth, &[("BITS-Supported-Protocols", PROTOCOL)]),
            b"",
        );
        assert_eq!(r.status, 200, "authenticated session {i}: {:?}", r.headers);
    }
}

/// Finding 8: a relative notification URL needs `notification_base` (it would resolve to
/// bitsd itself), and the reply URL never comes from the client's Host header.
#[test]
fn finding8_reply_url_ignores_the_host_header() {
    // A static by-reference/by-value app is not needed: the reply URL is built before the app is
    // asked only for our own replies, so use an app that answers 200 with a body.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in app.incoming().flatten() {
            let mut stream = stream;
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            // Read the head and the declared body, then answer.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    let s = Server::start(&format!(
        "[[vdir]]\nnotification_type = \"by_value\"\nnotification_url = \"http://{app_addr}/app\""
    ));
    let mut c = s.conn();
    let sid = c.create("/upload/r.bin").session();
    let data = pattern(100, 8);
    let mut raw = format!(
        "BITS_POST /upload/r.bin HTTP/1.1\r\nHost: evil.example:8443\r\nBITS-Packet-Type: Fragment\r\n\
         BITS-Session-Id: {sid}\r\nContent-Range: bytes 0-99/100\r\nContent-Length: 100\r\n\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(&data);
    c.write_raw(&raw);
    let r = c.read_response(false);
    assert_eq!(r.status, 200, "{:?}", r.headers);
    let reply = r.header("bits-reply-url").unwrap_or_default().to_string();
    assert!(
        reply.starts_with(&format!("http://{}/upload/", s.addr)),
        "{reply}"
    );
    assert!(!reply.contains("evil"), "{reply}");
}

/// Finding 9: on S3, a vdir root overlapping the session objects is refused, segment by
/// segment.
#[test]
fn finding9_s3_roots_may_not_overlap_the_session_prefix() {
    let s3 = |prefix: &str, root: &str| {
        format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\n\
             access_key = \"a\"\nsecret_key = \"s\"\nprefix = \"{prefix}\"\n\
             [[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}\"\ndownload_enabled = false\n"
        )
    };
    for (prefix, root) in [
        ("spool", "spool"),
        ("spool", "spool/sessions"),
        ("spool", "./spool"),
        ("spool/", "spool//sessions/x"),
        ("", "sessions"),
        ("", ""),
        ("", "./sessions/abc"),
        ("a", "a/./sessions"),
        ("x", "../x/sessions"),
    ] {
        let (ok, err) = check_config(&s3(prefix, root));
        assert!(!ok, "prefix {prefix:?} root {root:?} accepted");
        assert!(err.contains("vdir[0].root"), "{err}");
    }
    for (prefix, root) in [
        ("spool", "uploads"),
        ("spool", "spool/uploads"),
        ("", "sessionsx"),
    ] {
        let (ok, err) = check_config(&s3(prefix, root));
        assert!(ok, "prefix {prefix:?} root {root:?}: {err}");
    }
}

/// Finding 8: one session that cannot be expired does not stop the sweep for the others.
#[test]
fn finding8_one_failing_session_does_not_abort_the_expiry_sweep() {
    let s = Server::start("cleanup_interval = \"1s\"\n[[vdir]]\nsession_timeout = \"1s\"");
    let mut c = s.conn();
    let bad = c.create("/upload/bad.bin").session();
    let good = c.create("/upload/good.bin").session();
    // The data file of one session becomes a non-empty directory: deleting it fails.
    let data = s.session_file(&bad);
    std::fs::remove_file(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("keep"), b"x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _ = &good;
    loop {
        let expired = s
            .log_text()
            .lines()
            .any(|l| l.contains("session expired") && l.contains("destination=good.bin"));
        if expired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "good session never expired:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.log_text().contains("cleanup could not expire a session"));
}
