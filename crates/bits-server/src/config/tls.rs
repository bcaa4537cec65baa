//! The `[tls]` table (plain data; `tls.rs` builds the rustls configuration from it).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[tls]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the HTTPS listener.
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates for client certificates. When set, every TLS client must present a
    /// certificate issued by one of them: a BITS job that supplies none would fail anyway when
    /// a server merely asks for one (spec §14).
    pub client_ca: Option<PathBuf>,
}
