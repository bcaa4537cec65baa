//! NTLM against a client nobody here wrote: curl's own NTLM (`--ntlm -u user:password`, NTLMv2
//! without a MIC). curl sends the NEGOTIATE message on a body-less request first and the body
//! only with the AUTHENTICATE message, on the same connection.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const PROTOCOL: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";
const URL: &str = "/upload/n.bin";

fn ntlm_server() -> Server {
    let config = vdir_config(
        "",
        "auth = \"ntlm\"\nusers_file = \"{root}/users\"\nntlm_domain = \"BITS\"",
    );
    Server::start_prepared(&config, false, |dir| {
        add_ntlm_user(&dir.join("users"), "alice", "s3cret!");
        // A Basic entry for the same name is not an NTLM credential.
        add_user(&dir.join("users"), "bob", "hunter2");
    })
}

/// The final answer to one `BITS_POST` sent by curl with NTLM as `credentials`: status and
/// headers (of the last response curl read).
fn curl(s: &Server, credentials: &str, headers: &[(&str, &str)], body: Option<&Path>) -> Response {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--ntlm",
        "-u",
        credentials,
        "-X",
        "BITS_POST",
        "-D",
        "-",
    ])
    .args(["-o", "/dev/null"]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    match body {
        Some(file) => cmd.arg("--data-binary").arg(format!("@{}", file.display())),
        None => cmd.args(["--data-binary", ""]),
    };
    cmd.arg(format!("http://{}{URL}", s.addr));
    let out = cmd.output().expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Response::last_of_curl(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn curl_ntlm_uploads_a_byte_identical_file() {
    let s = ntlm_server();
    let data = pattern(300_000, 17);
    let r = curl(&s, "alice:s3cret!", &[("BITS-Packet-Type", "Ping")], None);
    assert_eq!(r.status, 200);
    let r = curl(
        &s,
        "BITS\\alice:s3cret!",
        &[
            ("BITS-Packet-Type", "Create-Session"),
            ("BITS-Supported-Protocols", PROTOCOL),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.headers);
    let sid = r.header("BITS-Session-Id").expect("session id").to_string();
    for (i, chunk) in data.chunks(100_000).enumerate() {
        let first = i * 100_000;
        let file = s.dir.path().join("chunk");
        std::fs::write(&file, chunk).unwrap();
        let range = format!("bytes {first}-{}/{}", first + chunk.len() - 1, data.len());
        let r = curl(
            &s,
            "alice:s3cret!",
            &[
                ("BITS-Packet-Type", "Fragment"),
                ("BITS-Session-Id", &sid),
                ("Content-Range", &range),
            ],
            Some(&file),
        );
        assert_eq!(r.status, 200, "{:?}", r.headers);
        let received = (first + chunk.len()).to_string();
        assert_eq!(
            r.header("BITS-Received-Content-Range"),
            Some(received.as_str())
        );
    }
    let r = curl(
        &s,
        "alice:s3cret!",
        &[
            ("BITS-Packet-Type", "Close-Session"),
            ("BITS-Session-Id", &sid),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(std::fs::read(s.upload_path("n.bin")).unwrap(), data);
}

#[test]
fn wrong_password_unknown_user_and_other_domain_get_401_and_change_nothing() {
    let s = ntlm_server();
    let create = [
        ("BITS-Packet-Type", "Create-Session"),
        ("BITS-Supported-Protocols", PROTOCOL),
    ];
    for credentials in [
        "alice:wrong",
        "alice:S3CRET!",
        "mallory:s3cret!",
        // bob has a Basic password only.
        "bob:hunter2",
        "OTHER\\alice:s3cret!",
    ] {
        let r = curl(&s, credentials, &create, None);
        assert_eq!(r.status, 401, "{credentials}: {:?}", r.headers);
        assert_eq!(r.header("WWW-Authenticate"), Some("NTLM"), "{credentials}");
    }
    assert!(files_below(&s.root()).is_empty());
    assert!(session_dirs(&s.spool()).is_empty());
    // The right one still works afterwards (the failures did not lock the address out).
    let r = curl(&s, "alice:s3cret!", &create, None);
    assert_eq!(r.status, 200);
}

#[test]
fn without_credentials_the_challenge_is_ntlm() {
    let s = ntlm_server();
    let r = s.conn().create(URL);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("NTLM"));
}

/// `Authorization: NTLM <base64>`.
fn ntlm_header(message: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "NTLM {}",
        base64::engine::general_purpose::STANDARD.encode(message)
    )
}

/// The full NTLM handshake on `c`, each leg carrying `body` (as Windows BITS resends a whole
/// request after a 401); returns the final answer.
fn handshake_with_body(
    c: &mut Conn,
    headers: &[(&str, &str)],
    body: &[u8],
    password: &str,
) -> Response {
    let r = c.send("BITS_POST", URL, headers, body);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("NTLM"));
    assert_ne!(
        r.header("Connection"),
        Some("close"),
        "the connection must survive the 401"
    );
    let negotiate = bits_proto::ntlm::negotiate_message();
    let auth = ntlm_header(&negotiate);
    let mut with_auth = headers.to_vec();
    with_auth.push(("Authorization", &auth));
    let r = c.send("BITS_POST", URL, &with_auth, body);
    assert_eq!(r.status, 401);
    assert_ne!(
        r.header("Connection"),
        Some("close"),
        "the handshake needs the same connection"
    );
    let challenge = r
        .header("WWW-Authenticate")
        .and_then(|v| v.strip_prefix("NTLM "))
        .map(|t| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .expect("base64 challenge")
        })
        .expect("an NTLM challenge");
    let answer =
        bits_proto::ntlm::authenticate_message(&challenge, "alice", "BITS", password, [3; 8])
            .expect("AUTHENTICATE");
    let auth = ntlm_header(&answer);
    let mut with_auth = headers.to_vec();
    with_auth.push(("Authorization", &auth));
    c.send("BITS_POST", URL, &with_auth, body)
}

/// A Fragment answered 401 (twice: no credentials, then the challenge) and resent with its body
/// each time is stored once and acknowledged once; the connection stays authenticated.
#[test]
fn a_fragment_resent_through_the_handshake_is_stored_once() {
    let s = ntlm_server();
    let data = pattern(200_000, 23);
    let total = data.len().to_string();
    // Create-Session on one connection…
    let mut first = s.conn();
    let r = handshake_with_body(
        &mut first,
        &[
            ("BITS-Packet-Type", "Create-Session"),
            ("BITS-Supported-Protocols", PROTOCOL),
        ],
        b"",
        "s3cret!",
    );
    r.assert_ack(200, None);
    let sid = r.session();
    // …the first fragment on another, through the whole handshake with its body each time.
    let mut c = s.conn();
    let range = format!("bytes 0-99999/{total}");
    let frag = [
        ("BITS-Packet-Type", "Fragment"),
        ("BITS-Session-Id", sid.as_str()),
        ("Content-Range", range.as_str()),
    ];
    let r = handshake_with_body(&mut c, &frag, &data[..100_000], "s3cret!");
    r.assert_ack(200, None);
    assert_eq!(r.received(), Some(100_000));
    // The connection is authenticated now: the next fragment needs no header.
    let r = c.fragment(URL, &sid, 100_000, &data[100_000..], data.len() as u64);
    r.assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("n.bin")).unwrap(), data);
    // A new connection is not: it is challenged.
    let r = s.conn().close(URL, &sid);
    assert_eq!(r.status, 401);
    // The same handshake with a wrong password gets a fresh 401 and stores nothing.
    let mut c = s.conn();
    let r = handshake_with_body(&mut c, &frag, &data[..100_000], "wrong");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("NTLM"));
}

