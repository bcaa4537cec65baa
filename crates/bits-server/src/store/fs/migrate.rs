//! The spool layout before the session database (one directory per session), converted once
//! at start-up.

use super::*;

/// Converts a spool of the one-directory-per-session layout: each `sessions/<uuid>/meta.json`
/// goes into the database (unless it is there already), its `data` and `reply` move to
/// `data/`, and the directory goes. Each step can be repeated after a crash without changing
/// the result: records are imported before their files move, and a directory is removed last.
pub(super) fn migrate_legacy(
    spool: &Path,
    db: &SessionsDb,
    store: &FsStore,
) -> Result<(), StoreError> {
    let legacy = spool.join("sessions");
    let Ok(entries) = fs::read_dir(&legacy) else {
        return Ok(());
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| SessionId::parse(n).ok())
        {
            dirs.push((id, entry.path()));
        }
    }
    if dirs.is_empty() {
        let _ = fs::remove_dir(&legacy);
        return Ok(());
    }
    tracing::info!(
        sessions = dirs.len(),
        "converting the spool to the session database"
    );
    let mut kept = 0usize;
    for chunk in dirs.chunks(1024) {
        let mut records = Vec::with_capacity(chunk.len());
        let mut convert = Vec::with_capacity(chunk.len());
        for (id, dir) in chunk {
            match fs::read(dir.join("meta.json")) {
                Ok(bytes) => match serde_json::from_slice::<SessionRecord>(&bytes) {
                    Ok(rec) => {
                        records.push(rec);
                        convert.push((*id, dir));
                    }
                    // Torn (tombstones were written in place without a flush). Without data
                    // nothing acknowledged depends on it; with data it stays for an operator.
                    Err(e) => {
                        let held = fs::metadata(dir.join("data")).map_or(0, |m| m.len());
                        if held == 0 {
                            tracing::warn!(session = %id, error = %e, "unreadable record without data (torn by a crash); removed");
                            convert.push((*id, dir));
                        } else {
                            tracing::error!(session = %id, dir = %dir.display(), error = %e, "unreadable record with data; left where it is for an operator");
                            kept += 1;
                        }
                    }
                },
                // Never recorded (a crash inside Create-Session): nobody got an Ack for it.
                Err(e) if e.kind() == ErrorKind::NotFound => convert.push((*id, dir)),
                Err(e) => return Err(e.into()),
            }
        }
        db.import(&records)?;
        let chunk = convert;
        for (id, dir) in &chunk {
            for (from, to) in [
                (dir.join("data"), store.data(*id)),
                (dir.join("reply"), store.reply(*id)),
            ] {
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        store.sync_data_dir()?;
        for (_, dir) in &chunk {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if store.fsync {
        File::open(&legacy)?.sync_all()?;
    }
    if kept == 0 {
        let _ = fs::remove_dir(&legacy);
    }
    tracing::info!(kept, "spool converted");
    Ok(())
}
