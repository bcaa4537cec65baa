//! The Kerberos encryption types a service needs to read tickets ([RFC 3961], [RFC 3962]):
//! `aes256-cts-hmac-sha1-96` (18) and `aes128-cts-hmac-sha1-96` (17). Keys for one purpose are
//! derived from the base key and a key usage number; a ciphertext is
//! `AES-CTS(Ke, confounder | plaintext) | HMAC-SHA1(Ki, confounder | plaintext)[..12]`.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const AES128_CTS_HMAC_SHA1_96: i32 = 17;
pub const AES256_CTS_HMAC_SHA1_96: i32 = 18;

const BLOCK: usize = 16;
const MAC_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("encryption type {0} is not supported (only AES with HMAC-SHA1)")]
    UnsupportedEnctype(i32),
    #[error("key of {0} bytes does not fit its encryption type")]
    KeyLength(usize),
    #[error("ciphertext too short")]
    Short,
    #[error("integrity check failed (wrong key or altered data)")]
    Integrity,
}

/// A base key of an AES encryption type.
#[derive(Clone)]
pub struct Key {
    enctype: i32,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never go into logs.
        f.debug_struct("Key")
            .field("enctype", &self.enctype)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(enctype: i32, bytes: &[u8]) -> Result<Key, CryptoError> {
        let want = match enctype {
            AES128_CTS_HMAC_SHA1_96 => 16,
            AES256_CTS_HMAC_SHA1_96 => 32,
            other => return Err(CryptoError::UnsupportedEnctype(other)),
        };
        if bytes.len() != want {
            return Err(CryptoError::KeyLength(bytes.len()));
        }
        Ok(Key {
            enctype,
            bytes: bytes.to_vec(),
        })
    }

    pub fn enctype(&self) -> i32 {
        self.enctype
    }

    /// Decrypts and checks `ciphertext` made for key `usage`; returns the plaintext.
    pub fn decrypt(&self, usage: u32, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.len() < BLOCK + MAC_LEN {
            return Err(CryptoError::Short);
        }
        let (ke, ki) = (self.derive(usage, 0xAA), self.derive(usage, 0x55));
        let (body, mac) = ciphertext.split_at(ciphertext.len() - MAC_LEN);
        let plain = cts_decrypt(&ke, body)?;
        let expected = hmac_sha1(&ki, &plain);
        if !crate::secret::constant_time_eq(&expected[..MAC_LEN], mac) {
            return Err(CryptoError::Integrity);
        }
        Ok(plain[BLOCK..].to_vec())
    }

    /// Encrypts `plaintext` for key `usage` with this `confounder` (16 random bytes).
    pub fn encrypt(
        &self,
        usage: u32,
        plaintext: &[u8],
        confounder: [u8; 16],
    ) -> Result<Vec<u8>, CryptoError> {
        let (ke, ki) = (self.derive(usage, 0xAA), self.derive(usage, 0x55));
        let mut plain = confounder.to_vec();
        plain.extend_from_slice(plaintext);
        let mut out = cts_encrypt(&ke, &plain)?;
        out.extend_from_slice(&hmac_sha1(&ki, &plain)[..MAC_LEN]);
        Ok(out)
    }

    /// DK(base, usage | purpose): the key for one usage and purpose (0xAA encryption, 0x55
    /// integrity, 0x99 checksum).
    fn derive(&self, usage: u32, purpose: u8) -> Vec<u8> {
        let mut constant = usage.to_be_bytes().to_vec();
        constant.push(purpose);
        derive_key(&self.bytes, &constant)
    }
}

/// DK(key, constant) for AES: DR's output is the key (random-to-key is the identity).
fn derive_key(key: &[u8], constant: &[u8]) -> Vec<u8> {
    let mut block: [u8; BLOCK] = n_fold(constant, BLOCK).try_into().unwrap_or([0; BLOCK]);
    let mut out = Vec::with_capacity(key.len());
    while out.len() < key.len() {
        block = encrypt_block(key, &block);
        out.extend_from_slice(&block);
    }
    out.truncate(key.len());
    out
}

