//! Validation of a loaded config: every rule `check-config` and `serve` apply before anything
//! starts (limits, vdir prefixes and roots, overlaps between vdirs and with the spool or the
//! object store's session prefix, auth settings, hooks), and the warnings about settings that
//! are allowed but leave something unusable.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Vdir errors carry the index in the `[[vdir]]` list and the prefix, so the message names
    // the key as written: `vdir[1].max_fragment_size`.
    #[error(
        "vdir[{0}].prefix = {1:?}: must start and end with '/' and contain no '..', '%' or '\\'"
    )]
    BadPrefix(usize, String),
    #[error("vdir[{0}].prefix = {1:?}: configured twice (prefixes match segment by segment, case-insensitively)")]
    DuplicatePrefix(usize, String),
    #[error("vdir[{0}].max_fragment_size (prefix {1:?}): must be at least 1")]
    ZeroFragmentSize(usize, String),
    #[error("vdir[{0}].{1}")]
    BadHooks(usize, hooks::HookConfigError),
    #[error("spool_dir {spool:?} and vdir[{index}].root {root:?} must not contain one another")]
    SpoolOverlapsRoot {
        index: usize,
        spool: PathBuf,
        root: PathBuf,
    },
    #[error("capture_dir {capture:?} must not be inside vdir[{index}].root {root:?}: captures would be served")]
    CaptureInsideRoot {
        index: usize,
        capture: PathBuf,
        root: PathBuf,
    },
    #[error("cleanup_interval must be at least 1s")]
    CleanupInterval,
    #[error("vdir[{0}].notification_url (prefix {1:?}): required when notification_type is set")]
    MissingNotificationUrl(usize, String),
    #[error("vdir[{0}].notification_url (prefix {1:?}): must be an http:// URL or a relative path, at most {max} characters", max = bits_proto::MAX_URL_CHARS)]
    BadNotificationUrl(usize, String),
    #[error("vdir[{0}].host_id (prefix {1:?}): must be a host name or IP literal of at most 300 characters")]
    BadHostId(usize, String),
    #[error("vdir[{0}] (prefix {1:?}): notification_type = \"by_reference\" is not supported with [storage] backend = \"{2}\": it hands the server application local file paths (BITS-Request-DataFile-Name, BITS-Response-DataFile-Name), and object storage has none; use notification_type = \"by_value\"")]
    UnsupportedOnS3(usize, String, &'static str),
    #[error("[storage] backend = \"azure\": {0}")]
    BadAzure(String),
    #[error("public_url {0:?}: must look like http://host[:port] or https://host[:port], without a path")]
    BadPublicUrl(String),
    #[error("vdir[{a}].root {root_a:?} and vdir[{b}].root {root_b:?} overlap, but the vdirs differ in who may use them (auth, users_file, ntlm_domain, keytab, service_principal, kerberos_realms, require_tls or download_enabled): files would cross between them")]
    RootsOverlap {
        a: usize,
        root_a: PathBuf,
        b: usize,
        root_b: PathBuf,
    },
    #[error("vdir[{index}].root {root:?} overlaps the session objects under [storage] prefix {prefix:?} (compared segment by segment)")]
    RootOverlapsS3Sessions {
        index: usize,
        root: String,
        prefix: String,
    },
    #[error("vdir[{0}].notification_url (prefix {1:?}): a relative URL needs notification_base (the application's http://host:port); bitsd itself serves no application")]
    RelativeNotificationWithoutBase(usize, String),
    #[error("vdir[{0}].notification_base (prefix {1:?}): must look like http://host[:port], without a path")]
    BadNotificationBase(usize, String),
    #[error(
        "vdir[{0}].root {1:?}: `..` is not a segment of an object key ([storage] backend = \"{2}\")"
    )]
    DotDotInS3Root(usize, PathBuf, &'static str),
    #[error("max_tombstones must be at least 1")]
    ZeroTombstones,
    #[error("{0} = 0: must be at least 1 ({1}: it cannot be switched off; 0 means \"no limit\" only for limits that can)")]
    ZeroBound(&'static str, &'static str),
    #[error("vdir[{0}].session_timeout (prefix {1:?}): must be at least 1s, or every session expires before its next fragment")]
    ZeroSessionTimeout(usize, String),
    #[error("vdir[{0}].notification_timeout (prefix {1:?}): must be at least 1s, or every notification times out and no upload completes")]
    ZeroNotificationTimeout(usize, String),
    #[error("admin.token: must be non-empty visible ASCII (it is sent as `Authorization: Bearer <token>`)")]
    BadAdminToken,
    #[error("admin.token: the admin listener on {0} is not on a loopback address, so it needs a token of at least {min} characters (it can list and cancel every session)", min = MIN_ADMIN_TOKEN_CHARS)]
    AdminTokenNeeded(SocketAddr),
}

