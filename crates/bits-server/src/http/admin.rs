//! The admin listener (`[admin] listen`): metrics, health, and session administration for
//! operators, on its own address so it never shares a port with BITS clients.
//!
//! | route                              | answer                                                |
//! |------------------------------------|-------------------------------------------------------|
//! | `GET /healthz`                     | 200 `ok` while the process serves (never needs a token nor a loopback Host)|
//! | `GET /readyz`                      | 200 `ready` when storage answers a probe, else 503     |
//! | `GET /metrics`                     | Prometheus text exposition                            |
//! | `GET /admin/sessions[?all=1][&limit=N][&after=ID]` | JSON array of open sessions (`all`: tombstones too; `limit`: read at most N records; `after`: pages in id order from ID, empty for the start, with `Link: <next>; rel="next"`) |
//! | `GET /admin/sessions/{id}`         | one session as JSON, 404 if unknown                   |
//! | `POST /admin/sessions/{id}/cancel` | cancels it like its owner's Cancel-Session            |
//! | `POST /admin/gc`                   | one cleanup pass now; its report as JSON              |
//! | `GET /admin/activity`              | throughput, recent completions/errors, vdirs, storage |
//! | `GET /console` (+ `app.js`, `app.css`) | the live console page (no data; needs no token)   |
//!
//! Checked in this order, each refusal with a JSON `{"error": "..."}` body:
//!
//! 1. Cross-site requests (every route, token or not): a request other than GET/HEAD/OPTIONS
//!    whose `Origin` is not the listener's own (`http://` or `https://` and the request's
//!    `Host`), or that comes with `Sec-Fetch-Site` other than `same-origin` or `none`, gets
//!    403. Browsers send these headers; the CLI and curl send neither and pass.
//! 2. Without `[admin] token` (every route but `/healthz`): the request must name the listener
//!    by a loopback name (`localhost`, `127.x.y.z`, `[::1]`, any port) or by the IP address the
//!    connection reached; else 421. A page on a DNS name the attacker points at 127.0.0.1
//!    (DNS rebinding) is same-origin with the listener, so step 1 alone would let it read
//!    sessions and post cancellations; its requests carry its own name as `Host`.
//! 3. With `[admin] token` (every route but `/healthz`): `Authorization: Bearer <token>`,
//!    compared in constant time; else 401. Wrong tokens are counted
//!    (`bitsd_admin_auth_failures_total`) and logged at most once a second per listener.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bits_proto::SessionId;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{LocalAddr, PeerAddr};
use crate::engine::{AdminCancel, Engine};
use crate::store::SessionRecord;

struct Admin {
    engine: Arc<Engine>,
    token: Option<String>,
    failures: Mutex<FailureLog>,
    /// The latest readiness answer and when its probe started. Probes run one at a time and
    /// a request reuses a probe that started after it arrived, so a flood of `/readyz` runs
    /// one probe (a flushed file write) after another, never one per request, and no answer is
    /// older than the request.
    last_probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Wrong tokens seen since the last line logged about them.
#[derive(Default)]
struct FailureLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// At most one line about wrong tokens per this interval: a guessing flood is visible in the
/// log without filling it.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl Admin {
    /// Counts one wrong token and logs it unless a line went out within the interval; the next
    /// line then carries the failures held back.
    fn token_failed(&self, peer: Option<SocketAddr>) {
        self.engine.metrics().admin_auth_failure();
        let failures = {
            let mut log = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            log.unlogged += 1;
            let now = Instant::now();
            if log
                .logged_at
                .is_some_and(|at| now.duration_since(at) < FAILURE_LOG_INTERVAL)
            {
                return;
            }
            log.logged_at = Some(now);
            std::mem::take(&mut log.unlogged)
        };
        let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        // `failures`: wrong tokens since the previous such line, this one included.
        tracing::warn!(%peer, failures, "admin token refused");
    }
}

/// The admin routes over `engine`, protected as the module documentation says.
pub fn admin_router(engine: Arc<Engine>) -> Router {
    let token = engine.config().admin.token.clone();
    let state = Arc::new(Admin {
        engine,
        token,
        failures: Mutex::default(),
        last_probe: tokio::sync::Mutex::new(None),
    });
    let protected = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/sessions", get(list))
        .route("/admin/sessions/{id}", get(show))
        .route("/admin/sessions/{id}/cancel", post(cancel))
        .route("/admin/gc", post(gc))
        .route("/admin/activity", get(activity))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    // The console page holds no data, but a rebinding page has no business loading it either.
    let named = Router::new()
        .route("/console", get(super::console::page))
        .route("/console/app.js", get(super::console::script))
        .route("/console/app.css", get(super::console::style))
        .merge(protected)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_local_host,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(named)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin route") })
        .layer(axum::middleware::from_fn(refuse_cross_site))
        .with_state(state)
}

