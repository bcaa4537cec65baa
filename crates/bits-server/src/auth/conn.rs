//! What one connection remembers of authentication, and whose rules it was remembered under.
//!
//! NTLM is connection-bound (its three legs must share a connection) and IIS keeps the identity
//! of a completed NTLM or Kerberos handshake for the rest of the connection. That memory is only
//! ever consulted for a request to a vdir of the *same policy* ([`PolicyId`]): another vdir on
//! the same keep-alive connection, with another users file, domain, keytab, service or realm
//! list, authenticates afresh. With `persist_auth = "request"` (or from a trusted proxy) nothing
//! but the handshake in progress is kept.

use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::VdirConfig;

/// A digest of everything that decides who a vdir's sign-in admits: vdirs with equal ids accept
/// exactly the same identities, so a sign-in under one holds for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyId([u8; 32]);

impl PolicyId {
    pub fn of(vdir: &VdirConfig) -> PolicyId {
        let mut realms: Vec<String> = vdir
            .kerberos_realms
            .iter()
            .map(|r| r.to_ascii_uppercase())
            .collect();
        realms.sort();
        realms.dedup();
        // Length-prefixed fields: no two different policies serialise alike.
        let fields: [Vec<u8>; 8] = [
            format!("{:?}", vdir.auth).into_bytes(),
            vdir.users_file
                .as_ref()
                .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
                .unwrap_or_default(),
            vdir.ntlm_domain
                .as_ref()
                .map(|d| d.to_ascii_uppercase().into_bytes())
                .unwrap_or_default(),
            vdir.keytab
                .as_ref()
                .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
                .unwrap_or_default(),
            vdir.service_principal
                .as_ref()
                .map(|s| s.to_ascii_lowercase().into_bytes())
                .unwrap_or_default(),
            realms.join("\0").into_bytes(),
            format!("{:?}", vdir.channel_binding).into_bytes(),
            vec![u8::from(vdir.require_tls)],
        ];
        let mut h = Sha256::new();
        for f in &fields {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f);
        }
        PolicyId(h.finalize().into())
    }
}

/// How a connection's identity was proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    /// A Basic password (keyed digest of name and password: the same credentials again skip
    /// the failure budgets, never the check).
    Password([u8; 32]),
    Ntlm,
    Kerberos,
}

#[derive(Clone, Debug)]
pub(crate) struct SignedIn {
    pub(crate) policy: PolicyId,
    pub(crate) name: String,
    pub(crate) proof: Proof,
}

/// An NTLM handshake between its CHALLENGE and the client's AUTHENTICATE.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) negotiate: Vec<u8>,
    pub(crate) message: Vec<u8>,
    pub(crate) challenge: [u8; 8],
    pub(crate) at: Instant,
    /// The client's SPNEGO offer when NTLM runs inside SPNEGO.
    pub(crate) spnego: Option<SpnegoOffer>,
}

/// What a client's SPNEGO NegTokenInit offered: the mechanism list (DER) both `mechListMIC`s
/// sign, and how many mechanisms it held.
#[derive(Clone, Debug)]
pub(crate) struct SpnegoOffer {
    pub(crate) mechs: Vec<u8>,
    pub(crate) count: usize,
}

#[derive(Debug, Default)]
struct State {
    pending: Option<(PolicyId, Pending)>,
    signed_in: Option<SignedIn>,
}

/// One connection's authentication memory (a request extension shared by its requests).
#[derive(Debug, Default)]
pub struct ConnAuth(Mutex<State>);

impl ConnAuth {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sign-in this connection holds under `policy`, if any.
    pub(crate) fn signed_in(&self, policy: &PolicyId) -> Option<SignedIn> {
        self.state()
            .signed_in
            .as_ref()
            .filter(|s| s.policy == *policy)
            .cloned()
    }

    /// Remembers a completed sign-in (replacing any other).
    pub(crate) fn sign_in(&self, signed_in: SignedIn) {
        self.state().signed_in = Some(signed_in);
    }

