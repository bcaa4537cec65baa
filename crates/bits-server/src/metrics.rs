//! Prometheus metrics, in a registry of their own (never the process-global default one), so
//! that several engines in one process (tests, embedders) do not share counters.
//!
//! The engine counts session events and durable bytes, the HTTP layer counts requests and
//! error Acks, the notifier counts server-application answers, and the instrumented store
//! times every storage call. `docs/operations.md` describes each family.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bits_proto::Ack;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::event::SessionEvent;

/// Buckets of `bitsd_request_duration_seconds`: a Fragment of tens of MiB from a slow client
/// takes minutes.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Buckets of `bitsd_storage_operation_seconds`: from a cached metadata read to an fsync on a
/// busy disk (and `write`, which streams a whole fragment body).
const STORAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Every metric family of the server.
pub struct Metrics {
    registry: Registry,
    sessions_open: IntGauge,
    sessions_created: IntCounter,
    sessions_completed: IntCounter,
    sessions_closed: IntCounter,
    sessions_cancelled: IntCounter,
    sessions_expired: IntCounter,
    bytes_received: IntCounter,
    request_duration: HistogramVec,
    requests: IntCounterVec,
    errors: IntCounterVec,
    notifications: IntCounterVec,
    storage_duration: HistogramVec,
    hook_deliveries: IntCounterVec,
    admin_auth_failures: IntCounter,
    /// Registered by the first [`set_storage_ready`](Metrics::set_storage_ready): a server that
    /// never probes shows no readiness rather than a made-up one.
    storage_ready: OnceLock<IntGauge>,
    /// Registered by [`set_session_limit`](Metrics::set_session_limit) when there is a limit.
    max_open_sessions: OnceLock<IntGauge>,
}

/// How a notification of the server application ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// The application answered 200.
    Ok,
    /// It answered with another status.
    AppError,
    Timeout,
    /// It could not be reached (connection failed, bad URL).
    Unreachable,
}

