//! Boundaries: the log. Text a client chooses (here an NTLM user and domain name, which travel
//! as UTF-16 inside base64 and so may hold any character) reaches the log as field values; in
//! the human format (the default) it must not start a line of its own, rewrite the current one
//! (CR) or send a terminal escape sequence (security review, finding 5).

use crate::common::*;

/// A user name that, written raw, forges a whole record, returns to the start of the line,
/// colours what follows, rings the bell, and tries DEL and the 8-bit CSI (U+009B).
pub const HOSTILE: &str = "mallory\n2099-01-01T00:00:00.000000Z  INFO bits_server::http: forged record\r\x1b[31mred\x1b[0m\x07\x7f\u{9b}2J";

fn ntlm_server() -> Server {
    let config = vdir_config(
        "",
        "auth = \"ntlm\"\nusers_file = \"{root}/users\"\nntlm_domain = \"BITS\"",
    );
    Server::start_prepared(&config, false, |dir| {
        add_ntlm_user(&dir.join("users"), "alice", "s3cret!");
    })
}

/// `2026-03-01T12:00:00.123456Z  INFO target: message fields`: a timestamp, then a level.
fn is_record(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let stamp = words.next().unwrap_or_default();
    let level = words.next().unwrap_or_default();
    stamp.starts_with("20")
        && stamp.contains('T')
        && stamp.ends_with('Z')
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

#[test]
fn client_chosen_text_cannot_forge_or_colour_human_log_lines() {
    let s = ntlm_server();
    // A wrong password: the failure is logged with the user and domain names.
    let r = ntlm_sign_in(&mut s.conn(), "/upload/x.bin", HOSTILE, "BITS", "wrong");
    assert_eq!(r.status, 401);
    // As the domain name: logged with both names.
    let r = ntlm_sign_in(&mut s.conn(), "/upload/x.bin", "eve", HOSTILE, "wrong");
    assert_eq!(r.status, 401);
    std::thread::sleep(std::time::Duration::from_millis(200));

    let log = s.log_text();
    let raw: Vec<char> = log
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in the log:\n{log}"
    );
    for line in log.lines() {
        assert!(
            is_record(line),
            "a line that is not a record of its own: {line:?}\n{log}"
        );
        assert!(!line.starts_with("2099-"), "a forged record: {line:?}");
    }
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NTLM authentication failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{log}");
    for line in failures {
        // The whole name is on the record's own line, its controls spelt out.
        for part in [
            "mallory\\n2099-",
            "forged record\\r\\u{1b}[31mred",
            "\\u{7}\\u{7f}\\u{9b}2J",
        ] {
            assert!(line.contains(part), "{part:?} not in {line:?}");
        }
    }
}
