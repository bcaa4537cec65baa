//! What each node of a farm knows about open sessions: a session ended through one node must
//! stop counting on the others (destination held, session limits, `bitsd_sessions_open`), and a
//! fragment stored on one node while another cancels the session must not leave its part in
//! the bucket. Two bitsd nodes on one SeaweedFS bucket, `[storage] backend = "s3"`, and the
//! same tests on one Azurite container, `backend = "azure"`.

use crate::common::*;

use crate::seaweed;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

/// The object store the nodes share.
enum Backing {
    Weed(seaweed::SeaweedFs),
    Azure(crate::azurite::Azurite),
}

impl Backing {
    fn weed(bucket: &str) -> Backing {
        Backing::Weed(seaweed::SeaweedFs::start(bucket))
    }

    /// `None` (the test skips, saying why) without Azurite.
    fn azure(container: &str) -> Option<Backing> {
        crate::azurite::Azurite::start(container).map(Backing::Azure)
    }

    fn storage(&self) -> String {
        match self {
            Backing::Weed(weed) => format!(
                "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"spool\"\n\
                 access_key = \"any\"\nsecret_key = \"any\"\nallow_http = true\n",
                weed.endpoint, weed.bucket
            ),
            Backing::Azure(a) => format!(
                "[storage]\nbackend = \"azure\"\naccount = \"{}\"\ncontainer = \"{}\"\n\
                 prefix = \"spool\"\naccess_key = \"{}\"\nendpoint = \"{}\"\nallow_http = true\n",
                crate::azurite::ACCOUNT,
                a.container,
                crate::azurite::KEY,
                a.endpoint
            ),
        }
    }

    fn client(&self) -> Box<dyn ObjectStore> {
        match self {
            Backing::Weed(weed) => Box::new(weed.client()),
            Backing::Azure(a) => Box::new(a.client()),
        }
    }

    /// Multipart uploads in progress (S3); Azure's uncommitted blocks are not listed (they
    /// expire by themselves), so none there.
    fn pending_uploads(&self) -> Option<Vec<String>> {
        match self {
            Backing::Weed(weed) => Some(weed.pending_uploads()),
            Backing::Azure(_) => None,
        }
    }
}

/// One node's config; `top` holds extra top-level keys.
fn node_config(store: &Backing, top: &str) -> String {
    format!(
        "session_lock_timeout = \"2s\"\nbody_idle_timeout = \"5s\"\n\
         admin = {{ listen = \"127.0.0.1:0\" }}\n{top}\n{}\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\ndownload_enabled = false\n",
        store.storage()
    )
}

fn create(node: SocketAddr, path: &str) -> Response {
    Conn::new(node).create(path)
}

fn cancel(node: SocketAddr, path: &str, sid: &str) -> Response {
    Conn::new(node).cancel(path, sid)
}

/// `bitsd_sessions_open` on a node's admin listener.
fn open_on(s: &Server) -> f64 {
    let r = Conn::new(s.admin_addr.expect("admin listener")).send("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body)
        .expect("utf-8 metrics")
        .lines()
        .find_map(|l| l.strip_prefix("bitsd_sessions_open "))
        .expect("bitsd_sessions_open sample")
        .trim()
        .parse()
        .expect("a number")
}

/// Waits until every node reports `want` open sessions; panics with what they report.
fn wait_open(nodes: &[&Server], want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got: Vec<f64> = nodes.iter().map(|n| open_on(n)).collect();
        if got.iter().all(|&g| g == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bitsd_sessions_open per node: {got:?}, expected {want} on each"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Upload data and its bookkeeping (`.../parts/...`, `.../mp/...`) anywhere under the
/// session prefix.
fn data_in(backing: &Backing) -> Vec<String> {
    let store = backing.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store
            .list(Some(&ObjectPath::from("spool")))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.contains("/parts/") || k.contains("/mp/"))
            .collect()
    })
}

