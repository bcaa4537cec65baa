//! HTTP/1.1 over TCP or TLS: hyper-util's pooled client with a small tokio-rustls connector,
//! request bodies streamed from disk, an idle watchdog, and the mapping of transport failures
//! onto [`Error`].

use std::future::Future;
use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Size of the reads from disk that feed a request body; also the most a body holds in memory.
const CHUNK: usize = 64 << 10;

/// How often a waiting request reports progress to the caller and checks the idle watchdog.
const TICK: Duration = Duration::from_millis(200);

/// Longest wait for the body of an Ack (normally empty) once its headers are in: the headers
/// are the Ack, so a body that trickles is dropped (closing the connection) rather than
/// waited for.
const ACK_BODY_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Connector

/// Opens TCP connections and, for `https` URLs, runs the TLS handshake on them.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl Connector {
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> Connector {
        let mut http = HttpConnector::new();
        // The scheme is ours to handle: the plain connector must not refuse https URIs.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        Connector {
            http,
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        // `Uri::host` keeps the brackets of an IPv6 literal; a TLS server name has none.
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = self.tls.clone();
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let name = ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp.into_inner()).await?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activity (idle watchdog) and request bodies

/// When the current request began and when bytes last moved for it. Shared between the body
/// (which touches it whenever hyper pulls a chunk) and the waiting caller (which checks it).
#[derive(Clone)]
pub(crate) struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// Body bytes handed to the connection so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A request body: nothing (every BITS packet but Fragment), or a byte range of a local file.
pub(crate) enum ReqBody {
    Empty,
    File(Box<FileBody>),
}

/// `len` bytes of a file from an offset, read in [`CHUNK`]s as the connection accepts them, so
/// memory stays flat whatever the fragment size. Optionally paced to a byte rate.
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
    activity: Activity,
    /// Where a read error is left for the caller: hyper only reports "body error".
    error: Arc<Mutex<Option<io::Error>>>,
    pace: Option<Pace>,
}

struct Pace {
    bytes_per_sec: u64,
    started: Instant,
    sent: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl FileBody {
    /// Opens `path` at `offset` for `len` bytes.
    pub(crate) async fn open(
        path: &std::path::Path,
        offset: u64,
        len: u64,
        activity: Activity,
        max_rate: Option<u64>,
    ) -> io::Result<(FileBody, Arc<Mutex<Option<io::Error>>>)> {
        let mut file = tokio::fs::File::open(path).await?;
        file.seek(io::SeekFrom::Start(offset)).await?;
        let error = Arc::new(Mutex::new(None));
        let body = FileBody {
            file,
            remaining: len,
            buf: vec![0; CHUNK.min(len as usize).max(1)],
            activity,
            error: error.clone(),
            pace: max_rate.filter(|r| *r > 0).map(|bytes_per_sec| Pace {
                bytes_per_sec,
                started: Instant::now(),
                sent: 0,
                sleep: None,
            }),
        };
        Ok((body, error))
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let kind = e.kind();
        let message = e.to_string();
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e);
        }
        Poll::Ready(Some(Err(io::Error::new(kind, message))))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let body = match self.get_mut() {
            ReqBody::Empty => return Poll::Ready(None),
            ReqBody::File(b) => b.as_mut(),
        };
        if body.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (body.remaining as usize).min(body.buf.len());
        if let Some(pace) = &mut body.pace {
            // Hold the next chunk back until sending it keeps the average under the limit.
            let due = pace.started
                + Duration::from_secs_f64(
                    (pace.sent + want as u64) as f64 / pace.bytes_per_sec as f64,
                );
            if due > Instant::now() {
                let sleep = pace
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            pace.sleep = None;
        }
        let mut rb = ReadBuf::new(&mut body.buf[..want]);
        match Pin::new(&mut body.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => body.fail(e),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    // The file got shorter under us.
                    return body.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the fragment did",
                    ));
                }
                let chunk = Bytes::copy_from_slice(rb.filled());
                body.remaining -= n as u64;
                if let Some(pace) = &mut body.pace {
                    pace.sent += n as u64;
                }
                body.activity.sent.fetch_add(n as u64, Ordering::Relaxed);
                body.activity.touch();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::File(b) => b.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::File(b) => SizeHint::with_exact(b.remaining),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

/// Connection settings.
#[derive(Clone, Debug)]
pub(crate) struct HttpSettings {
    pub connect_timeout: Duration,
    /// Every request on one connection (NTLM), not through the pool.
    pub one_connection: bool,
    /// No byte moved and no answer for this long: the request is abandoned (transient).
    pub idle_timeout: Duration,
    /// A request not done (sent, answered, its body read) after this long is abandoned
    /// (transient), however steadily bytes move.
    pub deadline: Option<Duration>,
}

#[derive(Clone)]
pub(crate) struct Http {
    client: hyper_util::client::legacy::Client<Connector, ReqBody>,
    idle_timeout: Duration,
    deadline: Option<Duration>,
    connector: Connector,
    /// With NTLM: the one connection every request goes on. NTLM authenticates a connection
    /// (the handshake's legs must share it, and the server trusts it afterwards), which a pool
    /// that may hand out another connection for the next request cannot promise.
    pinned: Option<Arc<tokio::sync::Mutex<Option<SendRequest<ReqBody>>>>>,
}

