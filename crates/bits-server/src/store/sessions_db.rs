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
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::{SessionRecord, SessionState, SessionStore, StoreError};

/// Per record: its index keys (what to take out of the indexes when it changes: 8 bytes
/// `open_by_activity` key or `NONE`, 8 bytes `ended_by_time` key or `NONE`, 1 byte attention)
/// followed by the record as JSON. One table written per change, not two.
const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
const KEYS_LEN: usize = 17;
/// Open sessions are indexed by the minute of their last activity, not the millisecond: a
/// session receiving fragments moves in the index at most once a minute. The sweep asks for
/// candidates and checks each record, so a coarser key only adds candidates from the last
/// minute.
const ACTIVITY_BUCKET_MS: u64 = 60_000;
const OPEN_BY_ACTIVITY: TableDefinition<(u64, u128), ()> = TableDefinition::new("open_by_activity");
const ENDED_BY_TIME: TableDefinition<(u64, u128), ()> = TableDefinition::new("ended_by_time");
const ATTENTION: TableDefinition<u128, ()> = TableDefinition::new("attention");

const NONE: u64 = u64::MAX;

/// The database's page cache.
const CACHE_BYTES: usize = 4 << 20;

/// Mutations taken into one transaction at most (the rest wait for the next).
const BATCH_MAX: usize = 4096;

fn key(id: SessionId) -> u128 {
    id.as_uuid().as_u128()
}

fn id_of(key: u128) -> SessionId {
    SessionId::from_uuid(uuid::Uuid::from_u128(key))
}

/// A database error as a store error: a full disk found anywhere in its causes is the disk-full
/// error clients are told about (as for data), anything else an I/O error.
fn db_err(e: impl std::fmt::Display + std::fmt::Debug) -> StoreError {
    // redb's errors keep the `io::Error` of a failed write in their Debug form (`Io(Os { code:
    // 28, .. })`); the codes of a full disk or quota are looked for there.
    let debug = format!("{e:?}");
    let full = [libc::ENOSPC, libc::EDQUOT]
        .iter()
        .any(|code| debug.contains(&format!("code: {code},")));
    if full {
        return StoreError::DiskFull;
    }
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
            activity: if open {
                rec.last_activity - rec.last_activity % ACTIVITY_BUCKET_MS
            } else {
                NONE
            },
            ended: if open {
                NONE
            } else {
                rec.ended_at.unwrap_or(0)
            },
            attention: needs_attention(rec),
        }
    }

    fn encode(self, json: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEYS_LEN + json.len());
        out.extend_from_slice(&self.activity.to_le_bytes());
        out.extend_from_slice(&self.ended.to_le_bytes());
        out.push(u8::from(self.attention));
        out.extend_from_slice(json);
        out
    }

    /// The keys of a stored value, and its JSON.
    fn decode(value: &[u8]) -> Option<(IndexKeys, &[u8])> {
        let (keys, json) = value.split_at_checked(KEYS_LEN)?;
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&keys[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Some((
            IndexKeys {
                activity: word(0),
                ended: word(8),
                attention: keys[16] != 0,
            },
            json,
        ))
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
    db: Arc<Handle>,
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

/// The open database, replaceable: redb refuses every operation after a failed write (a full
/// disk) until the database is opened again, which the committer then does.
struct Handle {
    path: std::path::PathBuf,
    fsync: bool,
    db: std::sync::RwLock<Option<Arc<Database>>>,
}

impl Handle {
    fn open_db(path: &Path, fsync: bool) -> Result<Database, StoreError> {
        let mut builder = Database::builder();
        // Requests read single records; the registry build reads each page once. redb's
        // default cache (1 GiB) would keep every page read at start-up resident.
        builder.set_cache_size(CACHE_BYTES);
        let db = if fsync {
            builder.create(path).map_err(db_err)?
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            builder
                .create_with_backend(Unsynced(FileBackend::new(file)))
                .map_err(db_err)?
        };
        // Every table exists from the start, so readers never find one missing.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(RECORDS).map_err(db_err)?;
            txn.open_table(OPEN_BY_ACTIVITY).map_err(db_err)?;
            txn.open_table(ENDED_BY_TIME).map_err(db_err)?;
            txn.open_table(ATTENTION).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(db)
    }

    fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| db_err("the session database is being reopened"))
    }

    /// Closes and opens the database again after a failed commit. Readers holding the old one
    /// finish first (each holds it for one read).
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(mut old) = slot.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        *slot = Some(still);
                        return Err(db_err("readers did not let go of the database"));
                    }
                }
            }
        }
        *slot = Some(Arc::new(Self::open_db(&self.path, self.fsync)?));
        tracing::info!("session database reopened after a failed commit");
        Ok(())
    }
}

impl SessionsDb {
    /// Opens (creating if needed) `path`. `fsync = false` is the unsafe fast mode: commits are
    /// written, never flushed.
    pub fn open(path: &Path, fsync: bool) -> Result<SessionsDb, StoreError> {
        let db = Handle::open_db(path, fsync)?;
        let handle = Arc::new(Handle {
            path: path.to_path_buf(),
            fsync,
            db: std::sync::RwLock::new(Some(Arc::new(db))),
        });
        let (jobs, rx) = mpsc::channel();
        let committer = handle.clone();
        let committer = std::thread::Builder::new()
            .name("bitsd-commit".into())
            .spawn(move || commit_loop(&committer, &rx))
            .map_err(StoreError::Io)?;
        Ok(SessionsDb {
            db: handle,
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
        self.db.get()?.begin_read().map_err(db_err)
    }

    fn encode(rec: &SessionRecord) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(rec.id.to_string(), e.to_string()))
    }

