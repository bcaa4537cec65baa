//! Hostile request targets and header sets (spec §2.1, §10.2, §14 "Path safety").
//!
//! Every hostile request must get an error Ack (`BITS-Packet-Type: Ack`, `BITS-Error-Code`,
//! `BITS-Error-Context: 0x5`) or, for shapes hyper refuses at the HTTP level, a plain HTTP error
//! and/or a closed connection — after which the server must still answer a normal Ping. A request
//! pipelined behind a hostile one is never taken for part of it. Nothing is ever written outside
//! the vdir root, and no hostile request creates anything inside it.

use crate::common::*;

/// Part of every name a traversal would create outside the root, so escapes can be found.
const MARK: &str = "zz-bitsd-hostile-escape";

const INVALIDARG: &str = "0x80070057";
const ACCESSDENIED: &str = "0x80070005";
const PATH_NOT_FOUND: &str = "0x80070003";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// An error Ack with this status and `BITS-Error-Code`, context 0x5.
    Ack(u16, &'static str),
    /// Refused below the BITS layer: a plain (non-Ack) 4xx/5xx followed by a close, or a close.
    Refused,
    /// Either of the above (any error Ack with code and context 0x5, or a refusal): for shapes
    /// where what matters is only that the request is not accepted.
    Rejected,
}

use Expect::{Ack as A, Refused, Rejected};

struct Case {
    name: String,
    request: Vec<u8>,
    expect: Expect,
}

fn create_request(target: &[u8]) -> Vec<u8> {
    let protocols = format!("BITS-Supported-Protocols: {PROTOCOL}");
    raw_request(
        "BITS_POST",
        target,
        "HTTP/1.1",
        &[
            "BITS-Packet-Type: Create-Session",
            &protocols,
            "Content-Length: 0",
        ],
        b"",
    )
}

fn ping_request() -> Vec<u8> {
    request_bytes(
        "BITS_POST",
        "/upload/ping.bin",
        &[("BITS-Packet-Type", "Ping")],
        b"",
    )
}

const SID: &str = "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}";

fn check_error_ack(r: &Response, status: u16, code: &str) -> Result<(), String> {
    let ok = r.status == status
        && r.header("bits-packet-type") == Some("Ack")
        && r.header("bits-error-code") == Some(code)
        && r.header("bits-error-context") == Some("0x5")
        && r.header("content-length") == Some("0")
        && r.body.is_empty()
        && !r.has("bits-protocol");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected error Ack {status} {code} 0x5, got {} {:?}",
            r.status, r.headers
        ))
    }
}

fn check_ping_ack(r: &Response) -> Result<(), String> {
    let ok = r.status == 200
        && r.header("bits-packet-type") == Some("Ack")
        && !r.has("bits-error-code")
        && !r.has("bits-session-id")
        && !r.has("bits-protocol");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected the pipelined Ping's 200 Ack, got {} {:?}",
            r.status, r.headers
        ))
    }
}

