//! `bitsd tls selfsigned`: a test CA and a server certificate it signed, in one command, for
//! `[tls]` and `bits --cacert`. A lone self-signed certificate (what `openssl req -x509` makes)
//! is a CA certificate, which rustls and Windows refuse as a server's: hence two.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(clap::Subcommand)]
pub enum TlsCommand {
    /// Write a test CA (ca.pem) and a server certificate signed by it (server.pem,
    /// server-key.pem) into DIR, for `[tls]` and `bits --cacert DIR/ca.pem`. ECDSA P-256 with
    /// SHA-256; the CA's key is not kept, so the CA can sign nothing else. For tests and trials:
    /// production servers want a certificate from a CA their clients already trust.
    Selfsigned(SelfsignedArgs),
}

#[derive(clap::Args)]
pub struct SelfsignedArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A DNS name or IP address clients use to reach the server; repeat for more. The default
    /// is localhost, 127.0.0.1 and ::1.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Replace files already in DIR.
    #[arg(long)]
    force: bool,
}

pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "server.pem";
pub const KEY_FILE: &str = "server-key.pem";

pub fn run(command: &TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Selfsigned(args) => selfsigned(args),
    }
}

fn selfsigned(args: &SelfsignedArgs) -> anyhow::Result<()> {
    let names = if args.names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        args.names.clone()
    };
    let sans = names
        .iter()
        .map(|n| san(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = time::OffsetDateTime::now_utc();
    // A clock a little behind ours must not see a certificate from the future.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(args.days));

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "bitsd test CA");
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;

    let key = KeyPair::generate().context("generating the server key")?;
    let mut leaf = CertificateParams::default();
    // CA:FALSE spelled out, so no verifier has to guess.
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.subject_alt_names = sans;
    leaf.distinguished_name.push(DnType::CommonName, &names[0]);
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .context("signing the server certificate")?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let dir = std::fs::canonicalize(&args.out)
        .with_context(|| format!("resolving {}", args.out.display()))?;
    if !args.force {
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            let path = dir.join(name);
            if path.exists() {
                anyhow::bail!(
                    "{} exists; pass --force to replace it, or choose another --out",
                    path.display()
                );
            }
        }
    }
    write(&dir.join(CA_FILE), &ca_cert.pem(), 0o644)?;
    write(&dir.join(CERT_FILE), &leaf_cert.pem(), 0o644)?;
    write(&dir.join(KEY_FILE), &key.serialize_pem(), 0o600)?;

    let d = dir.display();
    println!("{d}/{CA_FILE}: the test CA; clients trust it (bits --cacert {d}/{CA_FILE})");
    println!(
        "{d}/{CERT_FILE}, {d}/{KEY_FILE}: the server certificate for {}, valid {} days",
        names.join(", "),
        args.days
    );
    println!("For bitsd's config (the key must be readable by the user bitsd runs as):");
    println!(
        "[tls]\nlisten = \"0.0.0.0:8443\"\ncert = \"{d}/{CERT_FILE}\"\nkey = \"{d}/{KEY_FILE}\""
    );
    Ok(())
}

fn san(name: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .to_string()
        .try_into()
        .map_err(|e| anyhow::anyhow!("--name {name:?}: not a DNS name or IP address ({e})"))?;
    Ok(SanType::DnsName(dns))
}

/// Writes `text` to a new file of mode `mode` (replacing one there): a key never exists, even
/// for a moment, with wider permissions.
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
