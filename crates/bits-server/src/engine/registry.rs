//! In-memory view of the open sessions, rebuilt from storage at start-up: who uploads to which
//! destination, how many sessions each identity, vdir and anonymous client address holds, how
//! many bytes sit in the spool, and which tombstones are kept (oldest first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use bits_proto::SessionId;

use crate::principal::Principal;
use crate::store::{Destination, SessionRecord, SessionState};

#[derive(Clone, Debug)]
pub struct OpenSession {
    pub destination: Destination,
    pub owner: Option<Principal>,
    pub vdir: String,
    /// The creating client's address, for anonymous sessions only.
    pub anonymous_client: Option<IpAddr>,
    /// Bytes of this session held in the spool (0 once published).
    pub spooled: u64,
}

#[derive(Default)]
pub struct Registry {
    by_id: HashMap<SessionId, OpenSession>,
    by_destination: HashMap<Destination, SessionId>,
    per_owner: HashMap<Option<Principal>, u64>,
    spooled_per_owner: HashMap<Option<Principal>, u64>,
    per_vdir: HashMap<String, u64>,
    /// Authenticated sessions per (vdir prefix, owner): a vdir's `max_sessions_per_identity`.
    per_vdir_owner: HashMap<(String, Principal), u64>,
    anonymous: u64,
    anonymous_per_ip: HashMap<IpAddr, u64>,
    spooled: u64,
    /// Ended sessions still on record, in the order they ended (ids may repeat or be stale:
    /// `tombstone_set` is the truth).
    tombstone_order: VecDeque<SessionId>,
    tombstone_set: HashSet<SessionId>,
    /// Sessions another node ended, as of the last refresh: an ended record never reopens, so
    /// the next refresh need not read it again. Replaced by each refresh (never grows past
    /// what the store lists).
    ended_elsewhere: HashSet<SessionId>,
    /// When the last refresh forced by a refusal ended without dropping anything, and whether
    /// a refresh is running (one at a time).
    /// On the engine's monotonic clock (`Clock::mono`).
    last_fruitless_refresh: Option<Duration>,
    refreshing: bool,
    /// While the registry is built from the store in the background: the sessions requests
    /// touched meanwhile. Their entries are current; what the build read of them may not be.
    touched_during_build: Option<HashSet<SessionId>>,
}

impl Registry {
    pub fn open_count(&self) -> u64 {
        self.by_id.len() as u64
    }

    pub fn owned_by(&self, owner: &Option<Principal>) -> u64 {
        self.per_owner.get(owner).copied().unwrap_or(0)
    }

    pub fn spooled(&self) -> u64 {
        self.spooled
    }

    /// Spool bytes held by the sessions of one identity.
    pub fn spooled_by(&self, owner: &Option<Principal>) -> u64 {
        self.spooled_per_owner.get(owner).copied().unwrap_or(0)
    }

    pub fn open_in_vdir(&self, prefix: &str) -> u64 {
        self.per_vdir.get(prefix).copied().unwrap_or(0)
    }

    /// Open sessions `owner` holds in the vdir with `prefix`.
    pub fn owned_in_vdir(&self, prefix: &str, owner: &Principal) -> u64 {
        self.per_vdir_owner
            .get(&(prefix.to_string(), owner.clone()))
            .copied()
            .unwrap_or(0)
    }

    pub fn anonymous(&self) -> u64 {
        self.anonymous
    }

