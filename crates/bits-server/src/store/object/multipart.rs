//! The session's multipart upload at the destination: created once per session, part numbers
//! claimed before anything is uploaded to them, parts streamed in from fragment bodies (or
//! packed from standalone parts), markers recording what is stored, and the completion with
//! `If-None-Match: *`. See the key layout in the parent module and docs/farm.md.

use super::*;

/// The session's multipart upload, as `mp/upload` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct UploadInfo {
    /// The destination key it was created at.
    pub(super) key: String,
    pub(super) upload_id: String,
}

/// A stored multipart part: number, bytes `[offset, offset + len)`, ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Marker {
    pub(super) number: usize,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) etag: String,
}

impl Marker {
    pub(super) fn name(&self) -> String {
        let hex = hex::encode(&self.etag);
        format!(
            "p{:05}-{:020}-{:020}-{hex}",
            self.number, self.offset, self.len
        )
    }
}

/// `p<number>-<offset>-<len>-<hex etag>` as written by [`Marker::name`].
pub(super) fn parse_marker(name: &str) -> Option<Marker> {
    let mut it = name.strip_prefix('p')?.splitn(4, '-');
    let number = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    let len = it.next()?.parse().ok()?;
    let hex = it.next()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let etag = String::from_utf8(bytes?).ok()?;
    Some(Marker {
        number,
        offset,
        len,
        etag,
    })
}

/// What `mp/` holds: whether the upload exists, and the stored parts by number.
#[derive(Default)]
pub(super) struct MpState {
    pub(super) upload: bool,
    pub(super) markers: HashMap<usize, Marker>,
}

impl MpState {
    /// The parts 1, 2, … that follow each other without a gap from offset 0: the end of the
    /// bytes they hold, the next part number, and their ids for completion.
    pub(super) fn chain(&self) -> (u64, usize, Vec<PartId>) {
        let (mut end, mut number, mut ids) = (0u64, 1usize, Vec::new());
        while let Some(m) = self
            .markers
            .get(&number)
            .filter(|m| m.offset == end && m.len > 0)
        {
            end += m.len;
            ids.push(PartId {
                content_id: m.etag.clone(),
            });
            number += 1;
        }
        (end, number, ids)
    }
}

/// Why [`ObjectBackend::stream_parts`] stopped before the end of its fragment.
pub(super) enum Stop {
    /// The next part number is claimed for other bytes: the rest of the fragment becomes
    /// standalone parts.
    Claimed,
    Failed(StoreError),
}

/// What this node last knew of a session's multipart upload.
#[derive(Clone)]
pub(super) struct Cached {
    pub(super) info: UploadInfo,
    /// The end of the chain of parts, and the next part number, as this node left them.
    pub(super) end: u64,
    pub(super) next: usize,
}

/// Sessions whose multipart upload is remembered at most; past it an arbitrary one is
/// forgotten (its next fragment lists `mp/` again).
pub(super) const MAX_CACHED: usize = 4096;

/// The multipart pieces a fragment of `len` (at least [`MIN_PART`]) bytes is cut into: as
/// many as fit at [`MIN_PART`] or more each, equal but for the last.
pub(super) fn pieces(len: u64) -> Vec<u64> {
    let n = (len / MIN_PART).max(1);
    let base = len / n;
    let mut out = vec![base; n as usize];
    if let Some(last) = out.last_mut() {
        *last = len - base * (n - 1);
    }
    out
}

