//! TLS, authentication and authorization over real TLS with a generated test CA
//! (checklist items 53–54), client certificates, per-user roots, and the limits.

use crate::common::*;

use std::sync::Arc;
use std::time::Duration;

use crate::common::pki::{client_config, tls_table, Pki};
use base64_free::basic;

const E_ACCESSDENIED: (&str, &str) = ("0x80070005", "0x5");
const URL: &str = "/upload/a.bin";

/// Base64 for a Basic header, without another dependency.
mod base64_free {
    pub fn basic(user: &str, password: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("{user}:{password}").into_bytes();
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    }
}

/// A server with a Basic-auth, TLS-only upload vdir; users alice/wonderland and bob/builder.
fn basic_server(pki: &Pki, extra_top: &str, extra_vdir: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    add_user(&users, "alice", "wonderland");
    add_user(&users, "bob", "builder");
    let tls = tls_table(dir.path(), pki, false);
    let config = format!(
        "{extra_top}\n{tls}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\nauth = \"basic\"\nrequire_tls = true\nusers_file = \"{}\"\n{extra_vdir}\n",
        users.display()
    );
    let s = Server::start_with(&config, false);
    std::mem::forget(dir); // the certificate files must outlive the server; the OS cleans /tmp
    s
}

fn tls_conn(s: &Server, config: &Arc<rustls::ClientConfig>) -> Conn {
    Conn::try_tls(s.tls_addr.expect("tls listener"), config.clone()).expect("TLS handshake")
}

fn with_auth<'a>(auth: &'a str, h: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("Authorization", auth)];
    v.extend_from_slice(h);
    v
}

#[test]
fn item_53_basic_over_tls_challenges_then_accepts() {
    let pki = Pki::new("test CA");
    let s = basic_server(&pki, "", "");
    let cfg = client_config(&pki, None);
    let mut c = tls_conn(&s, &cfg);
    let r = c.bits(URL, "Ping", &[], b"");
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic ")),
        "{:?}",
        r.headers
    );
    assert!(!r.has("bits-error-code"));
    let good = basic("alice", "wonderland");
    c.bits(URL, "Ping", &with_auth(&good, &[]), b"")
        .assert_ack(200, None);
    for bad in [
        basic("alice", "wrong"),
        basic("mallory", "wonderland"),
        "Basic !!!".into(),
        "Bearer x".into(),
    ] {
        assert_eq!(
            c.bits(URL, "Ping", &with_auth(&bad, &[]), b"").status,
            401,
            "{bad}"
        );
    }
    // A full upload with credentials on every request.
    let data = pattern(100_000, 53);
    let r = c.bits(
        URL,
        "Create-Session",
        &with_auth(&good, &[("BITS-Supported-Protocols", PROTOCOL)]),
        b"",
    );
    r.assert_ack(200, None);
    let sid = r.session();
    let range = "bytes 0-99999/100000";
    let r = c.bits(
        URL,
        "Fragment",
        &with_auth(
            &good,
            &[("BITS-Session-Id", &sid), ("Content-Range", range)],
        ),
        &data,
    );
    r.assert_ack(200, None);
    c.bits(
        URL,
        "Close-Session",
        &with_auth(&good, &[("BITS-Session-Id", &sid)]),
        b"",
    )
    .assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
    // The same vdir over plain HTTP is refused, credentials or not.
    let mut plain = s.conn();
    plain
        .bits(URL, "Ping", &with_auth(&good, &[]), b"")
        .assert_ack(403, Some(E_ACCESSDENIED));
}

