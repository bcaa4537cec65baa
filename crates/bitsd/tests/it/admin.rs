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
    // The spool's session directory disappears: storage no longer answers.
    let sessions = s.spool().join("sessions");
    let moved = s.spool().join("sessions.away");
    std::fs::rename(&sessions, &moved).unwrap();
    let r = admin_get(&s, "/readyz", &[]);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("storage"));
    assert_eq!(admin_get(&s, "/healthz", &[]).status, 200);
    std::fs::rename(&moved, &sessions).unwrap();
    assert_eq!(admin_get(&s, "/readyz", &[]).status, 200);
    assert_eq!(admin_get(&s, "/nope", &[]).status, 404);
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
