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

/// Turns method + headers into a packet, applying the generic checks of spec §10.3 (items 3–5)
/// in order. `supported` lists the upload protocols this server speaks.
pub fn classify(
    method: &Method,
    headers: &HeaderMap,
    supported: &[ProtocolId],
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
    if headers.contains_key(TRANSFER_ENCODING) {
        return Err(ProtoError::TransferEncoding);
    }
    let body_len = content_length(headers)?;
    let raw_type = text(headers, headers::PACKET_TYPE)?.ok_or(ProtoError::MissingPacketType)?;
    let packet_type = PacketType::parse(raw_type)
        .ok_or_else(|| ProtoError::UnknownPacketType(raw_type.into()))?;
    if packet_type != PacketType::Fragment && body_len != 0 {
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
            if range.len != body_len {
                return Err(ProtoError::LengthMismatch {
                    content_length: body_len,
                    range_len: range.len,
                });
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
        classify(&bits_post(), &h, &[UPLOAD_PROTOCOL_1_5])
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
            classify(&Method::POST, &h, &[UPLOAD_PROTOCOL_1_5]),
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
}