#[test]
fn item_54_another_users_fragment_is_refused_and_changes_nothing() {
    let pki = Pki::new("test CA");
    let s = basic_server(&pki, "", "");
    let cfg = client_config(&pki, None);
    let (alice, bob) = (basic("alice", "wonderland"), basic("bob", "builder"));
    let mut c = tls_conn(&s, &cfg);
    let r = c.bits(
        URL,
        "Create-Session",
        &with_auth(&alice, &[("BITS-Supported-Protocols", PROTOCOL)]),
        b"",
    );
    let sid = r.session();
    let data = pattern(300, 54);
    let r = c.bits(
        URL,
        "Fragment",
        &with_auth(
            &alice,
            &[
                ("BITS-Session-Id", &sid),
                ("Content-Range", "bytes 0-99/300"),
            ],
        ),
        &data[..100],
    );
    r.assert_ack(200, None);
    // Bob tries to write, close and cancel alice's session.
    let r = c.bits(
        URL,
        "Fragment",
        &with_auth(
            &bob,
            &[
                ("BITS-Session-Id", &sid),
                ("Content-Range", "bytes 100-199/300"),
            ],
        ),
        &[0u8; 100],
    );
    r.assert_ack(403, Some(E_ACCESSDENIED));
    c.bits(
        URL,
        "Cancel-Session",
        &with_auth(&bob, &[("BITS-Session-Id", &sid)]),
        b"",
    )
    .assert_ack(403, Some(E_ACCESSDENIED));
    c.bits(
        URL,
        "Close-Session",
        &with_auth(&bob, &[("BITS-Session-Id", &sid)]),
        b"",
    )
    .assert_ack(403, Some(E_ACCESSDENIED));
    // Alice carries on from where she was.
    let r = c.bits(
        URL,
        "Fragment",
        &with_auth(
            &alice,
            &[
                ("BITS-Session-Id", &sid),
                ("Content-Range", "bytes 100-299/300"),
            ],
        ),
        &data[100..],
    );
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(300));
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn per_user_roots_keep_users_apart() {
    let pki = Pki::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    add_user(&users, "alice", "wonderland");
    add_user(&users, "bob", "builder");
    let tls = tls_table(dir.path(), &pki, false);
    let s = Server::start_with(
        &format!(
            "{tls}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/users/{{user}}\"\nauth = \"basic\"\nusers_file = \"{}\"\n",
            users.display()
        ),
        false,
    );
    let cfg = client_config(&pki, None);
    let mut c = tls_conn(&s, &cfg);
    for (auth, user) in [
        (basic("alice", "wonderland"), "alice"),
        (basic("bob", "builder"), "bob"),
    ] {
        let data = pattern(1000, user.len() as u64);
        let r = c.bits(
            URL,
            "Create-Session",
            &with_auth(&auth, &[("BITS-Supported-Protocols", PROTOCOL)]),
            b"",
        );
        r.assert_ack(200, None);
        let sid = r.session();
        c.bits(
            URL,
            "Fragment",
            &with_auth(
                &auth,
                &[
                    ("BITS-Session-Id", &sid),
                    ("Content-Range", "bytes 0-999/1000"),
                ],
            ),
            &data,
        )
        .assert_ack(200, None);
        assert_eq!(
            std::fs::read(s.dir.path().join("users").join(user).join("a.bin")).unwrap(),
            data
        );
        // Each user reads their own file at the same URL.
        let g = c.send("GET", URL, &[("Authorization", &auth)], b"");
        assert_eq!(g.status, 200);
        assert_eq!(g.body, data);
    }
    drop(dir);
}

fn cert_server(pki: &Pki) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_table(dir.path(), pki, true);
    let s = Server::start_with(
        &format!("http_enabled = true\n{tls}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\nauth = \"client_cert\"\n"),
        false,
    );
    (s, dir)
}

/// True when the server refused the TLS client (at the handshake or on the first request).
fn refused(s: &Server, cfg: &Arc<rustls::ClientConfig>) -> bool {
    match Conn::try_tls(s.tls_addr.unwrap(), cfg.clone()) {
        Err(_) => true,
        Ok(mut c) => c
            .try_send("BITS_POST", URL, &[("BITS-Packet-Type", "Ping")], b"")
            .is_err(),
    }
}

#[test]
fn client_certificates_identify_users_and_bad_ones_are_refused() {
    let pki = Pki::new("test CA");
    let (s, _dir) = cert_server(&pki);
    let alice = client_config(&pki, Some(&pki.issue("alice", false, false)));
    let bob = client_config(&pki, Some(&pki.issue("bob", false, false)));
    let mut a = tls_conn(&s, &alice);
    let r = a.create(URL);
    r.assert_ack(200, None);
    let sid = r.session();
    let mut b = tls_conn(&s, &bob);
    b.fragment(URL, &sid, 0, b"evil", 4)
        .assert_ack(403, Some(E_ACCESSDENIED));
    a.fragment(URL, &sid, 0, b"good", 4).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), b"good");

    assert!(
        refused(&s, &client_config(&pki, None)),
        "no client certificate"
    );
    assert!(
        refused(
            &s,
            &client_config(&pki, Some(&pki.issue("old", false, true)))
        ),
        "expired certificate"
    );
    let stranger = Pki::new("other CA");
    let foreign = client_config(&pki, Some(&stranger.issue("alice", false, false)));
    assert!(refused(&s, &foreign), "certificate from an untrusted CA");
    // Plain HTTP has no certificate: 403.
    s.conn()
        .bits(URL, "Ping", &[], b"")
        .assert_ack(403, Some(E_ACCESSDENIED));
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let pki = Pki::new("test CA");
    let (s, dir) = cert_server(&pki);
    let alice = client_config(&pki, Some(&pki.issue("alice", false, false)));
    let mut old = tls_conn(&s, &alice);
    old.bits(URL, "Ping", &[], b"").assert_ack(200, None);
    // Swap in a certificate from a new CA, then SIGHUP.
    let pki2 = Pki::new("second CA");
    let server2 = pki2.issue("bitsd test server 2", true, false);
    std::fs::write(dir.path().join("cert.pem"), &server2.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &server2.key_pem).unwrap();
    // SAFETY: plain kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) }, 0);
    let trusts_second = client_config(&pki2, Some(&pki.issue("alice", false, false)));
    let mut ok = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(mut c) = Conn::try_tls(s.tls_addr.unwrap(), trusts_second.clone()) {
            if c.try_send("BITS_POST", URL, &[("BITS-Packet-Type", "Ping")], b"")
                .is_ok_and(|r| r.status == 200)
            {
                ok = true;
                break;
            }
        }
    }
    assert!(ok, "new handshakes must present the reloaded certificate");
    // The connection opened before the reload still works.
    old.bits(URL, "Ping", &[], b"").assert_ack(200, None);
}

