//! A users file: lines `name:$argon2id$...` or `name:$2y$...` (bcrypt, as Apache's `htpasswd -B`
//! writes it) for Basic, and `name:$NT$<32 hex>` (the NT hash NTLM needs: password-equivalent);
//! `#` starts a comment. Apache's weaker formats are refused by name (`WEAK_FORMATS`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
use sha2::Sha256;

use super::AuthError;

/// How long a verified password is remembered, so that every fragment of an upload does not
/// pay a full argon2 verification.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// Verified passwords remembered per users file at most; only right passwords get in, so this
/// is reached only by that many clients within `VERIFIED_TTL`, and then the oldest is forgotten.
const VERIFIED_MAX: usize = 4096;

/// How an NT hash is written in a users file: `name:$NT$<32 hex digits>`.
pub const NT_PREFIX: &str = "$NT$";

/// The one normalisation user names get before NTLM matches them (Windows names are
/// case-insensitive): ASCII letters are folded to lower case, every other character must match
/// exactly. Unicode case folding would let look-alikes sign in as someone else: the Kelvin sign
/// U+212A lower-cases to `k`, so `\u{212A}ate` would be `kate`.
pub fn fold_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A Basic password hash from a users file.
#[derive(Clone, Debug)]
enum Hash {
    /// A PHC string, `$argon2id$v=19$m=…,t=…,p=…$salt$hash` (`bitsd passwd`).
    Argon2(String),
    /// `$2y$`, `$2b$` or `$2a$`, two digits of cost, 53 characters of salt and hash.
    Bcrypt(String),
}

/// What a check of a hash costs: two hashes of the same cost take as long to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cost {
    Argon2 {
        algorithm: String,
        m: u32,
        t: u32,
        p: u32,
    },
    Bcrypt(u32),
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cost::Argon2 { algorithm, m, t, p } => write!(f, "{algorithm} m={m},t={t},p={p}"),
            Cost::Bcrypt(cost) => write!(f, "bcrypt cost {cost}"),
        }
    }
}

/// bcrypt prefixes accepted; `$2x$` (hashes of the pre-2011 bug) is not one of them.
const BCRYPT_PREFIXES: [&str; 3] = ["$2y$", "$2b$", "$2a$"];

/// Below this bcrypt cost (2^cost rounds) a check-config warning suggests a higher one:
/// `htpasswd -B` writes cost 5 unless told `-C`, a few milliseconds per guess offline.
pub const MIN_GOOD_BCRYPT_COST: u32 = 10;

/// Apache's other `htpasswd` formats, refused with the line and a way out: (prefix, name, why).
/// Matched on the hash's start; DES crypt (13 characters, no prefix) separately.
const WEAK_FORMATS: [(&str, &str, &str); 5] = [
    ("$apr1$", "Apache MD5 ($apr1$, htpasswd -m)", FAST),
    ("{SHA}", "SHA-1 ({SHA}, htpasswd -s)", FAST),
    ("$1$", "MD5-crypt ($1$)", FAST),
    ("$5$", "SHA-256-crypt ($5$, htpasswd -2)", UNSUPPORTED),
    ("$6$", "SHA-512-crypt ($6$, htpasswd -5)", UNSUPPORTED),
];
const FAST: &str = "refused: one guess costs a single MD5, SHA-1 or DES run if the file leaks";
const UNSUPPORTED: &str = "not supported";

/// The name of a refused htpasswd format `hash` is written in, and why it is refused.
fn weak_format(hash: &str) -> Option<(&'static str, &'static str)> {
    if let Some((_, name, why)) = WEAK_FORMATS.iter().find(|(p, ..)| hash.starts_with(p)) {
        return Some((name, why));
    }
    let des = hash.len() == 13
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    des.then_some(("DES crypt (htpasswd -d)", FAST))
}

/// A bcrypt hash's cost, when `hash` is one bcrypt can check.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    if !BCRYPT_PREFIXES.iter().any(|p| hash.starts_with(p)) || hash.len() != 60 {
        return None;
    }
    let cost: u32 = hash.get(4..6)?.parse().ok()?;
    // bcrypt's own range; the crate refuses others at verification.
    (4..=31).contains(&cost).then_some(cost)
}

