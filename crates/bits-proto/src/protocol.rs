//! Upload protocol identifiers and negotiation (`BITS-Supported-Protocols` -> `BITS-Protocol`).

use std::fmt;

use uuid::Uuid;

use crate::session_id::parse_guid;

/// A protocol GUID. Windows servers answer with the lower-case braced form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolId(Uuid);

/// The one upload protocol that exists: "BITS 1.5 Upload Protocol".
pub const UPLOAD_PROTOCOL_1_5: ProtocolId =
    ProtocolId(Uuid::from_u128(0x7df0354d_249b_430f_820d_3d2a9bef4931));

/// Windows servers look at no more than this many offered protocols.
pub const MAX_OFFERED_PROTOCOLS: usize = 100;

impl ProtocolId {
    pub fn parse(s: &str) -> Option<ProtocolId> {
        // Offered protocols are always braced on the wire.
        if !(s.starts_with('{') && s.ends_with('}')) {
            return None;
        }
        parse_guid(s).map(ProtocolId)
    }
}

impl fmt::Display for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.0.hyphenated())
    }
}

impl fmt::Debug for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Picks the client's most preferred protocol that the server supports.
///
/// The list is split on whitespace and commas; entries that are not GUIDs are skipped (an unknown
/// token is just a protocol we do not speak). Only the first [`MAX_OFFERED_PROTOCOLS`] entries count.
pub fn negotiate(offered: &str, supported: &[ProtocolId]) -> Option<ProtocolId> {
    offered
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .take(MAX_OFFERED_PROTOCOLS)
        .filter_map(ProtocolId::parse)
        .find(|p| supported.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";
    const OTHER: &str = "{11111111-1111-1111-1111-111111111111}";

    #[test]
    fn checklist_11_to_16() {
        let s = [UPLOAD_PROTOCOL_1_5];
        assert_eq!(negotiate(P, &s), Some(UPLOAD_PROTOCOL_1_5));
        assert_eq!(negotiate(&P.to_uppercase(), &s), Some(UPLOAD_PROTOCOL_1_5));
        assert_eq!(
            negotiate("{7df0354d-249b-430f-820D-3D2A9BEF4931}", &s),
            Some(UPLOAD_PROTOCOL_1_5)
        );
        assert_eq!(
            negotiate(&format!("{OTHER} {P}"), &s),
            Some(UPLOAD_PROTOCOL_1_5)
        );
        assert_eq!(
            negotiate(&format!("{OTHER},{P}"), &s),
            Some(UPLOAD_PROTOCOL_1_5)
        );
        assert_eq!(
            negotiate(&format!(" {OTHER} ,\t{P} "), &s),
            Some(UPLOAD_PROTOCOL_1_5)
        );
        assert_eq!(negotiate(OTHER, &s), None);
        assert_eq!(negotiate("", &s), None);
        assert_eq!(negotiate("7df0354d-249b-430f-820d-3d2a9bef4931", &s), None);
        assert_eq!(UPLOAD_PROTOCOL_1_5.to_string(), P);
    }

    #[test]
    fn only_first_hundred_count() {
        let mut list = vec![OTHER; MAX_OFFERED_PROTOCOLS].join(" ");
        list.push(' ');
        list.push_str(P);
        assert_eq!(negotiate(&list, &[UPLOAD_PROTOCOL_1_5]), None);
    }

    proptest! {
        #[test]
        fn found_wherever_it_is(before in 0usize..20, after in 0usize..20, comma in any::<bool>()) {
            let sep = if comma { "," } else { " " };
            let mut items = vec![OTHER.to_string(); before];
            items.push(P.to_uppercase());
            items.extend(std::iter::repeat_n(OTHER.to_string(), after));
            prop_assert_eq!(negotiate(&items.join(sep), &[UPLOAD_PROTOCOL_1_5]), Some(UPLOAD_PROTOCOL_1_5));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = negotiate(&s, &[UPLOAD_PROTOCOL_1_5]);
        }
    }
}
