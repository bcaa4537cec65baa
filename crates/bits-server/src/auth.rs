//! Who is asking: anonymous, HTTP Basic against a file of argon2 hashes, or a verified TLS
//! client certificate. Designed so that Negotiate/NTLM can be added as one more mode (see
//! docs/security.md).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine as _;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}

/// What the connection itself says about the client.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub tls: bool,
    /// Identity from a verified client certificate.
    pub cert_identity: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Go on as this principal (`None`: anonymous).
    Allowed(Option<String>),
    /// 401 with a Basic challenge.
    Challenge,
    /// 403: this connection can never be allowed (no TLS where required, no certificate).
    Forbidden,
}

/// How long a verified password is remembered, so that every fragment of an upload does not
/// pay a full argon2 verification.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// The users of one credentials file: lines `name:$argon2id$...`; `#` starts a comment.
pub struct Users {
    hashes: HashMap<String, String>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {0}: {1}")]
    Read(String, io::Error),
    #[error("{0} line {1}: expected name:argon2-hash")]
    Syntax(String, usize),
    #[error("vdir {0:?}: auth = \"basic\" needs users_file")]
    MissingUsersFile(String),
}

impl Users {
    pub fn parse(text: &str, origin: &str) -> Result<Users, AuthError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| AuthError::Syntax(origin.into(), i + 1))?;
            if name.is_empty() || PasswordHash::new(hash).is_err() {
                return Err(AuthError::Syntax(origin.into(), i + 1));
            }
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users {
            hashes,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read(origin.clone(), e))?;
        Users::parse(&text, &origin)
    }

    /// Checks a password (CPU-heavy on a cache miss: call from a blocking context).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.hashes.get(user) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user)
            .chain_update([0])
            .chain_update(password)
            .finalize()
            .into();
        let now = Instant::now();
        {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, t| now.duration_since(*t) < VERIFIED_TTL);
            if cache.contains_key(&key) {
                return true;
            }
        }
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, now);
        }
        ok
    }
}

/// An argon2id hash for a users file.
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

/// Per-vdir authentication, built once from the configuration.
pub struct Authenticator {
    users: Vec<Option<std::sync::Arc<Users>>>,
}

impl Authenticator {
    pub fn new(vdirs: &[VdirConfig]) -> Result<Authenticator, AuthError> {
        let users = vdirs
            .iter()
            .map(|v| match (v.auth, &v.users_file) {
                (AuthMode::Basic, Some(path)) => {
                    Users::load(path).map(|u| Some(std::sync::Arc::new(u)))
                }
                (AuthMode::Basic, None) => Err(AuthError::MissingUsersFile(v.prefix.clone())),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Authenticator { users })
    }

    pub async fn authenticate(
        &self,
        vdir_index: usize,
        vdir: &VdirConfig,
        headers: &HeaderMap,
        conn: &ConnInfo,
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
                let (Some(Some(users)), Some((user, password))) =
                    (self.users.get(vdir_index), basic_credentials(headers))
                else {
                    return AuthOutcome::Challenge;
                };
                let users = users.clone();
                let name = user.clone();
                let ok = tokio::task::spawn_blocking(move || users.verify(&name, &password))
                    .await
                    .unwrap_or(false);
                if ok {
                    AuthOutcome::Allowed(Some(user))
                } else {
                    AuthOutcome::Challenge
                }
            }
        }
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
