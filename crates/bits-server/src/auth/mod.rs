//! Who is asking: anonymous, HTTP Basic against a file of argon2 hashes, or a verified TLS
//! client certificate. Designed so that Negotiate/NTLM can be added as one more mode (see
//! docs/security.md).

mod handshake;
pub mod kerberos;
pub mod spnego;
pub use bits_proto::ntlm;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash;
use argon2::password_hash::{
    rand_core::{OsRng, RngCore},
    PasswordHash, PasswordHasher, SaltString,
};
use argon2::Argon2;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::VdirConfig;

/// How a vdir authenticates its clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Anonymous,
    /// HTTP Basic; the BITS client sends credentials after a 401 challenge.
    Basic,
    /// The subject of a verified TLS client certificate.
    ClientCert,
    /// NTLMv2 (Windows integrated authentication), users from the users file's NT hashes; the
    /// identity belongs to the connection that completed the handshake.
    Ntlm,
    /// HTTP Negotiate: Kerberos tickets checked with the vdir's keytab, and NTLM (raw or
    /// inside Negotiate, as IIS takes it) for users with an NT hash in `users_file`, if any.
    Negotiate,
}

/// What the connection itself says about the client.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub tls: bool,
    /// Identity from a verified client certificate.
    pub cert_identity: Option<String>,
    /// This connection's NTLM handshake (connection-bound, as NTLM is).
    pub ntlm: Arc<handshake::NtlmConn>,
    /// The Kerberos principal this connection authenticated as, if any (as IIS, the identity
    /// stays with the connection).
    pub negotiated: Arc<Mutex<Option<String>>>,
    /// The mutual-authentication token (base64 AP-REP) owed to the response of the request
    /// that presented the ticket.
    pub mutual: Arc<Mutex<Option<String>>>,
    /// The mechanism list of this connection's SPNEGO NegTokenInit (DER), which the final
    /// `mechListMIC`s sign when NTLM runs inside SPNEGO.
    pub spnego_mechs: Arc<Mutex<Option<Vec<u8>>>>,
}

/// What a 401 asks the client for (`WWW-Authenticate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    /// `NTLM`, or `NTLM <challenge message>` in the middle of a handshake.
    Ntlm(Option<String>),
    /// `Negotiate` (and `NTLM` too when the vdir has NTLM users), or `Negotiate <token>` in
    /// the middle of an NTLM handshake carried inside Negotiate.
    Negotiate {
        token: Option<String>,
        ntlm: bool,
    },
}

impl Challenge {
    /// The `WWW-Authenticate` values, one header each.
    pub fn header_values(&self) -> Vec<String> {
        match self {
            Challenge::Basic => vec![BASIC_CHALLENGE.to_string()],
            Challenge::Ntlm(None) => vec!["NTLM".to_string()],
            Challenge::Ntlm(Some(token)) => vec![format!("NTLM {token}")],
            Challenge::Negotiate { token: Some(t), .. } => vec![format!("Negotiate {t}")],
            Challenge::Negotiate { token: None, ntlm } => {
                let mut v = vec!["Negotiate".to_string()];
                if *ntlm {
                    v.push("NTLM".to_string());
                }
                v
            }
        }
    }
}

const BASIC_CHALLENGE: &str = "Basic realm=\"bitsd\", charset=\"UTF-8\"";

#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Go on as this principal (`None`: anonymous).
    Allowed(Option<String>),
    /// 401 with this challenge.
    Challenge(Challenge),
    /// 403: this connection can never be allowed (no TLS where required, no certificate).
    Forbidden,
    /// 503: a failure budget is spent or the verification queue is full; nothing was checked.
    Throttled,
}

/// How long a verified password is remembered, so that every fragment of an upload does not
/// pay a full argon2 verification.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// Verified passwords remembered per users file at most; only right passwords get in, so this
/// is reached only by that many clients within `VERIFIED_TTL`, and then the oldest is forgotten.
const VERIFIED_MAX: usize = 4096;

