//! Every protocol-visible failure, one variant each. `http::ack::error_ack` is the only place
//! that turns these into Acks.

use bits_proto::{ProtoError, SessionId};

use crate::store::StoreError;
use crate::target::TargetError;

#[derive(Debug, thiserror::Error)]
pub enum BitsError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("uploads are not enabled for this URL")]
    UploadsDisabled,
    #[error("invalid destination path: {0}")]
    BadPath(TargetError),
    #[error("the destination is a directory")]
    DestinationIsDirectory,
    #[error("a parent directory of the destination does not exist")]
    ParentMissing,
    #[error("the destination already exists and overwrites are off")]
    DestinationExists { status: u16 },
    #[error("session {0} not found")]
    SessionNotFound(SessionId),
    #[error("session belongs to another user")]
    NotOwner,
    #[error("{}", match .0 {
        crate::auth::Refusal::TlsRequired => "this URL requires TLS (require_tls) and the request came over plain HTTP",
        crate::auth::Refusal::NoClientCertificate => "this URL requires a client certificate and the connection presented none",
        crate::auth::Refusal::UnknownVdir => "no virtual directory serves this path",
    })]
    Refused(crate::auth::Refusal),
    #[error("fragment starts past the {received} bytes held")]
    RangeGap { received: u64 },
    #[error("total length {got} differs from the {expected} fixed by the first fragment")]
    TotalChanged { expected: u64, got: u64 },
    #[error("upload of {total} bytes exceeds the maximum of {limit}")]
    UploadTooLarge { total: u64, limit: u64 },
    #[error("fragment of {len} bytes exceeds the per-request limit of {limit}")]
    FragmentTooLarge { len: u64, limit: u64 },
    #[error("another request of this session is still in progress")]
    SessionBusy,
    #[error("a newer request for this session took over")]
    Preempted,
    #[error("credentials missing or wrong")]
    Unauthenticated(crate::auth::Challenge),
    #[error("too many requests from this address")]
    RateLimited,
    #[error("too many open sessions")]
    SessionLimit,
    #[error("the request body was cut off: {0}")]
    BodyAborted(std::io::Error),
    #[error("no space left for upload data")]
    DiskFull,
    #[error("the server application answered {status}")]
    App { status: u16 },
    #[error("the server application did not answer in time")]
    AppTimeout,
    #[error("the server application is unreachable: {0}")]
    AppUnreachable(String),
    #[error(
        "the reply URL is longer than {} characters",
        bits_proto::MAX_URL_CHARS
    )]
    ReplyUrlTooLong,
    #[error("storage failed: {0}")]
    Storage(StoreError),
}

impl From<StoreError> for BitsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DiskFull => BitsError::DiskFull,
            StoreError::Body(io) => BitsError::BodyAborted(io),
            other => BitsError::Storage(other),
        }
    }
}
