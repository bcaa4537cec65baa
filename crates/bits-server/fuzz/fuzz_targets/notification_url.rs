//! Builds the notification URL from arbitrary strings: it must never panic, and the result keeps
//! the configured absolute URL or this server's base in front and the upload URL's query at the
//! end.
//!
//! The input is three lines (invalid UTF-8 replaced lossily):
//!
//! ```text
//! handler.asp               <- configured notification URL
//! /upload/sub/a.bin?x=1     <- the upload URL (path and query)
//! http://127.0.0.1:8080     <- this server's base; missing lines are empty strings
//! ```
#![no_main]

use bits_server::notify::notification_url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let configured = lines.next().unwrap_or_default();
    let upload_url = lines.next().unwrap_or_default();
    let local_base = lines.next().unwrap_or_default();

    let url = notification_url(configured, upload_url, local_base);

    if configured.to_ascii_lowercase().starts_with("http://") {
        assert!(url.starts_with(configured), "{url:?} drops {configured:?}");
    } else {
        assert!(url.starts_with(local_base), "{url:?} not on {local_base:?}");
        let after_base = &url[local_base.len()..];
        if configured.starts_with('/') {
            assert!(after_base.starts_with(configured), "{url:?}");
        } else {
            // Relative to the directory of the upload path: that directory, then `configured`.
            let path = upload_url.split('?').next().unwrap_or_default();
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            assert!(
                after_base.starts_with(dir) && after_base[dir.len()..].starts_with(configured),
                "{url:?} for {configured:?} below {upload_url:?}"
            );
        }
    }
    match upload_url.split_once('?') {
        Some((_, q)) if !q.is_empty() => {
            assert!(url.ends_with(q), "{url:?} loses the query {q:?}");
            let sep = url.len() - q.len() - 1;
            assert!(matches!(url.as_bytes()[sep], b'?' | b'&'), "{url:?}");
        }
        _ => assert!(
            url.len() <= configured.len() + upload_url.len() + local_base.len(),
            "{url:?} longer than its parts"
        ),
    }
});
