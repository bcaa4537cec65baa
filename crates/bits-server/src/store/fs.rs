//! Local file system backend: one directory per session under the spool, published by an
//! atomic rename (or a no-replace hard link) into the vdir root.
//!
//! ```text
//! <spool>/sessions/<uuid>/meta.json   the SessionRecord, replaced by write-temp + fsync + rename
//! <spool>/sessions/<uuid>/data        the partial upload, written in place at the received offset
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bits_proto::SessionId;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::{spawn_blocking, JoinHandle};

use super::vectored;
use super::{
    BodyStream, DataStore, Destination, DestinationState, SessionRecord, SessionStore, StoreError,
    WriteOutcome,
};

/// Bytes gathered from the network before one positioned write; two such batches are in flight
/// at most (one being filled, one being written), which bounds memory per request.
const WRITE_CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct FsStore {
    sessions: PathBuf,
    fsync: bool,
}

impl FsStore {
    /// Opens (creating if needed) the spool directory. `fsync = false` is the unsafe fast mode.
    pub fn open(spool: &Path, fsync: bool) -> io::Result<FsStore> {
        let sessions = spool.join("sessions");
        fs::create_dir_all(&sessions)?;
        Ok(FsStore { sessions, fsync })
    }

    fn dir(&self, id: SessionId) -> PathBuf {
        self.sessions.join(id.as_uuid().hyphenated().to_string())
    }

    fn meta(&self, id: SessionId) -> PathBuf {
        self.dir(id).join("meta.json")
    }

    fn data(&self, id: SessionId) -> PathBuf {
        self.dir(id).join("data")
    }

