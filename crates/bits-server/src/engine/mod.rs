//! The session engine: the state machine of spec §6 and the fragment rules of §7, over the
//! storage traits. It never sees HTTP: it takes a [`Packet`] plus a body stream and answers with
//! an [`Ack`] or a [`BitsError`].

mod create;
mod events;
mod fragment;
mod lifecycle;
mod liveness;
mod locks;
mod operator;
mod registry;
mod reply;

use std::sync::{Arc, Mutex, MutexGuard};

use bits_proto::{Ack, ContentRange, Packet, ProtocolId, SessionId};
use futures_util::StreamExt;

use crate::config::{ServerConfig, VdirConfig};
use crate::error::BitsError;
use crate::principal::{may_act, Principal};
use crate::store::{
    BodyStream, DataStore, Destination, DestinationState, SessionRecord, SessionState, SessionStore,
};
use crate::target::UploadTarget;

// Defined below the engine so that metrics can count events without importing the engine.
pub use crate::event::SessionEvent;
pub use lifecycle::{RecoveryReport, SweepReport};
use locks::{SessionGuard, SessionLocks};
pub use operator::AdminCancel;
use registry::Registry;
pub use reply::{parse_reply_path, Reply};

/// One request as the engine sees it.
pub struct EngineRequest<'a> {
    pub packet: Packet,
    pub target: UploadTarget,
    /// Request target (path and query) as received.
    pub url: String,
    /// Authenticated principal, `None` for anonymous.
    pub identity: Option<Principal>,
    /// The client's address (anonymous sessions are limited per address).
    pub peer: Option<std::net::IpAddr>,
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
    metrics: Arc<crate::metrics::Metrics>,
    hooks: crate::hooks::Hooks,
    /// Session timestamps: the system clock, or a test's.
    clock: Arc<dyn crate::clock::Clock>,
    /// Recent throughput, completions and errors, for the admin console.
    activity: crate::activity::Activity,
    /// When this process last saw each session used, on the monotonic clock.
    liveness: liveness::Liveness,
    /// Whether the registry counts every open session (false while it is built in the
    /// background after start-up).
    registry_ready: tokio::sync::watch::Sender<bool>,
}

/// Where this request reached the server: for building reply and notification URLs.
pub(crate) struct Bases<'a> {
    pub public: &'a str,
    pub local: &'a str,
}

impl Engine {
    pub const SUPPORTED_PROTOCOLS: [ProtocolId; 1] = [bits_proto::UPLOAD_PROTOCOL_1_5];

    pub fn new(
        config: Arc<ServerConfig>,
        sessions: Arc<dyn SessionStore>,
        data: Arc<dyn DataStore>,
    ) -> Engine {
        Engine::with_metrics(config, sessions, data, Arc::default())
    }

