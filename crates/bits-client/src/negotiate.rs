//! Kerberos for `bits --auth negotiate`: the service ticket comes from the user's MIT credential
//! cache (`kinit`, then `kvno HTTP/<server>` if the cache holds no ticket for the server yet),
//! and is presented as HTTP Negotiate expects: an AP-REQ in a GSS-API krb5 token inside an
//! SPNEGO NegTokenInit ([RFC 4559], [RFC 4121]). The client does not talk to the KDC itself.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bits_proto::kerberos::crypto::Key;
use bits_proto::kerberos::der::{context, tlv, write_integer, write_time};
use bits_proto::kerberos::wire::Reader;

use crate::error::Error;

const SPNEGO_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
const KRB5_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// Key usage of the AP-REQ authenticator ([RFC 4120] 7.5.1).
const USAGE_AUTHENTICATOR: u32 = 11;
/// The GSS checksum type ([RFC 4121] 4.1.1) and its flags: mutual authentication, integrity.
const GSS_CHECKSUM: i64 = 0x8003;
const GSS_FLAGS: u32 = 0x02 | 0x20;

/// The credential cache `KRB5CCNAME` names (`FILE:` caches only), else `/tmp/krb5cc_<uid>`.
pub fn default_cache() -> PathBuf {
    match std::env::var("KRB5CCNAME") {
        Ok(v) if !v.is_empty() => PathBuf::from(v.strip_prefix("FILE:").unwrap_or(&v)),
        _ => PathBuf::from(format!("/tmp/krb5cc_{}", real_uid())),
    }
}

/// The real user id, read from `/proc` (no libc call).
fn real_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(0)
}

/// A service ticket from the cache.
pub(crate) struct Ticket {
    client_realm: String,
    client: Vec<String>,
    key: Key,
    /// The Ticket as the KDC issued it (DER).
    ticket: Vec<u8>,
}

