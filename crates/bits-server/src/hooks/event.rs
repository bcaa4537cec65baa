//! The event model: what happened ([`EventKind`]), the record every target is sent
//! ([`HookEvent`]), and the identity of an owed event kept in the session record
//! ([`PendingEvent`]).
//!
//! Plain data with no dependency on the queue or the transports, so that the storage layer can
//! persist a [`PendingEvent`] without depending on the hook runtime.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

// Defined with the `[vdir.hooks]` table, whose `events` list names them.
pub use crate::config::hooks::EventKind;

/// One event, as sent (JSON) to every target.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookEvent {
    /// Unique per event (UUID v4); also sent as `X-Bitsd-Delivery`, the same on every retry.
    pub id: String,
    pub event: EventKind,
    /// When the event happened: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The session GUID.
    pub session: String,
    /// The vdir's URL prefix.
    pub vdir: String,
    /// The upload's path relative to the vdir root.
    pub destination: String,
    /// The authenticated user, if any.
    pub identity: Option<String>,
    /// Size in bytes of the completed upload (`upload_completed` only, else null).
    pub size: Option<u64>,
    /// Lowercase hex SHA-256 of the completed upload (`upload_completed` only, else null).
    pub sha256: Option<String>,
}

/// The identity of an `upload_completed` event not yet delivered, kept in the session record so
/// that a restart delivers it again under the same id (receivers deduplicate on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub id: String,
    pub time: String,
}

impl PendingEvent {
    /// A fresh id, at `now_ms` (milliseconds since the Unix epoch, from the engine's clock).
    pub fn at(now_ms: u64) -> PendingEvent {
        PendingEvent {
            id: uuid::Uuid::new_v4().to_string(),
            time: rfc3339_ms(now_ms),
        }
    }
}

impl HookEvent {
    /// The event `pending` names (a redelivery after a restart): its id and time.
    pub fn owed(
        event: EventKind,
        pending: &PendingEvent,
        session: String,
        vdir: String,
        destination: String,
        identity: Option<String>,
    ) -> Self {
        HookEvent {
            id: pending.id.clone(),
            event,
            time: pending.time.clone(),
            session,
            vdir,
            destination,
            identity,
            size: None,
            sha256: None,
        }
    }

    /// An event happening at `now_ms` (milliseconds since the Unix epoch, from the engine's
    /// clock), with a fresh id.
    pub fn new(
        event: EventKind,
        now_ms: u64,
        session: String,
        vdir: String,
        destination: String,
        identity: Option<String>,
    ) -> Self {
        HookEvent {
            id: uuid::Uuid::new_v4().to_string(),
            event,
            time: rfc3339_ms(now_ms),
            session,
            vdir,
            destination,
            identity,
            size: None,
            sha256: None,
        }
    }

    /// Sets the size and SHA-256 of a completed upload.
    pub fn with_upload(mut self, size: u64, sha256: &str) -> Self {
        self.size = Some(size);
        self.sha256 = Some(sha256.to_ascii_lowercase());
        self
    }
}

/// `ms` since the Unix epoch as [`rfc3339`] prints it.
fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 print as 1970).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formatting() {
        let at = |s: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
        // Agrees with httpdate on the date and time fields over a spread of days.
        for i in 0..2000u64 {
            let secs = i * 1_234_567 + 86_399;
            let ours = at(secs, 0);
            let theirs = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(secs));
            let parsed: SystemTime = theirs.into();
            assert_eq!(rfc3339(parsed), ours);
            let http = httpdate::fmt_http_date(parsed);
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let day: u32 = http[5..7].parse().unwrap();
            let year: i64 = http[12..16].parse().unwrap();
            assert_eq!(ours[..4].parse::<i64>().unwrap(), year, "{ours} {http}");
            assert_eq!(ours[8..10].parse::<u32>().unwrap(), day, "{ours} {http}");
            assert_eq!(&ours[11..19], &http[17..25], "{ours} {http}");
        }
    }
}
