//! Server and virtual-directory configuration. Every knob has a default, so an empty config runs.
//!
//! `0` has one meaning for every limit that can be switched off: no limit, as if the key were
//! left out (`zero_is_none`, `zero_is_max` read it so, and the engine only ever sees "absent").
//! A bound that protects memory, threads or file descriptors cannot be switched off, and `0`
//! for it is refused by [`ServerConfig::validate`], naming the key. docs/operations.md ("What
//! 0 means") lists every setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

// The tables other modules build themselves from, kept here so that the config imports none
// of them (the module graph test, tests/module_graph.rs, holds the arrows one way).
pub mod azure;
pub mod hooks;
pub mod s3;
pub mod tls;
mod validate;

pub use validate::ConfigError;

/// Default of `min_free_space`.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;

/// A limit kept as `Option` (absent: no limit): `0` in a config file is no limit too.
fn zero_is_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq,
{
    Ok(Option::<T>::deserialize(d)?.filter(|v| *v != T::default()))
}

/// A limit kept as a plain number: `0` in a config file is no limit, the largest count.
fn zero_is_max<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq + Unlimited,
{
    let v = T::deserialize(d)?;
    Ok(if v == T::default() { T::UNLIMITED } else { v })
}

trait Unlimited {
    const UNLIMITED: Self;
}

impl Unlimited for u64 {
    const UNLIMITED: u64 = u64::MAX;
}

impl Unlimited for usize {
    const UNLIMITED: usize = usize::MAX;
}

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
    /// With `[storage] backend = "s3"` (a farm): how often this node reconciles what it
    /// counts as open (sessions, destinations held, spool bytes per identity) with the
    /// records in the bucket, so that sessions ended or created through other nodes are
    /// counted right within this time. Each pass lists the session prefixes and reads every
    /// open record once. `0s`: only the cleanup pass and refusals reconcile. Ignored with the
    /// file system backend, where this node's memory is the truth.
    #[serde(with = "humantime_serde")]
    pub registry_refresh_interval: Duration,
    /// How long a closed or cancelled session id keeps answering a repeated Close/Cancel with 200.
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// `true` (default): data and metadata are on stable storage before a fragment is acknowledged.
    /// `false` is UNSAFE: a crash or power loss can lose acknowledged bytes.
    pub fsync: bool,
    /// A client must send a complete request head within this time (slow-loris defence).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Total size of a request's head (header names and values); larger heads get 431 (at
    /// least 1: a bound on memory, never switched off). 64 KiB
    /// by default: a Windows Kerberos ticket carrying a PAC with many groups can take tens of
    /// KiB in one `Authorization` header (IIS guidance raises its limits to 64 KiB for that).
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
    /// stays usable; larger ones close the connection. A size, not a limit: 0 drains nothing.
    pub drain_limit: u64,
    /// Create-Session is refused with 503 while this many sessions are open. 0: no limit.
    #[serde(deserialize_with = "zero_is_max")]
    pub max_open_sessions: u64,
    /// Open sessions per authenticated identity, all vdirs together (IIS
    /// `BITSNumberOfSessionsLimit`, default 50); anonymous sessions are limited by
    /// `max_anonymous_sessions*` instead. `0`: no per-identity limit (IIS
    /// `BITSSessionLimitEnable = 0`). A vdir's own `max_sessions_per_identity` applies as well.
    #[serde(deserialize_with = "zero_is_none")]
    pub max_sessions_per_identity: Option<u64>,
    /// The HTTPS listener; absent: plain HTTP only.
    pub tls: Option<tls::TlsConfig>,
    /// Serve plain HTTP on `listen` (turn off to offer HTTPS only).
    pub http_enabled: bool,
    /// Open connections at most; beyond it new connections wait in the listen backlog. At
    /// least 1 (file descriptors: never switched off).
    pub max_connections: usize,
    /// Requests per second allowed from one client IP (token bucket); absent or 0: unlimited.
    #[serde(deserialize_with = "zero_is_none")]
    pub rate_limit_per_ip: Option<u32>,
    /// Burst size of the per-IP rate limit (at least 1).
    pub rate_limit_burst: u32,
    /// Bytes of unfinished uploads one authenticated identity may hold in the spool; absent or
    /// 0: no limit.
    #[serde(deserialize_with = "zero_is_none")]
    pub max_spool_bytes_per_identity: Option<u64>,
    /// Scheme and authority clients use to reach this server (e.g. behind a TLS proxy),
    /// for reply URLs. Default: the scheme and local address the client's connection reached,
    /// never the request's Host header (`docs/decisions.md` item 13).
    pub public_url: Option<String>,
    /// Bytes of unfinished uploads the spool may hold; beyond it fragments get the disk-full
    /// Ack. Absent or 0: no limit.
    #[serde(deserialize_with = "zero_is_none")]
    pub spool_quota: Option<u64>,
    /// Bytes that must stay free on the spool's file system for `/readyz` to answer ready
    /// (the local backend): below it the node reports itself unready before fragments start
    /// failing with the disk-full Ack. 0: no check. Default 64 MiB.
    #[serde(deserialize_with = "zero_is_none")]
    pub min_free_space: Option<u64>,
    /// Where sessions and uploads live: the local file system (default) or S3-compatible
    /// object storage shared by a farm of nodes.
    pub storage: StorageConfig,
    /// The admin listener (metrics, health, session administration); off by default.
    pub admin: AdminConfig,
    /// Ended sessions (closed, cancelled, expired) remembered at most, so that a repeated
    /// Close/Cancel whose first Ack was lost is answered 200. Beyond it the oldest are
    /// forgotten first: a flood of Create+Cancel cannot fill the spool with tombstones.
    pub max_tombstones: u64,
    /// Open anonymous sessions at most, across every vdir: the rest of `max_open_sessions`
    /// stays available to authenticated clients. 0: no limit of its own (`max_open_sessions`
    /// still applies, as it does to every session).
    pub max_anonymous_sessions: u64,
    /// Open anonymous sessions one client IP address may hold; 0: no per-address limit (set
    /// that behind a reverse proxy or load balancer, where every client has its address).
    pub max_anonymous_sessions_per_ip: u64,
    #[serde(rename = "vdir")]
    pub vdirs: Vec<VdirConfig>,
    /// What Basic-auth password checks may cost: `[basic_auth]` (concurrency, queue, failure
    /// budgets per user name and per client address).
    pub basic_auth: BasicAuthLimits,
    /// Kerberos settings shared by every Negotiate vdir of this node: `[kerberos]` (the replay
    /// cache of authenticators).
    pub kerberos: KerberosConfig,
    /// Reverse proxies in front of this server (addresses or CIDR blocks, e.g. `127.0.0.1`,
    /// `10.0.0.0/8`): one of their connections carries requests of many clients, so no
    /// identity is ever kept on it (`persist_auth = "request"` for every vdir). Nothing else
    /// changes for them: budgets and caps still count the proxy's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Bytes of fragment bodies the storage backends may hold in memory at once, across all
    /// requests. fs: a write gathers up to 1 MiB before one positioned write, and writes what it
    /// has at once when the budget is spent. S3: each piece (≤ 5 MiB) is held until stored; a
    /// write that finds the budget spent waits up to `body_idle_timeout`, then goes on with a
    /// minimal piece. Stalled clients cannot pin memory either way. At least 1 (memory: never
    /// switched off).
    pub max_buffered_body_bytes: u64,
    /// Ping, Create-Session, Close-Session and Cancel-Session without `Content-Length` are read
    /// as empty bodies, as HTTP/1.1 reads any request without a framing header (Python's
    /// `http.client` sends custom methods that way). `false`: 400, as Windows servers answer.
    pub allow_missing_content_length: bool,
    /// Fragments sent with `Transfer-Encoding: chunked` (and no `Content-Length`) are accepted
    /// when the decoded body is exactly the `Content-Range` length. `false`: 400.
    pub allow_chunked_fragments: bool,
    /// Record every `BITS_POST` exchange here (request and response heads, body lengths and
    /// SHA-256, never bodies; header values outside an allow-list and query strings as
    /// `[redacted]`), one file per session, for `bitsd replay`. The directory must be the
    /// server user's and mode 0700 (or missing: then it is created so).
    /// Absent (default): nothing is recorded. `bitsd serve --capture DIR` sets it.
    pub capture_dir: Option<PathBuf>,
    /// Disk space `capture_dir` may take, counted in allocated blocks (as `du` counts them) of
    /// the files directly in it, those of earlier runs included (default 1 GiB); then capture
    /// stops with one warning. 0: no limit.
    pub capture_max_bytes: u64,
    /// Files `capture_dir` may hold, those of earlier runs included (default 10 000; each takes
    /// at least one block whatever its length); then capture stops with one warning. 0: no
    /// limit.
    pub capture_max_files: u64,
}

