//! One conformance suite for the storage traits, run against every backend: the local file
//! system (`FsStore`, the reference semantics) and object storage (`ObjectBackend` on a SeaweedFS
//! and on an Azurite started here). Each case gets the backend as `&dyn SessionStore` + `&dyn DataStore`; where
//! the backends legitimately differ, the case says so and asserts per backend.

mod support {
    pub mod azurite;
    pub mod seaweed;
    pub mod seaweed_client;
}

use std::io;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bits_proto::SessionId;
use bits_server::store::object::{AzureConfig, ObjectBackend, S3Config};
use bits_server::store::{
    DataStore, Destination, DestinationState, SessionRecord, SessionState, SessionStore, StoreError,
};
use bytes::Bytes;
use futures_util::{stream, FutureExt, Stream, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const MIB: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fs,
    /// S3 or Azure: the same shared object-storage logic.
    Object,
}

enum Reader {
    /// Destinations are files below this directory.
    Fs,
    /// A plain client on the same bucket or container; `prefix` is the ObjectBackend's key
    /// prefix.
    S3 {
        client: Box<dyn ObjectStore>,
        prefix: String,
    },
}

struct Backend {
    kind: Kind,
    sessions: Arc<dyn SessionStore>,
    data: Arc<dyn DataStore>,
    /// `Destination::root` for uploads: a directory (fs) or a key prefix (S3).
    root: String,
    reader: Reader,
}

impl Backend {
    fn dest(&self, path: &str) -> Destination {
        Destination {
            root: self.root.clone(),
            path: path.to_string(),
        }
    }

    /// The raw name, as the store keeps it (`Path::from` would percent-encode spaces).
    fn s3_key(&self, dest: &Destination) -> ObjPath {
        ObjPath::parse(format!("{}/{}", dest.root, dest.path)).expect("a valid key")
    }

