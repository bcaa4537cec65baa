//! Uploads and upload-reply jobs, the way the Windows BITS service runs them
//! ([MC-BUP §3.1], spec §7, §10.4, §11):
//!
//! Create-Session (offering the 1.5 protocol) → Fragments in order, each starting where the
//! server's last `BITS-Received-Content-Range` says (never where we think we are) → for
//! upload-reply, the reply fetched from `BITS-Reply-URL` → Close-Session.
//!
//! On 413 the fragment size is halved (never below 5 KiB); on 416 the offset is resynchronised;
//! `BG_E_SESSION_NOT_FOUND` on a fragment throws the session away and starts again from byte 0
//! with a new Create-Session; after a transient failure the next request is preceded by a Ping,
//! as Windows does when it resumes. Close-Session and Cancel-Session are resent on 5xx unless
//! the error code is `BG_E_SESSION_NOT_FOUND`, and never on 1xx–4xx. Every state change that
//! must survive a crash goes through [`Observer::checkpoint`] before the next request is sent.

use std::ops::ControlFlow;
use std::time::Duration;

use bits_proto::{headers, ContentRange, PacketType, ProtocolId, UPLOAD_PROTOCOL_1_5};
use url::Url;

use crate::client::Client;
use crate::download::{check_output, write_empty, DownloadState, Sink};
use crate::error::{redact, Error, Result};
use crate::exchange::{content_name, Ack, Outgoing};
use crate::host_id::{self, Route};
use crate::progress::{Checkpoint, Event, Observer};
use crate::retry::Backoff;
use crate::transport::Activity;

mod state;
pub use state::{FileStamp, HostIdState, SessionState, UploadOutcome, UploadPhase, UploadState};

/// Windows never sends fragments smaller than this, not even after 413s ([MC-BUP §6 note 16]).
pub const MIN_FRAGMENT_SIZE: u64 = 5 * 1024;

/// What this client sends unless told otherwise (Windows: 5 KiB to 13 MiB, adaptive).
pub const DEFAULT_FRAGMENT_SIZE: u64 = 1 << 20;

/// New sessions in a row that are lost before gaining a byte, before giving up.
const MAX_RESTARTS: u32 = 3;

/// Acks in a row that do not move the offset forward before that counts as a failure.
const MAX_STALLS: u32 = 4;

/// How long the Cancel-Session of an unusable new session may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn check_url(url: &Url) -> Result<()> {
    let shown = redact(url.as_str());
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::Usage(format!(
            "{shown}: only http:// and https:// URLs"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Usage(format!(
            "{shown}: a user name or password in the URL is refused (it would be stored with \
             the job and shown in messages); put credentials in the client settings"
        )));
    }
    Ok(())
}

/// The reply URL a server named for an upload to `dest`: http(s) only, and never plain http
/// for an https job (the reply would travel in cleartext).
pub(crate) fn check_reply_url(dest: &Url, reply: &Url) -> Result<()> {
    let shown = redact(reply.as_str());
    let refuse = |what: String| {
        Err(Error::Policy {
            url: dest.to_string(),
            what,
        })
    };
    if !matches!(reply.scheme(), "http" | "https") || reply.host().is_none() {
        return refuse(format!(
            "the server names the reply URL {shown}; only http(s) reply URLs are fetched"
        ));
    }
    if dest.scheme() == "https" && reply.scheme() != "https" {
        return refuse(format!(
            "the job is https but the server names the reply URL {shown}; the reply would \
             travel unencrypted"
        ));
    }
    if !reply.username().is_empty() || reply.password().is_some() {
        return refuse(format!("the reply URL {shown} carries credentials"));
    }
    Ok(())
}

/// How a run of fragments ended.
enum Flow {
    Complete,
    /// `BG_E_SESSION_NOT_FOUND`; `progressed` tells whether the lost session had gained bytes.
    SessionLost {
        error: Error,
        progressed: bool,
    },
}

