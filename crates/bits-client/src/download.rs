//! Downloads as a BITS download job does them (spec §15): a GET streamed into a partial file
//! next to the destination, resumed with `Range` + `If-Range` after an interruption, and
//! restarted from byte 0 when the remote file changed (different size, `ETag` or
//! `Last-Modified`, a 206 without the validator the resume was conditional on, or a 200
//! answer to a ranged request). Upload-reply jobs fetch their reply with the same code.
//!
//! The partial file is the job's own: created exclusively (never through a link), and the
//! length and SHA-256 of what the job wrote are checkpointed with its state. A resume adopts
//! the file only if it is a plain file of the user's with exactly those bytes; anything else —
//! another user's file, another download's bytes under the same name — is discarded and the
//! download starts over.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bits_proto::{ContentRange, HResult};
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use url::Url;

use crate::client::Client;
use crate::error::{redact, Error, Result, ServerError};
use crate::progress::{Checkpoint, Event, Observer};
use crate::retry::Backoff;
use crate::transport::{next_chunk, Activity, Deadline, ReqBody};

/// Redirects followed per request, as browsers and BITS (silently, by default) do.
const MAX_REDIRECTS: u32 = 10;

/// Restarts in a row (without a byte gained) before the server is declared unusable.
const MAX_RESTARTS: u32 = 5;

/// While a body streams in, what was written is recorded (flushed, length and digest
/// checkpointed) this often, so a killed process loses at most this much.
const RECORD_BYTES: u64 = 16 << 20;
const RECORD_EVERY: Duration = Duration::from_secs(2);

/// The identity of the remote file when the transfer began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteVersion {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl RemoteVersion {
    fn from_headers(headers: &HeaderMap, size: u64) -> RemoteVersion {
        RemoteVersion {
            size,
            etag: header(headers, ETAG).map(str::to_string),
            last_modified: header(headers, LAST_MODIFIED).map(str::to_string),
        }
    }

    /// The `If-Range` validator: a strong ETag if there is one (weak ones are not allowed
    /// there, RFC 9110 §13.1.5), else the `Last-Modified` date.
    fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(e) if e.starts_with('"') => Some(e),
            _ => self.last_modified.as_deref(),
        }
    }

    /// Whether a 206 is a part of the file we hold the beginning of: it must carry the
    /// validator the request was conditional on, unchanged (a 206 without it may come from
    /// another file behind a cache or a balancer), and no other validator may differ.
    fn continued_by(&self, headers: &HeaderMap) -> bool {
        let Some(ours) = self.if_range() else {
            return false;
        };
        let name = if self.etag.as_deref() == Some(ours) {
            ETAG
        } else {
            LAST_MODIFIED
        };
        if header(headers, name) != Some(ours) {
            return false;
        }
        let differs = |ours: &Option<String>, theirs: Option<&str>| match (ours, theirs) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        !differs(&self.etag, header(headers, ETAG))
            && !differs(&self.last_modified, header(headers, LAST_MODIFIED))
    }
}

/// What a job wrote into its partial file, as last checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRecord {
    /// Bytes written from the start of the file.
    pub len: u64,
    /// SHA-256 of those bytes, in lowercase hex.
    pub sha256: String,
}

/// A resumable download: what is persisted between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadState {
    pub url: String,
    /// Where the file goes; data is collected in [`DownloadState::partial_path`] until complete.
    pub dest: PathBuf,
    /// Size and validators from the first answer; `None` until then.
    pub remote: Option<RemoteVersion>,
    /// What this job wrote into the partial file; `None` when nothing there is its own.
    #[serde(default)]
    pub partial: Option<PartialRecord>,
}

impl DownloadState {
    pub fn new(url: &Url, dest: impl Into<PathBuf>) -> DownloadState {
        DownloadState {
            url: url.to_string(),
            dest: dest.into(),
            remote: None,
            partial: None,
        }
    }

    /// `<dest>.bits-part`, on the destination's file system so that completion is a rename.
    pub fn partial_path(&self) -> PathBuf {
        let mut name = self.dest.as_os_str().to_owned();
        name.push(".bits-part");
        PathBuf::from(name)
    }

    /// Bytes this job wrote and recorded (what a resume may keep, if the file still holds
    /// them).
    pub fn received(&self) -> u64 {
        match (&self.remote, &self.partial) {
            (Some(_), Some(p)) => p.len,
            _ => 0,
        }
    }

