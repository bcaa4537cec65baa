//! Accept loops for the plain and the TLS listener, and the per-connection HTTP/1.1 driver.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bits_proto::{Ack, ErrorContext, HResult};
use futures_util::FutureExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower_service::Service;

use super::{ack, router, Frontend, LocalAddr, PeerAddr};
use crate::auth::ConnInfo;

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves `http` (plain) and `https` (TLS, using the frontend's TLS state) until `shutdown`
/// resolves, then waits for in-flight requests (the caller bounds how long). Connections are
/// HTTP/1.1 with keep-alive and pipelining; a client that half-closes after its request still
/// gets the answer; a client that does not send a request head in `header_read_timeout` is cut off.
pub async fn serve(
    front: Arc<Frontend>,
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = front.engine().config().clone();
    let app = router(front.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut shutdown = pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: new clients wait in the listen backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer, secure) = tokio::select! {
            r = accept(http.as_ref()) => match r { Ok((s, p)) => (s, p, false), Err(e) => { backoff(e).await; continue } },
            r = accept(https.as_ref()) => match r { Ok((s, p)) => (s, p, true), Err(e) => { backoff(e).await; continue } },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let app = app.clone();
        let header_timeout = config.header_read_timeout;
        let limits = ConnLimits {
            header_timeout,
            read_buffer_max: read_buffer_max(config.max_header_bytes),
        };
        let watcher = graceful.watcher();
        let tls = front
            .tls()
            .filter(|_| secure)
            .map(|t| t.current_with_binding());
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let open_now = open.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The last connection closing leaves the server idle: a moment to give back what
            // the connections freed.
            let _idle = IdleWhenDone(open_now);
            match tls {
                None => {
                    drive(
                        stream,
                        app,
                        peer,
                        local,
                        ConnInfo::default(),
                        limits,
                        watcher,
                    )
                    .await
                }
                Some((tls, channel_binding)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    let stream =
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                return tracing::info!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
                        };
                    let cert_identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::tls::client_identity);
                    let info = ConnInfo {
                        tls: true,
                        cert_identity,
                        channel_binding: Some(channel_binding),
                        ..ConnInfo::default()
                    };
                    drive(stream, app, peer, local, info, limits, watcher).await
                }
            }
        });
    }
    drop(http);
    drop(https);
    graceful.shutdown().await;
    Ok(())
}

/// Counts one open connection; when the last one ends, gives freed memory back to the system.
struct IdleWhenDone(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for IdleWhenDone {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            crate::memory::reclaim();
        }
    }
}

/// Serves `app` over plain HTTP/1.1 on `listener` with the same connection handling as the
/// main listener (head timeout, read buffer limit, panic guard) and at most `max_connections`
/// open at once, until `shutdown` resolves; then waits for the requests in flight.
pub(crate) async fn serve_capped(
    app: axum::Router,
    listener: TcpListener,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut shutdown = pin!(shutdown);
    loop {
        // At the cap, stop accepting: new clients wait in the listen backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(a) => a, Err(e) => { backoff(e).await; continue } },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let info = ConnInfo::default();
            let limits = ConnLimits {
                header_timeout,
                read_buffer_max: READ_BUFFER_MIN,
            };
            drive(stream, app, peer, local, info, limits, watcher).await
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Per-connection read buffer limit of the admin listener (hyper's minimum is 8 KiB).
const READ_BUFFER_MIN: usize = 16 << 10;

/// The read buffer limit of a BITS connection: a whole request head must fit (hyper refuses a
/// head larger than its buffer with 431 before we see it), so `max_header_bytes` plus the
/// request line and the separators; our own check then answers a head over `max_header_bytes`.
fn read_buffer_max(max_header_bytes: usize) -> usize {
    max_header_bytes
        .saturating_add(bits_proto::MAX_URL_CHARS + 1024)
        .max(READ_BUFFER_MIN)
}

async fn backoff(e: io::Error) {
    // Out of file descriptors and the like: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// What one connection may take: time for a head, bytes of read buffer (a whole head must fit).
#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    read_buffer_max: usize,
}

/// Runs one HTTP/1.1 connection to its end (or until graceful shutdown closes it).
async fn drive<I>(
    io: I,
    app: axum::Router,
    peer: SocketAddr,
    local: SocketAddr,
    info: ConnInfo,
    limits: ConnLimits,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut().insert(LocalAddr(local));
            req.extensions_mut().insert(info.clone());
            let mut app = app.clone();
            async move {
                // A bug must cost one request an error Ack, never the connection or the process.
                match AssertUnwindSafe(app.call(req.map(Body::new)))
                    .catch_unwind()
                    .await
                {
                    Ok(resp) => resp,
                    Err(_) => {
                        tracing::error!(%peer, "request handler panicked");
                        Ok(ack::render(
                            &Ack::error(500, HResult::E_FAIL, ErrorContext::RemoteFile),
                            true,
                        ))
                    }
                }
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Caps what an idle keep-alive connection keeps allocated (the read buffer grows to the
        // largest chunk it ever held); bodies still stream, in reads of at most this size.
        .max_buf_size(limits.read_buffer_max)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What a node answers while its store cannot be reached at start-up (a farm node booted
/// before its object store): BITS requests the transient 503 Ack, which clients retry; other
/// requests a plain 503; the admin listener `/healthz` 200 and `/readyz` 503 (the reason is
/// in the log only: no admin token is checked here, and the error names the store). Every answer closes its connection, so that clients reconnect to the real server
/// once it runs. Serves until `ready` resolves; the listeners are the caller's (clones of
/// their sockets are served here), so the real server takes them over without a gap.
pub async fn serve_unready(
    http: Option<&TcpListener>,
    admin: Option<&TcpListener>,
    header_timeout: Duration,
    ready: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::routing::get;
    /// Connections each unready listener holds at once: enough for probes and retrying clients.
    const UNREADY_CONNECTIONS: usize = 64;
    fn retry_later(body: String) -> axum::response::Response {
        let mut resp = axum::response::Response::new(Body::from(body));
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let h = resp.headers_mut();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("5"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
    let bits = axum::Router::new().fallback(|method: http::Method| async move {
        if method.as_str() == "BITS_POST" {
            let ack = Ack::error(503, HResult::http_error(503), ErrorContext::RemoteFile)
                .with_reason("the server is starting: its storage cannot be reached yet");
            ack::render(&ack, true)
        } else {
            retry_later("the server is starting: its storage cannot be reached yet\n".into())
        }
    });
    let admin_app = axum::Router::new()
        .route(
            "/healthz",
            get(|| async {
                let mut resp = retry_later("starting\n".into());
                *resp.status_mut() = http::StatusCode::OK;
                resp.headers_mut().remove(http::header::RETRY_AFTER);
                resp
            }),
        )
        .route(
            "/readyz",
            get(|| async { retry_later("storage not reachable yet (the log says why)\n".into()) }),
        )
        .fallback(|| async { retry_later("starting\n".into()) });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let clone = |l: &TcpListener| -> io::Result<TcpListener> {
        use std::os::fd::AsFd as _;
        let std = std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?);
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)
    };
    let mut served = Vec::new();
    for (listener, app) in [(http, bits), (admin, admin_app)] {
        if let Some(l) = listener {
            served.push(tokio::spawn(serve_capped(
                app,
                clone(l)?,
                UNREADY_CONNECTIONS,
                header_timeout,
                stopped(),
            )));
        }
    }
    ready.await;
    let _ = stop_tx.send(true);
    for s in served {
        if let Ok(Err(e)) = s.await {
            tracing::warn!(error = %e, "the start-up listener failed");
        }
    }
    Ok(())
}
