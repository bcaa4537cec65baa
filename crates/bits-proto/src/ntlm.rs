//! NTLM ([MS-NLMP]) as BITS clients and servers speak it over HTTP: the three handshake
//! messages, the server's check of a client's NTLMv2 response against the NT hash of the
//! user's password, and the client's side (NEGOTIATE, and an AUTHENTICATE answering a
//! CHALLENGE). Pure functions, no I/O.
//!
//! Only NTLMv2 is accepted: a 24-byte NT response (NTLMv1, or LM alone) is refused. The
//! client's proof (`NTProofStr`, HMAC-MD5 over the server challenge and the client's blob under
//! the NTLMv2 hash) is always recomputed and compared in constant time, whether or not the
//! message carries a MIC; a MIC the client declares (`MsvAvFlags` bit 2) must verify too. The
//! challenge carries a timestamp AV pair, which is what makes modern clients send a MIC.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use thiserror::Error;

type HmacMd5 = Hmac<md5::Md5>;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const NEGOTIATE: u32 = 1;
const CHALLENGE: u32 = 2;
const AUTHENTICATE: u32 = 3;

pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_SIGN: u32 = 0x0000_0010;
pub const NEGOTIATE_SEAL: u32 = 0x0000_0020;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// AV pair ids ([MS-NLMP] 2.2.2.1).
const AV_EOL: u16 = 0;
const AV_NB_COMPUTER_NAME: u16 = 1;
const AV_NB_DOMAIN_NAME: u16 = 2;
const AV_DNS_COMPUTER_NAME: u16 = 3;
const AV_DNS_DOMAIN_NAME: u16 = 4;
const AV_FLAGS: u16 = 6;
const AV_TIMESTAMP: u16 = 7;
const AV_TARGET_NAME: u16 = 9;
const AV_CHANNEL_BINDINGS: u16 = 10;
/// The NTLMv2 client blob before its AV pairs ([MS-NLMP] 2.2.2.7): RespType, HiRespType,
/// reserved (6), TimeStamp (8), ChallengeFromClient (8), reserved (4).
const BLOB_HEADER: usize = 28;
/// NTProofStr, which the NtChallengeResponse starts with.
const PROOF_LEN: usize = 16;
/// `MsvAvFlags` bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC: u32 = 0x2;

/// Where the MIC sits in an AUTHENTICATE message (after the fixed fields and the version).
const MIC_OFFSET: usize = 72;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NtlmError {
    #[error("not an NTLM message")]
    NotNtlm,
    #[error("NTLM message of type {0} where another was expected")]
    UnexpectedType(u32),
    #[error("malformed NTLM message: {0}")]
    Malformed(&'static str),
    #[error("only NTLMv2 is accepted")]
    NotV2,
    #[error("the NTLMv2 response does not match the password")]
    BadProof,
    #[error("the message integrity code does not verify")]
    BadMic,
}

/// The message type of `msg` (1 NEGOTIATE, 2 CHALLENGE, 3 AUTHENTICATE).
pub fn message_type(msg: &[u8]) -> Result<u32, NtlmError> {
    if msg.len() < 12 || &msg[..8] != SIGNATURE {
        return Err(NtlmError::NotNtlm);
    }
    Ok(u32_at(msg, 8))
}

/// The flags a NEGOTIATE message asks for.
pub fn parse_negotiate(msg: &[u8]) -> Result<u32, NtlmError> {
    match message_type(msg)? {
        NEGOTIATE if msg.len() >= 16 => Ok(u32_at(msg, 12)),
        NEGOTIATE => Err(NtlmError::Malformed("short NEGOTIATE")),
        other => Err(NtlmError::UnexpectedType(other)),
    }
}

/// The names the server announces in its CHALLENGE.
#[derive(Clone, Debug)]
pub struct ServerNames {
    /// NetBIOS domain name (also the target name).
    pub domain: String,
    /// NetBIOS computer name.
    pub computer: String,
}

/// A CHALLENGE message answering a NEGOTIATE with `client_flags`: NTLMv2 with extended
/// session security, the server's `challenge`, and target info with the names and
/// `timestamp` (a FILETIME: 100 ns since 1601).
pub fn challenge_message(
    client_flags: u32,
    challenge: [u8; 8],
    names: &ServerNames,
    timestamp: u64,
) -> Vec<u8> {
    let mut flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | TARGET_TYPE_DOMAIN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION;
    // What the client offers of these it gets; the server never needs them itself.
    flags |= client_flags
        & (NEGOTIATE_SIGN | NEGOTIATE_SEAL | NEGOTIATE_128 | NEGOTIATE_56 | NEGOTIATE_KEY_EXCH);
    let target = utf16(&names.domain);
    let mut info = Vec::new();
    for (id, value) in [
        (AV_NB_DOMAIN_NAME, utf16(&names.domain)),
        (AV_NB_COMPUTER_NAME, utf16(&names.computer)),
        (AV_DNS_DOMAIN_NAME, utf16(&names.domain.to_lowercase())),
        (AV_DNS_COMPUTER_NAME, utf16(&names.computer.to_lowercase())),
        (AV_TIMESTAMP, timestamp.to_le_bytes().to_vec()),
        (AV_EOL, Vec::new()),
    ] {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(&value);
    }
    let header = 56;
    let mut msg = Vec::with_capacity(header + target.len() + info.len());
    msg.extend_from_slice(SIGNATURE);
    msg.extend_from_slice(&CHALLENGE.to_le_bytes());
    push_field(&mut msg, target.len(), header);
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&challenge);
    msg.extend_from_slice(&[0; 8]);
    push_field(&mut msg, info.len(), header + target.len());
    // Version: 10.0 build 0, NTLM revision 15 (as Windows sends).
    msg.extend_from_slice(&[10, 0, 0, 0, 0, 0, 0, 15]);
    msg.extend_from_slice(&target);
    msg.extend_from_slice(&info);
    msg
}

