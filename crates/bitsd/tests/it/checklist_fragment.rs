//! Spec §18 checklist items 22–42: Fragment processing (spec §7).

use crate::common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const URL: &str = "/upload/a.bin";

fn new_session(c: &mut Conn, url: &str) -> String {
    let r = c.create(url);
    r.assert_ack(200, None);
    r.session()
}

#[track_caller]
fn assert_ok_fragment(r: &Response, sid: &str, received: u64) {
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(received), "{:?}", r.headers);
    assert_eq!(r.header("bits-session-id"), Some(sid), "{:?}", r.headers);
    assert!(!r.has("bits-reply-url"), "{:?}", r.headers);
}

/// The 300-byte file of items 22–30 and the item-25 fragment whose first 50 bytes differ from
/// what item 23 sent for bytes 150..200.
fn item_22_data() -> (Vec<u8>, Vec<u8>) {
    let full = pattern(300, 22);
    let mut frag25 = full[150..250].to_vec();
    for b in &mut frag25[..50] {
        *b = !*b;
    }
    (full, frag25)
}

/// Items 22–25 on a fresh session; returns the session id.
fn items_22_to_25(s: &Server, c: &mut Conn) -> String {
    let (full, frag25) = item_22_data();
    let sid = new_session(c, URL);

    // 22: first fragment.
    let r = c.fragment(URL, &sid, 0, &full[0..100], 300);
    assert_ok_fragment(&r, &sid, 100);

    // 23: next contiguous fragment.
    let r = c.fragment(URL, &sid, 100, &full[100..200], 300);
    assert_ok_fragment(&r, &sid, 200);

    // 24: gap -> 416 with the resync offset, nothing stored.
    let r = c.fragment(URL, &sid, 250, &full[250..300], 300);
    r.assert_416(&sid, 200);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&full[..200]));

    // 25: overlap; the already-held bytes 150..200 are not overwritten.
    let r = c.fragment(URL, &sid, 150, &frag25, 300);
    assert_ok_fragment(&r, &sid, 250);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&full[..250]));
    sid
}

#[test]
fn items_22_to_29_contiguous_gap_overlap_total_change_and_completion() {
    let s = Server::start("");
    let mut c = s.conn();
    let (full, _) = item_22_data();
    let sid = items_22_to_25(&s, &mut c);

    // 27: total changed -> 400; the session stays usable.
    let r = c.fragment(URL, &sid, 250, &full[250..300], 400);
    r.assert_ack(400, Some(E_INVALIDARG));
    assert_eq!(s.session_data(&sid).as_deref(), Some(&full[..250]));

    // 29: nothing at the destination before the last byte arrived.
    assert!(!s.upload_path("a.bin").exists());
    let g = c.send("GET", URL, &[], b"");
    assert_eq!(g.status, 404, "{:?}", g.headers);

    // 28: final fragment completes and publishes the assembled bytes.
    let r = c.fragment(URL, &sid, 250, &full[250..300], 300);
    assert_ok_fragment(&r, &sid, 300);
    let published = std::fs::read(s.upload_path("a.bin")).expect("published file");
    assert_eq!(published.len(), 300);
    // Bytes 150..200 are those of item 23, not of item 25.
    assert_eq!(&published[150..200], &full[150..200]);
    assert_eq!(published, full);
}

#[test]
fn item_26_duplicate_fragment_gets_200_with_unchanged_received() {
    let s = Server::start("");
    let mut c = s.conn();
    let (full, _) = item_22_data();
    let sid = items_22_to_25(&s, &mut c);

    let r = c.fragment(URL, &sid, 0, &full[0..100], 300);
    assert_ok_fragment(&r, &sid, 250);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&full[..250]));

    // 27 and 28 still work afterwards, on the same connection.
    c.fragment(URL, &sid, 250, &full[250..300], 400)
        .assert_ack(400, Some(E_INVALIDARG));
    let r = c.fragment(URL, &sid, 250, &full[250..300], 300);
    assert_ok_fragment(&r, &sid, 300);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), full);
}