    async fn read_dest(&self, dest: &Destination) -> Option<Vec<u8>> {
        match &self.reader {
            Reader::Fs => std::fs::read(PathBuf::from(&dest.root).join(&dest.path)).ok(),
            Reader::S3 { client, .. } => match client.get(&self.s3_key(dest)).await {
                Ok(r) => Some(r.bytes().await.expect("read object").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {dest:?}: {e}"),
            },
        }
    }

    async fn put_dest(&self, dest: &Destination, bytes: &[u8]) {
        match &self.reader {
            Reader::Fs => std::fs::write(PathBuf::from(&dest.root).join(&dest.path), bytes)
                .expect("write destination"),
            Reader::S3 { client, .. } => {
                client
                    .put(&self.s3_key(dest), PutPayload::from(bytes.to_vec()))
                    .await
                    .expect("put destination");
            }
        }
    }

    /// The stored reply; there is no trait method to read it back, so this knows the layout.
    async fn read_reply(&self, id: SessionId) -> Option<Vec<u8>> {
        match &self.reader {
            Reader::Fs => {
                let (_, reply) = self.data.local_files(id).expect("fs has local files");
                std::fs::read(reply).ok()
            }
            Reader::S3 { client, prefix } => {
                let key = ObjPath::from(format!(
                    "{prefix}/sessions/{}/reply",
                    id.as_uuid().hyphenated()
                ));
                match client.get(&key).await {
                    Ok(r) => Some(r.bytes().await.expect("read reply").to_vec()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("get reply: {e}"),
                }
            }
        }
    }

    /// A new session as the engine makes one: record created, data allocated.
    async fn session(&self, dest_path: &str) -> SessionRecord {
        let rec = record(self.dest(dest_path));
        self.sessions.create(&rec).await.expect("create");
        self.data.allocate(rec.id).await.expect("allocate");
        rec
    }

    async fn write(&self, id: SessionId, offset: u64, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let out = self
            .data
            .write(id, offset, len, std::pin::pin!(body(bytes, 64 << 10)))
            .await;
        assert!(out.error.is_none(), "write failed: {:?}", out.error);
        assert_eq!(out.durable, len);
    }

    async fn read_upload(&self, id: SessionId) -> Vec<u8> {
        let (len, stream) = self.data.read_upload(id).await.expect("read_upload");
        let chunks: Vec<Bytes> = stream.try_collect().await.expect("upload stream");
        let bytes = chunks.concat();
        assert_eq!(bytes.len() as u64, len, "read_upload length");
        bytes
    }
}

fn record(destination: Destination) -> SessionRecord {
    SessionRecord {
        id: SessionId::random(),
        vdir: "/up/".into(),
        url: "/up/file.bin".into(),
        destination,
        owner: Some(bits_server::principal::Principal::new(
            bits_server::principal::Scheme::Basic,
            "alice",
        )),
        client: None,
        total: None,
        received: 0,
        state: SessionState::Receiving,
        created_at: 1_700_000_000_000,
        last_activity: 1_700_000_000_000,
        ended_at: None,
        reply_url: None,
        app_forbidden: false,
        sha256: None,
        pending_hook: None,
    }
}

/// Deterministic test data: byte `i` of an upload depends only on `i`.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(i >> 8) % 251) as u8)
        .collect()
}

fn body(bytes: &[u8], chunk: usize) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let chunks: Vec<io::Result<Bytes>> = bytes
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn create_twice_fails(b: &Backend) {
    let rec = record(b.dest("create-twice.bin"));
    b.sessions.create(&rec).await.expect("first create");
    let again = b.sessions.create(&rec).await;
    assert!(again.is_err(), "second create of one id must fail");
    assert_eq!(b.sessions.load(rec.id).await.expect("load"), Some(rec));
}

async fn save_load_round_trip(b: &Backend) {
    assert_eq!(
        b.sessions.load(SessionId::random()).await.expect("load"),
        None
    );
    let mut rec = b.session("round-trip.bin").await;
    assert_eq!(
        b.sessions.load(rec.id).await.expect("load").as_ref(),
        Some(&rec)
    );
    rec.total = Some(1234);
    rec.received = 1000;
    rec.reply_url = Some("http://x/y".into());
    b.sessions.save(&rec).await.expect("save");
    assert_eq!(
        b.sessions.load(rec.id).await.expect("load").as_ref(),
        Some(&rec)
    );
    rec.state = SessionState::Committed;
    rec.received = 1234;
    b.sessions.save(&rec).await.expect("second save");
    assert_eq!(
        b.sessions.load(rec.id).await.expect("load").as_ref(),
        Some(&rec)
    );
    b.sessions.remove(rec.id).await.expect("remove");
    assert_eq!(b.sessions.load(rec.id).await.expect("load"), None);
    b.sessions.remove(rec.id).await.expect("remove twice");
}

async fn list_sessions(b: &Backend) {
    let one = b.session("list-1.bin").await;
    let two = b.session("list-2.bin").await;
    let ids = b.sessions.list().await.expect("list");
    assert!(ids.contains(&one.id) && ids.contains(&two.id), "{ids:?}");
    b.sessions
        .probe()
        .await
        .expect("probe of a reachable store");
    b.sessions.remove(one.id).await.expect("remove");
    let ids = b.sessions.list().await.expect("list");
    assert!(ids.contains(&two.id), "{ids:?}");
    match b.kind {
        Kind::Fs => assert!(!ids.contains(&one.id), "{ids:?}"),
        // SeaweedFS stores keys in a filer tree: the emptied `sessions/<uuid>/` folder stays
        // listed as a common prefix for a while (real S3 has no folders and drops it at
        // once). Callers treat a listed id without a record as nothing left to do.
        Kind::Object => assert_eq!(b.sessions.load(one.id).await.expect("load"), None),
    }
}

async fn writes_and_held(b: &Backend) {
    let rec = b.session("held.bin").await;
    assert_eq!(b.data.held(rec.id).await.expect("held"), 0);
    b.write(rec.id, 0, &pattern(0, 1000)).await;
    assert_eq!(b.data.held(rec.id).await.expect("held"), 1000);
    b.write(rec.id, 1000, &pattern(1000, 500)).await;
    assert_eq!(b.data.held(rec.id).await.expect("held"), 1500);
    // Overlapping retransmit reaching further: the same bytes again, plus new ones.
    b.write(rec.id, 700, &pattern(700, 1300)).await;
    assert_eq!(b.data.held(rec.id).await.expect("held"), 2000);
    // A duplicate of a middle range changes nothing.
    b.write(rec.id, 200, &pattern(200, 100)).await;
    assert_eq!(b.data.held(rec.id).await.expect("held"), 2000);
    assert_eq!(b.read_upload(rec.id).await, pattern(0, 2000));
}

async fn body_ending_early(b: &Backend) {
    let rec = b.session("early.bin").await;
    b.write(rec.id, 0, &pattern(0, 100)).await;
    let sent = pattern(100, 60);
    let out = b
        .data
        .write(rec.id, 100, 100, std::pin::pin!(body(&sent, 16)))
        .await;
    assert!(
        matches!(out.error, Some(StoreError::Body(_))),
        "{:?}",
        out.error
    );
    // The file system writes in place and keeps what arrived (the engine acknowledges those
    // bytes); an object is only created from a complete body, so S3 keeps nothing of it.
    let expect = match b.kind {
        Kind::Fs => 60,
        Kind::Object => 0,
    };
    assert_eq!(out.durable, expect);
    assert_eq!(b.data.held(rec.id).await.expect("held"), 100 + expect);
    // A body that fails mid-stream behaves the same way.
    let failing = stream::iter(vec![
        Ok(Bytes::from(pattern(100 + expect as usize, 10))),
        Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
    ]);
    let out = b
        .data
        .write(rec.id, 100 + expect, 50, std::pin::pin!(failing))
        .await;
    assert!(matches!(out.error, Some(StoreError::Body(_))));
    let expect2 = match b.kind {
        Kind::Fs => 10,
        Kind::Object => 0,
    };
    assert_eq!(out.durable, expect2);
    let held = 100 + expect + expect2;
    assert_eq!(b.data.held(rec.id).await.expect("held"), held);
    // The client resends from what was acknowledged, and the upload completes.
    b.write(rec.id, held, &pattern(held as usize, 200 - held as usize))
        .await;
    assert_eq!(b.read_upload(rec.id).await, pattern(0, 200));
}

async fn commit_publishes_total_and_is_idempotent(b: &Backend) {
    let rec = b.session("commit.bin").await;
    let dest = rec.destination.clone();
    assert_eq!(
        b.data.inspect(&dest).await.expect("inspect"),
        DestinationState::Absent
    );
    b.write(rec.id, 0, &pattern(0, 3000)).await;
    // Bytes past `total` (leftovers of an unacknowledged write) must not be published.
    b.write(rec.id, 3000, &pattern(3000, 77)).await;
    b.data
        .commit(rec.id, 3000, &dest, false)
        .await
        .expect("commit");
    assert_eq!(b.read_dest(&dest).await, Some(pattern(0, 3000)));
    assert_eq!(
        b.data.inspect(&dest).await.expect("inspect"),
        DestinationState::File
    );
    // Repeated after a crash between publishing and recording it: succeeds, same content.
    b.data
        .commit(rec.id, 3000, &dest, false)
        .await
        .expect("commit again");
    b.data
        .commit(rec.id, 3000, &dest, true)
        .await
        .expect("commit again, overwrite");
    assert_eq!(b.read_dest(&dest).await, Some(pattern(0, 3000)));
}

async fn commit_onto_existing_destination(b: &Backend) {
    let rec = b.session("exists.bin").await;
    let dest = rec.destination.clone();
    b.put_dest(&dest, b"someone else's file").await;
    assert_eq!(
        b.data.inspect(&dest).await.expect("inspect"),
        DestinationState::File
    );
    b.write(rec.id, 0, &pattern(0, 500)).await;
    let err = b.data.commit(rec.id, 500, &dest, false).await;
    assert!(matches!(err, Err(StoreError::DestinationExists)), "{err:?}");
    assert_eq!(
        b.read_dest(&dest).await.as_deref(),
        Some(&b"someone else's file"[..])
    );
    // Nothing was lost: with overwrite it publishes.
    assert_eq!(b.data.held(rec.id).await.expect("held"), 500);
    b.data
        .commit(rec.id, 500, &dest, true)
        .await
        .expect("commit with overwrite");
    assert_eq!(b.read_dest(&dest).await, Some(pattern(0, 500)));
}

async fn commit_without_data(b: &Backend) {
    let rec = b.session("missing.bin").await;
    let dest = rec.destination.clone();
    // Nothing written, nothing published: the data is missing (total > 0).
    b.data
        .discard(rec.id, bits_server::store::Held::ALL)
        .await
        .expect("discard");
    let err = b.data.commit(rec.id, 10, &dest, false).await;
    assert!(matches!(err, Err(StoreError::DataMissing)), "{err:?}");
    assert_eq!(b.read_dest(&dest).await, None);
}

async fn commit_empty_upload(b: &Backend) {
    let rec = b.session("empty.bin").await;
    let dest = rec.destination.clone();
    b.data
        .commit(rec.id, 0, &dest, false)
        .await
        .expect("commit empty");
    assert_eq!(b.read_dest(&dest).await, Some(Vec::new()));
    b.data
        .commit(rec.id, 0, &dest, false)
        .await
        .expect("commit empty again");
}

async fn discard_keeps_published(b: &Backend) {
    let rec = b.session("discard.bin").await;
    let dest = rec.destination.clone();
    b.write(rec.id, 0, &pattern(0, 800)).await;
    b.data
        .commit(rec.id, 800, &dest, true)
        .await
        .expect("commit");
    b.data
        .store_reply(rec.id, std::pin::pin!(body(b"reply", 2)))
        .await
        .expect("reply");
    b.data
        .discard(rec.id, bits_server::store::Held::ALL)
        .await
        .expect("discard");
    assert_eq!(b.data.held(rec.id).await.expect("held"), 0);
    assert_eq!(b.read_reply(rec.id).await, None);
    assert_eq!(b.read_dest(&dest).await, Some(pattern(0, 800)));
    b.data
        .discard(rec.id, bits_server::store::Held::ALL)
        .await
        .expect("discard twice");

    // Discarding an unpublished session drops its data.
    let rec = b.session("discard-2.bin").await;
    b.write(rec.id, 0, &pattern(0, 300)).await;
    b.data
        .discard(rec.id, bits_server::store::Held::ALL)
        .await
        .expect("discard");
    assert_eq!(b.data.held(rec.id).await.expect("held"), 0);
    assert!(matches!(
        b.data.read_upload(rec.id).await,
        Err(StoreError::DataMissing)
    ));
    assert_eq!(b.read_dest(&rec.destination).await, None);
    // The record itself is the session store's business: still there.
    assert!(b.sessions.load(rec.id).await.expect("load").is_some());
}

async fn replies(b: &Backend) {
    let rec = b.session("replies.bin").await;
    assert_eq!(b.read_reply(rec.id).await, None);
    let n = b
        .data
        .store_reply(rec.id, std::pin::pin!(body(b"first reply", 4)))
        .await
        .expect("store");
    assert_eq!(n, 11);
    assert_eq!(
        b.read_reply(rec.id).await.as_deref(),
        Some(&b"first reply"[..])
    );
    let n = b
        .data
        .store_reply(rec.id, std::pin::pin!(body(b"second", 100)))
        .await
        .expect("replace");
    assert_eq!(n, 6);
    assert_eq!(b.read_reply(rec.id).await.as_deref(), Some(&b"second"[..]));
    // Sealing keeps an existing reply.
    b.data.seal_reply(rec.id).await.expect("seal");
    assert_eq!(b.read_reply(rec.id).await.as_deref(), Some(&b"second"[..]));
    b.data.remove_reply(rec.id).await.expect("remove");
    assert_eq!(b.read_reply(rec.id).await, None);
    b.data.remove_reply(rec.id).await.expect("remove twice");
    // Sealing without a reply leaves an empty one.
    b.data.seal_reply(rec.id).await.expect("seal empty");
    assert_eq!(b.read_reply(rec.id).await, Some(Vec::new()));
    // A reply body that fails is an error.
    let failing = stream::iter(vec![
        Ok(Bytes::from_static(b"part")),
        Err(io::Error::other("app went away")),
    ]);
    let err = b.data.store_reply(rec.id, std::pin::pin!(failing)).await;
    assert!(matches!(err, Err(StoreError::Body(_))), "{err:?}");
}

async fn large_write_round_trip(b: &Backend) {
    let rec = b.session("large.bin").await;
    let len = 12 * MIB + 12_345;
    let data = pattern(0, len);
    // Two fragments: 12 MiB (several multipart parts on S3), then the rest.
    b.write(rec.id, 0, &data[..12 * MIB]).await;
    b.write(rec.id, (12 * MIB) as u64, &data[12 * MIB..]).await;
    assert_eq!(b.data.held(rec.id).await.expect("held"), len as u64);
    let read = b.read_upload(rec.id).await;
    assert!(read == data, "read_upload differs");
    b.data
        .commit(rec.id, len as u64, &rec.destination, false)
        .await
        .expect("commit");
    let published = b.read_dest(&rec.destination).await.expect("published");
    assert_eq!(published.len(), len);
    assert!(published == data, "published content differs");
}

/// Fragments written toward their destination (a vdir without notification), as the engine
/// writes them: tiny and large ones, a retried one, then the completion publishes exactly the
/// bytes. On object storage the fragments that start where the stored chain ends go straight
/// into the upload at the destination (S3 multipart parts of at least 5 MiB, Azure blocks of
/// any size); the others are stored standalone and packed at completion.
async fn direct_writes_publish(b: &Backend) {
    if b.kind == Kind::Fs {
        // Uploads never create directories.
        std::fs::create_dir_all(PathBuf::from(&b.root).join("direct")).expect("directory");
    }
    let rec = b.session("direct/écrit 1.bin").await;
    let data = pattern(0, 12 * MIB + 5);
    let cuts = [0, 3, 1003, 1003 + 6 * MIB, 7 * MIB, data.len()];
    let send = |from: usize, to: usize| {
        let dest = rec.destination.clone();
        let data = &data;
        async move {
            let out = b
                .data
                .write_for_destination(
                    rec.id,
                    from as u64,
                    (to - from) as u64,
                    std::pin::pin!(body(&data[from..to], 64 << 10)),
                    &dest,
                )
                .await;
            assert!(out.error.is_none(), "write {from}..{to}: {:?}", out.error);
            assert_eq!(out.durable, (to - from) as u64);
        }
    };
    for w in cuts.windows(2) {
        send(w[0], w[1]).await;
        if w[0] == 1003 {
            // A retry of a fragment already stored (its Ack was lost).
            send(3, 1003).await;
        }
    }
    assert_eq!(b.data.held(rec.id).await.expect("held"), data.len() as u64);
    assert_eq!(b.read_dest(&rec.destination).await, None, "published early");
    b.data
        .commit(rec.id, data.len() as u64, &rec.destination, false)
        .await
        .expect("commit");
    let published = b.read_dest(&rec.destination).await.expect("published");
    assert!(published == data, "published content differs");
    // Repeated after a crash before the record said so: recognised as its own.
    b.data
        .commit(rec.id, data.len() as u64, &rec.destination, false)
        .await
        .expect("commit again");
}

// S3-only behaviour (and Azure's: the same shared object-storage logic).

/// Two nodes on one bucket: the second save from a stale view loses.
async fn s3_stale_save_conflicts(b: &Backend, other: &ObjectBackend) {
    let mut rec = b.session("conflict.bin").await;
    let mut theirs = other.load(rec.id).await.expect("load").expect("record");
    rec.received = 10;
    b.sessions.save(&rec).await.expect("save");
    theirs.received = 20;
    let err = other.save(&theirs).await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    // Stays conflicting until reloaded, then saves.
    assert!(matches!(
        other.save(&theirs).await,
        Err(StoreError::Conflict(_))
    ));
    let fresh = other.load(rec.id).await.expect("load").expect("record");
    assert_eq!(fresh.received, 10);
    other.save(&theirs).await.expect("save after reload");
    assert_eq!(
        b.sessions
            .load(rec.id)
            .await
            .expect("load")
            .map(|r| r.received),
        Some(20)
    );
}

/// A crash after the copy but before the parts were deleted: the next commit recognises the
/// destination as its own (by the session tag copied with the object) even without overwrite.
async fn s3_commit_after_crash(b: &Backend) {
    let rec = b.session("crash.bin").await;
    b.write(rec.id, 0, &pattern(0, 400)).await;
    b.data
        .commit(rec.id, 400, &rec.destination, false)
        .await
        .expect("commit");
    // The parts come back as if never deleted.
    b.write(rec.id, 0, &pattern(0, 400)).await;
    b.data
        .commit(rec.id, 400, &rec.destination, false)
        .await
        .expect("commit again with parts left");
    // Releasing the parts of a published upload finishes after the call (in the background).
    b.data
        .release_upload(rec.id, &rec.destination)
        .await
        .expect("release");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.data.held(rec.id).await.expect("held") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "parts still held after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(b.read_dest(&rec.destination).await, Some(pattern(0, 400)));
}

macro_rules! run_cases {
    ($backend:expr, $($case:ident),+ $(,)?) => {{
        let mut failed: Vec<&str> = Vec::new();
        $(
            if AssertUnwindSafe($case($backend)).catch_unwind().await.is_err() {
                failed.push(stringify!($case));
            }
        )+
        failed
    }};
}

/// What a backend says of itself: whether other nodes share its records (the engine then
/// reconciles its registry with the store), and what operators are shown of it.
async fn capabilities(b: &Backend) {
    let info = b.data.info();
    match b.kind {
        Kind::Fs => {
            assert!(!b.sessions.shared(), "one node's spool is its own");
            assert_eq!(info.backend, "fs");
            let dir = info.local_dir.expect("the spool is a local directory");
            assert_eq!(dir.display().to_string(), info.location);
        }
        Kind::Object => {
            assert!(
                b.sessions.shared(),
                "a farm's bucket or container is shared"
            );
            let scheme = format!("{}://", info.backend);
            assert!(["s3", "azure"].contains(&info.backend), "{}", info.backend);
            assert!(info.location.starts_with(&scheme), "{}", info.location);
            assert!(info.location.ends_with("/spool"), "{}", info.location);
            assert_eq!(info.local_dir, None);
        }
    }
}

async fn conformance(b: &Backend) -> Vec<&'static str> {
    run_cases!(
        b,
        capabilities,
        create_twice_fails,
        save_load_round_trip,
        list_sessions,
        writes_and_held,
        body_ending_early,
        commit_publishes_total_and_is_idempotent,
        commit_onto_existing_destination,
        commit_without_data,
        commit_empty_upload,
        discard_keeps_published,
        replies,
        large_write_round_trip,
        direct_writes_publish,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_backend() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let uploads = tmp.path().join("uploads");
    std::fs::create_dir(&uploads).expect("uploads dir");
    let (records, store) =
        bits_server::store::fs::open_local(&tmp.path().join("spool"), true).expect("open fs store");
    let b = Backend {
        kind: Kind::Fs,
        sessions: records,
        data: Arc::new(store),
        root: uploads.to_string_lossy().into_owned(),
        reader: Reader::Fs,
    };
    let failed = conformance(&b).await;
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// The whole suite on an object-storage backend (S3 or Azure), plus what only a shared store
/// has: a save from a stale view loses to another node's, and a commit whose record was lost in
/// a crash is finished by the retry. `other` is a second node on the same store.
async fn object_conformance(
    store: Arc<ObjectBackend>,
    other: &ObjectBackend,
    client: Box<dyn ObjectStore>,
    log_tail: impl Fn() -> String,
) {
    let b = Backend {
        kind: Kind::Object,
        sessions: store.clone(),
        data: store,
        root: "uploads".into(),
        reader: Reader::S3 {
            client,
            prefix: "spool".into(),
        },
    };
    let mut failed = conformance(&b).await;
    if AssertUnwindSafe(s3_stale_save_conflicts(&b, other))
        .catch_unwind()
        .await
        .is_err()
    {
        failed.push("s3_stale_save_conflicts");
    }
    failed.extend(run_cases!(&b, s3_commit_after_crash));
    if !failed.is_empty() {
        eprintln!("store log tail:\n{}", log_tail());
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend() {
    let weed = support::seaweed::SeaweedFs::start("bits-conformance");
    let config = S3Config {
        endpoint: Some(weed.endpoint.clone()),
        bucket: weed.bucket.clone(),
        prefix: "spool/".into(),
        region: "us-east-1".into(),
        access_key: "any".into(),
        secret_key: "any".into(),
        allow_http: true,
        // A store that stops answering fails the test in seconds, not minutes.
        request_timeout: Duration::from_secs(10),
        retry_timeout: Duration::from_secs(20),
        max_retries: 3,
    };
    let store = Arc::new(ObjectBackend::s3(config.clone()).expect("s3 store"));
    let other = ObjectBackend::s3(config).expect("second s3 store");
    let client = Box::new(weed.client());
    object_conformance(store, &other, client, || weed.log_tail()).await;
}

/// The Azure backend with a SAS token instead of the account key: object_store sends it with
/// its requests, bitsd appends it to the Put Block and Put Block List it sends itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_backend_with_a_sas_token() {
    use support::azurite::{Azurite, ACCOUNT};
    let Some(azurite) = Azurite::start("bits-sas") else {
        return;
    };
    let config = AzureConfig {
        account: ACCOUNT.into(),
        container: azurite.container.clone(),
        prefix: "spool".into(),
        access_key: None,
        sas_token: Some(format!("?{}", azurite.container_sas())),
        use_azure_identity: false,
        endpoint: Some(azurite.endpoint.clone()),
        allow_http: true,
        request_timeout: Duration::from_secs(10),
        retry_timeout: Duration::from_secs(20),
        max_retries: 3,
    };
    let store = Arc::new(ObjectBackend::azure(config).expect("azure store"));
    let client = azurite.client();
    let b = Backend {
        kind: Kind::Object,
        sessions: store.clone(),
        data: store,
        root: "uploads".into(),
        reader: Reader::S3 {
            client: Box::new(client),
            prefix: "spool".into(),
        },
    };
    let failed = conformance(&b).await;
    if !failed.is_empty() {
        eprintln!("azurite log tail:\n{}", azurite.log_tail());
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_backend() {
    use support::azurite::{Azurite, ACCOUNT, KEY};
    let Some(azurite) = Azurite::start("bits-conformance") else {
        return;
    };
    let config = AzureConfig {
        account: ACCOUNT.into(),
        container: azurite.container.clone(),
        prefix: "spool/".into(),
        access_key: Some(KEY.into()),
        sas_token: None,
        use_azure_identity: false,
        endpoint: Some(azurite.endpoint.clone()),
        allow_http: true,
        request_timeout: Duration::from_secs(10),
        retry_timeout: Duration::from_secs(20),
        max_retries: 3,
    };
    let store = Arc::new(ObjectBackend::azure(config.clone()).expect("azure store"));
    let other = ObjectBackend::azure(config).expect("second azure store");
    let client = azurite.client();
    object_conformance(store, &other, Box::new(client), || azurite.log_tail()).await;
}

/// An unreachable store fails within `retry_timeout` (the BITS client then gets an error Ack
/// and retries), instead of holding the request for minutes.
#[tokio::test]
async fn unreachable_s3_store_fails_within_the_retry_timeout() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let store = ObjectBackend::s3(S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        bucket: "nowhere".into(),
        prefix: String::new(),
        region: "us-east-1".into(),
        access_key: "any".into(),
        secret_key: "any".into(),
        allow_http: true,
        request_timeout: Duration::from_secs(1),
        retry_timeout: Duration::from_secs(2),
        max_retries: 3,
    })
    .expect("s3 store");
    let started = std::time::Instant::now();
    let probed = tokio::time::timeout(
        Duration::from_secs(20),
        bits_server::store::SessionStore::probe(&store),
    )
    .await
    .expect("the probe gave up by itself");
    assert!(probed.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
