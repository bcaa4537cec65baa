//! `bitsd`: the BITS upload server daemon.

mod admin_client;
mod config_file;
mod fd_limit;
mod logging;
mod passwd;
mod replay;
mod tls_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bits_server::ServerConfig;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "bitsd", version, about = "BITS upload server")]
#[command(
    long_about = "bitsd speaks Microsoft's BITS Upload Protocol: Windows machines (bitsadmin, \
                  Start-BitsTransfer, the BITS COM API) upload files to it resumably over HTTP(S). \
                  Without a command it serves, as `bitsd serve` does."
)]
#[command(
    after_long_help = "Files: /etc/bitsd/bitsd.toml (the Debian package's config), \
    /usr/share/doc/bitsd/ (README.md, operations.md, security.md, examples/). \
    `bitsd check-config --config FILE` validates a config. Environment: BITSD_CONFIG, \
    BITSD_LISTEN, BITSD_ROOT, BITSD_SPOOL, BITSD_CAPTURE, BITSD_LOG (a tracing filter, e.g. debug), \
    BITSD_LOG_FORMAT. See also bits(1)."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Log format on standard error: `human` (coloured on a terminal) or `json` (one object per
    /// line, for log collectors).
    #[arg(long, global = true, env = "BITSD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
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
        /// Read the password from the first line of standard input instead of asking on the
        /// terminal (scripts, provisioning: `printf '%s\n' "$PW" | bitsd passwd --password-stdin FILE USER`).
        #[arg(long)]
        password_stdin: bool,
        /// Store the NT hash NTLM needs (`name:$NT$…`, password-equivalent) instead of an
        /// argon2 hash for Basic.
        #[arg(long)]
        ntlm: bool,
    },
    /// Administer the sessions of a running server through its admin listener.
    Sessions {
        #[command(subcommand)]
        command: admin_client::SessionsCommand,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
    },
    /// Replay a capture (`capture_dir`, `serve --capture`) against a server (bitsd, IIS, …)
    /// and print where its answers differ from the recorded ones. Exit status 1 if any do.
    Replay(replay::ReplayArgs),
    /// Run a cleanup pass (expire idle sessions, forget old tombstones) on a running server now.
    Gc {
        #[command(flatten)]
        admin: admin_client::AdminArgs,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) to standard
    /// output, e.g. `bitsd completions bash > ~/.local/share/bash-completion/completions/bitsd`.
    Completions {
        #[arg(value_enum)]
        shell: bits_client::manual::Shell,
    },
    /// TLS helpers: `bitsd tls selfsigned --out DIR` writes a test CA and a server certificate.
    Tls {
        #[command(subcommand)]
        command: tls_cmd::TlsCommand,
    },
    /// Write the man pages (bitsd.8 and one per command) into DIR (for packaging).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
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
    /// Record every BITS exchange in this directory (`capture_dir`), for `bitsd replay`.
    #[arg(long, env = "BITSD_CAPTURE")]
    capture: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Both formats escape control characters in what they log (`logging.rs`): logged text comes
/// from clients and must neither forge records nor drive the terminal.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BITSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => logs
            .with_writer(logging::JsonStderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Human => logs
            .with_writer(std::io::stderr)
            .fmt_fields(logging::EscapedFields)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            match config_file::check_config(&config) {
                Ok(warnings) => {
                    for w in warnings {
                        eprintln!("bitsd check-config: warning: {}: {w}", config.display());
                    }
                }
                Err(e) => {
                    // One message naming the bad key, without the backtrace RUST_BACKTRACE
                    // would add.
                    eprintln!("bitsd check-config: {e:#}");
                    std::process::exit(1);
                }
            }
            println!("{}: ok", config.display());
            Ok(())
        }
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Passwd {
            file,
            user,
            password_stdin,
            ntlm,
        }) => passwd::passwd(&file, &user, password_stdin, ntlm),
        Some(Command::Sessions { command, admin }) => {
            exit_on_error("sessions", admin_client::sessions(&admin, &command))
        }
        Some(Command::Gc { admin, json }) => exit_on_error("gc", admin_client::gc(&admin, json)),
        Some(Command::Tls { command }) => tls_cmd::run(&command),
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            let out = &mut std::io::stdout().lock();
            bits_client::manual::write_completions(Cli::command(), "bitsd", shell, out)?;
            Ok(())
        }
        Some(Command::Manpages { dir }) => {
            use clap::CommandFactory;
            for page in bits_client::manual::write_man_pages(Cli::command(), "8", &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?
            {
                println!("{}", page.display());
            }
            Ok(())
        }
        Some(Command::Replay(args)) => match replay::replay(&args) {
            Ok(0) => Ok(()),
            Ok(_) => std::process::exit(1),
            Err(e) => {
                eprintln!("bitsd replay: {e:#}");
                std::process::exit(2);
            }
        },
        None => serve(cli.serve),
    }
}

