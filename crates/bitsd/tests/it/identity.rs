//! Identity belongs to a vdir's policy and a request, never to a TCP connection (issue 25):
//! NTLM sign-ins on one keep-alive connection against two vdirs, a pooling nginx from Debian in
//! front of an NTLM vdir, failure budgets per user across addresses, lockouts that spare
//! connections already signed in, and SPNEGO's MIC. The Kerberos halves are in `kerberos.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::*;

const PROTOCOL: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";
const CREATE: [(&str, &str); 2] = [
    ("BITS-Packet-Type", "Create-Session"),
    ("BITS-Supported-Protocols", PROTOCOL),
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The token of `WWW-Authenticate: <scheme> <token>`.
fn challenge_token(r: &Response, scheme: &str) -> Option<Vec<u8>> {
    let v = r.header("WWW-Authenticate")?;
    let t = v.strip_prefix(scheme)?.strip_prefix(' ')?;
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

/// NTLM's legs on `c` for `method path` with `headers` (no body): the final answer.
fn ntlm_sign_in(
    c: &mut Conn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    user: &str,
    password: &str,
) -> Response {
    let auth = format!("NTLM {}", b64(&bits_proto::ntlm::negotiate_message()));
    let mut h = headers.to_vec();
    h.push(("Authorization", &auth));
    let r = c.send(method, path, &h, b"");
    let Some(challenge) = challenge_token(&r, "NTLM") else {
        return r;
    };
    let answer = bits_proto::ntlm::authenticate_message(&challenge, user, "", password, [4; 8])
        .expect("AUTHENTICATE");
    let auth = format!("NTLM {}", b64(&answer));
    let mut h = headers.to_vec();
    h.push(("Authorization", &auth));
    c.send(method, path, &h, b"")
}

fn two_ntlm_vdirs() -> Server {
    let config = "\
        [[vdir]]\nprefix = \"/ntlm/\"\nroot = \"{root}/ntlm\"\nauth = \"ntlm\"\n\
        users_file = \"{root}/users1\"\n\
        [[vdir]]\nprefix = \"/ntlm2/\"\nroot = \"{root}/ntlm2\"\nauth = \"ntlm\"\n\
        users_file = \"{root}/users2\"\nntlm_domain = \"SECURE\"\n";
    Server::start_prepared(config, false, |dir| {
        add_ntlm_user(&dir.join("users1"), "alice", "alicepw");
        add_ntlm_user(&dir.join("users1"), "bob", "bobpw");
        add_ntlm_user(&dir.join("users2"), "alice", "another alice's password");
        for root in ["ntlm", "ntlm2"] {
            std::fs::create_dir_all(dir.join(root)).unwrap();
            std::fs::write(dir.join(root).join("secret.txt"), format!("{root} secret")).unwrap();
        }
    })
}

/// Finding 1: signed in on `/ntlm/`, the same keep-alive connection asks `/ntlm2/` (another
/// users file, another alice) without a token: 401 for every packet and for GET, while `/ntlm/`
/// still knows the connection.
#[test]
fn finding1_an_ntlm_sign_in_stays_with_its_vdir_on_one_connection() {
    let s = two_ntlm_vdirs();
    let mut c = s.conn();
    let r = ntlm_sign_in(
        &mut c,
        "BITS_POST",
        "/ntlm/a.bin",
        &CREATE,
        "alice",
        "alicepw",
    );
    r.assert_ack(200, None);
    let sid = r.session();
    // Same policy, same connection: still alice.
    assert_eq!(c.send("GET", "/ntlm/secret.txt", &[], b"").status, 200);
    // Another policy: nobody.
    let r = c.send("BITS_POST", "/ntlm2/b.bin", &CREATE, b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("NTLM"));
    let r = c.send("GET", "/ntlm2/secret.txt", &[], b"");
    assert_eq!(r.status, 401);
    let r = c.fragment("/ntlm2/b.bin", &sid, 0, b"xyz", 3);
    assert_eq!(r.status, 401);
    let r = c.close("/ntlm2/b.bin", &sid);
    assert_eq!(r.status, 401);
    let r = c.cancel("/ntlm2/b.bin", &sid);
    assert_eq!(r.status, 401);
    assert!(!s.dir.path().join("ntlm2/b.bin").exists());
    // The other alice's password does not work there with this alice's either.
    let r = ntlm_sign_in(&mut c, "GET", "/ntlm2/secret.txt", &[], "alice", "alicepw");
    assert_eq!(r.status, 401);
    // And that failed sign-in signed the connection out everywhere.
    assert_eq!(c.send("GET", "/ntlm/secret.txt", &[], b"").status, 401);
}

/// Finding 8: a client address that spent its failure budget gets 503 for new sign-ins, but a
/// connection of that address that is already signed in carries on.
#[test]
fn finding8_a_spent_address_leaves_signed_in_connections_alone() {
    let s = two_ntlm_vdirs();
    let mut signed_in = s.conn();
    let r = ntlm_sign_in(
        &mut signed_in,
        "BITS_POST",
        "/ntlm/a.bin",
        &CREATE,
        "alice",
        "alicepw",
    );
    r.assert_ack(200, None);
    let sid = r.session();
    let mut statuses = Vec::new();
    for i in 0..35 {
        let mut c = s.conn();
        let user = format!("guess{i}");
        let r = ntlm_sign_in(&mut c, "GET", "/ntlm/secret.txt", &[], &user, "x");
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&st| st == 401).count(),
        30,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&503));
    // A new connection from the spent address: 503 even with the right password.
    let mut fresh = s.conn();
    let r = ntlm_sign_in(
        &mut fresh,
        "GET",
        "/ntlm/secret.txt",
        &[],
        "alice",
        "alicepw",
    );
    assert_eq!(r.status, 503);
    // The connection signed in before: uploads on.
    let r = signed_in.fragment("/ntlm/a.bin", &sid, 0, b"abc", 3);
    assert_eq!(r.status, 200, "{:?}", r.headers);
}

