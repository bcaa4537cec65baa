//! The session engine: the state machine of spec §6 and the fragment rules of §7, over the
//! storage traits. It never sees HTTP: it takes a [`Packet`] plus a body stream and answers with
//! an [`Ack`] or a [`BitsError`].

mod events;
mod lifecycle;
mod locks;
mod registry;
mod reply;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bits_proto::{Ack, ContentRange, Packet, ProtocolId, SessionId};
use futures_util::StreamExt;

use crate::config::{ServerConfig, VdirConfig};
use crate::error::BitsError;
use crate::store::{
    BodyStream, DataStore, Destination, DestinationState, SessionRecord, SessionState,
    SessionStore, StoreError,
};
use crate::target::UploadTarget;

pub use events::SessionEvent;
pub use lifecycle::{RecoveryReport, SweepReport};
use locks::{SessionGuard, SessionLocks};
use registry::Registry;
pub use reply::{parse_reply_path, Reply};

/// One request as the engine sees it.
pub struct EngineRequest<'a> {
    pub packet: Packet,
    pub target: UploadTarget,
    /// Request target (path and query) as received.
    pub url: String,
    /// Authenticated principal, `None` for anonymous.
    pub identity: Option<String>,
    /// Scheme and authority the client used (for reply URLs), e.g. `http://host:8080`.
    pub public_base: String,
    /// Scheme and authority of this server as seen locally (for relative notification URLs).
    pub local_base: String,
    pub body: BodyStream<'a>,
}

pub struct Engine {
    config: Arc<ServerConfig>,
    sessions: Arc<dyn SessionStore>,
    data: Arc<dyn DataStore>,
    locks: SessionLocks,
    registry: Mutex<Registry>,
    notifier: crate::notify::Notifier,
}

