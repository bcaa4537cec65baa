//! [`Client`]: connection settings, credentials and retry policy shared by every transfer.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderValue;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::tls::TlsOptions;
use crate::transport::{Http, HttpSettings};

/// User name and password, for HTTP Basic or NTLM.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// How the credentials are presented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Authorization: Basic` on every request (preemptive).
    #[default]
    Basic,
    /// NTLMv2, answering the server's 401: the handshake runs on the connection the request
    /// goes out on, which the server then treats as authenticated.
    Ntlm,
    /// Kerberos through HTTP Negotiate, answering the server's 401 with the service ticket from
    /// the user's credential cache (`kinit`, and `kvno HTTP/<server>`); no password.
    Negotiate,
}

/// NTLM credentials, the user split from an optional `DOMAIN\` prefix.
#[derive(Clone)]
pub(crate) struct NtlmCredentials {
    pub user: String,
    pub domain: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // The password never goes into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A BITS client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: Http,
    /// Precomputed `Authorization` value; sent with every request (preemptive Basic), so a
    /// large fragment is never sent twice because of a challenge.
    pub(crate) authorization: Option<HeaderValue>,
    /// With [`AuthScheme::Ntlm`]: what answers the server's challenges.
    pub(crate) ntlm: Option<NtlmCredentials>,
    /// With [`AuthScheme::Negotiate`]: the Kerberos credential cache the tickets come from.
    pub(crate) negotiate: Option<std::path::PathBuf>,
    pub(crate) user_agent: HeaderValue,
    pub(crate) retry: RetryPolicy,
    /// Upper bound for the body bytes per second of fragments (`None`: unlimited).
    pub(crate) upload_rate: Option<u64>,
    /// Largest download or reply accepted (`None`: unbounded).
    pub(crate) max_size: Option<u64>,
}

/// The default of [`ClientBuilder::max_size`]: 16 GiB. Large enough for any reply and for
/// most files a BITS download job fetches, small enough that a hostile server cannot fill a
/// disk by announcing an endless body.
pub const DEFAULT_MAX_SIZE: u64 = 16 << 30;

/// The default of [`ClientBuilder::request_deadline`]: one hour. Far longer than a fragment
/// and its Ack take (the server application gets five minutes for the last one), short enough
/// that a server trickling bytes cannot hold a transfer for days.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);

/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    tls: TlsOptions,
    credentials: Option<Credentials>,
    scheme: AuthScheme,
    credential_cache: Option<std::path::PathBuf>,
    user_agent: String,
    retry: RetryPolicy,
    connect_timeout: Duration,
    idle_timeout: Duration,
    deadline: Option<Duration>,
    upload_rate: Option<u64>,
    max_size: Option<u64>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            tls: TlsOptions::default(),
            credentials: None,
            scheme: AuthScheme::Basic,
            credential_cache: None,
            user_agent: format!("bits-client/{}", env!("CARGO_PKG_VERSION")),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            // [MC-BUP §3.1.2.2]: the client waits up to 5 minutes for an Ack, which for the last
            // fragment of an upload-reply includes the server application's work.
            idle_timeout: Duration::from_secs(300),
            deadline: Some(DEFAULT_DEADLINE),
            upload_rate: None,
            max_size: Some(DEFAULT_MAX_SIZE),
        }
    }
}

impl ClientBuilder {
    /// Basic credentials. They are sent only to the origin (scheme, host, port) of the URL a
    /// transfer is started with: never to another origin named by a redirect, a
    /// `BITS-Reply-URL` or a `BITS-Host-Id` (as curl does on redirects).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// How [`ClientBuilder::credentials`] are presented (default Basic). For NTLM the user may
    /// be `DOMAIN\\user`.
    pub fn auth_scheme(mut self, scheme: AuthScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// The Kerberos credential cache for [`AuthScheme::Negotiate`] (default: `KRB5CCNAME`, else
    /// `/tmp/krb5cc_<uid>`).
    pub fn credential_cache(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.credential_cache = Some(path.into());
        self
    }

    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Abandon a request when no byte moved and no answer came for this long (default 5 min).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Abandon a request not done within this long — sent, answered and its body read —
    /// however steadily bytes trickle (`None`: no bound; default [`DEFAULT_DEADLINE`]). A
    /// download cut by it resumes where it stopped, in the next request.
    pub fn request_deadline(mut self, t: Option<Duration>) -> Self {
        self.deadline = t.filter(|d| !d.is_zero());
        self
    }

    /// Sends fragment bodies no faster than this many bytes per second on average (BITS jobs
    /// run in the background; so can this).
    pub fn upload_rate_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.upload_rate = bytes_per_sec.filter(|r| *r > 0);
        self
    }

    /// Refuses downloads and replies whose announced size is larger than this (`None`: no
    /// bound; default [`DEFAULT_MAX_SIZE`]). Checked before a byte is written, as is the free
    /// space of the destination's file system.
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.max_size = bytes;
        self
    }

    pub fn build(self) -> Result<Client> {
        let tls = crate::tls::client_config(&self.tls)?;
        let ntlm = match (&self.credentials, self.scheme) {
            (Some(c), AuthScheme::Ntlm) => {
                let (domain, user) = c.user.split_once('\\').unwrap_or(("", &c.user));
                Some(NtlmCredentials {
                    user: user.to_string(),
                    domain: domain.to_string(),
                    password: c.password.clone(),
                })
            }
            _ => None,
        };
        let negotiate = (self.scheme == AuthScheme::Negotiate).then(|| {
            self.credential_cache
                .clone()
                .unwrap_or_else(crate::negotiate::default_cache)
        });
        let authorization = match &self.credentials {
            None => None,
            Some(_) if ntlm.is_some() || negotiate.is_some() => None,
            Some(c) => {
                if c.user.contains(':') {
                    return Err(Error::Usage(
                        "a Basic user name cannot contain ':'".to_string(),
                    ));
                }
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.user, c.password));
                let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| Error::Usage("credentials are not valid in a header".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let user_agent = HeaderValue::from_str(&self.user_agent)
            .map_err(|_| Error::Usage("user agent is not a valid header value".into()))?;
        let http = Http::new(
            tls,
            &HttpSettings {
                connect_timeout: self.connect_timeout,
                idle_timeout: self.idle_timeout,
                deadline: self.deadline,
                one_connection: ntlm.is_some() || negotiate.is_some(),
            },
        );
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                authorization,
                ntlm,
                negotiate,
                user_agent,
                retry: self.retry,
                upload_rate: self.upload_rate,
                max_size: self.max_size,
            }),
        })
    }
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client with default settings (system trust roots, no credentials).
    pub fn new() -> Result<Client> {
        ClientBuilder::default().build()
    }

    pub(crate) fn has_credentials(&self) -> bool {
        self.inner.authorization.is_some()
            || self.inner.ntlm.is_some()
            || self.inner.negotiate.is_some()
    }
}
