//! Persistent reservation state of logical units whose registrants asked for APTPL (SPC-4
//! §5.9.4.2), keyed by the LU's NAA designator in hex. The SCSI layer owns the encoding; the
//! store keeps the blob opaque.

use super::{Store, StoreError};
use rusqlite::{params, OptionalExtension};

impl Store {
    /// Replaces the saved state of LU `naa`.
    pub fn save_pr_state(&self, naa: &str, state: &[u8]) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO pr_state (naa, state) VALUES (?1, ?2)
             ON CONFLICT (naa) DO UPDATE SET state = excluded.state",
            params![naa, state],
        )?;
        Ok(())
    }

    pub fn load_pr_state(&self, naa: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT state FROM pr_state WHERE naa = ?1", [naa], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Forgets LU `naa`'s state (APTPL cleared); nothing saved is not an error.
    pub fn clear_pr_state(&self, naa: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM pr_state WHERE naa = ?1", [naa])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_survives_reopen_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.load_pr_state("6001").unwrap(), None);
            s.save_pr_state("6001", &[1, 2]).unwrap();
            s.save_pr_state("6001", &[3, 4, 5]).unwrap();
            s.save_pr_state("6002", &[9]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_pr_state("6001").unwrap(), Some(vec![3, 4, 5]));
        s.clear_pr_state("6001").unwrap();
        s.clear_pr_state("6001").unwrap();
        assert_eq!(s.load_pr_state("6001").unwrap(), None);
        assert_eq!(s.load_pr_state("6002").unwrap(), Some(vec![9]));
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn a_version_1_database_gains_the_table() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            let conn = rusqlite::Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
            conn.execute_batch(
                "DROP TABLE pr_state; DROP TABLE lun_limits; UPDATE schema_version SET version = 1",
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        s.save_pr_state("60", &[7]).unwrap();
        assert_eq!(s.load_pr_state("60").unwrap(), Some(vec![7]));
    }
}
