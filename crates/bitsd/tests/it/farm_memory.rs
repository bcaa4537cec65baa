//! Memory of an S3 node (and of an Azure one, on Azurite) under many concurrent fragments: every fragment body buffered for the
//! object store draws from the server-wide body budget (`max_buffered_body_bytes`), so 100
//! concurrent 5 MB fragments, each its own session, keep the node's peak RSS bounded, and
//! every upload still lands byte-identical.

use crate::common::*;

use crate::seaweed;

use std::sync::{Arc, Barrier};

const SESSIONS: usize = 100;
const LEN: usize = 5_000_000;
/// The bound the issue sets for 100 concurrent fragments.
const PEAK_LIMIT_KIB: u64 = 256 << 10;

#[test]
fn hundred_concurrent_s3_fragments_stay_within_the_body_budget() {
    let weed = seaweed::SeaweedFs::start("bits-memory");
    let storage = format!(
        "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"spool\"\n\
         access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n",
        weed.endpoint, weed.bucket
    );
    hundred_concurrent_fragments(&storage, "S3");
}

/// The same on Azure: each fragment streamed into a block of its destination blob.
#[test]
fn hundred_concurrent_azure_fragments_stay_within_the_body_budget() {
    use crate::azurite::{Azurite, ACCOUNT, KEY};
    let Some(azurite) = Azurite::start("bits-memory") else {
        return;
    };
    let storage = format!(
        "[storage]\nbackend = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{}\"\n\
         prefix = \"spool\"\naccess_key = \"{KEY}\"\nendpoint = \"{}\"\nallow_http = true\n",
        azurite.container, azurite.endpoint
    );
    hundred_concurrent_fragments(&storage, "Azure");
}

fn hundred_concurrent_fragments(storage: &str, backend: &str) {
    let config = format!(
        "{storage}[[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = true\n"
    );
    let server = Server::start_with(&config, false);
    let addr = server.addr;
    let sessions: Vec<String> = (0..SESSIONS)
        .map(|i| {
            let r = server.conn().create(&format!("/upload/m{i}.bin"));
            r.assert_ack(200, None);
            r.session()
        })
        .collect();
    let before = server.peak_rss_kib();

    // All fragments start together, each on its own connection.
    let start = Arc::new(Barrier::new(SESSIONS));
    let started = std::time::Instant::now();
    let senders: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, sid)| {
            let start = start.clone();
            std::thread::spawn(move || {
                let data = pattern(LEN, i as u64 + 1);
                let mut c = Conn::new(addr);
                start.wait();
                let r = c.fragment(&format!("/upload/m{i}.bin"), &sid, 0, &data, LEN as u64);
                (r.status, r.received())
            })
        })
        .collect();
    for (i, s) in senders.into_iter().enumerate() {
        let (status, received) = s.join().expect("sender");
        assert_eq!(status, 200, "m{i}.bin");
        assert_eq!(received, Some(LEN as u64), "m{i}.bin");
    }
    let elapsed = started.elapsed();
    let peak = server.peak_rss_kib();
    eprintln!(
        "farm_memory: {SESSIONS} concurrent {LEN}-byte fragments on {backend} in {:.1} s: \
         peak RSS {} MiB before, {} MiB after (limit {} MiB)",
        elapsed.as_secs_f64(),
        before >> 10,
        peak >> 10,
        PEAK_LIMIT_KIB >> 10
    );

    // Every upload is published byte for byte, read back through the node.
    for i in 0..SESSIONS {
        let got = server
            .conn()
            .send("GET", &format!("/upload/m{i}.bin"), &[], b"");
        assert_eq!(got.status, 200, "m{i}.bin");
        assert!(
            got.body == pattern(LEN, i as u64 + 1),
            "m{i}.bin: {} bytes differ from what was sent",
            got.body.len()
        );
    }
    assert!(
        peak < PEAK_LIMIT_KIB,
        "peak RSS {} MiB, over {} MiB",
        peak >> 10,
        PEAK_LIMIT_KIB >> 10
    );
}
