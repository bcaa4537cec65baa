//! `bitsd passwd [--ntlm]`: adds or replaces a user in a users file: an argon2 hash for Basic,
//! or (`--ntlm`) the NT hash NTLM needs. A user may have both lines; each kind replaces only
//! its own. An NT hash is password-equivalent for NTLM: the file stays private (0600).

use std::path::PathBuf;

use anyhow::Context;

pub fn passwd(
    file: &std::path::Path,
    user: &str,
    from_stdin: bool,
    ntlm: bool,
) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        anyhow::bail!("a user name must be non-empty and contain no ':' or control characters");
    }
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        // rpassword asks on /dev/tty; without a controlling terminal (cron, CI, ssh without a
        // tty) that fails with an errno text (ENXIO) that says nothing about the way out.
        let first = rpassword::prompt_password(format!("password for {user}: ")).map_err(|e| {
            anyhow::anyhow!(
                "cannot ask for the password: no terminal ({e}); pass it on standard input with \
                 --password-stdin, e.g. `printf '%s\\n' \"$PW\" | bitsd passwd --password-stdin {} {user}`",
                file.display()
            )
        })?;
        if rpassword::prompt_password("again: ")? != first {
            anyhow::bail!("the passwords differ");
        }
        first
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    let hash = if ntlm {
        bits_server::auth::nt_hash_entry(&password)
    } else {
        bits_server::auth::hash_password(&password).map_err(anyhow::Error::msg)?
    };
    let is_nt = |entry: &str| entry.starts_with(bits_server::auth::NT_PREFIX);
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| match l.split_once(':') {
            Some((n, entry)) => n != user || is_nt(entry) != ntlm,
            None => true,
        })
        .map(String::from)
        .collect();
    lines.push(format!("{user}:{hash}"));
    write_users_file(file, &(lines.join("\n") + "\n"))?;
    let kind = if ntlm {
        "NT hash (NTLM)"
    } else {
        "password (Basic)"
    };
    println!("{}: {kind} of {user} set", file.display());
    Ok(())
}

/// Replaces the users file atomically and durably: a private temp file beside it, fsync,
/// rename, fsync of the directory. A new file is 0600; an existing one keeps its owner and
/// group and at most owner read-write and group read (0640), never any world access.
fn write_users_file(file: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let existing = match std::fs::metadata(file) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mode = existing
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o640 | 0o600);
    if existing
        .as_ref()
        .is_some_and(|m| m.permissions().mode() & 0o007 != 0)
    {
        eprintln!(
            "{}: was readable by everyone; now mode {mode:o}",
            file.display()
        );
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // create_new: never write through a file or symlink someone placed at the temp name.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> anyhow::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(m) = &existing {
            // Keep the service's access (e.g. root:bitsd 0640) when root edits the file.
            std::os::unix::fs::fchown(&out, Some(m.uid()), Some(m.gid())).with_context(|| {
                format!("giving {} the owner of {}", tmp.display(), file.display())
            })?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
            .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
