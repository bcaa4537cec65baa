//! Local file system backend: the upload data of each session in the spool, published by an
//! atomic rename (or a no-replace hard link) into the vdir root. The session records live in
//! the spool's session database ([`super::sessions_db`]).
//!
//! ```text
//! <spool>/sessions.redb        session records, tombstones and their indexes
//! <spool>/data/<uuid>          the partial upload, written in place at the received offset
//! <spool>/data/<uuid>.reply    the server application's reply (upload-reply)
//! ```
//!
//! An earlier layout kept one directory per session (`<spool>/sessions/<uuid>/meta.json`, `data`,
//! `reply`); [`open_local`] converts it once at start-up.
//!
//! A vdir root may be writable by others than the server, so nothing below it is reached by a
//! path string: the destination's directory is opened relative to the root without leaving it
//! (see [`open_beneath`]), and every name in it is created, linked, renamed or removed
//! relative to that directory, never following a symbolic link planted under a server name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bits_proto::SessionId;
use bytes::Bytes;
use futures_util::StreamExt;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tokio::task::{spawn_blocking, JoinHandle};

use super::budget::BodyBudget;
use super::dirsync::DirSync;
use super::sessions_db::SessionsDb;
use super::vectored;
use super::{
    BodyStream, ByteStream, DataStore, Destination, DestinationState, Held, PublishedFile,
    Representation, SessionRecord, StorageInfo, StoreError, WriteOutcome, DEFAULT_BODY_BUDGET,
    PARTIAL_PREFIX,
};

mod migrate;
mod paths;
mod publish;
mod read;
mod write;

use migrate::*;
use paths::*;
use read::*;
use write::*;

/// Bytes gathered from the network before one positioned write; two such batches are in flight
/// at most (one being filled, one being written), which bounds memory per request. Across
/// requests, [`BodyBudget`] bounds it.
const WRITE_CHUNK: usize = 1 << 20;

/// Opens the spool at `spool` for the file system backend: its session database and its data
/// store, converting a spool of the earlier one-directory-per-session layout first.
pub fn open_local(spool: &Path, fsync: bool) -> Result<(Arc<SessionsDb>, FsStore), StoreError> {
    fs::create_dir_all(spool)?;
    let sessions = SessionsDb::open(&spool.join("sessions.redb"), fsync)?;
    let data = FsStore::open(spool, fsync)?;
    migrate_legacy(spool, &sessions, &data)?;
    Ok((Arc::new(sessions), data))
}

#[derive(Clone)]
pub struct FsStore {
    /// The spool directory as configured (for operators: [`StorageInfo`]).
    spool: PathBuf,
    data: PathBuf,
    fsync: bool,
    budget: Arc<BodyBudget>,
    /// Group fsync of the data directory and of destination directories.
    dirs: Arc<DirSync>,
    /// Sessions whose data file was created since the data directory was last synced: their
    /// names are made durable by `keep` before a record first claims bytes in them.
    unsynced: Arc<std::sync::Mutex<std::collections::HashSet<SessionId>>>,
    /// Sessions this process published with a copy beside the destination (the spool is on
    /// another file system), and sessions it published from the spool file itself: what
    /// releasing the spool copy must clean up. A session in neither (published before a
    /// restart) gets the full clean-up.
    copied: Arc<std::sync::Mutex<std::collections::HashSet<SessionId>>>,
    published_here: Arc<std::sync::Mutex<std::collections::HashSet<SessionId>>>,
    min_free: Option<u64>,
}

impl std::fmt::Debug for FsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStore")
            .field("data", &self.data)
            .field("fsync", &self.fsync)
            .finish_non_exhaustive()
    }
}

impl FsStore {
    /// Opens (creating if needed) the spool's data directory. `fsync = false` is the unsafe
    /// fast mode.
    pub fn open(spool: &Path, fsync: bool) -> io::Result<FsStore> {
        let data = spool.join("data");
        fs::create_dir_all(&data)?;
        // Names a crashed process created but never synced are made durable now, once.
        if fsync {
            File::open(&data)?.sync_all()?;
        }
        Ok(FsStore {
            spool: spool.to_path_buf(),
            data,
            fsync,
            budget: BodyBudget::new(DEFAULT_BODY_BUDGET),
            dirs: Arc::default(),
            unsynced: Arc::default(),
            copied: Arc::default(),
            published_here: Arc::default(),
            min_free: None,
        })
    }

