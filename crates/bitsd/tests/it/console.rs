//! The admin console (issue 19) in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, started here on a free loopback port) against a real bitsd. Three uploads
//! pause mid-way; the console must list them with their progress, follow a fragment that
//! lands, move a completed one to the completions, refuse to show anything without the token,
//! and show hostile file names as text. A screenshot is saved under
//! `<target dir>/test-artifacts/console.png` (`$CARGO_TARGET_DIR`, default `target/`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::*;

const TOKEN: &str = "console-t0ken";
const TOTAL: u64 = 1_000_000;

/// A `chromedriver` child, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (scripts/test.sh installs Debian's chromium-driver)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--no-first-run", "--disable-extensions",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    // The driver is plain HTTP on loopback; rustls is only fantoccini's default connector.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Waits until `check` returns `Some`, re-running it; panics with `what` after 15 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(received, total)` of each session row, by session id.
async fn progress(c: &Client) -> Vec<(String, u64, String)> {
    let Ok(rows) = c.find_all(Locator::Css("#sessions tbody tr")).await else {
        return vec![];
    };
    let mut out = vec![];
    for row in rows {
        let id = row.attr("data-id").await.ok().flatten().unwrap_or_default();
        let Ok(td) = row.find(Locator::Css("td.progress")).await else {
            continue;
        };
        let received = td
            .attr("data-received")
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let text = td.text().await.unwrap_or_default();
        out.push((id, received, text));
    }
    out
}

async fn token_form_shown(b: &Client) {
    eventually("the token form", || async {
        let form = b.find(Locator::Id("login")).await.ok()?;
        form.is_displayed().await.ok()?.then_some(())
    })
    .await;
}

async fn submit_token(b: &Client, token: &str) {
    b.find(Locator::Id("token"))
        .await
        .expect("the token field")
        .send_keys(token)
        .await
        .expect("typing the token");
    b.find(Locator::Css("#login button"))
        .await
        .expect("the submit button")
        .click()
        .await
        .expect("submitting");
}

