//! Accepting a client's Kerberos AP-REQ ([RFC 4120] 3.2.3), as HTTP Negotiate carries it
//! (SPNEGO NegTokenInit around a GSS-API krb5 token, [RFC 4559]; a bare krb5 token is taken
//! too): the ticket is decrypted with the service's key from the keytab, the authenticator with
//! the ticket's session key, and then the times, the names and the replay cache are checked.
//! The identity is the ticket's client principal.

use super::crypto::Key;
use super::der::{self, field, fields, DerError};
use super::keytab::Entry;

/// OID 1.3.6.1.5.5.2 (SPNEGO), DER contents.
const SPNEGO_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// OID 1.2.840.113554.1.2.2 (Kerberos 5), and the variant older Windows sends
/// (1.2.840.48018.1.2.2).
const KRB5_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
const KRB5_OID_MS: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// Key usages ([RFC 4120] 7.5.1): the ticket's encrypted part, the AP-REQ authenticator, the
/// AP-REP's encrypted part.
const USAGE_TICKET: u32 = 2;
const USAGE_AUTHENTICATOR: u32 = 11;
const USAGE_AP_REP: u32 = 12;
/// Allowed clock skew, seconds (Kerberos' usual five minutes).
pub const MAX_SKEW: i64 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KerberosError {
    #[error(transparent)]
    Der(#[from] DerError),
    #[error("not a Kerberos token (mechanism not offered)")]
    NotKerberos,
    #[error("ticket for {0}, which is not this service")]
    WrongService(String),
    #[error("no key in the keytab for {0} (encryption type {1}, version {2:?})")]
    NoKey(String, i32, Option<i64>),
    #[error(transparent)]
    Crypto(#[from] super::crypto::CryptoError),
    #[error("the authenticator names another client than the ticket")]
    ClientMismatch,
    #[error("ticket not valid now (expired or not yet valid)")]
    TicketTime,
    #[error("authenticator time is more than five minutes off")]
    Skew,
    #[error("authenticator replayed")]
    Replay,
    #[error("client realm {0} is not allowed")]
    Realm(String),
}

/// A client the service accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `name@REALM` (RFC 1964 display form).
    pub principal: String,
    pub client: ClientName,
    /// The authenticator's time (seconds, microseconds): what the replay cache keys on.
    pub ctime: i64,
    pub cusec: i64,
    /// The `Bnd` field of the authenticator's GSS checksum, when not all zeros.
    pub channel_bindings: Option<[u8; 16]>,
    /// The answer for the client (`WWW-Authenticate: Negotiate <it>` on the response): an
    /// AP-REP proving the service read the ticket (mutual authentication), wrapped as the
    /// request was (SPNEGO NegTokenResp, or a bare krb5 token).
    pub reply: Vec<u8>,
}

pub struct Acceptor {
    keys: Vec<Entry>,
    /// The service principal (`HTTP/host`) tickets must be for; `None`: any in the keytab.
    service: Option<String>,
    /// Client realms accepted; empty: any.
    realms: Vec<String>,
}

/// A client principal: its name components and realm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientName {
    pub components: Vec<String>,
    pub realm: String,
}

impl ClientName {
    /// RFC 1964 2.1.1: components joined with `/`, then `@REALM`; a `/`, `@` or `\` inside a
    /// component (and `@` or `\` in the realm) is escaped with `\`, so that `["alice", "admin"]`
    /// and `["alice/admin"]` stay two names.
    pub fn display(&self) -> String {
        let escape = |s: &str, special: &[char]| {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                if special.contains(&c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        };
        let name: Vec<String> = self
            .components
            .iter()
            .map(|c| escape(c, &['/', '@', '\\']))
            .collect();
        format!("{}@{}", name.join("/"), escape(&self.realm, &['@', '\\']))
    }
}

impl Acceptor {
    pub fn new(keys: Vec<Entry>, service: Option<String>, realms: Vec<String>) -> Acceptor {
        Acceptor {
            keys,
            service,
            realms,
        }
    }

