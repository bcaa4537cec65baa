//! Session identifiers: random GUIDs, written braced and upper-case like Windows does.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Uuid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID session id")]
pub struct InvalidSessionId;

impl SessionId {
    /// A fresh, unguessable id (122 random bits).
    pub fn random() -> SessionId {
        SessionId(Uuid::new_v4())
    }

    pub const fn from_uuid(u: Uuid) -> SessionId {
        SessionId(u)
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Accepts `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` in any case; the braces may be omitted.
    pub fn parse(s: &str) -> Result<SessionId, InvalidSessionId> {
        parse_guid(s).map(SessionId).ok_or(InvalidSessionId)
    }
}

/// Strict GUID text: 8-4-4-4-12 hex digits, optionally wrapped in one pair of braces.
pub(crate) fn parse_guid(s: &str) -> Option<Uuid> {
    let inner = match (s.strip_prefix('{'), s.strip_suffix('}')) {
        (Some(_), Some(_)) if s.len() >= 2 => &s[1..s.len() - 1],
        (None, None) => s,
        _ => return None,
    };
    if inner.len() != 36 {
        return None;
    }
    let ok = inner.char_indices().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-',
        _ => c.is_ascii_hexdigit(),
    });
    if !ok {
        return None;
    }
    Uuid::parse_str(inner).ok()
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Uuid::encode_buffer();
        write!(f, "{{{}}}", self.0.hyphenated().encode_upper(&mut buf))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_like_windows() {
        let id = SessionId::parse("{a0ff5911-4144-45b3-bf27-27afc8ec8a67}").unwrap();
        assert_eq!(id.to_string(), "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "{}",
            "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67",
            "A0FF5911-4144-45B3-BF27-27AFC8EC8A67}",
            "{A0FF591141444-5B3-BF27-27AFC8EC8A67}",
            "{A0FF5911-4144-45B3-BF27-27AFC8EC8A6G}",
            "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}x",
            "urn:uuid:a0ff5911-4144-45b3-bf27-27afc8ec8a67",
            "a0ff5911414445b3bf2727afc8ec8a67",
            "{+0ff5911-4144-45b3-bf27-27afc8ec8a67}",
        ] {
            assert!(SessionId::parse(s).is_err(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 16]>(), lower in any::<bool>(), braces in any::<bool>()) {
            let id = SessionId::from_uuid(Uuid::from_bytes(bytes));
            let mut text = id.to_string();
            if lower { text = text.to_lowercase(); }
            if !braces { text = text[1..text.len() - 1].to_string(); }
            prop_assert_eq!(SessionId::parse(&text), Ok(id));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = SessionId::parse(&s);
        }
    }
}
