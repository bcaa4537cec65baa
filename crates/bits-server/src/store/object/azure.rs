//! The Azure Blob Storage flavour of the object-storage backend (`[storage] backend =
//! "azure"`, checked against Azurite): the session's upload is the destination blob's
//! uncommitted blocks. A part is a `Put Block` of any size (no 5 MiB minimum: every fragment
//! that starts where the chain of parts ends goes straight into a block), its block id derived
//! from the session and the bytes it holds (`<session><offset><len>`, 64 hex digits, so a
//! retried part reuses its id), and completion is one `Put Block List` naming them in order,
//! with `If-None-Match: *` unless overwrites are allowed: constant time, no byte read back.
//!
//! object_store's `MicrosoftAzure` does the rest (records with ETag conditions, listing,
//! ranged reads, deletes). It does not expose block ids or a conditional block list, so those
//! two requests are presigned by it (a service SAS from the account key, or from a user
//! delegation key with an Azure identity) or carry the configured SAS token, and are sent
//! here (docs/decisions.md).
//!
//! Limits: 50 000 committed blocks per blob (the shared logic stops at 10 000 parts, as on
//! S3), uncommitted blocks are discarded after 7 days, and committing a block list discards
//! every other uncommitted block of that blob, so two sessions uploading to one destination
//! at once on a vdir that allows overwrites can make the later one fail at completion (it
//! never publishes bytes it was not sent).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bits_proto::SessionId;
use object_store::azure::{AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{BackoffConfig, ClientOptions, PutPayload, RetryConfig};

use super::flavor::{xml_text, Built, Flavor, PartRequest};
use super::os_err;
use super::s3::presigned_client;
use crate::store::StoreError;

pub use crate::config::azure::AzureConfig;

/// The configured SAS token's query pairs, without a leading `?`.
fn sas_pairs(cfg: &AzureConfig) -> Option<String> {
    cfg.sas_token
        .as_deref()
        .map(|t| t.trim().trim_start_matches('?').to_string())
}

pub(super) struct AzureFlavor {
    azure: Arc<MicrosoftAzure>,
    /// The account and its key, when the configuration gives one: the SAS of the requests
    /// sent here is made with it (see [`service_sas`]).
    key: Option<(String, Vec<u8>)>,
    /// The configured SAS token: appended to the requests sent here instead of a SAS made
    /// by object_store.
    sas: Option<String>,
    /// `<endpoint>/<container>`, for the URLs of those requests.
    base: reqwest_s3::Url,
    http: reqwest_s3::Client,
    request_timeout: Duration,
}

/// Metadata names are C# identifiers on Azure: no hyphen.
pub(super) const AZURE_SESSION_TAG: &str = "bits_session";

impl AzureFlavor {
    /// Builds the client (no request is made).
    pub(super) fn build(cfg: &AzureConfig) -> Result<Built, StoreError> {
        let invalid = |e: String| StoreError::Io(io::Error::new(io::ErrorKind::InvalidInput, e));
        cfg.check().map_err(invalid)?;
        crate::tls::install_crypto_provider();
        let mut builder = if cfg.use_azure_identity {
            MicrosoftAzureBuilder::from_env()
        } else {
            MicrosoftAzureBuilder::new()
        };
        builder = builder
            .with_account(&cfg.account)
            .with_container_name(&cfg.container)
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
        if let Some(key) = &cfg.access_key {
            builder = builder.with_access_key(key);
        }
        if let Some(sas) = sas_pairs(cfg) {
            builder = builder.with_config(AzureConfigKey::SasKey, sas);
        }
        let endpoint = cfg
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", cfg.account));
        builder = builder.with_endpoint(endpoint.clone());
        let azure = Arc::new(builder.build().map_err(|e| invalid(e.to_string()))?);
        let mut base = reqwest_s3::Url::parse(&endpoint).map_err(|e| invalid(e.to_string()))?;
        base.path_segments_mut()
            .map_err(|_| invalid(format!("endpoint {endpoint:?} cannot have a path")))?
            .pop_if_empty()
            .push(&cfg.container);
        let key = match &cfg.access_key {
            Some(k) => Some((
                cfg.account.clone(),
                base64::engine::general_purpose::STANDARD
                    .decode(k)
                    .map_err(|e| invalid(e.to_string()))?,
            )),
            None => None,
        };
        let flavor = AzureFlavor {
            azure: azure.clone(),
            key,
            sas: sas_pairs(cfg),
            base,
            http: presigned_client(cfg.request_timeout)?,
            request_timeout: cfg.request_timeout,
        };
        Ok((azure, Arc::new(flavor)))
    }

    /// The blob's URL with a SAS allowing writes (`Put Block`, `Put Block List`), valid for
    /// `valid`.
    async fn writable_url(
        &self,
        key: &Path,
        valid: Duration,
    ) -> Result<reqwest_s3::Url, StoreError> {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(key.parts());
        }
        if let Some(sas) = &self.sas {
            url.set_query(Some(sas));
            return Ok(url);
        }
        if let Some((account, secret)) = &self.key {
            let container = self.base.path_segments().and_then(|mut s| s.next_back());
            let resource = format!(
                "/blob/{account}/{}/{}",
                container.unwrap_or_default(),
                key.as_ref()
            );
            url.set_query(Some(&service_sas(secret, &resource, valid)));
            return Ok(url);
        }
        // An Azure identity: object_store signs with a user delegation key. It signs the
        // percent-encoded path where Azure expects the name, so names that need encoding are
        // refused here rather than failing with 403.
        if url.path() != format!("{}/{}", self.base.path(), key.as_ref()) {
            return Err(StoreError::Unsupported(
                "names with characters that URLs encode (spaces, non-ASCII) with use_azure_identity: use access_key or sas_token",
            ));
        }
        let url = self
            .azure
            .signed_url(Method::PUT, key, valid)
            .await
            .map_err(os_err)?;
        reqwest_s3::Url::parse(url.as_str())
            .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))
    }

    async fn block_url(
        &self,
        key: &Path,
        content_id: &str,
        valid: Duration,
    ) -> Result<reqwest_s3::Url, StoreError> {
        let mut url = self.writable_url(key, valid).await?;
        url.query_pairs_mut()
            .append_pair("comp", "block")
            .append_pair("blockid", &block_id(content_id));
        Ok(url)
    }
}