impl Client {
    /// Runs (or resumes) an upload to completion: all bytes acknowledged, the reply fetched
    /// (upload-reply), Close-Session answered.
    ///
    /// Fails with [`Error::LocalFileChanged`] when the file is not the one `state` was made
    /// for; [`UploadState::reset`] starts it over.
    pub async fn upload(
        &self,
        state: &mut UploadState,
        observer: &mut dyn Observer,
    ) -> Result<UploadOutcome> {
        let dest = Url::parse(&state.url)
            .map_err(|e| Error::Usage(format!("{}: {e}", redact(&state.url))))?;
        check_url(&dest)?;
        // Where the reply goes is checked before any byte moves, not after the upload.
        if let Some(reply) = &state.reply_to {
            check_output(reply)?;
        }
        if state.local_file_changed()? {
            return Err(Error::LocalFileChanged {
                path: state.file.clone(),
            });
        }
        let route = route_for(&dest, state.session.as_ref())?;
        let resuming = state.session.is_some();
        let mut run = Run {
            client: self,
            content_name: content_name(&state.file),
            outcome: UploadOutcome::starting(state),
            state,
            observer,
            dest,
            route,
            backoff: Backoff::new(self.inner.retry.clone()),
            // Windows resumes an interrupted session with a Ping ([MC-BUP §6 note 9]).
            ping_first: resuming,
            best: 0,
        };
        run.best = run.state.acked;
        if let Some(s) = &run.state.session {
            let ev = Event::Resumed {
                session: &s.id,
                offset: run.state.acked,
            };
            if run.observer.event(&ev).is_break() {
                return Err(Error::Interrupted);
            }
        }
        loop {
            match run.state.phase {
                UploadPhase::Transfer => run.transfer().await?,
                UploadPhase::FetchReply { .. } => run.fetch_reply().await?,
                UploadPhase::Close => {
                    run.end_session(PacketType::CloseSession).await?;
                    let mut out = run.outcome;
                    out.session_id = run
                        .state
                        .session
                        .as_ref()
                        .map(|s| s.id.clone())
                        .unwrap_or_default();
                    out.fragment_size = run.state.fragment_size;
                    out.reply_url = run.state.reply_url.clone();
                    return Ok(out);
                }
            }
        }
    }

    /// Cancels the upload's session on the server (Cancel-Session, with the retry rules of
    /// Close-Session). A session the server no longer knows counts as cancelled.
    pub async fn cancel(&self, state: &mut UploadState, observer: &mut dyn Observer) -> Result<()> {
        if state.session.is_none() {
            return Ok(());
        }
        let dest = Url::parse(&state.url)
            .map_err(|e| Error::Usage(format!("{}: {e}", redact(&state.url))))?;
        let route = route_for(&dest, state.session.as_ref())?;
        let mut run = Run {
            client: self,
            content_name: None,
            outcome: UploadOutcome::starting(state),
            state,
            observer,
            dest,
            route,
            backoff: Backoff::new(self.inner.retry.clone()),
            ping_first: false,
            best: 0,
        };
        run.end_session(PacketType::CancelSession).await?;
        run.state.session = None;
        run.checkpoint()
    }

    /// Sends a Ping to `url` (retrying transient failures): is there a BITS server that lets
    /// us in?
    pub async fn ping(&self, url: &Url) -> Result<()> {
        check_url(url)?;
        let mut backoff = Backoff::new(self.inner.retry.clone());
        loop {
            let activity = Activity::new();
            let out = Outgoing {
                packet: PacketType::Ping,
                url,
                origin: url,
                session: None,
                fragment: None,
                content_name: None,
                max_rate: None,
            };
            let err = match self
                .exchange(out, &activity, &mut |_| ControlFlow::Continue(()))
                .await
            {
                Ok(ack) if ack.is_success() => return ack.require_ack(),
                Ok(ack) => ack.error(self.has_credentials()),
                Err(e) => e,
            };
            if !err.is_transient() {
                return Err(err);
            }
            match backoff.next_delay() {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    return Err(Error::RetriesExhausted {
                        attempts: backoff.attempts(),
                        last: Box::new(err),
                    })
                }
            }
        }
    }
}

fn route_for(dest: &Url, session: Option<&SessionState>) -> Result<Route> {
    match session.and_then(|s| s.host_id.as_ref()) {
        Some(h) => Route::via_host_id(
            dest.clone(),
            &h.host,
            h.fallback_secs.map(Duration::from_secs),
        ),
        None => Ok(Route::direct(dest.clone())),
    }
}

struct Run<'a> {
    client: &'a Client,
    state: &'a mut UploadState,
    observer: &'a mut dyn Observer,
    dest: Url,
    route: Route,
    backoff: Backoff,
    outcome: UploadOutcome,
    content_name: Option<String>,
    /// Send a Ping before the next packet (after a failure, on resume, to a new Host-Id host).
    ping_first: bool,
    /// The highest offset the server has acknowledged in this run. Only going past it is
    /// progress (resets the retry budget): a server whose Acks go down and up again must not
    /// keep the client sending forever.
    best: u64,
}