pub struct Users {
    hashes: HashMap<String, Hash>,
    /// NT hashes by [`fold_name`], with the name as written in the file.
    nt_hashes: HashMap<String, (String, [u8; 16])>,
    /// A hash of a random password in the scheme and with the cost of the file's first Basic
    /// hash: verified against for unknown names, so that they cost as much as a wrong password.
    dummy: Hash,
    /// What check-config says about the hashes (weak bcrypt cost, mixed costs).
    warnings: Vec<String>,
    /// A random NT hash, checked against for unknown NTLM names: the same work as a real one,
    /// with nothing drawn from the OS per attempt (that alone made unknown names slower).
    dummy_nt: [u8; 16],
    /// Keys verified passwords in `verified` (randomly keyed): a memory dump must not hand out
    /// fast, unsalted password hashes. Also keys a connection's memory of a Basic sign-in.
    cache_mac: Hmac<Sha256>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Users {
    pub fn parse(text: &str, origin: &str) -> Result<Users, AuthError> {
        let mut hashes = HashMap::new();
        let mut nt_hashes = HashMap::new();
        // The cost of the first Basic hash and its line; the lines whose cost differs.
        let mut first: Option<(Cost, usize, Hash)> = None;
        let mut other_costs: Vec<(Cost, usize)> = Vec::new();
        let mut weak_bcrypt: Vec<(u32, usize)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || AuthError::Syntax(origin.into(), i + 1);
            let (name, hash) = line.split_once(':').ok_or_else(syntax)?;
            // A name is what logs and `{user}` roots show: no control characters in it.
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(syntax());
            }
            if let Some(hex) = hash.strip_prefix(NT_PREFIX) {
                let nt = parse_nt_hash(hex).ok_or_else(syntax)?;
                nt_hashes.insert(fold_name(name), (name.to_string(), nt));
                continue;
            }
            let (hash, cost) = if let Some(cost) = bcrypt_cost(hash) {
                if cost < MIN_GOOD_BCRYPT_COST {
                    weak_bcrypt.push((cost, i + 1));
                }
                (Hash::Bcrypt(hash.to_string()), Cost::Bcrypt(cost))
            } else if let Some((format, why)) = weak_format(hash) {
                return Err(AuthError::WeakHash {
                    origin: origin.into(),
                    line: i + 1,
                    user: name.into(),
                    format,
                    why,
                });
            } else {
                let parsed = PasswordHash::new(hash).map_err(|_| syntax())?;
                let cost = argon2_cost(&hasher_for(&parsed), &parsed);
                (Hash::Argon2(hash.to_string()), cost)
            };
            match &first {
                None => first = Some((cost, i + 1, hash.clone())),
                Some((c, ..)) if *c != cost => other_costs.push((cost, i + 1)),
                Some(_) => {}
            }
            hashes.insert(name.to_string(), hash);
        }
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        let setup = |e: String| AuthError::Setup(origin.into(), e);
        // The dummy repeats the first Basic hash's scheme and cost (argon2: and version).
        let dummy = match &first {
            Some((Cost::Bcrypt(cost), ..)) => {
                Hash::Bcrypt(bcrypt::hash(random, *cost).map_err(|e| setup(e.to_string()))?)
            }
            Some((_, _, Hash::Argon2(phc))) => {
                let parsed = PasswordHash::new(phc).map_err(|e| setup(e.to_string()))?;
                Hash::Argon2(argon2_dummy(&hasher_for(&parsed), &random).map_err(setup)?)
            }
            _ => Hash::Argon2(argon2_dummy(&Argon2::default(), &random).map_err(setup)?),
        };
        let mut warnings = Vec::new();
        if let Some((lowest, line)) = weak_bcrypt.iter().min() {
            warnings.push(format!(
                "{origin}: {} bcrypt hash(es) of cost below {MIN_GOOD_BCRYPT_COST} (lowest: \
                 {lowest}, line {line}), cheap to guess if the file leaks; re-create them \
                 with `htpasswd -B -C 12 {origin} USER` or `bitsd passwd {origin} USER`",
                weak_bcrypt.len()
            ));
        }
        if let (Some((cost, line, _)), Some((other, other_line))) = (&first, other_costs.first()) {
            warnings.push(format!(
                "{origin}: password hashes of different costs ({cost} on line {line}, {other} \
                 on line {other_line}, {} line(s) in all differ from line {line}): unknown \
                 names are checked like line {line}, so response times can tell the other \
                 names exist; give every user the same kind of hash",
                other_costs.len()
            ));
        }
        let mut dummy_nt = [0u8; 16];
        OsRng.fill_bytes(&mut dummy_nt);
        let mut cache_key = [0u8; 32];
        OsRng.fill_bytes(&mut cache_key);
        let cache_mac = <Hmac<Sha256> as Mac>::new_from_slice(&cache_key)
            .map_err(|e| AuthError::Setup(origin.into(), e.to_string()))?;
        Ok(Users {
            hashes,
            nt_hashes,
            dummy,
            warnings,
            dummy_nt,
            cache_mac,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Allowed but weak: bcrypt hashes of a low cost, hashes of different costs in one file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read(origin.clone(), e))?;
        Users::parse(&text, &origin)
    }

