//! The `[storage] backend = "azure"` table (plain data; the Azure flavour of the object store
//! in `store/object/azure.rs` builds itself from it).

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::s3::{default_max_retries, default_request_timeout, default_retry_timeout};

/// The `[storage] backend = "azure"` table.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// The storage account name.
    pub account: String,
    pub container: String,
    /// Blob name prefix for the session blobs (whole path segments, e.g. `bits`).
    #[serde(default)]
    pub prefix: String,
    /// The account's shared key (base64). One of `access_key`, `sas_token` and
    /// `use_azure_identity`.
    #[serde(default)]
    pub access_key: Option<String>,
    /// A SAS token (`sv=…&sig=…`, with or without a leading `?`) granting read, add, create,
    /// write, delete and list on the container.
    #[serde(default)]
    pub sas_token: Option<String>,
    /// Take credentials from the environment: workload identity (`AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`), a service principal
    /// (`AZURE_CLIENT_SECRET`) or the VM's managed identity.
    #[serde(default)]
    pub use_azure_identity: bool,
    /// e.g. `http://127.0.0.1:10000/devstoreaccount1` (Azurite, path-style); absent:
    /// `https://<account>.blob.core.windows.net`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// One request to the store, from connecting to the end of its response body.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a failed request is retried (with backoff) before the BITS client gets 500.
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// Retries of a failed request at most (0: none).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("AzureConfig")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field("access_key", &redacted(&self.access_key))
            .field("sas_token", &redacted(&self.sas_token))
            .field("use_azure_identity", &self.use_azure_identity)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("request_timeout", &self.request_timeout)
            .field("retry_timeout", &self.retry_timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl AzureConfig {
    /// What `check-config` refuses: no or several credential sources, an empty account or
    /// container, a key that is not base64, a plain-HTTP endpoint without `allow_http`.
    pub fn check(&self) -> Result<(), String> {
        if self.account.is_empty() {
            return Err("account is empty".into());
        }
        // Azure's container naming rules: 3-63 characters, lowercase letters, digits and
        // single hyphens, starting and ending with a letter or digit.
        let c = &self.container;
        let ok = (3..=63).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.starts_with('-')
            && !c.ends_with('-')
            && !c.contains("--");
        if !ok {
            return Err(format!(
                "container {c:?} is not a valid container name (3-63 lowercase letters, digits and single hyphens)"
            ));
        }
        let sources = [
            self.access_key.is_some(),
            self.sas_token.is_some(),
            self.use_azure_identity,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            return Err(
                "set exactly one of access_key, sas_token and use_azure_identity = true".into(),
            );
        }
        if let Some(key) = &self.access_key {
            if base64::engine::general_purpose::STANDARD
                .decode(key)
                .is_err()
            {
                return Err(
                    "access_key is not base64 (the account key as the portal shows it)".into(),
                );
            }
        }
        if let Some(sas) = &self.sas_token {
            if !sas.contains("sig=") {
                return Err("sas_token has no sig= (paste the whole token)".into());
            }
        }
        if let Some(endpoint) = self.endpoint.as_deref().filter(|e| !e.is_empty()) {
            let url =
                url::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
            match url.scheme() {
                "https" => {}
                "http" if self.allow_http => {}
                "http" => {
                    return Err(format!(
                    "endpoint {endpoint:?} is plain http: set allow_http = true (emulators only)"
                ))
                }
                other => {
                    return Err(format!(
                        "endpoint {endpoint:?}: scheme {other} is not http(s)"
                    ))
                }
            }
        }
        Ok(())
    }
}
