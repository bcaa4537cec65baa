//! A farm: three bitsd nodes on one SeaweedFS bucket, and the same on one Azurite container.
//! Fragments go to nodes chosen at random, some are retried on a second node while the first
//! still holds a stalled copy, one node is SIGKILLed mid-way; every file must land
//! byte-identical and no fragment object may remain after Close-Session. Then an upload-reply
//! session spread over the surviving nodes, and every file read back from each surviving node
//! by GET, by Range and by HEAD.

use crate::common::*;
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::seaweed;

use crate::app;

use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn node_config(storage: &str, notify_url: &str, events: &Path) -> String {
    format!(
        "session_lock_timeout = \"2s\"\nbody_idle_timeout = \"2s\"\n\
         {storage}\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = true\n\
         [vdir.hooks]\ncommand = [\"sh\", \"-c\", \"cat >> {events}\"]\nevents = [\"upload_completed\"]\n\
         [[vdir]]\nprefix = \"/reply/\"\nroot = \"replies\"\ndownload_enabled = false\n\
         notification_type = \"by_value\"\nnotification_url = \"{notify_url}\"\n",
        events = events.display()
    )
}

/// Sends one request to `node`, on a fresh connection; `None` if the node is down.
fn try_bits(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    let mut c = Conn::try_new(addr).ok()?;
    c.try_send("BITS_POST", path, headers, body).ok()
}

#[test]
fn three_nodes_share_sessions_on_seaweedfs() {
    let weed = seaweed::SeaweedFs::start("bits-farm");
    let storage = format!(
        "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"spool\"\n\
         access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n",
        weed.endpoint, weed.bucket
    );
    three_nodes_share_sessions(&storage, Box::new(weed.client()));
}

/// The same farm, the same assertions, on Azure Blob Storage (Azurite).
#[test]
fn three_nodes_share_sessions_on_azurite() {
    use crate::azurite::Azurite;
    let Some(azurite) = Azurite::start("bits-farm") else {
        return;
    };
    let storage = azurite.storage_toml();
    let client = azurite.client();
    three_nodes_share_sessions(&storage, Box::new(client));
}

