//! Boundaries: storage. What a local user with write access to a vdir root can plant there
//! (symbolic links, hard links, FIFOs under the server's temporary names; symlinked
//! directories), and what a remote client can make the server hold in memory.

#[allow(unused_imports)]
use crate::common::*;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// The name of the temporary copy the server makes next to a destination for session `sid`
/// when the spool is on another file system.
fn partial_name(sid: &str) -> String {
    format!(".bits-partial-{}", spool_name(sid).replace('-', ""))
}

/// A directory on another file system than the server's temp dir (the spool), or `None`
/// (with a note) when there is none to be had here.
fn other_fs_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let tmp = std::env::temp_dir();
    let (Ok(a), Ok(b)) = (std::fs::metadata(shm), std::fs::metadata(&tmp)) else {
        println!("note: no /dev/shm; cross-file-system case skipped");
        return None;
    };
    if a.dev() == b.dev() {
        println!(
            "note: /dev/shm and {} share a file system; skipped",
            tmp.display()
        );
        return None;
    }
    Some(tempfile::tempdir_in(shm).expect("tempdir in /dev/shm"))
}

/// A server whose vdir root is `root` (download enabled), spool in its own temp dir.
fn server_with_root(root: &Path, extra_top: &str) -> Server {
    Server::start_with(
        &format!(
            "{extra_top}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{}\"\ndownload_enabled = true\n",
            root.display()
        ),
        false,
    )
}

/// Creates a session at `url`, lets `plant` put something under the session's temporary name
/// in `root`, then uploads `data` in one fragment and closes.
fn upload_with_planted(s: &Server, url: &str, data: &[u8], root: &Path, plant: impl FnOnce(&Path)) {
    let mut c = s.conn();
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();
    plant(&root.join(partial_name(&sid)));
    let r = c.fragment(url, &sid, 0, data, data.len() as u64);
    r.assert_ack(200, None);
    c.close(url, &sid).assert_ack(200, None);
}

#[test]
fn planted_partial_name_is_not_followed_when_publishing_across_file_systems() {
    let Some(shm) = other_fs_dir() else { return };
    let root = shm.path().join("root");
    let outside = shm.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let s = server_with_root(&root, "fsync = false");
    assert_ne!(
        std::fs::metadata(s.dir.path()).unwrap().dev(),
        std::fs::metadata(&root).unwrap().dev(),
        "the spool must be on another file system for this test"
    );
    let data = pattern(100_000, 6);

    // A symbolic link to an existing file outside the root: never written through.
    let victim = outside.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    upload_with_planted(&s, "/upload/a.bin", &data, &root, |p| {
        symlink(&victim, p).unwrap()
    });
    assert!(
        std::fs::read(&victim).unwrap() == b"precious",
        "written through the link"
    );
    let m = std::fs::symlink_metadata(root.join("a.bin")).unwrap();
    assert!(m.file_type().is_file(), "published as {:?}", m.file_type());
    assert!(std::fs::read(root.join("a.bin")).unwrap() == data);

    // A dangling one: following it would create a file outside the root.
    let created = outside.join("created");
    upload_with_planted(&s, "/upload/b.bin", &data, &root, |p| {
        symlink(&created, p).unwrap()
    });
    assert!(
        !created.exists(),
        "a file was created through the planted link"
    );
    assert!(std::fs::read(root.join("b.bin")).unwrap() == data);

    // A hard link to someone else's file of exactly the upload's size: not taken for the
    // server's own earlier copy (which would publish that file's bytes, and its inode).
    let victim2 = outside.join("victim2");
    std::fs::write(&victim2, vec![b'x'; data.len()]).unwrap();
    upload_with_planted(&s, "/upload/c.bin", &data, &root, |p| {
        std::fs::hard_link(&victim2, p).unwrap()
    });
    assert!(std::fs::read(&victim2).unwrap() == vec![b'x'; data.len()]);
    assert!(std::fs::read(root.join("c.bin")).unwrap() == data);
    assert_ne!(
        std::fs::metadata(root.join("c.bin")).unwrap().ino(),
        std::fs::metadata(&victim2).unwrap().ino()
    );

    // A FIFO: opening it for writing would block a server thread forever.
    upload_with_planted(&s, "/upload/d.bin", &data, &root, |p| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    });
    assert!(std::fs::read(root.join("d.bin")).unwrap() == data);

    // The server's own copy, cut short by an earlier attempt (0 bytes, as a failed copy
    // leaves it): made again, without calling it someone else's (issue 27).
    upload_with_planted(&s, "/upload/e.bin", &data, &root, |p| {
        std::fs::write(p, b"").unwrap()
    });
    assert!(std::fs::read(root.join("e.bin")).unwrap() == data);
    let log = s.log_text();
    assert_eq!(
        log.matches("removing an unexpected file under the server's temporary name")
            .count(),
        4,
        "{log}"
    );
    assert!(log.contains("copying again over an interrupted copy of ours"));

    // Nothing of the server's own is left in the root.
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"]);
}

