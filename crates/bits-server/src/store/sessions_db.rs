//! The file system backend's session records, tombstones and their indexes in one embedded
//! transactional store: `<spool>/sessions.redb` (redb: pure Rust, ACID, one file; see
//! docs/decisions.md, "Session state").
//!
//! **Group commit.** Every mutation goes to one committer thread, which takes all mutations
//! waiting at that moment into one write transaction and one flush, then answers each. A
//! request's Ack waits for the commit that holds its mutation, and no longer: a lone request
//! commits at once, concurrent ones share a flush. Every commit is durable (redb's non-durable
//! commits live only in the process's memory, so a process crash would lose them: a Cancel
//! answered 200 would come back as an open session). With `fsync = false` the file is written
//! but never flushed ([`Unsynced`]): a process crash loses nothing, a power loss may.
//!
//! **Indexes**, kept in the same transactions as the records, so they never disagree:
//! - `open_by_activity` (last activity, id): the sweep reads only sessions idle long enough;
//! - `ended_by_time` (end, id): tombstones, oldest first;
//! - `attention`: sessions start-up must look at (all bytes held but not recorded as published,
//!   an application's answer whose copy is pending, an owed hook event). Start-up reads these
//!   and nothing else.

use ::redb::backends::FileBackend;
use ::redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
    WriteTransaction,
};
use async_trait::async_trait;
use bits_proto::SessionId;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

use super::{SessionRecord, SessionState, SessionStore, StoreError};

const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
/// Per record: its `open_by_activity` key (or `NONE`), its `ended_by_time` key (or `NONE`), and
/// whether it is in `attention`: what to take out when the record changes.
const KEYS: TableDefinition<u128, (u64, u64, bool)> = TableDefinition::new("index_keys");
const OPEN_BY_ACTIVITY: TableDefinition<(u64, u128), ()> = TableDefinition::new("open_by_activity");
const ENDED_BY_TIME: TableDefinition<(u64, u128), ()> = TableDefinition::new("ended_by_time");
const ATTENTION: TableDefinition<u128, ()> = TableDefinition::new("attention");

const NONE: u64 = u64::MAX;

/// Mutations taken into one transaction at most (the rest wait for the next).
const BATCH_MAX: usize = 4096;

fn key(id: SessionId) -> u128 {
    id.as_uuid().as_u128()
}

fn id_of(key: u128) -> SessionId {
    SessionId::from_uuid(uuid::Uuid::from_u128(key))
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("session database: {e}")))
}

/// Where a record belongs in the indexes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IndexKeys {
    activity: u64,
    ended: u64,
    attention: bool,
}

impl IndexKeys {
    fn of(rec: &SessionRecord) -> IndexKeys {
        let open = rec.state.is_open();
        IndexKeys {
            activity: if open { rec.last_activity } else { NONE },
            ended: if open {
                NONE
            } else {
                rec.ended_at.unwrap_or(0)
            },
            attention: needs_attention(rec),
        }
    }
}

/// Whether start-up must look at this record: a completion may be half done, or an event is
/// owed. Everything else is current as stored.
pub(crate) fn needs_attention(rec: &SessionRecord) -> bool {
    let complete_unpublished = rec.state == SessionState::Receiving
        && (rec.total == Some(rec.received) || rec.reply_url.is_some());
    complete_unpublished || rec.pending_hook.is_some()
}

enum Change {
    /// A new record: refused if the id exists.
    Create(u128, Vec<u8>, IndexKeys),
    Put(u128, Vec<u8>, IndexKeys),
    Remove(u128),
}

struct Job {
    change: Change,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The database file with flushes turned into no-ops: `fsync = false`, the unsafe mode. Writes
/// still reach the file (and survive the process), as every other write of that mode does.
#[derive(Debug)]
struct Unsynced(FileBackend);

impl StorageBackend for Unsynced {
    fn len(&self) -> Result<u64, ::redb::BackendError> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), ::redb::BackendError> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), ::redb::BackendError> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), ::redb::BackendError> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), ::redb::BackendError> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), ::redb::BackendError> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, ::redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, ::redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), ::redb::BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), ::redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), ::redb::BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, ::redb::BackendError> {
        self.0.query_lock_range(start, end)
    }
}

pub struct SessionsDb {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SessionsDb {
    /// Waits for the committer to flush and let go of the file, so that the database can be
    /// opened again at once (by a restarted engine, or a test between two servers).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl SessionsDb {
    /// Opens (creating if needed) `path`. `fsync = false` is the unsafe fast mode: commits are
    /// written, never flushed.
    pub fn open(path: &Path, fsync: bool) -> Result<SessionsDb, StoreError> {
        let db = if fsync {
            Database::create(path).map_err(db_err)?
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            Database::builder()
                .create_with_backend(Unsynced(FileBackend::new(file)))
                .map_err(db_err)?
        };
        // Every table exists from the start, so readers never find one missing.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(RECORDS).map_err(db_err)?;
            txn.open_table(KEYS).map_err(db_err)?;
            txn.open_table(OPEN_BY_ACTIVITY).map_err(db_err)?;
            txn.open_table(ENDED_BY_TIME).map_err(db_err)?;
            txn.open_table(ATTENTION).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel();
        let committer = db.clone();
        let committer = std::thread::Builder::new()
            .name("bitsd-commit".into())
            .spawn(move || commit_loop(&committer, &rx))
            .map_err(StoreError::Io)?;
        Ok(SessionsDb {
            db,
            jobs: Some(jobs),
            committer: Some(committer),
        })
    }

