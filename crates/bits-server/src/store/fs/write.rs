//! Writing a fragment: the body gathered into bounded batches, each written at its offset on a
//! blocking thread while the next is read.

use super::*;

/// Body chunks waiting for one gather write, with the part of the budget they hold (given
/// back when the batch is dropped: written, failed or abandoned alike).
pub(super) struct Batch {
    pub(super) chunks: Vec<Bytes>,
    pub(super) len: u64,
    pub(super) budget: Arc<BodyBudget>,
    pub(super) reserved: u64,
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.budget.give_back(self.reserved);
    }
}

impl Batch {
    pub(super) fn new(budget: Arc<BodyBudget>) -> Batch {
        Batch {
            chunks: Vec::new(),
            len: 0,
            budget,
            reserved: 0,
        }
    }

    /// Adds a chunk; `false` when the budget could not cover it (it is held anyway, until
    /// the write the caller then starts at once).
    pub(super) fn push(&mut self, chunk: Bytes) -> bool {
        if chunk.is_empty() {
            return true;
        }
        let n = chunk.len() as u64;
        self.len += n;
        self.chunks.push(chunk);
        let covered = self.budget.try_take(n);
        if covered {
            self.reserved += n;
        }
        covered
    }

    pub(super) fn is_full(&self) -> bool {
        self.len >= WRITE_CHUNK as u64 || self.chunks.len() >= vectored::MAX_SLICES
    }

    pub(super) fn take(&mut self) -> Batch {
        std::mem::replace(self, Batch::new(self.budget.clone()))
    }
}

/// A session's data file, opened on first use by whichever write job comes first.
pub(super) struct DataFile {
    pub(super) path: PathBuf,
    pub(super) file: std::sync::OnceLock<File>,
}

impl DataFile {
    pub(super) fn new(path: PathBuf) -> DataFile {
        DataFile {
            path,
            file: std::sync::OnceLock::new(),
        }
    }

    pub(super) fn get(&self) -> io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        Ok(self.file.get_or_init(|| f))
    }
}

/// Writes `batch` at `pos` on the blocking pool, then (with `sync`) makes the file durable.
/// What a batch's write job does after writing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    Nothing,
    /// Start writeback of the batch (a later `fdatasync` of the fragment waits less).
    Writeback,
    /// `fdatasync` the file (the fragment's last batch).
    Sync,
}

pub(super) fn spawn_write(
    file: Arc<DataFile>,
    pos: u64,
    batch: Batch,
    after: After,
) -> JoinHandle<io::Result<u64>> {
    spawn_blocking(move || {
        let f = file.get()?;
        let n = vectored::write_all_at(f, pos, &batch.chunks)?;
        drop(batch);
        match after {
            After::Nothing => {}
            After::Writeback => vectored::start_writeback(f, pos, n),
            After::Sync => f.sync_data()?,
        }
        Ok(n)
    })
}

pub(super) async fn finish(pending: Option<JoinHandle<io::Result<u64>>>) -> io::Result<u64> {
    match pending {
        None => Ok(0),
        Some(h) => h.await.map_err(io::Error::other)?,
    }
}
