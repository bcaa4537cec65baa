//! The rustls client configuration: which servers to trust and which certificate to present.
//!
//! Only the `ring` provider is used (the workspace never pulls aws-lc-rs or OpenSSL).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};

/// Trust and identity settings for HTTPS.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM certificates to trust instead of the system's roots (like `curl --cacert`).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key, both PEM.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any server certificate. Only for testing against servers with throw-away
    /// certificates: it removes all protection against a man in the middle.
    pub accept_invalid_certs: bool,
}

impl std::fmt::Debug for TlsOptions {
    // Key material never goes into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Usage(format!("{what}: not valid PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

/// Builds the rustls configuration for `options` (also for other tools of the workspace that
/// speak HTTPS to a BITS server, such as `bitsd replay`).
pub fn client_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS setup: {e}")))?;
    let builder = if options.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &options.ca_pem {
            Some(pem) => {
                for cert in certs(pem, "CA certificate file")? {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Usage(format!("CA certificate: {e}")))?;
                }
            }
            None => {
                // Unreadable entries in the system store are skipped: one broken file must not
                // make every HTTPS transfer fail.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &options.identity_pem {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = certs(cert_pem, "client certificate file")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
                Error::Usage(format!("client key file: no usable private key: {e}"))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Usage(format!("client certificate and key: {e}")))?
        }
    };
    // BITS is HTTP/1.1 only (spec §2.1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The `--insecure` verifier: any certificate chain is accepted, but handshake signatures are
/// still checked so that the connection is at least bound to the presented key.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a person can do about the certificate errors test setups run into, in words: rustls
/// names them by type only. `None` for errors whose own text says enough.
pub(crate) fn explain(e: &rustls::Error) -> Option<&'static str> {
    let rustls::Error::InvalidCertificate(cert) = e else {
        return None;
    };
    match cert {
        // webpki's `CaUsedAsEndEntity` reaches us only as `Other`'s text: webpki is not a
        // dependency of ours, so its type cannot be matched.
        rustls::CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => Some(
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE) used as a \
             server certificate, which TLS clients refuse; the server needs a leaf certificate \
             signed by a CA, and `bits --cacert CA.pem` trusts that CA \
             (`bitsd tls selfsigned --out DIR` writes both)",
        ),
        rustls::CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => Some(
            "the server's certificate chain does not verify: a signature in it does not fit the \
             key that should have made it, as happens when a self-signed or test certificate is \
             checked against the system's CAs; pass --cacert with the CA that signed the \
             server's certificate (`bitsd tls selfsigned --out DIR` writes a CA and a server \
             certificate)",
        ),
        rustls::CertificateError::UnknownIssuer => Some(
            "the server's certificate is not signed by a trusted CA; pass --cacert with the CA \
             that signed it",
        ),
        _ => None,
    }
}

/// Whether a rustls error is about trust (fatal) rather than a broken connection (transient).
pub(crate) fn is_trust_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
            | rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::CertificateRequired
                    | rustls::AlertDescription::CertificateExpired
                    | rustls::AlertDescription::CertificateRevoked
                    | rustls::AlertDescription::CertificateUnknown
                    | rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::UnsupportedCertificate
                    | rustls::AlertDescription::AccessDenied
                    | rustls::AlertDescription::HandshakeFailure
            )
    )
}
