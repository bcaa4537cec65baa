//! `bitsd replay FILE --url URL`: plays a capture (see `bits_server::capture`) against a server
//! and prints where its answers differ from the recorded ones.
//!
//! Requests go out as recorded: method, target, version, header order and framing
//! (`Content-Length` or chunked). Bodies are regenerated with the recorded lengths (the bytes
//! themselves were never captured): a Fragment's bytes are a function of their offset in the
//! file, so resent and overlapping ranges agree. Session ids the new server hands out replace
//! the recorded ones in later requests. `https://` URLs are verified against the system's
//! roots, or `--cacert`.
//!
//! A capture is input from elsewhere (a user's machine, a ticket), so nothing in it is trusted:
//! every line is checked before the first request is sent (methods are tokens; targets, header
//! names and values hold no CR, LF, NUL or other control characters; bodies agree with their
//! framing and stay under `--max-body` and `--max-total`), bodies are streamed, never
//! allocated, and the replay neither goes back to the server that recorded the capture nor
//! writes under the recorded names (`--prefix`) unless `--force` says so.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bits_proto::{ContentRange, RangeError, SessionId};
use bits_server::capture::{keeps_value, recorded_value, Exchange, REDACTED};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A capture file (`<session>.jsonl` or `no-session.jsonl` from `capture_dir`).
    file: PathBuf,
    /// The server to replay against: `http://host:port` or `https://host:port` (the recorded
    /// paths are kept, see --prefix).
    #[arg(long)]
    url: String,
    /// With https: trust these PEM certificates instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
    /// Put before the file name (the last path segment) of every request, so that a replay
    /// never writes over a real upload: `/upload/a.bin` becomes `/upload/<PREFIX>a.bin`.
    /// Letters, digits, `.`, `_` and `-`. Default: `replay-<UTC time>-`
    /// (`replay-20250101T120000Z-`); with --force and without --prefix, none.
    #[arg(long)]
    prefix: Option<String>,
    /// Replay into the server that recorded the capture, and under the recorded names unless
    /// --prefix is given. Only for a scratch server whose uploads do not matter.
    #[arg(long)]
    force: bool,
    /// Largest body one request may have, in bytes; a capture line claiming more is refused.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    max_body: u64,
    /// Largest sum of all the bodies of the capture, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 30)]
    max_total: u64,
}

/// Why a capture line cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("not a capture line: {0}")]
    Json(serde_json::Error),
    #[error("method {0:?} is not an HTTP token")]
    Method(String),
    #[error("version {0:?}: only HTTP/1.1 and HTTP/1.0 are replayed")]
    Version(String),
    #[error(
        "target {0:?} holds a character a request line cannot carry (a control character such \
         as CR, LF or NUL, a space, `#` or a non-ASCII character)"
    )]
    TargetCharacter(String),
    #[error("target {0:?} is not a path starting with `/`")]
    Target(String),
    #[error("header name {0:?} is not an HTTP token")]
    HeaderName(String),
    #[error(
        "the value of header {0:?} holds a control character (CR, LF, NUL, DEL or another; only \
         tab is allowed)"
    )]
    HeaderValue(String),
    #[error("{0} {1} headers")]
    Repeated(usize, &'static str),
    #[error("Content-Length {0:?} is not a number")]
    Length(String),
    #[error("Transfer-Encoding {0:?}: only `chunked` is replayed")]
    Coding(String),
    #[error("both Content-Length and Transfer-Encoding")]
    BothFramings,
    #[error(
        "a body of {body} bytes with Content-Length {declared}: the rest would be read as \
         another request"
    )]
    LongerThanLength { body: u64, declared: u64 },
    #[error("a body of {0} bytes without Content-Length or Transfer-Encoding")]
    Unframed(u64),
    #[error("Content-Range {0:?}: {1}")]
    Range(String, RangeError),
    #[error("a body of {body} bytes for Content-Range {range:?}, which spans {span}")]
    LongerThanRange { body: u64, range: String, span: u64 },
    #[error("Content-Length {declared} for Content-Range {range:?}, which spans {span}")]
    LengthNotRange {
        declared: u64,
        range: String,
        span: u64,
    },
    #[error("a body of {body} bytes, over --max-body ({max})")]
    TooLarge { body: u64, max: u64 },
}