/// Finding 4: wrong NTLM answers for one name from 20 addresses: after the name's budget (10
/// per minute) every further attempt gets 503 without a check, the right password included.
#[test]
fn finding4_ntlm_guesses_are_budgeted_per_user_across_addresses() {
    let s = two_ntlm_vdirs();
    let mut statuses = Vec::new();
    for i in 0..40u8 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + i / 2));
        let mut c = Conn::from_address(s.addr, from);
        let r = ntlm_sign_in(&mut c, "GET", "/ntlm/secret.txt", &[], "alice", "guess");
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&st| st == 401).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&st| st == 503).count(), 30);
    let mut c = Conn::from_address(s.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)));
    let r = ntlm_sign_in(&mut c, "GET", "/ntlm/secret.txt", &[], "ALICE", "alicepw");
    assert_eq!(r.status, 503);
    // Another user is not locked out by alice's guesses.
    let mut c = Conn::from_address(s.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 2, 2)));
    let r = ntlm_sign_in(&mut c, "GET", "/ntlm/secret.txt", &[], "bob", "bobpw");
    assert_eq!(r.status, 200);
}

/// Finding 7: a raw NTLM NEGOTIATE under `Negotiate`, answered with a SPNEGO NegTokenResp
/// whose MIC is garbage: 401, and the connection is not signed in behind that refusal.
#[test]
fn finding7_a_failed_spnego_leg_leaves_nothing_signed_in() {
    use bits_proto::kerberos::der::{context, tlv};
    let keytab = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bits-server/src/auth/kerberos/testdata/http.keytab");
    let config = format!(
        "[[vdir]]\nprefix = \"/neg/\"\nroot = \"{{root}}/neg\"\nauth = \"negotiate\"\n\
         keytab = \"{}\"\nusers_file = \"{{root}}/users\"\ndownload_enabled = true\n",
        keytab.display()
    );
    let s = Server::start_prepared(&config, false, |dir| {
        add_ntlm_user(&dir.join("users"), "alice", "alicepw");
        std::fs::create_dir_all(dir.join("neg")).unwrap();
        std::fs::write(dir.join("neg/secret.txt"), "secret").unwrap();
    });
    let mut c = s.conn();
    let auth = format!("Negotiate {}", b64(&bits_proto::ntlm::negotiate_message()));
    let r = c.send("GET", "/neg/secret.txt", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 401);
    let challenge = challenge_token(&r, "Negotiate").expect("raw NTLM challenge");
    let answer =
        bits_proto::ntlm::authenticate_message(&challenge, "alice", "", "alicepw", [9; 8]).unwrap();
    let mut resp = context(2, &tlv(0x04, &answer));
    resp.extend(context(3, &tlv(0x04, &[0xEE; 16])));
    let auth = format!("Negotiate {}", b64(&tlv(0xa1, &tlv(0x30, &resp))));
    let r = c.send("GET", "/neg/secret.txt", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 401);
    let r = c.send("GET", "/neg/secret.txt", &[], b"");
    assert_eq!(r.status, 401, "signed in behind a refused MIC");
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a pooling proxy in front of an NTLM vdir.

/// nginx (Debian's) on a free port, as `docs/farm.md` configures it: an upstream pool with
/// keep-alive (`keepalive 4`, HTTP/1.1, `Connection ""`); stopped on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// `extra`: more directives for the `server` block.
    fn start(upstream: SocketAddr, extra: &str) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is missing: scripts/test.sh installs Debian's nginx-light");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(d.join(t)).unwrap();
        }
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream bitsd {{ server {upstream}; keepalive 4; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 64m;\n\
                 proxy_request_buffering off;\n    proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n    {extra}\n\
                 location / {{ proxy_pass http://bitsd; }}\n  }}\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl through the proxy: the status of `method url` (NTLM as alice when `ntlm`).
fn curl_status(url: &str, method: &str, headers: &[(&str, &str)], ntlm: bool) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
    if ntlm {
        cmd.args(["--ntlm", "-u", "alice:alicepw"]);
    }
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if method == "BITS_POST" {
        cmd.args(["--data-binary", ""]);
    }
    let out = cmd.arg(url).output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The documented pooled nginx in front of an NTLM vdir, bitsd with `trusted_proxies` as
/// `docs/farm.md` says: alice's `curl --ntlm` requests get through, an anonymous curl after
/// her (on the same pooled upstream connection) gets 401, never her files or her name. Without
/// `trusted_proxies` the `X-Forwarded-For` the documented nginx adds is enough.
#[test]
fn finding2_a_pooling_nginx_does_not_hand_alices_identity_to_the_next_client() {
    for (top, nginx_extra) in [
        ("trusted_proxies = [\"127.0.0.1/32\"]\n", ""),
        (
            "",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        ),
    ] {
        let config = format!(
            "{top}[[vdir]]\nprefix = \"/ntlm/\"\nroot = \"{{root}}/ntlm\"\nauth = \"ntlm\"\n\
             users_file = \"{{root}}/users\"\n"
        );
        let s = Server::start_prepared(&config, false, |dir| {
            add_ntlm_user(&dir.join("users"), "alice", "alicepw");
            std::fs::create_dir_all(dir.join("ntlm")).unwrap();
            std::fs::write(dir.join("ntlm/alices.txt"), "alice's file").unwrap();
        });
        let nginx = Nginx::start(s.addr, nginx_extra);
        let base = format!("http://{}/ntlm", nginx.addr);
        for _ in 0..3 {
            assert_eq!(
                curl_status(&format!("{base}/alices.txt"), "GET", &[], true),
                200
            );
            assert_eq!(
                curl_status(&format!("{base}/alices.txt"), "GET", &[], false),
                401,
                "{top}{nginx_extra}"
            );
            assert_eq!(
                curl_status(&format!("{base}/new.bin"), "BITS_POST", &CREATE, false),
                401
            );
        }
        assert!(session_dirs(&s.spool()).is_empty());
    }
}

/// `persist_auth = "request"` with clients that keep their connection: our `bits` client and
/// curl `--ntlm` both re-run the handshake when a later request is challenged, so a whole
/// upload completes with a sign-in per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_request_uploads_complete_with_a_handshake_per_request() {
    use bits_client::{AuthScheme, Client, NoObserver, RetryPolicy, UploadState, Url};
    let config = vdir_config(
        "",
        "auth = \"ntlm\"\nusers_file = \"{root}/users\"\npersist_auth = \"request\"",
    );
    let s = Server::start_prepared(&config, false, |dir| {
        add_ntlm_user(&dir.join("users"), "alice", "alicepw");
    });
    let data = pattern(3_000_000, 41);
    let file = s.dir.path().join("local.bin");
    std::fs::write(&file, &data).unwrap();
    let url = Url::parse(&format!("http://{}/upload/p.bin", s.addr)).unwrap();
    let client = Client::builder()
        .auth_scheme(AuthScheme::Ntlm)
        .credentials("alice", "alicepw")
        .retry(RetryPolicy::quick(2, Duration::from_millis(20)))
        .build()
        .expect("client");
    let mut state = UploadState::new(&file, &url, 1 << 20).unwrap();
    let out = client
        .upload(&mut state, &mut NoObserver)
        .await
        .expect("upload with NTLM per request");
    assert_eq!(out.bytes, data.len() as u64);
    assert_eq!(std::fs::read(s.upload_path("p.bin")).unwrap(), data);
    // Every BITS request was signed in on its own: no token-less 200.
    let log = s.log_text();
    assert!(log.contains("packet=\"Close-Session\""), "{log}");
}
