//! `bench cpu`: CPU cost of ingesting data, in instructions (and cycles) per MiB uploaded.
//!
//! bitsd runs under `perf stat -e instructions,cycles` when the hardware counters are available
//! here; otherwise under `valgrind --tool=callgrind` (which counts instructions
//! deterministically, but runs ~50x slower, so the upload is capped at 32 MiB). One file is
//! uploaded in 8 MiB fragments in the safe (`fsync = true`) mode, then bitsd is stopped with
//! SIGINT so the wrapper writes its totals. A second, idle run (start, no requests, SIGINT)
//! measures startup and shutdown, which is subtracted to give the marginal cost per MiB.
//!
//! With callgrind the returned Markdown also holds the top functions by inclusive and by
//! self (exclusive) instructions of the upload run: the profile of the ingest hot path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Headline, Report};
use crate::server::Bitsd;
use crate::wire::Conn;

const FRAGMENT: usize = 8 << 20;
/// Upload size cap under callgrind.
const CALLGRIND_MIB: u64 = 32;
const TOP: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Counter {
    Perf,
    Callgrind,
}

/// Totals of one wrapped bitsd run.
struct Totals {
    instructions: u64,
    cycles: Option<u64>,
}

pub fn run(mib: u64) -> Result<Report> {
    let counter = if perf_supported() {
        Counter::Perf
    } else {
        Counter::Callgrind
    };
    let mib = match counter {
        Counter::Perf => mib.max(1),
        Counter::Callgrind => mib.clamp(1, CALLGRIND_MIB),
    };
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let work = tempfile::tempdir_in(&base)?;
    let dir = &std::fs::canonicalize(work.path())?;

    let idle_dir = dir.join("idle");
    std::fs::create_dir_all(&idle_dir)?;
    let (idle, _) = wrapped_run(counter, &idle_dir, 0)?;
    let up_dir = dir.join("upload");
    std::fs::create_dir_all(&up_dir)?;
    let (up, secs) = wrapped_run(counter, &up_dir, mib)?;

    let marginal = up.instructions.saturating_sub(idle.instructions);
    let mut out = String::new();
    let tool = match counter {
        Counter::Perf => "perf stat -e instructions,cycles",
        Counter::Callgrind => "valgrind --tool=callgrind (perf counters not supported here)",
    };
    writeln!(out, "| bitsd run | instructions | cycles |")?;
    writeln!(out, "|---|---|---|")?;
    let cyc = |t: &Totals| t.cycles.map_or("n/a".to_string(), group);
    writeln!(
        out,
        "| idle (start, SIGINT) | {} | {} |",
        group(idle.instructions),
        cyc(&idle)
    )?;
    writeln!(
        out,
        "| upload {mib} MiB, 8 MiB fragments, fsync = true | {} | {} |",
        group(up.instructions),
        cyc(&up)
    )?;
    writeln!(out)?;
    writeln!(out, "| per MiB ingested | instructions | cycles |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(
        out,
        "| total / MiB | {} | {} |",
        group(up.instructions / mib),
        up.cycles.map_or("n/a".to_string(), |c| group(c / mib))
    )?;
    writeln!(
        out,
        "| (upload - idle) / MiB | {} | {} |",
        group(marginal / mib),
        match (up.cycles, idle.cycles) {
            (Some(u), Some(i)) => group(u.saturating_sub(i) / mib),
            _ => "n/a".to_string(),
        }
    )?;
    writeln!(
        out,
        "(counted with {tool}; bitsd process only, client not counted; {:.2} instructions per \
         byte ingested; upload wall time under the counter {secs:.1} s)",
        marginal as f64 / (mib << 20) as f64
    )?;
    if counter == Counter::Callgrind {
        let file = up_dir.join("callgrind.out");
        writeln!(out)?;
        writeln!(
            out,
            "Top {TOP} functions by inclusive instructions (upload run, `callgrind_annotate --inclusive=yes`):"
        )?;
        writeln!(out)?;
        out.push_str(&top_functions(&file, true, &[])?);
        writeln!(out)?;
        writeln!(
            out,
            "Top {TOP} of bitsd's own functions (`bits_*`, `bitsd`) by inclusive instructions:"
        )?;
        writeln!(out)?;
        out.push_str(&top_functions(&file, true, &["bits_", "bitsd::"])?);
        writeln!(out)?;
        writeln!(
            out,
            "Top {TOP} functions by self (exclusive) instructions (upload run):"
        )?;
        writeln!(out)?;
        out.push_str(&top_functions(&file, false, &[])?);
        writeln!(
            out,
            "\n(callgrind counts user-space instructions only: the kernel's share of ingest - \
             socket receive copies, page-cache writes, fsync - is not in these figures. Under \
             valgrind a `rep movsb` counts one instruction per byte moved.)"
        )?;
    }
    let per_mib = marginal / mib;
    Ok(Report::table(out).with_headline(Headline {
        figure: format!("CPU per MiB ingested ({mib} MiB upload)"),
        value: format!("{} instructions/MiB", group(per_mib)),
        baseline: "-".to_string(),
        ratio: per_mib as f64 / (1u64 << 20) as f64,
        target: "none (ratio is instructions per byte)".to_string(),
        met: None,
    }))
}

