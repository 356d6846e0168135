//! Bringing the database and the data files back into agreement at open, after whatever a
//! crash interrupted (see `lifecycle.rs` for the steps):
//!
//! - 'creating' rows: the create never returned, nobody knows the id: remove file and row.
//! - 'deleting' rows: the delete was accepted: finish it (remove file, then row).
//! - 'ready' rows: a missing file is reported, never "fixed" by dropping the row (that would
//!   hide lost data); a file shorter than the row (interrupted resize) is extended; a file
//!   longer than the row cannot come from the store, so it is reported and left alone.
//! - `.img` files under `containers/` that no row names are moved to `orphans/<container>/`
//!   and reported: they may be someone's data, so they are never deleted.
//!
//! Repairs are logged; what needs an operator is kept in [`Store::problems`].

use super::files::{self, OnDisk};
use super::{lock, Store, StoreError, CONTAINERS_DIR, ORPHANS_DIR};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use uuid::Uuid;

/// Something reconcile found and could not (or should not) repair by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// A ready VVol's data file is missing. The row is kept so the loss stays visible.
    MissingFile { vvol: Uuid, path: PathBuf },
    /// A ready VVol's path holds something other than a regular file.
    NotAFile { vvol: Uuid, path: PathBuf },
    /// A data file is longer than its VVol: not something the store does, so left alone.
    FileLarger {
        vvol: Uuid,
        path: PathBuf,
        file_len: u64,
        size: u64,
    },
    /// A file no VVol owns was moved out of the data directory's way.
    OrphanMoved { from: PathBuf, to: PathBuf },
    /// A repair failed; it is tried again at the next start.
    RepairFailed { what: String, error: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingFile { vvol, path } => {
                write!(f, "vvol {vvol}: data file {} is missing", path.display())
            }
            Problem::NotAFile { vvol, path } => {
                write!(f, "vvol {vvol}: {} is not a regular file", path.display())
            }
            Problem::FileLarger {
                vvol,
                path,
                file_len,
                size,
            } => write!(
                f,
                "vvol {vvol}: data file {} is {file_len} bytes, larger than the vvol's {size}",
                path.display()
            ),
            Problem::OrphanMoved { from, to } => write!(
                f,
                "{} belonged to no vvol and was moved to {}",
                from.display(),
                to.display()
            ),
            Problem::RepairFailed { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

/// A VVol row as reconcile needs it.
struct RowState {
    id: String,
    container: String,
    file_backed: bool,
    size: u64,
    state: String,
}

impl Store {
    pub(super) fn reconcile(&self) -> Result<(), StoreError> {
        let rows = self.row_states()?;
        let mut problems = Vec::new();
        // Every path a row names, whatever its state: a file whose removal failed stays put
        // for the next attempt instead of being taken for an orphan.
        let mut owned = HashSet::new();
        for row in &rows {
            let path = self
                .container_dir(&row.container)
                .join(format!("{}.img", row.id));
            if row.file_backed {
                owned.insert(path.clone());
            }
            let problem = match Uuid::parse_str(&row.id) {
                Err(_) => Some(Problem::RepairFailed {
                    what: format!("vvol row '{}'", row.id),
                    error: "the id is not a UUID".into(),
                }),
                Ok(id) if row.state == "ready" => {
                    if row.file_backed {
                        check_ready(id, path, row.size)
                    } else {
                        None
                    }
                }
                Ok(id) => self.finish_interrupted(id, row, path).err(),
            };
            if let Some(p) = problem {
                tracing::error!("metadata store: {p}");
                problems.push(p);
            }
        }
        for p in self.move_orphans(&owned) {
            tracing::error!("metadata store: {p}");
            problems.push(p);
        }
        *lock(&self.problems) = problems;
        Ok(())
    }

    fn row_states(&self) -> Result<Vec<RowState>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT v.id, v.container, c.backend = 'file', v.size, v.state
             FROM vvols v JOIN containers c ON c.name = v.container ORDER BY v.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RowState {
                id: r.get(0)?,
                container: r.get(1)?,
                file_backed: r.get(2)?,
                size: r.get::<_, i64>(3)?.max(0) as u64,
                state: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rolls back an interrupted create or finishes an interrupted delete: both end with
    /// neither file nor row.
    fn finish_interrupted(&self, id: Uuid, row: &RowState, path: PathBuf) -> Result<(), Problem> {
        let result = if row.file_backed {
            files::remove(&path)
        } else {
            Ok(())
        }
        .and_then(|()| self.delete_row(id));
        match result {
            Ok(()) => {
                let done = if row.state == "creating" {
                    "rolled back the interrupted create of"
                } else {
                    "finished the interrupted delete of"
                };
                tracing::warn!("metadata store: {done} vvol {id}");
                Ok(())
            }
            Err(e) => Err(Problem::RepairFailed {
                what: format!("vvol {id} ({})", row.state),
                error: e.to_string(),
            }),
        }
    }

    /// Moves every `.img` under `containers/` that `owned` does not list to `orphans/`.
    fn move_orphans(&self, owned: &HashSet<PathBuf>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let root = self.data_dir.join(CONTAINERS_DIR);
        let scan = files::subdirs(&root).and_then(|dirs| {
            let mut found = Vec::new();
            for dir in dirs {
                found.extend(files::images_in(&dir)?);
            }
            Ok(found)
        });
        let found = match scan {
            Ok(f) => f,
            Err(e) => {
                problems.push(Problem::RepairFailed {
                    what: format!("scanning {} for orphans", root.display()),
                    error: e.to_string(),
                });
                return problems;
            }
        };
        for path in found.into_iter().filter(|p| !owned.contains(p)) {
            // Keep the container's name in the destination: it says where the file came from.
            let container = path
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            let dest_dir = self.data_dir.join(ORPHANS_DIR).join(container);
            problems.push(match files::move_aside(&path, &dest_dir) {
                Ok(to) => Problem::OrphanMoved { from: path, to },
                Err(e) => Problem::RepairFailed {
                    what: format!("moving orphan {}", path.display()),
                    error: e.to_string(),
                },
            });
        }
        problems
    }
}

/// Checks a ready, file-backed VVol's data file against its row.
fn check_ready(id: Uuid, path: PathBuf, size: u64) -> Option<Problem> {
    match files::stat(&path) {
        Ok(OnDisk::Missing) => Some(Problem::MissingFile { vvol: id, path }),
        Ok(OnDisk::NotAFile) => Some(Problem::NotAFile { vvol: id, path }),
        Ok(OnDisk::File { len, .. }) if len > size => Some(Problem::FileLarger {
            vvol: id,
            path,
            file_len: len,
            size,
        }),
        Ok(OnDisk::File { len, .. }) if len < size => match files::extend(&path, size) {
            Ok(()) => {
                tracing::warn!(
                    "metadata store: vvol {id}: extended its data file from {len} to {size} \
                     bytes (an interrupted resize)"
                );
                None
            }
            Err(e) => Some(Problem::RepairFailed {
                what: format!("vvol {id}: extending {}", path.display()),
                error: e.to_string(),
            }),
        },
        Ok(OnDisk::File { .. }) => None,
        Err(e) => Some(Problem::RepairFailed {
            what: format!("vvol {id}: checking its data file"),
            error: e.to_string(),
        }),
    }
}
