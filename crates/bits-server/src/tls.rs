//! TLS for the HTTPS listener (rustls): certificate and key from PEM files, optional client
//! certificates (then required), and reload on demand (SIGHUP) without touching open connections.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig as RustlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

// Defined with the rest of the config, which must not import the listener's TLS code.
pub use crate::config::tls::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, io::Error),
    #[error("{0}: no usable PEM item: {1}")]
    Pem(PathBuf, String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read(path.into(), e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(path.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(path.into(), "no certificate".into()));
    }
    Ok(certs)
}

/// Builds a rustls server configuration from the files named in `cfg`.
/// Makes ring the process-wide rustls crypto provider unless one is installed already: the
/// https clients (object storage, webhooks) build their configs from it.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load(cfg: &TlsConfig) -> Result<Arc<RustlsConfig>, TlsError> {
    let chain = certs(&cfg.cert)?;
    let key_bytes = std::fs::read(&cfg.key).map_err(|e| TlsError::Read(cfg.key.clone(), e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| TlsError::Pem(cfg.key.clone(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = RustlsConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The current TLS configuration; `reload` swaps it for new handshakes only.
pub struct TlsState {
    config: TlsConfig,
    /// The rustls configuration and the channel bindings of its certificate, swapped together.
    current: RwLock<(Arc<RustlsConfig>, [u8; 16])>,
}

/// The configuration and the `tls-server-end-point` bindings of its leaf certificate.
fn load_with_binding(cfg: &TlsConfig) -> Result<(Arc<RustlsConfig>, [u8; 16]), TlsError> {
    let config = load(cfg)?;
    let leaf = certs(&cfg.cert)?;
    let binding = leaf
        .first()
        .map(|c| crate::auth::binding::tls_server_end_point(c.as_ref()))
        .unwrap_or_default();
    Ok((config, binding))
}

impl TlsState {
    pub fn new(config: TlsConfig) -> Result<TlsState, TlsError> {
        let current = RwLock::new(load_with_binding(&config)?);
        Ok(TlsState { config, current })
    }

    pub fn current(&self) -> Arc<RustlsConfig> {
        self.current_with_binding().0
    }

    /// The configuration for a new connection, with the channel bindings its certificate gives.
    pub fn current_with_binding(&self) -> (Arc<RustlsConfig>, [u8; 16]) {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads certificate, key and client CA; on error the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_with_binding(&self.config)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn listen(&self) -> std::net::SocketAddr {
        self.config.listen
    }
}

/// The identity a verified client certificate names: its subject's common name, or the whole
/// subject when it has none.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    cn.or_else(|| Some(subject.to_string()))
        .filter(|s| !s.is_empty())
}