#[test]
fn item_30_retransmitted_final_fragment_gets_200_and_file_unchanged() {
    let s = Server::start("");
    let mut c = s.conn();
    let (full, _) = item_22_data();
    let sid = new_session(&mut c, URL);
    assert_ok_fragment(&c.fragment(URL, &sid, 0, &full[..250], 300), &sid, 250);
    assert_ok_fragment(&c.fragment(URL, &sid, 250, &full[250..], 300), &sid, 300);
    let before = std::fs::metadata(s.upload_path("a.bin")).unwrap();

    let r = c.fragment(URL, &sid, 250, &full[250..], 300);
    assert_ok_fragment(&r, &sid, 300);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), full);
    let after = std::fs::metadata(s.upload_path("a.bin")).unwrap();
    assert_eq!(
        before.modified().unwrap(),
        after.modified().unwrap(),
        "file was rewritten"
    );
    // Same connection still usable.
    c.close(URL, &sid).assert_ack(200, None);
}

#[test]
fn item_24_gap_on_first_fragment_gets_416_with_received_0() {
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(300, 24);
    let r = c.fragment(URL, &sid, 100, &data[100..200], 300);
    r.assert_416(&sid, 0);
    assert_eq!(s.session_data(&sid).as_deref(), Some(&b""[..]));
    let r = c.fragment(URL, &sid, 0, &data[..100], 300);
    assert_ok_fragment(&r, &sid, 100);
}

#[test]
fn item_25_large_overlap_spanning_many_body_chunks() {
    // The already-held prefix of an overlapping fragment spans several network reads.
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let full = pattern(3_000_000, 251);
    assert_ok_fragment(
        &c.fragment(URL, &sid, 0, &full[..1_500_000], 3_000_000),
        &sid,
        1_500_000,
    );
    let mut overlap = full[200_000..2_000_000].to_vec();
    for b in &mut overlap[..1_300_000] {
        *b = b.wrapping_add(1);
    }
    assert_ok_fragment(
        &c.fragment(URL, &sid, 200_000, &overlap, 3_000_000),
        &sid,
        2_000_000,
    );
    assert_ok_fragment(
        &c.fragment(URL, &sid, 2_000_000, &full[2_000_000..], 3_000_000),
        &sid,
        3_000_000,
    );
    assert!(std::fs::read(s.upload_path("a.bin")).unwrap() == full);
}

#[test]
fn item_31_fragment_without_session_id_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    new_session(&mut c, URL);
    let r = c.bits(
        URL,
        "Fragment",
        &[("Content-Range", "bytes 0-9/10")],
        b"0123456789",
    );
    r.assert_ack(400, Some(E_INVALIDARG));
    assert!(!s.upload_path("a.bin").exists());
}

#[test]
fn item_32_fragment_for_unknown_session_gets_500() {
    let s = Server::start("");
    let mut c = s.conn();
    let r = c.fragment(
        URL,
        "{00000000-0000-0000-0000-000000000000}",
        0,
        &pattern(100, 32),
        300,
    );
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    // A well-formed random id the server never issued.
    let r = c.fragment(
        URL,
        "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}",
        0,
        &pattern(100, 32),
        300,
    );
    r.assert_ack(500, Some(SESSION_NOT_FOUND));
    assert!(files_below(&s.root()).is_empty());
}

#[test]
fn item_33_fragment_without_content_range_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let r = c.bits(URL, "Fragment", &[("BITS-Session-Id", &sid)], b"0123456789");
    r.assert_ack(400, Some(E_INVALIDARG));
    // Nothing was stored: the session still wants byte 0.
    let r = c.fragment(URL, &sid, 0, b"0123456789", 10);
    assert_ok_fragment(&r, &sid, 10);
}

#[test]
fn item_34_malformed_content_ranges_get_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    for (range, len) in [
        ("bytes 10-5/100", 6),
        ("bytes 0-99/50", 100),
        ("bytes 0-9", 10),
        ("0-9/10", 10),
        ("items 0-9/10", 10),
    ] {
        let r = c.fragment_raw_range(URL, &sid, range, &pattern(len, 34));
        assert_eq!(r.status, 400, "{range:?}: {:?}", r.headers);
        r.assert_ack(400, Some(E_INVALIDARG));
    }
    // None of them stored anything or fixed a total.
    assert_eq!(s.session_data(&sid).as_deref(), Some(&b""[..]));
    let r = c.fragment(URL, &sid, 0, b"0123456789", 10);
    assert_ok_fragment(&r, &sid, 10);
}

