//! The Kerberos replay cache of one node: every authenticator accepted, by client principal and
//! authenticator time (RFC 4120 3.2.3), kept until its time leaves the skew window (after that
//! the skew check refuses it anyway), shared by every Negotiate vdir and written to a file
//! before the request it admitted is answered, so a restart does not forget it.
//!
//! Bounded without letting anyone evict: a live entry is never dropped. When one principal holds
//! `per_principal` live entries its new sign-ins are refused (503) until they age out; when the
//! whole cache is full, every new Kerberos sign-in is. Either way a captured authenticator is
//! never accepted twice.
//!
//! The file is a sequence of 40-byte records (entry key 16, principal key 16, expiry 8, all
//! derived with SHA-256; no names are stored), appended and `fdatasync`ed per entry, rewritten
//! without the expired ones at start-up and whenever dead records outnumber live ones.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::kerberos::acceptor::MAX_SKEW;

const RECORD: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("authenticator replayed")]
    Replayed,
    #[error("replay cache full of live entries ({0})")]
    Full(usize),
    #[error("this principal already has {0} live authenticators in the replay cache")]
    PrincipalFull(usize),
    #[error("replay cache {0}: {1}")]
    Io(PathBuf, io::Error),
}

type Key = [u8; 16];

struct State {
    entries: HashMap<Key, (Key, i64)>,
    by_expiry: BTreeSet<(i64, Key)>,
    per_principal: HashMap<Key, usize>,
    file: Option<File>,
    /// Records in the file (live and dead).
    records: usize,
}

pub struct ReplayCache {
    path: Option<PathBuf>,
    max: usize,
    per_principal: usize,
    state: Mutex<State>,
}

fn entry_key(principal: &str, ctime: i64, cusec: i64) -> (Key, Key) {
    let p: [u8; 32] = Sha256::new()
        .chain_update(b"principal\0")
        .chain_update(principal.as_bytes())
        .finalize()
        .into();
    let e: [u8; 32] = Sha256::new()
        .chain_update(b"authenticator\0")
        .chain_update((principal.len() as u64).to_le_bytes())
        .chain_update(principal.as_bytes())
        .chain_update(ctime.to_le_bytes())
        .chain_update(cusec.to_le_bytes())
        .finalize()
        .into();
    let mut pk = [0u8; 16];
    let mut ek = [0u8; 16];
    pk.copy_from_slice(&p[..16]);
    ek.copy_from_slice(&e[..16]);
    (ek, pk)
}

impl State {
    fn empty(file: Option<File>) -> State {
        State {
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            per_principal: HashMap::new(),
            file,
            records: 0,
        }
    }

    fn expire(&mut self, now: i64) {
        while let Some(&(expiry, key)) = self.by_expiry.first() {
            if expiry >= now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some((principal, _)) = self.entries.remove(&key) {
                if let Some(n) = self.per_principal.get_mut(&principal) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_principal.remove(&principal);
                    }
                }
            }
        }
    }

    fn insert(&mut self, key: Key, principal: Key, expiry: i64) {
        self.entries.insert(key, (principal, expiry));
        self.by_expiry.insert((expiry, key));
        *self.per_principal.entry(principal).or_default() += 1;
    }
}

fn record(key: &Key, principal: &Key, expiry: i64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..16].copy_from_slice(key);
    r[16..32].copy_from_slice(principal);
    r[32..].copy_from_slice(&expiry.to_le_bytes());
    r
}

impl ReplayCache {
    /// A cache kept in memory only (tests, and nodes without Negotiate vdirs).
    pub fn in_memory(max: usize, per_principal: usize) -> ReplayCache {
        ReplayCache {
            path: None,
            max: max.max(1),
            per_principal: per_principal.max(1),
            state: Mutex::new(State::empty(None)),
        }
    }