impl ObjectBackend {
    /// The session's multipart state as listed below `mp/`.
    pub(super) async fn mp_state(&self, id: SessionId) -> Result<MpState, StoreError> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.mp_dir(id)))
            .try_collect()
            .await
            .map_err(os_err)?;
        let mut state = MpState::default();
        for m in objects {
            match m.location.filename() {
                Some("upload") => state.upload = true,
                Some(name) => {
                    if let Some(marker) = parse_marker(name) {
                        state.markers.entry(marker.number).or_insert(marker);
                    }
                }
                None => {}
            }
        }
        Ok(state)
    }

    pub(super) async fn upload_info(
        &self,
        id: SessionId,
    ) -> Result<Option<UploadInfo>, StoreError> {
        let got = match self.store.get(&self.mp_upload(id)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err(e)),
        };
        let bytes = got.bytes().await.map_err(os_err)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(id.to_string(), format!("mp/upload: {e}")))
    }

    /// The session's multipart upload, created at `key` (tagged with the session) unless one
    /// exists. Two nodes may race here: the create-only `mp/upload` picks one upload, the loser
    /// aborts its own.
    pub(super) async fn ensure_upload(
        &self,
        id: SessionId,
        key: &Path,
    ) -> Result<UploadInfo, StoreError> {
        if let Some(info) = self.upload_info(id).await? {
            return Ok(info);
        }
        let upload_id = self.flavor.create_upload(key, id).await?;
        let info = UploadInfo {
            key: key.to_string(),
            upload_id,
        };
        let json = serde_json::to_vec(&info).map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let put = self
            .store
            .put_opts(
                &self.mp_upload(id),
                json.into(),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => Ok(info),
            Err(object_store::Error::AlreadyExists { .. }) => {
                if let Err(e) = self.flavor.abort(key, &info.upload_id).await {
                    tracing::warn!(session = %id, error = %e, "could not abort a multipart upload that lost a race");
                }
                self.upload_info(id).await?.ok_or(StoreError::DataMissing)
            }
            Err(e) => {
                let _ = self.flavor.abort(key, &info.upload_id).await;
                Err(os_err(e))
            }
        }
    }

    /// Claims multipart part `number` for bytes `[offset, offset + len)`: `Ok(None)` when the
    /// claim is (or already was) exactly this, else the range it was claimed for.
    pub(super) async fn claim(
        &self,
        id: SessionId,
        number: usize,
        offset: u64,
        len: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let key = self.mp_claim(id, number);
        let body = format!("{offset}-{len}");
        match self
            .store
            .put_opts(
                &key,
                body.clone().into_bytes().into(),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => return Ok(None),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(os_err(e)),
        }
        let got = self.store.get(&key).await.map_err(os_err)?;
        let bytes = got.bytes().await.map_err(os_err)?;
        if bytes.as_ref() == body.as_bytes() {
            return Ok(None);
        }
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        let mut it = text.splitn(2, '-');
        let parsed = (|| Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?)))();
        Ok(Some(parsed.unwrap_or((u64::MAX, 0))))
    }

    /// Uploads `data` (bytes from `offset`) as claimed part `number` of the upload at `key`,
    /// then its marker: the bytes count as held only once both are stored. `grant` is the
    /// budget `data` holds, given back once the part is stored. `key` is the destination
    /// derived from the configuration, checked against `info` by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_piece(
        &self,
        id: SessionId,
        key: Path,
        upload_id: String,
        number: usize,
        offset: u64,
        data: PutPayload,
        grant: Option<Reservation>,
    ) -> BoxFuture<'static, Result<Marker, StoreError>> {
        let store = self.store.clone();
        let flavor = self.flavor.clone();
        let mp_dir = self.mp_dir(id);
        async move {
            let len = data.content_length() as u64;
            let part = flavor
                .put_part(&key, &upload_id, id, number, offset, data)
                .await;
            drop(grant);
            let marker = Marker {
                number,
                offset,
                len,
                etag: part?,
            };
            write_marker(store.as_ref(), &mp_dir, marker).await
        }
        .boxed()
    }

    pub(super) fn cached(&self, id: SessionId) -> Option<Cached> {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub(super) fn remember(&self, id: SessionId, entry: Option<Cached>) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        match entry {
            Some(c) => {
                if uploads.len() >= MAX_CACHED && !uploads.contains_key(&id) {
                    let victim = uploads.keys().next().copied();
                    if let Some(victim) = victim {
                        uploads.remove(&victim);
                    }
                }
                uploads.insert(id, c);
            }
            None => {
                uploads.remove(&id);
            }
        }
    }

    /// Where a fragment at `offset` of `len` bytes can go straight into the session's
    /// multipart upload at `key` (the destination the engine derived from the configuration):
    /// the upload and the first part number, or `None` for standalone parts. An upload found
    /// at another key (`mp/upload` names it) is never written to.
    pub(super) async fn direct_target(
        &self,
        id: SessionId,
        offset: u64,
        len: u64,
        key: &Path,
    ) -> Result<Option<(UploadInfo, usize)>, StoreError> {
        if len < self.flavor.min_part() {
            return Ok(None);
        }
        let count = pieces(len).len();
        // What this node left is right unless another node extended the chain since: then the
        // fragment starts elsewhere and the listing is asked. A claim settles the rest.
        if let Some(c) = self
            .cached(id)
            .filter(|c| c.end == offset && c.info.key == key.as_ref())
        {
            return Ok((c.next + count - 1 <= MAX_PARTS).then_some((c.info, c.next)));
        }
        let state = self.mp_state(id).await?;
        let (end, next, _) = state.chain();
        if offset != end || next + count - 1 > MAX_PARTS {
            return Ok(None);
        }
        let info = if state.upload {
            self.upload_info(id).await?
        } else if offset == 0 {
            Some(self.ensure_upload(id, key).await?)
        } else {
            None
        };
        let Some(info) = info else {
            return Ok(None);
        };
        if info.key != key.as_ref() {
            tracing::warn!(session = %id, upload = %info.key, destination = %key,
                "the session's multipart upload is not at the configured destination; storing standalone parts");
            return Ok(None);
        }
        Ok(Some((info, next)))
    }

    /// Streams `len` bytes of `body` into parts `first..` of the upload, each piece (5–10
    /// MiB) sent as it arrives ([`streamed::send_part`]) once its part number is claimed; the
    /// claim of the next number runs while the previous part's answer comes. Returns the bytes
    /// stored (contiguous from `offset`) and why it stopped early.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn stream_parts(
        &self,
        id: SessionId,
        info: &UploadInfo,
        key: &Path,
        first: usize,
        offset: u64,
        len: u64,
        body: &mut BodyStream<'_>,
        carry: &mut Option<Bytes>,
    ) -> (u64, Option<Stop>) {
        let mut durable = 0u64;
        let mut at = offset;
        let mut answering: Option<BoxFuture<'static, Result<Marker, StoreError>>> = None;
        let mut stop = None;
        for (i, piece) in pieces(len).into_iter().enumerate() {
            let number = first + i;
            let claim = self.claim(id, number, at, piece);
            let (claimed, answered) = match answering.take() {
                Some(a) => {
                    let (c, a) = futures_util::future::join(claim, a).await;
                    (c, Some(a))
                }
                None => (claim.await, None),
            };
            match answered {
                Some(Ok(m)) => durable += m.len,
                Some(Err(e)) => {
                    stop = Some(Stop::Failed(e));
                    break;
                }
                None => {}
            }
            match claimed {
                Ok(None) => {}
                Ok(Some(_)) => {
                    stop = Some(Stop::Claimed);
                    break;
                }
                Err(e) => {
                    stop = Some(Stop::Failed(e));
                    break;
                }
            }
            let target = match self
                .flavor
                .part_request(key, &info.upload_id, id, number, at, piece)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    stop = Some(Stop::Failed(e));
                    break;
                }
            };
            match streamed::send_part(
                target,
                self.flavor.answer_timeout(),
                piece,
                body,
                carry,
                &self.budget,
                self.budget_patience,
            )
            .await
            {
                Ok(sent) => answering = Some(self.mark(id, number, at, piece, sent)),
                Err(e) => {
                    stop = Some(Stop::Failed(e));
                    break;
                }
            }
            at += piece;
        }
        if let Some(a) = answering {
            match a.await {
                Ok(m) => durable += m.len,
                // A part sent after this one cannot be kept: durable bytes are contiguous.
                Err(e) => stop = Some(Stop::Failed(e)),
            }
        }
        (durable, stop)
    }

    /// Waits for the answer to part `number` (bytes `[offset, offset + len)`), then writes
    /// its marker: the bytes count as held only once both are stored.
    pub(super) fn mark(
        &self,
        id: SessionId,
        number: usize,
        offset: u64,
        len: u64,
        sent: streamed::SentPart,
    ) -> BoxFuture<'static, Result<Marker, StoreError>> {
        let store = self.store.clone();
        let mp_dir = self.mp_dir(id);
        async move {
            let marker = Marker {
                number,
                offset,
                len,
                etag: sent.etag().await?,
            };
            write_marker(store.as_ref(), &mp_dir, marker).await
        }
        .boxed()
    }

    /// Reads standalone bytes `[at, at + len)` back into multipart part `number` of the upload
    /// at `key` (claimed by the caller) and records it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pack_part(
        &self,
        id: SessionId,
        key: &Path,
        info: &UploadInfo,
        parts: &[Part],
        number: usize,
        at: u64,
        len: u64,
    ) -> Result<Marker, StoreError> {
        let (data, grant) = self.read_back(parts, at, len).await?;
        self.put_piece(
            id,
            key.clone(),
            info.upload_id.clone(),
            number,
            at,
            data,
            Some(grant),
        )
        .await
    }

    /// Packs the standalone bytes after the multipart chain into further parts of
    /// [`PACK_PART`] bytes once that many are held, so fragments under 5 MiB do not leave the
    /// whole upload to be read back at the completion (which then packs less than three
    /// [`PACK_PART`]s). `offset..upto` is what the fragment just stored. The chain end is known
    /// from this node's cache; without it `mp/` is listed only when the fragment crossed a
    /// multiple of [`PACK_PART`], and the multipart upload is created only once there is a
    /// part to put in it. A number claimed for other bytes (another node) stops packing.
    pub(super) async fn pack_ready(
        &self,
        id: SessionId,
        key: &Path,
        offset: u64,
        upto: u64,
    ) -> Result<(), StoreError> {
        let cached = self.cached(id).filter(|c| c.info.key == key.as_ref());
        let (info, mut end, mut number) = match cached {
            Some(c) if upto < c.end.saturating_add(PACK_PART) => return Ok(()),
            Some(c) => (c.info, c.end, c.next),
            None if offset / PACK_PART == upto / PACK_PART => return Ok(()),
            None => {
                let state = self.mp_state(id).await?;
                let (end, next, _) = state.chain();
                let info = if state.upload {
                    self.upload_info(id).await?
                } else if upto >= end.saturating_add(PACK_PART) {
                    Some(self.ensure_upload(id, key).await?)
                } else {
                    None
                };
                let Some(info) = info.filter(|i| i.key == key.as_ref()) else {
                    return Ok(());
                };
                self.remember(
                    id,
                    Some(Cached {
                        info: info.clone(),
                        end,
                        next,
                    }),
                );
                (info, end, next)
            }
        };
        if upto < end.saturating_add(PACK_PART) {
            return Ok(());
        }
        let parts = self.parts(id).await?;
        // The last number is left for the completion's tail.
        while upto >= end + PACK_PART && number < MAX_PARTS {
            if self.claim(id, number, end, PACK_PART).await?.is_some() {
                self.remember(id, None);
                return Ok(());
            }
            self.pack_part(id, key, &info, &parts, number, end, PACK_PART)
                .await?;
            end += PACK_PART;
            number += 1;
            self.remember(
                id,
                Some(Cached {
                    info: info.clone(),
                    end,
                    next: number,
                }),
            );
        }
        Ok(())
    }

    /// Aborts the session's multipart upload, if it has one.
    pub(super) async fn abort_upload(&self, id: SessionId) -> Result<(), StoreError> {
        let Some(info) = self.upload_info(id).await? else {
            return Ok(());
        };
        let key = Path::parse(&info.key)
            .map_err(|e| StoreError::Io(io::Error::new(ErrorKind::InvalidInput, e)))?;
        self.flavor.abort(&key, &info.upload_id).await
    }
}

