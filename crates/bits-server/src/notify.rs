//! Upload-reply: telling the server application about a completed upload (spec §9) and
//! taking its answer.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bits_proto::headers;
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

type NotifyBody = BoxBody<Bytes, io::Error>;

/// What the application is sent.
pub enum Payload {
    /// Paths of the complete upload and of the file the application writes its reply to.
    ByReference {
        request_file: PathBuf,
        response_file: PathBuf,
    },
    /// The upload itself as the request body.
    ByValue {
        len: u64,
        body: Box<dyn Stream<Item = io::Result<Bytes>> + Send + Sync + Unpin>,
    },
}

/// A successful (200) answer of the application.
pub struct AppAnswer {
    pub static_url: Option<String>,
    pub copy_to_destination: bool,
    /// The response body: the reply, in by-value mode without a static URL.
    pub body: Incoming,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the server application answered {0}")]
    Status(u16),
    #[error("the server application did not answer in time")]
    Timeout,
    #[error("the server application could not be reached: {0}")]
    Unreachable(String),
    #[error("the notification URL is invalid: {0}")]
    BadUrl(String),
}

/// Sends notifications; one connection pool for the whole server.
#[derive(Clone)]
pub struct Notifier {
    client: Client<HttpConnector, NotifyBody>,
}

impl Default for Notifier {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Notifier {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Notifier {
    /// POSTs the notification and waits up to `timeout` for the status and headers.
    pub async fn send(
        &self,
        url: &str,
        original_url: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<AppAnswer, NotifyError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| NotifyError::BadUrl(format!("{url}: {e}")))?;
        let mut req = hyper::Request::post(uri)
            .header(
                hyper::header::USER_AGENT,
                concat!("bitsd/", env!("CARGO_PKG_VERSION")),
            )
            .header(headers::ORIGINAL_REQUEST_URL, original_url);
        let body: NotifyBody = match payload {
            Payload::ByReference {
                request_file,
                response_file,
            } => {
                req = req
                    .header(
                        headers::REQUEST_DATAFILE_NAME,
                        request_file.to_string_lossy().as_ref(),
                    )
                    .header(
                        headers::RESPONSE_DATAFILE_NAME,
                        response_file.to_string_lossy().as_ref(),
                    )
                    .header(hyper::header::CONTENT_LENGTH, "0");
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed()
            }
            Payload::ByValue { len, body } => {
                req = req.header(hyper::header::CONTENT_LENGTH, len.to_string());
                BodyExt::boxed(StreamBody::new(body.map_ok(Frame::data)))
            }
        };
        let req = req
            .body(body)
            .map_err(|e| NotifyError::BadUrl(e.to_string()))?;
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| NotifyError::Timeout)?
            .map_err(|e| NotifyError::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(NotifyError::Status(status));
        }
        let static_url = resp
            .headers()
            .get(headers::STATIC_RESPONSE_URL)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string());
        let copy_to_destination = resp
            .headers()
            .contains_key(headers::COPY_FILE_TO_DESTINATION);
        Ok(AppAnswer {
            static_url,
            copy_to_destination,
            body: resp.into_body(),
        })
    }
}

/// The URL to notify: `configured` if absolute, else resolved against the directory of the
/// upload path on `local_base` (this server); the upload URL's query string is carried over.
pub fn notification_url(configured: &str, upload_url: &str, local_base: &str) -> String {
    let (upload_path, query) = match upload_url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (upload_url, None),
    };
    let mut url = if configured.to_ascii_lowercase().starts_with("http://") {
        configured.to_string()
    } else if configured.starts_with('/') {
        format!("{local_base}{configured}")
    } else {
        let dir = &upload_path[..upload_path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        format!("{local_base}{dir}{configured}")
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_iis() {
        let local = "http://127.0.0.1:8080";
        assert_eq!(
            notification_url(
                "http://127.0.0.1:9/handle",
                "/upload/a.bin?ACCOUNT=5",
                local
            ),
            "http://127.0.0.1:9/handle?ACCOUNT=5"
        );
        assert_eq!(
            notification_url("handler.asp", "/upload/sub/a.bin", local),
            "http://127.0.0.1:8080/upload/sub/handler.asp"
        );
        assert_eq!(
            notification_url("/app/h", "/upload/a.bin?x=1", local),
            "http://127.0.0.1:8080/app/h?x=1"
        );
        assert_eq!(
            notification_url("http://h/p?a=1", "/upload/a.bin?b=2", local),
            "http://h/p?a=1&b=2"
        );
        assert_eq!(
            notification_url("http://h/p", "/upload/a.bin?", local),
            "http://h/p"
        );
    }
}
