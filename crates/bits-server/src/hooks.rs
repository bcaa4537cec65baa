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

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Attempts (HTTP requests or command runs) in progress at once, across all events.
const MAX_CONCURRENT_ATTEMPTS: usize = 16;
/// Queue size of [`Hooks::default`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Owed events (see [`Hooks::emit_owed`]) held in memory at once: queued, being delivered,
/// waiting for a retry or for their owner to forget them. More stay owed in their owner's
/// durable record until there is room; this bounds memory, not what is delivered.
pub const OWED_LANE_CAPACITY: usize = 256;
/// How often a redo of deferred owed events checks whether the owed lane has room again.
const OWED_REDO_INTERVAL: Duration = Duration::from_millis(500);
/// How much of a failing command's standard error is kept for the log.
const STDERR_LOG_LIMIT: usize = 2048;
/// How long the standard error of an exited command may stay open (held by a process it left
/// behind) before it is no longer waited for.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The upload events a hook can be told about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client created an upload session (Create-Session succeeded).
    SessionCreated,
    /// An upload was completed and published at its destination.
    UploadCompleted,
    /// The client cancelled the session.
    SessionCancelled,
    /// The session timed out and was deleted by the cleanup sweep.
    SessionExpired,
}

impl EventKind {
    /// Every kind, the default of `hooks.events`.
    pub const ALL: [EventKind; 4] = [
        EventKind::SessionCreated,
        EventKind::UploadCompleted,
        EventKind::SessionCancelled,
        EventKind::SessionExpired,
    ];

    /// The name used in the config, the JSON and the `X-Bitsd-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionCreated => "session_created",
            EventKind::UploadCompleted => "upload_completed",
            EventKind::SessionCancelled => "session_cancelled",
            EventKind::SessionExpired => "session_expired",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-vdir `[vdirs.hooks]` table. Hooks are off unless `webhook_url` or `command` is set.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Absolute `http://` or `https://` URL the events are POSTed to.
    pub webhook_url: Option<String>,
    /// Key of the `X-Bitsd-Signature` HMAC-SHA256 of the body. Not together with
    /// `webhook_secret_file`.
    pub webhook_secret: Option<String>,
    /// File holding the signing key (one trailing newline is ignored). Read at every delivery,
    /// so the key can be rotated without a restart; checked by [`HooksConfig::validate`].
    pub webhook_secret_file: Option<PathBuf>,
    /// Program and arguments run for each event, with the event JSON on standard input. The
    /// program is looked up in `PATH`; no shell is involved.
    pub command: Option<Vec<String>>,
    /// The kinds of event delivered (default: all).
    pub events: Vec<EventKind>,
    /// Attempts per event and target, the first included (default 8).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles for each further retry (default 1s).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts (default 5min).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long one attempt may take: the whole HTTP exchange, or the command's run (default
    /// 10s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
            command: None,
            events: EventKind::ALL.to_vec(),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Debug output leaves the secret out.
impl fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksConfig")
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_secret_file", &self.webhook_secret_file)
            .field("command", &self.command)
            .field("events", &self.events)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A bad `[hooks]` setting: `key` is the offending key, e.g. `webhook_url`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hooks.{key}: {reason}")]
pub struct HookConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl HookConfigError {
    fn new(key: &'static str, reason: impl Into<String>) -> Self {
        HookConfigError {
            key,
            reason: reason.into(),
        }
    }
}

impl HooksConfig {
    /// Whether any target is set.
    pub fn is_enabled(&self) -> bool {
        self.webhook_url.is_some() || self.command.is_some()
    }

    /// Whether events of `kind` are delivered.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.is_enabled() && self.events.contains(&kind)
    }

    /// Checks the settings, and that `webhook_secret_file` can be read and is not empty.
    pub fn validate(&self) -> Result<(), HookConfigError> {
        if let Some(url) = &self.webhook_url {
            check_webhook_url(url)?;
        }
        match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(_), Some(_)) => {
                return Err(HookConfigError::new(
                    "webhook_secret_file",
                    "set either hooks.webhook_secret or hooks.webhook_secret_file, not both",
                ))
            }
            (Some(s), None) if s.is_empty() => {
                return Err(HookConfigError::new("webhook_secret", "empty"))
            }
            (Some(_), None) if self.webhook_url.is_none() => {
                return Err(HookConfigError::new(
                    "webhook_secret",
                    "set without hooks.webhook_url",
                ))
            }
            (None, Some(_)) if self.webhook_url.is_none() => {
                return Err(HookConfigError::new(
                    "webhook_secret_file",
                    "set without hooks.webhook_url",
                ))
            }
            (None, Some(path)) => {
                read_secret_file_sync(path)?;
            }
            _ => {}
        }
        if let Some(cmd) = &self.command {
            match cmd.first() {
                None => return Err(HookConfigError::new("command", "empty")),
                Some(p) if p.is_empty() => {
                    return Err(HookConfigError::new("command", "empty program name"))
                }
                Some(_) => {}
            }
        }
        if self.is_enabled() && self.events.is_empty() {
            return Err(HookConfigError::new(
                "events",
                "empty (leave the key out to get every event)",
            ));
        }
        if self.max_attempts == 0 {
            return Err(HookConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.initial_backoff < Duration::from_millis(1) {
            return Err(HookConfigError::new(
                "initial_backoff",
                "must be at least 1ms",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(HookConfigError::new(
                "max_backoff",
                "must not be less than hooks.initial_backoff",
            ));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(HookConfigError::new("timeout", "must be at least 1ms"));
        }
        Ok(())
    }
}

fn check_webhook_url(url: &str) -> Result<(), HookConfigError> {
    let bad = || {
        HookConfigError::new(
            "webhook_url",
            format!("not an absolute http:// or https:// URL: {url:?}"),
        )
    };
    let parsed = reqwest_s3::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(())
}

/// The key in a secret file: its bytes less one trailing `\n` or `\r\n`.
fn secret_from_file_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    bytes
}

fn read_secret_file_sync(path: &Path) -> Result<Vec<u8>, HookConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        HookConfigError::new("webhook_secret_file", format!("cannot read {path:?}: {e}"))
    })?;
    let secret = secret_from_file_bytes(bytes);
    if secret.is_empty() {
        return Err(HookConfigError::new(
            "webhook_secret_file",
            format!("{path:?} is empty"),
        ));
    }
    Ok(secret)
}

/// One event, as sent (JSON) to every target.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookEvent {
    /// Unique per event (UUID v4); also sent as `X-Bitsd-Delivery`, the same on every retry.
    pub id: String,
    pub event: EventKind,
    /// When the event happened: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The session GUID.
    pub session: String,
    /// The vdir's URL prefix.
    pub vdir: String,
    /// The upload's path relative to the vdir root.
    pub destination: String,
    /// The authenticated user, if any.
    pub identity: Option<String>,
    /// Size in bytes of the completed upload (`upload_completed` only, else null).
    pub size: Option<u64>,
    /// Lowercase hex SHA-256 of the completed upload (`upload_completed` only, else null).
    pub sha256: Option<String>,
}

/// The identity of an `upload_completed` event not yet delivered, kept in the session record so
/// that a restart delivers it again under the same id (receivers deduplicate on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub id: String,
    pub time: String,
}

