//! Decodes arbitrary `Authorization` header values: never panics, and what it accepts is a
//! Basic credential whose user part has no ':'.
#![no_main]

use bits_server::auth::basic_credentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    if let Some((user, _password)) = basic_credentials(&headers) {
        assert!(!user.contains(':'));
        let raw = String::from_utf8_lossy(data).to_ascii_lowercase();
        assert!(raw.trim_start().starts_with("basic "));
    }
});
