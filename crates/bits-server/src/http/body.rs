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

/// A chunked body as a stream that fails unless it ends after exactly `len` bytes (hyper holds
/// a `Content-Length` body to its length itself): a shorter body fails at its end, a longer one
/// as soon as the excess arrives — and the chunk that completes `len` is held back until the
/// end is seen, so a consumer that stops reading at `len` never takes an overlong body for a
/// good one.
pub fn exact_length<S>(body: S, len: u64) -> impl Stream<Item = Result<Bytes, io::Error>> + Send
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send,
{
    /// After a failure the stream keeps failing, so a drain after the engine sees the body as
    /// broken and the connection is closed rather than reused mid-body.
    enum State<B> {
        Reading(B, u64),
        Failed(io::ErrorKind, &'static str),
    }
    let step = move |state: State<std::pin::Pin<Box<S>>>| async move {
        let (mut inner, seen) = match state {
            State::Reading(inner, seen) => (inner, seen),
            State::Failed(kind, what) => {
                let error = if kind == io::ErrorKind::InvalidData {
                    io::Error::new(kind, crate::store::BodyFraming(what))
                } else {
                    io::Error::new(kind, what)
                };
                return Some((Err(error), State::Failed(kind, what)));
            }
        };
        let fail = |kind: io::ErrorKind, what: &'static str| {
            let error = if kind == io::ErrorKind::InvalidData {
                io::Error::new(kind, crate::store::BodyFraming(what))
            } else {
                io::Error::new(kind, what)
            };
            Some((Err(error), State::Failed(kind, what)))
        };
        const SHORT: &str = "body shorter than its Content-Range";
        const LONG: &str = "body longer than its Content-Range";
        match inner.next().await {
            None if seen == len => None,
            None => fail(io::ErrorKind::InvalidData, SHORT),
            Some(Err(e)) => fail(e.kind(), "request body failed"),
            Some(Ok(chunk)) => {
                let seen = seen + chunk.len() as u64;
                if seen > len {
                    return fail(io::ErrorKind::InvalidData, LONG);
                }
                if seen < len {
                    return Some((Ok(chunk), State::Reading(inner, seen)));
                }
                // The last byte of the range: the body must end here.
                loop {
                    match inner.next().await {
                        None => return Some((Ok(chunk), State::Reading(inner, seen))),
                        Some(Ok(empty)) if empty.is_empty() => continue,
                        Some(Ok(_)) => return fail(io::ErrorKind::InvalidData, LONG),
                        Some(Err(e)) => return fail(e.kind(), "request body failed"),
                    }
                }
            }
        }
    };
    futures_util::stream::unfold(State::Reading(Box::pin(body), 0u64), step).fuse()
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
