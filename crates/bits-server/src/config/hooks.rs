//! The per-vdir `[vdir.hooks]` table ([`HooksConfig`]), the event kinds it names
//! ([`EventKind`]), its validation, and the webhook secret file. Plain data below the hook
//! runtime (`hooks/`), which builds itself from it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The upload events a hook can be told about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client created an upload session (Create-Session succeeded).
    SessionCreated,
    /// An upload was completed and published at its destination.
    UploadCompleted,
    /// The client cancelled the session.
    SessionCancelled,
    /// The session timed out and was deleted by the cleanup sweep.
    SessionExpired,
}

impl EventKind {
    /// Every kind, the default of `hooks.events`.
    pub const ALL: [EventKind; 4] = [
        EventKind::SessionCreated,
        EventKind::UploadCompleted,
        EventKind::SessionCancelled,
        EventKind::SessionExpired,
    ];

    /// The name used in the config, the JSON and the `X-Bitsd-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionCreated => "session_created",
            EventKind::UploadCompleted => "upload_completed",
            EventKind::SessionCancelled => "session_cancelled",
            EventKind::SessionExpired => "session_expired",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-vdir `[vdir.hooks]` table. Hooks are off unless `webhook_url` or `command` is set.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Absolute `http://` or `https://` URL the events are POSTed to.
    pub webhook_url: Option<String>,
    /// Key of the `X-Bitsd-Signature` HMAC-SHA256 of the body. Not together with
    /// `webhook_secret_file`.
    pub webhook_secret: Option<String>,
    /// File holding the signing key (one trailing newline is ignored). Read at every delivery,
    /// so the key can be rotated without a restart; checked by [`HooksConfig::validate`].
    pub webhook_secret_file: Option<PathBuf>,
    /// Program and arguments run for each event, with the event JSON on standard input. The
    /// program is looked up in `PATH`; no shell is involved.
    pub command: Option<Vec<String>>,
    /// The kinds of event delivered (default: all).
    pub events: Vec<EventKind>,
    /// Attempts per event and target, the first included (default 8).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles for each further retry (default 1s).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts (default 5min).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long one attempt may take: the whole HTTP exchange, or the command's run (default
    /// 10s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
            command: None,
            events: EventKind::ALL.to_vec(),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Debug output leaves the secret out.
impl fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksConfig")
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_secret_file", &self.webhook_secret_file)
            .field("command", &self.command)
            .field("events", &self.events)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A bad `[vdir.hooks]` setting: `key` is the offending key, e.g. `webhook_url`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hooks.{key}: {reason}")]
pub struct HookConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl HookConfigError {
    fn new(key: &'static str, reason: impl Into<String>) -> Self {
        HookConfigError {
            key,
            reason: reason.into(),
        }
    }
}

impl HooksConfig {
    /// Whether any target is set.
    pub fn is_enabled(&self) -> bool {
        self.webhook_url.is_some() || self.command.is_some()
    }

    /// Whether events of `kind` are delivered.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.is_enabled() && self.events.contains(&kind)
    }

