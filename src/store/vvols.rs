//! Reading VVols and changing the rows-only parts of them: metadata and QoS limits.
//!
//! Only 'ready' rows are visible here: a 'creating' VVol's id has not been handed out yet and
//! a 'deleting' one is already gone as far as callers are concerned.

use super::error::not_found;
use super::{containers, Store, StoreError};
use crate::vvol::catalog::{validate_metadata, IoLimits, Vvol, VvolType};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

pub(super) const COLUMNS: &str =
    "id, container, type, size, block_size, created, upper, lower, weight";

impl Store {
    pub fn vvol(&self, id: Uuid) -> Result<Vvol, StoreError> {
        load(&self.conn(), id)
    }

    /// The ready VVols, of one container or all, oldest first.
    pub fn vvols(&self, container: Option<&str>) -> Result<Vec<Vvol>, StoreError> {
        let conn = self.conn();
        if let Some(name) = container {
            containers::load(&conn, name)?;
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM vvols WHERE state = 'ready' AND (?1 IS NULL OR container = ?1)
             ORDER BY created, id"
        ))?;
        let mut vvols = stmt
            .query_map([container], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        // One pass over the metadata table instead of a query per VVol.
        let mut stmt = conn.prepare(
            "SELECT m.vvol, m.key, m.value FROM vvol_metadata m JOIN vvols v ON v.id = m.vvol
             WHERE v.state = 'ready' AND (?1 IS NULL OR v.container = ?1)",
        )?;
        let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for row in stmt.query_map([container], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
        })? {
            let (id, key, value) = row?;
            all.entry(id).or_default().insert(key, value);
        }
        for v in &mut vvols {
            v.metadata = all.remove(&v.id.to_string()).unwrap_or_default();
        }
        Ok(vvols)
    }

    /// Sets one metadata key. An empty value deletes the key, as VASA's
    /// updateVirtualVolumeMetaData does; deleting an absent key is not an error.
    /// Sets (or, with an empty value, removes) every key of `kv`, all or none: each pair is
    /// checked before any is written, and they are written in one transaction.
    pub fn set_metadata(
        &self,
        id: Uuid,
        kv: &BTreeMap<String, String>,
    ) -> Result<Vvol, StoreError> {
        for (key, value) in kv {
            validate_metadata(key, value)?;
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        load(&tx, id)?;
        for (key, value) in kv {
            if value.is_empty() {
                tx.execute(
                    "DELETE FROM vvol_metadata WHERE vvol = ?1 AND key = ?2",
                    params![id.to_string(), key],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO vvol_metadata (vvol, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (vvol, key) DO UPDATE SET value = excluded.value",
                    params![id.to_string(), key, value],
                )?;
            }
        }
        let vvol = load(&tx, id)?;
        tx.commit()?;
        Ok(vvol)
    }

    /// Replaces the VVol's QoS limits.
    pub fn set_limits(&self, id: Uuid, limits: IoLimits) -> Result<Vvol, StoreError> {
        limits.validate()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE vvols SET upper = ?2, lower = ?3, weight = ?4 WHERE id = ?1 AND state = 'ready'",
            params![id.to_string(), limits.upper, limits.lower, limits.weight],
        )?;
        if n == 0 {
            return Err(not_found("vvol", id));
        }
        let vvol = load(&tx, id)?;
        tx.commit()?;
        Ok(vvol)
    }
}

/// A ready VVol with its metadata.
pub(super) fn load(conn: &Connection, id: Uuid) -> Result<Vvol, StoreError> {
    let mut vvol = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM vvols WHERE id = ?1 AND state = 'ready'"),
            [id.to_string()],
            from_row,
        )
        .optional()?
        .ok_or_else(|| not_found("vvol", id))?;
    let mut stmt = conn.prepare("SELECT key, value FROM vvol_metadata WHERE vvol = ?1")?;
    vvol.metadata = stmt
        .query_map([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(vvol)
}

/// A VVol row in [`COLUMNS`] order, without metadata.
pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Vvol> {
    let type_name: String = r.get(2)?;
    let vvol_type = VvolType::parse(&type_name).ok_or_else(|| bad_value(2, &type_name))?;
    Ok(Vvol {
        id: parse_uuid(r, 0)?,
        container: r.get(1)?,
        vvol_type,
        size: r.get::<_, i64>(3)?.max(0) as u64,
        block_size: r.get(4)?,
        created: r.get::<_, i64>(5)?.max(0) as u64,
        limits: IoLimits {
            upper: r.get(6)?,
            lower: r.get(7)?,
            weight: r.get(8)?,
        },
        metadata: BTreeMap::new(),
    })
}

pub(super) fn parse_uuid(r: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = r.get(idx)?;
    Uuid::parse_str(&s).map_err(|_| bad_value(idx, &s))
}

fn bad_value(idx: usize, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        Type::Text,
        format!("unexpected value '{value}'").into(),
    )
}
