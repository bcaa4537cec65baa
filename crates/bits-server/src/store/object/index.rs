//! What must be found by time, kept under keys that sort by time, so that start-up and the
//! sweep list a few keys instead of reading every record:
//!
//! ```text
//! <prefix>/index/idle/<hour>/<uuid>    an open session whose last activity fell in that hour
//! <prefix>/index/ended/<hour>/<uuid>   a tombstone that ended in that hour
//! <prefix>/index/attention/<uuid>      a session start-up must look at (a completion that may
//!                                      be half done, an owed hook event)
//! <prefix>/index/complete              written once every record has its markers
//! ```
//!
//! `<hour>` is hours since the Unix epoch, 12 decimal digits: listings return them in time
//! order. Markers are empty objects and only hints: the record is the truth. A record's new
//! markers are written *before* the record (a crash in between leaves a stale marker, never a
//! record without one), its old ones deleted after. An idle marker moves at most once an hour
//! per session. A stale marker (the session moved on, possibly through another node, or is
//! gone) costs a look and is deleted when found.

use std::collections::HashMap;

use bits_proto::SessionId;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{os_err, ObjectBackend};
use crate::store::{SessionRecord, SessionStore, StoreError};

const HOUR_MS: u64 = 3_600_000;

/// Sessions whose markers this node remembers at most (the rest: their markers are learned
/// again from their record when next loaded).
const MAX_KNOWN: usize = 65_536;

/// Where a record's markers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Marks {
    idle_hour: Option<u64>,
    ended_hour: Option<u64>,
    attention: bool,
}

impl Marks {
    pub(super) fn of(rec: &SessionRecord) -> Marks {
        let open = rec.state.is_open();
        Marks {
            idle_hour: open.then_some(rec.last_activity / HOUR_MS),
            ended_hour: (!open).then(|| rec.ended_at.unwrap_or(0) / HOUR_MS),
            attention: crate::store::sessions_db::needs_attention(rec),
        }
    }
}

/// The markers each session had when this node last wrote or read its record.
#[derive(Default)]
pub(super) struct Known(HashMap<SessionId, Marks>);

impl Known {
    pub(super) fn get(&self, id: &SessionId) -> Option<Marks> {
        self.0.get(id).copied()
    }

    pub(super) fn note(&mut self, id: SessionId, marks: Marks) {
        if self.0.len() >= MAX_KNOWN && !self.0.contains_key(&id) {
            if let Some(victim) = self.0.keys().next().copied() {
                self.0.remove(&victim);
            }
        }
        self.0.insert(id, marks);
    }

    pub(super) fn forget(&mut self, id: &SessionId) -> Option<Marks> {
        self.0.remove(id)
    }
}

fn hour_name(hour: u64) -> String {
    format!("{hour:012}")
}

impl ObjectBackend {
    fn index(&self) -> Path {
        Self::below(&self.root, "index")
    }

    fn idle_marker(&self, hour: u64, id: SessionId) -> Path {
        Self::below(
            &self.index(),
            &format!("idle/{}/{}", hour_name(hour), id.as_uuid().hyphenated()),
        )
    }

    fn ended_marker(&self, hour: u64, id: SessionId) -> Path {
        Self::below(
            &self.index(),
            &format!("ended/{}/{}", hour_name(hour), id.as_uuid().hyphenated()),
        )
    }

    fn attention_marker(&self, id: SessionId) -> Path {
        Self::below(
            &self.index(),
            &format!("attention/{}", id.as_uuid().hyphenated()),
        )
    }

    fn marker_paths(&self, id: SessionId, m: Marks) -> Vec<Path> {
        let mut out = Vec::with_capacity(2);
        if let Some(h) = m.idle_hour {
            out.push(self.idle_marker(h, id));
        }
        if let Some(h) = m.ended_hour {
            out.push(self.ended_marker(h, id));
        }
        if m.attention {
            out.push(self.attention_marker(id));
        }
        out
    }

    /// The markers `rec` needs that it had not (as far as this node knows): written before
    /// the record is. Returns the markers to delete once the record is stored.
    pub(super) async fn mark_before_save(
        &self,
        rec: &SessionRecord,
    ) -> Result<Vec<Path>, StoreError> {
        let new = Marks::of(rec);
        let old = self.known().get(&rec.id);
        if old == Some(new) {
            return Ok(Vec::new());
        }
        let had = old
            .map(|o| self.marker_paths(rec.id, o))
            .unwrap_or_default();
        let wanted = self.marker_paths(rec.id, new);
        for path in wanted.iter().filter(|p| !had.contains(p)) {
            self.store
                .put(path, PutPayload::new())
                .await
                .map_err(os_err)?;
        }
        Ok(had.into_iter().filter(|p| !wanted.contains(p)).collect())
    }

