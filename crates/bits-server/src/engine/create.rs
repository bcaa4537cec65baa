//! Create-Session: the destination derived and checked, admission against the session limits
//! (this node's registry, checked against the store first on a farm), the record stored.

use super::*;

impl Engine {
    pub(super) async fn create(
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
    pub(super) fn admit(
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
}
