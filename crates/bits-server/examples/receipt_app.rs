//! An example BITS server application for upload-reply jobs: answers every notification with a
//! JSON receipt holding the upload's size and SHA-256, and asks bitsd to keep the file.
//!
//! ```sh
//! cargo run -p bits-server --example receipt_app -- 127.0.0.1:9000
//! ```
//! and in bitsd's config:
//! ```toml
//! [[vdir]]
//! prefix = "/upload/"
//! root = "bits-data/uploads"
//! notification_type = "by_value"          # or "by_reference"
//! notification_url = "http://127.0.0.1:9000/receipt"
//! ```

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

fn receipt(size: u64, digest: Sha256, headers: &HeaderMap) -> String {
    let url = headers
        .get("bits-original-request-url")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    serde_json::json!({ "url": url, "size": size, "sha256": hex::encode(digest.finalize()) })
        .to_string()
}

async fn handle(req: Request) -> Response {
    let headers = req.headers().clone();
    let mut digest = Sha256::new();
    let mut size = 0u64;
    let by_reference = headers
        .get("bits-request-datafile-name")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if let Some(request_file) = by_reference {
        // By reference: read the upload from the path bitsd gave, write the reply beside it.
        let Ok(data) = tokio::fs::read(&request_file).await else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        digest.update(&data);
        size = data.len() as u64;
        let Some(response_file) = headers
            .get("bits-response-datafile-name")
            .and_then(|v| v.to_str().ok())
        else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if tokio::fs::write(response_file, receipt(size, digest, &headers))
            .await
            .is_err()
        {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        return (StatusCode::OK, [("bits-copy-file-to-destination", "1")]).into_response();
    }
    // By value: the upload is the request body; the reply is ours.
    let mut body = req.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        digest.update(&chunk);
        size += chunk.len() as u64;
    }
    let json = receipt(size, digest, &headers);
    (
        StatusCode::OK,
        [
            ("bits-copy-file-to-destination", "1"),
            ("content-type", "application/json"),
        ],
        Body::from(json),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9000")
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("receipt app listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        Router::new()
            .route("/{*path}", post(handle))
            .fallback(post(handle)),
    )
    .await
}
