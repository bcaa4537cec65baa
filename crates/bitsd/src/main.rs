//! `bitsd`: the BITS upload server daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bits_server::ServerConfig;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "bitsd", version, about = "BITS upload server")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `serve`, accepted without the command name too.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Parse and validate a config file, then exit.
    CheckConfig {
        #[arg(long, short, env = "BITSD_CONFIG")]
        config: PathBuf,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML config file; without one, built-in defaults are used.
    #[arg(long, short, env = "BITSD_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding `listen` in the config.
    #[arg(long, env = "BITSD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Storage root of the first upload vdir, overriding its `root`.
    #[arg(long, env = "BITSD_ROOT")]
    root: Option<PathBuf>,
    /// Spool directory for sessions in progress, overriding `spool_dir`.
    #[arg(long, env = "BITSD_SPOOL")]
    spool: Option<PathBuf>,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<ServerConfig> {
    let config: ServerConfig = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => ServerConfig::default(),
    };
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BITSD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            load_config(Some(&config))?.validate()?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(spool) = args.spool {
        config.spool_dir = spool;
    }
    if let (Some(root), Some(vdir)) = (args.root, config.vdirs.first_mut()) {
        vdir.root = root;
    }
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(Arc::new(config)))
}

async fn run(config: Arc<ServerConfig>) -> anyhow::Result<()> {
    let (engine, recovery) = bits_server::open_fs_engine(config.clone())
        .await
        .with_context(|| format!("opening spool {}", config.spool_dir.display()))?;
    tracing::info!(
        sessions = recovery.sessions,
        reconciled = recovery.reconciled,
        published = recovery.published,
        removed = recovery.removed,
        unreadable = recovery.unreadable,
        "recovery done"
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    for v in &config.vdirs {
        let mode = if v.upload_enabled {
            "uploads enabled"
        } else {
            "uploads disabled"
        };
        println!(
            "bitsd: http://{addr}{} -> {} ({mode})",
            v.prefix,
            v.root.display()
        );
    }
    println!("bitsd: spool {}", config.spool_dir.display());
    println!("bitsd listening on {addr}");
    let cleanup = bits_server::spawn_cleanup(engine.clone(), config.cleanup_interval);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(bits_server::http::serve(listener, engine, shutdown));
    shutdown_signal().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    cleanup.abort();
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("shutdown grace period over; exiting with requests still open"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
