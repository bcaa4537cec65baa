//! `bitsd check-config`: every kind of broken config exits non-zero with a message that names
//! the bad key, and the example configs in `packaging/config/` pass.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bitsd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitsd"));
    // Messages only: no backtraces, no config taken from the environment.
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("BITSD_CONFIG")
        .env_remove("BITSD_LOG");
    cmd
}

/// `bitsd check-config --config PATH`, its stderr without the warning about this machine's
/// open-file limit (it depends on where the tests run; `fd_limit_that_cannot_hold_max_connections_is_warned_about`
/// checks it under a limit it sets).
fn check(path: &Path) -> Output {
    let mut out = bitsd()
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .output()
        .expect("running bitsd check-config");
    out.stderr = text(&out.stderr)
        .lines()
        .filter(|l| !l.contains("does not fit the open-file limit"))
        .flat_map(|l| [l, "\n"])
        .collect::<String>()
        .into_bytes();
    out
}

/// Issue 30: check-config warns when the hard open-file limit (what `serve` raises to) cannot
/// hold `max_connections` connections with a file each, and says what `serve` would do.
#[test]
fn fd_limit_that_cannot_hold_max_connections_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bitsd.toml");
    let check_under_256 = |config: &str| {
        std::fs::write(&path, config).unwrap();
        Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_bitsd"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("prlimit")
    };
    let out = check_under_256("max_connections = 1000\n");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("max_connections = 1000 does not fit the open-file limit here (256 descriptors): bitsd would serve at most 112 connections at once"),
        "{stderr}"
    );
    let out = check_under_256("max_connections = 100\n");
    assert!(
        !text(&out.stderr).contains("open-file limit"),
        "{}",
        text(&out.stderr)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/config")
}

/// A server certificate and key in `dir` (cert.pem, key.pem).
fn write_cert(dir: &Path) {
    let pki = common::pki::Pki::new("check-config test CA");
    let server = pki.issue("bitsd check-config", true, false);
    std::fs::write(dir.join("cert.pem"), server.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), server.key_pem).unwrap();
}

