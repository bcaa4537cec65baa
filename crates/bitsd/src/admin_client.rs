//! The admin CLI: `bitsd sessions list|show|cancel` and `bitsd gc` talk HTTP to the admin
//! listener (`[admin] listen`) of a running server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the admin listener is when neither `--admin` nor a config says.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9180";

/// How long one admin request may take (a cleanup pass over many sessions is the slowest).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct AdminArgs {
    /// Base URL of the admin listener (`http://host:port`). Default: `[admin] listen` of
    /// --config, else http://127.0.0.1:9180.
    #[arg(long = "admin", env = "BITSD_ADMIN", global = true, value_name = "URL")]
    admin: Option<String>,
    /// Bearer token of the admin listener. Default: `[admin] token` of --config.
    #[arg(long, env = "BITSD_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The server's config file, to find its `[admin]` address and token.
    #[arg(long, short, env = "BITSD_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List open sessions (a table; --json for the admin API's JSON).
    List {
        /// Include ended sessions (closed, cancelled and expired tombstones).
        #[arg(long)]
        all: bool,
        /// Read at most this many records: one page, in session-id order (for stores with
        /// very many sessions; the next page starts `--after` the last id shown).
        #[arg(long)]
        limit: Option<usize>,
        /// Start the page after this session id (with `--limit`).
        #[arg(long, requires = "limit")]
        after: Option<String>,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one session.
    Show {
        /// Session id, with or without braces.
        id: String,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a session as its owner's Cancel-Session would: its temporary data is deleted and
    /// its next Fragment fails with BG_E_SESSION_NOT_FOUND.
    Cancel {
        id: String,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `bitsd sessions ...`
pub fn sessions(args: &AdminArgs, command: &SessionsCommand) -> anyhow::Result<()> {
    let admin = AdminClient::new(args)?;
    match command {
        SessionsCommand::List {
            all,
            limit,
            after,
            json,
        } => {
            let mut query = Vec::new();
            if *all {
                query.push("all=1".to_string());
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
                let after = after
                    .as_deref()
                    .map(|a| a.trim().trim_start_matches('{').trim_end_matches('}'))
                    .unwrap_or_default();
                if !after.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                    bail!("--after: not a session id: {after:?}");
                }
                query.push(format!("after={after}"));
            }
            let path = if query.is_empty() {
                "/admin/sessions".to_string()
            } else {
                format!("/admin/sessions?{}", query.join("&"))
            };
            let body = admin.call("GET", &path)?.ok()?;
            let rows = body.as_array().map(Vec::as_slice).unwrap_or_default();
            if *json {
                print_json(&body);
            } else {
                print_table(rows);
                if limit.is_some_and(|l| rows.len() >= l) {
                    if let Some(last) = rows.last() {
                        eprintln!(
                            "more may follow: bitsd sessions list --limit {} --after {}",
                            limit.unwrap_or_default(),
                            text(&last["id"])
                        );
                    }
                }
            }
        }
        SessionsCommand::Show { id, json } => {
            let body = admin.call("GET", &session_path(id, ""))?.ok()?;
            if *json {
                print_json(&body);
            } else {
                print_session(&body);
            }
        }
        SessionsCommand::Cancel { id, json } => {
            let answer = admin.call("POST", &session_path(id, "/cancel"))?;
            if answer.status == 409 {
                bail!(
                    "session {} has already ended (state {})",
                    text(&answer.body["id"]),
                    text(&answer.body["state"])
                );
            }
            let body = answer.ok()?;
            if *json {
                print_json(&body);
            } else {
                println!(
                    "cancelled {} ({} of {} bytes received; temporary data deleted)",
                    text(&body["id"]),
                    text(&body["received"]),
                    text(&body["total"])
                );
            }
        }
    }
    Ok(())
}

/// `bitsd gc`
pub fn gc(args: &AdminArgs, json: bool) -> anyhow::Result<()> {
    let body = AdminClient::new(args)?.call("POST", "/admin/gc")?.ok()?;
    if json {
        print_json(&body);
    } else {
        println!(
            "expired {} session(s), removed {} old tombstone(s), skipped {} busy session(s)",
            text(&body["expired"]),
            text(&body["tombstones_removed"]),
            text(&body["busy"])
        );
    }
    Ok(())
}

fn session_path(id: &str, suffix: &str) -> String {
    // The GUID without braces needs no escaping in a path; the server accepts both forms.
    let bare = id.trim().trim_start_matches('{').trim_end_matches('}');
    let safe: String = bare
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("/admin/sessions/{safe}{suffix}")
}

struct AdminClient {
    base: String,
    token: Option<String>,
}

struct Answer {
    url: String,
    status: u16,
    body: Value,
}

impl Answer {
    /// The JSON body of a 2xx answer; an error naming the server's complaint otherwise.
    fn ok(self) -> anyhow::Result<Value> {
        match self.status {
            200..=299 => Ok(self.body),
            401 => bail!(
                "{}: the admin listener refused the token (pass --token or BITSD_ADMIN_TOKEN, or --config with its [admin] token)",
                self.url
            ),
            status => {
                let why = self.body["error"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| self.body.to_string());
                bail!("{}: {status}: {why}", self.url)
            }
        }
    }
}

impl AdminClient {
    fn new(args: &AdminArgs) -> anyhow::Result<AdminClient> {
        let from_config = match &args.config {
            Some(path) => read_admin_config(path)?,
            None => bits_server::config::AdminConfig::default(),
        };
        let base = match (&args.admin, from_config.listen) {
            (Some(url), _) => normalize_base(url)?,
            (None, Some(addr)) => {
                // A wildcard listen address is reached over loopback.
                let ip = match addr.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => {
                        std::net::IpAddr::from([127, 0, 0, 1])
                    }
                    ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                    ip => ip,
                };
                format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
            }
            (None, None) => DEFAULT_ADMIN_URL.to_string(),
        };
        Ok(AdminClient {
            base,
            token: args.token.clone().or(from_config.token),
        })
    }

    fn call(&self, method: &str, path: &str) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (status, bytes) = runtime
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, &url))
                    .await
                    .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
            })
            .with_context(|| format!("cannot reach the admin listener at {}", self.base))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::json!({ "error": String::from_utf8_lossy(&bytes).trim().to_string() })
            })
        };
        Ok(Answer { url, status, body })
    }

    async fn send(&self, method: &str, url: &str) -> anyhow::Result<(u16, Bytes)> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("user-agent", concat!("bitsd/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let resp = client.request(req).await.map_err(|e| {
            // hyper-util's error says "client error (Connect)"; the cause is in its sources.
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            anyhow!("{msg} (is the server running with [admin] listen set, and is --admin / BITSD_ADMIN right?)")
        })?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// `http://host:port` without a trailing slash; a bare `host:port` gets `http://`.
