//! Kerberos for a service ([RFC 4120], inside SPNEGO as HTTP Negotiate sends it, [RFC 4559]):
//! the service's keys from a keytab, and the AP-REQ a client presents, checked with them.

pub mod acceptor;
pub mod keytab;
#[cfg(test)]
mod rfc3962;
