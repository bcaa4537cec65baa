//! File descriptors: the soft limit raised to the hard one at start-up, and connection caps
//! that leave every accepted connection room for the file its request opens, and the admin
//! listener room to answer `/healthz` however many clients are connected.
//!
//! Without this, a soft limit below `max_connections` let idle connections take every
//! descriptor: uploads in flight failed with "Too many open files" and the accept loop spun.

use bits_server::ServerConfig;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for the process itself: standard streams, the runtime's poller and
/// wakers, the listeners, the session database, the replay cache, log and capture files, the
/// users files and certificates reread on SIGHUP.
const BASE_RESERVE: u64 = 32;
/// Descriptors one connection may hold at once: its socket, and the file (or the store's
/// connection) of the request it is serving.
const PER_CONNECTION: u64 = 2;
/// At most this share (1/n) of the usable descriptors goes to the admin listener.
const ADMIN_SHARE: u64 = 16;
/// `[admin] max_connections` when absent (as `http::admin` reads it).
const ADMIN_DEFAULT: usize = 64;

/// The soft `RLIMIT_NOFILE` before and after [`raise`], and the hard one (`None`: unlimited).
pub struct Limits {
    pub before: Option<u64>,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft descriptor limit to the hard one (what systemd's `LimitNOFILE=` or
/// `ulimit -Hn` allows); on failure keeps the soft limit and says so.
pub fn raise() -> Limits {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut limits = Limits {
        before: current,
        soft: current,
        hard: maximum,
    };
    if current != maximum && maximum.is_some() {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        ) {
            Ok(()) => limits.soft = maximum,
            Err(e) => {
                tracing::warn!(error = %e, soft = ?current, hard = ?maximum, "could not raise the open-file limit")
            }
        }
    }
    limits
}

/// The connection caps a descriptor limit fits.
#[derive(Debug, PartialEq, Eq)]
pub struct Caps {
    pub bits: usize,
    pub admin: Option<usize>,
}

/// What `config` may open at once under a limit of `nofile` descriptors: the configured caps,
/// or smaller ones that fit (never below 1).
pub fn caps(config: &ServerConfig, nofile: Option<u64>) -> Caps {
    let admin_wanted = config
        .admin
        .listen
        .map(|_| config.admin.max_connections.unwrap_or(ADMIN_DEFAULT));
    let Some(nofile) = nofile else {
        return Caps {
            bits: config.max_connections,
            admin: admin_wanted,
        };
    };
    let usable = nofile.saturating_sub(BASE_RESERVE);
    let admin = admin_wanted.map(|wanted| {
        let share = usize::try_from((usable / ADMIN_SHARE / PER_CONNECTION).max(1)).unwrap_or(1);
        wanted.min(share)
    });
    let admin_fds = admin.map_or(0, |n| n as u64 * PER_CONNECTION);
    let bits = usize::try_from((usable.saturating_sub(admin_fds) / PER_CONNECTION).max(1))
        .unwrap_or(usize::MAX);
    Caps {
        bits: config.max_connections.min(bits),
        admin,
    }
}

/// Raises the limit and lowers the caps in `config` to what it fits, warning when they shrink.
pub fn apply(config: &mut ServerConfig) {
    let limits = raise();
    if limits.before != limits.soft {
        tracing::info!(from = ?limits.before, to = ?limits.soft, "raised the open-file limit to the hard limit");
    }
    let fit = caps(config, limits.soft);
    if fit.bits < config.max_connections {
        tracing::warn!(
            limit = ?limits.soft,
            hard = ?limits.hard,
            max_connections = config.max_connections,
            serving = fit.bits,
            "the open-file limit cannot hold max_connections connections with a file each: serving at most {} at once (raise LimitNOFILE= or ulimit -n)",
            fit.bits
        );
        config.max_connections = fit.bits;
    }
    if let Some(admin) = fit.admin {
        if Some(admin) < config.admin.max_connections.or(Some(ADMIN_DEFAULT)) {
            tracing::warn!(
                serving = admin,
                "the open-file limit lowers [admin] max_connections"
            );
        }
        config.admin.max_connections = Some(admin);
    }
}

/// `check-config`'s warning when the hard limit (what `serve` raises to) cannot hold
/// `max_connections`.
pub fn warning(config: &ServerConfig) -> Option<String> {
    let hard = getrlimit(Resource::Nofile).maximum;
    let fit = caps(config, hard);
    (fit.bits < config.max_connections).then(|| {
        format!(
            "max_connections = {} does not fit the open-file limit here ({} descriptors): bitsd \
             would serve at most {} connections at once; raise LimitNOFILE= (systemd) or ulimit -n",
            config.max_connections,
            hard.unwrap_or(u64::MAX),
            fit.bits
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(admin: bool) -> ServerConfig {
        let mut c = ServerConfig::default();
        if admin {
            c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        }
        c
    }

    #[test]
    fn caps_fit_the_limit() {
        let c = config(true);
        // The packaged unit's LimitNOFILE=65536 fits the defaults.
        assert_eq!(
            caps(&c, Some(65536)),
            Caps {
                bits: 10_000,
                admin: Some(64)
            }
        );
        // `ulimit -n 64`: (64 - 32) / 16 / 2 = 1 admin connection, (32 - 2) / 2 = 15 BITS ones.
        assert_eq!(
            caps(&c, Some(64)),
            Caps {
                bits: 15,
                admin: Some(1)
            }
        );
        assert_eq!(caps(&config(false), Some(64)).bits, 16);
        assert_eq!(caps(&c, Some(1)).bits, 1);
        assert_eq!(caps(&c, None).bits, 10_000);
    }
}