/// The `Authorization: Negotiate` token for `host` (service `HTTP/host`) from `cache`.
pub(crate) fn token_for(cache: &Path, host: &str) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(cache).map_err(|e| {
        Error::Usage(format!(
            "Kerberos credential cache {}: {e} (run kinit)",
            cache.display()
        ))
    })?;
    let service = format!("HTTP/{}", host.to_ascii_lowercase());
    let ticket = find(&bytes, &service)?.ok_or_else(|| {
        Error::Usage(format!(
            "no ticket for {service} in {}: run `kvno {service}` after kinit",
            cache.display()
        ))
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut confounder = [0u8; 16];
    confounder[..8].copy_from_slice(&bits_proto::ntlm::client_nonce());
    confounder[8..].copy_from_slice(&bits_proto::ntlm::client_nonce());
    token(
        &ticket,
        now.as_secs() as i64,
        i64::from(now.subsec_micros()),
        confounder,
    )
}

/// The SPNEGO token presenting `ticket` with an authenticator for `ctime`/`cusec`.
fn token(ticket: &Ticket, ctime: i64, cusec: i64, confounder: [u8; 16]) -> Result<Vec<u8>, Error> {
    let mut checksum = 16u32.to_le_bytes().to_vec();
    checksum.extend_from_slice(&[0; 16]);
    checksum.extend_from_slice(&GSS_FLAGS.to_le_bytes());
    let mut cksum = context(0, &write_integer(GSS_CHECKSUM));
    cksum.extend(context(1, &tlv(0x04, &checksum)));
    let mut auth = context(0, &write_integer(5));
    auth.extend(context(1, &tlv(0x1b, ticket.client_realm.as_bytes())));
    auth.extend(context(2, &principal_name(&ticket.client)));
    auth.extend(context(3, &tlv(0x30, &cksum)));
    auth.extend(context(4, &write_integer(cusec)));
    auth.extend(context(5, &write_time(ctime)));
    let authenticator = tlv(0x62, &tlv(0x30, &auth));
    let cipher = ticket
        .key
        .encrypt(USAGE_AUTHENTICATOR, &authenticator, confounder)
        .map_err(|e| Error::Usage(format!("Kerberos: {e}")))?;
    let mut enc = context(0, &write_integer(i64::from(ticket.key.enctype())));
    enc.extend(context(2, &tlv(0x04, &cipher)));
    let mut ap = context(0, &write_integer(5));
    ap.extend(context(1, &write_integer(14)));
    // AP options: mutual-required.
    ap.extend(context(2, &tlv(0x03, &[0, 0x20, 0, 0, 0])));
    ap.extend(context(3, &ticket.ticket));
    ap.extend(context(4, &tlv(0x30, &enc)));
    let ap_req = tlv(0x6e, &tlv(0x30, &ap));
    let mut gss = tlv(0x06, KRB5_OID);
    gss.extend_from_slice(&[0x01, 0x00]);
    gss.extend(ap_req);
    let gss = tlv(0x60, &gss);
    let mut init = context(0, &tlv(0x30, &tlv(0x06, KRB5_OID)));
    init.extend(context(2, &tlv(0x04, &gss)));
    let mut spnego = tlv(0x06, SPNEGO_OID);
    spnego.extend(context(0, &tlv(0x30, &init)));
    Ok(tlv(0x60, &spnego))
}

fn principal_name(components: &[String]) -> Vec<u8> {
    let parts: Vec<u8> = components
        .iter()
        .flat_map(|c| tlv(0x1b, c.as_bytes()))
        .collect();
    let mut name = context(0, &write_integer(1));
    name.extend(context(1, &tlv(0x30, &parts)));
    tlv(0x30, &name)
}

/// The first usable ticket for `service` (`HTTP/host`, any realm) in an MIT ccache (format 4).
fn find(bytes: &[u8], service: &str) -> Result<Option<Ticket>, Error> {
    let bad = || Error::Usage("unreadable Kerberos credential cache".into());
    let mut r = Reader(bytes);
    let version = r.u16().ok_or_else(bad)?;
    if version != 0x0504 {
        return Err(Error::Usage(format!(
            "Kerberos credential cache format {version:#x} is not supported (only 0x0504)"
        )));
    }
    let header = r.u16().ok_or_else(bad)? as usize;
    r.take(header).ok_or_else(bad)?;
    principal(&mut r).ok_or_else(bad)?;
    while !r.is_empty() {
        let (crealm, client) = principal(&mut r).ok_or_else(bad)?;
        let (_srealm, server) = principal(&mut r).ok_or_else(bad)?;
        let enctype = r.u16().ok_or_else(bad)?;
        let key = r.data32().ok_or_else(bad)?;
        for _ in 0..4 {
            r.u32().ok_or_else(bad)?; // authtime, starttime, endtime, renew_till
        }
        r.take(1 + 4).ok_or_else(bad)?; // is_skey, ticket flags
        for _ in 0..2 {
            // Addresses, then authorization data: (u16 type, data) each.
            let n = r.u32().ok_or_else(bad)?;
            for _ in 0..n {
                r.u16().ok_or_else(bad)?;
                r.data32().ok_or_else(bad)?;
            }
        }
        let ticket = r.data32().ok_or_else(bad)?;
        r.data32().ok_or_else(bad)?; // second ticket
        if server.join("/").eq_ignore_ascii_case(service) {
            if let Ok(key) = Key::new(i32::from(enctype), key) {
                return Ok(Some(Ticket {
                    client_realm: crealm,
                    client,
                    key,
                    ticket: ticket.to_vec(),
                }));
            }
        }
    }
    Ok(None)
}

/// A ccache principal: name type, component count, realm, components.
fn principal(r: &mut Reader<'_>) -> Option<(String, Vec<String>)> {
    r.u32()?;
    let n = r.u32()?;
    let realm = r.string32()?;
    let parts = (0..n).map(|_| r.string32()).collect::<Option<Vec<_>>>()?;
    Some((realm, parts))
}
