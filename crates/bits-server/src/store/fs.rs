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

/// Converts a spool of the one-directory-per-session layout: each `sessions/<uuid>/meta.json`
/// goes into the database (unless it is there already), its `data` and `reply` move to
/// `data/`, and the directory goes. Each step can be repeated after a crash without changing
/// the result: records are imported before their files move, and a directory is removed last.
fn migrate_legacy(spool: &Path, db: &SessionsDb, store: &FsStore) -> Result<(), StoreError> {
    let legacy = spool.join("sessions");
    let Ok(entries) = fs::read_dir(&legacy) else {
        return Ok(());
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| SessionId::parse(n).ok())
        {
            dirs.push((id, entry.path()));
        }
    }
    if dirs.is_empty() {
        let _ = fs::remove_dir(&legacy);
        return Ok(());
    }
    tracing::info!(
        sessions = dirs.len(),
        "converting the spool to the session database"
    );
    let mut kept = 0usize;
    for chunk in dirs.chunks(1024) {
        let mut records = Vec::with_capacity(chunk.len());
        let mut convert = Vec::with_capacity(chunk.len());
        for (id, dir) in chunk {
            match fs::read(dir.join("meta.json")) {
                Ok(bytes) => match serde_json::from_slice::<SessionRecord>(&bytes) {
                    Ok(rec) => {
                        records.push(rec);
                        convert.push((*id, dir));
                    }
                    // Torn (tombstones were written in place without a flush). Without data
                    // nothing acknowledged depends on it; with data it stays for an operator.
                    Err(e) => {
                        let held = fs::metadata(dir.join("data")).map_or(0, |m| m.len());
                        if held == 0 {
                            tracing::warn!(session = %id, error = %e, "unreadable record without data (torn by a crash); removed");
                            convert.push((*id, dir));
                        } else {
                            tracing::error!(session = %id, dir = %dir.display(), error = %e, "unreadable record with data; left where it is for an operator");
                            kept += 1;
                        }
                    }
                },
                // Never recorded (a crash inside Create-Session): nobody got an Ack for it.
                Err(e) if e.kind() == ErrorKind::NotFound => convert.push((*id, dir)),
                Err(e) => return Err(e.into()),
            }
        }
        db.import(&records)?;
        let chunk = convert;
        for (id, dir) in &chunk {
            for (from, to) in [
                (dir.join("data"), store.data(*id)),
                (dir.join("reply"), store.reply(*id)),
            ] {
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        store.sync_data_dir()?;
        for (_, dir) in &chunk {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if store.fsync {
        File::open(&legacy)?.sync_all()?;
    }
    if kept == 0 {
        let _ = fs::remove_dir(&legacy);
    }
    tracing::info!(kept, "spool converted");
    Ok(())
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

/// Whether the kernel lacks `openat2` (Linux < 5.6, or a seccomp filter that hides it); then
/// [`open_beneath`] walks component by component.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory `root` itself. It is the operator's to choose, so a symbolic link
/// there is followed; `None` if it does not exist (a per-user root not made yet).
fn open_root(root: &Path) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens `rel` (slash-separated, relative) below the directory `root` with `flags`,
/// following symbolic links only while they stay below `root`: a relative link inside the
/// root is followed, one that leads out of it (an absolute link, `..` past the root, a
/// `/proc` magic link) is refused. Uploads and downloads both come through here, so they
/// agree on what a root contains. `None` if `rel` does not exist, a component is not a
/// directory, or it leaves the root.
///
/// Without `openat2` every component is opened with `O_NOFOLLOW`: stricter (no symbolic link
/// at all is followed), never looser.
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &str,
    flags: OFlags,
) -> io::Result<Option<OwnedFd>> {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Ok(None);
    }
    let rel = if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    };
    let flags = flags | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: a rename elsewhere raced the lookup (the kernel cannot rule out an escape).
        for _ in 0..8 {
            match rustix::fs::openat2(root, rel.as_str(), flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                // Older container runtimes deny unknown system calls with EPERM.
                Err(Errno::PERM) => break,
                Err(e) => return refused_as_none(e),
            }
        }
    }
    walk_nofollow(root, &parts, flags)
}

/// [`open_beneath`] without `openat2`: one `openat` per component, none of them a link.
fn walk_nofollow(
    root: BorrowedFd<'_>,
    parts: &[&str],
    flags: OFlags,
) -> io::Result<Option<OwnedFd>> {
    let Some((last, dirs)) = parts.split_last() else {
        return match rustix::fs::openat(root, ".", flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) => refused_as_none(e),
        };
    };
    let mut dir: Option<OwnedFd> = None;
    for part in dirs {
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(at, *part, dir_flags, Mode::empty()) {
            Ok(fd) => dir = Some(fd),
            Err(e) => return refused_as_none(e),
        }
    }
    let at = dir.as_ref().map_or(root, |d| d.as_fd());
    match rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => refused_as_none(e),
    }
}

