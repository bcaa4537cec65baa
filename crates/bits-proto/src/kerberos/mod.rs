//! The parts of Kerberos ([RFC 4120]) both sides of HTTP Negotiate need: the AES encryption
//! types and just enough DER. The service's acceptor lives in `bits-server`, the client's
//! ticket handling in `bits-client`.

pub mod crypto;
pub mod der;
pub mod wire;
