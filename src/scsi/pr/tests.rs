//! Persistent and SPC-2 reservations through `DiskLu`, as an initiator sees them.

use std::sync::{Arc, Mutex};

use super::PrPersistence;
use crate::scsi::disk::tests::{identity, port};
use crate::scsi::{DiskLu, NexusId, Plan, ResetKind, Response, Status};

const A: NexusId = NexusId(1);
const B: NexusId = NexusId(2);
const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const TUR: [u8; 6] = [0; 6];

fn lu() -> DiskLu {
    let lu = DiskLu::new(identity());
    for n in [A, B] {
        lu.nexus_added(n, &port(n), 1);
        lu.plan(n, &TUR); // eat the power-on unit attention
    }
    lu
}

fn respond(p: Plan) -> Response {
    match p {
        Plan::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn status(lu: &DiskLu, n: NexusId, cdb: &[u8]) -> Status {
    match lu.plan(n, cdb) {
        Plan::Respond(r) => r.status,
        _ => Status::Good,
    }
}

fn prout(
    lu: &DiskLu,
    n: NexusId,
    sa: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> Response {
    let cdb = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(lu.plan(n, &cdb), Plan::Parameters { len: 24 });
    let mut data = [0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sa_key.to_be_bytes());
    data[20] = u8::from(aptpl);
    respond(lu.apply_parameters(n, &cdb, &data))
}

fn prin(lu: &DiskLu, n: NexusId, sa: u8) -> Vec<u8> {
    let r = respond(lu.plan(n, &[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0]));
    assert_eq!(r.status, Status::Good);
    r.data.to_vec()
}

fn sense_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, Status::CheckCondition);
    (r.sense[2], r.sense[12], r.sense[13])
}

#[test]
fn register_reserve_and_read_back() {
    let lu = lu();
    assert_eq!(prout(&lu, A, 0, 0, 0, 0xAA, false).status, Status::Good);
    assert_eq!(prout(&lu, B, 6, 0, 0, 0xBB, false).status, Status::Good);
    // REGISTER with a wrong key conflicts.
    assert_eq!(
        prout(&lu, A, 0, 0, 0x11, 0xCC, false).status,
        Status::ReservationConflict
    );
    let keys = prin(&lu, A, 0);
    assert_eq!(&keys[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(keys[15], 0xAA);
    assert_eq!(keys[23], 0xBB);
    assert_eq!(prout(&lu, A, 1, 3, 0xAA, 0, false).status, Status::Good);
    let res = prin(&lu, B, 1);
    assert_eq!((res[7], res[15], res[21]), (16, 0xAA, 3));
    // Exclusive access: B, registered, may neither read nor write; A may.
    assert_eq!(status(&lu, B, &READ10), Status::ReservationConflict);
    assert_eq!(status(&lu, B, &WRITE10), Status::ReservationConflict);
    assert_eq!(status(&lu, B, &TUR), Status::Good);
    assert!(matches!(lu.plan(A, &WRITE10), Plan::Write { .. }));
    // Releasing with the wrong type is an invalid release.
    assert_eq!(sense_of(&prout(&lu, A, 2, 1, 0xAA, 0, false)), (5, 0x26, 4));
    assert_eq!(prout(&lu, A, 2, 3, 0xAA, 0, false).status, Status::Good);
    assert!(matches!(lu.plan(B, &READ10), Plan::Read { .. }));
}

#[test]
fn write_exclusive_registrants_only_lets_registrants_write() {
    let lu = lu();
    prout(&lu, A, 0, 0, 0, 1, false);
    prout(&lu, B, 0, 0, 0, 2, false);
    assert_eq!(prout(&lu, A, 1, 5, 1, 0, false).status, Status::Good);
    assert!(matches!(lu.plan(B, &WRITE10), Plan::Write { .. }));
    prout(&lu, B, 0, 0, 2, 0, false);
    assert!(matches!(lu.plan(B, &READ10), Plan::Read { .. }));
    assert_eq!(status(&lu, B, &WRITE10), Status::ReservationConflict);
    // The holder unregistering releases a registrants-only reservation.
    prout(&lu, B, 0, 0, 0, 2, false);
    prout(&lu, A, 0, 0, 1, 0, false);
    assert_eq!(sense_of(&respond(lu.plan(B, &WRITE10))), (6, 0x2A, 0x04));
    assert!(matches!(lu.plan(B, &WRITE10), Plan::Write { .. }));
    assert_eq!(prin(&lu, B, 1)[7], 0);
}

#[test]
fn preempt_removes_registration_and_notifies() {
    let lu = lu();
    prout(&lu, A, 0, 0, 0, 1, false);
    prout(&lu, B, 0, 0, 0, 2, false);
    prout(&lu, B, 1, 1, 2, 0, false);
    assert_eq!(prout(&lu, A, 5, 3, 1, 2, false).status, Status::Good);
    assert_eq!(lu.take_preempted_nexuses(), vec![B]);
    // B hears REGISTRATIONS PREEMPTED, then conflicts under A's exclusive access.
    assert_eq!(sense_of(&respond(lu.plan(B, &READ10))), (6, 0x2A, 0x05));
    assert_eq!(status(&lu, B, &READ10), Status::ReservationConflict);
    let res = prin(&lu, A, 1);
    assert_eq!((res[15], res[21]), (1, 3));
    let keys = prin(&lu, A, 0);
    assert_eq!(keys[7], 8);
    // Preempting a key nobody holds conflicts; key 0 without a reservation is invalid.
    assert_eq!(
        prout(&lu, A, 4, 3, 1, 9, false).status,
        Status::ReservationConflict
    );
}

#[test]
fn clear_drops_everything_and_reports_preempted() {
    let lu = lu();
    prout(&lu, A, 0, 0, 0, 1, false);
    prout(&lu, B, 0, 0, 0, 2, false);
    prout(&lu, A, 1, 8, 1, 0, false);
    assert_eq!(prin(&lu, A, 1)[8..16], [0; 8], "all-registrants key is 0");
    let gen_before = prin(&lu, A, 0)[3];
    assert_eq!(prout(&lu, B, 3, 0, 2, 0, false).status, Status::Good);
    assert_eq!(prin(&lu, B, 0)[3], gen_before + 1);
    assert_eq!(sense_of(&respond(lu.plan(A, &TUR))), (6, 0x2A, 0x03));
    assert_eq!(prin(&lu, A, 0)[7], 0);
}

#[test]
fn registrations_survive_reconnect_but_spc2_does_not() {
    let lu = lu();
    assert_eq!(status(&lu, A, &[0x16, 0, 0, 0, 0, 0]), Status::Good);
    assert_eq!(status(&lu, B, &READ10), Status::ReservationConflict);
    assert_eq!(status(&lu, B, &[0x12, 0, 0, 0, 36, 0]), Status::Good);
    // REPORT SUPPORTED OPERATION CODES is not in SPC-2's list.
    assert_eq!(
        status(&lu, B, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        Status::ReservationConflict
    );
    assert_eq!(status(&lu, B, &[0x17, 0, 0, 0, 0, 0]), Status::Good);
    assert_eq!(
        status(&lu, B, &[0x16, 0, 0, 0, 0, 0]),
        Status::ReservationConflict
    );
    // Third-party RESERVE is an invalid field.
    assert_eq!(
        status(&lu, A, &[0x16, 0x10, 0, 0, 0, 0]),
        Status::CheckCondition
    );
    lu.nexus_removed(A);
    assert!(matches!(lu.plan(B, &READ10), Plan::Read { .. }));
    assert_eq!(
        status(&lu, B, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Status::Good
    );
    lu.reset(ResetKind::LogicalUnit);
    lu.plan(B, &TUR);
    assert_eq!(status(&lu, B, &[0x16, 0, 0, 0, 0, 0]), Status::Good);
    lu.plan(B, &[0x17, 0, 0, 0, 0, 0]);

    prout(&lu, B, 0, 0, 0, 7, false);
    prout(&lu, B, 1, 1, 7, 0, false);
    lu.nexus_removed(B);
    let again = NexusId(9);
    lu.nexus_added(again, &port(B), 1);
    lu.plan(again, &TUR);
    assert!(matches!(lu.plan(again, &WRITE10), Plan::Write { .. }));
    // With registrations present (CRH = 1), SPC-2 RESERVE and RELEASE from the persistent
    // reservation's holder are GOOD and change nothing; RESERVE from anyone else conflicts.
    assert_eq!(status(&lu, again, &[0x16, 0, 0, 0, 0, 0]), Status::Good);
    assert_eq!(status(&lu, again, &[0x17, 0, 0, 0, 0, 0]), Status::Good);
    let res = prin(&lu, again, 1);
    assert_eq!(
        (res[7], res[21]),
        (16, 0x01),
        "the persistent reservation stays"
    );
    let other = NexusId(10);
    lu.nexus_added(other, &port(A), 1);
    lu.plan(other, &TUR);
    assert_eq!(
        status(&lu, other, &[0x16, 0, 0, 0, 0, 0]),
        Status::ReservationConflict
    );
    assert_eq!(
        status(&lu, other, &[0x17, 0, 0, 0, 0, 0]),
        Status::ReservationConflict
    );
}

#[test]
fn capabilities_and_bad_parameter_lists() {
    let lu = lu();
    let caps = prin(&lu, A, 2);
    assert_eq!(caps, vec![0, 8, 0x11, 0x80, 0xEA, 0x01, 0, 0]);
    let r = respond(lu.plan(A, &[0x5E, 4, 0, 0, 0, 0, 0, 0x10, 0, 0]));
    assert_eq!(sense_of(&r), (5, 0x24, 0));
    let r = respond(lu.plan(A, &[0x5F, 0, 0, 0, 0, 0, 0, 0, 20, 0]));
    assert_eq!(sense_of(&r), (5, 0x1A, 0));
    let cdb = [0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut data = [0u8; 24];
    data[15] = 1;
    data[20] = 0x08;
    assert_eq!(
        sense_of(&respond(lu.apply_parameters(A, &cdb, &data))),
        (5, 0x26, 0)
    );
    // ALL_TG_PT is refused on REGISTER (ATP_C=0) ...
    data[20] = 0x04;
    assert_eq!(
        sense_of(&respond(lu.apply_parameters(A, &cdb, &data))),
        (5, 0x26, 0)
    );
    prout(&lu, A, 0, 0, 0, 1, false);
    // ... and ignored by the other service actions (SPC-4 §6.16.3).
    let reserve = [0x5F, 1, 1, 0, 0, 0, 0, 0, 24, 0];
    let mut data = [0u8; 24];
    data[7] = 1;
    data[20] = 0x04;
    assert_eq!(
        respond(lu.apply_parameters(A, &reserve, &data)).status,
        Status::Good
    );
    let release = [0x5F, 2, 1, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(
        respond(lu.apply_parameters(A, &release, &data)).status,
        Status::Good
    );
    // Scope other than LU_SCOPE is an invalid CDB field.
    assert_eq!(sense_of(&prout(&lu, A, 1, 0x13, 1, 0, false)), (5, 0x24, 0));
    assert_eq!(sense_of(&prout(&lu, A, 1, 2, 1, 0, false)), (5, 0x24, 0));
    let full = prin(&lu, A, 3);
    assert_eq!(full[15], 1);
    assert_eq!(full[8 + 24], 0x45);
}

#[derive(Debug, Default)]
struct Memory(Mutex<Option<Vec<u8>>>);

impl PrPersistence for Memory {
    fn load(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn save(&self, state: &[u8]) -> bool {
        *self.0.lock().unwrap() = Some(state.to_vec());
        true
    }
    fn clear(&self) -> bool {
        *self.0.lock().unwrap() = None;
        true
    }
}

#[test]
fn aptpl_survives_a_restart_and_clears() {
    let store = Arc::new(Memory::default());
    let lu1 = lu();
    lu1.set_pr_persistence(store.clone()).unwrap();
    prout(&lu1, A, 0, 0, 0, 0x42, true);
    prout(&lu1, A, 1, 1, 0x42, 0, false);
    assert!(store.0.lock().unwrap().is_some());

    let lu2 = lu();
    lu2.set_pr_persistence(store.clone()).unwrap();
    assert_eq!(prin(&lu2, B, 1)[15], 0x42);
    assert_eq!(prin(&lu2, B, 2)[3] & 1, 1, "PTPL_A");
    assert_eq!(status(&lu2, B, &WRITE10), Status::ReservationConflict);
    assert!(matches!(lu2.plan(A, &WRITE10), Plan::Write { .. }));
    // Re-registering without APTPL forgets the saved state.
    prout(&lu2, A, 0, 0, 0x42, 0x43, false);
    assert!(store.0.lock().unwrap().is_none());
}

#[test]
fn saved_reservations_that_cannot_be_read_are_an_error_not_none() {
    // Garbage where a saved state should be, or a store that fails to read: the LU must not
    // run as if nothing had been reserved.
    let garbage = Arc::new(Memory(Mutex::new(Some(vec![9, 9, 9]))));
    assert!(DiskLu::new(identity()).set_pr_persistence(garbage).is_err());
    #[derive(Debug)]
    struct Broken;
    impl PrPersistence for Broken {
        fn load(&self) -> Result<Option<Vec<u8>>, String> {
            Err("disk I/O error".into())
        }
        fn save(&self, _: &[u8]) -> bool {
            false
        }
        fn clear(&self) -> bool {
            false
        }
    }
    let e = DiskLu::new(identity())
        .set_pr_persistence(Arc::new(Broken))
        .unwrap_err();
    assert!(e.contains("disk I/O error"), "{e}");
    // Nothing saved is fine.
    let empty = Arc::new(Memory(Mutex::new(None)));
    DiskLu::new(identity()).set_pr_persistence(empty).unwrap();
}

#[test]
fn registrations_saved_before_target_ports_go_to_their_initiator_port() {
    // APTPL state of version 1 (no target port): key 9 of port(A), holding WRITE EXCLUSIVE.
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&3u32.to_be_bytes());
    v1.push(1);
    v1.extend_from_slice(&0u32.to_be_bytes());
    v1.extend_from_slice(&1u32.to_be_bytes());
    v1.extend_from_slice(&9u64.to_be_bytes());
    v1.extend_from_slice(&port(A).isid);
    v1.extend_from_slice(&(port(A).name.len() as u16).to_be_bytes());
    v1.extend_from_slice(port(A).name.as_bytes());
    let store = Arc::new(Memory(Mutex::new(Some(v1))));
    let lu = DiskLu::new(identity());
    lu.set_pr_persistence(store).unwrap();
    // Port A comes back through portal group 2: its registration and reservation are its own.
    lu.nexus_added(A, &port(A), 2);
    lu.nexus_added(B, &port(B), 1);
    for n in [A, B] {
        lu.plan(n, &TUR);
    }
    assert!(matches!(lu.plan(A, &WRITE10), Plan::Write { .. }));
    assert_eq!(status(&lu, B, &WRITE10), Status::ReservationConflict);
}

#[test]
fn one_initiator_port_registers_once_per_target_port() {
    // The same initiator port (name and ISID) reaching the LU through two portal groups is
    // two I_T nexuses: each registers its own key, the reservation belongs to one, and READ
    // FULL STATUS names each registration's own target port.
    let lu = lu();
    const A2: NexusId = NexusId(3);
    lu.nexus_added(A2, &port(A), 2);
    lu.plan(A2, &TUR);
    assert_eq!(prout(&lu, A, 0, 0, 0, 0xA1, false).status, Status::Good);
    assert_eq!(prout(&lu, A2, 0, 0, 0, 0xA2, false).status, Status::Good);
    assert_eq!(prout(&lu, A2, 1, 1, 0xA2, 0, false).status, Status::Good);
    // Write exclusive, held through target port 2: the other path of the same port is not
    // the holder.
    assert_eq!(status(&lu, A, &WRITE10), Status::ReservationConflict);
    assert!(matches!(lu.plan(A2, &WRITE10), Plan::Write { .. }));
    let full = respond(lu.plan(A, &[0x5E, 3, 0, 0, 0, 0, 0, 0x01, 0, 0]));
    assert_eq!(full.status, Status::Good);
    let d = &full.data[8..];
    let tid_len = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
    let (first, second) = (&d[..24], &d[24 + tid_len..48 + tid_len]);
    assert_eq!(
        (
            first[7],
            first[12],
            u16::from_be_bytes([first[18], first[19]])
        ),
        (0xA1, 0, 1)
    );
    assert_eq!(
        (
            second[7],
            second[12],
            u16::from_be_bytes([second[18], second[19]])
        ),
        (0xA2, 1, 2)
    );
}

#[test]
fn state_encoding_round_trips_and_rejects_garbage() {
    use super::state::{PrState, PrType, Registrant, Registration, Reservation};
    let through = |n: NexusId, target_port: u16| Registrant {
        initiator: port(n),
        target_port,
    };
    let s = PrState {
        generation: 7,
        aptpl: true,
        registrations: vec![
            Registration {
                port: through(A, 1),
                key: 1,
            },
            Registration {
                port: through(B, 2),
                key: 2,
            },
        ],
        reservation: Some(Reservation {
            kind: PrType::ExclusiveAccessRegistrantsOnly,
            holder: 1,
        }),
    };
    assert_eq!(PrState::decode(&s.encode()), Some(s.clone()));
    let bytes = s.encode();
    for n in 0..bytes.len() {
        let _ = PrState::decode(&bytes[..n]);
    }
    assert_eq!(PrState::decode(&[2, 0, 0]), None);
    // A state saved before registrations named their target port (version 1) reads as held
    // through the default portal group.
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&7u32.to_be_bytes());
    v1.extend_from_slice(&[0; 5]);
    v1.extend_from_slice(&1u32.to_be_bytes());
    v1.extend_from_slice(&9u64.to_be_bytes());
    v1.extend_from_slice(&port(A).isid);
    let name = port(A).name;
    v1.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v1.extend_from_slice(name.as_bytes());
    let old = PrState::decode(&v1).expect("version 1");
    assert_eq!(
        old.registrations[0].port,
        through(A, Registrant::UNKNOWN_PORT)
    );
    assert_eq!(old.registrations[0].key, 9);
}

#[test]
fn path_state_and_mapping_queries_under_reservations() {
    const RTPG: [u8; 12] = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0];
    const GET_LBA_STATUS: [u8; 16] = [0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    const RSOC: [u8; 12] = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let lu = lu();
    prout(&lu, A, 0, 0, 0, 1, false);
    // Exclusive access held by A: B, not registered, still learns its paths' states, but
    // reads of any kind conflict, and so does asking for the command set.
    assert_eq!(prout(&lu, A, 1, 3, 1, 0, false).status, Status::Good);
    assert_eq!(status(&lu, B, &RTPG), Status::Good);
    assert_eq!(status(&lu, B, &GET_LBA_STATUS), Status::ReservationConflict);
    assert_eq!(status(&lu, B, &RSOC), Status::ReservationConflict);
    // Write exclusive: reads, GET LBA STATUS among them, are allowed, and so is RSOC.
    prout(&lu, A, 2, 3, 1, 0, false);
    assert_eq!(prout(&lu, A, 1, 1, 1, 0, false).status, Status::Good);
    assert_eq!(status(&lu, B, &RTPG), Status::Good);
    assert_eq!(status(&lu, B, &RSOC), Status::Good);
    assert!(!matches!(
        status(&lu, B, &GET_LBA_STATUS),
        Status::ReservationConflict
    ));
    // Exclusive access, registrants only: a registered B has access, RSOC included.
    assert_eq!(prout(&lu, A, 2, 1, 1, 0, false).status, Status::Good);
    assert_eq!(prout(&lu, B, 0, 0, 0, 2, false).status, Status::Good);
    assert_eq!(prout(&lu, A, 1, 6, 1, 0, false).status, Status::Good);
    assert_eq!(status(&lu, B, &RSOC), Status::Good);
    assert_eq!(status(&lu, NexusId(3), &RSOC), Status::ReservationConflict);
}
