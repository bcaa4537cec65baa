//! The admin listener (`[admin]`): Prometheus metrics with exact deltas, health and readiness,
//! the bearer token, and the admin CLI (`bitsd sessions ...`, `bitsd gc`) run as processes
//! against a real server.

use crate::common;
use std::collections::HashMap;
use std::process::{Command, Output};

use crate::common::{Response, Server, SESSION_NOT_FOUND};

/// The admin listener on a free loopback port (top-level inline table, so it fits the
/// harness's split of top-level and vdir keys).
const ADMIN: &str = "admin = { listen = \"127.0.0.1:0\" }";
const TOKEN: &str = "t0ken-for-tests";

fn admin_url(s: &Server) -> String {
    format!("http://{}", s.admin_addr.expect("admin listener address"))
}

fn admin_get(s: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    common::Conn::new(s.admin_addr.expect("admin listener address")).send("GET", path, headers, b"")
}

/// Every sample of the text exposition, keyed by `name{labels}` exactly as printed.
fn scrape(s: &Server) -> HashMap<String, f64> {
    let r = admin_get(s, "/metrics", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    String::from_utf8(r.body)
        .expect("utf-8 metrics")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            (series.to_string(), value.parse().expect("sample value"))
        })
        .collect()
}

/// `after - before` of one series (absent = 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// Runs the `bitsd` binary with `args`, isolated from the caller's admin environment.
fn bitsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .args(args)
        .env_remove("BITSD_ADMIN")
        .env_remove("BITSD_ADMIN_TOKEN")
        .env_remove("BITSD_CONFIG")
        .output()
        .expect("run bitsd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "bitsd failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

#[test]
fn metrics_count_one_upload_exactly() {
    let s = Server::start(ADMIN);
    let before = scrape(&s);
    let data = common::pattern(1000, 7);
    let mut c = s.conn();
    // Two fragments of 600 and 400 bytes.
    let sid = common::upload(&mut c, "/upload/m.bin", &data, 600);
    let mid = scrape(&s);
    assert_eq!(mid["bitsd_sessions_open"], 1.0, "committed, not yet closed");
    c.close("/upload/m.bin", &sid).assert_ack(200, None);
    let after = scrape(&s);

    let d = |series: &str| delta(&before, &after, series);
    assert_eq!(d("bitsd_sessions_created_total"), 1.0);
    assert_eq!(d("bitsd_sessions_completed_total"), 1.0);
    assert_eq!(d("bitsd_sessions_closed_total"), 1.0);
    assert_eq!(d("bitsd_sessions_cancelled_total"), 0.0);
    assert_eq!(d("bitsd_sessions_expired_total"), 0.0);
    assert_eq!(after["bitsd_sessions_open"], 0.0);
    assert_eq!(d("bitsd_bytes_received_total"), 1000.0);
    assert_eq!(
        d("bitsd_request_duration_seconds_count{packet=\"fragment\"}"),
        2.0
    );
    assert_eq!(
        d("bitsd_request_duration_seconds_count{packet=\"create_session\"}"),
        1.0
    );
    assert!(d("bitsd_request_duration_seconds_sum{packet=\"fragment\"}") > 0.0);
    assert_eq!(
        d("bitsd_requests_total{packet=\"fragment\",status=\"200\"}"),
        2.0
    );
    assert_eq!(
        d("bitsd_requests_total{packet=\"create_session\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        d("bitsd_requests_total{packet=\"close_session\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        d("bitsd_storage_operation_seconds_count{op=\"write\"}"),
        2.0
    );
    assert_eq!(
        d("bitsd_storage_operation_seconds_count{op=\"commit\"}"),
        1.0
    );
    let errors: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("bitsd_errors_total"))
        .map(|(k, _)| delta(&before, &after, k))
        .sum();
    assert_eq!(errors, 0.0, "a clean upload sends no error Ack");
    // Every documented family is exposed from the start.
    for family in [
        "bitsd_request_duration_seconds_count{packet=\"ping\"}",
        "bitsd_notifications_total{outcome=\"ok\"}",
        "bitsd_notifications_total{outcome=\"app_error\"}",
        "bitsd_notifications_total{outcome=\"timeout\"}",
        "bitsd_notifications_total{outcome=\"unreachable\"}",
    ] {
        assert!(before.contains_key(family), "{family} missing");
    }

    // One error Ack: a Fragment for a session that never existed.
    let unknown = "{0BAD0000-0000-4000-8000-000000000001}";
    c.fragment("/upload/x.bin", unknown, 0, b"abc", 3)
        .assert_ack(500, Some(SESSION_NOT_FOUND));
    let last = scrape(&s);
    assert_eq!(
        delta(&after, &last, "bitsd_errors_total{hresult=\"0x8020001F\"}"),
        1.0
    );
    assert_eq!(
        delta(
            &after,
            &last,
            "bitsd_requests_total{packet=\"fragment\",status=\"500\"}"
        ),
        1.0
    );
    assert_eq!(delta(&after, &last, "bitsd_bytes_received_total"), 0.0);
}

#[test]
fn health_and_readiness() {
    let s = Server::start(ADMIN);
    let r = admin_get(&s, "/healthz", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok\n");
    assert_eq!(admin_get(&s, "/readyz", &[]).status, 200);
    // The spool's data directory disappears: storage no longer answers.
    let sessions = s.spool().join("data");
    let moved = s.spool().join("data.away");
    std::fs::rename(&sessions, &moved).unwrap();
    let r = admin_get(&s, "/readyz", &[]);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("storage"));
    assert_eq!(admin_get(&s, "/healthz", &[]).status, 200);
    std::fs::rename(&moved, &sessions).unwrap();
    assert_eq!(admin_get(&s, "/readyz", &[]).status, 200);
    assert_eq!(admin_get(&s, "/nope", &[]).status, 404);
}

/// Issue 30: free space below `min_free_space` makes the node unready before fragments fail
/// (the real full and read-only file systems are in `disk_full.rs`).
#[test]
fn readiness_needs_min_free_space() {
    let s = Server::start(&format!("{ADMIN}\nmin_free_space = {}", u64::MAX / 2));
    let r = admin_get(&s, "/readyz", &[]);
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 503, "{body}");
    assert!(body.contains("below min_free_space"), "{body}");
    assert_eq!(admin_get(&s, "/healthz", &[]).status, 200);
    // Off: no check.
    let s = Server::start(&format!("{ADMIN}\nmin_free_space = 0"));
    assert_eq!(admin_get(&s, "/readyz", &[]).status, 200);
}

#[test]
fn token_guards_everything_but_healthz() {
    let s = Server::start(&format!(
        "admin = {{ listen = \"127.0.0.1:0\", token = \"{TOKEN}\" }}"
    ));
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/metrics", "/readyz", "/admin/sessions"] {
        let r = admin_get(&s, path, &[]);
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(r.has("www-authenticate"));
        let r = admin_get(&s, path, &[("Authorization", "Bearer wrong")]);
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = admin_get(&s, path, &[("Authorization", &bearer)]);
        assert_eq!(r.status, 200, "{path} with the token");
    }
    assert_eq!(admin_get(&s, "/healthz", &[]).status, 200);

    let url = admin_url(&s);
    let o = bitsd(&["sessions", "list", "--admin", &url]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("token"), "{}", stderr(&o));
    ok(bitsd(&[
        "sessions", "list", "--admin", &url, "--token", TOKEN,
    ]));
    let o = Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .args(["gc", "--admin", &url])
        .env("BITSD_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    ok(o);
}

#[test]
fn cli_lists_shows_and_cancels_a_session() {
    let s = Server::start(ADMIN);
    let url = admin_url(&s);
    let path = "/upload/cancel-me.bin";
    let mut c = s.conn();
    let r = c.create(path);
    r.assert_ack(200, None);
    let sid = r.session();
    c.fragment(path, &sid, 0, b"hello", 10)
        .assert_ack(200, None);
    assert!(s.session_data(&sid).is_some());

    let table = ok(bitsd(&["sessions", "list", "--admin", &url]));
    let row = table
        .lines()
        .find(|l| l.contains(&sid))
        .unwrap_or_else(|| panic!("{sid} not listed:\n{table}"));
    assert!(row.contains("receiving") && row.contains("5/10"), "{row}");
    assert!(row.contains("cancel-me.bin"), "{row}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(bitsd(&["sessions", "list", "--json", "--admin", &url]))).unwrap();
    let listed = json
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == sid.as_str())
        .expect("listed in JSON");
    assert_eq!(listed["state"], "receiving");
    assert_eq!(listed["received"], 5);
    assert_eq!(listed["total"], 10);
    assert_eq!(listed["vdir"], "/upload/");
    assert!(listed["created_at"].as_u64().unwrap() > 0);

    let shown = ok(bitsd(&["sessions", "show", &sid, "--admin", &url]));
    assert!(shown.contains("receiving"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("received:") && l.ends_with(" 5")),
        "{shown}"
    );
    // Without braces, lower case: the same session.
    let bare = common::spool_name(&sid);
    let shown: serde_json::Value = serde_json::from_str(&ok(bitsd(&[
        "sessions", "show", &bare, "--json", "--admin", &url,
    ])))
    .unwrap();
    assert_eq!(shown["id"], sid.as_str());

    let before = scrape(&s);
    let out = ok(bitsd(&["sessions", "cancel", &sid, "--admin", &url]));
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(
        delta(&before, &scrape(&s), "bitsd_sessions_cancelled_total"),
        1.0
    );
    assert!(s.session_data(&sid).is_none(), "temporary data deleted");
    c.fragment(path, &sid, 5, b"world", 10)
        .assert_ack(500, Some(SESSION_NOT_FOUND));
    // The owner's own Cancel-Session after an admin cancel is answered like a repeat.
    c.cancel(path, &sid).assert_ack(200, None);

    let again = bitsd(&["sessions", "cancel", &sid, "--admin", &url]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already ended"),
        "{}",
        stderr(&again)
    );
    let open = ok(bitsd(&["sessions", "list", "--admin", &url]));
    assert!(!open.contains(&sid), "{open}");
    let all = ok(bitsd(&["sessions", "list", "--all", "--admin", &url]));
    assert!(
        all.lines()
            .any(|l| l.contains(&sid) && l.contains("cancelled")),
        "{all}"
    );

    let missing = bitsd(&[
        "sessions",
        "show",
        "{0BAD0000-0000-4000-8000-000000000002}",
        "--admin",
        &url,
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
}

/// `?limit=N` reads at most N records (what the console asks for); a bad limit is a 400.
#[test]
fn session_listing_can_be_limited() {
    let s = Server::start(ADMIN);
    let mut c = s.conn();
    for i in 0..5 {
        c.create(&format!("/upload/limited-{i}.bin"))
            .assert_ack(200, None);
    }
    let count = |path: &str| {
        let r = admin_get(&s, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("/admin/sessions"), 5);
    assert_eq!(count("/admin/sessions?limit=2"), 2);
    assert_eq!(count("/admin/sessions?limit=0"), 0);
    assert_eq!(admin_get(&s, "/admin/sessions?limit=x", &[]).status, 400);
}

#[test]
fn cli_gc_expires_an_idle_session() {
    // The periodic sweep is far away: only `bitsd gc` can expire the session.
    let s = Server::start_vdir(
        &format!("{ADMIN}\ncleanup_interval = \"1h\""),
        "session_timeout = \"2s\"",
    );
    let url = admin_url(&s);
    let path = "/upload/idle.bin";
    let mut c = s.conn();
    let r = c.create(path);
    r.assert_ack(200, None);
    let sid = r.session();
    c.fragment(path, &sid, 0, b"abc", 6).assert_ack(200, None);

    let report: serde_json::Value =
        serde_json::from_str(&ok(bitsd(&["gc", "--json", "--admin", &url]))).unwrap();
    assert_eq!(report["expired"], 0, "not idle yet");

    std::thread::sleep(std::time::Duration::from_millis(2600));
    let before = scrape(&s);
    let out = ok(bitsd(&["gc", "--admin", &url]));
    assert!(out.contains("expired 1 session"), "{out}");
    assert_eq!(
        delta(&before, &scrape(&s), "bitsd_sessions_expired_total"),
        1.0
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(bitsd(&[
        "sessions", "show", &sid, "--json", "--admin", &url,
    ])))
    .unwrap();
    assert_eq!(shown["state"], "expired");
    assert!(s.session_data(&sid).is_none());
    c.fragment(path, &sid, 3, b"def", 6)
        .assert_ack(500, Some(SESSION_NOT_FOUND));
}

#[test]
fn cli_reports_an_unreachable_admin_listener() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["sessions", "list", "--admin", &url],
        vec!["gc", "--admin", &url],
    ] {
        let o = bitsd(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("cannot reach the admin listener") && err.contains(&url),
            "{err}"
        );
    }
}

#[test]
fn cli_finds_the_admin_listener_in_the_config() {
    let s = Server::start(&format!(
        "admin = {{ listen = \"127.0.0.1:0\", token = \"{TOKEN}\" }}"
    ));
    let addr = s.admin_addr.unwrap();
    // The config a CLI user would point at: the running server's address and token.
    let config = s.dir.path().join("admin-cli.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\n[admin]\nlisten = \"0.0.0.0:{}\"\ntoken = \"{TOKEN}\"\n",
            addr.port()
        ),
    )
    .unwrap();
    let out = ok(bitsd(&[
        "sessions",
        "list",
        "--config",
        config.to_str().unwrap(),
    ]));
    assert!(out.contains("no sessions"), "{out}");
}

#[test]
fn check_config_rejects_an_empty_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bitsd.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:9180\"\ntoken = \"\"\n",
    )
    .unwrap();
    let o = bitsd(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("admin.token"), "{}", stderr(&o));
}

