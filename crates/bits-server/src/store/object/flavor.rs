//! What one object store does differently from another, and nothing else: everything the
//! shared backend (records, markers, the time index, claims, standalone parts, reads) does
//! through object_store's `ObjectStore` works the same on S3 and Azure. What differs is the
//! upload at the destination that completion publishes in constant time:
//!
//! | | S3 | Azure |
//! |---|---|---|
//! | the upload | a multipart upload (CreateMultipartUpload) | the blob's uncommitted blocks (nothing to create) |
//! | a part | UploadPart, ≥ 5 MiB but the last, its id the answer's ETag | Put Block, any size, its id derived from the session and the bytes |
//! | completion | CompleteMultipartUpload, `If-None-Match: *` | Put Block List, `If-None-Match: *` |
//! | abort | AbortMultipartUpload | nothing (uncommitted blocks expire after 7 days) |
//!
//! Both send what object_store cannot (streamed part bodies, conditional completions) as
//! requests presigned by object_store, so credentials and signing stay its business.

use async_trait::async_trait;
use bits_proto::SessionId;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::PutPayload;

use crate::store::StoreError;

/// A backend's client for everything object_store does, and its flavour for the rest.
pub(super) type Built = (
    std::sync::Arc<dyn object_store::ObjectStore>,
    std::sync::Arc<dyn Flavor>,
);

/// A part request ready to send but for its body and `Content-Length`.
pub(super) struct PartRequest {
    pub request: reqwest_s3::RequestBuilder,
    /// The part's id when it is chosen before sending (Azure's block id); `None`: the
    /// answer's ETag (S3).
    pub content_id: Option<String>,
}

#[async_trait]
pub(super) trait Flavor: Send + Sync + 'static {
    /// The smallest part but the last: a fragment shorter than this is never streamed into
    /// the upload (it is stored standalone and packed later).
    fn min_part(&self) -> u64;

    /// Starts the session's upload at `key`; its id (empty where there is none to start).
    /// The published object is tagged with `session` (here or at completion).
    async fn create_upload(&self, key: &Path, session: SessionId) -> Result<String, StoreError>;

    /// Stores `data` (bytes `[offset, offset + len)` of the session's upload) as part
    /// `number`; the part's id for completion.
    async fn put_part(
        &self,
        key: &Path,
        upload_id: &str,
        session: SessionId,
        number: usize,
        offset: u64,
        data: PutPayload,
    ) -> Result<String, StoreError>;

    /// The request that stores part `number` (bytes `[offset, offset + len)`) with a body
    /// streamed as it arrives.
    async fn part_request(
        &self,
        key: &Path,
        upload_id: &str,
        session: SessionId,
        number: usize,
        offset: u64,
        len: u64,
    ) -> Result<PartRequest, StoreError>;

    /// Publishes the parts, in order, at `key`: with `overwrite` off only if nothing is there
    /// ([`StoreError::DestinationExists`] otherwise). The object carries the session tag.
    async fn complete(
        &self,
        key: &Path,
        upload_id: &str,
        session: SessionId,
        parts: &[PartId],
        overwrite: bool,
    ) -> Result<(), StoreError>;

    /// Drops what the upload stored.
    async fn abort(&self, key: &Path, upload_id: &str) -> Result<(), StoreError>;

    /// The user metadata name that tags a published object with its session.
    fn session_tag(&self) -> &'static str;
    /// The backend's name in `[storage] backend` (`s3`, `azure`).
    fn backend(&self) -> &'static str;

    /// How long an answer may take once a request is sent.
    fn answer_timeout(&self) -> std::time::Duration;
}

/// Escapes text for an XML element.
pub(super) fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
