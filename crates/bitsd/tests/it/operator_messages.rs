//! Errors a person can act on (issue 30): refusals carry their reason (`Bitsd-Error-Reason`)
//! and `bits` prints it; `require_tls` is logged and answered as such and its start-up lines
//! show only usable URLs; `bitsd passwd` without a terminal names `--password-stdin`; and
//! `bitsd tls selfsigned` writes certificates a TLS server and `bits --cacert` accept, while
//! the certificate mistakes people make are explained in words.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

use crate::capture_replay::bits_cli;
use crate::common::pki::{tls_table, Pki};
use crate::common::Server;

const E_ACCESSDENIED: (&str, &str) = ("0x80070005", "0x5");

/// `bits upload FILE URL` with `args` in front, its job state in a temp dir.
fn bits_upload(url: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.txt");
    std::fs::write(&file, b"hello operator\n").unwrap();
    Command::new(bits_cli())
        .arg("upload")
        .args(args)
        .arg(&file)
        .arg(url)
        .env("BITS_STATE_DIR", dir.path().join("jobs"))
        .stdin(Stdio::null())
        .output()
        .expect("bits upload")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_existing_destination_is_refused_with_its_reason_and_bits_prints_it() {
    let s = Server::start("");
    std::fs::create_dir_all(s.root()).unwrap();
    std::fs::write(s.upload_path("taken.txt"), b"already here").unwrap();

    let r = s.conn().create("/upload/taken.txt");
    r.assert_ack(403, Some(E_ACCESSDENIED));
    let reason = r.header("bitsd-error-reason").expect("a reason header");
    assert!(
        reason.contains("already exists") && reason.contains("overwrites are off"),
        "{reason}"
    );
    // Words for the client, not the server's layout.
    let root = s.dir.path().to_string_lossy().into_owned();
    assert!(!reason.contains(&root) && !reason.contains('/'), "{reason}");

    let out = bits_upload(&format!("http://{}/upload/taken.txt", s.addr), &[]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("E_ACCESSDENIED")
            && text.contains("the destination already exists and overwrites are off"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(s.upload_path("taken.txt")).unwrap(),
        b"already here"
    );
}

#[test]
fn plain_http_to_a_require_tls_vdir_says_tls_is_required() {
    let pki = Pki::new("require_tls test CA");
    let certs = tempfile::tempdir().unwrap();
    let tls = tls_table(certs.path(), &pki, false);
    let s = Server::start_with(
        &format!(
            "{tls}\n[[vdir]]\nprefix = \"/secure/\"\nroot = \"{{root}}/secure\"\nrequire_tls = true\n\
             [[vdir]]\nprefix = \"/open/\"\nroot = \"{{root}}/open\"\n"
        ),
        false,
    );
    let tls_addr = s.tls_addr.expect("an https listener");

    let r = s.conn().create("/secure/a.txt");
    r.assert_ack(403, Some(E_ACCESSDENIED));
    let reason = r.header("bitsd-error-reason").unwrap_or_default();
    assert!(reason.contains("requires HTTPS"), "{reason}");
    let log = s.log_text();
    assert!(log.contains("requires TLS (require_tls)"), "{log}");
    assert!(!log.contains("another user"), "{log}");

    // Start-up lines: the https URL of both vdirs, the http URL only of the one that takes it.
    let lines = s.startup.join("\n");
    assert!(
        lines.contains(&format!("bitsd: https://{tls_addr}/secure/ -> ")),
        "{lines}"
    );
    assert!(
        !lines.contains(&format!("http://{}/secure/", s.addr)),
        "{lines}"
    );
    assert!(
        lines.contains(&format!("bitsd: http://{}/open/ -> ", s.addr))
            && lines.contains(&format!("bitsd: https://{tls_addr}/open/ -> ")),
        "{lines}"
    );
}

#[test]
fn passwd_without_a_terminal_points_at_password_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitsd"));
    cmd.arg("passwd")
        .arg(&users)
        .arg("alice")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A session of its own has no controlling terminal, whoever runs the tests.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("bitsd passwd");
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("no terminal") && text.contains("--password-stdin"),
        "{text}"
    );
    assert!(!users.exists());
}

/// `bitsd tls selfsigned` into `dir`.
fn selfsigned(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .args(["tls", "selfsigned", "--out"])
        .arg(dir)
        .args(args)
        .output()
        .expect("bitsd tls selfsigned")
}

fn tls_server(cert: &Path, key: &Path) -> Server {
    Server::start_with(
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\n",
            cert.display(),
            key.display()
        ),
        false,
    )
}

#[test]
fn tls_selfsigned_serves_tls_that_bits_verifies_with_cacert() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let out = selfsigned(&dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("[tls]"), "{printed}");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never over files already there without --force.
    let again = selfsigned(&dir, &[]);
    assert!(!again.status.success() && stderr(&again).contains("--force"));

    let s = tls_server(&cert, &key);
    let tls_addr = s.tls_addr.expect("an https listener");
    std::fs::create_dir_all(s.root()).unwrap();
    // By IP address: the certificate's default names include 127.0.0.1.
    let url = format!("https://{tls_addr}/upload/report.txt");
    let ca_arg = ca.to_string_lossy().into_owned();
    let ok = bits_upload(&url, &["--cacert", &ca_arg]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(
        std::fs::read(s.upload_path("report.txt")).unwrap(),
        b"hello operator\n"
    );

    // Without the CA, the error says what to do.
    let untrusted = bits_upload(&format!("https://{tls_addr}/upload/other.txt"), &[]);
    assert!(!untrusted.status.success());
    let text = stderr(&untrusted);
    assert!(
        text.contains("not signed by a trusted CA") && text.contains("--cacert"),
        "{text}"
    );
}

#[test]
fn a_ca_certificate_as_the_servers_is_explained_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    // What `openssl req -x509` makes: one self-signed certificate with CA:TRUE.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let s = tls_server(&cert_path, &key_path);
    let url = format!("https://{}/upload/x.txt", s.tls_addr.expect("tls"));
    let out = bits_upload(&url, &["--cacert", &cert_path.to_string_lossy()]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("is a CA certificate") && text.contains("bitsd tls selfsigned"),
        "{text}"
    );
}