    /// Opens (or creates) the cache file at `path`, keeping the entries still live at `now`,
    /// and rewrites it with just those (blocking).
    pub fn open(
        path: &Path,
        max: usize,
        per_principal: usize,
        now: i64,
    ) -> Result<ReplayCache, ReplayError> {
        let io_err = |e| ReplayError::Io(path.to_path_buf(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut state = State::empty(None);
        match File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).map_err(io_err)?;
                // A torn last record (a crash mid-append) is ignored: its request was never
                // answered.
                for r in bytes.chunks_exact(RECORD) {
                    let mut key = [0u8; 16];
                    let mut principal = [0u8; 16];
                    key.copy_from_slice(&r[..16]);
                    principal.copy_from_slice(&r[16..32]);
                    let mut e = [0u8; 8];
                    e.copy_from_slice(&r[32..]);
                    let expiry = i64::from_le_bytes(e);
                    if expiry >= now && !state.entries.contains_key(&key) {
                        state.insert(key, principal, expiry);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let cache = ReplayCache {
            path: Some(path.to_path_buf()),
            max: max.max(1),
            per_principal: per_principal.max(1),
            state: Mutex::new(state),
        };
        {
            let mut state = cache.state.lock().unwrap_or_else(|p| p.into_inner());
            cache.rewrite(&mut state)?;
        }
        Ok(cache)
    }

    /// Writes the live entries to a fresh file and puts it in place of the old one.
    fn rewrite(&self, state: &mut State) -> Result<(), ReplayError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io_err = |e| ReplayError::Io(path.clone(), e);
        let tmp = path.with_extension("tmp");
        let mut bytes = Vec::with_capacity(state.entries.len() * RECORD);
        for (key, (principal, expiry)) in &state.entries {
            bytes.extend_from_slice(&record(key, principal, *expiry));
        }
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err)?;
            f.write_all(&bytes).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
        }
        std::fs::rename(&tmp, path).map_err(io_err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
        state.file = Some(OpenOptions::new().append(true).open(path).map_err(io_err)?);
        state.records = state.entries.len();
        Ok(())
    }

    /// Remembers the authenticator of `principal` made at `ctime`/`cusec`, durably when the
    /// cache has a file; an error when it was seen before or the cache cannot take it. Blocking
    /// (one `fdatasync`).
    pub fn check(
        &self,
        principal: &str,
        ctime: i64,
        cusec: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        let (key, pkey) = entry_key(principal, ctime, cusec);
        let expiry = ctime.saturating_add(MAX_SKEW);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.expire(now);
        if state.entries.contains_key(&key) {
            return Err(ReplayError::Replayed);
        }
        let held = state.per_principal.get(&pkey).copied().unwrap_or(0);
        if held >= self.per_principal {
            return Err(ReplayError::PrincipalFull(held));
        }
        if state.entries.len() >= self.max {
            return Err(ReplayError::Full(state.entries.len()));
        }
        if let Some(path) = &self.path {
            if state.records > 2 * state.entries.len() + 4096 {
                self.rewrite(&mut state)?;
            }
            let path = path.clone();
            let Some(file) = state.file.as_mut() else {
                return Err(ReplayError::Io(path, io::Error::other("not open")));
            };
            file.write_all(&record(&key, &pkey, expiry))
                .and_then(|()| file.sync_data())
                .map_err(|e| ReplayError::Io(path, e))?;
            state.records += 1;
        }
        state.insert(key, pkey, expiry);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authenticator_is_accepted_once_until_it_expires() {
        let cache = ReplayCache::in_memory(100, 10);
        let now = 1_000_000;
        cache.check("alice@R", now, 1, now).unwrap();
        assert!(matches!(
            cache.check("alice@R", now, 1, now + 10),
            Err(ReplayError::Replayed)
        ));
        // Another microsecond, another client: other authenticators.
        cache.check("alice@R", now, 2, now).unwrap();
        cache.check("bob@R", now, 1, now).unwrap();
        // Still refused at the very end of the skew window; forgotten only after it (when the
        // skew check refuses the authenticator anyway).
        assert!(cache.check("alice@R", now, 1, now + MAX_SKEW).is_err());
        assert_eq!(cache.len(), 3);
        cache
            .check("carol@R", now + MAX_SKEW + 1, 1, now + MAX_SKEW + 1)
            .unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn no_user_can_evict_anyone_elses_entries() {
        let cache = ReplayCache::in_memory(1_000, 100);
        let now = 5_000_000;
        cache.check("victim@R", now, 7, now).unwrap();
        // The attacker signs in as often as it likes: its own quota runs out, nothing of the
        // victim's is forgotten.
        let mut refused = 0;
        for i in 0..10_000 {
            if cache.check("mallory@R", now, i, now).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 10_000 - 100);
        assert!(matches!(
            cache.check("victim@R", now, 7, now + 1),
            Err(ReplayError::Replayed)
        ));
        // Many principals together fill the cache: then everyone new is refused, nobody old
        // forgotten.
        for p in 0..20 {
            for i in 0..100 {
                let _ = cache.check(&format!("user{p}@R"), now, i, now);
            }
        }
        assert!(matches!(
            cache.check("newcomer@R", now, 1, now),
            Err(ReplayError::Full(_))
        ));
        assert!(matches!(
            cache.check("victim@R", now, 7, now),
            Err(ReplayError::Replayed)
        ));
    }

    #[test]
    fn entries_survive_a_restart_and_expired_ones_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("kerberos-replay");
        let now = 9_000_000;
        {
            let cache = ReplayCache::open(&path, 100, 100, now).unwrap();
            cache.check("alice@R", now, 1, now).unwrap();
            cache.check("alice@R", now - 1_000, 2, now - 1_000).unwrap();
        }
        // A torn record at the end (a crash mid-append) is ignored.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0xAB; 17]).unwrap();
        drop(f);
        let cache = ReplayCache::open(&path, 100, 100, now + 1).unwrap();
        assert!(matches!(
            cache.check("alice@R", now, 1, now + 1),
            Err(ReplayError::Replayed)
        ));
        // The old one had expired: dropped from the rewritten file.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
        cache.check("alice@R", now - 1_000, 2, now + 1).unwrap();
    }
}
