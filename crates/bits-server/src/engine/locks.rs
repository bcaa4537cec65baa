//! One in-flight request per session: a per-session async mutex, created on demand and
//! forgotten when nobody holds or waits for it.
//!
//! A BITS client sends one request per session at a time, so a second request for a session
//! means the client gave up on the first (its connection may be half-dead, still "sending").
//! The newcomer therefore asks the holder to stop early; the holder keeps what it has made
//! durable, releases the lock, and the newcomer goes on from the stored length.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bits_proto::SessionId;
use tokio::sync::{watch, Mutex as AsyncMutex, OwnedMutexGuard};

struct Slot {
    mutex: Arc<AsyncMutex<()>>,
    /// Bumped by every request that has to wait for this session.
    preempt: watch::Sender<u64>,
}

/// Cheap to clone: clones share the same locks (background tasks take sessions too).
#[derive(Default, Clone)]
pub struct SessionLocks {
    map: Arc<Mutex<HashMap<SessionId, Weak<Slot>>>>,
}

/// Holding this is holding the session.
pub struct SessionGuard {
    _held: OwnedMutexGuard<()>,
    _slot: Arc<Slot>,
    preempt: watch::Receiver<u64>,
    generation: u64,
}

impl SessionGuard {
    /// Resolves when a newer request for the same session is waiting.
    pub async fn preempted(&mut self) {
        if self.preempt.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn was_preempted(&self) -> bool {
        *self.preempt.borrow() != self.generation
    }
}

impl SessionLocks {
    fn slot(&self, id: SessionId) -> Arc<Slot> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = map.get(&id).and_then(Weak::upgrade) {
            return slot;
        }
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let slot = Arc::new(Slot {
            mutex: Arc::new(AsyncMutex::new(())),
            preempt: watch::channel(0).0,
        });
        map.insert(id, Arc::downgrade(&slot));
        slot
    }

    fn guard(slot: Arc<Slot>, held: OwnedMutexGuard<()>) -> SessionGuard {
        let mut preempt = slot.preempt.subscribe();
        let generation = *preempt.borrow_and_update();
        SessionGuard {
            _held: held,
            _slot: slot,
            preempt,
            generation,
        }
    }

    /// Takes the session, asking a current holder to stop early; gives up after `timeout`.
    pub async fn lock(&self, id: SessionId, timeout: Duration) -> Option<SessionGuard> {
        let slot = self.slot(id);
        if let Ok(held) = slot.mutex.clone().try_lock_owned() {
            return Some(Self::guard(slot, held));
        }
        slot.preempt.send_modify(|g| *g += 1);
        let held = tokio::time::timeout(timeout, slot.mutex.clone().lock_owned())
            .await
            .ok()?;
        Some(Self::guard(slot, held))
    }

    /// Takes the session only if nobody holds it (background work never preempts requests).
    pub fn try_lock(&self, id: SessionId) -> Option<SessionGuard> {
        let slot = self.slot(id);
        let held = slot.mutex.clone().try_lock_owned().ok()?;
        Some(Self::guard(slot, held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serializes_one_session_only() {
        let locks = SessionLocks::default();
        let (a, b) = (SessionId::random(), SessionId::random());
        let held = locks.lock(a, Duration::from_secs(1)).await.unwrap();
        assert!(locks.lock(a, Duration::from_millis(20)).await.is_none());
        assert!(locks.try_lock(b).is_some());
        drop(held);
        assert!(locks.lock(a, Duration::from_millis(20)).await.is_some());
    }

    #[tokio::test]
    async fn a_waiting_request_preempts_the_holder() {
        let locks = Arc::new(SessionLocks::default());
        let id = SessionId::random();
        let mut held = locks.lock(id, Duration::from_secs(1)).await.unwrap();
        assert!(!held.was_preempted());
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(id, Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::timeout(Duration::from_secs(5), held.preempted())
            .await
            .unwrap();
        assert!(held.was_preempted());
        drop(held);
        assert!(waiter.await.unwrap());
    }
}
