//! Parts sent while their bytes arrive: a presigned UploadPart (S3) or Put Block (Azure) whose
//! request body is fed from the fragment body through a small bounded channel. A part is stored while it is
//! received rather than after, so ingest runs at the slower of the client and the bucket
//! instead of their sum, and a fragment holds a window of memory, not a whole part.
//!
//! The request carries the part's exact `Content-Length`: a body that ends early or fails
//! makes the request end short (or fail), and neither S3 nor Azure stores a part (block) for an
//! incomplete request.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use tokio_util::task::AbortOnDropHandle;

use super::{next_chunk, End};
use crate::store::budget::{BodyBudget, Reservation};
use crate::store::{BodyStream, StoreError};

/// The largest slice of the body handed to the request at a time.
const SLICE: usize = 256 << 10;
/// Slices queued between the body and the request at most.
const QUEUED: usize = 4;
/// The memory one streamed part reserves from the body budget: its queue.
pub(super) const WINDOW: u64 = (SLICE * QUEUED) as u64;

/// A part whose bytes are all sent; its answer (the part's ETag) is still to come.
pub(super) struct SentPart {
    answer: AbortOnDropHandle<Result<String, StoreError>>,
    /// Given back once the answer is in: until then the request may still hold bytes.
    _grant: Reservation,
    timeout: Duration,
}

impl SentPart {
    /// The part's ETag, once S3 has stored it.
    pub(super) async fn etag(self) -> Result<String, StoreError> {
        match tokio::time::timeout(self.timeout, self.answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Err(StoreError::Io(io::Error::other(e))),
            Err(_) => Err(StoreError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer to UploadPart",
            ))),
        }
    }
}

/// Sends the next `len` bytes of `body` (after `carry`) as part `number` of the upload, the
/// bytes going out as they arrive; a chunk reaching past the part leaves its rest in `carry`.
/// Budget for the queue is reserved once the body sends something, so a client stalled before
/// its first byte holds none. On a body failure or early end nothing is stored.
pub(super) async fn send_part(
    target: super::flavor::PartRequest,
    answer_timeout: Duration,
    len: u64,
    body: &mut BodyStream<'_>,
    carry: &mut Option<Bytes>,
    budget: &std::sync::Arc<BodyBudget>,
    patience: Duration,
) -> Result<SentPart, StoreError> {
    let mut pending = match carry.take() {
        Some(c) => c,
        None => next_chunk(body).await.map_err(ended)?,
    };
    let grant = budget.reserve(WINDOW, WINDOW, patience).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(QUEUED);
    let known_id = target.content_id;
    let request = target
        .request
        .header(reqwest_s3::header::CONTENT_LENGTH, len)
        .body(reqwest_s3::Body::wrap_stream(stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )));
    let answer = AbortOnDropHandle::new(tokio::spawn(async move {
        let response = request
            .send()
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest_s3::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let snippet: String = text.chars().take(300).collect();
            return Err(StoreError::Io(io::Error::other(format!(
                "the part request (UploadPart, Put Block) answered {status}: {snippet}"
            ))));
        }
        known_id
            .or(etag)
            .ok_or_else(|| StoreError::Io(io::Error::other("UploadPart answered without an ETag")))
    }));
    let mut left = len;
    loop {
        if pending.len() as u64 > left {
            *carry = Some(pending.split_off(left as usize));
        }
        left -= pending.len() as u64;
        while !pending.is_empty() {
            let slice = pending.split_to(pending.len().min(SLICE));
            if tx.send(Ok(slice)).await.is_err() {
                // The request ended before its body: its answer says why.
                drop(tx);
                return Err(early_answer(answer).await);
            }
        }
        if left == 0 {
            break;
        }
        pending = match next_chunk(body).await {
            Ok(c) => c,
            Err(end) => {
                let e = ended(end);
                // The request fails with the body: S3 keeps nothing of it.
                let _ = tx
                    .send(Err(io::Error::other("the fragment body ended early")))
                    .await;
                drop(tx);
                drop(answer);
                return Err(e);
            }
        };
    }
    drop(tx);
    Ok(SentPart {
        answer,
        _grant: grant,
        timeout: answer_timeout,
    })
}

/// Why a request answered (or failed) before all its body was sent.
async fn early_answer(answer: AbortOnDropHandle<Result<String, StoreError>>) -> StoreError {
    match answer.await {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => StoreError::Io(io::Error::other(
            "the part request answered before its body",
        )),
        Err(e) => StoreError::Io(io::Error::other(e)),
    }
}

fn ended(end: End) -> StoreError {
    match end {
        End::Eof => super::early_end(),
        End::Failed(e) => e,
    }
}