    /// Starts a handshake: whatever the connection held is forgotten, so a handshake that
    /// fails leaves nothing behind.
    pub(crate) fn begin(&self, policy: PolicyId, pending: Pending) {
        let mut state = self.state();
        state.signed_in = None;
        state.pending = Some((policy, pending));
    }

    /// Takes the handshake in progress if it was started under `policy` (one answer per
    /// challenge: it is gone either way).
    pub(crate) fn take_pending(&self, policy: &PolicyId) -> Option<Pending> {
        match self.state().pending.take() {
            Some((p, pending)) if p == *policy => Some(pending),
            _ => None,
        }
    }

    /// Forgets a completed sign-in, keeping a handshake in progress (its AUTHENTICATE may
    /// still come on this connection).
    pub(crate) fn forget_sign_in(&self) {
        self.state().signed_in = None;
    }

    /// Abandons a handshake in progress (the client started over), keeping any sign-in.
    pub(crate) fn drop_pending(&self) {
        self.state().pending = None;
    }

    /// Forgets everything: a failed leg of any handshake signs the connection out.
    pub(crate) fn clear(&self) {
        *self.state() = State::default();
    }

    #[cfg(test)]
    pub(crate) fn is_clear(&self) -> bool {
        let state = self.state();
        state.pending.is_none() && state.signed_in.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_differ_in_everything_that_admits_users() {
        let base = VdirConfig {
            auth: crate::config::AuthMode::Ntlm,
            users_file: Some("/etc/bitsd/users".into()),
            ..VdirConfig::default()
        };
        let same = VdirConfig {
            prefix: "/other/".into(),
            root: "/elsewhere".into(),
            ntlm_domain: None,
            ..base.clone()
        };
        assert_eq!(PolicyId::of(&base), PolicyId::of(&same));
        let variants = [
            VdirConfig {
                users_file: Some("/etc/bitsd/users2".into()),
                ..base.clone()
            },
            VdirConfig {
                ntlm_domain: Some("SECURE".into()),
                ..base.clone()
            },
            VdirConfig {
                auth: crate::config::AuthMode::Negotiate,
                ..base.clone()
            },
            VdirConfig {
                keytab: Some("/etc/krb5.keytab".into()),
                ..base.clone()
            },
            VdirConfig {
                service_principal: Some("HTTP/a".into()),
                ..base.clone()
            },
            VdirConfig {
                kerberos_realms: vec!["CORP.EXAMPLE".into()],
                ..base.clone()
            },
            VdirConfig {
                channel_binding: crate::config::ChannelBinding::Require,
                ..base.clone()
            },
            VdirConfig {
                require_tls: true,
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(PolicyId::of(v), PolicyId::of(&base), "{v:?}");
        }
        // Spelling that does not change who is admitted does not change the policy.
        let a = VdirConfig {
            kerberos_realms: vec!["b.example".into(), "A.EXAMPLE".into()],
            ..base.clone()
        };
        let b = VdirConfig {
            kerberos_realms: vec!["a.example".into(), "B.EXAMPLE".into(), "a.example".into()],
            ..base.clone()
        };
        assert_eq!(PolicyId::of(&a), PolicyId::of(&b));
    }

    #[test]
    fn a_sign_in_holds_only_under_its_policy() {
        let one = PolicyId([1; 32]);
        let two = PolicyId([2; 32]);
        let conn = ConnAuth::default();
        conn.sign_in(SignedIn {
            policy: one,
            name: "alice".into(),
            proof: Proof::Ntlm,
        });
        assert!(conn.signed_in(&one).is_some());
        assert!(conn.signed_in(&two).is_none());
        // A handshake begun under another policy signs the connection out.
        conn.begin(
            two,
            Pending {
                negotiate: Vec::new(),
                message: Vec::new(),
                challenge: [0; 8],
                at: Instant::now(),
                spnego: None,
            },
        );
        assert!(conn.signed_in(&one).is_none());
        assert!(conn.take_pending(&one).is_none());
        // Taken under the wrong policy, it is gone anyway.
        assert!(conn.take_pending(&two).is_none());
        conn.clear();
        assert!(conn.is_clear());
    }
}
