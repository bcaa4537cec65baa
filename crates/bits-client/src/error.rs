//! Typed errors. Every failure is sorted into one [`ErrorKind`] because that is what decides
//! what happens next: transient errors are retried with backoff, everything else ends the
//! transfer (the CLI maps kinds to exit codes).

use std::path::PathBuf;

use bits_proto::{ErrorContext, HResult, PacketType};

/// What kind of failure an [`Error`] is, i.e. what a caller can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Network trouble, 5xx, an overloaded server: worth retrying later. Returned to the caller
    /// only inside [`Error::RetriesExhausted`] once the retry budget is spent.
    Transient,
    /// The server refused for good (4xx, BITS error codes such as `BG_E_TOO_LARGE`, a download
    /// it cannot serve): the transfer cannot succeed as asked.
    Fatal,
    /// The server broke the protocol in a way that waiting will not mend (it is not a BITS
    /// server, or chose another protocol). Unlike [`ErrorKind::Fatal`] this says nothing about
    /// the transfer itself, so a persisted job is kept: the fault is the server's to fix.
    Protocol,
    /// 401/407, or a TLS certificate that does not verify: needs other credentials or trust.
    Auth,
    /// Reading the local file or writing local state failed.
    LocalIo,
    /// The local file changed while it was being uploaded (`BG_E_LOCAL_FILE_CHANGED`).
    LocalFileChanged,
    /// Bad input from the caller (URL, certificate files, options).
    Usage,
    /// The client refused what the server asked for, by its own rules: a reply URL or redirect
    /// that leaves http(s) or downgrades https to http, a body larger than the size bound, a
    /// body in a content encoding. Retrying does not help; the server must change.
    Policy,
    /// The observer asked to stop; the persisted state is resumable.
    Interrupted,
}

/// An error answer from the server (or a proxy in front of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// The request that got this answer: a BITS packet, or `None` for a download GET.
    pub packet: Option<PacketType>,
    pub url: String,
    pub status: u16,
    /// `BITS-Error-Code`, or `BG_E_HTTP_ERROR_<status>` (`0x80190000 + status`) when the server
    /// sent none — that is how a Windows client reports a bare HTTP status.
    pub code: HResult,
    /// Whether `code` came from a `BITS-Error-Code` header.
    pub code_sent: bool,
    /// `BITS-Error-Context`: the BITS server itself (0x5) or the server application (0x7).
    pub context: Option<ErrorContext>,
    /// bitsd's `Bitsd-Error-Reason`: why, in the server's words (checked text, bounded length).
    pub reason: Option<String>,
}

impl ServerError {
    /// True when the BITS server sent `BG_E_SESSION_NOT_FOUND` (the session is gone).
    pub fn is_session_not_found(&self) -> bool {
        self.code_sent && self.code == HResult::BG_E_SESSION_NOT_FOUND
    }

    /// Transient or not, following spec §10.4 for the BITS server's own errors and §9.6
    /// (`handling-server-application-errors.md`) for errors relayed from the server application.
    pub fn is_transient(&self) -> bool {
        let s = self.status;
        if self.context == Some(ErrorContext::RemoteApplication) {
            return match s {
                300..=305 | 307 => false,
                300..=399 => true,
                408 | 409 => true,
                400..=499 => false,
                501 | 505 => false,
                500..=599 => true,
                _ => true,
            };
        }
        if self.code_sent
            && [
                HResult::BG_E_TOO_LARGE,
                HResult::E_INVALIDARG,
                HResult::E_ACCESSDENIED,
                HResult::BG_E_SERVER_EXECUTE_ENABLED,
                HResult::E_PATH_NOT_FOUND,
            ]
            .contains(&self.code)
        {
            return false;
        }
        // 408 and 429 are "try again"; 501 means uploads are not enabled and 505 that the server
        // cannot talk HTTP/1.1: neither goes away by waiting.
        matches!(s, 408 | 429) || (500..=599).contains(&s) && !matches!(s, 501 | 505)
    }