/// What a client's AUTHENTICATE message says.
#[derive(Debug)]
pub struct Authenticate {
    pub user: String,
    pub domain: String,
    pub workstation: String,
    pub flags: u32,
    /// From the AV pairs of the NTLMv2 client blob ([MS-NLMP] 2.2.2.1), which the NTProofStr
    /// covers (trustworthy only once [`verify`] passed): `MsvAvTargetName`, the service the
    /// client meant (`HTTP/host`)…
    pub target_name: Option<String>,
    /// …`MsvAvChannelBindings`, the MD5 of the client's channel bindings (`None` when absent
    /// or all zero: a client without bindings)…
    pub channel_bindings: Option<[u8; 16]>,
    /// …and `MsvAvFlags`.
    pub av_flags: Option<u32>,
    nt_response: Vec<u8>,
    encrypted_session_key: Vec<u8>,
}

/// The AV pairs of an NTLMv2 response's client blob, if it is one.
fn client_pairs(nt_response: &[u8]) -> &[u8] {
    nt_response
        .get(PROOF_LEN + BLOB_HEADER..)
        .filter(|_| nt_response.len() > 24)
        .unwrap_or_default()
}

pub fn parse_authenticate(msg: &[u8]) -> Result<Authenticate, NtlmError> {
    match message_type(msg)? {
        AUTHENTICATE => {}
        other => return Err(NtlmError::UnexpectedType(other)),
    }
    if msg.len() < 64 {
        return Err(NtlmError::Malformed("short AUTHENTICATE"));
    }
    let flags = u32_at(msg, 60);
    let text = |at: usize| -> Result<String, NtlmError> {
        let raw = field(msg, at)?;
        if flags & NEGOTIATE_UNICODE == 0 {
            return Ok(raw.iter().map(|&b| b as char).collect());
        }
        if raw.len() % 2 != 0 {
            return Err(NtlmError::Malformed("odd UTF-16 length"));
        }
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).map_err(|_| NtlmError::Malformed("invalid UTF-16"))
    };
    let nt_response = field(msg, 20)?.to_vec();
    let pairs = client_pairs(&nt_response);
    let target_name = av_value(pairs, AV_TARGET_NAME)
        .map(|raw| {
            if raw.len() % 2 != 0 {
                return Err(NtlmError::Malformed("odd UTF-16 length of MsvAvTargetName"));
            }
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| NtlmError::Malformed("MsvAvTargetName"))
        })
        .transpose()?;
    let channel_bindings = av_value(pairs, AV_CHANNEL_BINDINGS)
        .map(|v| <[u8; 16]>::try_from(v).map_err(|_| NtlmError::Malformed("MsvAvChannelBindings")))
        .transpose()?
        .filter(|b| *b != [0; 16]);
    let av_flags = av_value(pairs, AV_FLAGS)
        .map(|v| {
            <[u8; 4]>::try_from(v)
                .map(u32::from_le_bytes)
                .map_err(|_| NtlmError::Malformed("MsvAvFlags"))
        })
        .transpose()?;
    Ok(Authenticate {
        domain: text(28)?,
        user: text(36)?,
        workstation: text(44)?,
        encrypted_session_key: field(msg, 52)?.to_vec(),
        flags,
        target_name,
        channel_bindings,
        av_flags,
        nt_response,
    })
}

/// The NT hash of a password: MD4 of its UTF-16LE form. Password-equivalent for NTLM.
pub fn nt_hash(password: &str) -> [u8; 16] {
    Md4::digest(utf16(password)).into()
}

