//! SHA-256 of an upload, computed as its fragments stream in and kept in the session record
//! between requests, so a restart or another farm node continues it without re-reading the
//! file. The `sha2` crate does the compression (hardware SHA extensions where present); this
//! type only adds a state that can be stored.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;
const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A SHA-256 computation part way through its input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sha256State {
    h: [u32; 8],
    /// Bytes consumed so far.
    len: u64,
    /// Input not yet compressed (shorter than one block).
    tail: Vec<u8>,
}

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State {
            h: INITIAL,
            len: 0,
            tail: Vec::with_capacity(BLOCK),
        }
    }
}

impl Sha256State {
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let take = (BLOCK - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < BLOCK {
                return;
            }
            compress(&mut self.h, &self.tail);
            self.tail.clear();
        }
        let whole = data.len() / BLOCK * BLOCK;
        compress(&mut self.h, &data[..whole]);
        self.tail.extend_from_slice(&data[whole..]);
    }

    /// The digest of everything hashed so far (the state itself is unchanged).
    pub fn finish(&self) -> [u8; 32] {
        let mut h = self.h;
        let mut last = self.tail.clone();
        last.push(0x80);
        while last.len() % BLOCK != BLOCK - 8 {
            last.push(0);
        }
        last.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress(&mut h, &last);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Lowercase hex of [`Self::finish`].
    pub fn hex(&self) -> String {
        hex::encode(self.finish())
    }
}

/// Compresses whole blocks of `data` (its length is a multiple of 64) into `h`.
fn compress(h: &mut [u32; 8], data: &[u8]) {
    for block in data.chunks_exact(BLOCK) {
        sha2::compress256(h, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn known_answers() {
        assert_eq!(
            Sha256State::default().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut s = Sha256State::default();
        s.update(b"abc");
        assert_eq!(
            s.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        /// Any split of the input, with the state stored and reloaded between pieces, gives
        /// the digest of the whole.
        #[test]
        fn split_and_stored_state_match_one_pass(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut state = Sha256State::default();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                state.update(&data[from..cut]);
                from = cut;
                let json = serde_json::to_string(&state).unwrap();
                state = serde_json::from_str(&json).unwrap();
            }
            prop_assert_eq!(state.len(), data.len() as u64);
            prop_assert_eq!(state.finish().to_vec(), Sha256::digest(&data).to_vec());
        }
    }
}