impl Http {
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, settings: &HttpSettings) -> Http {
        let connector = Connector::new(tls, settings.connect_timeout);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2)
            .build(connector.clone());
        Http {
            client,
            idle_timeout: settings.idle_timeout,
            deadline: settings.deadline,
            connector,
            pinned: settings
                .one_connection
                .then(|| Arc::new(tokio::sync::Mutex::new(None))),
        }
    }

    /// Sends `req` on the pinned connection, opening it (again) if there is none or it closed.
    async fn send_pinned(
        &self,
        pinned: &tokio::sync::Mutex<Option<SendRequest<ReqBody>>>,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut slot = pinned.lock().await;
        if slot.as_ref().is_none_or(|s| s.is_closed()) {
            let stream =
                tower_service::Service::call(&mut self.connector.clone(), req.uri().clone())
                    .await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(stream).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "pinned connection ended");
                }
            });
            *slot = Some(sender);
        }
        let Some(sender) = slot.as_mut() else {
            return Err("no connection".into());
        };
        sender.ready().await?;
        // hyper's client connection wants origin-form URIs; the Host header carries the rest.
        let (mut parts, body) = req.into_parts();
        if let Some(authority) = parts.uri.authority().cloned() {
            parts
                .headers
                .entry(http::header::HOST)
                .or_insert(http::HeaderValue::from_str(authority.as_str())?);
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = path.parse()?;
        Ok(sender
            .send_request(Request::from_parts(parts, body))
            .await?)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// When the request `activity` belongs to must be done.
    pub(crate) fn deadline_of(&self, activity: &Activity) -> Option<Deadline> {
        self.deadline.map(|of| Deadline {
            at: activity.base + of,
            of,
        })
    }

    /// Sends `req` and waits for the response head. `tick` is called every [`TICK`] while
    /// waiting (for progress display); `Break` abandons the request with [`Error::Interrupted`].
    pub(crate) async fn send(
        &self,
        req: Request<ReqBody>,
        activity: &Activity,
        tick: &mut dyn FnMut(u64) -> ControlFlow<()>,
    ) -> Result<Response<Incoming>, Error> {
        let url = req.uri().to_string();
        activity.touch();
        let deadline = self.deadline_of(activity);
        let fut = async {
            match &self.pinned {
                Some(pinned) => self
                    .send_pinned(pinned, req)
                    .await
                    .map_err(|e| map_chain(&url, e.as_ref())),
                None => self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| map_client_error(&url, &e)),
            }
        };
        tokio::pin!(fut);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = ticker.tick() => {
                    if tick(activity.sent()).is_break() {
                        return Err(Error::Interrupted);
                    }
                    if activity.idle() >= self.idle_timeout {
                        return Err(Error::Timeout { url: url.clone(), secs: self.idle_timeout.as_secs() });
                    }
                    if let Some(d) = deadline.filter(|d| Instant::now() >= d.at) {
                        return Err(Error::Deadline { url: url.clone(), secs: d.of.as_secs() });
                    }
                }
            }
        }
    }
}

/// When a request must be done, and the length of time that was.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub of: Duration,
}

/// Reads the next chunk of a response body, with the idle timeout and the request's deadline.
pub(crate) async fn next_chunk(
    body: &mut Incoming,
    url: &str,
    idle: Duration,
    deadline: Option<Deadline>,
) -> Result<Option<Bytes>, Error> {
    use http_body_util::BodyExt;
    loop {
        let left = deadline.map(|d| d.at.saturating_duration_since(Instant::now()));
        let wait = left.map_or(idle, |l| l.min(idle));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) if wait < idle => {
                return Err(Error::Deadline {
                    url: url.to_string(),
                    secs: deadline.map_or(0, |d| d.of.as_secs()),
                })
            }
            Err(_) => {
                return Err(Error::Timeout {
                    url: url.to_string(),
                    secs: idle.as_secs(),
                })
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(map_hyper_error(url, &e)),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing we use.
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// Reads and discards an Ack's body (normally empty) so the connection can be reused; a body
/// larger than `LIMIT`, or not done within [`ACK_BODY_WAIT`] (or `idle`, if shorter), is
/// dropped unread, which closes the connection instead.
pub(crate) async fn discard_body(body: &mut Incoming, url: &str, idle: Duration) {
    const LIMIT: usize = 64 << 10;
    let of = idle.min(ACK_BODY_WAIT);
    let until = Deadline {
        at: Instant::now() + of,
        of,
    };
    let mut seen = 0;
    while let Ok(Some(chunk)) = next_chunk(body, url, idle, Some(until)).await {
        seen += chunk.len();
        if seen > LIMIT {
            break;
        }
    }
}

fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The rustls error somewhere in an error chain (directly, or wrapped in an `io::Error`).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

fn map_client_error(url: &str, e: &hyper_util::client::legacy::Error) -> Error {
    map_chain(url, e)
}

fn map_hyper_error(url: &str, e: &hyper::Error) -> Error {
    map_chain(url, e)
}

fn map_chain(url: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    if let Some(r) = find_rustls(e) {
        if crate::tls::is_trust_error(r) {
            let message = match crate::tls::explain(r) {
                Some(words) => format!("{words} ({r})"),
                None => r.to_string(),
            };
            return Error::Tls {
                url: url.to_string(),
                message,
            };
        }
    }
    Error::Transport {
        url: url.to_string(),
        message: chain_message(e),
    }
}
