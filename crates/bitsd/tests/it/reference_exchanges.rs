//! Spec §16 reference exchanges, replayed as the exact request bytes a Windows client sends
//! (header set and order of the [MC-BUP §4.1] capture, spec §3.2–3.4), asserting every
//! response header the spec shows.

use crate::common::*;

const PATH: &str = "/upload/f.txt";

/// Exact bytes of a client request as captured: `Accept`, BITS headers, `User-Agent`, `Host`,
/// `Content-Length`, `Connection: Keep-Alive`.
fn wire(packet: &str, bits_headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head =
        format!("BITS_POST {PATH} HTTP/1.1\r\nAccept: */*\r\nBITS-Packet-Type: {packet}\r\n");
    for (k, v) in bits_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "User-Agent: Microsoft BITS/6.7\r\nHost: frankcao8\r\nContent-Length: {}\r\n\
         Connection: Keep-Alive\r\n\r\n",
        body.len()
    ));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn create_bytes() -> Vec<u8> {
    wire(
        "Create-Session",
        &[("BITS-Supported-Protocols", PROTOCOL)],
        b"",
    )
}

fn fragment_bytes(sid: &str, first: usize, data: &[u8], total: usize) -> Vec<u8> {
    let range = format!("bytes {}-{}/{}", first, first + data.len() - 1, total);
    wire(
        "Fragment",
        &[
            ("BITS-Session-Id", sid),
            ("Content-Name", "rfc2119.txt"),
            ("Content-Range", &range),
        ],
        data,
    )
}

fn ping_bytes() -> Vec<u8> {
    wire("Ping", &[], b"")
}

fn close_bytes(sid: &str) -> Vec<u8> {
    wire(
        "Close-Session",
        &[("BITS-Session-Id", sid), ("Content-Name", "rfc2119.txt")],
        b"",
    )
}

fn exchange(c: &mut Conn, request: &[u8]) -> Response {
    c.write_raw(request);
    c.read_response(false)
}

/// `← 200 | Ack | Protocol | Session-Id | CL 0 | Accept-encoding: identity`
#[track_caller]
fn assert_create_ack(r: &Response) -> String {
    r.assert_ack(200, None);
    assert_eq!(r.header("bits-protocol"), Some(PROTOCOL), "{:?}", r.headers);
    assert_eq!(
        r.header("accept-encoding"),
        Some("identity"),
        "{:?}",
        r.headers
    );
    let sid = r.session();
    assert!(is_braced_guid(&sid), "{sid:?}");
    assert!(!r.has("bits-host-id"), "{:?}", r.headers);
    sid
}

/// `← 200 | Ack | CL 0 | BITS-Received-Content-Range: n` (plus `BITS-Session-Id`, spec §4 note).
#[track_caller]
fn assert_fragment_ack(r: &Response, sid: &str, received: u64) {
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(received), "{:?}", r.headers);
    assert_eq!(r.header("bits-session-id"), Some(sid), "{:?}", r.headers);
    assert!(!r.has("bits-reply-url"), "{:?}", r.headers);
}

#[test]
fn reference_plain_upload_4892_bytes_one_fragment() {
    let s = Server::start("");
    let mut c = s.conn();
    let data = pattern(4892, 16);

    let r = exchange(&mut c, &create_bytes());
    let sid = assert_create_ack(&r);

    let r = exchange(&mut c, &fragment_bytes(&sid, 0, &data, 4892));
    assert_fragment_ack(&r, &sid, 4892);

    let r = exchange(&mut c, &ping_bytes());
    r.assert_ack(200, None);
    assert!(!r.has("bits-received-content-range"), "{:?}", r.headers);

    let r = exchange(&mut c, &close_bytes(&sid));
    r.assert_ack(200, None);
    assert_eq!(
        r.header("bits-session-id"),
        Some(sid.as_str()),
        "{:?}",
        r.headers
    );

    assert_eq!(std::fs::read(s.upload_path("f.txt")).unwrap(), data);
}

