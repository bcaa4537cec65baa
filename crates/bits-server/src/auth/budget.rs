//! Failure budgets: how many failed sign-ins one user name and one client address may cost in a
//! window before further attempts get 503 without a check. Shared by every scheme that checks a
//! secret (Basic passwords, NTLM answers, Kerberos tickets).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::BasicAuthLimits;

/// Failures counted per key in fixed windows, in a table of bounded size.
pub(crate) struct FailureBudget<K> {
    limit: u32,
    window: Duration,
    cap: usize,
    /// Per key: when its window started, and the attempts counted in it.
    entries: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq + Clone> FailureBudget<K> {
    pub(crate) fn new(limit: u32, window: Duration, cap: usize) -> Self {
        FailureBudget {
            limit,
            window,
            cap: cap.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt against `key` before it is made (so that concurrent attempts cannot
    /// all slip under the limit); false, and nothing counted, when the budget is spent.
    pub(crate) fn take(&self, key: &K) -> bool {
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
    pub(crate) fn exhausted(&self, key: &K) -> bool {
        if self.limit == 0 {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|(start, n)| {
            Instant::now().duration_since(*start) < self.window && *n >= self.limit
        })
    }

    /// Gives back an attempt that succeeded (or was never made).
    pub(crate) fn refund(&self, key: &K) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = entries.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The two budgets every secret-checking scheme draws on.
pub(crate) struct Budgets {
    pub(crate) per_user: FailureBudget<[u8; 32]>,
    pub(crate) per_ip: FailureBudget<IpAddr>,
}

/// The outcome of taking both budgets before a check.
pub(crate) struct Taken<'a> {
    budgets: &'a Budgets,
    name: Option<[u8; 32]>,
    ip: Option<IpAddr>,
}

impl Taken<'_> {
    /// The check succeeded: both attempts are given back.
    pub(crate) fn refund(self) {
        if let Some(name) = &self.name {
            self.budgets.per_user.refund(name);
        }
        if let Some(ip) = &self.ip {
            self.budgets.per_ip.refund(ip);
        }
    }
}

impl Budgets {
    pub(crate) fn new(limits: &BasicAuthLimits) -> Budgets {
        Budgets {
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
        }
    }

    /// Whether the address has no sign-in attempt left (checked before any work is done).
    pub(crate) fn address_spent(&self, peer: Option<IpAddr>) -> bool {
        peer.map(ip_key)
            .is_some_and(|ip| self.per_ip.exhausted(&ip))
    }

    /// Takes one attempt from the address and (when given) the user name's budget; `None`,
    /// with nothing kept, when either is spent.
    pub(crate) fn take(&self, peer: Option<IpAddr>, user: Option<&str>) -> Option<Taken<'_>> {
        let ip = peer.map(ip_key);
        if let Some(ip) = &ip {
            if !self.per_ip.take(ip) {
                tracing::debug!(?ip, "failure budget of this address spent: not checking");
                return None;
            }
        }
        let name = user.map(name_key);
        if let Some(name) = &name {
            if !self.per_user.take(name) {
                if let Some(ip) = &ip {
                    self.per_ip.refund(ip);
                }
                tracing::debug!("failure budget of this user name spent: not checking");
                return None;
            }
        }
        Some(Taken {
            budgets: self,
            name,
            ip,
        })
    }

    /// Counts one failure against the address (a check that needed no user name).
    pub(crate) fn fail_address(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer.map(ip_key) {
            self.per_ip.take(&ip);
        }
    }
}

/// The budget key of a client address: IPv6 clients usually hold a whole /64.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The budget key of a user name: fixed size, however long the name a client sends; names
/// that sign in as the same user (`super::users::fold_name`) share a budget.
pub(crate) fn name_key(user: &str) -> [u8; 32] {
    Sha256::digest(super::users::fold_name(user).as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_spent_name_gives_the_address_its_attempt_back() {
        let limits = BasicAuthLimits {
            failures_per_user: 1,
            failures_per_ip: 5,
            ..BasicAuthLimits::default()
        };
        let b = Budgets::new(&limits);
        let ip = Some("192.0.2.1".parse().unwrap());
        assert!(b.take(ip, Some("alice")).is_some());
        // Spelled otherwise, the same user: the same budget.
        assert!(b.take(ip, Some("ALICE")).is_none());
        for _ in 0..4 {
            assert!(b.take(ip, Some("bob")).is_some() || b.take(ip, None).is_some());
        }
        assert!(b.address_spent(ip));
    }
}