/// The n-fold of [RFC 3961] section 5.1: `input` stretched or folded to `n` bytes.
pub fn n_fold(input: &[u8], n: usize) -> Vec<u8> {
    let k = input.len();
    if k == 0 || n == 0 {
        return vec![0; n];
    }
    let lcm = lcm(n, k);
    // The input repeated lcm/k times, each copy rotated right by 13 bits more than the last.
    let mut expanded = Vec::with_capacity(lcm);
    let bits = k * 8;
    for copy in 0..lcm / k {
        let rot = (13 * copy) % bits;
        for i in 0..k {
            // Bit j of the rotated copy is bit (j - rot) mod bits of the input.
            let mut byte = 0u8;
            for b in 0..8 {
                let j = i * 8 + b;
                let src = (j + bits - rot) % bits;
                let bit = (input[src / 8] >> (7 - src % 8)) & 1;
                byte |= bit << (7 - b);
            }
            expanded.push(byte);
        }
    }
    // Ones'-complement addition of the n-byte chunks.
    let mut sum = vec![0u32; n];
    for chunk in expanded.chunks(n) {
        for (s, &b) in sum.iter_mut().zip(chunk) {
            *s += u32::from(b);
        }
    }
    loop {
        let mut carry = 0u32;
        for s in sum.iter_mut().rev() {
            *s += carry;
            carry = *s >> 8;
            *s &= 0xff;
        }
        if carry == 0 {
            break;
        }
        // The end-around carry goes into the lowest byte.
        if let Some(last) = sum.last_mut() {
            *last += carry;
        }
    }
    sum.into_iter().map(|s| s as u8).collect()
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

fn encrypt_block(key: &[u8], block: &[u8; BLOCK]) -> [u8; BLOCK] {
    let mut b = GenericArray::clone_from_slice(block);
    match key.len() {
        16 => aes::Aes128::new(GenericArray::from_slice(key)).encrypt_block(&mut b),
        _ => aes::Aes256::new(GenericArray::from_slice(key)).encrypt_block(&mut b),
    }
    b.into()
}

fn decrypt_block(key: &[u8], block: &[u8; BLOCK]) -> [u8; BLOCK] {
    let mut b = GenericArray::clone_from_slice(block);
    match key.len() {
        16 => aes::Aes128::new(GenericArray::from_slice(key)).decrypt_block(&mut b),
        _ => aes::Aes256::new(GenericArray::from_slice(key)).decrypt_block(&mut b),
    }
    b.into()
}

fn xor(a: &[u8; BLOCK], b: &[u8]) -> [u8; BLOCK] {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b) {
        *o ^= x;
    }
    out
}

/// AES-CBC with ciphertext stealing, zero IV, the last two blocks swapped ([RFC 3962] 5).
fn cts_encrypt(key: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if plain.len() < BLOCK {
        return Err(CryptoError::Short);
    }
    let blocks: Vec<&[u8]> = plain.chunks(BLOCK).collect();
    let mut prev = [0u8; BLOCK];
    let mut cipher: Vec<[u8; BLOCK]> = Vec::with_capacity(blocks.len());
    for chunk in &blocks {
        let mut padded = [0u8; BLOCK];
        padded[..chunk.len()].copy_from_slice(chunk);
        prev = encrypt_block(key, &xor(&prev, &padded));
        cipher.push(prev);
    }
    if cipher.len() == 1 {
        return Ok(cipher[0].to_vec());
    }
    let last_len = blocks[blocks.len() - 1].len();
    let n = cipher.len();
    let mut out = Vec::with_capacity(plain.len());
    for c in &cipher[..n - 2] {
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&cipher[n - 1]);
    out.extend_from_slice(&cipher[n - 2][..last_len]);
    Ok(out)
}