    /// Bounds the fragment body bytes all writes of this store gather in memory together
    /// (`max_buffered_body_bytes`).
    pub fn with_body_budget(mut self, bytes: u64) -> FsStore {
        self.budget = BodyBudget::new(bytes);
        self
    }

    /// `/readyz` says unready when the spool's file system has fewer than `bytes` free
    /// (`min_free_space`; `None`: no check).
    pub fn with_min_free_space(mut self, bytes: Option<u64>) -> FsStore {
        self.min_free = bytes;
        self
    }

    fn name(id: SessionId) -> String {
        id.as_uuid().hyphenated().to_string()
    }

    fn data(&self, id: SessionId) -> PathBuf {
        self.data.join(Self::name(id))
    }

    fn reply(&self, id: SessionId) -> PathBuf {
        self.data.join(format!("{}.reply", Self::name(id)))
    }

    fn reply_tmp(&self, id: SessionId) -> PathBuf {
        self.data.join(format!("{}.reply.tmp", Self::name(id)))
    }

    /// Makes the data directory's entries durable (new or renamed files), sharing the fsync
    /// with concurrent callers.
    fn sync_data_dir(&self) -> io::Result<()> {
        if self.fsync {
            self.dirs.sync(&File::open(&self.data)?)?;
        }
        Ok(())
    }
}

/// Runs a short metadata operation (open a directory, stat, create or remove a name; never a
/// flush nor a data transfer) on the calling thread. A trip to the blocking pool costs two
/// thread wake-ups, more than such a call costs on a warm cache; what may wait on the disk
/// for long (flushes, copies, data) keeps going through [`blocking`].
fn quick<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    f()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))?
}

/// Name of the file the readiness probe writes (a UUID never starts with a dot, so no session
/// and no listing of stored ids ever sees it).
const PROBE_FILE: &str = ".readiness-probe";

