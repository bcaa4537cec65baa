//! HRESULT values and error contexts carried in `BITS-Error-Code` / `BITS-Error-Context`.

use std::fmt;

/// A Windows HRESULT, rendered on the wire as `0x` + eight upper-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HResult(pub u32);

impl HResult {
    pub const E_INVALIDARG: HResult = HResult(0x8007_0057);
    pub const E_ACCESSDENIED: HResult = HResult(0x8007_0005);
    /// HRESULT_FROM_WIN32(ERROR_PATH_NOT_FOUND).
    pub const E_PATH_NOT_FOUND: HResult = HResult(0x8007_0003);
    /// HRESULT_FROM_WIN32(ERROR_DISK_FULL). The spec prints 0x80070112, which is Win32 error 274;
    /// we send the correctly encoded value (docs/decisions.md).
    pub const E_DISK_FULL: HResult = HResult(0x8007_0070);
    /// HRESULT_FROM_WIN32(ERROR_TIMEOUT).
    pub const E_TIMEOUT: HResult = HResult(0x8007_05B4);
    pub const E_FAIL: HResult = HResult(0x8000_4005);
    pub const BG_E_INVALID_SERVER_RESPONSE: HResult = HResult(0x8020_001B);
    pub const BG_E_SESSION_NOT_FOUND: HResult = HResult(0x8020_001F);
    pub const BG_E_TOO_LARGE: HResult = HResult(0x8020_0020);
    pub const BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH: HResult = HResult(0x8020_0022);
    pub const BG_E_SERVER_EXECUTE_ENABLED: HResult = HResult(0x8020_0023);

    /// `BG_E_HTTP_ERROR_<status>`: how a client reports a bare HTTP status.
    pub const fn http_error(status: u16) -> HResult {
        HResult(0x8019_0000 + status as u32)
    }

    /// The symbolic name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::E_INVALIDARG => "E_INVALIDARG",
            Self::E_ACCESSDENIED => "E_ACCESSDENIED",
            Self::E_PATH_NOT_FOUND => "ERROR_PATH_NOT_FOUND",
            Self::E_DISK_FULL => "ERROR_DISK_FULL",
            Self::E_TIMEOUT => "ERROR_TIMEOUT",
            Self::E_FAIL => "E_FAIL",
            Self::BG_E_INVALID_SERVER_RESPONSE => "BG_E_INVALID_SERVER_RESPONSE",
            Self::BG_E_SESSION_NOT_FOUND => "BG_E_SESSION_NOT_FOUND",
            Self::BG_E_TOO_LARGE => "BG_E_TOO_LARGE",
            Self::BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH => "BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH",
            Self::BG_E_SERVER_EXECUTE_ENABLED => "BG_E_SERVER_EXECUTE_ENABLED",
            HResult(v) if (0x8019_0064..=0x8019_0257).contains(&v) => "BG_E_HTTP_ERROR",
            _ => "HRESULT",
        }
    }

    /// Parses the wire form (`0x80070057`, case-insensitive, prefix optional).
    pub fn parse(s: &str) -> Option<HResult> {
        let s = s.trim();
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(HResult)
    }
}

impl fmt::Display for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08X}", self.0)
    }
}

impl fmt::Debug for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self)
    }
}

/// `BG_ERROR_CONTEXT`: who failed. A server only ever sends these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorContext {
    /// The BITS server itself (BG_ERROR_CONTEXT_REMOTE_FILE).
    RemoteFile,
    /// The notified server application (BG_ERROR_CONTEXT_REMOTE_APPLICATION).
    RemoteApplication,
}

impl ErrorContext {
    pub const fn value(self) -> u32 {
        match self {
            ErrorContext::RemoteFile => 5,
            ErrorContext::RemoteApplication => 7,
        }
    }

    pub fn parse(s: &str) -> Option<ErrorContext> {
        match HResult::parse(s)?.0 {
            5 => Some(ErrorContext::RemoteFile),
            7 => Some(ErrorContext::RemoteApplication),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:X}", self.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(HResult::E_INVALIDARG.to_string(), "0x80070057");
        assert_eq!(HResult::BG_E_SESSION_NOT_FOUND.to_string(), "0x8020001F");
        assert_eq!(HResult::http_error(404).to_string(), "0x80190194");
        assert_eq!(ErrorContext::RemoteFile.to_string(), "0x5");
        assert_eq!(ErrorContext::RemoteApplication.to_string(), "0x7");
    }

    #[test]
    fn parse_round_trip() {
        for h in [HResult::E_INVALIDARG, HResult::BG_E_TOO_LARGE, HResult(0)] {
            assert_eq!(HResult::parse(&h.to_string()), Some(h));
        }
        assert_eq!(HResult::parse("x"), None);
        assert_eq!(HResult::parse("0x123456789"), None);
        assert_eq!(HResult::parse("+5"), None);
        assert_eq!(HResult::parse("0x+7"), None);
        assert_eq!(
            ErrorContext::parse("0x7"),
            Some(ErrorContext::RemoteApplication)
        );
    }
}
