//! The HTTP layer: listeners (plain and TLS), one service that authenticates each request and
//! routes it to the BITS packet handler or to downloads.

pub mod ack;
pub mod admin;
mod bits;
mod body;
mod console;
mod get;
mod listener;
pub mod range;

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use futures_util::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{Method, StatusCode};

use crate::auth::{Auth, AuthError, AuthOutcome, ConnInfo};
use crate::config::VdirConfig;
use crate::engine::Engine;
use crate::error::BitsError;
use crate::tls::TlsState;

pub use listener::{serve, serve_unready};

/// The client's address, available to handlers as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The token an authentication owes this request's response (`WWW-Authenticate: Negotiate
/// <token>`): one slot per request, never per connection.
#[derive(Clone, Debug, Default)]
struct AuthReply(Arc<std::sync::Mutex<Option<String>>>);

/// The local address a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub SocketAddr);

/// Everything in front of the engine: authentication, rate limiting, TLS state.
pub struct Frontend {
    engine: Arc<Engine>,
    auth: Auth,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Requests checked against the limiter, to forget idle addresses now and then.
    limiter_checks: std::sync::atomic::AtomicU64,
    tls: Option<Arc<TlsState>>,
    metrics: Arc<crate::metrics::Metrics>,
    capture: Option<crate::capture::Capture>,
}

impl Frontend {
    pub fn new(engine: Arc<Engine>, tls: Option<Arc<TlsState>>) -> Result<Frontend, AuthError> {
        let config = engine.config();
        let auth = Auth::new(config)?;
        let limiter = config
            .rate_limit_per_ip
            .and_then(std::num::NonZeroU32::new)
            .map(|rate| {
                let burst = std::num::NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
                RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            });
        Ok(Frontend {
            metrics: engine.metrics().clone(),
            engine,
            auth,
            limiter,
            limiter_checks: Default::default(),
            tls,
            capture: None,
        })
    }

    /// Records every `BITS_POST` exchange through `capture` (`capture_dir`).
    pub fn with_capture(mut self, capture: crate::capture::Capture) -> Frontend {
        self.capture = Some(capture);
        self
    }

    pub fn capture(&self) -> Option<&crate::capture::Capture> {
        self.capture.as_ref()
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn tls(&self) -> Option<&Arc<TlsState>> {
        self.tls.as_ref()
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Authenticates a request for `vdir` (index `index`), by that vdir's policy alone.
    async fn identify(
        &self,
        index: usize,
        vdir: &VdirConfig,
        parts: &http::request::Parts,
    ) -> Result<Option<crate::principal::Principal>, BitsError> {
        let conn = parts
            .extensions
            .get::<ConnInfo>()
            .cloned()
            .unwrap_or_default();
        match self
            .auth
            .authenticate(index, &parts.headers, &conn, peer_ip(parts))
            .await
        {
            // The scheme travels with the name: `basic:alice` is not `cert:alice`.
            AuthOutcome::Allowed { name, reply } => {
                if let (Some(reply), Some(slot)) = (reply, parts.extensions.get::<AuthReply>()) {
                    *slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reply);
                }
                Ok(name.and_then(|n| {
                    crate::principal::Scheme::of(vdir.auth)
                        .map(|scheme| crate::principal::Principal::new(scheme, n))
                }))
            }
            AuthOutcome::Challenge(c) => Err(BitsError::Unauthenticated(c)),
            AuthOutcome::Forbidden(refusal) => Err(BitsError::Refused(refusal)),
            AuthOutcome::Throttled => Err(BitsError::RateLimited),
        }
    }

    /// SIGHUP: re-reads the users files and, when configured, the TLS certificate, key and
    /// client CA (blocking: call off the async workers). Whatever fails to load keeps its
    /// previous version, logged; verified passwords are forgotten either way.
    pub fn reload(&self) {
        let errors = self.auth.reload();
        for e in &errors {
            tracing::error!(error = %e, "users file reload failed; keeping the users loaded before");
        }
        if errors.is_empty() {
            tracing::info!("users files reloaded");
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous configuration")
                }
            }
        }
    }

    fn rate_limited(&self, parts: &http::request::Parts) -> bool {
        match (&self.limiter, parts.extensions.get::<PeerAddr>()) {
            (Some(limiter), Some(PeerAddr(peer))) => {
                // Without this, one entry per client address ever seen would stay forever.
                let n = self
                    .limiter_checks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n % 4096 == 4095 {
                    limiter.retain_recent();
                }
                limiter.check_key(&peer.ip()).is_err()
            }
            _ => false,
        }
    }
}

