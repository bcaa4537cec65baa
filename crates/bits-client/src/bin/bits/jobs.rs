//! The commands that manage remembered jobs rather than start a transfer: `resume` (runs
//! them again from their saved state), `jobs` (lists them) and `cancel` (ends them on the
//! server where it can, and forgets them here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use bits_client::{Job, JobStore, NoObserver, StoreError, Transfer};

use crate::report::{self, escape, Failure, Output};
use crate::run::*;
use crate::Opts;

/// How long `cancel` tries to tell the server about one job before forgetting it anyway.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(15);

/// The id a job file's name stands for.
fn id_of(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()?.strip_suffix(".json")
}

/// Job files that could not be used, named on stderr.
fn report_refused(bad: &[(PathBuf, StoreError)], what: &str) {
    for (_, e) in bad {
        eprintln!("bits: {what}: {}", escape(&e.to_string()));
    }
}

pub(crate) async fn resume(opts: &Opts, out: Output, ids: &[String]) -> u8 {
    let context = json!({ "command": "resume" });
    let store = match store(opts) {
        Ok(s) => s,
        Err(f) => return finish(out, context, Err(f)),
    };
    let (jobs, bad) = match store.list() {
        Ok(l) => l,
        Err(e) => return finish(out, context, Err(store_failure(&e))),
    };
    let mut selected = Vec::new();
    let mut code = report::OK;
    if ids.is_empty() {
        report_refused(&bad, "not resuming");
        if !bad.is_empty() {
            code = report::LOCAL_IO;
        }
        selected = jobs;
    } else {
        for id in ids {
            if let Some((_, e)) = bad.iter().find(|(p, _)| id_of(p) == Some(id.as_str())) {
                return finish(out, context, Err(store_failure(e)));
            }
            match jobs.iter().find(|j| &j.id == id) {
                Some(j) => selected.push(j.clone()),
                None => return finish(out, context, Err(Failure::usage(format!("no job {id}")))),
            }
        }
    }
    if selected.is_empty() {
        let c = finish(
            out,
            context,
            Ok((
                json!({ "command": "resume", "jobs": 0 }),
                "no unfinished jobs".into(),
                false,
            )),
        );
        return if code == report::OK { c } else { code };
    }
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
                Err(e) => Err(store_failure(&e)),
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
        let (jobs, bad) = store.list().map_err(|e| store_failure(&e))?;
        report_refused(&bad, "not listed");
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
            let field = |k: &str| escape(v[k].as_str().unwrap_or(""));
            lines.push(format!(
                "{}  {:<12} {done}/{size}  {}  {}",
                field("id"),
                field("command"),
                field("file"),
                field("url")
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

/// `cancel`: every selected job is forgotten here, whether or not its server could be told
/// (an unreachable server must not keep a job alive, nor hold up the others); what could not
/// be done is warned about. Only a job busy in another process, or Ctrl-C, stops it.
pub(crate) async fn cancel(opts: &Opts, out: Output, ids: &[String], all: bool) -> u8 {
    let context = json!({ "command": "cancel" });
    let mut code = report::OK;
    let result = async {
        if ids.is_empty() != all {
            return Err(Failure::usage("name the jobs to cancel, or --all"));
        }
        let store = store(opts)?;
        let (jobs, bad) = store.list().map_err(|e| store_failure(&e))?;
        let mut selected = Vec::new();
        let mut refused = Vec::new();
        if all {
            selected = jobs;
            refused.extend(bad.iter().filter_map(|(p, _)| id_of(p)));
        } else {
            for id in ids {
                if let Some(j) = jobs.iter().find(|j| &j.id == id) {
                    selected.push(j.clone());
                } else if bad.iter().any(|(p, _)| id_of(p) == Some(id.as_str())) {
                    refused.push(id.as_str());
                } else {
                    return Err(Failure::usage(format!("no job {id}")));
                }
            }
        }
        let mut cancelled = Vec::new();
        let mut not_told = Vec::new();
        let mut busy = Vec::new();
        // Files that are not usable jobs are only removed: nothing in them is trusted.
        for id in refused {
            if let Some((_, e)) = bad.iter().find(|(p, _)| id_of(p) == Some(id)) {
                eprintln!("bits: removing {}", escape(&e.to_string()));
            }
            store.remove(id).map_err(|e| store_failure(&e))?;
            cancelled.push(id.to_string());
        }
        for mut job in selected {
            let _lock = match store.try_lock(&job.id) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    eprintln!(
                        "bits: job {} is being run by another bits process; not cancelled",
                        job.id
                    );
                    busy.push(job.id.clone());
                    code = report::LOCKED;
                    continue;
                }
                Err(e) => return Err(store_failure(&e)),
            };
            if let Transfer::Upload(u) = &mut job.transfer {
                if u.session.is_some() {
                    if let Err(why) = tell_server(opts, &job.settings, u).await {
                        if why.code == report::INTERRUPTED {
                            return Err(why);
                        }
                        eprintln!(
                            "bits: warning: job {}: the server was not told ({}); its session \
                             there expires on its own",
                            job.id,
                            escape(&why.message)
                        );
                        not_told.push(json!({ "job": job.id, "error": why.message }));
                    }
                }
            }
            abandon_local(&store, &job)?;
            cancelled.push(job.id.clone());
        }
        let n = cancelled.len();
        Ok((
            json!({
                "command": "cancel",
                "cancelled": cancelled,
                "server_not_told": not_told,
                "busy": busy,
            }),
            format!("cancelled {n} job(s)"),
            false,
        ))
    }
    .await;
    let c = finish(out, context, result);
    if c == report::OK {
        code
    } else {
        c
    }
}

/// Cancel-Session for an upload's session, bounded in time.
async fn tell_server(
    opts: &Opts,
    saved: &bits_client::JobSettings,
    u: &mut bits_client::UploadState,
) -> Result<(), Failure> {
    let settings = merged_settings(opts, saved)?;
    let client = client(opts, &settings, &parse_url(&u.url)?)?;
    let url = u.url.clone();
    let mut quiet = NoObserver;
    let attempt = tokio::time::timeout(CANCEL_TIMEOUT, client.cancel(u, &mut quiet));
    match interruptible(async {
        attempt.await.unwrap_or_else(|_| {
            Err(bits_client::Error::Timeout {
                url,
                secs: CANCEL_TIMEOUT.as_secs(),
            })
        })
    })
    .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Failure::from(&e)),
    }
}

/// Deletes a job's local leftovers (no network).
fn abandon_local(store: &JobStore, job: &Job) -> Result<(), Failure> {
    match &job.transfer {
        Transfer::Download(d) => {
            let _ = d.remove_partial();
        }
        Transfer::Upload(u) => {
            if job.settings.reply_to_stdout {
                if let Some(p) = &u.reply_to {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
    store.remove(&job.id).map_err(|e| store_failure(&e))
}
