//! [RFC 3962] appendix B against picky-krb, the cryptography the acceptor uses: every
//! string-to-key vector (PBKDF2-HMAC-SHA1, then `DK(tkey, "kerberos")`) for both key sizes, and
//! the enctype end to end (key derivation per usage, CTS, HMAC) on a real MIT ticket. The
//! appendix's bare CBC-CTS vectors need the CTS mode alone, which picky-krb keeps private: they
//! run against the client's `bits_proto::kerberos::crypto` (its `cts_known_answers`).

use picky_krb::crypto::aes::{derive_key, AesSize};
use picky_krb::crypto::{CipherSuite, KERBEROS};

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

struct Vector {
    iterations: u32,
    pass_phrase: &'static [u8],
    salt: &'static [u8],
    pbkdf2_128: &'static str,
    key_128: &'static str,
    /// The 256-bit PBKDF2 output (its first half is the 128-bit one).
    pbkdf2_256: &'static str,
    key_256: &'static str,
}

const VECTORS: &[Vector] = &[
    Vector {
        iterations: 1,
        pass_phrase: b"password",
        salt: b"ATHENA.MIT.EDUraeburn",
        pbkdf2_128: "cd ed b5 28 1b b2 f8 01 56 5a 11 22 b2 56 35 15",
        key_128: "42 26 3c 6e 89 f4 fc 28 b8 df 68 ee 09 79 9f 15",
        pbkdf2_256: "cd ed b5 28 1b b2 f8 01 56 5a 11 22 b2 56 35 15
                     0a d1 f7 a0 4b b9 f3 a3 33 ec c0 e2 e1 f7 08 37",
        key_256: "fe 69 7b 52 bc 0d 3c e1 44 32 ba 03 6a 92 e6 5b
                  bb 52 28 09 90 a2 fa 27 88 39 98 d7 2a f3 01 61",
    },
    Vector {
        iterations: 2,
        pass_phrase: b"password",
        salt: b"ATHENA.MIT.EDUraeburn",
        pbkdf2_128: "01 db ee 7f 4a 9e 24 3e 98 8b 62 c7 3c da 93 5d",
        key_128: "c6 51 bf 29 e2 30 0a c2 7f a4 69 d6 93 bd da 13",
        pbkdf2_256: "01 db ee 7f 4a 9e 24 3e 98 8b 62 c7 3c da 93 5d
                     a0 53 78 b9 32 44 ec 8f 48 a9 9e 61 ad 79 9d 86",
        key_256: "a2 e1 6d 16 b3 60 69 c1 35 d5 e9 d2 e2 5f 89 61
                  02 68 56 18 b9 59 14 b4 67 c6 76 22 22 58 24 ff",
    },
    Vector {
        iterations: 1200,
        pass_phrase: b"password",
        salt: b"ATHENA.MIT.EDUraeburn",
        pbkdf2_128: "5c 08 eb 61 fd f7 1e 4e 4e c3 cf 6b a1 f5 51 2b",
        key_128: "4c 01 cd 46 d6 32 d0 1e 6d be 23 0a 01 ed 64 2a",
        pbkdf2_256: "5c 08 eb 61 fd f7 1e 4e 4e c3 cf 6b a1 f5 51 2b
                     a7 e5 2d db c5 e5 14 2f 70 8a 31 e2 e6 2b 1e 13",
        key_256: "55 a6 ac 74 0a d1 7b 48 46 94 10 51 e1 e8 b0 a7
                  54 8d 93 b0 ab 30 a8 bc 3f f1 62 80 38 2b 8c 2a",
    },
    Vector {
        iterations: 5,
        pass_phrase: b"password",
        salt: &[0x12, 0x34, 0x56, 0x78, 0x78, 0x56, 0x34, 0x12],
        pbkdf2_128: "d1 da a7 86 15 f2 87 e6 a1 c8 b1 20 d7 06 2a 49",
        key_128: "e9 b2 3d 52 27 37 47 dd 5c 35 cb 55 be 61 9d 8e",
        pbkdf2_256: "d1 da a7 86 15 f2 87 e6 a1 c8 b1 20 d7 06 2a 49
                     3f 98 d2 03 e6 be 49 a6 ad f4 fa 57 4b 6e 64 ee",
        key_256: "97 a4 e7 86 be 20 d8 1a 38 2d 5e bc 96 d5 90 9c
                  ab cd ad c8 7c a4 8f 57 45 04 15 9f 16 c3 6e 31",
    },
    Vector {
        iterations: 1200,
        pass_phrase: b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        salt: b"pass phrase equals block size",
        pbkdf2_128: "13 9c 30 c0 96 6b c3 2b a5 5f db f2 12 53 0a c9",
        key_128: "59 d1 bb 78 9a 82 8b 1a a5 4e f9 c2 88 3f 69 ed",
        pbkdf2_256: "13 9c 30 c0 96 6b c3 2b a5 5f db f2 12 53 0a c9
                     c5 ec 59 f1 a4 52 f5 cc 9a d9 40 fe a0 59 8e d1",
        key_256: "89 ad ee 36 08 db 8b c7 1f 1b fb fe 45 94 86 b0
                  56 18 b7 0c ba e2 20 92 53 4e 56 c5 53 ba 4b 34",
    },
    Vector {
        iterations: 1200,
        pass_phrase: b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        salt: b"pass phrase exceeds block size",
        pbkdf2_128: "9c ca d6 d4 68 77 0c d5 1b 10 e6 a6 87 21 be 61",
        key_128: "cb 80 05 dc 5f 90 17 9a 7f 02 10 4c 00 18 75 1d",
        pbkdf2_256: "9c ca d6 d4 68 77 0c d5 1b 10 e6 a6 87 21 be 61
                     1a 8b 4d 28 26 01 db 3b 36 be 92 46 91 5e c8 2a",
        key_256: "d7 8c 5c 9c b8 72 a8 c9 da d4 69 7f 0b b5 b2 d2
                  14 96 c8 2b eb 2c ae da 21 12 fc ee a0 57 40 1b",
    },
    Vector {
        iterations: 50,
        // U+1D11E MUSICAL SYMBOL G CLEF, UTF-8.
        pass_phrase: &[0xf0, 0x9d, 0x84, 0x9e],
        salt: b"EXAMPLE.COMpianist",
        pbkdf2_128: "6b 9c f2 6d 45 45 5a 43 a5 b8 bb 27 6a 40 3b 39",
        key_128: "f1 49 c1 f2 e1 54 a7 34 52 d4 3e 7f e6 2a 56 e5",
        pbkdf2_256: "6b 9c f2 6d 45 45 5a 43 a5 b8 bb 27 6a 40 3b 39
                     e7 fe 37 a0 c4 1e 02 c2 81 ff 30 69 e1 e9 4f 52",
        key_256: "4b 6d 98 39 f8 44 06 df 1f 09 cc 16 6d b4 b8 3c
                  57 18 48 b7 84 a3 d6 bd c3 46 58 9a 3e 39 3f 9e",
    },
];

