//! Fragment: the range checked against what the session holds, the body written at its offset
//! and made durable, the upload's SHA-256 followed, the claim saved; a completing fragment
//! publishes (or notifies the server application).

use super::*;

impl Engine {
    pub(super) async fn fragment(
        &self,
        id: SessionId,
        range: ContentRange,
        caller: &Caller<'_>,
        bases: &Bases<'_>,
        mut body: BodyStream<'_>,
    ) -> Result<Ack, BitsError> {
        let mut guard = self.lock(id).await?;
        let mut rec = self.load_checked(id, caller).await?;
        // Bound to its vdir (load_checked): the URL's vdir is the session's.
        let vdir = caller.vdir;
        if range.len > vdir.max_fragment_size {
            return Err(BitsError::FragmentTooLarge {
                len: range.len,
                limit: vdir.max_fragment_size,
            });
        }
        match rec.state {
            SessionState::Receiving => {}
            // WAIT_FOR_CLOSE: a retransmit is answered from the record, data untouched.
            SessionState::Committed => {
                drain(body.as_mut()).await;
                self.stamp(&mut rec);
                self.sessions.save(&rec).await?;
                return Ok(Ack::ok()
                    .with_session(id)
                    .with_received(rec.received)
                    .with_reply_url(rec.reply_url.clone()));
            }
            SessionState::Closed | SessionState::Cancelled | SessionState::Expired => {
                return Err(BitsError::SessionNotFound(id))
            }
        }
        if let Some(expected) = rec.total.filter(|&t| t != range.total) {
            return Err(BitsError::TotalChanged {
                expected,
                got: range.total,
            });
        }
        if let Some(limit) = vdir.max_upload_size.filter(|&l| range.total > l) {
            return Err(BitsError::UploadTooLarge {
                total: range.total,
                limit,
            });
        }
        if range.first > rec.received {
            return Err(BitsError::RangeGap {
                received: rec.received,
            });
        }
        // As stored, to tell after the data write whether another node changed it meanwhile.
        let loaded = rec.clone();
        rec.total = Some(range.total);
        self.stamp(&mut rec);
        if range.end() <= rec.received {
            drain(body.as_mut()).await;
        } else {
            let len = range.end() - rec.received;
            if self.config.spool_quota.is_some()
                || self.config.max_spool_bytes_per_identity.is_some()
            {
                // Quotas count every open session's bytes: known once start-up's build ends.
                self.registry_complete().await;
            }
            let over_quota = || {
                let registry = self.registry();
                let over = |used: u64, quota: Option<u64>| {
                    quota.is_some_and(|q| used.saturating_add(len) > q)
                };
                over(registry.spooled(), self.config.spool_quota)
                    || (rec.owner.is_some()
                        && self.config.max_spool_bytes_per_identity.is_some()
                        && over(
                            registry.spooled_by(&rec.owner),
                            self.config.max_spool_bytes_per_identity,
                        ))
            };
            if over_quota() {
                // Bytes of sessions ended through other nodes may still be counted here.
                if self.shared_store() {
                    if let Err(e) = self.refresh_registry(lifecycle::FORCED_REFRESH_GAP).await {
                        tracing::warn!(error = %e, "could not reconcile spool usage before refusing");
                    }
                }
                if over_quota() {
                    return Err(BitsError::DiskFull);
                }
            }
            // Bytes before `received` are acknowledged already: read past them, never rewrite them.
            let mut skip = rec.received - range.first;
            let mut digest = rec
                .sha256
                .take()
                .filter(|d| d.len() == rec.received)
                .map(|d| DigestTracker::new(d, range.end()));
            let mut hashing = digest.as_mut();
            let fresh = body
                .as_mut()
                .filter_map(move |item| {
                    let item = match item {
                        Ok(mut chunk) => {
                            let n = skip.min(chunk.len() as u64) as usize;
                            skip -= n as u64;
                            let _ = chunk.split_to(n);
                            if let Some(d) = hashing.as_deref_mut() {
                                d.update(&chunk);
                            }
                            (!chunk.is_empty()).then_some(Ok(chunk))
                        }
                        Err(e) => Some(Err(e)),
                    };
                    std::future::ready(item)
                })
                .take_until(guard.preempted());
            // Without notification nothing reads the upload back before it is published, so
            // the store may write it toward its destination: derived here from the
            // configuration, as publishing does, never taken from the record.
            let toward = (self.data.writes_toward_destination()
                && vdir.notification_type == crate::config::NotificationType::None)
                .then(|| self.derive_destination(&mut rec).ok())
                .flatten()
                .map(|()| rec.destination.clone());
            let outcome = match &toward {
                Some(dest) => {
                    self.data
                        .write_for_destination(id, rec.received, len, std::pin::pin!(fresh), dest)
                        .await
                }
                None => {
                    self.data
                        .write(id, rec.received, len, std::pin::pin!(fresh))
                        .await
                }
            };
            // A fragment answered through `save_claim` learns there (its conditional save
            // fails) that another node changed or ended the session; any other is checked now.
            let publishes_unsaved = rec.total == Some(rec.received + outcome.durable)
                && vdir.notification_type == crate::config::NotificationType::None;
            if outcome.durable > 0 && (outcome.error.is_some() || publishes_unsaved) {
                self.check_unchanged(&loaded).await?;
            }
            let before = rec.received;
            // A body that broke its framing is refused whole: what a store wrote of it is not
            // claimed (it lies past `received`, where the next fragment writes anyway).
            let refused = outcome
                .error
                .as_ref()
                .is_some_and(crate::store::StoreError::is_body_framing);
            if !refused {
                rec.received += outcome.durable;
            }
            if let Some(d) = digest {
                // The digest must cover exactly `received`: after a partial write, fall back to
                // the last point it was taken at (those bytes are re-sent by the client).
                let (at, state) = d.settle(rec.received);
                rec.received = at;
                rec.sha256 = state;
            }
            // What the session now claims (a digest fallback may claim less than was written).
            self.metrics.bytes_received(rec.received - before);
            self.activity
                .bytes(self.now_ms(), &rec.vdir, rec.received - before);
            // Also registers a session created through another node.
            self.registry().track(&rec);
            if outcome.error.is_some() && guard.was_preempted() {
                self.sessions.save(&rec).await?;
                return Err(BitsError::Preempted);
            }
            if let Some(e) = outcome.error {
                self.sessions.save(&rec).await?;
                return Err(e.into());
            }
        }
        // Data is durable; now the length that claims it (data before metadata). A completing
        // fragment without notification is recorded once, after publishing: the spool copy
        // stays until then, so a crash in between is finished by the retransmit.
        let completes = rec.total == Some(rec.received);
        if !completes || vdir.notification_type != crate::config::NotificationType::None {
            // The record is about to claim bytes that stay in the spool: they must be
            // reachable after a power loss too, not only written.
            self.data.keep(rec.id).await?;
            self.save_claim(&rec).await?;
        }
        if completes {
            self.complete(&mut rec, vdir, bases).await?;
        }
        Ok(Ack::ok()
            .with_session(id)
            .with_received(rec.received)
            .with_reply_url(rec.reply_url.clone()))
    }
}

