//! Classifying a `BITS_POST` request (method + headers) into a typed [`Packet`].

use std::fmt;

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method};

use crate::headers;
use crate::protocol::{negotiate, ProtocolId};
use crate::range::{ContentRange, RangeError};
use crate::session_id::SessionId;

/// Windows servers reject header values longer than this with 400 + E_INVALIDARG.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;

/// Request shapes that Windows never sends but plain HTTP allows, and that hand-written clients
/// do send (Python's `http.client`, scripted uploaders). Each one is framing HTTP itself
/// defines, so admitting it cannot make one request read as two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leniency {
    /// Ping, Create-Session, Close-Session and Cancel-Session without `Content-Length` (and
    /// without `Transfer-Encoding`) have an empty body, as HTTP/1.1 says of any request
    /// without either (RFC 9112 §6.3). A Fragment still needs one.
    pub bodyless_without_length: bool,
    /// A Fragment with `Transfer-Encoding: chunked` and no `Content-Length`, whose decoded body
    /// must then be exactly the `Content-Range` length (the server checks that while it
    /// streams).
    pub chunked_fragments: bool,
}

impl Leniency {
    /// What Windows sends and nothing else: `Content-Length` on every request.
    pub const STRICT: Leniency = Leniency {
        bodyless_without_length: false,
        chunked_fragments: false,
    };
    /// Both leniencies (the server's default).
    pub const HTTP: Leniency = Leniency {
        bodyless_without_length: true,
        chunked_fragments: true,
    };
}

