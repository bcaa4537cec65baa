//! The BITS Upload Protocol ([MC-BUP]) as pure data and functions.
//!
//! Nothing in this crate performs I/O or depends on an async runtime: it turns request
//! method + headers into a typed [`Packet`], parses and formats the protocol's header values,
//! and describes responses as [`Ack`] values that the HTTP layer renders. That keeps every
//! parser here reachable from property tests and fuzzers.

pub mod ack;
pub mod headers;
pub mod hresult;
pub mod kerberos;
pub mod ntlm;
pub mod packet;
pub mod protocol;
pub mod range;
pub mod secret;
pub mod session_id;

pub use ack::{reason_text, Ack, AckError, MAX_REASON_CHARS};
pub use hresult::{ErrorContext, HResult};
pub use packet::{
    classify, content_length, named_session, Leniency, Packet, PacketType, ProtoError,
    MAX_HEADER_VALUE_LEN,
};
pub use protocol::{negotiate, ProtocolId, UPLOAD_PROTOCOL_1_5};
pub use range::{ContentRange, RangeError};
pub use session_id::SessionId;

/// The extension method every upload message uses.
pub const BITS_POST: &str = "BITS_POST";

/// Longest URL a BITS client accepts (INTERNET_MAX_URL_LENGTH + the BITS allowance): reply URLs,
/// static response URLs and notification URLs are held to it.
pub const MAX_URL_CHARS: usize = 2200;
