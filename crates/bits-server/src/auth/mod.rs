//! Who is asking. Each vdir gets one [`Authenticator`] built from its configuration (anonymous,
//! Basic, client certificate, NTLM, Negotiate), and every request is decided by the
//! authenticator of the vdir it names, against that vdir's policy:
//!
//! - A connection remembers a completed handshake ([`conn::ConnAuth`]) only tagged with the
//!   policy that accepted it; a request to a vdir of another policy authenticates afresh, so
//!   an identity never travels from one vdir to another on a keep-alive connection.
//! - `persist_auth = "request"`, and every connection from a `trusted_proxies` address, keep
//!   nothing beyond the request that completed the handshake: a proxy that pools connections
//!   cannot hand one client's identity to the next.
//! - What checks may cost is shared by the whole server ([`Shared`]): failure budgets per user
//!   name and per address, the argon2 queue, and the Kerberos replay cache of the node.
//!
//! Module map: `users` (the users file), `budget`, `conn` (per-connection memory and the policy
//! id), `basic`, `ntlm` (+ `handshake`: NTLM's legs), `negotiate` (+ `kerberos`, `spnego`,
//! `replay`), `binding` (TLS channel bindings). The NTLM and Kerberos wire formats live in
//! `bits-proto`.

mod basic;
pub mod binding;
pub(crate) mod budget;
pub mod conn;
mod handshake;
pub mod kerberos;
mod negotiate;
mod ntlm;
pub mod replay;
pub mod spnego;
mod users;

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;

pub use crate::config::{AuthMode, BasicAuthLimits};
use crate::config::{PersistAuth, ServerConfig, VdirConfig};
pub use conn::{ConnAuth, PolicyId};
pub use users::{basic_credentials, fold_name, hash_password, nt_hash_entry, Users, NT_PREFIX};

use users::UsersFile;

/// What the connection itself says about the client.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub tls: bool,
    /// Identity from a verified client certificate.
    pub cert_identity: Option<String>,
    /// Over TLS: the channel bindings (`tls-server-end-point` of the certificate this
    /// connection presented) a client's NTLM or Kerberos token must carry, if it carries any.
    pub channel_binding: Option<[u8; 16]>,
    /// What this connection remembers of authentication.
    pub auth: Arc<ConnAuth>,
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
    /// Go on as this principal (`None`: anonymous); `reply` is a token owed to the client on
    /// this request's response (`WWW-Authenticate: Negotiate <reply>`: Kerberos' AP-REP, or
    /// SPNEGO's final answer with the server's `mechListMIC`).
    Allowed {
        name: Option<String>,
        reply: Option<String>,
    },
    /// 401 with this challenge.
    Challenge(Challenge),
    /// 403: this connection can never be allowed, for this reason.
    Forbidden(Refusal),
    /// 503: a failure budget is spent or a queue or cache is full; nothing was checked.
    Throttled,
}

/// Why a connection can never be allowed: each has its own log line and reason for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Plain HTTP to a `require_tls` vdir.
    TlsRequired,
    /// A `client-cert` vdir, and the connection presented no (valid) certificate.
    NoClientCertificate,
    /// The vdir index is unknown (a bug, or a reload in between).
    UnknownVdir,
}

