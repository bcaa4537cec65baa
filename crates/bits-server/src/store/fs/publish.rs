//! Publishing a complete upload at its destination (rename or no-replace link, a copy across
//! file systems), taking a publication back, releasing the spool copy; test fault points.

use super::*;

impl FsStore {
    pub(super) fn commit_blocking(
        &self,
        id: SessionId,
        total: u64,
        dest: &Destination,
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let data = self.data(id);
        // Create saw the directory; if it is gone since, or now leads out of the root (a
        // directory swapped for a link), nothing is published.
        let parent = open_parent(dest)?.ok_or_else(|| {
            StoreError::Io(io::Error::new(
                ErrorKind::NotFound,
                "the destination directory is missing or leaves its root",
            ))
        })?;
        let data_meta = match fs::metadata(&data) {
            Ok(m) => m,
            // Published by an earlier attempt that crashed before recording it.
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && stat_at(&parent.dir, &parent.name)?.is_some() =>
            {
                return Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::DataMissing),
            Err(e) => return Err(e.into()),
        };
        if data_meta.len() != total {
            // Bytes past `total` can only be unacknowledged leftovers of an interrupted write.
            let f = OpenOptions::new().write(true).open(&data)?;
            f.set_len(total)?;
            if self.fsync {
                f.sync_all()?;
            }
        }
        // Same file system: publish the spool file itself. Otherwise copy next to the target
        // first (kept, like the spool file, until the record says published: a retry after a
        // crash then recognises its own publication by the inode).
        let same_fs = parent.dir.metadata()?.dev() == data_meta.dev();
        // What is at the target is looked at first only where it decides something before
        // linking (a copy of ours to reuse, a replace to skip); the common case, a new name on
        // the same file system, learns it from the link's own answer.
        let target = if same_fs && !overwrite {
            None
        } else {
            stat_at(&parent.dir, &parent.name)?
        };
        let (source_dir, source_name, source): (BorrowedFd<'_>, PathBuf, (u64, u64)) = if same_fs {
            (
                rustix::fs::CWD,
                data.clone(),
                (data_meta.dev(), data_meta.ino()),
            )
        } else {
            let name = partial_name(id);
            let st = self.copy_beside(&parent, &name, &data, total, &data_meta, target.as_ref())?;
            self.copied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
            (
                parent.dir.as_fd(),
                PathBuf::from(name),
                (st.st_dev, st.st_ino),
            )
        };
        let published = target.is_some_and(|t| (t.st_dev, t.st_ino) == source);
        if !published {
            if overwrite {
                // A second name for the same inode, renamed over the target: atomic replace
                // without giving up the spool name. The rename replaces whatever is at the
                // target (a link there is replaced, not followed).
                let staged = format!("{}-publish", partial_name(id));
                let link = || {
                    rustix::fs::linkat(
                        source_dir,
                        &source_name,
                        &parent.dir,
                        staged.as_str(),
                        AtFlags::empty(),
                    )
                };
                match link() {
                    Ok(()) => {}
                    // Left by a crash between linking and renaming: made again.
                    Err(Errno::EXIST) => {
                        remove_at(&parent.dir, &staged)?;
                        link().map_err(io::Error::from)?;
                    }
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                rustix::fs::renameat(
                    &parent.dir,
                    staged.as_str(),
                    &parent.dir,
                    parent.name.as_str(),
                )
                .map_err(io::Error::from)?;
            } else {
                match rustix::fs::linkat(
                    source_dir,
                    &source_name,
                    &parent.dir,
                    parent.name.as_str(),
                    AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        // Ours from an earlier attempt that crashed before recording it, or
                        // someone else's.
                        let there = stat_at(&parent.dir, &parent.name)?;
                        if there.is_none_or(|t| (t.st_dev, t.st_ino) != source) {
                            return Err(StoreError::DestinationExists);
                        }
                    }
                    Err(e) => return Err(io::Error::from(e).into()),
                }
            }
        }
        if self.fsync {
            let (fault, no_undo) = sync_publish_dir_fault();
            // Completions into the same directory share its fsync.
            let synced = fault.and_then(|()| self.dirs.sync(&parent.dir));
            if let Err(e) = synced {
                // Whether the new name reached the disk is unknown: take it back, so the
                // session is plainly unpublished (the retransmitted final fragment publishes
                // again; a Cancel finds nothing). If even that fails, Cancel and expiry remove
                // it (`unpublish`).
                let ours = stat_at(&parent.dir, &parent.name)?
                    .is_some_and(|t| (t.st_dev, t.st_ino) == source);
                if ours {
                    let undone = if no_undo {
                        Err(io::Error::from_raw_os_error(libc::EIO))
                    } else {
                        remove_at(&parent.dir, &parent.name)
                    };
                    match undone {
                        Ok(()) => {
                            tracing::warn!(session = %id, error = %e, "publishing could not be made durable; taken back")
                        }
                        Err(undo) => {
                            tracing::error!(session = %id, error = %e, undo = %undo, "publishing could not be made durable nor taken back")
                        }
                    }
                }
                return Err(e.into());
            }
        }
        if same_fs {
            self.published_here
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        }
        Ok(())
    }

