//! Accepting a client's Kerberos AP-REQ ([RFC 4120] 3.2.3), as HTTP Negotiate carries it
//! (SPNEGO NegTokenInit around a GSS-API krb5 token, [RFC 4559]; a bare krb5 token is taken
//! too): the ticket is decrypted with the service's key from the keytab, the authenticator with
//! the ticket's session key, and then the times and the names are checked. The identity is the
//! ticket's client principal. Replays are the caller's to refuse, with a cache shared by every
//! acceptor (`Accepted::ctime`/`cusec` with the principal identify an authenticator).
//!
//! The messages are picky-krb's, read and written by picky-asn1-der, and so is the cryptography
//! (the AES enctypes of [RFC 3962] with their key usages). The exception: the four messages that
//! hold principal names are declared here over picky-asn1's wrappers, because picky-krb's
//! KerberosString is an IA5String and refuses the UTF-8 names Windows sends for users whose
//! names are not ASCII ([MS-KILE] 3.1.5.7 makes UTF-8 the encoding of every name).

use picky_asn1::wrapper::{
    Asn1SequenceOf, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag10,
    ExplicitContextTag2, ExplicitContextTag3, ExplicitContextTag4, ExplicitContextTag5,
    ExplicitContextTag6, ExplicitContextTag7, ExplicitContextTag8, ExplicitContextTag9,
    IntegerAsn1, ObjectIdentifierAsn1, OctetStringAsn1, Optional,
};
use picky_asn1_der::application_tag::ApplicationTag;
use picky_asn1_der::Asn1RawDer;
use picky_krb::constants::gss_api::{AP_REP_TOKEN_ID, AP_REQ_TOKEN_ID};
use picky_krb::constants::key_usages::{AP_REP_ENC, AP_REQ_AUTHENTICATOR, TICKET_REP};
use picky_krb::constants::types::{
    AP_REQ_MSG_TYPE, AUTHENTICATOR_TYPE, ENC_TICKET_PART_TYPE, TICKET_TYPE,
};
use picky_krb::data_types::{
    ApOptions, AuthorizationData, Checksum, EncApRepPart, EncApRepPartInner, EncryptedData,
    EncryptionKey, HostAddresses, KerberosFlags, KerberosTime, Microseconds, TransitedEncoding,
};
use picky_krb::gss_api::{ApplicationTag0, KrbMessage, NegTokenTarg, NegTokenTarg1};
use picky_krb::messages::{ApRep, ApRepInner};
use serde::Deserialize;

use super::keytab::{Entry, Key};

/// Allowed clock skew, seconds (Kerberos' usual five minutes).
pub const MAX_SKEW: i64 = 300;
/// The GSS-API checksum of an AP-REQ authenticator ([RFC 4121] 4.1.1): `Lgth` (4 bytes, little
/// endian, always 16), `Bnd` (MD5 of the channel bindings, zero without them), `Flags`, then
/// optional delegation fields.
const GSS_CHECKSUM: i64 = 0x8003;
const GSS_CHECKSUM_MIN: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KerberosError {
    /// A part of the token that does not decode (the error names the part, never its bytes).
    #[error("malformed Kerberos token: {0}")]
    Der(&'static str),
    #[error("not a Kerberos token (mechanism not offered)")]
    NotKerberos,
    #[error("ticket for {0}, which is not this service")]
    WrongService(String),
    #[error("no key in the keytab for {0} (encryption type {1}, version {2:?})")]
    NoKey(String, i32, Option<i64>),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("the authenticator names another client than the ticket")]
    ClientMismatch,
    #[error("ticket not valid now (expired or not yet valid)")]
    TicketTime,
    #[error("authenticator time is more than five minutes off")]
    Skew,
    /// Not raised here: the caller's replay cache reports it.
    #[error("authenticator replayed")]
    Replay,
    #[error("client realm {0} is not allowed")]
    Realm(String),
    #[error("malformed GSS-API checksum in the authenticator")]
    BadChecksum,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("encryption type {0} is not supported (only AES with HMAC-SHA1)")]
    UnsupportedEnctype(i64),
    #[error("integrity check failed (wrong key or altered data)")]
    Integrity,
    #[error("ciphertext cannot be decrypted: {0}")]
    Cipher(String),
}

