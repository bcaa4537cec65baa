//! The session engine: the state machine of spec §6 and the fragment rules of §7, over the
//! storage traits. It never sees HTTP: it takes a [`Packet`] plus a body stream and answers with
//! an [`Ack`] or a [`BitsError`].

mod events;
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

    async fn create(
        &self,
        vdir: &VdirConfig,
        target: &UploadTarget,
        url: String,
        owner: Option<Principal>,
        client: Option<std::net::IpAddr>,
        protocol: ProtocolId,
    ) -> Result<Ack, BitsError> {
        let root = self
            .config
            .storage_root(target.vdir, owner.as_ref().map(Principal::name))
            .map_err(|e| {
                tracing::warn!(vdir = %vdir.prefix, error = %e, "no storage root for this client");
                BitsError::NotOwner
            })?;
        if root != vdir.root {
            // A per-user root ({user} in the vdir root) is made on first use.
            self.data.prepare_root(&root.to_string_lossy()).await?;
        }
        let destination = Destination {
            root: root.to_string_lossy().into_owned(),
            path: target.rel_path.clone(),
        };
        if is_reserved_path(&target.rel_path) {
            return Err(BitsError::BadPath(crate::target::TargetError::Unsafe(
                "reserved name",
            )));
        }
        // Refused now, not at the completing fragment (where a retrying client would add a
        // part per retry to a session that can never complete).
        self.data
            .check_name(&destination)
            .map_err(|why| BitsError::BadPath(crate::target::TargetError::Unsafe(why)))?;
        let conflict = || BitsError::DestinationExists {
            status: vdir.conflict_status.status(),
        };
        match self.data.inspect(&destination).await? {
            DestinationState::Directory => return Err(BitsError::DestinationIsDirectory),
            DestinationState::ParentMissing => return Err(BitsError::ParentMissing),
            DestinationState::File if !vdir.allow_overwrites => return Err(conflict()),
            DestinationState::File | DestinationState::Absent => {}
        }
        let now = self.now_ms();
        let rec = SessionRecord {
            id: SessionId::random(),
            vdir: vdir.prefix.clone(),
            url,
            destination,
            owner,
            client,
            total: None,
            received: 0,
            state: SessionState::Receiving,
            created_at: now,
            last_activity: now,
            ended_at: None,
            reply_url: None,
            app_forbidden: false,
            // Hashed while the fragments stream in, only when a hook will report it.
            sha256: vdir
                .hooks
                .wants(crate::hooks::EventKind::UploadCompleted)
                .then(crate::digest::Sha256State::default),
            pending_hook: None,
        };
        // The id is new, so its lock is free: held until the record is stored, so that a
        // registry refresh meanwhile does not take the session for one that is gone.
        let _creating = self.locks.try_lock(rec.id);
        self.liveness.used(rec.id, now, self.clock.mono());
        // On a shared store this node's counts may be stale (sessions ended through other
        // nodes): a refusal is checked against the store once before it is given.
        let unchecked = self.shared_store();
        let (mut holder_checked, mut limits_checked) = (!unchecked, !unchecked);
        // Limits and holders are judged on the registry: complete after start-up's build.
        self.registry_complete().await;
        loop {
            let refusal = {
                let mut registry = self.registry();
                match self.admit(&registry, &rec, vdir) {
                    Ok(()) => {
                        registry.insert(&rec);
                        break;
                    }
                    Err(refusal) => refusal,
                }
            };
            match refusal {
                Refusal::Held(holder) if !holder_checked => {
                    holder_checked = true;
                    self.verify_holder(holder).await;
                }
                Refusal::Limit if !limits_checked => {
                    limits_checked = true;
                    if let Err(e) = self.refresh_registry(lifecycle::FORCED_REFRESH_GAP).await {
                        tracing::warn!(error = %e, "could not reconcile the open sessions before refusing");
                    }
                }
                Refusal::Held(_) => return Err(conflict()),
                Refusal::Limit => return Err(BitsError::SessionLimit),
            }
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

    /// Whether this node's registry lets a new session in: its destination free (unless
    /// overwrites are allowed) and every session limit below its cap.
    fn admit(
        &self,
        registry: &Registry,
        rec: &SessionRecord,
        vdir: &VdirConfig,
    ) -> Result<(), Refusal> {
        if !vdir.allow_overwrites {
            if let Some((holder, _)) = registry.holder_of(&rec.destination) {
                return Err(Refusal::Held(holder));
            }
        }
        if registry.open_count() >= self.config.max_open_sessions {
            return Err(Refusal::Limit);
        }
        // 0 turns a per-identity limit off (IIS `BITSSessionLimitEnable = 0`).
        if let Some(limit) = self
            .config
            .max_sessions_per_identity
            .filter(|&l| l > 0 && rec.owner.is_some())
        {
            if registry.owned_by(&rec.owner) >= limit {
                return Err(Refusal::Limit);
            }
        }
        if let (Some(limit), Some(owner)) = (
            vdir.max_sessions_per_identity.filter(|&l| l > 0),
            &rec.owner,
        ) {
            if registry.owned_in_vdir(&vdir.prefix, owner) >= limit {
                return Err(Refusal::Limit);
            }
        }
        if vdir
            .max_open_sessions
            .is_some_and(|l| registry.open_in_vdir(&vdir.prefix) >= l)
        {
            return Err(Refusal::Limit);
        }
        if rec.owner.is_none() {
            let cfg = &self.config;
            let over = |used: u64, limit: u64| limit > 0 && used >= limit;
            let over_total = over(registry.anonymous(), cfg.max_anonymous_sessions);
            let over_ip = rec.client.is_some_and(|ip| {
                over(
                    registry.anonymous_from(ip),
                    cfg.max_anonymous_sessions_per_ip,
                )
            });
            if over_total || over_ip {
                return Err(Refusal::Limit);
            }
        }
        Ok(())
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

    async fn fragment(
        &self,
        id: SessionId,
        range: ContentRange,
        caller: &Caller<'_>,
        bases: &Bases<'_>,
        mut body: BodyStream<'_>,
    ) -> Result<Ack, BitsError> {
        let mut guard = self.lock(id).await?;
        let mut rec = self.load_checked(id, caller).await?;
        // Bound to its vdir (load_checked): the URL's vdir is the session's.
        let vdir = caller.vdir;
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
                self.stamp(&mut rec);
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
        // As stored, to tell after the data write whether another node changed it meanwhile.
        let loaded = rec.clone();
        rec.total = Some(range.total);
        self.stamp(&mut rec);
        if range.end() <= rec.received {
            drain(body.as_mut()).await;
        } else {
            let len = range.end() - rec.received;
            if self.config.spool_quota.is_some()
                || self.config.max_spool_bytes_per_identity.is_some()
            {
                // Quotas count every open session's bytes: known once start-up's build ends.
                self.registry_complete().await;
            }
            let over_quota = || {
                let registry = self.registry();
                let over = |used: u64, quota: Option<u64>| {
                    quota.is_some_and(|q| used.saturating_add(len) > q)
                };
                over(registry.spooled(), self.config.spool_quota)
                    || (rec.owner.is_some()
                        && self.config.max_spool_bytes_per_identity.is_some()
                        && over(
                            registry.spooled_by(&rec.owner),
                            self.config.max_spool_bytes_per_identity,
                        ))
            };
            if over_quota() {
                // Bytes of sessions ended through other nodes may still be counted here.
                if self.shared_store() {
                    if let Err(e) = self.refresh_registry(lifecycle::FORCED_REFRESH_GAP).await {
                        tracing::warn!(error = %e, "could not reconcile spool usage before refusing");
                    }
                }
                if over_quota() {
                    return Err(BitsError::DiskFull);
                }
            }
            // Bytes before `received` are acknowledged already: read past them, never rewrite them.
            let mut skip = rec.received - range.first;
            let mut digest = rec
                .sha256
                .take()
                .filter(|d| d.len() == rec.received)
                .map(|d| DigestTracker::new(d, range.end()));
            let mut hashing = digest.as_mut();
            let fresh = body
                .as_mut()
                .filter_map(move |item| {
                    let item = match item {
                        Ok(mut chunk) => {
                            let n = skip.min(chunk.len() as u64) as usize;
                            skip -= n as u64;
                            let _ = chunk.split_to(n);
                            if let Some(d) = hashing.as_deref_mut() {
                                d.update(&chunk);
                            }
                            (!chunk.is_empty()).then_some(Ok(chunk))
                        }
                        Err(e) => Some(Err(e)),
                    };
                    std::future::ready(item)
                })
                .take_until(guard.preempted());
            // Without notification nothing reads the upload back before it is published, so
            // the store may write it toward its destination: derived here from the
            // configuration, as publishing does, never taken from the record.
            let toward = (self.data.writes_toward_destination()
                && vdir.notification_type == crate::config::NotificationType::None)
                .then(|| self.derive_destination(&mut rec).ok())
                .flatten()
                .map(|()| rec.destination.clone());
            let outcome = match &toward {
                Some(dest) => {
                    self.data
                        .write_for_destination(id, rec.received, len, std::pin::pin!(fresh), dest)
                        .await
                }
                None => {
                    self.data
                        .write(id, rec.received, len, std::pin::pin!(fresh))
                        .await
                }
            };
            // A fragment answered through `save_claim` learns there (its conditional save
            // fails) that another node changed or ended the session; any other is checked now.
            let publishes_unsaved = rec.total == Some(rec.received + outcome.durable)
                && vdir.notification_type == crate::config::NotificationType::None;
            if outcome.durable > 0 && (outcome.error.is_some() || publishes_unsaved) {
                self.check_unchanged(&loaded).await?;
            }
            let before = rec.received;
            // A body that broke its framing is refused whole: what a store wrote of it is not
            // claimed (it lies past `received`, where the next fragment writes anyway).
            let refused = outcome
                .error
                .as_ref()
                .is_some_and(crate::store::StoreError::is_body_framing);
            if !refused {
                rec.received += outcome.durable;
            }
            if let Some(d) = digest {
                // The digest must cover exactly `received`: after a partial write, fall back to
                // the last point it was taken at (those bytes are re-sent by the client).
                let (at, state) = d.settle(rec.received);
                rec.received = at;
                rec.sha256 = state;
            }
            // What the session now claims (a digest fallback may claim less than was written).
            self.metrics.bytes_received(rec.received - before);
            self.activity
                .bytes(self.now_ms(), &rec.vdir, rec.received - before);
            // Also registers a session created through another node.
            self.registry().track(&rec);
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
            // The record is about to claim bytes that stay in the spool: they must be
            // reachable after a power loss too, not only written.
            self.data.keep(rec.id).await?;
            self.save_claim(&rec).await?;
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

/// Follows a fragment's new bytes into the upload's SHA-256, remembering the state every
/// [`DigestTracker::EVERY`] bytes so that a write that stops part way can be matched.
struct DigestTracker {
    state: crate::digest::Sha256State,
    /// Where the fragment ends: bytes past it are not part of the upload.
    end: u64,
    /// States at earlier positions, oldest first; the first is where the fragment began.
    marks: Vec<crate::digest::Sha256State>,
}

impl DigestTracker {
    const EVERY: u64 = 1 << 20;

    fn new(state: crate::digest::Sha256State, end: u64) -> DigestTracker {
        DigestTracker {
            marks: vec![state.clone()],
            state,
            end,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        let room = self
            .end
            .saturating_sub(self.state.len())
            .min(chunk.len() as u64) as usize;
        self.state.update(&chunk[..room]);
        let last = self.marks.last().map_or(0, |m| m.len());
        if self.state.len() >= last + Self::EVERY {
            self.marks.push(self.state.clone());
        }
    }

    /// The state covering exactly `0..durable` where possible, else the latest one before it
    /// (the caller then claims only that much). Never a position before the fragment's start.
    fn settle(self, durable: u64) -> (u64, Option<crate::digest::Sha256State>) {
        if self.state.len() == durable {
            return (durable, Some(self.state));
        }
        match self.marks.into_iter().rev().find(|m| m.len() <= durable) {
            Some(state) => (state.len(), Some(state)),
            None => (durable, None),
        }
    }
}

#[cfg(test)]
mod digest_tracker_tests {
    use super::DigestTracker;
    use crate::digest::Sha256State;
    use sha2::{Digest, Sha256};

    fn state_of(data: &[u8]) -> Sha256State {
        let mut s = Sha256State::default();
        s.update(data);
        s
    }

    #[test]
    fn a_partial_write_falls_back_to_the_last_mark_before_it() {
        let data: Vec<u8> = (0..(5u32 << 20) / 2).map(|i| (i * 7 + 3) as u8).collect();
        let start = 1000;
        let mut t = DigestTracker::new(state_of(&data[..start]), data.len() as u64);
        for chunk in data[start..].chunks(70_000) {
            t.update(chunk);
        }
        // Everything written: the exact state.
        let whole = t_clone(&t).settle(data.len() as u64);
        assert_eq!(whole.0, data.len() as u64);
        assert_eq!(
            whole.1.unwrap().finish().to_vec(),
            Sha256::digest(&data).to_vec()
        );
        // Only part durable: a mark at or before it, never before the fragment's start.
        let durable = start as u64 + 1_800_000;
        let (at, state) = t.settle(durable);
        assert!(at <= durable && at >= start as u64 && durable - at <= (1 << 20) + 70_000);
        let state = state.unwrap();
        assert_eq!(state.len(), at);
        assert_eq!(
            state.finish().to_vec(),
            Sha256::digest(&data[..at as usize]).to_vec()
        );
    }

    fn t_clone(t: &DigestTracker) -> DigestTracker {
        DigestTracker {
            state: t.state.clone(),
            end: t.end,
            marks: t.marks.clone(),
        }
    }

    #[test]
    fn bytes_past_the_fragment_end_are_not_hashed() {
        let mut t = DigestTracker::new(Sha256State::default(), 3);
        t.update(b"abcdef");
        let (at, state) = t.settle(3);
        assert_eq!(at, 3);
        assert_eq!(
            state.unwrap().finish().to_vec(),
            Sha256::digest(b"abc").to_vec()
        );
    }
}
