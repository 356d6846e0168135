//! IOPS limits of normal LUNs changed through the control API. The configuration file gives
//! a LUN its initial limits; a change made live is kept here so it survives a restart.

use super::{Store, StoreError};
use crate::vvol::catalog::IoLimits;
use rusqlite::{params, OptionalExtension};

impl Store {
    /// The stored limits of `target`'s LUN `lun`, if the API ever set them.
    pub fn lun_limits(&self, target: &str, lun: u16) -> Result<Option<IoLimits>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT upper, lower, weight FROM lun_limits WHERE target = ?1 AND lun = ?2",
                params![target.to_ascii_lowercase(), lun],
                |r| {
                    Ok(IoLimits {
                        upper: r.get(0)?,
                        lower: r.get(1)?,
                        weight: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_lun_limits(
        &self,
        target: &str,
        lun: u16,
        limits: IoLimits,
    ) -> Result<(), StoreError> {
        limits.validate()?;
        self.conn().execute(
            "INSERT INTO lun_limits (target, lun, upper, lower, weight) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (target, lun) DO UPDATE SET upper = ?3, lower = ?4, weight = ?5",
            params![
                target.to_ascii_lowercase(),
                lun,
                limits.upper,
                limits.lower,
                limits.weight
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_limits_round_trip_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lun_limits("iqn.x:t", 0).unwrap(), None);
        let l = IoLimits {
            upper: Some(5000),
            lower: Some(100),
            weight: Some(2),
        };
        store.set_lun_limits("IQN.X:T", 0, l).unwrap();
        assert_eq!(store.lun_limits("iqn.x:t", 0).unwrap(), Some(l));
        store
            .set_lun_limits("iqn.x:t", 0, IoLimits::default())
            .unwrap();
        assert_eq!(
            store.lun_limits("iqn.x:t", 0).unwrap(),
            Some(IoLimits::default())
        );
        let bad = IoLimits {
            upper: Some(100),
            lower: Some(100),
            weight: None,
        };
        assert!(store.set_lun_limits("iqn.x:t", 1, bad).is_err());
    }
}
