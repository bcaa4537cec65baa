//! Session lifecycle outside of requests: idle expiry, tombstone removal, and start-up recovery.

use bits_proto::SessionId;

use super::{now_ms, Engine};
use crate::error::BitsError;
use crate::store::{SessionRecord, SessionState, StoreError};

/// What one cleanup pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub tombstones_removed: usize,
    pub busy: usize,
    /// Sessions the pass could not expire or remove (logged; tried again next pass).
    pub failed: usize,
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub sessions: usize,
    /// Sessions whose recorded length exceeded the data on disk and was lowered to it.
    pub reconciled: usize,
    /// Complete uploads whose publication was interrupted and has now been finished.
    pub published: usize,
    /// Sessions of vdirs that are gone or no longer upload-enabled, deleted.
    pub removed: usize,
    pub unreadable: usize,
    /// Tombstones beyond `max_tombstones`, forgotten oldest first.
    pub tombstones_forgotten: usize,
}

impl Engine {
    pub(super) fn is_expired(&self, rec: &SessionRecord, now: u64) -> bool {
        let timeout = self
            .vdir_of(rec)
            .map(|v| v.session_timeout.as_millis() as u64)
            .unwrap_or(0);
        now.saturating_sub(rec.last_activity) > timeout
    }

    /// Deletes an idle session's data; a published upload stays and its id answers a late
    /// Close-Session with 200, an unfinished one becomes SESSION_NOT_FOUND.
    pub(super) async fn expire(&self, rec: &mut SessionRecord) -> Result<(), BitsError> {
        let to = match rec.state {
            SessionState::Committed => SessionState::Closed,
            _ => SessionState::Expired,
        };
        self.finish(rec, to).await?;
        tracing::info!(session = %rec.id, destination = %rec.destination.path, "session expired");
        // An idle published upload ends normally; only an unfinished one has expired.
        let event = match to {
            SessionState::Closed => super::SessionEvent::Closed,
            _ => super::SessionEvent::Expired,
        };
        self.observe(event, rec);
        Ok(())
    }

    /// One cleanup pass: expires idle sessions, forgets old tombstones. Sessions busy with a
    /// request are skipped (they are not idle).
    pub async fn sweep(&self) -> Result<SweepReport, BitsError> {
        let mut report = SweepReport::default();
        let now = now_ms();
        let ttl = self.config.tombstone_ttl.as_millis() as u64;
        for id in self.sessions.list().await? {
            let Some(_guard) = self.locks.try_lock(id) else {
                report.busy += 1;
                continue;
            };
            let mut rec = match self.sessions.load(id).await {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cleanup skipped an unreadable session");
                    continue;
                }
            };
            // One session that cannot be expired or removed must not stop the others.
            if rec.state.is_open() {
                if self.is_expired(&rec, now) {
                    match self.expire(&mut rec).await {
                        Ok(()) => report.expired += 1,
                        Err(e) => {
                            report.failed += 1;
                            tracing::warn!(session = %id, error = %e, "cleanup could not expire a session");
                        }
                    }
                }
            } else if now.saturating_sub(rec.ended_at.unwrap_or(0)) > ttl {
                match self.sessions.remove(id).await {
                    Ok(()) => {
                        self.registry().drop_tombstone(id);
                        report.tombstones_removed += 1;
                    }
                    Err(e) => {
                        report.failed += 1;
                        tracing::warn!(session = %id, error = %e, "cleanup could not remove a tombstone");
                    }
                }
            }
        }
        Ok(report)
    }

    /// Start-up: reconcile every session with the data actually held, finish interrupted
    /// publications, drop sessions of disabled vdirs, and rebuild the destination index.
    pub async fn recover(&self) -> Result<RecoveryReport, BitsError> {
        let mut report = RecoveryReport::default();
        let mut ended = Vec::new();
        for id in self.sessions.list().await? {
            report.sessions += 1;
            match self.recover_one(id, &mut report).await {
                Ok(Some(at)) => ended.push((at, id)),
                Ok(None) => {}
                Err(e) => {
                    report.unreadable += 1;
                    tracing::error!(session = %id, error = %e, "recovery could not restore session");
                }
            }
        }
        // Tombstones are kept oldest first under `max_tombstones`, as while running.
        ended.sort();
        let mut evicted = Vec::new();
        {
            let mut registry = self.registry();
            for (_, id) in ended {
                evicted.extend(registry.add_tombstone(id, self.config.max_tombstones));
            }
        }
        report.tombstones_forgotten = evicted.len();
        self.forget_tombstones(evicted).await;
        Ok(report)
    }

    /// Restores one session; returns when it ended if it is a tombstone.
    async fn recover_one(
        &self,
        id: SessionId,
        report: &mut RecoveryReport,
    ) -> Result<Option<u64>, BitsError> {
        let loaded = match self.sessions.load(id).await {
            // Only a record written without sync can be torn (a tombstone, rewritten in place):
            // if no data is held either, nothing acknowledged depends on it.
            Err(StoreError::Corrupt(..)) if self.data.held(id).await? == 0 => {
                tracing::warn!(session = %id, "unreadable record without data (torn by a crash); removed");
                None
            }
            other => other?,
        };
        let Some(mut rec) = loaded else {
            // Created on disk but never recorded (a crash inside Create-Session): nobody got an Ack.
            self.data.discard(id).await?;
            self.sessions.remove(id).await?;
            report.removed += 1;
            return Ok(None);
        };
        let Some(vdir) = self.vdir_of(&rec).filter(|v| v.upload_enabled) else {
            self.data.discard(id).await?;
            self.sessions.remove(id).await?;
            report.removed += 1;
            tracing::info!(session = %id, vdir = %rec.vdir, "deleted session of a vdir without uploads");
            return Ok(None);
        };
        match rec.state {
            SessionState::Receiving => {}
            // WAIT_FOR_CLOSE: the reply must stay servable until Close/Cancel/expiry.
            SessionState::Committed => {
                self.registry().insert(&rec);
                self.redeliver_owed(&rec);
                return Ok(None);
            }
            // Ended: whatever a crash left in the spool is garbage.
            SessionState::Closed | SessionState::Cancelled | SessionState::Expired => {
                self.data.discard(id).await?;
                self.redeliver_owed(&rec);
                return Ok(Some(rec.ended_at.unwrap_or(0)));
            }
        }
        self.registry().insert(&rec);
        // Complete: the crash came between recording the last bytes and publishing them, or
        // between publishing and recording that. Publishing is idempotent, so finish it.
        // With notification, completion waits for the client's retransmit: the application must
        // be told while a client is there to receive its answer. Once it has answered asking
        // for the copy, the copy is finished here like a publication.
        if rec.total == Some(rec.received)
            && (vdir.notification_type == crate::config::NotificationType::None
                || super::reply::copy_pending(&rec))
        {
            let vdir = vdir.clone();
            match self.publish(&mut rec, &vdir).await {
                Ok(()) => {
                    report.published += 1;
                    return Ok(None);
                }
                Err(BitsError::Storage(StoreError::DataMissing)) => {}
                Err(e) => return Err(e),
            }
        }
        let held = self.data.held(id).await?;
        if held < rec.received {
            tracing::warn!(session = %id, recorded = rec.received, held, "recorded length exceeds data held; lowered");
            rec.received = held;
            self.sessions.save(&rec).await?;
            self.registry().set_spooled(id, held);
            report.reconciled += 1;
        }
        Ok(None)
    }
}
