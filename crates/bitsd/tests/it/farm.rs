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
    use crate::azurite::{Azurite, ACCOUNT, KEY};
    let Some(azurite) = Azurite::start("bits-farm") else {
        return;
    };
    let storage = format!(
        "[storage]\nbackend = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{}\"\n\
         prefix = \"spool\"\naccess_key = \"{KEY}\"\nendpoint = \"{}\"\nallow_http = true\n",
        azurite.container, azurite.endpoint
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(ACCOUNT)
        .with_access_key(KEY)
        .with_container_name(&azurite.container)
        .with_endpoint(azurite.endpoint.clone())
        .with_allow_http(true)
        .build()
        .unwrap();
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
