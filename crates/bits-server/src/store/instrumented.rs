//! A decorator that times every storage call into `bitsd_storage_operation_seconds{op}` and
//! otherwise delegates untouched, so backends stay free of metrics code.
//!
//! Calls returning a stream (`read_upload`, `read_reply`, `open_published`) are timed until the stream is open,
//! not until it is read. `write` is timed over the whole fragment body, which includes waiting
//! for the client's bytes.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bits_proto::SessionId;

use super::{
    BodyStream, ByteStream, DataStore, Destination, DestinationState, Held, PublishedFile,
    Representation, SessionRecord, SessionStore, StorageInfo, StoreError, WriteOutcome,
};
use crate::metrics::Metrics;

/// Wraps a session store and a data store (often the same backend object).
pub struct Instrumented {
    sessions: Arc<dyn SessionStore>,
    data: Arc<dyn DataStore>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn new(
        sessions: Arc<dyn SessionStore>,
        data: Arc<dyn DataStore>,
        metrics: Arc<Metrics>,
    ) -> Instrumented {
        Instrumented {
            sessions,
            data,
            metrics,
        }
    }

    async fn timed<T>(&self, op: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        self.metrics.storage(op, started.elapsed());
        out
    }
}

#[async_trait]
impl SessionStore for Instrumented {
    fn shared(&self) -> bool {
        self.sessions.shared()
    }

    async fn create(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        self.timed("create", self.sessions.create(rec)).await
    }

    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.timed("load", self.sessions.load(id)).await
    }

    async fn save(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        self.timed("save", self.sessions.save(rec)).await
    }

    async fn save_ended(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        self.timed("save_ended", self.sessions.save_ended(rec))
            .await
    }

    async fn remove(&self, id: SessionId) -> Result<(), StoreError> {
        self.timed("remove", self.sessions.remove(id)).await
    }

    async fn forget_ended(&self, id: SessionId) -> Result<(), StoreError> {
        self.timed("forget_ended", self.sessions.forget_ended(id))
            .await
    }

    async fn list(&self) -> Result<Vec<SessionId>, StoreError> {
        self.timed("list", self.sessions.list()).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.timed("probe", self.sessions.probe()).await
    }

    async fn attention(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.timed("attention", self.sessions.attention()).await
    }

    async fn idle_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.timed("idle_before", self.sessions.idle_before(before_ms))
            .await
    }

    async fn ended_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.timed("ended_before", self.sessions.ended_before(before_ms))
            .await
    }

    async fn page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Option<Vec<SessionRecord>>, StoreError> {
        self.timed("page", self.sessions.page(after, limit)).await
    }
}

#[async_trait]
impl DataStore for Instrumented {
    fn info(&self) -> StorageInfo {
        self.data.info()
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.timed("probe", self.data.probe()).await
    }

    async fn inspect(&self, dest: &Destination) -> Result<DestinationState, StoreError> {
        self.timed("inspect", self.data.inspect(dest)).await
    }

    async fn allocate(&self, id: SessionId) -> Result<(), StoreError> {
        self.timed("allocate", self.data.allocate(id)).await
    }

    async fn prepare_root(&self, root: &str) -> Result<(), StoreError> {
        self.timed("prepare_root", self.data.prepare_root(root))
            .await
    }

    async fn write(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        body: BodyStream<'_>,
    ) -> WriteOutcome {
        self.timed("write", self.data.write(id, offset, len, body))
            .await
    }

    fn writes_toward_destination(&self) -> bool {
        self.data.writes_toward_destination()
    }

    async fn write_for_destination(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        body: BodyStream<'_>,
        dest: &Destination,
    ) -> WriteOutcome {
        self.timed(
            "write",
            self.data.write_for_destination(id, offset, len, body, dest),
        )
        .await
    }

    async fn held(&self, id: SessionId) -> Result<u64, StoreError> {
        self.timed("held", self.data.held(id)).await
    }

    async fn commit(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        self.timed("commit", self.data.commit(id, total, dest, overwrite))
            .await
    }

    async fn release_upload(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        self.timed("release_upload", self.data.release_upload(id, dest))
            .await
    }

    async fn unpublish(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        self.timed("unpublish", self.data.unpublish(id, dest)).await
    }

    async fn discard(&self, id: SessionId, held: Held) -> Result<(), StoreError> {
        self.timed("discard", self.data.discard(id, held)).await
    }

    async fn keep(&self, id: SessionId) -> Result<(), StoreError> {
        self.timed("keep", self.data.keep(id)).await
    }

    async fn stored_ids(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.timed("stored_ids", self.data.stored_ids()).await
    }

    async fn read_upload(&self, id: SessionId) -> Result<(u64, ByteStream), StoreError> {
        self.timed("read_upload", self.data.read_upload(id)).await
    }

    async fn store_reply(&self, id: SessionId, body: BodyStream<'_>) -> Result<u64, StoreError> {
        self.timed("store_reply", self.data.store_reply(id, body))
            .await
    }

    async fn remove_reply(&self, id: SessionId) -> Result<(), StoreError> {
        self.timed("remove_reply", self.data.remove_reply(id)).await
    }

    async fn seal_reply(&self, id: SessionId) -> Result<(), StoreError> {
        self.timed("seal_reply", self.data.seal_reply(id)).await
    }

    async fn reply_representation(
        &self,
        id: SessionId,
    ) -> Result<Option<Representation>, StoreError> {
        self.timed("reply_representation", self.data.reply_representation(id))
            .await
    }

    async fn read_reply(
        &self,
        id: SessionId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        self.timed("read_reply", self.data.read_reply(id, range))
            .await
    }

    fn local_files(&self, id: SessionId) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        self.data.local_files(id)
    }

    fn check_name(&self, dest: &Destination) -> Result<(), &'static str> {
        self.data.check_name(dest)
    }

    async fn open_published(
        &self,
        dest: &Destination,
    ) -> Result<Option<Box<dyn PublishedFile>>, StoreError> {
        self.timed("open_published", self.data.open_published(dest))
            .await
    }
}