/// Sends `case` with a Ping pipelined behind it in one write and checks both answers.
fn run_case(s: &Server, case: &Case) -> Result<(), String> {
    let mut c = s.conn();
    let mut bytes = case.request.clone();
    bytes.extend(ping_request());
    // The server may close before it has read everything; what it answered is what counts.
    let _ = c.try_write_raw(&bytes);
    let first = c.try_read(false);
    if std::env::var_os("HOSTILE_TRACE").is_some() {
        match &first {
            Ok(r) => eprintln!("[{}] {} {:?}", case.name, r.status, r.headers),
            Err(e) => eprintln!("[{}] no answer: {e}", case.name),
        }
    }
    let verdict = match first {
        Ok(r) if r.status < 300 => {
            accepted_anyway(s, case, &r);
            Err(format!(
                "hostile request accepted: {} {:?} (expected {:?})",
                r.status, r.headers, case.expect
            ))
        }
        // An Ack: the BITS layer answered, the connection stays usable unless it says close.
        Ok(r) if r.has("bits-packet-type") => {
            match case.expect {
                Expect::Ack(status, code) => check_error_ack(&r, status, code),
                Expect::Rejected if r.status >= 400 => check_error_ack(
                    &r,
                    r.status,
                    r.header("bits-error-code")
                        .unwrap_or("(missing BITS-Error-Code)"),
                ),
                Expect::Rejected => Err(format!(
                    "expected an error, got {} {:?}",
                    r.status, r.headers
                )),
                Expect::Refused => Err(format!(
                    "expected an HTTP-level refusal, got the Ack {} {:?}",
                    r.status, r.headers
                )),
            }?;
            let next = c.try_read(false);
            if r.header("connection") == Some("close") {
                match next {
                    Ok(r2) => Err(format!(
                        "answered after Connection: close: {} {:?}",
                        r2.status, r2.headers
                    )),
                    Err(_) => Ok(()),
                }
            } else {
                match next {
                    Ok(r2) => check_ping_ack(&r2),
                    Err(e) => Err(format!(
                        "pipelined Ping unanswered on a kept-alive connection: {e}"
                    )),
                }
            }
        }
        // A plain HTTP error from below the BITS layer: the connection must be closed after it.
        Ok(r) => match case.expect {
            Expect::Ack(..) => Err(format!(
                "expected {:?}, got a non-Ack answer {} {:?}",
                case.expect, r.status, r.headers
            )),
            Expect::Refused | Expect::Rejected if r.status >= 400 => match c.try_read(false) {
                Ok(r2) => Err(format!(
                    "connection kept open after the refusal ({}), next answer {} {:?}",
                    r.status, r2.status, r2.headers
                )),
                Err(_) => Ok(()),
            },
            Expect::Refused | Expect::Rejected => Err(format!(
                "expected a refusal, got {} {:?}",
                r.status, r.headers
            )),
        },
        Err(e) => match case.expect {
            Expect::Ack(status, code) => Err(format!(
                "expected error Ack {status} {code}, connection ended without an answer: {e}"
            )),
            Expect::Refused | Expect::Rejected => Ok(()),
        },
    };
    // Whatever happened, the server must still serve a normal Ping on a fresh connection.
    let alive = Conn::try_new(s.addr).and_then(|mut c| {
        c.try_send(
            "BITS_POST",
            "/upload/p.bin",
            &[("BITS-Packet-Type", "Ping")],
            b"",
        )
    });
    match alive {
        Ok(r) => check_ping_ack(&r).map_err(|e| format!("after the case: {e}"))?,
        Err(e) => return Err(format!("server no longer answers a Ping: {e}")),
    }
    verdict
}

/// A hostile Create-Session that was accepted: finish the upload so the file-system checks show
/// where it would have landed.
fn accepted_anyway(s: &Server, case: &Case, r: &Response) {
    let Some(sid) = r.header("bits-session-id") else {
        return;
    };
    let Some(target) = target_of(&case.request) else {
        return;
    };
    let mut c = s.conn();
    let range = "Content-Range: bytes 0-3/4".to_string();
    let sid_h = format!("BITS-Session-Id: {sid}");
    let _ = c.try_write_raw(&raw_request(
        "BITS_POST",
        &target,
        "HTTP/1.1",
        &[
            "BITS-Packet-Type: Fragment",
            &sid_h,
            &range,
            "Content-Length: 4",
        ],
        b"evil",
    ));
    let _ = c.try_read(false);
    let _ = c.try_write_raw(&raw_request(
        "BITS_POST",
        &target,
        "HTTP/1.1",
        &[
            "BITS-Packet-Type: Close-Session",
            &sid_h,
            "Content-Length: 0",
        ],
        b"",
    ));
    let _ = c.try_read(false);
}

fn target_of(request: &[u8]) -> Option<Vec<u8>> {
    let line_end = request.iter().position(|&b| b == b'\n')?;
    let line = &request[..line_end];
    let first = line.iter().position(|&b| b == b' ')?;
    let last = line.iter().rposition(|&b| b == b' ')?;
    (last > first).then(|| line[first + 1..last].to_vec())
}

/// Runs a table and panics with every failing case listed.
fn run_table(s: &Server, cases: &[Case]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            run_case(s, case)
                .err()
                .map(|e| format!("[{}] {}", case.name, e))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nlog tail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        log_tail(s)
    );
}

fn log_tail(s: &Server) -> String {
    let log = s.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Nothing outside `<tmp>/uploads` and `<tmp>/spool` but the server's own files, no escape
/// marker anywhere up the directory tree, and (with `root_empty`) nothing inside the root.
fn assert_contained(s: &Server, root_empty: bool) {
    let tmp = s.dir.path();
    let mut stray = vec![];
    for e in std::fs::read_dir(tmp).expect("read tmp").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !["uploads", "spool", "bitsd.toml", "bitsd.log"].contains(&name.as_str()) {
            stray.push(e.path());
        }
    }
    for dir in tmp.ancestors().skip(1) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(MARK) {
                    stray.push(e.path());
                }
            }
        }
    }
    assert!(stray.is_empty(), "written outside the vdir root: {stray:?}");
    if root_empty {
        let inside: Vec<_> = std::fs::read_dir(s.root())
            .expect("read root")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(inside.is_empty(), "created inside the root: {inside:?}");
    }
}