/// Missing, not a directory, a link refused, or out of the root: all `None`.
fn refused_as_none(e: Errno) -> io::Result<Option<OwnedFd>> {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::XDEV | Errno::LOOP => Ok(None),
        e => Err(e.into()),
    }
}

/// Bytes read per positioned read when serving a file.
const READ_CHUNK: usize = 256 << 10;

/// Size and identity of a local file. The tag names the inode and the exact mtime, so a file
/// replaced or rewritten in place gets a new one.
pub fn representation_of(meta: &fs::Metadata) -> Representation {
    let secs = meta.mtime();
    Representation::at_unix_seconds(
        meta.len(),
        secs,
        format!(
            "\"{:x}-{:x}-{:x}-{:x}\"",
            meta.ino(),
            meta.len(),
            (secs.max(0) as u64).min(super::LAST_HTTP_SECOND),
            meta.mtime_nsec()
        ),
    )
}

/// The regular file at `path` (a path the server owns, such as a stored reply): `None` if it
/// is missing or not a regular file.
pub async fn representation(path: &Path) -> io::Result<Option<Representation>> {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() => Ok(Some(representation_of(&m))),
        Ok(_) => Ok(None),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Bytes `range` of the file at `path`, streamed.
pub async fn file_range(path: &Path, range: std::ops::Range<u64>) -> io::Result<ByteStream> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(io::SeekFrom::Start(range.start)).await?;
    Ok(Box::new(tokio_util::io::ReaderStream::with_capacity(
        file.take(range.end - range.start),
        READ_CHUNK,
    )))
}

/// Bytes `range` of an open file, by positioned reads: several ranges of one answer share the
/// descriptor without sharing a file offset.
fn read_at_stream(file: Arc<File>, range: std::ops::Range<u64>) -> ByteStream {
    Box::new(Box::pin(futures_util::stream::try_unfold(
        (file, range),
        |(file, range)| async move {
            if range.is_empty() {
                return Ok(None);
            }
            let want = (range.end - range.start).min(READ_CHUNK as u64) as usize;
            let (file, buf) = spawn_blocking(move || {
                // Read into the vector's spare capacity: no zeroing of memory the read
                // overwrites anyway.
                let mut buf = Vec::with_capacity(want);
                loop {
                    match rustix::io::pread(
                        &*file,
                        rustix::buffer::spare_capacity(&mut buf),
                        range.start,
                    ) {
                        Err(Errno::INTR) => continue,
                        other => {
                            other.map_err(io::Error::from)?;
                            break;
                        }
                    }
                }
                Ok::<_, io::Error>((file, buf))
            })
            .await
            .map_err(io::Error::other)??;
            if buf.is_empty() {
                // Shorter than when it was measured: end the answer short, the client sees
                // the Content-Length unmet.
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                ));
            }
            let next = range.start + buf.len() as u64..range.end;
            Ok(Some((Bytes::from(buf), (file, next))))
        },
    )))
}

/// A published file opened once, by the check that decided to serve it, and read from that
/// descriptor: what is served is what was checked, whatever happens to its name meanwhile.
struct OpenFile {
    file: Arc<File>,
    rep: Representation,
}

#[async_trait]
impl PublishedFile for OpenFile {
    fn representation(&self) -> &Representation {
        &self.rep
    }

    async fn read(&self, range: std::ops::Range<u64>) -> Result<ByteStream, StoreError> {
        Ok(read_at_stream(self.file.clone(), range))
    }
}

/// The published file `rel_path` below `root`, opened for reading if it is a regular file
/// reached without leaving the root (see [`open_beneath`]); `None` otherwise, including when
/// the root itself does not exist yet.
pub async fn open_published(root: &Path, rel_path: &str) -> io::Result<Option<File>> {
    let (root, rel) = (root.to_path_buf(), rel_path.to_string());
    spawn_blocking(move || {
        let Some(root) = open_root(&root)? else {
            return Ok(None);
        };
        // O_NONBLOCK: a FIFO planted in the root must not hang the open.
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let Some(fd) = open_beneath(root.as_fd(), &rel, flags)? else {
            return Ok(None);
        };
        let file = File::from(fd);
        Ok(file.metadata()?.is_file().then_some(file))
    })
    .await
    .map_err(io::Error::other)?
}

