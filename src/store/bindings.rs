//! Persisted bindings and the PEs' secondary-id counters, so that after a restart every
//! binding answers at the same PE and secondary id. The in-memory binding table is the
//! authority while running; it writes through here, one transaction per call.

use super::error::not_found;
use super::{to_sql_int, vvols, Store, StoreError};
use rusqlite::{params, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// One binding as stored: `host` reaches `vvol` through PE `pe` at secondary id `secondary`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BindingRecord {
    pub vvol: Uuid,
    pub host: String,
    pub pe: u16,
    pub secondary: u64,
    /// Being unbound: no new I/O is admitted, in-flight I/O completes.
    pub draining: bool,
}

impl Store {
    /// Records (or updates) the binding of `vvol` for `host` at `pe`. The VVol must exist;
    /// another binding already at (`pe`, `secondary`) is [`StoreError::Exists`].
    pub fn save_binding(
        &self,
        vvol: Uuid,
        host: &str,
        pe: u16,
        secondary: u64,
        draining: bool,
    ) -> Result<(), StoreError> {
        let secondary_sql = to_sql_int(secondary, "secondary id")?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Only ready VVols: binding one mid-delete would resurrect it for a host.
        vvols::load(&tx, vvol)?;
        // Hosts bound to the same VVol through the same PE share its id there; an id must
        // never name two VVols.
        let taken: Option<String> = tx
            .query_row(
                "SELECT vvol FROM bindings WHERE pe = ?1 AND secondary = ?2 LIMIT 1",
                params![pe, secondary_sql],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = taken {
            if v != vvol.to_string() {
                return Err(StoreError::Exists {
                    what: "binding",
                    id: format!("pe {pe} secondary {secondary}"),
                });
            }
        }
        let result = tx.execute(
            "INSERT INTO bindings (vvol, host, pe, secondary, state) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (vvol, host, pe) DO UPDATE
             SET secondary = excluded.secondary, state = excluded.state",
            params![
                vvol.to_string(),
                host,
                pe,
                secondary_sql,
                state_str(draining)
            ],
        );
        match result {
            Ok(_) => {}
            // Belt and braces for the check above: UNIQUE (pe, secondary, host).
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::Exists {
                    what: "binding",
                    id: format!("pe {pe} secondary {secondary}"),
                })
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets a binding. Removing one that is not there is [`StoreError::NotFound`].
    pub fn remove_binding(&self, vvol: Uuid, host: &str, pe: u16) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "DELETE FROM bindings WHERE vvol = ?1 AND host = ?2 AND pe = ?3",
            params![vvol.to_string(), host, pe],
        )?;
        if n == 0 {
            return Err(not_found(
                "binding",
                format!("{vvol} for {host} at pe {pe}"),
            ));
        }
        Ok(())
    }

    /// Every stored binding, ordered by PE and secondary id.
    pub fn bindings(&self) -> Result<Vec<BindingRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT vvol, host, pe, secondary, state FROM bindings ORDER BY pe, secondary",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(BindingRecord {
                vvol: vvols::parse_uuid(r, 0)?,
                host: r.get(1)?,
                pe: r.get(2)?,
                secondary: r.get(3)?,
                draining: r.get::<_, String>(4)? == "draining",
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The next secondary id each PE will hand out.
    pub fn next_ids(&self) -> Result<BTreeMap<u16, u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT pe, next_id FROM pe_counters")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_next_id(&self, pe: u16, next: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO pe_counters (pe, next_id) VALUES (?1, ?2)
             ON CONFLICT (pe) DO UPDATE SET next_id = excluded.next_id",
            params![pe, to_sql_int(next, "next secondary id")?],
        )?;
        Ok(())
    }
}

fn state_str(draining: bool) -> &'static str {
    if draining {
        "draining"
    } else {
        "active"
    }
}