    /// Deletes the partial file if it is one this job recorded and a plain file of the user's;
    /// someone else's file under that name is left alone.
    pub fn remove_partial(&self) -> io::Result<()> {
        if self.partial.is_none() {
            return Ok(());
        }
        let path = self.partial_path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if is_own_file(&m) => std::fs::remove_file(&path),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a finished download did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DownloadOutcome {
    pub url: String,
    pub dest: PathBuf,
    pub bytes: u64,
    /// Bytes already held when this run started (kept, not fetched again).
    pub resumed_from: u64,
    /// Times the transfer started over because the remote file changed.
    pub restarts: u32,
    pub retries: u32,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Where a download reports to: the plain observer, or an upload-reply job that embeds the
/// reply download in its own state.
pub(crate) trait Sink: Send {
    fn persist(&mut self, state: &DownloadState) -> io::Result<()>;
    fn event(&mut self, event: &Event<'_>) -> ControlFlow<()>;
}

struct Direct<'a>(&'a mut dyn Observer);

impl Sink for Direct<'_> {
    fn persist(&mut self, state: &DownloadState) -> io::Result<()> {
        self.0.checkpoint(Checkpoint::Download(state))
    }
    fn event(&mut self, event: &Event<'_>) -> ControlFlow<()> {
        self.0.event(event)
    }
}

/// A file this client can have written: a regular file (not a symlink, FIFO or device) with a
/// single name (a hard link planted beside the destination could point at any file of the
/// user's), owned by the user.
fn is_own_file(m: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.file_type().is_file() && m.nlink() == 1 && m.uid() == rustix::process::geteuid().as_raw()
    }
    #[cfg(not(unix))]
    {
        m.file_type().is_file()
    }
}

/// Device and inode, to tell whether a name still leads to the file we hold open.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        (0, 0)
    }
}

fn options(create_new: bool) -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if create_new {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    o
}

/// The partial file this run holds open, with the digest of everything in it.
struct Partial {
    file: tokio::fs::File,
    hasher: Sha256,
    len: u64,
    identity: (u64, u64),
}

impl Partial {
    fn record(&self) -> PartialRecord {
        PartialRecord {
            len: self.len,
            sha256: hex::encode(self.hasher.clone().finalize()),
        }
    }

    /// The job's partial file as recorded in `state`, if the file at `path` is a plain file
    /// of the user's that starts with exactly the recorded bytes (anything after them, written
    /// but not recorded before a crash, is cut off). `None` for anything else.
    async fn adopt(state: &DownloadState, path: &Path) -> Result<Option<Partial>> {
        let (Some(_), Some(rec)) = (&state.remote, &state.partial) else {
            return Ok(None);
        };
        // Whatever cannot be opened as a plain file without following a link is not ours.
        let Ok(file) = options(false).open(path) else {
            return Ok(None);
        };
        let meta = file.metadata().map_err(|e| Error::local(path, e))?;
        if !is_own_file(&meta) || meta.len() < rec.len {
            return Ok(None);
        }
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 256 << 10];
        let mut left = rec.len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(|e| Error::local(path, e))?;
            if n == 0 {
                return Ok(None);
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        if hex::encode(hasher.clone().finalize()) != rec.sha256 {
            return Ok(None);
        }
        if meta.len() > rec.len {
            file.set_len(rec.len)
                .await
                .map_err(|e| Error::local(path, e))?;
        }
        Ok(Some(Partial {
            file,
            hasher,
            len: rec.len,
            identity: identity(&meta),
        }))
    }

    /// A new, empty partial file at `path`, created exclusively. Whatever held the name is
    /// unlinked first (never written through); a name that cannot be freed is an error.
    async fn create(path: &Path) -> Result<Partial> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(not_ours(
                    path,
                    &format!("something that is not this job's holds the name ({e})"),
                ))
            }
        }
        let file = options(true).open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                not_ours(
                    path,
                    "the partial file was created by someone else meanwhile",
                )
            } else {
                Error::local(path, e)
            }
        })?;
        let meta = file.metadata().map_err(|e| Error::local(path, e))?;
        Ok(Partial {
            file: tokio::fs::File::from_std(file),
            hasher: Sha256::new(),
            len: 0,
            identity: identity(&meta),
        })
    }

    /// Whether `path` still names this file.
    fn is_at(&self, path: &Path) -> bool {
        matches!(std::fs::symlink_metadata(path), Ok(m) if identity(&m) == self.identity)
    }
}

