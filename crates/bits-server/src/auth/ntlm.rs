//! NTLM sign-in against a users file's NT hashes: the verifier both NTLM vdirs and Negotiate
//! vdirs (NTLM raw or inside SPNEGO) use, and the `auth = "ntlm"` scheme.

use std::sync::Arc;

use base64::Engine as _;
use bits_proto::ntlm;

use super::conn::{PolicyId, Proof, SignedIn, SpnegoOffer};
use super::handshake::{self, Refusal, Rules, Token};
use super::users::UsersFile;
use super::{AuthOutcome, AuthRequest, Authenticator, Challenge, Shared};
use crate::config::ChannelBinding;

/// One leg of an NTLM handshake, as the verifier saw it.
pub(crate) enum Leg {
    /// Answer 401 with this CHALLENGE message.
    Challenge(Vec<u8>),
    /// Proven; `spnego` is the offer the handshake began with when it began inside SPNEGO.
    Done {
        name: String,
        session: ntlm::Session,
        spnego: Option<SpnegoOffer>,
    },
    /// Nothing checkable (no handshake in progress, it expired, or not an NTLM message): a
    /// fresh 401.
    Restart,
    /// Checked and refused: a fresh 401.
    Failed,
    /// A failure budget is spent: 503, nothing checked.
    Throttled,
}

pub(crate) struct NtlmVerifier {
    pub(crate) users: Arc<UsersFile>,
    pub(crate) domain: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) binding: ChannelBinding,
    pub(crate) shared: Arc<Shared>,
}

impl NtlmVerifier {
    /// Whether any user of the file can sign in with NTLM.
    pub(crate) fn offered(&self) -> bool {
        self.users.current().has_nt_hashes()
    }

    /// Whether a sign-in remembered as `name` still stands (a reload may have removed it).
    pub(crate) fn still_valid(&self, name: &str) -> bool {
        self.users.current().nt_hash(name).is_some()
    }

    /// Takes one NTLM message through the handshake of `req`'s connection under `policy`. Any
    /// leg that does not go on signs the connection out.
    pub(crate) fn step(
        &self,
        req: &AuthRequest<'_>,
        policy: &PolicyId,
        message: &[u8],
        spnego: Option<SpnegoOffer>,
    ) -> Leg {
        let conn = &req.conn.auth;
        let budgets = &self.shared.budgets;
        match ntlm::message_type(message) {
            Ok(1) => {
                if budgets.address_spent(req.peer) {
                    tracing::debug!(peer = ?req.peer, "failure budget of this address spent: no NTLM handshake");
                    conn.clear();
                    return Leg::Throttled;
                }
                match handshake::challenge(message, self.domain.as_deref(), spnego) {
                    Some((pending, challenge)) => {
                        conn.begin(*policy, pending);
                        Leg::Challenge(challenge)
                    }
                    None => {
                        conn.clear();
                        Leg::Restart
                    }
                }
            }
            Ok(3) => {
                let Some(pending) = conn.take_pending(policy) else {
                    conn.clear();
                    return Leg::Restart;
                };
                conn.clear();
                let auth = match ntlm::parse_authenticate(message) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::info!(error = %e, "NTLM: unreadable AUTHENTICATE message");
                        budgets.fail_address(req.peer);
                        return Leg::Failed;
                    }
                };
                let Some(taken) = budgets.take(req.peer, Some(&auth.user)) else {
                    return Leg::Throttled;
                };
                let rules = Rules {
                    domain: self.domain.as_deref(),
                    target: self.target.as_deref(),
                    binding: self.binding,
                    connection_binding: req.conn.channel_binding,
                };
                let users = self.users.current();
                match handshake::verify(&pending, message, &auth, &users, &rules) {
                    Ok((name, session)) => {
                        taken.refund();
                        Leg::Done {
                            name,
                            session,
                            spnego: pending.spnego,
                        }
                    }
                    Err(Refusal::Expired) => Leg::Restart,
                    Err(e) => {
                        // Names a client chose: both log formats escape their control
                        // characters (bitsd's logging), JSON keeps them exact.
                        tracing::info!(user = %auth.user, domain = %auth.domain, error = %e, "NTLM authentication failed");
                        Leg::Failed
                    }
                }
            }
            _ => {
                conn.clear();
                Leg::Restart
            }
        }
    }
}

/// `auth = "ntlm"`.
pub(crate) struct NtlmAuth {
    pub(crate) verifier: NtlmVerifier,
    pub(crate) policy: PolicyId,
}

#[async_trait::async_trait]
impl Authenticator for NtlmAuth {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        let restart = AuthOutcome::Challenge(Challenge::Ntlm(None));
        let message = match handshake::authorization_token(req.headers) {
            Token::Absent => {
                return match req.conn.auth.signed_in(&self.policy) {
                    Some(s) if s.proof == Proof::Ntlm && self.verifier.still_valid(&s.name) => {
                        AuthOutcome::allowed(s.name)
                    }
                    Some(_) => {
                        req.conn.auth.clear();
                        restart
                    }
                    None => {
                        req.conn.auth.drop_pending();
                        restart
                    }
                };
            }
            Token::Unusable => {
                req.conn.auth.clear();
                return restart;
            }
            Token::Present { bytes, .. } => bytes,
        };
        match self.verifier.step(req, &self.policy, &message, None) {
            Leg::Challenge(c) => AuthOutcome::Challenge(Challenge::Ntlm(Some(
                base64::engine::general_purpose::STANDARD.encode(c),
            ))),
            Leg::Done {
                spnego: Some(_), ..
            } => {
                // Begun inside SPNEGO (on a Negotiate vdir of the same policy: impossible, the
                // policy includes the scheme), answered raw: refused all the same.
                restart
            }
            Leg::Done { name, .. } => {
                if req.persist {
                    req.conn.auth.sign_in(SignedIn {
                        policy: self.policy,
                        name: name.clone(),
                        proof: Proof::Ntlm,
                    });
                }
                AuthOutcome::allowed(name)
            }
            Leg::Restart | Leg::Failed => restart,
            Leg::Throttled => AuthOutcome::Throttled,
        }
    }
}
