//! The commands that manage remembered jobs rather than start a transfer: `resume` (runs
//! them again from their saved state), `jobs` (lists them) and `cancel` (ends them on the
//! server where it can, and forgets them here).

use serde_json::{json, Value};

use bits_client::{Job, JobStore, NoObserver, Transfer};

use crate::report::{self, Failure, Output};
use crate::run::*;
use crate::Opts;

pub(crate) async fn resume(opts: &Opts, out: Output, ids: &[String]) -> u8 {
    let context = json!({ "command": "resume" });
    let store = match store(opts) {
        Ok(s) => s,
        Err(f) => return finish(out, context, Err(f)),
    };
    let (jobs, bad) = match store.list() {
        Ok(l) => l,
        Err(e) => return finish(out, context, Err(Failure::local(e.to_string()))),
    };
    for (path, e) in bad {
        eprintln!("bits: skipping unreadable job {}: {e}", path.display());
    }
    let mut selected = Vec::new();
    if ids.is_empty() {
        selected = jobs;
    } else {
        for id in ids {
            match jobs.iter().find(|j| &j.id == id) {
                Some(j) => selected.push(j.clone()),
                None => return finish(out, context, Err(Failure::usage(format!("no job {id}")))),
            }
        }
    }
    if selected.is_empty() {
        return finish(
            out,
            context,
            Ok((
                json!({ "command": "resume", "jobs": 0 }),
                "no unfinished jobs".into(),
                false,
            )),
        );
    }
    let mut code = report::OK;
    for job in selected {
        let ctx = json!({ "command": job.command, "job": job.id });
        let result = async {
            let _lock = lock(&store, &job.id)?;
            // Re-read under the lock: another process may have finished it meanwhile.
            match store.load(&job.id) {
                Ok(Some(current)) => run_job(opts, out, &store, current).await,
                Ok(None) => Ok((
                    json!({ "command": job.command, "job": job.id, "already_done": true }),
                    format!("job {} is already done", job.id),
                    false,
                )),
                Err(e) => Err(Failure::local(e.to_string())),
            }
        }
        .await;
        let c = finish(out, ctx, result);
        if c == report::INTERRUPTED {
            return c;
        }
        if code == report::OK {
            code = c;
        }
    }
    code
}

fn job_summary(job: &Job) -> Value {
    match &job.transfer {
        Transfer::Upload(u) => json!({
            "id": job.id, "command": job.command, "url": u.url, "file": u.file,
            "size": u.stamp.size, "acknowledged": u.acked,
            "session": u.session.as_ref().map(|s| s.id.clone()),
        }),
        Transfer::Download(d) => json!({
            "id": job.id, "command": job.command, "url": d.url, "file": d.dest,
            "size": d.remote.as_ref().map(|r| r.size), "received": d.received(),
        }),
    }
}

pub(crate) fn list_jobs(opts: &Opts, out: Output) -> u8 {
    let context = json!({ "command": "jobs" });
    let result = (|| {
        let store = store(opts)?;
        let (jobs, _) = store.list().map_err(|e| Failure::local(e.to_string()))?;
        let list: Vec<Value> = jobs.iter().map(job_summary).collect();
        let mut lines = Vec::new();
        for v in &list {
            let done = v
                .get("acknowledged")
                .or_else(|| v.get("received"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let size = v
                .get("size")
                .and_then(Value::as_u64)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "?".into());
            lines.push(format!(
                "{}  {:<12} {done}/{size}  {}  {}",
                v["id"].as_str().unwrap_or(""),
                v["command"].as_str().unwrap_or(""),
                v["file"].as_str().unwrap_or(""),
                v["url"].as_str().unwrap_or("")
            ));
        }
        let text = if lines.is_empty() {
            "no unfinished jobs".to_string()
        } else {
            lines.join("\n")
        };
        Ok((json!({ "command": "jobs", "jobs": list }), text, false))
    })();
    finish(out, context, result)
}

pub(crate) async fn cancel(opts: &Opts, out: Output, ids: &[String], all: bool) -> u8 {
    let context = json!({ "command": "cancel" });
    let result = async {
        if ids.is_empty() != all {
            return Err(Failure::usage("name the jobs to cancel, or --all"));
        }
        let store = store(opts)?;
        let (jobs, _) = store.list().map_err(|e| Failure::local(e.to_string()))?;
        let selected: Vec<Job> = if all {
            jobs
        } else {
            let mut v = Vec::new();
            for id in ids {
                v.push(
                    jobs.iter()
                        .find(|j| &j.id == id)
                        .cloned()
                        .ok_or_else(|| Failure::usage(format!("no job {id}")))?,
                );
            }
            v
        };
        let mut cancelled = Vec::new();
        for mut job in selected {
            let _lock = lock(&store, &job.id)?;
            if let Transfer::Upload(u) = &mut job.transfer {
                if u.session.is_some() {
                    let settings = merged_settings(opts, &job.settings)?;
                    let client = client(opts, &settings, &parse_url(&u.url)?)?;
                    interruptible(client.cancel(u, &mut NoObserver))
                        .await
                        .map_err(|e| Failure::from(&e).with("job", json!(job.id)))?;
                }
            }
            abandon_local(&store, &job);
            cancelled.push(job.id.clone());
        }
        let n = cancelled.len();
        Ok((
            json!({ "command": "cancel", "cancelled": cancelled }),
            format!("cancelled {n} job(s)"),
            false,
        ))
    }
    .await;
    finish(out, context, result)
}

/// Deletes a job's local leftovers (no network).
fn abandon_local(store: &JobStore, job: &Job) {
    match &job.transfer {
        Transfer::Download(d) => {
            let _ = std::fs::remove_file(d.partial_path());
        }
        Transfer::Upload(u) => {
            if job.settings.reply_to_stdout {
                if let Some(p) = &u.reply_to {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
    let _ = store.remove(&job.id);
}
