//! The one place where errors become Acks, and Acks become HTTP responses.

use axum::body::Body;
use axum::response::Response;
use bits_proto::{Ack, ErrorContext, HResult, ProtoError};
use http::header::{CONNECTION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};

use crate::error::BitsError;
use crate::target::TargetError;

/// Maps every failure to its protocol answer (spec §10.2; choices in docs/decisions.md), with
/// the reason in words ([`reason`]).
pub fn error_ack(err: &BitsError) -> Ack {
    let ack = protocol_ack(err);
    match reason(err) {
        Some(r) if ack.error.is_some() => ack.with_reason(&r),
        _ => ack,
    }
}

fn protocol_ack(err: &BitsError) -> Ack {
    const FILE: ErrorContext = ErrorContext::RemoteFile;
    const APP: ErrorContext = ErrorContext::RemoteApplication;
    match err {
        BitsError::Proto(ProtoError::ForeignSessionId) | BitsError::SessionNotFound(_) => {
            Ack::error(500, HResult::BG_E_SESSION_NOT_FOUND, FILE)
        }
        BitsError::Proto(_)
        | BitsError::BadPath(TargetError::Directory | TargetError::Unsafe(_))
        | BitsError::DestinationIsDirectory
        | BitsError::TotalChanged { .. }
        | BitsError::BodyAborted(_) => Ack::error(400, HResult::E_INVALIDARG, FILE),
        BitsError::UploadsDisabled | BitsError::BadPath(TargetError::NoVdir) => {
            Ack::error(501, HResult::E_ACCESSDENIED, FILE)
        }
        BitsError::ParentMissing => Ack::error(404, HResult::E_PATH_NOT_FOUND, FILE),
        BitsError::DestinationExists { status } => {
            Ack::error(*status, HResult::E_ACCESSDENIED, FILE)
        }
        BitsError::NotOwner | BitsError::Refused(_) => {
            Ack::error(403, HResult::E_ACCESSDENIED, FILE)
        }
        // Status and BITS-Received-Content-Range say it all; the spec's HRESULT "0" is omitted.
        BitsError::RangeGap { received } => Ack::status_only(416).with_received(*received),
        BitsError::UploadTooLarge { .. } => Ack::error(500, HResult::BG_E_TOO_LARGE, FILE),
        BitsError::FragmentTooLarge { .. } => Ack::error(413, HResult::http_error(413), FILE),
        BitsError::Unauthenticated(_) => Ack::status_only(401),
        BitsError::SessionBusy
        | BitsError::Preempted
        | BitsError::SessionLimit
        | BitsError::RateLimited => Ack::error(503, HResult::http_error(503), FILE),
        BitsError::DiskFull => Ack::error(500, HResult::E_DISK_FULL, FILE),
        // Another node changed the session first: the client retries and sees the new state.
        BitsError::Storage(crate::store::StoreError::Conflict(_)) => {
            Ack::error(503, HResult::http_error(503), FILE)
        }
        BitsError::Storage(_) => Ack::error(500, HResult::E_FAIL, FILE),
        BitsError::ReplyUrlTooLong => Ack::error(400, HResult::E_INVALIDARG, FILE),
        // The application's own status is relayed so the client can judge transient vs fatal.
        BitsError::App { status } => Ack::error(*status, HResult::http_error(*status), APP),
        BitsError::AppTimeout => Ack::error(408, HResult::E_TIMEOUT, APP),
        BitsError::AppUnreachable(_) => Ack::error(502, HResult::http_error(502), APP),
    }
}