    async fn submit(&self, change: Change) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| db_err("the committer has stopped"))?
            .send(Job { change, done })
            .map_err(|_| db_err("the committer has stopped"))?;
        answer
            .await
            .map_err(|_| db_err("the committer dropped a mutation"))?
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(db_err)
    }

    fn encode(rec: &SessionRecord) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(rec.id.to_string(), e.to_string()))
    }

    fn decode(id: u128, bytes: &[u8]) -> Result<SessionRecord, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Corrupt(id_of(id).to_string(), e.to_string()))
    }

    /// Ids of an index's keys below `before` (by their first element), in order.
    fn ids_below(
        &self,
        table: TableDefinition<(u64, u128), ()>,
        before: u64,
    ) -> Result<Vec<SessionId>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.range((0u64, 0u128)..(before, 0u128)).map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            out.push(id_of(k.value().1));
        }
        Ok(out)
    }

    /// Inserts records as they are, in one durable transaction, skipping ids already present
    /// (converting an old spool: a second pass after a crash changes nothing).
    pub fn import(&self, records: &[SessionRecord]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut added = 0;
        for rec in records {
            let bytes = Self::encode(rec)?;
            if apply(
                &txn,
                &Change::Create(key(rec.id), bytes, IndexKeys::of(rec)),
            )?
            .is_ok()
            {
                added += 1;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(added)
    }
}

/// The committer: one write transaction, one flush, per batch of waiting mutations.
fn commit_loop(db: &Database, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit(db, &batch) {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, mutations = batch.len(), "session database commit failed");
                for job in batch {
                    let _ = job.done.send(Err(db_err(&e)));
                }
            }
        }
    }
}

/// One transaction for `batch`; each mutation's own result (a Create of an existing id fails
/// alone), or an error for all when the transaction fails.
fn commit(db: &Database, batch: &[Job]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        results.push(apply(&txn, &job.change)?);
    }
    txn.commit().map_err(db_err)?;
    Ok(results)
}

/// Applies one mutation inside `txn`: the outer error fails the transaction, the inner one
/// only this mutation.
fn apply(txn: &WriteTransaction, change: &Change) -> Result<Result<(), StoreError>, StoreError> {
    let mut records = txn.open_table(RECORDS).map_err(db_err)?;
    let mut keys = txn.open_table(KEYS).map_err(db_err)?;
    let mut by_activity = txn.open_table(OPEN_BY_ACTIVITY).map_err(db_err)?;
    let mut by_end = txn.open_table(ENDED_BY_TIME).map_err(db_err)?;
    let mut attention = txn.open_table(ATTENTION).map_err(db_err)?;
    let id = match change {
        Change::Create(id, ..) | Change::Put(id, ..) | Change::Remove(id) => *id,
    };
    if let Change::Create(..) = change {
        if records.get(id).map_err(db_err)?.is_some() {
            return Ok(Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("session {} exists", id_of(id)),
            ))));
        }
    }
    // Out of the indexes as it was.
    let old = keys.remove(id).map_err(db_err)?.map(|g| g.value());
    if let Some((activity, ended, flagged)) = old {
        if activity != NONE {
            by_activity.remove((activity, id)).map_err(db_err)?;
        }
        if ended != NONE {
            by_end.remove((ended, id)).map_err(db_err)?;
        }
        if flagged {
            attention.remove(id).map_err(db_err)?;
        }
    }
    match change {
        Change::Create(_, bytes, k) | Change::Put(_, bytes, k) => {
            records.insert(id, bytes.as_slice()).map_err(db_err)?;
            keys.insert(id, (k.activity, k.ended, k.attention))
                .map_err(db_err)?;
            if k.activity != NONE {
                by_activity.insert((k.activity, id), ()).map_err(db_err)?;
            }
            if k.ended != NONE {
                by_end.insert((k.ended, id), ()).map_err(db_err)?;
            }
            if k.attention {
                attention.insert(id, ()).map_err(db_err)?;
            }
        }
        Change::Remove(_) => {
            records.remove(id).map_err(db_err)?;
        }
    }
    Ok(Ok(()))
}

