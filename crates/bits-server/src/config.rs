//! Server and virtual-directory configuration. Every knob has a default, so an empty config runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// IIS's default `BITSSessionTimeout`: 14 days.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(1_209_600);

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Where session metadata and partial uploads live. Never inside a vdir root.
    pub spool_dir: PathBuf,
    /// How often expired sessions and old tombstones are swept (IIS: every 12 hours).
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// How long a closed or cancelled session id keeps answering a repeated Close/Cancel with 200.
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// `true` (default): data and metadata are on stable storage before a fragment is acknowledged.
    /// `false` is UNSAFE: a crash or power loss can lose acknowledged bytes.
    pub fsync: bool,
    /// A client must send a complete request head within this time (slow-loris defence).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Total size of a request's header names and values; larger heads get 431 (BITS custom
    /// headers are limited to 16 KiB by the client).
    pub max_header_bytes: usize,
    /// A request body that delivers no bytes for this long is abandoned.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// How long a request waits for another request of the same session to finish (then 503).
    #[serde(with = "humantime_serde")]
    pub session_lock_timeout: Duration,
    /// After SIGINT/SIGTERM, in-flight requests get this long to finish before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Unread request bodies up to this size are drained after an error Ack so the connection
    /// stays usable; larger ones close the connection.
    pub drain_limit: u64,
    /// Create-Session is refused with 503 while this many sessions are open.
    pub max_open_sessions: u64,
    /// Open sessions per authenticated identity (IIS `BITSNumberOfSessionsLimit`); anonymous
    /// sessions count only against `max_open_sessions`. Absent: no per-identity limit.
    pub max_sessions_per_identity: Option<u64>,
    /// The HTTPS listener; absent: plain HTTP only.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Serve plain HTTP on `listen` (turn off to offer HTTPS only).
    pub http_enabled: bool,
    /// Open connections at most; beyond it new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Requests per second allowed from one client IP (token bucket); absent: unlimited.
    pub rate_limit_per_ip: Option<u32>,
    /// Burst size of the per-IP rate limit.
    pub rate_limit_burst: u32,
    /// Bytes of unfinished uploads one authenticated identity may hold in the spool.
    pub max_spool_bytes_per_identity: Option<u64>,
    /// Scheme and authority clients use to reach this server (e.g. behind a TLS proxy),
    /// for reply URLs. Default: `http://` + the request's Host header.
    pub public_url: Option<String>,
    /// Bytes of unfinished uploads the spool may hold; beyond it fragments get the disk-full Ack.
    pub spool_quota: Option<u64>,
    /// Where sessions and uploads live: the local file system (default) or S3-compatible
    /// object storage shared by a farm of nodes.
    pub storage: StorageConfig,
    /// The admin listener (metrics, health, session administration); off by default.
    pub admin: AdminConfig,
    #[serde(rename = "vdir")]
    pub vdirs: Vec<VdirConfig>,
    /// Bytes of fragment bodies the file system store may hold in memory at once, across all
    /// requests. A write gathers up to 1 MiB before one positioned write; when this budget is
    /// spent it writes what it has at once instead, so stalled clients cannot pin memory.
    pub max_buffered_body_bytes: u64,
}

/// The `[storage]` table: `backend = "fs"` (default) or `backend = "s3"` with the S3 keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum StorageConfig {
    /// `spool_dir` for sessions, each vdir's `root` directory for uploads.
    #[default]
    Fs,
    /// Sessions under the bucket's `prefix`, uploads under each vdir's `root` used as a key prefix.
    S3(crate::store::s3::S3Config),
}

/// The `[admin]` table: a second HTTP listener for operators (`/metrics`, `/healthz`,
/// `/readyz`, `/admin/...`). It can list and cancel every session, so keep it on loopback (or
/// a management network) and set a `token` whenever anyone but root can reach it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9180`; absent (default): no listener.
    pub listen: Option<SocketAddr>,
    /// When set, every admin route except `/healthz` requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            spool_dir: PathBuf::from("bits-data/spool"),
            cleanup_interval: Duration::from_secs(12 * 3600),
            tombstone_ttl: DEFAULT_SESSION_TIMEOUT,
            fsync: true,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 << 10,
            body_idle_timeout: Duration::from_secs(120),
            session_lock_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            drain_limit: 64 << 20,
            max_open_sessions: 100_000,
            max_sessions_per_identity: Some(50),
            spool_quota: None,
            public_url: None,
            tls: None,
            http_enabled: true,
            max_connections: 10_000,
            rate_limit_per_ip: None,
            rate_limit_burst: 50,
            max_spool_bytes_per_identity: None,
            storage: StorageConfig::Fs,
            admin: AdminConfig::default(),
            vdirs: vec![VdirConfig::default()],
            max_buffered_body_bytes: 64 << 20,
        }
    }
}

