//! A disk backed by a regular file, doing its I/O through io_uring (see [`uring`]: a few rings
//! shared by all file devices) or, where the kernel will not allow that, through a few plain
//! pread/pwrite threads per device (see [`threaded`]).
//!
//! Aligned transfers can bypass the page cache through a second, `O_DIRECT` descriptor on the
//! same file (see [`direct`]); the rest stay buffered.
//!
//! Sizing: a new file is created sparse at the configured size. An existing file smaller than
//! the configured size is extended (sparsely), so a LUN can be grown by editing its size; a
//! larger one is refused, because shrinking would silently cut off data.

mod direct;
pub mod local;
mod provision;
mod request;
#[cfg(test)]
mod tests;
mod threaded;
mod uring;

use super::{check_range, BackendError, BlockDevice, Extent, IoResult};
use bytes::{Bytes, BytesMut};
use direct::Files;
pub use direct::{DioAlign, IoCounts};
use request::{answer, Request};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use threaded::Threads;
use tokio::sync::oneshot;
use uring::Ring;

/// A file-backed block device. On io_uring it shares one of a few process-wide rings with other
/// devices, and dropping it returns at once: I/O still in flight completes on the ring, which
/// keeps the files open until then. On the thread fallback it has its own threads, and dropping
/// it blocks until in-flight I/O has completed and they have exited; drop it from
/// `spawn_blocking` if that matters.
pub struct FileDevice {
    /// Only grows ([`FileDevice::grow`]), and before the LU's capacity does.
    size: AtomicU64,
    /// The file system punches holes (see [`provision::can_punch`]).
    thin: bool,
    engine: Engine,
    /// The open file (buffered, and `O_DIRECT` when in use), shared with the engine; the
    /// buffered descriptor also serves hole punching and hole finding (see [`provision`]).
    files: Arc<Files>,
}

enum Engine {
    Ring(Ring),
    Threads(Threads),
}

/// Which I/O engine a [`FileDevice`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring, falling back to threads (with a warning) if the kernel refuses it.
    #[default]
    Auto,
    /// Always the pread/pwrite threads: for debugging, comparisons, and testing the fallback.
    Threads,
}

/// Whether file devices use direct I/O unless configured otherwise (`direct_io` in the
/// configuration). Off: measured on a VM's ext4/virtio disk (README, "Performance"), the page
/// cache served 4 KiB random I/O at QD 16 faster than the disk did direct, or as fast, whether
/// the image was cached or not.
pub const DEFAULT_DIRECT_IO: bool = false;

/// How a [`FileDevice`] does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub engine: EngineChoice,
    /// Send transfers that meet the kernel's alignment through `O_DIRECT` (where the file
    /// system allows it), bypassing the page cache; the others stay buffered.
    pub direct_io: bool,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            engine: EngineChoice::Auto,
            direct_io: DEFAULT_DIRECT_IO,
        }
    }
}

impl From<EngineChoice> for FileOptions {
    fn from(engine: EngineChoice) -> FileOptions {
        FileOptions {
            engine,
            ..FileOptions::default()
        }
    }
}

impl FileDevice {
    /// Opens the file at `path` as a device of `size` bytes. With `create`, a missing file is
    /// created (sparse); without it, the file must exist. See the module docs for sizing.
    pub fn open(path: &Path, size: u64, create: bool) -> Result<FileDevice, BackendError> {
        Self::open_with(path, size, create, FileOptions::default())
    }

    /// Like [`FileDevice::open`], choosing the I/O engine and direct I/O.
    pub fn open_with(
        path: &Path,
        size: u64,
        create: bool,
        options: impl Into<FileOptions>,
    ) -> Result<FileDevice, BackendError> {
        Self::open_inner(path, size, create, options.into(), direct::open_direct)
    }

