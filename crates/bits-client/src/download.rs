//! Downloads as a BITS download job does them (spec §15): a GET streamed into a partial file
//! next to the destination, resumed with `Range` + `If-Range` after an interruption, and
//! restarted from byte 0 when the remote file changed (different size, `ETag` or
//! `Last-Modified`, or a 200 answer to a ranged request). Upload-reply jobs fetch their reply
//! with the same code.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bits_proto::{ContentRange, HResult};
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use url::Url;

use crate::client::Client;
use crate::error::{Error, Result, ServerError};
use crate::progress::{Checkpoint, Event, Observer};
use crate::retry::Backoff;
use crate::transport::{next_chunk, Activity, ReqBody};

/// Redirects followed per request, as browsers and BITS (silently, by default) do.
const MAX_REDIRECTS: u32 = 10;

/// Restarts in a row (without a byte gained) before the server is declared unusable.
const MAX_RESTARTS: u32 = 5;

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

    /// Whether a response's validators contradict ours (missing ones prove nothing).
    fn contradicted_by(&self, headers: &HeaderMap) -> bool {
        let differs = |ours: &Option<String>, theirs: Option<&str>| match (ours, theirs) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        differs(&self.etag, header(headers, ETAG))
            || differs(&self.last_modified, header(headers, LAST_MODIFIED))
    }
}

/// A resumable download: what is persisted between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadState {
    pub url: String,
    /// Where the file goes; data is collected in [`DownloadState::partial_path`] until complete.
    pub dest: PathBuf,
    /// Size and validators from the first answer; `None` until then.
    pub remote: Option<RemoteVersion>,
}

impl DownloadState {
    pub fn new(url: &Url, dest: impl Into<PathBuf>) -> DownloadState {
        DownloadState {
            url: url.to_string(),
            dest: dest.into(),
            remote: None,
        }
    }

    /// `<dest>.bits-part`, on the destination's file system so that completion is a rename.
    pub fn partial_path(&self) -> PathBuf {
        let mut name = self.dest.as_os_str().to_owned();
        name.push(".bits-part");
        PathBuf::from(name)
    }