    pub fn anonymous_from(&self, ip: IpAddr) -> u64 {
        self.anonymous_per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// The build from the store begins: requests' changes are tracked from now on.
    pub fn begin_build(&mut self) {
        self.touched_during_build = Some(HashSet::new());
    }

    /// The build is over: the registry is the truth again.
    pub fn end_build(&mut self) {
        self.touched_during_build = None;
    }

    fn touch(&mut self, id: SessionId) {
        if let Some(t) = &mut self.touched_during_build {
            t.insert(id);
        }
    }

    /// What the build read of one record: taken unless a request has touched the session
    /// since the build began (then the registry knows better). Returns whether it was taken.
    pub fn add_scanned(&mut self, rec: &SessionRecord) -> bool {
        if self
            .touched_during_build
            .as_ref()
            .is_some_and(|t| t.contains(&rec.id))
        {
            return false;
        }
        if rec.state.is_open() {
            self.insert(rec);
        }
        // `insert` counted it as touched: a scanned entry is not a request's.
        if let Some(t) = &mut self.touched_during_build {
            t.remove(&rec.id);
        }
        true
    }

    /// Remembers an ended session; returns the oldest ones beyond `cap`, to forget now.
    pub fn add_tombstone(&mut self, id: SessionId, cap: u64) -> Vec<SessionId> {
        self.touch(id);
        if self.tombstone_set.insert(id) {
            self.tombstone_order.push_back(id);
        }
        let mut evicted = Vec::new();
        while self.tombstone_set.len() as u64 > cap {
            let Some(old) = self.tombstone_order.pop_front() else {
                break;
            };
            if self.tombstone_set.remove(&old) {
                evicted.push(old);
            }
        }
        // Stale ids (forgotten by the sweep) must not pile up in the order queue either.
        if self.tombstone_order.len() > 2 * self.tombstone_set.len() + 64 {
            let set = &self.tombstone_set;
            self.tombstone_order.retain(|id| set.contains(id));
        }
        evicted
    }

    /// Forgets a tombstone removed by other means (the expiry sweep).
    pub fn drop_tombstone(&mut self, id: SessionId) {
        self.touch(id);
        self.tombstone_set.remove(&id);
    }

    pub fn tombstones(&self) -> u64 {
        self.tombstone_set.len() as u64
    }

    pub fn is_tombstone(&self, id: SessionId) -> bool {
        self.tombstone_set.contains(&id)
    }

    pub fn is_open(&self, id: SessionId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Every open session this node counts.
    pub fn open_ids(&self) -> Vec<SessionId> {
        self.by_id.keys().copied().collect()
    }

    /// Whether a refresh found `id` ended by another node (so it need not be read again).
    pub fn ended_elsewhere(&self, id: SessionId) -> bool {
        self.ended_elsewhere.contains(&id)
    }

    /// What a refresh learned about sessions other nodes ended.
    pub fn set_ended_elsewhere(&mut self, ids: HashSet<SessionId>) {
        self.ended_elsewhere = ids;
    }

    /// Claims the right to run a refresh: none is running, and no refresh forced by a refusal
    /// dropped nothing within `gap` (one that freed something may be followed at once: the
    /// view was stale). Released by [`Registry::end_refresh`].
    pub fn begin_refresh(&mut self, gap: Duration, now: Duration) -> bool {
        if self.refreshing || self.last_fruitless_refresh.is_some_and(|t| now < t + gap) {
            return false;
        }
        self.refreshing = true;
        true
    }

    /// `fruitless`: a refresh forced by a refusal dropped nothing (the refusal stood).
    pub fn end_refresh(&mut self, fruitless: bool, now: Duration) {
        self.refreshing = false;
        if fruitless {
            self.last_fruitless_refresh = Some(now);
        }
    }

    /// Brings one open session's entry in line with its record: registers it if this node
    /// has not seen it (created or continued on another node), else updates its spool usage.
    pub fn track(&mut self, rec: &SessionRecord) {
        match self.by_id.get(&rec.id) {
            Some(s) if s.destination == rec.destination => {
                let spooled = if rec.state == SessionState::Receiving {
                    rec.received
                } else {
                    0
                };
                self.set_spooled(rec.id, spooled);
            }
            _ => self.insert(rec),
        }
    }

    pub fn holder_of(&self, dest: &Destination) -> Option<(SessionId, &OpenSession)> {
        let id = *self.by_destination.get(dest)?;
        self.by_id.get(&id).map(|s| (id, s))
    }

    /// Registers an open session (creation or recovery).
    pub fn insert(&mut self, rec: &SessionRecord) {
        self.remove(rec.id);
        self.touch(rec.id);
        let spooled = if rec.state == SessionState::Receiving {
            rec.received
        } else {
            0
        };
        self.by_destination
            .entry(rec.destination.clone())
            .or_insert(rec.id);
        *self.per_owner.entry(rec.owner.clone()).or_default() += 1;
        *self.spooled_per_owner.entry(rec.owner.clone()).or_default() += spooled;
        *self.per_vdir.entry(rec.vdir.clone()).or_default() += 1;
        if let Some(owner) = &rec.owner {
            *self
                .per_vdir_owner
                .entry((rec.vdir.clone(), owner.clone()))
                .or_default() += 1;
        }
        let anonymous_client = if rec.owner.is_none() {
            self.anonymous += 1;
            if let Some(ip) = rec.client {
                *self.anonymous_per_ip.entry(ip).or_default() += 1;
            }
            rec.client
        } else {
            None
        };
        self.spooled += spooled;
        self.by_id.insert(
            rec.id,
            OpenSession {
                destination: rec.destination.clone(),
                owner: rec.owner.clone(),
                vdir: rec.vdir.clone(),
                anonymous_client,
                spooled,
            },
        );
    }

    /// Records the session's current spool usage.
    pub fn set_spooled(&mut self, id: SessionId, bytes: u64) {
        self.touch(id);
        if let Some(s) = self.by_id.get_mut(&id) {
            self.spooled = self.spooled - s.spooled + bytes;
            let owner = self.spooled_per_owner.entry(s.owner.clone()).or_default();
            *owner = *owner - s.spooled + bytes;
            s.spooled = bytes;
        }
    }

    /// Forgets a session that ended.
    pub fn remove(&mut self, id: SessionId) {
        self.touch(id);
        let Some(s) = self.by_id.remove(&id) else {
            return;
        };
        self.spooled -= s.spooled;
        if let Some(n) = self.spooled_per_owner.get_mut(&s.owner) {
            *n -= s.spooled;
            if *n == 0 {
                self.spooled_per_owner.remove(&s.owner);
            }
        }
        if self.by_destination.get(&s.destination) == Some(&id) {
            self.by_destination.remove(&s.destination);
        }
        decrement(&mut self.per_owner, &s.owner);
        decrement(&mut self.per_vdir, &s.vdir);
        if let Some(owner) = &s.owner {
            decrement(&mut self.per_vdir_owner, &(s.vdir.clone(), owner.clone()));
        }
        if s.owner.is_none() {
            self.anonymous -= 1;
            if let Some(ip) = s.anonymous_client {
                decrement(&mut self.anonymous_per_ip, &ip);
            }
        }
    }
}

/// Counts one less for `key`, forgetting it at zero (maps keyed by clients must not keep
/// every key ever seen).
fn decrement<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, u64>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, owner: Option<&str>, received: u64) -> SessionRecord {
        SessionRecord {
            id: SessionId::random(),
            vdir: "/upload/".into(),
            url: format!("/upload/{path}"),
            destination: Destination {
                root: "/r".into(),
                path: path.into(),
            },
            owner: owner.map(|o| Principal::new(crate::principal::Scheme::Basic, o)),
            client: None,
            total: None,
            received,
            state: SessionState::Receiving,
            created_at: 0,
            last_activity: 0,
            ended_at: None,
            reply_url: None,
            app_forbidden: false,
            sha256: None,
            pending_hook: None,
        }
    }

