//! Creating, deleting and resizing VVols: the operations that change a row and a data file
//! together. Each runs as durable steps (a commit, an fsynced file change, a commit), so a
//! crash between any two leaves a state `reconcile` resolves:
//!
//! - create: row 'creating' → sparse file → row 'ready'. The id is returned only after the
//!   last step, so reconcile may roll back anything still 'creating'.
//! - delete: row 'deleting' → remove file → delete row. Once 'deleting', the VVol is gone for
//!   callers and reconcile finishes the job.
//! - resize (grow only): row gets the new size → file extended. A crash between leaves the
//!   file shorter than the row, which reconcile fixes by extending it (sparse, loses nothing).
//!   The other order would leave a file longer than its row, which nothing may safely fix:
//!   truncating could cut data, and FileDevice refuses to open a file larger than its LU.
//!
//! The steps are separate functions so the crash tests can stop between them.

use super::error::not_found;
use super::{containers, files, now_secs, to_sql_int, vvols, Store, StoreError};
use crate::vvol::catalog::{
    validate_metadata, validate_size, ContainerBackend, IoLimits, Vvol, VvolType,
};
use rusqlite::{params, TransactionBehavior};
use std::collections::BTreeMap;
use uuid::Uuid;

impl Store {
    /// Creates a VVol (and, in a file container, its sparse data file). `limits: None` copies
    /// the container's defaults into the VVol; later changes to the defaults do not touch it.
    /// Metadata entries with an empty value are skipped (an empty value means "no key").
    pub fn create_vvol(
        &self,
        container: &str,
        vvol_type: VvolType,
        size: u64,
        block_size: u32,
        limits: Option<IoLimits>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Vvol, StoreError> {
        let (vvol, backend) =
            self.create_begin(container, vvol_type, size, block_size, limits, metadata)?;
        let finished = if backend == ContainerBackend::File {
            self.create_file(&vvol)
        } else {
            Ok(())
        }
        .and_then(|()| self.create_finish(vvol.id));
        if let Err(e) = finished {
            // Undo now rather than at the next start. If the undo fails too, the row stays
            // 'creating' and reconcile retries it.
            if let Err(undo) = self.rollback_create(&vvol, backend) {
                tracing::error!("vvol {}: undoing a failed create: {undo}", vvol.id);
            }
            return Err(e);
        }
        Ok(vvol)
    }

    /// Step 1: validate, check space, commit the row as 'creating'.
    pub(super) fn create_begin(
        &self,
        container: &str,
        vvol_type: VvolType,
        size: u64,
        block_size: u32,
        limits: Option<IoLimits>,
        metadata: BTreeMap<String, String>,
    ) -> Result<(Vvol, ContainerBackend), StoreError> {
        validate_size(size, block_size)?;
        if let Some(l) = &limits {
            l.validate()?;
        }
        for (k, v) in &metadata {
            validate_metadata(k, v)?;
        }
        let metadata: BTreeMap<String, String> = metadata
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();

        let mut conn = self.conn();
        // Immediate: the space check and the insert must see the same provisioned total.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let c = containers::load(&tx, container)?;
        check_space(&c, containers::provisioned(&tx, container)?, size)?;
        let vvol = Vvol {
            id: Uuid::new_v4(),
            container: container.to_string(),
            vvol_type,
            size,
            block_size,
            created: now_secs(),
            limits: limits.unwrap_or(c.default_limits),
            metadata,
        };
        let id = vvol.id.to_string();
        tx.execute(
            &format!(
                "INSERT INTO vvols ({}, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'creating')",
                vvols::COLUMNS
            ),
            params![
                id,
                vvol.container,
                vvol_type.as_str(),
                to_sql_int(size, "size")?,
                block_size,
                to_sql_int(vvol.created, "creation time")?,
                vvol.limits.upper,
                vvol.limits.lower,
                vvol.limits.weight,
            ],
        )?;
        for (k, v) in &vvol.metadata {
            tx.execute(
                "INSERT INTO vvol_metadata (vvol, key, value) VALUES (?1, ?2, ?3)",
                params![id, k, v],
            )?;
        }
        tx.commit()?;
        Ok((vvol, c.backend))
    }

    /// Step 2 (file containers): the sparse data file, durable with its directory entry.
    pub(super) fn create_file(&self, vvol: &Vvol) -> Result<(), StoreError> {
        files::create_sparse(&self.vvol_path(&vvol.container, vvol.id), vvol.size)
    }

    /// Step 3: the VVol exists.
    pub(super) fn create_finish(&self, id: Uuid) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vvols SET state = 'ready' WHERE id = ?1 AND state = 'creating'",
            [id.to_string()],
        )?;
        Ok(())
    }

    fn rollback_create(&self, vvol: &Vvol, backend: ContainerBackend) -> Result<(), StoreError> {
        if backend == ContainerBackend::File {
            files::remove(&self.vvol_path(&vvol.container, vvol.id))?;
        }
        self.delete_row(vvol.id)
    }

    /// Deletes a VVol and its data file. Refused with [`StoreError::Bound`] while any binding
    /// row names it.
    pub fn delete_vvol(&self, id: Uuid) -> Result<(), StoreError> {
        let (container, backend) = self.delete_begin(id)?;
        if backend == ContainerBackend::File {
            files::remove(&self.vvol_path(&container, id))?;
        }
        self.delete_row(id)
    }

    /// Step 1: check it is unbound and mark it 'deleting' (gone for callers from here on).
    pub(super) fn delete_begin(&self, id: Uuid) -> Result<(String, ContainerBackend), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let vvol = vvols::load(&tx, id)?;
        let bound: i64 = tx.query_row(
            "SELECT count(*) FROM bindings WHERE vvol = ?1",
            [id.to_string()],
            |r| r.get(0),
        )?;
        if bound > 0 {
            return Err(StoreError::Bound(id));
        }
        let backend = containers::load(&tx, &vvol.container)?.backend;
        tx.execute(
            "UPDATE vvols SET state = 'deleting' WHERE id = ?1",
            [id.to_string()],
        )?;
        tx.commit()?;
        Ok((vvol.container, backend))
    }

    /// Last step of delete (and of a rolled-back create): the row and its metadata go.
    pub(super) fn delete_row(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM vvol_metadata WHERE vvol = ?1",
            [id.to_string()],
        )?;
        tx.execute("DELETE FROM vvols WHERE id = ?1", [id.to_string()])?;
        tx.commit()?;
        Ok(())
    }

    /// Grows a VVol to `new_size` bytes. The same size again is a no-op (so a caller may
    /// retry a resize that a crash interrupted); smaller is [`StoreError::Shrink`].
    ///
    /// On NoSpace, `available` is the largest size this VVol could grow to.
    pub fn resize_vvol(&self, id: Uuid, new_size: u64) -> Result<Vvol, StoreError> {
        let (old, backend) = self.resize_begin(id, new_size)?;
        if backend == ContainerBackend::File && new_size > old.size {
            if let Err(e) = files::extend(&self.vvol_path(&old.container, id), new_size) {
                // Put the row back so it still matches the file; if even that fails, the row
                // is larger than the file and reconcile extends the file at the next start.
                if let Err(undo) = self.set_size(id, old.size) {
                    tracing::error!("vvol {id}: undoing a failed resize: {undo}");
                }
                return Err(e);
            }
        }
        self.vvol(id)
    }

    /// Step 1 of resize: validate, check space, commit the new size. Returns the VVol as it was.
    pub(super) fn resize_begin(
        &self,
        id: Uuid,
        new_size: u64,
    ) -> Result<(Vvol, ContainerBackend), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let vvol = vvols::load(&tx, id)?;
        validate_size(new_size, vvol.block_size)?;
        if new_size < vvol.size {
            return Err(StoreError::Shrink {
                id,
                size: vvol.size,
                requested: new_size,
            });
        }
        let c = containers::load(&tx, &vvol.container)?;
        if new_size > vvol.size {
            let others = containers::provisioned(&tx, &vvol.container)?.saturating_sub(vvol.size);
            check_space(&c, others, new_size)?;
            tx.execute(
                "UPDATE vvols SET size = ?2 WHERE id = ?1",
                params![id.to_string(), to_sql_int(new_size, "size")?],
            )?;
        }
        tx.commit()?;
        Ok((vvol, c.backend))
    }

    fn set_size(&self, id: Uuid, size: u64) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE vvols SET size = ?2 WHERE id = ?1",
            params![id.to_string(), to_sql_int(size, "size")?],
        )?;
        if n == 0 {
            return Err(not_found("vvol", id));
        }
        Ok(())
    }
}

/// Refuses `size` more bytes when `provisioned` are already taken in container `c`.
fn check_space(
    c: &crate::vvol::catalog::Container,
    provisioned: u64,
    size: u64,
) -> Result<(), StoreError> {
    let available = containers::limit(c).saturating_sub(provisioned);
    if size > available || i64::try_from(size).is_err() {
        return Err(StoreError::NoSpace {
            requested: size,
            available,
        });
    }
    Ok(())
}
