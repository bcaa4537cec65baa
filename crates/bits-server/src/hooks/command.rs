//! The command transport: one run of a local program per attempt, with the event JSON on its
//! standard input. Retries are the queue's business; an attempt only says whether it was a
//! delivery.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::event::EventKind;
use crate::config::hooks::HooksConfig;

/// How much of a failing command's standard error is kept for the log.
const STDERR_LOG_LIMIT: usize = 2048;
/// How long the standard error of an exited command may stay open (held by a process it left
/// behind) before it is no longer waited for.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// One attempt to deliver event `id` of `kind`, serialized as `body`, to `cfg.command`:
/// `Ok` when it exits with status 0.
pub(super) async fn run(
    cfg: &HooksConfig,
    kind: EventKind,
    id: &str,
    body: &[u8],
) -> Result<(), String> {
    let Some((program, args)) = cfg.command.as_deref().and_then(<[String]>::split_first) else {
        return Err("hooks.command is empty".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("BITSD_EVENT", kind.as_str())
        .env("BITSD_DELIVERY", id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let mut stderr_reader = child.stderr.take().map(|s| tokio::spawn(read_capped(s)));
    let stdin = child.stdin.take();
    let run = tokio::time::timeout(cfg.timeout, async {
        if let Some(mut stdin) = stdin {
            let written = async {
                stdin.write_all(body).await?;
                stdin.write_all(b"\n").await?;
                stdin.shutdown().await
            }
            .await;
            match written {
                // The command need not read its input.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(format!("cannot write the event to its stdin: {e}"));
                }
                _ => {}
            }
        }
        child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for it: {e}"))
    })
    .await;
    let status = match run {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            kill_group(&mut child).await;
            abort(stderr_reader.take());
            return Err(e);
        }
        Err(_) => {
            kill_group(&mut child).await;
            abort(stderr_reader.take());
            return Err(format!("still running after {:?}; killed", cfg.timeout));
        }
    };
    let stderr = match stderr_reader.take() {
        Some(mut task) => match tokio::time::timeout(STDERR_GRACE, &mut task).await {
            Ok(Ok(text)) => text,
            _ => {
                task.abort();
                String::new()
            }
        },
        None => String::new(),
    };
    if status.success() {
        if !stderr.is_empty() {
            tracing::debug!(event = %kind, id = %id, %stderr, "hook command stderr");
        }
        Ok(())
    } else if stderr.is_empty() {
        Err(format!("{program:?} exited with {status}"))
    } else {
        Err(format!(
            "{program:?} exited with {status}; stderr: {stderr}"
        ))
    }
}

fn abort(task: Option<tokio::task::JoinHandle<String>>) {
    if let Some(task) = task {
        task.abort();
    }
}

/// Kills the command and whatever it started in its process group, and reaps it.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (`process_group(0)`); it touches no memory of ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Reads `r` to its end, keeping the first [`STDERR_LOG_LIMIT`] bytes as (lossy) text.
async fn read_capped(mut r: tokio::process::ChildStderr) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDERR_LOG_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{EventKind, Hooks, HooksConfig};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn command_gets_the_event_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("event.json");
        let env = dir.path().join("env.txt");
        let cfg = fast(command(&[
            "sh",
            "-c",
            r#"cat > "$0"; printf '%s %s' "$BITSD_EVENT" "$BITSD_DELIVERY" > "$1""#,
            out.to_str().unwrap(),
            env.to_str().unwrap(),
        ]));
        let hooks = Hooks::new(8);
        let ev = event(EventKind::UploadCompleted).with_upload(7, "00ff");
        let id = ev.id.clone();
        hooks.emit(&cfg, ev.clone());
        let s = wait_for(&hooks, |s| s.delivered == 1).await;
        assert_eq!(s.retried + s.failed + s.dropped, 0);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(v, serde_json::to_value(&ev).unwrap());
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            format!("upload_completed {id}")
        );
    }

    #[tokio::test]
    async fn command_failure_and_timeout_are_retried_then_failed() {
        let hooks = Hooks::new(8);
        let cfg = fast(HooksConfig {
            max_attempts: 2,
            ..command(&["sh", "-c", "echo oops >&2; exit 3"])
        });
        hooks.emit(&cfg, event(EventKind::SessionCreated));
        let s = wait_for(&hooks, |s| s.failed == 1).await;
        assert_eq!((s.retried, s.delivered), (1, 0));

        let mut slow = command(&["sh", "-c", "sleep 30; exit 0"]);
        slow.max_attempts = 1;
        slow.timeout = Duration::from_millis(200);
        let started = Instant::now();
        hooks.emit(&Arc::new(slow), event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.failed == 2).await;
        assert!(started.elapsed() < Duration::from_secs(5));

        // A command that does not read its input still succeeds.
        hooks.emit(&fast(command(&["true"])), event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.delivered == 1).await;
        // One that cannot be started fails.
        let missing = fast(HooksConfig {
            max_attempts: 1,
            ..command(&["/nonexistent/bitsd-hook"])
        });
        hooks.emit(&missing, event(EventKind::SessionCreated));
        wait_for(&hooks, |s| s.failed == 3).await;
    }
}
