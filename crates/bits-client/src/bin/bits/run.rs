//! The commands: each builds a client from the options (and, for resumed jobs, the settings the
//! job remembers), runs the transfer with its state persisted at every checkpoint, and turns
//! the outcome into output and an exit code.

use std::future::Future;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use bits_client::{
    redact, Checkpoint, Client, DownloadState, Error, Event, Job, JobSettings, JobStore,
    NoObserver, Observer, RetryPolicy, StoreError, TlsOptions, Transfer, UploadPhase, UploadState,
    Url, DEFAULT_FRAGMENT_SIZE, MIN_FRAGMENT_SIZE,
};
use serde_json::{json, Value};

use crate::display::Display;
use crate::jobs::{cancel, list_jobs, resume};
use crate::report::{self, escape, Failure, Output};
use crate::{Command, Opts};

/// Replies up to this size are embedded in `--json` output (like `GetReplyData`'s 1 MiB).
const MAX_JSON_REPLY: u64 = 1 << 20;

/// Times an upload starts over because its file changed while it ran.
const MAX_FILE_CHANGES: u32 = 2;

pub async fn main(cli: crate::Cli) -> u8 {
    let opts = cli.opts;
    let out = Output {
        json: opts.json,
        quiet: opts.quiet,
    };
    match cli.command {
        Command::Ping { url } => ping(&opts, out, &url).await,
        Command::Upload { file, url } => upload(&opts, out, &file, &url, None).await,
        Command::UploadReply { file, url, output } => {
            upload(&opts, out, &file, &url, Some(output)).await
        }
        Command::Download { url, file } => download(&opts, out, &url, &file).await,
        Command::Resume { ids } => resume(&opts, out, &ids).await,
        Command::Jobs => list_jobs(&opts, out),
        Command::Cancel { ids, all } => cancel(&opts, out, &ids, all).await,
        command @ (Command::Completions { .. } | Command::Manpages { .. }) => {
            crate::manual(command)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

pub(crate) fn finish(
    out: Output,
    context: Value,
    result: Result<(Value, String, bool), Failure>,
) -> u8 {
    match result {
        Ok((value, line, to_stderr)) => {
            out.success(value, &line, to_stderr);
            report::OK
        }
        Err(f) => {
            out.failure(&f, context);
            f.code
        }
    }
}

/// The URL given on the command line. One carrying a user name or password is refused before
/// anything is stored, and never shown with them.
pub(crate) fn parse_url(s: &str) -> Result<Url, Failure> {
    let shown = redact(s);
    let url = Url::parse(s).map_err(|e| Failure::usage(format!("{shown}: not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Failure::usage(format!(
            "{shown}: only http:// and https:// URLs"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Failure::usage(format!(
            "{shown}: a user name or password in the URL is refused (it would be stored with \
             the job and shown in messages); use --user, with the password in BITS_PASSWORD or \
             typed at the prompt"
        )));
    }
    Ok(url)
}

/// Refuses an output path that cannot receive a file, before any byte moves.
fn check_output(p: &Path) -> Result<(), Failure> {
    bits_client::download::check_output(p).map_err(|e| Failure::from(&e))
}

pub(crate) fn store(opts: &Opts) -> Result<JobStore, Failure> {
    let dir = opts
        .state_dir
        .clone()
        .or_else(JobStore::default_dir)
        .ok_or_else(|| Failure::usage("no state directory: set --state-dir or HOME"))?;
    JobStore::open(&dir).map_err(|e| store_failure(&e))
}

/// A job store error: always local, its message names the path (and the fix).
pub(crate) fn store_failure(e: &StoreError) -> Failure {
    Failure::local(e.to_string())
}

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p).map_err(|e| Failure::local(format!("{}: {e}", p.display())))
}

/// Passwords asked for once per process (a `resume` of several jobs asks once per user).
static PASSWORDS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn password(user: &str) -> Result<String, Failure> {
    if let Ok(p) = std::env::var("BITS_PASSWORD") {
        return Ok(p);
    }
    let mut cache = PASSWORDS
        .lock()
        .map_err(|_| Failure::plain(report::INTERNAL, "password cache poisoned"))?;
    if let Some((_, p)) = cache.iter().find(|(u, _)| u == user) {
        return Ok(p.clone());
    }
    let p = rpassword::prompt_password(format!("Password for {user}: ")).map_err(|e| {
        Failure::usage(format!(
            "no password for {user}: set BITS_PASSWORD or run on a terminal ({e})"
        ))
    })?;
    cache.push((user.to_string(), p.clone()));
    Ok(p)
}

/// What the command line says, falling back to what the job remembers.
pub(crate) fn merged_settings(opts: &Opts, saved: &JobSettings) -> Result<JobSettings, Failure> {
    let abs = |p: &Option<PathBuf>| p.as_deref().map(absolute).transpose();
    Ok(JobSettings {
        user: opts.user.clone().or_else(|| saved.user.clone()),
        auth: opts
            .auth
            .clone()
            .or_else(|| saved.auth.clone())
            .filter(|a| a != "basic"),
        cacert: abs(&opts.cacert)?.or_else(|| saved.cacert.clone()),
        cert: abs(&opts.cert)?.or_else(|| saved.cert.clone()),
        key: abs(&opts.key)?.or_else(|| saved.key.clone()),
        reply_to_stdout: saved.reply_to_stdout,
    })
}

pub(crate) fn client(opts: &Opts, settings: &JobSettings, url: &Url) -> Result<Client, Failure> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| Failure::usage(format!("{what} {}: {e}", p.display())))
    };
    let mut tls = TlsOptions::default();
    if let Some(p) = &settings.cacert {
        tls.ca_pem = Some(read(p, "--cacert")?);
    }
    match (&settings.cert, &settings.key) {
        (Some(c), Some(k)) => tls.identity_pem = Some((read(c, "--cert")?, read(k, "--key")?)),
        (None, None) => {}
        _ => return Err(Failure::usage("--cert and --key go together")),
    }
    if opts.insecure {
        eprintln!(
            "bits: warning: --insecure: the server's certificate is NOT verified; anyone on the \
             network path can read and alter this transfer"
        );
        tls.accept_invalid_certs = true;
    }
    let mut b = Client::builder()
        .tls(tls)
        .retry(RetryPolicy {
            max_retries: opts.retries,
            initial_delay: opts.retry_delay,
            max_delay: opts.retry_delay.max(Duration::from_secs(30)),
        })
        .idle_timeout(opts.timeout)
        .request_deadline(Some(opts.deadline))
        .max_size((opts.max_size > 0).then_some(opts.max_size))
        .upload_rate_limit(opts.limit_rate);
    let plain = url.scheme() == "http" && !opts.quiet;
    if settings.auth.as_deref() == Some("negotiate") {
        if plain {
            eprintln!(
                "bits: warning: Kerberos over http://: anyone on the network path can replay \
                 the ticket to this server, and nothing proves the answers come from it"
            );
        }
        b = b.auth_scheme(bits_client::AuthScheme::Negotiate);
    } else if let Some(user) = &settings.user {
        let ntlm = settings.auth.as_deref() == Some("ntlm");
        if plain && ntlm {
            eprintln!(
                "bits: warning: NTLM over http://: the user name travels in clear, anyone on the \
                 network path can relay the sign-in or take over the signed-in connection, and \
                 the password can be guessed offline from the exchange"
            );
        } else if plain {
            eprintln!("bits: warning: Basic credentials travel unencrypted over http://");
        }
        if ntlm {
            b = b.auth_scheme(bits_client::AuthScheme::Ntlm);
        }
        b = b.credentials(user.clone(), password(user)?);
    }
    b.build().map_err(|e| Failure::from(&e))
}

