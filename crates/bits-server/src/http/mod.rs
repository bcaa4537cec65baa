//! The HTTP layer: one axum service that turns requests into packets and results into Acks.

pub mod ack;
mod body;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bits_proto::{classify, content_length, Ack, ErrorContext, HResult, PacketType};
use futures_util::FutureExt;
use http::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower_service::Service;

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

/// The client's address, available to handlers as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The local address a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub SocketAddr);

/// Serves until `shutdown` resolves, then waits for in-flight requests (the caller bounds how
/// long). Connections are HTTP/1.1 with keep-alive and pipelining; a client that half-closes
/// after its request still gets the answer.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let header_read_timeout = engine.config().header_read_timeout;
    let app = router(engine);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req.extensions_mut().insert(LocalAddr(local));
                let mut app = app.clone();
                async move {
                    // A bug must cost one request an error Ack, never the connection or the process.
                    match AssertUnwindSafe(app.call(req.map(Body::new)))
                        .catch_unwind()
                        .await
                    {
                        Ok(resp) => resp,
                        Err(_) => {
                            tracing::error!(%peer, "request handler panicked");
                            Ok(ack::render(
                                &Ack::error(500, HResult::E_FAIL, ErrorContext::RemoteFile),
                                true,
                            ))
                        }
                    }
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let method = req.method().clone();
    if method.as_str() == bits_proto::BITS_POST {
        bits_post(&app.engine, req).await
    } else if method == Method::GET || method == Method::HEAD {
        let started = Instant::now();
        let (parts, _) = req.into_parts();
        let resp = get(&app.engine, &parts).await;
        tracing::info!(method = %method, path = %parts.uri.path(), status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64, "download");
        resp
    } else {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD, BITS_POST"),
        );
        resp
    }
}

fn plain(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("0"),
    );
    resp
}

/// GET/HEAD of a published file below a vdir that allows downloads.
async fn get(engine: &Engine, req: &http::request::Parts) -> Response {
    let config = engine.config();
    let Ok(target) = resolve(req.uri.path(), &config.vdirs) else {
        return plain(StatusCode::NOT_FOUND);
    };
    let vdir = &config.vdirs[target.vdir];
    if let Some(id) = crate::engine::parse_reply_path(&target.rel_path) {
        return match engine.reply_file(&vdir.prefix, id, None).await {
            Some(path) => serve_file(&path, req).await,
            None => plain(StatusCode::NOT_FOUND),
        };
    }
    if !vdir.download_enabled || crate::store::fs::is_internal_name(&target.rel_path) {
        return plain(StatusCode::NOT_FOUND);
    }
    let path = match crate::store::fs::contained(&vdir.root, &target.rel_path).await {
        Ok(Some(p)) => p,
        Ok(None) => return plain(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::error!(error = %e, "download path check failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    serve_file(&path, req).await
}

async fn serve_file(path: &std::path::Path, req: &http::request::Parts) -> Response {
    let head = req.method == Method::HEAD;
    let served = async {
        match crate::download::representation(path).await? {
            Some(rep) => crate::download::respond(path, &rep, &req.headers, head)
                .await
                .map(Some),
            None => Ok(None),
        }
    }
    .await;
    match served {
        Ok(Some(resp)) => resp,
        Ok(None) => plain(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "download failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// `http://` + the local address of the connection: how this server reaches itself.
fn local_base(parts: &http::request::Parts) -> String {
    match parts.extensions.get::<LocalAddr>() {
        Some(LocalAddr(addr)) => format!("http://{addr}"),
        None => "http://127.0.0.1".to_string(),
    }
}

/// How the client reaches this server: `public_url` if configured, else the Host it used.
fn public_base(config: &crate::ServerConfig, parts: &http::request::Parts) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@')
        });
    match host {
        Some(h) => format!("http://{h}"),
        None => local_base(parts),
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
                public_base: public_base(config, &parts),
                local_base: local_base(&parts),
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