/// What makes uploads fail, checked the way uploads meet it: a file written (and flushed, as
/// fragments are) in the data directory, so a read-only, full or failing file system is
/// unready although it still lists its directories; then the free space left.
fn probe_blocking(dir: &Path, fsync: bool, min_free: Option<u64>) -> Result<(), StoreError> {
    use std::io::Write as _;
    let path = dir.join(PROBE_FILE);
    let written = File::create(&path).and_then(|mut f| {
        f.write_all(b"ready\n")?;
        if fsync {
            f.sync_data()?;
        }
        Ok(())
    });
    let removed = remove_if_exists(&path);
    written?;
    removed?;
    if let Some(min) = min_free {
        let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < min {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{free} bytes free on the spool's file system, below min_free_space ({min})"
                ),
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl DataStore for FsStore {
    fn info(&self) -> StorageInfo {
        StorageInfo {
            backend: "fs",
            location: self.spool.display().to_string(),
            local_dir: Some(self.spool.clone()),
        }
    }

    async fn inspect(&self, dest: &Destination) -> Result<DestinationState, StoreError> {
        let dest = dest.clone();
        quick(move || inspect_blocking(&dest))
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let (dir, fsync, min_free) = (self.data.clone(), self.fsync, self.min_free);
        blocking(move || probe_blocking(&dir, fsync, min_free)).await
    }

    async fn prepare_root(&self, root: &str) -> Result<(), StoreError> {
        let root = PathBuf::from(root);
        blocking(move || Ok(fs::create_dir_all(root)?)).await
    }

    async fn allocate(&self, id: SessionId) -> Result<(), StoreError> {
        // The name is made durable only when a record first claims bytes kept in the file
        // (`keep`): an upload published by its first fragment never needs it.
        let path = self.data(id);
        quick(move || Ok(File::create(&path).map(|_| ())?))?;
        if self.fsync {
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        }
        Ok(())
    }

    async fn keep(&self, id: SessionId) -> Result<(), StoreError> {
        let pending = self
            .unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id);
        if !pending {
            return Ok(());
        }
        let me = self.clone();
        blocking(move || Ok(me.sync_data_dir()?)).await?;
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
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
        let mut batch = Batch::new(self.budget.clone());
        let mut pending: Option<JoinHandle<io::Result<u64>>> = None;
        let mut queued = 0u64; // bytes handed to writes so far
        let mut written = 0u64; // bytes whose writes completed
        let mut synced = false;
        let mut error: Option<StoreError> = None;
        while queued + batch.len < len {
            // Over budget, what is gathered is written at once rather than held while the
            // client takes its time: smaller writes, bounded memory.
            let over_budget = match body.next().await {
                Some(Ok(mut chunk)) => {
                    chunk.truncate((len - queued - batch.len) as usize);
                    !batch.push(chunk)
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
            };
            if (batch.is_full() || over_budget) && queued + batch.len < len {
                match finish(pending.take()).await {
                    Ok(n) => written += n,
                    Err(e) => {
                        error = Some(e.into());
                        break;
                    }
                }
                let full = batch.take();
                let n = full.len;
                // With fsync on, each batch's writeback starts as it is written: the
                // fragment's final fdatasync then waits for the last batch, not all of them.
                let after = if self.fsync {
                    After::Writeback
                } else {
                    After::Nothing
                };
                pending = Some(spawn_write(file.clone(), offset + queued, full, after));
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
            let rest = batch.take();
            let sync = self.fsync;
            let after = if sync { After::Sync } else { After::Nothing };
            match finish(Some(spawn_write(
                file.clone(),
                offset + queued,
                rest,
                after,
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
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // Published from the spool file itself (same file system) by this process: nothing
        // of ours beside the destination.
        let beside = self
            .copied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            || !self
                .published_here
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        let (me, dest) = (self.clone(), dest.clone());
        if beside {
            // Opens the destination's directory: may wait on the disk.
            blocking(move || me.release_blocking(id, &dest, beside)).await
        } else {
            quick(move || me.release_blocking(id, &dest, beside))
        }
    }

    async fn unpublish(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        let (me, dest) = (self.clone(), dest.clone());
        blocking(move || me.unpublish_blocking(id, &dest)).await
    }

    async fn stored_ids(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        let dir = self.data.clone();
        blocking(move || {
            let mut ids = std::collections::BTreeSet::new();
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name();
                let uuid = name.to_str().and_then(|n| n.split('.').next());
                if let Some(id) = uuid.and_then(|u| SessionId::parse(u).ok()) {
                    ids.insert(id);
                }
            }
            Ok(Some(ids.into_iter().collect()))
        })
        .await
    }

    async fn discard(&self, id: SessionId, held: Held) -> Result<(), StoreError> {
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let mut paths = Vec::with_capacity(3);
        if held.data {
            paths.push(self.data(id));
        }
        if held.reply {
            paths.extend([self.reply(id), self.reply_tmp(id)]);
        }
        quick(move || paths.iter().try_for_each(|p| remove_if_exists(p)))
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
        let tmp = self.reply_tmp(id);
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
        let me = self.clone();
        blocking(move || Ok(me.sync_data_dir()?)).await?;
        Ok(len)
    }

    async fn remove_reply(&self, id: SessionId) -> Result<(), StoreError> {
        let path = self.reply(id);
        blocking(move || remove_if_exists(&path)).await
    }

    async fn seal_reply(&self, id: SessionId) -> Result<(), StoreError> {
        let (path, me) = (self.reply(id), self.clone());
        blocking(move || {
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if me.fsync {
                f.sync_all()?;
            }
            Ok(me.sync_data_dir()?)
        })
        .await
    }

    async fn reply_representation(
        &self,
        id: SessionId,
    ) -> Result<Option<Representation>, StoreError> {
        Ok(representation(&self.reply(id)).await?)
    }

    async fn read_reply(
        &self,
        id: SessionId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        Ok(file_range(&self.reply(id), range).await?)
    }

    fn local_files(&self, id: SessionId) -> Option<(PathBuf, PathBuf)> {
        Some((self.data(id), self.reply(id)))
    }

    /// Through [`open_published`]: never a link out of the root, never a FIFO or directory.
    async fn open_published(
        &self,
        dest: &Destination,
    ) -> Result<Option<Box<dyn PublishedFile>>, StoreError> {
        if super::is_internal_name(&dest.path) {
            return Ok(None);
        }
        let Some(file) = open_published(Path::new(&dest.root), &dest.path).await? else {
            return Ok(None);
        };
        let file = Arc::new(file);
        let f = file.clone();
        let meta = spawn_blocking(move || f.metadata())
            .await
            .map_err(io::Error::other)??;
        Ok(Some(Box::new(OpenFile {
            file,
            rep: representation_of(&meta),
        })))
    }
}

fn partial_name(id: SessionId) -> String {
    format!("{PARTIAL_PREFIX}{}", id.as_uuid().simple())
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    fn root_fd(p: &Path) -> OwnedFd {
        open_root(p).unwrap().unwrap()
    }

    /// `root/a/b/f`, `out/secret` beside the root, and links in the root: `in` (relative,
    /// inside), `up` (relative, out), `abs` (absolute, out), `lf` (to the file, inside).
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"f").unwrap();
        fs::create_dir_all(tmp.path().join("out")).unwrap();
        fs::write(tmp.path().join("out/secret"), b"s").unwrap();
        symlink("a/b", root.join("in")).unwrap();
        symlink("../out", root.join("up")).unwrap();
        symlink(tmp.path().join("out"), root.join("abs")).unwrap();
        symlink("a/b/f", root.join("lf")).unwrap();
        (tmp, root)
    }

    #[test]
    fn open_beneath_follows_links_only_while_they_stay_inside() {
        let (_tmp, root) = tree();
        let r = root_fd(&root);
        let open = |rel: &str| {
            open_beneath(r.as_fd(), rel, OFlags::RDONLY)
                .unwrap()
                .is_some()
        };
        assert!(open("a/b/f"));
        assert!(open("in/f"));
        assert!(open("lf"));
        assert!(open(""), "the root itself");
        assert!(!open("up/secret"));
        assert!(!open("abs/secret"));
        assert!(!open("a/../../out/secret"));
        assert!(!open("a/b/f/x"), "a file as a directory");
        assert!(!open("missing/x"));
    }

    #[test]
    fn without_openat2_no_link_is_followed() {
        let (_tmp, root) = tree();
        let r = root_fd(&root);
        let open = |parts: &[&str]| {
            walk_nofollow(r.as_fd(), parts, OFlags::RDONLY)
                .unwrap()
                .is_some()
        };
        assert!(open(&["a", "b", "f"]));
        assert!(open(&[]));
        assert!(!open(&["in", "f"]));
        assert!(!open(&["lf"]));
        assert!(!open(&["abs", "secret"]));
        assert!(!open(&["up", "secret"]));
    }

    #[tokio::test]
    async fn published_files_open_only_below_an_existing_root() {
        let (tmp, root) = tree();
        assert!(open_published(&root, "in/f").await.unwrap().is_some());
        assert!(
            open_published(&root, "a/b").await.unwrap().is_none(),
            "a directory"
        );
        assert!(open_published(&root, "up/secret").await.unwrap().is_none());
        let missing = tmp.path().join("users/alice");
        assert!(open_published(&missing, "f").await.unwrap().is_none());
    }

    /// A spool and a root on two file systems (/dev/shm is tmpfs), or `None` with a note.
    fn two_file_systems() -> Option<(tempfile::TempDir, tempfile::TempDir)> {
        let spool = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir_in("/dev/shm").ok()?;
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        if dev(spool.path()) == dev(root.path()) {
            println!("note: no second file system here; cross-file-system case skipped");
            return None;
        }
        Some((spool, root))
    }

    fn session_with(store: &FsStore, data: &[u8]) -> SessionId {
        let id = SessionId::random();
        fs::write(store.data(id), data).unwrap();
        id
    }

    fn ino(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[tokio::test]
    async fn commit_across_file_systems_replaces_planted_names_and_recognises_its_own_copy() {
        let Some((spool, root)) = two_file_systems() else {
            return;
        };
        let store = FsStore::open(spool.path(), true).unwrap();
        let dest = |name: &str| Destination {
            root: root.path().to_string_lossy().into_owned(),
            path: name.into(),
        };

        // A FIFO under the copy's name: opening it for writing would never return.
        let id = session_with(&store, b"hello");
        let partial = root.path().join(partial_name(id));
        let c = std::ffi::CString::new(partial.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        tokio::time::timeout(
            Duration::from_secs(10),
            store.commit(id, 5, &dest("f"), false),
        )
        .await
        .expect("commit hung on a FIFO")
        .unwrap();
        assert_eq!(fs::read(root.path().join("f")).unwrap(), b"hello");
        // A retry after a crash before the publication was recorded: its own copy, linked at
        // the target, is recognised, not published twice nor refused as existing.
        store.commit(id, 5, &dest("f"), false).await.unwrap();
        assert_eq!(ino(&partial), ino(&root.path().join("f")));
        store.release_upload(id, &dest("f")).await.unwrap();
        assert!(!partial.exists());
        // ... and after a crash once the spool copy was released.
        store.commit(id, 5, &dest("f"), false).await.unwrap();

        // A crash after the copy, before the link: the copy is reused.
        let id = session_with(&store, b"world");
        store.commit(id, 5, &dest("g"), false).await.unwrap();
        fs::remove_file(root.path().join("g")).unwrap();
        let partial = root.path().join(partial_name(id));
        let copy = ino(&partial);
        store.commit(id, 5, &dest("g"), true).await.unwrap();
        assert_eq!(ino(&root.path().join("g")), copy);

        // A planted link: replaced, and the file published is a regular file.
        let id = session_with(&store, b"third");
        let victim = spool.path().join("victim");
        fs::write(&victim, b"keep!").unwrap();
        symlink(&victim, root.path().join(partial_name(id))).unwrap();
        store.commit(id, 5, &dest("h"), true).await.unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep!");
        assert!(fs::symlink_metadata(root.path().join("h"))
            .unwrap()
            .is_file());
        assert_eq!(fs::read(root.path().join("h")).unwrap(), b"third");
    }

    #[tokio::test]
    async fn commit_refuses_a_directory_that_now_leaves_the_root() {
        let (tmp, root) = tree();
        let store = FsStore::open(&tmp.path().join("spool"), false).unwrap();
        let id = session_with(&store, b"data");
        let dest = Destination {
            root: root.to_string_lossy().into_owned(),
            path: "up/x".into(),
        };
        assert_eq!(
            store.inspect(&dest).await.unwrap(),
            DestinationState::ParentMissing
        );
        assert!(store.commit(id, 4, &dest, true).await.is_err());
        assert!(!tmp.path().join("out/x").exists());
        store.release_upload(id, &dest).await.unwrap();
    }

    #[tokio::test]
    async fn a_spent_body_budget_writes_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        const K: usize = 100 << 10;
        let store = FsStore::open(tmp.path(), false)
            .unwrap()
            .with_body_budget(150 << 10);
        let id = session_with(&store, b"");
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (Ok::<_, io::Error>(c), rx))
        });
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut body = Box::pin(body);
                store.write(id, 0, 1 << 20, body.as_mut()).await
            })
        };
        for i in 0..2u8 {
            tx.send(Bytes::from(vec![i; K])).await.unwrap();
        }
        // The second chunk did not fit the budget: both go to disk while the client stalls,
        // and the write gives their bytes back.
        let data = store.data(id);
        let held = || store.budget.held.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fs::metadata(&data).unwrap().len() < 2 * K as u64 || held() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing written early"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The third fits the budget again, and waits for more.
        tx.send(Bytes::from(vec![2; K])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(held(), K as u64);
        assert_eq!(fs::metadata(&data).unwrap().len(), 2 * K as u64);
        drop(tx);
        let out = writer.await.unwrap();
        assert_eq!(out.durable, 3 * K as u64);
        assert_eq!(held(), 0);
        let got = fs::read(&data).unwrap();
        assert!(got
            .chunks(K)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