    fn reply(&self, id: SessionId) -> PathBuf {
        self.dir(id).join("reply")
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn write_meta(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let how = if self.fsync {
            MetaWrite::Durable
        } else {
            MetaWrite::Replace
        };
        self.write_meta_with(rec, how)
    }

    fn write_meta_with(&self, rec: &SessionRecord, how: MetaWrite) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(rec)
            .map_err(|e| StoreError::Corrupt(rec.id.to_string(), e.to_string()))?;
        let dir = self.dir(rec.id);
        if how == MetaWrite::InPlace {
            File::create(dir.join("meta.json"))?.write_all(&json)?;
            return Ok(());
        }
        let tmp = dir.join("meta.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        if how == MetaWrite::Durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, dir.join("meta.json"))?;
        if how == MetaWrite::Durable {
            self.sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// How a session record is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MetaWrite {
    /// Temporary file, fsync, rename, directory fsync: survives power loss.
    Durable,
    /// Temporary file and rename: survives a crash of the process, not a power loss.
    Replace,
    /// Written in place: a new session's first record (synced by `create` before the Ack), and
    /// tombstones (not synced: a power loss may tear one, and recovery then removes it — the
    /// session's data is gone already). A temporary file per write would cost an inode
    /// allocation, which dominates small uploads on ext4.
    InPlace,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))?
}

#[async_trait]
impl SessionStore for FsStore {
    async fn create(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        // A new session must survive a power loss once acknowledged: the client may publish
        // through it with its very first fragment, and a session lost after that would make the
        // client start over against a destination that now exists. The first record is written
        // in place (no temporary file: there is no older version to keep), with the empty data
        // file (see `allocate`) in the same trip to the blocking pool.
        let (me, rec) = (self.clone(), rec.clone());
        let id = rec.id;
        blocking(move || {
            fs::create_dir(me.dir(rec.id))?;
            me.write_meta_with(&rec, MetaWrite::InPlace)?;
            File::create(me.data(rec.id))?;
            Ok(())
        })
        .await?;
        if self.fsync {
            // The record, its directory and the session's entry in `sessions/`: independent,
            // all needed before the Ack, so synced side by side (one journal commit's wait, not
            // three in a row).
            let (meta, dir, sessions) = (self.meta(id), self.dir(id), self.sessions.clone());
            let (a, b, c) = tokio::join!(
                blocking(move || Ok(File::open(meta)?.sync_data()?)),
                blocking(move || Ok(File::open(dir)?.sync_all()?)),
                blocking(move || Ok(File::open(sessions)?.sync_all()?)),
            );
            a?;
            b?;
            c?;
        }
        Ok(())
    }

    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let path = self.meta(id);
        blocking(move || match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn save(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let (me, rec) = (self.clone(), rec.clone());
        blocking(move || me.write_meta(&rec)).await
    }

    async fn save_ended(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let (me, rec) = (self.clone(), rec.clone());
        blocking(move || me.write_meta_with(&rec, MetaWrite::InPlace)).await
    }

    async fn remove(&self, id: SessionId) -> Result<(), StoreError> {
        let me = self.clone();
        blocking(move || match fs::remove_dir_all(me.dir(id)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
            _ => Ok(me.sync_dir(&me.sessions)?),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SessionId>, StoreError> {
        let dir = self.sessions.clone();
        blocking(move || {
            let mut ids = Vec::new();
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name();
                if let Some(id) = name.to_str().and_then(|n| SessionId::parse(n).ok()) {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        // Opening the directory is enough: a removed or unreachable spool fails here.
        let dir = self.sessions.clone();
        blocking(move || Ok(fs::read_dir(dir).map(|_| ())?)).await
    }
}

/// Prefix of the temporary copy made next to a destination when the spool is on another
/// file system; such files are never served.
const PARTIAL_PREFIX: &str = ".bits-partial-";

/// Whether a relative path names one of the server's own temporary files.
pub fn is_internal_name(rel_path: &str) -> bool {
    rel_path
        .split('/')
        .any(|seg| seg.starts_with(PARTIAL_PREFIX))
}

/// `root/rel_path` if, with every symbolic link resolved, it still lies inside `root`;
/// `None` if it does not exist or escapes.
pub async fn contained(root: &Path, rel_path: &str) -> io::Result<Option<PathBuf>> {
    let (root, path) = (root.to_path_buf(), root.join(rel_path));
    spawn_blocking(move || {
        let canonical_root = fs::canonicalize(&root)?;
        match fs::canonicalize(&path) {
            Ok(p) if p.starts_with(&canonical_root) => Ok(Some(p)),
            Ok(_) => Ok(None),
            Err(e)
                if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(io::Error::other)?
}

fn dest_path(dest: &Destination) -> PathBuf {
    Path::new(&dest.root).join(&dest.path)
}

fn inspect_blocking(dest: &Destination) -> Result<DestinationState, StoreError> {
    let path = dest_path(dest);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => return Ok(DestinationState::Directory),
        Ok(_) => return Ok(DestinationState::File),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Ok(DestinationState::ParentMissing)
        }
        Err(e) => return Err(e.into()),
    }
    let Some(parent) = path.parent() else {
        return Ok(DestinationState::ParentMissing);
    };
    match fs::metadata(parent) {
        Ok(m) if m.is_dir() => Ok(DestinationState::Absent),
        Ok(_) => Ok(DestinationState::ParentMissing),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            Ok(DestinationState::ParentMissing)
        }
        Err(e) => Err(e.into()),
    }
}

/// Body chunks waiting for one gather write.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: u64,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len() as u64;
            self.chunks.push(chunk);
        }
    }

    fn is_full(&self) -> bool {
        self.len >= WRITE_CHUNK as u64 || self.chunks.len() >= vectored::MAX_SLICES
    }
}

/// A session's data file, opened on first use by whichever write job comes first.
struct DataFile {
    path: PathBuf,
    file: std::sync::OnceLock<File>,
}

impl DataFile {
    fn new(path: PathBuf) -> DataFile {
        DataFile {
            path,
            file: std::sync::OnceLock::new(),
        }
    }

    fn get(&self) -> io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        Ok(self.file.get_or_init(|| f))
    }
}

/// Writes `chunks` at `pos` on the blocking pool, then (with `sync`) makes the file durable.
fn spawn_write(
    file: Arc<DataFile>,
    pos: u64,
    chunks: Vec<Bytes>,
    sync: bool,
) -> JoinHandle<io::Result<u64>> {
    spawn_blocking(move || {
        let f = file.get()?;
        let n = vectored::write_all_at(f, pos, &chunks)?;
        if sync {
            f.sync_data()?;
        }
        Ok(n)
    })
}

async fn finish(pending: Option<JoinHandle<io::Result<u64>>>) -> io::Result<u64> {
    match pending {
        None => Ok(0),
        Some(h) => h.await.map_err(io::Error::other)?,
    }
}

#[async_trait]
impl DataStore for FsStore {
    async fn inspect(&self, dest: &Destination) -> Result<DestinationState, StoreError> {
        let dest = dest.clone();
        blocking(move || inspect_blocking(&dest)).await
    }

    async fn prepare_root(&self, root: &str) -> Result<(), StoreError> {
        let root = PathBuf::from(root);
        blocking(move || Ok(fs::create_dir_all(root)?)).await
    }

    async fn allocate(&self, id: SessionId) -> Result<(), StoreError> {
        // `SessionStore::create` of this same store made the empty data file already.
        let _ = id;
        Ok(())
    }

    async fn write(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        mut body: BodyStream<'_>,
    ) -> WriteOutcome {
        // Opened by the first write job, and the last job syncs: a small fragment costs one
        // trip to the blocking pool, not three.
        let file = Arc::new(DataFile::new(self.data(id)));
        // Chunks are kept as they arrived and written with one gather write per batch.
        let mut batch = Batch::default();
        let mut pending: Option<JoinHandle<io::Result<u64>>> = None;
        let mut queued = 0u64; // bytes handed to writes so far
        let mut written = 0u64; // bytes whose writes completed
        let mut synced = false;
        let mut error: Option<StoreError> = None;
        while queued + batch.len < len {
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    chunk.truncate((len - queued - batch.len) as usize);
                    batch.push(chunk);
                }
                Some(Err(e)) => {
                    error = Some(StoreError::Body(e));
                    break;
                }
                None => {
                    error = Some(StoreError::Body(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "body ended early",
                    )));
                    break;
                }
            }
            if batch.is_full() && queued + batch.len < len {
                match finish(pending.take()).await {
                    Ok(n) => written += n,
                    Err(e) => {
                        error = Some(e.into());
                        break;
                    }
                }
                let full = std::mem::take(&mut batch);
                let n = full.len;
                pending = Some(spawn_write(
                    file.clone(),
                    offset + queued,
                    full.chunks,
                    false,
                ));
                queued += n;
            }
        }
        match finish(pending.take()).await {
            Ok(n) => written += n,
            Err(e) => error = error.or(Some(e.into())),
        }
        // The last batch, or whatever arrived before a body error (still good data: keep it).
        if written == queued
            && batch.len > 0
            && !matches!(error, Some(StoreError::DiskFull | StoreError::Io(_)))
        {
            let rest = std::mem::take(&mut batch);
            let sync = self.fsync;
            match finish(Some(spawn_write(
                file.clone(),
                offset + queued,
                rest.chunks,
                sync,
            )))
            .await
            {
                Ok(n) => {
                    written += n;
                    synced = sync;
                }
                // The sync covered every batch: if it failed, nothing here is durable.
                Err(e) if sync => {
                    return WriteOutcome {
                        durable: 0,
                        error: Some(e.into()),
                    }
                }
                Err(e) => error = error.or(Some(e.into())),
            }
        }
        if written > 0 && self.fsync && !synced {
            let f = file.clone();
            if let Err(e) = blocking(move || Ok(f.get()?.sync_data()?)).await {
                return WriteOutcome {
                    durable: 0,
                    error: Some(e),
                };
            }
        }
        WriteOutcome {
            durable: written,
            error,
        }
    }

