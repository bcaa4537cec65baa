//! Reading stored files: representations (size, time, validators) and ranged streams.

use super::*;

/// Bytes read per positioned read when serving a file.
pub(super) const READ_CHUNK: usize = 256 << 10;

/// Size and identity of a local file. The tag names the inode and the exact mtime, so a file
/// replaced or rewritten in place gets a new one.
pub fn representation_of(meta: &fs::Metadata) -> Representation {
    let secs = meta.mtime();
    Representation::at_unix_seconds(
        meta.len(),
        secs,
        format!(
            "\"{:x}-{:x}-{:x}-{:x}\"",
            meta.ino(),
            meta.len(),
            (secs.max(0) as u64).min(crate::store::LAST_HTTP_SECOND),
            meta.mtime_nsec()
        ),
    )
}

/// The regular file at `path` (a path the server owns, such as a stored reply): `None` if it
/// is missing or not a regular file.
pub async fn representation(path: &Path) -> io::Result<Option<Representation>> {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() => Ok(Some(representation_of(&m))),
        Ok(_) => Ok(None),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Bytes `range` of the file at `path`, streamed.
pub async fn file_range(path: &Path, range: std::ops::Range<u64>) -> io::Result<ByteStream> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(io::SeekFrom::Start(range.start)).await?;
    Ok(Box::new(tokio_util::io::ReaderStream::with_capacity(
        file.take(range.end - range.start),
        READ_CHUNK,
    )))
}

/// Bytes `range` of an open file, by positioned reads: several ranges of one answer share the
/// descriptor without sharing a file offset.
pub(super) fn read_at_stream(file: Arc<File>, range: std::ops::Range<u64>) -> ByteStream {
    Box::new(Box::pin(futures_util::stream::try_unfold(
        (file, range),
        |(file, range)| async move {
            if range.is_empty() {
                return Ok(None);
            }
            let want = (range.end - range.start).min(READ_CHUNK as u64) as usize;
            let (file, buf) = spawn_blocking(move || {
                // Read into the vector's spare capacity: no zeroing of memory the read
                // overwrites anyway.
                let mut buf = Vec::with_capacity(want);
                loop {
                    match rustix::io::pread(
                        &*file,
                        rustix::buffer::spare_capacity(&mut buf),
                        range.start,
                    ) {
                        Err(Errno::INTR) => continue,
                        other => {
                            other.map_err(io::Error::from)?;
                            break;
                        }
                    }
                }
                Ok::<_, io::Error>((file, buf))
            })
            .await
            .map_err(io::Error::other)??;
            if buf.is_empty() {
                // Shorter than when it was measured: end the answer short, the client sees
                // the Content-Length unmet.
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                ));
            }
            let next = range.start + buf.len() as u64..range.end;
            Ok(Some((Bytes::from(buf), (file, next))))
        },
    )))
}

/// A published file opened once, by the check that decided to serve it, and read from that
/// descriptor: what is served is what was checked, whatever happens to its name meanwhile.
pub(super) struct OpenFile {
    pub(super) file: Arc<File>,
    pub(super) rep: Representation,
}

#[async_trait]
impl PublishedFile for OpenFile {
    fn representation(&self) -> &Representation {
        &self.rep
    }

    async fn read(&self, range: std::ops::Range<u64>) -> Result<ByteStream, StoreError> {
        Ok(read_at_stream(self.file.clone(), range))
    }
}

/// The published file `rel_path` below `root`, opened for reading if it is a regular file
/// reached without leaving the root (see [`open_beneath`]); `None` otherwise, including when
/// the root itself does not exist yet.
pub async fn open_published(root: &Path, rel_path: &str) -> io::Result<Option<File>> {
    let (root, rel) = (root.to_path_buf(), rel_path.to_string());
    spawn_blocking(move || {
        let Some(root) = open_root(&root)? else {
            return Ok(None);
        };
        // O_NONBLOCK: a FIFO planted in the root must not hang the open.
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let Some(fd) = open_beneath(root.as_fd(), &rel, flags)? else {
            return Ok(None);
        };
        let file = File::from(fd);
        Ok(file.metadata()?.is_file().then_some(file))
    })
    .await
    .map_err(io::Error::other)?
}