/// The signed version of the SAS made here (the one object_store uses for its own).
const SAS_VERSION: &str = "2023-11-03";

/// A service SAS (`sr=b`, write permission) for `resource` (`/blob/<account>/<container>/<blob
/// name>`), valid from a minute ago (clock skew) for `valid`: the query string.
///
/// Made here rather than by object_store's `Signer`, which signs the percent-encoded URL path
/// where Azure signs the blob name as it is: with it, a name with a space or a non-ASCII
/// character gets 403. The string to sign is object_store's, with the name unencoded
/// (<https://learn.microsoft.com/en-us/rest/api/storageservices/create-service-sas>).
fn service_sas(key: &[u8], resource: &str, valid: Duration) -> String {
    use hmac::{Hmac, Mac};
    let now = std::time::SystemTime::now();
    let start = iso8601(now - Duration::from_secs(60));
    let expiry = iso8601(now + valid);
    let to_sign = format!("w\n{start}\n{expiry}\n{resource}\n\n\n\n{SAS_VERSION}\nb\n\n\n\n\n\n\n");
    let sig = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(to_sign.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length.
        Err(_) => String::new(),
    };
    let mut query = reqwest_s3::Url::parse("http://x/").map_or_else(
        |_| String::new(),
        |mut u| {
            u.query_pairs_mut()
                .append_pair("sv", SAS_VERSION)
                .append_pair("sp", "w")
                .append_pair("st", &start)
                .append_pair("se", &expiry)
                .append_pair("sr", "b")
                .append_pair("sig", &sig);
            u.query().unwrap_or_default().to_string()
        },
    );
    query.shrink_to_fit();
    query
}

/// `YYYY-MM-DDThh:mm:ssZ` (UTC).
fn iso8601(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => "1970-01-01T00:00:00Z".into(),
    }
}

/// The content of a part's block id: the session and the bytes it holds, 64 hex digits (the
/// most Azure allows, and the same length for every block of a blob, as it requires).
pub(super) fn content_id(session: SessionId, offset: u64, len: u64) -> String {
    format!(
        "{:032x}{offset:016x}{len:016x}",
        session.as_uuid().as_u128()
    )
}

fn block_id(content_id: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(content_id)
}

/// A failed answer as an error, with the start of its body.
async fn failed(what: &str, resp: reqwest_s3::Response) -> StoreError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let snippet: String = text.chars().take(300).collect();
    StoreError::Io(io::Error::other(format!(
        "{what} answered {status}: {snippet}"
    )))
}

fn send_err(e: reqwest_s3::Error) -> StoreError {
    StoreError::Io(io::Error::other(e))
}

#[async_trait]
impl Flavor for AzureFlavor {
    fn min_part(&self) -> u64 {
        1
    }

