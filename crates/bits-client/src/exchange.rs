//! One BITS request/response exchange: the `BITS_POST` request for a packet, and the Ack read
//! back from it. Header names are matched case-insensitively (IIS and the spec differ in case),
//! and so are the `Ack` value and GUIDs.

use std::ops::ControlFlow;
use std::path::Path;

use base64::Engine as _;
use bits_proto::{headers, ContentRange, ErrorContext, HResult, PacketType, BITS_POST};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request};

use crate::client::Client;
use crate::error::{Error, Result, ServerError};
use crate::transport::{discard_body, Activity, FileBody, ReqBody};

/// The longest session id the docs allow (`ack-for-create-session.md`).
const MAX_SESSION_ID_LEN: usize = 100;

/// What a request carries besides its packet type.
#[derive(Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub packet: PacketType,
    pub url: &'a url::Url,
    /// The URL the credentials were given for: they go only to its origin.
    pub origin: &'a url::Url,
    pub session: Option<&'a str>,
    /// Fragment only: the range and the file it is read from.
    pub fragment: Option<(ContentRange, &'a Path)>,
    /// `Content-Name`: the bare local file name, as Windows sends it on Fragment and Close.
    pub content_name: Option<&'a str>,
    pub max_rate: Option<u64>,
}

/// The parts of a response the protocol looks at.
#[derive(Debug)]
pub(crate) struct Ack {
    pub status: u16,
    pub headers: HeaderMap,
    pub url: String,
    pub packet: PacketType,
}

impl Ack {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A 2xx answer must be a BITS Ack; anything else means something other than a BITS
    /// server answered (a web application that says 200 to every method, for instance).
    pub fn require_ack(&self) -> Result<()> {
        match self.header(headers::PACKET_TYPE) {
            Some(v) if v.eq_ignore_ascii_case("ack") => Ok(()),
            other => Err(Error::NotBitsServer {
                url: self.url.clone(),
                what: format!(
                    "{} answered {} with BITS-Packet-Type {:?}",
                    self.packet, self.status, other
                ),
            }),
        }
    }

    fn invalid(&self, what: impl Into<String>) -> Error {
        Error::InvalidResponse {
            url: self.url.clone(),
            what: format!("{} Ack: {}", self.packet, what.into()),
        }
    }

    /// `BITS-Received-Content-Range`, which must be present (and decimal) where it is read.
    pub fn received(&self) -> Result<u64> {
        let v = self
            .header(headers::RECEIVED_CONTENT_RANGE)
            .ok_or_else(|| self.invalid("no BITS-Received-Content-Range"))?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.invalid(format!("BITS-Received-Content-Range {v:?}")));
        }
        v.parse()
            .map_err(|_| self.invalid(format!("BITS-Received-Content-Range {v:?}")))
    }

    /// A session id in a Fragment/Close/Cancel Ack must be ours (IIS sends none on Fragment
    /// Acks, which is fine). GUIDs compare case-insensitively.
    pub fn check_session(&self, ours: &str) -> Result<()> {
        match self.header(headers::SESSION_ID) {
            Some(theirs) if !theirs.eq_ignore_ascii_case(ours) => {
                Err(self.invalid(format!("BITS-Session-Id {theirs:?} is not ours ({ours:?})")))
            }
            _ => Ok(()),
        }
    }

    /// The session id handed out by Create-Session, validated as an opaque token: the docs
    /// allow any HTTP-legal string up to 100 characters, not only GUIDs, and it is echoed back
    /// exactly as received.
    pub fn new_session_id(&self) -> Result<String> {
        let id = self
            .header(headers::SESSION_ID)
            .ok_or_else(|| self.invalid("no BITS-Session-Id"))?;
        if id.is_empty()
            || id.len() > MAX_SESSION_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(self.invalid(format!("unusable BITS-Session-Id {id:?}")));
        }
        Ok(id.to_string())
    }

    /// The error this answer stands for (call for non-2xx answers).
    pub fn error(&self, had_credentials: bool) -> Error {
        if matches!(self.status, 401 | 407) {
            return Error::Auth {
                url: self.url.clone(),
                status: self.status,
                had_credentials,
            };
        }
        Error::Server(self.server_error())
    }

    pub fn server_error(&self) -> ServerError {
        let sent = self.header(headers::ERROR_CODE).and_then(HResult::parse);
        ServerError {
            packet: Some(self.packet),
            url: self.url.clone(),
            status: self.status,
            code: sent.unwrap_or(HResult::http_error(self.status)),
            code_sent: sent.is_some(),
            context: self
                .header(headers::ERROR_CONTEXT)
                .and_then(ErrorContext::parse),
            reason: self
                .header(headers::ERROR_REASON)
                .and_then(bits_proto::reason_text),
        }
    }
}