fn artifacts() -> PathBuf {
    let dir = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// The target directory this test was built into: `CARGO_TARGET_DIR` when it is absolute (a
/// relative one is relative to wherever cargo ran), else two levels above the test binary
/// (`<target>/<profile>/deps/it-…`). Never a fixed `target/` under the sources, which a
/// read-only checkout or a shared target dir would make wrong.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return dir;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_live_sessions_progress_and_completions() {
    let s = Server::start(&format!(
        "admin = {{ listen = \"127.0.0.1:0\", token = \"{TOKEN}\" }}\n"
    ));
    let admin = s.admin_addr.expect("admin listener");
    // Three uploads paused mid-way, and a refused one whose name is HTML (it shows among the
    // errors, where the console must print it as text).
    let data = pattern(TOTAL as usize, 40);
    let names = ["alpha.bin", "beta.bin", "gamma%26amp%3B.bin"];
    let hostile = "/upload/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E.bin";
    s.conn()
        .create(hostile)
        .assert_ack(400, Some(("0x80070057", "0x5")));
    let mut c = s.conn();
    let mut sids = vec![];
    for (i, name) in names.iter().enumerate() {
        let path = format!("/upload/{name}");
        let created = c.create(&path);
        assert_eq!(created.status, 200, "{path}: {:?}", created.headers);
        let sid = created.session();
        let first = 100_000 * (i as u64 + 1);
        c.fragment(&path, &sid, 0, &data[..first as usize], TOTAL)
            .assert_ack(200, None);
        sids.push((path, sid, first));
    }

    // Without the token the JSON the console reads is refused.
    let r = Conn::new(admin).send("GET", "/admin/activity", &[], b"");
    assert_eq!(r.status, 401);
    let r = Conn::new(admin).send("GET", "/admin/sessions", &[], b"");
    assert_eq!(r.status, 401);

    let driver = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    let result = async {
        b.goto(&format!("http://{admin}/console"))
            .await
            .expect("open the console");
        // No token yet: the form, and no session data.
        token_form_shown(&b).await;
        assert!(progress(&b).await.is_empty());
        // A wrong token is refused and asked again.
        submit_token(&b, "wrong").await;
        eventually("the refusal", || async {
            let reason = b
                .find(Locator::Id("login-reason"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            reason.contains("refused").then_some(())
        })
        .await;
        submit_token(&b, TOKEN).await;

        // The three sessions with their progress.
        let rows = eventually("three sessions", || async {
            let rows = progress(&b).await;
            (rows.len() == 3).then_some(rows)
        })
        .await;
        for (path, sid, first) in &sids {
            let (_, received, text) = rows
                .iter()
                .find(|(id, _, _)| id == sid)
                .unwrap_or_else(|| panic!("{sid} not listed: {rows:?}"));
            assert_eq!(received, first, "{path}");
            let pct = format!("({} %)", first * 100 / TOTAL);
            assert!(text.contains(&pct), "{path}: {text:?}");
        }
        // Client-chosen names are text, not markup: no <img> anywhere.
        let all = b
            .find(Locator::Css("#sessions tbody"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(all.contains("/upload/gamma%26amp%3B.bin"), "{all}");
        let errors = b
            .find(Locator::Css("#errors tbody"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(errors.contains("img"), "{errors}");
        assert!(b.find(Locator::Css("img")).await.is_err());

        // A fragment lands: the console follows.
        let (path, sid, first) = &sids[0];
        c.fragment(path, sid, *first, &data[*first as usize..400_000], TOTAL)
            .assert_ack(200, None);
        eventually("the new progress", || async {
            progress(&b)
                .await
                .iter()
                .any(|(id, r, t)| id == sid && *r == 400_000 && t.contains("(40 %)"))
                .then_some(())
        })
        .await;

        // Another completes: it leaves the open sessions and shows among the completions.
        let (path, sid, first) = &sids[1];
        c.fragment(path, sid, *first, &data[*first as usize..], TOTAL)
            .assert_ack(200, None);
        eventually("the completion", || async {
            let done = b
                .find(Locator::Css(&format!("#completions tr[data-id='{sid}']")))
                .await
                .ok()?;
            let size = done
                .find(Locator::Css("td.size"))
                .await
                .ok()?
                .attr("data-bytes")
                .await
                .ok()??;
            let open = progress(&b).await;
            (size == TOTAL.to_string()
                && open.len() == 2
                && !open.iter().any(|(id, _, _)| id == sid))
            .then_some(())
        })
        .await;
        // Throughput, storage and the vdir table are drawn.
        let storage = b
            .find(Locator::Id("storage-state"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(storage, "fs ready");
        let vdir = b
            .find(Locator::Css("#vdirs tr[data-prefix='/upload/']"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Open = not yet closed: the complete one waits for its Close.
        assert!(vdir.starts_with("/upload/ 3 1"), "{vdir:?}");
        let chart = b.find_all(Locator::Css("#chart polyline")).await.unwrap();
        assert_eq!(chart.len(), 2);
        // Read-only by default: no cancel buttons.
        assert!(b
            .find(Locator::Css("#sessions button.cancel"))
            .await
            .is_err());

        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(artifacts().join("console.png"), png).expect("save the screenshot");

        // A phone-sized screen: the page itself never scrolls sideways (wide tables scroll in
        // their own box).
        b.set_window_size(390, 844).await.expect("resize");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let overflow = b
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .expect("measure");
        assert_eq!(overflow.as_i64(), Some(0), "page wider than a phone screen");
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(artifacts().join("console-phone.png"), png).expect("save the screenshot");
    }
    .await;
    let _ = b.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_cancel_needs_the_knob_and_a_confirmation() {
    let s = Server::start(&format!(
        "admin = {{ listen = \"127.0.0.1:0\", token = \"{TOKEN}\", console_cancel = true }}\n"
    ));
    let admin = s.admin_addr.expect("admin listener");
    let mut c = s.conn();
    let sid = c.create("/upload/victim.bin").session();
    c.fragment("/upload/victim.bin", &sid, 0, &[7u8; 1000], 5000)
        .assert_ack(200, None);
    let driver = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    let result = async {
        b.goto(&format!("http://{admin}/console")).await.unwrap();
        token_form_shown(&b).await;
        submit_token(&b, TOKEN).await;
        let button = eventually("the cancel button", || async {
            b.find(Locator::Css("#sessions button.cancel")).await.ok()
        })
        .await;
        // Dismissing the confirmation cancels nothing.
        button.click().await.unwrap();
        b.dismiss_alert().await.expect("a confirmation");
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.fragment("/upload/victim.bin", &sid, 1000, &[7u8; 1000], 5000)
            .assert_ack(200, None);
        // Accepting it cancels the session. The table is redrawn every refresh: a button
        // found just before a redraw is stale by the click, so find and click again.
        let mut clicked = false;
        for _ in 0..20 {
            if let Ok(button) = b.find(Locator::Css("#sessions button.cancel")).await {
                if button.click().await.is_ok() {
                    clicked = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(clicked, "the cancel button could not be clicked");
        b.accept_alert().await.expect("a confirmation");
        eventually("the session gone", || async {
            progress(&b).await.is_empty().then_some(())
        })
        .await;
        c.fragment("/upload/victim.bin", &sid, 2000, &[7u8; 1000], 5000)
            .assert_ack(500, Some(SESSION_NOT_FOUND));
    }
    .await;
    let _ = b.close().await;
    result
}

/// Without a token the listener answers only requests addressed to a loopback name (DNS
/// rebinding defence) and refuses cross-site POSTs: the console, opened as `localhost`, still
/// reads sessions and cancels one through its own origin's fetch (which sends `Origin` and
/// `Sec-Fetch-Site: same-origin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_without_a_token_works_from_its_own_origin() {
    let s = Server::start("admin = { listen = \"127.0.0.1:0\", console_cancel = true }\n");
    let port = s.admin_addr.expect("admin listener").port();
    let mut c = s.conn();
    let sid = c.create("/upload/local.bin").session();
    c.fragment("/upload/local.bin", &sid, 0, &[7u8; 1000], 5000)
        .assert_ack(200, None);
    let driver = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    let result = async {
        b.goto(&format!("http://localhost:{port}/console"))
            .await
            .unwrap();
        let button = eventually("the cancel button", || async {
            b.find(Locator::Css("#sessions button.cancel")).await.ok()
        })
        .await;
        button.click().await.unwrap();
        b.accept_alert().await.expect("a confirmation");
        eventually("the session gone", || async {
            progress(&b).await.is_empty().then_some(())
        })
        .await;
        c.fragment("/upload/local.bin", &sid, 1000, &[7u8; 1000], 5000)
            .assert_ack(500, Some(SESSION_NOT_FOUND));
    }
    .await;
    let _ = b.close().await;
    result
}
