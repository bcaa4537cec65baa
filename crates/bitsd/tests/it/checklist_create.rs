//! Spec §18 checklist items 11–21: Create-Session.

use crate::common::*;

const URL: &str = "/upload/a.bin";
const OTHER: &str = "{11111111-1111-1111-1111-111111111111}";

fn create_with(c: &mut Conn, url: &str, protocols: &str) -> Response {
    c.bits(
        url,
        "Create-Session",
        &[("BITS-Supported-Protocols", protocols)],
        b"",
    )
}

#[track_caller]
fn assert_created(r: &Response) -> String {
    r.assert_ack(200, None);
    assert_eq!(r.header("bits-protocol"), Some(PROTOCOL), "{:?}", r.headers);
    let sid = r.session();
    assert!(is_braced_guid(&sid), "session id {sid:?}");
    sid
}

#[test]
fn item_11_create_session_ack() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = create_with(&mut c, URL, PROTOCOL);
    r.assert_ack(200, None);
    assert!(
        r.header("bits-protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case(PROTOCOL)),
        "{:?}",
        r.headers
    );
    assert!(is_braced_guid(&r.session()), "{:?}", r.headers);
    assert_eq!(r.header("accept-encoding"), Some("identity"));
    assert!(!r.has("bits-host-id"), "{:?}", r.headers);
    assert!(!r.has("bits-host-id-fallback-timeout"), "{:?}", r.headers);
    // Nothing is published by Create-Session alone.
    assert!(!s.upload_path("a.bin").exists());
}

#[test]
fn item_12_upper_case_protocol_is_negotiated() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = create_with(&mut c, URL, &PROTOCOL.to_ascii_uppercase());
    assert_created(&r);
}

#[test]
fn item_13_space_separated_protocol_list() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = create_with(&mut c, URL, &format!("{OTHER} {PROTOCOL}"));
    assert_created(&r);
}

#[test]
fn item_14_comma_separated_protocol_list() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = create_with(&mut c, URL, &format!("{OTHER},{PROTOCOL}"));
    assert_created(&r);
}

#[test]
fn item_15_missing_supported_protocols_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = c.bits(URL, "Create-Session", &[], b"");
    r.assert_ack(400, Some(E_INVALIDARG));
    assert!(!r.has("bits-protocol"), "{:?}", r.headers);
    assert!(session_dirs(&s.spool()).is_empty());
}

#[test]
fn item_16_no_common_protocol_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = create_with(&mut c, URL, OTHER);
    r.assert_ack(400, Some(E_INVALIDARG));
    assert!(!r.has("bits-protocol"), "{:?}", r.headers);
    assert!(!r.has("bits-session-id"), "{:?}", r.headers);
    assert!(session_dirs(&s.spool()).is_empty());
}

#[test]
fn item_17_create_session_with_body_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = c.bits(
        URL,
        "Create-Session",
        &[("BITS-Supported-Protocols", PROTOCOL)],
        b"12345678",
    );
    r.assert_ack(400, Some(E_INVALIDARG));
    assert!(!r.has("bits-protocol"), "{:?}", r.headers);
    assert!(session_dirs(&s.spool()).is_empty());
}

#[test]
fn item_18_two_creates_get_different_session_ids_with_overwrites() {
    let s = Server::start_vdir("", "allow_overwrites = true");
    let mut c = s.conn();
    let a = assert_created(&c.create(URL));
    let b = assert_created(&c.create(URL));
    assert_ne!(a.to_ascii_lowercase(), b.to_ascii_lowercase());
}

#[test]
fn item_18_second_create_conflicts_without_overwrites() {
    let s = Server::start("");
    let mut c = s.conn();
    assert_created(&c.create(URL));
    let r = c.create(URL);
    r.assert_ack(403, Some(E_ACCESSDENIED));
    assert!(!r.has("bits-protocol"), "{:?}", r.headers);
}

#[test]
fn item_19_directory_url_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = c.create("/upload/");
    r.assert_ack(400, Some(E_INVALIDARG));
    assert!(!r.has("bits-session-id"), "{:?}", r.headers);
    // An existing subdirectory named as a file is a directory too.
    std::fs::create_dir(s.upload_path("sub")).unwrap();
    let r = c.create("/upload/sub");
    r.assert_ack(400, Some(E_INVALIDARG));
    let r = c.create("/upload/sub/");
    r.assert_ack(400, Some(E_INVALIDARG));
    assert!(session_dirs(&s.spool()).is_empty());
}

#[test]
fn item_20_path_traversal_gets_400_and_creates_nothing_outside_root() {
    let s = Server::start("");
    let mut c = s.conn();
    for url in [
        "/upload/../secret.bin",
        "/upload/%2e%2e/secret.bin",
        "/upload/%2E%2E/secret.bin",
        "/upload/..%2fsecret.bin",
        "/upload/..%5csecret.bin",
    ] {
        let r = c.create(url);
        r.assert_ack(400, Some(E_INVALIDARG));
        assert!(!r.has("bits-session-id"), "{url}: {:?}", r.headers);
    }
    // Nothing anywhere in the test dir except config, log, spool and the (empty) root.
    let top: Vec<String> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &top {
        assert!(
            ["bitsd.toml", "bitsd.log", "spool", "uploads"].contains(&name.as_str()),
            "unexpected entry {name:?} in {top:?}"
        );
    }
    assert!(!s.dir.path().join("secret.bin").exists());
    assert!(files_below(&s.root()).is_empty());
    assert!(session_dirs(&s.spool()).is_empty());
    let spool_files: Vec<_> = files_below(&s.spool())
        .into_iter()
        .filter(|p| !p.ends_with("sessions.redb"))
        .collect();
    assert!(spool_files.is_empty(), "{spool_files:?}");
}

#[test]
fn item_21_missing_parent_directory_gets_404() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = c.create("/upload/missingdir/a.bin");
    r.assert_ack(404, Some(E_PATH_NOT_FOUND));
    assert!(!r.has("bits-session-id"), "{:?}", r.headers);
    assert!(!s.root().join("missingdir").exists());
    assert!(session_dirs(&s.spool()).is_empty());
}

#[test]
fn items_56_57_host_id_and_fallback_timeout() {
    let s = Server::start("[[vdir]]\nhost_id = \"node1.example\"");
    let r = s.conn().create("/upload/h.bin");
    r.assert_ack(200, None);
    assert_eq!(r.header("bits-host-id"), Some("node1.example"));
    assert_eq!(r.header("bits-host-id-fallback-timeout"), Some("86400"));
    let s = Server::start("[[vdir]]\nhost_id = \"node1.example\"\nhost_id_fallback_timeout = 110");
    let r = s.conn().create("/upload/h.bin");
    assert_eq!(r.header("bits-host-id-fallback-timeout"), Some("110"));
    // Without a Host-Id neither header appears (item 11).
    let s = Server::start("");
    let r = s.conn().create("/upload/h.bin");
    assert!(!r.has("bits-host-id") && !r.has("bits-host-id-fallback-timeout"));
}