async fn require_token(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    match denied(&admin, &req) {
        Some(resp) => resp,
        None => next.run(req).await,
    }
}

async fn require_local_host(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    if admin.token.is_some() {
        return next.run(req).await;
    }
    let local = req.extensions().get::<LocalAddr>().map(|l| l.0);
    let host = request_host(&req);
    if host.is_some_and(|h| names_this_host(h, local)) {
        return next.run(req).await;
    }
    tracing::debug!(
        host = host.unwrap_or("-"),
        "admin request for another host refused"
    );
    error(
        StatusCode::MISDIRECTED_REQUEST,
        format_args!(
            "Host {:?} refused: without an [admin] token this listener answers only requests \
             addressed to localhost, 127.0.0.1, [::1] or its own address (DNS rebinding defence)",
            host.unwrap_or_default()
        ),
    )
}

async fn refuse_cross_site(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    match cross_site(&req) {
        None => next.run(req).await,
        Some(why) => {
            tracing::debug!(method = %req.method(), path = req.uri().path(), why, "cross-site admin request refused");
            error(
                StatusCode::FORBIDDEN,
                format_args!("cross-site request refused: {why}"),
            )
        }
    }
}

/// The authority the request names: an absolute-form target's, which takes precedence over
/// `Host` (RFC 9112, 3.2.2), else the `Host` header.
fn request_host(req: &Request) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    }
}

/// The host of `host`, `host:port`, `[v6]` or `[v6]:port` (brackets removed); `None` for
/// anything else, userinfo included.
fn host_part(authority: &str) -> Option<&str> {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok)).then_some(v6);
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) => port_ok(port).then_some(host)?,
        None => authority,
    };
    (!host.is_empty() && !host.contains([':', '@'])).then_some(host)
}

/// Whether `authority` names this host in a way no DNS answer can change: `localhost`, a
/// loopback address, or the address the connection reached (`local`). The port is not
/// compared: another port on this host is another origin, which step 1 handles.
fn names_this_host(authority: &str, local: Option<SocketAddr>) -> bool {
    let Some(host) = host_part(authority) else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            ip.is_loopback() || local.is_some_and(|l| l.ip().to_canonical() == ip)
        }
        Err(_) => false,
    }
}

/// Why a state-changing request looks sent by a page of another origin, if it does.
fn cross_site(req: &Request) -> Option<String> {
    let headers = req.headers();
    for site in headers.get_all("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default();
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let host = request_host(req);
    for origin in headers.get_all(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own = host.is_some_and(|h| {
            ["http://", "https://"].iter().any(|scheme| {
                origin
                    .get(..scheme.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                    && origin[scheme.len()..].eq_ignore_ascii_case(h)
            })
        });
        if !own {
            return Some(format!(
                "Origin {origin:?} is not this listener's own (http://{})",
                host.unwrap_or_default()
            ));
        }
    }
    None
}

/// `[admin] max_connections` when absent: operators and scrapers need a handful.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Serves the admin routes on `listener` until `shutdown` resolves, with the main listener's
/// `header_read_timeout` and at most `[admin] max_connections` connections.
pub async fn serve_admin(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = engine.config().clone();
    let cap = config
        .admin
        .max_connections
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let app = admin_router(engine).layer(axum::middleware::from_fn(close_if_body));
    super::listener::serve_capped(app, listener, cap, config.header_read_timeout, shutdown).await
}

/// No admin route reads a request body, so a request that comes with one is answered and its
/// connection closed: a slowly trickled body must not hold a connection slot.
async fn close_if_body(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = next.run(req).await;
    if has_body {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut body = value.to_string();
    body.push('\n');
    respond(status, "application/json", body)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, &json!({ "error": message.to_string() }))
}

/// A 401 unless the request carries the configured bearer token (if any). Credentials other
/// than the token count as a failure; no `Authorization` at all does not (a console asking
/// for its token, a scraper not configured yet).
fn denied(admin: &Admin, req: &Request) -> Option<Response> {
    let token = admin.token.as_deref()?;
    let header = req.headers().get(AUTHORIZATION);
    let given = header.and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    if given.is_some_and(|g| bits_proto::secret::constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    if header.is_some() {
        admin.token_failed(req.extensions().get::<PeerAddr>().map(|p| p.0));
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token (Authorization: Bearer <token>)",
    );
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"bitsd-admin\""),
    );
    Some(resp)
}

fn bad_id(text: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format_args!("{text:?} is not a session id (a GUID, braces optional)"),
    )
}

