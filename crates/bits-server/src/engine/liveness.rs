//! When a session counts as idle. The timeout (`session_timeout`) is kept in wall-clock terms
//! in the record (`last_activity`, shared with other nodes and read after restarts), but a
//! stepped wall clock must never delete a session whose client is busy. So besides the record,
//! this process remembers, on its monotonic clock, when it last saw each session be used:
//!
//! - seen used here (a request of this process stamped it, or this process read a record whose
//!   `last_activity` had moved since its last look): idle only when the wall clock *and* the
//!   monotonic clock both say so;
//! - not seen since start: the wall clock decides, as before, unless the wall clock has drifted
//!   from the monotonic one by more than a sweep interval since start (it was stepped): then the
//!   session is idle only at a second look, at least one sweep interval later, with its
//!   `last_activity` unchanged.
//!
//! A wall clock stepped backward only postpones expiry (idle time looks shorter).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bits_proto::SessionId;

#[derive(Clone, Copy, Debug)]
enum Seen {
    /// Used at `mono`, its record then saying `last_activity`.
    Used { mono: Duration, last_activity: u64 },
    /// Found looking idle at `mono` while the wall clock was suspect.
    Looked { mono: Duration, last_activity: u64 },
}

#[derive(Debug)]
pub(super) struct Liveness {
    seen: Mutex<HashMap<SessionId, Seen>>,
    /// Wall and monotonic time at start, to tell a stepped wall clock.
    start_wall_ms: u64,
    start_mono: Duration,
    /// How far the clocks may drift apart, and how long a second look waits.
    tolerance: Duration,
}

impl Liveness {
    pub(super) fn new(wall_ms: u64, mono: Duration, tolerance: Duration) -> Liveness {
        Liveness {
            seen: Mutex::new(HashMap::new()),
            start_wall_ms: wall_ms,
            start_mono: mono,
            tolerance,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request of this process used the session; its record now says `last_activity`.
    pub(super) fn used(&self, id: SessionId, last_activity: u64, mono: Duration) {
        self.seen().insert(
            id,
            Seen::Used {
                mono,
                last_activity,
            },
        );
    }

    /// The session ended: nothing to remember.
    pub(super) fn forget(&self, id: SessionId) {
        self.seen().remove(&id);
    }

    /// Whether the wall clock has moved apart from the monotonic clock since start by more
    /// than the tolerance (it was stepped).
    fn wall_stepped(&self, wall_ms: u64, mono: Duration) -> bool {
        let wall = wall_ms as i128 - self.start_wall_ms as i128;
        let steady = mono.saturating_sub(self.start_mono).as_millis() as i128;
        (wall - steady).unsigned_abs() > self.tolerance.as_millis()
    }

    /// Whether a session whose record says `last_activity` is idle longer than `timeout`.
    pub(super) fn idle(
        &self,
        id: SessionId,
        last_activity: u64,
        timeout: Duration,
        wall_ms: u64,
        mono: Duration,
    ) -> bool {
        let timeout_ms = timeout.as_millis() as u64;
        if wall_ms.saturating_sub(last_activity) <= timeout_ms {
            return false;
        }
        let mut seen = self.seen();
        match seen.get(&id).copied() {
            // Used elsewhere (another node) since this process last looked: busy now.
            Some(
                Seen::Used {
                    last_activity: a, ..
                }
                | Seen::Looked {
                    last_activity: a, ..
                },
            ) if a != last_activity => {
                seen.insert(
                    id,
                    Seen::Used {
                        mono,
                        last_activity,
                    },
                );
                false
            }
            Some(Seen::Used { mono: at, .. }) => mono.saturating_sub(at) > timeout,
            Some(Seen::Looked { mono: at, .. }) => mono.saturating_sub(at) >= self.tolerance,
            None if !self.wall_stepped(wall_ms, mono) => true,
            None => {
                tracing::info!(session = %id, "session looks idle, but the wall clock was stepped: looking again later");
                seen.insert(
                    id,
                    Seen::Looked {
                        mono,
                        last_activity,
                    },
                );
                false
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn id(n: u8) -> SessionId {
        SessionId::parse(&format!("{{{:08X}-0000-0000-0000-000000000000}}", n)).unwrap()
    }

    #[test]
    fn a_session_used_here_outlives_wall_clock_steps() {
        let t0 = 1_000_000_000;
        let l = Liveness::new(t0, Duration::ZERO, Duration::from_secs(3600));
        let timeout = Duration::from_secs(600);
        l.used(id(1), t0, Duration::ZERO);
        // The wall clock jumps 25 minutes ahead, no time passes: busy.
        assert!(!l.idle(id(1), t0, timeout, t0 + 25 * MIN, Duration::from_secs(1)));
        // Really idle 11 minutes (both clocks): idle.
        assert!(l.idle(
            id(1),
            t0,
            timeout,
            t0 + 36 * MIN,
            Duration::from_secs(11 * 60 + 1)
        ));
        // Another node used it meanwhile (last_activity moved): busy again.
        assert!(!l.idle(
            id(1),
            t0 + MIN,
            timeout,
            t0 + 36 * MIN,
            Duration::from_secs(700)
        ));
        l.forget(id(1));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn unseen_sessions_get_a_second_look_after_a_step() {
        let t0 = 1_000_000_000;
        let tolerance = Duration::from_secs(3600);
        let l = Liveness::new(t0, Duration::ZERO, tolerance);
        let timeout = Duration::from_secs(600);
        // Clocks agree: the wall clock decides at once.
        assert!(l.idle(id(2), t0 - 20 * MIN, timeout, t0, Duration::ZERO));
        // Stepped 15 days ahead: a first look defers ...
        let stepped = t0 + 15 * 24 * 60 * MIN;
        assert!(!l.idle(id(3), t0, timeout, stepped, Duration::from_secs(5)));
        // ... and a second look a tolerance later, nothing changed, expires.
        assert!(!l.idle(id(3), t0, timeout, stepped, Duration::from_secs(60)));
        assert!(l.idle(
            id(3),
            t0,
            timeout,
            stepped + 60 * MIN,
            tolerance + Duration::from_secs(5)
        ));
    }
}
