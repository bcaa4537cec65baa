//! The session events the rest of the server observes: metrics count them and per-vdir hooks
//! deliver them. The engine reports each event once, here, after the state change is stored.

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
            rec.owner.clone(),
        );
        if event == SessionEvent::Completed {
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
            .emit(&std::sync::Arc::new(vdir.hooks.clone()), hook);
    }
}
