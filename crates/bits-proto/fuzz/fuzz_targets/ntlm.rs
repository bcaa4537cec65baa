//! Feeds arbitrary bytes to the NTLM parsers a server runs on untrusted `Authorization` tokens
//! (NEGOTIATE, type 1; AUTHENTICATE, type 3, with the AV pairs of its NTLMv2 blob), and to the
//! client side on an untrusted CHALLENGE: nothing may panic, and a message that parses as
//! AUTHENTICATE must not verify against a password it was not made from.
#![no_main]

use bits_proto::ntlm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ntlm::message_type(data);
    let _ = ntlm::parse_negotiate(data);
    // The client answering whatever a server sent; with AV pairs of its own, which the
    // server side reads back exactly.
    let _ = ntlm::authenticate_message(data, "user", "DOMAIN", "password", [1; 8]);
    let extra = ntlm::ClientAvPairs {
        target_name: Some("HTTP/fuzz.test".into()),
        channel_bindings: Some([9; 16]),
        av_flags: Some(0x4),
    };
    if let Ok(msg) =
        ntlm::authenticate_message_with(data, "user", "DOMAIN", "password", [1; 8], &extra)
    {
        let auth = ntlm::parse_authenticate(&msg).expect("our own AUTHENTICATE parses");
        assert_eq!(auth.target_name.as_deref(), Some("HTTP/fuzz.test"));
        assert_eq!(auth.channel_bindings, Some([9; 16]));
        assert_eq!(auth.av_flags, Some(0x4));
    }
    if let Ok(auth) = ntlm::parse_authenticate(data) {
        if let Some(name) = &auth.target_name {
            assert!(name.len() <= data.len());
        }
        assert_ne!(auth.channel_bindings, Some([0; 16]));
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