impl Client {
    /// Common headers of every request: user agent, `Accept`, and the credentials — only when
    /// `url` has the origin (scheme, host, port) of `origin`, the URL they were given for, so
    /// a server cannot send them elsewhere with a redirect, a reply URL or a Host-Id.
    pub(crate) fn base_request(
        &self,
        method: Method,
        url: &url::Url,
        origin: &url::Url,
    ) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(url.as_str())
            .header(USER_AGENT, self.inner.user_agent.clone())
            .header(ACCEPT, HeaderValue::from_static("*/*"));
        if let Some(auth) = &self.inner.authorization {
            if same_origin(url, origin) {
                b = b.header(AUTHORIZATION, auth.clone());
            }
        }
        b
    }

    /// Sends one BITS packet and reads its Ack (any status). `Err` only for failures below
    /// HTTP: connection, TLS, timeout, a local read error, or the observer's `Break`. With NTLM
    /// credentials, a 401 that asks for NTLM is answered by the handshake (a body-less Ping
    /// carrying the NEGOTIATE message, then the request again with the AUTHENTICATE message),
    /// once per exchange; the connection stays authenticated for the requests after it.
    pub(crate) async fn exchange(
        &self,
        out: Outgoing<'_>,
        activity: &Activity,
        tick: &mut dyn FnMut(u64) -> ControlFlow<()>,
    ) -> Result<Ack> {
        let mut ack = self.send_packet(out, None, activity, tick).await?;
        if let Some(cache) = &self.inner.negotiate {
            if ack.status != 401 || !offers(&ack, "Negotiate") || !same_origin(out.url, out.origin)
            {
                return Ok(ack);
            }
            let host = out.url.host_str().unwrap_or_default();
            let token = crate::negotiate::token_for(cache, host)?;
            let value = scheme_value("Negotiate", &token)?;
            return self.send_packet(out, Some(value), activity, tick).await;
        }
        let Some(creds) = &self.inner.ntlm else {
            return Ok(ack);
        };
        if !same_origin(out.url, out.origin) {
            return Ok(ack);
        }
        // An NTLM client sends everything on one connection (see `transport::Http`), so the
        // legs share it; if the server closed it between legs it asks again: a few tries.
        for _ in 0..NTLM_TRIES {
            if !asks_for_ntlm(&ack) {
                return Ok(ack);
            }
            let probe = Outgoing {
                packet: PacketType::Ping,
                session: None,
                fragment: None,
                content_name: None,
                ..out
            };
            let negotiate = ntlm_value(&bits_proto::ntlm::negotiate_message())?;
            let challenged = self
                .send_packet(probe, Some(negotiate), activity, tick)
                .await?;
            let Some(challenge) = challenged
                .header(http::header::WWW_AUTHENTICATE.as_str())
                .and_then(|v| v.strip_prefix("NTLM "))
                .and_then(|t| {
                    base64::engine::general_purpose::STANDARD
                        .decode(t.trim())
                        .ok()
                })
            else {
                return Ok(challenged);
            };
            let answer = bits_proto::ntlm::authenticate_message(
                &challenge,
                &creds.user,
                &creds.domain,
                &creds.password,
                bits_proto::ntlm::client_nonce(),
            )
            // The server's CHALLENGE broke the protocol: its fault, not the user's, and no
            // reason to give the job up (retried like any invalid response).
            .map_err(|e| Error::InvalidResponse {
                url: out.url.to_string(),
                what: format!(
                    "{} answered with an unusable NTLM CHALLENGE: {e}",
                    out.packet
                ),
            })?;
            ack = self
                .send_packet(out, Some(ntlm_value(&answer)?), activity, tick)
                .await?;
        }
        Ok(ack)
    }

    /// One `BITS_POST` for `out`, with `authorization` instead of the client's own.
    async fn send_packet(
        &self,
        out: Outgoing<'_>,
        authorization: Option<HeaderValue>,
        activity: &Activity,
        tick: &mut dyn FnMut(u64) -> ControlFlow<()>,
    ) -> Result<Ack> {
        let method = Method::from_bytes(BITS_POST.as_bytes())
            .map_err(|e| Error::Usage(format!("method: {e}")))?;
        let mut b = self
            .base_request(method, out.url, out.origin)
            .header(headers::PACKET_TYPE, out.packet.as_str());
        if let Some(auth) = authorization {
            b = b.header(AUTHORIZATION, auth);
        }
        if let Some(id) = out.session {
            b = b.header(headers::SESSION_ID, id);
        }
        if out.packet == PacketType::CreateSession {
            b = b.header(
                headers::SUPPORTED_PROTOCOLS,
                bits_proto::UPLOAD_PROTOCOL_1_5.to_string(),
            );
        }
        if let Some(name) = out.content_name {
            b = b.header(headers::CONTENT_NAME, name);
        }
        let mut read_error = None;
        // Every BITS request carries Content-Length, 0 included ([MC-BUP §2.2.1.1]).
        let body = match out.fragment {
            None => {
                b = b.header(CONTENT_LENGTH, "0");
                ReqBody::Empty
            }
            Some((range, path)) => {
                b = b
                    .header(http::header::CONTENT_RANGE, range.to_string())
                    .header(CONTENT_LENGTH, range.len.to_string());
                if range.len == 0 {
                    ReqBody::Empty
                } else {
                    let (body, err) = FileBody::open(
                        path,
                        range.first,
                        range.len,
                        activity.clone(),
                        out.max_rate,
                    )
                    .await
                    .map_err(|e| Error::local(path, e))?;
                    read_error = Some((err, path));
                    ReqBody::File(Box::new(body))
                }
            }
        };
        // The URL may be the server's (a Host-Id host): a request that cannot be made from it
        // is the server's fault, not the user's.
        let req = b.body(body).map_err(|e| {
            let what = format!("request for {}: {e}", out.url);
            if out.url == out.origin {
                Error::Usage(what)
            } else {
                Error::InvalidResponse {
                    url: out.url.to_string(),
                    what,
                }
            }
        })?;
        let sent = self.inner.http.send(req, activity, tick).await;
        // A failure to read the file surfaces from hyper as a generic body error: report the
        // real cause instead.
        if let Some((slot, path)) = read_error {
            if let Some(e) = slot.lock().ok().and_then(|mut s| s.take()) {
                return Err(Error::local(path, e));
            }
        }
        let resp = sent?;
        let status = resp.status().as_u16();
        let (parts, mut body) = resp.into_parts();
        let url = out.url.to_string();
        discard_body(&mut body, &url, self.inner.http.idle_timeout()).await;
        Ok(Ack {
            status,
            headers: parts.headers,
            url,
            packet: out.packet,
        })
    }
}