fn cts_decrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() < BLOCK {
        return Err(CryptoError::Short);
    }
    if data.len() == BLOCK {
        let block: [u8; BLOCK] = data.try_into().map_err(|_| CryptoError::Short)?;
        return Ok(decrypt_block(key, &block).to_vec());
    }
    let n = data.len().div_ceil(BLOCK);
    let last_len = data.len() - (n - 1) * BLOCK;
    let full = |i: usize| -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(&data[i * BLOCK..(i + 1) * BLOCK]);
        b
    };
    let mut out = Vec::with_capacity(data.len());
    let mut prev = [0u8; BLOCK];
    for i in 0..n - 2 {
        let c = full(i);
        out.extend_from_slice(&xor(&decrypt_block(key, &c), &prev));
        prev = c;
    }
    // The swapped pair: C(n-1) holds the last full block's encryption, the tail its stolen end.
    let c_last_full = full(n - 2);
    let tail = &data[(n - 1) * BLOCK..];
    let d = decrypt_block(key, &c_last_full);
    let mut c_prev = d;
    c_prev[..last_len].copy_from_slice(tail);
    let p_last = xor(&d, tail);
    let p_prev = xor(&decrypt_block(key, &c_prev), &prev);
    out.extend_from_slice(&p_prev);
    out.extend_from_slice(&p_last[..last_len]);
    Ok(out)
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = match <Hmac<Sha1> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot fail, and must not verify if it did.
        Err(_) => return [0xff; 20],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// [RFC 3961] appendix A.1.
    #[test]
    fn n_fold_known_answers() {
        assert_eq!(n_fold(b"012345", 8), hex("be072631276b1955"));
        assert_eq!(n_fold(b"password", 7), hex("78a07b6caf85fa"));
        assert_eq!(
            n_fold(b"Rough Consensus, and Running Code", 8),
            hex("bb6ed30870b7f0e0")
        );
        assert_eq!(
            n_fold(b"password", 21),
            hex("59e4a8ca7c0385c3c37b3f6d2000247cb6e6bd5b3e")
        );
        assert_eq!(
            n_fold(b"MASSACHVSETTS INSTITVTE OF TECHNOLOGY", 24),
            hex("db3b0d8f0b061e603282b308a50841229ad798fab9540c1b")
        );
        assert_eq!(
            n_fold(b"kerberos", 16),
            hex("6b65726265726f737b9b5b2b93132b93")
        );
    }

    /// [RFC 3962] appendix B, all six: AES-128 CTS with the key "chicken teriyaki" and a zero IV.
    #[test]
    fn cts_known_answers() {
        let key = b"chicken teriyaki";
        let cases = [
            (
                "4920776f756c64206c696b652074686520",
                "c6353568f2bf8cb4d8a580362da7ff7f97",
            ),
            (
                "4920776f756c64206c696b65207468652047656e6572616c20476175277320",
                "fc00783e0efdb2c1d445d4c8eff7ed2297687268d6ecccc0c07b25e25ecfe5",
            ),
            (
                "4920776f756c64206c696b65207468652047656e6572616c2047617527732043",
                "39312523a78662d5be7fcbcc98ebf5a897687268d6ecccc0c07b25e25ecfe584",
            ),
            (
                "4920776f756c64206c696b65207468652047656e6572616c2047617527732043
                 6869636b656e2c20706c656173652c",
                "97687268d6ecccc0c07b25e25ecfe584b3fffd940c16a18c1b5549d2f838029e
                 39312523a78662d5be7fcbcc98ebf5",
            ),
            (
                "4920776f756c64206c696b65207468652047656e6572616c2047617527732043
                 6869636b656e2c20706c656173652c20",
                "97687268d6ecccc0c07b25e25ecfe5849dad8bbb96c4cdc03bc103e1a194bbd8
                 39312523a78662d5be7fcbcc98ebf5a8",
            ),
            (
                "4920776f756c64206c696b65207468652047656e6572616c2047617527732043
                 6869636b656e2c20706c656173652c20616e6420776f6e746f6e20736f75702e",
                "97687268d6ecccc0c07b25e25ecfe58439312523a78662d5be7fcbcc98ebf5a8
                 4807efe836ee89a526730dbc2f7bc8409dad8bbb96c4cdc03bc103e1a194bbd8",
            ),
        ];
        for (plain, cipher) in cases {
            let (plain, cipher) = (hex(plain), hex(cipher));
            assert_eq!(cts_encrypt(key, &plain).unwrap(), cipher);
            assert_eq!(cts_decrypt(key, &cipher).unwrap(), plain);
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        for (enctype, len) in [(AES128_CTS_HMAC_SHA1_96, 16), (AES256_CTS_HMAC_SHA1_96, 32)] {
            let key = Key::new(enctype, &vec![7u8; len]).unwrap();
            for size in [0usize, 1, 15, 16, 17, 31, 32, 33, 100] {
                let plain: Vec<u8> = (0..size as u8).collect();
                let sealed = key.encrypt(2, &plain, [9; 16]).unwrap();
                assert_eq!(key.decrypt(2, &sealed).unwrap(), plain, "{size}");
                // Another usage, another key, or a flipped bit: refused.
                assert_eq!(key.decrypt(3, &sealed), Err(CryptoError::Integrity));
                let other = Key::new(enctype, &vec![8u8; len]).unwrap();
                assert_eq!(other.decrypt(2, &sealed), Err(CryptoError::Integrity));
                let mut bad = sealed.clone();
                bad[0] ^= 1;
                assert_eq!(key.decrypt(2, &bad), Err(CryptoError::Integrity));
            }
        }
        assert!(Key::new(23, &[0; 16]).is_err(), "RC4 is not offered");
    }
}