impl PendingEvent {
    pub fn now() -> PendingEvent {
        PendingEvent {
            id: uuid::Uuid::new_v4().to_string(),
            time: rfc3339(SystemTime::now()),
        }
    }
}

impl HookEvent {
    /// This event under the id and time of `pending` (a redelivery after a restart).
    pub fn as_pending(mut self, pending: &PendingEvent) -> Self {
        self.id.clone_from(&pending.id);
        self.time.clone_from(&pending.time);
        self
    }

    /// An event happening now, with a fresh id.
    pub fn new(
        event: EventKind,
        session: String,
        vdir: String,
        destination: String,
        identity: Option<String>,
    ) -> Self {
        HookEvent {
            id: uuid::Uuid::new_v4().to_string(),
            event,
            time: rfc3339(SystemTime::now()),
            session,
            vdir,
            destination,
            identity,
            size: None,
            sha256: None,
        }
    }

    /// Sets the size and SHA-256 of a completed upload.
    pub fn with_upload(mut self, size: u64, sha256: &str) -> Self {
        self.size = Some(size);
        self.sha256 = Some(sha256.to_ascii_lowercase());
        self
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 print as 1970).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

/// Counters since start. With both targets set, an event counts once per target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HookStats {
    /// Deliveries that succeeded (2xx answer, exit status 0).
    pub delivered: u64,
    /// Deliveries given up after `max_attempts` failed attempts.
    pub failed: u64,
    /// Retries scheduled after a failed attempt.
    pub retried: u64,
    /// Events not queued: the queue was full or the worker is gone.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Which lane an event travels in: each has its own room and its own attempt budget, so that
/// a flood of one cannot hold up the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Events nobody keeps: dropped when their queue is full.
    Cheap,
    /// Events their caller keeps durably ([`Hooks::emit_owed`]): never dropped for room.
    Owed,
}

/// A queued event with its serialized body, shared by its targets.
struct Job {
    cfg: Arc<HooksConfig>,
    kind: EventKind,
    id: String,
    body: Bytes,
    lane: Lane,
    settle: Option<Settle>,
}

/// Runs once every target of an owed event has been delivered to or given up on. The event
/// keeps its place in the owed lane until the future ends, so that it is not emitted again
/// while its owner is still forgetting it.
pub type OwedSettled = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Asked, in the background, to emit again with [`Hooks::emit_owed`] the owed events the owed
/// lane turned away; answers `false` when it could not look (e.g. a storage error) and wants
/// to be asked again.
pub type OwedRedo = Arc<dyn Fn(Hooks) -> BoxFuture<'static, bool> + Send + Sync>;

/// What [`Hooks::emit_owed`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// In the owed lane: it is delivered (or given up on), then `settled` runs.
    Queued,
    /// An event with this id is in the owed lane already; this one (and its `settled`) was
    /// discarded.
    AlreadyQueued,
    /// The owed lane is full. The caller keeps owing the event; once there is room, the redo
    /// set with [`Hooks::redo_owed_with`] is asked to emit it again.
    Deferred,
    /// `cfg` does not want events of its kind: nothing is owed (`settled` did not run).
    NotWanted,
    /// The worker is gone (its runtime ended) or the event cannot be serialized: it is not
    /// delivered by this process.
    Dropped,
}

/// Called once every target of an event has been delivered to or given up on.
struct Settle {
    remaining: AtomicUsize,
    then: std::sync::Mutex<Option<SettleTail>>,
}

struct SettleTail {
    then: OwedSettled,
    /// Given back after `then`.
    place: LanePlace,
}

/// An owed event's place in the owed lane: its room and its id, given back when dropped (also
/// when the job is dropped unsettled, e.g. by a runtime shutting down).
struct LanePlace {
    shared: Arc<Shared>,
    id: String,
    _room: OwnedSemaphorePermit,
}

impl Drop for LanePlace {
    fn drop(&mut self) {
        self.shared
            .owed_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Job {
    /// One target is done with this job (delivered, or out of attempts).
    fn target_settled(&self) {
        let Some(settle) = &self.settle else { return };
        if settle.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let tail = settle.then.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(tail) = tail {
                // Delivery tasks run on the runtime, so spawning cannot fail here.
                tokio::spawn(async move {
                    (tail.then)().await;
                    drop(tail.place);
                });
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Webhook,
    Command,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Webhook => "webhook",
            Target::Command => "command",
        }
    }
}

/// What the workers and the delivery tasks share.
struct Shared {
    stats: Counters,
    /// Attempts of cheap events running at once.
    attempts: Semaphore,
    /// Attempts of owed events running at once: a budget of their own, so that slow deliveries
    /// of cheap events cannot keep a completion waiting.
    owed_attempts: Semaphore,
    /// Cheap events taken off the queue whose deliveries are not finished.
    in_flight: Arc<Semaphore>,
    /// Places in the owed lane: each owed event holds one from [`Hooks::emit_owed`] until it
    /// is settled.
    owed_room: Arc<Semaphore>,
    /// Places in the owed lane in all, taken or not.
    owed_capacity: usize,
    /// Ids of the events in the owed lane, so that one emitted twice (a redo racing the
    /// original emit) is delivered once.
    owed_ids: Mutex<HashSet<String>>,
    /// The owed lane turned an event away since the last redo began.
    owed_deferred: AtomicBool,
    /// A redo task is running (at most one).
    redo_running: AtomicBool,
    /// Who can emit deferred owed events again.
    redo: OnceLock<OwedRedo>,
    /// Deliveries (event × target) queued or under way: what a shutdown waits for.
    outstanding: AtomicUsize,
    /// Built on the first webhook delivery.
    http: OnceLock<Result<reqwest_s3::Client, String>>,
}

struct Inner {
    tx: mpsc::Sender<Job>,
    /// Bounded by `Shared::owed_room`, not by the channel.
    owed_tx: mpsc::UnboundedSender<Job>,
    /// The queues' receiving ends until the workers are started.
    rx: Mutex<Option<(mpsc::Receiver<Job>, mpsc::UnboundedReceiver<Job>)>>,
    started: AtomicBool,
    shared: Arc<Shared>,
}

/// The hook dispatcher: one per server, cheap to clone. See the module documentation.
#[derive(Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks::new(DEFAULT_QUEUE_CAPACITY)
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// A dispatcher whose queue of cheap events holds `queue_capacity` events (at least 1) and
    /// whose owed lane holds [`OWED_LANE_CAPACITY`]. Needs no runtime: the workers are started
    /// on the runtime of the first emit made inside one.
    pub fn new(queue_capacity: usize) -> Hooks {
        Hooks::with_owed_capacity(queue_capacity, OWED_LANE_CAPACITY)
    }

    fn with_owed_capacity(queue_capacity: usize, owed_capacity: usize) -> Hooks {
        let capacity = queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (owed_tx, owed_rx) = mpsc::unbounded_channel();
        Hooks {
            inner: Arc::new(Inner {
                tx,
                owed_tx,
                rx: Mutex::new(Some((rx, owed_rx))),
                started: AtomicBool::new(false),
                shared: Arc::new(Shared {
                    stats: Counters::default(),
                    attempts: Semaphore::new(MAX_CONCURRENT_ATTEMPTS),
                    owed_attempts: Semaphore::new(MAX_CONCURRENT_ATTEMPTS),
                    in_flight: Arc::new(Semaphore::new(capacity)),
                    owed_room: Arc::new(Semaphore::new(owed_capacity.max(1))),
                    owed_capacity: owed_capacity.max(1),
                    owed_ids: Mutex::new(HashSet::new()),
                    owed_deferred: AtomicBool::new(false),
                    redo_running: AtomicBool::new(false),
                    redo: OnceLock::new(),
                    outstanding: AtomicUsize::new(0),
                    http: OnceLock::new(),
                }),
            }),
        }
    }

    /// Queues `event` for the targets of `cfg`. Never blocks and never fails: an event of a
    /// kind `cfg` does not want (or with no target set) is skipped; one that does not fit in
    /// the queue is dropped with a warning and counted in [`HookStats::dropped`].
    pub fn emit(&self, cfg: &Arc<HooksConfig>, event: HookEvent) {
        self.emit_then(cfg, event, None);
    }

    /// Like [`Hooks::emit`]; with `settled`, the event travels in the owed lane and `settled`
    /// runs (on the runtime) once every target has been delivered to or given up on after its
    /// last attempt — not when the event is dropped (the owed lane is full) or the process
    /// stops first. For an event nobody wants it runs at once.
    pub fn emit_then(
        &self,
        cfg: &Arc<HooksConfig>,
        event: HookEvent,
        settled: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let Some(settled) = settled else {
            self.emit_cheap(cfg, event);
            return;
        };
        if !cfg.wants(event.event) {
            tracing::trace!(event = %event.event, id = %event.id, "hook event not wanted");
            settled();
            return;
        }
        let (kind, id) = (event.event, event.id.clone());
        let then: OwedSettled = Box::new(move || {
            settled();
            Box::pin(std::future::ready(()))
        });
        if self.emit_owed(cfg, event, then) == Owed::Deferred {
            // Nobody keeps it for a redo: this is a drop.
            bump(&self.inner.shared.stats.dropped);
            tracing::warn!(event = %kind, %id, "hook event dropped: the owed-event lane is full");
        }
    }

    fn emit_cheap(&self, cfg: &Arc<HooksConfig>, event: HookEvent) {
        if !cfg.wants(event.event) {
            tracing::trace!(event = %event.event, id = %event.id, "hook event not wanted");
            return;
        }
        let Some(body) = self.serialize(&event) else {
            return;
        };
        let targets = target_count(cfg);
        let job = Job {
            cfg: Arc::clone(cfg),
            kind: event.event,
            id: event.id,
            body,
            lane: Lane::Cheap,
            settle: None,
        };
        // Counted before it is queued: a fast delivery must not finish before it is counted.
        let outstanding = &self.inner.shared.outstanding;
        outstanding.fetch_add(targets, Ordering::AcqRel);
        let queued = self.inner.tx.try_send(job);
        if queued.is_err() {
            outstanding.fetch_sub(targets, Ordering::AcqRel);
        }
        match queued {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                bump(&self.inner.shared.stats.dropped);
                tracing::warn!(event = %job.kind, id = %job.id, session = %event.session,
                    "hook event dropped: the hook queue is full");
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                bump(&self.inner.shared.stats.dropped);
                tracing::warn!(event = %job.kind, id = %job.id, session = %event.session,
                    "hook event dropped: the hook worker is not running (its runtime ended)");
            }
        }
        self.ensure_worker();
    }