/// Status of the Ack when the destination already exists and overwrites are off (spec §17 item 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    /// 403 + E_ACCESSDENIED, as [MC-BUP] says: permanent for the client.
    #[default]
    Forbidden,
    /// 409 Conflict, as the Win32 docs say: the client treats it as transient and retries.
    Conflict,
}

impl ConflictStatus {
    pub const fn status(self) -> u16 {
        match self {
            ConflictStatus::Forbidden => 403,
            ConflictStatus::Conflict => 409,
        }
    }
}

/// One upload virtual directory: a URL prefix mapped onto a storage root.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VdirConfig {
    /// URL path prefix, e.g. `/upload/`. Always starts and ends with `/`.
    pub prefix: String,
    /// Directory that completed uploads are published into.
    pub root: PathBuf,
    /// `BITSUploadEnabled`. Turning it off deletes the vdir's sessions at the next start.
    pub upload_enabled: bool,
    /// Answer GET/HEAD for published files (never for uploads in progress), as IIS does.
    pub download_enabled: bool,
    /// `BITSMaximumUploadSize` in bytes; absent means unlimited.
    pub max_upload_size: Option<u64>,
    /// `BITSSessionTimeout`: a session with no successful request for this long is deleted.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `BITSAllowOverwrites`.
    pub allow_overwrites: bool,
    pub conflict_status: ConflictStatus,
    /// Largest fragment body accepted in one request; larger ones get 413 so the client shrinks.
    pub max_fragment_size: u64,
    /// Who may use this vdir: `anonymous`, `basic` (needs `users_file`) or `client_cert`.
    pub auth: crate::auth::AuthMode,
    /// Lines `name:$argon2id$...`, as written by `bitsd passwd`.
    pub users_file: Option<PathBuf>,
    /// Refuse requests that did not come over TLS (403).
    pub require_tls: bool,
    /// `BITSHostId`: this node's own reachable name, sent as `BITS-Host-Id` so the client keeps
    /// talking to this node (farms without shared storage).
    pub host_id: Option<String>,
    /// `BITSHostIdFallbackTimeout` in seconds (IIS default: one day).
    pub host_id_fallback_timeout: u32,
    /// `BITSServerNotificationType`: tell a server application about each completed upload
    /// (upload-reply jobs get its answer as their reply).
    pub notification_type: NotificationType,
    /// `BITSServerNotificationURL`: absolute `http://` URL, or relative to the upload URL's
    /// directory on this server. The upload URL's query string is appended.
    pub notification_url: Option<String>,
    /// How long the server application may take to answer (IIS: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub notification_timeout: Duration,
    /// Event hooks (webhook and/or command) for this vdir's sessions: `[vdir.hooks]`.
    pub hooks: crate::hooks::HooksConfig,
}

/// `BITSServerNotificationType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationType {
    /// 0: the upload is published at its destination; no reply.
    #[default]
    None,
    /// 1: the application gets the paths of the upload and of the reply file to write.
    ByReference,
    /// 2: the application gets the upload as the request body and answers with the reply.
    ByValue,
}

impl VdirConfig {
    /// The storage root for `identity`: `root` with `{user}` replaced by the identity, which
    /// must then be a safe single path segment. `None` when the root is per-user and the caller
    /// is anonymous or has an unusable name.
    pub fn root_for(&self, identity: Option<&str>) -> Option<PathBuf> {
        let template = self.root.to_string_lossy();
        if !template.contains("{user}") {
            return Some(self.root.clone());
        }
        let user = identity.filter(|u| crate::target::is_safe_segment(u))?;
        Some(PathBuf::from(template.replace("{user}", user)))
    }
}

