//! Persistent jobs: one small JSON file per unfinished transfer, so an upload interrupted by
//! Ctrl-C, a crash or a reboot resumes without re-sending acknowledged bytes.
//!
//! A job file says which local file goes to (or comes from) which URL, and the next run acts on
//! it with the user's credentials; so the store trusts only what the user could have written:
//! the directory must be the user's and not writable by group or others (refused otherwise,
//! naming the path and the fix, as ssh does with `~/.ssh`), and so must every job, lock and key
//! file in it. Everything is opened relative to the directory handle checked at
//! [`JobStore::open`] and without following symlinks, so a path swapped afterwards changes
//! nothing.
//!
//! A job's id is keyed with a secret kept in the directory (`id.key`, 0600): the same command
//! finds its job again, but nobody without the key can compute the id of a command, and a job
//! file whose content does not hash to its name (edited, copied from elsewhere) is refused.
//!
//! Files are replaced atomically (write a temporary file, fsync, rename, fsync the directory),
//! so a crash leaves either the old or the new state, never a torn one. An advisory lock
//! (`flock`) keeps two processes from running the same job at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::download::DownloadState;
use crate::upload::UploadState;

/// Version of the job file format. 2: keyed ids, partial-file records in downloads.
pub const JOB_FORMAT: u32 = 2;

/// The file holding the directory's id key.
const KEY_FILE: &str = "id.key";
const KEY_LEN: usize = 32;

/// Job files are a few hundred bytes; anything much larger is not one of ours.
const MAX_JOB_FILE: u64 = 1 << 20;

/// What a job transfers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// One per job, never in bulk: boxing the larger variant would only cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Transfer {
    /// Upload or upload-reply (`UploadState::reply_to` is set for the latter).
    Upload(UploadState),
    Download(DownloadState),
}

impl Transfer {
    /// The local file and the URL, which (with the command) identify the job.
    pub fn local_and_url(&self) -> (&Path, &str) {
        match self {
            Transfer::Upload(u) => (u.file.as_path(), u.url.as_str()),
            Transfer::Download(d) => (d.dest.as_path(), d.url.as_str()),
        }
    }
}

/// Connection settings worth remembering for `resume` (never secrets: no password).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    pub user: Option<String>,
    /// `ntlm` when the user signs in with NTLM; absent for Basic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The reply is wanted on standard output rather than in a named file.
    #[serde(default)]
    pub reply_to_stdout: bool,
}

/// One persisted job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub format: u32,
    pub id: String,
    /// `upload`, `upload-reply` or `download`.
    pub command: String,
    /// Seconds since the epoch when the job was created.
    pub created: u64,
    pub settings: JobSettings,
    pub transfer: Transfer,
}

impl Job {
    /// Whether `other` transfers the same thing the same way (command, local file, URL).
    pub fn same_transfer(&self, other: &Job) -> bool {
        self.command == other.command
            && self.transfer.local_and_url() == other.transfer.local_and_url()
    }

    /// What is wrong with a job that no command of this client writes: a transfer that is not
    /// what the command says, or a local path a transfer must not use.
    fn inconsistency(&self) -> Option<String> {
        let kind_fits = match (&self.command[..], &self.transfer) {
            ("upload", Transfer::Upload(u)) => u.reply_to.is_none(),
            ("upload-reply", Transfer::Upload(u)) => u.reply_to.is_some(),
            ("download", Transfer::Download(_)) => true,
            _ => false,
        };
        if !kind_fits {
            return Some(format!(
                "a {} job holding another kind of transfer",
                self.command
            ));
        }
        let (local, _) = self.transfer.local_and_url();
        let reply = match &self.transfer {
            Transfer::Upload(u) => u.reply_to.as_deref(),
            Transfer::Download(_) => None,
        };
        [Some(local), reply]
            .into_iter()
            .flatten()
            .find(|p| !p.is_absolute() || crate::download::output_name_problem(p).is_some())
            .map(|p| format!("an unusable local path {}", p.display()))
    }
}

