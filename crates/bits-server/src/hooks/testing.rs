//! What the unit tests of the queue and the transports share: a loopback webhook receiver
//! that records what it gets, quick configurations, and a wait on the counters.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;

use super::{EventKind, HookEvent, HookStats, Hooks, HooksConfig};

/// One request the test receiver got.
struct Recorded {
    headers: HeaderMap,
    body: Bytes,
}

pub(super) struct Receiver {
    /// Status of the n-th answer; the last one repeats.
    statuses: Vec<u16>,
    delay: Duration,
    got: Mutex<Vec<Recorded>>,
}

impl Receiver {
    pub(super) fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        let got = self.got.lock().unwrap();
        got.iter()
            .map(|r| (r.headers.clone(), r.body.clone()))
            .collect()
    }
}

async fn record(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
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
pub(super) async fn receiver(statuses: &[u16], delay: Duration) -> (String, Arc<Receiver>) {
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

pub(super) fn fast(mut cfg: HooksConfig) -> Arc<HooksConfig> {
    cfg.initial_backoff = Duration::from_millis(5);
    cfg.max_backoff = Duration::from_millis(20);
    cfg.timeout = Duration::from_secs(5);
    cfg.validate().unwrap();
    Arc::new(cfg)
}

pub(super) fn webhook(url: &str) -> HooksConfig {
    HooksConfig {
        webhook_url: Some(url.to_string()),
        ..HooksConfig::default()
    }
}

pub(super) fn command(argv: &[&str]) -> HooksConfig {
    HooksConfig {
        command: Some(argv.iter().map(|s| s.to_string()).collect()),
        ..HooksConfig::default()
    }
}

pub(super) fn event(kind: EventKind) -> HookEvent {
    HookEvent::new(
        kind,
        crate::clock::Clock::now_ms(&crate::clock::SystemClock),
        "{7B1D3C5E-0000-4000-8000-000000000001}".into(),
        "/upload/".into(),
        "dir/file.bin".into(),
        Some("alice".into()),
    )
}

pub(super) async fn wait_for(hooks: &Hooks, done: impl Fn(&HookStats) -> bool) -> HookStats {
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

pub(super) fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}