/// Where this request reached the server: for building reply and notification URLs.
pub(crate) struct Bases<'a> {
    pub public: &'a str,
    pub local: &'a str,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    pub const SUPPORTED_PROTOCOLS: [ProtocolId; 1] = [bits_proto::UPLOAD_PROTOCOL_1_5];

    pub fn new(
        config: Arc<ServerConfig>,
        sessions: Arc<dyn SessionStore>,
        data: Arc<dyn DataStore>,
    ) -> Engine {
        Engine {
            config,
            sessions,
            data,
            locks: SessionLocks::default(),
            registry: Mutex::new(Registry::default()),
            notifier: crate::notify::Notifier::default(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Number of open (not yet closed, cancelled or expired) sessions.
    pub fn open_sessions(&self) -> u64 {
        self.registry().open_count()
    }

    pub async fn handle(&self, req: EngineRequest<'_>) -> Result<Ack, BitsError> {
        let EngineRequest {
            packet,
            target,
            url,
            identity,
            public_base,
            local_base,
            body,
        } = req;
        let vdir = self
            .config
            .vdirs
            .get(target.vdir)
            .ok_or(BitsError::UploadsDisabled)?;
        if !vdir.upload_enabled {
            return Err(BitsError::UploadsDisabled);
        }
        let who = identity.as_deref();
        match packet {
            Packet::Ping => Ok(Ack::ok()),
            Packet::CreateSession { protocol } => {
                self.create(vdir, &target, url, identity, protocol).await
            }
            Packet::Fragment { session, range } => {
                let bases = Bases {
                    public: &public_base,
                    local: &local_base,
                };
                self.fragment(session, range, who, &bases, body).await
            }
            Packet::CloseSession { session } => self.end(session, who, SessionState::Closed).await,
            Packet::CancelSession { session } => {
                self.end(session, who, SessionState::Cancelled).await
            }
        }
    }

    fn vdir_of(&self, rec: &SessionRecord) -> Option<&VdirConfig> {
        self.config.vdirs.iter().find(|v| v.prefix == rec.vdir)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn create(
        &self,
        vdir: &VdirConfig,
        target: &UploadTarget,
        url: String,
        owner: Option<String>,
        protocol: ProtocolId,
    ) -> Result<Ack, BitsError> {
        let root = vdir.root_for(owner.as_deref()).ok_or(BitsError::NotOwner)?;
        if root != vdir.root {
            // A per-user root ({user} in the vdir root) is made on first use.
            self.data.prepare_root(&root.to_string_lossy()).await?;
        }
        let destination = Destination {
            root: root.to_string_lossy().into_owned(),
            path: target.rel_path.clone(),
        };
        if target.rel_path.split('/').next() == Some("BITS-Sessions")
            || crate::store::fs::is_internal_name(&target.rel_path)
        {
            return Err(BitsError::BadPath(crate::target::TargetError::Unsafe(
                "reserved name",
            )));
        }
        let conflict = || BitsError::DestinationExists {
            status: vdir.conflict_status.status(),
        };
        match self.data.inspect(&destination).await? {
            DestinationState::Directory => return Err(BitsError::DestinationIsDirectory),
            DestinationState::ParentMissing => return Err(BitsError::ParentMissing),
            DestinationState::File if !vdir.allow_overwrites => return Err(conflict()),
            DestinationState::File | DestinationState::Absent => {}
        }
        let now = now_ms();
        let rec = SessionRecord {
            id: SessionId::random(),
            vdir: vdir.prefix.clone(),
            url,
            destination,
            owner,
            total: None,
            received: 0,
            state: SessionState::Receiving,
            created_at: now,
            last_activity: now,
            ended_at: None,
            reply_url: None,
            app_forbidden: false,
        };
        {
            let mut registry = self.registry();
            if !vdir.allow_overwrites && registry.holder_of(&rec.destination).is_some() {
                return Err(conflict());
            }
            if registry.open_count() >= self.config.max_open_sessions {
                return Err(BitsError::SessionLimit);
            }
            if let Some(limit) = self
                .config
                .max_sessions_per_identity
                .filter(|_| rec.owner.is_some())
            {
                if registry.owned_by(&rec.owner) >= limit {
                    return Err(BitsError::SessionLimit);
                }
            }
            registry.insert(&rec);
        }
        let stored = async {
            self.sessions.create(&rec).await?;
            self.data.allocate(rec.id).await
        }
        .await;
        if let Err(e) = stored {
            self.registry().remove(rec.id);
            let _ = self.sessions.remove(rec.id).await;
            return Err(e.into());
        }
        tracing::debug!(session = %rec.id, destination = %rec.destination.path, "session created");
        self.observe(SessionEvent::Created, &rec);
        Ok(Ack::session_created(
            rec.id,
            protocol,
            vdir.host_id
                .clone()
                .map(|h| (h, vdir.host_id_fallback_timeout)),
        ))
    }

    async fn lock(&self, id: SessionId) -> Result<SessionGuard, BitsError> {
        self.locks
            .lock(id, self.config.session_lock_timeout)
            .await
            .ok_or(BitsError::SessionBusy)
    }

    /// Loads a session for a request, expiring it first if its timeout has passed.
    async fn load_checked(
        &self,
        id: SessionId,
        identity: Option<&str>,
    ) -> Result<SessionRecord, BitsError> {
        let mut rec = self
            .sessions
            .load(id)
            .await?
            .ok_or(BitsError::SessionNotFound(id))?;
        if rec.owner.as_deref() != identity {
            return Err(BitsError::NotOwner);
        }
        if rec.state.is_open() && self.is_expired(&rec, now_ms()) {
            self.expire(&mut rec).await?;
        }
        Ok(rec)
    }

    async fn fragment(
        &self,
        id: SessionId,
        range: ContentRange,
        identity: Option<&str>,
        bases: &Bases<'_>,
        mut body: BodyStream<'_>,
    ) -> Result<Ack, BitsError> {
        let mut guard = self.lock(id).await?;
        let mut rec = self.load_checked(id, identity).await?;
        let vdir = self.vdir_of(&rec).ok_or(BitsError::SessionNotFound(id))?;
        if range.len > vdir.max_fragment_size {
            return Err(BitsError::FragmentTooLarge {
                len: range.len,
                limit: vdir.max_fragment_size,
            });
        }
        match rec.state {
            SessionState::Receiving => {}
            // WAIT_FOR_CLOSE: a retransmit is answered from the record, data untouched.
            SessionState::Committed => {
                drain(body.as_mut()).await;
                rec.last_activity = now_ms();
                self.sessions.save(&rec).await?;
                return Ok(Ack::ok()
                    .with_session(id)
                    .with_received(rec.received)
                    .with_reply_url(rec.reply_url.clone()));
            }
            SessionState::Closed | SessionState::Cancelled | SessionState::Expired => {
                return Err(BitsError::SessionNotFound(id))
            }
        }
        if let Some(expected) = rec.total.filter(|&t| t != range.total) {
            return Err(BitsError::TotalChanged {
                expected,
                got: range.total,
            });
        }
        if let Some(limit) = vdir.max_upload_size.filter(|&l| range.total > l) {
            return Err(BitsError::UploadTooLarge {
                total: range.total,
                limit,
            });
        }
        if range.first > rec.received {
            return Err(BitsError::RangeGap {
                received: rec.received,
            });
        }
        rec.total = Some(range.total);
        rec.last_activity = now_ms();
        if range.end() <= rec.received {
            drain(body.as_mut()).await;
        } else {
            let len = range.end() - rec.received;
            {
                let registry = self.registry();
                let over = |used: u64, quota: Option<u64>| {
                    quota.is_some_and(|q| used.saturating_add(len) > q)
                };
                if over(registry.spooled(), self.config.spool_quota)
                    || (rec.owner.is_some()
                        && self.config.max_spool_bytes_per_identity.is_some()
                        && over(
                            registry.spooled_by(&rec.owner),
                            self.config.max_spool_bytes_per_identity,
                        ))
                {
                    return Err(BitsError::DiskFull);
                }
            }
            // Bytes before `received` are acknowledged already: read past them, never rewrite them.
            let mut skip = rec.received - range.first;
            let fresh = body
                .as_mut()
                .filter_map(move |item| {
                    let item = match item {
                        Ok(mut chunk) => {
                            let n = skip.min(chunk.len() as u64) as usize;
                            skip -= n as u64;
                            let _ = chunk.split_to(n);
                            (!chunk.is_empty()).then_some(Ok(chunk))
                        }
                        Err(e) => Some(Err(e)),
                    };
                    std::future::ready(item)
                })
                .take_until(guard.preempted());
            let outcome = self
                .data
                .write(id, rec.received, len, std::pin::pin!(fresh))
                .await;
            rec.received += outcome.durable;
            self.registry().set_spooled(id, rec.received);
            if outcome.error.is_some() && guard.was_preempted() {
                self.sessions.save(&rec).await?;
                return Err(BitsError::Preempted);
            }
            if let Some(e) = outcome.error {
                self.sessions.save(&rec).await?;
                return Err(e.into());
            }
        }
        // Data is durable; now the length that claims it (data before metadata). A completing
        // fragment without notification is recorded once, after publishing: the spool copy
        // stays until then, so a crash in between is finished by the retransmit.
        let completes = rec.total == Some(rec.received);
        if !completes || vdir.notification_type != crate::config::NotificationType::None {
            self.sessions.save(&rec).await?;
        }
        if completes {
            self.complete(&mut rec, vdir, bases).await?;
        }
        Ok(Ack::ok()
            .with_session(id)
            .with_received(rec.received)
            .with_reply_url(rec.reply_url.clone()))
    }

    /// All bytes held: make the upload visible at its destination (spec §8.1, commit at the
    /// completing fragment), then record it. The received length was saved before, so a crash
    /// in between is finished by the retransmitted fragment or by recovery.
    async fn publish(&self, rec: &mut SessionRecord, vdir: &VdirConfig) -> Result<(), BitsError> {
        let total = rec.received;
        match self
            .data
            .commit(rec.id, total, &rec.destination, vdir.allow_overwrites)
            .await
        {
            Ok(()) => {}
            Err(StoreError::DestinationExists) => {
                return Err(BitsError::DestinationExists {
                    status: vdir.conflict_status.status(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        rec.state = SessionState::Committed;
        self.sessions.save(rec).await?;
        self.registry().set_spooled(rec.id, 0);
        if let Err(e) = self.data.release_upload(rec.id, &rec.destination).await {
            tracing::warn!(session = %rec.id, error = %e, "could not drop the spool copy of a published upload");
        }
        tracing::info!(session = %rec.id, destination = %rec.destination.path, bytes = total, "upload published");
        self.observe(SessionEvent::Completed, rec);
        Ok(())
    }

    /// Close-Session and Cancel-Session: release everything and leave a tombstone.
    async fn end(
        &self,
        id: SessionId,
        identity: Option<&str>,
        to: SessionState,
    ) -> Result<Ack, BitsError> {
        let _guard = self.lock(id).await?;
        let mut rec = self.load_checked(id, identity).await?;
        match rec.state {
            SessionState::Receiving | SessionState::Committed => {}
            // A repeated Close/Cancel whose first Ack was lost: answer as the first time.
            SessionState::Closed | SessionState::Cancelled => return Ok(Ack::ok().with_session(id)),
            SessionState::Expired => return Err(BitsError::SessionNotFound(id)),
        }
        self.finish(&mut rec, to).await?;
        let event = match to {
            SessionState::Cancelled => SessionEvent::Cancelled,
            _ => SessionEvent::Closed,
        };
        self.observe(event, &rec);
        Ok(Ack::ok().with_session(id))
    }

    /// Deletes a session's temporary data and turns its record into a tombstone in state `to`.
    async fn finish(&self, rec: &mut SessionRecord, to: SessionState) -> Result<(), BitsError> {
        self.data.discard(rec.id).await?;
        rec.state = to;
        rec.ended_at = Some(now_ms());
        self.sessions.save_ended(rec).await?;
        self.registry().remove(rec.id);
        Ok(())
    }
}

/// Reads and drops the rest of a body (its length was bounded by the per-request limit).
async fn drain(mut body: BodyStream<'_>) {
    while let Some(Ok(_)) = body.next().await {}
}
