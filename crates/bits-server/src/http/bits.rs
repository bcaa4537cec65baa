//! `BITS_POST`: one packet in, one Ack out, one log line.

use std::pin::pin;
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use bits_proto::{classify, content_length, named_session, Ack, Packet, PacketType};

use futures_util::StreamExt;
use http::header::TRANSFER_ENCODING;

use super::{ack, body, local_base, peer_ip, public_base, Frontend};
use crate::activity::ErrorEntry;
use crate::capture::{
    recorded_headers, recorded_target, BodyTap, CapturedRequest, CapturedResponse, Exchange,
    RecordingServer,
};
use crate::engine::{Engine, EngineRequest};
use crate::error::BitsError;
use crate::target::resolve;

pub async fn bits_post(front: &Frontend, req: Request) -> Response {
    let started = Instant::now();
    let arrived = std::time::SystemTime::now();
    let engine = front.engine();
    let config = engine.config();
    let (parts, body) = req.into_parts();
    let url = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let declared = content_length(&parts.headers).unwrap_or(0);
    let packet = classify(
        &parts.method,
        &parts.headers,
        &Engine::SUPPORTED_PROTOCOLS,
        config.leniency(),
    );
    // A fragment's body must be exactly its range: hyper holds a `Content-Length` body to its
    // length, and a chunked one (the only `Transfer-Encoding` `classify` admits) is held here.
    let chunked_len = match &packet {
        Ok(Packet::Fragment { range, .. }) if parts.headers.contains_key(TRANSFER_ENCODING) => {
            Some(range.len)
        }
        _ => None,
    };
    let tap = front.capture().map(|_| BodyTap::default());
    let read = body::idle_limited(body, config.body_idle_timeout);
    let read = match &tap {
        Some(tap) => tap.tap(read).left_stream(),
        None => read.right_stream(),
    };
    let read = match chunked_len {
        Some(len) => body::exact_length(read, len).left_stream(),
        None => read.right_stream(),
    };
    let mut body = pin!(read);
    // Echoed on every error Ack of a request that names a session, valid or not (decision 14).
    let session = named_session(&parts.headers);
    let mut identity = None;
    let result: Result<Ack, BitsError> = async {
        if front.rate_limited(&parts) {
            return Err(BitsError::RateLimited);
        }
        // Upload messages are HTTP/1.1 only (spec §2.1).
        if parts.version != http::Version::HTTP_11 {
            return Err(BitsError::Proto(bits_proto::ProtoError::HttpVersion));
        }
        let target = resolve(parts.uri.path(), &config.vdirs).map_err(BitsError::BadPath)?;
        let vdir = &config.vdirs[target.vdir];
        if !vdir.upload_enabled {
            return Err(BitsError::UploadsDisabled);
        }
        identity = front.identify(target.vdir, vdir, &parts).await?;
        let packet = packet.clone()?;
        engine
            .handle(EngineRequest {
                public_base: public_base(config, &parts),
                local_base: local_base(&parts),
                packet,
                target,
                url: url.clone(),
                identity: identity.clone(),
                peer: peer_ip(&parts),
                body: body.as_mut(),
            })
            .await
    }
    .await;
    let ack = match &result {
        Ok(ack) => ack.clone(),
        Err(e) => {
            let ack = ack::error_ack_counted(e, front.metrics());
            match session {
                Some(id) => ack.with_session(id),
                None => ack,
            }
        }
    };
    // An unread body would desynchronise the connection: drain it, or close if it is too big.
    let clean = declared <= config.drain_limit && body::drain(&mut body, config.drain_limit).await;
    let packet_type = PacketType::from_headers(&parts.headers)
        .map(|t| t.as_str())
        .unwrap_or("-");
    let range = parts
        .headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let session_text = session
        .or(ack.session_id)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    let user = identity
        .as_ref()
        .map_or_else(|| "-".to_string(), |p| p.to_string());
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => tracing::info!(
            packet = packet_type, session = %session_text, user = %user, path = %url, range, status = ack.status,
            received = ack.received, elapsed_ms, "bits"
        ),
        Err(e) => tracing::warn!(
            packet = packet_type, session = %session_text, user = %user, path = %url, range, status = ack.status,
            code = %ack.error.map(|e| e.code.to_string()).unwrap_or_default(), error = %e, elapsed_ms, "bits"
        ),
    }
    if let Err(e) = &result {
        note_error(front, &parts, &url, packet_type, session, &ack, e);
    } else {
        engine.activity().request(engine.clock_ms());
    }
    let mut resp = ack::render(&ack, !clean || parts.version != http::Version::HTTP_11);
    if let Err(BitsError::Unauthenticated(challenge)) = &result {
        ack::set_challenge(&mut resp, challenge);
    }
    if let (Some(capture), Some(tap)) = (front.capture(), tap) {
        // A request naming a session nobody created goes to the shared file: ids a client makes
        // up must not each create a file.
        let file = session
            .or(ack.session_id)
            .filter(|&id| result.is_ok() || engine.knows_session(id));
        let exchange = Exchange {
            at_ms: arrived
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            server: Some(RecordingServer {
                local: local_base(&parts),
                public_url: config.public_url.clone(),
            }),
            request: CapturedRequest {
                method: parts.method.to_string(),
                target: recorded_target(&url),
                version: format!("{:?}", parts.version),
                headers: recorded_headers(&parts.headers),
                body: tap.summary(),
            },
            response: CapturedResponse {
                status: resp.status().as_u16(),
                headers: recorded_headers(resp.headers()),
            },
        };
        capture.record(file, &exchange).await;
    }
    resp
}

/// Counts an answered request with an error Ack for the console (`/admin/activity`). 401s are
/// the first leg of every Windows authentication handshake: counted, not listed as errors.
fn note_error(
    front: &Frontend,
    parts: &http::request::Parts,
    url: &str,
    packet: &str,
    session: Option<bits_proto::SessionId>,
    ack: &Ack,
    error: &BitsError,
) {
    let engine = front.engine();
    let config = engine.config();
    let activity = engine.activity();
    let now_ms = engine.clock_ms();
    activity.request(now_ms);
    if ack.status == 401 {
        return;
    }
    let vdir = resolve(parts.uri.path(), &config.vdirs)
        .ok()
        .and_then(|t| config.vdirs.get(t.vdir))
        .map(|v| v.prefix.as_str());
    activity.error(
        vdir,
        ErrorEntry {
            at_ms: now_ms,
            status: ack.status,
            code: ack.error.map(|e| e.code.to_string()),
            packet: packet.to_string(),
            path: url.to_string(),
            client: peer_ip(parts).map(|ip| ip.to_string()),
            session: session.map(|s| s.to_string()),
            message: error.to_string(),
        },
    );
}
