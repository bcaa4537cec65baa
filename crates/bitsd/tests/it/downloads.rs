use crate::common::*;

// Spec §18 checklist items 72–80: what BITS download jobs need from GET/HEAD (spec §15), on
// published uploads and on upload-reply reply files.

use crate::app;
use app::{App, Behaviour};

use std::time::Duration;

const FILE: &str = "/upload/f.bin";
const LEN: usize = 10_000;

/// A server with `data` published at `/upload/<name>` through a normal BITS upload.
fn publish(s: &Server, name: &str, data: &[u8]) {
    let mut c = s.conn();
    let url = format!("/upload/{name}");
    let sid = upload(&mut c, &url, data, 4096);
    c.close(&url, &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path(name)).unwrap(), data);
}

fn published(len: usize, seed: u64) -> (Server, Vec<u8>) {
    let s = Server::start("");
    let data = pattern(len, seed);
    publish(&s, "f.bin", &data);
    (s, data)
}

fn get(c: &mut Conn, path: &str, headers: &[(&str, &str)]) -> Response {
    c.send("GET", path, headers, b"")
}

fn head(c: &mut Conn, path: &str, headers: &[(&str, &str)]) -> Response {
    c.send("HEAD", path, headers, b"")
}

/// A response to a HEAD carried no body: a following request on the same connection is read
/// correctly (a stray body would be parsed as the next status line).
#[track_caller]
fn assert_connection_in_sync(c: &mut Conn, path: &str, data: &[u8]) {
    let r = get(c, path, &[("Range", "bytes=0-0")]);
    assert_eq!(
        r.status, 206,
        "connection out of sync after HEAD: {:?}",
        r.headers
    );
    assert_eq!(r.body, &data[..1]);
}

#[track_caller]
fn assert_no_coding(r: &Response) {
    assert!(!r.has("transfer-encoding"), "{:?}", r.headers);
    if let Some(ce) = r.header("content-encoding") {
        assert!(ce.eq_ignore_ascii_case("identity"), "Content-Encoding {ce}");
    }
}

/// Every successful GET/HEAD carries a Content-Length (spec §15.5); the reader used it to read
/// the body, so for GET it matched.
#[track_caller]
fn content_length(r: &Response) -> usize {
    r.header("content-length")
        .unwrap_or_else(|| panic!("no Content-Length: {:?}", r.headers))
        .parse()
        .expect("numeric Content-Length")
}

// ---------------------------------------------------------------------------------------------
// The checks of items 72–78, usable on any served file.

fn item_72(c: &mut Conn, path: &str, data: &[u8]) -> Response {
    let h = head(c, path, &[]);
    assert_eq!(h.status, 200, "{:?}", h.headers);
    assert_eq!(content_length(&h), data.len());
    assert!(h.has("last-modified"), "{:?}", h.headers);
    httpdate_ok(h.header("last-modified").unwrap());
    assert_eq!(h.header("accept-ranges"), Some("bytes"), "{:?}", h.headers);
    assert_no_coding(&h);
    assert!(h.body.is_empty());
    assert_connection_in_sync(c, path, data);
    h
}

fn item_73(c: &mut Conn, path: &str, data: &[u8]) {
    let h = head(c, path, &[]);
    let g = get(c, path, &[]);
    assert_eq!(g.status, 200, "{:?}", g.headers);
    assert_eq!(content_length(&g), data.len());
    assert!(g.body == data, "GET body differs from the file");
    assert_no_coding(&g);
    assert!(!g.has("content-range"), "{:?}", g.headers);
    // HEAD headers match GET headers (spec §15.2).
    for name in [
        "content-length",
        "last-modified",
        "etag",
        "accept-ranges",
        "content-type",
    ] {
        assert_eq!(
            h.header(name),
            g.header(name),
            "{name}: HEAD {:?} GET {:?}",
            h.headers,
            g.headers
        );
    }
}