#[test]
fn item_35_content_length_not_matching_range_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(300, 35);
    // Content-Range says 100 bytes, Content-Length (and body) 90.
    let r = c.fragment_raw_range(URL, &sid, "bytes 0-99/300", &data[..90]);
    r.assert_ack(400, Some(E_INVALIDARG));
    assert_eq!(s.session_data(&sid).as_deref(), Some(&b""[..]));
    // Content-Length (and body) larger than the range.
    let mut c = s.conn();
    let r = c.fragment_raw_range(URL, &sid, "bytes 0-99/300", &data[..110]);
    r.assert_ack(400, Some(E_INVALIDARG));
    assert_eq!(s.session_data(&sid).as_deref(), Some(&b""[..]));
    // Received did not advance: the next valid fragment from 0 is accepted.
    let mut c = s.conn();
    let r = c.fragment(URL, &sid, 0, &data[..100], 300);
    assert_ok_fragment(&r, &sid, 100);
}

#[test]
fn item_36_content_encoding_other_than_identity_gets_400() {
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(20, 36);
    let r = c.bits(
        URL,
        "Fragment",
        &[
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 0-9/20"),
            ("Content-Encoding", "gzip"),
        ],
        &data[..10],
    );
    r.assert_ack(400, Some(E_INVALIDARG));
    let r = c.bits(
        URL,
        "Fragment",
        &[
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 0-9/20"),
            ("Content-Encoding", "identity"),
        ],
        &data[..10],
    );
    assert_ok_fragment(&r, &sid, 10);
}

#[test]
fn item_37_session_id_is_case_insensitive() {
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(300, 37);
    let lower = sid.to_ascii_lowercase();
    let upper = sid.to_ascii_uppercase();
    let r = c.fragment(URL, &lower, 0, &data[..100], 300);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(100));
    assert!(
        r.header("bits-session-id")
            .is_some_and(|v| v.eq_ignore_ascii_case(&sid)),
        "{:?}",
        r.headers
    );
    let r = c.fragment(URL, &upper, 100, &data[100..200], 300);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(200));
    let r = c.fragment(URL, &lower, 200, &data[200..], 300);
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(300));
    c.close(URL, &lower).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}

#[test]
fn item_38_fragment_over_per_request_limit_gets_413_then_smaller_fragments_work() {
    const MIB: usize = 1 << 20;
    let s = Server::start_vdir("", "max_fragment_size = 1048576");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(3 * MIB, 38);

    let req = request_bytes(
        "BITS_POST",
        URL,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            (
                "Content-Range",
                &format!("bytes 0-{}/{}", 2 * MIB - 1, 3 * MIB),
            ),
        ],
        &data[..2 * MIB],
    );
    // The server may answer before reading the body and then close instead of draining.
    let wrote = c.try_write_raw(&req);
    let r = c.read_response(false);
    r.assert_ack(413, Some(HTTP_413));
    assert_eq!(s.session_data(&sid).as_deref(), Some(&b""[..]));

    let mut next = 0;
    if wrote.is_ok() && r.header("connection") != Some("close") {
        // Body drained: the same connection carries on.
        let r = c.fragment(URL, &sid, 0, &data[..MIB], 3 * MIB as u64);
        assert_ok_fragment(&r, &sid, MIB as u64);
        next = MIB;
    } else {
        assert!(c.is_closed(), "neither drained nor closed");
    }

    let mut c = s.conn();
    while next < data.len() {
        let end = next + MIB;
        let r = c.fragment(URL, &sid, next as u64, &data[next..end], 3 * MIB as u64);
        assert_ok_fragment(&r, &sid, end as u64);
        next = end;
    }
    assert!(std::fs::read(s.upload_path("a.bin")).unwrap() == data);
}

#[test]
fn item_38_oversized_fragment_on_same_connection_is_drained() {
    // The decision for this server is to drain (drain_limit is 64 MiB by default): the 413 must
    // not close the connection, and the next request on it must be parsed correctly.
    const MIB: usize = 1 << 20;
    let s = Server::start_vdir("", "max_fragment_size = 1048576");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(2 * MIB, 381);
    let r = c.fragment(URL, &sid, 0, &data, 2 * MIB as u64);
    r.assert_ack(413, Some(HTTP_413));
    assert_ne!(r.header("connection"), Some("close"), "{:?}", r.headers);
    let r = c.fragment(URL, &sid, 0, &data[..MIB], 2 * MIB as u64);
    assert_ok_fragment(&r, &sid, MIB as u64);
    let r = c.fragment(URL, &sid, MIB as u64, &data[MIB..], 2 * MIB as u64);
    assert_ok_fragment(&r, &sid, 2 * MIB as u64);
    assert!(std::fs::read(s.upload_path("a.bin")).unwrap() == data);
}