/// The `[basic_auth]` table: what password checks may cost. An argon2 verification takes tens of
/// milliseconds of CPU and 19 MiB, and anyone who can reach a Basic vdir can ask for one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuthLimits {
    /// Password verifications running at once (each on a blocking thread); the others wait
    /// their turn without holding a thread. 0 (default): the number of CPUs.
    pub verify_concurrency: usize,
    /// Requests allowed to wait for a verification slot; past that they get 503 at once.
    pub max_waiting: usize,
    /// Wrong passwords accepted for one user name (existing or not) per `failure_window`; past
    /// that the name gets 503 without a verification, except for a password verified in the
    /// last 5 minutes. 0: no limit.
    pub failures_per_user: u32,
    /// Wrong passwords accepted from one client address (IPv6: one /64) per `failure_window`;
    /// past that every Basic request from it gets 503 without a verification. 0: no limit.
    pub failures_per_ip: u32,
    /// The window the failure budgets count in; each budget refills when its window ends.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// User names and addresses each failure table tracks at most (memory stays bounded
    /// against floods of distinct names); when full, the entry with the fewest failures goes.
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

/// The users of one credentials file: lines `name:$argon2id$...` (Basic) and `name:$NT$<32 hex>`
/// (the NT hash NTLM needs: password-equivalent); `#` starts a comment.
pub struct Users {
    hashes: HashMap<String, String>,
    /// NT hashes by lower-cased name (Windows names are case-insensitive), with the name as
    /// written in the file.
    nt_hashes: HashMap<String, (String, [u8; 16])>,
    /// An argon2 hash of a random password with the parameters of the file's (first) hash:
    /// verified against for unknown names, so that they cost as much as a wrong password.
    dummy: String,
    /// Keys verified passwords in `verified` (randomly keyed): a memory dump must not hand out
    /// fast, unsalted password hashes.
    cache_mac: Hmac<Sha256>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {0}: {1}")]
    Read(String, io::Error),
    #[error("{0} line {1}: expected name:argon2-hash or name:$NT$<32 hex digits>")]
    Syntax(String, usize),
    #[error("vdir {0:?}: auth = \"basic\" and auth = \"ntlm\" need users_file")]
    MissingUsersFile(String),
    #[error("{0}: cannot set up password checks: {1}")]
    Setup(String, String),
    #[error("vdir {0:?}: auth = \"negotiate\" needs keytab")]
    MissingKeytab(String),
    #[error(transparent)]
    Keytab(#[from] kerberos::keytab::KeytabError),
}

impl Users {
    pub fn parse(text: &str, origin: &str) -> Result<Users, AuthError> {
        let mut hashes = HashMap::new();
        let mut nt_hashes = HashMap::new();
        let mut params = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| AuthError::Syntax(origin.into(), i + 1))?;
            if let Some(hex) = hash.strip_prefix(NT_PREFIX) {
                let nt =
                    parse_nt_hash(hex).ok_or_else(|| AuthError::Syntax(origin.into(), i + 1))?;
                if name.is_empty() {
                    return Err(AuthError::Syntax(origin.into(), i + 1));
                }
                nt_hashes.insert(name.to_lowercase(), (name.to_string(), nt));
                continue;
            }
            let parsed =
                PasswordHash::new(hash).map_err(|_| AuthError::Syntax(origin.into(), i + 1))?;
            if name.is_empty() {
                return Err(AuthError::Syntax(origin.into(), i + 1));
            }
            if params.is_none() {
                params = Some(hasher_for(&parsed));
            }
            hashes.insert(name.to_string(), hash.to_string());
        }
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        let dummy = params
            .unwrap_or_default()
            .hash_password(&random, &SaltString::generate(&mut OsRng))
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Setup(origin.into(), e.to_string()))?;
        let mut cache_key = [0u8; 32];
        OsRng.fill_bytes(&mut cache_key);
        let cache_mac = <Hmac<Sha256> as Mac>::new_from_slice(&cache_key)
            .map_err(|e| AuthError::Setup(origin.into(), e.to_string()))?;
        Ok(Users {
            hashes,
            nt_hashes,
            dummy,
            cache_mac,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read(origin.clone(), e))?;
        Users::parse(&text, &origin)
    }

    /// Names with a Basic (argon2) or an NTLM (NT hash) entry, counted once each.
    pub fn len(&self) -> usize {
        let only_nt = self
            .nt_hashes
            .values()
            .filter(|(name, _)| !self.hashes.contains_key(name))
            .count();
        self.hashes.len() + only_nt
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any user has an NT hash (NTLM is offered).
    pub fn has_nt_hashes(&self) -> bool {
        !self.nt_hashes.is_empty()
    }

    /// The NT hash of `user` (case-insensitive) and the name as the file writes it.
    pub fn nt_hash(&self, user: &str) -> Option<&(String, [u8; 16])> {
        self.nt_hashes.get(&user.to_lowercase())
    }

    fn cache_slot(&self, user: &str, password: &str) -> [u8; 32] {
        // The length prefix keeps ("a\0b", "c") and ("a", "b\0c") apart.
        let mut mac = self.cache_mac.clone();
        mac.update(&(user.len() as u64).to_le_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A password verified in the last `VERIFIED_TTL` (cheap: no argon2).
    pub fn remembered(&self, user: &str, password: &str) -> bool {
        if !self.hashes.contains_key(user) {
            return false;
        }
        let slot = self.cache_slot(user, password);
        let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&slot).is_some_and(|t| t.elapsed() < VERIFIED_TTL)
    }

    /// Forgets every verified password (users file reloaded).
    pub fn forget_verified(&self) {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Checks a password: the cache, else one argon2 verification, against the dummy hash for
    /// an unknown user so that the answer takes as long. CPU-heavy: call from a blocking context.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.remembered(user, password) || self.verify_slow(user, password)
    }

    /// One argon2 verification, whatever the cache says.
    fn verify_slow(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = verify_hash(hash, password.as_bytes()) && known;
        if ok {
            self.remember(user, password);
        }
        ok
    }

    fn remember(&self, user: &str, password: &str) {
        let slot = self.cache_slot(user, password);
        let now = Instant::now();
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_MAX && !cache.contains_key(&slot) {
            cache.retain(|_, t| now.duration_since(*t) < VERIFIED_TTL);
            if cache.len() >= VERIFIED_MAX {
                if let Some(oldest) = cache.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(slot, now);
    }
}

/// Argon2 working memory (19 MiB per verification with the default parameters), kept for
/// reuse: a fresh allocation per verification leaves a copy cached in each thread's malloc
/// arena, so resident memory would grow with the number of threads that ever verified rather
/// than with the number of verifications allowed at once. Holds at most as many buffers as
/// verifications ever ran concurrently (`verify_concurrency`).
static SCRATCH: Mutex<Vec<Vec<argon2::Block>>> = Mutex::new(Vec::new());

/// Checks `password` against a PHC argon2 hash string, in reused working memory.
fn verify_hash(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let hasher = hasher_for(&parsed);
    let blocks = hasher.params().block_count();
    let mut memory = SCRATCH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let computed =
        hasher.hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks]);
    SCRATCH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(memory);
    // `Output` compares in constant time.
    computed.is_ok() && password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// The argon2 instance a hash was made with (algorithm, version, cost parameters).
fn hasher_for(hash: &PasswordHash<'_>) -> Argon2<'static> {
    let algorithm = argon2::Algorithm::try_from(hash.algorithm).unwrap_or_default();
    let version = hash
        .version
        .and_then(|v| argon2::Version::try_from(v).ok())
        .unwrap_or_default();
    let params = argon2::Params::try_from(hash).unwrap_or_default();
    Argon2::new(algorithm, version, params)
}

/// An argon2id hash for a users file.
/// Whether the request's `Authorization` uses the `Negotiate` scheme (not `NTLM`).
fn negotiate_scheme(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start().len() > 9 && v.trim_start()[..9].eq_ignore_ascii_case("negotiate")
        })
}

/// How an NT hash is written in a users file: `name:$NT$<32 hex digits>`.
pub const NT_PREFIX: &str = "$NT$";

/// The users-file entry value for `password` under NTLM: `$NT$<hex of the NT hash>`.
pub fn nt_hash_entry(password: &str) -> String {
    let hash = ntlm::nt_hash(password);
    format!("{NT_PREFIX}{}", hex::encode(hash))
}

fn parse_nt_hash(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Decodes `Authorization: Basic ...` into user and password.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Failures counted per key in fixed windows, in a table of bounded size.
struct FailureBudget<K> {
    limit: u32,
    window: Duration,
    cap: usize,
    /// Per key: when its window started, and the attempts counted in it.
    entries: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureBudget<K> {
    fn new(limit: u32, window: Duration, cap: usize) -> Self {
        FailureBudget {
            limit,
            window,
            cap: cap.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt against `key` before it is made (so that concurrent attempts cannot
    /// all slip under the limit); false, and nothing counted, when the budget is spent.
    fn take(&self, key: &K) -> bool {
        if self.limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(key) && entries.len() >= self.cap {
            let window = self.window;
            entries.retain(|_, (start, _)| now.duration_since(*start) < window);
            if entries.len() >= self.cap {
                // The fewest failures, oldest first: keys near their limit are what matters.
                if let Some(victim) = entries
                    .iter()
                    .min_by_key(|(_, (start, n))| (*n, *start))
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&victim);
                }
            }
        }
        let (start, n) = entries.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *n = 0;
        }
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Whether `key` has no attempt left in its current window (nothing is taken).
    fn exhausted(&self, key: &K) -> bool {
        if self.limit == 0 {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|(start, n)| {
            Instant::now().duration_since(*start) < self.window && *n >= self.limit
        })
    }

    /// Gives back an attempt that succeeded (or was never made).
    fn refund(&self, key: &K) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = entries.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The budget key of a client address: IPv6 clients usually hold a whole /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The budget key of a user name: fixed size, however long the name a client sends.
fn name_key(user: &str) -> [u8; 32] {
    Sha256::digest(user.as_bytes()).into()
}

/// Holds a place in the verification queue; gives it back however the request ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-vdir authentication, built once from the configuration; users files reload on demand.
pub struct Authenticator {
    /// Per vdir, the users file of a Basic vdir.
    files: Vec<Option<PathBuf>>,
    users: RwLock<Vec<Option<Arc<Users>>>>,
    /// Per vdir, the Kerberos acceptor of a Negotiate vdir.
    acceptors: Vec<Option<Arc<kerberos::acceptor::Acceptor>>>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    per_user: FailureBudget<[u8; 32]>,
    per_ip: FailureBudget<IpAddr>,
}

impl Authenticator {
    pub fn new(vdirs: &[VdirConfig]) -> Result<Authenticator, AuthError> {
        Self::with_limits(vdirs, &BasicAuthLimits::default())
    }

    pub fn with_limits(
        vdirs: &[VdirConfig],
        limits: &BasicAuthLimits,
    ) -> Result<Authenticator, AuthError> {
        let files = vdirs
            .iter()
            .map(|v| match (v.auth, &v.users_file) {
                (AuthMode::Basic | AuthMode::Ntlm | AuthMode::Negotiate, Some(path)) => {
                    Ok(Some(path.clone()))
                }
                (AuthMode::Basic | AuthMode::Ntlm, None) => {
                    Err(AuthError::MissingUsersFile(v.prefix.clone()))
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let users = files
            .iter()
            .map(|f| {
                f.as_deref()
                    .map(Users::load)
                    .transpose()
                    .map(|u| u.map(Arc::new))
            })
            .collect::<Result<_, _>>()?;
        let acceptors = vdirs
            .iter()
            .map(|v| match (v.auth, &v.keytab) {
                (AuthMode::Negotiate, Some(path)) => {
                    Ok(Some(Arc::new(kerberos::acceptor::Acceptor::new(
                        kerberos::keytab::load(path)?,
                        v.service_principal.clone(),
                        v.kerberos_realms.clone(),
                    ))))
                }
                (AuthMode::Negotiate, None) => Err(AuthError::MissingKeytab(v.prefix.clone())),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, AuthError>>()?;
        let concurrency = match limits.verify_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Authenticator {
            files,
            users: RwLock::new(users),
            acceptors,
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: AtomicUsize::new(0),
            max_waiting: limits.max_waiting,
            per_user: FailureBudget::new(
                limits.failures_per_user,
                limits.failure_window,
                limits.max_tracked,
            ),
            per_ip: FailureBudget::new(
                limits.failures_per_ip,
                limits.failure_window,
                limits.max_tracked,
            ),
        })
    }

    /// Re-reads every users file (blocking: file I/O and one argon2 hash each). A file that
    /// cannot be read or parsed keeps the users loaded before; every verified password is
    /// forgotten either way. Returns the errors, each naming its file.
    pub fn reload(&self) -> Vec<AuthError> {
        let mut errors = Vec::new();
        let fresh: Vec<Option<Result<Users, AuthError>>> = self
            .files
            .iter()
            .map(|f| f.as_deref().map(Users::load))
            .collect();
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        for (slot, fresh) in users.iter_mut().zip(fresh) {
            match fresh {
                Some(Ok(u)) => *slot = Some(Arc::new(u)),
                Some(Err(e)) => {
                    if let Some(old) = slot {
                        old.forget_verified();
                    }
                    errors.push(e);
                }
                None => {}
            }
        }
        errors
    }

    fn users(&self, vdir_index: usize) -> Option<Arc<Users>> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(vdir_index)
            .cloned()
            .flatten()
    }

    pub async fn authenticate(
        &self,
        vdir_index: usize,
        vdir: &VdirConfig,
        headers: &HeaderMap,
        conn: &ConnInfo,
        peer: Option<IpAddr>,
    ) -> AuthOutcome {
        if vdir.require_tls && !conn.tls {
            return AuthOutcome::Forbidden;
        }
        match vdir.auth {
            AuthMode::Anonymous => AuthOutcome::Allowed(None),
            AuthMode::ClientCert => match &conn.cert_identity {
                Some(id) => AuthOutcome::Allowed(Some(id.clone())),
                None => AuthOutcome::Forbidden,
            },
            AuthMode::Basic => {
                let (Some(users), Some((user, password))) =
                    (self.users(vdir_index), basic_credentials(headers))
                else {
                    return AuthOutcome::Challenge(Challenge::Basic);
                };
                self.check_password(users, user, password, peer.map(ip_key))
                    .await
            }
            AuthMode::Ntlm => {
                let Some(users) = self.users(vdir_index) else {
                    return AuthOutcome::Challenge(Challenge::Ntlm(None));
                };
                let ip = peer.map(ip_key);
                if ip.is_some_and(|ip| self.per_ip.exhausted(&ip)) {
                    tracing::debug!(
                        ?ip,
                        "failure budget of this address spent: no NTLM handshake"
                    );
                    return AuthOutcome::Throttled;
                }
                let outcome = conn.ntlm.step(headers, &users, vdir.ntlm_domain.as_deref());
                match &outcome {
                    // A wrong password counts against the address, as for Basic.
                    handshake::Step::Failed => {
                        if let Some(ip) = ip {
                            self.per_ip.take(&ip);
                        }
                    }
                    handshake::Step::Allowed(_) | handshake::Step::Challenge(_) => {}
                }
                outcome.into()
            }
            AuthMode::Negotiate => self.negotiate(vdir_index, vdir, headers, conn, peer),
        }
    }

    /// A Negotiate vdir: Kerberos with the keytab, or NTLM (raw or inside Negotiate) for users
    /// with an NT hash. An authenticated connection stays so.
    fn negotiate(
        &self,
        vdir_index: usize,
        vdir: &VdirConfig,
        headers: &HeaderMap,
        conn: &ConnInfo,
        peer: Option<IpAddr>,
    ) -> AuthOutcome {
        let users = self.users(vdir_index);
        let ntlm_users = users.as_ref().is_some_and(|u| u.has_nt_hashes());
        let challenge = |token| {
            AuthOutcome::Challenge(Challenge::Negotiate {
                token,
                ntlm: ntlm_users,
            })
        };
        let ip = peer.map(ip_key);
        if ip.is_some_and(|ip| self.per_ip.exhausted(&ip)) {
            return AuthOutcome::Throttled;
        }
        let fail = || {
            if let Some(ip) = ip {
                self.per_ip.take(&ip);
            }
        };
        let token = handshake::authorization_token(headers);
        let Some(token) = token else {
            if let Some(name) = conn
                .negotiated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return AuthOutcome::Allowed(Some(name));
            }
            // An NTLM handshake (or none) on this connection: NTLM's own rules.
            return match (&users, ntlm_users) {
                (Some(u), true) => match conn.ntlm.step(headers, u, vdir.ntlm_domain.as_deref()) {
                    handshake::Step::Allowed(name) => AuthOutcome::Allowed(Some(name)),
                    handshake::Step::Challenge(Some(t)) => {
                        AuthOutcome::Challenge(Challenge::Ntlm(Some(t)))
                    }
                    _ => challenge(None),
                },
                _ => challenge(None),
            };
        };
        if let Some(inner) = spnego::ntlm_inside(&token) {
            // NTLM inside SPNEGO (Windows' fallback when it has no ticket): answered inside
            // SPNEGO too, the mechanism list signed both ways once NTLM completes.
            let Some(u) = users.filter(|_| ntlm_users) else {
                fail();
                return challenge(None);
            };
            if let Some(mechs) = spnego::mech_types(&token) {
                *conn.spnego_mechs.lock().unwrap_or_else(|p| p.into_inner()) = Some(mechs);
            }
            return match conn
                .ntlm
                .step_message(Some(inner), &u, vdir.ntlm_domain.as_deref())
            {
                handshake::Step::Allowed(name) => {
                    let mechs = conn
                        .spnego_mechs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    let (Some(session), Some(mechs)) = (conn.ntlm.session(), mechs) else {
                        return challenge(None);
                    };
                    // The client's MIC over the list (when it sent one) proves nobody
                    // stripped Kerberos from its offer.
                    if let Some(theirs) = spnego::client_mic(&token) {
                        if theirs != session.client_signature(&mechs) {
                            tracing::info!(user = %name, "SPNEGO: the client's mechListMIC does not verify");
                            conn.ntlm.reset();
                            fail();
                            return challenge(None);
                        }
                    }
                    let mic = session.server_signature(&mechs);
                    *conn.mutual.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(spnego::response(spnego::ACCEPT_COMPLETED, None, Some(&mic)));
                    AuthOutcome::Allowed(Some(name))
                }
                handshake::Step::Challenge(Some(t)) => {
                    use base64::Engine as _;
                    match base64::engine::general_purpose::STANDARD.decode(&t) {
                        Ok(message) => challenge(Some(spnego::response(
                            spnego::ACCEPT_INCOMPLETE,
                            Some(&message),
                            None,
                        ))),
                        Err(_) => challenge(None),
                    }
                }
                handshake::Step::Challenge(None) => challenge(None),
                handshake::Step::Failed => {
                    fail();
                    challenge(None)
                }
            };
        }
        if token.starts_with(b"NTLMSSP\0") {
            let Some(u) = users.filter(|_| ntlm_users) else {
                fail();
                return challenge(None);
            };
            return match conn.ntlm.step(headers, &u, vdir.ntlm_domain.as_deref()) {
                handshake::Step::Allowed(name) => AuthOutcome::Allowed(Some(name)),
                // Answered in the scheme it was asked in.
                handshake::Step::Challenge(Some(t)) if negotiate_scheme(headers) => {
                    challenge(Some(t))
                }
                handshake::Step::Challenge(Some(t)) => {
                    AuthOutcome::Challenge(Challenge::Ntlm(Some(t)))
                }
                handshake::Step::Challenge(None) => challenge(None),
                handshake::Step::Failed => {
                    fail();
                    challenge(None)
                }
            };
        }
        let Some(acceptor) = self.acceptors.get(vdir_index).cloned().flatten() else {
            return challenge(None);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match acceptor.accept(&token, now) {
            Ok(accepted) => {
                use base64::Engine as _;
                *conn.negotiated.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(accepted.principal.clone());
                *conn.mutual.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(base64::engine::general_purpose::STANDARD.encode(&accepted.reply));
                AuthOutcome::Allowed(Some(accepted.principal))
            }
            Err(e) => {
                tracing::info!(error = %e, "Kerberos authentication failed");
                fail();
                challenge(None)
            }
        }
    }

    /// The address budget first (a spent address gets nothing, not even the cache), then the
    /// cache (so a client in the middle of an upload survives an attack on its name), then the
    /// name budget, then a place in the queue, then argon2.
    async fn check_password(
        &self,
        users: Arc<Users>,
        user: String,
        password: String,
        ip: Option<IpAddr>,
    ) -> AuthOutcome {
        if ip.is_some_and(|ip| !self.per_ip.take(&ip)) {
            tracing::debug!(?ip, "failure budget of this address spent: not verifying");
            return AuthOutcome::Throttled;
        }
        let refund_ip = || {
            if let Some(ip) = ip {
                self.per_ip.refund(&ip);
            }
        };
        if users.remembered(&user, &password) {
            refund_ip();
            return AuthOutcome::Allowed(Some(user));
        }
        let name = name_key(&user);
        if !self.per_user.take(&name) {
            tracing::debug!("failure budget of this user name spent: not verifying");
            return AuthOutcome::Throttled;
        }
        let Some(permit) = self.verification_slot().await else {
            refund_ip();
            self.per_user.refund(&name);
            tracing::warn!(
                waiting = self.max_waiting,
                "password verification queue full: answering 503"
            );
            return AuthOutcome::Throttled;
        };
        let name_for_check = user.clone();
        // The permit moves into the blocking task: a client that hangs up must not free its
        // slot while its verification still runs.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            users.verify_slow(&name_for_check, &password)
        })
        .await
        .unwrap_or(false);
        if ok {
            refund_ip();
            self.per_user.refund(&name);
            AuthOutcome::Allowed(Some(user))
        } else {
            AuthOutcome::Challenge(Challenge::Basic)
        }
    }

    /// Waits for one of the `verify_concurrency` slots; `None` when `max_waiting` requests are
    /// waiting already.
    async fn verification_slot(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let _waiting = Waiting(&self.waiting);
        self.slots.clone().acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_cache() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("# users\nalice:{hash}\n"), "test").unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
        assert!(Users::parse("alice:not-a-hash", "test").is_err());
        assert!(Users::parse("no-colon", "test").is_err());
    }

    #[test]
    fn dummy_hash_has_the_users_parameters() {
        let salt = SaltString::generate(&mut OsRng);
        let cheap = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(1024, 3, 1, None).unwrap(),
        );
        let hash = cheap.hash_password(b"pw", &salt).unwrap().to_string();
        let users = Users::parse(&format!("alice:{hash}\n"), "test").unwrap();
        let dummy = PasswordHash::new(&users.dummy).unwrap();
        assert_eq!(argon2::Params::try_from(&dummy).unwrap().m_cost(), 1024);
        assert_eq!(argon2::Params::try_from(&dummy).unwrap().t_cost(), 3);
        assert!(!users.verify("nobody", "pw"));
        // An empty file still gets a dummy (default parameters).
        assert!(!Users::parse("", "test").unwrap().verify("x", "y"));
    }

    #[test]
    fn cache_keys_do_not_collide_across_the_name_boundary() {
        let hash = hash_password("b\0c").unwrap();
        let users = Users::parse(&format!("a:{hash}\na\0b:{hash}\n"), "test").unwrap();
        assert!(users.verify("a", "b\0c"));
        assert!(users.remembered("a", "b\0c"));
        assert!(!users.remembered("a\0b", "c"));
    }

    #[test]
    fn verified_cache_is_bounded_and_forgotten() {
        let hash = hash_password("pw").unwrap();
        let users = Users::parse(&format!("alice:{hash}\n"), "test").unwrap();
        for i in 0..VERIFIED_MAX + 10 {
            users.remember("alice", &format!("pw{i}"));
        }
        assert_eq!(users.verified.lock().unwrap().len(), VERIFIED_MAX);
        assert!(users.remembered("alice", &format!("pw{}", VERIFIED_MAX + 9)));
        users.forget_verified();
        assert!(!users.remembered("alice", &format!("pw{}", VERIFIED_MAX + 9)));
    }

    #[test]
    fn failure_budget_counts_refunds_and_stays_bounded() {
        let b = FailureBudget::new(3, Duration::from_secs(60), 100);
        assert!(b.take(&1u32) && b.take(&1) && b.take(&1));
        assert!(!b.take(&1));
        b.refund(&1);
        assert!(b.take(&1));
        assert!(!b.take(&1));
        // A flood of distinct keys: the table stays at its cap, and the spent key survives it
        // (it has the most failures).
        for k in 2..10_000u32 {
            assert!(b.take(&k));
        }
        assert_eq!(b.len(), 100);
        assert!(!b.take(&1));
        // Limit 0: no limit, nothing tracked.
        let open = FailureBudget::new(0, Duration::from_secs(60), 10);
        assert!((0..100u32).all(|k| open.take(&k)));
        assert_eq!(open.len(), 0);
        // The window ends: the budget refills.
        let short = FailureBudget::new(1, Duration::from_millis(20), 10);
        assert!(short.take(&1u32));
        assert!(!short.take(&1));
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.take(&1));
    }

    #[test]
    fn ipv6_budget_keys_cover_a_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn documented_basic_auth_table_parses() {
        let c: crate::ServerConfig = toml::from_str(
            r#"
            [basic_auth]
            verify_concurrency = 0
            max_waiting = 64
            failures_per_user = 10
            failures_per_ip = 30
            failure_window = "1m"
            max_tracked = 10000
            "#,
        )
        .unwrap();
        assert_eq!(c.basic_auth.failure_window, Duration::from_secs(60));
        assert!(toml::from_str::<crate::ServerConfig>("[basic_auth]\nbogus = 1").is_err());
    }

    fn basic_vdir(users_file: &Path) -> VdirConfig {
        VdirConfig {
            auth: AuthMode::Basic,
            users_file: Some(users_file.to_path_buf()),
            ..VdirConfig::default()
        }
    }

    #[tokio::test]
    async fn reload_replaces_users_and_keeps_them_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users");
        let alice = hash_password("a").unwrap();
        let bob = hash_password("b").unwrap();
        std::fs::write(&file, format!("alice:{alice}\nbob:{bob}\n")).unwrap();
        let vdirs = [basic_vdir(&file)];
        let auth = Authenticator::new(&vdirs).unwrap();
        let check = |u: &str, p: &str| {
            let mut h = HeaderMap::new();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            h.insert("authorization", format!("Basic {token}").parse().unwrap());
            let auth = &auth;
            let vdir = &vdirs[0];
            async move {
                auth.authenticate(0, vdir, &h, &ConnInfo::default(), None)
                    .await
            }
        };
        assert_eq!(
            check("bob", "b").await,
            AuthOutcome::Allowed(Some("bob".into()))
        );
        std::fs::write(&file, format!("alice:{alice}\n")).unwrap();
        assert!(auth.reload().is_empty());
        assert_eq!(
            check("bob", "b").await,
            AuthOutcome::Challenge(Challenge::Basic)
        );
        assert_eq!(
            check("alice", "a").await,
            AuthOutcome::Allowed(Some("alice".into()))
        );
        std::fs::write(&file, "garbage\n").unwrap();
        assert_eq!(auth.reload().len(), 1);
        assert!(auth.users(0).unwrap().verified.lock().unwrap().is_empty());
        assert_eq!(
            check("alice", "a").await,
            AuthOutcome::Allowed(Some("alice".into()))
        );
    }

    #[test]
    fn decodes_basic() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic YWxpY2U6czNjcjp0".parse().unwrap());
        assert_eq!(
            basic_credentials(&h),
            Some(("alice".into(), "s3cr:t".into()))
        );
        h.insert("authorization", "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
        h.insert("authorization", "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }
}