fn case(name: impl Into<String>, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        request,
        expect,
    }
}

/// Create-Session to `target`.
fn t(target: impl AsRef<[u8]>, expect: Expect) -> Case {
    let target = target.as_ref();
    case(
        String::from_utf8_lossy(&target[..target.len().min(120)]),
        create_request(target),
        expect,
    )
}

fn target_cases() -> Vec<Case> {
    let m = MARK;
    let bad = A(400, INVALIDARG);
    let novdir = A(501, ACCESSDENIED);
    let missing = A(404, PATH_NOT_FOUND);
    let long_segment = "a".repeat(300);
    let long_encoded_segment = "%61".repeat(300);
    // > 2200 characters in 100-byte segments: every segment is legal, but the path is longer
    // than the server accepts (2048 bytes below the vdir): 400.
    let long_path = format!("/upload/{}/{m}", vec!["b".repeat(100); 23].join("/"));
    assert!(long_path.len() > 2200);
    let mut cases = vec![
        // `..` raw and percent-encoded.
        t(format!("/upload/../{m}"), bad),
        t(format!("/upload/../../{m}"), bad),
        t(format!("/upload/../../../../../../../../tmp/{m}"), bad),
        t(format!("/upload/a/../../{m}"), bad),
        t("/upload/..", bad),
        t(format!("/upload/%2e%2e/{m}"), bad),
        t(format!("/upload/%2E%2e/{m}"), bad),
        t(format!("/upload/%2E%2E/%2E%2E/{m}"), bad),
        t(format!("/upload/.%2e/{m}"), bad),
        t(format!("/upload/%2e./{m}"), bad),
        t(format!("/upload/./{m}"), bad),
        t(format!("/upload/%2e/{m}"), bad),
        t("/upload/...", bad),
        // Case tricks on the vdir prefix.
        t(format!("/UPLOAD/../{m}"), bad),
        t(format!("/Upload/%2E%2E/{m}"), bad),
        t(format!("/uPlOaD/.%2E/{m}"), bad),
        // Encoded slashes and backslashes, raw backslash.
        t(format!("/upload/..%2f{m}"), bad),
        t(format!("/upload/..%2F{m}"), bad),
        t(format!("/upload/%2e%2e%2f%2e%2e%2f{m}"), bad),
        t("/upload/a%2fb", bad),
        t(format!("/upload/..%5c{m}"), bad),
        t(format!("/upload/%2e%2e%5c%2e%2e%5c{m}"), bad),
        t("/upload/a%5cb", bad),
        t(format!("/upload/..\\{m}"), bad),
        t(format!("/upload/a\\..\\..\\{m}"), bad),
        // NUL.
        t("/upload/a%00b", bad),
        t(format!("/upload/{m}%00.txt"), bad),
        // Overlong UTF-8 for '.' and '/'.
        t(format!("/upload/%c0%ae%c0%ae/{m}"), bad),
        t(format!("/upload/%e0%80%ae%e0%80%ae/{m}"), bad),
        t(format!("/upload/..%c0%af{m}"), bad),
        t(format!("/upload/%c0%ae%c0%ae%c0%af{m}"), bad),
        // Invalid UTF-8.
        t("/upload/%ff", bad),
        t("/upload/a%80b", bad),
        t("/upload/%fe%ff.bin", bad),
        // Control characters.
        t("/upload/a%0d%0aSet-Cookie:x", bad),
        t("/upload/a%0ab", bad),
        t("/upload/a%09b", bad),
        t("/upload/a%1bb", bad),
        t("/upload/a%7fb", bad),
        // Windows device names.
        t("/upload/CON", bad),
        t("/upload/con.txt", bad),
        t("/upload/NUL", bad),
        t("/upload/COM1", bad),
        t("/upload/LPT9.log", bad),
        t("/upload/AUX", bad),
        t("/upload/sub/prn.tar.gz", bad),
        t("/upload/%43%4f%4e", bad),
        // Reserved characters, percent-encoded and (where the URI grammar allows) raw.
        t("/upload/a%3ab", bad),
        t("/upload/a%2ab", bad),
        t("/upload/a%3fb", bad),
        t("/upload/a%22b", bad),
        t("/upload/a%3cb", bad),
        t("/upload/a%3eb", bad),
        t("/upload/a%7cb", bad),
        t("/upload/a:b", bad),
        t("/upload/a*b", bad),
        t("/upload/a|b", bad),
        t("/upload/a\"b", bad),
        t("/upload/a<b", Refused),
        t("/upload/a>b", Refused),
        // Leading/trailing dot and space.
        t("/upload/trailing.", bad),
        t("/upload/trailing%2e", bad),
        t("/upload/trailing%20", bad),
        t("/upload/%20leading", bad),
        t("/upload/dir./x", bad),
        // Empty segments.
        t(format!("/upload//{m}"), bad),
        t("/upload/a//b", bad),
        t(format!("//upload/{m}"), novdir),
        // Very long segments and paths.
        t(format!("/upload/{long_segment}"), bad),
        t(format!("/upload/{long_encoded_segment}"), bad),
        t(&long_path, bad),
        // Absolute-form targets.
        t(format!("http://evil/upload/../{m}"), bad),
        t(format!("http://evil/upload/%2e%2e/{m}"), bad),
        t(format!("http://evil/../upload/{m}"), novdir),
        t(format!("http://evil/notupload/{m}"), novdir),
        // The server's own namespace.
        t("/upload/BITS-Sessions/Replies/x/responsefile.bin", bad),
        t(
            format!("/upload/BITS-Sessions/Replies/{SID}/responsefile.bin"),
            bad,
        ),
        t("/upload/%42ITS-Sessions/Replies/x/responsefile.bin", bad),
        t("/upload/BITS-Sessions", bad),
        // Not a file below an upload vdir.
        t("/upload/", bad),
        t("/upload", novdir),
        t("/uploadx/a", novdir),
        // An encoded separator never joins a vdir prefix to a file name.
        t("/upload%2fa", bad),
        t("/upload%5ca", bad),
        t(format!("/%2e%2e/upload/{m}"), novdir),
        t("*", novdir),
        // Traversal spellings other servers decode, here just legal-looking names whose
        // parent directory does not exist.
        t(format!("/upload/%u002e%u002e/{m}"), missing),
        t(format!("/upload/..;/{m}"), missing),
    ];
    // The same traversal on other packets: the path is checked before anything else.
    let ping = raw_request(
        "BITS_POST",
        format!("/upload/../{m}").as_bytes(),
        "HTTP/1.1",
        &["BITS-Packet-Type: Ping", "Content-Length: 0"],
        b"",
    );
    cases.push(case("Ping /upload/../", ping, bad));
    let sid = format!("BITS-Session-Id: {SID}");
    let fragment = raw_request(
        "BITS_POST",
        format!("/upload/%2e%2e/{m}").as_bytes(),
        "HTTP/1.1",
        &[
            "BITS-Packet-Type: Fragment",
            &sid,
            "Content-Range: bytes 0-3/4",
            "Content-Length: 4",
        ],
        b"evil",
    );
    cases.push(case("Fragment /upload/%2e%2e/", fragment, bad));
    let close = raw_request(
        "BITS_POST",
        format!("/upload/..%2f{m}").as_bytes(),
        "HTTP/1.1",
        &["BITS-Packet-Type: Close-Session", &sid, "Content-Length: 0"],
        b"",
    );
    cases.push(case("Close-Session /upload/..%2f", close, bad));
    cases
}

