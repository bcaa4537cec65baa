//! Boundaries: auth. Password checks (argon2) are the one thing an unauthenticated client can
//! make expensive; the users file and the admin listener are the operator's side of the same
//! boundary (issue 14, findings 4 and 8).

use std::path::Path;

use std::time::{Duration, Instant};

use super::{basic, basic_raw};
use crate::common::*;

/// `/secure/` needs Basic auth against `{root}/users`; `/upload/` is anonymous.
fn two_vdirs(top: &str) -> String {
    format!(
        "{top}\n[[vdir]]\nprefix = \"/secure/\"\nroot = \"{{root}}/secure\"\nauth = \"basic\"\n\
         users_file = \"{{root}}/users\"\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\n"
    )
}

/// A server per [`two_vdirs`] whose users file holds `users`.
fn basic_server(top: &str, users: &[(&str, &str)]) -> Server {
    Server::start_prepared(&two_vdirs(top), false, |dir| {
        for (u, p) in users {
            add_user(&dir.join("users"), u, p);
        }
    })
}

/// Create-Session on `/secure/` with these credentials: its status and how long it took.
fn try_create(addr: std::net::SocketAddr, authorization: &str) -> (u16, Duration) {
    // A fresh destination each time: two owners cannot hold sessions for one destination.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = Conn::new(addr);
    let started = Instant::now();
    let r = c.bits(
        &format!("/secure/f{n}.bin"),
        "Create-Session",
        &[
            ("BITS-Supported-Protocols", PROTOCOL),
            ("Authorization", authorization),
        ],
        b"",
    );
    (r.status, started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sighup(s: &Server) {
    // SAFETY: kill(2) on the pid of a child this test owns.
    assert_eq!(unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) }, 0);
}

/// Polls `check` until it holds (a SIGHUP is handled asynchronously).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finding 4: 100 concurrent wrong passwords ran 100 argon2 verifications at once (19 MiB each,
/// on the blocking pool that file I/O needs too). Budgets are lifted here so that the bound on
/// concurrent verifications alone must hold, as it must against a distributed attacker.
#[test]
fn password_flood_is_bounded_and_does_not_starve_uploads() {
    let s = basic_server(
        "[basic_auth]\nfailures_per_user = 0\nfailures_per_ip = 0\nmax_waiting = 1000",
        &[("alice", "wonderland")],
    );
    let addr = s.addr;
    let start = std::sync::Arc::new(std::sync::Barrier::new(101));
    let flood: Vec<_> = (0..100)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                let auth = basic("alice", &format!("wrong-{i}"));
                let mut c = Conn::new(addr);
                start.wait();
                c.try_send(
                    "BITS_POST",
                    "/secure/f.bin",
                    &[
                        ("BITS-Packet-Type", "Create-Session"),
                        ("BITS-Supported-Protocols", PROTOCOL),
                        ("Authorization", &auth),
                    ],
                    b"",
                )
                .map(|r| r.status)
                .ok()
            })
        })
        .collect();
    start.wait();
    let flood_started = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let data = pattern(256 << 10, 14);
    let mut c = s.conn();
    let started = Instant::now();
    let sid = upload(&mut c, "/upload/during-flood.bin", &data, 64 << 10);
    c.close("/upload/during-flood.bin", &sid)
        .assert_ack(200, None);
    let upload_time = started.elapsed();
    // Unbounded, every verification starts at once and the peak comes within the first second;
    // bounded, the queue drains at the pace of the CPUs (slowly in a debug build): measure after
    // a few seconds of flood instead of waiting for the last answer.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(flood_started.elapsed()));
    let peak = s.peak_rss_kib();
    let uploaded = std::fs::read(s.root().join("during-flood.bin")).unwrap();
    drop(s);
    let statuses: Vec<Option<u16>> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let answered: Vec<u16> = statuses.iter().flatten().copied().collect();
    println!(
        "flood: 100 concurrent wrong passwords; anonymous upload took {upload_time:?}; peak RSS \
         {} MiB; answered within 3 s: {} (all 401: {})",
        peak / 1024,
        answered.len(),
        answered.iter().all(|&x| x == 401)
    );
    assert!(answered.iter().all(|&x| x == 401), "{answered:?}");
    assert_eq!(uploaded, data);
    assert!(peak < 256 << 10, "peak RSS {peak} KiB");
    assert!(
        upload_time < Duration::from_secs(1),
        "upload took {upload_time:?}"
    );
}