    fn alice() -> Option<Principal> {
        Some(Principal::new(crate::principal::Scheme::Basic, "alice"))
    }

    #[test]
    fn counts_follow_inserts_and_removals() {
        let mut r = Registry::default();
        let a = rec("a", Some("alice"), 10);
        let b = rec("b", Some("alice"), 5);
        let c = rec("a", None, 0);
        r.insert(&a);
        r.insert(&b);
        r.insert(&c);
        assert_eq!(r.open_count(), 3);
        assert_eq!(r.owned_by(&alice()), 2);
        assert_eq!(r.spooled(), 15);
        assert_eq!(r.holder_of(&a.destination).map(|(id, _)| id), Some(a.id));
        r.set_spooled(a.id, 100);
        assert_eq!(r.spooled(), 105);
        assert_eq!(r.spooled_by(&alice()), 105);
        r.remove(a.id);
        r.remove(a.id);
        assert_eq!(r.spooled(), 5);
        assert_eq!(r.spooled_by(&alice()), 5);
        assert_eq!(r.spooled_by(&None), 0);
        assert_eq!(r.owned_by(&alice()), 1);
        assert!(r.holder_of(&a.destination).is_none());
        assert_eq!(r.open_in_vdir("/upload/"), 2);
        assert_eq!(r.anonymous(), 1);
    }