    async fn held(&self, id: SessionId) -> Result<u64, StoreError> {
        let path = self.data(id);
        blocking(move || match fs::metadata(path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn commit(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let (me, dest) = (self.clone(), dest.clone());
        blocking(move || me.commit_blocking(id, total, &dest, overwrite)).await
    }

    async fn release_upload(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        let (me, dest) = (self.clone(), dest.clone());
        blocking(move || me.release_blocking(id, &dest)).await
    }

    async fn discard(&self, id: SessionId) -> Result<(), StoreError> {
        let paths = [
            self.data(id),
            self.reply(id),
            self.dir(id).join("reply.tmp"),
        ];
        blocking(move || paths.iter().try_for_each(|p| remove_if_exists(p))).await
    }

    async fn read_upload(&self, id: SessionId) -> Result<(u64, super::ByteStream), StoreError> {
        let file = tokio::fs::File::open(self.data(id))
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => StoreError::DataMissing,
                _ => e.into(),
            })?;
        let len = file.metadata().await?.len();
        Ok((
            len,
            Box::new(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10)),
        ))
    }

    async fn store_reply(
        &self,
        id: SessionId,
        mut body: BodyStream<'_>,
    ) -> Result<u64, StoreError> {
        use tokio::io::AsyncWriteExt;
        let tmp = self.dir(id).join("reply.tmp");
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            file.write_all(&chunk).await?;
            len += chunk.len() as u64;
        }
        file.flush().await?;
        if self.fsync {
            file.sync_all().await?;
        }
        drop(file);
        tokio::fs::rename(&tmp, self.reply(id)).await?;
        let dir = self.dir(id);
        let me = self.clone();
        blocking(move || Ok(me.sync_dir(&dir)?)).await?;
        Ok(len)
    }