impl ServerConfig {
    /// The request framings `BITS_POST` admits beyond what Windows sends.
    pub fn leniency(&self) -> bits_proto::Leniency {
        bits_proto::Leniency {
            bodyless_without_length: self.allow_missing_content_length,
            chunked_fragments: self.allow_chunked_fragments,
        }
    }
}

/// The `[storage]` table: `backend = "fs"` (default) or `backend = "s3"` with the S3 keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum StorageConfig {
    /// `spool_dir` for sessions, each vdir's `root` directory for uploads.
    #[default]
    Fs,
    /// Sessions under the bucket's `prefix`, uploads under each vdir's `root` used as a key prefix.
    S3(s3::S3Config),
    /// Azure Blob Storage: sessions under the container's `prefix`, uploads under each vdir's
    /// `root` used as a blob name prefix.
    Azure(azure::AzureConfig),
}

impl StorageConfig {
    /// Whether the store is a service reached over the network (that may start after this
    /// node and is waited for at start-up), as opposed to a local directory (whose errors are
    /// the operator's to fix, and stop the start). Exhaustive on purpose: a new backend must
    /// answer it.
    pub fn is_network_service(&self) -> bool {
        match self {
            StorageConfig::Fs => false,
            StorageConfig::S3(_) | StorageConfig::Azure(_) => true,
        }
    }