#[test]
fn hostile_request_targets_are_refused_and_nothing_escapes() {
    let s = Server::start("");
    let cases = target_cases();
    assert!(cases.len() >= 50, "{}", cases.len());
    run_table(&s, &cases);
    assert_contained(&s, true);
    assert!(
        session_dirs(&s.spool()).is_empty(),
        "sessions created: {:?}",
        session_dirs(&s.spool())
    );
}

/// A target longer than PATH_MAX (4096) made of legal segments: a client error, not a 500.
#[test]
fn target_longer_than_path_max_is_a_client_error() {
    let s = Server::start("");
    let target = format!("/upload/{}/{MARK}", vec!["c".repeat(200); 25].join("/"));
    assert!(target.len() > 5000);
    let mut c = s.conn();
    c.write_raw(&create_request(target.as_bytes()));
    let r = c.read_response(false);
    assert!(
        matches!(r.status, 400 | 404),
        "status {} {:?}",
        r.status,
        r.headers
    );
    let code = if r.status == 400 {
        INVALIDARG
    } else {
        PATH_NOT_FOUND
    };
    check_error_ack(&r, r.status, code).unwrap();
    c.bits("/upload/p.bin", "Ping", &[], b"")
        .assert_ack(200, None);
    assert_contained(&s, true);
}

