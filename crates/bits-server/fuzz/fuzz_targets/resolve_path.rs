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

use bits_server::target::{resolve, TargetError};
use bits_server::VdirConfig;
use libfuzzer_sys::fuzz_target;

const FIXED: &[&str] = &["/upload/", "/upload/deep/", "/dl/ü/"];
const MAX_VDIRS: usize = 8;
/// `target::MAX_PATH_BYTES`: longest decoded relative path accepted.
const MAX_PATH_BYTES: usize = 2048;
const DEVICE_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
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

fn matches(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
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
    let longest = vdirs
        .iter()
        .filter(|v| matches(path, &v.prefix))
        .map(|v| v.prefix.len())
        .max();

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
        Err(TargetError::NoVdir) => {
            assert_eq!(longest, None, "{path:?}: NoVdir, but a prefix matches");
            return;
        }
        Err(TargetError::Directory) => {
            let rest = &path[longest.expect("Directory without a matching vdir")..];
            assert!(
                rest.is_empty() || rest.ends_with('/'),
                "{path:?}: Directory"
            );
            return;
        }
        Err(TargetError::Unsafe(_)) => return,
    };

    // The vdir: a matching prefix, and no longer one matches.
    let v = &vdirs[target.vdir];
    assert!(matches(path, &v.prefix), "{path:?} -> {target:?}");
    assert_eq!(
        Some(v.prefix.len()),
        longest,
        "{path:?} -> {target:?}: not the longest prefix"
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
            !DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(stem)),
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
    match resolve(&again, &vdirs) {
        Ok(t) if t.vdir == target.vdir => {
            assert_eq!(&t.rel_path, rel, "{path:?} re-encoded as {again:?}")
        }
        Ok(_) => {}
        Err(e) => panic!("{path:?} -> {rel:?}, but re-encoded {again:?} -> {e:?}"),
    }
});