    /// The session prefix of an object-storage backend (S3 or Azure, whose roots are key
    /// prefixes compared as names); `None` for the file system.
    pub fn object_prefix(&self) -> Option<&str> {
        match self {
            StorageConfig::Fs => None,
            StorageConfig::S3(s3) => Some(&s3.prefix),
            StorageConfig::Azure(azure) => Some(&azure.prefix),
        }
    }

    /// Whether several nodes may share the store (a farm): every object-storage backend.
    pub fn is_shared(&self) -> bool {
        self.object_prefix().is_some()
    }

    /// Where the sessions live, for the console: the spool directory's config key, or the
    /// object store's URL with the session prefix.
    pub fn location(&self) -> String {
        match self {
            StorageConfig::Fs => "spool_dir".into(),
            StorageConfig::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
            StorageConfig::Azure(a) => {
                format!("azure://{}/{}/{}", a.account, a.container, a.prefix)
            }
        }
    }

    /// The backend's name in `[storage] backend`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            StorageConfig::Fs => "fs",
            StorageConfig::S3(_) => "s3",
            StorageConfig::Azure(_) => "azure",
        }
    }
}

/// The `[admin]` table: a second HTTP listener for operators (`/metrics`, `/healthz`,
/// `/readyz`, `/admin/...`, `/console`). It can list every session (paths, owners, client
/// addresses) and cancel any of them, so keep it on loopback or a management network.
///
/// Requirements (`validate`, so both `check-config` and `serve`): off loopback it needs a
/// `token` of at least [`MIN_ADMIN_TOKEN_CHARS`] characters. On loopback a missing or shorter
/// token is allowed with a warning ([`ServerConfig::warnings`]): every local user can reach the
/// listener. Whatever the token, the listener refuses cross-site state-changing requests (a
/// POST whose `Origin` is not its own, or sent with `Sec-Fetch-Site: cross-site`/`same-site`),
/// and without a token it answers only requests naming it by a loopback host name
/// (`localhost`, `127.x.y.z`, `[::1]`) or by the address the connection reached, `/healthz`
/// excepted: a browser page on a rebound DNS name would otherwise read and cancel sessions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9180`; absent (default): no listener.
    pub listen: Option<SocketAddr>,
    /// When set, every admin route except `/healthz` requires `Authorization: Bearer <token>`
    /// (compared in constant time; wrong tokens are counted and logged, at most one line a
    /// second). Visible ASCII; at least 16 characters, and required, when `listen` is not a
    /// loopback address.
    pub token: Option<String>,
    /// Open admin connections at most (absent: 64; at least 1); beyond it new ones wait in the
    /// listen backlog. Heads must arrive within the server's `header_read_timeout`.
    pub max_connections: Option<usize>,
    /// The console at `/console` offers a Cancel button per session (behind a confirmation).
    /// `false` (default): the console is read-only; the admin API can still cancel.
    pub console_cancel: bool,
    /// How long `/readyz` (and the `bitsd_storage_ready` probe) waits for storage before it
    /// counts as not ready (absent: 10 s): a hung store or disk must not hang health checks.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Option<Duration>,
}

/// The shortest `[admin] token` accepted off loopback: 16 random characters are beyond
/// guessing at the rate one listener answers.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

impl AdminConfig {
    /// True when the listener is reachable only from this host (`127.0.0.0/8`, `::1`, or an
    /// IPv4-mapped loopback address); a wildcard address is not.
    pub fn on_loopback(&self) -> bool {
        self.listen
            .is_some_and(|a| a.ip().to_canonical().is_loopback())
    }
}

/// What `check-config` prints and `serve` logs without refusing the config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    #[error("admin.token: no [admin] token for the admin listener on {0}: every local user and process that can connect to it can list and cancel sessions (web pages cannot: without a token it answers only requests addressed to a loopback name)")]
    AdminWithoutToken(SocketAddr),
    #[error("admin.token: shorter than {min} characters (the admin listener on {0} is on loopback, so it is allowed; off loopback it would be refused)", min = MIN_ADMIN_TOKEN_CHARS)]
    ShortAdminToken(SocketAddr),
    #[error("vdir[{0}] (prefix {1:?}): upload_enabled = false and download_enabled = false: it answers every request with an error")]
    VdirServesNothing(usize, String),
    #[error("vdir[{0}].require_tls (prefix {1:?}): there is no [tls] listener, so every request to this vdir gets 403")]
    RequireTlsWithoutTls(usize, String),
    #[error("vdir[{0}].auth = \"client_cert\" (prefix {1:?}): [tls] has no client_ca, so no client presents a certificate and every request gets 403")]
    ClientCertWithoutCa(usize, String),
    #[error("http_enabled = false and no [tls] listener: nothing serves BITS")]
    NoListener,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            spool_dir: PathBuf::from("bits-data/spool"),
            cleanup_interval: Duration::from_secs(12 * 3600),
            registry_refresh_interval: Duration::from_secs(30),
            tombstone_ttl: DEFAULT_SESSION_TIMEOUT,
            fsync: true,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            body_idle_timeout: Duration::from_secs(120),
            session_lock_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            drain_limit: 64 << 20,
            max_open_sessions: 100_000,
            max_sessions_per_identity: Some(50),
            spool_quota: None,
            min_free_space: Some(DEFAULT_MIN_FREE_SPACE),
            public_url: None,
            tls: None,
            http_enabled: true,
            max_connections: 10_000,
            rate_limit_per_ip: None,
            rate_limit_burst: 50,
            max_spool_bytes_per_identity: None,
            storage: StorageConfig::Fs,
            admin: AdminConfig::default(),
            max_tombstones: 1_000,
            max_anonymous_sessions: 50_000,
            max_anonymous_sessions_per_ip: 1_000,
            vdirs: vec![VdirConfig::default()],
            basic_auth: BasicAuthLimits::default(),
            kerberos: KerberosConfig::default(),
            trusted_proxies: Vec::new(),
            max_buffered_body_bytes: 64 << 20,
            allow_missing_content_length: true,
            allow_chunked_fragments: true,
            capture_dir: None,
            capture_max_bytes: 1 << 30,
            capture_max_files: 10_000,
        }
    }
}

