//! Response packets: every BITS response is an `Ack` with an empty body.

use crate::headers;
use crate::hresult::{ErrorContext, HResult};
use crate::protocol::ProtocolId;
use crate::session_id::SessionId;

/// Error information, sent only on non-2xx Acks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckError {
    pub code: HResult,
    pub context: ErrorContext,
}

/// An Ack as pure data. The HTTP layer renders [`Ack::status`] and [`Ack::header_pairs`] plus
/// `Content-Length: 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub status: u16,
    pub session_id: Option<SessionId>,
    pub protocol: Option<ProtocolId>,
    pub received: Option<u64>,
    pub reply_url: Option<String>,
    /// `BITS-Host-Id` and its fallback timeout in seconds.
    pub host_id: Option<(String, u32)>,
    pub error: Option<AckError>,
    /// [`headers::ERROR_REASON`]: why, in words a person can act on (non-2xx Acks only).
    pub reason: Option<String>,
}

/// The longest reason sent or shown, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// A reason as it may travel in a header and appear on a terminal: visible ASCII and spaces
/// only (anything else becomes `?`), at most [`MAX_REASON_CHARS`]; `None` when nothing is left.
/// The client applies it too: the header comes from whatever server answered.
pub fn reason_text(raw: &str) -> Option<String> {
    let text: String = raw
        .trim()
        .chars()
        .take(MAX_REASON_CHARS)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    (!text.is_empty()).then_some(text)
}

impl Ack {
    pub const PACKET_TYPE_VALUE: &'static str = "Ack";

    pub const fn ok() -> Ack {
        Ack {
            status: 200,
            session_id: None,
            protocol: None,
            received: None,
            reply_url: None,
            host_id: None,
            error: None,
            reason: None,
        }
    }

    /// An error Ack. Error headers are dropped for 2xx statuses, where they must never appear.
    pub fn error(status: u16, code: HResult, context: ErrorContext) -> Ack {
        Ack {
            status,
            error: (!(200..300).contains(&status)).then_some(AckError { code, context }),
            ..Ack::ok()
        }
    }

    /// A bare status without error headers (auth challenges, 416 range resync).
    pub fn status_only(status: u16) -> Ack {
        Ack {
            status,
            ..Ack::ok()
        }
    }

    pub fn with_session(mut self, id: SessionId) -> Ack {
        self.session_id = Some(id);
        self
    }

    pub fn with_received(mut self, received: u64) -> Ack {
        self.received = Some(received);
        self
    }

    /// Adds a reason (see [`reason_text`]); sent only when the Ack is not a success.
    pub fn with_reason(mut self, reason: &str) -> Ack {
        self.reason = reason_text(reason);
        self
    }

    pub fn with_reply_url(mut self, url: Option<String>) -> Ack {
        self.reply_url = url;
        self
    }

