//! How a transfer talks to its caller while it runs: checkpoints (state that must survive a
//! crash) and events (for display). Both are synchronous callbacks so a caller can persist
//! state before the next request goes out.

use std::ops::ControlFlow;
use std::time::Duration;

use crate::download::DownloadState;
use crate::error::Error;
use crate::upload::UploadState;

/// State that changed and must be persisted before the transfer goes on.
#[derive(Clone, Copy, Debug)]
pub enum Checkpoint<'a> {
    Upload(&'a UploadState),
    Download(&'a DownloadState),
}

/// Something worth telling a user.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Bytes done so far: acknowledged plus in flight (uploads), written (downloads).
    Progress { done: u64, total: u64 },
    /// Create-Session succeeded.
    SessionCreated { session: &'a str },
    /// A persisted session is picked up again at `offset` (the server will correct it).
    Resumed { session: &'a str, offset: u64 },
    /// A transient failure; the next attempt follows after `delay`.
    Retrying {
        attempt: u32,
        delay: Duration,
        error: &'a Error,
    },
    /// The server answered 413: fragments are this big from now on.
    FragmentShrunk { size: u64 },
    /// The session is gone (`BG_E_SESSION_NOT_FOUND`): a new one uploads from byte 0.
    Restarted { error: &'a Error },
    /// Create-Session named a `BITS-Host-Id`: later requests go to this URL.
    HostId { url: &'a str },
    /// The Host-Id host stayed unreachable past its fallback timeout: back to this URL.
    HostIdFallback { url: &'a str },
    /// The upload is complete; the reply is fetched from this URL (upload-reply).
    FetchingReply { url: &'a str },
    /// A download starts over from byte 0 because the remote file changed or the server
    /// ignored the range.
    DownloadRestarted { reason: &'a str },
    /// Close-Session is being sent.
    Closing,
}

/// Receives checkpoints and events. Every method has a do-nothing default.
pub trait Observer: Send {
    /// Persist `state`; an error stops the transfer (as a local I/O error).
    fn checkpoint(&mut self, state: Checkpoint<'_>) -> std::io::Result<()> {
        let _ = state;
        Ok(())
    }

    /// Display `event`; `Break` stops the transfer with [`Error::Interrupted`], leaving the last
    /// checkpoint resumable.
    fn event(&mut self, event: &Event<'_>) -> ControlFlow<()> {
        let _ = event;
        ControlFlow::Continue(())
    }
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
