//! The object-storage backend, shared by S3 (`backend = "s3"`, checked against SeaweedFS) and
//! Azure Blob Storage (`backend = "azure"`, checked against Azurite): records and upload data
//! are objects below a key prefix; an upload is published by completing a multipart upload at
//! the destination key (on Azure: committing the destination blob's blocks). Everything here
//! goes through object_store's `ObjectStore` and works the same on both; what differs (the
//! multipart upload, streamed parts, the conditional completion, the smallest part: 5 MiB on
//! S3, 1 byte on Azure) is behind the `Flavor` trait (`flavor.rs`), in `s3.rs` and `azure.rs`. "Multipart
//! upload" and "part" below mean blocks on Azure.
//!
//! ```text
//! <prefix>/sessions/<uuid>/meta.json        the SessionRecord (create-only put, then If-Match updates)
//! <prefix>/sessions/<uuid>/parts/<o>-<l>-<r> one object per fragment write: bytes [o, o+l), both
//!                                            20-digit decimal, r random hex; only complete bodies
//! <prefix>/sessions/<uuid>/mp/upload        {key, upload_id} of the session's multipart upload
//!                                            (create-only: one per session, whichever node wins)
//! <prefix>/sessions/<uuid>/mp/c<n>          claim of multipart part n: "<offset>-<len>" (create-only)
//! <prefix>/sessions/<uuid>/mp/p<n>-<o>-<l>-<e> part n holds bytes [o, o+l) and has ETag hex(e):
//!                                            written once the part is stored
//! <prefix>/sessions/<uuid>/commit.tmp       left by older versions (composed copy); removed on discard
//! <prefix>/sessions/<uuid>/reply            the server application's reply
//! <dest.root>/<dest.path>                   the published upload (dest.root is a key prefix here)
//! ```
//!
//! Objects cannot be appended to, so every fragment write is its own object (a standalone part),
//! or, for a fragment of at least the smallest part that starts exactly where the multipart parts end (on a
//! vdir without notification: the engine calls [`DataStore::write_for_destination`]), one or more parts of the session's
//! multipart upload, which is created at the destination key. `held` reconstructs the
//! contiguous coverage from the marker and part names. BITS data for a range never changes, so
//! overlapping or duplicate parts are harmless; a multipart part number is claimed for one byte
//! range before it is uploaded, so two nodes can only ever upload the same bytes to one number.
//! At completion the standalone bytes after the multipart parts (bounded when fragments are
//! large and aligned) are read back into further parts, and the upload is completed at the
//! destination (`If-None-Match: *` unless overwrites are allowed): no copy, no work
//! proportional to the file.
//!
//! Keys are object_store paths: the prefix and the destination root are split into whole
//! `/`-separated segments (empty segments dropped), because object_store lists by segment.
//! A published key is the decoded name as the client sent it (`~`, `{}`, `%`, spaces and
//! non-ASCII stay as they are): it is built with `Path::parse`, which keeps the string, never
//! with `Path::from`, which percent-encodes characters AWS recommends avoiding.
//!
//! Concurrency: `save` is a compare-and-swap on the ETag this store last saw for the record
//! (a lost race gives [`StoreError::Conflict`]). The engine serialises requests per session on
//! one node only; across nodes the loser of a race answers 503 and the client's retry reads the
//! winner's record (docs/farm.md, "Why no acknowledged byte is lost").
//!
//! Abandoned multipart uploads (a crash in the middle of a write) are not cleaned up here:
//! configure a bucket lifecycle rule that aborts incomplete multipart uploads.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bits_proto::SessionId;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};

pub mod azure;
mod data;
mod flavor;
mod index;
mod multipart;
mod parts;
mod read;
mod records;
mod s3;
mod streamed;

pub use crate::config::azure::AzureConfig;
pub use crate::config::s3::S3Config;
use flavor::Flavor;
use multipart::{pieces, Cached, Stop};
use parts::{cover, cover_from, parse_part_name, Part, Segment};

use super::budget::{BodyBudget, Reservation};
use super::DEFAULT_BODY_BUDGET;
use super::{
    BodyStream, ByteStream, DataStore, Destination, DestinationState, PublishedFile,
    Representation, SessionRecord, SessionStore, StorageInfo, StoreError, WriteOutcome,
};

