//! The session events the rest of the server observes: metrics count them and per-vdir hooks
//! deliver them. The engine reports each event once, here, after the state change is stored.

use std::sync::{Arc, Mutex};

use bits_proto::SessionId;

use super::locks::SessionLocks;
use crate::config::ServerConfig;
use crate::event::SessionEvent;
use crate::hooks::{EventKind, HookEvent, Hooks, Owed, OwedSettled};
use crate::store::{SessionRecord, SessionState, SessionStore};

impl super::Engine {
    /// Called after the change is durable; never fails and never waits on observers.
    pub(super) fn observe(&self, event: SessionEvent, rec: &SessionRecord) {
        self.metrics
            .session_event(event, self.registry().open_count());
        self.emit_hook(event, rec);
    }

    fn emit_hook(&self, event: SessionEvent, rec: &SessionRecord) {
        let kind = match event {
            SessionEvent::Created => EventKind::SessionCreated,
            SessionEvent::Completed => EventKind::UploadCompleted,
            SessionEvent::Cancelled => EventKind::SessionCancelled,
            SessionEvent::Expired => EventKind::SessionExpired,
            SessionEvent::Closed => return,
        };
        // Owed in the record: its own lane, never dropped for room (see `Hooks::emit_owed`).
        if event == SessionEvent::Completed && rec.pending_hook.is_some() {
            let owing = self.owing();
            self.hooks.redo_owed_with(|| {
                let (owing, resume) = (owing.clone(), Arc::new(Mutex::new(None)));
                Arc::new(move |hooks| Box::pin(owing.clone().redo(hooks, Arc::clone(&resume))))
            });
            owing.emit_completed(&self.hooks, rec);
            return;
        }
        let Some(vdir) = self.vdir_of(rec) else {
            return;
        };
        if !vdir.hooks.wants(kind) {
            return;
        }
        let mut hook = HookEvent::new(
            kind,
            self.now_ms(),
            rec.id.to_string(),
            rec.vdir.clone(),
            rec.destination.path.clone(),
            rec.owner.as_ref().map(|p| p.name().to_string()),
        );
        if event == SessionEvent::Completed {
            hook = with_upload(hook, rec);
        }
        self.hooks.emit(&Arc::new(vdir.hooks.clone()), hook);
    }

    fn owing(&self) -> Owing {
        Owing {
            config: self.config.clone(),
            sessions: self.sessions.clone(),
            locks: self.locks.clone(),
        }
    }

    /// At start-up: deliver again the completion events a crash left owed.
    pub(super) fn redeliver_owed(&self, rec: &SessionRecord) {
        if rec.pending_hook.is_some() && rec.state != SessionState::Receiving {
            tracing::info!(session = %rec.id, "delivering an owed upload_completed event again");
            self.emit_hook(SessionEvent::Completed, rec);
        }
    }
}

/// What emitting an owed completion event needs, apart from the engine: the redo of deferred
/// ones runs in the background.
#[derive(Clone)]
struct Owing {
    config: Arc<ServerConfig>,
    sessions: Arc<dyn SessionStore>,
    locks: SessionLocks,
}

impl Owing {
    /// Emits the `upload_completed` event `rec` owes, under its recorded id and time.
    fn emit_completed(&self, hooks: &Hooks, rec: &SessionRecord) -> Owed {
        let Some(pending) = &rec.pending_hook else {
            return Owed::NotWanted;
        };
        let Some(vdir) = self.config.vdirs.iter().find(|v| v.prefix == rec.vdir) else {
            return Owed::NotWanted;
        };
        if !vdir.hooks.wants(EventKind::UploadCompleted) {
            return Owed::NotWanted;
        }
        let hook = HookEvent::owed(
            EventKind::UploadCompleted,
            pending,
            rec.id.to_string(),
            rec.vdir.clone(),
            rec.destination.path.clone(),
            rec.owner.as_ref().map(|p| p.name().to_string()),
        );
        let settled = self.clear_pending_hook(rec.id, pending.id.clone());
        hooks.emit_owed(
            &Arc::new(vdir.hooks.clone()),
            with_upload(hook, rec),
            settled,
        )
    }

    /// The owed lane had no room for some completion events: emit again those still owed,
    /// until the lane is full once more. False when the records could not be listed.
    ///
    /// Each pass starts at the record where the last one found the lane full (`resume`), so a
    /// backlog larger than the lane is walked about once, not once per lane-full.
    async fn redo(self, hooks: Hooks, resume: Arc<Mutex<Option<SessionId>>>) -> bool {
        let mut ids = match self.sessions.list().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list sessions to emit owed completion events again; retrying");
                return false;
            }
        };
        ids.sort_unstable();
        let from = resume.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(from) = from {
            let at = ids.partition_point(|id| *id < from);
            ids.rotate_left(at);
        }
        let mut emitted = 0usize;
        for id in ids {
            let rec = match self.sessions.load(id).await {
                Ok(Some(rec)) => rec,
                // Gone meanwhile, or unreadable: it owes nothing that can be sent.
                _ => continue,
            };
            if rec.pending_hook.is_none() || rec.state == SessionState::Receiving {
                continue;
            }
            match self.emit_completed(&hooks, &rec) {
                Owed::Queued => emitted += 1,
                Owed::Deferred => {
                    *resume.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                    break;
                }
                Owed::AlreadyQueued | Owed::NotWanted | Owed::Dropped => {}
            }
        }
        tracing::info!(
            emitted,
            "owed upload_completed events emitted again (the owed-event lane had been full)"
        );
        true
    }

    /// Once the completion event of session `id` is delivered (or given up on), forget that it
    /// is owed. Runs in the background and never preempts a request: a busy session is retried.
    fn clear_pending_hook(&self, id: SessionId, event: String) -> OwedSettled {
        let (sessions, locks) = (self.sessions.clone(), self.locks.clone());
        Box::new(move || {
            Box::pin(async move {
                // The client's Close-Session usually follows the completing Ack at once: let it
                // go first (on shared storage a concurrent save would make one of them retry).
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let mut wait = std::time::Duration::from_millis(50);
                let _guard = loop {
                    if let Some(guard) = locks.try_lock(id) {
                        break guard;
                    }
                    if wait > std::time::Duration::from_secs(60) {
                        tracing::warn!(session = %id, "session busy; its delivered completion event stays recorded as owed");
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                };
                let cleared = async {
                    let Some(mut rec) = sessions.load(id).await? else {
                        return Ok(());
                    };
                    if rec.pending_hook.as_ref().map(|p| &p.id) != Some(&event) {
                        return Ok(());
                    }
                    rec.pending_hook = None;
                    if rec.state.is_open() {
                        sessions.save(&rec).await
                    } else {
                        sessions.save_ended(&rec).await
                    }
                }
                .await;
                match cleared {
                    Ok(()) => tracing::debug!(session = %id, "owed completion event settled"),
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "could not clear the owed completion event")
                    }
                }
            })
        })
    }
}

/// Adds the size and SHA-256 of the completed upload of `rec`.
fn with_upload(hook: HookEvent, rec: &SessionRecord) -> HookEvent {
    match &rec.sha256 {
        Some(d) if d.len() == rec.received => hook.with_upload(rec.received, &d.hex()),
        _ => {
            tracing::warn!(session = %rec.id, "upload digest not known (record from before hooks were configured, or reconciled); hook sent without sha256");
            HookEvent {
                size: Some(rec.received),
                ..hook
            }
        }
    }
}
