//! Test harness: a real `bitsd` process on a free loopback port with its own temp dir, and a
//! tiny blocking HTTP/1.1 client that can send exactly the bytes a test wants.
#![allow(dead_code)]

pub mod pki;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PROTOCOL: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";

/// A running `bitsd`. Killed on drop, even when the test panics.
pub struct Server {
    pub addr: SocketAddr,
    /// The HTTPS listener, when the config has a `[tls]` table.
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener, when the config has `[admin] listen`.
    pub admin_addr: Option<SocketAddr>,
    /// What the last start printed on stdout before `bitsd ready` (the vdir URLs, listeners).
    pub startup: Vec<String>,
    pub dir: tempfile::TempDir,
    extra_config: String,
    child: Option<Child>,
    log: PathBuf,
    /// Extra environment for the bitsd process (test fault points).
    env: Vec<(String, String)>,
    /// A command bitsd runs under (e.g. `prlimit --nofile=64:64 --`), kept across restarts.
    wrapper: Vec<String>,
}

impl Server {
    /// Starts with the default vdir `/upload/` -> `<tmp>/uploads`. `extra` holds top-level TOML
    /// keys, optionally followed by a `[[vdir]]` line whose keys are merged into that default vdir,
    /// e.g. `"cleanup_interval = \"1s\"\n[[vdir]]\nsession_timeout = \"2s\""`.
    pub fn start(extra: &str) -> Server {
        Self::start_with(extra, true)
    }

    /// `default_vdir = false` leaves all `[[vdir]]` tables to `extra`; use `{root}` in it for
    /// the temp dir.
    pub fn start_with(extra: &str, default_vdir: bool) -> Server {
        Self::start_prepared(extra, default_vdir, |_| {})
    }

    /// Like `start_with`, running `setup` on the fresh temp dir before the server starts.
    pub fn start_prepared(extra: &str, default_vdir: bool, setup: impl FnOnce(&Path)) -> Server {
        Self::start_full(extra, default_vdir, &[], &[], setup)
    }

    /// Like `start_prepared`, with `env` set for the bitsd process and bitsd run by `wrapper`
    /// (a command and its arguments before bitsd's own, e.g. `["prlimit", "--nofile=64:64",
    /// "--"]`); both are kept across restarts. The environment goes to the child only, never
    /// to this process (which other tests' servers would inherit).
    pub fn start_full(
        extra: &str,
        default_vdir: bool,
        env: &[(&str, &str)],
        wrapper: &[&str],
        setup: impl FnOnce(&Path),
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        setup(dir.path());
        let extra = if default_vdir {
            format!(
                "{}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\n{}",
                top_level(extra),
                vdir_level(extra)
            )
        } else {
            extra.to_string()
        };
        let mut s = Server {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls_addr: None,
            admin_addr: None,
            startup: Vec::new(),
            log: dir.path().join("bitsd.log"),
            dir,
            extra_config: extra,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
        };
        s.launch();
        s
    }

    /// Like `start`, with bitsd run by `wrapper` (see [`Server::start_full`]).
    pub fn start_wrapped(extra: &str, wrapper: &[&str]) -> Server {
        Self::start_full(extra, true, &[], wrapper, |_| {})
    }

