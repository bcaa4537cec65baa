//! HTTP Basic against a users file's argon2 hashes, with what a check may cost bounded: a
//! verification queue, failure budgets, and a short memory of verified passwords.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{PolicyId, Proof, SignedIn};
use super::users::{basic_credentials, Users, UsersFile};
use super::{AuthOutcome, AuthRequest, Authenticator, Challenge, Shared};
use crate::config::BasicAuthLimits;

/// The argon2 verifications allowed at once, and the requests allowed to wait for one.
pub(crate) struct PasswordQueue {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl PasswordQueue {
    pub(crate) fn new(limits: &BasicAuthLimits) -> PasswordQueue {
        let concurrency = match limits.verify_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        PasswordQueue {
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: AtomicUsize::new(0),
            max_waiting: limits.max_waiting,
        }
    }

    /// Waits for a verification slot; `None` when `max_waiting` requests are waiting already.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let _waiting = Waiting(&self.waiting);
        self.slots.clone().acquire_owned().await.ok()
    }
}

/// Holds a place in the verification queue; gives it back however the request ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct BasicAuth {
    pub(crate) users: Arc<UsersFile>,
    pub(crate) policy: PolicyId,
    pub(crate) shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl Authenticator for BasicAuth {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        let Some((user, password)) = basic_credentials(req.headers) else {
            return AuthOutcome::Challenge(Challenge::Basic);
        };
        let users = self.users.current();
        let slot = users.cache_slot(&user, &password);
        // A connection that proved these very credentials under this policy carries on
        // whatever an attacker did to the budgets meanwhile (still only while remembered).
        let proven = req
            .conn
            .auth
            .signed_in(&self.policy)
            .is_some_and(|s| s.proof == Proof::Password(slot));
        if proven && users.remembered(&user, &password) {
            return AuthOutcome::allowed(user);
        }
        let outcome = self.check_password(users, user, password, req).await;
        if let (
            AuthOutcome::Allowed {
                name: Some(name), ..
            },
            true,
        ) = (&outcome, req.persist)
        {
            req.conn.auth.sign_in(SignedIn {
                policy: self.policy,
                name: name.clone(),
                proof: Proof::Password(slot),
            });
        }
        outcome
    }
}

impl BasicAuth {
    /// The address budget first (a spent address gets nothing, not even the cache, which would
    /// otherwise answer guesses for free), then the cache (so a client in the middle of an
    /// upload survives an attack on its name), then the name budget, then a place in the queue,
    /// then argon2.
    async fn check_password(
        &self,
        users: Arc<Users>,
        user: String,
        password: String,
        req: &AuthRequest<'_>,
    ) -> AuthOutcome {
        let budgets = &self.shared.budgets;
        if budgets.address_spent(req.peer) {
            tracing::debug!(peer = ?req.peer, "failure budget of this address spent: not verifying");
            return AuthOutcome::Throttled;
        }
        if users.remembered(&user, &password) {
            return AuthOutcome::allowed(user);
        }
        let Some(taken) = budgets.take(req.peer, Some(&user)) else {
            return AuthOutcome::Throttled;
        };
        let Some(permit) = self.shared.passwords.slot().await else {
            taken.refund();
            tracing::warn!(
                waiting = self.shared.passwords.max_waiting,
                "password verification queue full: answering 503"
            );
            return AuthOutcome::Throttled;
        };
        let name_for_check = user.clone();
        // The permit moves into the blocking task: a client that hangs up must not free its
        // slot while its verification still runs.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            users.verify_slow(&name_for_check, &password)
        })
        .await
        .unwrap_or(false);
        if ok {
            taken.refund();
            AuthOutcome::allowed(user)
        } else {
            AuthOutcome::Challenge(Challenge::Basic)
        }
    }
}
