//! In-memory view of the open sessions, rebuilt from storage at start-up: who uploads to which
//! destination, how many sessions each identity holds, and how many bytes sit in the spool.

use std::collections::HashMap;

use bits_proto::SessionId;

use crate::store::{Destination, SessionRecord, SessionState};

#[derive(Clone, Debug)]
pub struct OpenSession {
    pub destination: Destination,
    pub owner: Option<String>,
    /// Bytes of this session held in the spool (0 once published).
    pub spooled: u64,
}

#[derive(Default)]
pub struct Registry {
    by_id: HashMap<SessionId, OpenSession>,
    by_destination: HashMap<Destination, SessionId>,
    per_owner: HashMap<Option<String>, u64>,
    spooled_per_owner: HashMap<Option<String>, u64>,
    spooled: u64,
}

impl Registry {
    pub fn open_count(&self) -> u64 {
        self.by_id.len() as u64
    }

    pub fn owned_by(&self, owner: &Option<String>) -> u64 {
        self.per_owner.get(owner).copied().unwrap_or(0)
    }

    pub fn spooled(&self) -> u64 {
        self.spooled
    }

    /// Spool bytes held by the sessions of one identity.
    pub fn spooled_by(&self, owner: &Option<String>) -> u64 {
        self.by_id
            .values()
            .filter(|s| s.owner == *owner)
            .map(|s| s.spooled)
            .sum()
    }

    pub fn holder_of(&self, dest: &Destination) -> Option<(SessionId, &OpenSession)> {
        let id = *self.by_destination.get(dest)?;
        self.by_id.get(&id).map(|s| (id, s))
    }

    /// Registers an open session (creation or recovery).
    pub fn insert(&mut self, rec: &SessionRecord) {
        self.remove(rec.id);
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
        self.spooled += spooled;
        self.by_id.insert(
            rec.id,
            OpenSession {
                destination: rec.destination.clone(),
                owner: rec.owner.clone(),
                spooled,
            },
        );
    }

    /// Records the session's current spool usage.
    pub fn set_spooled(&mut self, id: SessionId, bytes: u64) {
        if let Some(s) = self.by_id.get_mut(&id) {
            self.spooled = self.spooled - s.spooled + bytes;
            let owner = self.spooled_per_owner.entry(s.owner.clone()).or_default();
            *owner = *owner - s.spooled + bytes;
            s.spooled = bytes;
        }
    }

    /// Forgets a session that ended.
    pub fn remove(&mut self, id: SessionId) {
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
        if let Some(n) = self.per_owner.get_mut(&s.owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&s.owner);
            }
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
            owner: owner.map(String::from),
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
        assert_eq!(r.owned_by(&Some("alice".into())), 2);
        assert_eq!(r.spooled(), 15);
        assert_eq!(r.holder_of(&a.destination).map(|(id, _)| id), Some(a.id));
        r.set_spooled(a.id, 100);
        assert_eq!(r.spooled(), 105);
        assert_eq!(r.spooled_by(&Some("alice".into())), 105);
        r.remove(a.id);
        r.remove(a.id);
        assert_eq!(r.spooled(), 5);
        assert_eq!(r.spooled_by(&Some("alice".into())), 5);
        assert_eq!(r.spooled_by(&None), 0);
        assert_eq!(r.owned_by(&Some("alice".into())), 1);
        assert!(r.holder_of(&a.destination).is_none());
    }
}