    /// Removes what an interrupted completion published at `dest` for session `id` (the name
    /// is a link to the session's spool data, or to its copy beside the target).
    pub(super) fn unpublish_blocking(
        &self,
        id: SessionId,
        dest: &Destination,
    ) -> Result<(), StoreError> {
        let Some(parent) = open_parent(dest)? else {
            return Ok(());
        };
        let Some(target) = stat_at(&parent.dir, &parent.name)? else {
            return Ok(());
        };
        let spool = fs::metadata(self.data(id)).ok().map(|m| (m.dev(), m.ino()));
        let copy = stat_at(&parent.dir, &partial_name(id))?.map(|st| (st.st_dev, st.st_ino));
        let ours = Some((target.st_dev, target.st_ino));
        if ours == spool || ours == copy {
            remove_at(&parent.dir, &parent.name)?;
            if self.fsync {
                parent.dir.sync_all()?;
            }
            tracing::warn!(session = %id, destination = %dest.path, "removed the publication of a session that never completed");
        }
        Ok(())
    }

    /// The server's own copy of the upload named `name` in the destination's directory (the
    /// spool is on another file system), made if there is no trustworthy one from an earlier
    /// attempt. The name is predictable, and the directory may be writable by others: an
    /// earlier copy is reused only if it is a regular file owned by the server, of the right
    /// size, and linked nowhere but (once published) at the target itself. Anything else
    /// under the name (a link, a FIFO, someone else's file) is removed, never opened, and
    /// the copy made afresh with `O_EXCL | O_NOFOLLOW`.
    pub(super) fn copy_beside(
        &self,
        parent: &Parent,
        name: &str,
        data: &Path,
        total: u64,
        data_meta: &fs::Metadata,
        target: Option<&rustix::fs::Stat>,
    ) -> Result<rustix::fs::Stat, StoreError> {
        if let Some(st) = stat_at(&parent.dir, name)? {
            let own = is_regular(&st)
                && st.st_uid == data_meta.uid()
                && u64::try_from(st.st_size) == Ok(total)
                && (st.st_nlink == 1
                    || (st.st_nlink == 2 && target.is_some_and(|t| same_file(t, &st))));
            if own {
                return Ok(st);
            }
            // Ours, cut short by an earlier attempt (a full disk, an I/O error): made again.
            let interrupted = is_regular(&st)
                && st.st_uid == data_meta.uid()
                && st.st_nlink == 1
                && u64::try_from(st.st_size).is_ok_and(|n| n < total);
            if interrupted {
                tracing::debug!(name, dir = %parent.name, "copying again over an interrupted copy of ours");
            } else {
                tracing::warn!(name, dir = %parent.name, "removing an unexpected file under the server's temporary name");
            }
        }
        // A name planted again between the removal and the creation: remove it again.
        let mut attempts = 0;
        let mut out = loop {
            remove_at(&parent.dir, name)?;
            match rustix::fs::openat(
                &parent.dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Ok(fd) => break File::from(fd),
                Err(Errno::EXIST) if attempts < 3 => attempts += 1,
                Err(e) => return Err(io::Error::from(e).into()),
            }
        };
        io::copy(&mut File::open(data)?.take(total), &mut out)?;
        if self.fsync {
            out.sync_all()?;
        }
        Ok(rustix::fs::fstat(&out).map_err(io::Error::from)?)
    }

    /// `beside`: a copy next to the destination may exist (one was made by this process, or
    /// nobody here knows: after a restart).
    pub(super) fn release_blocking(
        &self,
        id: SessionId,
        dest: &Destination,
        beside: bool,
    ) -> Result<(), StoreError> {
        remove_if_exists(&self.data(id))?;
        if !beside {
            return Ok(());
        }
        if let Some(parent) = open_parent(dest)? {
            let name = partial_name(id);
            remove_at(&parent.dir, &name)?;
            // Left by a crash between linking and renaming it over the target.
            remove_at(&parent.dir, &format!("{name}-publish"))?;
        }
        Ok(())
    }
}

/// The name of a session's copy next to its destination.
/// Test-only fault points of publishing, from `BITSD_TEST_FAULT` (read once per process; never
/// set it in production): `publish-dir-fsync` fails the first fsync of a destination
/// directory after publishing with EIO; `publish-dir-fsync-no-undo` also makes taking the
/// publication back fail, as a second I/O error would.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PublishFault {
    None,
    Fsync,
    FsyncNoUndo,
}

pub(super) fn publish_fault() -> &'static std::sync::Mutex<PublishFault> {
    static ARMED: std::sync::OnceLock<std::sync::Mutex<PublishFault>> = std::sync::OnceLock::new();
    ARMED.get_or_init(|| {
        std::sync::Mutex::new(match std::env::var("BITSD_TEST_FAULT").as_deref() {
            Ok("publish-dir-fsync") => PublishFault::Fsync,
            Ok("publish-dir-fsync-no-undo") => PublishFault::FsyncNoUndo,
            _ => PublishFault::None,
        })
    })
}

/// The test fault point before a destination directory's fsync after publishing: an error to
/// report instead of syncing, and whether taking the publication back must fail too.
pub(super) fn sync_publish_dir_fault() -> (io::Result<()>, bool) {
    let mut armed = publish_fault().lock().unwrap_or_else(|p| p.into_inner());
    let fault = std::mem::replace(&mut *armed, PublishFault::None);
    drop(armed);
    if fault != PublishFault::None {
        tracing::error!("BITSD_TEST_FAULT: failing this fsync with EIO (test fault point)");
        return (
            Err(io::Error::from_raw_os_error(libc::EIO)),
            fault == PublishFault::FsyncNoUndo,
        );
    }
    (Ok(()), false)
}
