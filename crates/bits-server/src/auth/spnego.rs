//! SPNEGO ([RFC 4178]) as HTTP Negotiate carries NTLM when Kerberos is not available (Windows'
//! fallback): the NTLM message inside a NegTokenInit or NegTokenResp, and the server's
//! NegTokenResp around its answer. Kerberos inside SPNEGO is the acceptor's business; it reads
//! the NegTokenInit through [`neg_token_init`] too.
//!
//! The tokens are picky-krb's `gss_api` types, read and written by picky-asn1-der.

use base64::Engine as _;
use picky_asn1::wrapper::{
    Asn1SequenceOf, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2,
    ExplicitContextTag3, ObjectIdentifierAsn1, OctetStringAsn1, Optional,
};
use picky_asn1_der::Asn1RawDer;
use picky_krb::gss_api::{GssApiNegInit, MechTypeList, NegTokenInit, NegTokenTarg, NegTokenTarg1};

/// OID 1.3.6.1.4.1.311.2.2.10 (NTLMSSP), DER contents.
pub const NTLMSSP_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

/// negState of a NegTokenResp.
pub const ACCEPT_COMPLETED: u8 = 0;
pub const ACCEPT_INCOMPLETE: u8 = 1;

/// Tags of the two SPNEGO tokens: `[APPLICATION 0]` (InitialContextToken around a
/// NegTokenInit) and `[1]` (NegTokenResp).
const INIT_TAG: u8 = 0x60;
const RESP_TAG: u8 = 0xa1;

/// The NegTokenInit of an SPNEGO InitialContextToken (`[APPLICATION 0] { OID spnego, [0]
/// NegTokenInit }`); `None` for anything else.
pub(crate) fn neg_token_init(token: &[u8]) -> Option<NegTokenInit> {
    if token.first() != Some(&INIT_TAG) {
        return None;
    }
    // picky-krb reads this framing through `ApplicationTag0`, whose Deserialize unwraps the
    // inner result (a panic on a malformed token); the same re-tagging, with the error kept: the
    // [APPLICATION 0] wrapper holds the fields of a SEQUENCE, so it reads as one.
    let mut sequence = token.to_vec();
    sequence[0] = 0x30;
    let init: GssApiNegInit = picky_asn1_der::from_bytes(&sequence).ok()?;
    (init.oid.0 == picky_asn1_x509::oids::spnego()).then_some(init.neg_token_init.0)
}

/// The responseToken (`[2]`) and mechListMIC (`[3]`) of a NegTokenResp (`[1] NegTokenResp`).
///
/// Not through picky-krb's NegTokenTarg: its negState is an `Optional<Asn1RawDer>`, and when
/// a client leaves negState out (Windows does in its second token) picky-asn1-der stays in its
/// raw mode past the absent field, so the responseToken comes out with its own DER header
/// inside. The fields are read as the raw elements of the SEQUENCE instead, each then decoded
/// by picky-asn1-der by its context tag.
fn neg_token_resp(token: &[u8]) -> Option<NegTokenResp> {
    if token.first() != Some(&RESP_TAG) {
        return None;
    }
    let resp: ExplicitContextTag1<Asn1SequenceOf<Asn1RawDer>> =
        picky_asn1_der::from_bytes(token).ok()?;
    let mut out = NegTokenResp::default();
    for field in resp.0 .0 {
        match field.0.first() {
            Some(0xa2) => {
                let t: ExplicitContextTag2<OctetStringAsn1> =
                    picky_asn1_der::from_bytes(&field.0).ok()?;
                out.response_token = Some(t.0 .0);
            }
            Some(0xa3) => {
                let m: ExplicitContextTag3<OctetStringAsn1> =
                    picky_asn1_der::from_bytes(&field.0).ok()?;
                out.mic = Some(m.0 .0);
            }
            _ => {}
        }
    }
    Some(out)
}

/// The fields of a client's NegTokenResp that the server reads.
#[derive(Default)]
struct NegTokenResp {
    response_token: Option<Vec<u8>>,
    mic: Option<Vec<u8>>,
}

