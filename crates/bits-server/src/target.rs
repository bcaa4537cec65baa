//! Mapping a request path onto a virtual directory and a safe relative destination path.

use percent_encoding::percent_decode_str;

use crate::config::VdirConfig;
use crate::prefix::{prefix_segments, same_segment};

/// Where a request points: which vdir, and the file below its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadTarget {
    pub vdir: usize,
    /// Decoded, validated path below the vdir root, segments joined by `/`.
    pub rel_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no virtual directory serves this path")]
    NoVdir,
    #[error("the URL names a directory, not a file")]
    Directory,
    #[error("unsafe path segment: {0}")]
    Unsafe(&'static str),
}

/// Windows device names, refused as any segment's stem (with or without extension) so that
/// files published here stay usable when copied to Windows. Windows also reserves the
/// superscript digits ¹²³ after COM/LPT, and the console names.
const DEVICE_NAMES: [&str; 32] = [
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    "COM0",
    "COM1",
    "COM2",
    "COM3",
    "COM4",
    "COM5",
    "COM6",
    "COM7",
    "COM8",
    "COM9",
    "COM\u{b9}",
    "COM\u{b2}",
    "COM\u{b3}",
    "LPT0",
    "LPT1",
    "LPT2",
    "LPT3",
    "LPT4",
    "LPT5",
    "LPT6",
    "LPT7",
    "LPT8",
    "LPT9",
    "LPT\u{b9}",
    "LPT\u{b2}",
    "LPT\u{b3}",
];

/// Longest segment accepted (NAME_MAX on Linux).
const MAX_SEGMENT_BYTES: usize = 255;

/// Longest relative path accepted: under PATH_MAX with room for any root, and under the URL
/// limit of BITS clients ([`bits_proto::MAX_URL_CHARS`]).
const MAX_PATH_BYTES: usize = 2048;

/// A request path decoded once: its segments, percent-decoded as UTF-8. Everything that
/// decides where a request goes (the vdir, and the file below its root) reads these, never the
/// raw path, so an encoded character cannot select one vdir for routing and another for
/// storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath {
    segments: Vec<String>,
    /// The raw path ended with `/` (it names a directory).
    directory: bool,
}