    /// The Ack for a successful Create-Session.
    pub fn session_created(
        id: SessionId,
        protocol: ProtocolId,
        host_id: Option<(String, u32)>,
    ) -> Ack {
        Ack {
            session_id: Some(id),
            protocol: Some(protocol),
            host_id,
            ..Ack::ok()
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Every BITS header of this Ack, in a stable order (Content-Length is the HTTP layer's).
    pub fn header_pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![(headers::PACKET_TYPE, Ack::PACKET_TYPE_VALUE.to_string())];
        if let Some(p) = self.protocol.filter(|_| self.status == 200) {
            out.push((headers::PROTOCOL, p.to_string()));
            out.push(("accept-encoding", "identity".to_string()));
        }
        if let Some(id) = self.session_id {
            out.push((headers::SESSION_ID, id.to_string()));
        }
        if let Some((host, timeout)) = self.host_id.as_ref().filter(|_| self.status == 200) {
            out.push((headers::HOST_ID, host.clone()));
            out.push((headers::HOST_ID_FALLBACK_TIMEOUT, timeout.to_string()));
        }
        if let Some(n) = self.received {
            out.push((headers::RECEIVED_CONTENT_RANGE, n.to_string()));
        }
        if let Some(url) = self.reply_url.as_ref().filter(|_| self.is_success()) {
            out.push((headers::REPLY_URL, url.clone()));
        }
        if let Some(e) = self.error.filter(|_| !self.is_success()) {
            out.push((headers::ERROR_CODE, e.code.to_string()));
            out.push((headers::ERROR_CONTEXT, e.context.to_string()));
        }
        if let Some(reason) = self.reason.as_ref().filter(|_| !self.is_success()) {
            out.push((headers::ERROR_REASON, reason.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UPLOAD_PROTOCOL_1_5;

    fn get<'a>(pairs: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn reason_only_on_errors_and_only_text() {
        let ack = Ack::error(403, HResult::E_ACCESSDENIED, ErrorContext::RemoteFile)
            .with_reason("the destination exists\r\nSet-Cookie: x");
        let h = ack.header_pairs();
        assert_eq!(
            get(&h, "bitsd-error-reason"),
            Some("the destination exists??Set-Cookie: x")
        );
        let long = "x".repeat(MAX_REASON_CHARS + 50);
        let ack = Ack::error(500, HResult::E_FAIL, ErrorContext::RemoteFile).with_reason(&long);
        assert_eq!(ack.reason.map(|r| r.len()), Some(MAX_REASON_CHARS));
        assert_eq!(
            get(
                &Ack::ok().with_reason("no").header_pairs(),
                "bitsd-error-reason"
            ),
            None
        );
        assert_eq!(reason_text("  \t "), None);
    }

    #[test]
    fn create_session_ack() {
        let id = SessionId::parse("{C85B4E0A-9EB9-4114-BFA4-8A43B4710091}").unwrap();
        let ack = Ack::session_created(id, UPLOAD_PROTOCOL_1_5, Some(("FRANKCAO8".into(), 110)));
        let h = ack.header_pairs();
        assert_eq!(get(&h, "bits-packet-type"), Some("Ack"));
        assert_eq!(
            get(&h, "bits-protocol"),
            Some("{7df0354d-249b-430f-820d-3d2a9bef4931}")
        );
        assert_eq!(
            get(&h, "bits-session-id"),
            Some("{C85B4E0A-9EB9-4114-BFA4-8A43B4710091}")
        );
        assert_eq!(get(&h, "accept-encoding"), Some("identity"));
        assert_eq!(get(&h, "bits-host-id"), Some("FRANKCAO8"));
        assert_eq!(get(&h, "bits-host-id-fallback-timeout"), Some("110"));
        assert_eq!(get(&h, "bits-error-code"), None);
    }

    #[test]
    fn error_ack_has_code_and_context() {
        let h = Ack::error(
            500,
            HResult::BG_E_SESSION_NOT_FOUND,
            ErrorContext::RemoteFile,
        )
        .header_pairs();
        assert_eq!(get(&h, "bits-error-code"), Some("0x8020001F"));
        assert_eq!(get(&h, "bits-error-context"), Some("0x5"));
    }

    #[test]
    fn success_never_carries_error_headers() {
        let mut ack = Ack::error(200, HResult::E_FAIL, ErrorContext::RemoteFile);
        assert!(ack
            .header_pairs()
            .iter()
            .all(|(k, _)| !k.starts_with("bits-error")));
        ack.error = Some(AckError {
            code: HResult::E_FAIL,
            context: ErrorContext::RemoteFile,
        });
        assert!(ack
            .header_pairs()
            .iter()
            .all(|(k, _)| !k.starts_with("bits-error")));
    }

    #[test]
    fn range_resync_ack() {
        let id = SessionId::random();
        let h = Ack::status_only(416)
            .with_session(id)
            .with_received(200)
            .header_pairs();
        assert_eq!(get(&h, "bits-received-content-range"), Some("200"));
        assert_eq!(get(&h, "bits-error-code"), None);
    }
}