    /// Puts an event its caller keeps durably (e.g. `upload_completed`, owed in the session
    /// record) in the owed lane, which cheap events do not share and which never drops for
    /// room: when the lane is full the event is [`Owed::Deferred`], the caller keeps owing it,
    /// and once the lane has room again the redo set with [`Hooks::redo_owed_with`] is asked to
    /// emit it again — without a restart. An event whose id is already in the lane is
    /// discarded ([`Owed::AlreadyQueued`]), so a redo cannot deliver it twice. Never blocks.
    pub fn emit_owed(
        &self,
        cfg: &Arc<HooksConfig>,
        event: HookEvent,
        settled: OwedSettled,
    ) -> Owed {
        if !cfg.wants(event.event) {
            tracing::trace!(event = %event.event, id = %event.id, "hook event not wanted");
            return Owed::NotWanted;
        }
        let shared = &self.inner.shared;
        let room = {
            let mut ids = shared.owed_ids.lock().unwrap_or_else(|p| p.into_inner());
            if ids.contains(&event.id) {
                return Owed::AlreadyQueued;
            }
            match Arc::clone(&shared.owed_room).try_acquire_owned() {
                Ok(room) => {
                    ids.insert(event.id.clone());
                    Some(room)
                }
                Err(_) => None,
            }
        };
        let Some(room) = room else {
            // One warning per episode: a flood of completions would otherwise flood the log.
            if !shared.owed_deferred.swap(true, Ordering::AcqRel) {
                tracing::warn!(event = %event.event, id = %event.id, session = %event.session,
                    "owed-event lane full: hook event deferred (still owed in the session record; emitted again when there is room)");
            } else {
                tracing::debug!(event = %event.event, id = %event.id, session = %event.session,
                    "owed-event lane full: hook event deferred");
            }
            self.start_redo();
            return Owed::Deferred;
        };
        let place = LanePlace {
            shared: Arc::clone(shared),
            id: event.id.clone(),
            _room: room,
        };
        let Some(body) = self.serialize(&event) else {
            return Owed::Dropped;
        };
        let targets = target_count(cfg);
        let job = Job {
            cfg: Arc::clone(cfg),
            kind: event.event,
            id: event.id.clone(),
            body,
            lane: Lane::Owed,
            settle: Some(Settle {
                remaining: AtomicUsize::new(targets),
                then: std::sync::Mutex::new(Some(SettleTail {
                    then: settled,
                    place,
                })),
            }),
        };
        shared.outstanding.fetch_add(targets, Ordering::AcqRel);
        let outcome = match self.inner.owed_tx.send(job) {
            Ok(()) => Owed::Queued,
            Err(_) => {
                shared.outstanding.fetch_sub(targets, Ordering::AcqRel);
                bump(&shared.stats.dropped);
                tracing::warn!(event = %event.event, id = %event.id, session = %event.session,
                    "hook event dropped: the hook worker is not running (its runtime ended)");
                Owed::Dropped
            }
        };
        self.ensure_worker();
        outcome
    }

    /// Sets, once, who emits deferred owed events again (`init` runs only the first time).
    pub fn redo_owed_with(&self, init: impl FnOnce() -> OwedRedo) {
        self.inner.shared.redo.get_or_init(init);
    }

    fn serialize(&self, event: &HookEvent) -> Option<Bytes> {
        match serde_json::to_vec(event) {
            Ok(b) => Some(Bytes::from(b)),
            Err(e) => {
                bump(&self.inner.shared.stats.dropped);
                tracing::warn!(event = %event.event, id = %event.id, error = %e,
                    "hook event dropped: cannot serialize it");
                None
            }
        }
    }

    /// Starts the redo task unless one runs, there is no runtime, or nobody can redo.
    fn start_redo(&self) {
        let shared = &self.inner.shared;
        if shared.redo.get().is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !shared.redo_running.swap(true, Ordering::AcqRel) {
            handle.spawn(redo_owed(self.clone()));
        }
    }