impl CanonicalPath {
    /// Decodes `raw` (the still percent-encoded request path without query). Refuses a path
    /// that does not start with `/`, invalid UTF-8, and segments that decode to something
    /// containing `/`, `\\` or NUL (an encoded separator would make one segment two).
    pub fn decode(raw: &str) -> Result<CanonicalPath, TargetError> {
        let rest = raw.strip_prefix('/').ok_or(TargetError::NoVdir)?;
        if rest.is_empty() {
            return Ok(CanonicalPath {
                segments: Vec::new(),
                directory: true,
            });
        }
        let directory = rest.ends_with('/');
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        for raw_seg in rest.split('/') {
            let seg = percent_decode_str(raw_seg)
                .decode_utf8()
                .map_err(|_| TargetError::Unsafe("not UTF-8"))?;
            if seg.contains(['/', '\\', '\0']) {
                return Err(TargetError::Unsafe("encoded separator or NUL"));
            }
            segments.push(seg.into_owned());
        }
        Ok(CanonicalPath {
            segments,
            directory,
        })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

/// Whether `path` lies under the vdir `prefix`, compared segment by segment.
fn under_prefix(path: &CanonicalPath, prefix: &str) -> Option<usize> {
    let mut n = 0;
    for p in prefix_segments(prefix) {
        let seg = path.segments.get(n)?;
        if !same_segment(seg, p) {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// Resolves `path` (the raw, still percent-encoded request path without query) against `vdirs`:
/// decoded once, then matched to the vdir with the longest prefix, segment by segment.
pub fn resolve(path: &str, vdirs: &[VdirConfig]) -> Result<UploadTarget, TargetError> {
    let canonical = CanonicalPath::decode(path)?;
    resolve_canonical(&canonical, vdirs)
}

/// [`resolve`] for an already decoded path.
pub fn resolve_canonical(
    path: &CanonicalPath,
    vdirs: &[VdirConfig],
) -> Result<UploadTarget, TargetError> {
    let (vdir, skip) = vdirs
        .iter()
        .enumerate()
        .filter_map(|(i, v)| under_prefix(path, &v.prefix).map(|n| (i, n)))
        .max_by_key(|&(_, n)| n)
        .ok_or(TargetError::NoVdir)?;
    let rest = &path.segments[skip..];
    if rest.is_empty() {
        // `/upload` (no slash) is not under `/upload/`; `/upload/` names its directory.
        return Err(if path.directory && skip == path.segments.len() {
            TargetError::Directory
        } else {
            TargetError::NoVdir
        });
    }
    if path.directory {
        return Err(TargetError::Directory);
    }
    for seg in rest {
        check_segment(seg)?;
    }
    let rel_path = rest.join("/");
    if rel_path.len() > MAX_PATH_BYTES {
        return Err(TargetError::Unsafe("path too long"));
    }
    Ok(UploadTarget { vdir, rel_path })
}

/// Re-validates a relative destination path read back from storage: every segment must be one
/// [`resolve`] could have produced.
pub fn check_rel_path(rel_path: &str) -> Result<(), TargetError> {
    if rel_path.len() > MAX_PATH_BYTES {
        return Err(TargetError::Unsafe("path too long"));
    }
    rel_path.split('/').try_for_each(check_segment)
}

/// Whether an already decoded name is acceptable as one path segment.
pub fn is_safe_segment(seg: &str) -> bool {
    check_segment(seg).is_ok()
}

/// Characters that change how a name displays without being visible (bidirectional overrides
/// and isolates, zero-width characters, the BOM, soft hyphen, interlinear annotation): a name
/// holding one can pass for another in a listing (`invoice\u{202e}fdp.exe`).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}')
}

fn check_segment(seg: &str) -> Result<(), TargetError> {
    if seg.is_empty() {
        return Err(TargetError::Unsafe("empty segment"));
    }
    if seg == "." || seg == ".." {
        return Err(TargetError::Unsafe("dot segment"));
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(TargetError::Unsafe("segment too long"));
    }
    if seg.chars().any(|c| {
        c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
    }) {
        return Err(TargetError::Unsafe("reserved character"));
    }
    if seg.chars().any(is_invisible_format) {
        return Err(TargetError::Unsafe("invisible formatting character"));
    }
    if seg.ends_with('.') || seg.ends_with(' ') || seg.starts_with(' ') {
        return Err(TargetError::Unsafe("leading/trailing dot or space"));
    }
    let stem = seg.split('.').next().unwrap_or("");
    if DEVICE_NAMES
        .iter()
        .any(|d| same_segment(d, stem.trim_end()))
    {
        return Err(TargetError::Unsafe("device name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vdirs() -> Vec<VdirConfig> {
        vec![
            VdirConfig {
                prefix: "/upload/".into(),
                ..VdirConfig::default()
            },
            VdirConfig {
                prefix: "/upload/deep/".into(),
                ..VdirConfig::default()
            },
        ]
    }

    #[test]
    fn maps_longest_prefix() {
        let v = vdirs();
        assert_eq!(
            resolve("/upload/a.bin", &v),
            Ok(UploadTarget {
                vdir: 0,
                rel_path: "a.bin".into()
            })
        );
        assert_eq!(
            resolve("/UPLOAD/sub/a.bin", &v),
            Ok(UploadTarget {
                vdir: 0,
                rel_path: "sub/a.bin".into()
            })
        );
        assert_eq!(
            resolve("/upload/deep/x", &v),
            Ok(UploadTarget {
                vdir: 1,
                rel_path: "x".into()
            })
        );
        assert_eq!(
            resolve("/upload/a%20b.txt", &v),
            Ok(UploadTarget {
                vdir: 0,
                rel_path: "a b.txt".into()
            })
        );
    }

    #[test]
    fn refuses_hostile_paths() {
        let v = vdirs();
        assert_eq!(resolve("/notupload/a.bin", &v), Err(TargetError::NoVdir));
        assert_eq!(resolve("/upload", &v), Err(TargetError::NoVdir));
        assert_eq!(resolve("/upload/", &v), Err(TargetError::Directory));
        assert_eq!(resolve("/upload/sub/", &v), Err(TargetError::Directory));
        for p in [
            "/upload/../secret.bin",
            "/upload/%2e%2e/secret.bin",
            "/upload/%2E%2E/secret.bin",
            "/upload/./a",
            "/upload/a//b",
            "/upload/a%2fb",
            "/upload/a%5cb",
            "/upload/..%5csecret",
            "/upload/a%00b",
            "/upload/%c0%ae%c0%ae/x",
            "/upload/%ff",
            "/upload/con",
            "/upload/COM1.txt",
            "/upload/nul.tar.gz",
            "/upload/a:b",
            "/upload/trailing.",
            "/upload/x%0d%0aSet-Cookie:1",
            "/upload/COM%C2%B9",
            "/upload/lpt%C2%B3.txt",
            "/upload/CONIN$",
            "/upload/conout$.log",
            "/upload/com0",
            "/upload/invoice%E2%80%AEfdp.exe",
            "/upload/a%E2%81%A6b",
            "/upload/zero%E2%80%8Bwidth",
            "/upload/%EF%BB%BFbom",
            "/upload/soft%C2%ADhyphen",
        ] {
            assert!(matches!(resolve(p, &v), Err(TargetError::Unsafe(_))), "{p}");
        }
    }

    fn nested() -> Vec<VdirConfig> {
        ["/nested/", "/nested/inner/", "/"]
            .iter()
            .map(|p| VdirConfig {
                prefix: (*p).into(),
                ..VdirConfig::default()
            })
            .collect()
    }

    #[test]
    fn encoded_prefix_segments_select_the_vdir_they_decode_to() {
        let v = nested();
        for p in [
            "/nested/inner/f.txt",
            "/nested/%69nner/f.txt",
            "/%6Eested/inner/f.txt",
            "/NESTED/%49NNER/f.txt",
            "/nested/inner/%66.txt",
        ] {
            assert_eq!(resolve(p, &v).map(|t| t.vdir), Ok(1), "{p}");
        }
        // Decoded once: a double-encoded name is a different (literal) segment.
        assert_eq!(
            resolve("/nested/%2569nner/f.txt", &v),
            Ok(UploadTarget {
                vdir: 0,
                rel_path: "%69nner/f.txt".into()
            })
        );
        // An encoded separator never joins or splits prefix segments.
        for p in [
            "/nested%2Finner/f.txt",
            "/nested%5Cinner/f.txt",
            "/nested/inner%00/f",
        ] {
            assert!(matches!(resolve(p, &v), Err(TargetError::Unsafe(_))), "{p}");
        }
        assert_eq!(resolve("/x.bin", &v).map(|t| t.vdir), Ok(2));
        // The vdir itself without its slash names no file (not a file `nested` under `/`).
        assert_eq!(resolve("/nested", &v), Err(TargetError::NoVdir));
    }

    #[test]
    fn stored_paths_are_revalidated() {
        assert!(check_rel_path("a/b.txt").is_ok());
        for bad in ["../x", "a//b", "/abs", "a/./b", "con", "x\u{202e}y", ""] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
    }

    /// Percent-encodes every byte of `s` that `keep` does not accept.
    fn encode_where(s: &str, mask: &[bool]) -> String {
        let mut out = String::new();
        for (i, b) in s.bytes().enumerate() {
            let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
            if unreserved && !mask.get(i).copied().unwrap_or(false) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    proptest::proptest! {
        /// The vdir (and file) chosen for any percent-encoding of a path equals the one chosen
        /// for the path with only the necessary escapes.
        #[test]
        fn vdir_of_an_encoded_path_is_the_vdir_of_its_decoded_form(
            segs in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("nested".to_string()),
                    proptest::strategy::Just("inner".to_string()),
                    proptest::strategy::Just("INNER".to_string()),
                    proptest::strategy::Just("upload".to_string()),
                    proptest::strategy::Just("deep".to_string()),
                    "[a-zA-Z0-9 ._~%\u{130}\u{131}\u{e9}-]{1,8}",
                ],
                1..6,
            ),
            masks in proptest::collection::vec(proptest::collection::vec(proptest::bool::ANY, 0..24), 6),
            trailing_slash in proptest::bool::ANY,
        ) {
            let mut v = nested();
            v.extend(vdirs());
            let plain: Vec<String> = segs.iter().map(|s| encode_where(s, &[])).collect();
            let encoded: Vec<String> = segs
                .iter()
                .zip(&masks)
                .map(|(s, m)| encode_where(s, m))
                .collect();
            let slash = if trailing_slash { "/" } else { "" };
            let a = resolve(&format!("/{}{slash}", plain.join("/")), &v);
            let b = resolve(&format!("/{}{slash}", encoded.join("/")), &v);
            proptest::prop_assert_eq!(a, b);
        }
    }
}