/// NTOWFv2: HMAC-MD5 under the NT hash of the upper-cased user name and the domain.
pub fn ntowf_v2(nt_hash: &[u8; 16], user: &str, domain: &str) -> [u8; 16] {
    hmac_md5(nt_hash, &[&utf16(&user.to_uppercase()), &utf16(domain)])
}

/// Checks `auth` (parsed from `auth_msg`) against the user's NT hash and the server
/// `challenge` sent in `challenge_msg` (answering `negotiate_msg`, when there was one).
pub fn verify(
    auth: &Authenticate,
    auth_msg: &[u8],
    nt_hash: &[u8; 16],
    challenge: &[u8; 8],
    negotiate_msg: Option<&[u8]>,
    challenge_msg: &[u8],
) -> Result<Session, NtlmError> {
    if auth.nt_response.len() <= 24 {
        return Err(NtlmError::NotV2);
    }
    // NTProofStr, then the client's blob (version 1.1, …, then its AV pairs).
    let (proof, blob) = auth.nt_response.split_at(16);
    if blob.len() < 28 || blob[0] != 1 || blob[1] != 1 {
        return Err(NtlmError::Malformed("NTLMv2 blob"));
    }
    // The domain as the client sent it: the hash covers the exact name the client typed.
    let key = ntowf_v2(nt_hash, &auth.user, &auth.domain);
    let expected = hmac_md5(&key, &[challenge, blob]);
    if !crate::secret::constant_time_eq(&expected, proof) {
        return Err(NtlmError::BadProof);
    }
    let session_base_key = hmac_md5(&key, &[proof]);
    let exported: [u8; 16] = if auth.flags & NEGOTIATE_KEY_EXCH != 0 {
        if auth.encrypted_session_key.len() != 16 {
            return Err(NtlmError::Malformed("encrypted session key"));
        }
        let k = rc4(&session_base_key, &auth.encrypted_session_key);
        let mut out = [0u8; 16];
        out.copy_from_slice(&k);
        out
    } else {
        session_base_key
    };
    let session = Session {
        exported_key: exported,
        flags: auth.flags,
    };
    if !declares_mic(&blob[28..]) {
        return Ok(session);
    }
    if auth_msg.len() < MIC_OFFSET + 16 {
        return Err(NtlmError::Malformed("MIC declared but absent"));
    }
    let mut zeroed = auth_msg.to_vec();
    zeroed[MIC_OFFSET..MIC_OFFSET + 16].fill(0);
    let mic = hmac_md5(
        &exported,
        &[negotiate_msg.unwrap_or_default(), challenge_msg, &zeroed],
    );
    if !crate::secret::constant_time_eq(&mic, &auth_msg[MIC_OFFSET..MIC_OFFSET + 16]) {
        return Err(NtlmError::BadMic);
    }
    Ok(session)
}

/// What an authenticated NTLM exchange leaves to sign with: the exported session key and the
/// flags the client settled on.
#[derive(Clone, Copy)]
pub struct Session {
    exported_key: [u8; 16],
    flags: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The server's first signature (sequence number 0) over `message`, with extended session
    /// security ([MS-NLMP] 3.4.4.2): what SPNEGO's `mechListMIC` holds when NTLM was chosen.
    pub fn server_signature(&self, message: &[u8]) -> [u8; 16] {
        self.signature(message, SERVER_SIGNING, SERVER_SEALING)
    }

    /// The client's first signature over `message` (to check its `mechListMIC`).
    pub fn client_signature(&self, message: &[u8]) -> [u8; 16] {
        self.signature(message, CLIENT_SIGNING, CLIENT_SEALING)
    }

    fn signature(&self, message: &[u8], signing: &[u8], sealing: &[u8]) -> [u8; 16] {
        use md5::Digest as _;
        let sign_key: [u8; 16] = md5::Md5::new()
            .chain_update(self.exported_key)
            .chain_update(signing)
            .finalize()
            .into();
        let seq = 0u32.to_le_bytes();
        let mut checksum = hmac_md5(&sign_key, &[&seq, message])[..8].to_vec();
        if self.flags & NEGOTIATE_KEY_EXCH != 0 {
            let len = if self.flags & NEGOTIATE_128 != 0 {
                16
            } else if self.flags & NEGOTIATE_56 != 0 {
                7
            } else {
                5
            };
            let seal_key: [u8; 16] = md5::Md5::new()
                .chain_update(&self.exported_key[..len])
                .chain_update(sealing)
                .finalize()
                .into();
            checksum = rc4(&seal_key, &checksum);
        }
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&1u32.to_le_bytes());
        out[4..12].copy_from_slice(&checksum);
        out[12..].copy_from_slice(&seq);
        out
    }
}