/// The JSON form of a session: timestamps are Unix milliseconds.
pub fn session_json(rec: &SessionRecord) -> Value {
    let destination = format!(
        "{}/{}",
        rec.destination.root.trim_end_matches('/'),
        rec.destination.path
    );
    json!({
        "id": rec.id.to_string(),
        "state": rec.state,
        "vdir": rec.vdir,
        "url": rec.url,
        "destination": destination,
        "owner": rec.owner,
        "client": rec.client.map(|c| c.to_string()),
        "received": rec.received,
        "total": rec.total,
        "created_at": rec.created_at,
        "last_activity": rec.last_activity,
        "ended_at": rec.ended_at,
    })
}

async fn healthz() -> Response {
    respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
}

/// How long `/readyz` waits for the storage probe when `[admin] probe_timeout` is absent: a
/// store that does not answer is as unready as one that fails, and a probe must not hang the
/// health checker.
pub const DEFAULT_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let asked = Instant::now();
    // Held across the probe: requests arriving meanwhile wait and share the next answer.
    let mut last = admin.last_probe.lock().await;
    let fresh = last
        .as_ref()
        .filter(|(started, _)| *started >= asked)
        .map(|(_, r)| r.clone());
    let result = match fresh {
        Some(r) => r,
        None => {
            let started = Instant::now();
            let limit = admin
                .engine
                .config()
                .admin
                .probe_timeout
                .unwrap_or(DEFAULT_PROBE_TIMEOUT);
            let probe = tokio::time::timeout(limit, admin.engine.probe_storage());
            let r = match probe.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness probe failed");
                    Err(e.to_string())
                }
                Err(_) => {
                    tracing::warn!(timeout = ?limit, "readiness probe did not finish");
                    Err(format!("no answer within {limit:?}"))
                }
            };
            *last = Some((started, r.clone()));
            r
        }
    };
    drop(last);
    match result {
        Ok(()) => respond(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
        Err(e) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("storage not ready: {e}\n"),
        ),
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let metrics = admin.engine.metrics();
    metrics.set_open(admin.engine.open_sessions());
    metrics.set_hook_stats(admin.engine.hook_stats());
    match metrics.render() {
        Ok(text) => respond(StatusCode::OK, crate::metrics::TEXT_CONTENT_TYPE, text),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn list(State(admin): State<Arc<Admin>>, uri: Uri) -> Response {
    let query: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "1")))
        .collect();
    let all = query
        .iter()
        .any(|kv| matches!(kv, ("all", "1" | "true" | "yes")));
    let limit = match query.iter().find(|(k, _)| *k == "limit") {
        None => usize::MAX,
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "limit must be a number of sessions",
                )
            }
        },
    };
    // `after` pages in session-id order (`after=` empty: from the start); the next page is
    // named by a `Link: <...>; rel="next"` header.
    let after = match query.iter().find(|(k, _)| *k == "after") {
        None => None,
        Some((_, "")) => Some(None),
        Some((_, v)) => match SessionId::parse(v) {
            Ok(id) => Some(Some(id)),
            Err(_) => return error(StatusCode::BAD_REQUEST, "after must be a session id"),
        },
    };
    let Some(after) = after else {
        // Without a cursor: as before (creation order, the first `limit` found).
        return match admin.engine.list_sessions_up_to(all, limit).await {
            Ok(recs) => json_response(
                StatusCode::OK,
                &Value::Array(recs.iter().map(session_json).collect()),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
    };
    match admin.engine.list_sessions_page(all, after, limit).await {
        Ok((recs, next)) => {
            let mut resp = json_response(
                StatusCode::OK,
                &Value::Array(recs.iter().map(session_json).collect()),
            );
            if let Some(next) = next {
                let link = format!(
                    "</admin/sessions?after={}&limit={limit}{}>; rel=\"next\"",
                    next,
                    if all { "&all=1" } else { "" }
                );
                if let Ok(v) = HeaderValue::from_str(&link) {
                    resp.headers_mut().insert(http::header::LINK, v);
                }
            }
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The session id of a `/admin/sessions/{id}` route.
fn session_arg(id: &str) -> Result<SessionId, Box<Response>> {
    SessionId::parse(id.trim()).map_err(|_| Box::new(bad_id(id)))
}

async fn show(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let id = match session_arg(&id) {
        Ok(id) => id,
        Err(resp) => return *resp,
    };
    match admin.engine.session(id).await {
        Ok(Some(rec)) => json_response(StatusCode::OK, &session_json(&rec)),
        Ok(None) => error(StatusCode::NOT_FOUND, format_args!("no session {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// 200 and the tombstone; 409 and the record if it had ended already; 404 if unknown.
async fn cancel(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let id = match session_arg(&id) {
        Ok(id) => id,
        Err(resp) => return *resp,
    };
    match admin.engine.admin_cancel(id).await {
        Ok(AdminCancel::Cancelled(rec)) => json_response(StatusCode::OK, &session_json(&rec)),
        Ok(AdminCancel::AlreadyEnded(rec)) => {
            let mut body = session_json(&rec);
            body["error"] = json!(format!("session {id} has already ended"));
            json_response(StatusCode::CONFLICT, &body)
        }
        Ok(AdminCancel::NotFound) => error(StatusCode::NOT_FOUND, format_args!("no session {id}")),
        Err(e @ crate::BitsError::SessionBusy) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn activity(State(admin): State<Arc<Admin>>) -> Response {
    json_response(
        StatusCode::OK,
        &super::console::activity_json(&admin.engine).await,
    )
}

async fn gc(State(admin): State<Arc<Admin>>) -> Response {
    match admin.engine.gc().await {
        Ok(r) => json_response(
            StatusCode::OK,
            &json!({
                "expired": r.expired,
                "tombstones_removed": r.tombstones_removed,
                "busy": r.busy,
                "failed": r.failed,
            }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_no_dns_answer_can_change_are_this_host() {
        let local: SocketAddr = "192.0.2.10:9180".parse().unwrap();
        for host in [
            "localhost",
            "LOCALHOST:9180",
            "127.0.0.1",
            "127.0.0.1:9180",
            "127.200.1.2:1",
            "[::1]",
            "[::1]:9180",
            "[::ffff:127.0.0.1]:9180",
            "192.0.2.10:9180",
            "192.0.2.10",
        ] {
            assert!(names_this_host(host, Some(local)), "{host}");
        }
        for host in [
            "",
            "rebind.attacker.example",
            "rebind.attacker.example:9180",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost.",
            "192.0.2.11:9180",
            "0.0.0.0:9180",
            "2130706433",
            "::1",
            "[::1]x",
            "[::1]:",
            "127.0.0.1:",
            "127.0.0.1:90a",
            "user@127.0.0.1",
        ] {
            assert!(!names_this_host(host, Some(local)), "{host}");
        }
        assert!(!names_this_host("192.0.2.10", None));
    }

    fn post(headers: &[(&str, &str)]) -> Request {
        let mut req = Request::builder().method(Method::POST).uri("/admin/gc");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::empty()).unwrap()
    }

    #[test]
    fn only_the_listeners_own_origin_may_post() {
        let host = ("Host", "127.0.0.1:9180");
        for ok in [
            vec![host],
            vec![host, ("Origin", "http://127.0.0.1:9180")],
            vec![host, ("Origin", "HTTPS://127.0.0.1:9180")],
            vec![host, ("Sec-Fetch-Site", "same-origin")],
            vec![host, ("Sec-Fetch-Site", "none")],
        ] {
            assert_eq!(cross_site(&post(&ok)), None, "{ok:?}");
        }
        for bad in [
            vec![host, ("Origin", "http://127.0.0.1:9181")],
            vec![host, ("Origin", "http://127.0.0.1")],
            vec![host, ("Origin", "null")],
            vec![host, ("Origin", "ftp://127.0.0.1:9180")],
            vec![host, ("Origin", "http://127.0.0.1:9180.attacker.example")],
            vec![("Origin", "http://127.0.0.1:9180")],
            vec![host, ("Sec-Fetch-Site", "cross-site")],
            vec![host, ("Sec-Fetch-Site", "same-site")],
            vec![host, ("Sec-Fetch-Site", "bogus")],
        ] {
            assert!(cross_site(&post(&bad)).is_some(), "{bad:?}");
        }
    }
}