fn pbkdf2(v: &Vector, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    pbkdf2::pbkdf2_hmac::<sha1_011::Sha1>(v.pass_phrase, v.salt, v.iterations, &mut out);
    out
}

#[test]
fn string_to_key_vectors() {
    assert_eq!(VECTORS.len(), 7);
    for v in VECTORS {
        let what = format!("{} iterations, salt {:?}", v.iterations, v.salt);
        let tkey = pbkdf2(v, 16);
        assert_eq!(tkey, hex(v.pbkdf2_128), "PBKDF2-128, {what}");
        assert_eq!(
            derive_key(&tkey, KERBEROS, &AesSize::Aes128).unwrap(),
            hex(v.key_128),
            "AES-128 key, {what}"
        );
        let tkey = pbkdf2(v, 32);
        assert_eq!(tkey, hex(v.pbkdf2_256), "PBKDF2-256, {what}");
        assert_eq!(
            derive_key(&tkey, KERBEROS, &AesSize::Aes256).unwrap(),
            hex(v.key_256),
            "AES-256 key, {what}"
        );
    }
}

/// picky-krb's own string-to-key runs the default 4096 iterations: consistent with the
/// PBKDF2-then-DK path the vectors check, so the vectors vouch for it too.
#[test]
fn string_to_key_of_the_enctypes_is_pbkdf2_then_dk() {
    let (password, salt) = (b"password", b"ATHENA.MIT.EDUraeburn");
    for (suite, size, len) in [
        (CipherSuite::Aes128CtsHmacSha196, AesSize::Aes128, 16),
        (CipherSuite::Aes256CtsHmacSha196, AesSize::Aes256, 32),
    ] {
        let mut tkey = vec![0; len];
        pbkdf2::pbkdf2_hmac::<sha1_011::Sha1>(password, salt, 4096, &mut tkey);
        assert_eq!(
            suite
                .cipher()
                .generate_key_from_password(password, salt)
                .unwrap(),
            derive_key(&tkey, KERBEROS, &size).unwrap()
        );
    }
}

/// The enctype end to end: MIT's KDC sealed the fixture ticket with the keytab's AES-256 key
/// (key usage 2); picky-krb opens it, and what it seals opens again only with the same key
/// and usage.
#[test]
fn the_enctypes_open_what_mit_sealed() {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD
        .decode(include_str!("testdata/curl-negotiate.b64").trim())
        .unwrap();
    let keys = super::keytab::parse(include_bytes!("testdata/http.keytab")).unwrap();
    let accepted = super::acceptor::Acceptor::new(keys.clone(), None, Vec::new())
        .accept(&token, 1_796_134_476)
        .unwrap();
    assert_eq!(accepted.principal, "alice@TEST.BITS");
    for entry in &keys {
        let cipher = entry.key.suite().cipher();
        let sealed = cipher.encrypt(entry.key.bytes(), 2, b"ticket").unwrap();
        // Confounder (16) + plaintext + HMAC-SHA1-96 (12), CTS keeping the length.
        assert_eq!(sealed.len(), 16 + 6 + 12);
        assert_eq!(
            cipher.decrypt(entry.key.bytes(), 2, &sealed).unwrap(),
            b"ticket"
        );
        assert!(cipher.decrypt(entry.key.bytes(), 3, &sealed).is_err());
    }
}