/// One request to the admin listener with `host` as its `Host` header (the harness's requests
/// all say `127.0.0.1`), on a fresh connection.
fn admin_as(
    s: &Server,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = common::Conn::new(s.admin_addr.expect("admin listener address"));
    c.write_raw(head.as_bytes());
    c.read_response(method == "HEAD")
}

fn body_text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The state of session `sid` as the admin listener reports it.
fn state_of(s: &Server, sid: &str, headers: &[(&str, &str)]) -> String {
    let r = admin_get(
        s,
        &format!("/admin/sessions/{}", common::spool_name(sid)),
        headers,
    );
    assert_eq!(r.status, 200, "{}", body_text(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["state"].as_str().unwrap_or_default().to_string()
}

/// DNS rebinding (security review, finding 6): a page of `rebind.attacker.example`, whose name
/// the attacker then points at 127.0.0.1, is same-origin with the listener and reads whatever
/// it answers. Without a token the listener answers only requests naming it by a loopback name
/// or by the address the connection reached; `/healthz` stays open for probes.
#[test]
fn without_a_token_only_loopback_host_names_are_served() {
    let s = Server::start(ADMIN);
    let port = s.admin_addr.unwrap().port();
    let sid = s.conn().create("/upload/secret-name.bin").session();

    let foreign = [
        "rebind.attacker.example".to_string(),
        format!("rebind.attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("10.11.12.13:{port}"),
        String::new(),
    ];
    for host in &foreign {
        for (method, path) in [
            ("GET", "/admin/sessions"),
            ("GET", "/admin/activity"),
            ("GET", "/metrics"),
            ("GET", "/readyz"),
            ("GET", "/console"),
            ("POST", "/admin/gc"),
        ] {
            let r = admin_as(&s, method, path, host, &[]);
            assert_eq!(r.status, 421, "{method} {path} with Host {host:?}");
            let why: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(
                why["error"].as_str().is_some_and(|e| e.contains("Host")),
                "{why}"
            );
            assert!(!body_text(&r).contains("secret-name"));
        }
        let cancel = format!("/admin/sessions/{}/cancel", common::spool_name(&sid));
        assert_eq!(admin_as(&s, "POST", &cancel, host, &[]).status, 421);
        assert_eq!(admin_as(&s, "GET", "/healthz", host, &[]).status, 200);
    }
    assert_eq!(
        state_of(&s, &sid, &[]),
        "receiving",
        "nothing was cancelled"
    );

    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        format!("127.9.8.7:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = admin_as(&s, "GET", "/admin/sessions", &host, &[]);
        assert_eq!(r.status, 200, "Host {host:?}: {}", body_text(&r));
        assert!(body_text(&r).contains("secret-name"));
    }
    assert!(
        s.log_text().contains("no [admin] token"),
        "no start-up warning about the missing token:\n{}",
        s.log_text()
    );
}

/// With a token the token is the guard, so an operator may use any name for the listener (a
/// DNS-rebinding page cannot know the token).
#[test]
fn with_a_token_any_host_name_is_served() {
    let s = Server::start(&format!(
        "admin = {{ listen = \"127.0.0.1:0\", token = \"{TOKEN}\" }}"
    ));
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(
        admin_as(&s, "GET", "/admin/sessions", "admin.example.net", &auth).status,
        200
    );
    assert_eq!(
        admin_as(&s, "GET", "/admin/sessions", "admin.example.net", &[]).status,
        401
    );
    assert!(!s.log_text().contains("no [admin] token"));
}

/// CSRF (security review, finding 6): a page on another origin can make the browser POST
/// (`Content-Type: text/plain` needs no preflight), with or without a token configured (the
/// console's token is in its own origin's storage, but a form post needs none when there is no
/// token). Such requests are refused before they act; the CLI and curl send no `Origin`.
#[test]
fn cross_site_posts_are_refused_with_and_without_a_token() {
    for token in [None, Some(TOKEN)] {
        let s = match token {
            None => Server::start(ADMIN),
            Some(t) => Server::start(&format!(
                "admin = {{ listen = \"127.0.0.1:0\", token = \"{t}\" }}"
            )),
        };
        let port = s.admin_addr.unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let bearer = token.map(|t| format!("Bearer {t}"));
        let with = |extra: &[(&'static str, &str)]| -> Vec<(String, String)> {
            let mut h: Vec<(String, String)> = extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Some(b) = &bearer {
                h.push(("Authorization".into(), b.clone()));
            }
            h
        };
        let post = |path: &str, extra: &[(&'static str, &str)]| {
            let h = with(extra);
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            admin_as(&s, "POST", path, &host, &h)
        };
        let sid = s.conn().create("/upload/keep-me.bin").session();
        let cancel = format!("/admin/sessions/{}/cancel", common::spool_name(&sid));
        let own = format!("http://{host}");
        let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
        let cross: [&[(&str, &str)]; 7] = [
            &[
                ("Origin", "http://rebind.attacker.example"),
                ("Content-Type", "text/plain"),
            ],
            &[("Origin", "https://attacker.example:8443")],
            &[("Origin", "null")],
            &[("Origin", &other_port)],
            &[("Sec-Fetch-Site", "cross-site")],
            &[("Sec-Fetch-Site", "same-site")],
            &[("Origin", &own), ("Sec-Fetch-Site", "cross-site")],
        ];
        for headers in cross {
            for path in [cancel.as_str(), "/admin/gc"] {
                let r = post(path, headers);
                assert_eq!(r.status, 403, "token {token:?}, POST {path} {headers:?}");
                let why: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert!(why["error"].is_string(), "{why}");
            }
        }
        let h = with(&[]);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(state_of(&s, &sid, &h), "receiving", "token {token:?}");
        // The listener's own origin (the console's fetch), and no Origin at all (CLI, curl).
        let r = post(
            "/admin/gc",
            &[("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
        );
        assert_eq!(r.status, 200, "{}", body_text(&r));
        assert_eq!(post("/admin/gc", &[]).status, 200);
        assert_eq!(post(&cancel, &[("Sec-Fetch-Site", "none")]).status, 200);
        assert_eq!(state_of(&s, &sid, &h), "cancelled");
    }
}

/// Token guessing (security review, finding 10): every wrong token is counted, and logged at
/// most once a second with the number of failures since the previous line, so a flood neither
/// goes unseen nor floods the log.
#[test]
fn failed_tokens_are_counted_and_logged_at_most_once_a_second() {
    let s = Server::start(&format!(
        "admin = {{ listen = \"127.0.0.1:0\", token = \"{TOKEN}\" }}"
    ));
    let addr = s.admin_addr.unwrap();
    let lines = |log: &str| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains("admin token refused"))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("failures="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no failures=N in {l:?}"))
            })
            .collect()
    };
    let started = std::time::Instant::now();
    let mut c = common::Conn::new(addr);
    for i in 0..300 {
        let r = c.send(
            "GET",
            "/admin/sessions",
            &[("Authorization", &format!("Bearer guess-{i}"))],
            b"",
        );
        assert_eq!(r.status, 401);
    }
    let burst = started.elapsed();
    // No Authorization header at all is not a guess (a console asking for its token).
    assert_eq!(c.send("GET", "/metrics", &[], b"").status, 401);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let first = lines(&s.log_text());
    let allowed = burst.as_secs() as usize + 1;
    assert!(
        !first.is_empty() && first.len() <= allowed,
        "{} lines for 300 failures in {burst:?}:\n{}",
        first.len(),
        s.log_text()
    );
    assert!(s.log_text().contains("peer=127.0.0.1:"), "{}", s.log_text());

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = c.send("GET", "/readyz", &[("Authorization", "Bearer late")], b"");
    assert_eq!(r.status, 401);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let all = lines(&s.log_text());
    assert_eq!(all.len(), first.len() + 1, "{}", s.log_text());
    assert_eq!(all.iter().sum::<u64>(), 301, "{all:?}");

    let bearer = format!("Bearer {TOKEN}");
    let r = admin_get(&s, "/metrics", &[("Authorization", &bearer)]);
    assert!(
        body_text(&r).contains("bitsd_admin_auth_failures_total 301"),
        "{}",
        body_text(&r)
    );
}
