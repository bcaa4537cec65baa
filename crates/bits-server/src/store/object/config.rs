//! The `[storage] backend = "s3"` table.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the object-storage backend keeps its objects.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:8333`; `None` or empty for the AWS regional endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix for the session objects (whole path segments, e.g. `bits` or `bits/`).
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// One request to the store, from connecting to the end of its response body. Fragments
    /// are stored as objects of at most `max_fragment_size`, so this bounds a slow store, not
    /// a large upload.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a failed request is retried (with backoff) before the BITS client gets 500:
    /// keep it below the clients' own patience, and below 5 minutes (signed requests expire).
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// Retries of a failed request at most (0: none).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
}

pub(super) fn default_region() -> String {
    "us-east-1".into()
}

pub(super) fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn default_retry_timeout() -> Duration {
    Duration::from_secs(60)
}

pub(super) fn default_max_retries() -> usize {
    5
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .field("request_timeout", &self.request_timeout)
            .field("retry_timeout", &self.retry_timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}