    /// After the record is stored: remembers its markers and deletes the ones it left.
    /// Best effort: a marker left behind is stale, found and deleted later.
    pub(super) async fn mark_after_save(&self, rec: &SessionRecord, stale: Vec<Path>) {
        self.known().note(rec.id, Marks::of(rec));
        for path in stale {
            if let Err(e) = self.store.delete(&path).await {
                tracing::debug!(marker = %path, error = %e, "could not delete a stale marker");
            }
        }
    }

    /// The record was read: its markers are where it says (they were written before it).
    pub(super) fn learn_marks(&self, rec: &SessionRecord) {
        self.known().note(rec.id, Marks::of(rec));
    }

    /// The record is gone: its markers go too (those known; others are found stale later).
    pub(super) async fn unmark(&self, id: SessionId) {
        let Some(m) = self.known().forget(&id) else {
            return;
        };
        for path in self.marker_paths(id, m) {
            if let Err(e) = self.store.delete(&path).await {
                tracing::debug!(marker = %path, error = %e, "could not delete a marker");
            }
        }
    }

    /// The sessions named by markers of `kind` (`idle` or `ended`) in hours that start before
    /// `before_ms`, oldest hour first. Markers this node knows to be stale are deleted and
    /// skipped.
    pub(super) async fn marked_before(
        &self,
        kind: &str,
        before_ms: u64,
    ) -> Result<Vec<SessionId>, StoreError> {
        let base = Self::below(&self.index(), kind);
        let hours = self
            .store
            .list_with_delimiter(Some(&base))
            .await
            .map_err(os_err)?;
        let mut hours: Vec<u64> = hours
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| n.parse().ok()))
            .filter(|h: &u64| h.saturating_mul(HOUR_MS) < before_ms)
            .collect();
        hours.sort_unstable();
        let mut out = Vec::new();
        for hour in hours {
            let dir = Self::below(&base, &hour_name(hour));
            let listed: Vec<_> = self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(os_err)?;
            for meta in listed {
                let Some(id) = meta
                    .location
                    .filename()
                    .and_then(|n| SessionId::parse(n).ok())
                else {
                    continue;
                };
                let current = self.known().get(&id);
                let here = match kind {
                    "idle" => current.map(|m| m.idle_hour),
                    _ => current.map(|m| m.ended_hour),
                };
                if here.is_some_and(|h| h != Some(hour)) {
                    let _ = self.store.delete(&meta.location).await;
                    continue;
                }
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The sessions with an attention marker whose record still needs attention; the other
    /// markers are stale and deleted here (there are few of either).
    pub(super) async fn marked_for_attention(&self) -> Result<Vec<SessionId>, StoreError> {
        let base = Self::below(&self.index(), "attention");
        let listed: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(os_err)?;
        let mut out = Vec::new();
        for meta in listed {
            let Some(id) = meta
                .location
                .filename()
                .and_then(|n| SessionId::parse(n).ok())
            else {
                continue;
            };
            match self.load(id).await? {
                Some(rec) if Marks::of(&rec).attention => out.push(id),
                _ => {
                    let _ = self.store.delete(&meta.location).await;
                }
            }
        }
        Ok(out)
    }

    /// Makes sure every record has its markers: once per bucket (a spool written by a release
    /// without them), by reading every record and writing its markers, then `index/complete`.
    /// Several nodes doing it at once write the same markers.
    pub(super) async fn ensure_index(&self) -> Result<(), StoreError> {
        let complete = Self::below(&self.index(), "complete");
        match self.store.head(&complete).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(os_err(e)),
        }
        let ids = self.list().await?;
        tracing::info!(
            sessions = ids.len(),
            "writing the session index markers (once per bucket)"
        );
        let mut written = futures_util::stream::iter(ids)
            .map(|id| async move {
                if let Some(rec) = self.load(id).await? {
                    for path in self.marker_paths(id, Marks::of(&rec)) {
                        self.store
                            .put(&path, PutPayload::new())
                            .await
                            .map_err(os_err)?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .buffer_unordered(16);
        while let Some(r) = written.next().await {
            r?;
        }
        self.store
            .put(&complete, PutPayload::new())
            .await
            .map_err(os_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_sort_as_names() {
        let mut names: Vec<String> = [5u64, 493_000, 17, 493_001]
            .iter()
            .map(|h| hour_name(*h))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "000000000005",
                "000000000017",
                "000000493000",
                "000000493001"
            ]
        );
    }
}
