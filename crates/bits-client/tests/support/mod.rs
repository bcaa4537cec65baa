//! A tiny scripted HTTP/1.1 server for client tests: every request is recorded and answered
//! by a closure with exactly the bytes a test wants (header case, missing headers, IIS quirks).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bits_client::{Checkpoint, Event, Observer};

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    /// Names as sent (case preserved).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn packet(&self) -> &str {
        self.header("BITS-Packet-Type").unwrap_or("")
    }

    /// `(first, len, total)` of a Fragment's Content-Range.
    pub fn range(&self) -> (u64, u64, u64) {
        let v = self.header("Content-Range").expect("Content-Range");
        let r = bits_proto::ContentRange::parse(v).expect("valid Content-Range");
        (r.first, r.len, r.total)
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub close: bool,
    /// Send the body one byte at a time with this pause before each (a slow or hostile server).
    pub trickle: Option<Duration>,
}

impl Resp {
    /// A response with these header lines verbatim; `Content-Length` is added if missing.
    pub fn new(status: u16, headers: &[(&str, &str)]) -> Resp {
        Resp {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            close: false,
            trickle: None,
        }
    }

    /// A plain `BITS-Packet-Type: Ack` with extra headers.
    pub fn ack(status: u16, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![("BITS-Packet-Type", "Ack")];
        h.extend_from_slice(extra);
        Resp::new(status, &h)
    }

    pub fn body(mut self, body: Vec<u8>) -> Resp {
        self.body = body;
        self
    }

    /// The body one byte per `pause`.
    pub fn trickled(mut self, pause: Duration) -> Resp {
        self.trickle = Some(pause);
        self
    }

    fn head(&self) -> Vec<u8> {
        let mut b = self.bytes();
        b.truncate(b.len() - self.body.len());
        b
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        let mut has_len = false;
        for (k, v) in &self.headers {
            has_len |= k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding");
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_len {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if self.close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        416 => "Requested Range Not Satisfiable",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

type Handler = Box<dyn FnMut(&Req) -> Resp + Send>;

/// A running fake server; stopped on drop.
pub struct Fake {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    pub fn start(handler: impl FnMut(&Req) -> Resp + Send + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Box::new(handler)));
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, handler) = (log2.clone(), handler.clone());
                std::thread::spawn(move || serve(conn, &log, &handler));
            }
        });
        Fake { addr, log, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    /// Packet types (or `GET <target>`) in arrival order.
    pub fn sequence(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| {
                if r.method == "BITS_POST" {
                    r.packet().to_string()
                } else {
                    format!("{} {}", r.method, r.target)
                }
            })
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Req>>, handler: &Mutex<Handler>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut write = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return;
            }
            let l = l.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req = Req {
            method,
            target,
            headers,
            body,
        };
        log.lock().unwrap().push(req.clone());
        let resp = (handler.lock().unwrap())(&req);
        if let Some(pause) = resp.trickle {
            if write.write_all(&resp.head()).is_err() {
                return;
            }
            for b in &resp.body {
                std::thread::sleep(pause);
                if write.write_all(&[*b]).and_then(|_| write.flush()).is_err() {
                    return;
                }
            }
            if resp.close {
                return;
            }
            continue;
        }
        if write.write_all(&resp.bytes()).is_err() || resp.close {
            return;
        }
    }
}

/// Records events as short strings and counts checkpoints; can stop the transfer.
#[derive(Default)]
pub struct Recorder {
    pub events: Vec<String>,
    pub checkpoints: usize,
    pub last_upload: Option<bits_client::UploadState>,
    pub last_download: Option<bits_client::DownloadState>,
    /// Stop (Break) once a progress event reaches this many bytes.
    pub stop_at: Option<u64>,
}

impl Observer for Recorder {
    fn checkpoint(&mut self, state: Checkpoint<'_>) -> std::io::Result<()> {
        self.checkpoints += 1;
        match state {
            Checkpoint::Upload(u) => self.last_upload = Some(u.clone()),
            Checkpoint::Download(d) => self.last_download = Some(d.clone()),
        }
        Ok(())
    }

    fn event(&mut self, event: &Event<'_>) -> ControlFlow<()> {
        let text = match event {
            Event::Progress { done, .. } => {
                if self.stop_at.is_some_and(|s| *done >= s) {
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            }
            Event::SessionCreated { .. } => "created".to_string(),
            Event::Resumed { offset, .. } => format!("resumed {offset}"),
            Event::Retrying { .. } => "retrying".to_string(),
            Event::FragmentShrunk { size } => format!("shrunk {size}"),
            Event::Restarted { .. } => "restarted".to_string(),
            Event::HostId { url } => format!("host-id {url}"),
            Event::HostIdFallback { url } => format!("fallback {url}"),
            Event::FetchingReply { url } => format!("reply {url}"),
            Event::DownloadRestarted { .. } => "download-restarted".to_string(),
            Event::Closing => "closing".to_string(),
            _ => "other".to_string(),
        };
        self.events.push(text);
        ControlFlow::Continue(())
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running the `bits` CLI

/// A temp dir with a state directory; `bits` commands run with `--state-dir` in it and with
/// `flags` before their own arguments.
pub struct Env {
    pub dir: tempfile::TempDir,
    flags: &'static [&'static str],
}

impl Env {
    /// Progress on, short retry delay.
    pub fn new() -> Env {
        Env::with_flags(&["--retry-delay", "50ms"])
    }

    /// Quiet, shorter retry delay (tests that read only exit codes and JSON).
    pub fn quiet() -> Env {
        Env::with_flags(&["--retry-delay", "10ms", "--quiet"])
    }

    fn with_flags(flags: &'static [&'static str]) -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            flags,
        }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    pub fn state(&self) -> std::path::PathBuf {
        self.path("state")
    }

    pub fn file(&self, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bits"));
        c.arg("--state-dir")
            .arg(self.state())
            .args(self.flags)
            .args(args)
            .env_remove("BITS_PASSWORD")
            .env_remove("BITS_STATE_DIR")
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().expect("run bits")
    }

    /// Job files in the state directory.
    pub fn jobs(&self) -> Vec<std::path::PathBuf> {
        match std::fs::read_dir(self.state()) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
            Err(_) => vec![],
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
pub fn assert_code(o: &std::process::Output, expected: i32) {
    assert_eq!(
        o.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A server emulation that a scripted fake falls back on.
pub trait Emulator: Default + Send + 'static {
    fn handle(&mut self, r: &Req) -> Resp;
}

/// A fake whose hook may answer a request first (`Some`), else the emulator does.
pub fn scripted<E: Emulator>(
    mut hook: impl FnMut(&Req, &mut E) -> Option<Resp> + Send + 'static,
) -> (Fake, Arc<Mutex<E>>) {
    let emu = Arc::new(Mutex::new(E::default()));
    let e2 = emu.clone();
    let fake = Fake::start(move |r| {
        let mut e = e2.lock().unwrap();
        match hook(r, &mut e) {
            Some(resp) => resp,
            None => e.handle(r),
        }
    });
    (fake, emu)
}

/// A fresh CA and a server certificate for localhost/127.0.0.1 signed by it:
/// (CA certificate, server certificate, server key pair).
pub fn server_pki(ca_name: &str) -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    (ca, cert, key)
}
