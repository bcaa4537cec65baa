//! Header names used by the protocol, lower-cased as `http::HeaderName` stores them.

pub const PACKET_TYPE: &str = "bits-packet-type";
pub const SUPPORTED_PROTOCOLS: &str = "bits-supported-protocols";
pub const PROTOCOL: &str = "bits-protocol";
pub const SESSION_ID: &str = "bits-session-id";
pub const HOST_ID: &str = "bits-host-id";
pub const HOST_ID_FALLBACK_TIMEOUT: &str = "bits-host-id-fallback-timeout";
pub const RECEIVED_CONTENT_RANGE: &str = "bits-received-content-range";
pub const REPLY_URL: &str = "bits-reply-url";
pub const ERROR_CODE: &str = "bits-error-code";
pub const ERROR_CONTEXT: &str = "bits-error-context";
/// Not part of the protocol: bitsd's words for why it refused, on error Acks. Windows ignores
/// unknown headers (spec §2.1); the name is bitsd's own so that it cannot collide with a
/// `BITS-` header Microsoft may add (docs/decisions.md, "Refusals in words").
pub const ERROR_REASON: &str = "bitsd-error-reason";
pub const CONTENT_NAME: &str = "content-name";

// Server application notification (back end -> application and back).
pub const ORIGINAL_REQUEST_URL: &str = "bits-original-request-url";
pub const REQUEST_DATAFILE_NAME: &str = "bits-request-datafile-name";
pub const RESPONSE_DATAFILE_NAME: &str = "bits-response-datafile-name";
pub const STATIC_RESPONSE_URL: &str = "bits-static-response-url";
pub const COPY_FILE_TO_DESTINATION: &str = "bits-copy-file-to-destination";
