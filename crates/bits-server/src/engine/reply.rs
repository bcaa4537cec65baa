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
use crate::notify::{notification_url, NotifyError, Payload};
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
        if copy_pending(rec) {
            // The application answered 200 and asked for the copy before a crash or a failed
            // commit: carry out its recorded answer, never ask it again.
            return self.settle(rec, vdir, true).await;
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
            Some(url) if url.len() > bits_proto::MAX_URL_CHARS => {
                return Err(BitsError::ReplyUrlTooLong)
            }
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
        rec.reply_url = Some(reply_url);
        tracing::info!(session = %rec.id, copied = answer.copy_to_destination, reply = ?rec.reply_url, "server application notified");
        if answer.copy_to_destination {
            // The answer is recorded before the copy: the copy consumes the upload's data on
            // object storage, so after a crash in between only the record can say what the
            // application asked for (see `copy_pending`).
            self.sessions.save(rec).await?;
        }
        self.settle(rec, vdir, answer.copy_to_destination).await
    }

    /// Completion's one home, for uploads with and without notification: publishes the bytes
    /// at the destination when `publish` (always without notification; with it, when the
    /// application asked for the copy), records the session as complete with its
    /// `upload_completed` event owed in the same save, drops the spool copy of a published
    /// upload, and emits the event.
    pub(super) async fn settle(
        &self,
        rec: &mut SessionRecord,
        vdir: &VdirConfig,
        publish: bool,
    ) -> Result<(), BitsError> {
        let total = rec.received;
        if publish {
            self.derive_destination(rec)?;
            match self
                .data
                .commit(rec.id, total, &rec.destination, vdir.allow_overwrites)
                .await
            {
                Ok(()) => {}
                Err(StoreError::DestinationExists) => {
                    return Err(BitsError::DestinationExists {
                        status: vdir.conflict_status.status(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
            crash_point(CrashPoint::AfterCommit);
        }
        rec.state = SessionState::Committed;
        // The completion event is owed from here on: recorded in the same durable save.
        if vdir.hooks.wants(crate::hooks::EventKind::UploadCompleted) {
            rec.pending_hook = Some(crate::hooks::PendingEvent::at(self.now_ms()));
        }
        self.sessions.save(rec).await?;
        if publish {
            self.registry().set_spooled(rec.id, 0);
            if let Err(e) = self.data.release_upload(rec.id, &rec.destination).await {
                tracing::warn!(session = %rec.id, error = %e, "could not drop the spool copy of a published upload");
            }
            tracing::info!(session = %rec.id, destination = %rec.destination.path, bytes = total, "upload published");
        }
        self.observe(super::SessionEvent::Completed, rec);
        self.activity.completed(self.now_ms(), rec);
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
    representation: crate::store::Representation,
}

#[async_trait::async_trait]
impl crate::store::PublishedFile for Reply {
    fn representation(&self) -> &crate::store::Representation {
        &self.representation
    }

    async fn read(
        &self,
        range: std::ops::Range<u64>,
    ) -> Result<crate::store::ByteStream, StoreError> {
        self.data.read_reply(self.id, range).await
    }
}

/// Whether the application answered 200 asking for the copy, and the copy is not yet recorded
/// as done: the answer (its reply URL) is saved with the session still receiving. Without the
/// copy, the answer and the completion are one save, so this state never arises.
pub(super) fn copy_pending(rec: &SessionRecord) -> bool {
    rec.state == SessionState::Receiving && rec.reply_url.is_some()
}

/// Places where a test may have the process die (see [`crash_point`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// Right after `DataStore::commit` returned, before the completion is recorded.
    AfterCommit,
}

/// Test-only fault injection: `BITSD_TEST_CRASH_AFTER=commit` in the environment makes the
/// process SIGKILL itself at that point, so the crash tests can stop it exactly between two
/// storage steps. Read once per process; never set it in production.
fn crash_point(at: CrashPoint) {
    static ARMED: std::sync::OnceLock<Option<CrashPoint>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(
        || match std::env::var("BITSD_TEST_CRASH_AFTER").as_deref() {
            Ok("commit") => Some(CrashPoint::AfterCommit),
            _ => None,
        },
    );
    if *armed == Some(at) {
        tracing::error!("BITSD_TEST_CRASH_AFTER: killing the process (test fault point)");
        // SAFETY: kill(2) on our own pid has no memory effects; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
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
