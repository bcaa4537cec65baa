//! Reading published objects back for GET/HEAD: one HEAD per request, then ranged GETs in
//! windows, pinned to the version the HEAD saw.

use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::{os_err, ObjectBackend, SyncStream};
use crate::store::{ByteStream, Destination, PublishedFile, Representation, StoreError};

/// Bytes of a published object fetched per GET: each GET must finish within
/// `request_timeout`, and it is read only as fast as the downloading client reads, so a
/// whole large file is never one request.
const READ_WINDOW: u64 = 8 << 20;

impl ObjectBackend {
    /// One HEAD of `<dest.root>/<dest.path>`; reads are ranged GETs pinned to what it saw.
    pub(super) async fn open_published_object(
        &self,
        dest: &Destination,
    ) -> Result<Option<Box<dyn PublishedFile>>, StoreError> {
        let Some(key) = self.published_key(dest) else {
            return Ok(None);
        };
        let meta = match self.store.head(&key).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err(e)),
        };
        Ok(Some(Box::new(PublishedObject {
            store: self.store.clone(),
            rep: object_representation(&meta),
            key,
            e_tag: meta.e_tag,
            version: meta.version,
        })))
    }

    /// The key a download of `dest` may read, or `None` for a name that is never served: the
    /// root itself, a temporary name, or anything below the session objects (a vdir root may
    /// not overlap them, see the config check; this holds even if it did).
    pub(super) fn published_key(&self, dest: &Destination) -> Option<Path> {
        if crate::store::is_internal_name(&dest.path) || dest.path.split('/').all(str::is_empty) {
            return None;
        }
        let key = Self::dest_key(dest).ok()?;
        (!key.prefix_matches(&self.sessions())).then_some(key)
    }
}

/// HTTP's view of an object: S3's ETag (an MD5 or multipart digest, strong and quoted) and
/// `Last-Modified`. A store that sends no ETag gets one made of size and time.
fn object_representation(meta: &object_store::ObjectMeta) -> Representation {
    let secs = meta.last_modified.timestamp();
    let etag = match meta.e_tag.as_deref() {
        Some(t) if t.starts_with('"') => t.to_string(),
        Some(t) if !t.is_empty() => format!("\"{t}\""),
        _ => format!("\"{:x}-{:x}\"", meta.size, secs.max(0)),
    };
    Representation::at_unix_seconds(meta.size, secs, etag)
}

/// A published object as one HEAD found it.
struct PublishedObject {
    store: Arc<dyn ObjectStore>,
    key: Path,
    rep: Representation,
    /// Sent as `If-Match` (and the version, on a versioned bucket) with every ranged GET, so
    /// an object replaced meanwhile fails the read instead of mixing two versions in one
    /// answer.
    e_tag: Option<String>,
    version: Option<String>,
}

impl PublishedObject {
    async fn get(&self, range: std::ops::Range<u64>) -> Result<ByteStream, StoreError> {
        let got = get_window(
            self.store.clone(),
            self.key.clone(),
            self.e_tag.clone(),
            self.version.clone(),
            range,
        )
        .await
        .map_err(os_err)?;
        Ok(Box::new(SyncStream(Mutex::new(got))))
    }
}

async fn get_window(
    store: Arc<dyn ObjectStore>,
    key: Path,
    e_tag: Option<String>,
    version: Option<String>,
    range: std::ops::Range<u64>,
) -> Result<BoxStream<'static, io::Result<Bytes>>, object_store::Error> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range)),
        if_match: e_tag,
        version,
        ..GetOptions::default()
    };
    let got = store.get_opts(&key, opts).await?;
    Ok(got.into_stream().map_err(io::Error::from).boxed())
}

#[async_trait]
impl PublishedFile for PublishedObject {
    fn representation(&self) -> &Representation {
        &self.rep
    }

    /// The first window is requested before returning, so a failure can still become an
    /// error status; later windows are requested as the body reaches them.
    async fn read(&self, range: std::ops::Range<u64>) -> Result<ByteStream, StoreError> {
        let range = range.start..range.end.min(self.rep.len);
        if range.is_empty() {
            return Ok(Box::new(stream::empty()));
        }
        let first_end = range.end.min(range.start.saturating_add(READ_WINDOW));
        let first = self.get(range.start..first_end).await?;
        if first_end == range.end {
            return Ok(first);
        }
        let (store, key, e_tag, version) = (
            self.store.clone(),
            self.key.clone(),
            self.e_tag.clone(),
            self.version.clone(),
        );
        let windows = (first_end..range.end)
            .step_by(READ_WINDOW as usize)
            .map(move |s| s..s.saturating_add(READ_WINDOW).min(range.end));
        let rest = stream::iter(windows)
            .then(move |w| {
                get_window(
                    store.clone(),
                    key.clone(),
                    e_tag.clone(),
                    version.clone(),
                    w,
                )
            })
            .map_err(io::Error::from)
            .try_flatten();
        Ok(Box::new(SyncStream(Mutex::new(first.chain(rest).boxed()))))
    }
}
