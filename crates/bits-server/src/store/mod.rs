//! Storage behind two small traits: session metadata ([`SessionStore`]) and upload data
//! ([`DataStore`]). The engine sees nothing else, so an object-storage backend fits beside
//! the local file system one.

mod budget;
pub mod dirsync;
pub mod fs;
pub mod instrumented;
pub mod object;
pub mod sessions_db;
mod vectored;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bits_proto::SessionId;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

/// A request body as the engine sees it: a stream of byte chunks.
pub type BodyStream<'a> = Pin<&'a mut (dyn Stream<Item = Result<Bytes, io::Error>> + Send)>;

/// Where a completed upload is published: a storage root (a directory for the file system
/// backend) and a validated relative path below it. A stored record's copy is informational:
/// the engine derives the destination again from the current config before publishing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Destination {
    pub root: String,
    pub path: String,
}

/// Lifecycle of a session (spec §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// RECEIVE_FRAGMENTS: bytes still missing (or all held but not yet published).
    Receiving,
    /// WAIT_FOR_CLOSE: every byte held and published; retransmits are answered from the record.
    Committed,
    /// Tombstone after Close-Session (or expiry after commit): a repeated Close/Cancel gets 200.
    Closed,
    /// Tombstone after Cancel-Session.
    Cancelled,
    /// Tombstone after expiry of an incomplete session: everything answers SESSION_NOT_FOUND.
    Expired,
}

impl SessionState {
    pub const fn is_open(self) -> bool {
        matches!(self, SessionState::Receiving | SessionState::Committed)
    }
}

/// Everything the server persists about one session (spec §6.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(with = "session_id_text")]
    pub id: SessionId,
    /// Prefix of the vdir the session was created under.
    pub vdir: String,
    /// Request target of the Create-Session (path and query), as received.
    pub url: String,
    pub destination: Destination,
    /// Authenticated principal that created the session (`basic:alice`); `None` for anonymous.
    pub owner: Option<crate::principal::Principal>,
    /// Address of the client that created it (anonymous sessions are counted per address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<std::net::IpAddr>,
    /// Fixed by the first fragment.
    pub total: Option<u64>,
    /// Contiguous bytes held from offset 0, all of them durable.
    pub received: u64,
    pub state: SessionState,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds of the last successful session-bound request.
    pub last_activity: u64,
    /// Unix milliseconds when the session became a tombstone.
    pub ended_at: Option<u64>,
    /// The `BITS-Reply-URL` sent with the completing Ack, once the server application answered.
    #[serde(default)]
    pub reply_url: Option<String>,
    /// The application answered 403: never post this upload to it again.
    #[serde(default)]
    pub app_forbidden: bool,
    /// SHA-256 of bytes `0..received`, kept while it is wanted (a hook reports it at
    /// completion); `None` when not wanted or not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<crate::digest::Sha256State>,
    /// An `upload_completed` hook event not yet delivered (or given up on): recorded with the
    /// completion, so a crash before delivery is followed by a redelivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_hook: Option<crate::hooks::event::PendingEvent>,
}

mod session_id_text {
    use bits_proto::SessionId;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &SessionId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
        let s = String::deserialize(d)?;
        SessionId::parse(&s).map_err(D::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no space left on the storage device")]
    DiskFull,
    #[error("destination already exists")]
    DestinationExists,
    #[error("the request body failed: {0}")]
    Body(io::Error),
    #[error("session data is missing")]
    DataMissing,
    #[error("corrupt session record {0}: {1}")]
    Corrupt(String, String),
    #[error("this storage backend does not support {0}")]
    Unsupported(&'static str),
    #[error("storage I/O failed: {0}")]
    Io(io::Error),
    /// A conditional write lost a race: the stored object changed since this node last read
    /// or wrote it (another node of a farm sharing the store). Only the object-storage backend
    /// reports it. The request that lost answers 503 (`http/ack.rs`): the client retries and the
    /// retry reloads the winner's record.
    #[error("the session record was changed concurrently: {0}")]
    Conflict(String),
}

/// A request body that broke its own framing (a chunked Fragment shorter or longer than its
/// `Content-Range`): carried inside the `io::Error` the body stream yields, so that the engine
/// can tell it from a client that merely went away. A refused body claims nothing, whatever a
/// store wrote of it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyFraming(pub &'static str);

impl StoreError {
    /// Whether the write failed because the body broke its framing ([`BodyFraming`]).
    pub fn is_body_framing(&self) -> bool {
        matches!(self, StoreError::Body(e) if e.get_ref().is_some_and(|r| r.is::<BodyFraming>()))
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            StoreError::DiskFull
        } else {
            StoreError::Io(e)
        }
    }
}

/// What is at a destination before an upload starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationState {
    Absent,
    File,
    Directory,
    /// A parent directory does not exist (uploads never create directories).
    ParentMissing,
}

