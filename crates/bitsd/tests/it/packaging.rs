//! The Debian maintainer scripts (`packaging/debian/postinst`, `postrm`) run as root on every
//! install, upgrade and purge, over `/var/lib/bitsd`, which belongs to the service user. These
//! tests run the real scripts with `sh` in a temporary tree (`BITSD_PKG_ROOT`) with a throwaway
//! system user (`BITSD_PKG_USER`), let that user plant links as it could on a real machine, and
//! check that root never chowns, chmods or deletes through them (security review finding 2).
//! They need root, as the suite does.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A system user and its group, made for one test and deleted when it ends, also on failure.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn new() -> TempUser {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let name = format!("bitst{:08x}", h.finish() as u32);
        let ok = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
            .arg(&name)
            .status()
            .expect("useradd")
            .success();
        assert!(ok, "useradd {name} failed (the suite runs as root)");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        TempUser { name, uid, gid }
    }

    /// `sh -c script` as this user, without root's groups: what the service itself could do.
    fn sh(&self, script: &str, args: &[&Path]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .args(["sh", "-c", script, "sh"])
            .args(args)
            .output()
            .expect("setpriv")
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removes the user's own group when nothing else uses it; make sure.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A temporary tree standing for `/`, with the files the package ships (`/etc/bitsd`).
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        // The service user must be able to walk down to /var/lib/bitsd, as on a real system.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc/bitsd")).unwrap();
        std::fs::write(dir.path().join("etc/bitsd/bitsd.toml"), "").unwrap();
        Tree { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn state(&self) -> PathBuf {
        self.path("var/lib/bitsd")
    }

    /// Runs `packaging/debian/<script> <arg>` as root in this tree.
    fn run(&self, script: &str, arg: &str, user: &TempUser) -> Output {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packaging/debian")
            .join(script);
        Command::new("sh")
            .arg(file)
            .arg(arg)
            .env("BITSD_PKG_ROOT", self.dir.path())
            .env("BITSD_PKG_USER", &user.name)
            .output()
            .expect("sh")
    }

    /// A directory of root's (mode 0755) holding `passwd`: what a link into `/etc` would reach.
    fn stand_in(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        dir
    }
}

fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn configure_fresh(tree: &Tree, user: &TempUser) {
    let out = tree.run("postinst", "configure", user);
    assert!(out.status.success(), "first configure: {}", text(&out));
    for dir in ["", "/spool", "/uploads"] {
        let p = PathBuf::from(format!("{}{dir}", tree.state().display()));
        assert_eq!(
            owner_mode(&p),
            (user.uid, user.gid, 0o750),
            "{}",
            p.display()
        );
    }
    assert_eq!(owner_mode(&tree.path("etc/bitsd")), (0, user.gid, 0o750));
    assert_eq!(
        owner_mode(&tree.path("etc/bitsd/bitsd.toml")),
        (0, user.gid, 0o640)
    );
}

/// The upgrade path: the service user replaces `uploads` (then `spool`) with a link to a
/// directory of root's, or with a file; the next `configure` refuses, says what to do, and
/// leaves the link's target exactly as it was. The old script chowned it to the service user.
#[test]
fn finding2_postinst_never_chowns_through_a_link_the_service_user_planted() {
    let user = TempUser::new();
    let tree = Tree::new();
    configure_fresh(&tree, &user);
    let etc = tree.stand_in("etc-stand-in");
    let before = (
        owner_mode(&etc),
        owner_mode(&etc.join("passwd")),
        std::fs::read(etc.join("passwd")).unwrap(),
    );
    let uploads = tree.state().join("uploads");
    let planted = user.sh(r#"rm -r "$1" && ln -s "$2" "$1""#, &[&uploads, &etc]);
    assert!(planted.status.success(), "{}", text(&planted));

    let out = tree.run("postinst", "configure", &user);
    let said = text(&out);
    let after = (
        owner_mode(&etc),
        owner_mode(&etc.join("passwd")),
        std::fs::read(etc.join("passwd")).unwrap(),
    );
    assert_eq!(after, before, "the link's target changed: {said}");
    assert!(!out.status.success(), "configure went on: {said}");
    assert!(
        said.contains(&format!("{} is a symbolic link", uploads.display()))
            && said.contains("dpkg --configure bitsd"),
        "{said}"
    );
    assert_eq!(std::fs::read_link(&uploads).unwrap(), etc);

    // A file in place of a directory is refused too, and a missing directory is made again.
    let spool = tree.state().join("spool");
    let planted = user.sh(
        r#"rm -r "$1" && rm "$2" && mkdir "$2" && echo x > "$1""#,
        &[&spool, &uploads],
    );
    assert!(planted.status.success(), "{}", text(&planted));
    let out = tree.run("postinst", "configure", &user);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "{} is a symbolic link or not a directory",
            spool.display()
        )),
        "{}",
        text(&out)
    );
    std::fs::remove_file(&spool).unwrap();
    std::fs::remove_dir(&uploads).unwrap();
    let out = tree.run("postinst", "configure", &user);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(owner_mode(&spool), (user.uid, user.gid, 0o750));
    assert_eq!(owner_mode(&uploads), (user.uid, user.gid, 0o750));
}

