//! `bitsd replay FILE --url URL`: plays a capture (see `bits_server::capture`) against a server
//! and prints where its answers differ from the recorded ones.
//!
//! Requests go out as recorded: method, target, version, header order and framing
//! (`Content-Length` or chunked). Bodies are regenerated with the recorded lengths (the bytes
//! themselves were never captured): a Fragment's bytes are a function of their offset in the
//! file, so resent and overlapping ranges agree. Session ids the new server hands out replace
//! the recorded ones in later requests. Credentials were not captured, so `Authorization`
//! headers are left out: replay against a vdir without authentication. `https://` URLs are
//! verified against the system's roots, or `--cacert`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bits_server::capture::{keeps_value, recorded_value, Exchange};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A capture file (`<session>.jsonl` or `no-session.jsonl` from `capture_dir`).
    file: PathBuf,
    /// The server to replay against: `http://host:port` or `https://host:port` (the recorded
    /// paths are kept).
    #[arg(long)]
    url: String,
    /// With https: trust these PEM certificates instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
}

/// Where the requests go: the authority, and TLS settings for https.
struct Target {
    authority: String,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl Target {
    fn parse(args: &ReplayArgs) -> Result<Target> {
        let (https, rest) = if let Some(rest) = args.url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = args.url.strip_prefix("https://") {
            (true, rest)
        } else {
            bail!("--url must start with http:// or https://");
        };
        let authority = rest
            .split('/')
            .next()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| anyhow!("--url has no host"))?
            .to_string();
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
            // The host without the port, brackets of an IPv6 literal removed.
            let host = match authority.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => authority.as_str(),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| anyhow!("{host}: not a TLS server name: {e}"))?;
            Some((config, name))
        } else {
            if args.cacert.is_some() {
                bail!("--cacert is for https:// URLs");
            }
            None
        };
        Ok(Target { authority, tls })
    }
}

/// Response headers whose values differ between any two runs by nature.
const IGNORED: [&str; 3] = ["date", "server", "keep-alive"];
/// Request headers not replayed: the new `Host` is the URL's, credentials were not captured.
const NOT_REPLAYED: [&str; 3] = ["host", "authorization", "proxy-authorization"];

/// Replays the file; the number of exchanges whose answers differ.
pub fn replay(args: &ReplayArgs) -> Result<usize> {
    let target = Target::parse(args)?;
    let authority = target.authority.clone();
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let exchanges: Vec<Exchange> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("line {} of the capture", i + 1))
        })
        .collect::<Result<_>>()?;
    let mut sessions: HashMap<String, String> = HashMap::new();
    let mut conn: Option<Conn> = None;
    let mut differing = 0;
    for (i, ex) in exchanges.iter().enumerate() {
        let c = match conn.take() {
            Some(c) => c,
            None => Conn::open(&target)?,
        };
        let (got, kept) = c.exchange(&authority, ex, &sessions)?;
        conn = kept;
        if let (Some(old), Some(new)) = (
            header(&ex.response.headers, "bits-session-id"),
            header(&got.headers, "bits-session-id"),
        ) {
            sessions.insert(old.to_string(), new.to_string());
        }
        let diffs = differences(&ex.response, &got, &sessions);
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
        // The live answer is redacted as the capture was, so that only what was kept compares.
        let after = header(&got.headers, &name)
            .map(|v| normalise(&name, &recorded_value(&name, v.as_bytes()), sessions));
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

impl Conn {
    fn open(target: &Target) -> Result<Conn> {
        let authority = &target.authority;
        let tcp =
            TcpStream::connect(authority).with_context(|| format!("connecting to {authority}"))?;
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

    /// Sends `ex`'s request and reads the answer; the connection back if it may carry the next.
    fn exchange(
        mut self,
        authority: &str,
        ex: &Exchange,
        sessions: &HashMap<String, String>,
    ) -> Result<(Response, Option<Conn>)> {
        let req = &ex.request;
        let mut head = format!(
            "{} {} {}\r\nHost: {authority}\r\n",
            req.method, req.target, req.version
        );
        let mut chunked = false;
        let mut declared: Option<u64> = None;
        for (name, value) in &req.headers {
            let lower = name.to_ascii_lowercase();
            // A redacted value is not sent as if it were one (`[redacted]` as a credential).
            if NOT_REPLAYED.contains(&lower.as_str()) || !keeps_value(&lower) {
                continue;
            }
            let value = match lower.as_str() {
                "bits-session-id" => sessions.get(value).cloned().unwrap_or(value.clone()),
                "transfer-encoding" => {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                    value.clone()
                }
                "content-length" => {
                    declared = value.trim().parse().ok();
                    value.clone()
                }
                _ => value.clone(),
            };
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        // A Fragment's bytes depend on their offset in the file.
        let first = header(&req.headers, "content-range")
            .and_then(|r| r.trim().strip_prefix("bytes "))
            .and_then(|r| r.split('-').next())
            .and_then(|f| f.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let body: Vec<u8> = (0..req.body.len).map(|i| byte_at(first + i)).collect();
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        if chunked {
            for part in body.chunks(64 << 10) {
                stream.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
                stream.write_all(part)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
        } else {
            stream.write_all(&body)?;
        }
        // The recorded body ended early (the client went away): so does this one.
        let cut_short = declared.is_some_and(|d| d > req.body.len);
        if cut_short {
            stream.end_writes()?;
        }
        let resp = self.read_response()?;
        let close =
            header(&resp.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reusable = !close && !cut_short && req.version == "HTTP/1.1";
        Ok((resp, reusable.then_some(self)))
    }

    fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the server closed the connection without an answer");
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            if self.reader.read_line(&mut l)? == 0 {
                bail!("the server closed the connection mid-head");
            }
            let l = l.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: u64 = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        std::io::copy(&mut (&mut self.reader).take(len), &mut std::io::sink())?;
        Ok(Response { status, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