/// How a vdir authenticates its clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Anonymous,
    /// HTTP Basic; the BITS client sends credentials after a 401 challenge.
    Basic,
    /// The subject of a verified TLS client certificate.
    ClientCert,
    /// NTLMv2 (Windows integrated authentication), users from the users file's NT hashes.
    Ntlm,
    /// HTTP Negotiate: Kerberos tickets checked with the vdir's keytab, and NTLM (raw or
    /// inside Negotiate, as IIS takes it) for users with an NT hash in `users_file`, if any.
    Negotiate,
}

/// `persist_auth`: how long a handshake's identity lasts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistAuth {
    /// For the rest of the connection, on this vdir and on vdirs of the same policy (IIS's
    /// default).
    #[default]
    Connection,
    /// For the request that completed the handshake only.
    Request,
}

/// `channel_binding`: extended protection over TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelBinding {
    /// Not checked.
    Off,
    /// Checked when the client sent bindings.
    #[default]
    Allow,
    /// Over TLS, a client must send bindings, and they must match.
    Require,
}

/// The `[basic_auth]` table: what password checks may cost. An argon2 verification takes tens of
/// milliseconds of CPU and 19 MiB, and anyone who can reach a Basic vdir can ask for one. The
/// failure budgets count wrong NTLM answers and refused Kerberos tickets as well.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuthLimits {
    /// Password verifications running at once (each on a blocking thread); the others wait
    /// their turn without holding a thread. 0 (default): the number of CPUs.
    pub verify_concurrency: usize,
    /// Requests allowed to wait for a verification slot; past that they get 503 at once. 0: no
    /// limit (`max_connections` still bounds them).
    #[serde(deserialize_with = "zero_is_max")]
    pub max_waiting: usize,
    /// Wrong passwords (Basic or NTLM) accepted for one user name (existing or not) per
    /// `failure_window`; past that the name gets 503 without a verification, except for a
    /// password verified in the last 5 minutes and for connections already signed in. 0: no
    /// limit.
    pub failures_per_user: u32,
    /// Failed sign-ins (any scheme) accepted from one client address (IPv6: one /64) per
    /// `failure_window`; past that every new sign-in from it gets 503 without a verification
    /// (connections already signed in carry on). 0: no limit.
    pub failures_per_ip: u32,
    /// The window the failure budgets count in; each budget refills when its window ends.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// User names and addresses each failure table tracks at most (memory stays bounded
    /// against floods of distinct names); when full, the entry with the fewest failures goes.
    /// At least 1 (memory: never switched off).
    pub max_tracked: usize,
}

impl Default for BasicAuthLimits {
    fn default() -> Self {
        BasicAuthLimits {
            verify_concurrency: 0,
            max_waiting: 64,
            failures_per_user: 10,
            failures_per_ip: 30,
            failure_window: Duration::from_secs(60),
            max_tracked: 10_000,
        }
    }
}

/// The `[kerberos]` table: the replay cache every Negotiate vdir of this node shares.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KerberosConfig {
    /// Where accepted authenticators are remembered across restarts (one fixed-size record
    /// each, compacted at start-up); default `<spool_dir>/kerberos-replay`. Only opened when a
    /// vdir uses `auth = "negotiate"`.
    pub replay_cache: Option<PathBuf>,
    /// Authenticators remembered at most. An entry lives until its time is outside the 5-minute
    /// skew window (then the skew check refuses the authenticator anyway) and is never dropped
    /// earlier: when the cache is full of live entries, new Kerberos sign-ins get 503. At least 1.
    pub replay_cache_max: usize,
    /// Live authenticators one client principal may have in the cache; past it that principal's
    /// new sign-ins get 503 until its entries age out, so no user can fill the cache for others.
    /// At least 1.
    pub replay_cache_per_principal: usize,
}