/// Purge deletes the spool, and only the spool: not what a link named `spool` points to, nor
/// a `spool` found through a linked `/var/lib/bitsd` (the old script deleted that one).
#[test]
fn finding2_postrm_purge_never_deletes_through_a_link() {
    let user = TempUser::new();

    // /var/lib/bitsd itself a link (only root could make it one, but purge must not care).
    let tree = Tree::new();
    configure_fresh(&tree, &user);
    let other = tree.path("other-state");
    std::fs::create_dir_all(other.join("spool")).unwrap();
    std::fs::write(other.join("spool/keep"), "keep").unwrap();
    std::fs::remove_dir_all(tree.state()).unwrap();
    std::os::unix::fs::symlink(&other, tree.state()).unwrap();
    let out = tree.run("postrm", "purge", &user);
    let said = text(&out);
    assert!(
        other.join("spool/keep").exists(),
        "deleted through the link: {said}"
    );
    assert!(!out.status.success(), "purge went on: {said}");
    assert!(
        said.contains(&format!("{} is a symbolic link", tree.state().display())),
        "{said}"
    );

    // The service user links `spool` to a tree of root's.
    let tree = Tree::new();
    configure_fresh(&tree, &user);
    let other = tree.stand_in("elsewhere");
    let spool = tree.state().join("spool");
    let planted = user.sh(r#"rm -r "$1" && ln -s "$2" "$1""#, &[&spool, &other]);
    assert!(planted.status.success(), "{}", text(&planted));
    let out = tree.run("postrm", "purge", &user);
    let said = text(&out);
    assert!(!out.status.success(), "purge went on: {said}");
    assert!(
        said.contains(&format!("{} is a symbolic link", spool.display()))
            && said.contains("dpkg --purge bitsd"),
        "{said}"
    );
    assert!(other.join("passwd").exists(), "{said}");

    // Without links: the spool goes, published uploads and the state directory stay.
    let tree = Tree::new();
    configure_fresh(&tree, &user);
    std::fs::write(tree.state().join("spool/partial"), "x").unwrap();
    std::fs::write(tree.state().join("uploads/published.bin"), "x").unwrap();
    let out = tree.run("postrm", "purge", &user);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!tree.state().join("spool").exists());
    assert!(tree.state().join("uploads/published.bin").exists());
}

/// Issue 30: the packages' `changelog.Debian.gz` comes from `packaging/debian/changelog`, whose
/// newest entry must name the version `cargo deb` gives both packages (lintian and
/// `apt changelog` read it), and a maintainer address lintian accepts (not `@localhost`).
#[test]
fn the_debian_changelog_names_the_workspace_version() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/debian");
    let changelog = std::fs::read_to_string(dir.join("changelog")).unwrap();
    let first = changelog.lines().next().unwrap_or_default();
    let expected = format!(
        "bitsd ({}-1) unstable; urgency=medium",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        first, expected,
        "bump packaging/debian/changelog with the version"
    );
    let trailer = changelog
        .lines()
        .find(|l| l.starts_with(" -- "))
        .unwrap_or_default();
    assert!(
        trailer.starts_with(" -- bitsd maintainers <maintainers@bitsd.invalid>  "),
        "{trailer}"
    );
    for manifest in [
        "../../crates/bitsd/Cargo.toml",
        "../../crates/bits-client/Cargo.toml",
    ] {
        let toml =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest)).unwrap();
        assert!(
            toml.contains("maintainer = \"bitsd maintainers <maintainers@bitsd.invalid>\""),
            "{manifest}"
        );
        assert!(!toml.contains("@localhost"), "{manifest}");
    }
    let copyright = std::fs::read_to_string(dir.join("copyright")).unwrap();
    assert!(copyright.starts_with(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    ));
}
