//! Exit codes and result output (plain text or `--json`).
//!
//! The exit codes are part of the CLI's interface (documented in the crate README):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | internal error |
//! | 2 | usage: bad arguments (a URL with a user name or password, an output that is a directory), unreadable certificate files, no password available (the caller) |
//! | 3 | transient failure after all retries (network, 5xx, timeouts, invalid responses); the job is kept for `bits resume` |
//! | 4 | server or protocol error: the server refused (4xx, BITS error codes; the job is deleted) or broke the protocol (not a BITS server, another protocol; the job is kept) |
//! | 5 | local I/O error (file unreadable, not enough free space, a state directory or job file that is not safely the user's or does not match the command) |
//! | 6 | authentication failed (401/407) or the server certificate did not verify |
//! | 7 | the local file kept changing during the upload |
//! | 8 | another `bits` process is running the same job |
//! | 9 | policy refusal: the client refused what the server asked (a `file:` or https→http reply URL or redirect, a redirect with credentials, a body over `--max-size` or content-encoded) |
//! | 130 | interrupted (Ctrl-C, SIGTERM); the job is kept for `bits resume` |

use bits_client::{Error, ErrorKind};
use serde_json::{json, Value};

pub const OK: u8 = 0;
pub const INTERNAL: u8 = 1;
pub const USAGE: u8 = 2;
pub const TRANSIENT: u8 = 3;
pub const FATAL: u8 = 4;
pub const LOCAL_IO: u8 = 5;
pub const AUTH: u8 = 6;
pub const FILE_CHANGED: u8 = 7;
pub const LOCKED: u8 = 8;
pub const POLICY: u8 = 9;
pub const INTERRUPTED: u8 = 130;

/// A failed command: what to print and which code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// A line of our own after the message (what to do next).
    pub hint: Option<String>,
    pub details: Value,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::plain(USAGE, message)
    }

    pub fn local(message: impl Into<String>) -> Failure {
        Failure::plain(LOCAL_IO, message)
    }

    pub fn plain(code: u8, message: impl Into<String>) -> Failure {
        let message = message.into();
        Failure {
            code,
            details: json!({ "kind": kind_name(code), "message": message }),
            message,
            hint: None,
        }
    }

    /// Adds a field to the JSON error object.
    pub fn with(mut self, key: &str, value: Value) -> Failure {
        if let Some(o) = self.details.as_object_mut() {
            o.insert(key.to_string(), value);
        }
        self
    }
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Failure {
        let code = exit_code(e);
        let mut details = json!({
            "kind": e.kind(),
            "message": e.to_string(),
        });
        if let Some(o) = details.as_object_mut() {
            if let Some(s) = e.status() {
                o.insert("status".into(), json!(s));
            }
            if let Some(h) = e.hresult() {
                o.insert("hresult".into(), json!(h.to_string()));
                o.insert("hresult_name".into(), json!(h.name()));
            }
            if let Some(c) = e.context() {
                o.insert("context".into(), json!(c.to_string()));
            }
            if let Some(r) = e.server().and_then(|s| s.reason.as_deref()) {
                o.insert("reason".into(), json!(r));
            }
        }
        Failure {
            code,
            message: e.to_string(),
            hint: None,
            details,
        }
    }
}

pub fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Transient => TRANSIENT,
        ErrorKind::Fatal | ErrorKind::Protocol => FATAL,
        ErrorKind::Auth => AUTH,
        ErrorKind::LocalIo => LOCAL_IO,
        ErrorKind::LocalFileChanged => FILE_CHANGED,
        ErrorKind::Usage => USAGE,
        ErrorKind::Policy => POLICY,
        ErrorKind::Interrupted => INTERRUPTED,
    }
}

fn kind_name(code: u8) -> &'static str {
    match code {
        USAGE => "usage",
        TRANSIENT => "transient",
        FATAL => "fatal",
        LOCAL_IO => "local_io",
        AUTH => "auth",
        FILE_CHANGED => "local_file_changed",
        LOCKED => "locked",
        POLICY => "policy",
        INTERRUPTED => "interrupted",
        _ => "internal",
    }
}

/// Where results go: one JSON object per result on stdout, or human lines.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    /// Prints a success. `line` is the human summary (lines of it escaped, see [`escape`]);
    /// `to_stderr` when stdout carries data.
    pub fn success(&self, mut value: Value, line: &str, to_stderr: bool) {
        if self.json {
            if let Some(o) = value.as_object_mut() {
                o.insert("ok".into(), json!(true));
            }
            println!("{value}");
        } else if !self.quiet {
            let line = line.split('\n').map(escape).collect::<Vec<_>>().join("\n");
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }

    pub fn failure(&self, f: &Failure, mut context: Value) {
        if self.json {
            if let Some(o) = context.as_object_mut() {
                o.insert("ok".into(), json!(false));
                o.insert("error".into(), f.details.clone());
                o.insert("exit_code".into(), json!(f.code));
            }
            println!("{context}");
        }
        eprintln!("bits: error: {}", escape(&f.message));
        if let Some(hint) = &f.hint {
            eprintln!("bits: {}", escape(hint));
        }
    }
}

/// `text` fit for a terminal: control characters (C0, DEL, C1) written as Rust escapes
/// (`\n`, `\u{1b}`), so a file name, URL or server message cannot move the cursor, clear the
/// screen, retitle the window or forge a line of output.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\u{1b}[2J\u{7}b"), "a\\u{1b}[2J\\u{7}b");
        assert_eq!(escape("x\ny\r\u{9b}\u{7f}"), "x\\ny\\r\\u{9b}\\u{7f}");
        assert_eq!(escape("DOMAIN\\user \"ü\""), "DOMAIN\\user \"ü\"");
    }

    #[test]
    fn codes_by_kind() {
        assert_eq!(exit_code(&Error::Interrupted), INTERRUPTED);
        assert_eq!(exit_code(&Error::Usage("x".into())), USAGE);
        let refused = Error::Policy {
            url: "u".into(),
            what: "w".into(),
        };
        assert_eq!(exit_code(&refused), POLICY);
        assert_eq!(Failure::from(&refused).details["kind"], json!("policy"));
        let f = Failure::from(&Error::Auth {
            url: "u".into(),
            status: 401,
            had_credentials: true,
        });
        assert_eq!(f.code, AUTH);
        assert_eq!(f.details["status"], json!(401));
        assert_eq!(f.details["hresult"], json!("0x80190191"));
    }
}
