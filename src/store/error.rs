//! The store's one error type. Each variant says whose fault it is, so the HTTP layer can map
//! it to a status without string matching (see [`StoreError::http_status`]).

use crate::vvol::catalog::CatalogError;
use std::io;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist (or is still being created / already being deleted).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// Creating something that is already there.
    #[error("{what} {id} already exists")]
    Exists { what: &'static str, id: String },
    /// The VVol still has a binding; unbind it first.
    #[error("vvol {0} is bound; unbind it first")]
    Bound(Uuid),
    /// The container's capacity × overcommit ratio would be exceeded.
    #[error("not enough space: {requested} bytes requested, {available} bytes available")]
    NoSpace { requested: u64, available: u64 },
    /// VVols only grow: shrinking would cut off data the guest wrote.
    #[error("vvol {id} is {size} bytes and cannot shrink to {requested}")]
    Shrink { id: Uuid, size: u64, requested: u64 },
    /// A value failed the catalog's shared validation.
    #[error(transparent)]
    Invalid(#[from] CatalogError),
    /// A value the catalog has no rule for is out of range (overcommit ratio, huge numbers).
    #[error("{0}")]
    InvalidValue(String),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The database was written by a newer vvold.
    #[error("database schema version {found} is newer than this vvold supports ({supported})")]
    Schema { found: i64, supported: i64 },
    #[error("metadata database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl StoreError {
    /// The HTTP status a control-plane API should answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } => 404,
            StoreError::Exists { .. } | StoreError::Bound(_) => 409,
            StoreError::NoSpace { .. } => 507,
            StoreError::Shrink { .. } | StoreError::Invalid(_) | StoreError::InvalidValue(_) => 400,
            StoreError::Locked(_) => 503,
            StoreError::Schema { .. } | StoreError::Sqlite(_) | StoreError::Io { .. } => 500,
        }
    }

    /// True when the caller asked for something wrong (4xx), false for server trouble.
    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.http_status())
    }
}

/// Attaches the path to an I/O error, which is what an operator needs to act on it.
pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn not_found(what: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}
