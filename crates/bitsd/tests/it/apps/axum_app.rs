//! An in-process server application (spec §9) for the upload-reply tests: an axum app on
//! 127.0.0.1 with its own tokio runtime on a std thread. Its behaviour can be changed between
//! requests, and it records every request it gets.
#![allow(dead_code)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;

/// What the app answers.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Status of the answer; anything but 200 is sent with an empty body.
    pub status: u16,
    /// Sent as `BITS-Static-Response-URL`; then no reply body / reply file is produced.
    pub static_url: Option<String>,
    /// Sent as `BITS-Copy-File-To-Destination` with this value.
    pub copy: Option<String>,
    /// Waited before answering (after the request has been recorded).
    pub delay: Duration,
    /// `true`: the reply is the upload reversed (by value: the response body; by reference:
    /// written to `BITS-Response-DataFile-Name`). `false`: no reply at all (empty body, no file
    /// written).
    pub reverse: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            status: 200,
            static_url: None,
            copy: None,
            delay: Duration::ZERO,
            reverse: true,
        }
    }
}

/// One request the app received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Contents of the file named by `BITS-Request-DataFile-Name`, read when the call arrived
    /// (`None` without the header; `Some(Err)` when it could not be read).
    pub request_file: Option<Result<Vec<u8>, String>>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

#[derive(Clone, Default)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

/// A running app; stopped on drop.
pub struct App {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl App {
    pub fn start(behaviour: Behaviour) -> App {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour)
    }

    /// Starts on a specific address (e.g. a port that was unreachable before).
    pub fn start_on(addr: SocketAddr, behaviour: Behaviour) -> App {
        let listener = std::net::TcpListener::bind(addr).expect("bind app");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(behaviour)),
            calls: Arc::default(),
        };
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("app runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("app listener");
                tokio::select! {
                    r = axum::serve(listener, router).into_future() => r.expect("app serve"),
                    _ = stopped => {}
                }
            });
        });
        App {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().unwrap())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.calls.lock().unwrap().len()
    }

    /// The only call so far.
    #[track_caller]
    pub fn single_call(&self) -> Call {
        let calls = self.calls();
        assert_eq!(
            calls.len(),
            1,
            "expected exactly one notification: {calls:#?}"
        );
        calls.into_iter().next().unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn handle(State(shared): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let request_path = find("bits-request-datafile-name");
    let response_path = find("bits-response-datafile-name");
    let upload = request_path
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| format!("{p}: {e}")));
    let call = Call {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers,
        body: body.clone(),
        request_file: upload.clone(),
    };
    shared.calls.lock().unwrap().push(call);
    let b = shared.behaviour.lock().unwrap().clone();
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let mut builder = Response::builder().status(b.status);
    if b.status != 200 {
        return builder
            .header("content-length", "0")
            .body(Body::empty())
            .unwrap();
    }
    if let Some(url) = &b.static_url {
        builder = builder.header("BITS-Static-Response-URL", url.as_str());
    }
    if let Some(copy) = &b.copy {
        builder = builder.header("BITS-Copy-File-To-Destination", copy.as_str());
    }
    let mut reply = Vec::new();
    if b.static_url.is_none() && b.reverse {
        match (upload, response_path) {
            // By reference: the reply goes to the file the server named.
            (Some(Ok(mut data)), Some(out)) => {
                data.reverse();
                if let Err(e) = std::fs::write(&out, &data) {
                    return Response::builder()
                        .status(500)
                        .header("x-error", format!("{out}: {e}"))
                        .body(Body::empty())
                        .unwrap();
                }
            }
            (Some(Err(_)), _) => {
                return Response::builder().status(500).body(Body::empty()).unwrap()
            }
            // By value: the reply is the response body.
            _ => {
                reply = body;
                reply.reverse();
            }
        }
    }
    builder
        .header("content-length", reply.len().to_string())
        .body(Body::from(reply))
        .unwrap()
}
