//! Random and mutated CDBs and parameter lists against the SCSI core: whatever arrives, it
//! answers without panicking, a refusal carries well-formed sense, and no plan reaches past
//! the end of the medium. Seeded, so a failure repeats.

use super::disk::tests::{identity, port};
use super::disk::DiskLu;
use super::{NexusId, Plan, Response, Status};
use rand::rngs::StdRng;
use rand::Rng;

const NEXUS: NexusId = NexusId(1);
const OTHER: NexusId = NexusId(2);
const ROUNDS: usize = 40_000;

/// Opcodes the emulation implements (or deliberately refuses): drawn more often than the rest.
const KNOWN: &[u8] = &[
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A, 0x2E, 0x2F,
    0x34, 0x35, 0x37, 0x41, 0x42, 0x4D, 0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x83, 0x84, 0x88, 0x89,
    0x8A, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA, 0xAE, 0xAF, 0xB7,
];

/// Valid parameter lists to mutate: UNMAP with one descriptor, PROUT REGISTER, MODE SELECT(6)
/// of the caching page, and an EXTENDED COPY with two target descriptors and one segment.
fn seeds() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut unmap = vec![0, 22, 0, 16, 0, 0, 0, 0];
    unmap.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0, 0, 0]);
    let mut register = vec![0u8; 24];
    register[8..16].copy_from_slice(&0xABCDu64.to_be_bytes());
    let mut caching = vec![0, 0, 0, 0, 0x08, 18, 0x04];
    caching.resize(4 + 2 + 18, 0);
    let mut xcopy = vec![0u8; 16];
    xcopy[0] = 1; // list id
    xcopy[2..4].copy_from_slice(&64u16.to_be_bytes()); // target descriptor list length
    xcopy[8..12].copy_from_slice(&28u32.to_be_bytes()); // segment descriptor list length
    for _ in 0..2 {
        let mut t = vec![0u8; 32];
        t[0] = 0xE4; // identification descriptor target
        t[4] = 0x01; // code set binary
        t[5] = 0x03; // NAA designator
        t[7] = 16;
        t[8..24].copy_from_slice(&identity().naa);
        t[28..32].copy_from_slice(&512u32.to_be_bytes());
        xcopy.extend(t);
    }
    let mut seg = vec![0u8; 28];
    seg[0] = 0x02; // block to block
    seg[2..4].copy_from_slice(&24u16.to_be_bytes());
    seg[6..8].copy_from_slice(&1u16.to_be_bytes()); // destination: descriptor 1
    seg[10..12].copy_from_slice(&4u16.to_be_bytes()); // 4 blocks
    xcopy.extend(seg);
    let cdb_with_len = |op: u8, sa: u8, at: usize, size: usize, len: usize| {
        let mut c = vec![0u8; size];
        c[0] = op;
        c[1] = sa;
        let bytes = (len as u32).to_be_bytes();
        let n = if size == 6 {
            1
        } else if op == 0x42 {
            2
        } else {
            4
        };
        c[at..at + n].copy_from_slice(&bytes[4 - n..]);
        c
    };
    vec![
        (cdb_with_len(0x42, 0, 7, 10, unmap.len()), unmap),
        (cdb_with_len(0x5F, 0, 5, 10, register.len()), register),
        (cdb_with_len(0x15, 0x10, 4, 6, caching.len()), caching),
        (cdb_with_len(0x83, 0, 10, 16, xcopy.len()), xcopy),
    ]
}

/// Mostly a well-formed CDB of a known opcode (zeros but for a service action and a few small
/// field values), so most reach past the first checks; sometimes any bytes at all.
fn random_cdb(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_bool(0.1) {
        let len = rng.gen_range(0..40);
        return (0..len).map(|_| rng.gen()).collect();
    }
    let op = KNOWN[rng.gen_range(0..KNOWN.len())];
    let len = match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    };
    let mut cdb = vec![0u8; len];
    cdb[0] = op;
    let service_actions: &[u8] = match op {
        0x9E => &[0x10, 0x12],
        0xA3 => &[0x0A, 0x0C],
        0x5E => &[0, 1, 2, 3],
        0x5F => &[0, 1, 2, 3, 4, 5, 6, 7],
        0x83 => &[0],
        0x84 => &[0, 3],
        _ => &[0],
    };
    cdb[1] = service_actions[rng.gen_range(0..service_actions.len())];
    if rng.gen_bool(0.1) {
        cdb[1] |= rng.gen_range(0..8) << 5;
    }
    // A few small field values, mostly short of the control byte.
    for _ in 0..rng.gen_range(0..4) {
        let at = rng
            .gen_range(2..len.max(3))
            .min(len - 1 - usize::from(rng.gen_bool(0.9)));
        cdb[at] = if rng.gen_bool(0.8) {
            rng.gen_range(0..16)
        } else {
            rng.gen()
        };
    }
    cdb
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..4) {
            0 if !v.is_empty() => {
                let at = rng.gen_range(0..v.len());
                v[at] = rng.gen();
            }
            1 if !v.is_empty() => v.truncate(rng.gen_range(0..v.len())),
            2 => v.extend((0..rng.gen_range(0..40)).map(|_| rng.gen::<u8>())),
            _ => {
                if let Some(b) = v.get_mut(rng.gen_range(0..seed.len().max(1))) {
                    *b ^= 1 << rng.gen_range(0..8);
                }
            }
        }
    }
    v
}

