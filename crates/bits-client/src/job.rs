//! Persistent jobs: one small JSON file per unfinished transfer, so an upload interrupted by
//! Ctrl-C, a crash or a reboot resumes without re-sending acknowledged bytes.
//!
//! Files are replaced atomically (write a temporary file, fsync, rename, fsync the directory),
//! so a crash leaves either the old or the new state, never a torn one. A job's id is derived
//! from what it transfers (kind, local path, URL): running the same command again finds it.
//! An advisory lock (`flock`) keeps two processes from running the same job at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::download::DownloadState;
use crate::upload::UploadState;

/// Version of the job file format; files of other versions are ignored.
pub const JOB_FORMAT: u32 = 1;

/// What a job transfers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transfer {
    /// Upload or upload-reply (`UploadState::reply_to` is set for the latter).
    Upload(UploadState),
    Download(DownloadState),
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
    pub fn new(command: &str, settings: JobSettings, transfer: Transfer) -> Job {
        let (local, url) = match &transfer {
            Transfer::Upload(u) => (u.file.as_path(), u.url.as_str()),
            Transfer::Download(d) => (d.dest.as_path(), d.url.as_str()),
        };
        Job {
            format: JOB_FORMAT,
            id: job_id(command, local, url),
            command: command.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            settings,
            transfer,
        }
    }
}

/// The id of the job that transfers `local` to or from `url` with `command`: 16 hex digits of
/// a 64-bit FNV-1a hash (stable across runs and versions, unlike `std`'s hasher).
pub fn job_id(command: &str, local: &Path, url: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let key = format!("{command}\0{}\0{url}", local.display());
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A directory of job files.
#[derive(Clone, Debug)]
pub struct JobStore {
    dir: PathBuf,
}

/// Job files that could not be read, with the reason.
pub type Unreadable = Vec<(PathBuf, io::Error)>;

/// Holds a job's lock; released on drop.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
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

    /// Opens the job directory. A directory this call creates is private to the user (0700);
    /// an existing one keeps its mode — it may be shared (`/tmp`), and changing it is not ours
    /// to do.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<JobStore> {
        let dir = dir.into();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let mut builder = fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(&dir) {
            Ok(()) => {
                // The umask may have taken bits away from 0700 (never added any).
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        Ok(JobStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// A scratch file that belongs to job `id` (e.g. a reply destined for stdout).
    pub fn scratch_path(&self, id: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{id}.{suffix}"))
    }

    /// The job with this id, if there is a readable one.
    pub fn load(&self, id: &str) -> io::Result<Option<Job>> {
        let text = match fs::read(self.path(id)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let job: Job = serde_json::from_slice(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("job {id}: {e}")))?;
        Ok((job.format == JOB_FORMAT && job.id == id).then_some(job))
    }

    /// Writes `job` atomically.
    pub fn save(&self, job: &Job) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(job).map_err(io::Error::other)?;
        let target = self.path(&job.id);
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", job.id, std::process::id()));
        // A leftover of a crashed process with the same pid, or something planted in a shared
        // state directory: removed, and the new file created exclusively without following
        // links, so job state is never written through a symlink.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        // The rename itself must be durable too.
        File::open(&self.dir)?.sync_all()
    }

    /// Deletes a job (its file and scratch files); a missing job is not an error.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let _ = fs::remove_file(self.dir.join(format!("{id}.lock")));
        File::open(&self.dir)?.sync_all()
    }

    /// Every readable job, oldest first; unreadable files are reported by name.
    pub fn list(&self) -> io::Result<(Vec<Job>, Unreadable)> {
        let mut jobs = Vec::new();
        let mut bad = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
            else {
                continue;
            };
            match self.load(id) {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(e) => bad.push((path.clone(), e)),
            }
        }
        jobs.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok((jobs, bad))
    }

    /// Takes the job's lock without waiting; `None` when another process holds it.
    pub fn try_lock(&self, id: &str) -> io::Result<Option<JobLock>> {
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = opts.open(self.dir.join(format!("{id}.lock")))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => Ok(None),
                    _ => Err(e),
                };
            }
        }
        Ok(Some(JobLock { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::DownloadState;

    fn job(dest: &str) -> Job {
        let url = url::Url::parse("http://h/f").unwrap();
        Job::new(
            "download",
            JobSettings::default(),
            Transfer::Download(DownloadState::new(&url, dest)),
        )
    }

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path().join("jobs")).unwrap();
        let a = job("/tmp/a");
        let b = job("/tmp/b");
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, job("/tmp/a").id, "ids are stable");
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        assert_eq!(store.load(&a.id).unwrap(), Some(a.clone()));
        let (jobs, bad) = store.list().unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(bad.is_empty());
        store.remove(&a.id).unwrap();
        store.remove(&a.id).unwrap();
        assert_eq!(store.load(&a.id).unwrap(), None);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("{}.json", b.id)]);
    }

    #[test]
    fn corrupt_files_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("0123456789abcdef.json"), b"{not json").unwrap();
        store.save(&job("/tmp/c")).unwrap();
        let (jobs, bad) = store.list().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let held = store.try_lock("x").unwrap();
        assert!(held.is_some());
        // flock locks belong to the open file description: a second open conflicts.
        assert!(store.try_lock("x").unwrap().is_none());
        drop(held);
        assert!(store.try_lock("x").unwrap().is_some());
    }

    #[test]
    fn default_dir_follows_xdg() {
        // Only checks the shape; the environment is not modified (tests run in parallel).
        if let Some(d) = JobStore::default_dir() {
            assert!(d.ends_with("bits/jobs"));
        }
    }
}
