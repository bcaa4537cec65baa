//! What an upload job persists between runs (the job file's upload part) and what a finished
//! upload reports: the local file's stamp, the server session, the phase, the outcome.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{check_url, MIN_FRAGMENT_SIZE};
use crate::download::DownloadState;
use crate::error::{Error, Result};

/// Size and modification time of the local file: how BITS notices that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl FileStamp {
    pub fn of(path: &Path) -> Result<FileStamp> {
        let meta = std::fs::metadata(path).map_err(|e| Error::local(path, e))?;
        if !meta.is_file() {
            return Err(Error::local(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let (mtime_secs, mtime_nanos) = match meta.modified().map_err(|e| Error::local(path, e))? {
            t if t >= UNIX_EPOCH => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                (d.as_secs() as i64, d.subsec_nanos())
            }
            t => {
                let d = UNIX_EPOCH.duration_since(t).unwrap_or_default();
                (-(d.as_secs() as i64), d.subsec_nanos())
            }
        };
        Ok(FileStamp {
            size: meta.len(),
            mtime_secs,
            mtime_nanos,
        })
    }
}

/// `BITS-Host-Id` of a session and its fallback timeout (`None`: infinite).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdState {
    pub host: String,
    pub fallback_secs: Option<u64>,
}

/// The server-side session of an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// Exactly as the server sent it; echoed verbatim.
    pub id: String,
    pub host_id: Option<HostIdState>,
    /// The end of the furthest fragment sent (or about to be) in this session: the server
    /// cannot hold more, so an Ack beyond it is a protocol error. Recorded before the
    /// fragment goes out, so a resumed job still knows it.
    #[serde(default)]
    pub sent: u64,
}

/// Where an upload stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum UploadPhase {
    /// Sending fragments.
    Transfer,
    /// All bytes acknowledged; downloading the reply (upload-reply only).
    FetchReply { download: DownloadState },
    /// All done but Close-Session.
    Close,
}

/// A resumable upload: everything needed to continue it after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The destination URL as given (the session may talk to a Host-Id host instead).
    pub url: String,
    /// The local file (absolute).
    pub file: PathBuf,
    /// Size and time stamp of the file when the upload began.
    pub stamp: FileStamp,
    pub fragment_size: u64,
    /// Upload-reply: where the reply goes.
    pub reply_to: Option<PathBuf>,
    pub session: Option<SessionState>,
    /// Bytes the server has acknowledged (its last `BITS-Received-Content-Range`).
    pub acked: u64,
    pub phase: UploadPhase,
    /// `BITS-Reply-URL` of the completing Ack, resolved to an absolute URL.
    pub reply_url: Option<String>,
}

impl UploadState {
    /// A new upload of `file` to `url` (nothing is sent yet).
    pub fn new(file: impl AsRef<Path>, url: &Url, fragment_size: u64) -> Result<UploadState> {
        check_url(url)?;
        let file =
            std::path::absolute(file.as_ref()).map_err(|e| Error::local(file.as_ref(), e))?;
        let stamp = FileStamp::of(&file)?;
        Ok(UploadState {
            url: url.to_string(),
            file,
            stamp,
            fragment_size: fragment_size.max(MIN_FRAGMENT_SIZE),
            reply_to: None,
            session: None,
            acked: 0,
            phase: UploadPhase::Transfer,
            reply_url: None,
        })
    }

    /// Makes this an upload-reply job whose reply is written to `path`.
    pub fn with_reply(mut self, path: impl Into<PathBuf>) -> UploadState {
        self.reply_to = Some(path.into());
        self
    }

    /// Whether the local file is no longer the one this upload started with.
    pub fn local_file_changed(&self) -> Result<bool> {
        Ok(FileStamp::of(&self.file)? != self.stamp)
    }

    /// Starts over from scratch with the file as it is now (no session, nothing acknowledged).
    pub fn reset(&mut self) -> Result<()> {
        self.stamp = FileStamp::of(&self.file)?;
        self.session = None;
        self.acked = 0;
        self.phase = UploadPhase::Transfer;
        self.reply_url = None;
        Ok(())
    }
}

/// What a finished upload did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UploadOutcome {
    pub url: String,
    pub file: PathBuf,
    pub bytes: u64,
    pub session_id: String,
    /// Acknowledged bytes when this run started (not sent again).
    pub resumed_from: u64,
    /// Fragment requests sent in this run, and the body bytes they carried (retransmits and
    /// bytes refused with 413 included).
    pub fragments: u64,
    pub bytes_sent: u64,
    pub retries: u32,
    /// New sessions after `BG_E_SESSION_NOT_FOUND`.
    pub restarts: u32,
    /// Fragment size at the end (smaller than asked if the server answered 413).
    pub fragment_size: u64,
    pub reply_url: Option<String>,
    pub reply_file: Option<PathBuf>,
    pub reply_bytes: Option<u64>,
}

impl UploadOutcome {
    /// The outcome of a run that has not sent anything yet.
    pub(super) fn starting(state: &UploadState) -> UploadOutcome {
        UploadOutcome {
            url: state.url.clone(),
            file: state.file.clone(),
            bytes: state.stamp.size,
            session_id: String::new(),
            resumed_from: state.acked,
            fragments: 0,
            bytes_sent: 0,
            retries: 0,
            restarts: 0,
            fragment_size: state.fragment_size,
            reply_url: None,
            reply_file: None,
            reply_bytes: None,
        }
    }
}