const CLIENT_SIGNING: &[u8] = b"session key to client-to-server signing key magic constant\0";
const SERVER_SIGNING: &[u8] = b"session key to server-to-client signing key magic constant\0";
const CLIENT_SEALING: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const SERVER_SEALING: &[u8] = b"session key to server-to-client sealing key magic constant\0";

/// The client's NEGOTIATE message: Unicode, NTLM with extended session security, asking for
/// the target info that NTLMv2 needs.
pub fn negotiate_message() -> Vec<u8> {
    let flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_128;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(SIGNATURE);
    msg.extend_from_slice(&NEGOTIATE.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    push_field(&mut msg, 0, 32);
    push_field(&mut msg, 0, 32);
    msg
}

/// The client's AUTHENTICATE message answering `challenge_msg` for `user` in `domain` with
/// `password`: an NTLMv2 response over the server's target info (its timestamp, or 0), with
/// `client_challenge` as the client's nonce. No MIC and no key exchange (as curl sends).
pub fn authenticate_message(
    challenge_msg: &[u8],
    user: &str,
    domain: &str,
    password: &str,
    client_challenge: [u8; 8],
) -> Result<Vec<u8>, NtlmError> {
    authenticate_message_with(
        challenge_msg,
        user,
        domain,
        password,
        client_challenge,
        &ClientAvPairs::default(),
    )
}

/// AV pairs a client adds to the server's in its NTLMv2 blob ([MS-NLMP] 3.1.5.1.2), as
/// Windows does: the service it means, its channel bindings' MD5, its `MsvAvFlags`.
#[derive(Clone, Debug, Default)]
pub struct ClientAvPairs {
    pub target_name: Option<String>,
    pub channel_bindings: Option<[u8; 16]>,
    pub av_flags: Option<u32>,
}

/// [`authenticate_message`] with `extra` AV pairs in the blob (after the server's, before its
/// `MsvAvEOL`; a server pair of the same id is replaced).
pub fn authenticate_message_with(
    challenge_msg: &[u8],
    user: &str,
    domain: &str,
    password: &str,
    client_challenge: [u8; 8],
    extra: &ClientAvPairs,
) -> Result<Vec<u8>, NtlmError> {
    match message_type(challenge_msg)? {
        CHALLENGE => {}
        other => return Err(NtlmError::UnexpectedType(other)),
    }
    if challenge_msg.len() < 48 {
        return Err(NtlmError::Malformed("short CHALLENGE"));
    }
    let server_challenge = &challenge_msg[24..32];
    let info = field(challenge_msg, 40)?;
    let timestamp = av_value(info, AV_TIMESTAMP)
        .filter(|v| v.len() == 8)
        .map_or([0; 8], |v| [v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]);
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&timestamp);
    blob.extend_from_slice(&client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(&with_pairs(info, extra));
    blob.extend_from_slice(&[0; 4]);
    let key = ntowf_v2(&nt_hash(password), user, domain);
    let mut nt_response = hmac_md5(&key, &[server_challenge, &blob]).to_vec();
    nt_response.extend_from_slice(&blob);
    let (d, u, w) = (utf16(domain), utf16(user), utf16("BITS-CLIENT"));
    let header = 64;
    let flags = NEGOTIATE_UNICODE
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_TARGET_INFO;
    let mut msg = Vec::with_capacity(header + nt_response.len() + d.len() + u.len() + w.len());
    msg.extend_from_slice(SIGNATURE);
    msg.extend_from_slice(&AUTHENTICATE.to_le_bytes());
    let mut at = header;
    push_field(&mut msg, 0, at); // LM: none for NTLMv2 with a timestamp
    push_field(&mut msg, nt_response.len(), at);
    at += nt_response.len();
    push_field(&mut msg, d.len(), at);
    at += d.len();
    push_field(&mut msg, u.len(), at);
    at += u.len();
    push_field(&mut msg, w.len(), at);
    at += w.len();
    push_field(&mut msg, 0, at); // no session key
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&nt_response);
    msg.extend_from_slice(&d);
    msg.extend_from_slice(&u);
    msg.extend_from_slice(&w);
    Ok(msg)
}

/// A fresh client challenge: 8 bytes of the OS's random source (a v4 UUID's random bits).
pub fn client_nonce() -> [u8; 8] {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    [b[0], b[1], b[2], b[3], b[10], b[11], b[12], b[13]]
}

