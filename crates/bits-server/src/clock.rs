//! Time, behind a trait so a test can move it instead of sleeping through session timeouts and
//! tombstone lifetimes: the wall clock for what is stored and shared (session timestamps, hook
//! event times), and a monotonic clock for how long this process has seen a session idle. The
//! wall clock can be stepped (NTP, a VM restored from a snapshot, a machine without a hardware
//! clock); idle time measured on it alone would delete sessions whose clients are busy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch, as the session records store them.
    fn now_ms(&self) -> u64;
    /// Time elapsed on a clock that never steps, from an origin fixed for the process.
    fn mono(&self) -> Duration;
}

/// The system's clocks: what a running server uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn mono(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// Clocks that stand still until they are moved: for tests of expiry and tombstones.
#[derive(Debug)]
pub struct ManualClock {
    wall: AtomicU64,
    mono: AtomicU64,
}

impl ManualClock {
    /// Starts at the system's current time (records written under it look ordinary).
    pub fn new() -> ManualClock {
        ManualClock {
            wall: AtomicU64::new(SystemClock.now_ms()),
            mono: AtomicU64::new(0),
        }
    }

    /// Time passes: both clocks move.
    pub fn advance(&self, by: Duration) {
        self.wall.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        self.mono.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// The wall clock is stepped by `ms` (forward or back); no time passes.
    pub fn step_wall(&self, ms: i64) {
        let _ = self
            .wall
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some(w.saturating_add_signed(ms))
            });
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }

    fn mono(&self) -> Duration {
        Duration::from_millis(self.mono.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_ms(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now_ms(), t0 + 90_000);
        assert_eq!(clock.mono(), Duration::from_secs(90));
        clock.step_wall(-3_600_000);
        assert_eq!(clock.now_ms(), t0 + 90_000 - 3_600_000);
        assert_eq!(clock.mono(), Duration::from_secs(90));
    }
}
