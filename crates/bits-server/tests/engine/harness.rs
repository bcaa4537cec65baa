//! The engine in this process: `FsStore` in a temp dir, the HTTP router driven with
//! `tower::ServiceExt::oneshot` (no socket, no bitsd process), and a [`ManualClock`] so that
//! session timeouts and tombstone lifetimes pass when the test says, without sleeping.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use bits_server::clock::ManualClock;
use bits_server::http::{router, Frontend, PeerAddr};
use bits_server::{Engine, ServerConfig};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const PROTOCOL: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";

pub struct Harness {
    pub clock: Arc<ManualClock>,
    pub engine: Arc<Engine>,
    app: axum::Router,
    dir: tempfile::TempDir,
}

/// One answer (an Ack has no body).
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an Ack of `status`, with `BITS-Error-Code` `code` when given.
    pub fn assert_ack(&self, status: u16, code: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "headers: {:?}", self.headers);
        assert_eq!(self.header("BITS-Packet-Type"), Some("Ack"));
        if let Some(code) = code {
            let got = self.header("BITS-Error-Code").unwrap_or_default();
            assert!(
                got.eq_ignore_ascii_case(code),
                "error code {got}, want {code}"
            );
        }
    }

    pub fn received(&self) -> Option<u64> {
        let range = self.header("BITS-Received-Content-Range")?;
        range.parse().ok()
    }
}

impl Harness {
    /// An engine with one vdir `/upload/` over a fresh temp dir; `top` and `vdir` are extra TOML
    /// keys for the top level and the vdir table.
    pub async fn start(top: &str, vdir: &str) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = dir.path().join("spool");
        let root = dir.path().join("uploads");
        std::fs::create_dir_all(&root).expect("root");
        let text = format!(
            "spool_dir = {spool:?}\n{top}\n[[vdir]]\nprefix = \"/upload/\"\nroot = {root:?}\n{vdir}\n"
        );
        let config: ServerConfig = toml::from_str(&text).expect("config");
        config.validate().expect("valid config");
        let (records, fs) =
            bits_server::store::fs::open_local(&config.spool_dir, config.fsync).expect("spool");
        let clock = Arc::new(ManualClock::new());
        let engine = Arc::new(
            Engine::new(Arc::new(config), records, Arc::new(fs)).with_clock(clock.clone()),
        );
        engine.recover().await.expect("recovery");
        engine.build_registry().await.expect("registry");
        let front = Arc::new(Frontend::new(engine.clone(), None).expect("frontend"));
        Harness {
            clock,
            engine,
            app: router(front),
            dir,
        }
    }

    /// Where uploads of `/upload/<name>` are published.
    pub fn upload_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("uploads").join(name)
    }

    /// Files left below the upload root (published or temporary).
    pub fn files_in_root(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.path().join("uploads")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut req = Request::builder()
            .method(Method::from_bytes(b"BITS_POST").expect("method"))
            .uri(path)
            .header("Host", "127.0.0.1")
            .header("Content-Length", body.len());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Body::from(body)).expect("request");
        req.extensions_mut()
            .insert(PeerAddr(([127, 0, 0, 1], 50_000).into()));
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        body.collect().await.expect("body");
        Answer {
            status: parts.status,
            headers: parts.headers,
        }
    }

    /// Create-Session; the session id.
    pub async fn create(&self, path: &str) -> String {
        let a = self
            .post(
                path,
                &[
                    ("BITS-Packet-Type", "Create-Session"),
                    ("BITS-Supported-Protocols", PROTOCOL),
                ],
                Vec::new(),
            )
            .await;
        a.assert_ack(200, None);
        a.header("BITS-Session-Id").expect("session id").to_string()
    }

    pub async fn fragment(
        &self,
        path: &str,
        sid: &str,
        first: u64,
        data: &[u8],
        total: u64,
    ) -> Answer {
        let range = format!("bytes {first}-{}/{total}", first + data.len() as u64 - 1);
        self.post(
            path,
            &[
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", sid),
                ("Content-Range", &range),
            ],
            data.to_vec(),
        )
        .await
    }

    pub async fn close(&self, path: &str, sid: &str) -> Answer {
        self.post(
            path,
            &[
                ("BITS-Packet-Type", "Close-Session"),
                ("BITS-Session-Id", sid),
            ],
            Vec::new(),
        )
        .await
    }
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}