/// What must hold of any answer: a refusal carries fixed or descriptor sense with a sense
/// key, and media access stays inside the medium.
fn check(lu: &DiskLu, cdb: &[u8], plan: &Plan) {
    let capacity = lu.identity().num_blocks.get() * u64::from(lu.identity().block_size);
    let inside = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= capacity);
    match plan {
        Plan::Respond(r) => check_response(cdb, r),
        Plan::Read { offset, len }
        | Plan::Write { offset, len, .. }
        | Plan::Compare { offset, len }
        | Plan::CompareAndWrite { offset, len, .. } => {
            assert!(inside(*offset, u64::from(*len)), "{cdb:02x?} → {plan:?}");
        }
        Plan::WriteSame { offset, len, .. } | Plan::LbaStatus { offset, len, .. } => {
            assert!(inside(*offset, *len), "{cdb:02x?} → {plan:?}");
        }
        Plan::Unmap { ranges } => {
            for (offset, len) in ranges {
                assert!(inside(*offset, *len), "{cdb:02x?} → {plan:?}");
            }
        }
        // EXTENDED COPY segments name LUs by designator; each is checked against both LUs
        // just before it is copied (xcopy::check_segment, tested there).
        _ => {}
    }
}

fn check_response(cdb: &[u8], r: &Response) {
    if r.status == Status::CheckCondition {
        let code = r.sense.first().map(|c| c & 0x7F);
        assert!(
            matches!(code, Some(0x70 | 0x72)),
            "{cdb:02x?}: sense {:02x?}",
            r.sense
        );
        let key = if code == Some(0x72) {
            r.sense[1]
        } else {
            r.sense[2]
        } & 0x0F;
        assert_ne!(key, 0, "{cdb:02x?}: CHECK CONDITION without a sense key");
    }
}

#[test]
fn random_cdbs_get_an_answer_within_the_medium() {
    let fresh = || {
        let lu = DiskLu::new(identity());
        lu.nexus_added(NEXUS, &port(NEXUS), 1);
        lu.nexus_added(OTHER, &port(OTHER), 1);
        lu
    };
    let mut lu = fresh();
    let mut rng = crate::seeded::rng(0x5C51);
    // good answers, refusals, media access, parameter lists
    let mut seen = [0usize; 4];
    for round in 0..ROUNDS {
        // A random STOP UNIT or reservation would refuse everything after it: a new LU now
        // and then keeps the commands reaching their own checks.
        if round % 64 == 0 {
            lu = fresh();
        }
        let nexus = if rng.gen_bool(0.9) { NEXUS } else { OTHER };
        let cdb = random_cdb(&mut rng);
        let plan = lu.plan(nexus, &cdb);
        check(&lu, &cdb, &plan);
        seen[kind(&plan)] += 1;
        if let Plan::Parameters { len } = plan {
            let data: Vec<u8> = (0..len.min(4096)).map(|_| rng.gen()).collect();
            let applied = lu.apply_parameters(nexus, &cdb, &data);
            check(&lu, &cdb, &applied);
        }
    }
    // The generator gets past the first checks often enough, or the test proves little
    // (about 7,000 good answers, 3,000 media accesses and 100 parameter lists per 40,000).
    assert!(seen.iter().all(|&n| n >= 40), "{seen:?}");
}

fn kind(plan: &Plan) -> usize {
    match plan {
        Plan::Respond(r) if r.status == Status::Good => 0,
        Plan::Respond(_) => 1,
        Plan::Parameters { .. } => 3,
        _ => 2,
    }
}

#[test]
fn mutated_parameter_lists_get_an_answer() {
    let lu = DiskLu::new(identity());
    lu.nexus_added(NEXUS, &port(NEXUS), 1);
    let seeds = seeds();
    // The power-on unit attention first, then each seed as sent is accepted: the mutations
    // start from lists that get past parsing.
    lu.plan(NEXUS, &[0; 6]);
    for (cdb, data) in &seeds {
        let plan = lu.plan(NEXUS, cdb);
        assert!(
            matches!(plan, Plan::Parameters { .. }),
            "{cdb:02x?}: {plan:?}"
        );
        let applied = lu.apply_parameters(NEXUS, cdb, data);
        if let Plan::Respond(r) = &applied {
            assert_eq!(r.status, Status::Good, "seed {cdb:02x?}: {:02x?}", r.sense);
        }
    }
    let mut rng = crate::seeded::rng(0xDA7A);
    let mut seen = [0usize; 4];
    for _ in 0..ROUNDS {
        let (cdb, data) = &seeds[rng.gen_range(0..seeds.len())];
        let cdb = if rng.gen_bool(0.2) {
            mutate(&mut rng, cdb)
        } else {
            cdb.clone()
        };
        let data = mutate(&mut rng, data);
        let applied = lu.apply_parameters(NEXUS, &cdb, &data);
        check(&lu, &cdb, &applied);
        seen[kind(&applied)] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
}