/// The largest buffer one body fills before storing it: the S3 minimum size of a multipart
/// part (every part but the last). A fragment body is stored as one object per such piece.
const CHUNK: usize = 5 << 20;
/// The smallest piece a fragment body is cut into when the body budget is short, and what a
/// write may take beyond the budget once it has waited for it as long as a body may idle.
const MIN_PIECE: u64 = 256 << 10;
/// Multipart parts uploaded concurrently per composed object (commit, reply).
const IN_FLIGHT: usize = 2;
/// Default of how long a write waits for body budget before going on with [`MIN_PIECE`]:
/// the default `body_idle_timeout`.
const DEFAULT_BUDGET_PATIENCE: Duration = Duration::from_secs(120);
/// User metadata (`x-amz-meta-bits-session`) on a published object: which session published
/// it, so that a commit repeated after a crash recognises its own earlier publication.
const SESSION_TAG: &str = "bits-session";
/// The longest key S3 accepts, in UTF-8 bytes.
const MAX_KEY_BYTES: usize = 1024;
/// The smallest multipart part S3 accepts, but for the last.
const MIN_PART: u64 = 5 << 20;
/// Multipart parts per upload at most (S3's limit).
const MAX_PARTS: usize = 10_000;
/// Standalone bytes read back into one multipart part at completion; a remainder up to twice
/// this is one last part.
const PACK_PART: u64 = 8 << 20;
/// Records whose ETag is remembered at most. Past it an arbitrary entry is forgotten: that
/// session's next save is a plain overwrite, as after a restart.
const MAX_ETAGS: usize = 65_536;

pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    /// What S3 and Azure do differently: multipart uploads (blocks on Azure), streamed parts,
    /// the conditional completion.
    flavor: Arc<dyn Flavor>,
    /// `s3://bucket` or `azure://account/container`, for logs.
    location: String,
    /// The key prefix, as a path.
    root: Path,
    /// The ETag of each open session's record as this store last wrote or read it, for
    /// conditional saves.
    etags: Mutex<Etags>,
    /// Bounds the body bytes all writes buffer before storing them (`max_buffered_body_bytes`).
    budget: Arc<BodyBudget>,
    /// How long a write waits for budget before going on beyond it (`body_idle_timeout`).
    budget_patience: Duration,
    /// The multipart upload of sessions this node wrote to lately, and where its chain of
    /// parts ended then: saves listing `mp/` and reading `mp/upload` on every fragment.
    uploads: Mutex<HashMap<SessionId, Cached>>,
    /// Where each session's time-index markers are, as far as this node knows (`index.rs`).
    known: Mutex<index::Known>,
}

/// ETags of open sessions' records: an ended session's entry is dropped when its record is
/// saved or read as ended, or removed, and there are at most [`MAX_ETAGS`] entries.
#[derive(Default)]
struct Etags(HashMap<SessionId, String>);

impl Etags {
    fn get(&self, id: &SessionId) -> Option<&String> {
        self.0.get(id)
    }

    /// Remembers the ETag of `id`'s record, or forgets it (`None`, or the session has ended:
    /// a tombstone is not saved conditionally again, and there may be many).
    fn note(&mut self, id: SessionId, etag: Option<String>, open: bool) {
        match etag.filter(|_| open) {
            Some(e) => {
                if self.0.len() >= MAX_ETAGS && !self.0.contains_key(&id) {
                    let victim = self.0.keys().next().copied();
                    if let Some(victim) = victim {
                        self.0.remove(&victim);
                    }
                }
                self.0.insert(id, e);
            }
            None => {
                self.0.remove(&id);
            }
        }
    }

    fn forget(&mut self, id: &SessionId) {
        self.0.remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("location", &self.location)
            .field("prefix", &self.root.as_ref())
            .finish_non_exhaustive()
    }
}

fn os_err(e: object_store::Error) -> StoreError {
    if matches!(e, object_store::Error::Precondition { .. }) {
        return StoreError::Conflict(e.to_string());
    }
    StoreError::Io(io::Error::from(e))
}

