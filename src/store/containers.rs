//! Storage containers and their space accounting.

use super::error::not_found;
use super::files::{self, OnDisk};
use super::{to_sql_int, Store, StoreError};
use crate::vvol::catalog::{validate_container_name, Container, ContainerBackend, IoLimits};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use uuid::Uuid;

/// A container's space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ContainerUsage {
    /// Sum of the VVols' logical sizes (including ones mid-create or mid-delete, which still
    /// hold their reservation).
    pub provisioned: u64,
    /// Real bytes on disk (st_blocks × 512 of the VVols' files); 0 for ram containers.
    pub allocated: u64,
    pub capacity: u64,
    /// How much more may be provisioned: capacity × overcommit ratio − provisioned.
    pub free: u64,
}

impl Store {
    /// Inserts the container unless one of that name exists, and says whether it did; an
    /// existing row is left as it is. (The daemon manages containers from its configuration
    /// with [`Store::configure_container`], which also applies changes.)
    pub fn ensure_container(&self, c: &Container) -> Result<bool, StoreError> {
        validate(c)?;
        insert_if_absent(&self.conn(), c)
    }

    /// Inserts a new container; [`StoreError::Exists`] if the name is taken.
    pub fn create_container(&self, c: &Container) -> Result<(), StoreError> {
        if self.ensure_container(c)? {
            Ok(())
        } else {
            Err(StoreError::Exists {
                what: "container",
                id: c.name.clone(),
            })
        }
    }

    /// Make the stored container match the configuration: create it, or take the
    /// configuration's capacity, overcommit ratio and default limits (the configuration is
    /// where containers are managed; existing VVols keep their own limits). Returns the
    /// stored container as it was, if it changed. A container that holds VVols cannot change
    /// backend: they live on the old one.
    pub fn configure_container(&self, c: &Container) -> Result<Option<Container>, StoreError> {
        validate(c)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if insert_if_absent(&tx, c)? {
            tx.commit()?;
            return Ok(None);
        }
        let old = load(&tx, &c.name)?;
        if old == *c {
            return Ok(None);
        }
        let vvols: i64 = tx.query_row(
            "SELECT COUNT(*) FROM vvols WHERE container = ?1",
            [&c.name],
            |r| r.get(0),
        )?;
        if old.backend != c.backend && vvols > 0 {
            return Err(StoreError::InvalidValue(format!(
                "container '{}' holds {vvols} VVols on the {} backend, and the configuration now \
                 says {}: delete them first, or keep the backend",
                c.name,
                backend_str(old.backend),
                backend_str(c.backend)
            )));
        }
        write(
            &tx,
            c,
            "DO UPDATE SET backend = excluded.backend, capacity = excluded.capacity,
             overcommit_ratio = excluded.overcommit_ratio, default_upper = excluded.default_upper,
             default_lower = excluded.default_lower, default_weight = excluded.default_weight",
        )?;
        tx.commit()?;
        Ok(Some(old))
    }

    pub fn container(&self, name: &str) -> Result<Container, StoreError> {
        load(&self.conn(), name)
    }

    /// All containers, by name.
    pub fn containers(&self) -> Result<Vec<Container>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM containers ORDER BY name"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn usage(&self, name: &str) -> Result<ContainerUsage, StoreError> {
        let (container, provisioned, ids) = {
            let conn = self.conn();
            let container = load(&conn, name)?;
            let provisioned = provisioned(&conn, name)?;
            let mut stmt = conn.prepare("SELECT id FROM vvols WHERE container = ?1")?;
            let ids = stmt
                .query_map([name], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            (container, provisioned, ids)
        };
        // Stat the files without holding the connection: other callers need not wait on it.
        let mut allocated = 0u64;
        if container.backend == ContainerBackend::File {
            for id in ids.iter().filter_map(|id| Uuid::parse_str(id).ok()) {
                if let OnDisk::File { allocated: a, .. } = files::stat(&self.vvol_path(name, id))? {
                    allocated = allocated.saturating_add(a);
                }
            }
        }
        Ok(ContainerUsage {
            provisioned,
            allocated,
            capacity: container.capacity,
            free: limit(&container).saturating_sub(provisioned),
        })
    }
}

const COLUMNS: &str =
    "name, backend, capacity, overcommit_ratio, default_upper, default_lower, default_weight";

fn validate(c: &Container) -> Result<(), StoreError> {
    validate_container_name(&c.name)?;
    c.default_limits.validate()?;
    if !(c.overcommit_ratio.is_finite() && c.overcommit_ratio > 0.0) {
        return Err(StoreError::InvalidValue(format!(
            "overcommit ratio {} must be a positive number",
            c.overcommit_ratio
        )));
    }
    to_sql_int(c.capacity, "capacity")?;
    Ok(())
}

fn insert_if_absent(conn: &Connection, c: &Container) -> Result<bool, StoreError> {
    Ok(write(conn, c, "DO NOTHING")? == 1)
}

/// Insert `c`; where a container of that name exists, `on_conflict` decides (an SQLite
/// upsert clause). Returns the rows changed.
fn write(conn: &Connection, c: &Container, on_conflict: &str) -> Result<usize, StoreError> {
    Ok(conn.execute(
        &format!(
            "INSERT INTO containers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (name) {on_conflict}"
        ),
        params![
            c.name,
            backend_str(c.backend),
            to_sql_int(c.capacity, "capacity")?,
            c.overcommit_ratio,
            c.default_limits.upper,
            c.default_limits.lower,
            c.default_limits.weight,
        ],
    )?)
}

pub(super) fn load(conn: &Connection, name: &str) -> Result<Container, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM containers WHERE name = ?1"),
        [name],
        from_row,
    )
    .optional()?
    .ok_or_else(|| not_found("container", name))
}

/// Sum of the sizes of every VVol row in the container, whatever its state.
pub(super) fn provisioned(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    let sum: i64 = conn.query_row(
        "SELECT coalesce(sum(size), 0) FROM vvols WHERE container = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(sum.max(0) as u64)
}

/// The most that may be provisioned in the container.
pub(super) fn limit(c: &Container) -> u64 {
    // `as` saturates: a huge ratio means "unlimited", not a wrap-around.
    (c.capacity as f64 * c.overcommit_ratio) as u64
}

fn backend_str(b: ContainerBackend) -> &'static str {
    match b {
        ContainerBackend::File => "file",
        ContainerBackend::Ram => "ram",
        ContainerBackend::Rated => "rated",
    }
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Container> {
    let backend: String = r.get(1)?;
    let backend = match backend.as_str() {
        "ram" => ContainerBackend::Ram,
        "rated" => ContainerBackend::Rated,
        // The CHECK constraint allows nothing else.
        _ => ContainerBackend::File,
    };
    Ok(Container {
        name: r.get(0)?,
        backend,
        capacity: r.get::<_, i64>(2)?.max(0) as u64,
        overcommit_ratio: r.get(3)?,
        default_limits: IoLimits {
            upper: r.get(4)?,
            lower: r.get(5)?,
            weight: r.get(6)?,
        },
    })
}
