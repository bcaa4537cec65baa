//! Running out of space: an error Ack (500 + ERROR_DISK_FULL), no file at the destination, and a
//! session that completes once space is back.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

const DISK_FULL: (&str, &str) = ("0x80070070", "0x5");
const FRAG: usize = 256 << 10;

/// A tmpfs of `size` mounted at `dir` (created) for as long as the guard lives; `None` where
/// mounting is not allowed (not root).
fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|st| st.success());
    mounted.then(|| Mount(dir.to_path_buf()))
}

/// Unmounts (lazily: a server may still hold files there) when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Uploads `data` in fragments until the first error Ack, which it returns with the offset.
fn upload_until_error(
    c: &mut Conn,
    sid: &str,
    data: &[u8],
    from: usize,
) -> Option<(usize, Response)> {
    let mut off = from;
    while off < data.len() {
        let end = (off + FRAG).min(data.len());
        let r = c.fragment(
            "/upload/big.bin",
            sid,
            off as u64,
            &data[off..end],
            data.len() as u64,
        );
        if r.status != 200 {
            return Some((off, r));
        }
        off = r.received().expect("received") as usize;
    }
    None
}

#[test]
fn spool_quota_gives_disk_full_and_resumes_after_raise() {
    let mut s = Server::start("spool_quota = 1048576");
    let data = pattern(3 << 20, 7);
    let mut c = s.conn();
    let r = c.create("/upload/big.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    let (at, r) = upload_until_error(&mut c, &sid, &data, 0).expect("quota must stop the upload");
    r.assert_ack(500, Some(DISK_FULL));
    assert_eq!(r.header("bits-session-id"), Some(sid.as_str()));
    assert!(at <= 1 << 20, "stopped at {at}");
    assert!(
        !s.upload_path("big.bin").exists(),
        "no partial file at the destination"
    );

    s.set_extra_config(
        "spool_quota = 16777216\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"",
    );
    s.restart();
    let mut c = s.conn();
    assert!(upload_until_error(&mut c, &sid, &data, at).is_none());
    c.close("/upload/big.bin", &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("big.bin")).unwrap(), data);
}

/// A real ENOSPC: the spool is a 4 MiB tmpfs. Skipped (with a note) where mounting is not allowed.
#[test]
fn enospc_on_a_small_tmpfs_gives_disk_full_and_resumes_after_space_is_freed() {
    let mut mount = None;
    let s = Server::start_prepared("", true, |dir: &Path| {
        mount = mount_tmpfs(&dir.join("spool"), "4m");
    });
    let Some(_mount) = mount else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // Fill most of the spool so the upload runs out of space part-way.
    let filler = s.spool().join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();

    let data = pattern(2 << 20, 11);
    let mut c = s.conn();
    let r = c.create("/upload/big.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    let (at, r) = upload_until_error(&mut c, &sid, &data, 0).expect("the tmpfs must fill up");
    if r.header("bits-error-code") != Some(DISK_FULL.0) {
        panic!("{:?}\n{}", r.headers, s.log_text());
    }
    r.assert_ack(500, Some(DISK_FULL));
    assert!(
        !s.upload_path("big.bin").exists(),
        "no partial file at the destination"
    );

    std::fs::remove_file(&filler).unwrap();
    // The client resumes from where it was refused; the server keeps what it had made durable.
    let mut c = s.conn();
    if let Some((off, r)) = upload_until_error(&mut c, &sid, &data, at) {
        panic!(
            "after freeing space, fragment at {off} got {} {:?}",
            r.status, r.headers
        );
    }
    c.close("/upload/big.bin", &sid).assert_ack(200, None);
    // Published across file systems (tmpfs spool -> disk root), byte for byte.
    assert_eq!(std::fs::read(s.upload_path("big.bin")).unwrap(), data);
    assert!(files_below(&s.root())
        .iter()
        .all(|p| !p.to_string_lossy().contains(".bits-partial-")));
}

/// Issue 30: `/readyz` follows what makes uploads fail on a real 4 MiB tmpfs holding the
/// spool's data directory: 503 while it is full (every fragment would get the disk-full Ack),
/// 200 once space is back, 503 while it is read-only. Skipped (with a note) where mounting is
/// not allowed.
#[test]
fn readiness_follows_a_full_and_a_read_only_spool() {
    let mut mount = None;
    let s = Server::start_prepared(
        "admin = { listen = \"127.0.0.1:0\" }\nmin_free_space = 65536",
        true,
        |dir: &Path| {
            // The data directory only: the session database beside it stays writable, so the
            // file system can be remounted read-only while bitsd runs.
            mount = mount_tmpfs(&dir.join("spool/data"), "4m");
        },
    );
    let Some(_mount) = mount else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data_dir = s.spool().join("data");
    let readyz = || {
        let r = Conn::new(s.admin_addr.expect("admin")).send("GET", "/readyz", &[], b"");
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    assert_eq!(readyz().0, 200);
    // Filled to the last block, as a flood of fragments would leave it.
    let filler = data_dir.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[7u8]).is_ok() {}
    }
    let (status, body) = readyz();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage not ready"), "{body}");
    // What a client meets meanwhile.
    let mut c = s.conn();
    let r = c.create("/upload/full.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    let data = pattern(256 << 10, 3);
    c.fragment("/upload/full.bin", &sid, 0, &data, data.len() as u64)
        .assert_ack(500, Some(DISK_FULL));
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(readyz().0, 200);
    // Read-only (as ext4 remounts itself after an error).
    let remount = |opt: &str| {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&data_dir)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt}");
    };
    remount("ro");
    let (status, body) = readyz();
    remount("rw");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Read-only"), "{body}");
    assert_eq!(readyz().0, 200);
}