/// What a session may have in temporary storage, as far as the caller knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Upload bytes in the spool (not yet published, or never to be).
    pub data: bool,
    /// A stored reply of the server application.
    pub reply: bool,
}

impl Held {
    pub const ALL: Held = Held {
        data: true,
        reply: true,
    };
}

/// The result of streaming a fragment body into storage: how many bytes were made durable,
/// and the error that stopped the stream early, if any. Bytes counted in `durable` are kept
/// even when `error` is set.
#[derive(Debug)]
pub struct WriteOutcome {
    pub durable: u64,
    pub error: Option<StoreError>,
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Persists a new record; fails if the id exists.
    async fn create(&self, rec: &SessionRecord) -> Result<(), StoreError>;
    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Atomically replaces the record: a crash leaves either the old or the new one.
    async fn save(&self, rec: &SessionRecord) -> Result<(), StoreError>;
    /// Saves a record that has ended (Closed, Cancelled, Expired). It may skip making the write
    /// durable: losing a tombstone only revives a session that is answered the same way.
    async fn save_ended(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        self.save(rec).await
    }
    /// Whether other nodes may change these records behind this node's back (a farm on shared
    /// object storage). Then the engine treats its registry of open sessions as a cache: it
    /// reconciles it with the store (`registry_refresh_interval`), checks a refusal against the
    /// store before giving it, and rereads a record before a fragment is acknowledged.
    ///
    /// Required, with no default: a shared backend that took a default of `false` would
    /// compile and silently turn farm reconciliation off, and a default of `true` would make
    /// every single-node store pay for reads it never needs. Each backend answers it.
    fn shared(&self) -> bool;
    /// Forgets the record entirely.
    async fn remove(&self, id: SessionId) -> Result<(), StoreError>;
    /// Forgets an ended record (a tombstone). It may skip making the removal durable: a
    /// tombstone that comes back after a power loss is forgotten again at start-up.
    async fn forget_ended(&self, id: SessionId) -> Result<(), StoreError> {
        self.remove(id).await
    }
    async fn list(&self) -> Result<Vec<SessionId>, StoreError>;
    /// A cheap check that the store answers (for the admin listener's `/readyz`).
    async fn probe(&self) -> Result<(), StoreError> {
        self.list().await.map(|_| ())
    }
    /// The sessions start-up must look at: a completion that may be half done, an owed hook
    /// event. `None`: the store keeps no such index, and start-up looks at every record.
    async fn attention(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        Ok(None)
    }
    /// Open sessions whose last activity is before `before_ms` (the sweep's candidates).
    /// `None`: no index; the sweep reads every record.
    async fn idle_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        let _ = before_ms;
        Ok(None)
    }
    /// Ended sessions (tombstones) that ended before `before_ms`, oldest first. `None`: no
    /// index.
    async fn ended_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        let _ = before_ms;
        Ok(None)
    }
    /// Up to `limit` records in id order, after `after`: for reading all records in pages
    /// (the registry built in the background, listings). `None`: not supported; use
    /// `list` and `load`.
    async fn page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Option<Vec<SessionRecord>>, StoreError> {
        let _ = (after, limit);
        Ok(None)
    }
}

