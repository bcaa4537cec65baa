//! One connection's NTLM handshake: NEGOTIATE → CHALLENGE (401) → AUTHENTICATE, after which the
//! identity belongs to the connection (NTLM over HTTP is connection-bound). The state is one
//! small value per connection; a challenge is good for [`CHALLENGE_TTL`] and one answer.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine as _;
use http::HeaderMap;

use super::ntlm::{self, ServerNames};
use super::{AuthOutcome, Challenge, Users};

/// How long a challenge waits for its AUTHENTICATE.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// The longest `Authorization` token taken: an NTLM AUTHENTICATE message is well under 4 KiB,
/// a Kerberos ticket with a PAC can take tens of KiB, but not this much.
const MAX_TOKEN: usize = 64 * 1024;
/// Seconds from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_UNIX_OFFSET: u64 = 11_644_473_600;

#[derive(Debug, Default)]
pub struct NtlmConn(Mutex<State>);

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Challenged {
        negotiate: Vec<u8>,
        message: Vec<u8>,
        challenge: [u8; 8],
        at: Instant,
    },
    /// Authenticated as this name (as the users file writes it), with what the exchange left
    /// to sign with.
    Done(String, ntlm::Session),
}

/// What one request's step of the handshake gave.
#[derive(Debug)]
pub enum Step {
    Allowed(String),
    /// 401 with this challenge (`None`: start over with `WWW-Authenticate: NTLM`).
    Challenge(Option<String>),
    /// Credentials were checked and are wrong (also answered with a fresh 401).
    Failed,
}

impl From<Step> for AuthOutcome {
    fn from(step: Step) -> AuthOutcome {
        match step {
            Step::Allowed(name) => AuthOutcome::Allowed(Some(name)),
            Step::Challenge(token) => AuthOutcome::Challenge(Challenge::Ntlm(token)),
            Step::Failed => AuthOutcome::Challenge(Challenge::Ntlm(None)),
        }
    }
}

impl NtlmConn {
    /// Signs the connection out (a check after the handshake failed).
    pub fn reset(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = State::Idle;
    }

    /// The signing state of the completed handshake, if this connection completed one.
    pub fn session(&self) -> Option<ntlm::Session> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Done(_, session) => Some(*session),
            _ => None,
        }
    }

    /// Takes one request's `Authorization` header through the handshake.
    pub fn step(&self, headers: &HeaderMap, users: &Users, domain: Option<&str>) -> Step {
        self.step_message(ntlm_token(headers), users, domain)
    }

    /// [`NtlmConn::step`] with the NTLM message already taken out of its wrapping (the header,
    /// or SPNEGO); `None`: the request carried none.
    pub fn step_message(
        &self,
        token: Option<Vec<u8>>,
        users: &Users,
        domain: Option<&str>,
    ) -> Step {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(token) = token else {
            // No credentials on this request: an authenticated connection stays so.
            return match &*state {
                State::Done(name, _) if users.nt_hash(name).is_some() => {
                    Step::Allowed(name.clone())
                }
                _ => {
                    *state = State::Idle;
                    Step::Challenge(None)
                }
            };
        };
        match ntlm::message_type(&token) {
            Ok(1) => {
                let Ok(flags) = ntlm::parse_negotiate(&token) else {
                    *state = State::Idle;
                    return Step::Challenge(None);
                };
                let mut challenge = [0u8; 8];
                OsRng.fill_bytes(&mut challenge);
                let names = ServerNames {
                    domain: domain.unwrap_or("BITSD").to_uppercase(),
                    computer: "BITSD".into(),
                };
                let message = ntlm::challenge_message(flags, challenge, &names, filetime_now());
                let encoded = base64::engine::general_purpose::STANDARD.encode(&message);
                *state = State::Challenged {
                    negotiate: token,
                    message,
                    challenge,
                    at: Instant::now(),
                };
                Step::Challenge(Some(encoded))
            }
            Ok(3) => {
                let previous = std::mem::take(&mut *state);
                let State::Challenged {
                    negotiate,
                    message,
                    challenge,
                    at,
                } = previous
                else {
                    return Step::Challenge(None);
                };
                if at.elapsed() > CHALLENGE_TTL {
                    return Step::Challenge(None);
                }
                match check(&token, users, domain, &negotiate, &message, &challenge) {
                    Some((name, session)) => {
                        *state = State::Done(name.clone(), session);
                        Step::Allowed(name)
                    }
                    None => Step::Failed,
                }
            }
            _ => {
                *state = State::Idle;
                Step::Challenge(None)
            }
        }
    }
}

/// The user an AUTHENTICATE message proves to be, if it does.
fn check(
    token: &[u8],
    users: &Users,
    domain: Option<&str>,
    negotiate: &[u8],
    challenge_msg: &[u8],
    challenge: &[u8; 8],
) -> Option<(String, ntlm::Session)> {
    let auth = ntlm::parse_authenticate(token)
        .inspect_err(|e| tracing::info!(error = %e, "NTLM: unreadable AUTHENTICATE message"))
        .ok()?;
    if let Some(want) = domain {
        if !auth.domain.is_empty() && !auth.domain.eq_ignore_ascii_case(want) {
            tracing::info!(user = %auth.user, domain = %auth.domain, "NTLM: user of another domain refused");
            return None;
        }
    }
    // An unknown name is checked against a random hash, so it costs the same and fails alike.
    let (name, hash) = match users.nt_hash(&auth.user) {
        Some((name, hash)) => (Some(name.clone()), *hash),
        None => {
            let mut random = [0u8; 16];
            OsRng.fill_bytes(&mut random);
            (None, random)
        }
    };
    match ntlm::verify(
        &auth,
        token,
        &hash,
        challenge,
        Some(negotiate),
        challenge_msg,
    ) {
        Ok(session) => name.map(|n| (n, session)),
        Err(e) => {
            tracing::info!(user = %auth.user, domain = %auth.domain, error = %e, "NTLM authentication failed");
            None
        }
    }
}

/// The NTLM message in `Authorization: NTLM <base64>`, or in `Negotiate <base64>` when that
/// holds a raw NTLM message (as IIS accepts).
fn ntlm_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    authorization_token(headers).filter(|t| t.starts_with(b"NTLMSSP\0"))
}

/// The decoded token of `Authorization: NTLM <base64>` or `Negotiate <base64>`.
pub(super) fn authorization_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("NTLM") && !scheme.eq_ignore_ascii_case("Negotiate") {
        return None;
    }
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(token).ok()
}

fn filetime_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs() + FILETIME_UNIX_OFFSET) * 10_000_000 + u64::from(since.subsec_nanos() / 100)
}