#[test]
fn reference_resync_after_lost_ack() {
    let s = Server::start("");
    let data = pattern(200_000, 161);
    let mut c = s.conn();
    let sid = assert_create_ack(&exchange(&mut c, &create_bytes()));

    let r = exchange(&mut c, &fragment_bytes(&sid, 0, &data[..65536], 200_000));
    assert_fragment_ack(&r, &sid, 65536);

    // The Ack of this one is "lost": the server stores the bytes, the client never sees the
    // answer (connection dropped) and starts again with a Ping on a new connection.
    c.write_raw(&fragment_bytes(&sid, 65536, &data[65536..131072], 200_000));
    let _lost = c.read_response(false);
    drop(c);

    let mut c = s.conn();
    exchange(&mut c, &ping_bytes()).assert_ack(200, None);

    // Duplicate: nothing written, server says where it is.
    let r = exchange(
        &mut c,
        &fragment_bytes(&sid, 65536, &data[65536..131072], 200_000),
    );
    assert_fragment_ack(&r, &sid, 131072);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&data[..131072]));

    // Final fragment commits the file.
    let r = exchange(
        &mut c,
        &fragment_bytes(&sid, 131072, &data[131072..], 200_000),
    );
    assert_fragment_ack(&r, &sid, 200_000);
    assert_eq!(std::fs::read(s.upload_path("f.txt")).unwrap(), data);

    let r = exchange(&mut c, &close_bytes(&sid));
    r.assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("f.txt")).unwrap(), data);
}

#[test]
fn reference_resync_after_lost_ack_with_new_connection_per_request() {
    // Same exchange as above, but the duplicate is sent on its own connection that the client
    // abandons without reading: a duplicate the server processes for a vanished client must
    // not disturb the stored data or the remaining steps.
    let s = Server::start("");
    let data = pattern(200_000, 162);
    let mut c = s.conn();
    let sid = assert_create_ack(&exchange(&mut c, &create_bytes()));
    assert_fragment_ack(
        &exchange(&mut c, &fragment_bytes(&sid, 0, &data[..65536], 200_000)),
        &sid,
        65536,
    );
    c.write_raw(&fragment_bytes(&sid, 65536, &data[65536..131072], 200_000));
    let _lost = c.read_response(false);
    drop(c);

    let mut c = s.conn();
    exchange(&mut c, &ping_bytes()).assert_ack(200, None);
    let mut dup = s.conn();
    dup.write_raw(&fragment_bytes(&sid, 65536, &data[65536..131072], 200_000));
    // Wait until the server has dealt with it (answer or connection closed).
    let _ = dup.is_closed();
    drop(dup);
    // Whatever happened to the duplicate, the stored data must be unchanged.
    assert_eq!(s.session_data(&sid).as_deref(), Some(&data[..131072]));

    let r = exchange(
        &mut c,
        &fragment_bytes(&sid, 131072, &data[131072..], 200_000),
    );
    assert_fragment_ack(&r, &sid, 200_000);
    assert_eq!(std::fs::read(s.upload_path("f.txt")).unwrap(), data);
    exchange(&mut c, &close_bytes(&sid)).assert_ack(200, None);
}

#[test]
fn reference_gap_gets_416_then_resumes() {
    let s = Server::start("");
    let data = pattern(1000, 163);
    let mut c = s.conn();
    let sid = assert_create_ack(&exchange(&mut c, &create_bytes()));

    // Server holds 0..=99.
    assert_fragment_ack(
        &exchange(&mut c, &fragment_bytes(&sid, 0, &data[..100], 1000)),
        &sid,
        100,
    );

    // ← 416 | Ack | Session-Id | BITS-Received-Content-Range: 100
    let r = exchange(&mut c, &fragment_bytes(&sid, 200, &data[200..300], 1000));
    r.assert_416(&sid, 100);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&data[..100]));

    // ← 200 | Received 200
    let r = exchange(&mut c, &fragment_bytes(&sid, 100, &data[100..200], 1000));
    assert_fragment_ack(&r, &sid, 200);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&data[..200]));
}
