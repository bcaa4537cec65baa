//! The admin listener (`[admin] listen`): metrics, health, and session administration for
//! operators, on its own address so it never shares a port with BITS clients.
//!
//! | route                              | answer                                                |
//! |------------------------------------|-------------------------------------------------------|
//! | `GET /healthz`                     | 200 `ok` while the process serves (never needs a token)|
//! | `GET /readyz`                      | 200 `ready` when storage answers a probe, else 503     |
//! | `GET /metrics`                     | Prometheus text exposition                            |
//! | `GET /admin/sessions[?all=1][&limit=N]` | JSON array of open sessions (`all`: tombstones too; `limit`: read at most N records) |
//! | `GET /admin/sessions/{id}`         | one session as JSON, 404 if unknown                   |
//! | `POST /admin/sessions/{id}/cancel` | cancels it like its owner's Cancel-Session            |
//! | `POST /admin/gc`                   | one cleanup pass now; its report as JSON              |
//! | `GET /admin/activity`              | throughput, recent completions/errors, vdirs, storage |
//! | `GET /console` (+ `app.js`, `app.css`) | the live console page (no data; needs no token)   |
//!
//! With `[admin] token` set, every route but `/healthz` needs `Authorization: Bearer <token>`
//! (401 otherwise). Error bodies are JSON `{"error": "..."}`.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bits_proto::SessionId;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::engine::{AdminCancel, Engine};
use crate::store::SessionRecord;

struct Admin {
    engine: Arc<Engine>,
    token: Option<String>,
}

/// The admin routes over `engine`, protected by the configured `[admin] token`.
pub fn admin_router(engine: Arc<Engine>) -> Router {
    let token = engine.config().admin.token.clone();
    let state = Arc::new(Admin { engine, token });
    // Every route but /healthz checks the token once, here.
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
    Router::new()
        .route("/healthz", get(healthz))
        .route("/console", get(super::console::page))
        .route("/console/app.js", get(super::console::script))
        .route("/console/app.css", get(super::console::style))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin route") })
        .with_state(state)
}

async fn require_token(
    State(admin): State<Arc<Admin>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match denied(&admin, req.headers()) {
        Some(resp) => resp,
        None => next.run(req).await,
    }
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
async fn close_if_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
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

/// A 401 unless the request carries the configured bearer token (if any).
fn denied(admin: &Admin, headers: &HeaderMap) -> Option<Response> {
    let token = admin.token.as_deref()?;
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match given {
        Some(given) if bits_proto::secret::constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            None
        }
        _ => {
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
    }
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

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    match admin.engine.probe_storage().await {
        Ok(()) => respond(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness probe failed");
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("storage not ready: {e}\n"),
            )
        }
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
    match admin.engine.list_sessions_up_to(all, limit).await {
        Ok(recs) => json_response(
            StatusCode::OK,
            &Value::Array(recs.iter().map(session_json).collect()),
        ),
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
