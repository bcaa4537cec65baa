//! GET and HEAD of files, to the rules BITS download jobs depend on (spec §15): `Content-Length`
//! on every answer, single ranges as 206, multiple ranges as `multipart/byteranges` in request
//! order, 416 with `Content-Range: bytes */len`, a stable second-accurate `Last-Modified`, a
//! strong `ETag`, `If-Range` / `If-None-Match` / `If-Modified-Since`, never a content coding.
//!
//! Where the bytes come from is a [`PublishedFile`]: a published file of any storage backend,
//! or a stored reply (the engine's `Reply`). This module depends on the store's view of a file,
//! never the other way round.
//!
//! Range syntax is parsed by `http-range-header`; satisfiability is decided here, because that
//! crate rejects overlapping ranges and over-long suffixes that RFC 9110 says to serve.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_range_header::{EndPosition, StartPosition};

use crate::store::{ByteStream, PublishedFile};

/// More ranges than this in one request are answered with the whole file instead.
const MAX_RANGES: usize = 32;
const OCTET_STREAM: &str = "application/octet-stream";

pub use crate::store::Representation;

fn last_modified(rep: &Representation) -> String {
    httpdate::fmt_http_date(rep.modified)
}

/// The answer to one GET/HEAD, before any byte is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    NotModified,
    Full,
    Single(Range<u64>),
    Multi(Vec<Range<u64>>),
    Unsatisfiable,
}

fn header(h: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// Decides what to send for `headers` against `rep`.
pub fn plan(headers: &HeaderMap, rep: &Representation) -> Plan {
    if let Some(inm) = header(headers, IF_NONE_MATCH) {
        if etag_matches(inm, &rep.etag) {
            return Plan::NotModified;
        }
    } else if let Some(since) =
        header(headers, IF_MODIFIED_SINCE).and_then(|d| httpdate::parse_http_date(d).ok())
    {
        if rep.modified <= since {
            return Plan::NotModified;
        }
    }
    let Some(range) = header(headers, RANGE) else {
        return Plan::Full;
    };
    if let Some(if_range) = header(headers, IF_RANGE) {
        let current = if if_range.starts_with('"') || if_range.starts_with("W/") {
            if_range == rep.etag
        } else {
            httpdate::parse_http_date(if_range)
                .map(|d| d == rep.modified)
                .unwrap_or(false)
        };
        if !current {
            return Plan::Full;
        }
    }
    // A Range header we cannot parse is ignored, as RFC 9110 allows.
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Plan::Full;
    };
    if parsed.ranges.len() > MAX_RANGES {
        return Plan::Full;
    }
    let len = rep.len;
    let mut out: Vec<Range<u64>> = parsed
        .ranges
        .iter()
        .filter_map(|r| {
            let (start, end) = match (r.start, r.end) {
                (StartPosition::Index(s), EndPosition::Index(e)) => (s, e.min(len.checked_sub(1)?)),
                (StartPosition::Index(s), EndPosition::LastByte) => (s, len.checked_sub(1)?),
                (StartPosition::FromLast(n), _) if n > 0 => {
                    (len.saturating_sub(n), len.checked_sub(1)?)
                }
                (StartPosition::FromLast(_), _) => return None,
            };
            (start <= end && start < len).then_some(start..end + 1)
        })
        .collect();
    // Overlapping ranges could ask for the file many times over in one answer: send it once.
    if out.iter().map(|r| r.end - r.start).sum::<u64>() > len {
        return Plan::Full;
    }
    match out.len() {
        0 => Plan::Unsatisfiable,
        1 => Plan::Single(out.remove(0)),
        _ => Plan::Multi(out),
    }
}

/// The bytes of `range` from `source`, as an I/O stream for the response body.
async fn open(source: &dyn PublishedFile, range: Range<u64>) -> io::Result<ByteStream> {
    source.read(range).await.map_err(io::Error::other)
}

fn base_response(status: StatusCode, rep: &Representation) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&last_modified(rep)) {
        h.insert(LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&rep.etag) {
        h.insert(ETAG, v);
    }
    resp
}

