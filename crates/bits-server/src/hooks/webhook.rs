//! The webhook transport: one `POST` of the event JSON per attempt, signed when a secret is
//! set. Retries are the queue's business; an attempt only says whether it was a delivery.

use std::sync::OnceLock;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::event::EventKind;
use crate::config::hooks::{secret_from_file_bytes, HooksConfig};

/// `sha256=<hex HMAC-SHA256(key, body)>`.
fn signature(key: &[u8], body: &[u8]) -> Result<String, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| format!("bad secret: {e}"))?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// The HTTP client of every webhook delivery of one dispatcher, built on the first one.
#[derive(Default)]
pub(super) struct WebhookClient {
    http: OnceLock<Result<reqwest_s3::Client, String>>,
}

impl WebhookClient {
    fn client(&self) -> Result<&reqwest_s3::Client, String> {
        self.http
            .get_or_init(|| {
                crate::tls::install_crypto_provider();
                reqwest_s3::Client::builder()
                    .user_agent(concat!("bitsd/", env!("CARGO_PKG_VERSION")))
                    .redirect(reqwest_s3::redirect::Policy::none())
                    .retry(reqwest_s3::retry::never())
                    .no_proxy()
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// One attempt to deliver event `id` of `kind`, serialized as `body`, to
    /// `cfg.webhook_url`: `Ok` on a 2xx answer (or when no URL is set).
    pub(super) async fn post(
        &self,
        cfg: &HooksConfig,
        kind: EventKind,
        id: &str,
        body: &Bytes,
    ) -> Result<(), String> {
        let Some(url) = cfg.webhook_url.as_deref() else {
            return Ok(());
        };
        let client = self.client()?;
        let mut req = client
            .post(url)
            .header(reqwest_s3::header::CONTENT_TYPE, "application/json")
            .header("X-Bitsd-Event", kind.as_str())
            .header("X-Bitsd-Delivery", id);
        let key = match (&cfg.webhook_secret, &cfg.webhook_secret_file) {
            (Some(s), _) => Some(s.as_bytes().to_vec()),
            (None, Some(path)) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read webhook_secret_file {path:?}: {e}"))?;
                let key = secret_from_file_bytes(bytes);
                if key.is_empty() {
                    return Err(format!("webhook_secret_file {path:?} is empty"));
                }
                Some(key)
            }
            (None, None) => None,
        };
        if let Some(key) = key {
            req = req.header("X-Bitsd-Signature", signature(&key, body)?);
        }
        let resp = tokio::time::timeout(cfg.timeout, req.body(body.clone()).send())
            .await
            .map_err(|_| format!("no answer within {:?}", cfg.timeout))?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{EventKind, HookStats, Hooks, HooksConfig};
    use super::*;
    use sha2::Digest;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// HMAC-SHA256 written out from RFC 2104, independent of the `hmac` crate.
    fn reference_hmac(key: &[u8], msg: &[u8]) -> String {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    #[test]
    fn reference_hmac_matches_rfc4231_and_signature() {
        // RFC 4231 test case 2.
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            reference_hmac(b"Jefe", b"what do ya want for nothing?"),
            want
        );
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?").unwrap(),
            format!("sha256={want}")
        );
        let long_key = [0xaau8; 131];
        assert_eq!(
            signature(&long_key, b"x").unwrap(),
            format!("sha256={}", reference_hmac(&long_key, b"x"))
        );
    }

    #[tokio::test]
    async fn webhook_delivers_once_with_headers_and_signature() {
        let (url, rx) = receiver(&[200], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            webhook_secret: Some("s3cret".into()),
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        let ev = event(EventKind::UploadCompleted).with_upload(42, "ABCDEF");
        let id = ev.id.clone();
        hooks.emit(&cfg, ev);
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!(
            s,
            HookStats {
                delivered: 1,
                ..HookStats::default()
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1, "delivered exactly once");
        let (h, body) = &reqs[0];
        assert_eq!(header(h, "content-type"), "application/json");
        assert_eq!(header(h, "x-bitsd-event"), "upload_completed");
        assert_eq!(header(h, "x-bitsd-delivery"), id);
        assert!(header(h, "user-agent").starts_with("bitsd/"));
        assert_eq!(
            header(h, "x-bitsd-signature"),
            format!("sha256={}", reference_hmac(b"s3cret", body))
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["event"], "upload_completed");
        assert_eq!(v["session"], "{7B1D3C5E-0000-4000-8000-000000000001}");
        assert_eq!(v["vdir"], "/upload/");
        assert_eq!(v["destination"], "dir/file.bin");
        assert_eq!(v["identity"], "alice");
        assert_eq!(v["size"], 42);
        assert_eq!(v["sha256"], "abcdef");
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
    }

    #[tokio::test]
    async fn webhook_without_secret_has_no_signature() {
        let (url, rx) = receiver(&[204], Duration::ZERO).await;
        let hooks = Hooks::new(8);
        let ev = event(EventKind::SessionCreated);
        hooks.emit(&fast(webhook(&url)), ev);
        wait_for(&hooks, |s| s.delivered == 1).await;
        let reqs = rx.requests();
        assert!(reqs[0].0.get("x-bitsd-signature").is_none());
        let v: serde_json::Value = serde_json::from_slice(&reqs[0].1).unwrap();
        assert!(v["size"].is_null() && v["sha256"].is_null());
    }

    #[tokio::test]
    async fn webhook_retries_until_success() {
        let (url, rx) = receiver(&[500, 500, 200], Duration::ZERO).await;
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            webhook_secret: Some("k".into()),
            ..webhook(&url)
        });
        hooks.emit(&cfg, event(EventKind::SessionCancelled));
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!(
            s,
            HookStats {
                delivered: 1,
                retried: 2,
                ..HookStats::default()
            }
        );
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 3);
        // Every attempt is the same delivery: same id, body and signature.
        for (h, body) in &reqs[1..] {
            assert_eq!(
                header(h, "x-bitsd-delivery"),
                header(&reqs[0].0, "x-bitsd-delivery")
            );
            assert_eq!(
                header(h, "x-bitsd-signature"),
                header(&reqs[0].0, "x-bitsd-signature")
            );
            assert_eq!(body, &reqs[0].1);
        }
    }

    #[tokio::test]
    async fn webhook_gives_up_after_max_attempts() {
        let (url, rx) = receiver(&[500], Duration::ZERO).await;
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 3,
            ..webhook(&url)
        });
        hooks.emit(&cfg, event(EventKind::SessionExpired));
        let s = wait_for(&hooks, |s| s.failed == 1).await;
        assert_eq!(
            s,
            HookStats {
                failed: 1,
                retried: 2,
                ..HookStats::default()
            }
        );
        assert_eq!(rx.requests().len(), 3);
    }

    #[tokio::test]
    async fn webhook_timeout_and_connection_errors_are_retried() {
        // Nobody listens on this port any more: connection refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 2,
            ..webhook(&format!("http://{closed}/hook"))
        });
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.failed == 1).await;
        assert_eq!(s.retried, 1);

        // A receiver slower than the timeout.
        let (url, rx) = receiver(&[200], Duration::from_secs(5)).await;
        let mut slow = webhook(&url);
        slow.max_attempts = 2;
        slow.initial_backoff = Duration::from_millis(5);
        slow.timeout = Duration::from_millis(100);
        let started = Instant::now();
        hooks.emit(&Arc::new(slow), event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.failed == 2).await;
        assert_eq!(s.retried, 2);
        assert_eq!(rx.requests().len(), 2);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn https_webhook_is_attempted() {
        // A plain TCP server that hangs up: the TLS handshake fails, so the delivery fails,
        // but building the https client must work.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 1,
            ..webhook(&format!("https://{addr}/hook"))
        });
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        assert_eq!(wait_for(&hooks, |s| s.failed == 1).await.delivered, 0);
    }

    #[tokio::test]
    async fn secret_file_signs_and_is_read_per_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let (url, rx) = receiver(&[200], Duration::ZERO).await;
        let cfg = fast(HooksConfig {
            webhook_secret_file: Some(secret.clone()),
            ..webhook(&url)
        });
        let hooks = Hooks::new(8);
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.delivered == 1).await;
        std::fs::write(&secret, "rotated\r\n").unwrap();
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.delivered == 2).await;
        let reqs = rx.requests();
        for ((h, body), key) in reqs.iter().zip([&b"from-file"[..], b"rotated"]) {
            assert_eq!(
                header(h, "x-bitsd-signature"),
                format!("sha256={}", reference_hmac(key, body))
            );
        }
    }
}