/// A capture that cannot be replayed as it stands.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("line {line} of {file}: {why}")]
    Line {
        file: String,
        line: usize,
        why: Invalid,
    },
    #[error("the bodies of {file} add up to {total} bytes, over --max-total ({max})")]
    TooMuch { file: String, total: u64, max: u64 },
    #[error(
        "line {line} of {file}: the capture was recorded by {recorder}, which --url points to. A \
         replay sends made-up bodies and could replace real uploads there: replay against \
         another server, or pass --force (only for a scratch server)"
    )]
    SameServer {
        file: String,
        line: usize,
        recorder: String,
    },
    #[error(
        "--prefix {0:?}: use letters, digits, `.`, `_` and `-` (an empty prefix replays under the \
         recorded names: only with --force)"
    )]
    Prefix(String),
}

/// Where the requests go: the authority, its addresses, and TLS settings for https.
struct Target {
    /// `host:port`, as connected to and sent in `Host`.
    authority: String,
    /// The host in lower case, without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl Target {
    fn parse(args: &ReplayArgs) -> Result<Target> {
        let url = url::Url::parse(&args.url).with_context(|| format!("--url {}", args.url))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => bail!("--url must start with http:// or https://"),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => bail!("--url has no host"),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| anyhow!("--url has no port"))?;
        let authority = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let tls = if https {
            let ca_pem = match &args.cacert {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            let config = bits_client::tls::client_config(&bits_client::TlsOptions {
                ca_pem,
                ..Default::default()
            })
            .map_err(|e| anyhow!("{e}"))?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| anyhow!("{host}: not a TLS server name: {e}"))?;
            Some((config, name))
        } else {
            if args.cacert.is_some() {
                bail!("--cacert is for https:// URLs");
            }
            None
        };
        Ok(Target {
            authority,
            host,
            port,
            addrs,
            tls,
        })
    }

    /// Whether `ex` was recorded by this target: its recorded address is one of the target's,
    /// or both are this machine's on the same port; the recorded `public_url` or `Host` names
    /// the target's host and port. What it matched, if it did.
    fn recorded(&self, ex: &Exchange) -> Option<String> {
        let scheme_port = |scheme: &str| if scheme == "https" { 443 } else { 80 };
        let mut default_port = if self.tls.is_some() { 443 } else { 80 };
        if let Some(server) = &ex.server {
            if let Some(local) = url::Url::parse(&server.local).ok().and_then(|u| {
                default_port = scheme_port(u.scheme());
                let ip = match u.host()? {
                    url::Host::Ipv4(ip) => IpAddr::V4(ip),
                    url::Host::Ipv6(ip) => IpAddr::V6(ip),
                    url::Host::Domain(_) => return None,
                };
                Some(SocketAddr::new(ip, u.port_or_known_default()?))
            }) {
                let this_machine = |a: &SocketAddr| is_local(a.ip()) && a.port() == local.port();
                if self.addrs.contains(&local)
                    || (is_local(local.ip()) && self.addrs.iter().any(this_machine))
                {
                    return Some(format!("the server at {}", server.local));
                }
            }
            if let Some(public) = server
                .public_url
                .as_deref()
                .and_then(|p| url::Url::parse(p).ok())
            {
                let host = public.host_str().map(|h| h.trim_matches(['[', ']']));
                if host.is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
                    && public.port_or_known_default() == Some(self.port)
                {
                    return Some(format!("the server of public_url {public}"));
                }
            }
        }
        // The Host the client sent: only compared as text, never resolved (a capture must not
        // make the replay look up names of its choosing).
        let host = header(&ex.request.headers, "host")?;
        let authority = http::uri::Authority::from_str(host).ok()?;
        let name = authority.host().trim_matches(['[', ']']);
        let port = authority.port_u16().unwrap_or(default_port);
        let same_name = name.eq_ignore_ascii_case(&self.host);
        let same_addr =
            IpAddr::from_str(name).is_ok_and(|ip| self.addrs.contains(&SocketAddr::new(ip, port)));
        ((same_name && port == self.port) || same_addr)
            .then(|| format!("the server the client called {host}"))
    }
}

