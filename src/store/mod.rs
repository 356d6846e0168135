//! The metadata store: containers, VVols, their metadata and QoS limits, bindings and the
//! PEs' secondary-id counters, in an embedded SQLite database (`<data_dir>/vvold.db`, WAL,
//! `synchronous=FULL`), kept in step with the VVols' data files under
//! `<data_dir>/containers/<container>/<uuid>.img`.
//!
//! Crash safety: every operation that touches both a file and a row does it in steps, each
//! durable before the next starts, with the row's `state` saying how far it got
//! ('creating' / 'ready' / 'deleting'). [`Store::open`] finishes or rolls back whatever a
//! crash interrupted (see `reconcile.rs`), so the database and the files never disagree.
//!
//! The methods block (SQLite and fsync); call them from `spawn_blocking` in async code. The
//! store is `Send + Sync`: one connection behind a mutex, every method takes `&self`.

mod bindings;
mod containers;
mod error;
mod files;
mod lifecycle;
mod lun_limits;
mod pr;
mod reconcile;
mod schema;
mod vvols;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;

pub use bindings::BindingRecord;
pub use containers::ContainerUsage;
pub use error::StoreError;
pub use reconcile::Problem;
pub use schema::SCHEMA_VERSION;

use rusqlite::Connection;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "vvold.db";
/// Where VVol data files live, one directory per container.
pub const CONTAINERS_DIR: &str = "containers";
/// Where files the database does not know are moved (never deleted).
pub const ORPHANS_DIR: &str = "orphans";
const LOCK_FILE: &str = "vvold.lock";

pub struct Store {
    data_dir: PathBuf,
    conn: Mutex<Connection>,
    /// What the last reconcile found that needs an operator.
    problems: Mutex<Vec<Problem>>,
    /// Held (flock) for the store's lifetime: two daemons on one data directory would each
    /// take the other's half-created VVols for crash debris.
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`, migrates the schema and reconciles
    /// the database with the data files.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        files::ensure_dir(data_dir)?;
        let lock = lock_dir(data_dir)?;
        let conn = schema::open(&data_dir.join(DB_FILE))?;
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            conn: Mutex::new(conn),
            problems: Mutex::new(Vec::new()),
            _lock: lock,
        };
        store.reconcile()?;
        Ok(store)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where a file-backed VVol's data lives.
    pub fn vvol_path(&self, container: &str, id: Uuid) -> PathBuf {
        self.container_dir(container).join(format!("{id}.img"))
    }

    fn container_dir(&self, container: &str) -> PathBuf {
        self.data_dir.join(CONTAINERS_DIR).join(container)
    }

    /// The issues the last reconcile (at open) could not repair on its own.
    pub fn problems(&self) -> Vec<Problem> {
        lock(&self.problems).clone()
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }
}

/// Locks a mutex, ignoring poisoning: a panic mid-transaction rolled the transaction back
/// when it unwound, so the connection is consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_dir(data_dir: &Path) -> Result<File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(error::io_at(&path))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(data_dir.to_path_buf()));
        }
        return Err(error::io_at(&path)(err));
    }
    Ok(file)
}

/// SQLite integers are signed; sizes and ids beyond i64::MAX are refused, not wrapped.
fn to_sql_int(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::InvalidValue(format!("{what} {v} is too large")))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
