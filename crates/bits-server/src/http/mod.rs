//! The HTTP layer: one axum service that turns requests into packets and results into Acks.

pub mod ack;
mod body;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bits_proto::{classify, content_length, Ack, PacketType};
use http::{Method, StatusCode};
use tokio::net::TcpListener;

use crate::engine::{Engine, EngineRequest};
use crate::error::BitsError;
use crate::target::resolve;

#[derive(Clone)]
struct App {
    engine: Arc<Engine>,
}

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new().fallback(dispatch).with_state(App { engine })
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    if req.method().as_str() == bits_proto::BITS_POST {
        bits_post(&app.engine, req).await
    } else {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = if req.method() == Method::GET || req.method() == Method::HEAD {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::METHOD_NOT_ALLOWED
        };
        resp
    }
}

async fn bits_post(engine: &Engine, req: Request) -> Response {
    let started = Instant::now();
    let config = engine.config();
    let (parts, body) = req.into_parts();
    let url = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let declared = content_length(&parts.headers).unwrap_or(0);
    let mut body = pin!(body::idle_limited(body, config.body_idle_timeout));
    let packet = classify(&parts.method, &parts.headers, &Engine::SUPPORTED_PROTOCOLS);
    let session = packet.as_ref().ok().and_then(|p| p.session());
    let result: Result<Ack, BitsError> = async {
        let target = resolve(parts.uri.path(), &config.vdirs).map_err(BitsError::BadPath)?;
        let packet = packet.clone()?;
        engine
            .handle(EngineRequest {
                packet,
                target,
                url: url.clone(),
                identity: None,
                body: body.as_mut(),
            })
            .await
    }
    .await;
    let ack = match &result {
        Ok(ack) => ack.clone(),
        Err(e) => {
            let ack = ack::error_ack(e);
            match session {
                Some(id) => ack.with_session(id),
                None => ack,
            }
        }
    };
    // An unread body would desynchronise the connection: drain it, or close if it is too big.
    let clean = if declared > config.drain_limit {
        false
    } else {
        body::drain(&mut body, config.drain_limit).await
    };
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
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => tracing::info!(
            packet = packet_type, session = %session_text, path = %url, range, status = ack.status,
            received = ack.received, elapsed_ms, "bits"
        ),
        Err(e) => tracing::warn!(
            packet = packet_type, session = %session_text, path = %url, range, status = ack.status,
            code = %ack.error.map(|e| e.code.to_string()).unwrap_or_default(), error = %e, elapsed_ms, "bits"
        ),
    }
    ack::render(&ack, !clean)
}
