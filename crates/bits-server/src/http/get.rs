//! GET/HEAD: stored replies and published files.

use std::sync::Arc;

use axum::response::Response;
use http::{Method, StatusCode};

use super::{plain, Frontend};
use crate::error::BitsError;
use crate::store::Destination;
use crate::store::PublishedFile as _;
use crate::target::resolve;

/// Who asked and for which session's reply: for the request's log line.
#[derive(Clone, Debug, Default)]
pub struct LogFields {
    pub user: Option<String>,
    pub session: Option<bits_proto::SessionId>,
}

/// Answers a GET/HEAD; the response carries [`LogFields`] as an extension.
pub async fn get(front: &Frontend, req: &http::request::Parts) -> Response {
    let mut fields = LogFields::default();
    let mut resp = answer(front, req, &mut fields).await;
    resp.extensions_mut().insert(fields);
    resp
}

async fn answer(front: &Frontend, req: &http::request::Parts, fields: &mut LogFields) -> Response {
    let config = front.engine().config();
    let Ok(target) = resolve(req.uri.path(), &config.vdirs) else {
        return plain(StatusCode::NOT_FOUND);
    };
    let vdir = &config.vdirs[target.vdir];
    let identity = match front.identify(target.vdir, vdir, req).await {
        Ok(identity) => identity,
        Err(BitsError::Unauthenticated(c)) => return super::ack::challenge(&c),
        // A spent failure budget or a full queue is transient: 503, as for BITS_POST (a 403
        // would end a BITS download job for good).
        Err(BitsError::RateLimited) => {
            let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE);
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return resp;
        }
        Err(_) => return plain(StatusCode::FORBIDDEN),
    };
    fields.user = identity.as_ref().map(|p| p.to_string());
    if let Some(id) = crate::engine::parse_reply_path(&target.rel_path) {
        fields.session = Some(id);
        let head = req.method == Method::HEAD;
        return match front
            .engine()
            .reply(&vdir.prefix, id, identity.as_ref())
            .await
        {
            Ok(Some(reply)) => {
                let rep = reply.representation().clone();
                match super::range::respond(Arc::new(reply), &rep, &req.headers, head).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::error!(error = %e, session = %id, "reply download failed");
                        plain(StatusCode::INTERNAL_SERVER_ERROR)
                    }
                }
            }
            Ok(None) => plain(StatusCode::NOT_FOUND),
            Err(e) => {
                tracing::error!(error = %e, session = %id, "reply lookup failed");
                plain(StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
    }
    if !vdir.download_enabled {
        return plain(StatusCode::NOT_FOUND);
    }
    let Ok(root) = config.storage_root(
        target.vdir,
        identity.as_ref().map(crate::principal::Principal::name),
    ) else {
        return plain(StatusCode::FORBIDDEN);
    };
    let dest = Destination {
        root: root.to_string_lossy().into_owned(),
        path: target.rel_path.clone(),
    };
    // The store decides what is published (never its own temporary or session names) and
    // hands back that one version: every range of this answer is read from it. A root not
    // made yet (per-user roots are made on first upload) holds nothing: 404.
    let file = match front.engine().data().open_published(&dest).await {
        Ok(Some(file)) => file,
        Ok(None) => return plain(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::error!(error = %e, path = %target.rel_path, "download open failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let head = req.method == Method::HEAD;
    let rep = file.representation().clone();
    match super::range::respond(Arc::from(file), &rep, &req.headers, head).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, path = %target.rel_path, "download failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