fn item_74(c: &mut Conn, path: &str, data: &[u8]) {
    let len = data.len();
    let g = get(c, path, &[("Range", "bytes=0-99")]);
    assert_eq!(g.status, 206, "{:?}", g.headers);
    assert_eq!(
        g.header("content-range"),
        Some(format!("bytes 0-99/{len}").as_str())
    );
    assert_eq!(content_length(&g), 100);
    assert_eq!(g.body, &data[..100]);
    assert!(g.has("last-modified"), "{:?}", g.headers);
    assert_no_coding(&g);
    // The same as a HEAD.
    let h = head(c, path, &[("Range", "bytes=0-99")]);
    assert_eq!(h.status, 206, "{:?}", h.headers);
    assert_eq!(h.header("content-range"), g.header("content-range"));
    assert_eq!(h.header("content-length"), Some("100"));
    assert_connection_in_sync(c, path, data);
}

fn item_75(c: &mut Conn, path: &str, data: &[u8]) {
    let len = data.len();
    let g = get(c, path, &[("Range", &format!("bytes={}-", len - 10))]);
    assert_eq!(g.status, 206, "{:?}", g.headers);
    assert_eq!(
        g.header("content-range"),
        Some(format!("bytes {}-{}/{len}", len - 10, len - 1).as_str())
    );
    assert_eq!(content_length(&g), 10);
    assert_eq!(g.body, &data[len - 10..]);
}