impl NotificationOutcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationOutcome::Ok => "ok",
            NotificationOutcome::AppError => "app_error",
            NotificationOutcome::Timeout => "timeout",
            NotificationOutcome::Unreachable => "unreachable",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every family. The names and labels are constants, so creating
    /// them cannot fail (the unit tests below build one).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::error!(error = %e, "metric family not registered");
            }
            c
        }
        let gauge = |name: &str, help: &str| {
            reg(
                &registry,
                IntGauge::new(name, help).expect("constant metric name"),
            )
        };
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("constant metric name"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("constant metric name"),
            )
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("constant metric name"),
            )
        };
        Metrics {
            sessions_open: gauge(
                "bitsd_sessions_open",
                "Sessions not yet closed, cancelled or expired.",
            ),
            sessions_created: counter(
                "bitsd_sessions_created_total",
                "Sessions created (Create-Session).",
            ),
            sessions_completed: counter(
                "bitsd_sessions_completed_total",
                "Uploads whose every byte was received and published.",
            ),
            sessions_closed: counter(
                "bitsd_sessions_closed_total",
                "Sessions ended by Close-Session.",
            ),
            sessions_cancelled: counter(
                "bitsd_sessions_cancelled_total",
                "Sessions ended by Cancel-Session or by an administrator.",
            ),
            sessions_expired: counter(
                "bitsd_sessions_expired_total",
                "Sessions ended by their idle timeout.",
            ),
            bytes_received: counter(
                "bitsd_bytes_received_total",
                "New upload bytes made durable by Fragments (retransmitted bytes are not counted).",
            ),
            request_duration: histogram_vec(
                "bitsd_request_duration_seconds",
                "Time from the request head to the response head, by packet type.",
                &["packet"],
                REQUEST_BUCKETS,
            ),
            requests: counter_vec(
                "bitsd_requests_total",
                "Requests answered, by packet type and HTTP status.",
                &["packet", "status"],
            ),
            errors: counter_vec(
                "bitsd_errors_total",
                "Error Acks sent, by BITS-Error-Code (\"none\" for a 401 or 416 without one).",
                &["hresult"],
            ),
            notifications: counter_vec(
                "bitsd_notifications_total",
                "Notifications of the server application, by outcome.",
                &["outcome"],
            ),
            hook_deliveries: counter_vec(
                "bitsd_hook_deliveries_total",
                "Event hook deliveries per target, by outcome (delivered, retried, failed after \
                 the last attempt, dropped because the queue was full).",
                &["outcome"],
            ),
            admin_auth_failures: counter(
                "bitsd_admin_auth_failures_total",
                "Admin listener requests refused for a wrong admin token.",
            ),
            storage_duration: histogram_vec(
                "bitsd_storage_operation_seconds",
                "Time of each storage backend call, by operation.",
                &["op"],
                STORAGE_BUCKETS,
            ),
            registry,
            storage_ready: OnceLock::new(),
            max_open_sessions: OnceLock::new(),
        }
        .with_known_series()
    }

    /// Shows the label values known in advance at 0 from the start, so dashboards and rate()
    /// see every series before its first event.
    fn with_known_series(self) -> Metrics {
        for packet in PACKET_LABELS {
            self.request_duration.with_label_values(&[packet]);
        }
        for outcome in [
            NotificationOutcome::Ok,
            NotificationOutcome::AppError,
            NotificationOutcome::Timeout,
            NotificationOutcome::Unreachable,
        ] {
            self.notifications.with_label_values(&[outcome.as_str()]);
        }
        self
    }

    /// The registry holding every family (to add more, or to gather them elsewhere).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a session event; `open` is the number of open sessions after it.
    pub fn session_event(&self, event: SessionEvent, open: u64) {
        match event {
            SessionEvent::Created => &self.sessions_created,
            SessionEvent::Completed => &self.sessions_completed,
            SessionEvent::Closed => &self.sessions_closed,
            SessionEvent::Cancelled => &self.sessions_cancelled,
            SessionEvent::Expired => &self.sessions_expired,
        }
        .inc();
        self.set_open(open);
    }

    pub fn set_open(&self, open: u64) {
        self.sessions_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// New bytes made durable by a Fragment.
    pub fn bytes_received(&self, n: u64) {
        if n > 0 {
            self.bytes_received.inc_by(n);
        }
    }

    /// One answered request: `packet` is one of [`PACKET_LABELS`].
    pub fn request(&self, packet: &str, status: u16, elapsed: Duration) {
        self.request_duration
            .with_label_values(&[packet])
            .observe(elapsed.as_secs_f64());
        let status = status.to_string();
        self.requests
            .with_label_values(&[packet, status.as_str()])
            .inc();
    }

    /// An error Ack: counted by its `BITS-Error-Code` (`0x8020001F`), or `none`. Success Acks
    /// are ignored.
    pub fn error_ack(&self, ack: &Ack) {
        if ack.status < 400 && ack.error.is_none() {
            return;
        }
        let code = ack
            .error
            .map(|e| e.code.to_string())
            .unwrap_or_else(|| "none".into());
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    pub fn notification(&self, outcome: NotificationOutcome) {
        self.notifications
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// One storage call of kind `op` took `elapsed`.
    pub fn storage(&self, op: &str, elapsed: Duration) {
        self.storage_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// A request to the admin listener carried credentials that are not its token.
    pub fn admin_auth_failure(&self) {
        self.admin_auth_failures.inc();
    }

    /// Brings `bitsd_hook_deliveries_total` up to the hook dispatcher's own counters.
    pub fn set_hook_stats(&self, stats: crate::hooks::HookStats) {
        for (outcome, value) in [
            ("delivered", stats.delivered),
            ("retried", stats.retried),
            ("failed", stats.failed),
            ("dropped", stats.dropped),
        ] {
            let counter = self.hook_deliveries.with_label_values(&[outcome]);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }

    /// A gauge registered on first use (the name is a constant: creating it cannot fail).
    fn lazy_gauge<'a>(&self, cell: &'a OnceLock<IntGauge>, name: &str, help: &str) -> &'a IntGauge {
        cell.get_or_init(|| {
            let gauge = IntGauge::new(name, help).expect("constant metric name");
            if let Err(e) = self.registry.register(Box::new(gauge.clone())) {
                tracing::error!(error = %e, "metric family not registered");
            }
            gauge
        })
    }

    /// The outcome of the latest storage probe (`bitsd serve` probes every
    /// [`STORAGE_PROBE_INTERVAL`] while the admin listener is on).
    pub fn set_storage_ready(&self, ready: bool) {
        self.lazy_gauge(
            &self.storage_ready,
            "bitsd_storage_ready",
            "1 when the latest storage probe (as /readyz makes it) succeeded, 0 when it failed.",
        )
        .set(i64::from(ready));
    }

    /// `max_open_sessions`, so that alerts can compare `bitsd_sessions_open` with it; no series
    /// when there is no limit (`u64::MAX`, as `0` in a config file reads).
    pub fn set_session_limit(&self, max_open_sessions: u64) {
        if max_open_sessions == u64::MAX {
            return;
        }
        self.lazy_gauge(
            &self.max_open_sessions,
            "bitsd_max_open_sessions",
            "The server-wide max_open_sessions: Create-Session gets 503 at this many open sessions.",
        )
        .set(i64::try_from(max_open_sessions).unwrap_or(i64::MAX));
    }

    /// Adds `bitsd_spool_free_bytes` and `bitsd_spool_size_bytes`, read from the file system
    /// holding `spool` at every scrape (a failed read leaves both out of that scrape).
    pub fn watch_spool(&self, spool: PathBuf) {
        let space = SpoolSpace {
            path: spool,
            free: IntGauge::new(
                "bitsd_spool_free_bytes",
                "Bytes available to bitsd on the file system holding the spool (statvfs f_bavail).",
            )
            .expect("constant metric name"),
            size: IntGauge::new(
                "bitsd_spool_size_bytes",
                "Size of the file system holding the spool, in bytes.",
            )
            .expect("constant metric name"),
        };
        if let Err(e) = self.registry.register(Box::new(space)) {
            tracing::error!(error = %e, "metric family not registered");
        }
    }

    /// The text exposition format (`text/plain; version=0.0.4`) of every family.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// How often `bitsd serve` probes storage for `bitsd_storage_ready`.
pub const STORAGE_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// The spool's file system, measured when the registry is gathered.
struct SpoolSpace {
    path: PathBuf,
    free: IntGauge,
    size: IntGauge,
}

impl prometheus::core::Collector for SpoolSpace {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.free
            .desc()
            .into_iter()
            .chain(self.size.desc())
            .collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Ok(fs) = rustix::fs::statvfs(&self.path) else {
            return Vec::new();
        };
        let bytes =
            |blocks: u64| i64::try_from(blocks.saturating_mul(fs.f_frsize)).unwrap_or(i64::MAX);
        self.free.set(bytes(fs.f_bavail));
        self.size.set(bytes(fs.f_blocks));
        let mut families = self.free.collect();
        families.extend(self.size.collect());
        families
    }
}

/// Content type of [`Metrics::render`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Values of the `packet` label.
pub const PACKET_LABELS: [&str; 8] = [
    "ping",
    "create_session",
    "fragment",
    "close_session",
    "cancel_session",
    "get",
    "head",
    "other",
];

/// The `packet` label of a `BITS_POST` with this packet type.
pub fn packet_label(packet: Option<bits_proto::PacketType>) -> &'static str {
    use bits_proto::PacketType;
    match packet {
        Some(PacketType::Ping) => "ping",
        Some(PacketType::CreateSession) => "create_session",
        Some(PacketType::Fragment) => "fragment",
        Some(PacketType::CloseSession) => "close_session",
        Some(PacketType::CancelSession) => "cancel_session",
        None => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bits_proto::{ErrorContext, HResult};

    #[test]
    fn every_family_is_registered_and_rendered() {
        let m = Metrics::new();
        m.session_event(SessionEvent::Created, 1);
        m.bytes_received(10);
        m.request("fragment", 200, Duration::from_millis(3));
        m.error_ack(&Ack::error(
            500,
            HResult::BG_E_SESSION_NOT_FOUND,
            ErrorContext::RemoteFile,
        ));
        m.error_ack(&Ack::status_only(416));
        m.error_ack(&Ack::ok());
        m.notification(NotificationOutcome::Timeout);
        m.storage("load", Duration::from_micros(50));
        m.admin_auth_failure();
        let text = m.render().unwrap();
        for needle in [
            "bitsd_sessions_open 1",
            "bitsd_sessions_created_total 1",
            "bitsd_sessions_completed_total 0",
            "bitsd_sessions_closed_total 0",
            "bitsd_sessions_cancelled_total 0",
            "bitsd_sessions_expired_total 0",
            "bitsd_bytes_received_total 10",
            "bitsd_request_duration_seconds_count{packet=\"fragment\"} 1",
            "bitsd_requests_total{packet=\"fragment\",status=\"200\"} 1",
            "bitsd_errors_total{hresult=\"0x8020001F\"} 1",
            "bitsd_errors_total{hresult=\"none\"} 1",
            "bitsd_notifications_total{outcome=\"timeout\"} 1",
            "bitsd_storage_operation_seconds_count{op=\"load\"} 1",
            "bitsd_admin_auth_failures_total 1",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        // Nothing probed, no limit, no spool watched: no such series.
        for absent in [
            "bitsd_storage_ready",
            "bitsd_max_open_sessions",
            "bitsd_spool_free_bytes",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn readiness_limit_and_spool_space_once_set() {
        let m = Metrics::new();
        m.set_session_limit(u64::MAX);
        m.set_storage_ready(false);
        let dir = tempfile::tempdir().unwrap();
        m.watch_spool(dir.path().to_path_buf());
        let text = m.render().unwrap();
        assert!(text.contains("bitsd_storage_ready 0"), "{text}");
        assert!(!text.contains("bitsd_max_open_sessions"), "{text}");
        m.set_storage_ready(true);
        m.set_session_limit(100);
        let text = m.render().unwrap();
        assert!(text.contains("bitsd_storage_ready 1"), "{text}");
        assert!(text.contains("bitsd_max_open_sessions 100"), "{text}");
        let value = |name: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        let (free, size) = (
            value("bitsd_spool_free_bytes"),
            value("bitsd_spool_size_bytes"),
        );
        assert!(free > 0 && free <= size, "free {free}, size {size}");
        // A spool that cannot be measured leaves the series out instead of reporting 0 free.
        drop(dir);
        let text = m.render().unwrap();
        assert!(!text.contains("bitsd_spool_free_bytes"), "{text}");
    }
}
