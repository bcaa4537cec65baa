//! Published files served from object storage: SeaweedFS (and Azurite) + two bitsd nodes with
//! `download_enabled = true`. Files uploaded through either node are answered by both with the
//! same GET/HEAD/Range/If-Range/ETag/multipart/304/416 behaviour as on the file system, and
//! names the server keeps for itself are never served.

use crate::common::*;

use crate::seaweed;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn node_config(storage: &str) -> String {
    format!(
        "{storage}\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = true\n\
         max_fragment_size = 16777216\n"
    )
}

fn upload_file(node: std::net::SocketAddr, path: &str, data: &[u8]) {
    let mut c = Conn::new(node);
    let sid = if data.is_empty() {
        let r = c.create(path);
        r.assert_ack(200, None);
        let sid = r.session();
        c.fragment_raw_range(path, &sid, "bytes */0", b"")
            .assert_ack(200, None);
        sid
    } else {
        upload(&mut c, path, data, 1 << 20)
    };
    c.close(path, &sid).assert_ack(200, None);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The parts of a `multipart/byteranges` body: (Content-Range, bytes).
fn multipart(resp: &Response) -> Vec<(String, Vec<u8>)> {
    let ct = resp.header("content-type").expect("content-type");
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {ct}"));
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n{delim}");
    let mut rest = &resp.body[..];
    assert!(
        rest.starts_with(delim.as_bytes()),
        "body starts with the boundary"
    );
    let mut out = Vec::new();
    loop {
        rest = &rest[delim.len()..];
        if rest.starts_with(b"--") {
            assert_eq!(&rest[2..], b"\r\n", "nothing after the closing boundary");
            return out;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after boundary");
        let end = find(rest, b"\r\n\r\n").expect("part headers");
        let headers = std::str::from_utf8(&rest[..end]).unwrap().to_string();
        rest = &rest[end + 4..];
        let n = find(rest, next_delim.as_bytes()).expect("next boundary");
        let range = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("part Content-Range")
            .to_string();
        out.push((range, rest[..n].to_vec()));
        rest = &rest[n + 2..];
    }
}

fn get(node: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    Conn::new(node).send("GET", path, headers, b"")
}

fn head(node: std::net::SocketAddr, path: &str) -> Response {
    Conn::new(node).send("HEAD", path, &[], b"")
}

/// Everything a download client may ask of one file, from one node; returns its ETag.
fn check_file(node: std::net::SocketAddr, path: &str, data: &[u8]) -> String {
    let len = data.len();
    let what = format!("{path} on {node}");
    let h = head(node, path);
    assert_eq!(h.status, 200, "HEAD {what}: {:?}", h.headers);
    assert_eq!(
        h.header("content-length"),
        Some(len.to_string().as_str()),
        "HEAD {what}"
    );
    assert_eq!(h.header("accept-ranges"), Some("bytes"), "HEAD {what}");
    assert!(h.has("last-modified"), "HEAD {what}");
    let etag = h.header("etag").expect("ETag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong quoted ETag {etag:?} for {what}"
    );
    assert!(h.body.is_empty());

    let g = get(node, path, &[]);
    assert_eq!(g.status, 200, "GET {what}");
    assert_eq!(g.header("etag"), Some(etag.as_str()), "GET {what}");
    assert!(
        g.body == data,
        "GET {what}: {} bytes, want {len}",
        g.body.len()
    );

    let nm = get(node, path, &[("If-None-Match", &etag)]);
    assert_eq!(nm.status, 304, "If-None-Match {what}");
    assert!(nm.body.is_empty());

    let lm = h.header("last-modified").unwrap().to_string();
    assert_eq!(
        get(node, path, &[("If-Modified-Since", &lm)]).status,
        304,
        "If-Modified-Since {what}"
    );

    if len == 0 {
        let r = get(node, path, &[("Range", "bytes=0-0")]);
        assert_eq!(r.status, 416, "range of an empty file {what}");
        assert_eq!(r.header("content-range"), Some("bytes */0"));
        return etag;
    }

    // Single range, crossing whatever window the backend reads in.
    let (a, b) = (len / 3, (len / 3 + len / 2).min(len - 1));
    let spec = format!("bytes={a}-{b}");
    let r = get(node, path, &[("Range", &spec)]);
    assert_eq!(r.status, 206, "{spec} {what}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {a}-{b}/{len}").as_str())
    );
    assert!(r.body == data[a..=b], "{spec} {what}");

    // Suffix.
    let n = 1000.min(len);
    let spec = format!("bytes=-{n}");
    let r = get(node, path, &[("Range", &spec)]);
    assert_eq!(r.status, 206, "{spec} {what}");
    assert!(r.body == data[len - n..], "{spec} {what}");

    // Multiple ranges, served in request order.
    if len >= 40 {
        let spec = format!("bytes={}-{},0-9,20-29", len - 10, len - 1);
        let r = get(node, path, &[("Range", &spec)]);
        assert_eq!(r.status, 206, "{spec} {what}");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let parts = multipart(&r);
        let want = [(len - 10, len - 1), (0, 9), (20, 29)];
        assert_eq!(parts.len(), 3, "{spec} {what}");
        for ((cr, bytes), (s, e)) in parts.iter().zip(want) {
            assert_eq!(cr, &format!("bytes {s}-{e}/{len}"), "{what}");
            assert!(bytes[..] == data[s..=e], "part {s}-{e} {what}");
        }
    }

    // If-Range: the current ETag keeps the range, another one gets the whole file.
    let r = get(node, path, &[("Range", "bytes=0-4"), ("If-Range", &etag)]);
    assert_eq!(r.status, 206, "If-Range current {what}");
    assert!(r.body == data[..5.min(len)]);
    let r = get(
        node,
        path,
        &[("Range", "bytes=0-4"), ("If-Range", "\"other\"")],
    );
    assert_eq!(r.status, 200, "If-Range stale {what}");
    assert!(r.body == data);

    // Unsatisfiable.
    let spec = format!("bytes={len}-");
    let r = get(node, path, &[("Range", &spec)]);
    assert_eq!(r.status, 416, "{spec} {what}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    etag
}

#[test]
fn published_files_are_served_from_object_storage_by_every_node() {
    let weed = seaweed::SeaweedFs::start("bits-downloads");
    let storage = format!(
        "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"spool\"\n\
         access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n",
        weed.endpoint, weed.bucket
    );
    served_by_every_node(&storage, Box::new(weed.client()));
}

/// The same downloads, the same assertions, from Azure Blob Storage (Azurite).
#[test]
fn published_files_are_served_from_azure_by_every_node() {
    use crate::azurite::Azurite;
    let Some(azurite) = Azurite::start("bits-downloads") else {
        return;
    };
    let storage = azurite.storage_toml();
    let client = azurite.client();
    served_by_every_node(&storage, Box::new(client));
}

fn served_by_every_node(storage: &str, store: Box<dyn ObjectStore>) {
    let started = std::time::Instant::now();
    let config = node_config(storage);
    let nodes: Vec<Server> = (0..2).map(|_| Server::start_with(&config, false)).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();

    let files: Vec<(&str, Vec<u8>)> = vec![
        ("empty.bin", Vec::new()),
        ("small.txt", pattern(1234, 1)),
        ("three.bin", pattern(3 << 20, 2)),
        // Longer than one read window of the S3 backend (8 MiB).
        ("window.bin", pattern((8 << 20) + 4321, 3)),
        ("dir/nested.bin", pattern(50_000, 4)),
    ];

    // As DFIR-ORC does before every upload: HEAD answers 404 while nothing is published.
    for (name, _) in &files {
        for &node in &addrs {
            let h = head(node, &format!("/upload/{name}"));
            assert_eq!(h.status, 404, "HEAD {name} before upload on {node}");
        }
    }

    for (i, (name, data)) in files.iter().enumerate() {
        upload_file(addrs[i % 2], &format!("/upload/{name}"), data);
    }

    for (name, data) in &files {
        let path = format!("/upload/{name}");
        let tags: Vec<String> = addrs.iter().map(|&n| check_file(n, &path, data)).collect();
        assert_eq!(tags[0], tags[1], "both nodes give {name} one ETag");
    }

    // Names the server keeps for itself, planted in the bucket where a download could reach
    // them, and what is not a file.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for key in [
            "uploads/.bits-partial-x",
            "uploads/.bits-partial-0123456789abcdef0123456789abcdef",
            "uploads/.bits-partial-d/inner.bin",
        ] {
            store
                .put(&ObjectPath::from(key), PutPayload::from_static(b"secret"))
                .await
                .expect(key);
        }
    });
    // A session in progress: its parts are in the bucket under spool/sessions/<id>/parts/.
    let mut c = Conn::new(addrs[0]);
    let r = c.create("/upload/open.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    c.fragment("/upload/open.bin", &sid, 0, &pattern(1000, 5), 2000)
        .assert_ack(200, None);
    let uuid = sid.trim_matches(|c| c == '{' || c == '}').to_lowercase();
    let meta = format!("spool/sessions/{uuid}/meta.json");
    rt.block_on(async {
        store
            .head(&ObjectPath::from(meta.as_str()))
            .await
            .expect("the open session's record is in the bucket");
    });
    let refused = [
        "/upload/missing.bin".to_string(),
        "/upload/open.bin".to_string(),
        "/upload/.bits-partial-x".to_string(),
        "/upload/.bits-partial-0123456789abcdef0123456789abcdef".to_string(),
        "/upload/.bits-partial-d/inner.bin".to_string(),
        "/upload/%2Ebits-partial-x".to_string(),
        "/upload/dir".to_string(),
        "/upload/dir/".to_string(),
        "/upload/".to_string(),
        format!("/upload/../{meta}"),
        format!("/upload/%2E%2E/{meta}"),
        format!("/upload/..%2F{}", meta.replace('/', "%2F")),
        format!("/upload/dir/../../{meta}"),
    ];
    for path in &refused {
        for &node in &addrs {
            let g = get(node, path, &[]);
            assert!(
                g.status == 404 || g.status == 400,
                "GET {path} on {node}: {} {:?}",
                g.status,
                String::from_utf8_lossy(&g.body[..g.body.len().min(64)])
            );
            assert!(!g.body.windows(6).any(|w| w == b"secret"), "{path}");
            assert_eq!(head(node, path).status, g.status, "HEAD {path} on {node}");
        }
    }
    c.cancel("/upload/open.bin", &sid).assert_ack(200, None);

    // Overwritten while being served: the answer ends short rather than mixing two versions.
    let window = &files[3].1;
    let mut tcp = std::net::TcpStream::connect(addrs[1]).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(
        &mut tcp,
        b"GET /upload/window.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut got = vec![0u8; 64 << 10];
    let mut n = 0;
    while n < got.len() {
        n += std::io::Read::read(&mut tcp, &mut got[n..]).unwrap();
    }
    rt.block_on(async {
        store
            .put(
                &ObjectPath::from("uploads/window.bin"),
                PutPayload::from(pattern(window.len(), 99)),
            )
            .await
            .unwrap();
    });
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    got.truncate(n);
    got.extend_from_slice(&rest);
    let body_at = find(&got, b"\r\n\r\n").unwrap() + 4;
    let body = &got[body_at..];
    assert!(
        body.len() < window.len(),
        "an overwritten object is not served whole ({} bytes)",
        body.len()
    );
    assert!(
        body == &window[..body.len()],
        "only the old version's bytes"
    );

    eprintln!(
        "farm_downloads: {} files checked on 2 nodes in {:?}",
        files.len(),
        started.elapsed()
    );
    drop(nodes);
}
