//! Session lifecycle outside of requests: idle expiry, tombstone removal, start-up recovery,
//! and (on a store shared by a farm) reconciling this node's registry with the store.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bits_proto::SessionId;

use super::Engine;
use crate::error::BitsError;
use crate::store::{SessionRecord, SessionState, StoreError};

/// The least time between two refreshes forced by refusals that the previous one did not
/// lift: a refresh reads every open record, so a flood of Create-Sessions against a node that
/// is truly at its limit costs at most one refresh a second.
pub(super) const FORCED_REFRESH_GAP: Duration = Duration::from_secs(1);

/// Records a reconciliation with the store reads at once: on object storage each is a round
/// trip, and one at a time made a 10 000-session farm take 8 s per refresh.
const RECONCILE_READS: usize = 32;

/// What one registry refresh did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefreshReport {
    /// Open sessions this node counted that the store holds as ended, or not at all.
    pub dropped: usize,
    /// Open sessions in the store this node did not count (created on another node).
    pub added: usize,
    /// Sessions skipped because a request on this node held them (it keeps them current).
    pub busy: usize,
}

/// Releases the refresh slot however the refresh ends (an error, or a Create-Session whose
/// client went away dropping the future); the flag says whether it counts as fruitless.
struct Refreshing<'a>(&'a Engine, bool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.registry().end_refresh(self.1, Instant::now());
    }
}

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
    /// Whether an open session has been idle longer than its vdir's `session_timeout`, by the
    /// wall clock and, where this process saw it used, by the monotonic clock too
    /// (`liveness`).
    pub(super) fn is_expired(&self, rec: &SessionRecord, now: u64) -> bool {
        let timeout = self
            .vdir_of(rec)
            .map(|v| v.session_timeout)
            .unwrap_or_default();
        self.liveness
            .idle(rec.id, rec.last_activity, timeout, now, self.clock.mono())
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

    /// The sessions a sweep at `now` must look at: with the store's time indexes, open ones
    /// idle longer than the shortest `session_timeout` and tombstones older than `ttl`;
    /// without them, every record.
    async fn sweep_candidates(&self, now: u64, ttl: u64) -> Result<Vec<SessionId>, BitsError> {
        let shortest = self
            .config
            .vdirs
            .iter()
            .map(|v| v.session_timeout.as_millis() as u64)
            .min()
            .unwrap_or(0);
        let idle = self
            .sessions
            .idle_before(now.saturating_sub(shortest))
            .await?;
        let old = self.sessions.ended_before(now.saturating_sub(ttl)).await?;
        Ok(match (idle, old) {
            (Some(mut idle), Some(old)) => {
                idle.extend(old);
                idle
            }
            _ => self.sessions.list().await?,
        })
    }

    /// One cleanup pass: expires idle sessions, forgets old tombstones. Sessions busy with a
    /// request are skipped (they are not idle).
    pub async fn sweep(&self) -> Result<SweepReport, BitsError> {
        let mut report = SweepReport::default();
        self.registry_complete().await;
        let now = self.now_ms();
        let ttl = self.config.tombstone_ttl.as_millis() as u64;
        for id in self.sweep_candidates(now, ttl).await? {
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
            } else {
                // Ended (perhaps through another node): nothing to watch any more.
                self.liveness.forget(id);
            }
            if !rec.state.is_open() && now.saturating_sub(rec.ended_at.unwrap_or(0)) > ttl {
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
        // A farm's registry is reconciled by its own task (`registry_refresh_interval`), not
        // here: a sweep reads only what its indexes name.
        Ok(report)
    }

    /// Whether other nodes may change the store behind this node's back (a farm on object
    /// storage): then the registry is only a cache of the store and is reconciled with it.
    pub(super) fn shared_store(&self) -> bool {
        self.config.storage.is_shared()
    }

    /// How often the registry is reconciled with the store; `None` where it is not shared (one
    /// node's registry is the truth) or the refresh is turned off.
    pub fn registry_refresh_interval(&self) -> Option<Duration> {
        let every = self.config.registry_refresh_interval;
        (self.shared_store() && !every.is_zero()).then_some(every)
    }

    /// Reconciles the registry with the store: open sessions it counts whose records ended or
    /// are gone are dropped, open records it has not seen are added, and every open session's
    /// spool usage is taken from its record. `None` when another refresh is running, or when
    /// one forced by a refusal lifted nothing less than `gap` ago (`gap` zero: the periodic
    /// pass, which always runs). Records a request on this node holds
    /// are skipped (that request keeps them current).
    pub async fn refresh_registry(
        &self,
        gap: Duration,
    ) -> Result<Option<RefreshReport>, BitsError> {
        if !self.registry().begin_refresh(gap, Instant::now()) {
            return Ok(None);
        }
        let forced = !gap.is_zero();
        let mut running = Refreshing(self, forced);
        let mut report = RefreshReport::default();
        let listed = self.sessions.list().await?;
        let mut ended = HashSet::new();
        let mut to_read = Vec::new();
        for &id in &listed {
            let (ours, theirs) = {
                let r = self.registry();
                (r.is_tombstone(id), r.ended_elsewhere(id))
            };
            // An ended record never reopens: read it once.
            if theirs {
                ended.insert(id);
            }
            if !(ours || theirs) {
                to_read.push(id);
            }
        }
        let listed: HashSet<SessionId> = listed.into_iter().collect();
        to_read.extend(
            self.registry()
                .open_ids()
                .into_iter()
                .filter(|id| !listed.contains(id)),
        );
        self.reconcile(to_read, &mut report, &mut ended).await;
        self.registry().set_ended_elsewhere(ended);
        running.1 = forced && report.dropped == 0;
        if report.dropped + report.added > 0 {
            tracing::info!(
                dropped = report.dropped,
                added = report.added,
                "open sessions reconciled with the store"
            );
        }
        self.metrics.set_open(self.registry().open_count());
        Ok(Some(report))
    }

    /// Reads the records of `ids` ([`RECONCILE_READS`] at a time: each is a round trip to an
    /// object store) and brings the registry in line with each, under the session's lock.
    async fn reconcile(
        &self,
        ids: Vec<SessionId>,
        report: &mut RefreshReport,
        ended: &mut HashSet<SessionId>,
    ) {
        use futures_util::StreamExt as _;
        let mut reads = futures_util::stream::iter(ids)
            .map(|id| async move {
                // Held by a request here (also a Create-Session between registering and
                // storing it): that request keeps the registry right.
                let guard = self.locks.try_lock(id);
                let loaded = match guard {
                    Some(_) => Some(self.sessions.load(id).await),
                    None => None,
                };
                (id, guard, loaded)
            })
            .buffer_unordered(RECONCILE_READS);
        while let Some((id, guard, loaded)) = reads.next().await {
            let (Some(_guard), Some(loaded)) = (guard, loaded) else {
                report.busy += 1;
                continue;
            };
            match loaded {
                Ok(loaded) => self.reconcile_one(id, loaded, report, ended),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "refresh skipped an unreadable session")
                }
            }
        }
    }

    fn reconcile_one(
        &self,
        id: SessionId,
        loaded: Option<SessionRecord>,
        report: &mut RefreshReport,
        ended: &mut HashSet<SessionId>,
    ) {
        let mut registry = self.registry();
        match loaded {
            Some(rec) if rec.state.is_open() => {
                if !registry.is_open(id) {
                    report.added += 1;
                }
                registry.track(&rec);
            }
            other => {
                if registry.is_open(id) {
                    registry.remove(id);
                    report.dropped += 1;
                }
                if other.is_some() && !registry.is_tombstone(id) {
                    ended.insert(id);
                }
            }
        }
    }

    /// Before refusing a Create-Session because `id` holds its destination: checks the holder
    /// against the store (another node may have ended it) and expires it if idle too long, as
    /// a request touching it would. The registry then tells whether it still holds.
    pub(super) async fn verify_holder(&self, id: SessionId) {
        // A request here holds it: it is open.
        let Some(_guard) = self.locks.try_lock(id) else {
            return;
        };
        match self.sessions.load(id).await {
            Ok(Some(mut rec)) if rec.state.is_open() => {
                if self.is_expired(&rec, self.now_ms()) {
                    if let Err(e) = self.expire(&mut rec).await {
                        tracing::warn!(session = %id, error = %e, "could not expire an idle holder");
                    }
                }
            }
            Ok(_) => {
                tracing::info!(session = %id, "a destination's holder was ended on another node; released");
                self.registry().remove(id);
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "could not check a destination's holder")
            }
        }
    }

    /// After a fragment's data write, with the record as it was loaded for the request: a
    /// Cancel or Close on another node meanwhile deleted the session's parts before this
    /// write's part existed, so it is deleted now (else it would stay, uncounted, until the
    /// tombstone goes) and the fragment is answered as for an ended session. A record changed
    /// in any other way lost a race to another node, as the conditional save would report.
    /// On a store only this node writes, nothing else can have changed it (the session lock
    /// serialises this node's requests): no read.
    pub(super) async fn check_unchanged(&self, loaded: &SessionRecord) -> Result<(), BitsError> {
        if !self.shared_store() {
            return Ok(());
        }
        match self.sessions.load(loaded.id).await? {
            Some(now) if now == *loaded => Ok(()),
            Some(now) if now.state.is_open() => Err(BitsError::Storage(StoreError::Conflict(
                format!("session {} changed during the fragment", loaded.id),
            ))),
            _ => Err(self.drop_ended(loaded.id).await),
        }
    }

    /// Saves a fragment's claim; when the conditional save lost to another node that ended
    /// the session, deletes what this request wrote (see [`Engine::check_unchanged`]).
    pub(super) async fn save_claim(&self, rec: &SessionRecord) -> Result<(), BitsError> {
        match self.sessions.save(rec).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(why)) => match self.sessions.load(rec.id).await {
                Ok(Some(now)) if now.state.is_open() => {
                    Err(BitsError::Storage(StoreError::Conflict(why)))
                }
                Ok(_) => Err(self.drop_ended(rec.id).await),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn drop_ended(&self, id: SessionId) -> BitsError {
        tracing::info!(session = %id, "session ended on another node during a fragment; its data is deleted again");
        if let Err(e) = self.data.discard(id, crate::store::Held::ALL).await {
            tracing::warn!(session = %id, error = %e, "could not delete the data of a session ended elsewhere");
            return e.into();
        }
        self.registry().remove(id);
        BitsError::SessionNotFound(id)
    }

    /// Start-up recovery. With a store that indexes what needs a look (the file system
    /// backend's session database), only those sessions are recovered here: interrupted
    /// completions and owed hook events; everything else is read by [`Engine::build_registry`],
    /// which the server runs in the background while it already serves. Without such an index
    /// (object storage), every record is read here and the registry is complete on return.
    pub async fn recover(&self) -> Result<RecoveryReport, BitsError> {
        let Some(ids) = self.sessions.attention().await? else {
            return self.recover_every_record().await;
        };
        self.registry().begin_build();
        self.registry_ready.send_replace(false);
        let mut report = RecoveryReport::default();
        for id in ids {
            report.sessions += 1;
            // A tombstone found here is ordered with the others by the registry build.
            if let Err(e) = self.recover_one(id, &mut report).await {
                report.unreadable += 1;
                tracing::error!(session = %id, error = %e, "recovery could not restore session");
            }
        }
        Ok(report)
    }

    /// Reads every record (in pages) into the registry after [`Engine::recover`] took only the
    /// sessions that needed attention: open sessions counted, tombstones ordered, sessions of
    /// vdirs without uploads deleted, files of ended sessions removed. Requests are served
    /// meanwhile; those that need the registry (Create-Session, quotas, the sweep) wait for the
    /// end of the build. Does nothing when the registry is complete already.
    pub async fn build_registry(&self) -> Result<RecoveryReport, BitsError> {
        let mut report = RecoveryReport::default();
        if *self.registry_ready.borrow() {
            return Ok(report);
        }
        let result = self.read_every_page(&mut report).await;
        self.registry().end_build();
        self.registry_ready.send_replace(true);
        self.metrics.set_open(self.open_sessions());
        result.map(|()| report)
    }

    async fn read_every_page(&self, report: &mut RecoveryReport) -> Result<(), BitsError> {
        const PAGE: usize = 1024;
        let mut after = None;
        if self.sessions.page(None, 1).await?.is_none() {
            // A store that cannot page its records (object storage): the registry is what a
            // reconciliation with the store reads, as every refresh does.
            self.refresh_registry(Duration::ZERO).await?;
        }
        loop {
            let Some(page) = self.sessions.page(after, PAGE).await? else {
                break;
            };
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id);
            for mut rec in page {
                report.sessions += 1;
                if self.vdir_of(&rec).is_none_or(|v| !v.upload_enabled) {
                    let Some(_guard) = self.locks.try_lock(rec.id) else {
                        continue;
                    };
                    self.data.discard(rec.id, crate::store::Held::ALL).await?;
                    self.sessions.remove(rec.id).await?;
                    self.registry().remove(rec.id);
                    report.removed += 1;
                    tracing::info!(session = %rec.id, vdir = %rec.vdir, "deleted session of a vdir without uploads");
                    continue;
                }
                if !rec.state.is_open() {
                    continue;
                }
                // Only the unsafe mode can leave a record claiming bytes the data no longer
                // holds (data and records are flushed in that order otherwise). Checked under
                // the session's lock, on the current record (a request may have moved on
                // since the page was read).
                if !self.config.fsync && rec.state == SessionState::Receiving && rec.received > 0 {
                    if let Some(_guard) = self.locks.try_lock(rec.id) {
                        if let Some(mut current) = self.sessions.load(rec.id).await? {
                            let held = self.data.held(current.id).await?;
                            if current.state == SessionState::Receiving && held < current.received {
                                tracing::warn!(session = %current.id, recorded = current.received, held, "recorded length exceeds data held; lowered");
                                current.received = held;
                                self.sessions.save(&current).await?;
                                report.reconciled += 1;
                            }
                            rec = current;
                        }
                    }
                }
                self.registry().add_scanned(&rec);
            }
            // Requests come first: the build is background work.
            tokio::task::yield_now().await;
        }
        // Tombstones, oldest first, from the store's index of them (no record read).
        let ended = self
            .sessions
            .ended_before(u64::MAX)
            .await?
            .unwrap_or_default();
        let mut evicted = Vec::new();
        {
            let mut registry = self.registry();
            for id in ended {
                evicted.extend(registry.add_tombstone(id, self.config.max_tombstones));
            }
        }
        report.tombstones_forgotten = evicted.len();
        self.forget_tombstones(evicted).await;
        // Files of sessions that ended (removed without a flush) and came back after a crash.
        if let Some(stored) = self.data.stored_ids().await? {
            for id in stored {
                if self.registry().is_open(id) {
                    continue;
                }
                let Some(_guard) = self.locks.try_lock(id) else {
                    continue;
                };
                if self
                    .sessions
                    .load(id)
                    .await?
                    .is_some_and(|r| r.state.is_open())
                {
                    continue;
                }
                self.data.discard(id, crate::store::Held::ALL).await?;
            }
        }
        Ok(())
    }

    /// Waits until the registry counts every open session (see [`Engine::build_registry`]).
    pub(super) async fn registry_complete(&self) {
        let mut ready = self.registry_ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Recovery by reading every record, for stores without an index of what needs a look.
    async fn recover_every_record(&self) -> Result<RecoveryReport, BitsError> {
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
            self.data.discard(id, crate::store::Held::ALL).await?;
            self.sessions.remove(id).await?;
            report.removed += 1;
            return Ok(None);
        };
        let Some(vdir) = self.vdir_of(&rec).filter(|v| v.upload_enabled) else {
            self.data.discard(id, crate::store::Held::ALL).await?;
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
                self.data.discard(id, crate::store::Held::ALL).await?;
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