fn early_end() -> StoreError {
    StoreError::Body(io::Error::new(ErrorKind::UnexpectedEof, "body ended early"))
}

/// How a read of a body piece ended before filling it.
enum End {
    /// The body ended.
    Eof,
    Failed(StoreError),
}

/// The next non-empty chunk of `body`, or how it ended.
async fn next_chunk(body: &mut BodyStream<'_>) -> Result<Bytes, End> {
    loop {
        match body.next().await {
            Some(Ok(chunk)) if chunk.is_empty() => continue,
            Some(Ok(chunk)) => return Ok(chunk),
            Some(Err(e)) => return Err(End::Failed(StoreError::Body(e))),
            None => return Err(End::Eof),
        }
    }
}

/// Up to `max` bytes of the body, copied into one buffer of their own (so no network buffer
/// they were cut from stays pinned while the piece is stored): at most `min` bytes are read
/// before budget for them is reserved, waiting for it if need be, and the piece is as large as
/// the reservation. A chunk reaching past the piece leaves its rest in `carry`. Returns the
/// bytes with their reservation (none if the body had ended) and what stopped the read early.
async fn read_piece(
    body: &mut BodyStream<'_>,
    carry: &mut Option<Bytes>,
    budget: &Arc<BodyBudget>,
    patience: Duration,
    min: u64,
    max: u64,
) -> (Option<(Bytes, Reservation)>, Option<End>) {
    // Budget is reserved once the body sends something: a client that stalls before its
    // first byte holds none.
    let first = match carry.take() {
        Some(c) => c,
        None => match next_chunk(body).await {
            Ok(c) => c,
            Err(end) => return (None, Some(end)),
        },
    };
    let grant = budget.reserve(min, max, patience).await;
    let room = grant.bytes() as usize;
    let mut buf = bytes::BytesMut::with_capacity(room);
    let mut next = Ok(first);
    let end = loop {
        match next {
            Ok(mut chunk) => {
                if chunk.len() > room - buf.len() {
                    *carry = Some(chunk.split_off(room - buf.len()));
                }
                buf.extend_from_slice(&chunk);
            }
            Err(end) => break Some(end),
        }
        if buf.len() >= room {
            break None;
        }
        next = next_chunk(body).await;
    };
    (Some((buf.freeze(), grant)), end)
}

/// Waits until at most `left` part uploads are still running; the first failure ends it.
async fn settle(
    parts: &mut tokio::task::JoinSet<Result<(), object_store::Error>>,
    left: usize,
) -> Result<(), StoreError> {
    while parts.len() > left {
        match parts.join_next().await {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => return Err(os_err(e)),
            Some(Err(e)) => return Err(StoreError::Io(io::Error::other(e))),
        }
    }
    Ok(())
}

/// Deletes every object below `prefix`.
async fn delete_below(store: &dyn ObjectStore, prefix: &Path) -> Result<(), StoreError> {
    let paths: Vec<Path> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(os_err)?;
    if paths.is_empty() {
        return Ok(());
    }
    let mut deleted = store.delete_stream(stream::iter(paths.into_iter().map(Ok)).boxed());
    while let Some(r) = deleted.next().await {
        match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(os_err(e)),
        }
    }
    Ok(())
}