/// What can go wrong with the job directory or a job file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory, or a file in it, is not the user's own: someone else could have written
    /// it.
    #[error("{}: {problem}; {fix}", .path.display())]
    NotOwn {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// A job file whose content is not what its name stands for: edited, copied from another
    /// state directory, or not written by this client.
    #[error("{}: {what}; refusing to run it (remove the file, or `bits cancel {id}`)", .path.display())]
    Mismatch {
        path: PathBuf,
        id: String,
        what: String,
    },
    /// A file that does not parse as a job.
    #[error("{}: not a job file ({what})", .path.display())]
    Corrupt { path: PathBuf, what: String },
    /// A job written by a client with another job format.
    #[error("{}: job format {found}, this bits reads {JOB_FORMAT}; run the command again, or remove the file", .path.display())]
    Format { path: PathBuf, found: u32 },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A directory of job files.
#[derive(Clone)]
pub struct JobStore {
    dir: PathBuf,
    handle: Arc<sys::Dir>,
    key: Arc<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for JobStore {
    // The key stays out of logs: with it, job ids are predictable again.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Job files that could not be used, with the reason.
pub type Unreadable = Vec<(PathBuf, StoreError)>;

/// Holds a job's lock; released on drop.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

/// How a file found in the store may be used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secrecy {
    /// Only its owner may change it (job and lock files).
    NotWritableByOthers,
    /// Only its owner may read it either (the key).
    Private,
}

impl JobStore {
    /// `$XDG_STATE_HOME/bits/jobs`, or `~/.local/state/bits/jobs`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?)
                .join(".local")
                .join("state"),
        };
        Some(base.join("bits").join("jobs"))
    }

    /// Opens the job directory, creating it private to the user (0700) if it is missing. An
    /// existing directory keeps its mode — changing it is not ours to do — but must belong to
    /// the user and not be writable by group or others.
    pub fn open(dir: impl Into<PathBuf>) -> Result<JobStore, StoreError> {
        let dir = dir.into();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        let handle = sys::Dir::open(&dir).map_err(|e| StoreError::io(&dir, e))?;
        if let Some(problem) = handle.problem().map_err(|e| StoreError::io(&dir, e))? {
            return Err(StoreError::NotOwn {
                fix: format!(
                    "bits keeps jobs only in a directory of your own that nobody else can \
                     write to: choose one with --state-dir (the default is \
                     ~/.local/state/bits/jobs){}",
                    if problem.owner_is_us {
                        format!(", or `chmod go-w {}`", dir.display())
                    } else {
                        String::new()
                    }
                ),
                problem: problem.what,
                path: dir,
            });
        }
        let mut store = JobStore {
            dir,
            handle: Arc::new(handle),
            key: Arc::new([0; KEY_LEN]),
        };
        store.key = Arc::new(store.load_or_make_key()?);
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the job that transfers `local` to or from `url` with `command`: 16 hex digits
    /// of an HMAC-SHA256 under this directory's key.
    pub fn job_id(&self, command: &str, local: &Path, url: &str) -> String {
        // A key of any length is accepted by HMAC; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key[..]) else {
            return String::new();
        };
        mac.update(command.as_bytes());
        mac.update(b"\0");
        mac.update(path_bytes(local).as_ref());
        mac.update(b"\0");
        mac.update(url.as_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A new job of this store for `transfer`.
    pub fn job(&self, command: &str, settings: JobSettings, transfer: Transfer) -> Job {
        let (local, url) = transfer.local_and_url();
        Job {
            format: JOB_FORMAT,
            id: self.job_id(command, local, url),
            command: command.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            settings,
            transfer,
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// A scratch file that belongs to job `id` (e.g. a reply destined for stdout).
    pub fn scratch_path(&self, id: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{id}.{suffix}"))
    }

    /// The job with this id, if there is one. A file that is not safely the user's, does not
    /// parse, or does not hash to its name is an error, never a job.
    pub fn load(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if !is_job_id(id) {
            return Ok(None);
        }
        let name = format!("{id}.json");
        let path = self.path(id);
        let Some(mut file) = self.open_checked(&name, Secrecy::NotWritableByOthers)? else {
            return Ok(None);
        };
        let mut text = Vec::new();
        (&mut file)
            .take(MAX_JOB_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| StoreError::io(&path, e))?;
        if text.len() as u64 > MAX_JOB_FILE {
            return Err(StoreError::Corrupt {
                path,
                what: "too large".into(),
            });
        }
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        })?;
        if version.format != JOB_FORMAT {
            return Err(StoreError::Format {
                path,
                found: version.format,
            });
        }
        let job: Job = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let mismatch = |what: String| StoreError::Mismatch {
            path: path.clone(),
            id: id.to_string(),
            what,
        };
        if job.id != id {
            return Err(mismatch(format!("it names itself job {:?}", job.id)));
        }
        let (local, url) = job.transfer.local_and_url();
        if self.job_id(&job.command, local, url) != id {
            return Err(mismatch(format!(
                "its {} of {} {} {} is not the job of this name (edited, or from another \
                 state directory)",
                job.command,
                local.display(),
                if job.command == "download" {
                    "from"
                } else {
                    "to"
                },
                url
            )));
        }
        if let Some(what) = job.inconsistency() {
            return Err(mismatch(what));
        }
        Ok(Some(job))
    }

    /// Writes `job` atomically. The temporary file is removed again whatever fails.
    pub fn save(&self, job: &Job) -> Result<(), StoreError> {
        if !is_job_id(&job.id) {
            return Err(StoreError::Corrupt {
                path: self.path(&job.id),
                what: "not a job id".into(),
            });
        }
        let target = format!("{}.json", job.id);
        let path = self.path(&job.id);
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let tmp = format!(".{}.{}.tmp", job.id, std::process::id());
        self.write_new(&tmp, &bytes, |d| d.rename(&tmp, &target))
            .map_err(|e| StoreError::io(&path, e))
    }

    /// Creates `tmp` (replacing a leftover of a crashed process with the same pid), writes
    /// `bytes` and syncs them, then runs `publish` on it and syncs the directory; `tmp` is
    /// removed if any of it fails.
    fn write_new(
        &self,
        tmp: &str,
        bytes: &[u8],
        publish: impl FnOnce(&sys::Dir) -> io::Result<()>,
    ) -> io::Result<()> {
        self.handle.unlink_if_present(tmp)?;
        let mut f = self.handle.create_new(tmp)?;
        let result = f
            .write_all(bytes)
            .and_then(|()| f.sync_all())
            .and_then(|()| publish(&self.handle))
            .and_then(|()| self.handle.sync());
        if result.is_err() {
            let _ = self.handle.unlink_if_present(tmp);
        }
        result
    }

    /// Deletes a job (its file and lock); a missing job is not an error.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        if !is_job_id(id) {
            return Ok(());
        }
        let path = self.path(id);
        self.handle
            .unlink_if_present(&format!("{id}.json"))
            .map_err(|e| StoreError::io(&path, e))?;
        let _ = self.handle.unlink_if_present(&format!("{id}.lock"));
        self.handle.sync().map_err(|e| StoreError::io(&path, e))
    }

    /// Every usable job, oldest first; the other job files are reported with the reason.
    pub fn list(&self) -> Result<(Vec<Job>, Unreadable), StoreError> {
        let mut jobs = Vec::new();
        let mut bad = Vec::new();
        let names = self
            .handle
            .names()
            .map_err(|e| StoreError::io(&self.dir, e))?;
        for name in names {
            let Some(id) = name.strip_suffix(".json").filter(|n| !n.starts_with('.')) else {
                continue;
            };
            if !is_job_id(id) {
                bad.push((
                    self.dir.join(&name),
                    StoreError::Corrupt {
                        path: self.dir.join(&name),
                        what: "not named by a job id".into(),
                    },
                ));
                continue;
            }
            match self.load(id) {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(e) => bad.push((self.path(id), e)),
            }
        }
        jobs.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok((jobs, bad))
    }

    /// Takes the job's lock without waiting; `None` when another process holds it.
    pub fn try_lock(&self, id: &str) -> Result<Option<JobLock>, StoreError> {
        let name = format!("{id}.lock");
        let path = self.dir.join(&name);
        if !is_job_id(id) {
            return Err(StoreError::Corrupt {
                path,
                what: "not a job id".into(),
            });
        }
        let file = self
            .handle
            .open_or_create(&name)
            .map_err(|e| StoreError::io(&path, e))?;
        self.check_file(&name, &file, Secrecy::NotWritableByOthers)?;
        match sys::try_lock(&file) {
            Ok(true) => Ok(Some(JobLock { _file: file })),
            Ok(false) => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Opens `name` for reading, if it exists, after checking it is the user's.
    fn open_checked(&self, name: &str, secrecy: Secrecy) -> Result<Option<File>, StoreError> {
        let path = self.dir.join(name);
        let file = match self.handle.open_read(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if sys::is_symlink_refusal(&e) => {
                return Err(StoreError::NotOwn {
                    path,
                    problem: "a symbolic link".into(),
                    fix: "bits never follows links in its state directory; remove it".into(),
                })
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        self.check_file(name, &file, secrecy)?;
        Ok(Some(file))
    }

    fn check_file(&self, name: &str, file: &File, secrecy: Secrecy) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let meta = file.metadata().map_err(|e| StoreError::io(&path, e))?;
        if !meta.is_file() {
            return Err(StoreError::NotOwn {
                path,
                problem: "not a regular file".into(),
                fix: "remove it".into(),
            });
        }
        let mask = match secrecy {
            Secrecy::NotWritableByOthers => 0o022,
            Secrecy::Private => 0o077,
        };
        if let Some(problem) = sys::foreign(&meta, mask) {
            let fix = if problem.owner_is_us {
                format!("`chmod go-rwx {}`, or remove it", path.display())
            } else {
                "it is not a file of yours: remove it".into()
            };
            return Err(StoreError::NotOwn {
                path,
                problem: problem.what,
                fix,
            });
        }
        Ok(())
    }

    /// The directory's id key, made on first use.
    fn load_or_make_key(&self) -> Result<[u8; KEY_LEN], StoreError> {
        let path = self.dir.join(KEY_FILE);
        if self.open_checked(KEY_FILE, Secrecy::Private)?.is_none() {
            let mut key = Vec::with_capacity(KEY_LEN);
            while key.len() < KEY_LEN {
                key.extend_from_slice(&bits_proto::ntlm::client_nonce());
            }
            let tmp = format!(".{KEY_FILE}.{}.tmp", std::process::id());
            // A link, not a rename: of two processes making a key at once, the first one's
            // stays and the second reads it.
            match self.write_new(&tmp, &key, |d| d.link(&tmp, KEY_FILE)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
            let _ = self.handle.unlink_if_present(&tmp);
        }
        let mut file = self
            .open_checked(KEY_FILE, Secrecy::Private)?
            .ok_or_else(|| StoreError::io(&path, io::ErrorKind::NotFound.into()))?;
        let mut key = [0; KEY_LEN];
        let mut rest = Vec::new();
        file.read_exact(&mut key)
            .and_then(|()| file.read_to_end(&mut rest))
            .map_err(|e| StoreError::io(&path, e))?;
        if !rest.is_empty() {
            return Err(StoreError::Corrupt {
                path,
                what: format!("a key is {KEY_LEN} bytes"),
            });
        }
        Ok(key)
    }
}

/// Ids are 16 lowercase hex digits; nothing else is ever used as a file name.
fn is_job_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn path_bytes(p: &Path) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::borrow::Cow::Borrowed(p.as_os_str().as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::borrow::Cow::Owned(p.to_string_lossy().into_owned().into_bytes())
    }
}

/// Why a file or directory is not safely the user's.
struct Foreign {
    what: String,
    /// The user owns it and only its mode is wrong: `chmod` is the fix to suggest.
    owner_is_us: bool,
}

#[cfg(unix)]
mod sys {
    //! The store's file operations, all relative to one directory handle and none following a
    //! symlink in the last component.

    use std::fs::File;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

    use super::Foreign;

    pub(super) struct Dir {
        file: File,
    }

    impl Dir {
        /// Opens (making it 0700 if missing) the directory at `path`.
        pub(super) fn open(path: &Path) -> io::Result<Dir> {
            let created = match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
                Ok(()) => true,
                Err(rustix::io::Errno::EXIST) => false,
                Err(e) => return Err(e.into()),
            };
            let fd = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            if created {
                // The umask may have taken bits away from 0700 (never added any).
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
            }
            Ok(Dir {
                file: File::from(fd),
            })
        }

        /// Why the directory is not safely the user's, if it is not.
        pub(super) fn problem(&self) -> io::Result<Option<Foreign>> {
            let meta = self.file.metadata()?;
            Ok(foreign(&meta, 0o022).map(|mut f| {
                // A sticky directory others write to is shared on purpose (`/tmp`): taking
                // their write access away is not the fix to suggest.
                if meta.mode() & 0o1000 != 0 {
                    f.owner_is_us = false;
                }
                f
            }))
        }

        fn at(&self, name: &str, flags: OFlags, mode: u32) -> io::Result<File> {
            let fd = rustix::fs::openat(
                &self.file,
                name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )?;
            Ok(File::from(fd))
        }

        pub(super) fn open_read(&self, name: &str) -> io::Result<File> {
            self.at(name, OFlags::RDONLY, 0)
        }

        pub(super) fn open_or_create(&self, name: &str) -> io::Result<File> {
            self.at(name, OFlags::WRONLY | OFlags::CREATE, 0o600)
        }

        pub(super) fn create_new(&self, name: &str) -> io::Result<File> {
            self.at(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
        }

        pub(super) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            Ok(rustix::fs::renameat(&self.file, from, &self.file, to)?)
        }

        /// Fails with `AlreadyExists` when `to` exists.
        pub(super) fn link(&self, from: &str, to: &str) -> io::Result<()> {
            Ok(rustix::fs::linkat(
                &self.file,
                from,
                &self.file,
                to,
                AtFlags::empty(),
            )?)
        }

        pub(super) fn unlink_if_present(&self, name: &str) -> io::Result<()> {
            match rustix::fs::unlinkat(&self.file, name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }

        /// Makes renames and unlinks in the directory durable.
        pub(super) fn sync(&self) -> io::Result<()> {
            self.file.sync_all()
        }

        pub(super) fn names(&self) -> io::Result<Vec<String>> {
            let mut out = Vec::new();
            for entry in rustix::fs::Dir::read_from(&self.file)? {
                if let Ok(name) = entry?.file_name().to_str() {
                    out.push(name.to_string());
                }
            }
            Ok(out)
        }
    }

    /// `O_NOFOLLOW` met a symlink.
    pub(super) fn is_symlink_refusal(e: &io::Error) -> bool {
        e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
    }

    pub(super) fn try_lock(file: &File) -> io::Result<bool> {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Why a file with `meta` is not safely the user's: another owner, or a mode with bits of
    /// `mask` (group/other write, or any group/other access).
    pub(super) fn foreign(meta: &std::fs::Metadata, mask: u32) -> Option<Foreign> {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Some(Foreign {
                what: format!("owned by uid {}, not by you (uid {me})", meta.uid()),
                owner_is_us: false,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & mask != 0 {
            let who = if mask & 0o044 != 0 {
                "readable or writable"
            } else {
                "writable"
            };
            return Some(Foreign {
                what: format!("{who} by group or others (mode {mode:04o})"),
                owner_is_us: true,
            });
        }
        None
    }
}

#[cfg(not(unix))]
mod sys {
    //! Without Unix ownership and modes, the store keeps to what `std` offers: paths below the
    //! directory, new files created exclusively.

    use std::fs::{File, OpenOptions};
    use std::io;
    use std::path::{Path, PathBuf};

    use super::Foreign;

    pub(super) struct Dir {
        path: PathBuf,
    }

    impl Dir {
        pub(super) fn open(path: &Path) -> io::Result<Dir> {
            match std::fs::create_dir(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(e),
            }
            Ok(Dir {
                path: path.to_path_buf(),
            })
        }

        pub(super) fn problem(&self) -> io::Result<Option<Foreign>> {
            Ok(None)
        }

        pub(super) fn open_read(&self, name: &str) -> io::Result<File> {
            File::open(self.path.join(name))
        }

        pub(super) fn open_or_create(&self, name: &str) -> io::Result<File> {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path.join(name))
        }

        pub(super) fn create_new(&self, name: &str) -> io::Result<File> {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.path.join(name))
        }

        pub(super) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            std::fs::rename(self.path.join(from), self.path.join(to))
        }

        pub(super) fn link(&self, from: &str, to: &str) -> io::Result<()> {
            std::fs::hard_link(self.path.join(from), self.path.join(to))
        }

        pub(super) fn unlink_if_present(&self, name: &str) -> io::Result<()> {
            match std::fs::remove_file(self.path.join(name)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        }

        pub(super) fn sync(&self) -> io::Result<()> {
            Ok(())
        }

        pub(super) fn names(&self) -> io::Result<Vec<String>> {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&self.path)? {
                if let Ok(name) = entry?.file_name().into_string() {
                    out.push(name);
                }
            }
            Ok(out)
        }
    }

    pub(super) fn is_symlink_refusal(_: &io::Error) -> bool {
        false
    }

    pub(super) fn try_lock(_: &File) -> io::Result<bool> {
        Ok(true)
    }

    pub(super) fn foreign(_: &std::fs::Metadata, _: u32) -> Option<Foreign> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::DownloadState;

    fn job(store: &JobStore, dest: &str) -> Job {
        let url = url::Url::parse("http://h/f").unwrap();
        store.job(
            "download",
            JobSettings::default(),
            Transfer::Download(DownloadState::new(&url, dest)),
        )
    }

    fn names(store: &JobStore) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path().join("jobs")).unwrap();
        let a = job(&store, "/tmp/a");
        let b = job(&store, "/tmp/b");
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, job(&store, "/tmp/a").id, "ids are stable");
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        assert_eq!(store.load(&a.id).unwrap(), Some(a.clone()));
        let (jobs, bad) = store.list().unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(bad.is_empty());
        store.remove(&a.id).unwrap();
        store.remove(&a.id).unwrap();
        assert_eq!(store.load(&a.id).unwrap(), None);
        // No temporary files are left behind; the key stays.
        assert_eq!(
            names(&store),
            vec![format!("{}.json", b.id), KEY_FILE.into()]
        );
        // The key survives reopening: the same command finds its job.
        let again = JobStore::open(dir.path().join("jobs")).unwrap();
        assert_eq!(job(&again, "/tmp/b").id, b.id);
    }

    #[test]
    fn ids_depend_on_the_directory_key() {
        let dir = tempfile::tempdir().unwrap();
        let one = JobStore::open(dir.path().join("one")).unwrap();
        let two = JobStore::open(dir.path().join("two")).unwrap();
        assert_ne!(job(&one, "/tmp/a").id, job(&two, "/tmp/a").id);
        assert!(is_job_id(&job(&one, "/tmp/a").id));
        assert!(!is_job_id("../../etc/passwd"));
    }

    #[test]
    fn corrupt_and_foreign_files_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("0123456789abcdef.json"), b"{not json").unwrap();
        let good = job(&store, "/tmp/c");
        store.save(&good).unwrap();
        // A job copied under another name does not hash to it.
        let copy = dir.path().join("fedcba9876543210.json");
        let mut text = std::fs::read_to_string(store.path(&good.id)).unwrap();
        text = text.replace(&good.id, "fedcba9876543210");
        std::fs::write(&copy, text).unwrap();
        let (jobs, bad) = store.list().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(bad.len(), 2);
        assert!(bad
            .iter()
            .any(|(p, e)| p == &copy && matches!(e, StoreError::Mismatch { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn files_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path().join("jobs")).unwrap();
        let j = job(&store, "/tmp/d");
        store.save(&j).unwrap();
        let path = store.path(&j.id);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(store.load(&j.id), Err(StoreError::NotOwn { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(store.load(&j.id).unwrap().is_some());
        let key = store.dir().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            JobStore::open(store.dir()),
            Err(StoreError::NotOwn { .. })
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(store.dir(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let refused = JobStore::open(store.dir()).unwrap_err().to_string();
        assert!(refused.contains("chmod go-w"), "{refused}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path().join("jobs")).unwrap();
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, b"{}").unwrap();
        std::os::unix::fs::symlink(&target, store.path("0123456789abcdef")).unwrap();
        assert!(matches!(
            store.load("0123456789abcdef"),
            Err(StoreError::NotOwn { .. })
        ));
        std::os::unix::fs::symlink(&target, store.dir().join("0123456789abcdef.lock")).unwrap();
        assert!(store.try_lock("0123456789abcdef").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let id = "0123456789abcdef";
        let held = store.try_lock(id).unwrap();
        assert!(held.is_some());
        // flock locks belong to the open file description: a second open conflicts.
        assert!(store.try_lock(id).unwrap().is_none());
        drop(held);
        assert!(store.try_lock(id).unwrap().is_some());
    }

    #[test]
    fn default_dir_follows_xdg() {
        // Only checks the shape; the environment is not modified (tests run in parallel).
        if let Some(d) = JobStore::default_dir() {
            assert!(d.ends_with("bits/jobs"));
        }
    }
}
