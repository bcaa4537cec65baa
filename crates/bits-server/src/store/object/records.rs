//! The session records of the object store: JSON objects under `<prefix>/sessions/<id>/`,
//! written with ETag conditions (create-only, or matching the ETag this node last saw) so that
//! every node of a farm agrees, plus the time index that sweeps and start-up read.

use super::*;

#[async_trait]
impl SessionStore for ObjectBackend {
    /// The bucket (container) is the farm's: every node writes the same records.
    fn shared(&self) -> bool {
        true
    }

    async fn create(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let opts = PutOptions::from(PutMode::Create);
        let stale = self.mark_before_save(rec).await?;
        match self
            .store
            .put_opts(&self.meta(rec.id), Self::record_json(rec)?, opts)
            .await
        {
            Ok(r) => {
                self.etags().note(rec.id, r.e_tag, rec.state.is_open());
                self.mark_after_save(rec, stale).await;
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::Io(io::Error::new(
                ErrorKind::AlreadyExists,
                format!("session {} exists", rec.id),
            ))),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let before = self.etags().get(&id).cloned();
        let got = match self.store.get(&self.meta(id)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err(e)),
        };
        let etag = got.meta.e_tag.clone();
        let bytes = got.bytes().await.map_err(os_err)?;
        let rec: SessionRecord = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))?;
        // Take the ETag read here only if no save finished meanwhile: a slow read must not
        // replace a newer ETag with an older one.
        let mut etags = self.etags();
        if etags.get(&id) == before.as_ref() {
            etags.note(id, etag, rec.state.is_open());
        }
        drop(etags);
        self.learn_marks(&rec);
        Ok(Some(rec))
    }

    /// Conditional on the ETag last seen for the record when there is one (else a plain
    /// overwrite); a lost race is [`StoreError::Conflict`] and keeps the stale ETag, so later
    /// saves fail too until the record is loaded again.
    async fn save(&self, rec: &SessionRecord) -> Result<(), StoreError> {
        let known = self.etags().get(&rec.id).cloned();
        let mode = match known {
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => PutMode::Overwrite,
        };
        let stale = self.mark_before_save(rec).await?;
        let r = self
            .store
            .put_opts(&self.meta(rec.id), Self::record_json(rec)?, mode.into())
            .await
            .map_err(os_err)?;
        self.etags().note(rec.id, r.e_tag, rec.state.is_open());
        self.mark_after_save(rec, stale).await;
        Ok(())
    }

    async fn remove(&self, id: SessionId) -> Result<(), StoreError> {
        self.delete_below(&self.dir(id)).await?;
        self.etags().forget(&id);
        self.unmark(id).await;
        Ok(())
    }

    /// The `sessions/<uuid>/` prefixes. On a filer-backed store such as SeaweedFS an emptied
    /// prefix can stay listed for a while after `remove`: such an id has no record, which
    /// callers already treat as nothing (left) to do.
    async fn list(&self) -> Result<Vec<SessionId>, StoreError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.sessions()))
            .await
            .map_err(os_err)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| SessionId::parse(n).ok()))
            .collect())
    }

    /// One page of the session listing, not all of it: `/readyz` may be probed every second.
    async fn probe(&self) -> Result<(), StoreError> {
        match self.store.list(Some(&self.sessions())).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(os_err(e)),
        }
    }

    async fn attention(&self) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.marked_for_attention().await.map(Some)
    }

    async fn idle_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.marked_before("idle", before_ms).await.map(Some)
    }

    async fn ended_before(&self, before_ms: u64) -> Result<Option<Vec<SessionId>>, StoreError> {
        self.marked_before("ended", before_ms).await.map(Some)
    }
}