    fn decode(id: u128, value: &[u8]) -> Result<SessionRecord, StoreError> {
        let corrupt = |e: String| StoreError::Corrupt(id_of(id).to_string(), e);
        let (_, json) = IndexKeys::decode(value).ok_or_else(|| corrupt("short value".into()))?;
        serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
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
        let txn = self.db.get()?.begin_write().map_err(db_err)?;
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

/// While commits overlap with new arrivals (several requests in flight), how long the committer
/// waits for more before committing: a little latency for a shared flush. A lone client never
/// waits (nothing arrives while its own commit runs).
const GATHER: Duration = Duration::from_micros(300);

/// The committer: one write transaction, one flush, per batch of waiting mutations.
fn commit_loop(handle: &Handle, jobs: &mpsc::Receiver<Job>) {
    // Whether mutations arrived while the last commit ran: requests are concurrent, and a
    // short wait gathers more of them into the next flush.
    let mut concurrent = false;
    // A mutation that arrived during the last commit: the first of the next batch.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let gather_until = concurrent.then(|| Instant::now() + GATHER);
        while batch.len() < BATCH_MAX {
            let left = gather_until.map_or(Duration::ZERO, |u| {
                u.saturating_duration_since(Instant::now())
            });
            let next = if left.is_zero() {
                jobs.try_recv().ok()
            } else {
                jobs.recv_timeout(left).ok()
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        let result = handle.get().and_then(|db| commit(&db, &batch));
        if result.is_err() {
            // redb refuses everything after a failed write until it is opened again.
            if let Err(e) = handle.reopen() {
                tracing::error!(error = %e, "could not reopen the session database");
            }
        }
        carried = jobs.try_recv().ok();
        concurrent = carried.is_some();
        match result {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, mutations = batch.len(), "session database commit failed");
                for job in batch {
                    let each = match &e {
                        StoreError::DiskFull => StoreError::DiskFull,
                        other => db_err(other),
                    };
                    let _ = job.done.send(Err(each));
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
    let id = match change {
        Change::Create(id, ..) | Change::Put(id, ..) | Change::Remove(id) => *id,
    };
    let old = records
        .get(id)
        .map_err(db_err)?
        .map(|v| IndexKeys::decode(v.value()).map(|(k, _)| k));
    let old = match (change, old) {
        (Change::Create(..), Some(_)) => {
            return Ok(Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("session {} exists", id_of(id)),
            ))))
        }
        (_, old) => old.flatten(),
    };
    let new = match change {
        Change::Create(_, _, k) | Change::Put(_, _, k) => Some(*k),
        Change::Remove(_) => None,
    };
    match change {
        Change::Create(_, bytes, k) | Change::Put(_, bytes, k) => {
            records
                .insert(id, k.encode(bytes).as_slice())
                .map_err(db_err)?;
        }
        Change::Remove(_) => {
            records.remove(id).map_err(db_err)?;
        }
    }
    drop(records);
    // Each index is written only where the record's place in it changed.
    let unchanged = |f: fn(&IndexKeys) -> u64| old.map(|k| f(&k)) == new.map(|k| f(&k));
    if !unchanged(|k| k.activity) {
        let mut t = txn.open_table(OPEN_BY_ACTIVITY).map_err(db_err)?;
        if let Some(k) = old.filter(|k| k.activity != NONE) {
            t.remove((k.activity, id)).map_err(db_err)?;
        }
        if let Some(k) = new.filter(|k| k.activity != NONE) {
            t.insert((k.activity, id), ()).map_err(db_err)?;
        }
    }
    if !unchanged(|k| k.ended) {
        let mut t = txn.open_table(ENDED_BY_TIME).map_err(db_err)?;
        if let Some(k) = old.filter(|k| k.ended != NONE) {
            t.remove((k.ended, id)).map_err(db_err)?;
        }
        if let Some(k) = new.filter(|k| k.ended != NONE) {
            t.insert((k.ended, id), ()).map_err(db_err)?;
        }
    }
    if !unchanged(|k| u64::from(k.attention)) {
        let mut t = txn.open_table(ATTENTION).map_err(db_err)?;
        if old.is_some_and(|k| k.attention) {
            t.remove(id).map_err(db_err)?;
        }
        if new.is_some_and(|k| k.attention) {
            t.insert(id, ()).map_err(db_err)?;
        }
    }
    Ok(Ok(()))
}

#[async_trait]
impl SessionStore for SessionsDb {
    /// One node's own database: no other process writes it.
    fn shared(&self) -> bool {
        false
    }

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
        const M: u64 = ACTIVITY_BUCKET_MS;
        let mut a = rec(M);
        let b = rec(2 * M);
        db.create(&a).await.unwrap();
        db.create(&b).await.unwrap();
        assert!(db.create(&a).await.is_err(), "created twice");
        assert_eq!(db.idle_before(M + M / 2).await.unwrap().unwrap(), [a.id]);
        assert!(db.attention().await.unwrap().unwrap().is_empty());
        // All bytes held, not yet published: start-up must look at it.
        a.total = Some(10);
        a.received = 10;
        a.last_activity = 3 * M;
        db.save(&a).await.unwrap();
        assert_eq!(db.attention().await.unwrap().unwrap(), [a.id]);
        assert_eq!(db.idle_before(2 * M + 1).await.unwrap().unwrap(), [b.id]);
        a.state = SessionState::Closed;
        a.ended_at = Some(400);
        db.save_ended(&a).await.unwrap();
        assert!(db.attention().await.unwrap().unwrap().is_empty());
        assert_eq!(db.idle_before(10 * M).await.unwrap().unwrap(), [b.id]);
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