/// One line naming what failed (no backtrace), exit status 1.
fn exit_on_error(command: &str, result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = result {
        eprintln!("bitsd {command}: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = config_file::load_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(spool) = args.spool {
        config.spool_dir = spool;
    }
    if let Some(dir) = args.capture {
        config.capture_dir = Some(dir);
    }
    if let (Some(root), Some(vdir)) = (args.root, config.vdirs.first_mut()) {
        vdir.root = root;
    }
    config.validate()?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    fd_limit::apply(&mut config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(Arc::new(config)))
}

async fn run(config: Arc<ServerConfig>) -> anyhow::Result<()> {
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(
            bits_server::tls::TlsState::new(t.clone())
                .context("loading TLS certificate and key")?,
        )),
        None => None,
    };
    // Bound before the store is opened: a farm node waiting for its store answers meanwhile.
    let http = if config.http_enabled {
        let l = bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Some(l)
    } else {
        None
    };
    let https = match &tls {
        Some(t) => Some(
            bind(t.listen())
                .await
                .with_context(|| format!("binding {}", t.listen()))?,
        ),
        None => None,
    };
    let admin = match config.admin.listen {
        Some(addr) => Some(
            bind(addr)
                .await
                .with_context(|| format!("binding admin.listen {addr}"))?,
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
        // Only URLs that work: plain HTTP to a `require_tls` vdir is refused.
        let bases: Vec<String> = http_addr
            .filter(|_| !v.require_tls)
            .map(|a| format!("http://{a}"))
            .into_iter()
            .chain(https_addr.map(|a| format!("https://{a}")))
            .collect();
        if bases.is_empty() {
            println!(
                "bitsd: no listener serves {} -> {} ({mode}{})",
                v.prefix,
                v.root.display(),
                if v.require_tls { ", require_tls" } else { "" }
            );
        }
        for base in bases {
            println!(
                "bitsd: {base}{} -> {} ({mode}, auth {:?})",
                v.prefix,
                v.root.display(),
                v.auth
            );
        }
    }
    println!("bitsd: spool {}", config.spool_dir.display());
    if let Some(a) = https_addr {
        println!("bitsd listening (tls) on {a}");
    }
    if let Some(a) = http_addr {
        println!("bitsd listening on {a}");
    }
    if let Some(l) = &admin {
        let a = l.local_addr()?;
        println!("bitsd admin listening on {a}");
    }
    let (engine, recovery) = open_when_reachable(&config, http.as_ref(), admin.as_ref()).await?;
    tracing::info!(
        sessions = recovery.sessions,
        reconciled = recovery.reconciled,
        published = recovery.published,
        removed = recovery.removed,
        unreadable = recovery.unreadable,
        "recovery done"
    );
    let metrics = engine.metrics();
    metrics.set_session_limit(config.max_open_sessions);
    // The spool's free space, where the store keeps its data on a local file system.
    if let Some(dir) = engine.storage_info().local_dir {
        metrics.watch_spool(dir);
    }
    if config.admin.listen.is_some() {
        tokio::spawn(watch_storage(engine.clone()));
    }
    let mut frontend = bits_server::http::Frontend::new(engine.clone(), tls.clone())?;
    if let Some(dir) = &config.capture_dir {
        let budget = bits_server::capture::Budget {
            max_bytes: config.capture_max_bytes,
            max_files: config.capture_max_files,
        };
        let capture = bits_server::capture::Capture::open(dir, budget)?;
        let held = capture.usage();
        tracing::warn!(
            dir = %dir.display(),
            files = held.files,
            bytes_on_disk = held.bytes,
            "capturing every BITS exchange (heads with values outside the allow-list redacted, body lengths and digests)"
        );
        frontend = frontend.with_capture(capture);
    }
    let frontend = Arc::new(frontend);
    // Installed before "ready" and whatever the config: SIGHUP's default action is to exit, so
    // a `systemctl reload` racing the start, or on a server without TLS, would kill it.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    tokio::spawn(reload_on_sighup(hup, frontend.clone()));
    println!("bitsd ready");
    let cleanup = bits_server::spawn_cleanup(engine.clone(), config.cleanup_interval);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(listener) = admin {
        let mut rx = stop_rx.clone();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = bits_server::http::admin::serve_admin(engine, listener, stopped).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    let server = tokio::spawn(bits_server::http::serve(frontend, http, https, shutdown));
    shutdown_signal().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    cleanup.abort();
    // One grace period for both: the requests in flight, then the hook deliveries they queued.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    match tokio::time::timeout_at(deadline, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("shutdown grace period over; exiting with requests still open"),
    }
    let left = engine
        .drain_hooks(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if left > 0 {
        tracing::warn!(
            left,
            "exiting with hook deliveries pending (owed upload_completed events are delivered again at the next start)"
        );
    }
    Ok(())
}

/// Opens the engine. A farm node whose object store does not answer yet (booted before it, as
/// compose files and boot orders often have it) keeps trying, every 1 s doubling to 30 s,
/// while its listeners answer for it (`serve_unready`: `/healthz` 200, `/readyz` 503, BITS
/// requests the transient 503 Ack); the TLS listener's clients wait in its backlog. A local
/// spool is not waited for: what fails there is for the operator to fix, and bitsd says so.
async fn open_when_reachable(
    config: &Arc<ServerConfig>,
    http: Option<&TcpListener>,
    admin: Option<&TcpListener>,
) -> anyhow::Result<(
    Arc<bits_server::Engine>,
    bits_server::engine::RecoveryReport,
)> {
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    const LAST_RETRY: Duration = Duration::from_secs(30);
    let failed = match bits_server::open_engine(config.clone()).await {
        Ok(opened) => return Ok(opened),
        Err(e) if config.storage.is_network_service() => e,
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("opening spool {}", config.spool_dir.display())))
        }
    };
    tracing::error!(error = %failed, "the store does not answer: retrying (meanwhile /readyz answers 503 and BITS requests the transient 503)");
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
    let unready =
        bits_server::http::serve_unready(http, admin, config.header_read_timeout, async move {
            let _ = opened_rx.await;
        });
    let retry = async {
        let mut delay = FIRST_RETRY;
        let opened = loop {
            tokio::time::sleep(delay).await;
            match bits_server::open_engine(config.clone()).await {
                Ok(opened) => break opened,
                Err(e) => {
                    tracing::warn!(error = %e, next_try_in = ?(delay * 2).min(LAST_RETRY), "the store still does not answer");
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        tracing::info!("the store answers: starting");
        let _ = opened_tx.send(());
        opened
    };
    let (opened, served) = tokio::join!(retry, unready);
    served.context("answering while the store was unreachable")?;
    Ok(opened)
}

/// Pending connections the kernel queues for each listener while bitsd is at its connection
/// cap (std's 128 made the 129th waiting client's SYN be dropped and retried for seconds).
/// The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` for listening with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as std does, so a
/// restart does not wait for the previous process's connections in TIME_WAIT).
async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Keeps `bitsd_storage_ready` current for alerts (the admin listener's /readyz answers only
/// whoever asks), and logs each change of readiness once.
async fn watch_storage(engine: Arc<bits_server::engine::Engine>) {
    let every = bits_server::metrics::STORAGE_PROBE_INTERVAL;
    let limit = engine
        .config()
        .admin
        .probe_timeout
        .unwrap_or(bits_server::http::admin::DEFAULT_PROBE_TIMEOUT);
    let mut was_ready = true;
    loop {
        // A hung backend is as unready as a failing one.
        let probe = tokio::time::timeout(limit, engine.probe_storage()).await;
        let ready = matches!(probe, Ok(Ok(())));
        engine.metrics().set_storage_ready(ready);
        match (was_ready, probe) {
            (true, Ok(Err(e))) => tracing::error!(error = %e, "storage not ready"),
            (true, Err(_)) => {
                tracing::error!(timeout = ?limit, "storage not ready: the probe did not finish")
            }
            (false, Ok(Ok(()))) => tracing::info!("storage ready again"),
            _ => {}
        }
        was_ready = ready;
        tokio::time::sleep(every).await;
    }
}

/// SIGHUP: re-read the users files, and the TLS certificate, key and client CA when configured;
/// open connections keep theirs. What fails to load keeps its previous version (logged).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    frontend: Arc<bits_server::http::Frontend>,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading users files and TLS configuration");
        let frontend = frontend.clone();
        // File reads and one argon2 hash per users file: off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || frontend.reload()).await {
            tracing::error!(error = %e, "reload failed");
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