impl Default for KerberosConfig {
    fn default() -> Self {
        KerberosConfig {
            replay_cache: None,
            replay_cache_max: 1_000_000,
            replay_cache_per_principal: 20_000,
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
    /// `BITSMaximumUploadSize` in bytes; absent or 0: unlimited.
    #[serde(deserialize_with = "zero_is_none")]
    pub max_upload_size: Option<u64>,
    /// `BITSSessionTimeout`: a session with no successful request for this long is deleted.
    /// At least 1s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `BITSAllowOverwrites`.
    pub allow_overwrites: bool,
    pub conflict_status: ConflictStatus,
    /// Largest fragment body accepted in one request; larger ones get 413 so the client shrinks.
    pub max_fragment_size: u64,
    /// Who may use this vdir: `anonymous`, `basic` or `ntlm` (need `users_file`), or
    /// `client_cert`.
    pub auth: AuthMode,
    /// Lines `name:$argon2id$...` (Basic) and `name:$NT$<hex>` (NTLM), as written by
    /// `bitsd passwd [--ntlm]`; also `name:$2y$...` (bcrypt, Basic) as `htpasswd -B` writes.
    pub users_file: Option<PathBuf>,
    /// With `auth = "ntlm"`: the only domain a client may name (case-insensitive; a client
    /// that names none is taken as this one), and the domain announced in the challenge.
    /// Unset: any domain name is accepted, the user name alone decides.
    pub ntlm_domain: Option<String>,
    /// With `auth = "negotiate"`: the service's keytab (`kadmin ktadd`, `ktpass`). Needed.
    pub keytab: Option<PathBuf>,
    /// The service principal name clients use for this server (`HTTP/host.example`). With
    /// `auth = "negotiate"`: the only service tickets may be for (unset: any principal the
    /// keytab holds a key for). With NTLM: a client that names its target (`MsvAvTargetName`,
    /// as Windows does) must name this one, so a relay elsewhere cannot forward its answer.
    pub service_principal: Option<String>,
    /// With `auth = "negotiate"`: the client realms accepted; empty: any realm whose tickets
    /// the keytab's keys can read.
    pub kerberos_realms: Vec<String>,
    /// Whether an identity proven by an NTLM or Kerberos handshake stays with the connection
    /// for its later requests (`connection`, the default, as IIS) or counts for the one
    /// request that carried it (`request`, IIS `authPersistSingleRequest`: every request
    /// authenticates afresh). Connections from `trusted_proxies` always use `request`.
    pub persist_auth: PersistAuth,
    /// Extended protection for NTLM and Kerberos over TLS (IIS `tokenChecking`): the channel
    /// bindings a client puts in its token (`tls-server-end-point`, the hash of this server's
    /// certificate) must match the connection they arrive on. `allow` (default): checked when
    /// the client sent them; `require`: a client that sent none is refused too; `off`: not
    /// checked. Plain HTTP has no channel to bind to.
    pub channel_binding: ChannelBinding,
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
    pub hooks: hooks::HooksConfig,
    /// Open sessions this vdir may hold at most (all identities); absent or 0: no per-vdir
    /// limit.
    #[serde(deserialize_with = "zero_is_none")]
    pub max_open_sessions: Option<u64>,
    /// Open sessions one authenticated identity may hold in this vdir (IIS sets
    /// `BITSNumberOfSessionsLimit` per vdir); absent or 0: no per-vdir limit (the server-wide
    /// `max_sessions_per_identity` still applies).
    #[serde(deserialize_with = "zero_is_none")]
    pub max_sessions_per_identity: Option<u64>,
    /// Where a relative `notification_url` points: the server application's own
    /// `http://host:port` (IIS runs the application in the same site; bitsd hosts none, so a
    /// relative URL needs this). The upload URL's directory is kept, as IIS does.
    pub notification_base: Option<String>,
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
    /// `root` with `{user}` replaced by `user`, which must be a [`safe_user_name`]; `None` when
    /// the root is per-user and the caller is anonymous or has an unusable name. This is only
    /// the substitution: [`ServerConfig::storage_root`] also checks where the result lands.
    pub fn root_for(&self, user: Option<&str>) -> Option<PathBuf> {
        let template = self.root.to_string_lossy();
        if !self.is_per_user() {
            return Some(self.root.clone());
        }
        let user = user.filter(|u| safe_user_name(u))?;
        Some(PathBuf::from(template.replace(USER_PLACEHOLDER, user)))
    }

    /// Whether the root holds `{user}` (one directory per identity).
    pub fn is_per_user(&self) -> bool {
        self.root.to_string_lossy().contains(USER_PLACEHOLDER)
    }

    /// The fixed part of the root: the whole root, or the directories before the component
    /// that holds `{user}`.
    fn root_base(&self) -> PathBuf {
        if !self.is_per_user() {
            return self.root.clone();
        }
        let mut base = PathBuf::new();
        for c in self.root.components() {
            if c.as_os_str().to_string_lossy().contains(USER_PLACEHOLDER) {
                break;
            }
            base.push(c);
        }
        base
    }

    /// What decides who may read and write below this vdir's root. Two vdirs whose roots
    /// overlap must agree on all of it, or files would cross from one to the other: the same
    /// scheme with another users file, NTLM domain, keytab, service or realm list is another
    /// population of users.
    fn access_policy(&self) -> AccessPolicy<'_> {
        let mut realms: Vec<String> = self
            .kerberos_realms
            .iter()
            .map(|r| r.to_ascii_uppercase())
            .collect();
        realms.sort();
        realms.dedup();
        AccessPolicy {
            auth: self.auth,
            users_file: self.users_file.as_deref(),
            ntlm_domain: self.ntlm_domain.as_ref().map(|d| d.to_ascii_uppercase()),
            keytab: self.keytab.as_deref(),
            service_principal: self
                .service_principal
                .as_ref()
                .map(|s| s.to_ascii_lowercase()),
            realms,
            require_tls: self.require_tls,
            download_enabled: self.download_enabled,
        }
    }
}

/// [`VdirConfig::access_policy`]: compared field by field.
#[derive(Debug, PartialEq, Eq)]
struct AccessPolicy<'a> {
    auth: AuthMode,
    users_file: Option<&'a Path>,
    ntlm_domain: Option<String>,
    keytab: Option<&'a Path>,
    service_principal: Option<String>,
    realms: Vec<String>,
    require_tls: bool,
    download_enabled: bool,
}