/// Finding 4: an unknown user was refused in 0.2 ms, a known one with a wrong password in 33 ms,
/// which told anyone which user names exist.
#[test]
fn unknown_users_cost_as_much_as_wrong_passwords() {
    let s = basic_server("", &[("alice", "wonderland")]);
    let (mut known, mut unknown) = (vec![], vec![]);
    for i in 0..7 {
        let (status, t) = try_create(s.addr, &basic("alice", &format!("wrong-{i}")));
        assert_eq!(status, 401);
        known.push(t);
        let (status, t) = try_create(s.addr, &basic(&format!("nobody-{i}"), "wrong"));
        assert_eq!(status, 401);
        unknown.push(t);
    }
    let (known, unknown) = (median(known), median(unknown));
    println!("wrong password: existing user median {known:?}, unknown user median {unknown:?}");
    assert!(
        unknown * 3 >= known && known * 3 >= unknown,
        "existing {known:?} vs unknown {unknown:?}"
    );
}

/// Finding 4: failures are budgeted per user name and per client address; past the budget the
/// answer is 503 without an argon2 run, except for a password verified recently (so an attacker
/// cannot lock a client out in the middle of its upload).
#[test]
fn failure_budget_per_user_answers_503_without_verifying() {
    let s = basic_server(
        "[basic_auth]\nfailures_per_user = 3\nfailures_per_ip = 1000",
        &[("alice", "wonderland"), ("bob", "builder")],
    );
    assert_eq!(try_create(s.addr, &basic("alice", "wonderland")).0, 200);
    for i in 0..3 {
        assert_eq!(try_create(s.addr, &basic("alice", &format!("x{i}"))).0, 401);
    }
    let (status, t) = try_create(s.addr, &basic("alice", "x3"));
    println!("over budget: 503 in {t:?}");
    assert_eq!(status, 503);
    // Remembered from the first request: still served.
    assert_eq!(try_create(s.addr, &basic("alice", "wonderland")).0, 200);
    // Other names keep their own budget, known or not (the same answers for both).
    assert_eq!(try_create(s.addr, &basic("bob", "builder")).0, 200);
    for i in 0..3 {
        assert_eq!(
            try_create(s.addr, &basic("nobody", &format!("x{i}"))).0,
            401
        );
    }
    assert_eq!(try_create(s.addr, &basic("nobody", "x3")).0, 503);
}

#[test]
fn failure_budget_per_address_answers_503() {
    let s = basic_server(
        "[basic_auth]\nfailures_per_user = 1000\nfailures_per_ip = 3",
        &[("alice", "wonderland")],
    );
    for i in 0..3 {
        assert_eq!(try_create(s.addr, &basic(&format!("u{i}"), "x")).0, 401);
    }
    assert_eq!(try_create(s.addr, &basic("u9", "x")).0, 503);
    // The address is spent: even a right password is not checked now.
    assert_eq!(try_create(s.addr, &basic("alice", "wonderland")).0, 503);
}

