//! The session events the rest of the server observes: metrics count them and per-vdir hooks
//! deliver them. The engine reports each event once, here, after the state change is stored.

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
        let _ = (event, rec);
    }
}
