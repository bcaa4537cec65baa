//! `Content-Range` of a Fragment: `bytes <first>-<last>/<total>` (RFC 2616 §14.16).

use std::fmt;

/// The byte span a fragment carries. `len` is zero only for the empty-file forms
/// (`bytes */0`, `bytes 0--1/0`), which describe a zero-length upload (docs/decisions.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub len: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("Content-Range must start with the unit \"bytes\"")]
    Unit,
    #[error("Content-Range is not of the form \"bytes first-last/total\"")]
    Syntax,
    #[error("Content-Range number is out of range")]
    Overflow,
    #[error("Content-Range needs first <= last < total")]
    Order,
}

impl ContentRange {
    /// A non-empty span `first..=last` of a `total`-byte entity.
    pub fn new(first: u64, last: u64, total: u64) -> Result<ContentRange, RangeError> {
        if first > last || last >= total {
            return Err(RangeError::Order);
        }
        Ok(ContentRange {
            first,
            len: last - first + 1,
            total,
        })
    }

    /// The whole of a zero-length entity.
    pub const fn empty() -> ContentRange {
        ContentRange {
            first: 0,
            len: 0,
            total: 0,
        }
    }

    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.first + self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parse(s: &str) -> Result<ContentRange, RangeError> {
        let s = s.trim_matches(|c| c == ' ' || c == '\t');
        let (unit, rest) = s.split_at(s.find([' ', '\t']).ok_or(RangeError::Syntax)?);
        if !unit.eq_ignore_ascii_case("bytes") {
            return Err(RangeError::Unit);
        }
        let spec = rest.trim_start_matches([' ', '\t']);
        let (span, total) = spec.split_once('/').ok_or(RangeError::Syntax)?;
        let total = parse_number(total)?;
        if total == 0 && (span == "*" || span == "0--1") {
            return Ok(ContentRange::empty());
        }
        let (first, last) = span.split_once('-').ok_or(RangeError::Syntax)?;
        ContentRange::new(parse_number(first)?, parse_number(last)?, total)
    }
}

fn parse_number(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Syntax);
    }
    s.parse().map_err(|_| RangeError::Overflow)
}

impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            write!(f, "bytes */{}", self.total)
        } else {
            write!(f, "bytes {}-{}/{}", self.first, self.end() - 1, self.total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_wire_examples() {
        assert_eq!(
            ContentRange::parse("bytes 0-4891/4892"),
            Ok(ContentRange {
                first: 0,
                len: 4892,
                total: 4892
            })
        );
        assert_eq!(
            ContentRange::parse("BYTES 100-199/300"),
            Ok(ContentRange {
                first: 100,
                len: 100,
                total: 300
            })
        );
        assert_eq!(ContentRange::parse("bytes */0"), Ok(ContentRange::empty()));
        assert_eq!(
            ContentRange::parse("bytes 0--1/0"),
            Ok(ContentRange::empty())
        );
    }

    #[test]
    fn rejects_checklist_34_and_friends() {
        for s in [
            "bytes 10-5/100",
            "bytes 0-99/50",
            "bytes 0-9",
            "0-9/10",
            "items 0-9/10",
            "bytes 0-9/*",
            "bytes */10",
            "bytes -1-9/10",
            "bytes +0-9/10",
            "bytes 0-+9/10",
            "bytes 0 -9/10",
            "bytes 0-9/ 10",
            "bytes 0-9/10x",
            "bytes 0x0-9/10",
            "bytes 0-0/0",
            "bytes=0-9/10",
            "bytes",
            "",
            "bytes 0-18446744073709551616/18446744073709551617",
            "bytes 5-5/5",
        ] {
            assert!(ContentRange::parse(s).is_err(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(first in 0u64..u64::MAX - 2, extra in 0u64..1 << 40, tail in 1u64..1 << 40) {
            let last = first.saturating_add(extra).min(u64::MAX - 2);
            let total = last.saturating_add(tail);
            let r = ContentRange::new(first, last, total).unwrap();
            prop_assert_eq!(ContentRange::parse(&r.to_string()), Ok(r));
        }

        #[test]
        fn accepted_ranges_are_ordered(s in "(bytes|BYTES|items)?[ \t]{0,2}[0-9]{0,4}-?[0-9]{0,4}/?[0-9*]{0,4}") {
            if let Ok(r) = ContentRange::parse(&s) {
                prop_assert!(r.end() <= r.total);
                prop_assert!(r.len > 0 || r.total == 0);
            }
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = ContentRange::parse(&s);
        }
    }
}
