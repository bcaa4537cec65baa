//! Operator actions for the admin listener: listing sessions, looking one up, cancelling one,
//! and running a cleanup pass on demand. They bypass the owner check of the upload protocol
//! (the admin listener has its own access control) but otherwise go through the same steps
//! as the packets: the session's lock, `finish`, the event funnel.

use bits_proto::SessionId;
use futures_util::StreamExt as _;

use super::{Engine, SessionEvent, SweepReport};
use crate::error::BitsError;
use crate::store::{SessionRecord, SessionState, StorageInfo};

/// Records a listing reads at once.
const LISTING_READS: usize = 32;

/// What an administrator's cancel did.
#[derive(Debug)]
pub enum AdminCancel {
    /// The session was open: its temporary data is deleted and it is a `cancelled` tombstone
    /// (a Fragment now gets BG_E_SESSION_NOT_FOUND, a repeated Close/Cancel 200).
    Cancelled(SessionRecord),
    /// It had ended already (closed, cancelled or expired); nothing changed.
    AlreadyEnded(SessionRecord),
    NotFound,
}

impl Engine {
    /// Every session record in storage, oldest first: only open ones (receiving or committed)
    /// unless `include_ended`, which adds the tombstones. Unreadable records are skipped.
    pub async fn list_sessions(
        &self,
        include_ended: bool,
    ) -> Result<Vec<SessionRecord>, BitsError> {
        self.list_sessions_up_to(include_ended, usize::MAX).await
    }

    /// As [`Engine::list_sessions`], but reads records only until `limit` are found (in the
    /// store's listing order, then sorted): what a console polling every second can afford
    /// with 100 000 open sessions.
    pub async fn list_sessions_up_to(
        &self,
        include_ended: bool,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, BitsError> {
        let mut out = Vec::new();
        let mut reads = self.load_in_order(self.sessions.list().await?);
        while let Some((id, loaded)) = reads.next().await {
            if out.len() >= limit {
                break;
            }
            match loaded {
                Ok(Some(rec)) if include_ended || rec.state.is_open() => out.push(rec),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "listing skipped an unreadable session")
                }
            }
        }
        out.sort_by_key(|r| (r.created_at, r.id.as_uuid().as_u128()));
        Ok(out)
    }

    /// One page of the listing in session-id order: up to `limit` records after `after`, and
    /// the cursor of the next page (the last id read) when more ids follow. Reads at most
    /// `limit` records whatever the number of sessions.
    pub async fn list_sessions_page(
        &self,
        include_ended: bool,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<(Vec<SessionRecord>, Option<SessionId>), BitsError> {
        let mut ids = self.sessions.list().await?;
        ids.sort_unstable_by_key(|id| id.as_uuid().as_u128());
        let start = after.map_or(0, |a| ids.partition_point(|id| id.as_uuid() <= a.as_uuid()));
        let mut out = Vec::new();
        let mut next = None;
        let mut last = None;
        let mut reads = self.load_in_order(ids.iter().skip(start).copied().collect());
        while let Some((id, loaded)) = reads.next().await {
            if out.len() >= limit {
                next = last;
                break;
            }
            last = Some(id);
            match loaded {
                Ok(Some(rec)) if include_ended || rec.state.is_open() => out.push(rec),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "listing skipped an unreadable session")
                }
            }
        }
        Ok((out, next))
    }

    /// The records of `ids` in that order, [`LISTING_READS`] read at once (on object storage
    /// each is a round trip).
    fn load_in_order(
        &self,
        ids: Vec<SessionId>,
    ) -> impl futures_util::Stream<
        Item = (
            SessionId,
            Result<Option<SessionRecord>, crate::store::StoreError>,
        ),
    > + '_ {
        futures_util::stream::iter(ids)
            .map(move |id| async move { (id, self.sessions.load(id).await) })
            .buffered(LISTING_READS)
    }

    /// One session's record (also a tombstone), `None` if unknown.
    pub async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, BitsError> {
        Ok(self.sessions.load(id).await?)
    }

    /// Cancels a session as its owner's Cancel-Session would: a request in flight for it is
    /// asked to stop, its temporary data (and reply) is deleted, and its id becomes a
    /// `cancelled` tombstone. A published upload stays published.
    pub async fn admin_cancel(&self, id: SessionId) -> Result<AdminCancel, BitsError> {
        let _guard = self.lock(id).await?;
        let Some(mut rec) = self.sessions.load(id).await? else {
            return Ok(AdminCancel::NotFound);
        };
        if !rec.state.is_open() {
            return Ok(AdminCancel::AlreadyEnded(rec));
        }
        self.finish(&mut rec, SessionState::Cancelled).await?;
        tracing::info!(session = %id, destination = %rec.destination.path, "session cancelled by an administrator");
        self.observe(SessionEvent::Cancelled, &rec);
        Ok(AdminCancel::Cancelled(rec))
    }

    /// Whether storage answers at all (a cheap call), for readiness checks.
    /// What operators are shown of the storage (backend, location, local directory).
    pub fn storage_info(&self) -> StorageInfo {
        self.data.info()
    }

    pub async fn probe_storage(&self) -> Result<(), BitsError> {
        self.sessions.probe().await?;
        Ok(self.data.probe().await?)
    }

    /// Whether `id` is a session this node knows (open, or ended and still remembered).
    pub fn knows_session(&self, id: SessionId) -> bool {
        let registry = self.registry();
        registry.is_open(id) || registry.is_tombstone(id)
    }

    /// Open sessions of the vdir with `prefix`.
    pub fn open_in_vdir(&self, prefix: &str) -> u64 {
        self.registry().open_in_vdir(prefix)
    }

    /// One cleanup pass now (the one `cleanup_interval` runs).
    pub async fn gc(&self) -> Result<SweepReport, BitsError> {
        self.sweep().await
    }
}
