//! The BITS upload server: session engine, storage, and HTTP layer.

pub mod activity;
pub mod auth;
pub mod capture;
pub mod clock;
pub mod config;
pub mod digest;
pub mod engine;
pub mod error;
pub mod event;
pub mod hooks;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod prefix;
pub mod principal;
pub mod store;
pub mod target;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use config::{ServerConfig, VdirConfig};
pub use engine::Engine;
pub use error::BitsError;

/// Builds an engine over the configured storage backend, running start-up recovery.
pub async fn open_engine(
    config: Arc<ServerConfig>,
) -> Result<(Arc<Engine>, engine::RecoveryReport), std::io::Error> {
    let (sessions, data): (Arc<dyn store::SessionStore>, Arc<dyn store::DataStore>) =
        match &config.storage {
            config::StorageConfig::Fs => {
                let (records, fs) = store::fs::open_local(&config.spool_dir, config.fsync)
                    .map_err(std::io::Error::other)?;
                let fs = Arc::new(
                    fs.with_body_budget(config.max_buffered_body_bytes)
                        .with_min_free_space(config.min_free_space),
                );
                for v in config
                    .vdirs
                    .iter()
                    .filter(|v| v.upload_enabled && !v.root.to_string_lossy().contains("{user}"))
                {
                    std::fs::create_dir_all(&v.root)?;
                }
                (records, fs)
            }
            config::StorageConfig::S3(s3) => {
                let s3 = Arc::new(
                    store::object::ObjectBackend::s3(s3.clone())
                        .map_err(std::io::Error::other)?
                        .with_body_budget(config.max_buffered_body_bytes, config.body_idle_timeout),
                );
                s3.prepare_index().await.map_err(std::io::Error::other)?;
                (s3.clone(), s3)
            }
            config::StorageConfig::Azure(azure) => {
                let azure = Arc::new(
                    store::object::ObjectBackend::azure(azure.clone())
                        .map_err(std::io::Error::other)?
                        .with_body_budget(config.max_buffered_body_bytes, config.body_idle_timeout),
                );
                azure.prepare_index().await.map_err(std::io::Error::other)?;
                (azure.clone(), azure)
            }
        };
    // Every storage call is timed into the engine's metrics.
    let metrics = Arc::new(metrics::Metrics::new());
    let timed = Arc::new(store::instrumented::Instrumented::new(
        sessions,
        data,
        metrics.clone(),
    ));
    let engine = Arc::new(Engine::with_metrics(config, timed.clone(), timed, metrics));
    let report = engine.recover().await.map_err(std::io::Error::other)?;
    engine.metrics().set_open(engine.open_sessions());
    // The rest of the records are read while the server already answers.
    let building = engine.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match building.build_registry().await {
            Ok(r) if r.sessions > 0 => tracing::info!(
                sessions = r.sessions,
                removed = r.removed,
                reconciled = r.reconciled,
                tombstones_forgotten = r.tombstones_forgotten,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "registry built"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the session records failed; limits count only what was read")
            }
        }
    });
    Ok((engine, report))
}

/// Runs the cleanup sweep every `interval` (and, on a shared store, the registry refresh every
/// `registry_refresh_interval`) until the task is aborted.
pub fn spawn_cleanup(engine: Arc<Engine>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A farm node also reconciles its open sessions with the store, more often.
        let mut refresh = engine.registry_refresh_interval().map(|every| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Start-up recovery has just built the registry from the store.
            t.reset();
            t
        });
        loop {
            let refresh_due = async {
                match refresh.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = refresh_due => {
                    if let Err(e) = engine.refresh_registry(Duration::ZERO).await {
                        tracing::warn!(error = %e, "could not reconcile the open sessions with the store");
                    }
                    continue;
                }
            }
            match engine.sweep().await {
                Ok(r) if r.expired + r.tombstones_removed > 0 => {
                    tracing::info!(
                        expired = r.expired,
                        tombstones_removed = r.tombstones_removed,
                        "cleanup pass"
                    )
                }
                Ok(_) => tracing::debug!("cleanup pass: nothing to do"),
                Err(e) => tracing::error!(error = %e, "cleanup pass failed"),
            }
            memory::reclaim();
        }
    })
}