fn set(resp: &mut Response, name: http::header::HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Serves `source`, described by `rep`, for a GET (`head = false`) or HEAD. A single range
/// is opened before the status is sent (a failure is still a 500); the parts of a multipart
/// answer are opened one after another as the body reaches them, so a backend that reads by
/// request holds one open read per answer, not one per range.
pub async fn respond(
    source: Arc<dyn PublishedFile>,
    rep: &Representation,
    headers: &HeaderMap,
    head: bool,
) -> io::Result<Response> {
    let len = rep.len;
    let (mut resp, body_len, body): (Response, u64, Option<Body>) = match plan(headers, rep) {
        Plan::NotModified => {
            let resp = base_response(StatusCode::NOT_MODIFIED, rep);
            return Ok(resp);
        }
        Plan::Unsatisfiable => {
            let mut resp = base_response(StatusCode::RANGE_NOT_SATISFIABLE, rep);
            set(&mut resp, CONTENT_RANGE, format!("bytes */{len}"));
            (resp, 0, None)
        }
        Plan::Full => {
            let mut resp = base_response(StatusCode::OK, rep);
            set(&mut resp, CONTENT_TYPE, OCTET_STREAM.into());
            let body = if head {
                None
            } else {
                Some(Body::from_stream(open(source.as_ref(), 0..len).await?))
            };
            (resp, len, body)
        }
        Plan::Single(r) => {
            let mut resp = base_response(StatusCode::PARTIAL_CONTENT, rep);
            set(&mut resp, CONTENT_TYPE, OCTET_STREAM.into());
            set(
                &mut resp,
                CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            let n = r.end - r.start;
            let body = if head {
                None
            } else {
                Some(Body::from_stream(open(source.as_ref(), r).await?))
            };
            (resp, n, body)
        }
        Plan::Multi(ranges) => {
            let boundary = format!("BITS{}", uuid::Uuid::new_v4().simple());
            let part_head = |i: usize, r: &Range<u64>| {
                let lead = if i == 0 { "" } else { "\r\n" };
                format!(
                    "{lead}--{boundary}\r\nContent-Type: {OCTET_STREAM}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
                    r.start,
                    r.end - 1
                )
            };
            let tail = format!("\r\n--{boundary}--\r\n");
            let total: u64 = ranges
                .iter()
                .enumerate()
                .map(|(i, r)| part_head(i, r).len() as u64 + (r.end - r.start))
                .sum::<u64>()
                + tail.len() as u64;
            let mut resp = base_response(StatusCode::PARTIAL_CONTENT, rep);
            set(
                &mut resp,
                CONTENT_TYPE,
                format!("multipart/byteranges; boundary={boundary}"),
            );
            let body = if head {
                None
            } else {
                let heads: Vec<Bytes> = ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Bytes::from(part_head(i, r)))
                    .collect();
                let parts = stream::iter(heads.into_iter().zip(ranges))
                    .then(move |(head, r)| {
                        let source = source.clone();
                        async move {
                            let lead = stream::once(std::future::ready(Ok(head)));
                            match open(source.as_ref(), r).await {
                                Ok(bytes) => lead.chain(bytes).boxed(),
                                // The status is sent: end the body short, the client sees the
                                // Content-Length unmet.
                                Err(e) => {
                                    lead.chain(stream::once(std::future::ready(Err(e)))).boxed()
                                }
                            }
                        }
                    })
                    .flatten()
                    .chain(stream::once(std::future::ready(Ok(Bytes::from(tail)))));
                Some(Body::from_stream(parts))
            };
            (resp, total, body)
        }
    };
    set(&mut resp, CONTENT_LENGTH, body_len.to_string());
    if let Some(body) = body {
        *resp.body_mut() = body;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn rep(len: u64) -> Representation {
        Representation {
            len,
            modified: UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            etag: "\"abc\"".into(),
        }
    }

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn range_plans() {
        let r = rep(10_000);
        assert_eq!(plan(&with(&[]), &r), Plan::Full);
        assert_eq!(
            plan(&with(&[("range", "bytes=0-99")]), &r),
            Plan::Single(0..100)
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=9990-")]), &r),
            Plan::Single(9990..10_000)
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=-20000")]), &r),
            Plan::Single(0..10_000)
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=9990-20000")]), &r),
            Plan::Single(9990..10_000)
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=20000-20010")]), &r),
            Plan::Unsatisfiable
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=20-29,0-9")]), &r),
            Plan::Multi(vec![20..30, 0..10])
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=0-9,5-14")]), &r),
            Plan::Multi(vec![0..10, 5..15])
        );
        assert_eq!(plan(&with(&[("range", "items=0-9")]), &r), Plan::Full);
        assert_eq!(
            plan(&with(&[("range", "bytes=0-0")]), &rep(0)),
            Plan::Unsatisfiable
        );
    }

    #[test]
    fn conditionals() {
        let r = rep(10);
        assert_eq!(
            plan(&with(&[("if-none-match", "\"abc\"")]), &r),
            Plan::NotModified
        );
        assert_eq!(plan(&with(&[("if-none-match", "\"x\"")]), &r), Plan::Full);
        let lm = last_modified(&r);
        assert_eq!(
            plan(&with(&[("if-modified-since", &lm)]), &r),
            Plan::NotModified
        );
        assert_eq!(
            plan(
                &with(&[("range", "bytes=0-1"), ("if-range", "\"abc\"")]),
                &r
            ),
            Plan::Single(0..2)
        );
        assert_eq!(
            plan(
                &with(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]),
                &r
            ),
            Plan::Full
        );
        assert_eq!(
            plan(&with(&[("range", "bytes=0-1"), ("if-range", &lm)]), &r),
            Plan::Single(0..2)
        );
        assert_eq!(
            plan(
                &with(&[
                    ("range", "bytes=0-1"),
                    ("if-range", "Mon, 01 Jan 2001 00:00:00 GMT")
                ]),
                &r
            ),
            Plan::Full
        );
    }
}
