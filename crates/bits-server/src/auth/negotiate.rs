//! `auth = "negotiate"`: Kerberos tickets checked with the vdir's keytab (the node's replay
//! cache shared by every vdir), and NTLM — raw, or inside SPNEGO as Windows falls back to it —
//! for users with an NT hash in the vdir's `users_file`.

use std::sync::Arc;

use base64::Engine as _;

use super::conn::{PolicyId, Proof, SignedIn, SpnegoOffer};
use super::handshake::{self, Token};
use super::kerberos::acceptor::Acceptor;
use super::ntlm::{Leg, NtlmVerifier};
use super::replay::ReplayError;
use super::{spnego, AuthOutcome, AuthRequest, Authenticator, Challenge, Shared};
use crate::config::ChannelBinding;

pub(crate) struct NegotiateAuth {
    pub(crate) acceptor: Acceptor,
    /// NTLM for the users file's NT hashes, when the vdir names a users file.
    pub(crate) ntlm: Option<NtlmVerifier>,
    pub(crate) policy: PolicyId,
    pub(crate) binding: ChannelBinding,
    pub(crate) shared: Arc<Shared>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[async_trait::async_trait]
impl Authenticator for NegotiateAuth {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        let conn = &req.conn.auth;
        let (token, negotiate_scheme) = match handshake::authorization_token(req.headers) {
            Token::Absent => {
                let still = conn.signed_in(&self.policy).filter(|s| match s.proof {
                    Proof::Kerberos => true,
                    Proof::Ntlm => self.ntlm.as_ref().is_some_and(|v| v.still_valid(&s.name)),
                    Proof::Password(_) => false,
                });
                return match still {
                    Some(s) => AuthOutcome::allowed(s.name),
                    None => {
                        conn.drop_pending();
                        self.challenge(None)
                    }
                };
            }
            Token::Unusable => {
                conn.clear();
                return self.challenge(None);
            }
            Token::Present { bytes, negotiate } => (bytes, negotiate),
        };
        if let Some(inner) = spnego::ntlm_inside(&token) {
            return self.ntlm_in_spnego(req, &token, &inner);
        }
        if token.starts_with(b"NTLMSSP\0") {
            return self.raw_ntlm(req, &token, negotiate_scheme);
        }
        self.kerberos(req, &token).await
    }
}

impl NegotiateAuth {
    /// 401 `Negotiate` (with the token of a handshake in progress), offering NTLM too when
    /// some user can use it.
    fn challenge(&self, token: Option<String>) -> AuthOutcome {
        AuthOutcome::Challenge(Challenge::Negotiate {
            token,
            ntlm: self.ntlm.as_ref().is_some_and(NtlmVerifier::offered),
        })
    }

    /// A token that was checked and is wrong: counted against the address, connection signed
    /// out, 401.
    fn refuse(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        self.shared.budgets.fail_address(req.peer);
        req.conn.auth.clear();
        self.challenge(None)
    }

    fn verifier(&self) -> Option<&NtlmVerifier> {
        self.ntlm.as_ref().filter(|v| v.offered())
    }

    fn signed_in(&self, req: &AuthRequest<'_>, name: String, proof: Proof) -> AuthOutcome {
        if req.persist {
            req.conn.auth.sign_in(SignedIn {
                policy: self.policy,
                name: name.clone(),
                proof,
            });
        }
        AuthOutcome::allowed(name)
    }