    /// Checks the settings, and that `webhook_secret_file` can be read and is not empty.
    pub fn validate(&self) -> Result<(), HookConfigError> {
        if let Some(url) = &self.webhook_url {
            check_webhook_url(url)?;
        }
        match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(_), Some(_)) => {
                return Err(HookConfigError::new(
                    "webhook_secret_file",
                    "set either hooks.webhook_secret or hooks.webhook_secret_file, not both",
                ))
            }
            (Some(s), None) if s.is_empty() => {
                return Err(HookConfigError::new("webhook_secret", "empty"))
            }
            (Some(_), None) if self.webhook_url.is_none() => {
                return Err(HookConfigError::new(
                    "webhook_secret",
                    "set without hooks.webhook_url",
                ))
            }
            (None, Some(_)) if self.webhook_url.is_none() => {
                return Err(HookConfigError::new(
                    "webhook_secret_file",
                    "set without hooks.webhook_url",
                ))
            }
            (None, Some(path)) => {
                read_secret_file_sync(path)?;
            }
            _ => {}
        }
        if let Some(cmd) = &self.command {
            match cmd.first() {
                None => return Err(HookConfigError::new("command", "empty")),
                Some(p) if p.is_empty() => {
                    return Err(HookConfigError::new("command", "empty program name"))
                }
                Some(_) => {}
            }
        }
        if self.is_enabled() && self.events.is_empty() {
            return Err(HookConfigError::new(
                "events",
                "empty (leave the key out to get every event)",
            ));
        }
        if self.max_attempts == 0 {
            return Err(HookConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.initial_backoff < Duration::from_millis(1) {
            return Err(HookConfigError::new(
                "initial_backoff",
                "must be at least 1ms",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(HookConfigError::new(
                "max_backoff",
                "must not be less than hooks.initial_backoff",
            ));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(HookConfigError::new("timeout", "must be at least 1ms"));
        }
        Ok(())
    }
}

fn check_webhook_url(url: &str) -> Result<(), HookConfigError> {
    let bad = || {
        HookConfigError::new(
            "webhook_url",
            format!("not an absolute http:// or https:// URL: {url:?}"),
        )
    };
    let parsed = reqwest_s3::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(())
}

/// The key in a secret file: its bytes less one trailing `\n` or `\r\n`.
pub(crate) fn secret_from_file_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    bytes
}

fn read_secret_file_sync(path: &Path) -> Result<Vec<u8>, HookConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        HookConfigError::new("webhook_secret_file", format!("cannot read {path:?}: {e}"))
    })?;
    let secret = secret_from_file_bytes(bytes);
    if secret.is_empty() {
        return Err(HookConfigError::new(
            "webhook_secret_file",
            format!("{path:?} is empty"),
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_toml() {
        let d = HooksConfig::default();
        assert!(!d.is_enabled());
        assert!(d.validate().is_ok());
        assert_eq!(d.events, EventKind::ALL);
        assert_eq!(d.max_attempts, 8);
        assert_eq!(d.initial_backoff, Duration::from_secs(1));
        assert_eq!(d.max_backoff, Duration::from_secs(300));
        assert_eq!(d.timeout, Duration::from_secs(10));

        let c: HooksConfig = toml::from_str(
            r#"
            webhook_url = "https://hooks.example.com/bits"
            webhook_secret = "k"
            command = ["/usr/local/bin/on-upload", "--quiet"]
            events = ["upload_completed", "session_expired"]
            max_attempts = 3
            initial_backoff = "250ms"
            max_backoff = "1m"
            timeout = "30s"
            "#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert!(c.is_enabled());
        assert!(c.wants(EventKind::UploadCompleted) && !c.wants(EventKind::SessionCreated));
        assert_eq!(c.initial_backoff, Duration::from_millis(250));
        assert_eq!(c.max_backoff, Duration::from_secs(60));
        assert!(!format!("{c:?}").contains("\"k\""), "secret redacted");

        let c: HooksConfig = toml::from_str(r#"command = ["true"]"#).unwrap();
        assert_eq!(c.events, EventKind::ALL);
        assert!(toml::from_str::<HooksConfig>("webhook = \"http://x/\"").is_err());
        assert!(toml::from_str::<HooksConfig>("events = [\"uploaded\"]").is_err());
    }

    #[test]
    fn validate_names_the_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let url = || Some("http://127.0.0.1:8080/hook".to_string());
        let cases: Vec<(HooksConfig, &str)> = vec![
            (
                HooksConfig {
                    webhook_url: Some("/relative/hook".into()),
                    ..HooksConfig::default()
                },
                "webhook_url",
            ),
            (
                HooksConfig {
                    webhook_url: Some("ftp://example.com/x".into()),
                    ..HooksConfig::default()
                },
                "webhook_url",
            ),
            (
                HooksConfig {
                    webhook_url: Some("http://".into()),
                    ..HooksConfig::default()
                },
                "webhook_url",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret: Some(String::new()),
                    ..HooksConfig::default()
                },
                "webhook_secret",
            ),
            (
                HooksConfig {
                    webhook_secret: Some("k".into()),
                    command: Some(vec!["true".into()]),
                    ..HooksConfig::default()
                },
                "webhook_secret",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret: Some("k".into()),
                    webhook_secret_file: Some(empty.clone()),
                    ..HooksConfig::default()
                },
                "webhook_secret_file",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret_file: Some(empty.clone()),
                    ..HooksConfig::default()
                },
                "webhook_secret_file",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    webhook_secret_file: Some(dir.path().join("missing")),
                    ..HooksConfig::default()
                },
                "webhook_secret_file",
            ),
            (
                HooksConfig {
                    command: Some(vec![]),
                    ..HooksConfig::default()
                },
                "command",
            ),
            (
                HooksConfig {
                    command: Some(vec![String::new(), "x".into()]),
                    ..HooksConfig::default()
                },
                "command",
            ),
            (
                HooksConfig {
                    webhook_url: url(),
                    events: vec![],
                    ..HooksConfig::default()
                },
                "events",
            ),
            (
                HooksConfig {
                    max_attempts: 0,
                    ..HooksConfig::default()
                },
                "max_attempts",
            ),
            (
                HooksConfig {
                    initial_backoff: Duration::ZERO,
                    ..HooksConfig::default()
                },
                "initial_backoff",
            ),
            (
                HooksConfig {
                    initial_backoff: Duration::from_secs(10),
                    max_backoff: Duration::from_secs(1),
                    ..HooksConfig::default()
                },
                "max_backoff",
            ),
            (
                HooksConfig {
                    timeout: Duration::ZERO,
                    ..HooksConfig::default()
                },
                "timeout",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(
                err.to_string().starts_with(&format!("hooks.{key}: ")),
                "{err}"
            );
        }
        let err = HooksConfig {
            webhook_url: Some("nope".into()),
            ..HooksConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.webhook_url: not an absolute http:// or https:// URL: \"nope\""
        );
        assert_eq!(
            HooksConfig {
                command: Some(vec![]),
                ..HooksConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "hooks.command: empty"
        );
        assert_eq!(
            HooksConfig {
                max_attempts: 0,
                ..HooksConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "hooks.max_attempts: must be at least 1"
        );
    }
}
