//! Slow-loris defence (config `header_read_timeout`, `body_idle_timeout`): connections that send
//! no request head, or only part of one, are cut off after the header timeout while normal
//! uploads proceed; a fragment body that stalls is abandoned after the body idle timeout and its
//! session stays usable.

use crate::common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONFIG: &str = "header_read_timeout = \"2s\"\nbody_idle_timeout = \"2s\"";
const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the server has closed `s`: a read returns EOF or an error other than "no data yet".
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A plain HTTP error (e.g. 408) before the close is fine; keep reading.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Polls until every connection in `conns` is closed by the server or `deadline` passes;
/// returns when the last one was seen closed, or the labels of those still open.
fn wait_all_closed(
    conns: &mut [(TcpStream, String)],
    deadline: Instant,
) -> Result<Instant, Vec<String>> {
    let mut open: Vec<usize> = (0..conns.len()).collect();
    loop {
        open.retain(|&i| !closed_by_server(&mut conns[i].0));
        if open.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(open.iter().map(|&i| conns[i].1.clone()).collect());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Partial request heads a slow-loris client might send before stalling.
fn partial_head(i: usize) -> Vec<u8> {
    let full = format!(
        "BITS_POST /upload/loris-{i}.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         User-Agent: Microsoft BITS/7.8\r\nBITS-Packet-Type: Create-Session\r\n\
         BITS-Supported-Protocols: {PROTOCOL}\r\nContent-Length: 0\r\n\r\n"
    );
    let cut = match i % 5 {
        0 => 1,              // one byte of the method
        1 => 12,             // inside the request target
        2 => full.len() / 2, // inside the headers
        3 => full.len() - 1, // everything but the very last LF
        _ => full.len() - 2, // last header line ended, blank line missing
    };
    full.as_bytes()[..cut].to_vec()
}

#[test]
fn idle_connections_are_cut_off_while_an_upload_proceeds() {
    let s = Server::start(CONFIG);
    let started = Instant::now();
    let mut idle: Vec<(TcpStream, String)> = Vec::with_capacity(500);
    let mut slowest = Duration::ZERO;
    let mut connect = || {
        let t = Instant::now();
        let c = TcpStream::connect(s.addr).expect("connect");
        slowest = slowest.max(t.elapsed());
        c
    };
    for i in 0..250 {
        idle.push((connect(), format!("silent #{i}")));
    }
    for i in 0..250 {
        let mut c = connect();
        c.set_nodelay(true).unwrap();
        c.write_all(&partial_head(i)).expect("write partial head");
        idle.push((c, format!("partial head #{i} (variant {})", i % 5)));
    }
    let opened = Instant::now();
    // (The listen backlog is 128: a burst like this can cost a 1 s SYN retransmit.)
    eprintln!(
        "500 connections opened in {:?}, slowest connect {slowest:?}",
        opened - started
    );

    // A normal upload on a fresh connection is not held up by them.
    let data = pattern(4 << 20, 0x5105);
    let t0 = Instant::now();
    let mut c = s.conn();
    let sid = upload(&mut c, "/upload/loris.bin", &data, 256 << 10);
    c.close("/upload/loris.bin", &sid).assert_ack(200, None);
    let took = t0.elapsed();
    let still_open = idle
        .iter_mut()
        .filter(|(c, _)| !closed_by_server(&mut c.try_clone().unwrap()))
        .count();
    eprintln!("4 MiB upload took {took:?}; {still_open} idle connections open when it ended");
    assert!(took < Duration::from_secs(8), "upload took {took:?}");
    assert!(
        std::fs::read(s.upload_path("loris.bin")).unwrap() == data,
        "uploaded file differs"
    );

    // Every idle connection is closed about header_read_timeout after it was opened.
    match wait_all_closed(&mut idle, started + Duration::from_secs(10)) {
        Ok(at) => {
            let after = at.saturating_duration_since(opened);
            eprintln!("all 500 idle connections closed {after:?} after the last was opened");
            assert!(
                after <= TIMEOUT + Duration::from_secs(2),
                "idle connections closed only {after:?} after opening (header_read_timeout 2s)"
            );
        }
        Err(open) => panic!(
            "{} of 500 idle connections still open after 10 s, e.g. {:?}",
            open.len(),
            &open[..open.len().min(5)]
        ),
    }
    // The server is fine afterwards.
    s.conn()
        .bits("/upload/p.bin", "Ping", &[], b"")
        .assert_ack(200, None);
}

#[test]
fn head_trickled_byte_by_byte_is_cut_off_at_the_deadline() {
    // The header timeout is a deadline for the whole head, not an idle timer per byte.
    let s = Server::start(CONFIG);
    let head = partial_head(3);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_nodelay(true).unwrap();
    let t0 = Instant::now();
    let mut cut_off = None;
    for b in head.iter().cycle().take(200) {
        if c.write_all(&[*b]).is_err() || closed_by_server(&mut c) {
            cut_off = Some(t0.elapsed());
            break;
        }
        c.set_nonblocking(false).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = cut_off.expect("connection still open after 20 s of trickling");
    eprintln!("trickling connection closed after {at:?}");
    assert!(
        at >= TIMEOUT - Duration::from_millis(300) && at <= TIMEOUT + Duration::from_secs(2),
        "closed after {at:?}"
    );
}

#[test]
fn idle_keep_alive_connections_are_cut_off() {
    // After a complete request, waiting for the next head is the same as waiting for the first.
    let s = Server::start(CONFIG);
    let mut idle = vec![];
    for i in 0..20 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(&request_bytes(
            "BITS_POST",
            "/upload/p.bin",
            &[("BITS-Packet-Type", "Ping")],
            b"",
        ))
        .unwrap();
        // Read the whole (bodiless) response head.
        let mut got = vec![];
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut b).unwrap(), 1, "ping response cut short");
            got.push(b[0]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        idle.push((c, format!("keep-alive #{i}")));
    }
    let opened = Instant::now();
    match wait_all_closed(&mut idle, opened + Duration::from_secs(10)) {
        Ok(at) => {
            let after = at - opened;
            eprintln!("idle keep-alive connections closed after {after:?}");
            assert!(after <= TIMEOUT + Duration::from_secs(2), "{after:?}");
        }
        Err(open) => panic!(
            "{} keep-alive connections still open after 10 s",
            open.len()
        ),
    }
}

#[test]
fn stalled_fragment_body_is_abandoned_and_the_session_survives() {
    let s = Server::start(CONFIG);
    let url = "/upload/stalled.bin";
    let total = (1 << 20) + (300 << 10);
    let data = pattern(total, 0x57a11);
    let mut c = s.conn();
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();

    // Headers of a 1 MiB fragment and 10 KiB of its body, then nothing.
    let frag = 1 << 20;
    let range = format!("bytes 0-{}/{total}", frag - 1);
    let len = frag.to_string();
    let head = request_bytes(
        "BITS_POST",
        url,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", &range),
            ("Content-Length", &len),
        ],
        b"",
    );
    let mut stalled = TcpStream::connect(s.addr).unwrap();
    stalled.set_nodelay(true).unwrap();
    stalled.write_all(&head).unwrap();
    stalled.write_all(&data[..10 << 10]).unwrap();
    let t0 = Instant::now();

    // The server gives up after body_idle_timeout: an error answer (if any), then a close.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = vec![];
    let mut buf = [0u8; 4096];
    let closed_at = loop {
        match stalled.read(&mut buf) {
            Ok(0) => break t0.elapsed(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!(
                    "stalled fragment connection still open after {:?}; got {:?}",
                    t0.elapsed(),
                    String::from_utf8_lossy(&answer)
                )
            }
            Err(_) => break t0.elapsed(),
        }
    };
    let answer = String::from_utf8_lossy(&answer).into_owned();
    eprintln!("stalled fragment closed after {closed_at:?}; answer {answer:?}");
    assert!(
        closed_at >= TIMEOUT - Duration::from_millis(300)
            && closed_at <= TIMEOUT + Duration::from_secs(3),
        "closed after {closed_at:?}"
    );
    if !answer.is_empty() {
        assert!(
            !answer.starts_with("HTTP/1.1 2"),
            "stalled fragment acknowledged: {answer:?}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("bits-packet-type: ack"),
            "{answer:?}"
        );
    }

    // The session is still there: a fragment past the held bytes is answered with 416 and the
    // offset to continue from.
    let mut c = s.conn();
    let probe = c.fragment(url, &sid, frag as u64, &data[frag..frag + 1], total as u64);
    probe.assert_416(&sid, probe.received().expect("received"));
    let mut off = probe.received().unwrap() as usize;
    eprintln!("server holds {off} bytes after the stalled fragment");
    assert!(off <= 10 << 10, "server claims {off} bytes");
    while off < total {
        let end = (off + (256 << 10)).min(total);
        let r = c.fragment(url, &sid, off as u64, &data[off..end], total as u64);
        r.assert_ack(200, None);
        assert_eq!(r.received(), Some(end as u64));
        off = end;
    }
    c.close(url, &sid).assert_ack(200, None);
    assert!(
        std::fs::read(s.upload_path("stalled.bin")).unwrap() == data,
        "uploaded file differs"
    );
}