    /// Names with a Basic (argon2 or bcrypt) or an NTLM (NT hash) entry, counted once each.
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

    /// The NT hash of `user` ([`fold_name`]) and the name as the file writes it.
    pub fn nt_hash(&self, user: &str) -> Option<&(String, [u8; 16])> {
        self.nt_hashes.get(&fold_name(user))
    }

    /// The NT hash to check an answer for `user` against: the user's, or for an unknown name
    /// the file's random one (`None` as the name), found with the same work.
    pub(crate) fn nt_hash_or_dummy(&self, user: &str) -> (Option<&str>, &[u8; 16]) {
        match self.nt_hashes.get(&fold_name(user)) {
            Some((name, hash)) => (Some(name.as_str()), hash),
            None => (None, &self.dummy_nt),
        }
    }

    pub(crate) fn cache_slot(&self, user: &str, password: &str) -> [u8; 32] {
        // The length prefix keeps ("a\0b", "c") and ("a", "b\0c") apart.
        let mut mac = self.cache_mac.clone();
        mac.update(&(user.len() as u64).to_le_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A password verified in the last `VERIFIED_TTL` (cheap: no argon2 or bcrypt).
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

    /// Checks a password: the cache, else one argon2 or bcrypt verification, against the dummy hash for
    /// an unknown user so that the answer takes as long. CPU-heavy: call from a blocking context.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.remembered(user, password) || self.verify_slow(user, password)
    }

    /// One argon2 or bcrypt verification, whatever the cache says.
    pub(crate) fn verify_slow(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h, true),
            None => (&self.dummy, false),
        };
        let ok = match hash {
            Hash::Argon2(phc) => verify_hash(phc, password.as_bytes()),
            // Truncating at 72 bytes as Apache does, or a long password that htpasswd
            // accepted would never sign in.
            Hash::Bcrypt(h) => bcrypt::verify(password.as_bytes(), h).unwrap_or(false),
        } && known;
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

/// One users file, reloadable: every vdir naming the same path shares it.
pub(crate) struct UsersFile {
    path: PathBuf,
    users: RwLock<Arc<Users>>,
}

impl UsersFile {
    pub(crate) fn load(path: &Path) -> Result<UsersFile, AuthError> {
        Ok(UsersFile {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(Users::load(path)?)),
        })
    }