pub fn router(frontend: Arc<Frontend>) -> Router {
    Router::new().fallback(dispatch).with_state(frontend)
}

/// Routes one request and counts it in `bitsd_requests_total` and
/// `bitsd_request_duration_seconds` (time to the response head).
async fn dispatch(State(front): State<Arc<Frontend>>, req: Request) -> Response {
    let started = Instant::now();
    let packet = match req.method() {
        m if m.as_str() == bits_proto::BITS_POST => {
            crate::metrics::packet_label(bits_proto::PacketType::from_headers(req.headers()))
        }
        &Method::GET => "get",
        &Method::HEAD => "head",
        _ => "other",
    };
    let reply = AuthReply::default();
    let mut req = req;
    req.extensions_mut().insert(reply.clone());
    // A bug must cost one request an error Ack, never the connection or the process; counted
    // like every other error Ack. (The accept loop has a last-resort guard of its own.)
    let resp = match AssertUnwindSafe(route(&front, req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!(packet, "request handler panicked");
            let ack = bits_proto::Ack::error(
                500,
                bits_proto::HResult::E_FAIL,
                bits_proto::ErrorContext::RemoteFile,
            );
            front.metrics.error_ack(&ack);
            ack::render(&ack, true)
        }
    };
    let mut resp = resp;
    // Kerberos' mutual authentication (the AP-REP for the ticket this request carried), or
    // SPNEGO's final answer.
    if let Some(token) = reply.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
        if let Ok(v) = http::HeaderValue::from_str(&format!("Negotiate {token}")) {
            if resp.status() != StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
    }
    front
        .metrics
        .request(packet, resp.status().as_u16(), started.elapsed());
    resp
}

async fn route(front: &Frontend, req: Request) -> Response {
    let method = req.method().clone();
    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if head_bytes > front.engine.config().max_header_bytes {
        tracing::warn!(head_bytes, path = %req.uri().path(), "request head too large");
        let mut resp = plain(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    if method.as_str() == bits_proto::BITS_POST {
        bits::bits_post(front, req).await
    } else if method == Method::GET || method == Method::HEAD {
        let started = Instant::now();
        let (parts, _) = req.into_parts();
        let resp = if front.rate_limited(&parts) {
            let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE);
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            resp
        } else {
            get::get(front, &parts).await
        };
        let fields = resp
            .extensions()
            .get::<get::LogFields>()
            .cloned()
            .unwrap_or_default();
        let session = fields.session.map_or("-".to_string(), |s| s.to_string());
        tracing::info!(method = %method, session = %session, user = fields.user.as_deref().unwrap_or("-"),
            path = %parts.uri.path(), status = resp.status().as_u16(),
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

fn is_tls(parts: &http::request::Parts) -> bool {
    parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls)
}

/// `http(s)://` + the local address of the connection: how this server reaches itself.
fn local_base(parts: &http::request::Parts) -> String {
    let scheme = if is_tls(parts) { "https" } else { "http" };
    match parts.extensions.get::<LocalAddr>() {
        Some(LocalAddr(addr)) => format!("{scheme}://{addr}"),
        None => format!("{scheme}://127.0.0.1"),
    }
}

/// How the client reaches this server, for reply URLs: `public_url` if configured, else the
/// address the client's connection reached. Never the client's `Host` header: a reply URL
/// built from it would send the client (and, with Windows credentials, its logon) wherever the
/// header pointed.
fn public_base(config: &crate::ServerConfig, parts: &http::request::Parts) -> String {
    match &config.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => local_base(parts),
    }
}

/// The client's IP address, if the listener recorded it.
fn peer_ip(parts: &http::request::Parts) -> Option<IpAddr> {
    parts.extensions.get::<PeerAddr>().map(|p| p.0.ip())
}
