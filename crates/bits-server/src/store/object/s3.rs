//! The S3 flavour of the object-storage backend: the session's upload is a multipart upload
//! at the destination key (parts of at least 5 MiB but the last, ids from the answers' ETags),
//! completed with `If-None-Match: *` unless overwrites are allowed.

use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bits_proto::SessionId;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3CopyIfNotExists};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{HeaderName, HeaderValue, Method, SignedUrlOptions, Signer};
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, PutMultipartOptions, PutPayload,
    RetryConfig,
};

use super::flavor::{xml_text, Built, Flavor, PartRequest};
use super::{os_err, S3Config, MIN_PART, SESSION_TAG};
use crate::store::StoreError;

pub(super) struct S3Flavor {
    s3: Arc<AmazonS3>,
    /// For the requests object_store cannot send, presigned by it and sent as is:
    /// CompleteMultipartUpload with `If-None-Match: *`, and UploadPart with a streamed body.
    /// It has no overall timeout (a streamed part lasts as long as its fragment body); each
    /// request bounds its own wait for an answer by `request_timeout`.
    http: reqwest_s3::Client,
    request_timeout: Duration,
}

/// The plain client the presigned requests go out on.
pub(super) fn presigned_client(
    request_timeout: Duration,
) -> Result<reqwest_s3::Client, StoreError> {
    reqwest_s3::Client::builder()
        .connect_timeout(request_timeout.min(Duration::from_secs(5)))
        .redirect(reqwest_s3::redirect::Policy::none())
        .retry(reqwest_s3::retry::never())
        .no_proxy()
        .build()
        .map_err(|e| StoreError::Io(io::Error::other(e)))
}

impl S3Flavor {
    /// Builds the client (no request is made).
    pub(super) fn build(cfg: &S3Config) -> Result<Built, StoreError> {
        crate::tls::install_crypto_provider();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key)
            .with_secret_access_key(&cfg.secret_key)
            .with_virtual_hosted_style_request(false)
            .with_copy_if_not_exists(S3CopyIfNotExists::Header(
                "If-None-Match".into(),
                "*".into(),
            ))
            // The whole client options: `allow_http` is one of them, set here.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_timeout(cfg.request_timeout)
                    .with_connect_timeout(cfg.request_timeout.min(Duration::from_secs(5))),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: cfg.max_retries,
                retry_timeout: cfg.retry_timeout,
            });
        if let Some(endpoint) = cfg.endpoint.as_deref().filter(|e| !e.is_empty()) {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = Arc::new(
            builder
                .build()
                .map_err(|e| StoreError::Io(io::Error::new(ErrorKind::InvalidInput, e)))?,
        );
        let flavor = S3Flavor {
            s3: s3.clone(),
            http: presigned_client(cfg.request_timeout)?,
            request_timeout: cfg.request_timeout,
        };
        Ok((s3, Arc::new(flavor)))
    }
}

#[async_trait]
impl Flavor for S3Flavor {
    fn min_part(&self) -> u64 {
        MIN_PART
    }

    fn session_tag(&self) -> &'static str {
        SESSION_TAG
    }

    fn backend(&self) -> &'static str {
        "s3"
    }

    fn answer_timeout(&self) -> Duration {
        self.request_timeout
    }

    async fn create_upload(&self, key: &Path, session: SessionId) -> Result<String, StoreError> {
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(SESSION_TAG.into()),
            session.as_uuid().hyphenated().to_string().into(),
        );
        let opts = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        self.s3
            .create_multipart_opts(key, opts)
            .await
            .map_err(os_err)
    }

    async fn put_part(
        &self,
        key: &Path,
        upload_id: &str,
        _session: SessionId,
        number: usize,
        _offset: u64,
        data: PutPayload,
    ) -> Result<String, StoreError> {
        self.s3
            .put_part(key, &upload_id.to_string(), number - 1, data)
            .await
            .map(|p| p.content_id)
            .map_err(os_err)
    }

    async fn part_request(
        &self,
        key: &Path,
        upload_id: &str,
        _session: SessionId,
        number: usize,
        _offset: u64,
        _len: u64,
    ) -> Result<PartRequest, StoreError> {
        let opts = SignedUrlOptions::default().with_query([
            ("partNumber", number.to_string()),
            ("uploadId", upload_id.to_string()),
        ]);
        // Valid long enough for the slowest body the frontend lets through one part.
        let url = self
            .s3
            .signed_url_opts(Method::PUT, key, Duration::from_secs(7 * 24 * 3600), &opts)
            .await
            .map_err(os_err)?;
        Ok(PartRequest {
            request: self.http.put(url.as_str()),
            content_id: None,
        })
    }

    async fn complete(
        &self,
        key: &Path,
        upload_id: &str,
        _session: SessionId,
        parts: &[PartId],
        overwrite: bool,
    ) -> Result<(), StoreError> {
        if overwrite {
            return self
                .s3
                .complete_multipart(key, &upload_id.to_string(), parts.to_vec())
                .await
                .map(|_| ())
                .map_err(os_err);
        }
        self.complete_if_absent(key, upload_id, parts).await
    }

    async fn abort(&self, key: &Path, upload_id: &str) -> Result<(), StoreError> {
        match self.s3.abort_multipart(key, &upload_id.to_string()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }
}

impl S3Flavor {
    /// CompleteMultipartUpload with `If-None-Match: *`, which object_store only sends for its
    /// own copies: presigned by it (so credentials and signing stay its business) and sent here.
    async fn complete_if_absent(
        &self,
        key: &Path,
        upload_id: &str,
        parts: &[PartId],
    ) -> Result<(), StoreError> {
        let opts = SignedUrlOptions::default()
            .with_query([("uploadId", upload_id)])
            .with_signed_header(
                HeaderName::from_static("if-none-match"),
                HeaderValue::from_static("*"),
            );
        let url = self
            .s3
            .signed_url_opts(Method::POST, key, Duration::from_secs(300), &opts)
            .await
            .map_err(os_err)?;
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, p) in parts.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                xml_text(&p.content_id)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let resp = self
            .http
            .post(url.as_str())
            .timeout(self.request_timeout)
            .header("if-none-match", "*")
            .body(xml)
            .send()
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?;
        // S3 may report a failed completion in a 200 body.
        if status.as_u16() == 412 || text.contains("<Code>PreconditionFailed</Code>") {
            return Err(StoreError::DestinationExists);
        }
        if !status.is_success() || text.contains("<Error>") {
            let snippet: String = text.chars().take(300).collect();
            return Err(StoreError::Io(io::Error::other(format!(
                "CompleteMultipartUpload answered {status}: {snippet}"
            ))));
        }
        Ok(())
    }
}
