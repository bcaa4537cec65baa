//! What happened to a session, as the engine reports it to its observers.
//!
//! A module of its own, below both the engine (which reports) and metrics (which counts), so
//! that metrics observes the engine without importing it and the arrows point one way.

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