const USER_PLACEHOLDER: &str = "{user}";

/// Whether an identity may name a per-user directory: 1–64 bytes of ASCII letters, digits and
/// `. _ - @`, not starting with a dot or a dash. Anything wider (spaces, Unicode, `\`) could
/// alias another name on some file system or tool; such identities cannot use `{user}` roots.
pub fn safe_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Why an identity gets no storage root on a vdir.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("the vdir root is per-user and the client is anonymous or its name is not a safe directory name")]
    NoUserRoot,
    #[error("the per-user root {0:?} overlaps the spool or the root of another vdir")]
    Overlaps(PathBuf),
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
            auth: AuthMode::Anonymous,
            users_file: None,
            ntlm_domain: None,
            keytab: None,
            service_principal: None,
            kerberos_realms: Vec::new(),
            persist_auth: PersistAuth::default(),
            channel_binding: ChannelBinding::default(),
            require_tls: false,
            host_id: None,
            host_id_fallback_timeout: 86_400,
            notification_type: NotificationType::None,
            notification_url: None,
            notification_timeout: Duration::from_secs(300),
            hooks: hooks::HooksConfig::default(),
            max_open_sessions: None,
            max_sessions_per_identity: None,
            notification_base: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate::*;
    use super::*;

    #[test]
    fn admin_tokens_are_required_off_loopback_and_warned_about_on_it() {
        let with = |listen: &str, token: Option<&str>| {
            let mut c = ServerConfig::default();
            c.admin.listen = Some(listen.parse().unwrap());
            c.admin.token = token.map(String::from);
            c
        };
        let long = Some("0123456789abcdef");
        let short = Some("0123456789abcde");
        for listen in [
            "0.0.0.0:9180",
            "[::]:9180",
            "10.0.0.1:9180",
            "[fe80::1]:9180",
        ] {
            for token in [None, short] {
                assert!(
                    matches!(
                        with(listen, token).validate(),
                        Err(ConfigError::AdminTokenNeeded(_))
                    ),
                    "{listen} {token:?}"
                );
            }
            let c = with(listen, long);
            c.validate().unwrap();
            assert!(c.warnings().is_empty());
        }
        for listen in [
            "127.0.0.1:9180",
            "127.1.2.3:1",
            "[::1]:9180",
            "[::ffff:127.0.0.1]:1",
        ] {
            let c = with(listen, None);
            c.validate().unwrap();
            assert!(matches!(
                c.warnings()[..],
                [ConfigWarning::AdminWithoutToken(_)]
            ));
            let c = with(listen, short);
            c.validate().unwrap();
            assert!(matches!(
                c.warnings()[..],
                [ConfigWarning::ShortAdminToken(_)]
            ));
            assert!(with(listen, long).warnings().is_empty());
        }
        assert!(ServerConfig::default().warnings().is_empty(), "no listener");
    }

    /// Issue 30: `0` switches every limit that can be off to "no limit", as leaving the key out
    /// does; before, a vdir's `max_open_sessions = 0` refused every Create-Session.
    #[test]
    fn zero_is_no_limit_for_every_limit_that_can_be_off() {
        let c: ServerConfig = toml::from_str(
            "max_open_sessions = 0\nmax_sessions_per_identity = 0\nspool_quota = 0\n\
             max_spool_bytes_per_identity = 0\nrate_limit_per_ip = 0\n\
             max_anonymous_sessions = 0\nmax_anonymous_sessions_per_ip = 0\n\
             capture_max_bytes = 0\ncapture_max_files = 0\n\
             [basic_auth]\nmax_waiting = 0\nfailures_per_user = 0\nfailures_per_ip = 0\n\
             [[vdir]]\nprefix = \"/u/\"\nroot = \"/srv/u\"\nmax_open_sessions = 0\n\
             max_sessions_per_identity = 0\nmax_upload_size = 0\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        assert_eq!(c.max_open_sessions, u64::MAX);
        assert_eq!(c.max_sessions_per_identity, None);
        assert_eq!(c.spool_quota, None);
        assert_eq!(c.max_spool_bytes_per_identity, None);
        assert_eq!(c.rate_limit_per_ip, None);
        assert_eq!(c.basic_auth.max_waiting, usize::MAX);
        let v = &c.vdirs[0];
        assert_eq!(
            (
                v.max_open_sessions,
                v.max_sessions_per_identity,
                v.max_upload_size
            ),
            (None, None, None)
        );
        // Other values are kept as written.
        let c: ServerConfig = toml::from_str(
            "max_open_sessions = 7\nspool_quota = 5\n[[vdir]]\nprefix = \"/u/\"\n\
             max_open_sessions = 3\nmax_upload_size = 9\n",
        )
        .unwrap();
        assert_eq!(c.max_open_sessions, 7);
        assert_eq!(c.spool_quota, Some(5));
        assert_eq!(c.vdirs[0].max_open_sessions, Some(3));
        assert_eq!(c.vdirs[0].max_upload_size, Some(9));
    }

    #[test]
    fn zero_for_a_bound_that_cannot_be_off_is_refused_naming_the_key() {
        let cases = [
            ("max_header_bytes = 0", "max_header_bytes = 0"),
            ("max_connections = 0", "max_connections = 0"),
            ("max_buffered_body_bytes = 0", "max_buffered_body_bytes = 0"),
            ("rate_limit_burst = 0", "rate_limit_burst = 0"),
            ("[admin]\nmax_connections = 0", "admin.max_connections = 0"),
            (
                "[basic_auth]\nmax_tracked = 0",
                "basic_auth.max_tracked = 0",
            ),
            (
                "[kerberos]\nreplay_cache_max = 0",
                "kerberos.replay_cache_max = 0",
            ),
            (
                "[kerberos]\nreplay_cache_per_principal = 0",
                "kerberos.replay_cache_per_principal = 0",
            ),
            ("max_tombstones = 0", "max_tombstones"),
            (
                "[[vdir]]\nprefix = \"/u/\"\nmax_fragment_size = 0",
                "vdir[0].max_fragment_size",
            ),
            (
                "[[vdir]]\nprefix = \"/u/\"\nsession_timeout = \"0s\"",
                "vdir[0].session_timeout",
            ),
            (
                "[[vdir]]\nprefix = \"/u/\"\nnotification_type = \"by_value\"\n\
                 notification_url = \"http://127.0.0.1:9/x\"\nnotification_timeout = \"0s\"",
                "vdir[0].notification_timeout",
            ),
        ];
        for (toml_text, key) in cases {
            let c: ServerConfig = toml::from_str(toml_text).unwrap();
            let err = c
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(key), "{toml_text}: {err:?}");
        }
    }

    #[test]
    fn vdirs_that_refuse_every_request_are_warned_about() {
        let c: ServerConfig = toml::from_str(
            "http_enabled = false\n\
             [[vdir]]\nprefix = \"/a/\"\nroot = \"/srv/a\"\nupload_enabled = false\ndownload_enabled = false\n\
             [[vdir]]\nprefix = \"/b/\"\nroot = \"/srv/b\"\nrequire_tls = true\n\
             [[vdir]]\nprefix = \"/c/\"\nroot = \"/srv/c\"\nauth = \"client_cert\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let warnings: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
        let starts = [
            "http_enabled = false and no [tls] listener",
            "vdir[0] (prefix \"/a/\"): upload_enabled = false and download_enabled = false",
            "vdir[1].require_tls (prefix \"/b/\"): there is no [tls] listener",
            "vdir[2].auth = \"client_cert\" (prefix \"/c/\"): [tls] has no client_ca",
        ];
        assert_eq!(warnings.len(), starts.len(), "{warnings:#?}");
        for (w, start) in warnings.iter().zip(starts) {
            assert!(w.starts_with(start), "{w}");
        }
    }

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
        c.capture_dir = Some(
            c.vdirs[0]
                .root
                .join("../")
                .join(c.vdirs[0].root.file_name().unwrap())
                .join("cap"),
        );
        assert!(matches!(
            c.validate(),
            Err(ConfigError::CaptureInsideRoot { .. })
        ));
        c.capture_dir = Some(c.spool_dir.join("../capture"));
        assert!(c.validate().is_ok());
        let mut c = ServerConfig::default();
        c.vdirs[0].prefix = "upload".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadPrefix(..))));
        assert!(toml::from_str::<ServerConfig>("bogus = 1").is_err());
    }

    fn vdir(prefix: &str, root: &str, auth: crate::auth::AuthMode) -> VdirConfig {
        VdirConfig {
            prefix: prefix.into(),
            root: root.into(),
            auth,
            users_file: (auth == crate::auth::AuthMode::Basic).then(|| "/etc/users".into()),
            ..VdirConfig::default()
        }
    }

    #[test]
    fn per_user_roots_are_checked_after_substitution() {
        use crate::auth::AuthMode::{Anonymous, Basic};
        let mut c = ServerConfig {
            spool_dir: "/srv/x/spool".into(),
            ..ServerConfig::default()
        };
        c.vdirs = vec![
            vdir("/u/", "/srv/x/{user}", Basic),
            vdir("/pub/", "/srv/x/public", Anonymous),
            vdir("/other/", "/srv/y/{user}/in", Anonymous),
        ];
        c.validate().unwrap();
        assert_eq!(c.storage_root(0, Some("alice")), Ok("/srv/x/alice".into()));
        assert!(c.storage_root(0, Some("spool")).is_err());
        assert!(c.storage_root(0, Some("public")).is_err());
        assert!(c.storage_root(0, None).is_err());
        for bad in [
            "..",
            ".hidden",
            "-x",
            "a b",
            "a/b",
            "DOMAIN\\u",
            "\u{e9}",
            "",
        ] {
            assert!(c.storage_root(0, Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(c.storage_root(2, Some("bob")), Ok("/srv/y/bob/in".into()));
        // A fixed root containing another policy's per-user base is refused up front.
        c.vdirs.push(vdir("/all/", "/srv/y", Anonymous));
        c.vdirs[3].auth = Basic;
        c.vdirs[3].users_file = Some("/etc/users".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RootsOverlap { .. })
        ));
    }

    /// Issue 25 finding 12: the same scheme with another domain, keytab, service or realm list
    /// admits other users; such vdirs may not share a root. Spelling alone is no difference.
    #[test]
    fn roots_overlap_across_windows_policies_is_refused() {
        use crate::config::AuthMode::{Negotiate, Ntlm};
        let base = |auth| VdirConfig {
            keytab: (auth == Negotiate).then(|| "/etc/http.keytab".into()),
            users_file: Some("/etc/users".into()),
            ..vdir("/a/", "/srv/shared", auth)
        };
        let pair = |a: VdirConfig, b: VdirConfig| ServerConfig {
            vdirs: vec![
                a,
                VdirConfig {
                    prefix: "/b/".into(),
                    ..b
                },
            ],
            ..ServerConfig::default()
        };
        let differs = [
            (
                base(Negotiate),
                VdirConfig {
                    kerberos_realms: vec!["CORP.EXAMPLE".into()],
                    ..base(Negotiate)
                },
            ),
            (
                base(Ntlm),
                VdirConfig {
                    ntlm_domain: Some("SECURE".into()),
                    ..base(Ntlm)
                },
            ),
            (
                base(Negotiate),
                VdirConfig {
                    service_principal: Some("HTTP/other".into()),
                    ..base(Negotiate)
                },
            ),
            (
                base(Negotiate),
                VdirConfig {
                    keytab: Some("/etc/other.keytab".into()),
                    ..base(Negotiate)
                },
            ),
        ];
        for (a, b) in differs {
            assert!(
                matches!(pair(a, b).validate(), Err(ConfigError::RootsOverlap { .. })),
                "policies that differ shared a root"
            );
        }
        let same = (
            VdirConfig {
                kerberos_realms: vec!["corp.example".into(), "B.EXAMPLE".into()],
                ntlm_domain: Some("corp".into()),
                ..base(Negotiate)
            },
            VdirConfig {
                kerberos_realms: vec!["B.EXAMPLE".into(), "CORP.EXAMPLE".into()],
                ntlm_domain: Some("CORP".into()),
                ..base(Negotiate)
            },
        );
        pair(same.0, same.1).validate().unwrap();
    }

    /// Issue 26 finding 1: on S3 `uploads-private` and `/uploads-private` are the same keys,
    /// whatever directory `check-config` runs in.
    #[test]
    fn s3_roots_are_compared_as_keys_whatever_the_working_directory() {
        use crate::config::AuthMode::{Anonymous, Basic};
        let s3: crate::store::object::S3Config =
            toml::from_str("bucket = \"b\"\naccess_key = \"a\"\nsecret_key = \"s\"").unwrap();
        let mut private = vdir("/private/", "uploads-private", Basic);
        private.download_enabled = true;
        for public_root in [
            "/uploads-private",
            "./uploads-private/",
            "uploads-private//sub",
        ] {
            let c = ServerConfig {
                storage: StorageConfig::S3(s3.clone()),
                vdirs: vec![private.clone(), vdir("/pub/", public_root, Anonymous)],
                ..ServerConfig::default()
            };
            assert!(
                matches!(c.validate(), Err(ConfigError::RootsOverlap { .. })),
                "{public_root}"
            );
        }
        let c = ServerConfig {
            storage: StorageConfig::S3(s3.clone()),
            vdirs: vec![private.clone(), vdir("/pub/", "/uploads-public", Anonymous)],
            ..ServerConfig::default()
        };
        c.validate().unwrap();
        let c = ServerConfig {
            storage: StorageConfig::S3(s3),
            vdirs: vec![vdir("/pub/", "a/../uploads-private", Anonymous)],
            ..ServerConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::DotDotInS3Root(..))));
    }

    #[test]
    fn s3_roots_are_compared_with_the_session_objects_by_segment() {
        let p = Path::new;
        assert!(overlaps_s3_sessions(p("spool"), "spool", false));
        assert!(overlaps_s3_sessions(
            p("./spool//sessions"),
            "spool/",
            false
        ));
        assert!(overlaps_s3_sessions(p("sessions"), "", false));
        assert!(overlaps_s3_sessions(p("../x"), "", false));
        assert!(!overlaps_s3_sessions(p("sessionsx"), "", false));
        assert!(!overlaps_s3_sessions(p("spool/uploads"), "spool", false));
        // A per-user base above the sessions is checked per user, not refused.
        assert!(!overlaps_s3_sessions(p("spool"), "spool", true));
        assert!(overlaps_s3_sessions(p("spool/sessions/u"), "spool", true));
    }
}