impl Default for Leniency {
    fn default() -> Leniency {
        Leniency::HTTP
    }
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` (or, for a body-less packet admitted by
    /// [`Leniency::bodyless_without_length`], no framing header: an empty body).
    Length(u64),
    /// `Transfer-Encoding: chunked`: the length is known only at the end of the body, so the
    /// server must refuse a body that decodes to more or fewer bytes than the packet says.
    Chunked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    Ping,
    CreateSession,
    Fragment,
    CloseSession,
    CancelSession,
}

impl PacketType {
    /// Packet types are matched case-insensitively: the spec writes `CREATE-SESSION`,
    /// Windows clients send `Create-Session`.
    pub fn parse(s: &str) -> Option<PacketType> {
        const ALL: [(&str, PacketType); 5] = [
            ("ping", PacketType::Ping),
            ("create-session", PacketType::CreateSession),
            ("fragment", PacketType::Fragment),
            ("close-session", PacketType::CloseSession),
            ("cancel-session", PacketType::CancelSession),
        ];
        let s = s.trim();
        ALL.iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, t)| t)
    }

    /// The type named in the request headers, if any (for logs, before validation).
    pub fn from_headers(headers: &HeaderMap) -> Option<PacketType> {
        headers
            .get(headers::PACKET_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(PacketType::parse)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            PacketType::Ping => "Ping",
            PacketType::CreateSession => "Create-Session",
            PacketType::Fragment => "Fragment",
            PacketType::CloseSession => "Close-Session",
            PacketType::CancelSession => "Cancel-Session",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated request packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Ping,
    CreateSession {
        protocol: ProtocolId,
    },
    Fragment {
        session: SessionId,
        range: ContentRange,
    },
    CloseSession {
        session: SessionId,
    },
    CancelSession {
        session: SessionId,
    },
}

impl Packet {
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Packet::Ping => PacketType::Ping,
            Packet::CreateSession { .. } => PacketType::CreateSession,
            Packet::Fragment { .. } => PacketType::Fragment,
            Packet::CloseSession { .. } => PacketType::CloseSession,
            Packet::CancelSession { .. } => PacketType::CancelSession,
        }
    }

    pub const fn session(&self) -> Option<SessionId> {
        match self {
            Packet::Fragment { session, .. }
            | Packet::CloseSession { session }
            | Packet::CancelSession { session } => Some(*session),
            Packet::Ping | Packet::CreateSession { .. } => None,
        }
    }
}

/// Why a request is not a valid packet. Every variant but [`ProtoError::ForeignSessionId`] is a
/// client error answered with 400 + E_INVALIDARG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("method {0} is not BITS_POST")]
    NotBitsPost(String),
    #[error("header {0} is longer than {MAX_HEADER_VALUE_LEN} bytes")]
    HeaderTooLong(String),
    #[error("header {0} is not visible ASCII")]
    HeaderNotText(&'static str),
    #[error("upload messages must use HTTP/1.1")]
    HttpVersion,
    #[error("header {0} appears more than once")]
    DuplicateHeader(&'static str),
    #[error("Content-Length is missing")]
    MissingContentLength,
    #[error("Content-Length is not one decimal number")]
    InvalidContentLength,
    #[error("Transfer-Encoding is not allowed on BITS_POST")]
    TransferEncoding,
    #[error("Transfer-Encoding together with Content-Length")]
    TransferEncodingWithLength,
    #[error("Transfer-Encoding other than chunked")]
    UnsupportedTransferEncoding,
    #[error("BITS-Packet-Type is missing")]
    MissingPacketType,
    #[error("BITS-Packet-Type {0:?} is unknown")]
    UnknownPacketType(String),
    #[error("{0} carries a body")]
    BodyNotAllowed(PacketType),
    #[error("BITS-Session-Id is missing")]
    MissingSessionId,
    #[error("BITS-Session-Id is not a session this server issued")]
    ForeignSessionId,
    #[error("BITS-Supported-Protocols is missing")]
    MissingSupportedProtocols,
    #[error("no offered protocol is supported")]
    NoCommonProtocol,
    #[error("Content-Range is missing")]
    MissingContentRange,
    #[error(transparent)]
    InvalidContentRange(#[from] RangeError),
    #[error("Content-Length {content_length} does not match Content-Range length {range_len}")]
    LengthMismatch { content_length: u64, range_len: u64 },
    #[error("Content-Encoding {0:?} is not supported (identity only)")]
    UnsupportedContentEncoding(String),
}

fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ProtoError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ProtoError::HeaderNotText(name)),
    }
}

/// The declared body length: exactly one `Content-Length` holding one decimal number.
pub fn content_length(headers: &HeaderMap) -> Result<u64, ProtoError> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next().ok_or(ProtoError::MissingContentLength)?;
    if values.next().is_some() {
        return Err(ProtoError::InvalidContentLength);
    }
    let s = first
        .to_str()
        .map_err(|_| ProtoError::InvalidContentLength)?
        .trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtoError::InvalidContentLength);
    }
    s.parse().map_err(|_| ProtoError::InvalidContentLength)
}

/// The session a request names, when it is of a type that names one and the id parses: what
/// an error Ack echoes even when the request is otherwise invalid.
pub fn named_session(headers: &HeaderMap) -> Option<SessionId> {
    match PacketType::from_headers(headers)? {
        PacketType::Fragment | PacketType::CloseSession | PacketType::CancelSession => {
            let raw = headers.get(headers::SESSION_ID)?.to_str().ok()?;
            SessionId::parse(raw.trim()).ok()
        }
        PacketType::Ping | PacketType::CreateSession => None,
    }
}

/// The body framing of a packet of type `packet_type`, under `leniency`.
fn framing(
    headers: &HeaderMap,
    packet_type: PacketType,
    leniency: Leniency,
) -> Result<Framing, ProtoError> {
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(coding) = codings.next() else {
        return match content_length(headers) {
            Err(ProtoError::MissingContentLength)
                if leniency.bodyless_without_length && packet_type != PacketType::Fragment =>
            {
                Ok(Framing::Length(0))
            }
            other => other.map(Framing::Length),
        };
    };
    if !leniency.chunked_fragments {
        return Err(ProtoError::TransferEncoding);
    }
    // Both framings at once is the classic request-smuggling shape: refused whatever the
    // values, never resolved in favour of one of them.
    if headers.contains_key(CONTENT_LENGTH) {
        return Err(ProtoError::TransferEncodingWithLength);
    }
    // Exactly `chunked`, once: a list (`gzip, chunked`) or a second header is refused.
    let only_chunked = codings.next().is_none()
        && coding
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if !only_chunked {
        return Err(ProtoError::UnsupportedTransferEncoding);
    }
    if packet_type != PacketType::Fragment {
        return Err(ProtoError::BodyNotAllowed(packet_type));
    }
    Ok(Framing::Chunked)
}

/// Turns method + headers into a packet, applying the generic checks of spec §10.3 (items 3–5)
/// in order. `supported` lists the upload protocols this server speaks; `leniency` says which
/// non-Windows framings are admitted.
pub fn classify(
    method: &Method,
    headers: &HeaderMap,
    supported: &[ProtocolId],
    leniency: Leniency,
) -> Result<Packet, ProtoError> {
    if method.as_str() != crate::BITS_POST {
        return Err(ProtoError::NotBitsPost(method.to_string()));
    }
    if let Some((name, _)) = headers.iter().find(|(_, v)| v.len() > MAX_HEADER_VALUE_LEN) {
        return Err(ProtoError::HeaderTooLong(name.to_string()));
    }
    // One value each: with two, different parts of a chain could act on different ones.
    for name in [
        headers::PACKET_TYPE,
        headers::SESSION_ID,
        headers::SUPPORTED_PROTOCOLS,
        "content-range",
        "content-encoding",
    ] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(ProtoError::DuplicateHeader(name));
        }
    }
    if headers.contains_key(TRANSFER_ENCODING) && !leniency.chunked_fragments {
        return Err(ProtoError::TransferEncoding);
    }
    if !headers.contains_key(TRANSFER_ENCODING) && !leniency.bodyless_without_length {
        content_length(headers)?;
    }
    let raw_type = text(headers, headers::PACKET_TYPE)?.ok_or(ProtoError::MissingPacketType)?;
    let packet_type = PacketType::parse(raw_type)
        .ok_or_else(|| ProtoError::UnknownPacketType(raw_type.into()))?;
    let framing = framing(headers, packet_type, leniency)?;
    if packet_type != PacketType::Fragment && framing != Framing::Length(0) {
        return Err(ProtoError::BodyNotAllowed(packet_type));
    }
    let session = || -> Result<SessionId, ProtoError> {
        let raw = text(headers, headers::SESSION_ID)?.ok_or(ProtoError::MissingSessionId)?;
        SessionId::parse(raw).map_err(|_| ProtoError::ForeignSessionId)
    };
    Ok(match packet_type {
        PacketType::Ping => Packet::Ping,
        PacketType::CreateSession => {
            let offered = text(headers, headers::SUPPORTED_PROTOCOLS)?
                .ok_or(ProtoError::MissingSupportedProtocols)?;
            let protocol = negotiate(offered, supported).ok_or(ProtoError::NoCommonProtocol)?;
            Packet::CreateSession { protocol }
        }
        PacketType::Fragment => {
            let session = session()?;
            if let Some(enc) = text(headers, CONTENT_ENCODING.as_str())? {
                if !enc.eq_ignore_ascii_case("identity") {
                    return Err(ProtoError::UnsupportedContentEncoding(enc.into()));
                }
            }
            let raw = text(headers, "content-range")?.ok_or(ProtoError::MissingContentRange)?;
            let range = ContentRange::parse(raw)?;
            match framing {
                Framing::Length(body_len) if body_len != range.len => {
                    return Err(ProtoError::LengthMismatch {
                        content_length: body_len,
                        range_len: range.len,
                    })
                }
                Framing::Length(_) | Framing::Chunked => {}
            }
            Packet::Fragment { session, range }
        }
        PacketType::CloseSession => Packet::CloseSession {
            session: session()?,
        },
        PacketType::CancelSession => Packet::CancelSession {
            session: session()?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UPLOAD_PROTOCOL_1_5;
    use http::HeaderValue;

    const SID: &str = "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}";

    fn bits_post() -> Method {
        Method::from_bytes(b"BITS_POST").unwrap()
    }

    fn req(pairs: &[(&'static str, &str)]) -> Result<Packet, ProtoError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        classify(&bits_post(), &h, &[UPLOAD_PROTOCOL_1_5], Leniency::STRICT)
    }

    fn lenient(pairs: &[(&'static str, &str)]) -> Result<Packet, ProtoError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        classify(&bits_post(), &h, &[UPLOAD_PROTOCOL_1_5], Leniency::HTTP)
    }

    #[test]
    fn ping_any_case() {
        for t in ["Ping", "PING", "ping", " ping "] {
            assert_eq!(
                req(&[("bits-packet-type", t), ("content-length", "0")]),
                Ok(Packet::Ping)
            );
        }
    }

    #[test]
    fn generic_errors() {
        assert_eq!(
            req(&[("bits-packet-type", "Ping"), ("content-length", "5")]),
            Err(ProtoError::BodyNotAllowed(PacketType::Ping))
        );
        assert_eq!(
            req(&[("content-length", "0")]),
            Err(ProtoError::MissingPacketType)
        );
        assert_eq!(
            req(&[("bits-packet-type", "Foo"), ("content-length", "0")]),
            Err(ProtoError::UnknownPacketType("Foo".into()))
        );
        assert_eq!(
            req(&[("bits-packet-type", "Ping")]),
            Err(ProtoError::MissingContentLength)
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Ping"),
                ("content-length", "0"),
                ("content-length", "0")
            ]),
            Err(ProtoError::InvalidContentLength)
        );
        assert_eq!(
            req(&[("bits-packet-type", "Ping"), ("content-length", "+0")]),
            Err(ProtoError::InvalidContentLength)
        );
        let long = "x".repeat(MAX_HEADER_VALUE_LEN + 1);
        assert!(matches!(
            req(&[
                ("bits-packet-type", "Ping"),
                ("content-length", "0"),
                ("x-custom", &long)
            ]),
            Err(ProtoError::HeaderTooLong(_))
        ));
        assert_eq!(
            req(&[
                ("bits-packet-type", "Ping"),
                ("content-length", "0"),
                ("transfer-encoding", "chunked")
            ]),
            Err(ProtoError::TransferEncoding)
        );
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("0"));
        assert!(matches!(
            classify(&Method::POST, &h, &[UPLOAD_PROTOCOL_1_5], Leniency::STRICT),
            Err(ProtoError::NotBitsPost(_))
        ));
    }

    #[test]
    fn duplicate_bits_headers_are_refused() {
        assert_eq!(
            req(&[
                ("bits-packet-type", "Ping"),
                ("bits-packet-type", "Create-Session"),
                ("content-length", "0")
            ]),
            Err(ProtoError::DuplicateHeader("bits-packet-type"))
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", SID),
                ("content-range", "bytes 0-0/1"),
                ("content-range", "bytes 0-0/2"),
                ("content-length", "1")
            ]),
            Err(ProtoError::DuplicateHeader("content-range"))
        );
    }

    #[test]
    fn create_session() {
        let p = "{7DF0354D-249B-430F-820D-3D2A9BEF4931}";
        assert_eq!(
            req(&[
                ("bits-packet-type", "Create-Session"),
                ("content-length", "0"),
                ("bits-supported-protocols", p)
            ]),
            Ok(Packet::CreateSession {
                protocol: UPLOAD_PROTOCOL_1_5
            })
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Create-Session"),
                ("content-length", "0")
            ]),
            Err(ProtoError::MissingSupportedProtocols)
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Create-Session"),
                ("content-length", "0"),
                (
                    "bits-supported-protocols",
                    "{11111111-1111-1111-1111-111111111111}"
                )
            ]),
            Err(ProtoError::NoCommonProtocol)
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Create-Session"),
                ("content-length", "8"),
                ("bits-supported-protocols", p)
            ]),
            Err(ProtoError::BodyNotAllowed(PacketType::CreateSession))
        );
    }

    #[test]
    fn fragment() {
        let ok = req(&[
            ("bits-packet-type", "Fragment"),
            ("bits-session-id", &SID.to_lowercase()),
            ("content-range", "bytes 0-99/300"),
            ("content-length", "100"),
            ("content-encoding", "identity"),
        ]);
        assert_eq!(
            ok,
            Ok(Packet::Fragment {
                session: SessionId::parse(SID).unwrap(),
                range: ContentRange::new(0, 99, 300).unwrap()
            })
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Fragment"),
                ("content-range", "bytes 0-99/300"),
                ("content-length", "100")
            ]),
            Err(ProtoError::MissingSessionId)
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", SID),
                ("content-length", "100")
            ]),
            Err(ProtoError::MissingContentRange)
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", SID),
                ("content-range", "bytes 0-99/300"),
                ("content-length", "90")
            ]),
            Err(ProtoError::LengthMismatch {
                content_length: 90,
                range_len: 100
            })
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", SID),
                ("content-range", "bytes 0-99/300"),
                ("content-length", "100"),
                ("content-encoding", "gzip")
            ]),
            Err(ProtoError::UnsupportedContentEncoding("gzip".into()))
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", "not-a-guid"),
                ("content-range", "bytes 0-99/300"),
                ("content-length", "100")
            ]),
            Err(ProtoError::ForeignSessionId)
        );
    }

    #[test]
    fn close_and_cancel() {
        let sid = SessionId::parse(SID).unwrap();
        assert_eq!(
            req(&[
                ("bits-packet-type", "Close-Session"),
                ("bits-session-id", SID),
                ("content-length", "0")
            ]),
            Ok(Packet::CloseSession { session: sid })
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "cancel-session"),
                ("bits-session-id", SID),
                ("content-length", "0")
            ]),
            Ok(Packet::CancelSession { session: sid })
        );
        assert_eq!(
            req(&[
                ("bits-packet-type", "Close-Session"),
                ("content-length", "0")
            ]),
            Err(ProtoError::MissingSessionId)
        );
    }

    #[test]
    fn bodyless_packets_without_content_length_are_empty_when_lenient() {
        assert_eq!(lenient(&[("bits-packet-type", "Ping")]), Ok(Packet::Ping));
        assert!(matches!(
            lenient(&[
                ("bits-packet-type", "Create-Session"),
                (
                    "bits-supported-protocols",
                    "{7df0354d-249b-430f-820d-3d2a9bef4931}"
                )
            ]),
            Ok(Packet::CreateSession { .. })
        ));
        for t in ["Close-Session", "Cancel-Session"] {
            assert!(lenient(&[("bits-packet-type", t), ("bits-session-id", SID)]).is_ok());
        }
        // Strict keeps Windows' rule; a Fragment needs a length in both.
        assert_eq!(
            req(&[("bits-packet-type", "Ping")]),
            Err(ProtoError::MissingContentLength)
        );
        assert_eq!(
            lenient(&[
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", SID),
                ("content-range", "bytes 0-9/10")
            ]),
            Err(ProtoError::MissingContentLength)
        );
        // A declared body is still refused on a body-less packet.
        assert_eq!(
            lenient(&[
                ("bits-packet-type", "Close-Session"),
                ("bits-session-id", SID),
                ("content-length", "3")
            ]),
            Err(ProtoError::BodyNotAllowed(PacketType::CloseSession))
        );
    }

    #[test]
    fn chunked_fragments_when_lenient() {
        let fragment = |extra: &[(&'static str, &str)]| {
            let mut pairs = vec![
                ("bits-packet-type", "Fragment"),
                ("bits-session-id", SID),
                ("content-range", "bytes 0-9/10"),
            ];
            pairs.extend_from_slice(extra);
            (req(&pairs), lenient(&pairs))
        };
        let (strict, open) = fragment(&[("transfer-encoding", "chunked")]);
        assert_eq!(strict, Err(ProtoError::TransferEncoding));
        assert!(matches!(open, Ok(Packet::Fragment { range, .. }) if range.len == 10));
        assert!(fragment(&[("transfer-encoding", " Chunked ")]).1.is_ok());
        // Both framings, however they agree: refused.
        for cl in ["10", "0", "5"] {
            assert_eq!(
                fragment(&[("transfer-encoding", "chunked"), ("content-length", cl)]).1,
                Err(ProtoError::TransferEncodingWithLength)
            );
        }
        for te in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[("transfer-encoding", "identity")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "chunked, chunked")],
        ] {
            assert_eq!(
                fragment(te).1,
                Err(ProtoError::UnsupportedTransferEncoding),
                "{te:?}"
            );
        }
        // Chunked is for fragments only.
        assert_eq!(
            lenient(&[
                ("bits-packet-type", "Ping"),
                ("transfer-encoding", "chunked")
            ]),
            Err(ProtoError::BodyNotAllowed(PacketType::Ping))
        );
    }

    #[test]
    fn named_session_is_read_from_any_request_that_names_one() {
        let mut h = HeaderMap::new();
        h.insert(
            "bits-packet-type",
            HeaderValue::from_static("close-session"),
        );
        h.insert("bits-session-id", HeaderValue::from_static(SID));
        h.insert("content-length", HeaderValue::from_static("7"));
        assert!(classify(&bits_post(), &h, &[UPLOAD_PROTOCOL_1_5], Leniency::HTTP).is_err());
        assert_eq!(named_session(&h), SessionId::parse(SID).ok());
        h.insert("bits-packet-type", HeaderValue::from_static("Ping"));
        assert_eq!(named_session(&h), None);
        h.insert("bits-packet-type", HeaderValue::from_static("Fragment"));
        h.insert("bits-session-id", HeaderValue::from_static("not-a-guid"));
        assert_eq!(named_session(&h), None);
    }

    fn header_sets() -> impl proptest::strategy::Strategy<Value = Vec<(&'static str, String)>> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec![
            "bits-packet-type",
            "bits-session-id",
            "content-length",
            "transfer-encoding",
            "content-range",
            "bits-supported-protocols",
        ]);
        let value = prop::sample::select(vec![
            "Fragment".to_string(),
            "Ping".to_string(),
            "Close-Session".to_string(),
            "Create-Session".to_string(),
            SID.to_string(),
            "0".to_string(),
            "4".to_string(),
            "chunked".to_string(),
            "gzip, chunked".to_string(),
            "bytes 0-3/4".to_string(),
            "{7df0354d-249b-430f-820d-3d2a9bef4931}".to_string(),
        ]);
        prop::collection::vec((name, value), 0..7)
    }

    proptest::proptest! {
        /// The lenient framings only ever admit more, and only what they are for: whatever
        /// strict accepts, lenient accepts the same way; what only lenient accepts has no
        /// `Content-Length` at all and is either a body-less packet without framing headers or
        /// a Fragment with exactly one `Transfer-Encoding` line.
        #[test]
        fn leniency_admits_only_its_own_shapes(headers in header_sets()) {
            let mut h = HeaderMap::new();
            for (k, v) in &headers {
                h.append(*k, HeaderValue::from_str(v).unwrap());
            }
            let strict = classify(&bits_post(), &h, &[UPLOAD_PROTOCOL_1_5], Leniency::STRICT);
            let lenient = classify(&bits_post(), &h, &[UPLOAD_PROTOCOL_1_5], Leniency::HTTP);
            match (&strict, &lenient) {
                (Ok(p), l) => proptest::prop_assert_eq!(Ok(p), l.as_ref()),
                (Err(_), Ok(p)) => {
                    let te = h.get_all(TRANSFER_ENCODING).iter().count();
                    proptest::prop_assert!(!h.contains_key(CONTENT_LENGTH), "{:?}", p);
                    match p {
                        Packet::Fragment { .. } => proptest::prop_assert_eq!(te, 1),
                        _ => proptest::prop_assert_eq!(te, 0),
                    }
                }
                (Err(_), Err(_)) => {}
            }
        }
    }
}