/// What operators are shown of a store (the console's storage panel, the spool metrics), so
/// that nothing above the store matches on the backend's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageInfo {
    /// The backend's name in the config (`fs`, `s3`).
    pub backend: &'static str,
    /// Where the data lives, for people (the spool directory, `s3://bucket/prefix`).
    pub location: String,
    /// The local directory whose file system's free space is shown and watched; `None` where
    /// the data is not on a local file system.
    pub local_dir: Option<std::path::PathBuf>,
}

#[async_trait]
pub trait DataStore: Send + Sync + 'static {
    /// What operators are shown of this store. Required: every backend can say what it is.
    fn info(&self) -> StorageInfo;
    /// A cheap check that the store answers (for the admin listener's `/readyz`), where the
    /// data lives apart from the records.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn inspect(&self, dest: &Destination) -> Result<DestinationState, StoreError>;
    /// Whether the store can hold a file at `dest` at all (a name it cannot represent, such as
    /// an object key over its length limit); `Err` says why, for the client's 400.
    fn check_name(&self, dest: &Destination) -> Result<(), &'static str> {
        let _ = dest;
        Ok(())
    }
    /// Prepares empty temporary storage for a session's upload.
    async fn allocate(&self, id: SessionId) -> Result<(), StoreError>;
    /// Makes a per-user destination root usable (a directory for the file system; nothing for
    /// object storage, which has no directories).
    async fn prepare_root(&self, root: &str) -> Result<(), StoreError> {
        let _ = root;
        Ok(())
    }
    /// Streams `body` into the session's data at `offset`, stopping after `len` bytes.
    async fn write(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        body: BodyStream<'_>,
    ) -> WriteOutcome;
    /// [`DataStore::write`] for an upload nothing reads back before it is published at `dest`
    /// (a vdir without notification). `dest` is the destination the engine derived from the
    /// configuration, never one read from a stored record: a backend may write the bytes
    /// straight toward it (object storage: parts of a multipart upload at the destination
    /// key, completed by `commit`), and `commit` must refuse to publish them anywhere else.
    async fn write_for_destination(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        body: BodyStream<'_>,
        dest: &Destination,
    ) -> WriteOutcome {
        let _ = dest;
        self.write(id, offset, len, body).await
    }
    /// Whether [`DataStore::write_for_destination`] uses its destination (so the engine
    /// derives one for every fragment only where it is used).
    fn writes_toward_destination(&self) -> bool {
        false
    }
    /// Makes the session's stored bytes reachable after a power loss, before a record claims
    /// them while they stay in the store (not published): for the file system, the data
    /// file's name (a grouped fsync of the data directory, once per session). Bytes written by
    /// [`DataStore::write`] are durable in themselves already.
    async fn keep(&self, id: SessionId) -> Result<(), StoreError> {
        let _ = id;
        Ok(())
    }
    /// Bytes physically present for the session (for crash recovery).
    async fn held(&self, id: SessionId) -> Result<u64, StoreError>;
    /// Publishes the first `total` bytes atomically at `dest`. Idempotent: calling it again after
    /// a crash between publishing and recording it succeeds without publishing twice.
    async fn commit(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError>;
    /// Drops the session's copy of an upload once its publication is recorded. A store may
    /// finish this after returning (S3 deletes the parts in the background, so the completing
    /// fragment's Ack does not wait for it): whatever is left, `discard` removes at Close,
    /// Cancel or expiry.
    async fn release_upload(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        let _ = (id, dest);
        Ok(())
    }
    /// Removes the session's own publication at `dest`, if an interrupted completion left one
    /// (published, but not recorded as published): called before a session that never
    /// completed is cancelled or expired, so that it ends unpublished. Anything at `dest`
    /// that is not the session's own upload stays.
    async fn unpublish(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        let _ = (id, dest);
        Ok(())
    }
    /// Deletes the session's temporary data and reply (never the published file). `held`
    /// says what the caller knows may be there ([`Held::ALL`] when it does not know), so that a
    /// store need not try to remove what is not there.
    async fn discard(&self, id: SessionId, held: Held) -> Result<(), StoreError>;
    /// The sessions that have temporary data stored, for removing what ended sessions left
    /// after a crash. `None`: the store cannot list them cheaply (its `discard` of a session
    /// removes everything anyway).
    async fn stored_ids(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        Ok(None)
    }
    /// The complete upload, for a by-value notification.
    async fn read_upload(&self, id: SessionId) -> Result<(u64, ByteStream), StoreError>;
    /// Stores the server application's reply (replacing any earlier one), durably.
    async fn store_reply(&self, id: SessionId, body: BodyStream<'_>) -> Result<u64, StoreError>;
    /// Deletes the stored reply, if any.
    async fn remove_reply(&self, id: SessionId) -> Result<(), StoreError>;
    /// Makes sure a reply exists (empty if the application wrote none) and is durable.
    async fn seal_reply(&self, id: SessionId) -> Result<(), StoreError>;
    /// Size and version of the stored reply, `None` if there is none.
    async fn reply_representation(
        &self,
        id: SessionId,
    ) -> Result<Option<Representation>, StoreError>;
    /// Bytes `range` of the stored reply.
    async fn read_reply(
        &self,
        id: SessionId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError>;
    /// Local paths of the upload and of the reply, for by-reference notification; `None` for
    /// backends without local files.
    fn local_files(&self, id: SessionId) -> Option<(std::path::PathBuf, std::path::PathBuf)>;
    /// The published file `dest.path` below the root `dest.root`, opened for serving; `None`
    /// when there is none (missing, not a regular file, reached only by leaving the root, or
    /// one of the server's own names: temporary copies, session objects). What the handle
    /// reads is the version it describes, whatever happens to the name meanwhile (or the read
    /// fails).
    async fn open_published(
        &self,
        dest: &Destination,
    ) -> Result<Option<Box<dyn PublishedFile>>, StoreError>;
}

/// Size and version identity of a stored file, as HTTP describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Representation {
    pub len: u64,
    /// Whole seconds: HTTP dates cannot carry more, and BITS compares them for equality.
    pub modified: std::time::SystemTime,
    /// A strong entity tag, quoted: the same tag means the same bytes.
    pub etag: String,
}

/// The last second an HTTP date can express (9999-12-31T23:59:59Z): a file stamped later must
/// not break serving it.
pub const LAST_HTTP_SECOND: u64 = 253_402_300_799;

impl Representation {
    /// `modified` from Unix seconds, clamped to what an HTTP date can carry.
    pub fn at_unix_seconds(len: u64, secs: i64, etag: String) -> Representation {
        let secs = (secs.max(0) as u64).min(LAST_HTTP_SECOND);
        Representation {
            len,
            modified: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            etag,
        }
    }
}

/// A published file opened by [`DataStore::open_published`].
#[async_trait]
pub trait PublishedFile: Send + Sync {
    fn representation(&self) -> &Representation;
    /// Bytes `range` (within `0..len`) of the version described by
    /// [`PublishedFile::representation`]; a stream that ends early or fails if that version
    /// is gone.
    async fn read(&self, range: std::ops::Range<u64>) -> Result<ByteStream, StoreError>;
}

/// Default of `max_buffered_body_bytes`, for a store built without the config (both backends
/// start from it).
pub const DEFAULT_BODY_BUDGET: u64 = 64 << 20;

/// Prefix of the temporary copy made next to a destination when the spool is on another
/// file system; such files are never served. Here rather than in `fs.rs`, which makes them,
/// because [`is_internal_name`] holds the rule for every backend.
pub(crate) const PARTIAL_PREFIX: &str = ".bits-partial-";

/// Whether `rel_path` names (or lies below) one of the server's temporary copies next to a
/// destination: these are never served, on any backend.
pub fn is_internal_name(rel_path: &str) -> bool {
    rel_path
        .split('/')
        .any(|seg| seg.starts_with(PARTIAL_PREFIX))
}

/// An owned byte stream read from storage.
pub type ByteStream = Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send + Sync + Unpin>;