/// The error for a partial file that is not ours to write to.
fn not_ours(path: &Path, why: &str) -> Error {
    Error::local(
        path,
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{why}; refusing to write through it (remove it to start over)"),
        ),
    )
}

/// Why `path` cannot be where a transfer writes a file, by its spelling alone: it must name a
/// file (`/`, `..` and a trailing `/` name directories).
pub(crate) fn output_name_problem(path: &Path) -> Option<&'static str> {
    let text = path.as_os_str().to_string_lossy();
    let ends_like_a_dir = text.ends_with('/')
        || text.ends_with("/.")
        || (cfg!(windows) && (text.ends_with('\\') || text.ends_with("\\.")));
    if path.file_name().is_none() || ends_like_a_dir || text.is_empty() {
        return Some("names a directory, not a file");
    }
    None
}

/// Checks, before any byte moves, that `path` can receive a file: it names a file and is not
/// an existing directory (the caller's mistake: [`Error::Usage`]), and its directory exists
/// ([`Error::LocalIo`] otherwise: it may come back).
pub fn check_output(path: &Path) -> Result<()> {
    let usage = |why: &str| Err(Error::Usage(format!("{}: {why}", path.display())));
    if let Some(why) = output_name_problem(path) {
        return usage(why);
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.is_dir() {
            return usage("is a directory; name the file to write");
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::local(
            parent,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        )),
        Err(e) => Err(Error::local(parent, e)),
    }
}

/// Writes an empty file at `dest` the way a download finishes: created exclusively beside it
/// and renamed into place, so a link at `dest` is replaced, never followed.
pub(crate) async fn write_empty(dest: &Path) -> Result<()> {
    let mut name = dest.as_os_str().to_owned();
    name.push(".bits-part");
    let path = PathBuf::from(name);
    let part = Partial::create(&path).await?;
    part.file
        .sync_all()
        .await
        .map_err(|e| Error::local(&path, e))?;
    tokio::fs::rename(&path, dest)
        .await
        .map_err(|e| Error::local(dest, e))
}