/// The NTLM message a SPNEGO token carries, if it carries one.
pub fn ntlm_inside(token: &[u8]) -> Option<Vec<u8>> {
    let inner = match *token.first()? {
        INIT_TAG => neg_token_init(token)?.mech_token.0?.0 .0,
        RESP_TAG => neg_token_resp(token)?.response_token?,
        _ => return None,
    };
    inner.starts_with(b"NTLMSSP\0").then_some(inner)
}

/// The mechanisms a client's NegTokenInit offers.
fn mech_list(token: &[u8]) -> Option<MechTypeList> {
    Some(neg_token_init(token)?.mech_types.0?.0)
}

/// The client's mechanism list as DER (`MechTypeList`), from its NegTokenInit: what both
/// sides' `mechListMIC` sign. [RFC 4178] requires DER, in which each list has one encoding, so
/// picky-asn1-der's re-encoding is the bytes the client signed.
pub fn mech_types(token: &[u8]) -> Option<Vec<u8>> {
    picky_asn1_der::to_vec(&mech_list(token)?).ok()
}

/// The number of mechanisms a client's NegTokenInit offers.
pub fn mech_type_count(token: &[u8]) -> Option<usize> {
    Some(mech_list(token)?.0.len())
}

/// The `mechListMIC` of a client's NegTokenResp, if it sent one.
pub fn client_mic(token: &[u8]) -> Option<Vec<u8>> {
    neg_token_resp(token)?.mic
}

fn ntlmssp() -> ObjectIdentifierAsn1 {
    ObjectIdentifierAsn1(picky_asn1_x509::oids::ntlm_ssp())
}

fn octets(bytes: Option<&[u8]>) -> Option<OctetStringAsn1> {
    bytes.map(|b| OctetStringAsn1(b.to_vec()))
}

/// A NegTokenResp with `state`, naming NTLMSSP as the mechanism and carrying `token` and
/// `mic`, base64.
pub fn response(state: u8, token: Option<&[u8]>, mic: Option<&[u8]>) -> String {
    let resp = NegTokenTarg1::from(NegTokenTarg {
        // ENUMERATED, which picky-krb leaves as raw DER.
        neg_result: Optional(Some(ExplicitContextTag0(Asn1RawDer(vec![0x0a, 1, state])))),
        supported_mech: Optional(Some(ExplicitContextTag1(ntlmssp()))),
        response_token: Optional(octets(token).map(ExplicitContextTag2)),
        mech_list_mic: Optional(octets(mic).map(ExplicitContextTag3)),
    });
    base64::engine::general_purpose::STANDARD.encode(encode(&resp))
}

/// DER of a token built here. Serializing these in-memory values only fails on a value DER
/// cannot hold, which none of them is; an empty token then fails the client's parse, not ours.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    picky_asn1_der::to_vec(value).unwrap_or_default()
}

/// A NegTokenInit offering NTLMSSP with `ntlm` as its mechanism token (what a Windows client
/// sends when it falls back to NTLM; used by the tests).
pub fn init_with_ntlm(ntlm: &[u8]) -> Vec<u8> {
    let init = GssApiNegInit {
        oid: ObjectIdentifierAsn1(picky_asn1_x509::oids::spnego()),
        neg_token_init: ExplicitContextTag0(NegTokenInit {
            mech_types: Optional(Some(ExplicitContextTag0(Asn1SequenceOf(vec![ntlmssp()])))),
            req_flags: Optional(None),
            mech_token: Optional(Some(ExplicitContextTag2(OctetStringAsn1(ntlm.to_vec())))),
            mech_list_mic: Optional(None),
        }),
    };
    let mut token = encode(&init);
    // The SEQUENCE written becomes the [APPLICATION 0] InitialContextToken (the reverse of
    // `neg_token_init`).
    if let Some(tag) = token.first_mut() {
        *tag = INIT_TAG;
    }
    token
}