fn fragment_size(opts: &Opts) -> Result<u64, Failure> {
    let size = opts.fragment_size.unwrap_or(DEFAULT_FRAGMENT_SIZE);
    if size < MIN_FRAGMENT_SIZE {
        return Err(Failure::usage(format!(
            "--fragment-size must be at least {MIN_FRAGMENT_SIZE} bytes (BITS never goes below 5 KiB)"
        )));
    }
    Ok(size)
}

/// Resolves when the user asks to stop (Ctrl-C, SIGTERM).
async fn stop_requested() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs `f` unless a stop is requested first; the state on disk is then the last checkpoint.
pub(crate) async fn interruptible<T>(
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::select! {
        r = f => r,
        _ = stop_requested() => Err(Error::Interrupted),
    }
}

/// Persists every checkpoint into the job file and shows events.
struct JobObserver<'a> {
    store: &'a JobStore,
    job: &'a mut Job,
    display: &'a mut Display,
}

impl Observer for JobObserver<'_> {
    fn checkpoint(&mut self, state: Checkpoint<'_>) -> io::Result<()> {
        self.job.transfer = match state {
            Checkpoint::Upload(u) => Transfer::Upload(u.clone()),
            Checkpoint::Download(d) => Transfer::Download(d.clone()),
        };
        self.store.save(self.job).map_err(io::Error::other)
    }

    fn event(&mut self, event: &Event<'_>) -> ControlFlow<()> {
        self.display.event(event);
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn ping(opts: &Opts, out: Output, url: &str) -> u8 {
    let context = json!({ "command": "ping", "url": redact(url) });
    let result = async {
        let url = parse_url(url)?;
        let settings = merged_settings(opts, &JobSettings::default())?;
        let client = client(opts, &settings, &url)?;
        let started = Instant::now();
        interruptible(client.ping(&url))
            .await
            .map_err(|e| Failure::from(&e))?;
        let ms = started.elapsed().as_millis() as u64;
        Ok((
            json!({ "command": "ping", "url": url.as_str(), "elapsed_ms": ms }),
            format!("{url}: BITS server answered Ping in {ms} ms"),
            false,
        ))
    }
    .await;
    finish(out, context, result)
}

async fn upload(
    opts: &Opts,
    out: Output,
    file: &Path,
    url: &str,
    reply: Option<Option<PathBuf>>,
) -> u8 {
    let command = if reply.is_some() {
        "upload-reply"
    } else {
        "upload"
    };
    let context = json!({ "command": command, "url": redact(url), "file": file });
    let result = async {
        let url = parse_url(url)?;
        let reply_file = match &reply {
            Some(Some(path)) => {
                let path = absolute(path)?;
                check_output(&path)?;
                Some(path)
            }
            _ => None,
        };
        let mut state =
            UploadState::new(file, &url, fragment_size(opts)?).map_err(|e| Failure::from(&e))?;
        let store = store(opts)?;
        let id = store.job_id(command, &state.file, &state.url);
        let mut settings = merged_settings(opts, &JobSettings::default())?;
        match (reply, reply_file) {
            (Some(Some(_)), Some(path)) => state = state.with_reply(path),
            (Some(_), _) => {
                state = state.with_reply(store.scratch_path(&id, "reply"));
                settings.reply_to_stdout = true;
            }
            (None, _) => {}
        }
        let job = store.job(command, settings, Transfer::Upload(state));
        run_new(opts, out, &store, job).await
    }
    .await;
    finish(out, context, result)
}

async fn download(opts: &Opts, out: Output, url: &str, file: &Path) -> u8 {
    let context = json!({ "command": "download", "url": redact(url), "file": file });
    let result = async {
        let url = parse_url(url)?;
        let dest = absolute(file)?;
        check_output(&dest)?;
        let store = store(opts)?;
        let state = DownloadState::new(&url, dest);
        let settings = merged_settings(opts, &JobSettings::default())?;
        let job = store.job("download", settings, Transfer::Download(state));
        run_new(opts, out, &store, job).await
    }
    .await;
    finish(out, context, result)
}

/// A job from the command line: if the same job is already on disk, that one is resumed.
async fn run_new(
    opts: &Opts,
    out: Output,
    store: &JobStore,
    fresh: Job,
) -> Result<(Value, String, bool), Failure> {
    let _lock = lock(store, &fresh.id)?;
    let job = match store.load(&fresh.id) {
        // Ids are keyed and checked against the content on load, so this takes a collision
        // or a bug; a job that is not the command typed is never run in its place.
        Ok(Some(old)) if !old.same_transfer(&fresh) => {
            let (local, url) = old.transfer.local_and_url();
            return Err(Failure::local(format!(
                "{}: job {} ({} {} {}) does not match this command; remove it, or `bits cancel {}`",
                store.dir().join(format!("{}.json", old.id)).display(),
                old.id,
                old.command,
                local.display(),
                url,
                old.id
            )));
        }
        Ok(Some(mut old)) => {
            if let (Transfer::Upload(o), Transfer::Upload(n)) = (&mut old.transfer, &fresh.transfer)
            {
                if opts.fragment_size.is_some() {
                    o.fragment_size = n.fragment_size;
                }
                if o.phase == UploadPhase::Transfer {
                    o.reply_to = n.reply_to.clone();
                }
            }
            old.settings = JobSettings {
                reply_to_stdout: fresh.settings.reply_to_stdout,
                ..merged_settings(opts, &old.settings)?
            };
            if !out.quiet {
                eprintln!("bits: resuming job {}", old.id);
            }
            old
        }
        Ok(None) => fresh,
        // The user's own file that is not a job this client can read: replaced.
        Err(e @ (StoreError::Corrupt { .. } | StoreError::Format { .. })) => {
            if !out.quiet {
                eprintln!(
                    "bits: replacing unreadable job file: {}",
                    escape(&e.to_string())
                );
            }
            fresh
        }
        Err(e) => return Err(store_failure(&e)),
    };
    run_job(opts, out, store, job).await
}

pub(crate) fn lock(store: &JobStore, id: &str) -> Result<bits_client::job::JobLock, Failure> {
    match store.try_lock(id) {
        Ok(Some(l)) => Ok(l),
        Ok(None) => Err(Failure::plain(
            report::LOCKED,
            format!("job {id} is being run by another bits process"),
        )),
        Err(e) => Err(store_failure(&e)),
    }
}

/// Runs a job to its end and cleans up after it.
pub(crate) async fn run_job(
    opts: &Opts,
    out: Output,
    store: &JobStore,
    mut job: Job,
) -> Result<(Value, String, bool), Failure> {
    let settings = merged_settings(opts, &job.settings)?;
    let url_text = match &job.transfer {
        Transfer::Upload(u) => u.url.clone(),
        Transfer::Download(d) => d.url.clone(),
    };
    let url = parse_url(&url_text)?;
    let client = client(opts, &settings, &url)?;
    job.settings = settings;
    store.save(&job).map_err(|e| store_failure(&e))?;
    let label = job.command.clone();
    let mut display = Display::new(&label, out.quiet);
    let started = Instant::now();
    let result = match job.transfer.clone() {
        Transfer::Upload(state) => run_upload(&client, store, &mut job, state, &mut display).await,
        Transfer::Download(state) => {
            run_download(&client, store, &mut job, state, &mut display).await
        }
    };
    display.finish();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(mut value) => {
            let _ = store.remove(&job.id);
            let mut to_stderr = false;
            if let Some(o) = value.as_object_mut() {
                o.insert("command".into(), json!(job.command));
                o.insert("job".into(), json!(job.id));
                o.insert("elapsed_ms".into(), json!(elapsed_ms));
            }
            if job.settings.reply_to_stdout {
                to_stderr = !out.json;
                emit_reply(out, &mut value)?;
            }
            let line = summary(&job, &value);
            Ok((value, line, to_stderr))
        }
        Err(e) => {
            let mut f = Failure::from(&e).with("job", json!(job.id));
            match e.kind() {
                // The transfer cannot succeed as asked. A server that broke the protocol
                // (`Protocol`, or an invalid response) says nothing about the transfer: kept.
                bits_client::ErrorKind::Fatal
                | bits_client::ErrorKind::Usage
                | bits_client::ErrorKind::Policy => {
                    abandon(&client, store, &mut job).await;
                    f = f.with("resumable", json!(false));
                }
                _ => {
                    f.hint = Some(format!(
                        "job {} kept: `bits resume {}` (or the same command) continues it",
                        job.id, job.id
                    ));
                    f = f.with("resumable", json!(true));
                }
            }
            Err(f)
        }
    }
}

