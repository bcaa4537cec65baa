//! Feeds arbitrary bytes to every SPNEGO parser a server runs on an untrusted `Authorization:
//! Negotiate` token: nothing may panic, the answers agree with each other, and what the
//! builders wrap comes back out.
#![no_main]

use bits_server::auth::spnego;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let inner = spnego::ntlm_inside(data);
    if let Some(ntlm) = &inner {
        assert!(ntlm.starts_with(b"NTLMSSP\0"));
    }
    let mechs = spnego::mech_types(data);
    let count = spnego::mech_type_count(data);
    assert_eq!(mechs.is_some(), count.is_some(), "mechTypes read one way only");
    let _ = spnego::client_mic(data);
    // Whatever NTLM bytes a client sends, the builders carry them through unchanged.
    let mut ntlm = b"NTLMSSP\0".to_vec();
    ntlm.extend_from_slice(data);
    assert_eq!(
        spnego::ntlm_inside(&spnego::init_with_ntlm(&ntlm)).as_ref(),
        Some(&ntlm)
    );
    assert_eq!(
        spnego::ntlm_inside(&spnego::client_response(&ntlm)).as_ref(),
        Some(&ntlm)
    );
    assert_eq!(spnego::mech_type_count(&spnego::init_with_ntlm(&ntlm)), Some(1));
});