#[test]
fn symlinked_directory_is_followed_by_uploads_and_downloads_alike() {
    let s = Server::start_prepared(
        "fsync = false\n[[vdir]]\ndownload_enabled = true",
        true,
        |dir| {
            let root = dir.join("uploads");
            let outside = dir.join("outside");
            std::fs::create_dir_all(root.join("inside")).unwrap();
            std::fs::create_dir_all(root.join("swap")).unwrap();
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
            // Stays inside the root: both may follow it.
            symlink("inside", root.join("link-in")).unwrap();
            // Leave the root: both refuse them.
            symlink(&outside, root.join("link-out")).unwrap();
            symlink("../outside", root.join("link-out-rel")).unwrap();
        },
    );
    let root = s.root();
    let outside = s.dir.path().join("outside");
    let mut c = s.conn();

    for dir in ["link-out", "link-out-rel"] {
        // Uploads: like a missing parent directory.
        let r = c.create(&format!("/upload/{dir}/x.bin"));
        assert_eq!(r.status, 404, "{dir}: {:?}", r.headers);
        // Downloads: not found.
        let g = c.send("GET", &format!("/upload/{dir}/secret.txt"), &[], b"");
        assert_eq!(g.status, 404, "{dir}");
    }
    assert!(!outside.join("x.bin").exists());

    let data = pattern(5000, 7);
    upload(&mut c, "/upload/link-in/y.bin", &data, 5000);
    assert!(std::fs::read(root.join("inside/y.bin")).unwrap() == data);
    let g = c.send("GET", "/upload/link-in/y.bin", &[], b"");
    assert_eq!(g.status, 200);
    assert!(g.body == data);

    // A FIFO planted in the root: not served, and opening it does not hang the server.
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert_eq!(c.send("GET", "/upload/fifo", &[], b"").status, 404);

    // A directory swapped for a link out of the root between Create and the completing
    // fragment: the upload is not published outside.
    let r = c.create("/upload/swap/z.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    std::fs::remove_dir(root.join("swap")).unwrap();
    symlink(&outside, root.join("swap")).unwrap();
    let r = c.fragment("/upload/swap/z.bin", &sid, 0, &data, data.len() as u64);
    assert_ne!(r.status, 200, "published through a swapped link");
    assert!(
        !outside.join("z.bin").exists(),
        "published outside the root"
    );
}

#[test]
fn get_under_a_per_user_root_not_yet_created_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    add_user(&users, "alice", "wonderland");
    let s = Server::start_with(
        &format!(
            "[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/users/{{user}}\"\nauth = \"basic\"\ndownload_enabled = true\nusers_file = \"{}\"\n",
            users.display()
        ),
        false,
    );
    // alice:wonderland
    let auth = "Basic YWxpY2U6d29uZGVybGFuZA==";
    let g = s
        .conn()
        .send("GET", "/upload/a.bin", &[("Authorization", auth)], b"");
    assert_eq!(g.status, 404);
    assert!(!s.dir.path().join("users/alice").exists());
}

/// Reads the server's resident memory now (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn stalled_fragment_bodies_are_held_within_a_server_wide_budget() {
    const CONNS: usize = 1000;
    // Just under the store's 1 MiB write batch: the old code held all of it in memory.
    const SENT: usize = (1 << 20) - 8 * 1024;
    // The default budget (64 MiB).
    let s = Server::start("fsync = false");
    let started = Instant::now();
    let body = pattern(SENT, 8);
    let range = format!("bytes 0-{}/{}", (8 << 20) - 1, 8 << 20);
    let head = |url: &str, sid: &str| {
        format!(
            "BITS_POST {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nBITS-Packet-Type: Fragment\r\nBITS-Session-Id: {sid}\r\nContent-Range: {range}\r\nContent-Length: {}\r\n\r\n",
            8 << 20
        )
    };
    // Four senders side by side keep the test within seconds.
    let conns: Vec<Conn> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (s, body, head) = (&s, &body, &head);
                scope.spawn(move || {
                    (0..CONNS / 4)
                        .map(|i| {
                            let mut c = s.conn();
                            let url = format!("/upload/f{w}-{i}");
                            let r = c.create(&url);
                            r.assert_ack(200, None);
                            c.write_raw(head(&url, &r.session()).as_bytes());
                            c.write_raw(body);
                            c
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    // Let the server take in what was sent: wait until its memory stops growing.
    let mut last = 0;
    let settle = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = rss_kib(s.pid());
        if now <= last || settle.elapsed() > Duration::from_secs(5) {
            break;
        }
        last = now;
    }
    let peak = s.peak_rss_kib();
    println!(
        "{CONNS} stalled fragment bodies of {SENT} bytes: bitsd peak RSS {} MiB ({:.1} s)",
        peak / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(peak < 256 * 1024, "peak RSS {} MiB", peak / 1024);
    drop(conns);
}
