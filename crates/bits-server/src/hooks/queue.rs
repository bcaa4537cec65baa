//! The dispatcher ([`Hooks`]): the two lanes (cheap and owed), their workers, the retries with
//! backoff, and the counters. Each attempt is handed to a transport ([`super::webhook`],
//! [`super::command`]), which only says whether it was a delivery.

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::command;
use super::event::{EventKind, HookEvent};
use super::webhook::WebhookClient;
use crate::config::hooks::HooksConfig;

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
    /// The webhook transport; its HTTP client is built on the first webhook delivery.
    webhook: WebhookClient,
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
                    webhook: WebhookClient::default(),
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
                Target::Webhook => {
                    shared
                        .webhook
                        .post(&job.cfg, job.kind, &job.id, &job.body)
                        .await
                }
                Target::Command => command::run(&job.cfg, job.kind, &job.id, &job.body).await,
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use std::time::Instant;

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
}