/// (case name, TOML with `{d}` standing for the temp dir, strings stderr must contain).
const BROKEN: &[(&str, &str, &[&str])] = &[
    (
        "unknown top-level key",
        "listen = \"127.0.0.1:8080\"\nspool_directory = \"/var/lib/bitsd/spool\"\n",
        &["spool_directory", "unknown field"],
    ),
    (
        "unknown key in the second vdir",
        "[[vdir]]\nprefix = \"/a/\"\n[[vdir]]\nprefix = \"/b/\"\nuplod_enabled = true\n",
        &["vdir[1].uplod_enabled", "unknown field"],
    ),
    (
        "unknown key in [tls]",
        "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\ncertificate = \"x\"\n",
        &["tls.certificate", "unknown field"],
    ),
    (
        "wrong type: string for a boolean",
        "fsync = \"yes\"\n",
        &["`fsync`", "expected a boolean"],
    ),
    (
        "wrong type: string for a vdir size",
        "[[vdir]]\nmax_upload_size = \"10GB\"\n",
        &["vdir[0].max_upload_size", "expected u64"],
    ),
    (
        "bad duration",
        "[[vdir]]\nsession_timeout = \"forever\"\n",
        &["vdir[0].session_timeout", "duration"],
    ),
    (
        "bad enum value",
        "[[vdir]]\nauth = \"kerberos\"\n",
        &["vdir[0].auth", "kerberos"],
    ),
    (
        "listen address without a port",
        "listen = \"0.0.0.0\"\n",
        &["`listen`", "socket address"],
    ),
    (
        "tls.listen that is a host name",
        "[tls]\nlisten = \"localhost:8443\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n",
        &["tls.listen", "socket address"],
    ),
    (
        "vdir prefix without slashes",
        "[[vdir]]\nprefix = \"upload\"\n",
        &["vdir[0].prefix", "\"upload\""],
    ),
    (
        "vdir prefix with '..'",
        "[[vdir]]\nprefix = \"/up/../x/\"\n",
        &["vdir[0].prefix"],
    ),
    (
        "duplicate prefix (case-insensitive)",
        "[[vdir]]\nprefix = \"/logs/\"\nroot = \"{d}/a\"\n[[vdir]]\nprefix = \"/LOGS/\"\nroot = \"{d}/b\"\n",
        &["vdir[1].prefix", "\"/LOGS/\"", "twice"],
    ),
    (
        "spool inside a vdir root",
        "spool_dir = \"{d}/up/spool\"\n[[vdir]]\nroot = \"{d}/up\"\n",
        &["spool_dir", "vdir[0].root"],
    ),
    (
        "vdir root inside the spool",
        "spool_dir = \"{d}/spool\"\n[[vdir]]\nprefix = \"/a/\"\nroot = \"{d}/a\"\n[[vdir]]\nprefix = \"/b/\"\nroot = \"{d}/spool/b\"\n",
        &["spool_dir", "vdir[1].root"],
    ),
    (
        "hook webhook URL not absolute",
        "[[vdir]]\n[vdir.hooks]\nwebhook_url = \"intake/events\"\n",
        &["vdir[0].hooks.webhook_url"],
    ),
    (
        "hook command empty",
        "[[vdir]]\n[vdir.hooks]\ncommand = []\n",
        &["vdir[0].hooks.command"],
    ),
    (
        "hook with zero attempts",
        "[[vdir]]\n[vdir.hooks]\nwebhook_url = \"http://127.0.0.1:9/x\"\nmax_attempts = 0\n",
        &["vdir[0].hooks.max_attempts"],
    ),
    (
        "unknown hook event",
        "[[vdir]]\n[vdir.hooks]\nevents = [\"upload_started\"]\n",
        &["vdir[0].hooks.events", "upload_started"],
    ),
    (
        "admin listen without a port",
        "[admin]\nlisten = \"127.0.0.1\"\n",
        &["admin.listen"],
    ),
    (
        "zero max_fragment_size",
        "[[vdir]]\nmax_fragment_size = 0\n",
        &["vdir[0].max_fragment_size"],
    ),
    (
        "by_reference without notification_url",
        "[[vdir]]\nnotification_type = \"by_reference\"\n",
        &["vdir[0].notification_url", "notification_type"],
    ),
    (
        "https notification_url",
        "[[vdir]]\nnotification_type = \"by_value\"\nnotification_url = \"https://app.example/receipt\"\n",
        &["vdir[0].notification_url", "http://"],
    ),
    (
        "public_url with a path",
        "public_url = \"https://bits.example.com/upload\"\n",
        &["public_url", "without a path"],
    ),
    (
        "public_url without a scheme",
        "public_url = \"bits.example.com\"\n",
        &["public_url"],
    ),
    (
        "host_id with a space",
        "[[vdir]]\nhost_id = \"node 1\"\n",
        &["vdir[0].host_id"],
    ),
    (
        "cleanup_interval below one second",
        "cleanup_interval = \"0s\"\n",
        &["cleanup_interval"],
    ),
    (
        "tls with a missing certificate file",
        "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{d}/missing.pem\"\nkey = \"{d}/key.pem\"\n",
        &["tls.cert", "missing.pem"],
    ),
    (
        "tls with a missing client CA file",
        "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\nclient_ca = \"{d}/nope.pem\"\n",
        &["tls.client_ca", "nope.pem"],
    ),
    (
        "tls certificate file that holds no certificate",
        "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{d}/key.pem\"\nkey = \"{d}/key.pem\"\n",
        &["tls.cert", "no certificate"],
    ),
    (
        "tls without key",
        "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{d}/cert.pem\"\n",
        &["tls", "missing field `key`"],
    ),
    (
        "s3 backend without bucket",
        "[storage]\nbackend = \"s3\"\naccess_key = \"a\"\nsecret_key = \"s\"\n[[vdir]]\ndownload_enabled = false\n",
        &["storage", "missing field `bucket`"],
    ),
    (
        "azure backend with two credential sources",
        "[storage]\nbackend = \"azure\"\naccount = \"a\"\ncontainer = \"bits\"\naccess_key = \"a2V5\"\n\
         use_azure_identity = true\n",
        &["azure", "exactly one of access_key, sas_token and use_azure_identity"],
    ),
    (
        "azure backend with an invalid container name",
        "[storage]\nbackend = \"azure\"\naccount = \"a\"\ncontainer = \"Bits_1\"\nsas_token = \"sv=1&sig=x\"\n",
        &["azure", "container \"Bits_1\""],
    ),
    (
        "azure backend with by-reference notification (needs local files)",
        "[storage]\nbackend = \"azure\"\naccount = \"a\"\ncontainer = \"bits\"\nuse_azure_identity = true\n\
         [[vdir]]\nnotification_type = \"by_reference\"\nnotification_url = \"http://127.0.0.1:1/\"\n",
        &["vdir[0]", "by_reference", "backend = \"azure\""],
    ),
    (
        "azure root inside the session blobs",
        "[storage]\nbackend = \"azure\"\naccount = \"a\"\ncontainer = \"bits\"\nprefix = \"spool\"\n\
         use_azure_identity = true\n[[vdir]]\nroot = \"./spool//sessions/x\"\n",
        &["vdir[0].root", "overlaps the session objects"],
    ),
    (
        "unknown storage backend",
        "[storage]\nbackend = \"nfs\"\n",
        &["storage.backend", "nfs"],
    ),
    (
        "s3 backend with by-reference notification (needs local files)",
        "[storage]\nbackend = \"s3\"\nbucket = \"b\"\naccess_key = \"a\"\nsecret_key = \"s\"\n\
         [[vdir]]\nnotification_type = \"by_reference\"\nnotification_url = \"http://127.0.0.1:1/\"\n",
        &["vdir[0]", "by_reference"],
    ),
    (
        "basic auth without users_file",
        "[[vdir]]\nauth = \"basic\"\n",
        &["vdir[0].users_file"],
    ),
    (
        "basic auth with a missing users_file",
        "[[vdir]]\nauth = \"basic\"\nusers_file = \"{d}/no-such-users\"\n",
        &["vdir[0].users_file", "no-such-users"],
    ),
    (
        "users_file with a malformed line",
        "[[vdir]]\nauth = \"basic\"\nusers_file = \"{d}/bad-users\"\n",
        &["vdir[0].users_file", "bad-users", "line 1"],
    ),
    (
        "0 for a bound that cannot be switched off",
        "max_connections = 0\n",
        &["max_connections = 0", "at least 1", "file descriptors"],
    ),
    (
        "a vdir whose sessions expire at once",
        "[[vdir]]\nprefix = \"/upload/\"\nsession_timeout = \"0s\"\n",
        &["vdir[0].session_timeout", "at least 1s"],
    ),
    (
        "not TOML at all",
        "[[vdir]\nprefix = \"/upload/\"\n",
        &["TOML parse error", "line 1"],
    ),
];

