//! What a vdir prefix is made of and when two prefixes are the same: the rule routing
//! (`target.rs`) matches requests by and config validation refuses duplicate prefixes by. Below
//! both, so that the config does not import routing.

/// The segments of a vdir prefix (`/a/b/` → `["a", "b"]`; `/` → none).
pub fn prefix_segments(prefix: &str) -> impl Iterator<Item = &str> {
    prefix.split('/').filter(|s| !s.is_empty())
}

/// Whether two vdir prefixes name the same place (segment by segment, as routing compares
/// them): such a pair would make routing ambiguous.
pub fn same_prefix(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) =
        (prefix_segments(a).collect(), prefix_segments(b).collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| same_segment(x, y))
}

/// Whether two segments are the same name for routing: compared case-insensitively, as IIS
/// does (Unicode simple upper-casing, so `ı` and `i` both match `I`).
pub fn same_segment(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.to_uppercase() == b.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_equal_under_routing_are_the_same_prefix() {
        assert!(same_prefix("/Upload/", "/upload/"));
        assert!(same_prefix("/stra\u{df}e/", "/STRASSE/"));
        assert!(same_prefix("/a//b/", "/a/b/"));
        assert!(!same_prefix("/a/", "/a/b/"));
    }
}
