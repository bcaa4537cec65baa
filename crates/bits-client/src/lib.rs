//! A client for the BITS Upload Protocol ([MC-BUP]) that uploads and downloads the way the
//! Windows BITS service does, plus the persistent job store behind the `bits` CLI.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bits_client::Error> {
//! use bits_client::{Client, NoObserver, UploadState, Url, DEFAULT_FRAGMENT_SIZE};
//!
//! let client = Client::builder().credentials("alice", "secret").build()?;
//! let url = Url::parse("https://files.example/upload/report.zip")
//!     .map_err(|e| bits_client::Error::Usage(e.to_string()))?;
//! let mut state = UploadState::new("report.zip", &url, DEFAULT_FRAGMENT_SIZE)?;
//! let done = client.upload(&mut state, &mut NoObserver).await?;
//! println!("{} bytes in session {}", done.bytes, done.session_id);
//! # Ok(()) }
//! ```
//!
//! Persisting the state an [`Observer`] receives at each [`Checkpoint`] (see [`JobStore`]) and
//! passing it to [`Client::upload`] again resumes an interrupted upload without re-sending
//! acknowledged bytes.

mod client;
pub mod download;
pub mod error;
mod exchange;
mod host_id;
pub mod job;
pub mod manual;
mod negotiate;
pub mod progress;
pub mod retry;
pub mod tls;
mod transport;
pub mod upload;

pub use client::{
    AuthScheme, Client, ClientBuilder, Credentials, DEFAULT_DEADLINE, DEFAULT_MAX_SIZE,
};
pub use download::{DownloadOutcome, DownloadState, PartialRecord, RemoteVersion};
pub use error::{redact, Error, ErrorKind, Result, ServerError};
pub use job::{Job, JobSettings, JobStore, StoreError, Transfer};
pub use progress::{Checkpoint, Event, NoObserver, Observer};
pub use retry::RetryPolicy;
pub use tls::TlsOptions;
pub use upload::{
    FileStamp, UploadOutcome, UploadPhase, UploadState, DEFAULT_FRAGMENT_SIZE, MIN_FRAGMENT_SIZE,
};
pub use url::Url;
