//! Feeds one arbitrary string to every header-value parser of `bits-proto` and checks the
//! invariants each accepted value must satisfy.
#![no_main]

use bits_proto::{negotiate, ContentRange, HResult, PacketType, SessionId, UPLOAD_PROTOCOL_1_5};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Header values reach the parsers as `&str` (after `HeaderValue::to_str`); invalid UTF-8
    // still gets through, lossily, so every input exercises every parser.
    let s = String::from_utf8_lossy(data);
    let s: &str = &s;

    // Content-Range.
    if let Ok(r) = ContentRange::parse(s) {
        let end = r.first.checked_add(r.len);
        assert!(end.is_some(), "{s:?}: first + len overflows: {r:?}");
        assert!(
            r.end() <= r.total,
            "{s:?}: end {} > total {}",
            r.end(),
            r.total
        );
        assert!(
            r.len > 0 || r.total == 0,
            "{s:?}: empty range of a non-empty entity: {r:?}"
        );
        let shown = r.to_string();
        assert_eq!(
            ContentRange::parse(&shown),
            Ok(r),
            "{s:?} displays as {shown:?}"
        );
    }

    // BITS-Session-Id.
    if let Ok(id) = SessionId::parse(s) {
        let shown = id.to_string();
        assert_eq!(
            SessionId::parse(&shown),
            Ok(id),
            "{s:?} displays as {shown:?}"
        );
        // Only the braced or bare 8-4-4-4-12 form, in any case, is accepted.
        let bare = &shown[1..shown.len() - 1];
        assert!(
            s.eq_ignore_ascii_case(&shown) || s.eq_ignore_ascii_case(bare),
            "{s:?} accepted as {shown:?}"
        );
    }

    // BITS-Supported-Protocols.
    if let Some(p) = negotiate(s, &[UPLOAD_PROTOCOL_1_5]) {
        assert_eq!(p, UPLOAD_PROTOCOL_1_5, "{s:?}");
    }
    assert_eq!(
        negotiate(s, &[]),
        None,
        "{s:?} negotiated with nothing supported"
    );

    // BITS-Error-Code.
    if let Some(h) = HResult::parse(s) {
        let shown = h.to_string();
        assert_eq!(
            HResult::parse(&shown),
            Some(h),
            "{s:?} displays as {shown:?}"
        );
    }

    // BITS-Packet-Type.
    if let Some(t) = PacketType::parse(s) {
        assert!(
            t.as_str().eq_ignore_ascii_case(s.trim()),
            "{s:?} parsed as {t:?}"
        );
        assert_eq!(PacketType::parse(t.as_str()), Some(t));
    }
});