impl Default for VdirConfig {
    fn default() -> Self {
        VdirConfig {
            prefix: "/upload/".into(),
            root: PathBuf::from("bits-data/uploads"),
            upload_enabled: true,
            download_enabled: true,
            max_upload_size: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            allow_overwrites: false,
            conflict_status: ConflictStatus::default(),
            max_fragment_size: 32 << 20,
            auth: crate::auth::AuthMode::Anonymous,
            users_file: None,
            require_tls: false,
            host_id: None,
            host_id_fallback_timeout: 86_400,
            notification_type: NotificationType::None,
            notification_url: None,
            notification_timeout: Duration::from_secs(300),
            hooks: crate::hooks::HooksConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Vdir errors carry the index in the `[[vdir]]` list and the prefix, so the message names
    // the key as written: `vdir[1].max_fragment_size`.
    #[error(
        "vdir[{0}].prefix = {1:?}: must start and end with '/' and contain no '..', '%' or '\\'"
    )]
    BadPrefix(usize, String),
    #[error("vdir[{0}].prefix = {1:?}: configured twice (prefixes match case-insensitively)")]
    DuplicatePrefix(usize, String),
    #[error("vdir[{0}].max_fragment_size (prefix {1:?}): must be at least 1")]
    ZeroFragmentSize(usize, String),
    #[error("vdir[{0}].{1}")]
    BadHooks(usize, crate::hooks::HookConfigError),
    #[error("spool_dir {spool:?} and vdir[{index}].root {root:?} must not contain one another")]
    SpoolOverlapsRoot {
        index: usize,
        spool: PathBuf,
        root: PathBuf,
    },
    #[error("cleanup_interval must be at least 1s")]
    CleanupInterval,
    #[error("vdir[{0}].notification_url (prefix {1:?}): required when notification_type is set")]
    MissingNotificationUrl(usize, String),
    #[error("vdir[{0}].notification_url (prefix {1:?}): must be an http:// URL or a relative path, at most 2200 characters")]
    BadNotificationUrl(usize, String),
    #[error("vdir[{0}].host_id (prefix {1:?}): must be a host name or IP literal of at most 300 characters")]
    BadHostId(usize, String),
    #[error("vdir[{0}] (prefix {1:?}): with [storage] backend = \"s3\", set download_enabled = false and do not use notification_type = \"by_reference\" (published files are not yet served from object storage; by-reference needs local paths)")]
    UnsupportedOnS3(usize, String),
    #[error("public_url {0:?}: must look like http://host[:port] or https://host[:port], without a path")]
    BadPublicUrl(String),
    #[error("admin.token: must be non-empty visible ASCII (it is sent as `Authorization: Bearer <token>`)")]
    BadAdminToken,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cleanup_interval < Duration::from_secs(1) {
            return Err(ConfigError::CleanupInterval);
        }
        if let Some(token) = &self.admin.token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::BadAdminToken);
            }
        }
        if let Some(url) = &self.public_url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err(ConfigError::BadPublicUrl(url.clone()));
            }
        }
        let spool = normalize(&self.spool_dir);
        for (i, v) in self.vdirs.iter().enumerate() {
            let p = &v.prefix;
            if !p.starts_with('/')
                || !p.ends_with('/')
                || p.contains("..")
                || p.contains('%')
                || p.contains('\\')
            {
                return Err(ConfigError::BadPrefix(i, p.clone()));
            }
            if self.vdirs[..i]
                .iter()
                .any(|o| o.prefix.eq_ignore_ascii_case(p))
            {
                return Err(ConfigError::DuplicatePrefix(i, p.clone()));
            }
            match (&v.notification_type, &v.notification_url) {
                (NotificationType::None, _) => {}
                (_, None) => return Err(ConfigError::MissingNotificationUrl(i, p.clone())),
                (_, Some(url)) => {
                    let lower = url.to_ascii_lowercase();
                    if url.len() > 2200
                        || lower.starts_with("https://")
                        || (lower.contains("://") && !lower.starts_with("http://"))
                    {
                        return Err(ConfigError::BadNotificationUrl(i, p.clone()));
                    }
                }
            }
            if let Some(h) = &v.host_id {
                let ok = !h.is_empty()
                    && h.len() <= 300
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    });
                if !ok {
                    return Err(ConfigError::BadHostId(i, p.clone()));
                }
            }
            if matches!(self.storage, StorageConfig::S3(_))
                && (v.download_enabled || v.notification_type == NotificationType::ByReference)
            {
                return Err(ConfigError::UnsupportedOnS3(i, p.clone()));
            }
            if v.max_fragment_size == 0 {
                return Err(ConfigError::ZeroFragmentSize(i, p.clone()));
            }
            v.hooks
                .validate()
                .map_err(|e| ConfigError::BadHooks(i, e))?;
            let root = normalize(&v.root);
            if root.starts_with(&spool) || spool.starts_with(&root) {
                return Err(ConfigError::SpoolOverlapsRoot {
                    index: i,
                    spool: self.spool_dir.clone(),
                    root: v.root.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Absolute, lexically normalised path (no file system access, so it works before dirs exist).
fn normalize(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_valid_default() {
        let c: ServerConfig = toml::from_str("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.vdirs.len(), 1);
        assert_eq!(c.vdirs[0].prefix, "/upload/");
    }

    #[test]
    fn parses_full_config() {
        let c: ServerConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            spool_dir = "/tmp/x/spool"
            cleanup_interval = "1s"
            [[vdir]]
            prefix = "/logs/"
            root = "/tmp/x/logs"
            session_timeout = "2s"
            max_upload_size = 1000
            allow_overwrites = true
            conflict_status = "conflict"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.vdirs[0].session_timeout, Duration::from_secs(2));
        assert_eq!(c.vdirs[0].conflict_status.status(), 409);
    }

    #[test]
    fn rejects_overlap_and_bad_prefix() {
        let mut c = ServerConfig::default();
        c.vdirs[0].root = c.spool_dir.join("x");
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SpoolOverlapsRoot { .. })
        ));
        let mut c = ServerConfig::default();
        c.vdirs[0].prefix = "upload".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadPrefix(..))));
        assert!(toml::from_str::<ServerConfig>("bogus = 1").is_err());
    }
}