/// A request target over hyper's 65534-byte URI limit.
#[test]
fn target_over_64_kib_is_refused_by_http_layer() {
    let s = Server::start("");
    let target = format!("/upload/{}", vec!["d".repeat(200); 360].join("/"));
    assert!(target.len() > 70_000);
    run_table(&s, &[t(&target, Refused)]);
    assert_contained(&s, true);
}

// ---------------------------------------------------------------------------------------------
// Names that only look hostile: accepted, and the file lands inside the root under exactly the
// decoded name.

/// Uploads 4 bytes to `target` (raw), returning the Create-Session answer.
fn upload_raw(s: &Server, target: &[u8]) -> Response {
    let mut c = s.conn();
    c.write_raw(&create_request(target));
    let r = c.read_response(false);
    if r.status != 200 {
        return r;
    }
    let sid = format!("BITS-Session-Id: {}", r.session());
    c.write_raw(&raw_request(
        "BITS_POST",
        target,
        "HTTP/1.1",
        &[
            "BITS-Packet-Type: Fragment",
            &sid,
            "Content-Range: bytes 0-3/4",
            "Content-Length: 4",
        ],
        b"data",
    ));
    c.read_response(false).assert_ack(200, None);
    c.write_raw(&raw_request(
        "BITS_POST",
        target,
        "HTTP/1.1",
        &["BITS-Packet-Type: Close-Session", &sid, "Content-Length: 0"],
        b"",
    ));
    c.read_response(false).assert_ack(200, None);
    r
}

#[test]
fn lookalike_names_land_inside_the_root() {
    let s = Server::start("");
    let m = MARK;
    // (target, name of the file inside the root)
    let cases: Vec<(Vec<u8>, String)> = vec![
        // Double encoding decodes once: a legal name `%2e%2e`.
        (b"/upload/%252e%252e".to_vec(), "%2e%2e".into()),
        // The vdir prefix is matched decoded (as IIS does): an encoded letter reaches the same
        // vdir, and with it the same auth (issue 14, finding 1).
        (
            format!("/%75pload/{m}-prefix").into_bytes(),
            format!("{m}-prefix"),
        ),
        (
            format!("/UPLOAD/{m}-case").into_bytes(),
            format!("{m}-case"),
        ),
        (
            format!("/upload/%252e%252e%252f{m}").into_bytes(),
            format!("%2e%2e%2f{m}"),
        ),
        // Fullwidth full stop U+FF0E, percent-encoded and raw UTF-8.
        (
            b"/upload/%EF%BC%8E%EF%BC%8E".to_vec(),
            "\u{FF0E}\u{FF0E}".into(),
        ),
        (
            "/upload/\u{FF0E}\u{FF0E}\u{FF0E}".as_bytes().to_vec(),
            "\u{FF0E}\u{FF0E}\u{FF0E}".into(),
        ),
        // Division slash U+2215 and fullwidth solidus U+FF0F are not separators.
        (
            format!("/upload/%EF%BC%8E%EF%BC%8E%E2%88%95{m}").into_bytes(),
            format!("\u{FF0E}\u{FF0E}\u{2215}{m}"),
        ),
        (
            format!("/upload/..\u{2215}{m}").into_bytes(),
            format!("..\u{2215}{m}"),
        ),
        (
            format!("/upload/..%EF%BC%8F{m}").into_bytes(),
            format!("..\u{FF0F}{m}"),
        ),
        // Absolute form: the authority is ignored, the path is an ordinary upload URL.
        (
            b"http://evil/upload/absolute.bin".to_vec(),
            "absolute.bin".into(),
        ),
        // Neither a fragment nor the query is part of the destination.
        (
            format!("/upload/fragment.bin#/../../{m}").into_bytes(),
            "fragment.bin".into(),
        ),
        (
            format!("/upload/query.bin?/../../{m}").into_bytes(),
            "query.bin".into(),
        ),
    ];
    for (target, name) in &cases {
        let shown = String::from_utf8_lossy(target).into_owned();
        let r = upload_raw(&s, target);
        assert_eq!(r.status, 200, "{shown}: {:?}", r.headers);
        let landed = s.root().join(name);
        assert_eq!(
            std::fs::read(&landed).ok().as_deref(),
            Some(&b"data"[..]),
            "{shown}: expected {landed:?}; root holds {:?}",
            files_below(&s.root())
        );
    }
    // Exactly those files, all directly inside the root.
    let mut files = files_below(&s.root());
    files.sort();
    assert_eq!(files.len(), cases.len(), "{files:?}");
    for f in &files {
        assert_eq!(f.parent(), Some(s.root().as_path()), "{f:?}");
    }
    assert_contained(&s, false);
}

