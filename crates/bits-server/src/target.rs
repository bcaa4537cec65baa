//! Mapping a request path onto a virtual directory and a safe relative destination path.

use percent_encoding::percent_decode_str;

use crate::config::VdirConfig;

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

/// Windows device names, refused as any segment (with or without extension) so that files
/// published here stay usable when copied to Windows.
const DEVICE_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Longest segment accepted (NAME_MAX on Linux).
const MAX_SEGMENT_BYTES: usize = 255;

/// Longest relative path accepted: under PATH_MAX with room for any root, and near the
/// 2,200-character URL limit of BITS clients.
const MAX_PATH_BYTES: usize = 2048;

/// Resolves `path` (the raw, still percent-encoded request path without query) against `vdirs`,
/// picking the longest matching prefix (compared case-insensitively, as IIS does).
pub fn resolve(path: &str, vdirs: &[VdirConfig]) -> Result<UploadTarget, TargetError> {
    let (vdir, rest) = vdirs
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            path.len() >= v.prefix.len()
                && path.as_bytes()[..v.prefix.len()].eq_ignore_ascii_case(v.prefix.as_bytes())
        })
        .max_by_key(|(_, v)| v.prefix.len())
        .map(|(i, v)| (i, &path[v.prefix.len()..]))
        .ok_or(TargetError::NoVdir)?;
    if rest.is_empty() || rest.ends_with('/') {
        return Err(TargetError::Directory);
    }
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        segments.push(decode_segment(raw)?);
    }
    let rel_path = segments.join("/");
    if rel_path.len() > MAX_PATH_BYTES {
        return Err(TargetError::Unsafe("path too long"));
    }
    Ok(UploadTarget { vdir, rel_path })
}

/// Whether an already decoded name is acceptable as one path segment.
pub fn is_safe_segment(seg: &str) -> bool {
    check_segment(seg).is_ok()
}

fn decode_segment(raw: &str) -> Result<String, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Unsafe("empty segment"));
    }
    let seg = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| TargetError::Unsafe("not UTF-8"))?;
    check_segment(&seg)?;
    Ok(seg.into_owned())
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
    if seg.ends_with('.') || seg.ends_with(' ') || seg.starts_with(' ') {
        return Err(TargetError::Unsafe("leading/trailing dot or space"));
    }
    let stem = seg.split('.').next().unwrap_or("");
    if DEVICE_NAMES
        .iter()
        .any(|d| d.eq_ignore_ascii_case(stem.trim_end()))
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
        ] {
            assert!(matches!(resolve(p, &v), Err(TargetError::Unsafe(_))), "{p}");
        }
    }
}