#[async_trait]
impl SessionStore for SessionsDb {
    async fn create(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let bytes = Self::encode(rec)?;
        self.submit(Change::Create(key(rec.id), bytes, IndexKeys::of(rec)))
            .await
    }

    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        // A point read: fast enough to stay on the async thread (redb keeps hot pages cached).
        let txn = self.read()?;
        let t = txn.open_table(RECORDS).map_err(db_err)?;
        let bytes = t.get(key(id)).map_err(db_err)?;
        bytes.map(|b| Self::decode(key(id), b.value())).transpose()
    }

    async fn save(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let bytes = Self::encode(rec)?;
        self.submit(Change::Put(key(rec.id), bytes, IndexKeys::of(rec)))
            .await
    }

    async fn save_ended(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let bytes = Self::encode(rec)?;
        self.submit(Change::Put(key(rec.id), bytes, IndexKeys::of(rec)))
            .await
    }

    async fn remove(&self, id: SessionId) -> Result<(), StoreError> {
        self.submit(Change::Remove(key(id))).await
    }

    async fn forget_ended(&self, id: SessionId) -> Result<(), StoreError> {
        self.submit(Change::Remove(key(id))).await
    }

    async fn list(&self) -> Result<Vec<SessionId>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(RECORDS).map_err(db_err)?;
        let mut ids = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            ids.push(id_of(entry.map_err(db_err)?.0.value()));
        }
        Ok(ids)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.read().map(|_| ())
    }

    async fn attention(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(ATTENTION).map_err(db_err)?;
        let mut ids = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            ids.push(id_of(entry.map_err(db_err)?.0.value()));
        }
        Ok(Some(ids))
    }

    async fn idle_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.ids_below(OPEN_BY_ACTIVITY, before_ms).map(Some)
    }

    async fn ended_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.ids_below(ENDED_BY_TIME, before_ms).map(Some)
    }

    async fn page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Option<Vec<SessionRecord>>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(RECORDS).map_err(db_err)?;
        let range = match after {
            Some(id) => t.range((key(id) + 1)..).map_err(db_err)?,
            None => t.range(0u128..).map_err(db_err)?,
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(db_err)?;
            match Self::decode(k.value(), v.value()) {
                Ok(rec) => out.push(rec),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable session record"),
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Destination;

    fn rec(last_activity: u64) -> SessionRecord {
        SessionRecord {
            id: SessionId::random(),
            vdir: "/upload/".into(),
            url: "/upload/x".into(),
            destination: Destination {
                root: "/srv".into(),
                path: "x".into(),
            },
            owner: None,
            client: None,
            total: None,
            received: 0,
            state: SessionState::Receiving,
            created_at: last_activity,
            last_activity,
            ended_at: None,
            reply_url: None,
            app_forbidden: false,
            sha256: None,
            pending_hook: None,
        }
    }

    #[tokio::test]
    async fn records_and_indexes_move_together() {
        let dir = tempfile::tempdir().unwrap();
        let db = SessionsDb::open(&dir.path().join("s.redb"), true).unwrap();
        let mut a = rec(100);
        let b = rec(200);
        db.create(&a).await.unwrap();
        db.create(&b).await.unwrap();
        assert!(db.create(&a).await.is_err(), "created twice");
        assert_eq!(db.idle_before(150).await.unwrap().unwrap(), [a.id]);
        assert!(db.attention().await.unwrap().unwrap().is_empty());
        // All bytes held, not yet published: start-up must look at it.
        a.total = Some(10);
        a.received = 10;
        a.last_activity = 300;
        db.save(&a).await.unwrap();
        assert_eq!(db.attention().await.unwrap().unwrap(), [a.id]);
        assert_eq!(db.idle_before(250).await.unwrap().unwrap(), [b.id]);
        a.state = SessionState::Closed;
        a.ended_at = Some(400);
        db.save_ended(&a).await.unwrap();
        assert!(db.attention().await.unwrap().unwrap().is_empty());
        assert_eq!(db.idle_before(1000).await.unwrap().unwrap(), [b.id]);
        assert_eq!(db.ended_before(401).await.unwrap().unwrap(), [a.id]);
        assert_eq!(db.load(a.id).await.unwrap().unwrap(), a);
        db.forget_ended(a.id).await.unwrap();
        assert!(db.load(a.id).await.unwrap().is_none());
        assert!(db
            .ended_before(u64::MAX - 1)
            .await
            .unwrap()
            .unwrap()
            .is_empty());
        let page = db.page(None, 10).await.unwrap().unwrap();
        assert_eq!(page, std::slice::from_ref(&b));
        assert!(db.page(Some(b.id), 10).await.unwrap().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_saves_share_commits_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let recs: Vec<SessionRecord> = (0..200).map(rec).collect();
        {
            let db = Arc::new(SessionsDb::open(&path, true).unwrap());
            let tasks: Vec<_> = recs
                .iter()
                .cloned()
                .map(|r| {
                    let db = db.clone();
                    tokio::spawn(async move { db.create(&r).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
        // Dropped: the committer has flushed and let go of the file.
        let db = SessionsDb::open(&path, true).unwrap();
        let mut ids = db.list().await.unwrap();
        ids.sort();
        let mut want: Vec<SessionId> = recs.iter().map(|r| r.id).collect();
        want.sort();
        assert_eq!(ids, want);
    }
}