impl ServerConfig {
    /// What is allowed but weak, for `check-config` to print and `serve` to log. Assumes a
    /// config that passed [`validate`](Self::validate).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        if let Some(listen) = self.admin.listen {
            match &self.admin.token {
                None => warnings.push(ConfigWarning::AdminWithoutToken(listen)),
                Some(t) if t.len() < MIN_ADMIN_TOKEN_CHARS => {
                    warnings.push(ConfigWarning::ShortAdminToken(listen))
                }
                Some(_) => {}
            }
        }
        if !self.http_enabled && self.tls.is_none() {
            warnings.push(ConfigWarning::NoListener);
        }
        for (i, v) in self.vdirs.iter().enumerate() {
            let p = || v.prefix.clone();
            if !v.upload_enabled && !v.download_enabled {
                warnings.push(ConfigWarning::VdirServesNothing(i, p()));
            }
            if v.require_tls && self.tls.is_none() {
                warnings.push(ConfigWarning::RequireTlsWithoutTls(i, p()));
            }
            let no_ca = self.tls.as_ref().is_none_or(|t| t.client_ca.is_none());
            if v.auth == AuthMode::ClientCert && no_ca {
                warnings.push(ConfigWarning::ClientCertWithoutCa(i, p()));
            }
        }
        warnings
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let StorageConfig::Azure(azure) = &self.storage {
            azure.check().map_err(ConfigError::BadAzure)?;
        }
        if self.cleanup_interval < Duration::from_secs(1) {
            return Err(ConfigError::CleanupInterval);
        }
        if let Some(token) = &self.admin.token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::BadAdminToken);
            }
        }
        if let Some(listen) = self.admin.listen {
            let strong = self
                .admin
                .token
                .as_ref()
                .is_some_and(|t| t.len() >= MIN_ADMIN_TOKEN_CHARS);
            if !self.admin.on_loopback() && !strong {
                return Err(ConfigError::AdminTokenNeeded(listen));
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
                .any(|o| crate::prefix::same_prefix(&o.prefix, p))
            {
                return Err(ConfigError::DuplicatePrefix(i, p.clone()));
            }
            match (&v.notification_type, &v.notification_url) {
                (NotificationType::None, _) => {}
                (_, None) => return Err(ConfigError::MissingNotificationUrl(i, p.clone())),
                (_, Some(url)) => {
                    let lower = url.to_ascii_lowercase();
                    if url.len() > bits_proto::MAX_URL_CHARS
                        || lower.starts_with("https://")
                        || (lower.contains("://") && !lower.starts_with("http://"))
                    {
                        return Err(ConfigError::BadNotificationUrl(i, p.clone()));
                    }
                    if !lower.starts_with("http://") && v.notification_base.is_none() {
                        return Err(ConfigError::RelativeNotificationWithoutBase(i, p.clone()));
                    }
                }
            }
            if let Some(base) = &v.notification_base {
                let rest = base.strip_prefix("http://");
                if rest.is_none_or(|r| r.is_empty() || r.contains(['/', '?', '#', '@'])) {
                    return Err(ConfigError::BadNotificationBase(i, p.clone()));
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
            if self.storage.is_shared() && v.notification_type == NotificationType::ByReference {
                return Err(ConfigError::UnsupportedOnS3(
                    i,
                    p.clone(),
                    self.storage.backend_name(),
                ));
            }
            if v.max_fragment_size == 0 {
                return Err(ConfigError::ZeroFragmentSize(i, p.clone()));
            }
            if v.session_timeout < Duration::from_secs(1) {
                return Err(ConfigError::ZeroSessionTimeout(i, p.clone()));
            }
            if v.notification_type != NotificationType::None
                && v.notification_timeout < Duration::from_secs(1)
            {
                return Err(ConfigError::ZeroNotificationTimeout(i, p.clone()));
            }
            v.hooks
                .validate()
                .map_err(|e| ConfigError::BadHooks(i, e))?;
            if self.storage.is_shared()
                && v.root.to_string_lossy().split('/').any(|seg| seg == "..")
            {
                return Err(ConfigError::DotDotInS3Root(
                    i,
                    v.root.clone(),
                    self.storage.backend_name(),
                ));
            }
            let root = self.location(&v.root_base());
            if let (Some(capture), StorageConfig::Fs) = (&self.capture_dir, &self.storage) {
                if normalize(capture).starts_with(&root) {
                    return Err(ConfigError::CaptureInsideRoot {
                        index: i,
                        capture: capture.clone(),
                        root: v.root.clone(),
                    });
                }
            }
            // A per-user base may contain the spool (`X/{user}` beside `X/spool`): then only
            // the user named like the spool is refused, by `storage_root`.
            let per_user = v.is_per_user();
            if let Some(prefix) = self.storage.object_prefix() {
                if overlaps_s3_sessions(&v.root_base(), prefix, per_user) {
                    return Err(ConfigError::RootOverlapsS3Sessions {
                        index: i,
                        root: v.root.to_string_lossy().into_owned(),
                        prefix: prefix.to_string(),
                    });
                }
            } else if root.starts_with(&spool) || (!per_user && spool.starts_with(&root)) {
                return Err(ConfigError::SpoolOverlapsRoot {
                    index: i,
                    spool: self.spool_dir.clone(),
                    root: v.root.clone(),
                });
            }
            for (j, o) in self.vdirs[..i].iter().enumerate() {
                if o.access_policy() == v.access_policy() {
                    continue;
                }
                // Fixed roots are compared whole. With `{user}` only the fixed base is known
                // here: a fixed root that contains another's base sees every user's files;
                // anything finer is checked per identity by `storage_root`.
                let (a, b) = (self.location(&o.root_base()), root.clone());
                let overlap = match (o.is_per_user(), v.is_per_user()) {
                    (false, false) => a.starts_with(&b) || b.starts_with(&a),
                    (false, true) => b.starts_with(&a),
                    (true, false) => a.starts_with(&b),
                    (true, true) => a == b,
                };
                if overlap {
                    return Err(ConfigError::RootsOverlap {
                        a: j,
                        root_a: o.root.clone(),
                        b: i,
                        root_b: v.root.clone(),
                    });
                }
            }
        }
        if self.max_tombstones == 0 {
            return Err(ConfigError::ZeroTombstones);
        }
        let memory = "it bounds memory";
        let bounds = [
            ("max_header_bytes", self.max_header_bytes as u64, memory),
            (
                "max_connections",
                self.max_connections as u64,
                "it bounds open file descriptors",
            ),
            (
                "admin.max_connections",
                self.admin.max_connections.map_or(1, |n| n as u64),
                "it bounds open file descriptors",
            ),
            (
                "max_buffered_body_bytes",
                self.max_buffered_body_bytes,
                memory,
            ),
            (
                "rate_limit_burst",
                u64::from(self.rate_limit_burst),
                "a burst of 0 admits nothing",
            ),
            (
                "basic_auth.max_tracked",
                self.basic_auth.max_tracked as u64,
                memory,
            ),
            (
                "kerberos.replay_cache_max",
                self.kerberos.replay_cache_max as u64,
                memory,
            ),
            (
                "kerberos.replay_cache_per_principal",
                self.kerberos.replay_cache_per_principal as u64,
                "it is what keeps one user from filling the replay cache",
            ),
        ];
        if let Some((key, _, why)) = bounds.iter().find(|(_, v, _)| *v == 0) {
            return Err(ConfigError::ZeroBound(key, why));
        }
        Ok(())
    }

    /// Where `user`'s uploads to vdir `index` are stored, checked after substitution: a
    /// per-user root may not be (or lie inside, or contain) the spool or the session objects,
    /// nor overlap the root of a vdir with a different access policy (for per-user vdirs: the
    /// root that vdir would give the same directory name).
    pub fn storage_root(&self, index: usize, user: Option<&str>) -> Result<PathBuf, RootError> {
        let vdir = self.vdirs.get(index).ok_or(RootError::NoUserRoot)?;
        let root = vdir.root_for(user).ok_or(RootError::NoUserRoot)?;
        if !vdir.is_per_user() {
            return Ok(root);
        }
        let overlaps = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
        let normal = self.location(&root);
        let crosses_storage = match self.storage.object_prefix() {
            Some(prefix) => overlaps_s3_sessions(&root, prefix, false),
            None => overlaps(&normal, &normalize(&self.spool_dir)),
        };
        let crosses_vdir = self.vdirs.iter().enumerate().any(|(j, o)| {
            if j == index || o.access_policy() == vdir.access_policy() {
                return false;
            }
            if !o.is_per_user() {
                return overlaps(&normal, &self.location(&o.root));
            }
            let base = self.location(&o.root_base());
            if base.starts_with(&normal) {
                return true;
            }
            // Inside the other vdir's base: the next component is the name that vdir would
            // substitute; compare with that user's root there.
            let Ok(below) = normal.strip_prefix(&base) else {
                return false;
            };
            let name = below
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            match name.as_deref().and_then(|n| o.root_for(Some(n))) {
                Some(theirs) => overlaps(&normal, &self.location(&theirs)),
                None => false,
            }
        });
        if crosses_storage || crosses_vdir {
            return Err(RootError::Overlaps(root));
        }
        Ok(root)
    }
}

/// Whether an object-storage root (a key prefix) and the session objects
/// (`<prefix>/sessions/…`) share keys, compared on whole segments (`./a//b/` is `a/b`). With
/// `base_only`, `root` is the fixed base of a per-user root: only a base inside the session
/// objects is certain to overlap.
pub(super) fn overlaps_s3_sessions(root: &Path, prefix: &str, base_only: bool) -> bool {
    let segments = |s: &str| -> Vec<String> {
        s.split('/')
            .filter(|seg| !seg.is_empty() && *seg != ".")
            .map(str::to_string)
            .collect()
    };
    let root = segments(&root.to_string_lossy());
    if root.iter().any(|s| s == "..") {
        return true;
    }
    let mut sessions = segments(prefix);
    sessions.push("sessions".into());
    root.starts_with(&sessions) || (!base_only && sessions.starts_with(&root))
}

impl ServerConfig {
    /// A root in the form roots are compared in: with the file system backend an absolute,
    /// lexically normalised path (relative roots are relative to the working directory, as the
    /// server resolves them); on S3 the bucket key's segments under `/` (`/uploads`,
    /// `uploads`, `./uploads/` and `uploads//` are all the key prefix `uploads/`), whatever
    /// the working directory.
    fn location(&self, p: &Path) -> PathBuf {
        match self.storage.object_prefix() {
            None => normalize(p),
            Some(_) => key_location(p),
        }
    }
}

/// A bucket key prefix as `/seg/seg` (empty and `.` segments dropped; `..` is refused by
/// `validate` before this is asked).
pub(super) fn key_location(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for seg in p.to_string_lossy().split('/') {
        if !seg.is_empty() && seg != "." {
            out.push(seg);
        }
    }
    out
}

/// Absolute, lexically normalised path (no file system access, so it works before dirs exist).
pub(super) fn normalize(p: &Path) -> PathBuf {
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
