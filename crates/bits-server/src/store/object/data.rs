//! The upload data of the object store: fragments as parts at the destination (multipart
//! uploads on S3, blocks on Azure) or standalone objects, completion, replies, reads of
//! published objects.

use super::*;

#[async_trait]
impl DataStore for ObjectBackend {
    fn info(&self) -> StorageInfo {
        StorageInfo {
            backend: self.flavor.backend(),
            location: format!("{}/{}", self.location, self.root),
            local_dir: None,
        }
    }

    /// Object stores have no directories: a destination is a file or absent.
    async fn inspect(&self, dest: &Destination) -> Result<DestinationState, StoreError> {
        match self.store.head(&Self::dest_key(dest)?).await {
            Ok(_) => Ok(DestinationState::File),
            Err(object_store::Error::NotFound { .. }) => Ok(DestinationState::Absent),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn allocate(&self, _id: SessionId) -> Result<(), StoreError> {
        Ok(())
    }

    fn check_name(&self, dest: &Destination) -> Result<(), &'static str> {
        if Self::dest_key_text(dest).len() > MAX_KEY_BYTES {
            return Err("name too long for the object store (keys are at most 1024 bytes)");
        }
        Self::dest_key(dest)
            .map(|_| ())
            .map_err(|_| "name the object store cannot hold")
    }

    async fn write(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        body: BodyStream<'_>,
    ) -> WriteOutcome {
        self.write_standalone(id, offset, len, body, None).await
    }

    fn writes_toward_destination(&self) -> bool {
        true
    }

    /// A fragment of at least 5 MiB that starts where the session's multipart parts end goes
    /// straight into parts of the multipart upload at `dest` (derived from the configuration
    /// by the engine); any other, or the rest of one whose next part number another node
    /// claimed for other bytes, is stored as by [`DataStore::write`].
    async fn write_for_destination(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        mut body: BodyStream<'_>,
        dest: &Destination,
    ) -> WriteOutcome {
        let key = match Self::dest_key(dest) {
            Ok(key) => key,
            Err(_) => return self.write_standalone(id, offset, len, body, None).await,
        };
        let direct = match self.direct_target(id, offset, len, &key).await {
            Ok(direct) => direct,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "no multipart upload for this fragment; storing standalone parts");
                None
            }
        };
        let Some((info, first)) = direct else {
            let outcome = self.write_standalone(id, offset, len, body, None).await;
            let upto = offset + outcome.durable;
            if outcome.durable > 0 {
                if let Err(e) = self.pack_ready(id, &key, offset, upto).await {
                    // The fragment is stored; the completion packs what is left.
                    tracing::warn!(session = %id, error = %e, "could not pack standalone parts into the multipart upload");
                }
            }
            return outcome;
        };
        let mut carry = None;
        let (durable, stop) = self
            .stream_parts(id, &info, &key, first, offset, len, &mut body, &mut carry)
            .await;
        match stop {
            None => {
                self.remember(
                    id,
                    Some(Cached {
                        info,
                        end: offset + len,
                        next: first + pieces(len).len(),
                    }),
                );
                return WriteOutcome {
                    durable,
                    error: None,
                };
            }
            Some(Stop::Failed(e)) => {
                self.remember(id, None);
                return WriteOutcome {
                    durable,
                    error: Some(e),
                };
            }
            Some(Stop::Claimed) => {}
        }
        self.remember(id, None);
        let at = offset + durable;
        let rest = self
            .write_standalone(id, at, len - durable, body, carry)
            .await;
        WriteOutcome {
            durable: durable + rest.durable,
            error: rest.error,
        }
    }

    async fn held(&self, id: SessionId) -> Result<u64, StoreError> {
        let (end, _, _) = self.mp_state(id).await?.chain();
        Ok(cover_from(&self.parts(id).await?, end, u64::MAX).0)
    }

    /// Completes the session's multipart upload at the destination: parts streamed in by
    /// `write` stay where they are; standalone bytes after them are read back into further
    /// parts (bounded when fragments were large and aligned). With `overwrite` off the
    /// completion carries `If-None-Match: *`. The object is tagged with the session, so a
    /// repeat after a crash recognises its own publication.
    async fn commit(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let target = Self::dest_key(dest)?;
        if total == 0 {
            return self.commit_empty(id, &target, overwrite).await;
        }
        let parts = self.parts(id).await?;
        let state = self.mp_state(id).await?;
        if self.published(&target, id).await? == Some(true) {
            // Published by an earlier attempt (the engine releases the rest).
            return Ok(());
        }
        if parts.is_empty() && state.markers.is_empty() {
            return Err(StoreError::DataMissing);
        }
        let info = self.ensure_upload(id, &target).await?;
        if info.key != target.as_ref() {
            // `target` is derived from the configuration; `mp/upload` is only an object in the
            // bucket. An upload elsewhere (a vdir root changed mid-session, or the object
            // altered) is never completed: it must not choose where bytes are published.
            tracing::error!(session = %id, upload = %info.key, destination = %target,
                "refusing to complete a multipart upload that is not at the configured destination");
            return Err(StoreError::Io(io::Error::other(format!(
                "the session's multipart upload is at {}, not at the destination {target}",
                info.key
            ))));
        }
        let (mut end, mut number, mut ids) = state.chain();
        if end > total {
            return Err(StoreError::Io(io::Error::other(
                "multipart parts reach past the upload's length",
            )));
        }
        while end < total {
            if number > MAX_PARTS {
                return Err(StoreError::Io(io::Error::other(
                    "upload needs more than 10 000 multipart parts",
                )));
            }
            let left = total - end;
            let mut len = if left <= 2 * PACK_PART {
                left
            } else {
                PACK_PART
            };
            if let Some((o, l)) = self.claim(id, number, end, len).await? {
                // An earlier attempt (or a dead node's fragment) claimed this number: its
                // range is as good if it is a valid part here.
                if o != end || l == 0 || l > left || (l < self.flavor.min_part() && l != left) {
                    return Err(StoreError::Io(io::Error::other(format!(
                        "multipart part {number} is claimed for bytes {o}+{l}"
                    ))));
                }
                len = l;
            }
            let marker = self
                .pack_part(id, &target, &info, &parts, number, end, len)
                .await?;
            ids.push(PartId {
                content_id: marker.etag,
            });
            end += len;
            number += 1;
        }
        let completed = self
            .flavor
            .complete(&target, &info.upload_id, id, &ids, overwrite)
            .await;
        if let Err(e) = completed {
            // A racing or earlier completion of this very upload fails the repeat (the upload
            // is gone, or the object now exists): the session tag tells it was ours.
            if self.published(&target, id).await? != Some(true) {
                return Err(e);
            }
        }
        self.remember(id, None);
        Ok(())
    }

    /// Deletes what a published session no longer needs (standalone parts and multipart
    /// bookkeeping; the completed upload itself is gone) in the background: the completing
    /// fragment's Ack does not wait for work that grows with the number of parts. If this
    /// does not finish (a crash), Close-Session, Cancel-Session or expiry delete the rest.
    async fn release_upload(&self, id: SessionId, _dest: &Destination) -> Result<(), StoreError> {
        self.remember(id, None);
        let store = self.store.clone();
        let dirs = [self.parts_dir(id), self.mp_dir(id)];
        tokio::spawn(async move {
            for dir in dirs {
                if let Err(e) = delete_below(&store, &dir).await {
                    tracing::warn!(session = %id, error = %e, "could not delete the parts of a published upload; Close-Session or expiry will");
                }
            }
        });
        Ok(())
    }

    async fn discard(&self, id: SessionId, _held: crate::store::Held) -> Result<(), StoreError> {
        self.remember(id, None);
        self.abort_upload(id).await?;
        self.delete_below(&self.mp_dir(id)).await?;
        self.delete_below(&self.parts_dir(id)).await?;
        self.delete_one(&self.reply(id)).await?;
        self.delete_one(&self.commit_tmp(id)).await
    }

    async fn read_upload(&self, id: SessionId) -> Result<(u64, ByteStream), StoreError> {
        let parts = self.parts(id).await?;
        if parts.is_empty() {
            return Err(StoreError::DataMissing);
        }
        let (len, segments) = cover(&parts, u64::MAX);
        // Bytes already in multipart parts cannot be read before completion: never hand the
        // application a shortened upload (only a vdir that gained notification mid-session:
        // the engine writes toward the destination only without notification).
        if self.mp_state(id).await?.chain().0 > len {
            return Err(StoreError::Unsupported(
                "by-value notification of bytes already in a multipart upload",
            ));
        }
        let stream = SyncStream(Mutex::new(self.read_segments(segments)));
        Ok((len, Box::new(stream)))
    }

    async fn store_reply(&self, id: SessionId, body: BodyStream<'_>) -> Result<u64, StoreError> {
        self.upload(&self.reply(id), body, None, Attributes::new())
            .await
    }

    async fn reply_representation(
        &self,
        id: SessionId,
    ) -> Result<Option<Representation>, StoreError> {
        match self.store.head(&self.reply(id)).await {
            Ok(meta) => {
                let secs = meta.last_modified.timestamp().clamp(0, 253_402_300_799) as u64;
                let tag = meta.e_tag.unwrap_or_default();
                let etag = if tag.starts_with('"') {
                    tag
                } else {
                    format!("\"{tag}\"")
                };
                Ok(Some(Representation {
                    len: meta.size,
                    modified: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                    etag,
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn read_reply(
        &self,
        id: SessionId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        if range.is_empty() {
            return Ok(Box::new(stream::empty()));
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.reply(id), opts)
            .await
            .map_err(os_err)?;
        Ok(Box::new(SyncStream(Mutex::new(
            got.into_stream().map_err(io::Error::other).boxed(),
        ))))
    }

    async fn remove_reply(&self, id: SessionId) -> Result<(), StoreError> {
        self.delete_one(&self.reply(id)).await
    }

    async fn seal_reply(&self, id: SessionId) -> Result<(), StoreError> {
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(&self.reply(id), PutPayload::new(), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }

    fn local_files(&self, _id: SessionId) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        None
    }

    /// One HEAD of `<dest.root>/<dest.path>`; reads are ranged GETs pinned to what it saw.
    async fn open_published(
        &self,
        dest: &Destination,
    ) -> Result<Option<Box<dyn PublishedFile>>, StoreError> {
        self.open_published_object(dest).await
    }
}