/// Whether `ip` is one of this machine's addresses: loopback, or one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok()
}

/// Response headers whose values differ between any two runs by nature, and bitsd's
/// `Bitsd-Error-Reason`: words, not protocol, which IIS never sends.
const IGNORED: [&str; 4] = [
    "date",
    "server",
    "keep-alive",
    bits_proto::headers::ERROR_REASON,
];
/// Request headers not replayed: the new `Host` is the URL's, credentials were not captured.
const NOT_REPLAYED: [&str; 3] = ["host", "authorization", "proxy-authorization"];

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A capture line checked and ready to send.
#[derive(Debug)]
struct Planned {
    method: String,
    /// Path and query as sent: the recorded path with --prefix in its file name, without a
    /// redacted query.
    target: String,
    version: String,
    /// The headers sent, in order: those whose values the capture keeps, but `Host`.
    headers: Vec<(String, String)>,
    framing: Framing,
    /// Bytes of body to send (fewer than `Content-Length` when the recorded body ended early).
    body: u64,
    /// Offset in the file of the body's first byte (a Fragment's `Content-Range`).
    first: u64,
}

impl Planned {
    /// The recorded body ended early (the client went away): so does this one.
    fn cut_short(&self) -> bool {
        matches!(self.framing, Framing::Length(d) if d > self.body)
    }
}

/// Checks `ex` and plans its request; nothing is sent.
fn plan(ex: &Exchange, prefix: &str, max_body: u64) -> Result<Planned, Invalid> {
    let req = &ex.request;
    if http::Method::from_bytes(req.method.as_bytes()).is_err() {
        return Err(Invalid::Method(req.method.clone()));
    }
    if req.version != "HTTP/1.1" && req.version != "HTTP/1.0" {
        return Err(Invalid::Version(req.version.clone()));
    }
    let target = checked_target(&req.target)?;
    let target = with_prefix(&target, prefix);
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    let mut range = None;
    let mut headers = Vec::new();
    for (name, value) in &req.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Invalid::HeaderName(name.clone()));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(Invalid::HeaderValue(name.clone()));
        }
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "content-length" => lengths.push(value.as_str()),
            "transfer-encoding" => codings.push(value.as_str()),
            "content-range" => range = Some(value.as_str()),
            _ => {}
        }
        // A redacted value is not sent as if it were one (`[redacted]` as a credential).
        if !NOT_REPLAYED.contains(&lower.as_str()) && keeps_value(&lower) {
            headers.push((name.clone(), value.clone()));
        }
    }
    let body = req.body.len;
    if body > max_body {
        return Err(Invalid::TooLarge {
            body,
            max: max_body,
        });
    }
    if lengths.len() > 1 {
        return Err(Invalid::Repeated(lengths.len(), "Content-Length"));
    }
    if codings.len() > 1 {
        return Err(Invalid::Repeated(codings.len(), "Transfer-Encoding"));
    }
    let framing = match (lengths.first(), codings.first()) {
        (Some(_), Some(_)) => return Err(Invalid::BothFramings),
        (Some(l), None) => {
            let l = l.trim();
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Invalid::Length(l.to_string()));
            }
            let declared = l.parse().map_err(|_| Invalid::Length(l.to_string()))?;
            if body > declared {
                return Err(Invalid::LongerThanLength { body, declared });
            }
            Framing::Length(declared)
        }
        (None, Some(c)) if c.trim().eq_ignore_ascii_case("chunked") => Framing::Chunked,
        (None, Some(c)) => return Err(Invalid::Coding(c.to_string())),
        (None, None) if body > 0 => return Err(Invalid::Unframed(body)),
        (None, None) => Framing::None,
    };
    let first = match range {
        Some(text) => {
            let r = ContentRange::parse(text).map_err(|e| Invalid::Range(text.to_string(), e))?;
            if body > r.len {
                return Err(Invalid::LongerThanRange {
                    body,
                    range: text.to_string(),
                    span: r.len,
                });
            }
            if let Framing::Length(declared) = framing {
                if declared != r.len {
                    return Err(Invalid::LengthNotRange {
                        declared,
                        range: text.to_string(),
                        span: r.len,
                    });
                }
            }
            r.first
        }
        None => 0,
    };
    Ok(Planned {
        method: req.method.clone(),
        target,
        version: req.version.clone(),
        headers,
        framing,
        body,
        first,
    })
}