fn item_76(c: &mut Conn, path: &str, data: &[u8]) {
    let len = data.len();
    let range = format!("bytes={}-{}", 2 * len, 2 * len + 10);
    let g = get(c, path, &[("Range", &range)]);
    assert_eq!(g.status, 416, "{:?}", g.headers);
    assert_eq!(
        g.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    assert_eq!(content_length(&g), g.body.len());
    // The connection stays usable.
    assert_connection_in_sync(c, path, data);
}

fn item_77(c: &mut Conn, path: &str, data: &[u8]) {
    for ae in [
        "identity",
        "gzip, identity",
        "gzip",
        "gzip, deflate, br, *;q=0.1",
    ] {
        let g = get(c, path, &[("Accept-Encoding", ae)]);
        assert_eq!(g.status, 200, "{ae}: {:?}", g.headers);
        assert_no_coding(&g);
        assert_eq!(content_length(&g), data.len(), "{ae}");
        assert!(g.body == data, "{ae}: body is not the identity coding");
        let g = get(
            c,
            path,
            &[("Accept-Encoding", ae), ("Range", "bytes=10-19")],
        );
        assert_eq!(g.status, 206, "{ae}: {:?}", g.headers);
        assert_no_coding(&g);
        assert_eq!(g.body, &data[10..20], "{ae}");
        let h = head(c, path, &[("Accept-Encoding", ae)]);
        assert_no_coding(&h);
        assert_eq!(content_length(&h), data.len(), "{ae}");
    }
}

/// One part of a `multipart/byteranges` body.
#[derive(Debug)]
struct Part {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
}

impl Part {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a `multipart/byteranges` body strictly (RFC 2046 / RFC 9110 §14.6 and the BITS rules
/// of spec §15.8): at most two CRLFs before the first delimiter, each part's length taken from
/// its `Content-Range`, each part followed by CRLF + delimiter, a closing delimiter at the end.
fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let (mime, params) = content_type
        .split_once(';')
        .unwrap_or_else(|| panic!("no boundary in {content_type}"));
    assert!(
        mime.trim().eq_ignore_ascii_case("multipart/byteranges"),
        "{content_type}"
    );
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no boundary in {content_type}"));
    let delimiter = format!("--{boundary}").into_bytes();

    let mut rest = body;
    let mut crlfs = 0;
    while rest.starts_with(b"\r\n") {
        rest = &rest[2..];
        crlfs += 1;
    }
    assert!(crlfs <= 2, "{crlfs} CRLFs before the first boundary");
    assert!(
        rest.starts_with(&delimiter),
        "body does not start with --boundary: {:?}",
        String::from_utf8_lossy(&body[..body.len().min(80)])
    );
    let mut parts = Vec::new();
    loop {
        rest = &rest[delimiter.len()..];
        if let Some(after) = rest.strip_prefix(b"--") {
            // Closing delimiter; only an optional CRLF (epilogue) may follow.
            assert!(
                after.is_empty() || after == b"\r\n",
                "junk after the closing delimiter: {:?}",
                String::from_utf8_lossy(after)
            );
            break;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after the boundary");
        let end = find(rest, b"\r\n\r\n").expect("end of part headers");
        let head = std::str::from_utf8(&rest[..end]).expect("ASCII part headers");
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .map(|l| {
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad part header {l:?}"));
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        rest = &rest[end + 4..];
        let range = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-range"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("part without Content-Range: {headers:?}"));
        let (first, last) = parse_content_range(&range).0;
        let n = (last - first + 1) as usize;
        assert!(rest.len() >= n, "part data truncated");
        let data = rest[..n].to_vec();
        rest = &rest[n..];
        rest = rest
            .strip_prefix(b"\r\n")
            .unwrap_or_else(|| panic!("part data longer than its Content-Range {range}"));
        assert!(
            rest.starts_with(&delimiter),
            "no delimiter after part {range}"
        );
        parts.push(Part { headers, data });
    }
    parts
}

/// `bytes a-b/len` -> ((a, b), len).
fn parse_content_range(v: &str) -> ((u64, u64), u64) {
    let spec = v
        .strip_prefix("bytes ")
        .unwrap_or_else(|| panic!("bad Content-Range {v}"));
    let (span, len) = spec.split_once('/').expect("Content-Range total");
    let (a, b) = span.split_once('-').expect("Content-Range span");
    (
        (a.parse().unwrap(), b.parse().unwrap()),
        len.parse().unwrap(),
    )
}

fn item_78(c: &mut Conn, path: &str, data: &[u8]) {
    let len = data.len();
    for (range, spans) in [
        ("bytes=0-9,20-29", [(0usize, 9usize), (20, 29)]),
        // Request order is kept, not sorted.
        ("bytes=20-29,0-9", [(20, 29), (0, 9)]),
    ] {
        let g = get(c, path, &[("Range", range)]);
        assert_eq!(g.status, 206, "{range}: {:?}", g.headers);
        assert_no_coding(&g);
        assert_eq!(content_length(&g), g.body.len());
        assert!(!g.has("content-range"), "{range}: {:?}", g.headers);
        let ct = g.header("content-type").expect("Content-Type").to_string();
        let parts = parse_multipart(&ct, &g.body);
        assert_eq!(parts.len(), 2, "{range}: {parts:?}");
        for (part, (a, b)) in parts.iter().zip(spans) {
            assert_eq!(
                part.header("content-range"),
                Some(format!("bytes {a}-{b}/{len}").as_str()),
                "{range}: {part:?}"
            );
            assert!(part.header("content-type").is_some(), "{range}: {part:?}");
            let other: usize = part
                .headers
                .iter()
                .filter(|(k, _)| {
                    !k.eq_ignore_ascii_case("content-range")
                        && !k.eq_ignore_ascii_case("content-type")
                })
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum();
            assert!(other <= 180, "{range}: {other} bytes of other part headers");
            assert_eq!(part.data, &data[a..=b], "{range}: part bytes");
        }
        // HEAD announces the same length.
        let h = head(c, path, &[("Range", range)]);
        assert_eq!(h.status, 206);
        assert_eq!(content_length(&h), g.body.len(), "{range}");
        assert_connection_in_sync(c, path, data);
    }
}

fn item_79(c: &mut Conn, path: &str) {
    let first = head(c, path, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let second = head(c, path, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    for name in ["content-length", "last-modified", "etag"] {
        assert!(first.has(name), "{name}: {:?}", first.headers);
        assert_eq!(first.header(name), second.header(name), "{name}");
    }
    // A GET in between/after reports the same version.
    let g = get(c, path, &[]);
    assert_eq!(g.header("last-modified"), first.header("last-modified"));
    assert_eq!(g.header("etag"), first.header("etag"));
}

/// An RFC 9110 HTTP-date in IMF-fixdate form, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
#[track_caller]
fn httpdate_ok(v: &str) {
    let b = v.as_bytes();
    assert!(
        b.len() == 29 && &v[3..5] == ", " && v.ends_with(" GMT"),
        "Last-Modified {v:?} is not an IMF-fixdate"
    );
}

// ---------------------------------------------------------------------------------------------
// Items 72–80 on a published upload.

#[test]
fn item_72_head_reports_size_last_modified_and_accept_ranges() {
    let (s, data) = published(LEN, 72);
    let mut c = s.conn();
    let h = item_72(&mut c, FILE, &data);
    assert_eq!(h.header("content-length"), Some("10000"));
}

#[test]
fn item_73_get_without_range_sends_the_whole_file() {
    let (s, data) = published(LEN, 73);
    let mut c = s.conn();
    item_73(&mut c, FILE, &data);
}

#[test]
fn item_74_single_range_gets_206() {
    let (s, data) = published(LEN, 74);
    let mut c = s.conn();
    item_74(&mut c, FILE, &data);
}

#[test]
fn item_75_open_ended_range_gets_the_tail() {
    let (s, data) = published(LEN, 75);
    let mut c = s.conn();
    item_75(&mut c, FILE, &data);
    // Suffix form, and an end beyond the file, are clamped (RFC 9110 §14.1.2).
    let g = get(&mut c, FILE, &[("Range", "bytes=-10")]);
    assert_eq!(g.status, 206, "{:?}", g.headers);
    assert_eq!(g.header("content-range"), Some("bytes 9990-9999/10000"));
    assert_eq!(g.body, &data[9990..]);
    let g = get(&mut c, FILE, &[("Range", "bytes=9995-20000")]);
    assert_eq!(g.status, 206, "{:?}", g.headers);
    assert_eq!(g.header("content-range"), Some("bytes 9995-9999/10000"));
    assert_eq!(g.body, &data[9995..]);
}

#[test]
fn item_76_unsatisfiable_range_gets_416_with_star_content_range() {
    let (s, data) = published(LEN, 76);
    let mut c = s.conn();
    let g = get(&mut c, FILE, &[("Range", "bytes=20000-20010")]);
    assert_eq!(g.status, 416, "{:?}", g.headers);
    assert_eq!(g.header("content-range"), Some("bytes */10000"));
    item_76(&mut c, FILE, &data);
    // Starting exactly at the end is unsatisfiable too.
    let g = get(&mut c, FILE, &[("Range", "bytes=10000-")]);
    assert_eq!(g.status, 416, "{:?}", g.headers);
    assert_eq!(g.header("content-range"), Some("bytes */10000"));
}

#[test]
fn item_77_no_content_coding_whatever_the_client_accepts() {
    let s = Server::start("");
    // Very compressible content, to tempt a compressing server.
    let data = vec![b'A'; LEN];
    publish(&s, "f.bin", &data);
    let mut c = s.conn();
    item_77(&mut c, FILE, &data);
}

#[test]
fn item_78_multiple_ranges_get_multipart_byteranges_in_request_order() {
    let (s, data) = published(LEN, 78);
    let mut c = s.conn();
    item_78(&mut c, FILE, &data);
}

#[test]
fn item_79_unchanged_file_keeps_size_last_modified_and_etag() {
    let (s, _) = published(LEN, 79);
    let mut c = s.conn();
    item_79(&mut c, FILE);
    // Also across connections and a server restart.
    let before = head(&mut c, FILE, &[]);
    let mut s = s;
    s.restart();
    let mut c = s.conn();
    let after = head(&mut c, FILE, &[]);
    for name in ["content-length", "last-modified", "etag"] {
        assert_eq!(
            before.header(name),
            after.header(name),
            "{name} changed across a restart"
        );
    }
}

#[test]
fn item_80_zero_length_upload_is_served_with_content_length_0() {
    let s = Server::start("");
    let mut c = s.conn();
    let url = "/upload/empty.bin";
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();
    let r = c.fragment_raw_range(url, &sid, "bytes */0", b"");
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(0));
    c.close(url, &sid).assert_ack(200, None);
    assert_eq!(
        std::fs::metadata(s.upload_path("empty.bin")).unwrap().len(),
        0
    );

    let g = get(&mut c, url, &[]);
    assert_eq!(g.status, 200, "{:?}", g.headers);
    assert_eq!(g.header("content-length"), Some("0"), "{:?}", g.headers);
    assert!(g.body.is_empty());
    assert_no_coding(&g);
    let h = head(&mut c, url, &[]);
    assert_eq!(h.status, 200, "{:?}", h.headers);
    assert_eq!(h.header("content-length"), Some("0"), "{:?}", h.headers);
    assert!(h.has("last-modified"), "{:?}", h.headers);
    assert_no_coding(&h);
    // The connection is still in sync.
    let g = get(&mut c, url, &[]);
    assert_eq!(g.status, 200);
}

#[test]
fn item_80_any_range_of_a_zero_length_file_is_unsatisfiable() {
    let s = Server::start("");
    let mut c = s.conn();
    let url = "/upload/empty.bin";
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();
    c.fragment_raw_range(url, &sid, "bytes */0", b"")
        .assert_ack(200, None);
    let g = get(&mut c, url, &[("Range", "bytes=0-0")]);
    assert_eq!(g.status, 416, "{:?}", g.headers);
    assert_eq!(g.header("content-range"), Some("bytes */0"));
    assert_eq!(content_length(&g), 0);
}

// ---------------------------------------------------------------------------------------------
// Conditional requests and what is not served.

#[test]
fn conditional_get_with_current_validators_gets_304() {
    let (s, data) = published(LEN, 81);
    let mut c = s.conn();
    let h = head(&mut c, FILE, &[]);
    let etag = h.header("etag").expect("ETag").to_string();
    let lm = h.header("last-modified").unwrap().to_string();

    let g = get(&mut c, FILE, &[("If-None-Match", &etag)]);
    assert_eq!(g.status, 304, "{:?}", g.headers);
    assert!(g.body.is_empty());
    let g = get(&mut c, FILE, &[("If-Modified-Since", &lm)]);
    assert_eq!(g.status, 304, "{:?}", g.headers);
    // Stale validators get the file.
    let g = get(&mut c, FILE, &[("If-None-Match", "\"stale\"")]);
    assert_eq!(g.status, 200);
    assert!(g.body == data);
    // If-Range with the current ETag honours the range, with a stale one sends everything.
    let g = get(&mut c, FILE, &[("Range", "bytes=0-9"), ("If-Range", &etag)]);
    assert_eq!(g.status, 206, "{:?}", g.headers);
    assert_eq!(g.body, &data[..10]);
    let g = get(
        &mut c,
        FILE,
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(g.status, 200, "{:?}", g.headers);
    assert!(g.body == data);
}

#[test]
fn missing_files_and_uploads_in_progress_are_not_served() {
    let s = Server::start("");
    let mut c = s.conn();
    assert_eq!(get(&mut c, "/upload/nothing.bin", &[]).status, 404);
    assert_eq!(head(&mut c, "/upload/nothing.bin", &[]).status, 404);
    // Half an upload.
    let url = "/upload/half.bin";
    let r = c.create(url);
    let sid = r.session();
    c.fragment(url, &sid, 0, &pattern(100, 1), 200)
        .assert_ack(200, None);
    assert_eq!(get(&mut c, url, &[]).status, 404);
    assert_eq!(head(&mut c, url, &[]).status, 404);
    assert_eq!(get(&mut c, url, &[("Range", "bytes=0-9")]).status, 404);
}

#[test]
fn downloads_can_be_disabled_per_vdir() {
    let s = Server::start("[[vdir]]\ndownload_enabled = false");
    let data = pattern(1000, 82);
    publish(&s, "f.bin", &data);
    let mut c = s.conn();
    assert_eq!(get(&mut c, FILE, &[]).status, 404);
    assert_eq!(head(&mut c, FILE, &[]).status, 404);
}

// ---------------------------------------------------------------------------------------------
// The same rules for reply files ("Download (also applied to reply files)").

/// A by-value upload-reply whose reply is `data` (the app echoes the upload reversed); returns
/// the reply path.
fn reply_of(c: &mut Conn, data: &[u8]) -> String {
    let mut upload_data = data.to_vec();
    upload_data.reverse();
    let url = "/upload/r.bin";
    let r = c.create(url);
    r.assert_ack(200, None);
    let sid = r.session();
    let r = c.fragment(url, &sid, 0, &upload_data, upload_data.len() as u64);
    r.assert_ack(200, None);
    let reply_url = r
        .header("bits-reply-url")
        .expect("BITS-Reply-URL")
        .to_string();
    let path = &reply_url[reply_url[7..].find('/').unwrap() + 7..];
    path.to_string()
}

#[test]
fn items_72_to_79_apply_to_reply_files() {
    let app = App::start(Behaviour::default());
    let s = Server::start(&format!(
        "[[vdir]]\nnotification_type = \"by_value\"\nnotification_url = \"{}\"",
        app.url("/notify")
    ));
    let mut c = s.conn();
    let data = pattern(LEN, 83);
    let path = reply_of(&mut c, &data);
    item_72(&mut c, &path, &data);
    item_73(&mut c, &path, &data);
    item_74(&mut c, &path, &data);
    item_75(&mut c, &path, &data);
    item_76(&mut c, &path, &data);
    item_77(&mut c, &path, &data);
    item_78(&mut c, &path, &data);
    item_79(&mut c, &path);
    assert_eq!(app.count(), 1);
}

#[test]
fn item_80_applies_to_an_empty_reply_file() {
    let app = App::start(Behaviour {
        reverse: false,
        ..Behaviour::default()
    });
    let s = Server::start(&format!(
        "[[vdir]]\nnotification_type = \"by_value\"\nnotification_url = \"{}\"",
        app.url("/notify")
    ));
    let mut c = s.conn();
    let path = reply_of(&mut c, &pattern(500, 84));
    let g = get(&mut c, &path, &[]);
    assert_eq!(g.status, 200, "{:?}", g.headers);
    assert_eq!(g.header("content-length"), Some("0"));
    assert!(g.body.is_empty());
    let h = head(&mut c, &path, &[]);
    assert_eq!(h.status, 200, "{:?}", h.headers);
    assert_eq!(h.header("content-length"), Some("0"));
    assert!(h.has("last-modified"));
}

#[test]
fn read_only_download_vdir_serves_files_and_refuses_uploads() {
    let s = Server::start_with(
        "[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"\n\
         [[vdir]]\nprefix = \"/files/\"\nroot = \"{root}/files\"\nupload_enabled = false\n",
        false,
    );
    let files = s.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let data = pattern(4096, 80);
    std::fs::write(files.join("tool.bin"), &data).unwrap();
    let mut c = s.conn();
    let r = c.send("GET", "/files/tool.bin", &[("Range", "bytes=0-9")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[..10]);
    let r = c.send("HEAD", "/files/tool.bin", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("4096"));
    c.create("/files/new.bin")
        .assert_ack(501, Some(("0x80070005", "0x5")));
    assert_eq!(c.send("GET", "/files/missing.bin", &[], b"").status, 404);
    assert_eq!(c.send("GET", "/files/../uploads/x", &[], b"").status, 404);
}
