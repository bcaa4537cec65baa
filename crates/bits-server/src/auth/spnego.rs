//! SPNEGO ([RFC 4178]) as HTTP Negotiate carries NTLM when Kerberos is not available (Windows'
//! fallback): the NTLM message inside a NegTokenInit or NegTokenResp, and the server's
//! NegTokenResp around its answer. Kerberos inside SPNEGO is the acceptor's business.

use base64::Engine as _;

use bits_proto::kerberos::der::{self, context, field, fields, tlv};

/// OID 1.3.6.1.5.5.2 (SPNEGO) and 1.3.6.1.4.1.311.2.2.10 (NTLMSSP), DER contents.
const SPNEGO_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
pub const NTLMSSP_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

/// negState of a NegTokenResp.
pub const ACCEPT_COMPLETED: u8 = 0;
pub const ACCEPT_INCOMPLETE: u8 = 1;

/// The NTLM message a SPNEGO token carries, if it carries one.
pub fn ntlm_inside(token: &[u8]) -> Option<Vec<u8>> {
    let inner = match token.first()? {
        // NegTokenInit: [APPLICATION 0] { OID spnego, [0] { SEQ { [0] mechTypes, [2] mechToken } } }
        0x60 => {
            let outer = der::expect(token, 0x60).ok()?;
            let (oid, rest) = der::next(outer).ok()?;
            if oid.tag != 0x06 || oid.value != SPNEGO_OID {
                return None;
            }
            let init = fields(der::expect(der::expect(rest, 0xa0).ok()?, 0x30).ok()?).ok()?;
            der::octets(field(&init, 2).ok()?).ok()?
        }
        // NegTokenResp: [1] { SEQ { …, [2] responseToken } }
        0xa1 => {
            let resp = fields(der::expect(der::expect(token, 0xa1).ok()?, 0x30).ok()?).ok()?;
            der::octets(field(&resp, 2).ok()?).ok()?
        }
        _ => return None,
    };
    inner.starts_with(b"NTLMSSP\0").then(|| inner.to_vec())
}

/// The client's mechanism list as DER (`MechTypeList`), from its NegTokenInit: what both
/// sides' `mechListMIC` sign.
pub fn mech_types(token: &[u8]) -> Option<Vec<u8>> {
    let outer = der::expect(token, 0x60).ok()?;
    let (oid, rest) = der::next(outer).ok()?;
    if oid.tag != 0x06 || oid.value != SPNEGO_OID {
        return None;
    }
    let init = fields(der::expect(der::expect(rest, 0xa0).ok()?, 0x30).ok()?).ok()?;
    Some(field(&init, 0).ok()?.to_vec())
}

/// How many mechanisms a client's NegTokenInit offers.
pub fn mech_type_count(token: &[u8]) -> Option<usize> {
    let list = mech_types(token)?;
    let mut rest = der::expect(&list, 0x30).ok()?;
    let mut n = 0;
    while !rest.is_empty() {
        let (oid, after) = der::next(rest).ok()?;
        if oid.tag != 0x06 {
            return None;
        }
        n += 1;
        rest = after;
    }
    Some(n)
}

/// The `mechListMIC` of a client's NegTokenResp, if it sent one.
pub fn client_mic(token: &[u8]) -> Option<Vec<u8>> {
    let resp = fields(der::expect(der::expect(token, 0xa1).ok()?, 0x30).ok()?).ok()?;
    Some(der::octets(field(&resp, 3).ok()?).ok()?.to_vec())
}

/// A NegTokenResp with `state`, naming NTLMSSP as the mechanism and carrying `token` and
/// `mic`, base64.
pub fn response(state: u8, token: Option<&[u8]>, mic: Option<&[u8]>) -> String {
    let mut resp = context(0, &tlv(0x0a, &[state]));
    resp.extend(context(1, &tlv(0x06, NTLMSSP_OID)));
    if let Some(t) = token {
        resp.extend(context(2, &tlv(0x04, t)));
    }
    if let Some(m) = mic {
        resp.extend(context(3, &tlv(0x04, m)));
    }
    base64::engine::general_purpose::STANDARD.encode(tlv(0xa1, &tlv(0x30, &resp)))
}

/// A NegTokenInit offering NTLMSSP with `ntlm` as its mechanism token (what a Windows client
/// sends when it falls back to NTLM; used by the tests).
pub fn init_with_ntlm(ntlm: &[u8]) -> Vec<u8> {
    let mut init = context(0, &tlv(0x30, &tlv(0x06, NTLMSSP_OID)));
    init.extend(context(2, &tlv(0x04, ntlm)));
    let mut spnego = tlv(0x06, SPNEGO_OID);
    spnego.extend(context(0, &tlv(0x30, &init)));
    tlv(0x60, &spnego)
}

/// A client's NegTokenResp carrying `ntlm` (the AUTHENTICATE message; used by the tests).
pub fn client_response(ntlm: &[u8]) -> Vec<u8> {
    tlv(0xa1, &tlv(0x30, &context(2, &tlv(0x04, ntlm))))
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
            let _ = client_mic(&data);
        }
    }

    #[test]
    fn ntlm_round_trips_through_spnego() {
        let negotiate = bits_proto::ntlm::negotiate_message();
        assert_eq!(
            ntlm_inside(&init_with_ntlm(&negotiate)),
            Some(negotiate.clone())
        );
        assert_eq!(
            ntlm_inside(&client_response(&negotiate)),
            Some(negotiate.clone())
        );
        let resp = base64::engine::general_purpose::STANDARD
            .decode(response(ACCEPT_INCOMPLETE, Some(&negotiate), None))
            .unwrap();
        assert_eq!(ntlm_inside(&resp), Some(negotiate));
        assert_eq!(ntlm_inside(b"\x60\x03\x06\x01\x00"), None);
        assert_eq!(ntlm_inside(b""), None);
    }
}
