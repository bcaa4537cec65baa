//! Retry budget and exponential backoff for transient failures.
//!
//! Windows BITS retries a transient error after the job's retry delay until its no-progress
//! timeout (days by default). An interactive tool wants minutes, so the budget here counts
//! consecutive failed attempts and is reset whenever the transfer makes progress: a long upload
//! over a flaky link keeps going as long as every outage is short.

use std::time::Duration;

/// How often and how patiently transient failures are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Consecutive failed attempts allowed before giving up (0 = never retry).
    pub max_retries: u32,
    /// Delay before the first retry; doubled for every further one.
    pub initial_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy for tests and tools that want quick, bounded retries.
    pub fn quick(max_retries: u32, delay: Duration) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            initial_delay: delay,
            max_delay: delay * 4,
        }
    }
}

/// The state of one retry budget.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Backoff {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// Records a failure: the delay before the next attempt, or `None` when the budget is spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.failures >= self.policy.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(self.failures.min(16)).unwrap_or(u32::MAX);
        self.failures += 1;
        Some(
            self.policy
                .initial_delay
                .saturating_mul(factor)
                .min(self.policy.max_delay.max(self.policy.initial_delay)),
        )
    }

    /// Failed attempts so far (for reporting), counting the first try.
    pub fn attempts(&self) -> u32 {
        self.failures + 1
    }

    /// Progress was made: the budget starts over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_runs_out() {
        let mut b = Backoff::new(RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        });
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 350, 350, 350]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn zero_retries_means_one_attempt() {
        let mut b = Backoff::new(RetryPolicy::quick(0, Duration::from_millis(1)));
        assert_eq!(b.next_delay(), None);
    }
}
