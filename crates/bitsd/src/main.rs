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
    /// Add or replace a user in a Basic-auth users file (argon2id hash). The password is read
    /// from the terminal, or from standard input with --password-stdin.
    Passwd {
        /// The users file (created if missing).
        file: PathBuf,
        user: String,
        #[arg(long)]
        password_stdin: bool,
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
        Some(Command::Passwd {
            file,
            user,
            password_stdin,
        }) => passwd(&file, &user, password_stdin),
        None => serve(cli.serve),
    }
}

fn passwd(file: &std::path::Path, user: &str, from_stdin: bool) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        anyhow::bail!("a user name must be non-empty and contain no ':' or control characters");
    }
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password(format!("password for {user}: "))?;
        if rpassword::prompt_password("again: ")? != first {
            anyhow::bail!("the passwords differ");
        }
        first
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    let hash = bits_server::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| l.split_once(':').map(|(n, _)| n) != Some(user))
        .map(String::from)
        .collect();
    lines.push(format!("{user}:{hash}"));
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n")?;
    std::fs::rename(&tmp, file)?;
    println!("{}: {user} set", file.display());
    Ok(())
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
    let (engine, recovery) = bits_server::open_engine(config.clone())
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
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(
            bits_server::tls::TlsState::new(t.clone())
                .context("loading TLS certificate and key")?,
        )),
        None => None,
    };
    let frontend = Arc::new(bits_server::http::Frontend::new(
        engine.clone(),
        tls.clone(),
    )?);
    let http = if config.http_enabled {
        let l = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Some(l)
    } else {
        None
    };
    let https = match &tls {
        Some(t) => Some(
            TcpListener::bind(t.listen())
                .await
                .with_context(|| format!("binding {}", t.listen()))?,
        ),
        None => None,
    };
    let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
    let https_addr = https.as_ref().map(|l| l.local_addr()).transpose()?;
    for v in &config.vdirs {
        let mode = if v.upload_enabled {
            "uploads enabled"
        } else {
            "uploads disabled"
        };
        let base = match (http_addr, https_addr) {
            (Some(a), _) => format!("http://{a}"),
            (None, Some(a)) => format!("https://{a}"),
            (None, None) => "-".into(),
        };
        println!(
            "bitsd: {base}{} -> {} ({mode}, auth {:?})",
            v.prefix,
            v.root.display(),
            v.auth
        );
    }
    println!("bitsd: spool {}", config.spool_dir.display());
    if let Some(a) = https_addr {
        println!("bitsd listening (tls) on {a}");
    }
    if let Some(a) = http_addr {
        println!("bitsd listening on {a}");
    }
    println!("bitsd ready");
    if let Some(tls) = tls.clone() {
        tokio::spawn(reload_tls_on_sighup(tls));
    }
    let cleanup = bits_server::spawn_cleanup(engine.clone(), config.cleanup_interval);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(bits_server::http::serve(frontend, http, https, shutdown));
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

/// SIGHUP: re-read the TLS certificate, key and client CA; open connections keep theirs.
async fn reload_tls_on_sighup(tls: Arc<bits_server::tls::TlsState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous configuration")
            }
        }
    }
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