/// The directory a destination is published into, opened without leaving its root, and the
/// destination's name in it.
struct Parent {
    dir: File,
    name: String,
}

/// Flags of a destination directory: read-only, so it can be fsynced.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY);

/// `None` when the root or a directory on the way is missing, or the way leaves the root.
fn open_parent(dest: &Destination) -> io::Result<Option<Parent>> {
    let (dir, name) = match dest.path.trim_matches('/').rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", dest.path.trim_matches('/')),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Ok(None);
    }
    let Some(root) = open_root(Path::new(&dest.root))? else {
        return Ok(None);
    };
    Ok(
        open_beneath(root.as_fd(), dir, DIR_FLAGS)?.map(|fd| Parent {
            dir: File::from(fd),
            name: name.to_string(),
        }),
    )
}

/// The entry `name` in `dir` itself (a link is not followed); `None` if there is none.
fn stat_at(dir: &File, name: &str) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the entry `name` from `dir`, whatever it is (unlink never follows a link); an
/// empty directory is removed too.
fn remove_at(dir: &File, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // EISDIR (Linux) or EPERM (POSIX) for a directory; EPERM also for someone else's
        // file in a sticky directory, which is then the error reported.
        Err(e @ (Errno::ISDIR | Errno::PERM)) => {
            match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(Errno::NOTDIR) => Err(e.into()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn is_regular(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

fn same_file(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

fn inspect_blocking(dest: &Destination) -> Result<DestinationState, StoreError> {
    // A directory on the way that is missing, or that leaves the root, is a missing parent:
    // uploads never create directories, nor publish outside their root.
    let Some(parent) = open_parent(dest)? else {
        return Ok(DestinationState::ParentMissing);
    };
    Ok(match stat_at(&parent.dir, &parent.name)? {
        Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            DestinationState::Directory
        }
        Some(_) => DestinationState::File,
        None => DestinationState::Absent,
    })
}

/// Body chunks waiting for one gather write, with the part of the budget they hold (given
/// back when the batch is dropped: written, failed or abandoned alike).
struct Batch {
    chunks: Vec<Bytes>,
    len: u64,
    budget: Arc<BodyBudget>,
    reserved: u64,
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.budget.give_back(self.reserved);
    }
}

impl Batch {
    fn new(budget: Arc<BodyBudget>) -> Batch {
        Batch {
            chunks: Vec::new(),
            len: 0,
            budget,
            reserved: 0,
        }
    }

    /// Adds a chunk; `false` when the budget could not cover it (it is held anyway, until
    /// the write the caller then starts at once).
    fn push(&mut self, chunk: Bytes) -> bool {
        if chunk.is_empty() {
            return true;
        }
        let n = chunk.len() as u64;
        self.len += n;
        self.chunks.push(chunk);
        let covered = self.budget.try_take(n);
        if covered {
            self.reserved += n;
        }
        covered
    }

    fn is_full(&self) -> bool {
        self.len >= WRITE_CHUNK as u64 || self.chunks.len() >= vectored::MAX_SLICES
    }

    fn take(&mut self) -> Batch {
        std::mem::replace(self, Batch::new(self.budget.clone()))
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

/// Writes `batch` at `pos` on the blocking pool, then (with `sync`) makes the file durable.
/// What a batch's write job does after writing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// Start writeback of the batch (a later `fdatasync` of the fragment waits less).
    Writeback,
    /// `fdatasync` the file (the fragment's last batch).
    Sync,
}

fn spawn_write(
    file: Arc<DataFile>,
    pos: u64,
    batch: Batch,
    after: After,
) -> JoinHandle<io::Result<u64>> {
    spawn_blocking(move || {
        let f = file.get()?;
        let n = vectored::write_all_at(f, pos, &batch.chunks)?;
        drop(batch);
        match after {
            After::Nothing => {}
            After::Writeback => vectored::start_writeback(f, pos, n),
            After::Sync => f.sync_data()?,
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

impl FsStore {
    fn commit_blocking(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let data = self.data(id);
        // Create saw the directory; if it is gone since, or now leads out of the root (a
        // directory swapped for a link), nothing is published.
        let parent = open_parent(dest)?.ok_or_else(|| {
            StoreError::Io(io::Error::new(
                ErrorKind::NotFound,
                "the destination directory is missing or leaves its root",
            ))
        })?;
        let data_meta = match fs::metadata(&data) {
            Ok(m) => m,
            // Published by an earlier attempt that crashed before recording it.
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && stat_at(&parent.dir, &parent.name)?.is_some() =>
            {
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
        let same_fs = parent.dir.metadata()?.dev() == data_meta.dev();
        // What is at the target is looked at first only where it decides something before
        // linking (a copy of ours to reuse, a replace to skip); the common case, a new name on
        // the same file system, learns it from the link's own answer.
        let target = if same_fs && !overwrite {
            None
        } else {
            stat_at(&parent.dir, &parent.name)?
        };
        let (source_dir, source_name, source): (BorrowedFd<'_>, PathBuf, (u64, u64)) = if same_fs {
            (
                rustix::fs::CWD,
                data.clone(),
                (data_meta.dev(), data_meta.ino()),
            )
        } else {
            let name = partial_name(id);
            let st = self.copy_beside(&parent, &name, &data, total, &data_meta, target.as_ref())?;
            self.copied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
            (
                parent.dir.as_fd(),
                PathBuf::from(name),
                (st.st_dev, st.st_ino),
            )
        };
        let published = target.is_some_and(|t| (t.st_dev, t.st_ino) == source);
        if !published {
            if overwrite {
                // A second name for the same inode, renamed over the target: atomic replace
                // without giving up the spool name. The rename replaces whatever is at the
                // target (a link there is replaced, not followed).
                let staged = format!("{}-publish", partial_name(id));
                let link = || {
                    rustix::fs::linkat(
                        source_dir,
                        &source_name,
                        &parent.dir,
                        staged.as_str(),
                        AtFlags::empty(),
                    )
                };
                match link() {
                    Ok(()) => {}
                    // Left by a crash between linking and renaming: made again.
                    Err(Errno::EXIST) => {
                        remove_at(&parent.dir, &staged)?;
                        link().map_err(io::Error::from)?;
                    }
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                rustix::fs::renameat(
                    &parent.dir,
                    staged.as_str(),
                    &parent.dir,
                    parent.name.as_str(),
                )
                .map_err(io::Error::from)?;
            } else {
                match rustix::fs::linkat(
                    source_dir,
                    &source_name,
                    &parent.dir,
                    parent.name.as_str(),
                    AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        // Ours from an earlier attempt that crashed before recording it, or
                        // someone else's.
                        let there = stat_at(&parent.dir, &parent.name)?;
                        if there.is_none_or(|t| (t.st_dev, t.st_ino) != source) {
                            return Err(StoreError::DestinationExists);
                        }
                    }
                    Err(e) => return Err(io::Error::from(e).into()),
                }
            }
        }
        if self.fsync {
            let (fault, no_undo) = sync_publish_dir_fault();
            // Completions into the same directory share its fsync.
            let synced = fault.and_then(|()| self.dirs.sync(&parent.dir));
            if let Err(e) = synced {
                // Whether the new name reached the disk is unknown: take it back, so the
                // session is plainly unpublished (the retransmitted final fragment publishes
                // again; a Cancel finds nothing). If even that fails, Cancel and expiry remove
                // it (`unpublish`).
                let ours = stat_at(&parent.dir, &parent.name)?
                    .is_some_and(|t| (t.st_dev, t.st_ino) == source);
                if ours {
                    let undone = if no_undo {
                        Err(io::Error::from_raw_os_error(libc::EIO))
                    } else {
                        remove_at(&parent.dir, &parent.name)
                    };
                    match undone {
                        Ok(()) => {
                            tracing::warn!(session = %id, error = %e, "publishing could not be made durable; taken back")
                        }
                        Err(undo) => {
                            tracing::error!(session = %id, error = %e, undo = %undo, "publishing could not be made durable nor taken back")
                        }
                    }
                }
                return Err(e.into());
            }
        }
        if same_fs {
            self.published_here
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        }
        Ok(())
    }

    /// Removes what an interrupted completion published at `dest` for session `id` (the name
    /// is a link to the session's spool data, or to its copy beside the target).
    fn unpublish_blocking(&self, id: SessionId, dest: &Destination) -> Result<(), StoreError> {
        let Some(parent) = open_parent(dest)? else {
            return Ok(());
        };
        let Some(target) = stat_at(&parent.dir, &parent.name)? else {
            return Ok(());
        };
        let spool = fs::metadata(self.data(id)).ok().map(|m| (m.dev(), m.ino()));
        let copy = stat_at(&parent.dir, &partial_name(id))?.map(|st| (st.st_dev, st.st_ino));
        let ours = Some((target.st_dev, target.st_ino));
        if ours == spool || ours == copy {
            remove_at(&parent.dir, &parent.name)?;
            if self.fsync {
                parent.dir.sync_all()?;
            }
            tracing::warn!(session = %id, destination = %dest.path, "removed the publication of a session that never completed");
        }
        Ok(())
    }

    /// The server's own copy of the upload named `name` in the destination's directory (the
    /// spool is on another file system), made if there is no trustworthy one from an earlier
    /// attempt. The name is predictable, and the directory may be writable by others: an
    /// earlier copy is reused only if it is a regular file owned by the server, of the right
    /// size, and linked nowhere but (once published) at the target itself. Anything else
    /// under the name (a link, a FIFO, someone else's file) is removed, never opened, and
    /// the copy made afresh with `O_EXCL | O_NOFOLLOW`.
    fn copy_beside(
        &self,
        parent: &Parent,
        name: &str,
        data: &Path,
        total: u64,
        data_meta: &fs::Metadata,
        target: Option<&rustix::fs::Stat>,
    ) -> Result<rustix::fs::Stat, StoreError> {
        if let Some(st) = stat_at(&parent.dir, name)? {
            let own = is_regular(&st)
                && st.st_uid == data_meta.uid()
                && u64::try_from(st.st_size) == Ok(total)
                && (st.st_nlink == 1
                    || (st.st_nlink == 2 && target.is_some_and(|t| same_file(t, &st))));
            if own {
                return Ok(st);
            }
            // Ours, cut short by an earlier attempt (a full disk, an I/O error): made again.
            let interrupted = is_regular(&st)
                && st.st_uid == data_meta.uid()
                && st.st_nlink == 1
                && u64::try_from(st.st_size).is_ok_and(|n| n < total);
            if interrupted {
                tracing::debug!(name, dir = %parent.name, "copying again over an interrupted copy of ours");
            } else {
                tracing::warn!(name, dir = %parent.name, "removing an unexpected file under the server's temporary name");
            }
        }
        // A name planted again between the removal and the creation: remove it again.
        let mut attempts = 0;
        let mut out = loop {
            remove_at(&parent.dir, name)?;
            match rustix::fs::openat(
                &parent.dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Ok(fd) => break File::from(fd),
                Err(Errno::EXIST) if attempts < 3 => attempts += 1,
                Err(e) => return Err(io::Error::from(e).into()),
            }
        };
        io::copy(&mut File::open(data)?.take(total), &mut out)?;
        if self.fsync {
            out.sync_all()?;
        }
        Ok(rustix::fs::fstat(&out).map_err(io::Error::from)?)
    }

    /// `beside`: a copy next to the destination may exist (one was made by this process, or
    /// nobody here knows: after a restart).
    fn release_blocking(
        &self,
        id: SessionId,
        dest: &Destination,
        beside: bool,
    ) -> Result<(), StoreError> {
        remove_if_exists(&self.data(id))?;
        if !beside {
            return Ok(());
        }
        if let Some(parent) = open_parent(dest)? {
            let name = partial_name(id);
            remove_at(&parent.dir, &name)?;
            // Left by a crash between linking and renaming it over the target.
            remove_at(&parent.dir, &format!("{name}-publish"))?;
        }
        Ok(())
    }
}

/// The name of a session's copy next to its destination.
/// Test-only fault points of publishing, from `BITSD_TEST_FAULT` (read once per process; never
/// set it in production): `publish-dir-fsync` fails the first fsync of a destination
/// directory after publishing with EIO; `publish-dir-fsync-no-undo` also makes taking the
/// publication back fail, as a second I/O error would.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PublishFault {
    None,
    Fsync,
    FsyncNoUndo,
}

fn publish_fault() -> &'static std::sync::Mutex<PublishFault> {
    static ARMED: std::sync::OnceLock<std::sync::Mutex<PublishFault>> = std::sync::OnceLock::new();
    ARMED.get_or_init(|| {
        std::sync::Mutex::new(match std::env::var("BITSD_TEST_FAULT").as_deref() {
            Ok("publish-dir-fsync") => PublishFault::Fsync,
            Ok("publish-dir-fsync-no-undo") => PublishFault::FsyncNoUndo,
            _ => PublishFault::None,
        })
    })
}

/// The test fault point before a destination directory's fsync after publishing: an error to
/// report instead of syncing, and whether taking the publication back must fail too.
fn sync_publish_dir_fault() -> (io::Result<()>, bool) {
    let mut armed = publish_fault().lock().unwrap_or_else(|p| p.into_inner());
    let fault = std::mem::replace(&mut *armed, PublishFault::None);
    drop(armed);
    if fault != PublishFault::None {
        tracing::error!("BITSD_TEST_FAULT: failing this fsync with EIO (test fault point)");
        return (
            Err(io::Error::from_raw_os_error(libc::EIO)),
            fault == PublishFault::FsyncNoUndo,
        );
    }
    (Ok(()), false)
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
