//! The parts of Kerberos ([RFC 4120]) the client's side of HTTP Negotiate needs: the AES
//! encryption types and just enough DER to build its AP-REQ (`bits-client`'s `negotiate.rs`),
//! and the reader of MIT's counted file fields (credential cache; the server's keytab too). The
//! service's acceptor, in `bits-server`, uses picky-krb instead.

pub mod crypto;
pub mod der;
pub mod wire;
