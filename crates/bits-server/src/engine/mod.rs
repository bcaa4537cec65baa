//! The session engine: the state machine of spec §6 and the fragment rules of §7, over the
//! storage traits. It never sees HTTP: it takes a [`Packet`] plus a body stream and answers with
//! an [`Ack`] or a [`BitsError`].

mod lifecycle;
mod locks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bits_proto::{Ack, ContentRange, Packet, ProtocolId, SessionId};
use futures_util::StreamExt;

use crate::config::{ServerConfig, VdirConfig};
use crate::error::BitsError;
use crate::store::{
    BodyStream, DataStore, Destination, DestinationState, SessionRecord, SessionState, SessionStore,
};
use crate::target::UploadTarget;

pub use lifecycle::{RecoveryReport, SweepReport};
use locks::{SessionGuard, SessionLocks};

/// One request as the engine sees it.
pub struct EngineRequest<'a> {
    pub packet: Packet,
    pub target: UploadTarget,
    /// Request target (path and query) as received.
    pub url: String,
    /// Authenticated principal, `None` for anonymous.
    pub identity: Option<String>,
    pub body: BodyStream<'a>,
}

pub struct Engine {
    config: Arc<ServerConfig>,
    sessions: Arc<dyn SessionStore>,
    data: Arc<dyn DataStore>,
    locks: SessionLocks,
    /// Open sessions by destination, for the one-upload-per-destination rule.
    destinations: Mutex<HashMap<Destination, SessionId>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
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
            destinations: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub const SUPPORTED_PROTOCOLS: [ProtocolId; 1] = [bits_proto::UPLOAD_PROTOCOL_1_5];

    pub async fn handle(&self, req: EngineRequest<'_>) -> Result<Ack, BitsError> {
        let EngineRequest {
            packet,
            target,
            url,
            identity,
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
        match packet {
            Packet::Ping => Ok(Ack::ok()),
            Packet::CreateSession { protocol } => {
                self.create(vdir, &target, url, identity, protocol).await
            }
            Packet::Fragment { session, range } => {
                self.fragment(session, range, identity.as_deref(), body)
                    .await
            }
            Packet::CloseSession { session } => {
                self.end(session, identity.as_deref(), SessionState::Closed)
                    .await
            }
            Packet::CancelSession { session } => {
                self.end(session, identity.as_deref(), SessionState::Cancelled)
                    .await
            }
        }
    }

    fn destination(vdir: &VdirConfig, rel_path: &str) -> Destination {
        Destination {
            root: vdir.root.to_string_lossy().into_owned(),
            path: rel_path.to_string(),
        }
    }

    fn vdir_of(&self, rec: &SessionRecord) -> Option<&VdirConfig> {
        self.config.vdirs.iter().find(|v| v.prefix == rec.vdir)
    }

    fn destination_index(&self) -> std::sync::MutexGuard<'_, HashMap<Destination, SessionId>> {
        self.destinations.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn create(
        &self,
        vdir: &VdirConfig,
        target: &UploadTarget,
        url: String,
        owner: Option<String>,
        protocol: ProtocolId,
    ) -> Result<Ack, BitsError> {
        let destination = Self::destination(vdir, &target.rel_path);
        let conflict = BitsError::DestinationExists {
            status: vdir.conflict_status.status(),
        };
        match self.data.inspect(&destination).await? {
            DestinationState::Directory => return Err(BitsError::DestinationIsDirectory),
            DestinationState::ParentMissing => return Err(BitsError::ParentMissing),
            DestinationState::File if !vdir.allow_overwrites => return Err(conflict),
            DestinationState::File | DestinationState::Absent => {}
        }
        let id = SessionId::random();
        {
            let mut index = self.destination_index();
            if !vdir.allow_overwrites && index.contains_key(&destination) {
                return Err(conflict);
            }
            index.insert(destination.clone(), id);
        }
        let now = now_ms();
        let rec = SessionRecord {
            id,
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
        };
        let stored = async {
            self.sessions.create(&rec).await?;
            self.data.allocate(id).await
        }
        .await;
        if let Err(e) = stored {
            self.forget_destination(&rec);
            let _ = self.sessions.remove(id).await;
            return Err(e.into());
        }
        tracing::debug!(session = %id, destination = %rec.destination.path, "session created");
        Ok(Ack::session_created(id, protocol, None))
    }

    fn forget_destination(&self, rec: &SessionRecord) {
        let mut index = self.destination_index();
        if index.get(&rec.destination) == Some(&rec.id) {
            index.remove(&rec.destination);
        }
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
        mut body: BodyStream<'_>,
    ) -> Result<Ack, BitsError> {
        let _guard = self.lock(id).await?;
        let mut rec = self.load_checked(id, identity).await?;
        let vdir = self.vdir_of(&rec).ok_or(BitsError::SessionNotFound(id))?;
        if range.len > vdir.max_fragment_size {
            return Err(BitsError::FragmentTooLarge {
                len: range.len,
                limit: vdir.max_fragment_size,
            });
        }
        let ack = |rec: &SessionRecord| Ack::ok().with_session(id).with_received(rec.received);
        match rec.state {
            SessionState::Receiving => {}
            // WAIT_FOR_CLOSE: a retransmit is answered from the record, data untouched.
            SessionState::Committed => {
                drain(body.as_mut()).await;
                rec.last_activity = now_ms();
                self.sessions.save(&rec).await?;
                return Ok(ack(&rec));
            }
            SessionState::Closed | SessionState::Cancelled | SessionState::Expired => {
                return Err(BitsError::SessionNotFound(id))
            }
        }
        match rec.total {
            Some(expected) if expected != range.total => {
                return Err(BitsError::TotalChanged {
                    expected,
                    got: range.total,
                })
            }
            _ => {}
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
        let fixes_total = rec.total.is_none();
        rec.total = Some(range.total);
        rec.last_activity = now_ms();
        if range.end() <= rec.received {
            drain(body.as_mut()).await;
        } else {
            // Bytes before `received` are acknowledged already: read past them, never rewrite them.
            let mut skip = rec.received - range.first;
            let fresh = body.as_mut().filter_map(move |item| {
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
            });
            let len = range.end() - rec.received;
            let outcome = self
                .data
                .write(id, rec.received, len, std::pin::pin!(fresh))
                .await;
            rec.received += outcome.durable;
            if outcome.durable > 0 || fixes_total {
                self.sessions.save(&rec).await?;
            }
            if let Some(e) = outcome.error {
                return Err(e.into());
            }
        }
        if rec.total == Some(rec.received) {
            self.publish(&mut rec, vdir).await?;
        } else if fixes_total || range.end() <= rec.received {
            self.sessions.save(&rec).await?;
        }
        Ok(ack(&rec))
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
            Err(crate::store::StoreError::DestinationExists) => {
                return Err(BitsError::DestinationExists {
                    status: vdir.conflict_status.status(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        rec.state = SessionState::Committed;
        self.sessions.save(rec).await?;
        tracing::info!(session = %rec.id, destination = %rec.destination.path, bytes = total, "upload published");
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
        self.data.discard(id).await?;
        rec.state = to;
        rec.ended_at = Some(now_ms());
        rec.last_activity = now_ms();
        self.sessions.save(&rec).await?;
        self.forget_destination(&rec);
        Ok(Ack::ok().with_session(id))
    }
}

/// Reads and drops the rest of a body (its length was bounded by the per-request limit).
async fn drain(mut body: BodyStream<'_>) {
    while let Some(Ok(_)) = body.next().await {}
}
