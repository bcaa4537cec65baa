//! `--log-format json` (here through `BITSD_LOG_FORMAT`): one JSON object per log line, and
//! every request line names its session and the client identity. Its own test binary, because
//! it sets an environment variable the started server inherits.

#[path = "it/common/mod.rs"]
mod common;
use common::*;

#[test]
fn json_request_lines_carry_session_and_identity() {
    std::env::set_var("BITSD_LOG_FORMAT", "json");
    let server = Server::start("");
    let mut conn = server.conn();
    let data = pattern(10_000, 3);
    let sid = upload(&mut conn, "/upload/logged.bin", &data, 4_000);
    conn.close("/upload/logged.bin", &sid).assert_ack(200, None);
    let get = conn.send("GET", "/upload/logged.bin", &[], b"");
    assert_eq!(get.status, 200);
    drop(conn);
    std::thread::sleep(std::time::Duration::from_millis(200));

    let log = server.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 6, "{log}");
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "bits" || l["message"] == "download")
        .collect();
    // Create, 3 fragments, Close, GET.
    assert_eq!(requests.len(), 6, "{log}");
    for r in &requests {
        assert!(r["level"].is_string() && r["timestamp"].is_string(), "{r}");
        assert_eq!(r["user"], "-", "anonymous identity is logged as '-': {r}");
    }
    let bits: Vec<_> = requests.iter().filter(|r| r["message"] == "bits").collect();
    assert!(
        bits.iter().all(|r| r["session"] == sid.as_str()),
        "{bits:?}"
    );
    assert_eq!(
        bits.iter()
            .map(|r| r["packet"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "Create-Session",
            "Fragment",
            "Fragment",
            "Fragment",
            "Close-Session"
        ]
    );
}
