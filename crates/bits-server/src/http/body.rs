//! Request bodies as byte streams with an idle timeout, and draining of unread bodies.

use std::io;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// The body as a stream that fails when no bytes arrive for `idle` (slow or vanished clients
/// must not hold a session's lock forever).
pub fn idle_limited(
    body: Body,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
    futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut inner = state?;
        match tokio::time::timeout(idle, inner.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(inner))),
            Ok(Some(Err(e))) => Some((Err(io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(io::ErrorKind::TimedOut, "request body idle")),
                None,
            )),
        }
    })
    // Fused: the engine and then the drain may both read to the end.
    .fuse()
}

/// Reads and drops what is left of a body, up to `limit` bytes. Returns whether the body ended
/// cleanly; if not, the connection must be closed after the response.
pub async fn drain<S: Stream<Item = Result<Bytes, io::Error>> + ?Sized>(
    body: &mut std::pin::Pin<&mut S>,
    limit: u64,
) -> bool {
    let mut seen = 0u64;
    loop {
        match body.next().await {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(b)) => {
                seen += b.len() as u64;
                if seen > limit {
                    return false;
                }
            }
        }
    }
}