    /// Checks a Negotiate token at Unix time `now`.
    pub fn accept(&self, token: &[u8], now: i64) -> Result<Accepted, KerberosError> {
        let (ap_req, wrapping) = ap_req_of(token)?;
        let ap = der::expect(der::expect(ap_req, 0x6e)?, 0x30)?;
        let ap = fields(ap)?;
        let ticket = der::expect(der::expect(field(&ap, 3)?, 0x61)?, 0x30)?;
        let ticket = fields(ticket)?;
        let realm = der::string(field(&ticket, 1)?)?;
        let sname = principal_name(field(&ticket, 2)?)?;
        if let Some(want) = &self.service {
            if !sname.eq_ignore_ascii_case(want) {
                return Err(KerberosError::WrongService(format!("{sname}@{realm}")));
            }
        }
        let (etype, kvno, cipher) = encrypted_data(field(&ticket, 3)?)?;
        let key = self
            .keys
            .iter()
            .find(|e| {
                e.name().eq_ignore_ascii_case(&sname)
                    && e.realm.eq_ignore_ascii_case(&realm)
                    && i64::from(e.key.enctype()) == etype
                    && kvno.is_none_or(|v| v == i64::from(e.kvno))
            })
            .ok_or_else(|| KerberosError::NoKey(format!("{sname}@{realm}"), etype as i32, kvno))?;
        let enc_ticket = key.key.decrypt(USAGE_TICKET, cipher)?;
        let part = fields(der::expect(der::expect(&enc_ticket, 0x63)?, 0x30)?)?;
        let session = fields(der::expect(field(&part, 1)?, 0x30)?)?;
        let session_key = Key::new(
            der::integer(field(&session, 0)?)? as i32,
            der::octets(field(&session, 1)?)?,
        )?;
        let crealm = der::string(field(&part, 2)?)?;
        let cname_parts = principal_parts(field(&part, 3)?)?;
        let cname = cname_parts.join("/");
        let authtime = der::time(field(&part, 5)?)?;
        let start = match part.get(6).copied().flatten() {
            Some(t) => der::time(t)?,
            None => authtime,
        };
        let end = der::time(field(&part, 7)?)?;
        if now + MAX_SKEW < start || now - MAX_SKEW > end {
            return Err(KerberosError::TicketTime);
        }
        let (a_etype, _, a_cipher) = encrypted_data(field(&ap, 4)?)?;
        if a_etype != i64::from(session_key.enctype()) {
            return Err(KerberosError::Crypto(
                super::crypto::CryptoError::UnsupportedEnctype(a_etype as i32),
            ));
        }
        let auth = session_key.decrypt(USAGE_AUTHENTICATOR, a_cipher)?;
        let auth = fields(der::expect(der::expect(&auth, 0x62)?, 0x30)?)?;
        if der::string(field(&auth, 1)?)? != crealm || principal_name(field(&auth, 2)?)? != cname {
            return Err(KerberosError::ClientMismatch);
        }
        let cusec = der::integer(field(&auth, 4)?)?;
        let ctime = der::time(field(&auth, 5)?)?;
        if (now - ctime).abs() > MAX_SKEW {
            return Err(KerberosError::Skew);
        }
        if !self.realms.is_empty() && !self.realms.iter().any(|r| r.eq_ignore_ascii_case(&crealm)) {
            return Err(KerberosError::Realm(crealm));
        }
        let channel_bindings = match auth.get(3).copied().flatten() {
            Some(cksum) => gss_bindings(cksum)?,
            None => None,
        };
        let client = ClientName {
            components: cname_parts,
            realm: crealm,
        };
        let reply = ap_rep(&session_key, ctime, cusec, wrapping)?;
        Ok(Accepted {
            principal: client.display(),
            client,
            ctime,
            cusec,
            channel_bindings,
            reply,
        })
    }
}

/// How the client wrapped its AP-REQ, so the AP-REP goes back the same way.
#[derive(Clone, Copy)]
struct Wrapping {
    spnego: bool,
    /// The krb5 mechanism OID the client used (the standard one or Microsoft's).
    mech: &'static [u8],
}

/// The AP-REQ inside a Negotiate token.
fn ap_req_of(token: &[u8]) -> Result<(&[u8], Wrapping), KerberosError> {
    let outer = der::expect(token, 0x60)?;
    let (oid, rest) = der::next(outer)?;
    if oid.tag != 0x06 {
        return Err(KerberosError::NotKerberos);
    }
    if oid.value == SPNEGO_OID {
        let init = der::expect(der::expect(rest, 0xa0)?, 0x30)?;
        let init = fields(init)?;
        let mech_token = der::octets(field(&init, 2)?)?;
        let (ap_req, inner) = ap_req_of(mech_token)?;
        return Ok((
            ap_req,
            Wrapping {
                spnego: true,
                ..inner
            },
        ));
    }
    let mech = if oid.value == KRB5_OID {
        KRB5_OID
    } else if oid.value == KRB5_OID_MS {
        KRB5_OID_MS
    } else {
        return Err(KerberosError::NotKerberos);
    };
    // TOK_ID 01 00: an AP-REQ.
    match rest {
        [0x01, 0x00, ap_req @ ..] => Ok((
            ap_req,
            Wrapping {
                spnego: false,
                mech,
            },
        )),
        _ => Err(KerberosError::NotKerberos),
    }
}

/// The AP-REP for an authenticator of `ctime`/`cusec` ([RFC 4120] 5.5.2), as a GSS krb5 token
/// (TOK_ID 02 00), inside an SPNEGO NegTokenResp (accept-completed) when the request was SPNEGO.
fn ap_rep(key: &Key, ctime: i64, cusec: i64, wrapping: Wrapping) -> Result<Vec<u8>, KerberosError> {
    use der::{context, tlv, write_integer, write_time};
    let mut part = context(0, &write_time(ctime));
    part.extend(context(1, &write_integer(cusec)));
    let enc_part = tlv(0x7b, &tlv(0x30, &part));
    let mut confounder = [0u8; 16];
    argon2::password_hash::rand_core::RngCore::fill_bytes(
        &mut argon2::password_hash::rand_core::OsRng,
        &mut confounder,
    );
    let cipher = key.encrypt(USAGE_AP_REP, &enc_part, confounder)?;
    let mut encrypted = context(0, &write_integer(i64::from(key.enctype())));
    encrypted.extend(context(2, &tlv(0x04, &cipher)));
    let mut rep = context(0, &write_integer(5));
    rep.extend(context(1, &write_integer(15)));
    rep.extend(context(2, &tlv(0x30, &encrypted)));
    let rep = tlv(0x6f, &tlv(0x30, &rep));
    let mut gss = tlv(0x06, wrapping.mech);
    gss.extend_from_slice(&[0x02, 0x00]);
    gss.extend(rep);
    let gss = tlv(0x60, &gss);
    if !wrapping.spnego {
        return Ok(gss);
    }
    let mut resp = context(0, &tlv(0x0a, &[0]));
    resp.extend(context(1, &tlv(0x06, wrapping.mech)));
    resp.extend(context(2, &tlv(0x04, &gss)));
    Ok(tlv(0xa1, &tlv(0x30, &resp)))
}

/// A PrincipalName's components joined with `/` (for comparisons only).
fn principal_name(input: &[u8]) -> Result<String, KerberosError> {
    Ok(principal_parts(input)?.join("/"))
}

/// The `Bnd` of an authenticator checksum of type 0x8003 (RFC 4121 4.1.1), when not zero.
fn gss_bindings(input: &[u8]) -> Result<Option<[u8; 16]>, KerberosError> {
    let f = fields(der::expect(input, 0x30)?)?;
    if der::integer(field(&f, 0)?)? != 0x8003 {
        return Ok(None);
    }
    let value = der::octets(field(&f, 1)?)?;
    if value.len() < 24 || value[..4] != 16u32.to_le_bytes() {
        return Err(DerError("GSS checksum").into());
    }
    let mut bnd = [0u8; 16];
    bnd.copy_from_slice(&value[4..20]);
    Ok((bnd != [0; 16]).then_some(bnd))
}

/// A PrincipalName's components.
fn principal_parts(input: &[u8]) -> Result<Vec<String>, KerberosError> {
    let name = fields(der::expect(input, 0x30)?)?;
    let mut rest = der::expect(field(&name, 1)?, 0x30)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let (tlv, after) = der::next(rest)?;
        if tlv.tag != 0x1b {
            return Err(DerError("name component").into());
        }
        parts.push(String::from_utf8(tlv.value.to_vec()).map_err(|_| DerError("name"))?);
        rest = after;
    }
    Ok(parts)
}