/// The periodic refresh is off (1 h): only the checks made before refusing can notice what
/// the other node did. The same name is created again on the first node after a cancel on
/// the second, and create-here/cancel-there pairs never run the first node into its limit.
#[test]
fn a_cancel_on_another_node_frees_the_name_and_the_slot() {
    cancel_frees_the_name_and_the_slot(&Backing::weed("bits-farm-free"));
}

#[test]
fn a_cancel_on_another_node_frees_the_name_and_the_slot_on_azure() {
    if let Some(b) = Backing::azure("bits-farm-free") {
        cancel_frees_the_name_and_the_slot(&b);
    }
}

fn cancel_frees_the_name_and_the_slot(weed: &Backing) {
    let config = node_config(
        weed,
        "max_open_sessions = 2\nregistry_refresh_interval = \"1h\"",
    );
    let (a, b) = (
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    );
    let path = "/upload/same.bin";
    let first = create(a.addr, path);
    first.assert_ack(200, None);
    cancel(b.addr, path, &first.session()).assert_ack(200, None);
    let again = create(a.addr, path);
    again.assert_ack(200, None);
    assert_ne!(again.session(), first.session());
    cancel(b.addr, path, &again.session()).assert_ack(200, None);

    for i in 0..8 {
        let path = format!("/upload/drift-{i}.bin");
        let r = create(a.addr, &path);
        assert_eq!(
            r.status,
            200,
            "create #{i} on the first node: {:?}\n{}",
            r.headers,
            a.log_text()
        );
        cancel(b.addr, &path, &r.session()).assert_ack(200, None);
    }
}

/// Every node's `bitsd_sessions_open` follows the bucket within the refresh interval: sessions
/// created through the other node are added, sessions cancelled through it are dropped.
#[test]
fn open_counts_converge_on_every_node() {
    open_counts_converge(&Backing::weed("bits-farm-count"));
}

#[test]
fn open_counts_converge_on_every_node_on_azure() {
    if let Some(b) = Backing::azure("bits-farm-count") {
        open_counts_converge(&b);
    }
}

fn open_counts_converge(weed: &Backing) {
    let config = node_config(weed, "registry_refresh_interval = \"300ms\"");
    let (a, b) = (
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    );
    let x = create(a.addr, "/upload/x.bin");
    x.assert_ack(200, None);
    let y = create(b.addr, "/upload/y.bin");
    y.assert_ack(200, None);
    wait_open(&[&a, &b], 2.0, Duration::from_secs(5));
    // Once known, a session open on one node holds its name on the other too.
    let refused = create(b.addr, "/upload/x.bin");
    assert!(
        refused.status == 403 || refused.status == 409,
        "a name held through the other node: {}",
        refused.status
    );
    cancel(b.addr, "/upload/x.bin", &x.session()).assert_ack(200, None);
    cancel(a.addr, "/upload/y.bin", &y.session()).assert_ack(200, None);
    let t = Instant::now();
    wait_open(&[&a, &b], 0.0, Duration::from_secs(5));
    eprintln!(
        "both nodes back to 0 open sessions {} ms after the cross-node cancels",
        t.elapsed().as_millis()
    );
}

/// A fragment streams into the first node slowly; the second node cancels the session in the
/// middle. When the body ends, its part is stored after the cancel deleted the session's parts:
/// the first node must delete it again.
#[test]
fn a_cancel_racing_a_fragment_on_another_node_leaves_no_part() {
    race_cancels_against_fragments(&Backing::weed("bits-farm-race"), 256 * 1024);
}

/// On Azure every fragment that starts where the blocks end streams into a block of the
/// destination blob: the cancel deletes the session's claims and markers while a block is on
/// its way, and none may stay.
#[test]
fn a_cancel_racing_a_block_fragment_on_another_node_leaves_nothing_on_azure() {
    if let Some(b) = Backing::azure("bits-farm-race") {
        race_cancels_against_fragments(&b, 256 * 1024);
    }
}

