//! Event hooks: telling operators about upload events (session created, upload completed,
//! session cancelled, session expired) through a webhook, a local command, or both.
//!
//! Emitting never blocks and never fails the caller. Events travel in one of two lanes, each
//! with its own room and its own attempt budget, so that a flood in one cannot drop or delay
//! the other:
//!
//! * **cheap** ([`Hooks::emit`]): events nobody keeps (`session_created`, `session_cancelled`,
//!   `session_expired`), which any client can provoke by the thousand. A bounded in-memory
//!   queue; when it is full the event is dropped with a warning and counted in
//!   [`HookStats::dropped`].
//! * **owed** ([`Hooks::emit_owed`]): events the caller keeps durably until they are settled
//!   (the engine's `upload_completed`, owed in the session record). At most
//!   [`OWED_LANE_CAPACITY`] are held in memory; one that finds the lane full is not dropped but
//!   deferred: it stays owed in the caller's record, and once the lane has room again the
//!   caller's redo ([`Hooks::redo_owed_with`]) is asked to emit it again — without a restart.
//!
//! Background workers, started on the tokio runtime of the first emit, deliver each event to
//! every configured target independently:
//!
//! * **webhook**: `POST` of the event as JSON with the headers `Content-Type:
//!   application/json`, `X-Bitsd-Event: <kind>`, `X-Bitsd-Delivery: <event id>` and, when a
//!   secret is set, `X-Bitsd-Signature: sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
//!   Any 2xx answer is a delivery; other answers (redirects are not followed), connection
//!   errors and timeouts are retried. `https://` URLs are verified against the system's
//!   trusted roots; proxy environment variables are ignored.
//! * **command**: the program is started with the event JSON on its standard input (then
//!   closed), `BITSD_EVENT` and `BITSD_DELIVERY` in its environment, standard output discarded
//!   and standard error logged. Exit status 0 is a delivery; another status or running past
//!   the timeout (the command's process group is then killed) is retried.
//!
//! Failed attempts are retried after `initial_backoff`, doubling up to `max_backoff` (minus up
//! to 10% jitter), until `max_attempts` attempts have been made; then the delivery is given up
//! with an error log. At most 16 attempts per lane run at once across the server, and an event
//! waiting for its next attempt holds none of them, so one slow or dead receiver does not hold
//! up the others. At most `queue_capacity` cheap events wait in the queue and at most
//! `queue_capacity` more are being delivered or waiting to be retried (while that many are, new
//! ones stay queued).
//!
//! Delivery guarantee: the lanes live in memory only. While the process runs, every event that
//! was queued is delivered at least once per target (a receiver may see the same
//! `X-Bitsd-Delivery` id more than once, e.g. when its 2xx answer was lost or came after the
//! timeout) unless it runs out of attempts. Cheap events still queued or waiting to be retried
//! are lost if the process stops or crashes: at most once across crashes. Owed events are kept
//! by their caller until their settle callback has run, so a restart emits them again under
//! the same id; a deferred one is emitted again by the redo, or by the next start.
//!
//! Where each concern lives: [`crate::config::hooks`] (the `[vdir.hooks]` table, the event
//! kinds and the secret file; plain config data below this module),
//! [`event`] (the event model, and the [`PendingEvent`] the session record keeps), `queue.rs`
//! (the lanes, workers, retries and counters), `webhook.rs` and `command.rs` (one attempt
//! each).

mod command;
pub mod event;
mod queue;
#[cfg(test)]
mod testing;
mod webhook;

// The table is config data, defined below the hook runtime so that the config imports no hooks.
pub use crate::config::hooks::{HookConfigError, HooksConfig};
pub use event::{EventKind, HookEvent, PendingEvent};
pub use queue::{
    HookStats, Hooks, Owed, OwedRedo, OwedSettled, DEFAULT_QUEUE_CAPACITY, OWED_LANE_CAPACITY,
};