/// Issue 30: a users file written by Apache's `htpasswd -B` (bcrypt, `$2y$`) signs in with
/// Basic, under the same failure budgets as argon2; a right password is remembered as argon2's
/// is, so the fragments of an upload do not pay bcrypt each.
#[test]
fn htpasswd_bcrypt_users_sign_in_with_basic() {
    let s = Server::start_prepared(
        &two_vdirs("[basic_auth]\nfailures_per_user = 3\nfailures_per_ip = 1000"),
        false,
        |dir| {
            let users = dir.join("users").display().to_string();
            htpasswd(&["-cbB", &users, "alice", "wonderland"]);
            htpasswd(&["-bB", &users, "bob", "builder"]);
        },
    );
    let users = std::fs::read_to_string(s.dir.path().join("users")).unwrap();
    assert!(users.starts_with("alice:$2y$05$"), "{users}");
    let mut c = s.conn();
    let r = c.bits(
        "/secure/report.bin",
        "Create-Session",
        &[
            ("BITS-Supported-Protocols", PROTOCOL),
            ("Authorization", &basic("alice", "wonderland")),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{:?}", r.headers);
    let sid = r.session();
    let data = pattern(3000, 30);
    for (i, chunk) in data.chunks(1000).enumerate() {
        let range = format!("bytes {}-{}/3000", i * 1000, i * 1000 + chunk.len() - 1);
        let r = c.bits(
            "/secure/report.bin",
            "Fragment",
            &[
                ("BITS-Session-Id", &sid),
                ("Content-Range", &range),
                ("Authorization", &basic("alice", "wonderland")),
            ],
            chunk,
        );
        assert_eq!(r.status, 200, "{:?}", r.headers);
    }
    assert_eq!(
        std::fs::read(s.dir.path().join("secure/report.bin")).unwrap(),
        data
    );
    assert_eq!(try_create(s.addr, &basic("bob", "builder")).0, 200);
    for i in 0..3 {
        assert_eq!(try_create(s.addr, &basic("bob", &format!("x{i}"))).0, 401);
    }
    assert_eq!(try_create(s.addr, &basic("bob", "x3")).0, 503);
    assert_eq!(try_create(s.addr, &basic("nobody", "builder")).0, 401);
}

/// Issue 30: in a bcrypt users file an unknown name is checked against a bcrypt dummy of the
/// file's cost (10 here, some milliseconds), so it costs what a wrong password costs.
#[test]
fn unknown_users_cost_as_much_as_wrong_bcrypt_passwords() {
    let s = Server::start_prepared(&two_vdirs(""), false, |dir| {
        let users = dir.join("users").display().to_string();
        htpasswd(&["-cbB", "-C", "10", &users, "alice", "wonderland"]);
    });
    let (mut known, mut unknown) = (vec![], vec![]);
    for i in 0..7 {
        let (status, t) = try_create(s.addr, &basic("alice", &format!("wrong-{i}")));
        assert_eq!(status, 401);
        known.push(t);
        let (status, t) = try_create(s.addr, &basic(&format!("nobody-{i}"), "wrong"));
        assert_eq!(status, 401);
        unknown.push(t);
    }
    let (known, unknown) = (median(known), median(unknown));
    println!("bcrypt cost 10, wrong password: existing user median {known:?}, unknown user median {unknown:?}");
    assert!(
        unknown * 3 >= known && known * 3 >= unknown,
        "existing {known:?} vs unknown {unknown:?}"
    );
}

/// Colons, non-ASCII names, missing colons, undecodable and oversized credentials: each gets a
/// plain answer and the server stays up.
#[test]
fn hostile_credentials_get_plain_answers() {
    let s = basic_server("", &[("jörg", "pa:ss wörd"), ("alice", "wonderland")]);
    assert_eq!(try_create(s.addr, &basic("jörg", "pa:ss wörd")).0, 200);
    assert_eq!(try_create(s.addr, &basic("jörg", "pa")).0, 401);
    // The first colon splits: "alice:wonder" is user "alice", password "wonder:land"-like.
    assert_eq!(try_create(s.addr, &basic("alice:wonder", "land")).0, 401);
    assert_eq!(try_create(s.addr, &basic_raw(b"alice")).0, 401);
    assert_eq!(
        try_create(s.addr, &basic_raw(b"al\xffice:wonderland")).0,
        401
    );
    assert_eq!(try_create(s.addr, &basic_raw(b"alice\0:wonderland")).0, 401);
    assert_eq!(try_create(s.addr, "Basic !!!").0, 401);
    assert_eq!(try_create(s.addr, "Basic").0, 401);
    // 10 KiB of password: a head the server reads, verified and refused like any other.
    let (status, t) = try_create(s.addr, &basic("alice", &"p".repeat(10 << 10)));
    println!("10 KiB password refused in {t:?}");
    assert_eq!(status, 401);
    // A 53 KiB `Authorization` value (the size of a Windows Kerberos ticket with a large
    // PAC) fits the default 64 KiB head limit.
    assert_eq!(
        try_create(s.addr, &basic("alice", &"p".repeat(40 << 10))).0,
        401
    );
    // A head past `max_header_bytes`: 431, no verification.
    assert_eq!(
        try_create(s.addr, &basic("alice", &"p".repeat(60 << 10))).0,
        431
    );
    assert_eq!(try_create(s.addr, &basic("alice", "wonderland")).0, 200);
}

/// Finding 8: SIGHUP did not re-read users files, so a removed user kept access until restart.
#[test]
fn sighup_reloads_users_files() {
    let mut s = basic_server("", &[("alice", "wonderland"), ("bob", "builder")]);
    let users = s.dir.path().join("users");
    assert_eq!(try_create(s.addr, &basic("bob", "builder")).0, 200);
    assert_eq!(try_create(s.addr, &basic("alice", "wonderland")).0, 200);

    // Remove bob, change alice's password (her old one is in the verified cache).
    let kept: Vec<String> = std::fs::read_to_string(&users)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("bob:"))
        .map(String::from)
        .collect();
    std::fs::write(&users, kept.join("\n") + "\n").unwrap();
    add_user(&users, "alice", "looking-glass");
    sighup(&s);
    eventually("bob refused", || {
        try_create(s.addr, &basic("bob", "builder")).0 == 401
    });
    assert_eq!(try_create(s.addr, &basic("alice", "wonderland")).0, 401);
    assert_eq!(try_create(s.addr, &basic("alice", "looking-glass")).0, 200);

    // A broken file keeps the users loaded before, and says so in the log.
    std::fs::write(&users, "alice-without-a-hash\n").unwrap();
    sighup(&s);
    eventually("reload failure logged", || {
        s.log_text().contains("keeping the users loaded before")
    });
    assert_eq!(try_create(s.addr, &basic("alice", "looking-glass")).0, 200);
    assert!(s.is_running());
}

/// Finding 8: without `[tls]` no SIGHUP handler was installed, so `systemctl reload` killed bitsd.
#[test]
fn sighup_without_tls_keeps_serving() {
    let mut s = Server::start("");
    sighup(&s);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.is_running(),
        "bitsd died on SIGHUP; log:\n{}",
        s.log_text()
    );
    let mut c = s.conn();
    let sid = upload(&mut c, "/upload/after-hup.bin", b"hello", 5);
    c.close("/upload/after-hup.bin", &sid).assert_ack(200, None);
}