fn normalize_base(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("https://") {
        bail!("--admin {url}: the admin listener speaks plain HTTP only (put a TLS proxy in front and use http:// to reach it locally)");
    }
    let url = if url.starts_with("http://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--admin {url}: not a URL"))?;
    if uri.host().is_none() || uri.path().len() > 1 {
        bail!("--admin {url}: expected http://host:port");
    }
    Ok(url)
}

/// Only the `[admin]` table: the rest of the file is the server's business.
fn read_admin_config(path: &PathBuf) -> anyhow::Result<bits_server::config::AdminConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match table.get("admin") {
        Some(admin) => admin
            .clone()
            .try_into()
            .with_context(|| format!("{}: [admin]", path.display())),
        None => Ok(Default::default()),
    }
}

fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{value}"),
    }
}

/// A JSON value for humans: strings unquoted, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SSZ` (UTC).
fn time(v: &Value) -> String {
    let Some(ms) = v.as_u64() else {
        return text(v);
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
}

fn print_table(sessions: &[Value]) {
    if sessions.is_empty() {
        println!("no sessions");
        return;
    }
    let header = [
        "ID",
        "STATE",
        "RECEIVED/TOTAL",
        "OWNER",
        "LAST ACTIVITY",
        "DESTINATION",
    ];
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|s| {
            [
                text(&s["id"]),
                text(&s["state"]),
                format!("{}/{}", text(&s["received"]), text(&s["total"])),
                text(&s["owner"]),
                time(&s["last_activity"]),
                text(&s["destination"]),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{out}");
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
}

fn print_session(s: &Value) {
    let fields = [
        ("id", text(&s["id"])),
        ("state", text(&s["state"])),
        ("vdir", text(&s["vdir"])),
        ("url", text(&s["url"])),
        ("destination", text(&s["destination"])),
        ("owner", text(&s["owner"])),
        ("received", text(&s["received"])),
        ("total", text(&s["total"])),
        ("created", time(&s["created_at"])),
        ("last activity", time(&s["last_activity"])),
        ("ended", time(&s["ended_at"])),
    ];
    for (name, value) in fields {
        println!("{:<15}{value}", format!("{name}:"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(time(&Value::from(0u64)), "1970-01-01 00:00:00Z");
        assert_eq!(
            time(&Value::from(1_709_210_096_789u64)),
            "2024-02-29 12:34:56Z"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn normalizes_admin_urls() {
        assert_eq!(
            normalize_base("127.0.0.1:9180").unwrap(),
            "http://127.0.0.1:9180"
        );
        assert_eq!(
            normalize_base("http://[::1]:9180/").unwrap(),
            "http://[::1]:9180"
        );
        assert!(normalize_base("https://x:1").is_err());
        assert!(normalize_base("http://x:1/admin").is_err());
        assert_eq!(
            session_path("{6B1E0000-0000-0000-0000-000000000000}", "/cancel"),
            "/admin/sessions/6B1E0000-0000-0000-0000-000000000000/cancel"
        );
    }
}