    /// NTLM inside SPNEGO: answered inside SPNEGO, and once NTLM completes both `mechListMIC`s
    /// ([MS-NLMP] 3.4.4.2 signatures over the client's mechanism list). The client's MIC proves
    /// nobody stripped Kerberos from its offer, so it is required whenever the offer held more
    /// than one mechanism (RFC 4178 5: NTLM then was not the only choice).
    fn ntlm_in_spnego(&self, req: &AuthRequest<'_>, token: &[u8], inner: &[u8]) -> AuthOutcome {
        let Some(verifier) = self.verifier() else {
            return self.refuse(req);
        };
        let offer = if bits_proto::ntlm::message_type(inner) == Ok(1) {
            match (spnego::mech_types(token), spnego::mech_type_count(token)) {
                (Some(mechs), Some(count)) => Some(SpnegoOffer { mechs, count }),
                // A NEGOTIATE inside a NegTokenResp: no offer to sign.
                _ => return self.refuse(req),
            }
        } else {
            None
        };
        match verifier.step(req, &self.policy, inner, offer) {
            Leg::Challenge(c) => self.challenge(Some(spnego::response(
                spnego::ACCEPT_INCOMPLETE,
                Some(&c),
                None,
            ))),
            Leg::Done {
                name,
                session,
                spnego: Some(offer),
            } => {
                let verified = match spnego::client_mic(token) {
                    Some(theirs) => bits_proto::secret::constant_time_eq(
                        &theirs,
                        &session.client_signature(&offer.mechs),
                    ),
                    None => offer.count <= 1,
                };
                if !verified {
                    tracing::info!(user = %name, mechanisms = offer.count, "SPNEGO: the client's mechListMIC is missing or does not verify (a downgrade?)");
                    return self.refuse(req);
                }
                let mic = session.server_signature(&offer.mechs);
                match self.signed_in(req, name, Proof::Ntlm) {
                    AuthOutcome::Allowed { name, .. } => AuthOutcome::Allowed {
                        name,
                        reply: Some(spnego::response(spnego::ACCEPT_COMPLETED, None, Some(&mic))),
                    },
                    other => other,
                }
            }
            Leg::Done { spnego: None, .. } => {
                tracing::info!("SPNEGO: NTLM begun outside SPNEGO was answered inside it");
                self.refuse(req)
            }
            Leg::Restart | Leg::Failed => self.challenge(None),
            Leg::Throttled => AuthOutcome::Throttled,
        }
    }

    /// A raw NTLM message (as IIS takes it under `Negotiate` too), answered in the scheme it
    /// was asked in.
    fn raw_ntlm(&self, req: &AuthRequest<'_>, token: &[u8], negotiate_scheme: bool) -> AuthOutcome {
        let Some(verifier) = self.verifier() else {
            return self.refuse(req);
        };
        match verifier.step(req, &self.policy, token, None) {
            Leg::Challenge(c) if negotiate_scheme => self.challenge(Some(b64(&c))),
            Leg::Challenge(c) => AuthOutcome::Challenge(Challenge::Ntlm(Some(b64(&c)))),
            Leg::Done {
                spnego: Some(_), ..
            } => {
                // Begun inside SPNEGO, answered outside it: the mechListMIC was stripped.
                tracing::info!("SPNEGO: NTLM begun inside SPNEGO was answered outside it");
                self.refuse(req)
            }
            Leg::Done { name, .. } => self.signed_in(req, name, Proof::Ntlm),
            Leg::Restart | Leg::Failed => self.challenge(None),
            Leg::Throttled => AuthOutcome::Throttled,
        }
    }

    async fn kerberos(&self, req: &AuthRequest<'_>, token: &[u8]) -> AuthOutcome {
        if self.shared.budgets.address_spent(req.peer) {
            req.conn.auth.clear();
            return AuthOutcome::Throttled;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let accepted = match self.acceptor.accept(token, now) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, "Kerberos authentication failed");
                return self.refuse(req);
            }
        };
        if let Err(why) = super::binding::check(
            self.binding,
            req.conn.channel_binding,
            accepted.channel_bindings,
        ) {
            tracing::info!(principal = %accepted.principal, "Kerberos: {why}");
            return self.refuse(req);
        }
        let cache = self.shared.replay.clone();
        let principal = accepted.principal.clone();
        let (ctime, cusec) = (accepted.ctime, accepted.cusec);
        let checked =
            tokio::task::spawn_blocking(move || cache.check(&principal, ctime, cusec, now)).await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(ReplayError::Replayed)) => {
                tracing::warn!(principal = %accepted.principal, "Kerberos: authenticator replayed");
                return self.refuse(req);
            }
            Ok(Err(e @ (ReplayError::Full(_) | ReplayError::PrincipalFull(_)))) => {
                tracing::warn!(principal = %accepted.principal, error = %e, "Kerberos sign-in refused for now");
                req.conn.auth.clear();
                return AuthOutcome::Throttled;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Kerberos replay cache cannot be written: sign-in refused");
                req.conn.auth.clear();
                return AuthOutcome::Throttled;
            }
            Err(e) => {
                tracing::error!(error = %e, "Kerberos replay check did not finish");
                req.conn.auth.clear();
                return AuthOutcome::Throttled;
            }
        }
        match self.signed_in(req, accepted.principal, Proof::Kerberos) {
            AuthOutcome::Allowed { name, .. } => AuthOutcome::Allowed {
                name,
                reply: Some(b64(&accepted.reply)),
            },
            other => other,
        }
    }
}
