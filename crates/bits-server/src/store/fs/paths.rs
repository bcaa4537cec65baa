//! Reaching names below a vdir root without leaving it or following a link planted there:
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it, a walk with
//! `O_NOFOLLOW` otherwise; what a destination holds, and operations relative to its directory.

use super::*;

/// Whether the kernel lacks `openat2` (Linux < 5.6, or a seccomp filter that hides it); then
/// [`open_beneath`] walks component by component.
pub(super) static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory `root` itself. It is the operator's to choose, so a symbolic link
/// there is followed; `None` if it does not exist (a per-user root not made yet).
pub(super) fn open_root(root: &Path) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens `rel` (slash-separated, relative) below the directory `root` with `flags`,
/// following symbolic links only while they stay below `root`: a relative link inside the
/// root is followed, one that leads out of it (an absolute link, `..` past the root, a
/// `/proc` magic link) is refused. Uploads and downloads both come through here, so they
/// agree on what a root contains. `None` if `rel` does not exist, a component is not a
/// directory, or it leaves the root.
///
/// Without `openat2` every component is opened with `O_NOFOLLOW`: stricter (no symbolic link
/// at all is followed), never looser.
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &str,
    flags: OFlags,
) -> io::Result<Option<OwnedFd>> {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Ok(None);
    }
    let rel = if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    };
    let flags = flags | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: a rename elsewhere raced the lookup (the kernel cannot rule out an escape).
        for _ in 0..8 {
            match rustix::fs::openat2(root, rel.as_str(), flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                // Older container runtimes deny unknown system calls with EPERM.
                Err(Errno::PERM) => break,
                Err(e) => return refused_as_none(e),
            }
        }
    }
    walk_nofollow(root, &parts, flags)
}

/// [`open_beneath`] without `openat2`: one `openat` per component, none of them a link.
pub(super) fn walk_nofollow(
    root: BorrowedFd<'_>,
    parts: &[&str],
    flags: OFlags,
) -> io::Result<Option<OwnedFd>> {
    let Some((last, dirs)) = parts.split_last() else {
        return match rustix::fs::openat(root, ".", flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) => refused_as_none(e),
        };
    };
    let mut dir: Option<OwnedFd> = None;
    for part in dirs {
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(at, *part, dir_flags, Mode::empty()) {
            Ok(fd) => dir = Some(fd),
            Err(e) => return refused_as_none(e),
        }
    }
    let at = dir.as_ref().map_or(root, |d| d.as_fd());
    match rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => refused_as_none(e),
    }
}

/// Missing, not a directory, a link refused, or out of the root: all `None`.
pub(super) fn refused_as_none(e: Errno) -> io::Result<Option<OwnedFd>> {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::XDEV | Errno::LOOP => Ok(None),
        e => Err(e.into()),
    }
}

/// The directory a destination is published into, opened without leaving its root, and the
/// destination's name in it.
pub(super) struct Parent {
    pub(super) dir: File,
    pub(super) name: String,
}

/// Flags of a destination directory: read-only, so it can be fsynced.
pub(super) const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY);

/// `None` when the root or a directory on the way is missing, or the way leaves the root.
pub(super) fn open_parent(dest: &Destination) -> io::Result<Option<Parent>> {
    let (dir, name) = match dest.path.trim_matches('/').rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", dest.path.trim_matches('/')),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Ok(None);
    }
    let Some(root) = open_root(Path::new(&dest.root))? else {
        return Ok(None);
    };
    Ok(
        open_beneath(root.as_fd(), dir, DIR_FLAGS)?.map(|fd| Parent {
            dir: File::from(fd),
            name: name.to_string(),
        }),
    )
}

/// The entry `name` in `dir` itself (a link is not followed); `None` if there is none.
pub(super) fn stat_at(dir: &File, name: &str) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the entry `name` from `dir`, whatever it is (unlink never follows a link); an
/// empty directory is removed too.
pub(super) fn remove_at(dir: &File, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // EISDIR (Linux) or EPERM (POSIX) for a directory; EPERM also for someone else's
        // file in a sticky directory, which is then the error reported.
        Err(e @ (Errno::ISDIR | Errno::PERM)) => {
            match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(Errno::NOTDIR) => Err(e.into()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn is_regular(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

pub(super) fn same_file(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

pub(super) fn inspect_blocking(dest: &Destination) -> Result<DestinationState, StoreError> {
    // A directory on the way that is missing, or that leaves the root, is a missing parent:
    // uploads never create directories, nor publish outside their root.
    let Some(parent) = open_parent(dest)? else {
        return Ok(DestinationState::ParentMissing);
    };
    Ok(match stat_at(&parent.dir, &parent.name)? {
        Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            DestinationState::Directory
        }
        Some(_) => DestinationState::File,
        None => DestinationState::Absent,
    })
}
