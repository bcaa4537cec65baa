//! The server-wide bound on fragment body bytes held in memory (`max_buffered_body_bytes`),
//! shared by every write of a store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Fragment body bytes gathered in memory by all writes of one store, against a limit: a
/// client that sends most of a batch and then stalls would otherwise pin a whole batch per
/// connection, and many such clients the whole server's memory.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    limit: u64,
    pub(crate) held: AtomicU64,
    /// Woken whenever bytes are given back, for writers waiting in [`BodyBudget::reserve`].
    freed: Notify,
}

impl BodyBudget {
    pub(crate) fn new(limit: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit,
            held: AtomicU64::new(0),
            freed: Notify::new(),
        })
    }

    /// Takes `n` bytes of the budget, or nothing if that would exceed it.
    pub(crate) fn try_take(&self, n: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    /// Takes as much of `want` as is free if that is at least `min`; returns what was taken,
    /// 0 for nothing. When nothing is held, a `min` larger than the whole limit is granted
    /// too: else it could never be.
    fn try_take_between(&self, min: u64, want: u64) -> u64 {
        let min = min.min(want).max(1);
        let mut taken = 0;
        let took = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                taken = if held == 0 {
                    want.min(self.limit.max(min))
                } else {
                    want.min(self.limit.saturating_sub(held))
                };
                (taken >= min).then_some(held + taken)
            });
        if took.is_ok() {
            taken
        } else {
            0
        }
    }

    pub(crate) fn give_back(&self, n: u64) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Reserves between `min` and `want` bytes (all of `want` if it is smaller than `min`),
    /// waiting for other writers to give bytes back. A writer never holds budget while it
    /// waits, so waiting cannot deadlock; and after `patience` it goes on with `min` bytes
    /// beyond the limit rather than failing: every request makes progress, and the overdraft
    /// is at most `min` per waiting request.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        min: u64,
        want: u64,
        patience: Duration,
    ) -> Reservation {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before trying, so a give-back between the try and the wait is seen.
            let freed = self.freed.notified();
            let taken = self.try_take_between(min, want);
            if taken > 0 {
                return self.holding(taken);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let forced = min.min(want);
                self.held.fetch_add(forced, Ordering::AcqRel);
                tracing::debug!(bytes = forced, "body budget spent: going on beyond it");
                return self.holding(forced);
            }
        }
    }

    fn holding(self: &Arc<Self>, bytes: u64) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Bytes of a [`BodyBudget`] held until dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl Reservation {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_each_other_and_never_deadlock() {
        let budget = BodyBudget::new(100);
        let a = budget.reserve(10, 80, Duration::from_secs(5)).await;
        assert_eq!(a.bytes(), 80);
        // Less than wanted but at least the minimum: taken at once.
        let b = budget.reserve(10, 80, Duration::from_secs(5)).await;
        assert_eq!(b.bytes(), 20);
        // Nothing free: waits until a give-back.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(10, 50, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let c = waiter.await.unwrap();
        assert_eq!(c.bytes(), 50);
        assert_eq!(budget.held.load(Ordering::Acquire), 70);
        // Out of patience: goes on with the minimum, beyond the limit.
        let budget2 = BodyBudget::new(10);
        let _full = budget2.reserve(10, 10, Duration::ZERO).await;
        let over = budget2.reserve(4, 8, Duration::from_millis(20)).await;
        assert_eq!(over.bytes(), 4);
        assert_eq!(budget2.held.load(Ordering::Acquire), 14);
        // More than the whole limit: granted when nothing else is held, else waited for.
        let budget3 = BodyBudget::new(10);
        let big = budget3.reserve(20, 30, Duration::from_secs(5)).await;
        assert_eq!(big.bytes(), 20);
        drop(big);
        let small = budget3.reserve(1, 4, Duration::from_secs(5)).await;
        assert_eq!(small.bytes(), 4);
        drop((b, c, over));
        assert_eq!(budget.held.load(Ordering::Acquire), 0);
    }
}