    /// Bytes held in the partial file (0 when it is not a file of ours, e.g. a symlink).
    pub fn received(&self) -> u64 {
        match std::fs::symlink_metadata(self.partial_path()) {
            Ok(m) if is_own_file(&m) => m.len(),
            _ => 0,
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

/// A partial file this client can have written: a regular file (not a symlink, FIFO or
/// device) with a single name (a hard link planted beside the destination could point at any
/// file of the user's).
fn is_own_file(m: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.file_type().is_file() && m.nlink() == 1
    }
    #[cfg(not(unix))]
    {
        m.file_type().is_file()
    }
}

/// Opens the partial file for writing without following a symlink in its last component.
/// Opens the partial file with `opts` (never through a link) and checks it is a plain file of
/// ours: one link, regular.
async fn open_own_partial(partial: &Path, opts: std::fs::OpenOptions) -> Result<tokio::fs::File> {
    let file = tokio::fs::OpenOptions::from(opts)
        .open(partial)
        .await
        .map_err(|e| open_error(partial, e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| Error::local(partial, e))?;
    if !is_own_file(&meta) {
        return Err(not_ours(
            partial,
            "the partial file is not a plain file of ours",
        ));
    }
    Ok(file)
}

fn open_partial(create_new: bool) -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if create_new {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o
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

/// Maps the error of opening a partial file; a symlink (`ELOOP` under `O_NOFOLLOW`) is named.
fn open_error(path: &Path, e: io::Error) -> Error {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return not_ours(path, "the partial file is a symbolic link");
    }
    if e.kind() == io::ErrorKind::AlreadyExists {
        return not_ours(
            path,
            "the partial file was created by someone else meanwhile",
        );
    }
    Error::local(path, e)
}

/// Bytes available to this user on the file system holding `dir` (`None`: unknown).
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs writes into the zeroed struct we own; `c` is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
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
            .map(|c| format!("{name}: {c}"))
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

/// Where the download stands before a request.
enum Next {
    Done,
    Fetch { have: u64 },
}

impl Client {
    /// Downloads `state.url` into `state.dest`, resuming from the partial file if the remote
    /// file is unchanged.
    pub async fn download(
        &self,
        state: &mut DownloadState,
        observer: &mut dyn Observer,
    ) -> Result<DownloadOutcome> {
        let url =
            Url::parse(&state.url).map_err(|e| Error::Usage(format!("{}: {e}", state.url)))?;
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
            url: state.url.clone(),
            what: format!("not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::Policy {
                url: state.url.clone(),
                what: "only http:// and https:// URLs are fetched".into(),
            });
        }
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
        let mut first = true;
        let mut restarts_in_a_row = 0;
        // Most bytes ever held: only going past it counts as progress (resets the retry budget).
        let mut best = 0;
        loop {
            let have = match self.assess(state, &partial)? {
                Next::Done => return self.finish(state, &partial, outcome).await,
                Next::Fetch { have } => have,
            };
            if first {
                outcome.resumed_from = have;
                first = false;
            }
            let result = self
                .attempt(&url, origin, state, have, &partial, sink, &mut outcome)
                .await;
            let held = if state.remote.is_some() {
                state.received()
            } else {
                0
            };
            if held > best {
                best = held;
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

    /// Decides from the persisted version and the partial file what to ask for.
    fn assess(&self, state: &mut DownloadState, partial: &Path) -> Result<Next> {
        let Some(remote) = &state.remote else {
            return Ok(Next::Fetch { have: 0 });
        };
        let held = match std::fs::symlink_metadata(partial) {
            // Not a file this client wrote (a planted symlink or hard link): start over, which
            // replaces it.
            Ok(m) if !is_own_file(&m) => None,
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::local(partial, e)),
        };
        match held {
            Some(n) if n == remote.size => Ok(Next::Done),
            // More than the file has, or nothing to validate a resume with: start over.
            Some(n) if n > remote.size || remote.if_range().is_none() => {
                Ok(Next::Fetch { have: 0 })
            }
            Some(n) => Ok(Next::Fetch { have: n }),
            None => Ok(Next::Fetch { have: 0 }),
        }
    }

    /// One GET (following redirects) and the streaming of its body.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        url: &Url,
        origin: &Url,
        state: &mut DownloadState,
        have: u64,
        partial: &Path,
        sink: &mut dyn Sink,
        outcome: &mut DownloadOutcome,
    ) -> Result<Attempt> {
        let validator = state
            .remote
            .as_ref()
            .filter(|_| have > 0)
            .and_then(|r| r.if_range().map(str::to_string));
        let total = state.remote.as_ref().map(|r| r.size).unwrap_or(0);
        let (final_url, resp) = self
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
                let restarted = have > 0;
                if restarted {
                    let ev = Event::DownloadRestarted {
                        reason: "the server sent the whole file: it changed, or ignored the range",
                    };
                    if sink.event(&ev).is_break() {
                        return Err(Error::Interrupted);
                    }
                    outcome.restarts += 1;
                }
                state.remote = Some(version);
                sink.persist(state).map_err(|e| Error::local(partial, e))?;
                self.stream(&mut body, partial, 0, size, size, &furl, sink)
                    .await?;
                Ok(Attempt::Progress)
            }
            StatusCode::PARTIAL_CONTENT => {
                let remote = state.remote.clone().ok_or_else(|| Error::Download {
                    url: furl.clone(),
                    what: "206 to a request without Range".into(),
                })?;
                self.check_size(remote.size, &furl)?;
                let range =
                    header(&parts.headers, CONTENT_RANGE).and_then(|v| ContentRange::parse(v).ok());
                let (changed, end) = match range {
                    // The range we asked for (or a first part of it), of the file we know.
                    Some(r) if r.first == have && r.total == remote.size && !r.is_empty() => {
                        (remote.contradicted_by(&parts.headers), r.end())
                    }
                    Some(r) if r.total != remote.size => (true, 0),
                    _ => {
                        return Err(Error::Download {
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
                    return self.restart(state, partial, sink).await;
                }
                self.stream(&mut body, partial, have, end, remote.size, &furl, sink)
                    .await?;
                Ok(Attempt::Progress)
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // The file is now shorter than what we hold: it changed.
                self.restart(state, partial, sink).await
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

    /// Forgets the partial data and the remote version: the next request fetches everything.
    async fn restart(
        &self,
        state: &mut DownloadState,
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
        sink.persist(state).map_err(|e| Error::local(partial, e))?;
        match tokio::fs::remove_file(partial).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::local(partial, e)),
        }
        Ok(Attempt::Restart)
    }

    /// GET with `Range`/`If-Range` when resuming; redirects are followed (never from https to
    /// http, which BITS also refuses by default).
    async fn get_following(
        &self,
        url: &Url,
        origin: &Url,
        have: u64,
        validator: Option<&str>,
        total: u64,
        sink: &mut dyn Sink,
    ) -> Result<(Url, http::Response<Incoming>)> {
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
                return Ok((url, resp));
            }
            let location = header(resp.headers(), LOCATION).ok_or_else(|| Error::Download {
                url: url.to_string(),
                what: format!("redirect {} without Location", resp.status()),
            })?;
            let next = url.join(location).map_err(|e| Error::Download {
                url: url.to_string(),
                what: format!("redirect to {location:?}: {e}"),
            })?;
            if url.scheme() == "https" && next.scheme() != "https" {
                return Err(Error::Policy {
                    url: url.to_string(),
                    what: format!("a redirect from https to {next} would travel unencrypted"),
                });
            }
            if !matches!(next.scheme(), "http" | "https") || next.host().is_none() {
                return Err(Error::Policy {
                    url: url.to_string(),
                    what: format!("a redirect to {next}: only http(s) redirects are followed"),
                });
            }
            url = next;
        }
        Err(Error::Download {
            url: url.to_string(),
            what: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Writes the body (bytes `offset..end` of a `total`-byte file) into the partial file.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        body: &mut Incoming,
        partial: &Path,
        offset: u64,
        end: u64,
        total: u64,
        url: &str,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let local = |e| Error::local(partial, e);
        let need = end.saturating_sub(offset);
        let dir = partial
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Some(free) = free_bytes(dir) {
            if free < need {
                return Err(Error::local(
                    partial,
                    io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!("{need} bytes to write, only {free} bytes free"),
                    ),
                ));
            }
        }
        if offset == 0 {
            // Whatever is there (a previous attempt, or a symlink someone planted) is replaced,
            // never written through: the new file is created exclusively.
            match tokio::fs::remove_file(partial).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(local(e)),
            }
        }
        let mut file = open_own_partial(partial, open_partial(offset == 0)).await?;
        file.set_len(offset).await.map_err(local)?;
        file.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(local)?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let mut done = offset;
        let result = async {
            let idle = self.inner.http.idle_timeout();
            while let Some(chunk) = next_chunk(body, url, idle).await? {
                let room = end.saturating_sub(done);
                if chunk.len() as u64 > room {
                    return Err(Error::InvalidResponse {
                        url: url.to_string(),
                        what: "more body than Content-Length".into(),
                    });
                }
                out.write_all(&chunk).await.map_err(local)?;
                done += chunk.len() as u64;
                if sink.event(&Event::Progress { done, total }).is_break() {
                    return Err(Error::Interrupted);
                }
            }
            if done < end {
                return Err(Error::Transport {
                    url: url.to_string(),
                    message: format!("connection closed at byte {done} of {end}"),
                });
            }
            Ok(())
        }
        .await;
        // What arrived is kept whatever happened: the next attempt resumes after it.
        let flushed = out.flush().await.map_err(local);
        result.and(flushed)
    }

    /// Moves the complete partial file into place with the server's modification time.
    async fn finish(
        &self,
        state: &DownloadState,
        partial: &Path,
        mut outcome: DownloadOutcome,
    ) -> Result<DownloadOutcome> {
        let local = |e| Error::local(partial, e);
        let remote = state.remote.clone().unwrap_or(RemoteVersion {
            size: 0,
            etag: None,
            last_modified: None,
        });
        let mut opts = open_partial(false);
        opts.create(true);
        let file = open_own_partial(partial, opts).await?;
        file.sync_all().await.map_err(local)?;
        // BITS gives a downloaded file the server's time stamp (Last-Modified).
        if let Some(t) = remote
            .last_modified
            .as_deref()
            .and_then(|d| httpdate::parse_http_date(d).ok())
        {
            let std_file = file.into_std().await;
            set_modified(&std_file, t).map_err(local)?;
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
    fn partial_path_is_beside_the_destination() {
        let s = DownloadState::new(&Url::parse("http://h/f").unwrap(), "/tmp/x/f.bin");
        assert_eq!(s.partial_path(), PathBuf::from("/tmp/x/f.bin.bits-part"));
    }
}