/// Our own client with `AuthScheme::Ntlm` (what `bits --auth ntlm` uses): it answers the 401s
/// with the handshake and uploads; with a wrong password it stops with an authentication error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bits_client_signs_in_with_ntlm() {
    use bits_client::{AuthScheme, Client, NoObserver, RetryPolicy, UploadState, Url};
    let s = ntlm_server();
    let data = pattern(2_500_000, 29);
    let file = s.dir.path().join("local.bin");
    std::fs::write(&file, &data).unwrap();
    let url = Url::parse(&format!("http://{}{URL}", s.addr)).unwrap();
    let client = |password: &str| {
        Client::builder()
            .auth_scheme(AuthScheme::Ntlm)
            .credentials("BITS\\alice", password)
            .retry(RetryPolicy::quick(2, std::time::Duration::from_millis(20)))
            .build()
            .expect("client")
    };
    let mut state = UploadState::new(&file, &url, 1 << 20).unwrap();
    let err = client("nope")
        .upload(&mut state, &mut NoObserver)
        .await
        .expect_err("a wrong password");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(files_below(&s.root()).is_empty());
    let mut state = UploadState::new(&file, &url, 1 << 20).unwrap();
    let out = client("s3cret!")
        .upload(&mut state, &mut NoObserver)
        .await
        .expect("upload with NTLM");
    assert_eq!(out.bytes, data.len() as u64);
    assert_eq!(std::fs::read(s.upload_path("n.bin")).unwrap(), data);
}