    async fn remove_reply(&self, id: SessionId) -> Result<(), StoreError> {
        let path = self.reply(id);
        blocking(move || remove_if_exists(&path)).await
    }

    async fn seal_reply(&self, id: SessionId) -> Result<(), StoreError> {
        let (path, dir, me) = (self.reply(id), self.dir(id), self.clone());
        blocking(move || {
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if me.fsync {
                f.sync_all()?;
            }
            Ok(me.sync_dir(&dir)?)
        })
        .await
    }

    async fn reply_representation(
        &self,
        id: SessionId,
    ) -> Result<Option<crate::download::Representation>, StoreError> {
        Ok(crate::download::representation(&self.reply(id)).await?)
    }

    async fn read_reply(
        &self,
        id: SessionId,
        range: std::ops::Range<u64>,
    ) -> Result<super::ByteStream, StoreError> {
        Ok(crate::download::file_range(&self.reply(id), range).await?)
    }

    fn local_files(&self, id: SessionId) -> Option<(PathBuf, PathBuf)> {
        Some((self.data(id), self.reply(id)))
    }
}

impl FsStore {
    fn commit_blocking(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let data = self.data(id);
        let target = dest_path(dest);
        let parent = target
            .parent()
            .ok_or(StoreError::DataMissing)?
            .to_path_buf();
        let data_meta = match fs::metadata(&data) {
            Ok(m) => m,
            // Published by an earlier attempt that crashed before recording it.
            Err(e) if e.kind() == ErrorKind::NotFound && fs::symlink_metadata(&target).is_ok() => {
                return Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::DataMissing),
            Err(e) => return Err(e.into()),
        };
        if data_meta.len() != total {
            // Bytes past `total` can only be unacknowledged leftovers of an interrupted write.
            let f = OpenOptions::new().write(true).open(&data)?;
            f.set_len(total)?;
            if self.fsync {
                f.sync_all()?;
            }
        }
        // Same file system: publish the spool file itself. Otherwise copy next to the target
        // first (kept, like the spool file, until the record says published: a retry after a
        // crash then recognises its own publication by the inode).
        let source = if same_device(&data_meta, &parent)? {
            data.clone()
        } else {
            let tmp = parent.join(format!("{PARTIAL_PREFIX}{}", id.as_uuid().simple()));
            if fs::metadata(&tmp).map(|m| m.len() != total).unwrap_or(true) {
                let mut out = File::create(&tmp)?;
                io::copy(&mut File::open(&data)?.take(total), &mut out)?;
                if self.fsync {
                    out.sync_all()?;
                }
            }
            tmp
        };
        if !same_inode(&source, &target) {
            if overwrite {
                // A second name for the same inode, renamed over the target: atomic replace
                // without giving up the spool name.
                let staged =
                    parent.join(format!("{PARTIAL_PREFIX}{}-publish", id.as_uuid().simple()));
                remove_if_exists(&staged)?;
                fs::hard_link(&source, &staged)?;
                fs::rename(&staged, &target)?;
            } else {
                match fs::hard_link(&source, &target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return Err(StoreError::DestinationExists)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.sync_dir(&parent)?;
        Ok(())
    }

    fn release_blocking(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        remove_if_exists(&self.data(id))?;
        if let Some(parent) = dest_path(dest).parent() {
            remove_if_exists(&parent.join(format!("{PARTIAL_PREFIX}{}", id.as_uuid().simple())))?;
        }
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn same_device(data: &fs::Metadata, dir: &Path) -> Result<bool, StoreError> {
    Ok(fs::metadata(dir)?.dev() == data.dev())
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