/// The server's AV pairs up to its `MsvAvEOL`, then `extra`'s, then `MsvAvEOL`. Without
/// extras, `info` as it came (what clients that add nothing send).
fn with_pairs(info: &[u8], extra: &ClientAvPairs) -> Vec<u8> {
    let mut ours: Vec<(u16, Vec<u8>)> = Vec::new();
    if let Some(flags) = extra.av_flags {
        ours.push((AV_FLAGS, flags.to_le_bytes().to_vec()));
    }
    if let Some(bindings) = extra.channel_bindings {
        ours.push((AV_CHANNEL_BINDINGS, bindings.to_vec()));
    }
    if let Some(name) = &extra.target_name {
        ours.push((AV_TARGET_NAME, utf16(name)));
    }
    if ours.is_empty() {
        return info.to_vec();
    }
    let mut out = Vec::with_capacity(info.len() + 64);
    let mut rest = info;
    while rest.len() >= 4 {
        let id = u16::from_le_bytes([rest[0], rest[1]]);
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        let Some(pair) = rest.get(..4 + len) else {
            break;
        };
        if id == AV_EOL {
            break;
        }
        if !ours.iter().any(|(o, _)| *o == id) {
            out.extend_from_slice(pair);
        }
        rest = &rest[4 + len..];
    }
    for (id, value) in ours.iter().chain([&(AV_EOL, Vec::new())]) {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The value of AV pair `id` in `pairs`.
fn av_value(mut pairs: &[u8], id: u16) -> Option<&[u8]> {
    while pairs.len() >= 4 {
        let this = u16::from_le_bytes([pairs[0], pairs[1]]);
        let len = u16::from_le_bytes([pairs[2], pairs[3]]) as usize;
        let value = pairs.get(4..4 + len)?;
        if this == AV_EOL {
            return None;
        }
        if this == id {
            return Some(value);
        }
        pairs = &pairs[4 + len..];
    }
    None
}

/// Whether the client's AV pairs (after the blob's fixed part) carry `MsvAvFlags` with the
/// MIC bit.
fn declares_mic(pairs: &[u8]) -> bool {
    av_value(pairs, AV_FLAGS)
        .filter(|v| v.len() == 4)
        .is_some_and(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]) & AV_FLAG_MIC != 0)
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // Keys longer than the MD5 block are hashed first (RFC 2104), so HMAC takes any key; the
    // keys here are all 16 bytes.
    let mut mac = match <HmacMd5 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0xff; 16],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn rc4(key: &[u8], data: &[u8]) -> Vec<u8> {
    use rc4::{KeyInit, StreamCipher};
    let mut out = data.to_vec();
    let mut cipher = rc4::Rc4::<rc4::consts::U16>::new(key.into());
    cipher.apply_keystream(&mut out);
    out
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn u32_at(msg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

/// The payload a security buffer (len u16, max len u16, offset u32) at `at` points to.
fn field(msg: &[u8], at: usize) -> Result<&[u8], NtlmError> {
    let len = u16::from_le_bytes([msg[at], msg[at + 1]]) as usize;
    let offset = u32_at(msg, at + 4) as usize;
    if len == 0 {
        return Ok(&[]);
    }
    msg.get(offset..offset.saturating_add(len))
        .ok_or(NtlmError::Malformed("field outside the message"))
}

fn push_field(msg: &mut Vec<u8>, len: usize, offset: usize) {
    msg.extend_from_slice(&(len as u16).to_le_bytes());
    msg.extend_from_slice(&(len as u16).to_le_bytes());
    msg.extend_from_slice(&(offset as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// [MS-NLMP] 4.2.4: user "User", domain "Domain", password "Password".
    #[test]
    fn ms_nlmp_4_2_4_known_answers() {
        let nt = nt_hash("Password");
        assert_eq!(nt.to_vec(), hex("a4f49c406510bdcab6824ee7c30fd852"));
        let key = ntowf_v2(&nt, "User", "Domain");
        assert_eq!(key.to_vec(), hex("0c868a403bfd7a93a3001ef22ef02e3f"));
        // temp = 0x0101, zeros, time 0, client challenge aa…, zeros, the server's AV pairs
        // (NbDomainName "Domain", NbComputerName "Server", EOL), zeros.
        let temp = hex("0101000000000000 0000000000000000 aaaaaaaaaaaaaaaa 00000000
             02000c0044006f006d00610069006e00 01000c00530065007200760065007200 00000000
             00000000");
        let server_challenge: [u8; 8] = hex("0123456789abcdef").try_into().unwrap();
        let proof = hmac_md5(&key, &[&server_challenge, &temp]);
        assert_eq!(proof.to_vec(), hex("68cd0ab851e51c96aabc927bebef6a1c"));
        let session_base_key = hmac_md5(&key, &[&proof]);
        assert_eq!(
            session_base_key.to_vec(),
            hex("8de40ccadbc14a82f15cb0ad0de95ca3")
        );
    }

    /// A minimal AUTHENTICATE message (no version, no MIC) for `user`/`domain` with this NT
    /// response.
    fn authenticate(user: &str, domain: &str, nt_response: &[u8]) -> Vec<u8> {
        let (d, u) = (utf16(domain), utf16(user));
        let header = 64;
        let mut msg = Vec::new();
        msg.extend_from_slice(SIGNATURE);
        msg.extend_from_slice(&AUTHENTICATE.to_le_bytes());
        push_field(&mut msg, 0, header); // LM
        push_field(&mut msg, nt_response.len(), header);
        push_field(&mut msg, d.len(), header + nt_response.len());
        push_field(&mut msg, u.len(), header + nt_response.len() + d.len());
        push_field(&mut msg, 0, header); // workstation
        push_field(&mut msg, 0, header); // session key
        msg.extend_from_slice(&(NEGOTIATE_UNICODE | NEGOTIATE_NTLM).to_le_bytes());
        msg.extend_from_slice(nt_response);
        msg.extend_from_slice(&d);
        msg.extend_from_slice(&u);
        msg
    }

    fn response(key: &[u8; 16], challenge: &[u8; 8], pairs: &[u8]) -> Vec<u8> {
        let mut blob = hex("0101000000000000 0000000000000000 1122334455667788 00000000");
        blob.extend_from_slice(pairs);
        blob.extend_from_slice(&[0; 4]);
        let mut out = hmac_md5(key, &[challenge, &blob]).to_vec();
        out.extend_from_slice(&blob);
        out
    }

    #[test]
    fn the_right_password_verifies_and_a_wrong_one_without_mic_does_not() {
        let challenge = [7u8; 8];
        let challenge_msg = challenge_message(0, challenge, &names(), 0);
        let right = nt_hash("secret");
        let nt = response(
            &ntowf_v2(&right, "alice", "BITS"),
            &challenge,
            &[0, 0, 0, 0],
        );
        let msg = authenticate("alice", "BITS", &nt);
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(
            (auth.user.as_str(), auth.domain.as_str()),
            ("alice", "BITS")
        );
        assert_eq!(
            verify(&auth, &msg, &right, &challenge, None, &challenge_msg).map(|_| ()),
            Ok(())
        );
        // The same message checked against another password, or another challenge.
        let wrong = nt_hash("guess");
        assert_eq!(
            verify(&auth, &msg, &wrong, &challenge, None, &challenge_msg).map(|_| ()),
            Err(NtlmError::BadProof)
        );
        assert_eq!(
            verify(&auth, &msg, &right, &[8u8; 8], None, &challenge_msg).map(|_| ()),
            Err(NtlmError::BadProof)
        );
        // A response computed from the wrong password, no MIC: refused.
        let forged = response(
            &ntowf_v2(&wrong, "alice", "BITS"),
            &challenge,
            &[0, 0, 0, 0],
        );
        let msg = authenticate("alice", "BITS", &forged);
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(
            verify(&auth, &msg, &right, &challenge, None, &challenge_msg).map(|_| ()),
            Err(NtlmError::BadProof)
        );
    }

    #[test]
    fn ntlm_v1_and_garbage_are_refused() {
        let challenge = [1u8; 8];
        let challenge_msg = challenge_message(0, challenge, &names(), 0);
        let msg = authenticate("alice", "", &[0x55; 24]);
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(
            verify(&auth, &msg, &nt_hash("x"), &challenge, None, &challenge_msg).map(|_| ()),
            Err(NtlmError::NotV2)
        );
        assert!(matches!(
            parse_authenticate(b"NTLMSSP\0"),
            Err(NtlmError::NotNtlm)
        ));
        assert!(parse_authenticate(&msg[..40]).is_err());
        let mut far = msg.clone();
        far[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_authenticate(&far).is_err());
        assert_eq!(message_type(b"HTTP/1.1 200"), Err(NtlmError::NotNtlm));
    }

    #[test]
    fn a_declared_mic_must_verify() {
        let challenge = [3u8; 8];
        let challenge_msg = challenge_message(NEGOTIATE_KEY_EXCH, challenge, &names(), 0);
        let nt = nt_hash("secret");
        // MsvAvFlags with the MIC bit, then EOL.
        let pairs = hex("0600 0400 02000000 0000 0000");
        let nt_response = response(&ntowf_v2(&nt, "bob", "BITS"), &challenge, &pairs);
        // An AUTHENTICATE with a version and a MIC slot (payload at 88).
        let mut msg = authenticate("bob", "BITS", &nt_response);
        let payload = msg.split_off(64);
        msg.extend_from_slice(&[0; 8]); // version
        msg.extend_from_slice(&[0; 16]); // MIC
        for at in [12, 20, 28, 36, 44, 52] {
            let off = u32_at(&msg, at + 4) + 24;
            msg[at + 4..at + 8].copy_from_slice(&off.to_le_bytes());
        }
        msg.extend_from_slice(&payload);
        let auth = parse_authenticate(&msg).unwrap();
        // The MIC is still zero: refused although the proof is right.
        assert_eq!(
            verify(&auth, &msg, &nt, &challenge, None, &challenge_msg).map(|_| ()),
            Err(NtlmError::BadMic)
        );
        // The right MIC (no key exchange: the session base key signs).
        let key = ntowf_v2(&nt, "bob", "BITS");
        let base = hmac_md5(&key, &[&nt_response[..16]]);
        let mic = hmac_md5(&base, &[&challenge_msg, &msg]);
        msg[MIC_OFFSET..MIC_OFFSET + 16].copy_from_slice(&mic);
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(
            verify(&auth, &msg, &nt, &challenge, None, &challenge_msg).map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn the_client_side_answers_a_challenge_the_server_side_accepts() {
        let challenge = [9u8; 8];
        let negotiate = negotiate_message();
        let flags = parse_negotiate(&negotiate).unwrap();
        let challenge_msg = challenge_message(flags, challenge, &names(), 133_000_000_000_000_000);
        let msg = authenticate_message(&challenge_msg, "carol", "BITS", "pw", [5; 8]).unwrap();
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(auth.user, "carol");
        let check = |password: &str| {
            verify(
                &auth,
                &msg,
                &nt_hash(password),
                &challenge,
                Some(&negotiate),
                &challenge_msg,
            )
            .map(|_| ())
        };
        assert_eq!(check("pw"), Ok(()));
        assert_eq!(check("Pw"), Err(NtlmError::BadProof));
    }

    /// The client blob's AV pairs come out of `parse_authenticate`, from a message the client
    /// helper built, and the message still verifies (the NTProofStr covers them).
    #[test]
    fn client_av_pairs_are_read() {
        let challenge = [4u8; 8];
        let challenge_msg = challenge_message(0, challenge, &names(), 133_000_000_000_000_000);
        let extra = ClientAvPairs {
            target_name: Some("HTTP/bits.example.test".into()),
            channel_bindings: Some([0xc1; 16]),
            av_flags: Some(0x4),
        };
        let msg = authenticate_message_with(&challenge_msg, "dave", "BITS", "pw", [2; 8], &extra)
            .unwrap();
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(auth.target_name.as_deref(), Some("HTTP/bits.example.test"));
        assert_eq!(auth.channel_bindings, Some([0xc1; 16]));
        assert_eq!(auth.av_flags, Some(0x4));
        let verdict = verify(
            &auth,
            &msg,
            &nt_hash("pw"),
            &challenge,
            None,
            &challenge_msg,
        );
        assert_eq!(verdict.map(|_| ()), Ok(()));
        // The server's own pairs are still there, before ours.
        let pairs = client_pairs(&auth.nt_response);
        assert_eq!(
            av_value(pairs, AV_NB_COMPUTER_NAME),
            Some(&utf16("BITSD")[..])
        );
        assert_eq!(av_value(pairs, AV_TIMESTAMP).map(<[u8]>::len), Some(8));

        // Without extras: nothing, and the blob is the server's target info as before.
        let plain = authenticate_message(&challenge_msg, "dave", "BITS", "pw", [2; 8]).unwrap();
        let auth = parse_authenticate(&plain).unwrap();
        assert_eq!(
            (auth.target_name, auth.channel_bindings, auth.av_flags),
            (None, None, None)
        );
        // All-zero bindings: a client that has none.
        let zero = ClientAvPairs {
            channel_bindings: Some([0; 16]),
            ..ClientAvPairs::default()
        };
        let msg =
            authenticate_message_with(&challenge_msg, "dave", "BITS", "pw", [2; 8], &zero).unwrap();
        assert_eq!(parse_authenticate(&msg).unwrap().channel_bindings, None);
    }

    /// Pairs of the wrong size, a target name that is not UTF-16, pairs running past the
    /// blob: refused or ignored, never a panic.
    #[test]
    fn malformed_client_av_pairs() {
        let with_pairs = |pairs: &[u8]| {
            let mut nt = vec![0u8; PROOF_LEN];
            nt.extend(hex(
                "0101000000000000 0000000000000000 1122334455667788 00000000",
            ));
            nt.extend_from_slice(pairs);
            authenticate("eve", "BITS", &nt)
        };
        let parse = |pairs: &str| parse_authenticate(&with_pairs(&hex(pairs)));
        assert!(matches!(
            parse("0a00 0f00 000000000000000000000000000000"),
            Err(NtlmError::Malformed(_))
        ));
        assert!(matches!(
            parse("0600 0300 010000"),
            Err(NtlmError::Malformed(_))
        ));
        assert!(matches!(
            parse("0900 0300 410042"),
            Err(NtlmError::Malformed(_))
        ));
        // A lone surrogate.
        assert!(matches!(
            parse("0900 0200 00d8"),
            Err(NtlmError::Malformed(_))
        ));
        // A length past the end: the pair is not there.
        let auth = parse("0900 ff00 4100").unwrap();
        assert_eq!(auth.target_name, None);
        // After MsvAvEOL nothing counts.
        let auth = parse("0000 0000 0600 0400 02000000").unwrap();
        assert_eq!(auth.av_flags, None);
    }

    /// [MS-NLMP] 4.2.4.4 (NTLMv2 with extended session security and key exchange): the
    /// client-to-server signing and sealing keys from RandomSessionKey 0x55…, the HMAC-MD5
    /// checksum over "Plaintext" with SeqNum 0, and the document's signature
    /// `01000000 7fb38ec5c55d4976 00000000`. The document's example is GSS_WrapEx, where the RC4
    /// handle has first sealed the 18 plaintext bytes; a `mechListMIC` is a GetMIC on a fresh
    /// handle, so `client_signature`'s checksum is the same HMAC under the keystream's start.
    #[test]
    fn ms_nlmp_4_2_4_4_signature() {
        use md5::Digest as _;
        let flags = 0xe28a_8233; // 33 82 8a e2: KEY_EXCH, 56, 128, ESS, SIGN, SEAL, …
        let session = Session {
            exported_key: [0x55; 16],
            flags,
        };
        let plaintext = utf16("Plaintext");
        let sign_key: [u8; 16] = md5::Md5::new()
            .chain_update([0x55; 16])
            .chain_update(CLIENT_SIGNING)
            .finalize()
            .into();
        assert_eq!(sign_key.to_vec(), hex("4788dc861b4782f35d43fd98fe1a2d39"));
        let seal_key: [u8; 16] = md5::Md5::new()
            .chain_update([0x55; 16])
            .chain_update(CLIENT_SEALING)
            .finalize()
            .into();
        assert_eq!(seal_key.to_vec(), hex("59f600973cc4960a25480a7c196e4c58"));
        let keystream = rc4(&seal_key, &[0; 26]);
        // The sealed data of the example: the keystream's first 18 bytes over the plaintext.
        let sealed: Vec<u8> = plaintext
            .iter()
            .zip(&keystream)
            .map(|(p, k)| p ^ k)
            .collect();
        assert_eq!(sealed, hex("54e50165bf1936dc996020c1811b0f06fb5f"));
        let signature = session.client_signature(&plaintext);
        assert_eq!(&signature[..4], &[1, 0, 0, 0]);
        assert_eq!(&signature[12..], &[0, 0, 0, 0], "SeqNum 0");
        let checksum: Vec<u8> = signature[4..12]
            .iter()
            .zip(&keystream[..8])
            .map(|(c, k)| c ^ k)
            .collect();
        assert_eq!(checksum, hex("70352851f2564309"));
        let wrapped: Vec<u8> = checksum
            .iter()
            .zip(&keystream[18..])
            .map(|(c, k)| c ^ k)
            .collect();
        let mut document = vec![1, 0, 0, 0];
        document.extend(&wrapped);
        document.extend([0; 4]);
        assert_eq!(document, hex("01000000 7fb38ec5c55d4976 00000000"));
    }

    proptest::proptest! {
        /// Untrusted tokens and challenges: no panic, and random bytes never authenticate.
        #[test]
        fn arbitrary_messages_never_panic_nor_verify(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            as_authenticate in proptest::prelude::any::<bool>(),
        ) {
            let mut data = data;
            if as_authenticate && data.len() >= 12 {
                // Often shaped like an AUTHENTICATE, so the field parsing is reached.
                data[..8].copy_from_slice(SIGNATURE);
                data[8..12].copy_from_slice(&AUTHENTICATE.to_le_bytes());
            }
            let _ = parse_negotiate(&data);
            let _ = authenticate_message(&data, "u", "d", "p", [0; 8]);
            if let Ok(auth) = parse_authenticate(&data) {
                let challenge = [7u8; 8];
                let challenge_msg = challenge_message(0, challenge, &names(), 0);
                let verdict = verify(&auth, &data, &nt_hash("x"), &challenge, None, &challenge_msg);
                proptest::prop_assert!(verdict.is_err());
            }
        }
    }

    fn names() -> ServerNames {
        ServerNames {
            domain: "BITS".into(),
            computer: "BITSD".into(),
        }
    }
}