/// Records that part `marker.number` is stored: the marker object, written only after the
/// part's answer, is what makes its bytes count as held.
async fn write_marker(
    store: &dyn ObjectStore,
    mp_dir: &Path,
    marker: Marker,
) -> Result<Marker, StoreError> {
    store
        .put(
            &ObjectBackend::below(mp_dir, &marker.name()),
            PutPayload::new(),
        )
        .await
        .map_err(os_err)?;
    Ok(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cut_into_valid_multipart_pieces() {
        for len in [
            MIN_PART,
            MIN_PART + 1,
            8 << 20,
            2 * MIN_PART - 1,
            2 * MIN_PART,
            64 << 20,
            (64 << 20) + 7,
        ] {
            let p = pieces(len);
            assert_eq!(p.iter().sum::<u64>(), len);
            assert!(
                p.iter()
                    .all(|&l| (MIN_PART..2 * MIN_PART + p.len() as u64).contains(&l)),
                "{len}: {p:?}"
            );
        }
        assert_eq!(pieces(8 << 20), vec![8 << 20]);
    }

    #[test]
    fn markers_round_trip_and_chain_without_gaps() {
        let m = |number, offset, len| Marker {
            number,
            offset,
            len,
            etag: format!("\"e{number}\""),
        };
        let one = m(1, 0, 10);
        assert_eq!(parse_marker(&one.name()), Some(one.clone()));
        assert_eq!(parse_marker("c00001"), None);
        assert_eq!(parse_marker("upload"), None);
        let mut state = MpState::default();
        for mk in [one, m(2, 10, 5), m(4, 15, 5)] {
            state.markers.insert(mk.number, mk);
        }
        let (end, next, ids) = state.chain();
        assert_eq!((end, next, ids.len()), (15, 3, 2));
        // A part that does not start where the chain ends is not part of it.
        state.markers.insert(3, m(3, 14, 1));
        assert_eq!(state.chain().0, 15);
    }
}