    pub(crate) fn current(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the file; on error the users loaded before stay (their verified passwords
    /// forgotten either way).
    pub(crate) fn reload(&self) -> Result<(), AuthError> {
        match Users::load(&self.path) {
            Ok(fresh) => {
                for w in fresh.warnings() {
                    tracing::warn!("{w}");
                }
                *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                Ok(())
            }
            Err(e) => {
                self.current().forget_verified();
                Err(e)
            }
        }
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

/// What checking an argon2 hash costs: its algorithm and parameters.
fn argon2_cost(hasher: &Argon2<'_>, hash: &PasswordHash<'_>) -> Cost {
    let params = hasher.params();
    Cost::Argon2 {
        algorithm: hash.algorithm.as_str().to_string(),
        m: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    }
}

/// An argon2 hash of `random` (a dummy) made by `hasher`.
fn argon2_dummy(hasher: &Argon2<'_>, random: &[u8]) -> Result<String, String> {
    hasher
        .hash_password(random, &SaltString::generate(&mut OsRng))
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
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

/// The users-file entry value for `password` under NTLM: `$NT$<hex of the NT hash>`.
pub fn nt_hash_entry(password: &str) -> String {
    let hash = bits_proto::ntlm::nt_hash(password);
    format!("{NT_PREFIX}{}", hex::encode(hash))
}

fn parse_nt_hash(hex: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
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
        assert!(Users::parse(&format!("al\nice:{hash}"), "test").is_err());
        assert!(Users::parse(&format!("al\x1bice:{hash}"), "test").is_err());
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
        let Hash::Argon2(dummy) = &users.dummy else {
            panic!("{:?}", users.dummy);
        };
        let dummy = PasswordHash::new(dummy).unwrap();
        assert_eq!(argon2::Params::try_from(&dummy).unwrap().m_cost(), 1024);
        assert_eq!(argon2::Params::try_from(&dummy).unwrap().t_cost(), 3);
        assert!(!users.verify("nobody", "pw"));
        // An empty file still gets a dummy (default parameters).
        assert!(!Users::parse("", "test").unwrap().verify("x", "y"));
    }

    /// Lines as Debian's `htpasswd -nbB` (apache2-utils 2.4) wrote them.
    const HTPASSWD_B: &str = "alice:$2y$05$pCASPi4u4dNi/CINffP/LeWDMhFiKNCtwsdZa4crm92wNuTHToNVO\n\
                              bob:$2y$04$sNB9/ysNifrqcmudVWKoRO45W7yVbD581n4M1eOjn0DWL1SMya7OC\n";

    #[test]
    fn bcrypt_lines_from_htpasswd_verify() {
        let users = Users::parse(HTPASSWD_B, "users").unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", "wonderland"));
        assert!(users.remembered("alice", "wonderland"));
        assert!(users.verify("bob", "builder"));
        assert!(!users.verify("alice", "builder"));
        assert!(!users.verify("nobody", "wonderland"));
        // $2b$ and $2a$ are the same algorithm for any password htpasswd accepts.
        for version in [bcrypt::Version::TwoB, bcrypt::Version::TwoA] {
            let hash = bcrypt::hash_with_result("pw", 4)
                .unwrap()
                .format_for_version(version);
            let users = Users::parse(&format!("carol:{hash}\n"), "users").unwrap();
            assert!(users.verify("carol", "pw"), "{hash}");
            assert!(!users.verify("carol", "pw2"), "{hash}");
        }
        // bcrypt reads 72 bytes of a password, as htpasswd did when it hashed it.
        let long = "x".repeat(72);
        let hash = bcrypt::hash(&long, 4).unwrap();
        let users = Users::parse(&format!("dora:{hash}\n"), "users").unwrap();
        assert!(users.verify("dora", &format!("{long}and more")));
        // Malformed bcrypt (cost out of range, short, the buggy $2x$) is a syntax error.
        for bad in [
            "$2y$03$pCASPi4u4dNi/CINffP/LeWDMhFiKNCtwsdZa4crm92wNuTHToNVO",
            "$2y$05$pCASPi4u4dNi/CINffP/LeWDMhFiKNCtwsdZa4crm92wNuTHToNV",
            "$2x$05$pCASPi4u4dNi/CINffP/LeWDMhFiKNCtwsdZa4crm92wNuTHToNVO",
        ] {
            let err = Users::parse(&format!("alice:{bad}\n"), "users").err();
            assert!(
                matches!(err, Some(AuthError::Syntax(_, 1))),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn the_dummy_of_a_bcrypt_file_is_bcrypt_of_the_same_cost() {
        let users = Users::parse(HTPASSWD_B, "users").unwrap();
        let Hash::Bcrypt(dummy) = &users.dummy else {
            panic!("argon2 dummy for a bcrypt file: {:?}", users.dummy);
        };
        // The first line's cost: a check of an unknown name runs as many rounds as alice's.
        assert_eq!(bcrypt_cost(dummy), Some(5));
        assert!(!users.verify("nobody", ""));
    }

    #[test]
    fn weaker_htpasswd_formats_are_refused_by_line_with_the_way_out() {
        // As `htpasswd -nb` writes them with -m (Debian's default), -s, -d, -2, -5.
        let lines = [
            ("carol:$apr1$Yq0raOe/$f9H/Q7BBm5OR2CkRl/l6Z1", "$apr1$"),
            ("dave:{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=", "{SHA}"),
            ("erin:amSeQ.dt/GQK.", "DES crypt"),
            ("fay:$1$abcdefgh$0123456789abcdefghijkl", "$1$"),
            (
                "frank:$5$Nh442RaXWqZF572Q$bjbxmapvOpYCkQRQoTtSgqFQIKK/tt268M69yhIvSQ1",
                "$5$",
            ),
            ("gina:$6$zAmH18oD53vAC2V2$yhY.C7QutVKH", "$6$"),
        ];
        for (line, format) in lines {
            let text = format!("# users\n{}\n{line}\n", HTPASSWD_B.lines().next().unwrap());
            let err = Users::parse(&text, "/etc/bitsd/users").err().unwrap();
            let user = line.split_once(':').unwrap().0;
            assert!(
                matches!(&err, AuthError::WeakHash { line: 3, user: u, .. } if u == user),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with("/etc/bitsd/users line 3: "),
                "{message}"
            );
            assert!(message.contains(format), "{message}");
            assert!(
                message.contains(&format!("htpasswd -B /etc/bitsd/users {user}")),
                "{message}"
            );
        }
    }

    #[test]
    fn weak_bcrypt_costs_and_mixed_costs_are_warned_about() {
        let users = Users::parse(HTPASSWD_B, "users").unwrap();
        let [cost, mixed] = users.warnings() else {
            panic!("{:?}", users.warnings());
        };
        assert!(
            cost.contains("2 bcrypt hash(es) of cost below 10 (lowest: 4, line 2)"),
            "{cost}"
        );
        assert!(cost.contains("htpasswd -B -C 12 users USER"), "{cost}");
        assert!(
            mixed.contains("bcrypt cost 5 on line 1, bcrypt cost 4 on line 2"),
            "{mixed}"
        );
        let strong = bcrypt::hash("pw", 10).unwrap();
        let argon = hash_password("pw").unwrap();
        let users = Users::parse(&format!("a:{strong}\nb:{strong}\n"), "users").unwrap();
        assert!(users.warnings().is_empty(), "{:?}", users.warnings());
        let users = Users::parse(&format!("a:{argon}\nb:{strong}\n"), "users").unwrap();
        assert_eq!(users.warnings().len(), 1);
        assert!(users.warnings()[0].contains("argon2id m=19456,t=2,p=1 on line 1"));
    }

    #[test]
    fn cache_keys_do_not_collide_across_the_name_boundary() {
        let hash = hash_password("b\0c").unwrap();
        let users = Users::parse(&format!("a:{hash}\na\0b:{hash}\n"), "test");
        // NUL is a control character: refused as a name.
        assert!(users.is_err());
        let users = Users::parse(&format!("a:{hash}\n"), "test").unwrap();
        assert!(users.verify("a", "b\0c"));
        assert!(users.remembered("a", "b\0c"));
        assert_ne!(users.cache_slot("a", "b\0c"), users.cache_slot("a\0b", "c"));
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
    fn ntlm_names_fold_ascii_case_only() {
        let users = Users::parse(&format!("Kate:{}\n", nt_hash_entry("pw")), "test").unwrap();
        assert_eq!(users.nt_hash("kate").map(|(n, _)| n.as_str()), Some("Kate"));
        assert_eq!(users.nt_hash("KATE").map(|(n, _)| n.as_str()), Some("Kate"));
        // The Kelvin sign is not a K: no alias.
        assert!(users.nt_hash("\u{212A}ate").is_none());
        assert_eq!(users.nt_hash_or_dummy("\u{212A}ate").0, None);
        // Non-ASCII letters match exactly, never through Unicode case folding.
        let users = Users::parse(&format!("Ärger:{}\n", nt_hash_entry("pw")), "test").unwrap();
        assert!(users.nt_hash("Ärger").is_some());
        assert!(users.nt_hash("ärger").is_none());
    }

    #[test]
    fn unknown_ntlm_names_get_one_stable_dummy() {
        let users = Users::parse(&format!("kate:{}\n", nt_hash_entry("pw")), "test").unwrap();
        let (name, first) = users.nt_hash_or_dummy("nobody");
        assert!(name.is_none());
        let first = *first;
        // No randomness per attempt: the same hash every time, so the work is the same as
        // for a known name.
        assert_eq!(*users.nt_hash_or_dummy("someone else").1, first);
        assert_ne!(first, bits_proto::ntlm::nt_hash("pw"));
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