// ---------------------------------------------------------------------------------------------
// Hostile header sets, sent to a legal destination.

/// A request for `/upload/<name>` with raw header lines (no Content-Length added).
fn h(name: &str, packet: &str, lines: &[&str], body: &[u8], expect: Expect) -> Case {
    h_version(name, packet, "HTTP/1.1", lines, body, expect)
}

fn h_version(
    name: &str,
    packet: &str,
    version: &str,
    lines: &[&str],
    body: &[u8],
    expect: Expect,
) -> Case {
    let protocols = format!("BITS-Supported-Protocols: {PROTOCOL}");
    let mut all: Vec<&str> = vec![];
    if !packet.is_empty() {
        all.push(packet);
    }
    if packet.ends_with("Create-Session") {
        all.push(&protocols);
    }
    all.extend_from_slice(lines);
    let target = format!(
        "/upload/{}.bin",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    case(
        name,
        raw_request("BITS_POST", target.as_bytes(), version, &all, body),
        expect,
    )
}

const CREATE: &str = "BITS-Packet-Type: Create-Session";
const CLOSE: &str = "BITS-Packet-Type: Close-Session";
const FRAGMENT: &str = "BITS-Packet-Type: Fragment";

fn header_cases() -> Vec<Case> {
    let bad = A(400, INVALIDARG);
    let sid = format!("BITS-Session-Id: {SID}");
    let ping = ping_request();
    let ping_len = format!("Content-Length: {}", 5 + ping.len());
    // A complete Create-Session that must never be executed.
    let smuggled = create_request(b"/upload/smuggled.bin");
    let smuggled_len = format!("Content-Length: {}", smuggled.len());
    let mut smuggled_chunk = format!("{:x}\r\n", smuggled.len()).into_bytes();
    smuggled_chunk.extend_from_slice(&smuggled);
    smuggled_chunk.extend_from_slice(b"\r\n0\r\n\r\n");
    let filler = format!("X-Filler: {}", "x".repeat(5000));
    let many: Vec<String> = (0..101).map(|i| format!("X-Header-{i}: {i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut many_create = many.clone();
    many_create.push("Content-Length: 0");
    vec![
        // Content-Length shapes.
        h(
            "duplicate CL different values",
            CREATE,
            &["Content-Length: 0", "Content-Length: 10"],
            b"0123456789",
            Refused,
        ),
        h(
            "CL plus sign",
            CREATE,
            &["Content-Length: +0"],
            b"",
            Refused,
        ),
        h("CL negative", CREATE, &["Content-Length: -1"], b"", Refused),
        h(
            "CL inner space",
            CREATE,
            &["Content-Length: 0 0"],
            b"",
            Refused,
        ),
        h("CL list", CREATE, &["Content-Length: 0, 0"], b"", Refused),
        h("CL hex", CREATE, &["Content-Length: 0x0"], b"", Refused),
        h(
            "CL overflow",
            CREATE,
            &["Content-Length: 99999999999999999999999"],
            b"",
            Refused,
        ),
        h(
            "CL space before colon",
            CREATE,
            &["Content-Length : 0"],
            b"",
            Refused,
        ),
        // Transfer-Encoding shapes.
        h(
            "TE chunked",
            CREATE,
            &["Transfer-Encoding: chunked"],
            b"0\r\n\r\n",
            bad,
        ),
        // A chunked Fragment is well framed (issue 20); this one names no session of ours.
        h(
            "TE chunked Fragment of an unknown session",
            FRAGMENT,
            &[
                &sid,
                "Content-Range: bytes 0-3/4",
                "Transfer-Encoding: chunked",
            ],
            b"4\r\nevil\r\n0\r\n\r\n",
            A(500, "0x8020001F"),
        ),
        h(
            "TE identity",
            CREATE,
            &["Transfer-Encoding: identity"],
            b"",
            Refused,
        ),
        h(
            "TE chunked then identity",
            CREATE,
            &["Transfer-Encoding: chunked, identity"],
            b"0\r\n\r\n",
            Refused,
        ),
        h(
            "TE xchunked",
            CREATE,
            &["Transfer-Encoding: xchunked"],
            b"",
            Refused,
        ),
        // CL.TE smuggling: a CL-only reader would take the pipelined Ping as this body.
        h(
            "TE and CL",
            CREATE,
            &["Transfer-Encoding: chunked", &ping_len],
            b"0\r\n\r\n",
            bad,
        ),
        h(
            "CL and TE",
            CREATE,
            &[&ping_len, "Transfer-Encoding: chunked"],
            b"0\r\n\r\n",
            bad,
        ),
        // TE.CL smuggling: the chunk carries a whole Create-Session; a CL reader would run it.
        h(
            "TE.CL smuggled Create-Session",
            CREATE,
            &["Content-Length: 4", "Transfer-Encoding: chunked"],
            &smuggled_chunk,
            bad,
        ),
        // A body where none is allowed carries a request: it is drained, never run.
        h(
            "Ping body carrying a request",
            "BITS-Packet-Type: Ping",
            &[&smuggled_len],
            &smuggled,
            bad,
        ),
        h(
            "Close-Session body carrying a request",
            CLOSE,
            &[&sid, &smuggled_len],
            &smuggled,
            bad,
        ),
        // Obsolete line folding.
        h(
            "obs-fold on TE",
            CREATE,
            &["Content-Length: 0", "Transfer-Encoding:", " chunked"],
            b"",
            Refused,
        ),
        h(
            "obs-fold on a custom header",
            CREATE,
            &["Content-Length: 0", "X-Folded: a", " b"],
            b"",
            Refused,
        ),
        h(
            "obs-fold on BITS-Packet-Type",
            "BITS-Packet-Type: Ping",
            &[" Create-Session", "Content-Length: 0"],
            b"",
            Refused,
        ),
        // Sizes.
        h(
            "header value over 4096",
            CREATE,
            &[&filler, "Content-Length: 0"],
            b"",
            bad,
        ),
        h("101 headers", CREATE, &many_create, b"", Refused),
        // Bytes a header value must not hold.
        h(
            "NUL in header value",
            CREATE,
            &["Content-Length: 0", "X-Nul: a\0b"],
            b"",
            Refused,
        ),
        h(
            "NUL in BITS-Packet-Type",
            "BITS-Packet-Type: Create-Session\0",
            &["Content-Length: 0"],
            b"",
            Refused,
        ),
        h(
            "vertical tab in BITS-Packet-Type",
            "BITS-Packet-Type: Create\x0b-Session",
            &["Content-Length: 0"],
            b"",
            Refused,
        ),
        h(
            "non-ASCII BITS-Session-Id on Close",
            CLOSE,
            &[
                "BITS-Session-Id: {A0FF5911-4144-45B3-BF27-27AFC8EC8A6\u{e9}}",
                "Content-Length: 0",
            ],
            b"",
            bad,
        ),
        h(
            "non-ASCII BITS-Session-Id on Fragment",
            FRAGMENT,
            &[
                "BITS-Session-Id: \u{ff5b}A0FF5911-4144-45B3-BF27-27AFC8EC8A67\u{ff5d}",
                "Content-Range: bytes 0-3/4",
                "Content-Length: 4",
            ],
            b"evil",
            bad,
        ),
        h(
            "non-ASCII BITS-Packet-Type",
            "BITS-Packet-Type: Cr\u{e9}ate-Session",
            &["Content-Length: 0"],
            b"",
            bad,
        ),
        // BITS-Packet-Type with trailing junk.
        h(
            "packet type with trailing word",
            "BITS-Packet-Type: Create-Session junk",
            &["Content-Length: 0"],
            b"",
            bad,
        ),
        h(
            "packet type with parameter",
            "BITS-Packet-Type: Create-Session;x=1",
            &["Content-Length: 0"],
            b"",
            bad,
        ),
        h(
            "packet type list",
            "BITS-Packet-Type: Create-Session, Ping",
            &["Content-Length: 0"],
            b"",
            bad,
        ),
        // Fragment header abuse (unknown session: the header checks come first).
        h(
            "Content-Encoding gzip",
            FRAGMENT,
            &[
                &sid,
                "Content-Encoding: gzip",
                "Content-Range: bytes 0-3/4",
                "Content-Length: 4",
            ],
            b"evil",
            bad,
        ),
        h(
            "CL differs from Content-Range",
            FRAGMENT,
            &[&sid, "Content-Range: bytes 0-9/10", "Content-Length: 4"],
            b"evil",
            bad,
        ),
        h(
            "Content-Range past total",
            FRAGMENT,
            &[&sid, "Content-Range: bytes 0-3/2", "Content-Length: 4"],
            b"evil",
            bad,
        ),
        // Header syntax.
        h(
            "space in header name",
            "BITS Packet-Type: Create-Session",
            &["Content-Length: 0"],
            b"",
            Refused,
        ),
        // Request-line shapes.
        h_version(
            "HTTP/1.2",
            CREATE,
            "HTTP/1.2",
            &["Content-Length: 0"],
            b"",
            Refused,
        ),
        h_version(
            "HTTP/2.0",
            CREATE,
            "HTTP/2.0",
            &["Content-Length: 0"],
            b"",
            Refused,
        ),
        case(
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Refused,
        ),
        case(
            "double space in request line",
            b"BITS_POST  /upload/x.bin HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Refused,
        ),
    ]
}

#[test]
fn hostile_header_sets_are_refused() {
    let s = Server::start("");
    let cases = header_cases();
    assert!(cases.len() >= 15, "{}", cases.len());
    run_table(&s, &cases);
    assert_contained(&s, true);
    assert!(
        session_dirs(&s.spool()).is_empty(),
        "sessions created: {:?}",
        session_dirs(&s.spool())
    );
}

/// Runs one header case on its own server with the full set of checks.
fn single(c: Case) {
    let s = Server::start("");
    run_table(&s, &[c]);
    assert_contained(&s, true);
    assert!(
        session_dirs(&s.spool()).is_empty(),
        "sessions created: {:?}",
        session_dirs(&s.spool())
    );
}

/// RFC 9110 §8.6 lets a recipient fold identical Content-Length values into one; hyper does, and
/// nothing can be smuggled that way. Pinned so a change in that behaviour is noticed.
#[test]
fn duplicate_content_length_same_value_is_folded() {
    let s = Server::start("");
    let mut c = s.conn();
    let protocols = format!("BITS-Supported-Protocols: {PROTOCOL}");
    c.write_raw(&raw_request(
        "BITS_POST",
        b"/upload/dup-cl.bin",
        "HTTP/1.1",
        &[CREATE, &protocols, "Content-Length: 0", "Content-Length: 0"],
        b"",
    ));
    c.read_response(false).assert_ack(200, None);
}

#[test]
fn header_block_of_70_kib() {
    // 18 headers of 4000 bytes: each value under the 4096 limit, fewer than 100 headers.
    // Spec §2.1: custom headers total at most 16 KiB (IIS/http.sys refuse heads over 16 KiB);
    // either a 431 from the HTTP layer or an error Ack will do.
    let lines: Vec<String> = (0..18)
        .map(|i| format!("X-Pad-{i:02}: {}", "p".repeat(4000)))
        .collect();
    let mut lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    lines.push("Content-Length: 0");
    let c = h("70 KiB header block", CREATE, &lines, b"", Rejected);
    let head_len = c.request.len();
    assert!(head_len > 70 * 1024, "{head_len}");
    single(c);
}

#[test]
fn duplicate_packet_type() {
    single(h(
        "duplicate BITS-Packet-Type",
        "BITS-Packet-Type: Ping",
        &[
            CREATE,
            &format!("BITS-Supported-Protocols: {PROTOCOL}"),
            "Content-Length: 0",
        ],
        b"",
        A(400, INVALIDARG),
    ));
}

#[test]
fn http_1_0_request_line() {
    single(h_version(
        "HTTP/1.0",
        CREATE,
        "HTTP/1.0",
        &["Content-Length: 0"],
        b"",
        Rejected,
    ));
}

/// RFC 9112 §2.2 allows a recipient to accept a bare LF as a line terminator; httparse does.
/// The request is then an ordinary, well-framed Create-Session. Pinned to notice a change.
#[test]
fn bare_lf_line_endings_are_tolerated() {
    let s = Server::start("");
    let protocols = format!("BITS-Supported-Protocols: {PROTOCOL}");
    let request = format!(
        "BITS_POST /upload/bare-lf.bin HTTP/1.1\nHost: 127.0.0.1\n{CREATE}\n{protocols}\n\
         Content-Length: 0\n\n"
    )
    .into_bytes();
    let mut c = s.conn();
    c.write_raw(&request);
    c.read_response(false).assert_ack(200, None);
}
