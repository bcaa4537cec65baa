//! The session events the rest of the server observes: metrics count them and per-vdir hooks
//! deliver them. The engine reports each event once, here, after the state change is stored.

use bits_proto::SessionId;

use crate::hooks::{EventKind, HookEvent};
use crate::store::SessionRecord;

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    Created,
    /// All bytes held and published at the destination.
    Completed,
    Closed,
    Cancelled,
    Expired,
}

impl super::Engine {
    /// Called after the change is durable; never fails and never waits on observers.
    pub(super) fn observe(&self, event: SessionEvent, rec: &SessionRecord) {
        self.metrics
            .session_event(event, self.registry().open_count());
        self.emit_hook(event, rec);
    }

    fn emit_hook(&self, event: SessionEvent, rec: &SessionRecord) {
        let Some(vdir) = self.vdir_of(rec) else {
            return;
        };
        let kind = match event {
            SessionEvent::Created => EventKind::SessionCreated,
            SessionEvent::Completed => EventKind::UploadCompleted,
            SessionEvent::Cancelled => EventKind::SessionCancelled,
            SessionEvent::Expired => EventKind::SessionExpired,
            SessionEvent::Closed => return,
        };
        if !vdir.hooks.wants(kind) {
            return;
        }
        let mut hook = HookEvent::new(
            kind,
            rec.id.to_string(),
            rec.vdir.clone(),
            rec.destination.path.clone(),
            rec.owner.as_ref().map(|p| p.name().to_string()),
        );
        let mut settled = None;
        if event == SessionEvent::Completed {
            if let Some(pending) = &rec.pending_hook {
                hook = hook.as_pending(pending);
                settled = Some(self.clear_pending_hook(rec.id, pending.id.clone()));
            }
            match &rec.sha256 {
                Some(d) if d.len() == rec.received => {
                    hook = hook.with_upload(rec.received, &d.hex())
                }
                _ => {
                    tracing::warn!(session = %rec.id, "upload digest not known (record from before hooks were configured, or reconciled); hook sent without sha256");
                    hook.size = Some(rec.received);
                }
            }
        }
        self.hooks
            .emit_then(&std::sync::Arc::new(vdir.hooks.clone()), hook, settled);
    }

    /// Once the completion event of session `id` is delivered (or given up on), forget that it
    /// is owed. Runs in the background and never preempts a request: a busy session is retried.
    fn clear_pending_hook(&self, id: SessionId, event: String) -> Box<dyn FnOnce() + Send> {
        let (sessions, locks) = (self.sessions.clone(), self.locks.clone());
        Box::new(move || {
            tokio::spawn(async move {
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
                if let Err(e) = cleared {
                    tracing::warn!(session = %id, error = %e, "could not clear the owed completion event");
                }
            });
        })
    }

    /// At start-up: deliver again the completion events a crash left owed.
    pub(super) fn redeliver_owed(&self, rec: &SessionRecord) {
        if rec.pending_hook.is_some() && !matches!(rec.state, crate::store::SessionState::Receiving)
        {
            tracing::info!(session = %rec.id, "delivering an owed upload_completed event again");
            self.emit_hook(SessionEvent::Completed, rec);
        }
    }
}
