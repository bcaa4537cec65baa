//! The live console on the admin listener: `/console` serves a page (HTML, one script, one
//! stylesheet, all compiled into the binary) that polls two token-protected JSON routes, the
//! same `GET /admin/sessions` that `bitsd sessions list` reads and `GET /admin/activity`.
//!
//! The page itself holds no data, so it is served without the token (a browser cannot add a
//! bearer header to a navigation); it asks for the token and keeps it in the tab's
//! `sessionStorage`. Everything it shows comes from the JSON routes, which refuse requests
//! without it. Session URLs and user names are client-controlled text: the script only ever
//! sets `textContent`, and the page is served with a Content-Security-Policy that allows no
//! inline script and no other origin.

use axum::body::Body;
use axum::response::Response;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::config::StorageConfig;
use crate::engine::Engine;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

const POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// Free and total bytes of the file system holding `path`.
fn space(path: &std::path::Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// `GET /admin/activity`: throughput, recent completions and errors, per-vdir totals and
/// storage health.
pub async fn activity_json(engine: &Engine) -> Value {
    let config = engine.config();
    let snapshot = engine.activity().snapshot(engine.clock_ms());
    let ready = engine.probe_storage().await;
    let storage = match &config.storage {
        StorageConfig::Fs => {
            let (free, total) = space(&config.spool_dir).unzip();
            json!({
                "backend": "fs",
                "location": config.spool_dir.display().to_string(),
                "ready": ready.is_ok(),
                "error": ready.as_ref().err().map(|e| e.to_string()),
                "free_bytes": free,
                "total_bytes": total,
            })
        }
        // Object storage: no free space to report.
        other => json!({
            "backend": other.backend_name(),
            "location": other.location(),
            "ready": ready.is_ok(),
            "error": ready.as_ref().err().map(|e| e.to_string()),
            "free_bytes": null,
            "total_bytes": null,
        }),
    };
    let vdirs: Vec<Value> = config
        .vdirs
        .iter()
        .map(|v| {
            let totals = snapshot.vdirs.get(&v.prefix).cloned().unwrap_or_default();
            json!({
                "prefix": v.prefix,
                "upload_enabled": v.upload_enabled,
                "open": engine.open_in_vdir(&v.prefix),
                "completed": totals.completed,
                "bytes_completed": totals.bytes_completed,
                "bytes_received": totals.bytes_received,
                "errors": totals.errors,
            })
        })
        .collect();
    json!({
        "now_ms": snapshot.now_ms,
        "bucket_ms": snapshot.bucket_ms,
        "series": snapshot.series,
        "completions": snapshot.completions,
        "errors": snapshot.errors,
        "vdirs": vdirs,
        "storage": storage,
        "open_sessions": engine.open_sessions(),
        "cancel_enabled": config.admin.console_cancel,
    })
}