    /// Waits until every queued delivery is done (delivered or given up on), at most `limit`;
    /// returns how many are still outstanding then. For a graceful shutdown.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.inner.shared.outstanding.load(Ordering::Acquire);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> HookStats {
        let c = &self.inner.shared.stats;
        HookStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Starts the workers on the current runtime, if there is one and they are not running yet.
    fn ensure_worker(&self) {
        if self.inner.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                "hook event queued; the worker starts with the first emit on a runtime"
            );
            return;
        };
        let mut slot = self.inner.rx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rx, owed_rx)) = slot.take() {
            handle.spawn(worker(rx, Arc::clone(&self.inner.shared)));
            handle.spawn(owed_worker(owed_rx, Arc::clone(&self.inner.shared)));
            self.inner.started.store(true, Ordering::Release);
        }
    }
}

fn target_count(cfg: &HooksConfig) -> usize {
    usize::from(cfg.webhook_url.is_some()) + usize::from(cfg.command.is_some())
}

/// Asks the redo to emit deferred owed events again whenever the owed lane has room, until a
/// pass defers none.
async fn redo_owed(hooks: Hooks) {
    let shared = Arc::clone(&hooks.inner.shared);
    let Some(redo) = shared.redo.get().cloned() else {
        shared.redo_running.store(false, Ordering::Release);
        return;
    };
    // A redo walks every session record: wait for room for a good share of the lane, not one.
    let worth = (shared.owed_capacity / 4).max(1);
    loop {
        tokio::time::sleep(OWED_REDO_INTERVAL).await;
        if shared.owed_room.available_permits() < worth {
            continue;
        }
        shared.owed_deferred.store(false, Ordering::Release);
        if !redo(hooks.clone()).await {
            shared.owed_deferred.store(true, Ordering::Release);
        }
        if shared.owed_deferred.load(Ordering::Acquire) {
            continue;
        }
        shared.redo_running.store(false, Ordering::Release);
        // An event deferred between the check and the store found this task still running
        // and started none: take it over unless another task did.
        if !shared.owed_deferred.load(Ordering::Acquire)
            || shared.redo_running.swap(true, Ordering::AcqRel)
        {
            return;
        }
    }
}

/// Takes cheap events off their queue and starts their deliveries; ends when every [`Hooks`]
/// is gone.
async fn worker(mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    loop {
        let Ok(permit) = Arc::clone(&shared.in_flight).acquire_owned().await else {
            return;
        };
        let Some(job) = rx.recv().await else {
            return;
        };
        start_deliveries(&shared, job, Some(Arc::new(permit)));
    }
}

/// Starts the deliveries of owed events at once: each already holds its place in the lane.
async fn owed_worker(mut rx: mpsc::UnboundedReceiver<Job>, shared: Arc<Shared>) {
    while let Some(job) = rx.recv().await {
        start_deliveries(&shared, job, None);
    }
}

fn start_deliveries(shared: &Arc<Shared>, job: Job, permit: Option<Arc<OwnedSemaphorePermit>>) {
    let job = Arc::new(job);
    if job.cfg.webhook_url.is_some() {
        tokio::spawn(deliver(
            Arc::clone(shared),
            Arc::clone(&job),
            Target::Webhook,
            permit.clone(),
        ));
    }
    if job.cfg.command.is_some() {
        tokio::spawn(deliver(Arc::clone(shared), job, Target::Command, permit));
    }
}

