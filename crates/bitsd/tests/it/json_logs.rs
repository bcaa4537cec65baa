//! `--log-format json` (here through `BITSD_LOG_FORMAT`, set for the server process only): one
//! JSON object per log line, and every request line names its session and the client identity.

use crate::common::*;

const JSON: &[(&str, &str)] = &[("BITSD_LOG_FORMAT", "json")];

#[test]
fn json_request_lines_carry_session_and_identity() {
    let server = Server::start_env("", JSON);
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

/// Client-chosen text (an NTLM user name) holding every kind of control character: each line
/// is still one JSON object, the field reads back exactly as sent, and no control character is
/// written raw — not even DEL or the C1 controls, which JSON would allow inside a string but a
/// terminal showing the log may obey (security review, finding 5).
#[test]
fn json_lines_escape_client_chosen_control_characters() {
    let hostile = "mallory\n{\"level\":\"INFO\"}\r\x1b[31mred\x07\x7f\u{9b}2J\u{85}";
    let config = vdir_config(
        "",
        "auth = \"ntlm\"\nusers_file = \"{root}/users\"\nntlm_domain = \"BITS\"",
    );
    let server = Server::start_full(&config, false, JSON, &[], |dir| {
        add_ntlm_user(&dir.join("users"), "alice", "s3cret!");
    });
    let r = ntlm_sign_in(
        &mut server.conn(),
        "/upload/x.bin",
        hostile,
        "BITS",
        "wrong",
    );
    assert_eq!(r.status, 401);
    std::thread::sleep(std::time::Duration::from_millis(200));

    let log = server.log_text();
    let raw: Vec<char> = log
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in the log:\n{log}"
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["message"] == "NTLM authentication failed")
        .unwrap_or_else(|| panic!("no failure line:\n{log}"));
    assert_eq!(failed["user"], hostile, "{failed}");
}