fn three_nodes_share_sessions(storage: &str, store: Box<dyn ObjectStore>) {
    let application = app::App::start(app::Behaviour::default());
    // Every node appends its upload_completed events (JSON lines) to one file.
    let events_dir = tempfile::tempdir().unwrap();
    let events_file = events_dir.path().join("events.jsonl");
    let config = node_config(storage, &application.url("/notify"), &events_file);
    let mut nodes: Vec<Server> = (0..3).map(|_| Server::start_with(&config, false)).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut alive = vec![true; 3];
    let mut rng = Rng(0xFA11_0001);
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pattern(64 * 1024 + rng.below(3 << 20) as usize, i + 100),
            )
        })
        .collect();
    let mut fragments_sent = 0;
    let mut stalled_retries = 0;
    for (i, (name, data)) in files.iter().enumerate() {
        let path = format!("/upload/{name}");
        let pick = |rng: &mut Rng, alive: &[bool]| loop {
            let n = rng.below(3) as usize;
            if alive[n] {
                return n;
            }
        };
        let create = loop {
            let n = pick(&mut rng, &alive);
            if let Some(r) = try_bits(
                addrs[n],
                &path,
                &[
                    ("BITS-Packet-Type", "Create-Session"),
                    ("BITS-Supported-Protocols", PROTOCOL),
                ],
                b"",
            ) {
                break r;
            }
        };
        create.assert_ack(200, None);
        let sid = create.session();
        let total = data.len();
        let mut acked = 0usize;
        let mut step = 0;
        while acked < total {
            // Kill node 1 in the middle of the tenth file.
            if i == 9 && step == 2 && alive[1] {
                nodes[1].kill();
                alive[1] = false;
            }
            step += 1;
            let len = (64 * 1024 + rng.below(448 * 1024) as usize).min(total - acked);
            let range = format!("bytes {}-{}/{}", acked, acked + len - 1, total);
            let body = &data[acked..acked + len];
            let headers = [
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", sid.as_str()),
                ("Content-Range", range.as_str()),
            ];
            // Every third fragment: a first attempt stalls half-way on one node, the retry goes
            // to another while the first still holds its copy.
            let mut stalled = None;
            if step % 3 == 0 {
                let n = pick(&mut rng, &alive);
                if let Ok(mut c) = Conn::try_new(addrs[n]) {
                    let mut h: Vec<(&str, &str)> = headers.to_vec();
                    let cl = len.to_string();
                    h.push(("Content-Length", &cl));
                    let _ = c.try_write_raw(&request_bytes("BITS_POST", &path, &h, b""));
                    let _ = c.try_write_raw(&body[..len / 2]);
                    stalled = Some(c);
                    stalled_retries += 1;
                }
            }
            let r = loop {
                let n = pick(&mut rng, &alive);
                if let Some(r) = try_bits(addrs[n], &path, &headers, body) {
                    if r.status == 503 {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    break r;
                }
            };
            drop(stalled);
            fragments_sent += 1;
            assert!(
                r.status == 200 || r.status == 416,
                "{name}: fragment got {} {:?}",
                r.status,
                r.headers
            );
            let received = r.received().expect("received") as usize;
            assert!(
                received >= acked,
                "{name}: server went back from {acked} to {received}"
            );
            acked = received;
        }
        let close = loop {
            let n = pick(&mut rng, &alive);
            if let Some(r) = try_bits(
                addrs[n],
                &path,
                &[
                    ("BITS-Packet-Type", "Close-Session"),
                    ("BITS-Session-Id", sid.as_str()),
                ],
                b"",
            ) {
                // 503 is retried, as a BITS client does: on shared storage a concurrent update
                // of the record (another node, a background save) loses its race with 503.
                if r.status != 503 {
                    break r;
                }
            }
        };
        close.assert_ack(200, None);
    }

    // Upload-reply across the two surviving nodes: the first fragment on one, the last on the
    // other, the reply fetched from both, Close-Session on the first.
    let live: Vec<usize> = (0..3).filter(|&n| alive[n]).collect();
    let (a, b) = (addrs[live[0]], addrs[live[1]]);
    let data = pattern(300_000, 7);
    let path = "/reply/r.bin";
    let r = try_bits(
        a,
        path,
        &[
            ("BITS-Packet-Type", "Create-Session"),
            ("BITS-Supported-Protocols", PROTOCOL),
        ],
        b"",
    )
    .unwrap();
    let sid = r.session();
    let r = try_bits(
        a,
        path,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 0-99999/300000"),
        ],
        &data[..100_000],
    )
    .unwrap();
    r.assert_ack(200, None);
    let r = try_bits(
        b,
        path,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 100000-299999/300000"),
        ],
        &data[100_000..],
    )
    .unwrap();
    r.assert_ack(200, None);
    let reply_url = r.header("bits-reply-url").expect("reply url").to_string();
    let reply_path = reply_url
        .splitn(4, '/')
        .nth(3)
        .map(|p| format!("/{p}"))
        .unwrap();
    let expected: Vec<u8> = data.iter().rev().copied().collect();
    for node in [a, b] {
        let g = Conn::new(node).send("GET", &reply_path, &[], b"");
        assert_eq!(g.status, 200, "reply GET on {node}");
        assert!(g.body == expected, "reply bytes on {node}");
        let g = Conn::new(node).send("GET", &reply_path, &[("Range", "bytes=10-19")], b"");
        assert_eq!(g.status, 206);
        assert_eq!(g.body, &expected[10..20]);
    }
    // A retransmitted last fragment on the other node gets the same reply URL; the app was
    // called once.
    let r = try_bits(
        a,
        path,
        &[
            ("BITS-Packet-Type", "Fragment"),
            ("BITS-Session-Id", &sid),
            ("Content-Range", "bytes 100000-299999/300000"),
        ],
        &data[100_000..],
    )
    .unwrap();
    assert_eq!(r.header("bits-reply-url"), Some(reply_url.as_str()));
    assert_eq!(application.count(), 1);
    try_bits(
        a,
        path,
        &[
            ("BITS-Packet-Type", "Close-Session"),
            ("BITS-Session-Id", &sid),
        ],
        b"",
    )
    .unwrap()
    .assert_ack(200, None);
    assert_eq!(Conn::new(b).send("GET", &reply_path, &[], b"").status, 404);

    // Every upload's completion event carries the SHA-256 of its bytes, although its fragments
    // were hashed on different nodes, some cut part way. Node 1 died holding some owed events:
    // restarting it delivers them (every node's start-up recovery redelivers owed events).
    nodes[1].restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&events_file).unwrap_or_default();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect();
        let missing: Vec<&String> = files
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !events.iter().any(|e| e["destination"] == name.as_str()))
            .collect();
        if missing.is_empty() {
            for (name, data) in &files {
                let mine: Vec<&serde_json::Value> = events
                    .iter()
                    .filter(|e| e["destination"] == name.as_str())
                    .collect();
                for e in &mine {
                    assert_eq!(
                        e["sha256"],
                        hex::encode(Sha256::digest(data)),
                        "{name}: {e}"
                    );
                    assert_eq!(e["size"], data.len(), "{name}");
                    // Redeliveries reuse the first delivery's id.
                    assert_eq!(e["id"], mine[0]["id"], "{name}");
                }
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upload_completed event for {missing:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Every file is in the bucket, byte for byte; no fragment objects are left.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (name, data) in &files {
            let got = store
                .get(&ObjectPath::from(format!("uploads/{name}")))
                .await
                .expect(name)
                .bytes()
                .await
                .unwrap();
            assert!(
                got == data[..],
                "{name}: {} bytes, expected {}",
                got.len(),
                data.len()
            );
        }
        let leftovers: Vec<String> = store
            .list(Some(&ObjectPath::from("spool")))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| !k.ends_with("meta.json"))
            // The time index: the tombstones' `ended` markers (and the index's own flag) stay
            // with the tombstones; an `idle` marker would be a leftover.
            .filter(|k| !k.starts_with("spool/index/ended/") && k != "spool/index/complete")
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary objects left: {leftovers:?}"
        );
    });
    // Every file is served by every node that survived the kill (and by the restarted one):
    // whole, by a range, and by HEAD, from the shared bucket.
    let survivors: Vec<usize> = (0..3).filter(|&n| alive[n]).collect();
    assert_eq!(survivors.len(), 2);
    let mut reads = 0;
    for n in survivors.iter().copied().chain([1]) {
        let node = nodes[n].addr;
        for (name, data) in &files {
            let path = format!("/upload/{name}");
            let g = Conn::new(node).send("GET", &path, &[], b"");
            assert_eq!(g.status, 200, "GET {name} on node {n}");
            assert!(g.body == data[..], "GET {name} on node {n}: bytes differ");
            let first = rng.below(data.len() as u64) as usize;
            let last = (first + rng.below(256 * 1024) as usize).min(data.len() - 1);
            let range = format!("bytes={first}-{last}");
            let g = Conn::new(node).send("GET", &path, &[("Range", range.as_str())], b"");
            assert_eq!(g.status, 206, "{range} of {name} on node {n}");
            assert_eq!(
                g.header("content-range"),
                Some(format!("bytes {first}-{last}/{}", data.len()).as_str()),
                "{range} of {name} on node {n}"
            );
            assert!(
                g.body == data[first..=last],
                "{range} of {name} on node {n}: bytes differ"
            );
            let h = Conn::new(node).send("HEAD", &path, &[], b"");
            assert_eq!(h.status, 200, "HEAD {name} on node {n}");
            assert_eq!(
                h.header("content-length"),
                Some(data.len().to_string().as_str()),
                "HEAD {name} on node {n}"
            );
            assert!(h.body.is_empty());
            reads += 3;
        }
    }
    eprintln!("farm: {reads} GET/Range/HEAD reads from the surviving and restarted nodes");
    eprintln!("farm: 20 files, {fragments_sent} fragments over 3 nodes ({stalled_retries} retried while a stalled copy was held), node 1 SIGKILLed mid-way; upload-reply across nodes");
    drop(nodes);
}

