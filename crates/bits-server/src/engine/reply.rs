//! Completion of an upload: publishing it, or notifying the server application and keeping
//! its reply (spec §9.5), exactly once per session.

use std::io;

use bits_proto::SessionId;
use futures_util::TryStreamExt;
use http_body_util::BodyDataStream;

use super::{Bases, Engine};
use crate::config::{NotificationType, VdirConfig};
use crate::error::BitsError;
use crate::metrics::NotificationOutcome;
use crate::notify::{notification_url, NotifyError, Payload, MAX_REPLY_URL};
use crate::store::{SessionRecord, SessionState, StoreError};

/// Path segment under a vdir prefix where stored replies are served, as on IIS.
pub const REPLIES_PATH: &str = "BITS-Sessions/Replies/";
const REPLY_FILE: &str = "responsefile.bin";

impl Engine {
    /// Every byte is held. Without notification the upload is published; with it, the
    /// application is told, its reply stored, and the upload published only if it asks.
    /// Called again on a retransmitted final fragment while the application has not yet
    /// answered 200 (unless it answered 403, which is final).
    pub(super) async fn complete(
        &self,
        rec: &mut SessionRecord,
        vdir: &VdirConfig,
        bases: &Bases<'_>,
    ) -> Result<(), BitsError> {
        if vdir.notification_type == NotificationType::None {
            return self.publish(rec, vdir).await;
        }
        if rec.app_forbidden {
            return Err(BitsError::App { status: 403 });
        }
        let configured = vdir.notification_url.as_deref().unwrap_or_default();
        // A relative URL is the application's path beside the upload (as IIS resolves it),
        // on the application's own server.
        let base = vdir.notification_base.as_deref().unwrap_or(bases.local);
        let url = notification_url(configured, &rec.url, base);
        let original_url = format!("{}{}", bases.public, rec.url);
        tracing::debug!(session = %rec.id, url = %url, "notifying the server application");
        let payload = match vdir.notification_type {
            NotificationType::ByReference => {
                // A failed earlier attempt may have left a reply behind: start without one.
                self.data.remove_reply(rec.id).await?;
                let (request_file, response_file) = self.data.local_files(rec.id).ok_or(
                    BitsError::Storage(StoreError::Unsupported("by-reference notification")),
                )?;
                Payload::ByReference {
                    request_file,
                    response_file,
                }
            }
            _ => {
                let (len, body) = self.data.read_upload(rec.id).await?;
                Payload::ByValue { len, body }
            }
        };
        let sent = self
            .notifier
            .send(&url, &original_url, payload, vdir.notification_timeout)
            .await;
        self.metrics.notification(match &sent {
            Ok(_) => NotificationOutcome::Ok,
            Err(NotifyError::Status(_)) => NotificationOutcome::AppError,
            Err(NotifyError::Timeout) => NotificationOutcome::Timeout,
            Err(NotifyError::Unreachable(_) | NotifyError::BadUrl(_)) => {
                NotificationOutcome::Unreachable
            }
        });
        let answer = match sent {
            Ok(answer) => answer,
            Err(NotifyError::Status(403)) => {
                rec.app_forbidden = true;
                self.sessions.save(rec).await?;
                return Err(BitsError::App { status: 403 });
            }
            // Only 200 is success; another 2xx must not reach the client as one.
            Err(NotifyError::Status(status)) if (201..300).contains(&status) => {
                return Err(BitsError::AppUnreachable(format!(
                    "unexpected status {status}"
                )))
            }
            Err(NotifyError::Status(status)) => return Err(BitsError::App { status }),
            Err(NotifyError::Timeout) => return Err(BitsError::AppTimeout),
            Err(e @ (NotifyError::Unreachable(_) | NotifyError::BadUrl(_))) => {
                return Err(BitsError::AppUnreachable(e.to_string()))
            }
        };
        let reply_url = match answer.static_url {
            Some(url) if url.len() > MAX_REPLY_URL => return Err(BitsError::ReplyUrlTooLong),
            Some(url) => {
                // The reply lives elsewhere: nothing of ours to serve.
                self.data.remove_reply(rec.id).await?;
                url
            }
            None => {
                if vdir.notification_type == NotificationType::ByValue {
                    let body = BodyDataStream::new(answer.body).map_err(io::Error::other);
                    tokio::time::timeout(
                        vdir.notification_timeout,
                        self.data.store_reply(rec.id, std::pin::pin!(body)),
                    )
                    .await
                    .map_err(|_| BitsError::AppTimeout)??;
                } else {
                    self.data.seal_reply(rec.id).await?;
                }
                format!(
                    "{}{}{}{}/{}",
                    bases.public,
                    vdir.prefix,
                    REPLIES_PATH,
                    rec.id.as_uuid().hyphenated(),
                    REPLY_FILE
                )
            }
        };
        if answer.copy_to_destination {
            self.derive_destination(rec)?;
            match self
                .data
                .commit(
                    rec.id,
                    rec.received,
                    &rec.destination,
                    vdir.allow_overwrites,
                )
                .await
            {
                Ok(()) => self.registry().set_spooled(rec.id, 0),
                Err(StoreError::DestinationExists) => {
                    return Err(BitsError::DestinationExists {
                        status: vdir.conflict_status.status(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
        rec.reply_url = Some(reply_url);
        rec.state = SessionState::Committed;
        self.sessions.save(rec).await?;
        tracing::info!(session = %rec.id, copied = answer.copy_to_destination, reply = ?rec.reply_url, "server application notified");
        Ok(())
    }

    /// The stored reply of `id` under vdir `prefix`, if `identity` may read it now (the session
    /// is open and complete, and the reply is ours rather than a static URL).
    pub async fn reply(
        &self,
        prefix: &str,
        id: SessionId,
        identity: Option<&crate::principal::Principal>,
    ) -> Result<Option<Reply>, BitsError> {
        let Some(rec) = self.sessions.load(id).await? else {
            return Ok(None);
        };
        let ours = rec
            .reply_url
            .as_deref()
            .is_some_and(|u| u.contains(REPLIES_PATH));
        if rec.state != SessionState::Committed
            || rec.vdir != prefix
            || !crate::principal::may_act(rec.owner.as_ref(), identity)
            || !ours
        {
            return Ok(None);
        }
        let Some(representation) = self.data.reply_representation(id).await? else {
            return Ok(None);
        };
        Ok(Some(Reply {
            data: self.data.clone(),
            id,
            representation,
        }))
    }
}

/// A stored reply, ready to be served with ranges from whichever backend holds it.
pub struct Reply {
    data: std::sync::Arc<dyn crate::store::DataStore>,
    id: SessionId,
    pub representation: crate::download::Representation,
}

#[async_trait::async_trait]
impl crate::download::RangeSource for Reply {
    async fn open(&self, range: std::ops::Range<u64>) -> io::Result<crate::store::ByteStream> {
        self.data
            .read_reply(self.id, range)
            .await
            .map_err(io::Error::other)
    }
}

/// Parses `BITS-Sessions/Replies/<id>/responsefile.bin` (the path below a vdir prefix).
pub fn parse_reply_path(rel_path: &str) -> Option<SessionId> {
    let rest = rel_path.strip_prefix(REPLIES_PATH)?;
    let (id, file) = rest.split_once('/')?;
    (file == REPLY_FILE)
        .then(|| SessionId::parse(id).ok())
        .flatten()
}