    /// Like `start`, with `env` set for the bitsd process (kept across restarts).
    pub fn start_env(extra: &str, env: &[(&str, &str)]) -> Server {
        Self::start_full(extra, true, env, &[], |_| {})
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("uploads")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn upload_path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    fn launch(&mut self) {
        let root = self.dir.path().display().to_string();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\nspool_dir = \"{root}/spool\"\n{}",
            self.extra_config.replace("{root}", &root),
            port = self.addr.port(),
        );
        let config_path = self.dir.path().join("bitsd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_bitsd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_bitsd")),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("BITSD_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn bitsd");
        let stdout = child.stdout.take().expect("stdout");
        self.child = Some(child);
        // Lines arrive through a channel, so the start-up deadline holds even when bitsd hangs
        // without printing anything; the reader thread keeps draining stdout afterwards so
        // the child never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Once nobody listens any more, keep reading so the pipe never fills.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        self.startup.clear();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.startup.push(line.clone());
                    if let Some(addr) = line.strip_prefix("bitsd listening on ") {
                        self.addr = addr.trim().parse().expect("listen addr");
                    } else if let Some(addr) = line.strip_prefix("bitsd listening (tls) on ") {
                        self.tls_addr = Some(addr.trim().parse().expect("tls listen addr"));
                    } else if let Some(addr) = line.strip_prefix("bitsd admin listening on ") {
                        self.admin_addr = Some(addr.trim().parse().expect("admin listen addr"));
                    } else if line == "bitsd ready" {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("bitsd did not start within 20 s; log:\n{}", self.log_text())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("bitsd exited before listening; log:\n{}", self.log_text())
                }
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Rewrites the extra config (e.g. to disable uploads) for the next restart.
    pub fn set_extra_config(&mut self, extra: &str) {
        self.extra_config = extra.to_string();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed server again (same port, same directories).
    pub fn launch_again(&mut self) {
        self.launch();
    }

    /// SIGKILL then start again on the same port with the same directories.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Drops the extra environment given at start (a fault point): the next restart runs
    /// without it.
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// The server's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("proc status")
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn conn(&self) -> Conn {
        Conn::new(self.addr)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Splits `extra` into lines before the first `[` table header (top level) and the rest.
fn top_level(extra: &str) -> String {
    extra
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect::<Vec<_>>()
        .join("\n")
}

fn vdir_level(extra: &str) -> String {
    extra
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('['))
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The last response head of `curl -D -` output (after any 401s of an auth handshake).
    pub fn last_of_curl(dump: &str) -> Response {
        let last = dump
            .rsplit("HTTP/1.1 ")
            .find(|h| !h.trim().is_empty())
            .unwrap_or_default();
        Response {
            status: last
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            headers: last
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn received(&self) -> Option<u64> {
        self.header("bits-received-content-range")
            .map(|v| v.parse().expect("numeric received"))
    }

    pub fn session(&self) -> String {
        self.header("bits-session-id")
            .expect("BITS-Session-Id")
            .to_string()
    }

    /// Asserts an Ack with the given status and (for errors) code and context.
    #[track_caller]
    pub fn assert_ack(&self, status: u16, error: Option<(&str, &str)>) {
        assert_eq!(self.status, status, "status; headers {:?}", self.headers);
        assert_eq!(
            self.header("bits-packet-type"),
            Some("Ack"),
            "{:?}",
            self.headers
        );
        assert_eq!(self.header("content-length"), Some("0"));
        assert!(self.body.is_empty());
        match error {
            Some((code, ctx)) => {
                assert_eq!(
                    self.header("bits-error-code"),
                    Some(code),
                    "{:?}",
                    self.headers
                );
                assert_eq!(
                    self.header("bits-error-context"),
                    Some(ctx),
                    "{:?}",
                    self.headers
                );
            }
            None => {
                assert!(!self.has("bits-error-code"), "{:?}", self.headers);
                assert!(!self.has("bits-error-context"), "{:?}", self.headers);
            }
        }
    }
}

/// A byte stream a `Conn` can run over: plain TCP or TLS.
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// One keep-alive connection.
pub struct Conn {
    stream: BufReader<Box<dyn Io>>,
    tcp: TcpStream,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn::try_new(addr).expect("connect")
    }

    /// A TLS connection (server name `localhost`); the handshake happens here.
    pub fn try_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
        let client = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(client, tcp.try_clone()?);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        // TLS 1.3 reports a refused client certificate only on the first read: probe for it.
        tcp.set_nonblocking(true)?;
        let mut probe = [0u8; 1];
        let refused = match tls.conn.complete_io(&mut tls.sock) {
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => Some(e),
            _ => match tls.conn.reader().read(&mut probe) {
                Ok(0) => Some(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => Some(e),
                _ => None,
            },
        };
        tcp.set_nonblocking(false)?;
        if let Some(e) = refused {
            return Err(e);
        }
        Ok(Conn {
            stream: BufReader::new(Box::new(tls)),
            tcp,
        })
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).expect("write");
    }

    /// Sends a request; `Content-Length` is added from `body` unless a header of that name is given.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.write_raw(&request_bytes(method, path, headers, body));
        self.read_response(method == "HEAD")
    }

    pub fn bits(
        &mut self,
        path: &str,
        packet: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut h = vec![("BITS-Packet-Type", packet)];
        h.extend_from_slice(headers);
        self.send("BITS_POST", path, &h, body)
    }

    pub fn create(&mut self, path: &str) -> Response {
        self.bits(
            path,
            "Create-Session",
            &[("BITS-Supported-Protocols", PROTOCOL)],
            b"",
        )
    }

    pub fn fragment(
        &mut self,
        path: &str,
        session: &str,
        first: u64,
        data: &[u8],
        total: u64,
    ) -> Response {
        let range = format!(
            "bytes {}-{}/{}",
            first,
            first + data.len() as u64 - 1,
            total
        );
        self.bits(
            path,
            "Fragment",
            &[("BITS-Session-Id", session), ("Content-Range", &range)],
            data,
        )
    }

    pub fn close(&mut self, path: &str, session: &str) -> Response {
        self.bits(path, "Close-Session", &[("BITS-Session-Id", session)], b"")
    }

    pub fn cancel(&mut self, path: &str, session: &str) -> Response {
        self.bits(path, "Cancel-Session", &[("BITS-Session-Id", session)], b"")
    }

    pub fn read_response(&mut self, head: bool) -> Response {
        self.try_read(head).expect("read response")
    }

    /// Reads one response, reporting I/O errors and EOF instead of panicking.
    pub fn try_read(&mut self, head: bool) -> std::io::Result<Response> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            if self.stream.read_line(&mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = l.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                break;
            }
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header {l:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = match headers.iter().find(|(k, _)| k == "content-length") {
            Some((_, v)) => v
                .parse()
                .map_err(|_| bad(format!("bad content-length {v:?}")))?,
            None => 0,
        };
        let mut body = vec![0; if head { 0 } else { len }];
        self.stream.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Sends a request and reads its response, reporting any I/O failure.
    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.stream
            .get_mut()
            .write_all(&request_bytes(method, path, headers, body))?;
        self.try_read(method == "HEAD")
    }

    pub fn try_new(addr: SocketAddr) -> std::io::Result<Conn> {
        Conn::from_tcp(TcpStream::connect(addr)?)
    }

    /// A connection from the local address `from` (any 127.x.y.z works on Linux): another
    /// client address for budgets and limits.
    pub fn from_address(addr: SocketAddr, from: std::net::IpAddr) -> Conn {
        // std cannot bind before connecting; libc can.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "socket");
        let std::net::IpAddr::V4(v4) = from else {
            panic!("IPv4 only")
        };
        let local = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(v4).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe { libc::bind(fd, std::ptr::addr_of!(local).cast(), len) };
        assert_eq!(rc, 0, "bind {from}");
        let std::net::IpAddr::V4(to) = addr.ip() else {
            panic!("IPv4 only")
        };
        let remote = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(remote).cast(), len) };
        assert_eq!(rc, 0, "connect from {from}");
        use std::os::fd::FromRawFd as _;
        Conn::from_tcp(unsafe { TcpStream::from_raw_fd(fd) }).expect("connection")
    }

    fn from_tcp(s: TcpStream) -> std::io::Result<Conn> {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            tcp: s.try_clone()?,
            stream: BufReader::new(Box::new(s)),
        })
    }

    /// True when the server has closed the connection (EOF on read).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Microsoft BITS/7.8\r\n"
    );
    let mut has_len = false;
    for (k, v) in headers {
        has_len |= k.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A request with a raw (possibly non-UTF-8) target and raw header lines.
pub fn raw_request(
    method: &str,
    target: &[u8],
    version: &str,
    headers: &[&str],
    body: &[u8],
) -> Vec<u8> {
    let mut v = format!("{method} ").into_bytes();
    v.extend_from_slice(target);
    v.extend_from_slice(
        format!(" {version}\r\nHost: 127.0.0.1\r\nUser-Agent: Microsoft BITS/7.8\r\n").as_bytes(),
    );
    for h in headers {
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
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

/// Creates a session and uploads `data` in fragments of `frag` bytes; returns the session id.
pub fn upload(conn: &mut Conn, path: &str, data: &[u8], frag: usize) -> String {
    let r = conn.create(path);
    r.assert_ack(200, None);
    let sid = r.session();
    let mut off = 0;
    while off < data.len() {
        let end = (off + frag).min(data.len());
        let r = conn.fragment(path, &sid, off as u64, &data[off..end], data.len() as u64);
        r.assert_ack(200, None);
        assert_eq!(r.received(), Some(end as u64));
        off = end;
    }
    sid
}

/// The sessions holding data in the spool (`data/<uuid>`; ended sessions hold none).
pub fn session_dirs(spool: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(spool.join("data")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_none())
            .collect(),
        Err(_) => vec![],
    }
}

/// Files (not dirs) anywhere below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn header_map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers added for the conformance-checklist tests (spec §18, §16).

/// A full config (for `Server::start_with(.., false)` or `Server::set_extra_config`) with the
/// default vdir `/upload/` -> `{root}/uploads`: `top` holds top-level keys, `vdir` keys of that
/// vdir (e.g. `session_timeout = "2s"`).
pub fn vdir_config(top: &str, vdir: &str) -> String {
    format!("{top}\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{{root}}/uploads\"\n{vdir}\n")
}

impl Server {
    /// Like `start`, but with separate top-level and vdir-level config keys.
    pub fn start_vdir(top: &str, vdir: &str) -> Server {
        Self::start_with(&vdir_config(top, vdir), false)
    }

    /// The spool directory of a session (as named by its `BITS-Session-Id`).
    pub fn session_file(&self, sid: &str) -> PathBuf {
        self.spool().join("data").join(spool_name(sid))
    }

    /// The partial-upload file of a session in the spool, if present.
    pub fn session_data(&self, sid: &str) -> Option<Vec<u8>> {
        std::fs::read(self.session_file(sid)).ok()
    }

    /// Runs `f` on the spool's session database with the server stopped (one process may open
    /// it at a time), then starts the server again on the same port.
    pub fn with_records<T>(&mut self, f: impl FnOnce(&SessionsDbHandle) -> T) -> T {
        self.kill();
        let db = SessionsDbHandle::open(&self.spool());
        let out = f(&db);
        drop(db);
        self.launch();
        out
    }

    /// The record of `sid` (stops and restarts the server to read it).
    pub fn record(&mut self, sid: &str) -> Option<serde_json::Value> {
        self.with_records(|db| db.get(sid))
    }
}

/// The spool's session database, opened by a test while the server is stopped.
pub struct SessionsDbHandle {
    db: std::sync::Arc<bits_server::store::sessions_db::SessionsDb>,
    rt: tokio::runtime::Runtime,
}

impl SessionsDbHandle {
    pub fn open(spool: &Path) -> SessionsDbHandle {
        let path = spool.join("sessions.redb");
        // The stopped server's committer may still hold the file for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let db = loop {
            match bits_server::store::sessions_db::SessionsDb::open(&path, true) {
                Ok(db) => break db,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("opening {}: {e}", path.display()),
            }
        };
        SessionsDbHandle {
            db: std::sync::Arc::new(db),
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        }
    }

    fn id(sid: &str) -> bits_proto::SessionId {
        bits_proto::SessionId::parse(sid).expect("session id")
    }

    /// The record as JSON, as the server stores it.
    pub fn get(&self, sid: &str) -> Option<serde_json::Value> {
        use bits_server::store::SessionStore as _;
        let rec = self
            .rt
            .block_on(self.db.load(Self::id(sid)))
            .expect("load")?;
        Some(serde_json::to_value(rec).expect("json"))
    }

    /// Replaces the record with `value` (which must still parse as a record).
    pub fn put(&self, value: &serde_json::Value) {
        use bits_server::store::SessionStore as _;
        let rec: bits_server::store::SessionRecord =
            serde_json::from_value(value.clone()).expect("a session record");
        self.rt.block_on(self.db.save(&rec)).expect("save");
    }

    /// Every record.
    pub fn all(&self) -> Vec<serde_json::Value> {
        use bits_server::store::SessionStore as _;
        let ids = self.rt.block_on(self.db.list()).expect("list");
        ids.into_iter()
            .filter_map(|id| self.get(&id.to_string()))
            .collect()
    }
}

/// Spool directory name of a session id: the hyphenated lower-case GUID without braces.
pub fn spool_name(sid: &str) -> String {
    sid.trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

/// `^\{[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}\}$`
pub fn is_braced_guid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 38 || b[0] != b'{' || b[37] != b'}' {
        return false;
    }
    b[1..37].iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

impl Conn {
    /// Like `write_raw`, but reports errors (a server may close instead of draining a body).
    pub fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// `read_response` for a non-HEAD request, but `None` when the server closed the
    /// connection before sending a status line.
    pub fn try_read_response(&mut self) -> Option<Response> {
        if self.stream.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
            return None;
        }
        Some(self.read_response(false))
    }

    /// Half-closes the connection: no more request bytes will follow.
    pub fn shutdown_write(&mut self) {
        self.tcp
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }

    /// Fragment with an explicit `Content-Range` header value (the body is sent as given).
    pub fn fragment_raw_range(
        &mut self,
        path: &str,
        session: &str,
        range: &str,
        body: &[u8],
    ) -> Response {
        self.bits(
            path,
            "Fragment",
            &[("BITS-Session-Id", session), ("Content-Range", range)],
            body,
        )
    }
}

impl Response {
    /// Asserts the 416 range-resync Ack: `BITS-Received-Content-Range`, `BITS-Session-Id`, and
    /// no error headers.
    #[track_caller]
    pub fn assert_416(&self, session: &str, received: u64) {
        self.assert_ack(416, None);
        assert_eq!(self.received(), Some(received), "{:?}", self.headers);
        assert_eq!(
            self.header("bits-session-id"),
            Some(session),
            "{:?}",
            self.headers
        );
    }
}

pub const E_INVALIDARG: (&str, &str) = ("0x80070057", "0x5");
pub const E_ACCESSDENIED: (&str, &str) = ("0x80070005", "0x5");
pub const E_PATH_NOT_FOUND: (&str, &str) = ("0x80070003", "0x5");
pub const SESSION_NOT_FOUND: (&str, &str) = ("0x8020001F", "0x5");
pub const TOO_LARGE: (&str, &str) = ("0x80200020", "0x5");
pub const HTTP_413: (&str, &str) = ("0x8019019D", "0x5");

/// Adds `user` with `password` to a users file through `bitsd passwd --password-stdin`.
pub fn add_user(file: &Path, user: &str, password: &str) {
    passwd(file, user, password, &[]);
}

/// Apache's `htpasswd` (Debian: apache2-utils, which scripts/test.sh installs) with these
/// arguments, `-b` style (the password on the command line: a test's throwaway password).
pub fn htpasswd(args: &[&str]) {
    let out = Command::new("htpasswd")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("htpasswd: {e} (install apache2-utils; scripts/test.sh does)"));
    assert!(
        out.status.success(),
        "htpasswd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bitsd passwd --ntlm`: the user's NT hash, for NTLM vdirs.
pub fn add_ntlm_user(file: &Path, user: &str, password: &str) {
    passwd(file, user, password, &["--ntlm"]);
}

fn passwd(file: &Path, user: &str, password: &str, flags: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitsd"))
        .args(["passwd", "--password-stdin"])
        .args(flags)
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn bitsd passwd");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("password");
    assert!(
        child.wait().expect("bitsd passwd").success(),
        "bitsd passwd failed"
    );
}

/// One NTLM sign-in on `c` (NEGOTIATE, then an AUTHENTICATE for `user` in `domain`) with a
/// Ping to `path`; the server's answer to the AUTHENTICATE. The user name travels as UTF-16
/// inside base64, so it can hold bytes no HTTP header could (CR, LF, ESC).
pub fn ntlm_sign_in(
    c: &mut Conn,
    path: &str,
    user: &str,
    domain: &str,
    password: &str,
) -> Response {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let negotiate = format!("NTLM {}", b64.encode(bits_proto::ntlm::negotiate_message()));
    let r = c.bits(path, "Ping", &[("Authorization", &negotiate)], b"");
    assert_eq!(r.status, 401, "NEGOTIATE is answered with a challenge");
    let challenge = r
        .header("WWW-Authenticate")
        .and_then(|v| v.strip_prefix("NTLM "))
        .and_then(|t| b64.decode(t).ok())
        .expect("an NTLM challenge");
    let answer = bits_proto::ntlm::authenticate_message(&challenge, user, domain, password, [7; 8])
        .expect("AUTHENTICATE");
    let auth = format!("NTLM {}", b64.encode(answer));
    c.bits(path, "Ping", &[("Authorization", &auth)], b"")
}
