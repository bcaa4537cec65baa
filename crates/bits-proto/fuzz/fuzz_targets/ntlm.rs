//! Feeds arbitrary bytes to the NTLM parsers a server runs on untrusted `Authorization` tokens,
//! and to the client side on an untrusted CHALLENGE: nothing may panic, and a message that
//! parses as AUTHENTICATE must not verify against a password it was not made from.
#![no_main]

use bits_proto::ntlm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ntlm::message_type(data);
    let _ = ntlm::parse_negotiate(data);
    // The client answering whatever a server sent.
    let _ = ntlm::authenticate_message(data, "user", "DOMAIN", "password", [1; 8]);
    if let Ok(auth) = ntlm::parse_authenticate(data) {
        let challenge = [7u8; 8];
        let names = ntlm::ServerNames {
            domain: "D".into(),
            computer: "C".into(),
        };
        let challenge_msg = ntlm::challenge_message(0, challenge, &names, 0);
        // A fixed hash no input was computed for.
        let verdict = ntlm::verify(
            &auth,
            data,
            &ntlm::nt_hash("not the fuzzer's password"),
            &challenge,
            None,
            &challenge_msg,
        );
        assert!(verdict.is_err(), "random bytes authenticated");
    }
});