/// The recorded target as it may be sent: visible ASCII only, a path starting with `/`, a
/// redacted query (`?[redacted]`) left out.
fn checked_target(recorded: &str) -> Result<String, Invalid> {
    if !recorded.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(Invalid::TargetCharacter(recorded.to_string()));
    }
    let target = recorded
        .strip_suffix(REDACTED)
        .and_then(|t| t.strip_suffix('?'))
        .unwrap_or(recorded);
    match http::uri::PathAndQuery::from_str(target) {
        Ok(p) if p.path().starts_with('/') => Ok(p.as_str().to_string()),
        _ => Err(Invalid::Target(recorded.to_string())),
    }
}

/// `target` with `prefix` before its last path segment's name; a target naming a directory
/// (ending in `/`) is left as it is: nothing can be written there.
fn with_prefix(target: &str, prefix: &str) -> String {
    let (path, query) = match target.find('?') {
        Some(at) => target.split_at(at),
        None => (target, ""),
    };
    match path.rfind('/') {
        Some(at) if at + 1 < path.len() => {
            format!("{}{prefix}{}{query}", &path[..=at], &path[at + 1..])
        }
        _ => target.to_string(),
    }
}

/// `--prefix`, or the default one for this run.
fn prefix(args: &ReplayArgs) -> Result<String, CaptureError> {
    let prefix = match &args.prefix {
        Some(p) => p.clone(),
        None if args.force => String::new(),
        None => {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let compact: String = now.chars().filter(|c| !matches!(c, '-' | ':')).collect();
            format!("replay-{compact}-")
        }
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !prefix.chars().all(allowed) || (prefix.is_empty() && !args.force) {
        return Err(CaptureError::Prefix(prefix));
    }
    Ok(prefix)
}

/// Replays the file; the number of exchanges whose answers differ.
pub fn replay(args: &ReplayArgs) -> Result<usize> {
    let prefix = prefix(args)?;
    let target = Target::parse(args)?;
    let file = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {file}"))?;
    // Every line is checked before anything is sent: a bad line late in a file must not leave
    // a half-replayed session behind.
    let mut exchanges = Vec::new();
    let mut total: u64 = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why| CaptureError::Line {
            file: file.clone(),
            line: i + 1,
            why,
        };
        let ex: Exchange = serde_json::from_str(line).map_err(|e| bad(Invalid::Json(e)))?;
        let planned = plan(&ex, &prefix, args.max_body).map_err(bad)?;
        if !args.force {
            if let Some(recorder) = target.recorded(&ex) {
                return Err(CaptureError::SameServer {
                    file: file.clone(),
                    line: i + 1,
                    recorder,
                }
                .into());
            }
        }
        total = total.saturating_add(planned.body);
        exchanges.push((ex, planned));
    }
    if total > args.max_total {
        return Err(CaptureError::TooMuch {
            file,
            total,
            max: args.max_total,
        }
        .into());
    }
    if !prefix.is_empty() {
        println!("replaying under file names starting with {prefix}");
    }
    let mut sessions: HashMap<String, String> = HashMap::new();
    let mut conn: Option<Conn> = None;
    let mut differing = 0;
    for (i, (ex, planned)) in exchanges.iter().enumerate() {
        let c = match conn.take() {
            Some(c) => c,
            None => Conn::open(&target)?,
        };
        let (got, kept) = c.exchange(&target.authority, planned, &sessions)?;
        conn = kept;
        // The new id goes into later requests' heads: only a well-formed one is taken.
        if let (Some(old), Some(new)) = (
            header(&ex.response.headers, "bits-session-id"),
            header(&got.headers, "bits-session-id").filter(|v| SessionId::parse(v).is_ok()),
        ) {
            sessions.insert(old.to_string(), new.to_string());
        }
        let diffs = differences(&ex.response, &got, &sessions, &prefix);
        if !diffs.is_empty() {
            differing += 1;
            println!("#{} {}", i + 1, describe(ex));
            for d in diffs {
                println!("  {d}");
            }
        }
    }
    println!(
        "{} exchanges replayed, {differing} with different answers",
        exchanges.len()
    );
    Ok(differing)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `Fragment bytes 0-99/200 POST /upload/a.bin` and the like.
fn describe(ex: &Exchange) -> String {
    let h = &ex.request.headers;
    let packet = header(h, "bits-packet-type").unwrap_or("-");
    match header(h, "content-range") {
        Some(range) => format!("{packet} {range} {}", ex.request.target),
        None => format!("{packet} {}", ex.request.target),
    }
}

/// A value with every recorded session id (and its new counterpart) replaced by `<session>`,
/// and an absolute URL reduced to its path: what must agree between two servers.
fn normalise(name: &str, value: &str, sessions: &HashMap<String, String>) -> String {
    let mut v = value.to_string();
    for (old, new) in sessions {
        for id in [old, new] {
            v = v.replace(id.as_str(), "<session>");
            let bare = id
                .trim_matches(|c| c == '{' || c == '}')
                .to_ascii_lowercase();
            v = v.replace(&bare, "<session>");
        }
    }
    if name.eq_ignore_ascii_case("bits-reply-url") {
        if let Some(rest) = v.split_once("://").map(|(_, r)| r) {
            v = rest
                .find('/')
                .map_or(String::new(), |at| rest[at..].to_string());
        }
    }
    v
}

fn differences(
    recorded: &bits_server::capture::CapturedResponse,
    got: &Response,
    sessions: &HashMap<String, String>,
    prefix: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    if recorded.status != got.status {
        out.push(format!("status: {} -> {}", recorded.status, got.status));
    }
    let mut names: Vec<String> = recorded
        .headers
        .iter()
        .chain(got.headers.iter())
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| !IGNORED.contains(&k.as_str()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let before = header(&recorded.headers, &name).map(|v| normalise(&name, v, sessions));
        // The live answer is redacted as the capture was, so that only what was kept compares;
        // the prefix is the replay's own doing.
        let after = header(&got.headers, &name).map(|v| {
            let v = recorded_value(&name, v.as_bytes());
            let v = if prefix.is_empty() {
                v
            } else {
                v.replace(prefix, "")
            };
            normalise(&name, &v, sessions)
        });
        if before != after {
            out.push(format!(
                "{name}: {} -> {}",
                before.as_deref().unwrap_or("(absent)"),
                after.as_deref().unwrap_or("(absent)")
            ));
        }
    }
    out
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body was read to its end: the connection may carry another request.
    complete: bool,
}

/// A byte stream to the server: TCP, or TLS over it.
trait Stream: Read + Write + Send {
    /// Ends the request body early (the recorded one did).
    fn end_writes(&mut self) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn end_writes(&mut self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn end_writes(&mut self) -> std::io::Result<()> {
        self.conn.send_close_notify();
        self.flush()
    }
}

struct Conn {
    reader: BufReader<Box<dyn Stream>>,
}

/// Byte `i` of a regenerated body (`i` counted from the start of the file for Fragments).
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Bytes generated and written at a time: bodies are streamed, whatever length a line claims.
const CHUNK: u64 = 64 << 10;

/// Largest response head read from the server replayed to.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

impl Conn {
    fn open(target: &Target) -> Result<Conn> {
        let authority = &target.authority;
        let tcp = TcpStream::connect(&target.addrs[..])
            .with_context(|| format!("connecting to {authority}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &target.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .with_context(|| format!("TLS to {authority}"))?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `req` and reads the answer; the connection back if it may carry the next.
    fn exchange(
        mut self,
        authority: &str,
        req: &Planned,
        sessions: &HashMap<String, String>,
    ) -> Result<(Response, Option<Conn>)> {
        let mut head = format!(
            "{} {} {}\r\nHost: {authority}\r\n",
            req.method, req.target, req.version
        );
        for (name, value) in &req.headers {
            let value = match name.to_ascii_lowercase().as_str() {
                "bits-session-id" => sessions.get(value).unwrap_or(value),
                _ => value,
            };
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        let mut buf = Vec::with_capacity(CHUNK.min(req.body) as usize);
        let mut at = 0;
        while at < req.body {
            let n = CHUNK.min(req.body - at);
            buf.clear();
            buf.extend((0..n).map(|i| byte_at(req.first + at + i)));
            if req.framing == Framing::Chunked {
                stream.write_all(format!("{n:x}\r\n").as_bytes())?;
                stream.write_all(&buf)?;
                stream.write_all(b"\r\n")?;
            } else {
                stream.write_all(&buf)?;
            }
            at += n;
        }
        if req.framing == Framing::Chunked {
            stream.write_all(b"0\r\n\r\n")?;
        }
        if req.cut_short() {
            stream.end_writes()?;
        }
        stream.flush()?;
        let resp = self.read_response(&req.method)?;
        let close =
            header(&resp.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reusable = resp.complete && !close && !req.cut_short() && req.version == "HTTP/1.1";
        Ok((resp, reusable.then_some(self)))
    }

    fn read_response(&mut self, method: &str) -> Result<Response> {
        // The head, up to its blank line, then parsed whole by httparse.
        let mut head = Vec::new();
        loop {
            let before = head.len();
            let n = (&mut self.reader)
                .take((MAX_RESPONSE_HEAD + 1 - head.len()) as u64)
                .read_until(b'\n', &mut head)?;
            if n == 0 {
                if before == 0 {
                    bail!("the server closed the connection without an answer");
                }
                bail!("the server closed the connection mid-head");
            }
            if head.len() > MAX_RESPONSE_HEAD {
                bail!("the server's answer has a head over {MAX_RESPONSE_HEAD} bytes");
            }
            if head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n") {
                break;
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut fields);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => bail!("the server's answer ended mid-head"),
            Err(e) => bail!("the server's answer is not HTTP: {e}"),
        }
        let status = parsed
            .code
            .ok_or_else(|| anyhow!("the server's answer has no status"))?;
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        // No body after HEAD, 1xx, 204 and 304; a length is read past; anything else (chunked,
        // or until the connection closes) ends the connection's use.
        let bodiless = method == "HEAD" || status / 100 == 1 || status == 204 || status == 304;
        let complete = if bodiless {
            true
        } else if header(&headers, "transfer-encoding").is_some() {
            false
        } else {
            match header(&headers, "content-length").map(str::parse::<u64>) {
                Some(Ok(len)) => {
                    let read =
                        std::io::copy(&mut (&mut self.reader).take(len), &mut std::io::sink())?;
                    read == len
                }
                _ => false,
            }
        };
        Ok(Response {
            status,
            headers,
            complete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bits_server::capture::{BodySummary, CapturedRequest, CapturedResponse, RecordingServer};

    #[test]
    fn session_ids_and_reply_hosts_are_normalised() {
        let mut s = HashMap::new();
        s.insert(
            "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}".to_string(),
            "{00000000-1111-2222-3333-444444444444}".to_string(),
        );
        assert_eq!(
            normalise(
                "bits-reply-url",
                "http://10.0.0.1:80/upload/BITS-Sessions/Replies/a0ff5911-4144-45b3-bf27-27afc8ec8a67/responsefile.bin",
                &s
            ),
            "/upload/BITS-Sessions/Replies/<session>/responsefile.bin"
        );
        assert_eq!(
            normalise(
                "bits-session-id",
                "{00000000-1111-2222-3333-444444444444}",
                &s
            ),
            "<session>"
        );
    }

    fn fragment(headers: &[(&str, &str)], len: u64) -> Exchange {
        Exchange {
            at_ms: 0,
            server: None,
            request: CapturedRequest {
                method: "BITS_POST".into(),
                target: "/upload/a.bin".into(),
                version: "HTTP/1.1".into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: BodySummary {
                    len,
                    sha256: String::new(),
                },
            },
            response: CapturedResponse {
                status: 200,
                headers: vec![],
            },
        }
    }

    #[test]
    fn framing_must_agree_with_the_body() {
        let ok = |h: &[(&str, &str)], len| plan(&fragment(h, len), "", 1 << 30);
        let range = ("content-range", "bytes 100-199/1000");
        let p = ok(&[range, ("content-length", "100")], 100).unwrap();
        assert_eq!(
            (p.framing, p.first, p.body),
            (Framing::Length(100), 100, 100)
        );
        // Cut short: fewer bytes than declared, as a client that went away sent.
        assert!(ok(&[range, ("content-length", "100")], 60)
            .unwrap()
            .cut_short());
        assert!(matches!(
            ok(&[("content-length", "10")], 11),
            Err(Invalid::LongerThanLength { .. })
        ));
        assert!(matches!(
            ok(&[range, ("content-length", "99")], 99),
            Err(Invalid::LengthNotRange { .. })
        ));
        assert!(matches!(
            ok(&[range, ("transfer-encoding", "chunked")], 101),
            Err(Invalid::LongerThanRange { .. })
        ));
        assert!(matches!(ok(&[], 1), Err(Invalid::Unframed(1))));
        assert!(matches!(
            ok(&[("content-length", "+5")], 5),
            Err(Invalid::Length(_))
        ));
        assert!(matches!(
            ok(&[("content-length", "5"), ("content-length", "5")], 5),
            Err(Invalid::Repeated(2, _))
        ));
        assert!(matches!(
            ok(
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                5
            ),
            Err(Invalid::BothFramings)
        ));
        assert!(matches!(
            ok(&[("transfer-encoding", "gzip, chunked")], 5),
            Err(Invalid::Coding(_))
        ));
        assert!(matches!(
            plan(
                &fragment(&[("content-length", "1099511627776")], 1 << 40),
                "",
                1 << 30
            ),
            Err(Invalid::TooLarge { .. })
        ));
    }

    #[test]
    fn the_recording_server_is_known_by_address_public_url_or_host() {
        let target = Target {
            authority: "bits.example.com:443".into(),
            host: "bits.example.com".into(),
            port: 443,
            addrs: vec!["192.0.2.7:443".parse().unwrap()],
            tls: None,
        };
        let with = |server: Option<RecordingServer>, host: &str| {
            let mut ex = fragment(&[("host", host)], 0);
            ex.server = server;
            target.recorded(&ex)
        };
        let server = |local: &str, public: Option<&str>| {
            Some(RecordingServer {
                local: local.into(),
                public_url: public.map(Into::into),
            })
        };
        assert!(with(server("http://192.0.2.7:443", None), "x").is_some());
        assert!(with(
            server("https://198.51.100.1:443", Some("https://BITS.example.com")),
            "x"
        )
        .is_some());
        assert!(with(None, "BITS.example.com:443").is_some());
        assert!(with(None, "192.0.2.7:443").is_some());
        // Another port or another name is another server (the Host's port defaults to the
        // scheme's, 80 without a recorded https address).
        assert!(with(None, "bits.example.com").is_none());
        assert!(with(server("https://198.51.100.1:443", None), "bits.example.com").is_some());
        assert!(with(
            server("http://198.51.100.1:8080", Some("http://other.example.com")),
            "other.example.com"
        )
        .is_none());
    }

    #[test]
    fn prefixes_go_before_the_file_name() {
        assert_eq!(with_prefix("/upload/a.bin", "r-"), "/upload/r-a.bin");
        assert_eq!(
            with_prefix("/upload/d/a.bin?x=1", "r-"),
            "/upload/d/r-a.bin?x=1"
        );
        assert_eq!(with_prefix("/upload/", "r-"), "/upload/");
        assert_eq!(with_prefix("/upload/a.bin", ""), "/upload/a.bin");
        assert_eq!(
            checked_target("/upload/a.bin?[redacted]").unwrap(),
            "/upload/a.bin"
        );
        for bad in ["/a\r\nb", "/a b", "/a\0", "/a#b", "/é"] {
            assert!(matches!(
                checked_target(bad),
                Err(Invalid::TargetCharacter(_))
            ));
        }
        assert!(matches!(checked_target("*"), Err(Invalid::Target(_))));
    }
}
