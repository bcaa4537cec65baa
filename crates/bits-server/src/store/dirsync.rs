//! Group fsync of directories: requests to make a directory's entries durable that arrive while
//! an fsync of that directory is running share the next one, instead of each paying its own.
//! A caller returns only after an fsync that *started after its request* has finished, so every
//! entry it created before asking is on disk. Used for the spool's data directory (new upload
//! files) and for destination directories (publications).
//!
//! Blocking: call it from the blocking pool, as the file system code around it is.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex};

/// A directory, named by device and inode (the same directory opened twice is one entry).
type DirKey = (u64, u64);

#[derive(Default)]
struct Entry {
    /// Tickets handed out so far.
    issued: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    done: u64,
    running: bool,
    /// Callers waiting on this directory (the entry is dropped when none are left).
    waiting: usize,
}

#[derive(Default)]
pub struct DirSync {
    entries: Mutex<HashMap<DirKey, Entry>>,
    changed: Condvar,
}

impl DirSync {
    /// Makes the entries of `dir` (open, read-only) durable. When another caller's fsync is
    /// already running, waits for it and then for the next one, which one of the waiters runs
    /// for all of them.
    pub fn sync(&self, dir: &File) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = dir.metadata()?;
        let key = (meta.dev(), meta.ino());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = {
            let e = entries.entry(key).or_default();
            e.issued += 1;
            e.waiting += 1;
            e.issued
        };
        let result = loop {
            let e = entries.entry(key).or_default();
            if e.done >= ticket {
                break Ok(());
            }
            if e.running {
                entries = self
                    .changed
                    .wait(entries)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: one fsync for every ticket issued so far.
            e.running = true;
            let covers = e.issued;
            drop(entries);
            let synced = dir.sync_all();
            entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = entries.entry(key).or_default();
            e.running = false;
            if synced.is_ok() {
                e.done = e.done.max(covers);
            }
            self.changed.notify_all();
            // A failed fsync answers its leader; the others try again themselves.
            if let Err(err) = synced {
                break Err(err);
            }
        };
        if let Some(e) = entries.get_mut(&key) {
            e.waiting -= 1;
            if e.waiting == 0 && !e.running {
                entries.remove(&key);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_requests_share_fsyncs_and_each_is_covered() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(DirSync::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (sync, path) = (sync.clone(), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    for j in 0..20 {
                        std::fs::write(path.join(format!("{i}-{j}")), b"x").unwrap();
                        let d = File::open(&path).unwrap();
                        sync.sync(&d).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Nothing left behind once every caller is answered.
        assert!(sync.entries.lock().unwrap().is_empty());
    }
}