    #[test]
    fn anonymous_sessions_are_counted_per_address() {
        let mut r = Registry::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut a = rec("a", None, 0);
        a.client = Some(ip);
        r.insert(&a);
        assert_eq!((r.anonymous(), r.anonymous_from(ip)), (1, 1));
        r.remove(a.id);
        assert_eq!((r.anonymous(), r.anonymous_from(ip)), (0, 0));
        assert!(r.anonymous_per_ip.is_empty() && r.per_vdir.is_empty());
    }

    #[test]
    fn tombstones_beyond_the_cap_are_evicted_oldest_first() {
        let mut r = Registry::default();
        let ids: Vec<SessionId> = (0..5).map(|_| SessionId::random()).collect();
        let mut evicted = Vec::new();
        for id in &ids {
            evicted.extend(r.add_tombstone(*id, 3));
        }
        assert_eq!(evicted, ids[..2]);
        assert_eq!(r.tombstones(), 3);
        r.drop_tombstone(ids[2]);
        assert_eq!(
            r.add_tombstone(SessionId::random(), 3),
            Vec::<SessionId>::new()
        );
        for _ in 0..10_000 {
            let id = SessionId::random();
            r.add_tombstone(id, 3);
            r.drop_tombstone(id);
        }
        assert!(r.tombstone_order.len() < 200);
    }

    #[test]
    fn track_registers_an_unseen_session_and_updates_a_known_one() {
        let mut r = Registry::default();
        let mut a = rec("a", Some("alice"), 10);
        r.track(&a);
        assert_eq!((r.open_count(), r.spooled_by(&alice())), (1, 10));
        a.received = 40;
        r.track(&a);
        assert_eq!(
            (r.open_count(), r.spooled(), r.owned_by(&alice())),
            (1, 40, 1)
        );
        a.state = SessionState::Committed;
        r.track(&a);
        assert_eq!((r.open_count(), r.spooled()), (1, 0));
        assert_eq!(r.holder_of(&a.destination).map(|(id, _)| id), Some(a.id));
        r.remove(a.id);
        assert_eq!((r.open_count(), r.owned_by(&alice())), (0, 0));
        assert!(r.spooled_per_owner.is_empty() && r.per_owner.is_empty());
    }

    #[test]
    fn one_refresh_at_a_time_and_fruitless_ones_spaced() {
        let mut r = Registry::default();
        let gap = Duration::from_secs(1);
        let t0 = Duration::from_secs(100);
        assert!(r.begin_refresh(gap, t0));
        assert!(!r.begin_refresh(gap, t0), "one at a time");
        r.end_refresh(false, t0);
        assert!(
            r.begin_refresh(gap, t0),
            "one that freed something may follow at once"
        );
        r.end_refresh(true, t0);
        assert!(
            !r.begin_refresh(gap, t0 + gap / 2),
            "a fruitless one is spaced"
        );
        assert!(
            r.begin_refresh(Duration::ZERO, t0 + gap / 2),
            "the periodic pass"
        );
        r.end_refresh(true, t0 + gap / 2);
        assert!(r.begin_refresh(gap, t0 + gap * 2));
    }
}