/// A client's NegTokenResp carrying `ntlm` (the AUTHENTICATE message; used by the tests).
pub fn client_response(ntlm: &[u8]) -> Vec<u8> {
    encode(&NegTokenTarg1::from(NegTokenTarg {
        neg_result: Optional(None),
        supported_mech: Optional(None),
        response_token: Optional(Some(ExplicitContextTag2(OctetStringAsn1(ntlm.to_vec())))),
        mech_list_mic: Optional(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Untrusted tokens: never a panic.
        #[test]
        fn arbitrary_tokens_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            first in proptest::prop_oneof![proptest::strategy::Just(0x60u8), proptest::strategy::Just(0xa1u8)],
        ) {
            let mut data = data;
            if let Some(b) = data.first_mut() {
                *b = first;
            }
            let _ = ntlm_inside(&data);
            let _ = mech_types(&data);
            let _ = mech_type_count(&data);
            let _ = client_mic(&data);
        }
    }

    #[test]
    fn ntlm_round_trips_through_spnego() {
        let negotiate = bits_proto::ntlm::negotiate_message();
        let init = init_with_ntlm(&negotiate);
        assert_eq!(ntlm_inside(&init), Some(negotiate.clone()));
        assert_eq!(mech_type_count(&init), Some(1));
        // SEQUENCE { OID 1.3.6.1.4.1.311.2.2.10 }
        let mut list = vec![
            0x30,
            2 + NTLMSSP_OID.len() as u8,
            0x06,
            NTLMSSP_OID.len() as u8,
        ];
        list.extend_from_slice(NTLMSSP_OID);
        assert_eq!(mech_types(&init), Some(list));
        assert_eq!(
            ntlm_inside(&client_response(&negotiate)),
            Some(negotiate.clone())
        );
        let resp = base64::engine::general_purpose::STANDARD
            .decode(response(ACCEPT_INCOMPLETE, Some(&negotiate), Some(b"mic")))
            .unwrap();
        assert_eq!(ntlm_inside(&resp), Some(negotiate.clone()));
        assert_eq!(client_mic(&resp), Some(b"mic".to_vec()));
        // A Windows client's second token: no negState, no supportedMech.
        let mut second = client_response(&negotiate);
        assert_eq!(&second[4..6], &[0xa2, 0x22]);
        assert_eq!(ntlm_inside(&second), Some(negotiate.clone()));
        assert_eq!(client_mic(&second), None);
        second.extend([0xa3, 0x03, 0x04, 0x01, 0x09]);
        second[1] += 5;
        second[3] += 5;
        assert_eq!(client_mic(&second), Some(vec![9]));
        assert_eq!(ntlm_inside(&second), Some(negotiate.clone()));
        assert_eq!(ntlm_inside(b"\x60\x03\x06\x01\x00"), None);
        assert_eq!(ntlm_inside(b""), None);
    }

    /// What the old hand-written encoder wrote, byte for byte: a server NegTokenResp
    /// (accept-completed, NTLMSSP, a MIC) and a Windows-style NegTokenInit.
    #[test]
    fn encodings_are_the_expected_der() {
        let resp = base64::engine::general_purpose::STANDARD
            .decode(response(ACCEPT_COMPLETED, None, Some(&[7; 16])))
            .unwrap();
        let mut want = vec![0xa1, 0x29, 0x30, 0x27];
        want.extend([0xa0, 0x03, 0x0a, 0x01, 0x00]);
        want.extend([0xa1, 0x0c, 0x06, 0x0a]);
        want.extend_from_slice(NTLMSSP_OID);
        want.extend([0xa3, 0x12, 0x04, 0x10]);
        want.extend([7; 16]);
        assert_eq!(resp, want);
        let init = init_with_ntlm(b"NTLMSSP\0x");
        let mut want = vec![0x60, 0x29, 0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
        want.extend([0xa0, 0x1f, 0x30, 0x1d]);
        want.extend([0xa0, 0x0e, 0x30, 0x0c, 0x06, 0x0a]);
        want.extend_from_slice(NTLMSSP_OID);
        want.extend([0xa2, 0x0b, 0x04, 0x09]);
        want.extend(b"NTLMSSP\0x");
        assert_eq!(init, want);
    }
}