/// Issue 30: a node started before its object store (as compose files and boot orders often
/// have it) does not exit: `/healthz` answers 200, `/readyz` 503 with the reason, a BITS request
/// the transient 503 Ack; once the store answers (here: a forwarder to a SeaweedFS appears on
/// the port the node was configured with) the node becomes ready and completes an upload.
#[test]
fn a_node_started_before_its_store_waits_for_it() {
    use std::io::BufRead as _;
    use std::net::{TcpListener, TcpStream};
    use std::process::{Command, Stdio};
    // Where the store will be: a free port nobody listens on yet.
    let store_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bitsd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nspool_dir = \"{spool}\"\n\
             admin = {{ listen = \"127.0.0.1:0\" }}\n\
             [storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:{store_port}\"\n\
             bucket = \"late\"\nprefix = \"spool\"\naccess_key = \"any\"\nsecret_key = \"any\"\n\
             allow_http = true\nmax_retries = 0\n\
             [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = true\n",
            spool = dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("bitsd.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut node = Kill(
        Command::new(env!("CARGO_BIN_EXE_bitsd"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("BITSD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = node.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let log_text = || std::fs::read_to_string(dir.path().join("bitsd.log")).unwrap_or_default();
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no listener lines; log:\n{}", log_text()));
        if let Some(a) = line.strip_prefix("bitsd listening on ") {
            addr = Some(a.trim().parse::<std::net::SocketAddr>().unwrap());
        } else if let Some(a) = line.strip_prefix("bitsd admin listening on ") {
            admin = Some(a.trim().parse::<std::net::SocketAddr>().unwrap());
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    // Waiting for the store: alive, not ready, BITS clients told to come back.
    std::thread::sleep(Duration::from_millis(500));
    let health = Conn::new(admin).send("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", log_text());
    let ready = Conn::new(admin).send("GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 503);
    assert!(
        String::from_utf8_lossy(&ready.body).contains("storage not reachable yet"),
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    let r = Conn::new(addr).create("/upload/late.bin");
    r.assert_ack(503, Some(("0x801901F7", "0x5")));
    assert!(node.0.try_wait().unwrap().is_none(), "{}", log_text());

    // The store comes up, on the port the node was told.
    let weed = seaweed::SeaweedFs::start("late");
    let target: std::net::SocketAddr = weed.endpoint.trim_start_matches("http://").parse().unwrap();
    let forwarder = TcpListener::bind(("127.0.0.1", store_port)).expect("the store's port");
    std::thread::spawn(move || {
        for client in forwarder.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == "bitsd ready" => break,
            _ if std::time::Instant::now() > deadline => {
                panic!(
                    "not ready 60 s after the store came up; log:\n{}",
                    log_text()
                )
            }
            _ => {}
        }
    }
    assert_eq!(
        Conn::new(admin).send("GET", "/readyz", &[], b"").status,
        200
    );
    let data = pattern(300_000, 41);
    let mut c = Conn::new(addr);
    let r = c.create("/upload/late.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    c.fragment("/upload/late.bin", &sid, 0, &data, data.len() as u64)
        .assert_ack(200, None);
    c.close("/upload/late.bin", &sid).assert_ack(200, None);
    let got = c.send("GET", "/upload/late.bin", &[], b"");
    assert_eq!(got.status, 200);
    assert!(got.body == data, "the published file differs");
    let log = log_text();
    assert!(log.contains("the store does not answer"), "{log}");
    assert!(log.contains("the store answers: starting"), "{log}");
}

/// Issue 30: a store that stops answering (weed stopped with SIGSTOP: connections are accepted,
/// nothing comes back) makes `/readyz` answer 503 within its probe timeout (`[admin]
/// probe_timeout`, 2 s here, 10 s by default) instead of hanging the health checker; it is
/// ready again once the store answers.
#[test]
fn readiness_gives_up_on_a_store_that_does_not_answer() {
    let weed = seaweed::SeaweedFs::start("hung");
    let s = Server::start_with(
        &format!(
            "admin = {{ listen = \"127.0.0.1:0\", probe_timeout = \"2s\" }}\n\
             [storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"hung\"\nprefix = \"spool\"\n\
             access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n\
             [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\n",
            weed.endpoint
        ),
        false,
    );
    let admin = s.admin_addr.expect("admin");
    assert_eq!(
        Conn::new(admin).send("GET", "/readyz", &[], b"").status,
        200
    );
    weed.set_paused(true);
    let started = std::time::Instant::now();
    let r = Conn::new(admin).send("GET", "/readyz", &[], b"");
    let waited = started.elapsed();
    weed.set_paused(false);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("no answer within"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Conn::new(admin).send("GET", "/readyz", &[], b"").status != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready again");
        std::thread::sleep(Duration::from_millis(200));
    }
}