#[test]
fn broken_configs_fail_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_cert(d);
    std::fs::write(d.join("bad-users"), "alice\n").unwrap();
    let mut failures = Vec::new();
    for (i, (name, toml, needles)) in BROKEN.iter().enumerate() {
        let path = d.join(format!("case{i:02}.toml"));
        std::fs::write(&path, toml.replace("{d}", &d.display().to_string())).unwrap();
        let out = check(&path);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let missing: Vec<_> = needles.iter().filter(|n| !stderr.contains(*n)).collect();
        if out.status.code() != Some(1) || !missing.is_empty() || stdout.contains("ok") {
            failures.push(format!(
                "{name}: exit {:?}, stderr lacks {missing:?}\n  stdout: {stdout}\n  stderr: {stderr}",
                out.status.code()
            ));
        }
        // One readable message, not a panic or a backtrace.
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Stack backtrace"),
            "{name}: {stderr}"
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(&dir.path().join("absent.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("absent.toml"));
}

#[test]
fn plain_examples_pass() {
    // The Debian package's conffile too (packaging/debian/bitsd.toml).
    for name in [
        "single-node.toml",
        "farm.toml",
        "farm-azure.toml",
        "from-iis.toml",
        "../debian/bitsd.toml",
    ] {
        let out = check(&examples().join(name));
        assert!(
            out.status.success() && text(&out.stdout).contains("ok"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

/// Issue 30: a vdir no request can use passes check-config, with a warning that names it
/// (exit 0: such a vdir may be meant to be switched off for a while).
#[test]
fn vdirs_no_request_can_use_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bitsd.toml");
    std::fs::write(
        &path,
        "[[vdir]]\nprefix = \"/off/\"\nroot = \"/srv/off\"\nupload_enabled = false\n\
         download_enabled = false\n[[vdir]]\nprefix = \"/tls/\"\nroot = \"/srv/tls\"\n\
         require_tls = true\n[[vdir]]\nprefix = \"/zero/\"\nroot = \"/srv/zero\"\n\
         max_open_sessions = 0\n",
    )
    .unwrap();
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "warning: ",
        "vdir[0] (prefix \"/off/\"): upload_enabled = false and download_enabled = false",
        "vdir[1].require_tls (prefix \"/tls/\"): there is no [tls] listener, so every request",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // max_open_sessions = 0 is no limit now: nothing to warn about.
    assert!(!stderr.contains("vdir[2]"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn farm_example_with_host_id_uncommented_passes() {
    let farm = std::fs::read_to_string(examples().join("farm.toml")).unwrap();
    assert!(farm.contains("# host_id = ") && farm.contains("# host_id_fallback_timeout = "));
    let farm = farm.replace("# host_id = ", "host_id = ").replace(
        "# host_id_fallback_timeout = ",
        "host_id_fallback_timeout = ",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("farm.toml");
    std::fs::write(&path, farm).unwrap();
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// tls-basic.toml names files under /etc/bitsd, which check-config opens: run it against the
/// same file with those paths moved into a temp dir holding a real certificate and users file.
#[test]
fn tls_basic_example_passes_with_its_files() {
    let example = std::fs::read_to_string(examples().join("tls-basic.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = example.replace("/etc/bitsd/", &format!("{}/", d.display()));
    assert_ne!(config, example, "tls-basic.toml no longer uses /etc/bitsd/");
    let path = d.join("bitsd.toml");
    std::fs::write(&path, &config).unwrap();

    // Without its files it fails, naming the first one it needs.
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("tls.cert"),
        "{}",
        text(&out.stderr)
    );

    write_cert(d);
    std::fs::rename(d.join("cert.pem"), d.join("fullchain.pem")).unwrap();
    std::fs::rename(d.join("key.pem"), d.join("privkey.pem")).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("vdir[0].users_file"),
        "{}",
        text(&out.stderr)
    );

    common::add_user(&d.join("users"), "alice", "pw");
    let out = check(&path);
    assert!(
        out.status.success() && text(&out.stdout).contains("ok"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs `bitsd serve --config path` in `dir` until it exits (20 s at most): its exit code
/// (`None`: still running, then killed) and standard error.
fn serve_exit(dir: &Path, path: &Path) -> (Option<i32>, String) {
    let mut child = bitsd()
        .current_dir(dir)
        .arg("serve")
        .arg("--config")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running bitsd serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.and_then(|s| s.code()), stderr)
}

/// Issue 30: Debian's `htpasswd` writes Apache MD5 (`$apr1$`) unless told `-B`. Such a line
/// fails check-config and serve with a message naming the file, the line and the user, and the
/// command that replaces it with bcrypt; after that command the file passes, with a warning
/// about htpasswd's default bcrypt cost (5).
#[test]
fn htpasswd_apr1_lines_are_refused_naming_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let users = d.join("users").display().to_string();
    common::htpasswd(&["-cbB", "-C", "12", &users, "alice", "wonderland"]);
    common::htpasswd(&["-b", &users, "bob", "builder"]);
    let text_of_users = std::fs::read_to_string(&users).unwrap();
    assert!(text_of_users.contains("\nbob:$apr1$"), "{text_of_users}");
    let path = d.join("bitsd.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nspool_dir = \"{d}/spool\"\n[[vdir]]\nprefix = \"/secure/\"\n\
             root = \"{d}/secure\"\nauth = \"basic\"\nusers_file = \"{users}\"\n",
            d = d.display()
        ),
    )
    .unwrap();
    let expected = format!(
        "{users} line 2: the password hash of \"bob\" is Apache MD5 ($apr1$, htpasswd -m), \
         refused: one guess costs a single MD5, SHA-1 or DES run if the file leaks; replace it \
         with bcrypt: htpasswd -B {users} bob (or argon2: bitsd passwd {users} bob)"
    );
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("vdir[0].users_file"), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");

    let (code, stderr) = serve_exit(d, &path);
    assert_eq!(code, Some(1), "serve kept running: {stderr}");
    assert!(stderr.contains(&expected), "{stderr}");

    // The suggested command (with the password given, as a test must).
    common::htpasswd(&["-bB", &users, "bob", "builder"]);
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 bcrypt hash(es) of cost below 10 (lowest: 5, line 2)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bcrypt cost 12 on line 1, bcrypt cost 5 on line 2"),
        "{stderr}"
    );
}

/// The admin listener can list and cancel every session (security review, findings 6 and 10):
/// off loopback it needs a token of at least 16 characters (check-config exits 1, and `serve`
/// refuses to start); on loopback a missing or short token is a warning (exit 0).
#[test]
fn admin_listener_needs_a_long_token_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let long = "0123456789abcdef";
    let short = "0123456789abcde";
    // (listen, token, exit code, stderr must contain)
    let cases: &[(&str, Option<&str>, i32, &[&str])] = &[
        ("0.0.0.0:9180", None, 1, &["admin.token", "loopback"]),
        ("0.0.0.0:9180", Some("x"), 1, &["admin.token", "16"]),
        ("[::]:9180", Some(short), 1, &["admin.token", "16"]),
        ("192.0.2.7:9180", None, 1, &["admin.token"]),
        ("192.0.2.7:9180", Some(long), 0, &[]),
        (
            "[::ffff:127.0.0.1]:9180",
            Some("x"),
            0,
            &["warning", "admin.token", "16"],
        ),
        (
            "127.0.0.1:9180",
            None,
            0,
            &["warning", "admin.token", "no [admin] token"],
        ),
        (
            "127.0.0.2:9180",
            Some(short),
            0,
            &["warning", "admin.token", "16"],
        ),
        ("[::1]:9180", None, 0, &["warning", "admin.token"]),
        ("127.0.0.1:9180", Some(long), 0, &[]),
    ];
    let mut failures = Vec::new();
    for (i, (listen, token, code, needles)) in cases.iter().enumerate() {
        let token = token
            .map(|t| format!("token = \"{t}\"\n"))
            .unwrap_or_default();
        let path = dir.path().join(format!("admin{i}.toml"));
        std::fs::write(&path, format!("[admin]\nlisten = \"{listen}\"\n{token}")).unwrap();
        let out = check(&path);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let missing: Vec<_> = needles.iter().filter(|n| !stderr.contains(*n)).collect();
        let quiet_when_fine = !needles.is_empty() || stderr.is_empty();
        let ok_printed = stdout.contains(": ok") == (*code == 0);
        if out.status.code() != Some(*code)
            || !missing.is_empty()
            || !quiet_when_fine
            || !ok_printed
        {
            failures.push(format!(
                "{listen} {token:?}: exit {:?} (want {code}), stderr lacks {missing:?}\n  stdout: {stdout}\n  stderr: {stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // `serve` holds the same rule: it exits before binding anything.
    let path = dir.path().join("serve.toml");
    let spool = dir.path().join("spool");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nspool_dir = \"{}\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
            spool.display()
        ),
    )
    .unwrap();
    let (code, stderr) = serve_exit(dir.path(), &path);
    assert_eq!(code, Some(1), "serve kept running: {stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
}

/// Issue 26 finding 1: on S3, `uploads-private` (Basic, downloads on) and `/uploads-private`
/// (anonymous) are the same object keys. `check-config` refuses the pair from any working
/// directory, not only from `/`.
#[test]
fn s3_roots_overlapping_as_keys_are_refused_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bitsd.toml");
    std::fs::write(
        &config,
        "[storage]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n\
         access_key = \"a\"\nsecret_key = \"s\"\nallow_http = true\n\
         [[vdir]]\nprefix = \"/private/\"\nroot = \"uploads-private\"\nauth = \"basic\"\n\
         users_file = \"/dev/null\"\ndownload_enabled = true\n\
         [[vdir]]\nprefix = \"/pub/\"\nroot = \"/uploads-private\"\n",
    )
    .unwrap();
    for cwd in [Path::new("/"), dir.path(), Path::new("/tmp")] {
        let out = bitsd()
            .current_dir(cwd)
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("bitsd check-config");
        assert!(!out.status.success(), "from {cwd:?}: {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("overlap"),
            "from {cwd:?}: {}",
            text(&out.stderr)
        );
    }
}
