//! Plans a GET for arbitrary request headers against a file and checks the plan: ranges are
//! non-empty and inside the file, 416 only when nothing requested overlaps it, 304 only when a
//! validator asked for it.
//!
//! The input is text shaped like a request head, so that seeds, the dictionary and crash
//! artifacts are readable:
//!
//! ```text
//! 10000 1700000000 "abc"    <- the file: length, mtime (seconds), ETag; each may be missing or
//!                              invalid, then 10000 / 1700000000 / "abc" is used
//! Range: bytes=0-99,-5      <- then (name, value) pairs, one per line, split at the first ':'
//! If-Range: "abc"
//! ```
//!
//! One optional space after the ':' and a trailing '\r' are dropped; lines without ':' and pairs
//! that are not a valid `HeaderName`/`HeaderValue` are skipped; repeated names are appended.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use bits_server::http::range::{plan, Plan, Representation};
use http::header::{HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;

const MAX_RANGES: usize = 32;

fn input(data: &[u8]) -> (Representation, HeaderMap) {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut fields = first.split(' ');
    let len = fields.next().and_then(|f| f.parse().ok()).unwrap_or(10_000);
    // `Representation::of` clamps mtimes to 0..=i64::MAX seconds.
    let secs = fields
        .next()
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(1_700_000_000)
        .min(i64::MAX as u64);
    let etag = fields
        .next()
        .filter(|e| !e.is_empty())
        .unwrap_or("\"abc\"")
        .to_string();
    let rep = Representation {
        len,
        modified: UNIX_EPOCH + Duration::from_secs(secs),
        etag,
    };

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if headers.try_append(name, value).is_err() {
            break;
        }
    }
    (rep, headers)
}

fn text(h: &HeaderMap, name: HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Whether some range of a `bytes=` Range value overlaps `0..len`, parsed here from RFC 9110's
/// grammar, independently of `http-range-header`. Specs this parser does not understand count as
/// not overlapping.
fn some_range_overlaps(range: &str, len: u64) -> bool {
    let Some(set) = range.strip_prefix("bytes=") else {
        return false;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    set.split(',').map(str::trim).any(|spec| {
        let Some((first, last)) = spec.split_once('-') else {
            return false;
        };
        match (num(first), num(last)) {
            // first-pos "-" [ last-pos ]: satisfiable if first-pos < len (and not reversed).
            (Some(f), Some(l)) => f <= l && f < len,
            (Some(f), None) if last.is_empty() => f < len,
            // suffix-range: satisfiable if the suffix is non-zero and the file non-empty.
            (None, Some(n)) if first.is_empty() => n > 0 && len > 0,
            _ => false,
        }
    })
}

static SHOW_OUTCOMES: OnceLock<bool> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (rep, headers) = input(data);
    let result = plan(&headers, &rep);
    if *SHOW_OUTCOMES.get_or_init(|| std::env::var_os("BITS_FUZZ_SHOW").is_some()) {
        // `BITS_FUZZ_SHOW=1 cargo fuzz run download_plan <corpus> -- -runs=0` tallies what a
        // corpus reaches.
        let shown = format!("{result:?}");
        eprintln!("outcome: {}", shown.split('(').next().unwrap());
    }
    let range = text(&headers, RANGE);
    let len = rep.len;

    match &result {
        Plan::NotModified => {
            let inm = text(&headers, IF_NONE_MATCH);
            assert!(
                inm.is_some() || text(&headers, IF_MODIFIED_SINCE).is_some(),
                "304 without a validator: {headers:?}"
            );
            if let Some(inm) = inm {
                assert!(
                    inm.split(',').map(str::trim).any(|t| t == "*"
                        || t == rep.etag
                        || t.strip_prefix("W/") == Some(rep.etag.as_str())),
                    "304 for If-None-Match {inm:?} against {:?}",
                    rep.etag
                );
            }
        }
        Plan::Full => {}
        Plan::Single(r) => {
            assert!(range.is_some(), "206 without a Range: {headers:?}");
            assert!(
                r.start < r.end && r.end <= len,
                "{r:?} of {len} bytes for {range:?}"
            );
        }
        Plan::Multi(rs) => {
            assert!(range.is_some(), "206 without a Range: {headers:?}");
            assert!(
                (2..=MAX_RANGES).contains(&rs.len()),
                "{} ranges for {range:?}",
                rs.len()
            );
            for r in rs {
                assert!(
                    r.start < r.end && r.end <= len,
                    "{r:?} of {len} bytes for {range:?}"
                );
            }
        }
        Plan::Unsatisfiable => {
            let range = range.expect("416 without a Range");
            assert!(
                len == 0 || !some_range_overlaps(range, len),
                "416 for {range:?} of {len} bytes"
            );
        }
    }

    // A current If-Range never turns a satisfiable request into a 200 by itself, a stale
    // entity-tag If-Range always does.
    if let (Some(ir), Plan::Single(_) | Plan::Multi(_)) = (text(&headers, IF_RANGE), &result) {
        assert!(
            !(ir.starts_with('"') && ir != rep.etag),
            "206 despite If-Range {ir:?} against {:?}",
            rep.etag
        );
    }

    // Deterministic: the same request gets the same plan.
    assert_eq!(plan(&headers, &rep), result);
});
