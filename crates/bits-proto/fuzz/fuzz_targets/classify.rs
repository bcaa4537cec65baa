//! Builds a request (method + `HeaderMap`) from fuzz input, classifies it, and checks that an
//! accepted packet agrees with the headers it came from.
#![no_main]

use arbitrary::Arbitrary;
use bits_proto::{classify, ContentRange, Packet, PacketType, SessionId, UPLOAD_PROTOCOL_1_5};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static SHOW_OUTCOMES: OnceLock<bool> = OnceLock::new();

/// Header names the classifier looks at; a hash-map lookup gives the fuzzer no comparison to
/// learn these from, so they are offered directly next to raw names.
const KNOWN_NAMES: &[&str] = &[
    "bits-packet-type",
    "bits-session-id",
    "bits-supported-protocols",
    "content-length",
    "content-range",
    "content-encoding",
    "transfer-encoding",
    "Content-Length",
    "BITS-Packet-Type",
    "x-custom",
];

const PACKET_TYPES: &[&str] = &[
    "Ping",
    "Create-Session",
    "Fragment",
    "Close-Session",
    "Cancel-Session",
    "CREATE-SESSION",
    " fragment ",
    "Ack",
];

#[derive(Arbitrary, Debug)]
enum MethodChoice {
    BitsPost,
    BitsPostLower,
    Post,
    Get,
    Put,
}

impl MethodChoice {
    fn method(&self) -> Method {
        match self {
            MethodChoice::BitsPost => Method::from_bytes(bits_proto::BITS_POST.as_bytes()).unwrap(),
            MethodChoice::BitsPostLower => Method::from_bytes(b"bits_post").unwrap(),
            MethodChoice::Post => Method::POST,
            MethodChoice::Get => Method::GET,
            MethodChoice::Put => Method::PUT,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Raw(Vec<u8>),
    PacketType(u8),
    /// A GUID, upper- or lower-case, with or without braces.
    Guid([u8; 16], bool, bool),
    Protocol(bool),
    Number(u64),
    Range(u64, u64, u64),
    /// Many copies of one byte, to reach the header length limit.
    Repeat(u8, u16),
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Raw(b) => b.clone(),
            Value::PacketType(i) => PACKET_TYPES[*i as usize % PACKET_TYPES.len()].into(),
            Value::Guid(b, upper, braces) => {
                let mut s = SessionId::from_uuid(uuid::Uuid::from_bytes(*b)).to_string();
                if !upper {
                    s = s.to_lowercase();
                }
                if !braces {
                    s = s[1..s.len() - 1].to_string();
                }
                s.into_bytes()
            }
            Value::Protocol(upper) => {
                let s = UPLOAD_PROTOCOL_1_5.to_string();
                if *upper { s.to_uppercase() } else { s }.into_bytes()
            }
            Value::Number(n) => n.to_string().into_bytes(),
            Value::Range(a, b, c) => format!("bytes {a}-{b}/{c}").into_bytes(),
            Value::Repeat(b, n) => vec![*b; *n as usize],
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    method: MethodChoice,
    headers: Vec<(Name, Value)>,
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

fuzz_target!(|req: Request| {
    let method = req.method.method();
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let name = match name {
            Name::Known(i) => HeaderName::from_bytes(KNOWN_NAMES[*i as usize % KNOWN_NAMES.len()].as_bytes()),
            Name::Raw(b) => HeaderName::from_bytes(b),
        };
        let Ok(name) = name else { continue };
        let Ok(value) = HeaderValue::from_bytes(&value.bytes()) else { continue };
        if headers.try_append(name, value).is_err() {
            return;
        }
    }

    let result = classify(&method, &headers, &[UPLOAD_PROTOCOL_1_5]);
    if *SHOW_OUTCOMES.get_or_init(|| std::env::var_os("BITS_FUZZ_SHOW").is_some()) {
        // `BITS_FUZZ_SHOW=1 cargo fuzz run classify <corpus> -- -runs=0` tallies what a corpus reaches.
        match &result {
            Ok(p) => eprintln!("outcome: Ok({:?})", p.packet_type()),
            Err(e) => eprintln!("outcome: Err({})", format!("{e:?}").split(['(', ' ']).next().unwrap()),
        }
    }
    let Ok(packet) = result else { return };

    assert_eq!(method.as_str(), bits_proto::BITS_POST);
    let declared = declared_length(&headers);
    assert!(declared.is_some(), "accepted {packet:?} without one valid Content-Length");
    assert_eq!(PacketType::from_headers(&headers), Some(packet.packet_type()));
    match packet {
        Packet::Fragment { range, .. } => {
            assert_eq!(Some(range.len), declared, "Fragment range {range:?} vs Content-Length");
            assert!(range.end() <= range.total);
            let raw = headers.get("content-range").unwrap().to_str().unwrap();
            assert_eq!(ContentRange::parse(raw.trim()), Ok(range));
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