/// NTLM handshakes tried per exchange before a 401 is returned as such.
const NTLM_TRIES: usize = 3;

/// A 401 whose `WWW-Authenticate` offers NTLM (a fresh challenge request, not a handshake leg).
fn asks_for_ntlm(ack: &Ack) -> bool {
    ack.status == 401 && offers(ack, "NTLM")
}

/// Whether a `WWW-Authenticate` of `ack` is exactly `scheme` (no token).
fn offers(ack: &Ack, scheme: &str) -> bool {
    ack.headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case(scheme))
}

/// `NTLM <base64 message>`, marked sensitive.
fn ntlm_value(message: &[u8]) -> Result<HeaderValue> {
    scheme_value("NTLM", message)
}

/// `<scheme> <base64 token>`, marked sensitive.
fn scheme_value(scheme: &str, token: &[u8]) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!(
        "{scheme} {}",
        base64::engine::general_purpose::STANDARD.encode(token)
    ))
    .map_err(|_| Error::Usage(format!("{scheme} token is not a valid header")))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Same scheme, host and port (default ports made explicit); opaque origins never match.
pub(crate) fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    let (a, b) = (a.origin(), b.origin());
    a.is_tuple() && a == b
}

/// `Content-Name` for a local file: the bare name, if it is one the protocol allows
/// (≤ 260 characters, none of `\ / : * ? " < > |`, visible ASCII so it fits a header).
pub(crate) fn content_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let ok = !name.is_empty()
        && name.len() <= 260
        && name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !b"\\/:*?\"<>|".contains(&b));
    ok.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(same_origin(&u("http://h/a"), &u("http://h:80/b?x")));
        assert!(same_origin(&u("https://H/a"), &u("https://h:443/")));
        assert!(!same_origin(&u("https://h/a"), &u("http://h/a")));
        assert!(!same_origin(&u("http://h/a"), &u("http://h:8080/a")));
        assert!(!same_origin(&u("http://h/a"), &u("http://h.evil/a")));
        assert!(!same_origin(&u("file:///a"), &u("file:///a")));
    }

    #[test]
    fn content_names() {
        assert_eq!(
            content_name(Path::new("/tmp/rfc2119.txt")).as_deref(),
            Some("rfc2119.txt")
        );
        assert_eq!(content_name(Path::new("/tmp/a:b")), None);
        assert_eq!(content_name(Path::new("/tmp/ä.txt")), None);
        assert_eq!(content_name(Path::new("/")), None);
    }
}