impl AuthOutcome {
    pub fn allowed(name: impl Into<String>) -> AuthOutcome {
        AuthOutcome::Allowed {
            name: Some(name.into()),
            reply: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {0}: {1}")]
    Read(String, io::Error),
    #[error("{0} line {1}: expected name:argon2-hash, name:bcrypt-hash ($2y$, $2b$, $2a$) or name:$NT$<32 hex digits> (names without control characters)")]
    Syntax(String, usize),
    #[error("{origin} line {line}: the password hash of {user:?} is {format}, {why}; replace it with bcrypt: htpasswd -B {origin} {user} (or argon2: bitsd passwd {origin} {user})")]
    WeakHash {
        origin: String,
        line: usize,
        user: String,
        format: &'static str,
        why: &'static str,
    },
    #[error("vdir {0:?}: auth = \"basic\" and auth = \"ntlm\" need users_file")]
    MissingUsersFile(String),
    #[error("{0}: cannot set up password checks: {1}")]
    Setup(String, String),
    #[error("vdir {0:?}: auth = \"negotiate\" needs keytab")]
    MissingKeytab(String),
    #[error(transparent)]
    Keytab(#[from] kerberos::keytab::KeytabError),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
}

/// One request as an authenticator sees it.
pub struct AuthRequest<'a> {
    pub headers: &'a HeaderMap,
    pub conn: &'a ConnInfo,
    pub peer: Option<IpAddr>,
    /// Whether a completed handshake's identity may stay with the connection.
    pub persist: bool,
}

/// One way of deciding who a request comes from, built for one vdir from its configuration.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome;
}

/// What every scheme's checks draw on: one per server.
pub(crate) struct Shared {
    pub(crate) budgets: budget::Budgets,
    pub(crate) passwords: basic::PasswordQueue,
    pub(crate) replay: Arc<replay::ReplayCache>,
}

struct Anonymous;

#[async_trait::async_trait]
impl Authenticator for Anonymous {
    async fn authenticate(&self, _: &AuthRequest<'_>) -> AuthOutcome {
        AuthOutcome::Allowed {
            name: None,
            reply: None,
        }
    }
}

struct ClientCert;

#[async_trait::async_trait]
impl Authenticator for ClientCert {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        match &req.conn.cert_identity {
            Some(id) => AuthOutcome::allowed(id.clone()),
            None => AuthOutcome::Forbidden(Refusal::NoClientCertificate),
        }
    }
}

struct VdirAuth {
    require_tls: bool,
    persist: PersistAuth,
    scheme: Box<dyn Authenticator>,
}

