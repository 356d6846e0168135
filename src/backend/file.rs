//! A disk backed by a regular file, doing its I/O through io_uring (see [`uring`]) or,
//! where the kernel will not allow that, through a few plain pread/pwrite threads
//! (see [`threaded`]).
//!
//! Sizing: a new file is created sparse at the configured size. An existing file smaller than
//! the configured size is extended (sparsely), so a LUN can be grown by editing its size; a
//! larger one is refused, because shrinking would silently cut off data.

mod provision;
mod request;
#[cfg(test)]
mod tests;
mod threaded;
mod uring;

use super::{check_range, BackendError, BlockDevice, Extent, IoResult};
use bytes::{Bytes, BytesMut};
use request::{answer, Request};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Once};
use threaded::Threads;
use tokio::sync::oneshot;
use uring::Ring;

/// A file-backed block device with its own I/O thread (one ring per device, so devices never
/// queue behind each other). Dropping it blocks the dropping thread until in-flight I/O has
/// completed and the thread has exited; drop it from `spawn_blocking` if that matters.
pub struct FileDevice {
    size: u64,
    engine: Engine,
    /// The open file itself, for hole punching and hole finding (see [`provision`]).
    file: Arc<File>,
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

impl FileDevice {
    /// Opens the file at `path` as a device of `size` bytes. With `create`, a missing file is
    /// created (sparse); without it, the file must exist. See the module docs for sizing.
    pub fn open(path: &Path, size: u64, create: bool) -> Result<FileDevice, BackendError> {
        Self::open_with(path, size, create, EngineChoice::Auto)
    }

    /// Like [`FileDevice::open`], choosing the I/O engine.
    pub fn open_with(
        path: &Path,
        size: u64,
        create: bool,
        choice: EngineChoice,
    ) -> Result<FileDevice, BackendError> {
        let file = Arc::new(open_sized(path, size, create)?);
        let engine = match choice {
            EngineChoice::Auto => match Ring::start(file.clone()) {
                Ok(ring) => Engine::Ring(ring),
                Err(e) => {
                    static WARNED: Once = Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(
                            "io_uring unavailable ({e}); file devices fall back to threads"
                        )
                    });
                    Engine::Threads(Threads::start(file.clone())?)
                }
            },
            EngineChoice::Threads => Engine::Threads(Threads::start(file.clone())?),
        };
        Ok(FileDevice { size, engine, file })
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

    /// A token that dies when the device's I/O thread(s) have exited.
    #[cfg(test)]
    fn worker_token(&self) -> std::sync::Weak<()> {
        match &self.engine {
            Engine::Ring(ring) => ring.alive_token(),
            Engine::Threads(threads) => threads.alive_token(),
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
        self.size
    }

    async fn read(&self, offset: u64, buf: BytesMut) -> IoResult<BytesMut> {
        check_range(self.size, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(buf);
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Read { offset, buf, reply })?;
        answer(rx).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoResult<()> {
        check_range(self.size, offset, data.len() as u64)?;
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
        true
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range(self.size, offset, len)?;
        provision::blocking(&self.file, move |f| provision::punch(f, offset, len)).await
    }

    async fn allocation(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        check_range(self.size, offset, len)?;
        provision::blocking(&self.file, move |f| provision::allocation(f, offset, len)).await
    }
}
