//! Spec §18 checklist items 43–52: Close, Cancel, timeout, restart, disabling uploads.

use crate::common::*;

use std::time::{Duration, Instant};

const URL: &str = "/upload/a.bin";

fn new_session(c: &mut Conn) -> String {
    let r = c.create(URL);
    r.assert_ack(200, None);
    r.session()
}

#[track_caller]
fn assert_ok_fragment(r: &Response, sid: &str, received: u64) {
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(received), "{:?}", r.headers);
    assert_eq!(r.header("bits-session-id"), Some(sid), "{:?}", r.headers);
}

#[track_caller]
fn assert_no_temp_data(s: &Server, sid: &str) {
    let data = s.session_file(sid);
    assert!(!data.exists(), "{} still exists", data.display());
}

#[test]
fn items_43_to_45_close_after_completion_then_fragment_then_close_again() {
    let s = Server::start("");
    let mut c = s.conn();
    let data = pattern(300, 43);
    let sid = upload(&mut c, URL, &data, 100);

    // 43: Close -> 200 with the session id; temp data gone; destination stays.
    let r = c.close(URL, &sid);
    r.assert_ack(200, None);
    assert_eq!(
        r.header("bits-session-id"),
        Some(sid.as_str()),
        "{:?}",
        r.headers
    );
    assert_no_temp_data(&s, &sid);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
    assert_eq!(files_below(&s.root()), vec![s.upload_path("a.bin")]);

    // 44: Fragment after Close -> session not found.
    let r = c.fragment(URL, &sid, 200, &data[200..], 300);
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);

    // 45: repeated Close -> 200 (tombstone).
    let r = c.close(URL, &sid);
    r.assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn item_46_cancel_discards_partial_upload() {
    let s = Server::start("");
    let mut c = s.conn();
    let data = pattern(300, 46);
    let sid = new_session(&mut c);
    assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 300), &sid, 100);
    assert!(s.session_file(&sid).exists());

    let r = c.cancel(URL, &sid);
    r.assert_ack(200, None);
    assert_eq!(
        r.header("bits-session-id"),
        Some(sid.as_str()),
        "{:?}",
        r.headers
    );
    assert_no_temp_data(&s, &sid);
    assert!(!s.upload_path("a.bin").exists());
    assert!(files_below(&s.root()).is_empty());

    let r = c.fragment(URL, &sid, 100, &data[100..200], 300);
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    assert!(files_below(&s.root()).is_empty());

    // The destination is free again for a new session.
    let sid2 = new_session(&mut c);
    assert_ne!(sid2, sid);
}

#[test]
fn item_46_cancel_after_completion_keeps_destination() {
    // Spec §3.5: after the last fragment, Cancel-Session does not undo the upload.
    let s = Server::start("");
    let mut c = s.conn();
    let data = pattern(300, 461);
    let sid = upload(&mut c, URL, &data, 150);
    let r = c.cancel(URL, &sid);
    r.assert_ack(200, None);
    assert_no_temp_data(&s, &sid);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
    assert_eq!(files_below(&s.root()), vec![s.upload_path("a.bin")]);
}

#[test]
fn item_47_cancel_with_unknown_session_gets_500() {
    let s = Server::start("");
    let mut c = s.conn();
    let unknown = "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}";
    let r = c.cancel(URL, unknown);
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    // Close behaves the same (spec §6.3: unknown -> 500 + BG_E_SESSION_NOT_FOUND).
    let r = c.close(URL, unknown);
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
}

#[test]
fn item_48_close_before_completion_discards_partial_upload() {
    let s = Server::start("");
    let mut c = s.conn();
    let data = pattern(300, 48);
    let sid = new_session(&mut c);
    assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 300), &sid, 100);

    let r = c.close(URL, &sid);
    r.assert_ack(200, None);
    assert!(!s.upload_path("a.bin").exists());
    assert!(files_below(&s.root()).is_empty());
    assert_no_temp_data(&s, &sid);

    // A partial file is never published later either.
    let r = c.fragment(URL, &sid, 100, &data[100..], 300);
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    assert!(!s.upload_path("a.bin").exists());
}

const TIMEOUT_TOP: &str = "cleanup_interval = \"1s\"";
const TIMEOUT_VDIR: &str = "session_timeout = \"2s\"";

