//! `BITS-Host-Id`: which host the requests of a session go to.
//!
//! A server in a farm without shared storage names itself in the Create-Session Ack. The client
//! then sends every later message of the session to that host (same scheme, port and path),
//! and Pings it first. If that host cannot be reached, a timer starts (reset by any answer);
//! once it has run for `BITS-Host-Id-Fallback-Timeout` seconds the client goes back to the
//! original URL — which normally answers `BG_E_SESSION_NOT_FOUND`, so the upload restarts there
//! ([MC-BUP §1.3.4.2, §3.1.5.1.7, §3.1.6.3]). Without the timeout header the timer is infinite.

use std::time::{Duration, Instant};

use url::Url;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub(crate) struct Route {
    original: Url,
    host: Option<HostRoute>,
}

#[derive(Clone, Debug)]
struct HostRoute {
    url: Url,
    fallback: Option<Duration>,
    unreachable_since: Option<Instant>,
}

impl Route {
    pub(crate) fn direct(original: Url) -> Route {
        Route {
            original,
            host: None,
        }
    }

    /// Routes to `host` (a host name or IP literal) in place of the original host.
    pub(crate) fn via_host_id(
        original: Url,
        host: &str,
        fallback: Option<Duration>,
    ) -> Result<Route> {
        Ok(Route {
            host: Some(HostRoute {
                url: swap_host(&original, host)?,
                fallback,
                unreachable_since: None,
            }),
            original,
        })
    }

    pub(crate) fn url(&self) -> &Url {
        match &self.host {
            Some(h) => &h.url,
            None => &self.original,
        }
    }

    pub(crate) fn uses_host_id(&self) -> bool {
        self.host.is_some()
    }

    /// The current host answered (with anything): the fallback timer stops.
    pub(crate) fn reachable(&mut self) {
        if let Some(h) = &mut self.host {
            h.unreachable_since = None;
        }
    }

    /// The current host could not be reached. Returns true when this ends the Host-Id route
    /// (its fallback timeout ran out) and requests go to the original URL again.
    pub(crate) fn unreachable(&mut self) -> bool {
        let Some(h) = &mut self.host else {
            return false;
        };
        let since = *h.unreachable_since.get_or_insert_with(Instant::now);
        match h.fallback {
            Some(limit) if since.elapsed() >= limit => {
                self.host = None;
                true
            }
            _ => false,
        }
    }
}

/// The Host-Id header value as a URL host: a name, an IPv4 literal, or an IPv6 literal with or
/// without brackets.
fn swap_host(url: &Url, host: &str) -> Result<Url> {
    let host = host.trim();
    let bad = || Error::InvalidResponse {
        url: url.to_string(),
        what: format!("unusable BITS-Host-Id {host:?}"),
    };
    if host.is_empty() || host.len() > 300 {
        return Err(bad());
    }
    let literal = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let mut out = url.clone();
    out.set_host(Some(&literal)).map_err(|_| bad())?;
    Ok(out)
}

/// Whether an error means the host could not be reached at all (rather than answering badly).
pub(crate) fn is_unreachable(e: &Error) -> bool {
    matches!(e, Error::Transport { .. } | Error::Timeout { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_scheme_port_and_path() {
        let u = Url::parse("https://farm.example:8443/up/a.bin?x=1").unwrap();
        let r = Route::via_host_id(u.clone(), "node7", None).unwrap();
        assert_eq!(r.url().as_str(), "https://node7:8443/up/a.bin?x=1");
        let r = Route::via_host_id(u.clone(), "fe80::1", None).unwrap();
        assert_eq!(r.url().as_str(), "https://[fe80::1]:8443/up/a.bin?x=1");
        assert!(Route::via_host_id(u, "bad host", None).is_err());
    }

    #[test]
    fn falls_back_only_after_the_timeout() {
        let u = Url::parse("http://farm/a").unwrap();
        let mut r = Route::via_host_id(u.clone(), "node", Some(Duration::from_millis(50))).unwrap();
        assert!(!r.unreachable());
        r.reachable();
        assert!(!r.unreachable());
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.unreachable());
        assert_eq!(r.url(), &u);
        // No timeout header: never falls back.
        let mut r = Route::via_host_id(u, "node", None).unwrap();
        assert!(!r.unreachable());
        assert!(r.uses_host_id());
    }
}
