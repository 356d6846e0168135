//! APTPL persistence for logical units, on the catalog database: the SCSI layer hands over an
//! opaque blob (see `scsi::pr`), stored under the LU's NAA designator so that it follows the
//! LU across restarts (the designator is derived from stable names).

use std::sync::Arc;

use crate::scsi::{DiskLu, PrPersistence};
use crate::store::Store;

pub struct StorePrPersistence {
    store: Arc<Store>,
    naa: String,
}

impl std::fmt::Debug for StorePrPersistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePrPersistence")
            .field("naa", &self.naa)
            .finish()
    }
}

impl PrPersistence for StorePrPersistence {
    fn load(&self) -> Result<Option<Vec<u8>>, String> {
        self.store
            .load_pr_state(&self.naa)
            .map_err(|e| format!("cannot load its persistent reservations: {e}"))
    }

    fn save(&self, state: &[u8]) -> bool {
        self.store
            .save_pr_state(&self.naa, state)
            .map_err(
                |e| tracing::error!(naa = %self.naa, "cannot save persistent reservations: {e}"),
            )
            .is_ok()
    }

    fn clear(&self) -> bool {
        self.store
            .clear_pr_state(&self.naa)
            .map_err(
                |e| tracing::error!(naa = %self.naa, "cannot clear persistent reservations: {e}"),
            )
            .is_ok()
    }
}

/// Gives `disk` its APTPL store and restores what was saved for it; an error (naming the LU
/// by its NAA) if that cannot be read back.
pub fn attach(store: &Arc<Store>, disk: &DiskLu) -> Result<(), String> {
    let naa: String = disk
        .identity()
        .naa
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let persistence = StorePrPersistence {
        store: store.clone(),
        naa: naa.clone(),
    };
    disk.set_pr_persistence(Arc::new(persistence))
        .map_err(|e| format!("LU naa.{naa}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::{identity, port};
    use crate::scsi::{NexusId, Plan, Status};

    fn prout(lu: &DiskLu, sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) {
        let cdb = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut data = [0u8; 24];
        data[..8].copy_from_slice(&key.to_be_bytes());
        data[8..16].copy_from_slice(&sa_key.to_be_bytes());
        data[20] = u8::from(aptpl);
        match lu.apply_parameters(NexusId(1), &cdb, &data) {
            Plan::Respond(r) => assert_eq!(r.status, Status::Good),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restart_restores_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let lu = DiskLu::new(identity());
            attach(&store, &lu).unwrap();
            lu.nexus_added(NexusId(1), &port(NexusId(1)), 1);
            prout(&lu, 0, 0, 0, 0x77, true);
            prout(&lu, 1, 3, 0x77, 0, false);
        }
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let lu = DiskLu::new(identity());
        attach(&store, &lu).unwrap();
        let other = NexusId(5);
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        match lu.plan(other, &read) {
            Plan::Respond(r) => assert_eq!(r.status, Status::ReservationConflict),
            p => panic!("{p:?}"),
        }
        lu.nexus_added(NexusId(6), &port(NexusId(1)), 1);
        lu.plan(NexusId(6), &[0; 6]);
        assert!(matches!(lu.plan(NexusId(6), &read), Plan::Read { .. }));
    }
}