    fn session_tag(&self) -> &'static str {
        AZURE_SESSION_TAG
    }

    fn backend(&self) -> &'static str {
        "azure"
    }

    fn answer_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Blocks need nothing created first; the session tag is set by the block list.
    async fn create_upload(&self, _key: &Path, _session: SessionId) -> Result<String, StoreError> {
        Ok(String::new())
    }

    async fn put_part(
        &self,
        key: &Path,
        _upload_id: &str,
        session: SessionId,
        _number: usize,
        offset: u64,
        data: PutPayload,
    ) -> Result<String, StoreError> {
        let len = data.content_length() as u64;
        let id = content_id(session, offset, len);
        let url = self.block_url(key, &id, Duration::from_secs(3600)).await?;
        let body: bytes::Bytes = data.into_iter().collect::<Vec<_>>().concat().into();
        let resp = self
            .http
            .put(url.as_str())
            .timeout(self.request_timeout)
            .header(reqwest_s3::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(send_err)?;
        if !resp.status().is_success() {
            return Err(failed("Put Block", resp).await);
        }
        Ok(id)
    }

    async fn part_request(
        &self,
        key: &Path,
        _upload_id: &str,
        session: SessionId,
        _number: usize,
        offset: u64,
        len: u64,
    ) -> Result<PartRequest, StoreError> {
        let id = content_id(session, offset, len);
        // Valid long enough for the slowest body the frontend lets through one part.
        let url = self
            .block_url(key, &id, Duration::from_secs(7 * 24 * 3600))
            .await?;
        Ok(PartRequest {
            request: self.http.put(url.as_str()),
            content_id: Some(id),
        })
    }

    async fn complete(
        &self,
        key: &Path,
        _upload_id: &str,
        session: SessionId,
        parts: &[PartId],
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let mut url = self.writable_url(key, Duration::from_secs(300)).await?;
        url.query_pairs_mut().append_pair("comp", "blocklist");
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for p in parts {
            xml.push_str("<Latest>");
            xml.push_str(&xml_text(&block_id(&p.content_id)));
            xml.push_str("</Latest>");
        }
        xml.push_str("</BlockList>");
        let mut request = self
            .http
            .put(url.as_str())
            .timeout(self.request_timeout)
            .header(
                format!("x-ms-meta-{AZURE_SESSION_TAG}"),
                session.as_uuid().hyphenated().to_string(),
            )
            .header(reqwest_s3::header::CONTENT_TYPE, "application/xml")
            .body(xml);
        if !overwrite {
            request = request.header(reqwest_s3::header::IF_NONE_MATCH, "*");
        }
        let resp = request.send().await.map_err(send_err)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            409 | 412 => Err(StoreError::DestinationExists),
            _ => Err(failed("Put Block List", resp).await),
        }
    }

    /// Uncommitted blocks cannot be deleted: Azure discards them after 7 days, or when the
    /// blob's next block list is committed.
    async fn abort(&self, _key: &Path, _upload_id: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::s3::{default_request_timeout, default_retry_timeout};

    fn cfg() -> AzureConfig {
        AzureConfig {
            account: "devstoreaccount1".into(),
            container: "bits".into(),
            prefix: String::new(),
            access_key: Some("a2V5".into()),
            sas_token: None,
            use_azure_identity: false,
            endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            allow_http: true,
            request_timeout: default_request_timeout(),
            retry_timeout: default_retry_timeout(),
            max_retries: 0,
        }
    }

    #[test]
    fn block_ids_are_equal_length_and_derived_from_the_bytes() {
        let s = SessionId::random();
        let a = content_id(s, 0, 10);
        let b = content_id(s, u64::MAX, u64::MAX);
        assert_eq!(a.len(), 64);
        assert_eq!(b.len(), 64);
        assert_eq!(a, content_id(s, 0, 10));
        assert_ne!(a, content_id(s, 0, 11));
        assert_ne!(a, content_id(SessionId::random(), 0, 10));
    }

    #[test]
    fn config_needs_one_credential_source_and_a_valid_container() {
        assert!(cfg().check().is_ok());
        let mut two = cfg();
        two.sas_token = Some("sv=1&sig=x".into());
        assert!(two.check().is_err());
        let mut none = cfg();
        none.access_key = None;
        assert!(none.check().is_err());
        let mut sas = none.clone();
        sas.sas_token = Some("?sv=1&sig=x".into());
        assert!(sas.check().is_ok());
        let mut identity = none.clone();
        identity.use_azure_identity = true;
        assert!(identity.check().is_ok());
        for bad in ["ab", "Bits", "a--b", "-ab", "a_b"] {
            let mut c = cfg();
            c.container = bad.into();
            assert!(c.check().is_err(), "{bad}");
        }
        let mut plain = cfg();
        plain.allow_http = false;
        assert!(plain.check().is_err());
        let mut key = cfg();
        key.access_key = Some("not base64!".into());
        assert!(key.check().is_err());
    }
}
