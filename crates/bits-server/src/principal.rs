//! Who owns a session: an authenticated name together with the scheme that authenticated it.
//! `basic:alice` and `cert:alice` are different principals: a client certificate whose subject
//! is `alice` must not continue (or read the reply of) a session created by the Basic user
//! `alice`, nor the other way round.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::AuthMode;

/// How a principal was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Basic,
    Cert,
    Ntlm,
    Negotiate,
    /// A record written before principals carried their scheme (bare `alice`). It matches the
    /// same name under any scheme: such a session is still bound to its vdir, whose auth mode
    /// did not change unless the operator changed it.
    Legacy,
}

impl Scheme {
    const fn tag(self) -> Option<&'static str> {
        match self {
            Scheme::Basic => Some("basic"),
            Scheme::Cert => Some("cert"),
            Scheme::Ntlm => Some("ntlm"),
            Scheme::Negotiate => Some("negotiate"),
            Scheme::Legacy => None,
        }
    }

    /// The scheme of principals authenticated by a vdir of this mode (`None`: anonymous).
    pub const fn of(mode: AuthMode) -> Option<Scheme> {
        match mode {
            AuthMode::Anonymous => None,
            AuthMode::Basic => Some(Scheme::Basic),
            AuthMode::ClientCert => Some(Scheme::Cert),
            AuthMode::Ntlm => Some(Scheme::Ntlm),
            AuthMode::Negotiate => Some(Scheme::Negotiate),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    scheme: Scheme,
    name: String,
}

impl Principal {
    pub fn new(scheme: Scheme, name: impl Into<String>) -> Principal {
        Principal {
            scheme,
            name: name.into(),
        }
    }

    /// The name alone, as the client gave it (used for `{user}` roots and hook events).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether a request by `other` may act as this principal.
    pub fn admits(&self, other: &Principal) -> bool {
        self.name == other.name && (self.scheme == other.scheme || self.scheme == Scheme::Legacy)
    }

    /// Parses the stored form written by [`fmt::Display`].
    pub fn parse(text: &str) -> Principal {
        for scheme in [Scheme::Basic, Scheme::Cert, Scheme::Ntlm, Scheme::Negotiate] {
            if let Some(name) = scheme
                .tag()
                .and_then(|t| text.strip_prefix(t))
                .and_then(|rest| rest.strip_prefix(':'))
            {
                return Principal::new(scheme, name);
            }
        }
        Principal::new(Scheme::Legacy, text)
    }
}

/// Whether a request by `who` may act on something owned by `owner`.
pub fn may_act(owner: Option<&Principal>, who: Option<&Principal>) -> bool {
    match (owner, who) {
        (None, None) => true,
        (Some(o), Some(w)) => o.admits(w),
        _ => false,
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme.tag() {
            Some(tag) => write!(f, "{tag}:{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Principal, D::Error> {
        String::deserialize(d).map(|s| Principal::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_keep_same_names_apart() {
        let basic = Principal::new(Scheme::Basic, "alice");
        let cert = Principal::new(Scheme::Cert, "alice");
        assert!(basic.admits(&basic));
        assert!(!basic.admits(&cert) && !cert.admits(&basic));
        assert!(!may_act(Some(&basic), None));
        assert!(!may_act(None, Some(&basic)));
        assert!(may_act(None, None));
        let legacy = Principal::parse("alice");
        assert_eq!(legacy.scheme(), Scheme::Legacy);
        assert!(legacy.admits(&cert) && legacy.admits(&basic));
        assert!(!basic.admits(&legacy));
    }

    #[test]
    fn stored_form_round_trips() {
        for p in [
            Principal::new(Scheme::Basic, "alice"),
            Principal::new(Scheme::Cert, "CN with: colon"),
            Principal::new(Scheme::Legacy, "bob"),
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(
                serde_json::from_str::<Principal>(&json).unwrap(),
                p,
                "{json}"
            );
        }
        assert_eq!(Principal::new(Scheme::Cert, "x").to_string(), "cert:x");
    }
}