#[test]
fn item_49_idle_session_expires_and_cleanup_deletes_its_data() {
    let s = Server::start_vdir(TIMEOUT_TOP, TIMEOUT_VDIR);
    let mut c = s.conn();
    let data = pattern(300, 49);
    let sid = new_session(&mut c);
    assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 300), &sid, 100);
    let data_file = s.session_file(&sid);
    assert!(data_file.exists());

    // Timeout (2 s) plus a cleanup pass (every 1 s), without any request in between: the
    // cleanup task itself must remove the data.
    let started = Instant::now();
    while data_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cleanup never removed {}",
            data_file.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "expired too early"
    );

    let mut c = s.conn();
    let r = c.fragment(URL, &sid, 100, &data[100..200], 300);
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    assert!(!data_file.exists());
    for dir in session_dirs(&s.spool()) {
        assert!(!dir.join("data").exists(), "{}", dir.display());
    }
    assert!(files_below(&s.root()).is_empty());

    // On SESSION_NOT_FOUND the client starts over with Create-Session (spec §10.4); the expired
    // session must not keep the destination reserved.
    let sid2 = new_session(&mut c);
    assert_ok_fragment(&c.fragment(URL, &sid2, 0, &data, 300), &sid2, 300);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

// Item 49 before any cleanup pass and item 50 (fragments keeping a session alive) need no
// process: they run in `crates/bits-server/tests/engine/lifecycle.rs` with a manual clock.

#[test]
fn item_51_sessions_survive_a_restart() {
    let mut s = Server::start("");
    let data = pattern(300, 51);
    let sid = {
        let mut c = s.conn();
        let sid = new_session(&mut c);
        assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 300), &sid, 100);
        sid
    };
    let old_pid = s.pid();
    s.restart();
    assert_ne!(s.pid(), old_pid);

    let mut c = s.conn();
    c.bits(URL, "Ping", &[], b"").assert_ack(200, None);
    let r = c.fragment(URL, &sid, 100, &data[100..200], 300);
    assert_ok_fragment(&r, &sid, 200);
    let r = c.fragment(URL, &sid, 200, &data[200..], 300);
    assert_ok_fragment(&r, &sid, 300);
    c.close(URL, &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn item_51_restart_then_client_resends_from_its_own_offset() {
    // The client may resume from an older offset; the server's answer resyncs it.
    let mut s = Server::start("");
    let data = pattern(300, 511);
    let sid = {
        let mut c = s.conn();
        let sid = new_session(&mut c);
        assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..150], 300), &sid, 150);
        sid
    };
    s.restart();
    let mut c = s.conn();
    // Overlapping resend from 100.
    let r = c.fragment(URL, &sid, 100, &data[100..200], 300);
    assert_ok_fragment(&r, &sid, 200);
    // Gap -> 416 telling the client where to go on.
    let r = c.fragment(URL, &sid, 250, &data[250..], 300);
    r.assert_416(&sid, 200);
    let r = c.fragment(URL, &sid, 200, &data[200..], 300);
    assert_ok_fragment(&r, &sid, 300);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn item_51_restart_keeps_destination_reserved() {
    // Spec §8.3: with overwrites off a second session for the same destination fails; that must
    // still hold for a session recovered after a restart.
    let mut s = Server::start("");
    let data = pattern(300, 512);
    let sid = {
        let mut c = s.conn();
        let sid = new_session(&mut c);
        assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 300), &sid, 100);
        sid
    };
    s.restart();
    let mut c = s.conn();
    c.create(URL).assert_ack(403, Some(E_ACCESSDENIED));
    assert_ok_fragment(&c.fragment(URL, &sid, 100, &data[100..], 300), &sid, 300);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn item_52_disabling_uploads_deletes_sessions_and_answers_501() {
    let mut s = Server::start("");
    let data = pattern(300, 52);
    let sid = {
        let mut c = s.conn();
        let sid = new_session(&mut c);
        assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 300), &sid, 100);
        sid
    };
    assert!(s.session_file(&sid).exists());

    s.set_extra_config(&vdir_config("", "upload_enabled = false"));
    s.restart();

    // Deleted by the registry build that follows start-up (in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.session_file(&sid).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !s.session_file(&sid).exists(),
        "session dir {} survived disabling uploads",
        s.session_file(&sid).display()
    );
    let mut c = s.conn();
    let r = c.fragment(URL, &sid, 100, &data[100..200], 300);
    r.assert_ack(501, Some(E_ACCESSDENIED));
    let r = c.create(URL);
    r.assert_ack(501, Some(E_ACCESSDENIED));
    assert!(!r.has("bits-session-id"), "{:?}", r.headers);
    assert!(session_dirs(&s.spool()).is_empty());
    assert!(!s.upload_path("a.bin").exists());

    // The whole vdir refuses BITS: Ping, Close and Cancel too (spec §10.3 step 1).
    c.bits(URL, "Ping", &[], b"")
        .assert_ack(501, Some(E_ACCESSDENIED));
    c.close(URL, &sid).assert_ack(501, Some(E_ACCESSDENIED));
    c.cancel(URL, &sid).assert_ack(501, Some(E_ACCESSDENIED));
}