/// Makes an object_store stream `Sync` (as [`ByteStream`] requires): the stream is only ever
/// polled through `&mut`, so the mutex is never locked.
struct SyncStream(Mutex<BoxStream<'static, io::Result<Bytes>>>);

impl Stream for SyncStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

impl ObjectBackend {
    /// The S3 backend; builds the client (no request is made).
    pub fn s3(cfg: S3Config) -> Result<ObjectBackend, StoreError> {
        let (store, flavor) = s3::S3Flavor::build(&cfg)?;
        Ok(Self::with_flavor(
            store,
            flavor,
            format!("s3://{}", cfg.bucket),
            &cfg.prefix,
        ))
    }

    /// The Azure Blob Storage backend; builds the client (no request is made).
    pub fn azure(cfg: AzureConfig) -> Result<ObjectBackend, StoreError> {
        let (store, flavor) = azure::AzureFlavor::build(&cfg)?;
        Ok(Self::with_flavor(
            store,
            flavor,
            format!("azure://{}/{}", cfg.account, cfg.container),
            &cfg.prefix,
        ))
    }

    fn with_flavor(
        store: Arc<dyn ObjectStore>,
        flavor: Arc<dyn Flavor>,
        location: String,
        prefix: &str,
    ) -> ObjectBackend {
        ObjectBackend {
            store,
            flavor,
            location,
            root: Path::from(prefix),
            etags: Mutex::new(Etags::default()),
            budget: BodyBudget::new(DEFAULT_BODY_BUDGET),
            budget_patience: DEFAULT_BUDGET_PATIENCE,
            uploads: Mutex::new(HashMap::new()),
            known: Mutex::default(),
        }
    }

    /// Bounds the body bytes all writes of this store buffer in memory together
    /// (`max_buffered_body_bytes`); a write waits up to `patience` (`body_idle_timeout`) for
    /// its share before going on with a minimal piece beyond the bound.
    pub fn with_body_budget(mut self, bytes: u64, patience: Duration) -> ObjectBackend {
        self.budget = BodyBudget::new(bytes);
        self.budget_patience = patience;
        self
    }

    fn below(base: &Path, rest: &str) -> Path {
        let mut p = base.clone();
        p.extend(rest.split('/'));
        p
    }

    fn sessions(&self) -> Path {
        Self::below(&self.root, "sessions")
    }

    fn dir(&self, id: SessionId) -> Path {
        Self::below(&self.sessions(), &id.as_uuid().hyphenated().to_string())
    }

    fn meta(&self, id: SessionId) -> Path {
        Self::below(&self.dir(id), "meta.json")
    }

    fn parts_dir(&self, id: SessionId) -> Path {
        Self::below(&self.dir(id), "parts")
    }

    fn reply(&self, id: SessionId) -> Path {
        Self::below(&self.dir(id), "reply")
    }

    fn commit_tmp(&self, id: SessionId) -> Path {
        Self::below(&self.dir(id), "commit.tmp")
    }

    fn mp_dir(&self, id: SessionId) -> Path {
        Self::below(&self.dir(id), "mp")
    }

    fn mp_upload(&self, id: SessionId) -> Path {
        Self::below(&self.mp_dir(id), "upload")
    }

    fn mp_claim(&self, id: SessionId, number: usize) -> Path {
        Self::below(&self.mp_dir(id), &format!("c{number:05}"))
    }

    /// The published key: the root's segments (empty and `.` ones dropped, as `check-config`
    /// compares roots), then the relative path, both raw.
    fn dest_key_text(dest: &Destination) -> String {
        let mut key = String::with_capacity(dest.root.len() + dest.path.len() + 1);
        for segment in dest.root.split('/').filter(|s| !s.is_empty() && *s != ".") {
            key.push_str(segment);
            key.push('/');
        }
        key.push_str(&dest.path);
        key
    }

    fn dest_key(dest: &Destination) -> Result<Path, StoreError> {
        Path::parse(Self::dest_key_text(dest))
            .map_err(|e| StoreError::Io(io::Error::new(ErrorKind::InvalidInput, e)))
    }

    fn etags(&self) -> MutexGuard<'_, Etags> {
        self.etags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self) -> MutexGuard<'_, index::Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the time-index markers of every record that has none yet (once per bucket, at
    /// a node's start; see `index.rs`).
    pub async fn prepare_index(&self) -> Result<(), StoreError> {
        self.ensure_index().await
    }

    fn record_json(rec: &SessionRecord) -> Result<PutPayload, StoreError> {
        serde_json::to_vec_pretty(rec)
            .map(PutPayload::from)
            .map_err(|e| StoreError::Corrupt(rec.id.to_string(), e.to_string()))
    }

    async fn delete_one(&self, path: &Path) -> Result<(), StoreError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }

    /// Deletes every object below `prefix`.
    async fn delete_below(&self, prefix: &Path) -> Result<(), StoreError> {
        delete_below(&self.store, prefix).await
    }

    /// The session's fragment objects, sorted by offset.
    async fn parts(&self, id: SessionId) -> Result<Vec<Part>, StoreError> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.parts_dir(id)))
            .try_collect()
            .await
            .map_err(os_err)?;
        let mut parts: Vec<Part> = objects
            .into_iter()
            .filter_map(|m| {
                let (offset, len) = parse_part_name(m.location.filename()?)?;
                // The object's real size wins should it ever disagree with its name.
                let len = len.min(m.size);
                Some(Part {
                    path: m.location,
                    offset,
                    len,
                })
            })
            .filter(|p| p.len > 0)
            .collect();
        parts.sort_by_key(|p| (p.offset, std::cmp::Reverse(p.len)));
        Ok(parts)
    }

    /// The bytes of `segments`, one ranged GET after another.
    fn read_segments(&self, segments: Vec<Segment>) -> BoxStream<'static, io::Result<Bytes>> {
        let store = self.store.clone();
        stream::iter(segments)
            .then(move |seg| {
                let store = store.clone();
                async move {
                    let opts = GetOptions {
                        range: Some(GetRange::Bounded(seg.skip..seg.skip + seg.take)),
                        ..GetOptions::default()
                    };
                    store
                        .get_opts(&seg.path, opts)
                        .await
                        .map(|r| r.into_stream())
                }
            })
            .try_flatten()
            .map_err(io::Error::from)
            .boxed()
    }

    /// Whether an object exists at `key`, and if so whether session `id` published it.
    async fn published(&self, key: &Path, id: SessionId) -> Result<Option<bool>, StoreError> {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(key, opts).await {
            Ok(r) => {
                let ours = r
                    .attributes
                    .get(&Attribute::Metadata(self.flavor.session_tag().into()))
                    .is_some_and(|v| v.as_ref() == id.as_uuid().hyphenated().to_string());
                Ok(Some(ours))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(e)),
        }
    }

    /// Streams `body` into one new object at `key`. With `limit`, exactly that many bytes must
    /// arrive (more are not read); otherwise the body is read to its end. Nothing is stored
    /// unless the whole body arrived. A body that fits in one chunk is a single PutObject,
    /// a larger one a multipart upload whose parts each hold their budget until stored.
    async fn upload(
        &self,
        key: &Path,
        mut body: BodyStream<'_>,
        limit: Option<u64>,
        attributes: Attributes,
    ) -> Result<u64, StoreError> {
        let want = limit.unwrap_or(u64::MAX);
        let mut carry = None;
        // Parts but the last must be whole chunks: each reserves all of one.
        let next = |got: u64| (want - got).min(CHUNK as u64);
        let (head, end) = read_piece(
            &mut body,
            &mut carry,
            &self.budget,
            self.budget_patience,
            next(0),
            next(0),
        )
        .await;
        let mut got = head.as_ref().map_or(0, |(b, _)| b.len() as u64);
        match end {
            Some(End::Failed(e)) => return Err(e),
            Some(End::Eof) if limit.is_some() => return Err(early_end()),
            _ => {}
        }
        if end.is_some() || got >= want {
            let opts = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            let (bytes, _grant) = head.map_or((Bytes::new(), None), |(b, g)| (b, Some(g)));
            self.store
                .put_opts(key, bytes.into(), opts)
                .await
                .map_err(os_err)?;
            return Ok(got);
        }
        let opts = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self
            .store
            .put_multipart_opts(key, opts)
            .await
            .map_err(os_err)?;
        // Parts are stored by tasks of their own, so they finish (and give their budget back)
        // while this body waits for more budget.
        let mut parts = tokio::task::JoinSet::new();
        let start = |upload: &mut Box<dyn MultipartUpload>,
                     parts: &mut tokio::task::JoinSet<_>,
                     piece: Option<(Bytes, Reservation)>| {
            if let Some((bytes, grant)) = piece {
                let part = upload.put_part(bytes.into());
                parts.spawn(async move {
                    let stored = part.await;
                    drop(grant);
                    stored
                });
            }
        };
        start(&mut upload, &mut parts, head);
        let failure = loop {
            if got >= want {
                break None;
            }
            if let Err(e) = settle(&mut parts, IN_FLIGHT - 1).await {
                break Some(e);
            }
            let (piece, end) = read_piece(
                &mut body,
                &mut carry,
                &self.budget,
                self.budget_patience,
                next(got),
                next(got),
            )
            .await;
            got += piece.as_ref().map_or(0, |(b, _)| b.len() as u64);
            start(&mut upload, &mut parts, piece);
            match end {
                None => {}
                Some(End::Eof) if limit.is_none() => break None,
                Some(End::Eof) => break Some(early_end()),
                Some(End::Failed(e)) => break Some(e),
            }
        };
        let failure = match failure {
            Some(e) => Some(e),
            None => settle(&mut parts, 0).await.err(),
        };
        if let Some(e) = failure {
            parts.abort_all();
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key = %key, error = %abort, "could not abort a multipart upload");
            }
            return Err(e);
        }
        upload.complete().await.map_err(os_err)?;
        Ok(got)
    }

    /// Stores bytes `[offset, offset + len)` of the upload as one part object, holding
    /// `grant` until it is stored.
    fn store_piece(
        &self,
        id: SessionId,
        offset: u64,
        bytes: Bytes,
        grant: Reservation,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let len = bytes.len() as u64;
        let name = format!("{offset:020}-{len:020}-{}", uuid::Uuid::new_v4().simple());
        let key = Self::below(&self.parts_dir(id), &name);
        let store = self.store.clone();
        async move {
            let stored = store.put(&key, bytes.into()).await;
            drop(grant);
            stored.map(|_| len).map_err(os_err)
        }
        .boxed()
    }

    /// Bytes `[from, from + len)` from the standalone parts, in memory (at most two
    /// [`PACK_PART`]s), with the body budget they hold until stored.
    async fn read_back(
        &self,
        parts: &[Part],
        from: u64,
        len: u64,
    ) -> Result<(PutPayload, Reservation), StoreError> {
        let (covered, segments) = cover_from(parts, from, from + len);
        if covered < from + len {
            return Err(StoreError::DataMissing);
        }
        let grant = self.budget.reserve(len, len, self.budget_patience).await;
        let chunks: Vec<Bytes> = self
            .read_segments(segments)
            .try_collect()
            .await
            .map_err(StoreError::Io)?;
        Ok((chunks.into_iter().collect(), grant))
    }

    /// The body is stored as one object per piece of at most [`CHUNK`] bytes, each piece as
    /// large as the body budget allows (at least [`MIN_PIECE`]); one piece is stored while
    /// the next is read. `durable` counts the whole pieces stored in order before the first
    /// failure: a body shorter than one piece is all or nothing, as a single object was. `carry`
    /// holds bytes already taken from the body.
    async fn write_standalone(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        mut body: BodyStream<'_>,
        mut carry: Option<Bytes>,
    ) -> WriteOutcome {
        let (mut read, mut durable) = (0u64, 0u64);
        let mut storing: Option<BoxFuture<'static, Result<u64, StoreError>>> = None;
        let mut error = None;
        while read < len {
            let want = (len - read).min(CHUNK as u64);
            let reading = read_piece(
                &mut body,
                &mut carry,
                &self.budget,
                self.budget_patience,
                MIN_PIECE,
                want,
            );
            let ((piece, end), stored) = match storing.take() {
                Some(s) => {
                    let (r, s) = futures_util::future::join(reading, s).await;
                    (r, Some(s))
                }
                None => (reading.await, None),
            };
            match stored {
                Some(Ok(n)) => durable += n,
                Some(Err(e)) => {
                    error = Some(e);
                    break;
                }
                None => {}
            }
            // A piece cut short by the body's end or failure is not stored: every object is a
            // whole piece, as the earlier pieces of this body are.
            if let (Some((bytes, grant)), None) = (piece, &end) {
                let n = bytes.len() as u64;
                storing = Some(self.store_piece(id, offset + read, bytes, grant));
                read += n;
            }
            match end {
                None => {}
                Some(End::Eof) => {
                    error = Some(early_end());
                    break;
                }
                Some(End::Failed(e)) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if let Some(s) = storing {
            match s.await {
                Ok(n) => durable += n,
                Err(e) => error = error.or(Some(e)),
            }
        }
        WriteOutcome { durable, error }
    }

    /// Publishes an empty upload (no parts exist for it).
    async fn commit_empty(
        &self,
        id: SessionId,
        dest: &Path,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        if self.published(dest, id).await? == Some(true) {
            return Ok(());
        }
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(self.flavor.session_tag().into()),
            id.as_uuid().hyphenated().to_string().into(),
        );
        let opts = PutOptions {
            mode: if overwrite {
                PutMode::Overwrite
            } else {
                PutMode::Create
            },
            attributes,
            ..PutOptions::default()
        };
        match self.store.put_opts(dest, PutPayload::new(), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::DestinationExists),
            Err(e) => Err(os_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::s3::{default_region, default_request_timeout, default_retry_timeout};

    #[test]
    fn published_keys_are_the_raw_names() {
        let dest = |root: &str, path: &str| Destination {
            root: root.into(),
            path: path.into(),
        };
        for (root, path, key) in [
            ("uploads", "~tilde", "uploads/~tilde"),
            ("/uploads//", "a{b}", "uploads/a{b}"),
            ("uploads/alice", "100% ready", "uploads/alice/100% ready"),
            ("uploads", "d/été 日本.bin", "uploads/d/été 日本.bin"),
        ] {
            let d = dest(root, path);
            assert_eq!(ObjectBackend::dest_key(&d).unwrap().as_ref(), key);
        }
        // Over S3's limit only with the root prefix counted.
        let name = "n".repeat(MAX_KEY_BYTES - "uploads/".len());
        let store = ObjectBackend::s3(S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            bucket: "b".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            allow_http: true,
            request_timeout: Duration::from_secs(1),
            retry_timeout: Duration::from_secs(1),
            max_retries: 0,
        })
        .unwrap();
        assert!(store.check_name(&dest("uploads", &name)).is_ok());
        assert!(store
            .check_name(&dest("uploads/", &format!("{name}x")))
            .is_err());
        // Multi-byte characters count as their UTF-8 length.
        let wide = "é".repeat(MAX_KEY_BYTES / 2);
        assert!(store.check_name(&dest("", &wide)).is_ok());
        assert!(store.check_name(&dest("u", &wide)).is_err());
    }

    #[test]
    fn etags_forget_ended_sessions_and_stay_capped() {
        let mut etags = Etags::default();
        let id = SessionId::random();
        etags.note(id, Some("\"1\"".into()), true);
        assert_eq!(etags.get(&id).map(String::as_str), Some("\"1\""));
        etags.note(id, Some("\"2\"".into()), false);
        assert_eq!(etags.len(), 0);
        for _ in 0..MAX_ETAGS + 10 {
            etags.note(SessionId::random(), Some("e".into()), true);
        }
        assert_eq!(etags.len(), MAX_ETAGS);
        // A known entry is updated in place, never evicting another.
        let known = SessionId::random();
        etags.note(known, Some("a".into()), true);
        etags.note(known, Some("b".into()), true);
        assert_eq!(etags.len(), MAX_ETAGS);
        assert_eq!(etags.get(&known).map(String::as_str), Some("b"));
    }

    #[test]
    fn downloads_never_reach_session_objects_or_temporary_names() {
        let store = ObjectBackend::s3(S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            bucket: "b".into(),
            prefix: "spool".into(),
            region: default_region(),
            access_key: "a".into(),
            secret_key: "s".into(),
            allow_http: true,
            request_timeout: default_request_timeout(),
            retry_timeout: default_retry_timeout(),
            max_retries: 0,
        })
        .unwrap();
        let key = |root: &str, path: &str| {
            store
                .published_key(&Destination {
                    root: root.into(),
                    path: path.into(),
                })
                .map(|k| k.to_string())
        };
        assert_eq!(
            key("uploads", "a/b.bin").as_deref(),
            Some("uploads/a/b.bin")
        );
        assert_eq!(key("spool/other", "x").as_deref(), Some("spool/other/x"));
        assert_eq!(key("", "spool/sessions/u/meta.json"), None);
        assert_eq!(key("spool", "sessions/u/parts/p"), None);
        assert_eq!(key("/spool//sessions", "u/reply"), None);
        assert_eq!(key("uploads", ".bits-partial-x"), None);
        assert_eq!(key("uploads", "d/.bits-partial-x/y"), None);
        assert_eq!(key("uploads", ""), None);
        assert_eq!(key("uploads", "//"), None);
    }
}