/// An AUTHENTICATE message is good once, on the connection whose challenge it answers: sent
/// without a challenge, replayed on another connection (another challenge), or replayed on its
/// own connection after use, it gets 401. Tokens that are not NTLM, or too large, get 401 too.
#[test]
fn authenticate_messages_do_not_replay_or_travel() {
    use base64::Engine as _;
    let s = ntlm_server();
    let create = [
        ("BITS-Packet-Type", "Create-Session"),
        ("BITS-Supported-Protocols", PROTOCOL),
    ];
    // A valid answer to connection A's challenge.
    let mut a = s.conn();
    let negotiate = ntlm_header(&bits_proto::ntlm::negotiate_message());
    let mut h = create.to_vec();
    h.push(("Authorization", &negotiate));
    let r = a.send("BITS_POST", URL, &h, b"");
    let challenge = base64::engine::general_purpose::STANDARD
        .decode(
            r.header("WWW-Authenticate")
                .unwrap()
                .strip_prefix("NTLM ")
                .unwrap(),
        )
        .unwrap();
    let answer = ntlm_header(
        &bits_proto::ntlm::authenticate_message(&challenge, "alice", "BITS", "s3cret!", [4; 8])
            .unwrap(),
    );
    let with_answer = |c: &mut Conn| {
        let mut h = create.to_vec();
        h.push(("Authorization", answer.as_str()));
        c.send("BITS_POST", URL, &h, b"")
    };
    // On a fresh connection (no challenge): refused.
    assert_eq!(with_answer(&mut s.conn()).status, 401);
    // On another connection after its own NEGOTIATE (another challenge): refused.
    let mut b = s.conn();
    let mut h = create.to_vec();
    h.push(("Authorization", &negotiate));
    assert_eq!(b.send("BITS_POST", URL, &h, b"").status, 401);
    assert_eq!(with_answer(&mut b).status, 401);
    // On its own connection: accepted once; sent again, the connection is signed out.
    with_answer(&mut a).assert_ack(200, None);
    assert_eq!(with_answer(&mut a).status, 401);
    // Not NTLM, or absurdly long.
    for value in [
        "NTLM !!!not-base64".to_string(),
        format!("NTLM {}", "A".repeat(40_000)),
        "Negotiate YIIBhwYGKwYBBQUCoII=".to_string(),
    ] {
        let mut h = create.to_vec();
        h.push(("Authorization", &value));
        let r = s.conn().send("BITS_POST", URL, &h, b"");
        // An over-long header is refused before authentication (431).
        assert!(
            matches!(r.status, 401 | 431),
            "{}: {}",
            &value[..20],
            r.status
        );
    }
    assert_eq!(
        session_dirs(&s.spool()).len(),
        1,
        "only the one accepted Create-Session"
    );
}