/// Every vdir's authenticator, built once from the configuration; users files reload on demand.
pub struct Auth {
    vdirs: Vec<VdirAuth>,
    /// Each users file once, however many vdirs name it.
    files: Vec<Arc<UsersFile>>,
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Auth {
    /// The server's authentication: opens the Kerberos replay cache file when a vdir uses
    /// Negotiate (blocking).
    pub fn new(config: &ServerConfig) -> Result<Auth, AuthError> {
        let negotiate = config.vdirs.iter().any(|v| v.auth == AuthMode::Negotiate);
        let k = &config.kerberos;
        let replay = if negotiate {
            let path = k
                .replay_cache
                .clone()
                .unwrap_or_else(|| config.spool_dir.join("kerberos-replay"));
            replay::ReplayCache::open(
                &path,
                k.replay_cache_max,
                k.replay_cache_per_principal,
                unix_now(),
            )?
        } else {
            replay::ReplayCache::in_memory(k.replay_cache_max, k.replay_cache_per_principal)
        };
        let auth = Self::build(
            &config.vdirs,
            &config.basic_auth,
            replay,
            config.trusted_proxies.clone(),
        )?;
        for w in auth.warnings() {
            tracing::warn!("{w}");
        }
        Ok(auth)
    }

    /// The vdirs' authentication with default limits and a replay cache in memory (tests,
    /// `check-config`).
    pub fn for_vdirs(vdirs: &[VdirConfig]) -> Result<Auth, AuthError> {
        Self::build(
            vdirs,
            &BasicAuthLimits::default(),
            replay::ReplayCache::in_memory(1 << 16, 1 << 12),
            Vec::new(),
        )
    }

    fn build(
        vdirs: &[VdirConfig],
        limits: &BasicAuthLimits,
        replay: replay::ReplayCache,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> Result<Auth, AuthError> {
        let shared = Arc::new(Shared {
            budgets: budget::Budgets::new(limits),
            passwords: basic::PasswordQueue::new(limits),
            replay: Arc::new(replay),
        });
        let mut files: Vec<(PathBuf, Arc<UsersFile>)> = Vec::new();
        let mut users_file = |v: &VdirConfig| -> Result<Option<Arc<UsersFile>>, AuthError> {
            let Some(path) = &v.users_file else {
                return Ok(None);
            };
            if let Some((_, f)) = files.iter().find(|(p, _)| p == path) {
                return Ok(Some(f.clone()));
            }
            let f = Arc::new(UsersFile::load(path)?);
            files.push((path.clone(), f.clone()));
            Ok(Some(f))
        };
        let mut built = Vec::with_capacity(vdirs.len());
        for v in vdirs {
            let policy = PolicyId::of(v);
            let verifier = |users| ntlm::NtlmVerifier {
                users,
                domain: v.ntlm_domain.clone(),
                target: v.service_principal.clone(),
                binding: v.channel_binding,
                shared: shared.clone(),
            };
            let scheme: Box<dyn Authenticator> = match v.auth {
                AuthMode::Anonymous => Box::new(Anonymous),
                AuthMode::ClientCert => Box::new(ClientCert),
                AuthMode::Basic => Box::new(basic::BasicAuth {
                    users: users_file(v)?
                        .ok_or_else(|| AuthError::MissingUsersFile(v.prefix.clone()))?,
                    policy,
                    shared: shared.clone(),
                }),
                AuthMode::Ntlm => Box::new(ntlm::NtlmAuth {
                    verifier: verifier(
                        users_file(v)?
                            .ok_or_else(|| AuthError::MissingUsersFile(v.prefix.clone()))?,
                    ),
                    policy,
                }),
                AuthMode::Negotiate => {
                    let keytab = v
                        .keytab
                        .as_ref()
                        .ok_or_else(|| AuthError::MissingKeytab(v.prefix.clone()))?;
                    Box::new(negotiate::NegotiateAuth {
                        acceptor: kerberos::acceptor::Acceptor::new(
                            kerberos::keytab::load(keytab)?,
                            v.service_principal.clone(),
                            v.kerberos_realms.clone(),
                        ),
                        ntlm: users_file(v)?.map(verifier),
                        policy,
                        binding: v.channel_binding,
                        shared: shared.clone(),
                    })
                }
            };
            built.push(VdirAuth {
                require_tls: v.require_tls,
                persist: v.persist_auth,
                scheme,
            });
        }
        Ok(Auth {
            vdirs: built,
            files: files.into_iter().map(|(_, f)| f).collect(),
            trusted_proxies,
        })
    }

    /// What the users files hold that is allowed but weak (`check-config` prints it, `serve`
    /// logs it at start and on reload).
    pub fn warnings(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| f.current().warnings().to_vec())
            .collect()
    }

    /// Re-reads every users file (blocking: file I/O and one argon2 or bcrypt hash each). A file that
    /// cannot be read or parsed keeps the users loaded before; every verified password is
    /// forgotten either way. Returns the errors, each naming its file.
    pub fn reload(&self) -> Vec<AuthError> {
        self.files.iter().filter_map(|f| f.reload().err()).collect()
    }

    /// Decides who sent a request for vdir `index`, by that vdir's rules alone.
    pub async fn authenticate(
        &self,
        index: usize,
        headers: &HeaderMap,
        conn: &ConnInfo,
        peer: Option<IpAddr>,
    ) -> AuthOutcome {
        let Some(vdir) = self.vdirs.get(index) else {
            return AuthOutcome::Forbidden(Refusal::UnknownVdir);
        };
        if vdir.require_tls && !conn.tls {
            return AuthOutcome::Forbidden(Refusal::TlsRequired);
        }
        let persist = vdir.persist == PersistAuth::Connection && !self.proxied(peer, headers);
        if !persist {
            // Nothing kept on this connection may speak for this request, whoever left it.
            conn.auth.forget_sign_in();
        }
        let req = AuthRequest {
            headers,
            conn,
            peer,
            persist,
        };
        vdir.scheme.authenticate(&req).await
    }

    /// Whether the request came through a proxy that may pool its connections: from a
    /// `trusted_proxies` address, or carrying a header only proxies add (`Forwarded`,
    /// `X-Forwarded-For`, `Via`). A client sending one itself only denies itself a kept sign-in.
    fn proxied(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
        let from_proxy = peer.is_some_and(|ip| {
            let ip = ip.to_canonical();
            self.trusted_proxies.iter().any(|n| n.contains(&ip))
        });
        from_proxy
            || ["forwarded", "x-forwarded-for", "via"]
                .iter()
                .any(|h| headers.contains_key(*h))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;
