//! The config file: TOML parsing with errors that name the key as written, and `check-config`.

use std::path::PathBuf;

use anyhow::Context;
use bits_server::ServerConfig;

pub fn load_config(path: Option<&PathBuf>) -> anyhow::Result<ServerConfig> {
    let config: ServerConfig = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).map_err(|e| {
                // toml names unknown and missing keys, but a wrong value only by its position.
                let key = e.span().and_then(|s| toml_key_at(&text, s.start));
                let key = key.map(|k| format!(" (key `{k}`)")).unwrap_or_default();
                anyhow::Error::new(e).context(format!("parsing {}{key}", p.display()))
            })?
        }
        None => ServerConfig::default(),
    };
    Ok(config)
}

/// The dotted key, as a user would name it (`vdir[1].max_fragment_size`, `tls.cert`), of the
/// TOML line holding byte `offset`; the table name when that line is a table header. Good enough
/// for error messages, not a TOML parser.
fn toml_key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    // Each `[[array]]` table seen so far and the index of its latest element.
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let header = match t.strip_prefix("[[") {
            Some(r) => r.split_once("]]").map(|(n, _)| (n, true)),
            None => t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(n, _)| (n, false)),
        };
        if let Some((name, is_array)) = header {
            let name: Vec<&str> = name
                .split('.')
                .map(|c| c.trim().trim_matches('"'))
                .collect();
            let name = name.join(".");
            // `[vdir.x]` after `[[vdir]]` belongs to the latest vdir element.
            table = match arrays
                .iter()
                .filter(|(a, _)| name.starts_with(&format!("{a}.")))
                .max_by_key(|(a, _)| a.len())
            {
                Some((a, i)) => format!("{a}[{i}]{}", &name[a.len()..]),
                None => name.clone(),
            };
            if is_array {
                let i = match arrays.iter_mut().find(|(a, _)| *a == name) {
                    Some((_, i)) => {
                        *i += 1;
                        *i
                    }
                    None => {
                        arrays.push((name, 0));
                        0
                    }
                };
                table = format!("{table}[{i}]");
            }
        }
        if offset < start + line.len() {
            if header.is_some() {
                return Some(table);
            }
            let key = t.split_once('=')?.0.trim().trim_matches('"');
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        start += line.len();
    }
    None
}

/// `check-config`: what `serve` checks before it binds — syntax, validation, and the files the
/// config names (TLS certificate, key and client CA; Basic-auth users files; an existing
/// `capture_dir`'s owner and mode, against the user check-config runs as). On success, the
/// config's warnings and its users files' (allowed but weak settings, which `serve` logs at
/// start-up).
pub fn check_config(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let config = load_config(Some(path))?;
    let mut warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
    let mut checks = || -> anyhow::Result<()> {
        config.validate()?;
        if let Some(t) = &config.tls {
            let named = [
                ("tls.cert", Some(&t.cert)),
                ("tls.key", Some(&t.key)),
                ("tls.client_ca", t.client_ca.as_ref()),
            ];
            for (key, file) in named {
                if let Some(file) = file {
                    std::fs::metadata(file)
                        .with_context(|| format!("{key} = {:?}", file.display()))?;
                }
            }
            bits_server::tls::load(t).context("tls.cert, tls.key or tls.client_ca")?;
        }
        for (i, v) in config.vdirs.iter().enumerate() {
            let auth = bits_server::auth::Auth::for_vdirs(std::slice::from_ref(v))
                .with_context(|| format!("vdir[{i}].users_file"))?;
            for w in auth.warnings() {
                // Vdirs sharing a users file would repeat its warnings.
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
        if let Some(dir) = &config.capture_dir {
            bits_server::capture::check_dir(dir)?;
        }
        warnings.extend(crate::fd_limit::warning(&config));
        Ok(())
    };
    checks().with_context(|| path.display().to_string())?;
    Ok(warnings)
}