/// What a client may show a person about `err` (the `Bitsd-Error-Reason` header). Written
/// for the client, not copied from the log line: no server paths, storage or application
/// addresses, or OS error texts, which belong to the operator. A request that never became an
/// error Ack (401, 416) gets none: the client's next step is in the protocol.
fn reason(err: &BitsError) -> Option<String> {
    Some(match err {
        BitsError::Proto(ProtoError::ForeignSessionId) | BitsError::SessionNotFound(_) => {
            "the upload session is unknown to this server or has expired".into()
        }
        BitsError::Proto(e) => format!("invalid BITS request: {e}"),
        BitsError::UploadsDisabled => "uploads are not enabled for this URL".into(),
        BitsError::BadPath(TargetError::NoVdir) => "no upload directory serves this URL".into(),
        BitsError::BadPath(TargetError::Directory) => {
            "the URL names a directory, not a file".into()
        }
        BitsError::BadPath(TargetError::Unsafe(why)) => {
            format!("the destination name is not allowed ({why})")
        }
        BitsError::DestinationIsDirectory => "the destination is a directory".into(),
        BitsError::ParentMissing => {
            "a parent directory of the destination does not exist on the server".into()
        }
        BitsError::DestinationExists { .. } => {
            "the destination already exists and overwrites are off for this URL".into()
        }
        BitsError::NotOwner => "the upload session belongs to another user".into(),
        BitsError::Refused(crate::auth::Refusal::TlsRequired) => {
            "this URL requires HTTPS; plain HTTP is refused".into()
        }
        BitsError::Refused(crate::auth::Refusal::NoClientCertificate) => {
            "this URL requires a TLS client certificate".into()
        }
        BitsError::Refused(crate::auth::Refusal::UnknownVdir) => {
            "no upload directory serves this URL".into()
        }
        BitsError::RangeGap { .. } | BitsError::Unauthenticated(_) => return None,
        BitsError::TotalChanged { .. }
        | BitsError::UploadTooLarge { .. }
        | BitsError::FragmentTooLarge { .. }
        | BitsError::SessionBusy
        | BitsError::Preempted
        | BitsError::RateLimited
        | BitsError::SessionLimit
        | BitsError::DiskFull
        | BitsError::App { .. }
        | BitsError::AppTimeout
        | BitsError::ReplyUrlTooLong => err.to_string(),
        BitsError::BodyAborted(_) => "the request body ended before its declared length".into(),
        BitsError::AppUnreachable(_) => "the server application is unreachable".into(),
        BitsError::Storage(crate::store::StoreError::Conflict(_)) => {
            "another server changed this session at the same time; retrying will do".into()
        }
        BitsError::Storage(_) => {
            "the server could not store the upload; the server log has the cause".into()
        }
    })
}

/// [`error_ack`], counted in `bitsd_errors_total` by its `BITS-Error-Code`: what the request
/// path uses, so every error Ack sent is counted exactly once.
pub fn error_ack_counted(err: &BitsError, metrics: &crate::metrics::Metrics) -> Ack {
    let ack = error_ack(err);
    metrics.error_ack(&ack);
    ack
}

/// Renders an Ack: status, BITS headers (and the reason), `Content-Length: 0`, empty body.
pub fn render(ack: &Ack, close: bool) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() =
        StatusCode::from_u16(ack.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (name, value) in ack.header_pairs() {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(name, v);
            }
            Err(_) => tracing::error!(
                header = name,
                "dropped a header value that HTTP cannot carry"
            ),
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    // (A 401's challenge depends on the vdir: `set_challenge` adds it.)
    if ack.status == 503 {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Sets the `WWW-Authenticate` of a 401 to what `challenge` asks for.
pub fn set_challenge(resp: &mut Response, challenge: &crate::auth::Challenge) {
    resp.headers_mut().remove(WWW_AUTHENTICATE);
    for value in challenge.header_values() {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                resp.headers_mut().append(WWW_AUTHENTICATE, v);
            }
            Err(_) => tracing::error!("dropped a challenge that HTTP cannot carry"),
        }
    }
}

/// A 401 with `challenge`, for plain HTTP answers (downloads).
pub fn challenge(challenge: &crate::auth::Challenge) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    set_challenge(&mut resp, challenge);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(err: BitsError) -> Option<String> {
        error_ack(&err)
            .header_pairs()
            .into_iter()
            .find(|(k, _)| *k == bits_proto::headers::ERROR_REASON)
            .map(|(_, v)| v)
    }

    #[test]
    fn refusals_say_why() {
        let exists = reason_of(BitsError::DestinationExists { status: 403 }).unwrap_or_default();
        assert!(
            exists.contains("exists") && exists.contains("overwrites are off"),
            "{exists}"
        );
        let tls = reason_of(BitsError::Refused(crate::auth::Refusal::TlsRequired));
        assert!(tls.is_some_and(|r| r.contains("HTTPS")));
    }

    #[test]
    fn reasons_keep_server_details_out() {
        let io = std::io::Error::other("/srv/secret/spool/abc: Permission denied");
        for err in [
            BitsError::Storage(crate::store::StoreError::Io(io)),
            BitsError::AppUnreachable("http://10.0.0.7:9000/hook".into()),
            BitsError::BodyAborted(std::io::Error::other("/srv/secret")),
        ] {
            let r = reason_of(err).unwrap_or_default();
            assert!(!r.is_empty() && !r.contains('/'), "{r}");
        }
    }

    #[test]
    fn no_reason_where_the_protocol_says_what_to_do() {
        assert_eq!(reason_of(BitsError::RangeGap { received: 5 }), None);
    }
}