impl Run<'_> {
    fn checkpoint(&mut self) -> Result<()> {
        // The fragment that follows this checkpoint is recorded as sent already: a process
        // killed while it is in flight resumes knowing the server may hold it.
        if self.state.phase == UploadPhase::Transfer {
            if let Ok(end) = self.next_range().map(|r| r.first + r.len) {
                if let Some(s) = &mut self.state.session {
                    s.sent = s.sent.max(end);
                }
            }
        }
        self.observer
            .checkpoint(Checkpoint::Upload(self.state))
            .map_err(|e| Error::local(&self.state.file, e))
    }

    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        match self.observer.event(ev) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Error::Interrupted),
        }
    }

    /// Sends one packet of this session to the current route.
    async fn send(&mut self, packet: PacketType, range: Option<ContentRange>) -> Result<Ack> {
        let url = self.route.url().clone();
        let activity = Activity::new();
        let base = self.state.acked;
        let total = self.state.stamp.size;
        let observer = &mut *self.observer;
        let mut tick = |sent: u64| {
            observer.event(&Event::Progress {
                done: (base + sent).min(total),
                total,
            })
        };
        let with_name = matches!(packet, PacketType::Fragment | PacketType::CloseSession);
        let out = Outgoing {
            packet,
            url: &url,
            origin: &self.dest,
            session: self.state.session.as_ref().map(|s| s.id.as_str()),
            fragment: range.map(|r| (r, self.state.file.as_path())),
            content_name: self.content_name.as_deref().filter(|_| with_name),
            max_rate: self.client.inner.upload_rate,
        };
        let result = self.client.exchange(out, &activity, &mut tick).await;
        if range.is_some() {
            self.outcome.fragments += 1;
            self.outcome.bytes_sent += activity.sent();
        }
        if result.is_ok() {
            self.route.reachable();
        }
        result
    }

    /// A failed attempt: fatal errors end the upload; transient ones cost one retry.
    async fn failed(&mut self, e: Error) -> Result<()> {
        if !e.is_transient() {
            return Err(e);
        }
        self.retry_after(e).await
    }

    /// Waits before the next attempt, or gives up when the budget is spent.
    async fn retry_after(&mut self, e: Error) -> Result<()> {
        if host_id::is_unreachable(&e) && self.route.unreachable() {
            if let Some(s) = &mut self.state.session {
                s.host_id = None;
            }
            self.checkpoint()?;
            let url = self.route.url().to_string();
            self.event(&Event::HostIdFallback { url: &url })?;
        }
        let Some(delay) = self.backoff.next_delay() else {
            return Err(Error::RetriesExhausted {
                attempts: self.backoff.attempts(),
                last: Box::new(e),
            });
        };
        self.outcome.retries += 1;
        self.event(&Event::Retrying {
            attempt: self.backoff.attempts(),
            delay,
            error: &e,
        })?;
        tokio::time::sleep(delay).await;
        self.ping_first = true;
        Ok(())
    }

    async fn transfer(&mut self) -> Result<()> {
        let mut restarts_in_a_row = 0;
        loop {
            if self.state.session.is_none() {
                self.create_session().await?;
            }
            match self.fragments().await? {
                Flow::Complete => return Ok(()),
                Flow::SessionLost { error, progressed } => {
                    restarts_in_a_row = if progressed { 1 } else { restarts_in_a_row + 1 };
                    if restarts_in_a_row > MAX_RESTARTS {
                        return Err(error);
                    }
                    self.outcome.restarts += 1;
                    self.event(&Event::Restarted { error: &error })?;
                    self.state.session = None;
                    self.state.acked = 0;
                    self.route = Route::direct(self.dest.clone());
                    self.checkpoint()?;
                }
            }
        }
    }

    async fn create_session(&mut self) -> Result<()> {
        self.route = Route::direct(self.dest.clone());
        loop {
            let ack = match self.send(PacketType::CreateSession, None).await {
                Ok(ack) => ack,
                Err(e) => {
                    self.failed(e).await?;
                    continue;
                }
            };
            if !ack.is_success() {
                let e = ack.error(self.client.has_credentials());
                self.failed(e).await?;
                continue;
            }
            ack.require_ack()?;
            let chosen = ack.header(headers::PROTOCOL);
            if chosen.and_then(ProtocolId::parse) != Some(UPLOAD_PROTOCOL_1_5) {
                return Err(Error::ProtocolMismatch {
                    url: ack.url.clone(),
                    what: format!("BITS-Protocol {chosen:?}"),
                });
            }
            let id = match ack.new_session_id() {
                Ok(id) => id,
                Err(e) => {
                    self.failed(e).await?;
                    continue;
                }
            };
            let host_id = ack.header(headers::HOST_ID).map(|host| HostIdState {
                host: host.to_string(),
                fallback_secs: ack
                    .header(headers::HOST_ID_FALLBACK_TIMEOUT)
                    .and_then(|v| v.parse().ok()),
            });
            let session = SessionState {
                id,
                host_id,
                sent: 0,
            };
            self.route = match route_for(&self.dest, Some(&session)) {
                Ok(route) => route,
                Err(e) => {
                    // The session exists on the server but cannot be used: release it rather
                    // than leave it to expire, then count the attempt as failed.
                    self.cancel_unusable(&session.id).await;
                    self.failed(e).await?;
                    continue;
                }
            };
            self.state.session = Some(session);
            self.state.acked = 0;
            self.state.phase = UploadPhase::Transfer;
            self.checkpoint()?;
            self.backoff.reset();
            let id = self
                .state
                .session
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default();
            self.event(&Event::SessionCreated { session: &id })?;
            if self.route.uses_host_id() {
                let url = self.route.url().to_string();
                self.event(&Event::HostId { url: &url })?;
                // Windows checks that the Host-Id host answers before sending data to it.
                self.ping_first = true;
            }
            return Ok(());
        }
    }

    /// One Cancel-Session for a session that was never recorded (its Create-Session Ack was
    /// unusable), to the original URL; best effort and bounded in time.
    async fn cancel_unusable(&mut self, id: &str) {
        let activity = Activity::new();
        let out = Outgoing {
            packet: PacketType::CancelSession,
            url: &self.dest,
            origin: &self.dest,
            session: Some(id),
            fragment: None,
            content_name: None,
            max_rate: None,
        };
        let mut tick = |_| ControlFlow::Continue(());
        let sent = self.client.exchange(out, &activity, &mut tick);
        match tokio::time::timeout(CANCEL_TIMEOUT, sent).await {
            Ok(Ok(ack)) if ack.is_success() => {}
            other => tracing::debug!(session = id, ?other, "cancel of an unusable session failed"),
        }
    }

    async fn ping(&mut self) -> Result<()> {
        loop {
            let err = match self.send(PacketType::Ping, None).await {
                Ok(ack) if ack.is_success() => {
                    ack.require_ack()?;
                    self.ping_first = false;
                    return Ok(());
                }
                Ok(ack) => ack.error(self.client.has_credentials()),
                Err(e) => e,
            };
            self.failed(err).await?;
        }
    }

    fn check_file(&self) -> Result<()> {
        if self.state.local_file_changed()? {
            return Err(Error::LocalFileChanged {
                path: self.state.file.clone(),
            });
        }
        Ok(())
    }

    /// The fragment to send next: from the acknowledged offset, `fragment_size` long.
    fn next_range(&self) -> Result<ContentRange> {
        let total = self.state.stamp.size;
        if total == 0 {
            // A zero-length file is one empty fragment: `bytes */0` (docs/decisions.md #18).
            return Ok(ContentRange::empty());
        }
        let frag = self.state.fragment_size.max(MIN_FRAGMENT_SIZE);
        // Everything acknowledged but completion not recorded (a crash right after the last
        // Ack): retransmit the final fragment, which the server answers from its cache.
        let first = if self.state.acked < total {
            self.state.acked
        } else {
            total - frag.min(total)
        };
        let len = frag.min(total - first);
        ContentRange::new(first, first + len - 1, total).map_err(|e| Error::Usage(e.to_string()))
    }

    async fn fragments(&mut self) -> Result<Flow> {
        let total = self.state.stamp.size;
        let session = self
            .state
            .session
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let mut stalls = 0;
        let mut progressed = false;
        loop {
            if self.ping_first {
                self.ping().await?;
            }
            self.check_file()?;
            let range = self.next_range()?;
            let end = range.first + range.len;
            if self.state.session.as_ref().is_some_and(|s| s.sent < end) {
                self.checkpoint()?;
            }
            // The server cannot hold more than the furthest byte ever sent in this session.
            let sent = self.state.session.as_ref().map_or(end, |s| s.sent.max(end));
            let ack = match self.send(PacketType::Fragment, Some(range)).await {
                Ok(ack) => ack,
                Err(e) => {
                    self.failed(e).await?;
                    continue;
                }
            };
            match ack.status {
                200..=299 | 416 => {
                    if ack.is_success() {
                        ack.require_ack()?;
                    }
                    let checked = ack.check_session(&session).and_then(|_| ack.received());
                    let received = match checked {
                        Ok(r) if r <= sent => r,
                        Ok(r) => {
                            let e = Error::InvalidResponse {
                                url: ack.url.clone(),
                                what: format!(
                                    "BITS-Received-Content-Range {r} is beyond the bytes sent \
                                     (up to {sent} of {total})"
                                ),
                            };
                            self.failed(e).await?;
                            continue;
                        }
                        Err(e) => {
                            self.failed(e).await?;
                            continue;
                        }
                    };
                    if ack.is_success() && received == total {
                        // The change check before each fragment cannot see a change made while
                        // the last one was in flight: without this, a torn file would be
                        // reported as uploaded.
                        self.check_file()?;
                        let reply = ack
                            .header(headers::REPLY_URL)
                            .filter(|u| !u.is_empty())
                            .map(str::to_string);
                        self.complete(reply).await?;
                        return Ok(Flow::Complete);
                    }
                    // Resume from what the server says it holds, not from what we sent.
                    let regressed = received < self.state.acked;
                    let advanced = received > self.best;
                    self.state.acked = received;
                    self.checkpoint()?;
                    self.event(&Event::Progress {
                        done: received,
                        total,
                    })?;
                    if advanced {
                        self.best = received;
                        progressed = true;
                        stalls = 0;
                        self.backoff.reset();
                    } else if regressed {
                        // The server forgot bytes it had acknowledged: that costs a retry.
                        stalls = 0;
                        let e = Error::InvalidResponse {
                            url: ack.url.clone(),
                            what: format!(
                                "the server went back to byte {received} after acknowledging {}",
                                self.best
                            ),
                        };
                        self.failed(e).await?;
                    } else {
                        stalls += 1;
                        if stalls >= MAX_STALLS {
                            stalls = 0;
                            let e = Error::InvalidResponse {
                                url: ack.url.clone(),
                                what: format!("the server does not advance past byte {received}"),
                            };
                            self.failed(e).await?;
                        }
                    }
                }
                413 => {
                    // The server takes smaller requests: halve (never below 5 KiB) and resend.
                    let current = self
                        .state
                        .fragment_size
                        .min(range.len.max(MIN_FRAGMENT_SIZE));
                    if current <= MIN_FRAGMENT_SIZE {
                        return Err(Error::FragmentTooLarge {
                            url: ack.url.clone(),
                            fragment_size: current,
                        });
                    }
                    self.state.fragment_size = (current / 2).max(MIN_FRAGMENT_SIZE);
                    self.checkpoint()?;
                    let size = self.state.fragment_size;
                    self.event(&Event::FragmentShrunk { size })?;
                }
                _ => {
                    let e = ack.error(self.client.has_credentials());
                    if matches!(&e, Error::Server(s) if s.is_session_not_found()) {
                        return Ok(Flow::SessionLost {
                            error: e,
                            progressed,
                        });
                    }
                    self.failed(e).await?;
                }
            }
        }
    }

    /// All bytes are acknowledged: record it together with what comes next.
    async fn complete(&mut self, reply: Option<String>) -> Result<()> {
        let total = self.state.stamp.size;
        self.state.acked = total;
        let resolved = match &reply {
            // IIS sends a relative, backslash-separated reference
            // (`BITS-Sessions\Replies\{id}\responsefile.bin`), resolved against the directory
            // of the destination URL; bitsd sends absolute URLs.
            Some(r) => Some(self.route.url().join(&r.replace('\\', "/")).map_err(|e| {
                Error::InvalidResponse {
                    url: self.route.url().to_string(),
                    what: format!("BITS-Reply-URL {r:?}: {e}"),
                }
            })?),
            None => None,
        };
        if let Some(url) = &resolved {
            check_reply_url(&self.dest, url)?;
        }
        self.state.reply_url = resolved.as_ref().map(Url::to_string);
        self.state.phase = match (&self.state.reply_to, &resolved) {
            (Some(dest), Some(url)) => UploadPhase::FetchReply {
                download: DownloadState::new(url, dest.clone()),
            },
            (Some(dest), None) => {
                // The docs allow an upload-reply job to end with an empty reply. It is written
                // as replies are downloaded: a link at `dest` is replaced, never followed.
                write_empty(dest).await?;
                self.outcome.reply_file = Some(dest.clone());
                self.outcome.reply_bytes = Some(0);
                UploadPhase::Close
            }
            (None, _) => UploadPhase::Close,
        };
        self.checkpoint()?;
        self.event(&Event::Progress { done: total, total })
    }

    async fn fetch_reply(&mut self) -> Result<()> {
        let UploadPhase::FetchReply { download } = &self.state.phase else {
            return Ok(());
        };
        let mut download = download.clone();
        let url = download.url.clone();
        // A state persisted by an older client may name a reply URL this one refuses.
        let parsed = Url::parse(&url).map_err(|e| Error::Policy {
            url: url.clone(),
            what: format!("unusable reply URL: {e}"),
        })?;
        check_reply_url(&self.dest, &parsed)?;
        self.event(&Event::FetchingReply { url: &url })?;
        let mut sink = ReplySink {
            state: &mut *self.state,
            observer: &mut *self.observer,
        };
        let got = self
            .client
            .fetch(&mut download, &mut sink, &self.dest)
            .await?;
        self.outcome.reply_file = Some(got.dest);
        self.outcome.reply_bytes = Some(got.bytes);
        self.state.phase = UploadPhase::Close;
        self.checkpoint()
    }

    /// Close-Session or Cancel-Session: resent on 5xx unless `BG_E_SESSION_NOT_FOUND` (and on
    /// network failures), never on 1xx–4xx (`ack-for-close-session.md`,
    /// `ack-for-cancel-session.md`).
    async fn end_session(&mut self, packet: PacketType) -> Result<()> {
        if self.state.session.is_none() {
            return Ok(());
        }
        if packet == PacketType::CloseSession {
            self.event(&Event::Closing)?;
        }
        loop {
            if self.ping_first {
                self.ping().await?;
            }
            let e = match self.send(packet, None).await {
                // A session id that differs in the Ack changes nothing: the session is over.
                Ok(ack) if ack.is_success() => return ack.require_ack(),
                Ok(ack) => ack.error(self.client.has_credentials()),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            match &e {
                // The server no longer has the session. After a complete upload that means it
                // was already released (bitsd publishes at the last fragment and keeps 200
                // tombstones; an expired session has nothing left to close). For Cancel it is
                // the goal anyway.
                Error::Server(s) if s.is_session_not_found() => return Ok(()),
                Error::Server(s) if (500..600).contains(&s.status) => self.retry_after(e).await?,
                Error::Server(_) | Error::Auth { .. } => return Err(e),
                _ => self.retry_after(e).await?,
            }
        }
    }
}

