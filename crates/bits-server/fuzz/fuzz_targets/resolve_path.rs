//! Resolves an arbitrary request path against a set of vdirs and checks that an accepted path can
//! only name a file strictly below the chosen vdir's root.
//!
//! The input is text, so that seeds, the dictionary and crash artifacts are readable:
//!
//! ```text
//! /extra/prefix/        <- every line but the last: one more vdir prefix (kept only if it is a
//! /Other/               <- prefix the config would accept: starts and ends with '/', no '..',
//! /upload/a%20b/c.bin   <- '%' or '\', not a duplicate); the last line is the request path
//! ```
//!
//! Invalid UTF-8 is replaced lossily. The fixed vdirs `/upload/`, `/upload/deep/` and `/dl/ü/`
//! (a non-ASCII prefix) always come first.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use bits_server::target::{resolve, CanonicalPath, TargetError};
use bits_server::VdirConfig;
use libfuzzer_sys::fuzz_target;

const FIXED: &[&str] = &["/upload/", "/upload/deep/", "/dl/ü/"];
const MAX_VDIRS: usize = 8;
/// `target::MAX_PATH_BYTES`: longest decoded relative path accepted.
const MAX_PATH_BYTES: usize = 2048;
const DEVICE_NAMES: [&str; 32] = [
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "COM0", "COM1", "COM2", "COM3", "COM4",
    "COM5", "COM6", "COM7", "COM8", "COM9", "COM\u{b9}", "COM\u{b2}", "COM\u{b3}", "LPT0", "LPT1",
    "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "LPT\u{b9}", "LPT\u{b2}",
    "LPT\u{b3}",
];

fn acceptable_prefix(p: &str, taken: &[VdirConfig]) -> bool {
    p.starts_with('/')
        && p.ends_with('/')
        && !p.contains("..")
        && !p.contains('%')
        && !p.contains('\\')
        && !taken.iter().any(|v| v.prefix.eq_ignore_ascii_case(p))
}

fn vdir(i: usize, prefix: &str) -> VdirConfig {
    VdirConfig {
        prefix: prefix.to_string(),
        root: PathBuf::from(format!("/srv/bits/root{i}")),
        ..VdirConfig::default()
    }
}

/// How many path segments `prefix` covers when `path` lies under it (segment by segment on
/// the decoded path, case-insensitively), independently of the crate's matcher.
fn matches(path: &str, prefix: &str) -> Option<usize> {
    let decoded = CanonicalPath::decode(path).ok()?;
    let segs = decoded.segments();
    let want: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b) || a.to_uppercase() == b.to_uppercase();
    (segs.len() >= want.len() && want.iter().zip(segs).all(|(w, s)| same(w, s)))
        .then_some(want.len())
}

/// Lexical normalisation: drops `.`, lets `..` pop (never above `/`).
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters, independently of the crate under test.
fn encode(seg: &str) -> String {
    let mut s = String::new();
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

static SHOW_OUTCOMES: OnceLock<bool> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let path = lines.pop().unwrap_or_default();

    let mut vdirs: Vec<VdirConfig> = Vec::new();
    for p in FIXED.iter().copied().chain(lines) {
        if vdirs.len() < MAX_VDIRS && acceptable_prefix(p, &vdirs) {
            vdirs.push(vdir(vdirs.len(), p));
        }
    }
    let longest = vdirs.iter().filter_map(|v| matches(path, &v.prefix)).max();

    let result = resolve(path, &vdirs);
    if *SHOW_OUTCOMES.get_or_init(|| std::env::var_os("BITS_FUZZ_SHOW").is_some()) {
        // `BITS_FUZZ_SHOW=1 cargo fuzz run resolve_path <corpus> -- -runs=0` tallies what a
        // corpus reaches.
        match &result {
            Ok(t) => eprintln!("outcome: Ok(vdir {})", t.vdir),
            Err(e) => eprintln!("outcome: Err({e:?})"),
        }
    }
    let target = match result {
        Ok(t) => t,
        // NoVdir also for `/upload` (the prefix's segments, no file below it).
        Err(TargetError::NoVdir) => return,
        Err(TargetError::Directory) => {
            assert!(longest.is_some(), "{path:?}: Directory without a matching vdir");
            assert!(path.ends_with('/'), "{path:?}: Directory");
            return;
        }
        Err(TargetError::Unsafe(_)) => return,
    };

    // The vdir: a matching prefix, and no longer one matches.
    let v = &vdirs[target.vdir];
    assert_eq!(
        matches(path, &v.prefix),
        longest,
        "{path:?} -> {target:?}: not the longest matching prefix"
    );

    // The relative path, segment by segment.
    let rel = &target.rel_path;
    assert!(!rel.is_empty(), "{path:?}: empty rel_path");
    assert!(
        rel.len() <= MAX_PATH_BYTES,
        "{path:?}: rel_path of {} bytes",
        rel.len()
    );
    let segments: Vec<&str> = rel.split('/').collect();
    for seg in &segments {
        assert!(!seg.is_empty(), "{path:?} -> {rel:?}: empty segment");
        assert!(
            *seg != "." && *seg != "..",
            "{path:?} -> {rel:?}: dot segment"
        );
        assert!(
            seg.len() <= 255,
            "{path:?} -> {rel:?}: segment longer than NAME_MAX"
        );
        assert!(
            !seg.chars().any(|c| c.is_control()
                || matches!(
                    c,
                    '\0' | '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'
                )),
            "{path:?} -> {rel:?}: reserved or control character in {seg:?}"
        );
        assert!(
            !seg.ends_with('.') && !seg.ends_with(' ') && !seg.starts_with(' '),
            "{path:?} -> {rel:?}: leading/trailing dot or space in {seg:?}"
        );
        let stem = seg.split('.').next().unwrap_or("").trim_end();
        assert!(
            !DEVICE_NAMES
                .iter()
                .any(|d| d.eq_ignore_ascii_case(stem) || d.to_uppercase() == stem.to_uppercase()),
            "{path:?} -> {rel:?}: device name {seg:?}"
        );
    }

    // Joined onto the root, the path stays strictly below it and keeps one component per segment.
    let joined = normalise(&v.root.join(rel));
    assert!(
        joined.starts_with(&v.root) && joined != v.root,
        "{path:?} -> {rel:?} escapes {:?}: {joined:?}",
        v.root
    );
    assert_eq!(
        joined.components().count(),
        v.root.components().count() + segments.len(),
        "{path:?} -> {rel:?}: segments merged or split"
    );
    assert_eq!(
        v.root.join(rel),
        joined,
        "{path:?} -> {rel:?}: not already normal"
    );

    // Re-encoding the accepted segments resolves again, to the same file when the vdir is the same.
    let again = format!(
        "{}{}",
        v.prefix,
        segments
            .iter()
            .map(|s| encode(s))
            .collect::<Vec<_>>()
            .join("/")
    );
    // Paths are decoded before vdirs are chosen: the same decoded path, the same vdir.
    match resolve(&again, &vdirs) {
        Ok(t) => assert_eq!(t, target, "{path:?} re-encoded as {again:?}"),
        Err(e) => panic!("{path:?} -> {rel:?}, but re-encoded {again:?} -> {e:?}"),
    }
});