/// Delivers `job` to one target, retrying as configured.
async fn deliver(
    shared: Arc<Shared>,
    job: Arc<Job>,
    target: Target,
    _in_flight: Option<Arc<OwnedSemaphorePermit>>,
) {
    let cfg = &job.cfg;
    let max_attempts = cfg.max_attempts.max(1);
    let attempts = match job.lane {
        Lane::Cheap => &shared.attempts,
        Lane::Owed => &shared.owed_attempts,
    };
    let mut attempt: u32 = 1;
    loop {
        let result = {
            // The semaphore is never closed; without a permit the attempt just runs.
            let _slot = attempts.acquire().await.ok();
            match target {
                Target::Webhook => post_webhook(&shared, &job).await,
                Target::Command => run_command(&job).await,
            }
        };
        match result {
            Ok(()) => {
                bump(&shared.stats.delivered);
                tracing::debug!(target_kind = target.as_str(), event = %job.kind, id = %job.id,
                    attempt, "hook delivered");
                job.target_settled();
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            Err(error) if attempt >= max_attempts => {
                bump(&shared.stats.failed);
                tracing::error!(target_kind = target.as_str(), event = %job.kind, id = %job.id,
                    attempts = attempt, %error, "hook delivery failed; giving up");
                job.target_settled();
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            Err(error) => {
                let delay = backoff(cfg, attempt);
                bump(&shared.stats.retried);
                tracing::warn!(target_kind = target.as_str(), event = %job.kind, id = %job.id,
                    attempt, retry_in = ?delay, %error, "hook delivery attempt failed");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// The wait after failed attempt number `attempt` (1-based): `initial_backoff * 2^(attempt-1)`,
/// at most `max_backoff`, less up to 10% jitter.
fn backoff(cfg: &HooksConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let base = cfg
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(cfg.max_backoff);
    let tenth = u64::try_from(base.as_nanos() / 10).unwrap_or(u64::MAX);
    let jitter =
        std::collections::hash_map::RandomState::new().hash_one(attempt) % tenth.saturating_add(1);
    base.saturating_sub(Duration::from_nanos(jitter))
}

/// `sha256=<hex HMAC-SHA256(key, body)>`.
fn signature(key: &[u8], body: &[u8]) -> Result<String, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| format!("bad secret: {e}"))?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

fn http_client(shared: &Shared) -> Result<&reqwest_s3::Client, String> {
    shared
        .http
        .get_or_init(|| {
            // https needs a process-wide rustls provider (the S3 backend installs the same).
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest_s3::Client::builder()
                .user_agent(concat!("bitsd/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest_s3::redirect::Policy::none())
                .retry(reqwest_s3::retry::never())
                .no_proxy()
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

async fn post_webhook(shared: &Shared, job: &Job) -> Result<(), String> {
    let cfg = &job.cfg;
    let Some(url) = cfg.webhook_url.as_deref() else {
        return Ok(());
    };
    let client = http_client(shared)?;
    let mut req = client
        .post(url)
        .header(reqwest_s3::header::CONTENT_TYPE, "application/json")
        .header("X-Bitsd-Event", job.kind.as_str())
        .header("X-Bitsd-Delivery", job.id.as_str());
    let key = match (&cfg.webhook_secret, &cfg.webhook_secret_file) {
        (Some(s), _) => Some(s.as_bytes().to_vec()),
        (None, Some(path)) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read webhook_secret_file {path:?}: {e}"))?;
            let key = secret_from_file_bytes(bytes);
            if key.is_empty() {
                return Err(format!("webhook_secret_file {path:?} is empty"));
            }
            Some(key)
        }
        (None, None) => None,
    };
    if let Some(key) = key {
        req = req.header("X-Bitsd-Signature", signature(&key, &job.body)?);
    }
    let resp = tokio::time::timeout(cfg.timeout, req.body(job.body.clone()).send())
        .await
        .map_err(|_| format!("no answer within {:?}", cfg.timeout))?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

async fn run_command(job: &Job) -> Result<(), String> {
    let cfg = &job.cfg;
    let Some((program, args)) = cfg.command.as_deref().and_then(<[String]>::split_first) else {
        return Err("hooks.command is empty".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("BITSD_EVENT", job.kind.as_str())
        .env("BITSD_DELIVERY", &job.id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let mut stderr_reader = child.stderr.take().map(|s| tokio::spawn(read_capped(s)));
    let stdin = child.stdin.take();
    let run = tokio::time::timeout(cfg.timeout, async {
        if let Some(mut stdin) = stdin {
            let written = async {
                stdin.write_all(&job.body).await?;
                stdin.write_all(b"\n").await?;
                stdin.shutdown().await
            }
            .await;
            match written {
                // The command need not read its input.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(format!("cannot write the event to its stdin: {e}"));
                }
                _ => {}
            }
        }
        child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for it: {e}"))
    })
    .await;
    let status = match run {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            kill_group(&mut child).await;
            abort(stderr_reader.take());
            return Err(e);
        }
        Err(_) => {
            kill_group(&mut child).await;
            abort(stderr_reader.take());
            return Err(format!("still running after {:?}; killed", cfg.timeout));
        }
    };
    let stderr = match stderr_reader.take() {
        Some(mut task) => match tokio::time::timeout(STDERR_GRACE, &mut task).await {
            Ok(Ok(text)) => text,
            _ => {
                task.abort();
                String::new()
            }
        },
        None => String::new(),
    };
    if status.success() {
        if !stderr.is_empty() {
            tracing::debug!(event = %job.kind, id = %job.id, %stderr, "hook command stderr");
        }
        Ok(())
    } else if stderr.is_empty() {
        Err(format!("{program:?} exited with {status}"))
    } else {
        Err(format!(
            "{program:?} exited with {status}; stderr: {stderr}"
        ))
    }
}

fn abort(task: Option<tokio::task::JoinHandle<String>>) {
    if let Some(task) = task {
        task.abort();
    }
}

/// Kills the command and whatever it started in its process group, and reaps it.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (`process_group(0)`); it touches no memory of ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Reads `r` to its end, keeping the first [`STDERR_LOG_LIMIT`] bytes as (lossy) text.
async fn read_capped(mut r: tokio::process::ChildStderr) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDERR_LOG_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use sha2::Digest;
    use std::time::Instant;

    /// One request the test receiver got.
    struct Recorded {
        headers: HeaderMap,
        body: Bytes,
    }

    struct Receiver {
        /// Status of the n-th answer; the last one repeats.
        statuses: Vec<u16>,
        delay: Duration,
        got: Mutex<Vec<Recorded>>,
    }

    impl Receiver {
        fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
            let got = self.got.lock().unwrap();
            got.iter()
                .map(|r| (r.headers.clone(), r.body.clone()))
                .collect()
        }
    }

    async fn record(
        State(rx): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let n = {
            let mut got = rx.got.lock().unwrap();
            got.push(Recorded { headers, body });
            got.len() - 1
        };
        tokio::time::sleep(rx.delay).await;
        let status = rx.statuses.get(n).or(rx.statuses.last()).copied();
        StatusCode::from_u16(status.unwrap_or(200)).unwrap()
    }

    /// A loopback HTTP receiver; returns its URL.
    async fn receiver(statuses: &[u16], delay: Duration) -> (String, Arc<Receiver>) {
        let rx = Arc::new(Receiver {
            statuses: statuses.to_vec(),
            delay,
            got: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(Arc::clone(&rx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/hook"), rx)
    }

    fn fast(mut cfg: HooksConfig) -> Arc<HooksConfig> {
        cfg.initial_backoff = Duration::from_millis(5);
        cfg.max_backoff = Duration::from_millis(20);
        cfg.timeout = Duration::from_secs(5);
        cfg.validate().unwrap();
        Arc::new(cfg)
    }

    fn webhook(url: &str) -> HooksConfig {
        HooksConfig {
            webhook_url: Some(url.to_string()),
            ..HooksConfig::default()
        }
    }

    fn command(argv: &[&str]) -> HooksConfig {
        HooksConfig {
            command: Some(argv.iter().map(|s| s.to_string()).collect()),
            ..HooksConfig::default()
        }
    }

    fn event(kind: EventKind) -> HookEvent {
        HookEvent::new(
            kind,
            "{7B1D3C5E-0000-4000-8000-000000000001}".into(),
            "/upload/".into(),
            "dir/file.bin".into(),
            Some("alice".into()),
        )
    }

    async fn wait_for(hooks: &Hooks, done: impl Fn(&HookStats) -> bool) -> HookStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = hooks.stats();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// HMAC-SHA256 written out from RFC 2104, independent of the `hmac` crate.
    fn reference_hmac(key: &[u8], msg: &[u8]) -> String {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
        h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn reference_hmac_matches_rfc4231_and_signature() {
        // RFC 4231 test case 2.
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            reference_hmac(b"Jefe", b"what do ya want for nothing?"),
            want
        );
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?").unwrap(),
            format!("sha256={want}")
        );
        let long_key = [0xaau8; 131];
        assert_eq!(
            signature(&long_key, b"x").unwrap(),
            format!("sha256={}", reference_hmac(&long_key, b"x"))
        );
    }

    #[tokio::test]
    async fn webhook_delivers_once_with_headers_and_signature() {
        let (url, rx) = receiver(&[200], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            webhook_secret: Some("s3cret".into()),
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        let ev = event(EventKind::UploadCompleted).with_upload(42, "ABCDEF");
        let id = ev.id.clone();
        hooks.emit(&cfg, ev);
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!(
            s,
            HookStats {
                delivered: 1,
                ..HookStats::default()
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1, "delivered exactly once");
        let (h, body) = &reqs[0];
        assert_eq!(header(h, "content-type"), "application/json");
        assert_eq!(header(h, "x-bitsd-event"), "upload_completed");
        assert_eq!(header(h, "x-bitsd-delivery"), id);
        assert!(header(h, "user-agent").starts_with("bitsd/"));
        assert_eq!(
            header(h, "x-bitsd-signature"),
            format!("sha256={}", reference_hmac(b"s3cret", body))
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["event"], "upload_completed");
        assert_eq!(v["session"], "{7B1D3C5E-0000-4000-8000-000000000001}");
        assert_eq!(v["vdir"], "/upload/");
        assert_eq!(v["destination"], "dir/file.bin");
        assert_eq!(v["identity"], "alice");
        assert_eq!(v["size"], 42);
        assert_eq!(v["sha256"], "abcdef");
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
    }

    #[tokio::test]
    async fn webhook_without_secret_has_no_signature() {
        let (url, rx) = receiver(&[204], Duration::ZERO).await;
        let hooks = Hooks::new(8);
        let ev = event(EventKind::SessionCreated);
        hooks.emit(&fast(webhook(&url)), ev);
        wait_for(&hooks, |s| s.delivered == 1).await;
        let reqs = rx.requests();
        assert!(reqs[0].0.get("x-bitsd-signature").is_none());
        let v: serde_json::Value = serde_json::from_slice(&reqs[0].1).unwrap();
        assert!(v["size"].is_null() && v["sha256"].is_null());
    }

    #[tokio::test]
    async fn webhook_retries_until_success() {
        let (url, rx) = receiver(&[500, 500, 200], Duration::ZERO).await;
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            webhook_secret: Some("k".into()),
            ..webhook(&url)
        });
        hooks.emit(&cfg, event(EventKind::SessionCancelled));
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!(
            s,
            HookStats {
                delivered: 1,
                retried: 2,
                ..HookStats::default()
            }
        );
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 3);
        // Every attempt is the same delivery: same id, body and signature.
        for (h, body) in &reqs[1..] {
            assert_eq!(
                header(h, "x-bitsd-delivery"),
                header(&reqs[0].0, "x-bitsd-delivery")
            );
            assert_eq!(
                header(h, "x-bitsd-signature"),
                header(&reqs[0].0, "x-bitsd-signature")
            );
            assert_eq!(body, &reqs[0].1);
        }
    }

    #[tokio::test]
    async fn webhook_gives_up_after_max_attempts() {
        let (url, rx) = receiver(&[500], Duration::ZERO).await;
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 3,
            ..webhook(&url)
        });
        hooks.emit(&cfg, event(EventKind::SessionExpired));
        let s = wait_for(&hooks, |s| s.failed == 1).await;
        assert_eq!(
            s,
            HookStats {
                failed: 1,
                retried: 2,
                ..HookStats::default()
            }
        );
        assert_eq!(rx.requests().len(), 3);
    }

    #[tokio::test]
    async fn webhook_timeout_and_connection_errors_are_retried() {
        // Nobody listens on this port any more: connection refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 2,
            ..webhook(&format!("http://{closed}/hook"))
        });
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.failed == 1).await;
        assert_eq!(s.retried, 1);

        // A receiver slower than the timeout.
        let (url, rx) = receiver(&[200], Duration::from_secs(5)).await;
        let mut slow = webhook(&url);
        slow.max_attempts = 2;
        slow.initial_backoff = Duration::from_millis(5);
        slow.timeout = Duration::from_millis(100);
        let started = Instant::now();
        hooks.emit(&Arc::new(slow), event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.failed == 2).await;
        assert_eq!(s.retried, 2);
        assert_eq!(rx.requests().len(), 2);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn https_webhook_is_attempted() {
        // A plain TCP server that hangs up: the TLS handshake fails, so the delivery fails,
        // but building the https client must work.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 1,
            ..webhook(&format!("https://{addr}/hook"))
        });
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        assert_eq!(wait_for(&hooks, |s| s.failed == 1).await.delivered, 0);
    }

    #[tokio::test]
    async fn slow_or_retrying_receivers_do_not_hold_up_others() {
        let (slow_url, _slow) = receiver(&[200], Duration::from_secs(30)).await;
        let (failing_url, _failing) = receiver(&[500], Duration::ZERO).await;
        let (fast_url, fast_rx) = receiver(&[200], Duration::ZERO).await;
        let hooks = Hooks::new(64);
        // An event waiting 30s for its retry.
        let mut retrying = webhook(&failing_url);
        retrying.initial_backoff = Duration::from_secs(30);
        retrying.max_backoff = Duration::from_secs(30);
        hooks.emit(&Arc::new(retrying), event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.retried == 1).await;
        // All attempt slots but one taken by a receiver that does not answer.
        let slow_cfg = fast(webhook(&slow_url));
        for _ in 0..MAX_CONCURRENT_ATTEMPTS - 1 {
            hooks.emit(&slow_cfg, event(EventKind::SessionCreated));
        }
        hooks.emit(&fast(webhook(&fast_url)), event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!((s.failed, s.retried), (0, 1));
        assert_eq!(fast_rx.requests().len(), 1);
    }

    #[tokio::test]
    async fn command_gets_the_event_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("event.json");
        let env = dir.path().join("env.txt");
        let cfg = fast(command(&[
            "sh",
            "-c",
            r#"cat > "$0"; printf '%s %s' "$BITSD_EVENT" "$BITSD_DELIVERY" > "$1""#,
            out.to_str().unwrap(),
            env.to_str().unwrap(),
        ]));
        let hooks = Hooks::new(8);
        let ev = event(EventKind::UploadCompleted).with_upload(7, "00ff");
        let id = ev.id.clone();
        hooks.emit(&cfg, ev.clone());
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!(s.retried + s.failed + s.dropped, 0);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(v, serde_json::to_value(&ev).unwrap());
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            format!("upload_completed {id}")
        );
    }

    #[tokio::test]
    async fn command_failure_and_timeout_are_retried_then_failed() {
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 2,
            ..command(&["sh", "-c", "echo oops >&2; exit 3"])
        });
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.failed == 1).await;
        assert_eq!((s.retried, s.delivered), (1, 0));

        let mut slow = command(&["sh", "-c", "sleep 30; exit 0"]);
        slow.max_attempts = 1;
        slow.timeout = Duration::from_millis(200);
        let started = Instant::now();
        hooks.emit(&Arc::new(slow), event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.failed == 2).await;
        assert!(started.elapsed() < Duration::from_secs(5));

        // A command that does not read its input still succeeds.
        hooks.emit(&fast(command(&["true"])), event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.delivered == 1).await;
        // One that cannot be started fails.
        let missing = fast(HooksConfig {
            max_attempts: 1,
            ..command(&["/nonexistent/bitsd-hook"])
        });
        hooks.emit(&missing, event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.failed == 3).await;
    }

    #[tokio::test]
    async fn both_targets_are_delivered_independently() {
        let (url, rx) = receiver(&[500], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            max_attempts: 2,
            command: Some(vec!["true".into()]),
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.delivered + s.failed == 2).await;
        assert_eq!(
            s,
            HookStats {
                delivered: 1,
                failed: 1,
                retried: 1,
                dropped: 0
            }
        );
        assert_eq!(rx.requests().len(), 2);
    }

    #[tokio::test]
    async fn settled_runs_once_after_every_target_is_done() {
        // Webhook fails for good after 2 attempts, the command succeeds: settled once, after both.
        let (url, _rx) = receiver(&[500], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            max_attempts: 2,
            command: Some(vec!["true".into()]),
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        let (tx, mut settled) = tokio::sync::mpsc::unbounded_channel();
        hooks.emit_then(
            &cfg,
            event(EventKind::UploadCompleted),
            Some(Box::new(move || {
                let _ = tx.send(());
            })),
        );
        let stats = wait_for(&hooks, |s| s.delivered + s.failed == 2).await;
        assert_eq!((stats.delivered, stats.failed), (1, 1));
        tokio::time::timeout(Duration::from_secs(5), settled.recv())
            .await
            .expect("settled")
            .expect("settled once");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(settled.try_recv().is_err(), "settled ran twice");
        // An event nobody wants is settled at once.
        let (tx, mut settled) = tokio::sync::mpsc::unbounded_channel();
        let none = Arc::new(HooksConfig::default());
        hooks.emit_then(
            &none,
            event(EventKind::UploadCompleted),
            Some(Box::new(move || {
                let _ = tx.send(());
            })),
        );
        assert!(settled.try_recv().is_ok());
    }

    #[tokio::test]
    async fn unwanted_kinds_are_skipped_not_dropped() {
        let (url, rx) = receiver(&[200], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            events: vec![EventKind::UploadCompleted],
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        hooks.emit(&cfg, event(EventKind::UploadCompleted));
        hooks.emit(
            &Arc::new(HooksConfig::default()),
            event(EventKind::UploadCompleted),
        );
        wait_for(&hooks, |s| s.delivered == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(hooks.stats().dropped, 0);
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(header(&reqs[0].0, "x-bitsd-event"), "upload_completed");
    }

    #[tokio::test]
    async fn full_queue_drops_without_blocking() {
        let (url, rx) = receiver(&[200], Duration::ZERO).await;
        let cfg = fast(webhook(&url));
        let hooks = Hooks::new(1);
        // The current-thread runtime cannot run the worker until this task yields, so the
        // second and third events find the queue full.
        let started = Instant::now();
        let first = event(EventKind::SessionCreated);
        let first_id = first.id.clone();
        hooks.emit(&cfg, first);
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(hooks.stats().dropped, 2);
        wait_for(&hooks, |s| s.delivered == 1).await;
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(header(&reqs[0].0, "x-bitsd-delivery"), first_id);
    }

    /// An owed event whose `settled` reports on `tx`.
    fn owed_to(tx: &tokio::sync::mpsc::UnboundedSender<String>, id: &str) -> OwedSettled {
        let (tx, id) = (tx.clone(), id.to_string());
        Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(id);
            })
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_cheap_events_neither_drops_nor_delays_owed_ones() {
        let (slow_url, _slow) = receiver(&[200], Duration::from_secs(30)).await;
        let (fast_url, fast_rx) = receiver(&[200], Duration::ZERO).await;
        let hooks = Hooks::new(4);
        // Every cheap attempt slot taken by a receiver that does not answer, its queue full,
        // and more turned away.
        let slow = fast(HooksConfig {
            timeout: Duration::from_secs(60),
            ..webhook(&slow_url)
        });
        for _ in 0..MAX_CONCURRENT_ATTEMPTS + 4 + 4 + 10 {
            hooks.emit(&slow, event(EventKind::SessionCreated));
        }
        wait_for(&hooks, |s| s.dropped > 0).await;
        let (tx, mut settled) = tokio::sync::mpsc::unbounded_channel();
        let ev = event(EventKind::UploadCompleted).with_upload(1, "00");
        let id = ev.id.clone();
        let started = Instant::now();
        assert_eq!(
            hooks.emit_owed(&fast(webhook(&fast_url)), ev, owed_to(&tx, &id)),
            Owed::Queued
        );
        let got = tokio::time::timeout(Duration::from_secs(5), settled.recv()).await;
        assert_eq!(got.expect("settled").as_deref(), Some(id.as_str()));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(fast_rx.requests().len(), 1);
    }

    #[tokio::test]
    async fn an_owed_event_already_in_the_lane_is_not_queued_twice() {
        let (url, rx) = receiver(&[200], Duration::from_millis(100)).await;
        let cfg = fast(webhook(&url));
        let hooks = Hooks::new(8);
        let (tx, mut settled) = tokio::sync::mpsc::unbounded_channel();
        let ev = event(EventKind::UploadCompleted);
        let id = ev.id.clone();
        assert_eq!(
            hooks.emit_owed(&cfg, ev.clone(), owed_to(&tx, &id)),
            Owed::Queued
        );
        assert_eq!(
            hooks.emit_owed(&cfg, ev.clone(), owed_to(&tx, &id)),
            Owed::AlreadyQueued
        );
        settled.recv().await.expect("settled");
        // Settled and forgotten: the same event may be owed again (a later restart).
        assert_eq!(hooks.emit_owed(&cfg, ev, owed_to(&tx, &id)), Owed::Queued);
        settled.recv().await.expect("settled");
        assert_eq!(rx.requests().len(), 2);
        assert_eq!(hooks.stats().dropped, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_owed_lane_defers_and_the_redo_emits_again() {
        let (url, rx) = receiver(&[200], Duration::from_millis(50)).await;
        let cfg = fast(webhook(&url));
        let hooks = Hooks::with_owed_capacity(8, 2);
        // The caller's durable record of what it owes; `settled` forgets an event.
        let owed: Arc<Mutex<Vec<HookEvent>>> = Arc::default();
        let (tx, mut settled) = tokio::sync::mpsc::unbounded_channel::<String>();
        let settle = {
            let (owed, tx) = (Arc::clone(&owed), tx.clone());
            move |id: String| -> OwedSettled {
                let (owed, tx) = (Arc::clone(&owed), tx.clone());
                Box::new(move || {
                    Box::pin(async move {
                        owed.lock().unwrap().retain(|e| e.id != id);
                        let _ = tx.send(id);
                    })
                })
            }
        };
        let redos = Arc::new(AtomicUsize::new(0));
        {
            let (owed, cfg, settle, redos) = (
                Arc::clone(&owed),
                cfg.clone(),
                settle.clone(),
                Arc::clone(&redos),
            );
            hooks.redo_owed_with(move || {
                Arc::new(move |hooks: Hooks| {
                    redos.fetch_add(1, Ordering::Relaxed);
                    let still: Vec<HookEvent> = owed.lock().unwrap().clone();
                    for ev in still {
                        let id = ev.id.clone();
                        if hooks.emit_owed(&cfg, ev, settle(id)) == Owed::Deferred {
                            break;
                        }
                    }
                    Box::pin(std::future::ready(true))
                })
            });
        }
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            let ev = event(EventKind::UploadCompleted);
            owed.lock().unwrap().push(ev.clone());
            let id = ev.id.clone();
            outcomes.push(hooks.emit_owed(&cfg, ev, settle(id)));
        }
        assert_eq!(outcomes[..2], [Owed::Queued, Owed::Queued]);
        assert!(outcomes[2..].iter().all(|o| *o == Owed::Deferred));
        let mut ids = HashSet::new();
        while ids.len() < 10 {
            let id = tokio::time::timeout(Duration::from_secs(10), settled.recv())
                .await
                .expect("every owed event settles")
                .expect("settled");
            assert!(ids.insert(id), "settled twice");
        }
        assert!(owed.lock().unwrap().is_empty());
        assert!(redos.load(Ordering::Relaxed) >= 4, "redone 2 at a time");
        let s = hooks.stats();
        assert_eq!((s.delivered, s.dropped), (10, 0));
        let delivered: HashSet<String> = rx
            .requests()
            .iter()
            .map(|(h, _)| header(h, "x-bitsd-delivery").to_string())
            .collect();
        assert_eq!(delivered, ids, "each owed event delivered once");
        assert_eq!(rx.requests().len(), 10);
    }

    #[tokio::test]
    async fn a_full_owed_lane_without_a_redo_counts_a_drop_for_emit_then() {
        let (url, _rx) = receiver(&[200], Duration::from_secs(30)).await;
        let cfg = fast(webhook(&url));
        let hooks = Hooks::with_owed_capacity(8, 1);
        hooks.emit_then(
            &cfg,
            event(EventKind::UploadCompleted),
            Some(Box::new(|| {})),
        );
        hooks.emit_then(
            &cfg,
            event(EventKind::UploadCompleted),
            Some(Box::new(|| {})),
        );
        assert_eq!(hooks.stats().dropped, 1);
        // Cheap events still have their own room.
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        assert_eq!(hooks.stats().dropped, 1);
    }

    #[test]
    fn works_when_created_and_emitting_outside_a_runtime() {
        let hooks = Hooks::new(4);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("n");
        let cfg = fast(command(&[
            "sh",
            "-c",
            r#"echo x >> "$0""#,
            out.to_str().unwrap(),
        ]));
        // Queued; no runtime to deliver it yet.
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        assert_eq!(hooks.stats(), HookStats::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            hooks.emit(&cfg, event(EventKind::SessionExpired));
            wait_for(&hooks, |s| s.delivered == 2).await;
        });
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "x\nx\n");
    }

    #[tokio::test]
    async fn secret_file_signs_and_is_read_per_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let (url, rx) = receiver(&[200], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            webhook_secret_file: Some(secret.clone()),
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.delivered == 1).await;
        std::fs::write(&secret, "rotated\r\n").unwrap();
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.delivered == 2).await;
        let reqs = rx.requests();
        for ((h, body), key) in reqs.iter().zip([&b"from-file"[..], b"rotated"]) {
            assert_eq!(
                header(h, "x-bitsd-signature"),
                format!("sha256={}", reference_hmac(key, body))
            );
        }
    }

    #[test]
    fn config_defaults_and_toml() {
        let d = HooksConfig::default();
        assert!(!d.is_enabled());
        assert!(d.validate().is_ok());
        assert_eq!(d.events, EventKind::ALL);
        assert_eq!(d.max_attempts, 8);
        assert_eq!(d.initial_backoff, Duration::from_secs(1));
        assert_eq!(d.max_backoff, Duration::from_secs(300));
        assert_eq!(d.timeout, Duration::from_secs(10));

        let c: HooksConfig = toml::from_str(
            r#"
            webhook_url = "https://hooks.example.com/bits"
            webhook_secret = "k"
            command = ["/usr/local/bin/on-upload", "--quiet"]
            events = ["upload_completed", "session_expired"]
            max_attempts = 3
            initial_backoff = "250ms"
            max_backoff = "1m"
            timeout = "30s"
            "#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert!(c.is_enabled());
        assert!(c.wants(EventKind::UploadCompleted) && !c.wants(EventKind::SessionCreated));
        assert_eq!(c.initial_backoff, Duration::from_millis(250));
        assert_eq!(c.max_backoff, Duration::from_secs(60));
        assert!(!format!("{c:?}").contains("\"k\""), "secret redacted");

        let c: HooksConfig = toml::from_str(r#"command = ["true"]"#).unwrap();
        assert_eq!(c.events, EventKind::ALL);
        assert!(toml::from_str::<HooksConfig>("webhook = \"http://x/\"").is_err());
        assert!(toml::from_str::<HooksConfig>("events = [\"uploaded\"]").is_err());
    }

    #[test]
    fn validate_names_the_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let url = || Some("http://127.0.0.1:8080/hook".to_string());
        let cases: Vec<(HooksConfig, &str)> = vec![
            (
                HooksConfig {
                    webhook_url: Some("/relative/hook".into()),
                    ..HooksConfig::default()
                },
                "webhook_url",
            ),
            (
                HooksConfig {
                    webhook_url: Some("ftp://example.com/x".into()),
                    ..HooksConfig::default()
                },
                "webhook_url",
            ),
            (
                HooksConfig {
                    webhook_url: Some("http://".into()),
                    ..HooksConfig::default()
                },
                "webhook_url",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret: Some(String::new()),
                    ..HooksConfig::default()
                },
                "webhook_secret",
            ),
            (
                HooksConfig {
                    webhook_secret: Some("k".into()),
                    command: Some(vec!["true".into()]),
                    ..HooksConfig::default()
                },
                "webhook_secret",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret: Some("k".into()),
                    webhook_secret_file: Some(empty.clone()),
                    ..HooksConfig::default()
                },
                "webhook_secret_file",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret_file: Some(empty.clone()),
                    ..HooksConfig::default()
                },
                "webhook_secret_file",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret_file: Some(dir.path().join("missing")),
                    ..HooksConfig::default()
                },
                "webhook_secret_file",
            ),
            (
                HooksConfig {
                    command: Some(vec![]),
                    ..HooksConfig::default()
                },
                "command",
            ),
            (
                HooksConfig {
                    command: Some(vec![String::new(), "x".into()]),
                    ..HooksConfig::default()
                },
                "command",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    events: vec![],
                    ..HooksConfig::default()
                },
                "events",
            ),
            (
                HooksConfig {
                    max_attempts: 0,
                    ..HooksConfig::default()
                },
                "max_attempts",
            ),
            (
                HooksConfig {
                    initial_backoff: Duration::ZERO,
                    ..HooksConfig::default()
                },
                "initial_backoff",
            ),
            (
                HooksConfig {
                    initial_backoff: Duration::from_secs(10),
                    max_backoff: Duration::from_secs(1),
                    ..HooksConfig::default()
                },
                "max_backoff",
            ),
            (
                HooksConfig {
                    timeout: Duration::ZERO,
                    ..HooksConfig::default()
                },
                "timeout",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(
                err.to_string().starts_with(&format!("hooks.{key}: ")),
                "{err}"
            );
        }
        let err = HooksConfig {
            webhook_url: Some("nope".into()),
            ..HooksConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.webhook_url: not an absolute http:// or https:// URL: \"nope\""
        );
        assert_eq!(
            HooksConfig {
                command: Some(vec![]),
                ..HooksConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "hooks.command: empty"
        );
        assert_eq!(
            HooksConfig {
                max_attempts: 0,
                ..HooksConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "hooks.max_attempts: must be at least 1"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = HooksConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            ..HooksConfig::default()
        };
        let within = |got: Duration, want: Duration| {
            assert!(
                got <= want && got >= want.mul_f64(0.9),
                "{got:?} vs {want:?}"
            );
        };
        within(backoff(&cfg, 1), Duration::from_secs(1));
        within(backoff(&cfg, 2), Duration::from_secs(2));
        within(backoff(&cfg, 3), Duration::from_secs(4));
        within(backoff(&cfg, 4), Duration::from_secs(5));
        within(backoff(&cfg, 1000), Duration::from_secs(5));
        let huge = HooksConfig {
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            ..HooksConfig::default()
        };
        assert!(backoff(&huge, 40) > Duration::from_secs(1 << 60));
    }

    #[test]
    fn rfc3339_formatting() {
        let at = |s: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
        // Agrees with httpdate on the date and time fields over a spread of days.
        for i in 0..2000u64 {
            let secs = i * 1_234_567 + 86_399;
            let ours = at(secs, 0);
            let theirs = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(secs));
            let parsed: SystemTime = theirs.into();
            assert_eq!(rfc3339(parsed), ours);
            let http = httpdate::fmt_http_date(parsed);
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let day: u32 = http[5..7].parse().unwrap();
            let year: i64 = http[12..16].parse().unwrap();
            assert_eq!(ours[..4].parse::<i64>().unwrap(), year, "{ours} {http}");
            assert_eq!(ours[8..10].parse::<u32>().unwrap(), day, "{ours} {http}");
            assert_eq!(&ours[11..19], &http[17..25], "{ours} {http}");
        }
    }
}