/// The default vdir, `top` keys, and an admin listener with `admin` keys.
fn admin_server(top: &str, admin: &str) -> Server {
    let config = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n",
        vdir_config(top, "")
    );
    Server::start_with(&config, false)
}

/// Finding 8: the admin listener had no header timeout: a connection that sends nothing stayed
/// open forever.
#[test]
fn admin_listener_closes_silent_connections() {
    let s = admin_server("header_read_timeout = \"1s\"", "");
    let admin = s.admin_addr.expect("admin listener");
    let mut c = Conn::new(admin);
    let started = Instant::now();
    assert!(c.is_closed(), "the admin connection stayed open");
    let t = started.elapsed();
    println!("silent admin connection closed after {t:?}");
    assert!(t < Duration::from_secs(5), "closed only after {t:?}");
    // A normal request still works.
    assert_eq!(
        Conn::new(admin).send("GET", "/healthz", &[], b"").status,
        200
    );
    // A request announcing a body it trickles: answered, and the connection closed rather than
    // held while the body dribbles in.
    let mut c = Conn::new(admin);
    c.write_raw(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab");
    let r = c.read_response(false);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    let started = Instant::now();
    assert!(c.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Finding 8: the admin listener accepted any number of connections. Past `max_connections`
/// new ones wait in the listen backlog until one closes.
#[test]
fn admin_listener_caps_connections() {
    let s = admin_server("", "max_connections = 2");
    let admin = s.admin_addr.expect("admin listener");
    // Two keep-alive connections hold both slots.
    let mut held: Vec<Conn> = (0..2).map(|_| Conn::new(admin)).collect();
    for c in &mut held {
        assert_eq!(c.send("GET", "/healthz", &[], b"").status, 200);
    }
    let mut third = Conn::new(admin);
    third.write_raw(&request_bytes("GET", "/healthz", &[], b""));
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let r = third.read_response(false);
        (r.status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(700));
    drop(held.pop());
    let (status, t) = waiting.join().unwrap();
    println!("third admin connection answered after {t:?}");
    assert_eq!(status, 200);
    assert!(
        t >= Duration::from_millis(600),
        "answered past the cap after {t:?}"
    );
}

/// Finding 8: `bitsd passwd` wrote the users file world-readable.
#[test]
fn passwd_writes_users_file_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "alice", "wonderland");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&users), 0o600, "new users file");
    // An existing file keeps owner and group read, never world access.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    add_user(&users, "bob", "builder");
    assert_eq!(mode(&users), 0o640, "existing 0644 users file");
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    add_user(&users, "carol", "x");
    assert_eq!(mode(&users), 0o600);
    let text = std::fs::read_to_string(&users).unwrap();
    for u in ["alice:", "bob:", "carol:"] {
        assert!(text.contains(u), "{text}");
    }
    // No temp file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