/// Follows a fragment's new bytes into the upload's SHA-256, remembering the state every
/// [`DigestTracker::EVERY`] bytes so that a write that stops part way can be matched.
pub(super) struct DigestTracker {
    state: crate::digest::Sha256State,
    /// Where the fragment ends: bytes past it are not part of the upload.
    end: u64,
    /// States at earlier positions, oldest first; the first is where the fragment began.
    marks: Vec<crate::digest::Sha256State>,
}

impl DigestTracker {
    const EVERY: u64 = 1 << 20;

    fn new(state: crate::digest::Sha256State, end: u64) -> DigestTracker {
        DigestTracker {
            marks: vec![state.clone()],
            state,
            end,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        let room = self
            .end
            .saturating_sub(self.state.len())
            .min(chunk.len() as u64) as usize;
        self.state.update(&chunk[..room]);
        let last = self.marks.last().map_or(0, |m| m.len());
        if self.state.len() >= last + Self::EVERY {
            self.marks.push(self.state.clone());
        }
    }

    /// The state covering exactly `0..durable` where possible, else the latest one before it
    /// (the caller then claims only that much). Never a position before the fragment's start.
    fn settle(self, durable: u64) -> (u64, Option<crate::digest::Sha256State>) {
        if self.state.len() == durable {
            return (durable, Some(self.state));
        }
        match self.marks.into_iter().rev().find(|m| m.len() <= durable) {
            Some(state) => (state.len(), Some(state)),
            None => (durable, None),
        }
    }
}

#[cfg(test)]
mod digest_tracker_tests {
    use super::DigestTracker;
    use crate::digest::Sha256State;
    use sha2::{Digest, Sha256};

    fn state_of(data: &[u8]) -> Sha256State {
        let mut s = Sha256State::default();
        s.update(data);
        s
    }

    #[test]
    fn a_partial_write_falls_back_to_the_last_mark_before_it() {
        let data: Vec<u8> = (0..(5u32 << 20) / 2).map(|i| (i * 7 + 3) as u8).collect();
        let start = 1000;
        let mut t = DigestTracker::new(state_of(&data[..start]), data.len() as u64);
        for chunk in data[start..].chunks(70_000) {
            t.update(chunk);
        }
        // Everything written: the exact state.
        let whole = t_clone(&t).settle(data.len() as u64);
        assert_eq!(whole.0, data.len() as u64);
        assert_eq!(
            whole.1.unwrap().finish().to_vec(),
            Sha256::digest(&data).to_vec()
        );
        // Only part durable: a mark at or before it, never before the fragment's start.
        let durable = start as u64 + 1_800_000;
        let (at, state) = t.settle(durable);
        assert!(at <= durable && at >= start as u64 && durable - at <= (1 << 20) + 70_000);
        let state = state.unwrap();
        assert_eq!(state.len(), at);
        assert_eq!(
            state.finish().to_vec(),
            Sha256::digest(&data[..at as usize]).to_vec()
        );
    }

    fn t_clone(t: &DigestTracker) -> DigestTracker {
        DigestTracker {
            state: t.state.clone(),
            end: t.end,
            marks: t.marks.clone(),
        }
    }

    #[test]
    fn bytes_past_the_fragment_end_are_not_hashed() {
        let mut t = DigestTracker::new(Sha256State::default(), 3);
        t.update(b"abcdef");
        let (at, state) = t.settle(3);
        assert_eq!(at, 3);
        assert_eq!(
            state.unwrap().finish().to_vec(),
            Sha256::digest(b"abc").to_vec()
        );
    }
}
