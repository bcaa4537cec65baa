//! Capture of BITS exchanges (`capture_dir`, `bitsd serve --capture DIR`): what a client the
//! team cannot run here (a real Windows machine) sends and what bitsd answered, so that
//! `bitsd replay` can play it against any server and show where the answers differ.
//!
//! One JSON object per line per exchange, in arrival order, one file per session
//! (`<session uuid>.jsonl`; exchanges naming no session, such as Pings and refused
//! Create-Sessions, go to `no-session.jsonl`). Bodies are recorded as their length and SHA-256,
//! never their bytes. Credentials never reach the file: `Authorization`, `Proxy-Authorization`
//! and `WWW-Authenticate` keep only their scheme, cookies are dropped.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bits_proto::SessionId;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file of exchanges that name no session.
pub const NO_SESSION_FILE: &str = "no-session.jsonl";

/// One request and the answer bitsd gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: u64,
    pub request: CapturedRequest,
    pub response: CapturedResponse,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedRequest {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// In arrival order, names in lower case (as HTTP/1.1 parsers hand them on).
    pub headers: Vec<(String, String)>,
    pub body: BodySummary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodySummary {
    /// Bytes of body the server read (all of it, unless the connection broke or was closed).
    pub len: u64,
    /// Lower-case hex SHA-256 of those bytes.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// Headers whose values are credentials or carry them: only the scheme is kept.
const SCHEME_ONLY: [&str; 3] = ["authorization", "proxy-authorization", "www-authenticate"];
/// Headers never written at all.
const DROPPED: [&str; 2] = ["cookie", "set-cookie"];

/// The headers as recorded: in order, credentials reduced to their scheme, cookies left out.
pub fn recorded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !DROPPED.contains(&name.as_str()))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let value = if SCHEME_ONLY.contains(&name.as_str()) {
                match value.split_once(' ') {
                    Some((scheme, _)) => format!("{scheme} [redacted]"),
                    None => value,
                }
            } else {
                value
            };
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// Where captures are written.
#[derive(Debug)]
pub struct Capture {
    dir: PathBuf,
    /// Bytes this process may still write (`capture_max_bytes`): a flood of requests while
    /// capture is on must not fill the disk.
    left: std::sync::atomic::AtomicU64,
}

impl Capture {
    /// Creates `dir` (owner-only: captures show who uploaded what) if needed; at most
    /// `max_bytes` are written to it by this process.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Capture> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Capture {
            dir: dir.to_path_buf(),
            left: max_bytes.into(),
        })
    }

    /// The file of `session`'s exchanges.
    pub fn file(&self, session: Option<SessionId>) -> PathBuf {
        match session {
            Some(id) => self
                .dir
                .join(format!("{}.jsonl", id.as_uuid().hyphenated())),
            None => self.dir.join(NO_SESSION_FILE),
        }
    }

    /// Appends `exchange` to its session's file. One `write` of a whole line to a file opened
    /// for appending: lines of concurrent requests never interleave.
    pub async fn record(&self, session: Option<SessionId>, exchange: &Exchange) {
        let path = self.file(session);
        let mut line = match serde_json::to_vec(exchange) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode a captured exchange");
                return;
            }
        };
        line.push(b'\n');
        let len = line.len() as u64;
        let reserved = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(len)
            });
        if let Err(left) = reserved {
            // Said once, when the budget runs out; nothing is recorded after that.
            if left != 0 {
                self.left.store(0, Ordering::Relaxed);
                tracing::warn!(dir = %self.dir.display(), "capture_max_bytes reached: no more exchanges are captured until a restart");
            }
            return;
        }
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            // A link planted under a capture file's name is not followed (the directory is
            // the server's, mode 0700, but a capture must never append to another file).
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)?;
            f.write_all(&line)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not write a captured exchange");
        }
    }
}

/// Running length and SHA-256 of a body as it is read.
#[derive(Clone, Default)]
pub struct BodyTap(Arc<Mutex<(u64, Sha256)>>);

impl BodyTap {
    /// `body`, with every chunk read through it counted and hashed.
    pub fn tap<S>(&self, body: S) -> impl Stream<Item = Result<Bytes, io::Error>> + Send
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send,
    {
        let tap = self.0.clone();
        body.inspect(move |item| {
            if let Ok(chunk) = item {
                if let Ok(mut t) = tap.lock() {
                    t.0 += chunk.len() as u64;
                    t.1.update(chunk);
                }
            }
        })
    }

    pub fn summary(&self) -> BodySummary {
        match self.0.lock() {
            Ok(t) => BodySummary {
                len: t.0,
                sha256: hex::encode(t.1.clone().finalize()),
            },
            Err(_) => BodySummary {
                len: 0,
                sha256: String::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credentials_keep_their_scheme_only_and_cookies_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
        );
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("NTLM TlRMTVNTUAAB"),
        );
        h.insert("cookie", HeaderValue::from_static("sid=secret"));
        h.insert("bits-packet-type", HeaderValue::from_static("Ping"));
        let out = recorded_headers(&h);
        let text = format!("{out:?}");
        assert!(!text.contains("YWxpY2U6c2VjcmV0") && !text.contains("TlRMTVNTUAAB"));
        assert!(!text.contains("secret"), "{text}");
        assert!(out.contains(&("authorization".into(), "Basic [redacted]".into())));
        assert!(out.contains(&("bits-packet-type".into(), "Ping".into())));
    }

    fn exchange() -> Exchange {
        Exchange {
            at_ms: 1,
            request: CapturedRequest {
                method: "BITS_POST".into(),
                target: "/upload/a".into(),
                version: "HTTP/1.1".into(),
                headers: vec![],
                body: BodySummary {
                    len: 0,
                    sha256: String::new(),
                },
            },
            response: CapturedResponse {
                status: 200,
                headers: vec![],
            },
        }
    }

    #[tokio::test]
    async fn a_link_under_a_capture_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let capture = Capture::open(&dir.path().join("cap"), 1 << 20).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, capture.file(None)).unwrap();
        let exchange = exchange();
        capture.record(None, &exchange).await;
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    }

    #[tokio::test]
    async fn capture_stops_at_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let capture = Capture::open(&dir.path().join("cap"), 1000).unwrap();
        let exchange = exchange();
        for _ in 0..100 {
            capture.record(None, &exchange).await;
        }
        let written = std::fs::metadata(capture.file(None)).unwrap().len();
        assert!(written <= 1000 && written > 800, "{written}");
    }

    #[tokio::test]
    async fn a_tapped_body_reports_its_length_and_digest() {
        let tap = BodyTap::default();
        let body = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"c")),
        ]);
        let read: Vec<_> = tap.tap(body).collect().await;
        assert_eq!(read.len(), 2);
        let s = tap.summary();
        assert_eq!(s.len, 3);
        assert_eq!(
            s.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
