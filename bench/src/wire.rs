//! The benchmarks' raw HTTP/1.1 client: one keep-alive connection, `BITS_POST` with exact
//! bytes, whole responses read (head and any body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Bodies up to this size are sent in one write with the request head.
const SMALL_BODY: usize = 64 << 10;

pub const PROTOCOL: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The server will close the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One keep-alive HTTP/1.1 connection to bitsd.
pub struct Conn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        // Generous: under callgrind a fragment takes far longer than usual.
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        s.set_write_timeout(Some(Duration::from_secs(600)))?;
        Ok(Conn {
            addr,
            stream: BufReader::new(s),
        })
    }

    /// Writes `bytes` as they are (a request head and part of its body, to stall mid-body).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.get_mut().write_all(bytes)?;
        Ok(())
    }

    /// One BITS_POST; reads the whole response (head and any body). A small request goes out
    /// in one write (one segment); a large body is written from where it lies, not copied.
    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
        let addr = self.addr;
        let mut req = format!(
            "BITS_POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        if body.len() <= SMALL_BODY {
            req.extend_from_slice(body);
            self.stream.get_mut().write_all(&req)?;
        } else {
            let stream = self.stream.get_mut();
            stream.write_all(&req)?;
            stream.write_all(body)?;
        }
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            bail!("{addr} closed the connection");
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line from {addr}: {line:?}"))?;
        let mut resp = Response {
            status,
            headers: Vec::new(),
        };
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("{addr} closed the connection mid-response");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                resp.headers
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: u64 = resp
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        std::io::copy(&mut self.stream.by_ref().take(len), &mut std::io::sink())?;
        Ok(resp)
    }
}

/// Anything that sends one `BITS_POST` and returns its response: a connection, or a client
/// spreading requests over farm nodes.
pub trait Post {
    fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response>;
}

impl Post for Conn {
    fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
        Conn::post(self, path, headers, body)
    }
}

/// Create-Session for `path`; the new session's id.
pub fn create_session(client: &mut impl Post, path: &str) -> Result<String> {
    let created = client.post(
        path,
        &[
            ("BITS-Packet-Type", "Create-Session"),
            ("BITS-Supported-Protocols", PROTOCOL),
        ],
        &[],
    )?;
    if created.status != 200 {
        bail!(
            "{path} Create-Session: HTTP {} {:?}",
            created.status,
            created.headers
        );
    }
    Ok(created
        .header("BITS-Session-Id")
        .context("no BITS-Session-Id")?
        .to_string())
}

/// Create-Session, `total` bytes in fragments of `body.len()` (each fragment sends a prefix of
/// `body`), Close-Session. Returns each Fragment Ack's latency in ms (the last one publishes).
pub fn upload(client: &mut impl Post, path: &str, total: u64, body: &[u8]) -> Result<Vec<f64>> {
    let sid = create_session(client, path)?;
    let mut acks = Vec::new();
    let mut off = 0u64;
    while off < total {
        let len = (body.len() as u64).min(total - off);
        let range = format!("bytes {}-{}/{}", off, off + len - 1, total);
        let sent = std::time::Instant::now();
        let resp = client.post(
            path,
            &[
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", &sid),
                ("Content-Range", &range),
            ],
            &body[..len as usize],
        )?;
        acks.push(sent.elapsed().as_secs_f64() * 1e3);
        if resp.status != 200 {
            bail!("fragment at {off}: HTTP {} {:?}", resp.status, resp.headers);
        }
        off += len;
    }
    close_session(client, path, &sid)?;
    Ok(acks)
}

/// Close-Session; anything but 200 is an error.
pub fn close_session(client: &mut impl Post, path: &str, sid: &str) -> Result<()> {
    let closed = client.post(
        path,
        &[
            ("BITS-Packet-Type", "Close-Session"),
            ("BITS-Session-Id", sid),
        ],
        &[],
    )?;
    if closed.status != 200 {
        bail!("Close-Session: HTTP {}", closed.status);
    }
    Ok(())
}
