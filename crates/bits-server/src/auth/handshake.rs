//! The legs of an NTLM handshake over HTTP: NEGOTIATE → CHALLENGE (401) → AUTHENTICATE, and the
//! checks a completed one must pass. The state between the legs lives in the connection's
//! [`ConnAuth`](super::conn::ConnAuth), tagged with the policy that issued the challenge.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine as _;
use bits_proto::ntlm::{self, Authenticate, ServerNames};
use http::HeaderMap;

use super::conn::{Pending, SpnegoOffer};
use super::users::Users;
use crate::config::ChannelBinding;

/// How long a challenge waits for its AUTHENTICATE.
pub(crate) const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Seconds from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_UNIX_OFFSET: u64 = 11_644_473_600;

/// A CHALLENGE answering the client's NEGOTIATE `type1`, and the state its AUTHENTICATE is
/// checked against; `None` when `type1` is not a NEGOTIATE message.
pub(crate) fn challenge(
    type1: &[u8],
    domain: Option<&str>,
    spnego: Option<SpnegoOffer>,
) -> Option<(Pending, Vec<u8>)> {
    let flags = ntlm::parse_negotiate(type1).ok()?;
    let mut challenge = [0u8; 8];
    OsRng.fill_bytes(&mut challenge);
    let names = ServerNames {
        domain: domain.unwrap_or("BITSD").to_uppercase(),
        computer: "BITSD".into(),
    };
    let message = ntlm::challenge_message(flags, challenge, &names, filetime_now());
    let pending = Pending {
        negotiate: type1.to_vec(),
        message: message.clone(),
        challenge,
        at: Instant::now(),
        spnego,
    };
    Some((pending, message))
}

/// What an AUTHENTICATE must satisfy besides the password.
pub(crate) struct Rules<'a> {
    /// `ntlm_domain`: the only domain a client may name.
    pub(crate) domain: Option<&'a str>,
    /// `service_principal`: the target a client that names one must name.
    pub(crate) target: Option<&'a str>,
    pub(crate) binding: ChannelBinding,
    /// The bindings of the connection the answer arrived on (`None`: plain HTTP).
    pub(crate) connection_binding: Option<[u8; 16]>,
}

/// Why an AUTHENTICATE was refused (logged; the client just gets a fresh 401).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the challenge expired")]
    Expired,
    #[error("a user of another domain")]
    OtherDomain,
    #[error("the answer names another target ({0:?}): relayed from elsewhere?")]
    OtherTarget(String),
    #[error("{0}")]
    Binding(&'static str),
    #[error(transparent)]
    Ntlm(#[from] ntlm::NtlmError),
    #[error("no such user")]
    UnknownUser,
}

/// Checks the client's AUTHENTICATE `token` (parsed as `auth`) against the handshake `pending`
/// and the users; the user's name as the file writes it and the signing state on success.
/// Unknown names are checked against the file's dummy hash: the same work, the same answer.
pub(crate) fn verify(
    pending: &Pending,
    token: &[u8],
    auth: &Authenticate,
    users: &Users,
    rules: &Rules<'_>,
) -> Result<(String, ntlm::Session), Refusal> {
    if pending.at.elapsed() > CHALLENGE_TTL {
        return Err(Refusal::Expired);
    }
    let (name, hash) = users.nt_hash_or_dummy(&auth.user);
    let session = ntlm::verify(
        auth,
        token,
        hash,
        &pending.challenge,
        Some(&pending.negotiate),
        &pending.message,
    )?;
    let name = name.ok_or(Refusal::UnknownUser)?;
    // Checked after the proof: what they say is only worth reading once it is proven to come
    // from the user (the names and AV pairs are covered by the NTLMv2 response).
    if let Some(want) = rules.domain {
        if !auth.domain.is_empty() && !auth.domain.eq_ignore_ascii_case(want) {
            return Err(Refusal::OtherDomain);
        }
    }
    if let (Some(want), Some(named)) = (rules.target, auth.target_name.as_deref()) {
        if !named.is_empty() && !named.eq_ignore_ascii_case(want) {
            return Err(Refusal::OtherTarget(named.to_string()));
        }
    }
    super::binding::check(
        rules.binding,
        rules.connection_binding,
        auth.channel_bindings,
    )
    .map_err(Refusal::Binding)?;
    Ok((name.to_string(), session))
}

/// The credentials a request carries for a Windows scheme.
pub(crate) enum Token {
    /// No `Authorization` header.
    Absent,
    /// A header this scheme cannot use (another scheme, bad base64, too long).
    Unusable,
    /// The decoded token, and whether the scheme was `Negotiate` (not `NTLM`).
    Present { bytes: Vec<u8>, negotiate: bool },
}

/// The token of `Authorization: NTLM <base64>` or `Negotiate <base64>`.
pub(crate) fn authorization_token(headers: &HeaderMap) -> Token {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Token::Absent;
    };
    let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
        return Token::Unusable;
    };
    let negotiate = scheme.eq_ignore_ascii_case("Negotiate");
    if !negotiate && !scheme.eq_ignore_ascii_case("NTLM") {
        return Token::Unusable;
    }
    // The head size limit (`max_header_bytes`) bounds the token.
    match base64::engine::general_purpose::STANDARD.decode(token.trim()) {
        Ok(bytes) if !bytes.is_empty() => Token::Present { bytes, negotiate },
        _ => Token::Unusable,
    }
}

fn filetime_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs() + FILETIME_UNIX_OFFSET) * 10_000_000 + u64::from(since.subsec_nanos() / 100)
}