    /// [`FileDevice::open_with`] with the `O_DIRECT` open replaceable, for tests.
    fn open_inner(
        path: &Path,
        size: u64,
        create: bool,
        options: FileOptions,
        open_direct: impl FnOnce(&Path) -> io::Result<File>,
    ) -> Result<FileDevice, BackendError> {
        let file = open_sized(path, size, create)?;
        let files = Arc::new(Files::new(file, path, options.direct_io, open_direct));
        let engine = match options.engine {
            EngineChoice::Auto => match Ring::start(files.clone()) {
                Ok(ring) => Engine::Ring(ring),
                Err(e) => {
                    static WARNED: Once = Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(
                            "io_uring unavailable ({e}); file devices fall back to threads"
                        )
                    });
                    Engine::Threads(Threads::start(files.clone())?)
                }
            },
            EngineChoice::Threads => Engine::Threads(Threads::start(files.clone())?),
        };
        Ok(FileDevice {
            size: AtomicU64::new(size),
            thin: provision::can_punch(&files.buffered),
            engine,
            files,
        })
    }

    /// Extend the device (and its file, sparsely) to `size` bytes; a smaller size is refused.
    /// The new size is in place before this returns, so a capacity raised afterwards never
    /// admits a range the device would refuse.
    pub fn grow(&self, size: u64) -> IoResult<()> {
        let current = self.size();
        if size < current {
            return Err(invalid(format!(
                "cannot shrink a {current}-byte device to {size} bytes"
            )));
        }
        if self.files.buffered.metadata()?.len() < size {
            self.files.buffered.set_len(size)?;
        }
        self.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    /// The alignment a transfer needs to go direct; None when the device is buffered only
    /// (direct I/O not asked for, or refused by the file system).
    pub fn direct_align(&self) -> Option<DioAlign> {
        self.files.direct_align()
    }

    /// Use direct I/O only if whole logical blocks of `block_size` bytes meet the file's
    /// alignment. Smaller blocks would send some transfers buffered and some direct to the
    /// same file, and a buffered read racing a direct write can leave a stale page in the page
    /// cache; then the device stays buffered (with a warning), which is always coherent.
    pub fn fit_direct_io_to(&self, block_size: u32) {
        if let Some(a) = self.direct_align() {
            if a.offset > block_size {
                tracing::warn!(
                    "direct_io: {block_size}-byte blocks are below the file's {}-byte direct-I/O                      alignment; buffered I/O only",
                    a.offset
                );
                self.files.stop_direct();
            }
        }
    }

    /// How many transfers went through each descriptor so far.
    pub fn io_counts(&self) -> IoCounts {
        self.files.counts()
    }

    /// Whether I/O goes through io_uring (false: the thread fallback).
    pub fn uses_io_uring(&self) -> bool {
        matches!(self.engine, Engine::Ring(_))
    }

    fn submit(&self, request: Request) -> IoResult<()> {
        match &self.engine {
            Engine::Ring(ring) => ring.submit(request),
            Engine::Threads(threads) => threads.submit(request),
        }
    }

    /// A token that dies when the I/O thread(s) serving the device have exited.
    #[cfg(test)]
    fn worker_token(&self) -> std::sync::Weak<()> {
        match &self.engine {
            Engine::Ring(ring) => ring.alive_token(),
            Engine::Threads(threads) => threads.alive_token(),
        }
    }

    /// A token that dies when the device's files have been closed: once the device is gone and
    /// nothing it submitted is queued or in flight anymore.
    #[cfg(test)]
    fn files_token(&self) -> std::sync::Weak<Files> {
        Arc::downgrade(&self.files)
    }

    /// Which shared ring serves the device; None on the thread fallback or a private ring.
    #[cfg(test)]
    fn ring_index(&self) -> Option<usize> {
        match &self.engine {
            Engine::Ring(ring) => ring.index(),
            Engine::Threads(_) => None,
        }
    }
}

/// Opens (or creates) the backing file and brings it to `size` without writing any data.
fn open_sized(path: &Path, size: u64, create: bool) -> IoResult<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(format!("{} is not a regular file", path.display())));
    }
    let len = meta.len();
    if len > size {
        return Err(invalid(format!(
            "{} is {len} bytes, larger than the configured {size}; refusing to shrink it",
            path.display()
        )));
    }
    if len < size {
        // set_len leaves a hole: a new 1 TiB LUN costs no disk space until written.
        file.set_len(size)?;
        if len > 0 {
            tracing::info!("extended {} from {len} to {size} bytes", path.display());
        }
    }
    Ok(file)
}

fn invalid(msg: String) -> BackendError {
    BackendError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    async fn read(&self, offset: u64, buf: BytesMut) -> IoResult<BytesMut> {
        check_range(self.size(), offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(buf);
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Read { offset, buf, reply })?;
        answer(rx).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoResult<()> {
        check_range(self.size(), offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Write {
            offset,
            data,
            fua,
            reply,
        })?;
        answer(rx).await
    }

    async fn flush(&self) -> IoResult<()> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Flush { reply })?;
        answer(rx).await
    }

    fn thin(&self) -> bool {
        self.thin
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range(self.size(), offset, len)?;
        provision::blocking(&self.files, move |f| provision::punch(f, offset, len)).await
    }

    async fn allocation(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        check_range(self.size(), offset, len)?;
        provision::blocking(&self.files, move |f| provision::allocation(f, offset, len)).await
    }
}