impl From<picky_krb::crypto::KerberosCryptoError> for CryptoError {
    fn from(e: picky_krb::crypto::KerberosCryptoError) -> CryptoError {
        match e {
            picky_krb::crypto::KerberosCryptoError::IntegrityCheck => CryptoError::Integrity,
            // Lengths and key sizes: picky-krb's message holds numbers, no data.
            other => CryptoError::Cipher(other.to_string()),
        }
    }
}

/// A client principal: its name components and its realm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientName {
    pub components: Vec<String>,
    pub realm: String,
}

impl ClientName {
    /// The display form of [RFC 1964] 2.1.1: components joined with `/`, then `@REALM`; a `/`,
    /// `@` or `\` inside a component, and an `@` or `\` inside the realm, escaped with `\`, so
    /// that no two principals display alike.
    pub fn display(&self) -> String {
        let mut out = String::new();
        for (i, component) in self.components.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            escape_into(&mut out, component, &['/', '@', '\\']);
        }
        out.push('@');
        escape_into(&mut out, &self.realm, &['@', '\\']);
        out
    }
}

fn escape_into(out: &mut String, text: &str, special: &[char]) {
    for c in text.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A client the service accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `client.display()`: `name@REALM`.
    pub principal: String,
    pub client: ClientName,
    /// The authenticator's time and microseconds: with the principal, what a replay cache keys.
    pub ctime: i64,
    pub cusec: i64,
    /// `Bnd` of the authenticator's GSS-API checksum (MD5 of the client's channel bindings),
    /// when it has one that is not all zero.
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

impl Acceptor {
    pub fn new(keys: Vec<Entry>, service: Option<String>, realms: Vec<String>) -> Acceptor {
        Acceptor {
            keys,
            service,
            realms,
        }
    }

    /// Checks a Negotiate token at Unix time `now`: everything but replays.
    pub fn accept(&self, token: &[u8], now: i64) -> Result<Accepted, KerberosError> {
        let (ap_req, wrapping) = ap_req_of(token)?;
        let ap = ap_req.0;
        if integer(&ap.msg_type.0)? != i64::from(AP_REQ_MSG_TYPE) {
            return Err(KerberosError::Der("AP-REQ message type"));
        }
        let ticket = ap.ticket.0 .0;
        let realm = ticket.realm.0 .0;
        let sname = joined(&ticket.sname.0);
        if let Some(want) = &self.service {
            if !sname.eq_ignore_ascii_case(want) {
                return Err(KerberosError::WrongService(printable(&format!(
                    "{sname}@{realm}"
                ))));
            }
        }
        let sealed = &ticket.enc_part.0;
        let etype = integer(&sealed.etype.0)?;
        let kvno = sealed.kvno.0.as_ref().map(|v| integer(&v.0)).transpose()?;
        let entry = self
            .keys
            .iter()
            .find(|e| {
                e.name().eq_ignore_ascii_case(&sname)
                    && e.realm.eq_ignore_ascii_case(&realm)
                    && i64::from(e.key.enctype()) == etype
                    && kvno.is_none_or(|v| v == i64::from(e.kvno))
            })
            .ok_or_else(|| {
                KerberosError::NoKey(
                    printable(&format!("{sname}@{realm}")),
                    i32::try_from(etype).unwrap_or(-1),
                    kvno,
                )
            })?;
        let part: EncTicketPart = decode(
            &decrypt(&entry.key, TICKET_REP, &sealed.cipher.0 .0)?,
            "EncTicketPart",
        )?;
        let part = part.0;
        let session = part.key.0;
        let session_key = Key::new(
            i32::try_from(integer(&session.key_type.0)?).unwrap_or(-1),
            &session.key_value.0 .0,
        )
        .ok_or(CryptoError::UnsupportedEnctype(integer(
            &session.key_type.0,
        )?))?;
        let client = ClientName {
            components: names(&part.cname.0),
            realm: part.crealm.0 .0,
        };
        let authtime = time(&part.auth_time.0)?;
        let start = match &part.starttime.0 {
            Some(t) => time(&t.0)?,
            None => authtime,
        };
        let end = time(&part.endtime.0)?;
        if now + MAX_SKEW < start || now - MAX_SKEW > end {
            return Err(KerberosError::TicketTime);
        }
        let sealed = &ap.authenticator.0;
        let a_etype = integer(&sealed.etype.0)?;
        if a_etype != i64::from(session_key.enctype()) {
            return Err(CryptoError::UnsupportedEnctype(a_etype).into());
        }
        let auth: Authenticator = decode(
            &decrypt(&session_key, AP_REQ_AUTHENTICATOR, &sealed.cipher.0 .0)?,
            "Authenticator",
        )?;
        let auth = auth.0;
        if auth.crealm.0 .0 != client.realm || names(&auth.cname.0) != client.components {
            return Err(KerberosError::ClientMismatch);
        }
        let cusec = integer(&auth.cusec.0)?;
        let ctime = time(&auth.ctime.0)?;
        if (now - ctime).abs() > MAX_SKEW {
            return Err(KerberosError::Skew);
        }
        if !self.realms.is_empty()
            && !self
                .realms
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&client.realm))
        {
            return Err(KerberosError::Realm(printable(&client.realm)));
        }
        let channel_bindings = match &auth.cksum.0 {
            Some(c) => channel_bindings(&c.0)?,
            None => None,
        };
        let reply = ap_rep(&session_key, &auth.ctime.0, &auth.cusec.0, &wrapping)?;
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

/// `Bnd` of a GSS-API checksum ([RFC 4121] 4.1.1.2); `None` for another checksum type or
/// all-zero bindings (the client had none).
fn channel_bindings(cksum: &Checksum) -> Result<Option<[u8; 16]>, KerberosError> {
    if integer(&cksum.cksumtype.0)? != GSS_CHECKSUM {
        return Ok(None);
    }
    let value = &cksum.checksum.0 .0;
    if value.len() < GSS_CHECKSUM_MIN || value[..4] != 16u32.to_le_bytes() {
        return Err(KerberosError::BadChecksum);
    }
    let mut bnd = [0u8; 16];
    bnd.copy_from_slice(&value[4..20]);
    Ok((bnd != [0; 16]).then_some(bnd))
}

/// `text` with control characters written as `\u{..}`: names from a token that nothing has
/// authenticated yet go into logs only so.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_unicode().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// KerberosString as it is sent: UTF-8 ([MS-KILE] 3.1.5.7), of which IA5 (ASCII) is a part.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KerberosString(String);

impl<'de> Deserialize<'de> for KerberosString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KerberosString;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a UTF-8 KerberosString")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<KerberosString, E> {
                self.visit_byte_buf(v.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<KerberosString, E> {
                String::from_utf8(v)
                    .map(KerberosString)
                    .map_err(|_| E::custom("KerberosString is not UTF-8"))
            }
        }
        // picky-asn1-der reads a primitive string element (GeneralString among them) this way.
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// picky-krb's PrincipalName, TicketInner, ApReqInner, EncTicketPartInner and
/// AuthenticatorInner ([RFC 4120] 5.2.2, 5.3, 5.5.1), with [`KerberosString`] for the names.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct PrincipalName {
    name_type: ExplicitContextTag0<IntegerAsn1>,
    name_string: ExplicitContextTag1<Asn1SequenceOf<KerberosString>>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct TicketInner {
    tkt_vno: ExplicitContextTag0<IntegerAsn1>,
    realm: ExplicitContextTag1<KerberosString>,
    sname: ExplicitContextTag2<PrincipalName>,
    enc_part: ExplicitContextTag3<EncryptedData>,
}
type Ticket = ApplicationTag<TicketInner, TICKET_TYPE>;

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct ApReqInner {
    pvno: ExplicitContextTag0<IntegerAsn1>,
    msg_type: ExplicitContextTag1<IntegerAsn1>,
    ap_options: ExplicitContextTag2<ApOptions>,
    ticket: ExplicitContextTag3<Ticket>,
    authenticator: ExplicitContextTag4<EncryptedData>,
}
type ApReq = ApplicationTag<ApReqInner, AP_REQ_MSG_TYPE>;

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct EncTicketPartInner {
    flags: ExplicitContextTag0<KerberosFlags>,
    key: ExplicitContextTag1<EncryptionKey>,
    crealm: ExplicitContextTag2<KerberosString>,
    cname: ExplicitContextTag3<PrincipalName>,
    transited: ExplicitContextTag4<TransitedEncoding>,
    auth_time: ExplicitContextTag5<KerberosTime>,
    starttime: Optional<Option<ExplicitContextTag6<KerberosTime>>>,
    endtime: ExplicitContextTag7<KerberosTime>,
    #[serde(default)]
    renew_till: Optional<Option<ExplicitContextTag8<KerberosTime>>>,
    #[serde(default)]
    caddr: Optional<Option<ExplicitContextTag9<HostAddresses>>>,
    #[serde(default)]
    authorization_data: Optional<Option<ExplicitContextTag10<AuthorizationData>>>,
}
type EncTicketPart = ApplicationTag<EncTicketPartInner, ENC_TICKET_PART_TYPE>;

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct AuthenticatorInner {
    authenticator_vno: ExplicitContextTag0<IntegerAsn1>,
    crealm: ExplicitContextTag1<KerberosString>,
    cname: ExplicitContextTag2<PrincipalName>,
    cksum: Optional<Option<ExplicitContextTag3<Checksum>>>,
    cusec: ExplicitContextTag4<Microseconds>,
    ctime: ExplicitContextTag5<KerberosTime>,
    #[serde(default)]
    subkey: Optional<Option<ExplicitContextTag6<EncryptionKey>>>,
    #[serde(default)]
    seq_number: Optional<Option<ExplicitContextTag7<IntegerAsn1>>>,
    #[serde(default)]
    authorization_data: Optional<Option<ExplicitContextTag8<AuthorizationData>>>,
}
type Authenticator = ApplicationTag<AuthenticatorInner, AUTHENTICATOR_TYPE>;

fn names(name: &PrincipalName) -> Vec<String> {
    name.name_string.0 .0.iter().map(|s| s.0.clone()).collect()
}

/// A service principal's components joined with `/`, as the keytab's names are compared.
fn joined(name: &PrincipalName) -> String {
    names(name).join("/")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, KerberosError> {
    picky_asn1_der::from_bytes(bytes).map_err(|_| KerberosError::Der(what))
}

/// An INTEGER that fits 64 bits.
fn integer(n: &IntegerAsn1) -> Result<i64, KerberosError> {
    let bytes = n.as_signed_bytes_be();
    if bytes.len() > 8 {
        return Err(KerberosError::Der("integer size"));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    Ok(bytes
        .iter()
        .fold(if negative { -1i64 } else { 0 }, |acc, &b| {
            (acc << 8) | i64::from(b)
        }))
}

/// A KerberosTime as Unix seconds.
fn time(t: &KerberosTime) -> Result<i64, KerberosError> {
    time::OffsetDateTime::try_from(t.0.clone())
        .map(|t| t.unix_timestamp())
        .map_err(|_| KerberosError::Der("time"))
}

/// Decrypts and checks a ciphertext of `key` for `usage`. The integrity check is done here, in
/// constant time: picky-krb's own `decrypt` compares the HMAC with `!=`.
fn decrypt(key: &Key, usage: i32, sealed: &[u8]) -> Result<Vec<u8>, KerberosError> {
    let cipher = key.suite().cipher();
    let opened = cipher
        .decrypt_no_checksum(key.bytes(), usage, sealed)
        .map_err(CryptoError::from)?;
    let mut signed = opened.confounder;
    signed.extend_from_slice(&opened.plaintext);
    let mac = cipher
        .encryption_checksum(key.bytes(), usage, &signed)
        .map_err(CryptoError::from)?;
    if !bits_proto::secret::constant_time_eq(&mac, &opened.checksum) {
        return Err(CryptoError::Integrity.into());
    }
    Ok(opened.plaintext)
}

/// How the client wrapped its AP-REQ, so the AP-REP goes back the same way.
struct Wrapping {
    spnego: bool,
    /// The krb5 mechanism OID the client used (the standard one or Microsoft's).
    mech: ObjectIdentifierAsn1,
}

/// The AP-REQ inside a Negotiate token: a GSS-API krb5 token ([RFC 4121] 4.1: `[APPLICATION 0]
/// { OID, TOK_ID 01 00, AP-REQ }`), bare or as the mechToken of an SPNEGO NegTokenInit.
fn ap_req_of(token: &[u8]) -> Result<(ApReq, Wrapping), KerberosError> {
    if let Some(init) = crate::auth::spnego::neg_token_init(token) {
        let inner = init.mech_token.0.ok_or(KerberosError::NotKerberos)?.0 .0;
        let (ap_req, wrapping) = krb5_token(&inner)?;
        return Ok((
            ap_req,
            Wrapping {
                spnego: true,
                ..wrapping
            },
        ));
    }
    krb5_token(token)
}

fn krb5_token(token: &[u8]) -> Result<(ApReq, Wrapping), KerberosError> {
    // The mechanism OID first: anything but krb5 is not ours, whatever follows. picky-asn1-der
    // reads the [APPLICATION 0] header as a SEQUENCE's and stops after the one field asked
    // for (picky-krb's `decode_application_krb_message` reads it so too).
    #[derive(Deserialize)]
    struct Head {
        oid: ObjectIdentifierAsn1,
    }
    if token.first() != Some(&0x60) {
        return Err(KerberosError::NotKerberos);
    }
    let head: Head = picky_asn1_der::from_bytes(token).map_err(|_| KerberosError::NotKerberos)?;
    let krb5 = [
        picky_asn1_x509::oids::krb5(),
        picky_asn1_x509::oids::ms_krb5(),
    ];
    if !krb5.contains(&head.oid.0) {
        return Err(KerberosError::NotKerberos);
    }
    let message = KrbMessage::<ApReq>::decode_application_krb_message(token)
        .map_err(|_| KerberosError::Der("GSS-API krb5 token"))?
        .0;
    if message.krb5_token_id != AP_REQ_TOKEN_ID {
        return Err(KerberosError::NotKerberos);
    }
    Ok((
        message.krb_msg,
        Wrapping {
            spnego: false,
            mech: message.krb5_oid,
        },
    ))
}

/// The AP-REP for an authenticator of `ctime`/`cusec` ([RFC 4120] 5.5.2), as a GSS krb5 token
/// (TOK_ID 02 00), inside an SPNEGO NegTokenResp (accept-completed) when the request was SPNEGO.
fn ap_rep(
    key: &Key,
    ctime: &KerberosTime,
    cusec: &IntegerAsn1,
    wrapping: &Wrapping,
) -> Result<Vec<u8>, KerberosError> {
    let part = EncApRepPart::from(EncApRepPartInner {
        ctime: ExplicitContextTag0(ctime.clone()),
        cusec: ExplicitContextTag1(cusec.clone()),
        subkey: Optional(None),
        seq_number: Optional(None),
    });
    let part = to_der(&part)?;
    // A random confounder inside: picky-krb draws it from the OS.
    let cipher = key
        .suite()
        .cipher()
        .encrypt(key.bytes(), AP_REP_ENC, &part)
        .map_err(CryptoError::from)?;
    let rep = ApRep::from(ApRepInner {
        pvno: ExplicitContextTag0(int(5)),
        msg_type: ExplicitContextTag1(int(15)),
        enc_part: ExplicitContextTag2(EncryptedData {
            etype: ExplicitContextTag0(int(i64::from(key.enctype()))),
            kvno: Optional(None),
            cipher: ExplicitContextTag2(OctetStringAsn1(cipher)),
        }),
    });
    let gss = to_der(&ApplicationTag0(KrbMessage {
        krb5_oid: wrapping.mech.clone(),
        krb5_token_id: AP_REP_TOKEN_ID,
        krb_msg: rep,
    }))?;
    if !wrapping.spnego {
        return Ok(gss);
    }
    to_der(&NegTokenTarg1::from(NegTokenTarg {
        // ENUMERATED accept-completed, which picky-krb leaves as raw DER.
        neg_result: Optional(Some(ExplicitContextTag0(Asn1RawDer(vec![0x0a, 1, 0])))),
        supported_mech: Optional(Some(ExplicitContextTag1(wrapping.mech.clone()))),
        response_token: Optional(Some(ExplicitContextTag2(OctetStringAsn1(gss)))),
        mech_list_mic: Optional(None),
    }))
}

fn int(n: i64) -> IntegerAsn1 {
    IntegerAsn1::from_bytes_be_signed(n.to_be_bytes().to_vec())
}

fn to_der<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, KerberosError> {
    picky_asn1_der::to_vec(value).map_err(|_| KerberosError::Der("AP-REP encoding"))
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
    fn accepts_an_mit_ticket() {
        let (token, acceptor) = fixture();
        let accepted = acceptor.accept(&token, ISSUED).unwrap();
        assert_eq!(accepted.principal, "alice@TEST.BITS");
        assert_eq!(
            accepted.client,
            ClientName {
                components: vec!["alice".into()],
                realm: "TEST.BITS".into()
            }
        );
        assert!((accepted.ctime - 1_796_134_416).abs() <= MAX_SKEW);
        assert!((0..1_000_000).contains(&accepted.cusec));
        // curl over plain HTTP binds no channel: Bnd is zero.
        assert_eq!(accepted.channel_bindings, None);
        // The reply is an SPNEGO NegTokenResp: accept-completed, with a krb5 AP-REP.
        assert_eq!(&accepted.reply[..1], &[0xa1]);
        // Replays are the caller's: the acceptor takes the same token again.
        assert_eq!(
            acceptor.accept(&token, ISSUED).unwrap().principal,
            accepted.principal
        );
    }

    /// The AP-REP decrypts with the ticket's session key to the authenticator's ctime/cusec.
    #[test]
    fn the_reply_is_an_ap_rep_for_the_authenticator() {
        let (token, acceptor) = fixture();
        let accepted = acceptor.accept(&token, ISSUED).unwrap();
        let resp: NegTokenTarg1 = picky_asn1_der::from_bytes(&accepted.reply).unwrap();
        let gss = resp.0.response_token.0.unwrap().0 .0;
        let rep = KrbMessage::<ApRep>::decode_application_krb_message(&gss)
            .unwrap()
            .0;
        assert_eq!(rep.krb5_token_id, AP_REP_TOKEN_ID);
        let session = session_key(&token, &acceptor);
        let sealed = &rep.krb_msg.0.enc_part.0;
        let part: EncApRepPart = picky_asn1_der::from_bytes(
            &decrypt(&session, AP_REP_ENC, &sealed.cipher.0 .0).unwrap(),
        )
        .unwrap();
        assert_eq!(time(&part.0.ctime.0).unwrap(), accepted.ctime);
        assert_eq!(integer(&part.0.cusec.0).unwrap(), accepted.cusec);
    }

    /// The ticket's session key, through the service key.
    fn session_key(token: &[u8], acceptor: &Acceptor) -> Key {
        let (ap, _) = ap_req_of(token).unwrap();
        let sealed = ap.0.ticket.0 .0.enc_part.0;
        let key = &acceptor.keys[0].key;
        let part: EncTicketPart =
            picky_asn1_der::from_bytes(&decrypt(key, TICKET_REP, &sealed.cipher.0 .0).unwrap())
                .unwrap();
        let k = part.0.key.0;
        Key::new(integer(&k.key_type.0).unwrap() as i32, &k.key_value.0 .0).unwrap()
    }

    /// The real token with its ticket and authenticator plaintexts changed by `edit` and
    /// sealed again (same lengths, so the DER around them stays as it was).
    fn resealed(edit: impl Fn(&mut Vec<u8>, i32)) -> (Vec<u8>, Acceptor) {
        let (mut token, acceptor) = fixture();
        let session = session_key(&token, &acceptor);
        let (ap, _) = ap_req_of(&token).unwrap();
        let service = acceptor.keys[0].key.clone();
        for (key, usage, sealed) in [
            (
                &service,
                TICKET_REP,
                ap.0.ticket.0 .0.enc_part.0.cipher.0 .0.clone(),
            ),
            (
                &session,
                AP_REQ_AUTHENTICATOR,
                ap.0.authenticator.0.cipher.0 .0.clone(),
            ),
        ] {
            let mut plain = decrypt(key, usage, &sealed).unwrap();
            edit(&mut plain, usage);
            let again = key
                .suite()
                .cipher()
                .encrypt(key.bytes(), usage, &plain)
                .unwrap();
            assert_eq!(again.len(), sealed.len());
            let at = token
                .windows(sealed.len())
                .position(|w| w == sealed)
                .unwrap();
            token[at..at + sealed.len()].copy_from_slice(&again);
        }
        (token, acceptor)
    }

    fn replace(plain: &mut [u8], from: &[u8], to: &[u8]) {
        let at = plain.windows(from.len()).position(|w| w == from).unwrap();
        plain[at..at + to.len()].copy_from_slice(to);
    }

    /// Windows sends UTF-8 names ([MS-KILE] 3.1.5.7); picky-krb's IA5String would refuse them.
    #[test]
    fn accepts_utf8_names() {
        let (token, acceptor) =
            resealed(|plain, _| replace(plain, b"alice", "al\u{e9}x".as_bytes()));
        let accepted = acceptor.accept(&token, ISSUED).unwrap();
        assert_eq!(accepted.principal, "al\u{e9}x@TEST.BITS");
        // Not UTF-8: refused.
        let (token, acceptor) = resealed(|plain, _| replace(plain, b"alice", b"al\xffce"));
        assert_eq!(
            acceptor.accept(&token, ISSUED),
            Err(KerberosError::Der("EncTicketPart"))
        );
    }

    #[test]
    fn principal_display_escapes_separators() {
        let name = |components: &[&str], realm: &str| ClientName {
            components: components.iter().map(|c| c.to_string()).collect(),
            realm: realm.into(),
        };
        assert_eq!(name(&["alice", "admin"], "R").display(), "alice/admin@R");
        assert_eq!(name(&["alice/admin"], "R").display(), "alice\\/admin@R");
        assert_eq!(name(&["a@b", "c\\d"], "R").display(), "a\\@b/c\\\\d@R");
        assert_eq!(name(&["x"], "E@V\\L/R").display(), "x@E\\@V\\\\L/R");
        // A principal with a `/` in a component cannot pass for a two-component one.
        let (token, acceptor) = resealed(|plain, _| replace(plain, b"alice", b"al/ce"));
        assert_eq!(
            acceptor.accept(&token, ISSUED).unwrap().principal,
            "al\\/ce@TEST.BITS"
        );
    }

    /// The GSS-API checksum (type 0x8003) of the authenticator: Bnd comes out; a short one or a
    /// wrong Lgth is refused.
    #[test]
    fn channel_bindings_from_the_gss_checksum() {
        let checksum = |value: Vec<u8>| Checksum {
            cksumtype: ExplicitContextTag0(int(GSS_CHECKSUM)),
            checksum: ExplicitContextTag1(OctetStringAsn1(value)),
        };
        let mut value = 16u32.to_le_bytes().to_vec();
        value.extend([0xab; 16]);
        value.extend(0x22u32.to_le_bytes());
        assert_eq!(
            channel_bindings(&checksum(value.clone())),
            Ok(Some([0xab; 16]))
        );
        let mut zero = value.clone();
        zero[4..20].fill(0);
        assert_eq!(channel_bindings(&checksum(zero)), Ok(None));
        assert_eq!(
            channel_bindings(&checksum(value[..23].to_vec())),
            Err(KerberosError::BadChecksum)
        );
        let mut lgth = value.clone();
        lgth[0] = 15;
        assert_eq!(
            channel_bindings(&checksum(lgth)),
            Err(KerberosError::BadChecksum)
        );
        let other = Checksum {
            cksumtype: ExplicitContextTag0(int(16)),
            checksum: ExplicitContextTag1(OctetStringAsn1(vec![1; 12])),
        };
        assert_eq!(channel_bindings(&other), Ok(None));
        // In a real token: curl's checksum carries a zero Bnd; set one, and it comes out.
        let (token, acceptor) = resealed(|plain, usage| {
            if usage == AP_REQ_AUTHENTICATOR {
                let at = plain
                    .windows(4)
                    .position(|w| w == 16u32.to_le_bytes())
                    .unwrap();
                plain[at + 4..at + 20].fill(0x5a);
            }
        });
        assert_eq!(
            acceptor.accept(&token, ISSUED).unwrap().channel_bindings,
            Some([0x5a; 16])
        );
    }

    #[test]
    fn unauthenticated_names_are_logged_printable() {
        assert_eq!(printable("HTTP/x\x1b[2J@R\n"), "HTTP/x\\u{1b}[2J@R\\u{a}");
        assert_eq!(printable("caf\u{e9}"), "caf\u{e9}");
    }

    #[test]
    fn refuses_other_services_realms_times_and_keys() {
        let (token, _) = fixture();
        let keys = super::super::keytab::parse(include_bytes!("testdata/http.keytab")).unwrap();
        let other = Acceptor::new(keys.clone(), Some("HTTP/elsewhere".into()), Vec::new());
        assert_eq!(
            other.accept(&token, ISSUED),
            Err(KerberosError::WrongService(
                "HTTP/localhost@TEST.BITS".into()
            ))
        );
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
        let mut wrong = keys.clone();
        for e in &mut wrong {
            e.key = Key::new(
                e.key.enctype(),
                &vec![1u8; if e.key.enctype() == 18 { 32 } else { 16 }],
            )
            .unwrap();
        }
        let wrong = Acceptor::new(wrong, None, Vec::new());
        assert_eq!(
            wrong.accept(&token, ISSUED),
            Err(KerberosError::Crypto(CryptoError::Integrity))
        );
        let none = Acceptor::new(Vec::new(), None, Vec::new());
        assert!(matches!(
            none.accept(&token, ISSUED),
            Err(KerberosError::NoKey(_, 18, Some(2)))
        ));
        // A byte flipped anywhere: refused, or taken as the same client and authenticator.
        // Only framing outside the encrypted parts can change so (the mechanism list, the AP
        // options, and the tag classes and some container lengths, which picky-asn1-der does
        // not hold to DER's letter); a flip inside either ciphertext never passes.
        let fresh = Acceptor::new(keys, None, Vec::new());
        let want = fresh.accept(&token, ISSUED).unwrap();
        let (ap, _) = ap_req_of(&token).unwrap();
        let sealed = [
            ap.0.ticket.0 .0.enc_part.0.cipher.0 .0.clone(),
            ap.0.authenticator.0.cipher.0 .0.clone(),
        ]
        .map(|c| {
            let at = token.windows(c.len()).position(|w| w == c).unwrap();
            at..at + c.len()
        });
        let mut accepted = 0;
        for i in 0..token.len() {
            let mut bad = token.clone();
            bad[i] ^= 0x40;
            if let Ok(a) = fresh.accept(&bad, ISSUED) {
                assert_eq!(
                    (&a.principal, a.ctime, a.cusec),
                    (&want.principal, want.ctime, want.cusec),
                    "byte {i}"
                );
                assert!(
                    !sealed.iter().any(|r| r.contains(&i)),
                    "ciphertext byte {i}"
                );
                accepted += 1;
            }
        }
        assert!(
            accepted < token.len() / 4,
            "{accepted} altered tokens accepted"
        );
    }
}