fn create(c: &mut Conn, auth: &str) -> Response {
    c.bits(
        URL,
        "Create-Session",
        &with_auth(auth, &[("BITS-Supported-Protocols", PROTOCOL)]),
        b"",
    )
}

#[test]
fn per_identity_session_and_byte_limits() {
    let pki = Pki::new("test CA");
    let s = basic_server(
        &pki,
        "max_sessions_per_identity = 2\nmax_spool_bytes_per_identity = 1000",
        "allow_overwrites = true",
    );
    let cfg = client_config(&pki, None);
    let mut c = tls_conn(&s, &cfg);
    let alice = basic("alice", "wonderland");
    let s1 = create(&mut c, &alice).session();
    create(&mut c, &alice).assert_ack(200, None);
    create(&mut c, &alice).assert_ack(503, Some(("0x801901F7", "0x5")));
    // Bob is not affected by alice's limit.
    create(&mut c, &basic("bob", "builder")).assert_ack(200, None);
    // Byte quota: 1000 bytes of unfinished uploads per identity.
    let r = c.bits(
        URL,
        "Fragment",
        &with_auth(
            &alice,
            &[
                ("BITS-Session-Id", &s1),
                ("Content-Range", "bytes 0-799/5000"),
            ],
        ),
        &[1u8; 800],
    );
    r.assert_ack(200, None);
    let r = c.bits(
        URL,
        "Fragment",
        &with_auth(
            &alice,
            &[
                ("BITS-Session-Id", &s1),
                ("Content-Range", "bytes 800-1299/5000"),
            ],
        ),
        &[1u8; 500],
    );
    r.assert_ack(500, Some(("0x80070070", "0x5")));
}

/// IIS sets `BITSNumberOfSessionsLimit` per vdir and can switch it off
/// (`BITSSessionLimitEnable = 0`): a vdir's `max_sessions_per_identity`, and 0 for off.
#[test]
fn session_limit_per_vdir_and_its_off_switch() {
    let pki = Pki::new("test CA");
    let s = basic_server(
        &pki,
        "max_sessions_per_identity = 0",
        "allow_overwrites = true\nmax_sessions_per_identity = 2",
    );
    let cfg = client_config(&pki, None);
    let mut c = tls_conn(&s, &cfg);
    let alice = basic("alice", "wonderland");
    create(&mut c, &alice).assert_ack(200, None);
    create(&mut c, &alice).assert_ack(200, None);
    create(&mut c, &alice).assert_ack(503, Some(("0x801901F7", "0x5")));
    create(&mut c, &basic("bob", "builder")).assert_ack(200, None);

    // No vdir limit and the server-wide one off: past the default of 50.
    let s = basic_server(
        &pki,
        "max_sessions_per_identity = 0",
        "allow_overwrites = true",
    );
    let mut c = tls_conn(&s, &cfg);
    for i in 0..55 {
        let r = create(&mut c, &alice);
        assert_eq!(r.status, 200, "session {i}: {:?}", r.headers);
    }
}

#[test]
fn rate_limit_per_ip_answers_503_with_retry_after() {
    let s = Server::start("rate_limit_per_ip = 5\nrate_limit_burst = 5");
    let mut c = s.conn();
    let statuses: Vec<u16> = (0..30)
        .map(|_| c.bits(URL, "Ping", &[], b"").status)
        .collect();
    assert!(
        statuses.iter().filter(|&&st| st == 200).count() >= 5,
        "{statuses:?}"
    );
    let limited = statuses.iter().filter(|&&st| st == 503).count();
    assert!(limited >= 10, "{statuses:?}");
    let r = c.bits(URL, "Ping", &[], b"");
    if r.status == 503 {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("bits-error-code"), Some("0x801901F7"));
    }
    std::thread::sleep(Duration::from_millis(1200));
    c.bits(URL, "Ping", &[], b"").assert_ack(200, None);
}

#[test]
fn connection_limit_queues_new_connections() {
    let s = Server::start("max_connections = 2");
    let mut a = s.conn();
    let mut b = s.conn();
    a.bits(URL, "Ping", &[], b"").assert_ack(200, None);
    b.bits(URL, "Ping", &[], b"").assert_ack(200, None);
    // A third connection is accepted by the kernel but not served while two are open.
    let mut third = s.conn();
    third.write_raw(&request_bytes(
        "BITS_POST",
        URL,
        &[("BITS-Packet-Type", "Ping")],
        b"",
    ));
    let waiter = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let r = third.read_response(false);
        (r.status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(a);
    let (status, waited) = waiter.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(400),
        "served after {waited:?}, before a slot was free"
    );
}
