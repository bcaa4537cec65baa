//! What the admin console shows beyond the session records: bytes and requests per 5-second
//! bucket over the last five minutes, the latest completions and errors, and totals per vdir.
//! Memory is fixed: a bounded number of buckets and recent entries, one total per vdir prefix.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::store::SessionRecord;

/// Width of one throughput bucket.
pub const BUCKET_MS: u64 = 5_000;
/// Buckets kept: five minutes.
pub const BUCKETS: usize = 60;
/// Completions and errors kept, newest first.
pub const RECENT: usize = 50;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Bucket {
    /// Start of the bucket, Unix milliseconds.
    pub start_ms: u64,
    /// Fragment bytes newly held by sessions.
    pub bytes: u64,
    /// `BITS_POST` requests answered.
    pub requests: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    pub at_ms: u64,
    pub id: String,
    pub vdir: String,
    pub url: String,
    pub owner: Option<String>,
    pub client: Option<String>,
    pub size: u64,
    /// Hex SHA-256 of the upload, when the server computed one (vdirs whose hooks ask for it).
    pub sha256: Option<String>,
    /// From Create-Session to the completing fragment.
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorEntry {
    pub at_ms: u64,
    pub status: u16,
    /// `BITS-Error-Code`, e.g. `0x80070057`.
    pub code: Option<String>,
    pub packet: String,
    pub path: String,
    pub client: Option<String>,
    pub session: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VdirTotals {
    pub completed: u64,
    pub bytes_completed: u64,
    pub bytes_received: u64,
    pub errors: u64,
}

/// A copy of everything, for one console refresh.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub now_ms: u64,
    pub bucket_ms: u64,
    /// Oldest first, one per bucket of the last five minutes (empty buckets included).
    pub series: Vec<Bucket>,
    pub completions: Vec<Completion>,
    pub errors: Vec<ErrorEntry>,
    pub vdirs: BTreeMap<String, VdirTotals>,
}

#[derive(Default)]
struct Inner {
    buckets: VecDeque<Bucket>,
    completions: VecDeque<Completion>,
    errors: VecDeque<ErrorEntry>,
    vdirs: BTreeMap<String, VdirTotals>,
}

impl Inner {
    fn bucket(&mut self, now_ms: u64) -> Option<&mut Bucket> {
        let start_ms = now_ms - now_ms % BUCKET_MS;
        if self.buckets.back().is_none_or(|b| b.start_ms < start_ms) {
            self.buckets.push_back(Bucket {
                start_ms,
                ..Bucket::default()
            });
            while self.buckets.len() > BUCKETS {
                self.buckets.pop_front();
            }
        }
        // A clock that stepped back lands in the newest bucket.
        self.buckets.back_mut()
    }

    fn vdir(&mut self, prefix: &str) -> &mut VdirTotals {
        // Only configured prefixes reach here (a session's vdir, a resolved path): bounded.
        self.vdirs.entry(prefix.to_string()).or_default()
    }
}

#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

impl Activity {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    /// One `BITS_POST` answered.
    pub fn request(&self, now_ms: u64) {
        self.with(|i| {
            if let Some(b) = i.bucket(now_ms) {
                b.requests += 1;
            }
        });
    }

    /// `n` bytes newly held by a session of `vdir`.
    pub fn bytes(&self, now_ms: u64, vdir: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.with(|i| {
            if let Some(b) = i.bucket(now_ms) {
                b.bytes += n;
            }
            i.vdir(vdir).bytes_received += n;
        });
    }

    pub fn completed(&self, now_ms: u64, rec: &SessionRecord) {
        let entry = Completion {
            at_ms: now_ms,
            id: rec.id.to_string(),
            vdir: rec.vdir.clone(),
            url: rec.url.clone(),
            owner: rec.owner.as_ref().map(|p| p.to_string()),
            client: rec.client.map(|c| c.to_string()),
            size: rec.received,
            sha256: rec
                .sha256
                .as_ref()
                .filter(|d| d.len() == rec.received)
                .map(|d| d.hex()),
            duration_ms: now_ms.saturating_sub(rec.created_at),
        };
        self.with(|i| {
            let totals = i.vdir(&rec.vdir);
            totals.completed += 1;
            totals.bytes_completed += rec.received;
            i.completions.push_front(entry);
            i.completions.truncate(RECENT);
        });
    }

    /// An error Ack; `vdir` when the path resolved to one.
    pub fn error(&self, vdir: Option<&str>, entry: ErrorEntry) {
        self.with(|i| {
            if let Some(v) = vdir {
                i.vdir(v).errors += 1;
            }
            i.errors.push_front(entry);
            i.errors.truncate(RECENT);
        });
    }

    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        self.with(|i| {
            let newest = now_ms - now_ms % BUCKET_MS;
            let oldest = newest.saturating_sub(BUCKET_MS * (BUCKETS as u64 - 1));
            let series = (0..BUCKETS as u64)
                .map(|k| oldest + k * BUCKET_MS)
                .map(|start_ms| {
                    i.buckets
                        .iter()
                        .find(|b| b.start_ms == start_ms)
                        .cloned()
                        .unwrap_or(Bucket {
                            start_ms,
                            ..Bucket::default()
                        })
                })
                .collect();
            Snapshot {
                now_ms,
                bucket_ms: BUCKET_MS,
                series,
                completions: i.completions.iter().cloned().collect(),
                errors: i.errors.iter().cloned().collect(),
                vdirs: i.vdirs.clone(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_roll_and_the_series_covers_five_minutes() {
        let a = Activity::default();
        let t0 = 1_000_000_000;
        a.request(t0);
        a.bytes(t0 + 1, "/upload/", 10);
        a.request(t0 + BUCKET_MS);
        // Ten minutes later the old buckets are out of the window.
        let s = a.snapshot(t0 + BUCKET_MS);
        assert_eq!(s.series.len(), BUCKETS);
        assert_eq!(s.series.last().unwrap().requests, 1);
        assert_eq!(s.series[BUCKETS - 2].bytes, 10);
        assert_eq!(s.vdirs["/upload/"].bytes_received, 10);
        for k in 0..1000 {
            a.request(t0 + 2 * BUCKET_MS + k * BUCKET_MS);
        }
        let later = a.snapshot(t0 + 1001 * BUCKET_MS);
        assert!(later.series.iter().all(|b| b.bytes == 0));
        assert_eq!(
            later.series.iter().map(|b| b.requests).sum::<u64>(),
            BUCKETS as u64
        );
        assert!(a.with(|i| i.buckets.len()) <= BUCKETS);
    }

    #[test]
    fn recent_lists_are_bounded() {
        let a = Activity::default();
        for k in 0..(RECENT as u64 + 20) {
            a.error(
                Some("/upload/"),
                ErrorEntry {
                    at_ms: k,
                    status: 400,
                    code: Some("0x80070057".into()),
                    packet: "Ping".into(),
                    path: "/upload/x".into(),
                    client: None,
                    session: None,
                    message: format!("e{k}"),
                },
            );
        }
        let s = a.snapshot(100);
        assert_eq!(s.errors.len(), RECENT);
        assert_eq!(s.errors[0].message, format!("e{}", RECENT + 19));
        assert_eq!(s.vdirs["/upload/"].errors, RECENT as u64 + 20);
    }
}