/// Lets the reply download persist itself inside the upload's state.
struct ReplySink<'s> {
    state: &'s mut UploadState,
    observer: &'s mut dyn Observer,
}

impl Sink for ReplySink<'_> {
    fn persist(&mut self, d: &DownloadState) -> std::io::Result<()> {
        self.state.phase = UploadPhase::FetchReply {
            download: d.clone(),
        };
        self.observer.checkpoint(Checkpoint::Upload(self.state))
    }

    fn event(&mut self, event: &Event<'_>) -> ControlFlow<()> {
        self.observer.event(event)
    }
}

/// For tests: the modification time as `SystemTime`.
#[cfg(test)]
fn stamp_time(s: &FileStamp) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::new(s.mtime_secs as u64, s.mtime_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_sees_size_and_mtime_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let a = FileStamp::of(&p).unwrap();
        assert_eq!(a.size, 3);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(stamp_time(&a) + Duration::from_secs(5))
            .unwrap();
        assert_ne!(FileStamp::of(&p).unwrap(), a);
        assert!(FileStamp::of(dir.path()).is_err());
    }

    #[test]
    fn state_refuses_odd_urls_and_clamps_fragments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        for bad in ["ftp://h/a", "http://u:p@h/a"] {
            let u = Url::parse(bad).unwrap();
            assert!(matches!(UploadState::new(&p, &u, 1), Err(Error::Usage(_))));
        }
        let s = UploadState::new(&p, &Url::parse("http://h/a").unwrap(), 1).unwrap();
        assert_eq!(s.fragment_size, MIN_FRAGMENT_SIZE);
        assert!(!s.local_file_changed().unwrap());
    }
}
