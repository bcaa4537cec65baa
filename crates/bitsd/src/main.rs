//! `bitsd`: the BITS upload server daemon.

mod admin_client;

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
        #[arg(long)]
        password_stdin: bool,
    },
    /// Administer the sessions of a running server through its admin listener.
    Sessions {
        #[command(subcommand)]
        command: admin_client::SessionsCommand,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
    },
    /// Run a cleanup pass (expire idle sessions, forget old tombstones) on a running server now.
    Gc {
        #[command(flatten)]
        admin: admin_client::AdminArgs,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
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
            toml::from_str(&text).map_err(|e| {
                // toml names unknown and missing keys, but a wrong value only by its position.
                let key = e.span().and_then(|s| toml_key_at(&text, s.start));
                let key = key.map(|k| format!(" (key `{k}`)")).unwrap_or_default();
                anyhow::Error::new(e).context(format!("parsing {}{key}", p.display()))
            })?
        }
        None => ServerConfig::default(),
    };
    Ok(config)
}

/// The dotted key, as a user would name it (`vdir[1].max_fragment_size`, `tls.cert`), of the
/// TOML line holding byte `offset`; the table name when that line is a table header. Good enough
/// for error messages, not a TOML parser.
fn toml_key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    // Each `[[array]]` table seen so far and the index of its latest element.
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let header = match t.strip_prefix("[[") {
            Some(r) => r.split_once("]]").map(|(n, _)| (n, true)),
            None => t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(n, _)| (n, false)),
        };
        if let Some((name, is_array)) = header {
            let name: Vec<&str> = name
                .split('.')
                .map(|c| c.trim().trim_matches('"'))
                .collect();
            let name = name.join(".");
            // `[vdir.x]` after `[[vdir]]` belongs to the latest vdir element.
            table = match arrays
                .iter()
                .filter(|(a, _)| name.starts_with(&format!("{a}.")))
                .max_by_key(|(a, _)| a.len())
            {
                Some((a, i)) => format!("{a}[{i}]{}", &name[a.len()..]),
                None => name.clone(),
            };
            if is_array {
                let i = match arrays.iter_mut().find(|(a, _)| *a == name) {
                    Some((_, i)) => {
                        *i += 1;
                        *i
                    }
                    None => {
                        arrays.push((name, 0));
                        0
                    }
                };
                table = format!("{table}[{i}]");
            }
        }
        if offset < start + line.len() {
            if header.is_some() {
                return Some(table);
            }
            let key = t.split_once('=')?.0.trim().trim_matches('"');
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        start += line.len();
    }
    None
}

/// `check-config`: what `serve` checks before it binds — syntax, validation, and the files the
/// config names (TLS certificate, key and client CA; Basic-auth users files).
fn check_config(path: &PathBuf) -> anyhow::Result<()> {
    let config = load_config(Some(path))?;
    let checks = || -> anyhow::Result<()> {
        config.validate()?;
        if let Some(t) = &config.tls {
            let named = [
                ("tls.cert", Some(&t.cert)),
                ("tls.key", Some(&t.key)),
                ("tls.client_ca", t.client_ca.as_ref()),
            ];
            for (key, file) in named {
                if let Some(file) = file {
                    std::fs::metadata(file)
                        .with_context(|| format!("{key} = {:?}", file.display()))?;
                }
            }
            bits_server::tls::load(t).context("tls.cert, tls.key or tls.client_ca")?;
        }
        for (i, v) in config.vdirs.iter().enumerate() {
            bits_server::auth::Authenticator::new(std::slice::from_ref(v))
                .with_context(|| format!("vdir[{i}].users_file"))?;
        }
        Ok(())
    };
    checks().with_context(|| path.display().to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BITSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Human => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            if let Err(e) = check_config(&config) {
                // One message naming the bad key, without the backtrace RUST_BACKTRACE would add.
                eprintln!("bitsd check-config: {e:#}");
                std::process::exit(1);
            }
            println!("{}: ok", config.display());
            Ok(())
        }
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Passwd {
            file,
            user,
            password_stdin,
        }) => passwd(&file, &user, password_stdin),
        Some(Command::Sessions { command, admin }) => {
            exit_on_error("sessions", admin_client::sessions(&admin, &command))
        }
        Some(Command::Gc { admin, json }) => exit_on_error("gc", admin_client::gc(&admin, json)),
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
    write_users_file(file, &(lines.join("\n") + "\n"))?;
    println!("{}: {user} set", file.display());
    Ok(())
}

/// Replaces the users file atomically and durably: a private temp file beside it, fsync,
/// rename, fsync of the directory. A new file is 0600; an existing one keeps its owner and
/// group and at most owner read-write and group read (0640), never any world access.
fn write_users_file(file: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let existing = match std::fs::metadata(file) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mode = existing
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o640 | 0o600);
    if existing
        .as_ref()
        .is_some_and(|m| m.permissions().mode() & 0o007 != 0)
    {
        eprintln!(
            "{}: was readable by everyone; now mode {mode:o}",
            file.display()
        );
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // create_new: never write through a file or symlink someone placed at the temp name.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> anyhow::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(m) = &existing {
            // Keep the service's access (e.g. root:bitsd 0640) when root edits the file.
            std::os::unix::fs::fchown(&out, Some(m.uid()), Some(m.gid())).with_context(|| {
                format!("giving {} the owner of {}", tmp.display(), file.display())
            })?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
            .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    let admin = match config.admin.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
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
    if let Some(l) = &admin {
        let a = l.local_addr()?;
        if !a.ip().is_loopback() && config.admin.token.is_none() {
            tracing::warn!(addr = %a, "the admin listener is not on loopback and has no [admin] token: anyone who reaches it can cancel sessions");
        }
        println!("bitsd admin listening on {a}");
    }
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
