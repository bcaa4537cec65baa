//! A large download through GET, cut off mid-way and resumed with a Range request, the way a
//! BITS download job resumes; server memory must not grow with the file size.
//! Size: `BITS_LARGE_DOWNLOAD_MIB` (default 128; the issue figure was taken with 512).

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

const CHUNK: usize = 8 << 20;

/// Sends a GET and returns the status, the headers and the still-open reader for the body.
fn get(
    addr: std::net::SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: identity\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = vec![];
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    (status, headers, r)
}

fn find<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn large_download_resumes_after_a_dropped_connection() {
    let mib: u64 = std::env::var("BITS_LARGE_DOWNLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let total = mib << 20;
    let s = Server::start("");
    {
        let mut f = std::fs::File::create(s.upload_path("big.bin")).unwrap();
        for i in 0..total / CHUNK as u64 {
            f.write_all(&pattern(CHUNK, i)).unwrap();
        }
    }
    let check = |offset: u64, bytes: &[u8]| {
        let i = offset / CHUNK as u64;
        let within = (offset % CHUNK as u64) as usize;
        let expected = pattern(CHUNK, i);
        assert!(
            bytes == &expected[within..within + bytes.len()],
            "bytes at {offset} differ"
        );
    };

    // First attempt: full GET, connection dropped after 40% of the body.
    let (status, h, mut body) = get(s.addr, "/upload/big.bin", &[]);
    assert_eq!(status, 200);
    assert_eq!(find(&h, "content-length"), total.to_string());
    let etag = find(&h, "etag").to_string();
    let cut = (total * 2 / 5) / CHUNK as u64 * CHUNK as u64;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < cut {
        body.read_exact(&mut buf).unwrap();
        check(got, &buf);
        got += CHUNK as u64;
    }
    drop(body);

    // Resume from where it stopped, only if the file is unchanged.
    let range = format!("bytes={got}-");
    let (status, h, mut body) = get(
        s.addr,
        "/upload/big.bin",
        &[("Range", &range), ("If-Range", &etag)],
    );
    assert_eq!(status, 206);
    assert_eq!(
        find(&h, "content-range"),
        format!("bytes {got}-{}/{total}", total - 1)
    );
    while got < total {
        body.read_exact(&mut buf).unwrap();
        check(got, &buf);
        got += CHUNK as u64;
    }
    let rss = s.peak_rss_kib();
    eprintln!("downloaded {mib} MiB with one resume; bitsd peak RSS (VmHWM) {rss} KiB");
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
}