    /// Like [`Engine::new`], counting into `metrics` (shared with an instrumented store).
    pub fn with_metrics(
        config: Arc<ServerConfig>,
        sessions: Arc<dyn SessionStore>,
        data: Arc<dyn DataStore>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Engine {
        // A wall clock that moves apart from the monotonic one by more than a sweep interval
        // was stepped.
        let config_tolerance = config.cleanup_interval;
        Engine {
            sessions,
            data,
            locks: SessionLocks::default(),
            registry: Mutex::new(Registry::default()),
            notifier: crate::notify::Notifier::default(),
            metrics,
            hooks: crate::hooks::Hooks::default(),
            liveness: Self::liveness_for(&config_tolerance, &crate::clock::SystemClock),
            clock: Arc::new(crate::clock::SystemClock),
            activity: Default::default(),
            registry_ready: tokio::sync::watch::Sender::new(true),
            config,
        }
    }

    fn liveness_for(
        tolerance: &std::time::Duration,
        clock: &dyn crate::clock::Clock,
    ) -> liveness::Liveness {
        liveness::Liveness::new(clock.now_ms(), clock.mono(), *tolerance)
    }

    /// Takes session timestamps from `clock` (a test's [`crate::clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn crate::clock::Clock>) -> Engine {
        self.liveness = Self::liveness_for(&self.config.cleanup_interval, clock.as_ref());
        self.clock = clock;
        self
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Stamps a request's use of the session: `last_activity` never moves backward (a wall
    /// clock stepped back must not make a busy session look older to other nodes), and this
    /// process remembers the use on its monotonic clock.
    fn stamp(&self, rec: &mut SessionRecord) {
        rec.last_activity = rec.last_activity.max(self.now_ms());
        self.liveness
            .used(rec.id, rec.last_activity, self.clock.mono());
    }

    /// Recent throughput, completions and errors (the admin console's `/admin/activity`).
    pub fn activity(&self) -> &crate::activity::Activity {
        &self.activity
    }

    /// The engine's clock, in Unix milliseconds.
    pub fn clock_ms(&self) -> u64 {
        self.now_ms()
    }

    /// Delivery counters of the event hooks.
    pub fn hook_stats(&self) -> crate::hooks::HookStats {
        self.hooks.stats()
    }

    /// At shutdown: lets queued hook deliveries finish, at most `limit`; returns how many did not.
    pub async fn drain_hooks(&self, limit: std::time::Duration) -> usize {
        self.hooks.drain(limit).await
    }

    /// The server's metrics (the engine's own counters and every other layer's).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The upload data store, for serving published files.
    pub fn data(&self) -> &Arc<dyn DataStore> {
        &self.data
    }

    /// Number of open (not yet closed, cancelled or expired) sessions.
    pub fn open_sessions(&self) -> u64 {
        self.registry().open_count()
    }

    /// Ended sessions still remembered (at most `max_tombstones`).
    pub fn tombstones(&self) -> u64 {
        self.registry().tombstones()
    }

    pub async fn handle(&self, req: EngineRequest<'_>) -> Result<Ack, BitsError> {
        let EngineRequest {
            packet,
            target,
            url,
            identity,
            peer,
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
        // A session is continued only through the vdir that created it: same prefix, so the
        // same auth scheme, `require_tls` rule and root.
        let caller = Caller {
            identity: identity.as_ref(),
            vdir,
        };
        match packet {
            Packet::Ping => Ok(Ack::ok()),
            Packet::CreateSession { protocol } => {
                self.create(vdir, &target, url, identity, peer, protocol)
                    .await
            }
            Packet::Fragment { session, range } => {
                let bases = Bases {
                    public: &public_base,
                    local: &local_base,
                };
                self.fragment(session, range, &caller, &bases, body).await
            }
            Packet::CloseSession { session } => {
                self.end(session, &caller, SessionState::Closed).await
            }
            Packet::CancelSession { session } => {
                self.end(session, &caller, SessionState::Cancelled).await
            }
        }
    }

    /// The destination of a session, derived again from the current configuration: the root
    /// of the session's vdir for its owner, and its relative path re-validated. What a record
    /// says about an absolute location is never trusted, so a record changed on disk (or in
    /// the bucket) cannot publish outside the roots.
    fn derive_destination(&self, rec: &mut SessionRecord) -> Result<(), BitsError> {
        let index = self
            .config
            .vdirs
            .iter()
            .position(|v| v.prefix == rec.vdir)
            .ok_or(BitsError::SessionNotFound(rec.id))?;
        let root = self
            .config
            .storage_root(index, rec.owner.as_ref().map(Principal::name))
            .map_err(|e| {
                tracing::warn!(session = %rec.id, error = %e, "no storage root for the session's owner");
                BitsError::NotOwner
            })?;
        let path = &rec.destination.path;
        crate::target::check_rel_path(path).map_err(BitsError::BadPath)?;
        if is_reserved_path(path) {
            return Err(BitsError::BadPath(crate::target::TargetError::Unsafe(
                "reserved name",
            )));
        }
        let root = root.to_string_lossy().into_owned();
        if root != rec.destination.root {
            tracing::warn!(session = %rec.id, recorded = %rec.destination.root, derived = %root,
                "session record names another root than the configuration gives; using the configuration's");
            rec.destination.root = root;
        }
        Ok(())
    }

    fn vdir_of(&self, rec: &SessionRecord) -> Option<&VdirConfig> {
        self.config.vdirs.iter().find(|v| v.prefix == rec.vdir)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lock(&self, id: SessionId) -> Result<SessionGuard, BitsError> {
        self.locks
            .lock(id, self.config.session_lock_timeout)
            .await
            .ok_or(BitsError::SessionBusy)
    }

    /// Loads a session for a request, expiring it first if its timeout has passed. Only the
    /// session's owner, through the vdir that created it, gets it.
    async fn load_checked(
        &self,
        id: SessionId,
        caller: &Caller<'_>,
    ) -> Result<SessionRecord, BitsError> {
        let mut rec = self
            .sessions
            .load(id)
            .await?
            .ok_or(BitsError::SessionNotFound(id))?;
        if rec.vdir != caller.vdir.prefix || !may_act(rec.owner.as_ref(), caller.identity) {
            return Err(BitsError::NotOwner);
        }
        if rec.state.is_open() && self.is_expired(&rec, self.now_ms()) {
            self.expire(&mut rec).await?;
        }
        Ok(rec)
    }

    /// All bytes held: make the upload visible at its destination (spec §8.1, commit at the
    /// completing fragment), then record it. The received length was saved before, so a crash
    /// in between is finished by the retransmitted fragment or by recovery.
    async fn publish(&self, rec: &mut SessionRecord, vdir: &VdirConfig) -> Result<(), BitsError> {
        self.settle(rec, vdir, true).await
    }

    /// Close-Session and Cancel-Session: release everything and leave a tombstone.
    async fn end(
        &self,
        id: SessionId,
        caller: &Caller<'_>,
        to: SessionState,
    ) -> Result<Ack, BitsError> {
        let _guard = self.lock(id).await?;
        let mut rec = self.load_checked(id, caller).await?;
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
        // Not recorded as published: an interrupted completion may still have made the file
        // visible (the completing fragment's claim is saved only after publishing). A session
        // that ends without completing ends unpublished; only the session's own file goes.
        if rec.state == SessionState::Receiving {
            self.data.unpublish(rec.id, &rec.destination).await?;
        }
        // A published upload's spool copy was dropped at publication; a reply exists only
        // where one was recorded.
        let held = crate::store::Held {
            data: rec.state == SessionState::Receiving || rec.reply_url.is_some(),
            reply: rec.reply_url.is_some(),
        };
        if held.data || held.reply {
            self.data.discard(rec.id, held).await?;
        }
        rec.state = to;
        rec.ended_at = Some(self.now_ms());
        self.sessions.save_ended(rec).await?;
        self.liveness.forget(rec.id);
        let evicted = {
            let mut registry = self.registry();
            registry.remove(rec.id);
            registry.add_tombstone(rec.id, self.config.max_tombstones)
        };
        self.forget_tombstones(evicted).await;
        Ok(())
    }

    /// Removes tombstones beyond `max_tombstones` (oldest first). Best effort: one that cannot
    /// be removed now is removed by the next expiry sweep.
    async fn forget_tombstones(&self, ids: Vec<SessionId>) {
        for id in ids {
            // A tombstone is never locked for long; skip one that is (it is being answered).
            let Some(_guard) = self.locks.try_lock(id) else {
                continue;
            };
            match self.sessions.load(id).await {
                // A tombstone still owing its `upload_completed` event stays until the hook
                // settles it (the TTL sweep removes it later): forgetting it would lose the event.
                Ok(Some(rec)) if rec.pending_hook.is_some() => {}
                Ok(Some(rec)) if !rec.state.is_open() => {
                    if let Err(e) = self.sessions.forget_ended(id).await {
                        tracing::warn!(session = %id, error = %e, "could not forget an old tombstone");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "could not read an old tombstone")
                }
            }
        }
    }
}

/// Why this node's registry refuses a new session.
enum Refusal {
    /// Another open session uploads to the destination.
    Held(SessionId),
    /// A session limit is reached.
    Limit,
}

/// Who is asking, and through which vdir (by prefix).
struct Caller<'a> {
    identity: Option<&'a Principal>,
    /// The vdir the URL resolved to (resolved once per request).
    vdir: &'a VdirConfig,
}

/// Names the server keeps for itself below a vdir: the reply tree and temporary files.
fn is_reserved_path(rel_path: &str) -> bool {
    rel_path.split('/').next() == Some("BITS-Sessions") || crate::store::is_internal_name(rel_path)
}

/// Reads and drops the rest of a body (its length was bounded by the per-request limit).
async fn drain(mut body: BodyStream<'_>) {
    while let Some(Ok(_)) = body.next().await {}
}
