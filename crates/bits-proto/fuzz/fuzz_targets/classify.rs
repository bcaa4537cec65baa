//! Builds a request (method + `HeaderMap`) from fuzz input, classifies it, and checks that an
//! accepted packet agrees with the headers it came from.
//!
//! The input is text shaped like a request head, so that seeds, the dictionary and crash
//! artifacts are readable and byte mutations stay meaningful:
//!
//! ```text
//! BITS_POST                     <- method line: one of METHODS, anything else is BITS_POST
//! BITS-Packet-Type: Fragment    <- then (name, value) pairs, one per line, split at the first ':'
//! Content-Length: 100
//! ```
//!
//! One optional space after the ':' and a trailing '\r' are dropped; lines without ':' and pairs
//! that are not a valid `HeaderName`/`HeaderValue` are skipped; repeated names are appended.
#![no_main]

use std::sync::OnceLock;

use bits_proto::{classify, Leniency, Packet, PacketType, SessionId, UPLOAD_PROTOCOL_1_5};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["BITS_POST", "bits_post", "POST", "GET", "PUT"];

fn request(data: &[u8]) -> (Method, HeaderMap) {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let method = METHODS
        .iter()
        .find(|m| m.as_bytes() == first)
        .map_or(bits_proto::BITS_POST, |m| *m);
    let method = Method::from_bytes(method.as_bytes()).unwrap();

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if headers.try_append(name, value).is_err() {
            break;
        }
    }
    (method, headers)
}

/// The Content-Length the way the headers state it, independently of the crate under test.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut all = headers.get_all(CONTENT_LENGTH).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let s = v.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

static SHOW_OUTCOMES: OnceLock<bool> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (method, headers) = request(data);
    // The lenient framings only ever admit more: whatever strict accepts, lenient accepts the
    // same way; what only lenient accepts has no Content-Length (body-less) or is chunked.
    let lenient = classify(&method, &headers, &[UPLOAD_PROTOCOL_1_5], Leniency::HTTP);
    let result = classify(&method, &headers, &[UPLOAD_PROTOCOL_1_5], Leniency::STRICT);
    match (&result, &lenient) {
        (Ok(strict), other) => assert_eq!(Ok(strict), other.as_ref()),
        (Err(_), Ok(packet)) => {
            let te = headers.get_all(TRANSFER_ENCODING).iter().count();
            let cl = headers.get_all(CONTENT_LENGTH).iter().count();
            match packet {
                Packet::Fragment { .. } => assert!(te == 1 && cl == 0, "{packet:?}"),
                _ => assert!(te == 0 && cl == 0, "{packet:?}"),
            }
        }
        (Err(_), Err(_)) => {}
    }

    if *SHOW_OUTCOMES.get_or_init(|| std::env::var_os("BITS_FUZZ_SHOW").is_some()) {
        // `BITS_FUZZ_SHOW=1 cargo fuzz run classify <corpus> -- -runs=0` tallies what a corpus
        // reaches.
        match &result {
            Ok(p) => eprintln!("outcome: Ok({:?})", p.packet_type()),
            Err(e) => eprintln!(
                "outcome: Err({})",
                format!("{e:?}").split(['(', ' ']).next().unwrap()
            ),
        }
    }
    let Ok(packet) = result else { return };

    assert_eq!(method.as_str(), bits_proto::BITS_POST);
    let declared = declared_length(&headers);
    assert!(
        declared.is_some(),
        "accepted {packet:?} without one valid Content-Length"
    );
    assert_eq!(
        PacketType::from_headers(&headers),
        Some(packet.packet_type())
    );
    match packet {
        Packet::Fragment { range, .. } => {
            assert_eq!(
                Some(range.len),
                declared,
                "Fragment range {range:?} vs Content-Length"
            );
            assert!(range.end() <= range.total, "{range:?}");
            assert!(range.len > 0 || range.total == 0, "{range:?}");
        }
        Packet::CreateSession { protocol } => {
            assert_eq!(protocol, UPLOAD_PROTOCOL_1_5);
            assert_eq!(declared, Some(0));
        }
        _ => assert_eq!(declared, Some(0), "{packet:?} with a body"),
    }
    if let Some(id) = packet.session() {
        let raw = headers.get("bits-session-id").unwrap().to_str().unwrap();
        assert_eq!(SessionId::parse(raw.trim()), Ok(id));
    }
});
