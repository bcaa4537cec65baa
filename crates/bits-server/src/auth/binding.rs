//! Channel bindings (RFC 5929 `tls-server-end-point`, RFC 5056): what ties an NTLM or Kerberos
//! answer to the TLS connection it was made for, so that a relay which terminates the client's
//! TLS and opens its own to us cannot pass the answer on (IIS "extended protection").
//!
//! A client hashes the certificate it saw into the bindings; the NTLMv2 response carries their
//! MD5 as `MsvAvChannelBindings`, a Kerberos authenticator as the `Bnd` field of its GSS
//! checksum. Both sides compute the same 16 bytes from the same certificate.

use md5::{Digest, Md5};
use sha2::{Sha256, Sha384, Sha512};

use crate::config::ChannelBinding;

/// The MD5 of the `gss_channel_bindings_struct` for `tls-server-end-point` over `cert` (the
/// DER of the certificate this server presents): no addresses, and as application data
/// `"tls-server-end-point:"` followed by the certificate's hash under its signature's hash
/// function (SHA-256 for MD5, SHA-1 and anything without one, RFC 5929 4.1).
pub fn tls_server_end_point(cert: &[u8]) -> [u8; 16] {
    let hash = certificate_hash(cert);
    let mut data = b"tls-server-end-point:".to_vec();
    data.extend_from_slice(&hash);
    bindings_hash(&data)
}

/// The MD5 a client puts in its token for bindings with this application data.
pub fn bindings_hash(application_data: &[u8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    // initiator_addrtype, initiator_address (empty), acceptor_addrtype, acceptor_address
    // (empty): four little-endian zero words.
    md5.update([0u8; 16]);
    md5.update((application_data.len() as u32).to_le_bytes());
    md5.update(application_data);
    md5.finalize().into()
}

fn certificate_hash(cert: &[u8]) -> Vec<u8> {
    use x509_parser::oid_registry as oids;
    let algorithm = x509_parser::parse_x509_certificate(cert)
        .ok()
        .map(|(_, c)| c.signature_algorithm.algorithm.clone());
    match algorithm {
        Some(a) if a == oids::OID_PKCS1_SHA384WITHRSA || a == oids::OID_SIG_ECDSA_WITH_SHA384 => {
            Sha384::digest(cert).to_vec()
        }
        Some(a) if a == oids::OID_PKCS1_SHA512WITHRSA || a == oids::OID_SIG_ECDSA_WITH_SHA512 => {
            Sha512::digest(cert).to_vec()
        }
        _ => Sha256::digest(cert).to_vec(),
    }
}

/// What some clients send when they have no channel to bind: the hash of empty bindings. Taken
/// as "no bindings", like all zeros.
fn unbound() -> [u8; 16] {
    bindings_hash(&[])
}

/// Checks the bindings a client sent (`None`: none, or all zeros) against the connection's
/// (`None`: not TLS, nothing to bind to). `Err` says why the token is refused.
pub(crate) fn check(
    mode: ChannelBinding,
    connection: Option<[u8; 16]>,
    sent: Option<[u8; 16]>,
) -> Result<(), &'static str> {
    let sent = sent.filter(|s| *s != unbound() && *s != [0; 16]);
    let Some(expected) = connection else {
        return Ok(());
    };
    match (mode, sent) {
        (ChannelBinding::Off, _) => Ok(()),
        (_, Some(s)) if bits_proto::secret::constant_time_eq(&s, &expected) => Ok(()),
        (_, Some(_)) => Err("the channel bindings are for another TLS connection (a relay?)"),
        (ChannelBinding::Require, None) => {
            Err("no channel bindings, and this vdir requires them over TLS")
        }
        (ChannelBinding::Allow, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_checked_as_configured() {
        let ours = [7u8; 16];
        let theirs = [9u8; 16];
        use ChannelBinding::*;
        // Plain HTTP: nothing to bind to, whatever the client sent.
        assert!(check(Require, None, None).is_ok());
        assert!(check(Require, None, Some(theirs)).is_ok());
        assert!(check(Allow, Some(ours), Some(ours)).is_ok());
        assert!(check(Allow, Some(ours), Some(theirs)).is_err());
        assert!(check(Allow, Some(ours), None).is_ok());
        assert!(check(Allow, Some(ours), Some(unbound())).is_ok());
        assert!(check(Require, Some(ours), None).is_err());
        assert!(check(Require, Some(ours), Some([0; 16])).is_err());
        assert!(check(Require, Some(ours), Some(ours)).is_ok());
        assert!(check(Off, Some(ours), Some(theirs)).is_ok());
    }

    #[test]
    fn end_point_bindings_hash_the_certificate_by_its_signature() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let mut data = b"tls-server-end-point:".to_vec();
        data.extend_from_slice(&Sha384::digest(&der));
        let mut gss = vec![0u8; 16];
        gss.extend_from_slice(&(data.len() as u32).to_le_bytes());
        gss.extend_from_slice(&data);
        let expected: [u8; 16] = Md5::digest(&gss).into();
        assert_eq!(tls_server_end_point(&der), expected);
        // An ECDSA P-256 certificate is hashed with SHA-256.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut data = b"tls-server-end-point:".to_vec();
        data.extend_from_slice(&Sha256::digest(cert.der()));
        assert_eq!(tls_server_end_point(cert.der()), bindings_hash(&data));
    }
}