/// The same race with fragments large enough to stream straight into the session's multipart
/// upload at the destination: the cancel aborts that upload while a part is on its way, and
/// neither the part, its claim and marker, nor the upload itself may stay in the bucket.
#[test]
fn a_cancel_racing_a_multipart_fragment_on_another_node_leaves_nothing() {
    race_cancels_against_fragments(&Backing::weed("bits-farm-race-mp"), 6 << 20);
}

fn race_cancels_against_fragments(weed: &Backing, size: usize) {
    let config = node_config(weed, "");
    let (a, b) = (
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    );
    for round in 0..3 {
        let path = &format!("/upload/raced-{round}.bin");
        let sid = create(a.addr, path).session();
        let data = pattern(size, round);
        let mut c = Conn::new(a.addr);
        let range = format!("bytes 0-{}/{}", data.len() - 1, data.len());
        let len = data.len().to_string();
        let head = request_bytes(
            "BITS_POST",
            path,
            &[
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", &sid),
                ("Content-Range", &range),
                ("Content-Length", &len),
            ],
            b"",
        );
        c.write_raw(&head);
        c.write_raw(&data[..data.len() / 2]);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(pending) = weed.pending_uploads().filter(|_| size >= 5 << 20) {
            // The probe below sees uploads in progress: this one, begun by the fragment.
            assert_eq!(pending.len(), 1, "round {round}");
        }
        cancel(b.addr, path, &sid).assert_ack(200, None);
        c.write_raw(&data[data.len() / 2..]);
        let r = c.read_response(false);
        assert_ne!(r.status, 200, "a fragment of a cancelled session");
        let left = data_in(weed);
        assert!(left.is_empty(), "round {round}: data left: {left:?}");
        let pending = weed.pending_uploads().unwrap_or_default();
        assert!(
            pending.is_empty(),
            "round {round}: multipart uploads left: {pending:?}"
        );
    }
}

/// A spool quota counts bytes stored through every node: 800 KiB stored through node B for a
/// session created on node A, then another 800 KiB on node A for a second session, with a
/// 1 MiB `spool_quota`, is refused on A with the disk-full Ack (each node alone holds less).
#[test]
fn a_quota_counts_bytes_stored_through_other_nodes() {
    quota_counts_other_nodes(&Backing::weed("bits-farm-quota"));
}

#[test]
fn a_quota_counts_bytes_stored_through_other_nodes_on_azure() {
    if let Some(b) = Backing::azure("bits-farm-quota") {
        quota_counts_other_nodes(&b);
    }
}

fn quota_counts_other_nodes(weed: &Backing) {
    let config = node_config(
        weed,
        "spool_quota = 1048576\nregistry_refresh_interval = \"300ms\"",
    );
    let (a, b) = (
        Server::start_with(&config, false),
        Server::start_with(&config, false),
    );
    let chunk = pattern(800 << 10, 15);
    let total = 2 * chunk.len() as u64;
    let first = create(a.addr, "/upload/q1.bin").session();
    Conn::new(b.addr)
        .fragment("/upload/q1.bin", &first, 0, &chunk, total)
        .assert_ack(200, None);
    let second = create(a.addr, "/upload/q2.bin").session();
    // Node A learns the other node's bytes at its next refresh.
    std::thread::sleep(Duration::from_millis(1_000));
    Conn::new(a.addr)
        .fragment("/upload/q2.bin", &second, 0, &chunk, total)
        .assert_ack(500, Some(("0x80070070", "0x5")));
    // Freed through the other node, the quota has room again on A (at its next refresh; the
    // client retries a disk-full Ack anyway).
    cancel(b.addr, "/upload/q1.bin", &first).assert_ack(200, None);
    std::thread::sleep(Duration::from_millis(1_000));
    Conn::new(a.addr)
        .fragment("/upload/q2.bin", &second, 0, &chunk, total)
        .assert_ack(200, None);
}