    fn describe(&self) -> String {
        let what = match self.packet {
            Some(p) => p.as_str(),
            None => "GET",
        };
        let mut out = format!("{what} {} answered HTTP {}", self.url, self.status);
        if self.code_sent {
            out.push_str(&format!(" {:?}", self.code));
        }
        if let Some(ctx) = self.context {
            let who = match ctx {
                ErrorContext::RemoteFile => "BITS server",
                ErrorContext::RemoteApplication => "server application",
            };
            out.push_str(&format!(" (context {ctx}: {who})"));
        }
        if let Some(reason) = &self.reason {
            out.push_str(": ");
            out.push_str(reason);
        }
        out
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("{}", .0.describe())]
    Server(ServerError),
    /// The server answered, but not with what the protocol requires
    /// (`BG_E_INVALID_SERVER_RESPONSE`); retried, as Windows does.
    #[error("invalid server response from {url}: {what}")]
    InvalidResponse { url: String, what: String },
    /// A response that shows the server is not a BITS upload server at all.
    #[error("{url} is not a BITS upload server: {what}")]
    NotBitsServer { url: String, what: String },
    /// An answer that breaks HTTP or BITS in a way a retry will not mend (a 206 that does not
    /// fit the request, a redirect without a usable `Location`, endless redirects).
    #[error("{url}: the server broke the protocol: {what}")]
    Protocol { url: String, what: String },
    /// Create-Session offered our protocol and the server chose another or none
    /// (`BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH`).
    #[error("{url}: the server does not speak the BITS 1.5 upload protocol ({what})")]
    ProtocolMismatch { url: String, what: String },
    /// 413 even for the smallest fragment the protocol allows.
    #[error("{url}: the server refuses even {fragment_size}-byte fragments (413)")]
    FragmentTooLarge { url: String, fragment_size: u64 },
    /// A download the server cannot serve as BITS needs it (no `Content-Length`, a file that
    /// keeps changing).
    #[error("{url}: {what}")]
    Download { url: String, what: String },
    /// The server needs (other) credentials: 401 or 407.
    #[error("{url}: authentication {} (HTTP {status})", if *.had_credentials { "failed" } else { "required" })]
    Auth {
        url: String,
        status: u16,
        had_credentials: bool,
    },
    /// The TLS handshake failed because of trust (certificate not valid for the name, unknown
    /// issuer, expired, client certificate refused).
    #[error("{url}: TLS: {message}")]
    Tls { url: String, message: String },
    /// Connecting, sending or receiving failed (including timeouts).
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// No progress for the configured idle timeout.
    #[error("{url}: no progress for {secs} s")]
    Timeout { url: String, secs: u64 },
    /// The request (sending, the answer and its body) took longer than the request deadline,
    /// however steadily bytes trickled.
    #[error("{url}: no complete answer within the request deadline of {secs} s")]
    Deadline { url: String, secs: u64 },
    /// Transient failures went on past the retry budget; `last` is the final one.
    #[error("giving up after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: Box<Error> },
    #[error("{}: {source}", .path.display())]
    LocalIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} changed during the transfer (BG_E_LOCAL_FILE_CHANGED)", .path.display())]
    LocalFileChanged { path: PathBuf },
    #[error("{0}")]
    Usage(String),
    /// The client refused to follow the server (see [`ErrorKind::Policy`]); `what` says why.
    #[error("{url}: refused: {what}")]
    Policy { url: String, what: String },
    #[error("interrupted; the job can be resumed")]
    Interrupted,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Server(e) if e.is_transient() => ErrorKind::Transient,
            Error::Server(_) => ErrorKind::Fatal,
            Error::InvalidResponse { .. }
            | Error::Transport { .. }
            | Error::Timeout { .. }
            | Error::Deadline { .. } => ErrorKind::Transient,
            Error::NotBitsServer { .. }
            | Error::ProtocolMismatch { .. }
            | Error::Protocol { .. } => ErrorKind::Protocol,
            Error::FragmentTooLarge { .. } | Error::Download { .. } => ErrorKind::Fatal,
            Error::Auth { .. } | Error::Tls { .. } => ErrorKind::Auth,
            // A spent retry budget is still a transient failure: it may work later.
            Error::RetriesExhausted { .. } => ErrorKind::Transient,
            Error::LocalIo { .. } => ErrorKind::LocalIo,
            Error::LocalFileChanged { .. } => ErrorKind::LocalFileChanged,
            Error::Usage(_) => ErrorKind::Usage,
            Error::Policy { .. } => ErrorKind::Policy,
            Error::Interrupted => ErrorKind::Interrupted,
        }
    }

    /// True when retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The innermost error (through [`Error::RetriesExhausted`]).
    pub fn root(&self) -> &Error {
        match self {
            Error::RetriesExhausted { last, .. } => last.root(),
            e => e,
        }
    }

    /// The server's error answer, if this error is (or ends in) one.
    pub fn server(&self) -> Option<&ServerError> {
        match self.root() {
            Error::Server(e) => Some(e),
            _ => None,
        }
    }

    /// HTTP status of the server's answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self.root() {
            Error::Server(e) => Some(e.status),
            Error::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The HRESULT a Windows client would report for this error.
    pub fn hresult(&self) -> Option<HResult> {
        match self.root() {
            Error::Server(e) => Some(e.code),
            Error::Auth { status, .. } => Some(HResult::http_error(*status)),
            Error::InvalidResponse { .. }
            | Error::NotBitsServer { .. }
            | Error::Protocol { .. } => Some(HResult::BG_E_INVALID_SERVER_RESPONSE),
            Error::ProtocolMismatch { .. } => Some(HResult::BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH),
            Error::FragmentTooLarge { .. } => Some(HResult::http_error(413)),
            Error::LocalFileChanged { .. } => Some(HResult(0x8020_001D)),
            _ => None,
        }
    }

    /// `BITS-Error-Context` of the server's answer, if it sent one.
    pub fn context(&self) -> Option<ErrorContext> {
        self.server().and_then(|e| e.context)
    }

    pub(crate) fn local(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::LocalIo {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `url` with any user name and password taken out, for messages and state: a credential put
/// into a URL is never echoed or stored. Text that does not parse as a URL loses everything
/// between `://` and the last `@` of its authority.
pub fn redact(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.username().is_empty() && u.password().is_none() {
            return u.to_string();
        }
        // Both only fail for URLs that cannot have credentials at all.
        let _ = u.set_username("");
        let _ = u.set_password(None);
        return u.to_string();
    }
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16, code: Option<u32>, ctx: Option<u32>) -> ServerError {
        ServerError {
            packet: Some(PacketType::Fragment),
            url: "http://h/u".into(),
            status,
            code: code.map(HResult).unwrap_or(HResult::http_error(status)),
            code_sent: code.is_some(),
            context: ctx.and_then(|c| ErrorContext::parse(&c.to_string())),
            reason: None,
        }
    }

    #[test]
    fn the_servers_reason_is_shown() {
        let mut e = server(403, Some(0x8007_0005), Some(5));
        e.reason = Some("the destination already exists".into());
        let text = Error::Server(e).to_string();
        assert!(
            text.ends_with("(context 0x5: BITS server): the destination already exists"),
            "{text}"
        );
    }

    #[test]
    fn classification_follows_the_spec() {
        // BITS server errors (context 0x5 or none).
        assert!(server(500, Some(0x8020_001F), Some(5)).is_session_not_found());
        assert!(!server(500, Some(0x8020_0020), Some(5)).is_transient());
        assert!(server(500, None, None).is_transient());
        assert!(server(503, Some(0x8019_01F7), Some(5)).is_transient());
        assert!(!server(501, Some(0x8007_0005), Some(5)).is_transient());
        assert!(!server(400, Some(0x8007_0057), Some(5)).is_transient());
        assert!(!server(403, Some(0x8007_0005), Some(5)).is_transient());
        assert!(!server(404, None, None).is_transient());
        assert!(server(408, None, None).is_transient());
        // Server application errors (context 0x7).
        for (status, transient) in [
            (301, false),
            (307, false),
            (306, true),
            (308, true),
            (403, false),
            (404, false),
            (408, true),
            (409, true),
            (500, true),
            (501, false),
            (502, true),
            (505, false),
        ] {
            let e = server(status, Some(0x8019_0000 + status as u32), Some(7));
            assert_eq!(e.is_transient(), transient, "{status}");
        }
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact("http://alice:pw@h/f"), "http://h/f");
        assert_eq!(redact("http://alice@h:81/f?q"), "http://h:81/f?q");
        assert_eq!(redact("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact("http://al:pw@[bad/x"), "http://[bad/x");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn accessors_see_through_retries() {
        let e = Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(Error::Server(server(503, None, None))),
        };
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.hresult(), Some(HResult::http_error(503)));
        assert!(e.to_string().contains("HTTP 503"), "{e}");
    }
}
