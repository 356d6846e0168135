//! The VVols' data files: every filesystem step the store takes, each made durable before it
//! returns (file data and the directory entry), because the database commit that follows it
//! assumes the step can no longer be undone by a power loss.

use super::error::io_at;
use super::StoreError;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Flushes a directory so the entries just created, renamed or removed in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Creates `dir` (and missing parents), syncing each parent that gained an entry.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_at(dir)(e)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Creates a new sparse file of `size` bytes. Refuses to touch an existing file: a fresh
/// UUID never collides, so an existing file is someone's data.
pub(super) fn create_sparse(path: &Path, size: u64) -> Result<(), StoreError> {
    let dir = parent(path)?;
    ensure_dir(dir)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_at(path))?;
    // set_len leaves a hole: the file costs no disk space until the guest writes.
    file.set_len(size).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))?;
    sync_dir(dir)
}

/// Removes a file; a missing one is fine (the step may have run before a crash), and so is a
/// parent that is not a directory (then the file cannot exist either).
pub(super) fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) => {}
        Err(e) => return Err(io_at(path)(e)),
    }
    match parent(path) {
        Ok(dir) if dir.is_dir() => sync_dir(dir),
        _ => Ok(()),
    }
}

/// Grows a file to `size` bytes (sparsely). Never shrinks.
pub(super) fn extend(path: &Path, size: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    if len < size {
        file.set_len(size).map_err(io_at(path))?;
        file.sync_all().map_err(io_at(path))?;
    }
    Ok(())
}

/// What is on disk at a VVol's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDisk {
    Missing,
    NotAFile,
    File { len: u64, allocated: u64 },
}

pub(super) fn stat(path: &Path) -> Result<OnDisk, StoreError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(OnDisk::File {
            len: m.len(),
            // st_blocks counts 512-byte units whatever the filesystem block size.
            allocated: m.blocks().saturating_mul(512),
        }),
        Ok(_) => Ok(OnDisk::NotAFile),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(OnDisk::Missing),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Moves `path` into `dest_dir` under its own name, or with a `.N` suffix if that is taken,
/// and returns where it went. Used for files the database does not know: never delete them.
pub(super) fn move_aside(path: &Path, dest_dir: &Path) -> Result<PathBuf, StoreError> {
    ensure_dir(dest_dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let mut dest = dest_dir.join(&name);
    let mut n = 1u32;
    while dest.exists() {
        dest = dest_dir.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &dest).map_err(io_at(path))?;
    sync_dir(dest_dir)?;
    sync_dir(parent(path)?)?;
    Ok(dest)
}

/// The entries directly inside `dir` that `keep` accepts, sorted (none if `dir` does not
/// exist).
fn entries_in(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_at(dir))?.path();
        if keep(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The `.img` files directly inside `dir`.
pub(super) fn images_in(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    entries_in(dir, |p| p.extension().is_some_and(|e| e == "img"))
}

/// The subdirectories of `dir`.
pub(super) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    entries_in(dir, Path::is_dir)
}

fn parent(path: &Path) -> Result<&Path, StoreError> {
    path.parent().ok_or_else(|| StoreError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory"),
    })
}
