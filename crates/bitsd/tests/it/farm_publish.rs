//! Publishing on S3 without re-reading the upload: fragments of at least 5 MiB that start where
//! the stored parts end go straight into a multipart upload at the destination key, which the
//! completing fragment completes in place. Two nodes on one SeaweedFS: fragments through
//! alternating nodes, racing duplicates, a node SIGKILLed mid-fragment, Cancel aborting the
//! multipart upload, a no-overwrite destination that appears meanwhile, and a session object
//! altered in the bucket that tries to choose where the bytes are published.

use crate::common::*;

use crate::seaweed;

use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const MIB: usize = 1 << 20;
/// Fast-path fragments: at least S3's 5 MiB part minimum.
const FRAG: usize = 6 * MIB;

fn node_config(weed: &seaweed::SeaweedFs) -> String {
    format!(
        "session_lock_timeout = \"5s\"\nbody_idle_timeout = \"5s\"\n\
         [storage]\nbackend = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nprefix = \"spool\"\n\
         access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = true\n\
         max_fragment_size = {max}\n\
         [[vdir]]\nprefix = \"/keep/\"\nroot = \"keep\"\ndownload_enabled = true\n\
         allow_overwrites = false\nconflict_status = \"conflict\"\nmax_fragment_size = {max}\n",
        endpoint = weed.endpoint,
        bucket = weed.bucket,
        max = 16 * MIB,
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every key in the bucket below `prefix`.
fn keys(weed: &seaweed::SeaweedFs, prefix: &str) -> Vec<String> {
    let client = weed.client();
    rt().block_on(async {
        client
            .list(Some(&ObjectPath::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    })
}

fn get_object(weed: &seaweed::SeaweedFs, key: &str) -> Option<Vec<u8>> {
    let client = weed.client();
    rt().block_on(async {
        match client.get(&ObjectPath::parse(key).unwrap()).await {
            Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    })
}

fn put_object(weed: &seaweed::SeaweedFs, key: &str, body: Vec<u8>) {
    let client = weed.client();
    rt().block_on(async {
        client
            .put(&ObjectPath::parse(key).unwrap(), PutPayload::from(body))
            .await
            .unwrap();
    });
}

/// The multipart uploads in progress, as the bucket lists them (`ListMultipartUploads`, sent
/// unsigned: the test SeaweedFS has no identities).
fn multipart_uploads(weed: &seaweed::SeaweedFs) -> String {
    let url = format!("{}/{}?uploads", weed.endpoint, weed.bucket);
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", &url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "ListMultipartUploads failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The store's directory name of a session (`{GUID}` → lower-case hyphenated).
fn session_key(sid: &str) -> String {
    sid.trim_matches(|c| c == '{' || c == '}').to_lowercase()
}

/// Multipart part markers (`p<n>-…`) the session has stored.
fn markers(weed: &seaweed::SeaweedFs, sid: &str) -> Vec<String> {
    keys(weed, &format!("spool/sessions/{}/mp", session_key(sid)))
        .into_iter()
        .filter(|k| k.rsplit('/').next().is_some_and(|n| n.starts_with('p')))
        .collect()
}

/// Nothing of the session is left in the bucket but its record (the tombstone).
fn assert_only_the_record_left(weed: &seaweed::SeaweedFs, sid: &str) {
    let dir = format!("spool/sessions/{}", session_key(sid));
    let left: Vec<_> = keys(weed, &dir)
        .into_iter()
        .filter(|k| !k.ends_with("meta.json"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Create-Session on the node at `addr`; its session id.
fn create(addr: &std::net::SocketAddr, path: &str) -> String {
    let created = Conn::new(*addr).create(path);
    created.assert_ack(200, None);
    created.session()
}

fn get_through(node: &Server, path: &str) -> Response {
    Conn::new(node.addr).send("GET", path, &[], b"")
}

#[test]
fn fragments_through_alternating_nodes_publish_byte_identical() {
    let weed = seaweed::SeaweedFs::start("bits-publish-alt");
    let config = node_config(&weed);
    let nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    // Four fast-path fragments and a short last one (read back at completion).
    let data = pattern(4 * FRAG + 3 * MIB + 17, 41);
    let path = "/upload/alt.bin";
    let sid = create(&nodes[0].addr, path);
    let total = data.len() as u64;
    for (i, chunk) in data.chunks(FRAG).enumerate() {
        let first = (i * FRAG) as u64;
        let r = Conn::new(nodes[i % 2].addr).fragment(path, &sid, first, chunk, total);
        r.assert_ack(200, None);
        assert_eq!(r.received(), Some(first + chunk.len() as u64));
        if i == 3 {
            // The fast path was taken: four parts of the multipart upload, nothing published
            // yet, the upload in progress at the destination key.
            assert_eq!(markers(&weed, &sid).len(), 4, "{:?}", markers(&weed, &sid));
            assert!(get_object(&weed, "uploads/alt.bin").is_none());
            assert!(multipart_uploads(&weed).contains("uploads/alt.bin"));
        }
    }
    let got = get_through(&nodes[1], path);
    assert_eq!(got.status, 200);
    assert!(got.body == data, "published bytes differ");
    let got = get_through(&nodes[0], path);
    assert!(got.status == 200 && got.body == data);
    Conn::new(nodes[0].addr)
        .close(path, &sid)
        .assert_ack(200, None);
    // Nothing of the session's data is left; no upload is in progress.
    assert_only_the_record_left(&weed, &sid);
    assert!(!multipart_uploads(&weed).contains("uploads/alt.bin"));
}

/// Fragments under 5 MiB are packed into 8 MiB multipart parts as they arrive, through
/// whichever node stores them: the completion reads back only the tail, not the whole upload.
#[test]
fn small_fragments_are_packed_into_parts_as_they_arrive() {
    let weed = seaweed::SeaweedFs::start("bits-publish-pack");
    let config = node_config(&weed);
    let nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    let data = pattern(20 * MIB + 123, 43);
    let path = "/upload/packed.bin";
    let sid = create(&nodes[0].addr, path);
    let total = data.len() as u64;
    for (i, chunk) in data.chunks(MIB).enumerate() {
        let first = (i * MIB) as u64;
        let r = Conn::new(nodes[i % 2].addr).fragment(path, &sid, first, chunk, total);
        r.assert_ack(200, None);
        match i {
            // 7 MiB held: nothing packed yet, no multipart upload begun.
            6 => {
                assert!(markers(&weed, &sid).is_empty());
                assert!(!multipart_uploads(&weed).contains("uploads/packed.bin"));
            }
            // 17 MiB held: two 8 MiB parts packed, the rest standalone.
            16 => {
                let mut m = markers(&weed, &sid);
                m.sort();
                assert_eq!(m.len(), 2, "{m:?}");
                assert!(m[0].contains("p00001-00000000000000000000-00000000000008388608-"));
                assert!(m[1].contains("p00002-00000000000008388608-00000000000008388608-"));
                assert!(get_object(&weed, "uploads/packed.bin").is_none());
            }
            _ => {}
        }
    }
    let got = get_through(&nodes[1], path);
    assert!(
        got.status == 200 && got.body == data,
        "published bytes differ"
    );
    Conn::new(nodes[1].addr)
        .close(path, &sid)
        .assert_ack(200, None);
    assert_only_the_record_left(&weed, &sid);
    assert!(!multipart_uploads(&weed).contains("uploads/packed.bin"));
}

#[test]
fn racing_duplicate_fragments_on_two_nodes() {
    let weed = seaweed::SeaweedFs::start("bits-publish-race");
    let config = node_config(&weed);
    let nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let data = pattern(3 * FRAG, 42);
    let total = data.len() as u64;
    for round in 0..2 {
        let path = format!("/upload/race{round}.bin");
        let sid = create(&addrs[0], &path);
        let mut acked = 0u64;
        while acked < total {
            let at = acked as usize;
            let chunk = &data[at..at + FRAG];
            // The same fragment on both nodes at once, as a client retry racing its first try.
            let results: Vec<Response> = std::thread::scope(|s| {
                let hs: Vec<_> = addrs
                    .iter()
                    .map(|&a| {
                        let (path, sid) = (&path, &sid);
                        s.spawn(move || Conn::new(a).fragment(path, sid, acked, chunk, total))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
            // Whichever lost a record race may fail; the client then asks again.
            if ok.is_empty() {
                let r = Conn::new(addrs[round]).fragment(&path, &sid, acked, chunk, total);
                r.assert_ack(200, None);
                acked = r.received().unwrap();
            } else {
                acked = ok.iter().filter_map(|r| r.received()).max().unwrap();
            }
            assert!(
                acked.is_multiple_of(FRAG as u64) && acked > at as u64,
                "acked {acked}"
            );
        }
        let got = get_through(&nodes[1 - round], &path);
        assert_eq!(got.status, 200, "round {round}");
        assert!(got.body == data, "round {round}: published bytes differ");
        Conn::new(addrs[round])
            .close(&path, &sid)
            .assert_ack(200, None);
    }
    assert!(keys(&weed, "spool/sessions")
        .iter()
        .all(|k| k.ends_with("meta.json")));
}

#[test]
fn node_killed_mid_fragment_the_other_node_finishes() {
    let weed = seaweed::SeaweedFs::start("bits-publish-kill");
    let config = node_config(&weed);
    let mut victim = Server::start_with(&config, false);
    let survivor = Server::start_with(&config, false);
    let data = pattern(3 * FRAG, 43);
    let total = data.len() as u64;
    let path = "/upload/killed.bin";
    let sid = create(&victim.addr, path);
    Conn::new(victim.addr)
        .fragment(path, &sid, 0, &data[..FRAG], total)
        .assert_ack(200, None);
    assert_eq!(markers(&weed, &sid).len(), 1, "not through the fast path");
    // The second fragment: headers and most of its body reach the victim, which dies.
    let mut c = Conn::new(victim.addr);
    let range = format!("bytes {}-{}/{}", FRAG, 2 * FRAG - 1, total);
    let cl = FRAG.to_string();
    let headers = [
        ("BITS-Packet-Type", "Fragment"),
        ("BITS-Session-Id", sid.as_str()),
        ("Content-Range", range.as_str()),
        ("Content-Length", cl.as_str()),
    ];
    c.write_raw(&request_bytes("BITS_POST", path, &headers, b""));
    c.write_raw(&data[FRAG..FRAG + 5 * MIB + MIB / 2]);
    std::thread::sleep(Duration::from_millis(300));
    victim.kill();
    // The client retries on the survivor, from what the record says.
    let mut acked = FRAG as u64;
    while acked < total {
        let end = (acked as usize + FRAG).min(data.len());
        let r =
            Conn::new(survivor.addr).fragment(path, &sid, acked, &data[acked as usize..end], total);
        r.assert_ack(200, None);
        acked = r.received().unwrap();
    }
    let got = get_through(&survivor, path);
    assert_eq!(got.status, 200);
    assert!(got.body == data, "published bytes differ");
    Conn::new(survivor.addr)
        .close(path, &sid)
        .assert_ack(200, None);
}

#[test]
fn cancel_aborts_the_multipart_upload() {
    let weed = seaweed::SeaweedFs::start("bits-publish-cancel");
    let config = node_config(&weed);
    let nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    let data = pattern(3 * FRAG, 44);
    let total = data.len() as u64;
    let path = "/upload/cancelled.bin";
    let sid = create(&nodes[0].addr, path);
    for i in 0..2 {
        Conn::new(nodes[i].addr)
            .fragment(
                path,
                &sid,
                (i * FRAG) as u64,
                &data[i * FRAG..(i + 1) * FRAG],
                total,
            )
            .assert_ack(200, None);
    }
    assert_eq!(markers(&weed, &sid).len(), 2);
    assert!(multipart_uploads(&weed).contains("uploads/cancelled.bin"));
    Conn::new(nodes[1].addr)
        .cancel(path, &sid)
        .assert_ack(200, None);
    assert!(
        !multipart_uploads(&weed).contains("uploads/cancelled.bin"),
        "the multipart upload survived Cancel: {}",
        multipart_uploads(&weed)
    );
    assert!(keys(&weed, "uploads").is_empty(), "{:?}", keys(&weed, ""));
    assert_only_the_record_left(&weed, &sid);
    // The last fragment of the cancelled session publishes nothing either.
    let r =
        Conn::new(nodes[0].addr).fragment(path, &sid, 2 * FRAG as u64, &data[2 * FRAG..], total);
    assert_ne!(r.status, 200);
    assert!(keys(&weed, "uploads").is_empty());
}

#[test]
fn no_overwrite_destination_appearing_meanwhile_is_a_conflict() {
    let weed = seaweed::SeaweedFs::start("bits-publish-conflict");
    let config = node_config(&weed);
    let nodes = [
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    ];
    let data = pattern(2 * FRAG + MIB, 45);
    let total = data.len() as u64;
    let path = "/keep/taken.bin";
    let sid = create(&nodes[0].addr, path);
    Conn::new(nodes[0].addr)
        .fragment(path, &sid, 0, &data[..FRAG], total)
        .assert_ack(200, None);
    Conn::new(nodes[1].addr)
        .fragment(path, &sid, FRAG as u64, &data[FRAG..2 * FRAG], total)
        .assert_ack(200, None);
    assert_eq!(markers(&weed, &sid).len(), 2);
    // Someone else publishes the name while the session is open.
    let theirs = b"somebody else's file".to_vec();
    put_object(&weed, "keep/taken.bin", theirs.clone());
    let r =
        Conn::new(nodes[0].addr).fragment(path, &sid, 2 * FRAG as u64, &data[2 * FRAG..], total);
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(get_object(&weed, "keep/taken.bin"), Some(theirs.clone()));
    // A retry elsewhere changes nothing.
    let r =
        Conn::new(nodes[1].addr).fragment(path, &sid, 2 * FRAG as u64, &data[2 * FRAG..], total);
    assert_eq!(r.status, 409);
    assert_eq!(get_object(&weed, "keep/taken.bin"), Some(theirs));
    Conn::new(nodes[1].addr).cancel(path, &sid);
    assert!(!multipart_uploads(&weed).contains("keep/taken.bin"));
}

#[test]
fn an_altered_upload_object_cannot_choose_where_bytes_are_published() {
    let weed = seaweed::SeaweedFs::start("bits-publish-tamper");
    let config = node_config(&weed);
    let node = Server::start_with(&config, false);
    let data = pattern(2 * FRAG + MIB, 46);
    let total = data.len() as u64;
    let path = "/upload/honest.bin";
    let sid = create(&node.addr, path);
    Conn::new(node.addr)
        .fragment(path, &sid, 0, &data[..FRAG], total)
        .assert_ack(200, None);
    // Someone with write access to the session objects points the upload elsewhere (a real
    // multipart upload of theirs at another key).
    let key = format!("spool/sessions/{}/mp/upload", session_key(&sid));
    let stored: serde_json::Value =
        serde_json::from_slice(&get_object(&weed, &key).expect("mp/upload")).unwrap();
    assert_eq!(stored["key"], "uploads/honest.bin");
    let client = weed.client();
    let evil_id = rt().block_on(async {
        use object_store::multipart::MultipartStore;
        client
            .create_multipart(&ObjectPath::parse("elsewhere/evil.bin").unwrap())
            .await
            .unwrap()
    });
    let altered = serde_json::json!({"key": "elsewhere/evil.bin", "upload_id": evil_id});
    put_object(&weed, &key, serde_json::to_vec(&altered).unwrap());
    // A node that has not cached the honest upload (restarted) serves the rest.
    let node2 = Server::start_with(&config, false);
    let r = Conn::new(node2.addr).fragment(path, &sid, FRAG as u64, &data[FRAG..], total);
    assert_ne!(r.status, 200, "published despite the altered upload object");
    assert!(get_object(&weed, "elsewhere/evil.bin").is_none());
    assert!(keys(&weed, "elsewhere").is_empty());
    assert!(get_object(&weed, "uploads/honest.bin").is_none());
    drop(node);
}
