//! bitsd on Azure Blob Storage (`[storage] backend = "azure"`), against an Azurite started per
//! test (`azurite.rs`; the tests skip, saying so, when `azurite-blob` is not installed): an
//! upload through one node published and served with GET/HEAD/Range, and a farm of three
//! nodes over one container with fragments through any node, racing retries and a node
//! SIGKILLed mid-upload; a node killed with a block half sent; a no-overwrite destination that
//! appears meanwhile.

use crate::azurite::{Azurite, ACCOUNT, KEY};
use crate::common::*;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

const MIB: usize = 1 << 20;

fn node_config(azurite: &Azurite) -> String {
    format!(
        "session_lock_timeout = \"5s\"\nbody_idle_timeout = \"5s\"\n\
         [storage]\nbackend = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{container}\"\n\
         prefix = \"spool\"\naccess_key = \"{KEY}\"\nendpoint = \"{endpoint}\"\nallow_http = true\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = true\n\
         max_fragment_size = {max}\nallow_overwrites = false\nconflict_status = \"conflict\"\n",
        container = azurite.container,
        endpoint = azurite.endpoint,
        max = 16 * MIB,
    )
}

/// Every blob name in the container below `prefix`.
fn blobs(azurite: &Azurite, prefix: &str) -> Vec<String> {
    let client = azurite.client();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            client
                .list(Some(&ObjectPath::from(prefix)))
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        })
}

fn get(node: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    Conn::new(node.addr).send("GET", path, headers, b"")
}

/// The published file as every node in `nodes` serves it: GET, HEAD and a Range.
fn assert_served(nodes: &[&Server], path: &str, data: &[u8]) {
    for node in nodes {
        let got = get(node, path, &[]);
        assert_eq!(got.status, 200, "GET through {}", node.addr);
        assert!(
            got.body == data,
            "published bytes differ through {}",
            node.addr
        );
        let head = Conn::new(node.addr).send("HEAD", path, &[], b"");
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("Content-Length"),
            Some(data.len().to_string().as_str())
        );
        let range = get(node, path, &[("Range", "bytes=1000-1999")]);
        assert_eq!(range.status, 206);
        assert!(range.body == data[1000..2000], "range differs");
        let etag = head.header("ETag").expect("an ETag").to_string();
        let if_range = get(
            node,
            path,
            &[("Range", "bytes=-10"), ("If-Range", etag.as_str())],
        );
        assert_eq!(if_range.status, 206);
        assert!(if_range.body == data[data.len() - 10..]);
    }
}

