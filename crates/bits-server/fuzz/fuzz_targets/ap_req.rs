//! Feeds arbitrary bytes to the Kerberos acceptor as an untrusted `Authorization: Negotiate`
//! token, with the keytab of the test realm and the clock at the time the seed token (a real
//! curl token from MIT's KDC) was valid: nothing may panic, and whatever is accepted is the one
//! client that token was issued to.
#![no_main]

use std::sync::OnceLock;

use bits_server::auth::kerberos::{acceptor::Acceptor, keytab};
use libfuzzer_sys::fuzz_target;

/// A minute after the seed's authenticator was made (2026-12-01 14:13:36 UTC).
const NOW: i64 = 1_796_134_476;

fn acceptor() -> &'static Acceptor {
    static ACCEPTOR: OnceLock<Acceptor> = OnceLock::new();
    ACCEPTOR.get_or_init(|| {
        let keys = keytab::parse(include_bytes!(
            "../../src/auth/kerberos/testdata/http.keytab"
        ))
        .expect("the test keytab");
        Acceptor::new(keys, None, Vec::new())
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(accepted) = acceptor().accept(data, NOW) {
        assert_eq!(accepted.principal, "alice@TEST.BITS");
        assert!(!accepted.reply.is_empty());
    }
});
