//! MIT keytab files (format 0x0502, as `kadmin ktadd` and `ktpass` write them): the service's
//! long-term keys by principal, version and encryption type.

use bits_proto::kerberos::wire::Reader;
use picky_krb::crypto::CipherSuite;

/// `aes128-cts-hmac-sha1-96` and `aes256-cts-hmac-sha1-96` ([RFC 3962]).
pub const AES128_CTS_HMAC_SHA1_96: i32 = 17;
pub const AES256_CTS_HMAC_SHA1_96: i32 = 18;

/// A long-term key of an AES encryption type (the only ones a service reads tickets with here:
/// DES3 and RC4 keys are skipped).
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
    /// `None` for another encryption type, or a key of the wrong size for its type.
    pub fn new(enctype: i32, bytes: &[u8]) -> Option<Key> {
        let want = match enctype {
            AES128_CTS_HMAC_SHA1_96 => 16,
            AES256_CTS_HMAC_SHA1_96 => 32,
            _ => return None,
        };
        (bytes.len() == want).then(|| Key {
            enctype,
            bytes: bytes.to_vec(),
        })
    }

    pub fn enctype(&self) -> i32 {
        self.enctype
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// picky-krb's cipher for this key's type.
    pub fn suite(&self) -> CipherSuite {
        if self.enctype == AES128_CTS_HMAC_SHA1_96 {
            CipherSuite::Aes128CtsHmacSha196
        } else {
            CipherSuite::Aes256CtsHmacSha196
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeytabError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: not a version 0x0502 keytab")]
    Version(String),
    #[error("{0}: truncated or malformed entry")]
    Malformed(String),
    #[error("{0}: no AES key (aes256-cts-hmac-sha1-96 or aes128-cts-hmac-sha1-96)")]
    NoUsableKey(String),
}

/// One key of one service principal.
#[derive(Clone, Debug)]
pub struct Entry {
    pub realm: String,
    /// Name components: `HTTP/host` is `["HTTP", "host"]`.
    pub components: Vec<String>,
    pub kvno: u32,
    pub key: Key,
}

impl Entry {
    /// `HTTP/host` (without the realm).
    pub fn name(&self) -> String {
        self.components.join("/")
    }
}

/// The usable (AES) keys of a keytab file; other encryption types are skipped.
pub fn load(path: &std::path::Path) -> Result<Vec<Entry>, KeytabError> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| KeytabError::Read(origin.clone(), e))?;
    let entries = parse(&bytes).map_err(|e| match e {
        ParseError::Version => KeytabError::Version(origin.clone()),
        ParseError::Malformed => KeytabError::Malformed(origin.clone()),
    })?;
    if entries.is_empty() {
        return Err(KeytabError::NoUsableKey(origin));
    }
    Ok(entries)
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Version,
    Malformed,
}

pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, ParseError> {
    if bytes.get(..2) != Some(&[0x05, 0x02]) {
        return Err(ParseError::Version);
    }
    let mut rest = &bytes[2..];
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let size = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        let len = size.unsigned_abs() as usize;
        if rest.len() < len {
            return Err(ParseError::Malformed);
        }
        let (record, after) = rest.split_at(len);
        rest = after;
        // A negative size marks a deleted entry (a hole).
        if size <= 0 {
            continue;
        }
        if let Some(entry) = entry(record).ok_or(ParseError::Malformed)? {
            out.push(entry);
        }
    }
    Ok(out)
}

/// One record; `Some(None)` for a well-formed entry of an encryption type not supported.
fn entry(record: &[u8]) -> Option<Option<Entry>> {
    let mut r = Reader(record);
    let count = r.u16()?;
    let realm = r.string16()?;
    let components = (0..count)
        .map(|_| r.string16())
        .collect::<Option<Vec<_>>>()?;
    let _name_type = r.u32()?;
    let _timestamp = r.u32()?;
    let kvno8 = r.u8()?;
    let enctype = r.u16()?;
    let key_len = r.u16()? as usize;
    let key = r.take(key_len)?;
    // A 32-bit version number follows in newer files; it supersedes the 8-bit one.
    let kvno = match r.u32() {
        Some(v) if v != 0 => v,
        _ => u32::from(kvno8),
    };
    let Some(key) = Key::new(i32::from(enctype), key) else {
        return Some(None);
    };
    Some(Some(Entry {
        realm,
        components,
        kvno,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keytab written by MIT `kadmin.local ktadd` for `HTTP/localhost@TEST.BITS` (a throwaway
    /// realm): one AES-256 and one AES-128 key, version 2.
    #[test]
    fn reads_an_mit_keytab() {
        let entries = parse(include_bytes!("testdata/http.keytab")).unwrap();
        assert_eq!(entries.len(), 2);
        for e in &entries {
            assert_eq!(
                (e.realm.as_str(), e.name().as_str(), e.kvno),
                ("TEST.BITS", "HTTP/localhost", 2)
            );
        }
        assert_eq!(entries[0].key.enctype(), AES256_CTS_HMAC_SHA1_96);
        assert!(matches!(parse(b"\x05\x01"), Err(ParseError::Version)));
        assert!(parse(b"\x05\x02\x00\x00\x00\x40\x00").is_err());
    }
}