#[test]
fn upload_through_bitsd_is_published_and_served() {
    let Some(azurite) = Azurite::start("bits-e2e") else {
        return;
    };
    let node = Server::start_with(&node_config(&azurite), false);
    let encoded = "/upload/dir/report%201.bin";
    let data = pattern(9 * MIB + 4321, 7);
    let total = data.len() as u64;
    let created = Conn::new(node.addr).create(encoded);
    created.assert_ack(200, None);
    let sid = created.session();
    // A tiny fragment, small ones, a large one, and the rest: every one that starts where the
    // stored blocks end is a block of the destination blob.
    let cuts = [0, 3, 1000, MIB, 7 * MIB, data.len()];
    for w in cuts.windows(2) {
        let r = Conn::new(node.addr).fragment(encoded, &sid, w[0] as u64, &data[w[0]..w[1]], total);
        r.assert_ack(200, None);
        assert_eq!(r.received(), Some(w[1] as u64));
        if w[1] == 1000 {
            // A retry of what is stored (its Ack was lost) is acknowledged, not stored again.
            let again = Conn::new(node.addr).fragment(encoded, &sid, 0, &data[..1000], total);
            again.assert_ack(200, None);
            assert_eq!(again.received(), Some(1000));
        }
    }
    assert_served(&[&node], encoded, &data);
    Conn::new(node.addr)
        .close(encoded, &sid)
        .assert_ack(200, None);
    assert_served(&[&node], encoded, &data);
    // Only the record (a tombstone) is left of the session.
    let dir = format!(
        "spool/sessions/{}",
        sid.trim_matches(|c| c == '{' || c == '}').to_lowercase()
    );
    let left: Vec<_> = blobs(&azurite, &dir)
        .into_iter()
        .filter(|k| !k.ends_with("meta.json"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A second upload to the same name is refused (allow_overwrites = false): Put Block List
    // with If-None-Match: *.
    let second = Conn::new(node.addr).create(encoded);
    if second.status == 200 {
        let sid2 = second.session();
        let r = Conn::new(node.addr).fragment(encoded, &sid2, 0, b"other", 5);
        assert_ne!(r.status, 200, "overwrote a published file");
    }
    assert_served(&[&node], encoded, &data);
}

#[test]
fn farm_of_three_nodes_with_one_killed() {
    let Some(azurite) = Azurite::start("bits-farm") else {
        return;
    };
    let config = node_config(&azurite);
    let mut nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let data = pattern(20 * MIB + 77, 11);
    let total = data.len() as u64;
    let frag = 2 * MIB + 5;
    let path = "/upload/farm.bin";
    let created = Conn::new(addrs[0]).create(path);
    created.assert_ack(200, None);
    let sid = created.session();
    let mut acked = 0u64;
    let mut i = 0usize;
    while acked < total {
        let at = acked as usize;
        let end = (at + frag).min(data.len());
        let chunk = &data[at..end];
        if i == 4 {
            nodes[2].kill();
        }
        let alive: Vec<_> = if i >= 4 { &addrs[..2] } else { &addrs[..] }.to_vec();
        // Every third fragment is sent to two nodes at once (a retry racing its first try).
        let results: Vec<Response> = if i % 3 == 1 {
            std::thread::scope(|s| {
                let hs: Vec<_> = alive[..2]
                    .iter()
                    .map(|&a| {
                        let sid = &sid;
                        s.spawn(move || Conn::new(a).fragment(path, sid, acked, chunk, total))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            })
        } else {
            vec![Conn::new(alive[i % alive.len()]).fragment(path, &sid, acked, chunk, total)]
        };
        let ok: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
        if ok.is_empty() {
            // Whichever lost a record race may fail; the client asks again.
            let r = Conn::new(alive[0]).fragment(path, &sid, acked, chunk, total);
            r.assert_ack(200, None);
            acked = r.received().unwrap();
        } else {
            acked = ok.iter().filter_map(|r| r.received()).max().unwrap();
        }
        assert!(
            acked >= end as u64,
            "acked {acked} after sending up to {end}"
        );
        i += 1;
    }
    let survivors = [&nodes[0], &nodes[1]];
    assert_served(&survivors, path, &data);
    Conn::new(addrs[1]).close(path, &sid).assert_ack(200, None);
    assert_served(&survivors, path, &data);
}

fn put_blob(azurite: &Azurite, key: &str, body: Vec<u8>) {
    use object_store::{ObjectStoreExt, PutPayload};
    let client = azurite.client();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            client
                .put(&ObjectPath::parse(key).unwrap(), PutPayload::from(body))
                .await
                .unwrap();
        });
}

/// A node SIGKILLed with most of a fragment's block sent: Azure keeps no block of an
/// incomplete request, and the client's retry on the other node stores it under the same id.
#[test]
fn node_killed_mid_block_the_other_node_finishes() {
    let Some(azurite) = Azurite::start("bits-kill") else {
        return;
    };
    let config = node_config(&azurite);
    let mut victim = Server::start_with(&config, false);
    let survivor = Server::start_with(&config, false);
    let frag = 6 * MIB;
    let data = pattern(3 * frag, 43);
    let total = data.len() as u64;
    let path = "/upload/killed.bin";
    let created = Conn::new(victim.addr).create(path);
    created.assert_ack(200, None);
    let sid = created.session();
    Conn::new(victim.addr)
        .fragment(path, &sid, 0, &data[..frag], total)
        .assert_ack(200, None);
    let mut c = Conn::new(victim.addr);
    let range = format!("bytes {}-{}/{}", frag, 2 * frag - 1, total);
    let cl = frag.to_string();
    let headers = [
        ("BITS-Packet-Type", "Fragment"),
        ("BITS-Session-Id", sid.as_str()),
        ("Content-Range", range.as_str()),
        ("Content-Length", cl.as_str()),
    ];
    c.write_raw(&request_bytes("BITS_POST", path, &headers, b""));
    c.write_raw(&data[frag..frag + 5 * MIB + MIB / 2]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    victim.kill();
    let mut acked = frag as u64;
    while acked < total {
        let end = (acked as usize + frag).min(data.len());
        let r =
            Conn::new(survivor.addr).fragment(path, &sid, acked, &data[acked as usize..end], total);
        r.assert_ack(200, None);
        acked = r.received().unwrap();
    }
    assert_served(&[&survivor], path, &data);
    Conn::new(survivor.addr)
        .close(path, &sid)
        .assert_ack(200, None);
}

/// On a vdir without overwrites, a blob published at the name by someone else while the
/// session is open makes the completing fragment a conflict on every node (`Put Block List`
/// with `If-None-Match: *`), and the other blob stays as it is.
#[test]
fn no_overwrite_destination_appearing_meanwhile_is_a_conflict() {
    let Some(azurite) = Azurite::start("bits-conflict") else {
        return;
    };
    let config = node_config(&azurite);
    let nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    let frag = 2 * MIB;
    let data = pattern(2 * frag + 1000, 45);
    let total = data.len() as u64;
    let path = "/upload/taken.bin";
    let created = Conn::new(nodes[0].addr).create(path);
    created.assert_ack(200, None);
    let sid = created.session();
    Conn::new(nodes[0].addr)
        .fragment(path, &sid, 0, &data[..frag], total)
        .assert_ack(200, None);
    Conn::new(nodes[1].addr)
        .fragment(path, &sid, frag as u64, &data[frag..2 * frag], total)
        .assert_ack(200, None);
    let theirs = b"somebody else's file".to_vec();
    put_blob(&azurite, "uploads/taken.bin", theirs.clone());
    for node in &nodes {
        let r =
            Conn::new(node.addr).fragment(path, &sid, 2 * frag as u64, &data[2 * frag..], total);
        assert_eq!(r.status, 409, "through {}: {:?}", node.addr, r.headers);
        let got = get(node, path, &[]);
        assert_eq!(got.status, 200);
        assert_eq!(got.body, theirs);
    }
    Conn::new(nodes[1].addr).cancel(path, &sid);
    assert_eq!(get(&nodes[0], path, &[]).body, theirs);
}