/// EncryptedData: encryption type, key version (if given), ciphertext.
fn encrypted_data(input: &[u8]) -> Result<(i64, Option<i64>, &[u8]), KerberosError> {
    let f = fields(der::expect(input, 0x30)?)?;
    let etype = der::integer(field(&f, 0)?)?;
    let kvno = f.get(1).copied().flatten().map(der::integer).transpose()?;
    Ok((etype, kvno, der::octets(field(&f, 2)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A real `curl --negotiate` token for `HTTP/localhost@TEST.BITS` from alice, issued by
    /// an MIT KDC on loopback at 2026-12-01 14:13 UTC, and that service's keytab.
    fn fixture() -> (Vec<u8>, Acceptor) {
        let token = base64::engine::general_purpose::STANDARD
            .decode(include_str!("testdata/curl-negotiate.b64").trim())
            .unwrap();
        let keys = super::super::keytab::parse(include_bytes!("testdata/http.keytab")).unwrap();
        (
            token,
            Acceptor::new(keys, Some("HTTP/localhost".into()), Vec::new()),
        )
    }

    const ISSUED: i64 = 1_796_134_416 + 60;

    proptest::proptest! {
        /// Untrusted tokens: never a panic, never accepted; also the real token cut short at
        /// any point, or with random bytes spliced in.
        #[test]
        fn arbitrary_tokens_never_panic_nor_pass(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200),
            cut in 0usize..1000,
        ) {
            let (token, acceptor) = fixture();
            proptest::prop_assert!(acceptor.accept(&noise, ISSUED).is_err());
            let mut spliced = token[..cut.min(token.len())].to_vec();
            spliced.extend_from_slice(&noise);
            if spliced != token {
                // A prefix of the real token plus noise could only pass if it rebuilt it.
                let _ = acceptor.accept(&spliced, ISSUED);
            }
        }
    }

    #[test]
    fn accepts_an_mit_ticket_once() {
        let (token, acceptor) = fixture();
        let accepted = acceptor.accept(&token, ISSUED).unwrap();
        assert_eq!(accepted.principal, "alice@TEST.BITS");
        // The reply is an SPNEGO NegTokenResp: accept-completed, with a krb5 AP-REP.
        assert_eq!(&accepted.reply[..1], &[0xa1]);
        // curl sends no channel bindings over plain HTTP.
        assert_eq!(accepted.channel_bindings, None);
    }

    /// Issue 25 finding 12: `["alice", "admin"]` and `["alice/admin"]` are two principals.
    #[test]
    fn principal_names_escape_their_separators() {
        let name = |c: &[&str], realm: &str| ClientName {
            components: c.iter().map(|s| s.to_string()).collect(),
            realm: realm.into(),
        };
        assert_eq!(name(&["alice", "admin"], "R").display(), "alice/admin@R");
        assert_eq!(name(&["alice/admin"], "R").display(), "alice\\/admin@R");
        assert_eq!(name(&["a@b"], "R").display(), "a\\@b@R");
        assert_eq!(name(&["a\\b"], "R@S").display(), "a\\\\b@R\\@S");
        assert_ne!(
            name(&["alice", "admin"], "R").display(),
            name(&["alice/admin"], "R").display()
        );
    }

    #[test]
    fn refuses_other_services_realms_times_and_keys() {
        let (token, _) = fixture();
        let keys = super::super::keytab::parse(include_bytes!("testdata/http.keytab")).unwrap();
        let other = Acceptor::new(keys.clone(), Some("HTTP/elsewhere".into()), Vec::new());
        assert!(matches!(
            other.accept(&token, ISSUED),
            Err(KerberosError::WrongService(_))
        ));
        let realm = Acceptor::new(keys.clone(), None, vec!["CORP.EXAMPLE".into()]);
        assert!(matches!(
            realm.accept(&token, ISSUED),
            Err(KerberosError::Realm(_))
        ));
        let fresh = Acceptor::new(keys.clone(), None, Vec::new());
        assert_eq!(
            fresh.accept(&token, ISSUED + 3600),
            Err(KerberosError::Skew)
        );
        assert_eq!(
            fresh.accept(&token, ISSUED + 3 * 86_400),
            Err(KerberosError::TicketTime)
        );
        // Another key for the same name: the ticket does not decrypt.
        let mut wrong = keys;
        for e in &mut wrong {
            e.key = Key::new(
                e.key.enctype(),
                &vec![1u8; if e.key.enctype() == 18 { 32 } else { 16 }],
            )
            .unwrap();
        }
        let wrong = Acceptor::new(wrong, None, Vec::new());
        assert!(matches!(
            wrong.accept(&token, ISSUED),
            Err(KerberosError::Crypto(_))
        ));
        // A byte flipped anywhere: refused, or (in the few fields Kerberos does not protect,
        // such as the mechanism list or the AP options) taken as the same client with the same
        // authenticator, which the replay cache then takes once.
        let fresh = Acceptor::new(
            super::super::keytab::parse(include_bytes!("testdata/http.keytab")).unwrap(),
            None,
            Vec::new(),
        );
        let original = fresh.accept(&token, ISSUED).unwrap();
        for i in 0..token.len() {
            let mut bad = token.clone();
            bad[i] ^= 0x40;
            if let Ok(a) = fresh.accept(&bad, ISSUED) {
                assert_eq!(a.principal, "alice@TEST.BITS", "byte {i}");
                assert_eq!(
                    (a.ctime, a.cusec),
                    (original.ctime, original.cusec),
                    "byte {i}"
                );
            }
        }
    }
}
