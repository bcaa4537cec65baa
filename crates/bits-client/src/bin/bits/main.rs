//! `bits`: upload, upload-reply and download files the way the Windows BITS service does, with
//! jobs that survive Ctrl-C and crashes (`bits resume`, or the same command again).

mod display;
mod jobs;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bits",
    version,
    about = "BITS Upload Protocol client: resumable uploads, upload-reply and downloads",
    after_help = "Exit codes (who is at fault):\n  \
                  0 ok\n  \
                  1 internal error\n  \
                  2 usage error: bad arguments or options (a URL with a password, an output that is \
                  a directory), unreadable --cacert/--cert/--key, no password\n  \
                  3 transient failure after all retries: network, 5xx, timeouts, invalid \
                  responses (job kept)\n  \
                  4 server/protocol error: the server refused (4xx, BITS error; job deleted) or \
                  broke the protocol (not a BITS server; job kept)\n  \
                  5 local I/O error: local file, not enough free space, a state directory or job \
                  file that is not safely yours or does not match the command\n  \
                  6 auth: 401/407, or the server certificate did not verify\n  \
                  7 local file kept changing during the upload\n  \
                  8 job busy in another bits process\n  \
                  9 policy refusal: a file: or https-to-http reply URL or redirect, a redirect \
                  with credentials, a body over --max-size or with a Content-Encoding\n  \
                  130 interrupted (job kept)"
)]
pub struct Cli {
    #[command(flatten)]
    pub opts: Opts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Opts {
    /// Fragment size for uploads (bytes; K/M/G suffixes are binary). Default 1M, minimum 5K.
    #[arg(long, global = true, value_parser = parse_size, value_name = "SIZE")]
    pub fragment_size: Option<u64>,
    /// User to sign in as (Basic, or NTLM with --auth ntlm, where it may be DOMAIN\user); the
    /// password comes from BITS_PASSWORD or is prompted for.
    #[arg(long, short = 'u', global = true)]
    pub user: Option<String>,
    /// How to sign in: basic (default; --user's password sent with every request), ntlm
    /// (answers the server's NTLM challenge, as IIS with Windows authentication and bitsd's
    /// auth = "ntlm" ask), or negotiate (Kerberos: the ticket for HTTP/<server> from the
    /// credential cache, after kinit and kvno; no --user).
    #[arg(long, global = true, value_parser = ["basic", "ntlm", "negotiate"])]
    pub auth: Option<String>,
    /// Trust these PEM certificates instead of the system's roots.
    #[arg(long, global = true, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM chain); needs --key.
    #[arg(long, global = true, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, global = true, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Accept any server certificate. Dangerous; never implied, not remembered by jobs.
    #[arg(long, short = 'k', global = true)]
    pub insecure: bool,
    /// Print the result as one JSON object on stdout (one per job for `resume`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Where job state lives [default: $XDG_STATE_HOME/bits/jobs or ~/.local/state/bits/jobs].
    /// It must be yours and not writable by group or others (made 0700 if missing).
    #[arg(long, global = true, env = "BITS_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Consecutive failed attempts before giving up (progress resets the count).
    #[arg(long, global = true, default_value_t = 8)]
    pub retries: u32,
    /// Delay before the first retry (doubles up to 30 s): e.g. 500ms, 2s.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    pub retry_delay: Duration,
    /// Give up on a request after this long without progress.
    #[arg(long, global = true, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Give up on a request not done after this long (sent, answered, body read), however
    /// steadily bytes trickle; a download resumes in the next request. 0 = no deadline.
    #[arg(long, global = true, default_value = "1h", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Refuse downloads and replies larger than this (K/M/G suffixes; 0 = no bound). The
    /// free space of the destination is checked too, before a byte is written.
    #[arg(long, global = true, value_parser = parse_size, default_value = "16G", value_name = "SIZE")]
    pub max_size: u64,
    /// Upload at most this many bytes per second (K/M/G suffixes).
    #[arg(long, global = true, value_parser = parse_size, value_name = "RATE")]
    pub limit_rate: Option<u64>,
    /// No progress or messages, only errors.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Upload FILE to URL (BITS upload job).
    Upload { file: PathBuf, url: String },
    /// Upload FILE to URL and fetch the server application's reply (BITS upload-reply job).
    UploadReply {
        file: PathBuf,
        url: String,
        /// Write the reply here instead of to stdout.
        #[arg(short = 'o', long = "output", value_name = "REPLY")]
        output: Option<PathBuf>,
    },
    /// Download URL to FILE, resuming a partial download when the remote file is unchanged.
    Download { url: String, file: PathBuf },
    /// Check that URL is served by a BITS upload server that lets us in.
    Ping { url: String },
    /// Resume unfinished jobs (all of them, or the given ids).
    Resume { ids: Vec<String> },
    /// List unfinished jobs.
    Jobs,
    /// Cancel unfinished jobs: Cancel-Session for uploads (a warning if the server cannot be
    /// told), partial data deleted for downloads; the jobs are forgotten either way.
    Cancel {
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) to standard
    /// output, e.g. `bits completions bash > ~/.local/share/bash-completion/completions/bits`.
    Completions {
        #[arg(value_enum)]
        shell: bits_client::manual::Shell,
    },
    /// Write the man pages (bits.1 and one per command) into DIR (for packaging).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

/// `bits completions` and `bits manpages`: no job, no network.
fn manual(command: Command) -> u8 {
    use clap::CommandFactory;
    let result = match command {
        Command::Completions { shell } => {
            let out = &mut std::io::stdout().lock();
            bits_client::manual::write_completions(Cli::command(), "bits", shell, out)
        }
        Command::Manpages { dir } => {
            bits_client::manual::write_man_pages(Cli::command(), "1", &dir).map(|pages| {
                for page in pages {
                    println!("{}", page.display());
                }
            })
        }
        _ => return report::USAGE,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bits: error: {e}");
            report::LOCAL_IO
        }
    }
}

/// `1048576`, `64K`, `1M`, `2MiB`, `1G` (binary multiples).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = t[digits.len()..].to_ascii_lowercase();
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too big"))
}

/// `250ms`, `2s`, `5m`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    if matches!(
        cli.command,
        Command::Completions { .. } | Command::Manpages { .. }
    ) {
        return ExitCode::from(manual(cli.command));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bits: error: cannot start the runtime: {e}");
            return ExitCode::from(report::INTERNAL);
        }
    };
    ExitCode::from(rt.block_on(run::main(cli)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("5KiB"), Ok(5 << 10));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert!(parse_size("x").is_err());
        assert!(parse_size("1T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