async fn run_upload(
    client: &Client,
    store: &JobStore,
    job: &mut Job,
    mut state: UploadState,
    display: &mut Display,
) -> Result<Value, Error> {
    let mut changes = 0;
    loop {
        // BG_E_LOCAL_FILE_CHANGED semantics: a job whose file changed starts over.
        if state.local_file_changed()? {
            display.note(&format!(
                "{} changed since the upload started: starting over",
                state.file.display()
            ));
            start_over(client, &mut state, job, store).await?;
        }
        let mut observer = JobObserver {
            store,
            job: &mut *job,
            display: &mut *display,
        };
        match interruptible(client.upload(&mut state, &mut observer)).await {
            Ok(outcome) => return serde_json::to_value(outcome).map_err(|e| local_json(store, e)),
            Err(Error::LocalFileChanged { .. }) if changes < MAX_FILE_CHANGES => changes += 1,
            Err(e @ Error::LocalFileChanged { .. }) => {
                // Out of restarts. The server may hold (or have published) a torn copy: drop
                // the session, and leave a job that starts from scratch when resumed.
                start_over(client, &mut state, job, store).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn run_download(
    client: &Client,
    store: &JobStore,
    job: &mut Job,
    mut state: DownloadState,
    display: &mut Display,
) -> Result<Value, Error> {
    let mut observer = JobObserver {
        store,
        job,
        display,
    };
    let outcome = interruptible(client.download(&mut state, &mut observer)).await?;
    serde_json::to_value(outcome).map_err(|e| local_json(store, e))
}

fn local_json(store: &JobStore, e: serde_json::Error) -> Error {
    Error::LocalIo {
        path: store.dir().to_path_buf(),
        source: io::Error::other(e),
    }
}

/// Tells the server to drop the session, without letting an unreachable server hold us up.
async fn best_effort_cancel(client: &Client, state: &mut UploadState) {
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        client.cancel(state, &mut NoObserver),
    )
    .await;
}

/// The local file changed: drop the server session and save a job that starts from byte 0.
async fn start_over(
    client: &Client,
    state: &mut UploadState,
    job: &mut Job,
    store: &JobStore,
) -> Result<(), Error> {
    best_effort_cancel(client, state).await;
    state.reset()?;
    job.transfer = Transfer::Upload(state.clone());
    store.save(job).map_err(|e| Error::LocalIo {
        path: store.dir().to_path_buf(),
        source: io::Error::other(e),
    })
}

/// A job that cannot succeed: release the server session, delete partial data and the job.
async fn abandon(client: &Client, store: &JobStore, job: &mut Job) {
    match &mut job.transfer {
        Transfer::Upload(state) => {
            best_effort_cancel(client, state).await;
            if job.settings.reply_to_stdout {
                if let Some(p) = &state.reply_to {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        Transfer::Download(state) => {
            let _ = state.remove_partial();
        }
    }
    let _ = store.remove(&job.id);
}

/// Sends a reply that was collected in a scratch file to stdout (or into the JSON result).
fn emit_reply(out: Output, value: &mut Value) -> Result<(), Failure> {
    let Some(path) = value
        .get("reply_file")
        .and_then(Value::as_str)
        .map(PathBuf::from)
    else {
        return Ok(());
    };
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if out.json {
        if len > MAX_JSON_REPLY {
            // Too big to embed: the file stays where it is and the result names it.
            return Ok(());
        }
        let bytes =
            std::fs::read(&path).map_err(|e| Failure::local(format!("{}: {e}", path.display())))?;
        if let Some(o) = value.as_object_mut() {
            match String::from_utf8(bytes) {
                Ok(text) => o.insert("reply".into(), json!(text)),
                Err(e) => o.insert(
                    "reply_base64".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
                ),
            };
            o.remove("reply_file");
        }
    } else {
        let mut f = std::fs::File::open(&path)
            .map_err(|e| Failure::local(format!("{}: {e}", path.display())))?;
        let mut stdout = io::stdout().lock();
        io::copy(&mut f, &mut stdout)
            .and_then(|_| stdout.flush())
            .map_err(|e| Failure::local(format!("stdout: {e}")))?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn summary(job: &Job, v: &Value) -> String {
    let bytes = v.get("bytes").and_then(Value::as_u64).unwrap_or(0);
    let resumed = v.get("resumed_from").and_then(Value::as_u64).unwrap_or(0);
    let resumed = if resumed > 0 {
        format!(", resumed at byte {resumed}")
    } else {
        String::new()
    };
    match &job.transfer {
        Transfer::Upload(u) => {
            let mut line = format!(
                "uploaded {} ({bytes} bytes{resumed}) to {}",
                u.file.display(),
                u.url
            );
            if let Some(n) = v.get("reply_bytes").and_then(Value::as_u64) {
                line.push_str(&format!("; reply: {n} bytes"));
                if let Some(p) = v.get("reply_file").and_then(Value::as_str) {
                    line.push_str(&format!(" in {p}"));
                }
            }
            line
        }
        Transfer::Download(d) => format!(
            "downloaded {} to {} ({bytes} bytes{resumed})",
            d.url,
            d.dest.display()
        ),
    }
}