/// Bytes available to this user on the file system holding `dir` (`None`: unknown).
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let st = rustix::fs::statvfs(dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Refuses a body that is not the file's bytes as they are: a `Content-Encoding` other than
/// identity (we asked for identity; saving gzip as the file would be silent corruption) or a
/// `Transfer-Encoding` other than chunked (which hyper decodes).
fn refuse_encodings(headers: &HeaderMap, url: &str) -> Result<()> {
    let bad = |name: http::header::HeaderName, allowed: &str| {
        headers
            .get_all(&name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case(allowed))
            .map(|c| format!("{name}: {c:?}"))
    };
    match bad(CONTENT_ENCODING, "identity").or_else(|| bad(TRANSFER_ENCODING, "chunked")) {
        Some(what) => Err(Error::Policy {
            url: url.to_string(),
            what: format!(
                "the answer is sent with {what} (Content-Encoding identity was asked for); an \
                 encoded body is never saved as the file"
            ),
        }),
        None => Ok(()),
    }
}

fn header(h: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    header(h, CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

impl Client {
    /// Downloads `state.url` into `state.dest`, resuming from the partial file if the remote
    /// file is unchanged and the partial file holds exactly what this job wrote.
    pub async fn download(
        &self,
        state: &mut DownloadState,
        observer: &mut dyn Observer,
    ) -> Result<DownloadOutcome> {
        let url = Url::parse(&state.url)
            .map_err(|e| Error::Usage(format!("{}: {e}", redact(&state.url))))?;
        crate::upload::check_url(&url)?;
        self.fetch(state, &mut Direct(observer), &url).await
    }

    /// Downloads `state.url`; the credentials go only to the origin of `origin` (the URL the
    /// user named: the download itself, or the upload whose reply this is).
    pub(crate) async fn fetch(
        &self,
        state: &mut DownloadState,
        sink: &mut dyn Sink,
        origin: &Url,
    ) -> Result<DownloadOutcome> {
        let url = Url::parse(&state.url).map_err(|e| Error::Policy {
            url: redact(&state.url),
            what: format!("not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::Policy {
                url: redact(&state.url),
                what: "only http:// and https:// URLs are fetched".into(),
            });
        }
        check_output(&state.dest)?;
        let partial = state.partial_path();
        let mut backoff = Backoff::new(self.inner.retry.clone());
        let mut outcome = DownloadOutcome {
            url: state.url.clone(),
            dest: state.dest.clone(),
            bytes: 0,
            resumed_from: 0,
            restarts: 0,
            retries: 0,
            etag: None,
            last_modified: None,
        };
        // The file is adopted (and its digest recomputed) once; after that the open file and
        // its running digest carry over from attempt to attempt.
        let mut held = Partial::adopt(state, &partial).await?;
        if held.is_none() && state.partial.is_some() {
            state.partial = None;
            sink.persist(state).map_err(|e| Error::local(&partial, e))?;
        }
        outcome.resumed_from = held.as_ref().map_or(0, |p| p.len);
        let mut restarts_in_a_row = 0;
        // Most bytes ever held: only going past it counts as progress (resets the retry budget).
        let mut best = outcome.resumed_from;
        loop {
            if let (Some(remote), Some(p)) = (&state.remote, &held) {
                if p.len == remote.size {
                    if let Some(p) = held.take() {
                        return self.finish(state, p, &partial, outcome).await;
                    }
                }
            }
            // Nothing to validate a resume with: start over.
            if state
                .remote
                .as_ref()
                .and_then(RemoteVersion::if_range)
                .is_none()
            {
                held = None;
            }
            let result = self
                .attempt(&url, origin, state, &mut held, &partial, sink, &mut outcome)
                .await;
            let now = held.as_ref().map_or(0, |p| p.len);
            if now > best {
                best = now;
                backoff.reset();
                restarts_in_a_row = 0;
            }
            match result {
                Ok(Attempt::Progress) => {}
                Ok(Attempt::Restart) => {
                    restarts_in_a_row += 1;
                    outcome.restarts += 1;
                    if restarts_in_a_row > MAX_RESTARTS {
                        return Err(Error::Download {
                            url: state.url.clone(),
                            what: "the remote file keeps changing".into(),
                        });
                    }
                }
                Err(e) if e.is_transient() => {
                    let Some(delay) = backoff.next_delay() else {
                        return Err(Error::RetriesExhausted {
                            attempts: backoff.attempts(),
                            last: Box::new(e),
                        });
                    };
                    outcome.retries += 1;
                    let ev = Event::Retrying {
                        attempt: backoff.attempts(),
                        delay,
                        error: &e,
                    };
                    if sink.event(&ev).is_break() {
                        return Err(Error::Interrupted);
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One GET (following redirects) and the streaming of its body.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        url: &Url,
        origin: &Url,
        state: &mut DownloadState,
        held: &mut Option<Partial>,
        partial: &Path,
        sink: &mut dyn Sink,
        outcome: &mut DownloadOutcome,
    ) -> Result<Attempt> {
        let have = held.as_ref().map_or(0, |p| p.len);
        let validator = state
            .remote
            .as_ref()
            .filter(|_| have > 0)
            .and_then(|r| r.if_range().map(str::to_string));
        let total = state.remote.as_ref().map(|r| r.size).unwrap_or(0);
        let (final_url, resp, deadline) = self
            .get_following(url, origin, have, validator.as_deref(), total, sink)
            .await?;
        let status = resp.status();
        let (parts, mut body) = resp.into_parts();
        let furl = final_url.to_string();
        if status.is_success() {
            refuse_encodings(&parts.headers, &furl)?;
        }
        match status {
            StatusCode::OK => {
                let size = content_length(&parts.headers).ok_or_else(|| Error::Download {
                    url: furl.clone(),
                    what: format!(
                        "no Content-Length in the answer ({:?}, BG_E_MISSING_FILE_SIZE)",
                        HResult(0x8020_0011)
                    ),
                })?;
                self.check_size(size, &furl)?;
                let version = RemoteVersion::from_headers(&parts.headers, size);
                if have > 0 {
                    let ev = Event::DownloadRestarted {
                        reason: "the server sent the whole file: it changed, or ignored the range",
                    };
                    if sink.event(&ev).is_break() {
                        return Err(Error::Interrupted);
                    }
                    outcome.restarts += 1;
                }
                self.check_space(partial, size)?;
                *held = None;
                let part = held.insert(Partial::create(partial).await?);
                state.remote = Some(version);
                state.partial = Some(part.record());
                sink.persist(state).map_err(|e| Error::local(partial, e))?;
                self.stream(&mut body, part, size, size, &furl, deadline, state, sink)
                    .await?;
                Ok(Attempt::Progress)
            }
            StatusCode::PARTIAL_CONTENT => {
                let (Some(remote), Some(part)) = (state.remote.clone(), held.as_mut()) else {
                    return Err(Error::Protocol {
                        url: furl,
                        what: "206 to a request without Range".into(),
                    });
                };
                self.check_size(remote.size, &furl)?;
                let range =
                    header(&parts.headers, CONTENT_RANGE).and_then(|v| ContentRange::parse(v).ok());
                let (changed, end) = match range {
                    // The range we asked for (or a first part of it), of the file we know.
                    Some(r) if r.first == have && r.total == remote.size && !r.is_empty() => {
                        (!remote.continued_by(&parts.headers), r.end())
                    }
                    Some(r) if r.total != remote.size => (true, 0),
                    _ => {
                        return Err(Error::Protocol {
                            url: furl,
                            what: format!(
                                "206 with Content-Range {:?} for a request from byte {have} \
                                 (BG_E_INSUFFICIENT_RANGE_SUPPORT)",
                                header(&parts.headers, CONTENT_RANGE)
                            ),
                        })
                    }
                };
                if changed {
                    return self.restart(state, held, partial, sink).await;
                }
                self.check_space(partial, end - have)?;
                self.stream(
                    &mut body,
                    part,
                    end,
                    remote.size,
                    &furl,
                    deadline,
                    state,
                    sink,
                )
                .await?;
                Ok(Attempt::Progress)
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // The file is now shorter than what we hold: it changed.
                self.restart(state, held, partial, sink).await
            }
            s if matches!(s.as_u16(), 401 | 407) => Err(Error::Auth {
                url: furl,
                status: s.as_u16(),
                had_credentials: self.has_credentials(),
            }),
            s => Err(Error::Server(ServerError {
                packet: None,
                url: furl,
                status: s.as_u16(),
                code: HResult::http_error(s.as_u16()),
                code_sent: false,
                context: None,
                reason: None,
            })),
        }
    }

    /// The size bound ([`crate::ClientBuilder::max_size`]).
    fn check_size(&self, size: u64, url: &str) -> Result<()> {
        match self.inner.max_size {
            Some(max) if size > max => Err(Error::Policy {
                url: url.to_string(),
                what: format!(
                    "the server announces {size} bytes, more than the size bound of {max} \
                     bytes (--max-size)"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses to start writing `need` bytes beside `partial` when the file system has less.
    fn check_space(&self, partial: &Path, need: u64) -> Result<()> {
        let dir = partial
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match free_bytes(dir) {
            Some(free) if free < need => Err(Error::local(
                partial,
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("{need} bytes to write, only {free} bytes free"),
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Forgets the partial data and the remote version: the next request fetches everything.
    async fn restart(
        &self,
        state: &mut DownloadState,
        held: &mut Option<Partial>,
        partial: &Path,
        sink: &mut dyn Sink,
    ) -> Result<Attempt> {
        let ev = Event::DownloadRestarted {
            reason: "the remote file changed",
        };
        if sink.event(&ev).is_break() {
            return Err(Error::Interrupted);
        }
        state.remote = None;
        state.partial = None;
        sink.persist(state).map_err(|e| Error::local(partial, e))?;
        if let Some(p) = held.take() {
            if p.is_at(partial) {
                match tokio::fs::remove_file(partial).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::local(partial, e)),
                }
            }
        }
        Ok(Attempt::Restart)
    }

    /// GET with `Range`/`If-Range` when resuming; redirects are followed (never from https to
    /// http, which BITS also refuses by default). Returns the final URL, the answer and the
    /// deadline of its request.
    async fn get_following(
        &self,
        url: &Url,
        origin: &Url,
        have: u64,
        validator: Option<&str>,
        total: u64,
        sink: &mut dyn Sink,
    ) -> Result<(Url, http::Response<Incoming>, Option<Deadline>)> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut b = self
                .base_request(Method::GET, &url, origin)
                .header(ACCEPT_ENCODING, "identity");
            if let (true, Some(v)) = (have > 0, validator) {
                b = b
                    .header(RANGE, format!("bytes={have}-"))
                    .header(IF_RANGE, v);
            }
            let req = b.body(ReqBody::Empty).map_err(|e| Error::Download {
                url: url.to_string(),
                what: format!("cannot request it: {e}"),
            })?;
            let activity = Activity::new();
            let mut tick = |_| sink.event(&Event::Progress { done: have, total });
            let resp = self.inner.http.send(req, &activity, &mut tick).await?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                let deadline = self.inner.http.deadline_of(&activity);
                return Ok((url, resp, deadline));
            }
            let location = header(resp.headers(), LOCATION).ok_or_else(|| Error::Protocol {
                url: url.to_string(),
                what: format!("redirect {} without Location", resp.status()),
            })?;
            let next = url.join(location).map_err(|e| Error::Protocol {
                url: url.to_string(),
                what: format!("redirect to {:?}: {e}", redact(location)),
            })?;
            if url.scheme() == "https" && next.scheme() != "https" {
                return Err(Error::Policy {
                    url: url.to_string(),
                    what: format!(
                        "a redirect from https to {} would travel unencrypted",
                        redact(next.as_str())
                    ),
                });
            }
            if !matches!(next.scheme(), "http" | "https") || next.host().is_none() {
                return Err(Error::Policy {
                    url: url.to_string(),
                    what: format!(
                        "a redirect to {}: only http(s) redirects are followed",
                        redact(next.as_str())
                    ),
                });
            }
            if !next.username().is_empty() || next.password().is_some() {
                return Err(Error::Policy {
                    url: url.to_string(),
                    what: format!(
                        "a redirect to {} carries credentials in the URL",
                        redact(next.as_str())
                    ),
                });
            }
            url = next;
        }
        Err(Error::Protocol {
            url: url.to_string(),
            what: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Writes the body (bytes `part.len..end` of a `total`-byte file) into the partial file,
    /// recording what was written (length and digest) in `state` as it goes and at the end,
    /// whatever happened: the next attempt resumes after it.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        body: &mut Incoming,
        part: &mut Partial,
        end: u64,
        total: u64,
        url: &str,
        deadline: Option<Deadline>,
        state: &mut DownloadState,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let path = state.partial_path();
        let local = |e| Error::local(&path, e);
        part.file
            .seek(io::SeekFrom::Start(part.len))
            .await
            .map_err(local)?;
        let Partial {
            file, hasher, len, ..
        } = part;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let mut recorded = (*len, Instant::now());
        let result = async {
            let idle = self.inner.http.idle_timeout();
            while let Some(chunk) = next_chunk(body, url, idle, deadline).await? {
                let room = end.saturating_sub(*len);
                if chunk.len() as u64 > room {
                    return Err(Error::InvalidResponse {
                        url: url.to_string(),
                        what: "more body than Content-Length".into(),
                    });
                }
                out.write_all(&chunk).await.map_err(local)?;
                hasher.update(&chunk);
                *len += chunk.len() as u64;
                if *len - recorded.0 >= RECORD_BYTES || recorded.1.elapsed() >= RECORD_EVERY {
                    out.flush().await.map_err(local)?;
                    record(state, *len, hasher, sink)?;
                    recorded = (*len, Instant::now());
                }
                if sink
                    .event(&Event::Progress { done: *len, total })
                    .is_break()
                {
                    return Err(Error::Interrupted);
                }
            }
            if *len < end {
                return Err(Error::Transport {
                    url: url.to_string(),
                    message: format!("connection closed at byte {len} of {end}"),
                });
            }
            Ok(())
        }
        .await;
        // What arrived is kept whatever happened, but only what reached the file is recorded.
        let kept = match out.flush().await {
            Ok(()) => record(state, *len, hasher, sink),
            Err(e) => Err(local(e)),
        };
        result.and(kept)
    }

    /// Moves the complete partial file into place with the server's modification time.
    async fn finish(
        &self,
        state: &DownloadState,
        part: Partial,
        partial: &Path,
        mut outcome: DownloadOutcome,
    ) -> Result<DownloadOutcome> {
        let local = |e| Error::local(partial, e);
        let remote = state.remote.clone().unwrap_or(RemoteVersion {
            size: 0,
            etag: None,
            last_modified: None,
        });
        part.file.sync_all().await.map_err(local)?;
        let still_ours = part.is_at(partial);
        let file = part.file.into_std().await;
        // BITS gives a downloaded file the server's time stamp (Last-Modified).
        if let Some(t) = remote
            .last_modified
            .as_deref()
            .and_then(|d| httpdate::parse_http_date(d).ok())
        {
            set_modified(&file, t).map_err(local)?;
        }
        if !still_ours {
            return Err(not_ours(
                partial,
                "the partial file was replaced while the download finished",
            ));
        }
        tokio::fs::rename(partial, &state.dest)
            .await
            .map_err(|e| Error::local(&state.dest, e))?;
        outcome.bytes = remote.size;
        outcome.etag = remote.etag;
        outcome.last_modified = remote.last_modified;
        Ok(outcome)
    }
}

/// Checkpoints `len` bytes with `hasher`'s digest as what the job wrote.
fn record(state: &mut DownloadState, len: u64, hasher: &Sha256, sink: &mut dyn Sink) -> Result<()> {
    state.partial = Some(PartialRecord {
        len,
        sha256: hex::encode(hasher.clone().finalize()),
    });
    sink.persist(state)
        .map_err(|e| Error::local(state.partial_path(), e))
}

enum Attempt {
    /// Bytes were (or may have been) gained; go on.
    Progress,
    /// Everything was thrown away; start over.
    Restart,
}

fn set_modified(file: &std::fs::File, t: SystemTime) -> io::Result<()> {
    file.set_modified(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_range_prefers_a_strong_etag() {
        let mut v = RemoteVersion {
            size: 1,
            etag: Some("\"abc\"".into()),
            last_modified: Some("Tue, 01 Apr 2025 10:00:00 GMT".into()),
        };
        assert_eq!(v.if_range(), Some("\"abc\""));
        v.etag = Some("W/\"abc\"".into());
        assert_eq!(v.if_range(), Some("Tue, 01 Apr 2025 10:00:00 GMT"));
        v.last_modified = None;
        assert_eq!(v.if_range(), None);
    }

    #[test]
    fn a_206_must_carry_the_validator_it_was_asked_with() {
        let v = RemoteVersion {
            size: 1,
            etag: Some("\"abc\"".into()),
            last_modified: Some("Tue, 01 Apr 2025 10:00:00 GMT".into()),
        };
        let with = |pairs: &[(http::header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, val) in pairs {
                h.insert(k.clone(), val.parse().unwrap());
            }
            h
        };
        assert!(v.continued_by(&with(&[(ETAG, "\"abc\"")])));
        assert!(!v.continued_by(&with(&[])));
        assert!(!v.continued_by(&with(&[(LAST_MODIFIED, "Tue, 01 Apr 2025 10:00:00 GMT")])));
        assert!(!v.continued_by(&with(&[
            (ETAG, "\"abc\""),
            (LAST_MODIFIED, "Wed, 02 Apr 2025 10:00:00 GMT")
        ])));
        let weak = RemoteVersion {
            etag: Some("W/\"abc\"".into()),
            ..v
        };
        assert!(weak.continued_by(&with(&[(LAST_MODIFIED, "Tue, 01 Apr 2025 10:00:00 GMT")])));
    }

    #[test]
    fn partial_path_is_beside_the_destination() {
        let s = DownloadState::new(&Url::parse("http://h/f").unwrap(), "/tmp/x/f.bin");
        assert_eq!(s.partial_path(), PathBuf::from("/tmp/x/f.bin.bits-part"));
    }

    #[test]
    fn outputs_must_name_files() {
        for bad in ["/", "/tmp/", "/tmp/x/..", "/tmp/.", "", "a/"] {
            assert!(output_name_problem(Path::new(bad)).is_some(), "{bad:?}");
        }
        for good in ["/tmp/x", "x", "./x", "/tmp/.hidden"] {
            assert!(output_name_problem(Path::new(good)).is_none(), "{good:?}");
        }
    }
}