/// `perf stat -e instructions true` gives a count (not `<not supported>`).
fn perf_supported() -> bool {
    let Ok(out) = Command::new("perf")
        .args(["stat", "-x,", "-e", "instructions", "true"])
        .output()
    else {
        return false;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    out.status.success()
        && err
            .lines()
            .any(|l| l.contains("instructions") && parse_count(l).is_some())
}

fn parse_count(perf_csv_line: &str) -> Option<u64> {
    perf_csv_line.split(',').next()?.trim().parse().ok()
}

/// Starts bitsd under the counter in `dir`, uploads `mib` MiB (none if 0), stops it with SIGINT
/// and returns the counted totals and the upload's wall seconds.
fn wrapped_run(counter: Counter, dir: &Path, mib: u64) -> Result<(Totals, f64)> {
    let config = format!(
        "fsync = true\n[[vdir]]\nprefix = \"/upload/\"\nroot = \"{root}/uploads\"\nmax_fragment_size = {max}\n",
        root = dir.display(),
        max = 2 * FRAGMENT
    );
    let out = match counter {
        Counter::Perf => dir.join("perf.csv"),
        Counter::Callgrind => dir.join("callgrind.out"),
    };
    let out_s = out.to_str().context("non-UTF-8 path")?.to_string();
    let cg_out = format!("--callgrind-out-file={out_s}");
    let wrapper: Vec<&str> = match counter {
        Counter::Perf => vec![
            "perf",
            "stat",
            "-x,",
            "-e",
            "instructions,cycles",
            "-o",
            &out_s,
            "--",
        ],
        Counter::Callgrind => vec!["valgrind", "--tool=callgrind", "-q", &cg_out],
    };
    let server = Bitsd::start_wrapped(dir, &config, &wrapper)?;
    let mut secs = 0.0;
    if mib > 0 {
        let started = Instant::now();
        upload(server.addr, "/upload/cpu.bin", mib << 20)?;
        secs = started.elapsed().as_secs_f64();
    }
    let status = server.stop(Duration::from_secs(300))?;
    if !status.success() {
        eprintln!("note: wrapped bitsd exited with {status}");
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("reading counter output {}", out.display()))?;
    let totals = match counter {
        Counter::Perf => {
            let find = |event: &str| {
                text.lines()
                    .filter(|l| l.split(',').nth(2).is_some_and(|e| e.starts_with(event)))
                    .find_map(parse_count)
            };
            Totals {
                instructions: find("instructions").context("no instruction count from perf")?,
                cycles: find("cycles"),
            }
        }
        Counter::Callgrind => Totals {
            instructions: text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .context("no totals in callgrind output")?,
            cycles: None,
        },
    };
    Ok((totals, secs))
}

/// The top functions of a callgrind profile as a Markdown table; with `only`, just those whose
/// name contains one of these strings.
fn top_functions(file: &Path, inclusive: bool, only: &[&str]) -> Result<String> {
    let out = Command::new("callgrind_annotate")
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .arg("--threshold=100")
        .arg(file)
        .output()
        .context("running callgrind_annotate")?;
    if !out.status.success() {
        bail!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The function list follows the header line that ends in "file:function".
    let rows: Vec<(String, String, String)> = text
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("file:function"))
        .skip(2)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--"))
        .map(parse_row)
        .filter(|(_, _, f)| only.is_empty() || only.iter().any(|o| f.contains(o)))
        .take(TOP)
        .collect();
    let mut md = String::from("| # | Ir | % | function |\n|---|---|---|---|\n");
    for (i, (ir, pct, func)) in rows.iter().enumerate() {
        let mut func = func.replace('|', "\\|");
        if func.chars().count() > 150 {
            func = func.chars().take(147).collect::<String>() + "...";
        }
        writeln!(md, "| {} | {ir} | {pct} | `{func}` |", i + 1)?;
    }
    Ok(md)
}

/// `"1,234 (5.6%)  file.rs:crate::f [/path/obj]"` -> `("1,234", "5.6%", "crate::f")`.
fn parse_row(row: &str) -> (String, String, String) {
    let row = row.trim();
    let (ir, rest) = row.split_once(' ').unwrap_or((row, ""));
    let rest = rest.trim_start();
    let (pct, func) = match rest.strip_prefix('(') {
        Some(r) => r.split_once(')').unwrap_or(("", r)),
        None => ("", rest),
    };
    let mut func = func.trim();
    // Drop the object file suffix and the source file prefix (which ends in the first single
    // ':'; Rust paths only contain "::").
    if func.ends_with(']') {
        if let Some(i) = func.rfind(" [") {
            func = &func[..i];
        }
    }
    let bytes = func.as_bytes();
    if let Some(i) = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
    }) {
        func = &func[i + 1..];
    }
    (ir.to_string(), pct.trim().to_string(), func.to_string())
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Create-Session, `total` bytes in 8 MiB fragments, Close-Session, on one connection.
fn upload(addr: SocketAddr, path: &str, total: u64) -> Result<()> {
    let body: Vec<u8> = (0..FRAGMENT)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    crate::wire::upload(&mut Conn::open(addr)?, path, total, &body).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "benchmark: runs bitsd under perf or callgrind; run with --ignored --nocapture"]
    fn cpu_small() {
        let report = super::run(16).unwrap().markdown;
        println!("{report}");
        assert!(report.contains("per MiB ingested"));
    }
}
