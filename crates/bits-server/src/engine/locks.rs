//! One in-flight request per session: a per-session async mutex, created on demand and
//! forgotten when nobody holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bits_proto::SessionId;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct SessionLocks {
    map: Mutex<HashMap<SessionId, Weak<AsyncMutex<()>>>>,
}

pub type SessionGuard = OwnedMutexGuard<()>;

impl SessionLocks {
    fn entry(&self, id: SessionId) -> Arc<AsyncMutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = map.get(&id).and_then(Weak::upgrade) {
            return lock;
        }
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(AsyncMutex::new(()));
        map.insert(id, Arc::downgrade(&lock));
        lock
    }

    /// Waits up to `timeout` for the session; `None` if another request still holds it.
    pub async fn lock(&self, id: SessionId, timeout: Duration) -> Option<SessionGuard> {
        tokio::time::timeout(timeout, self.entry(id).lock_owned())
            .await
            .ok()
    }

    pub fn try_lock(&self, id: SessionId) -> Option<SessionGuard> {
        self.entry(id).try_lock_owned().ok()
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
}