#[test]
fn item_39_existing_destination_conflicts_with_403_by_default() {
    let s = Server::start("");
    std::fs::write(s.upload_path("a.bin"), b"original").unwrap();
    let mut c = s.conn();
    let r = c.create(URL);
    r.assert_ack(403, Some(E_ACCESSDENIED));
    assert!(!r.has("bits-protocol"), "{:?}", r.headers);
    assert!(!r.has("bits-session-id"), "{:?}", r.headers);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), b"original");
    assert!(session_dirs(&s.spool()).is_empty());
}

#[test]
fn item_39_existing_destination_conflicts_with_409_when_configured() {
    let s = Server::start_vdir("", "conflict_status = \"conflict\"");
    std::fs::write(s.upload_path("a.bin"), b"original").unwrap();
    let mut c = s.conn();
    let r = c.create(URL);
    r.assert_ack(409, Some(E_ACCESSDENIED));
    assert!(!r.has("bits-protocol"), "{:?}", r.headers);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), b"original");
}

#[test]
fn item_39_destination_appearing_during_upload_is_not_clobbered() {
    // Spec §8.3: the overwrite check is made at Create-Session *and again at commit*.
    let s = Server::start("");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(200, 391);
    assert_ok_fragment(&c.fragment(URL, &sid, 0, &data[..100], 200), &sid, 100);
    std::fs::write(s.upload_path("a.bin"), b"someone else").unwrap();
    let r = c.fragment(URL, &sid, 100, &data[100..], 200);
    r.assert_ack(403, Some(E_ACCESSDENIED));
    assert_eq!(
        std::fs::read(s.upload_path("a.bin")).unwrap(),
        b"someone else"
    );
}

#[test]
fn item_40_overwrite_replaces_destination_atomically() {
    let s = Server::start_vdir("", "allow_overwrites = true");
    let old = pattern(256 * 1024, 401);
    let new = pattern(384 * 1024, 402);
    let dest = s.upload_path("a.bin");
    std::fs::write(&dest, &old).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dest, old, new) = (stop.clone(), dest.clone(), old.clone(), new.clone());
        std::thread::spawn(move || {
            let (mut saw_old, mut saw_new) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let got = std::fs::read(&dest).expect("destination vanished during the upload");
                if got == old {
                    saw_old += 1;
                } else if got == new {
                    saw_new += 1;
                } else {
                    panic!(
                        "reader saw a file that is neither old nor new ({} bytes)",
                        got.len()
                    );
                }
            }
            (saw_old, saw_new)
        })
    };

    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let frag = 32 * 1024;
    let mut off = 0;
    while off < new.len() {
        let end = (off + frag).min(new.len());
        let r = c.fragment(URL, &sid, off as u64, &new[off..end], new.len() as u64);
        assert_ok_fragment(&r, &sid, end as u64);
        if end < new.len() {
            assert_eq!(std::fs::read(&dest).unwrap(), old, "replaced too early");
        }
        off = end;
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let (saw_old, saw_new) = reader.join().expect("reader");
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
    c.close(URL, &sid).assert_ack(200, None);

    assert_eq!(std::fs::read(&dest).unwrap(), new);
    assert_eq!(files_below(&s.root()), vec![dest]);
}

#[test]
fn item_41_total_over_maximum_upload_size_gets_500() {
    let s = Server::start_vdir("", "max_upload_size = 1000");
    let mut c = s.conn();
    let sid = new_session(&mut c, URL);
    let data = pattern(100, 41);
    let r = c.fragment(URL, &sid, 0, &data, 2000);
    r.assert_ack(500, Some(TOO_LARGE));
    // Nothing stored: no bytes, no destination, and no total fixed.
    assert_eq!(s.session_data(&sid).as_deref(), Some(&b""[..]));
    assert!(!s.upload_path("a.bin").exists());
    let r = c.fragment(URL, &sid, 0, &data, 1000);
    assert_ok_fragment(&r, &sid, 100);
}

#[test]
fn item_42_total_equal_to_maximum_upload_size_succeeds() {
    let s = Server::start_vdir("", "max_upload_size = 1000");
    let mut c = s.conn();
    let data = pattern(1000, 42);
    let sid = upload(&mut c, URL, &data, 400);
    c.close(URL, &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}
