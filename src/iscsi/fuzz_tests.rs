//! Random and mutated input against the iSCSI core: PDU headers, text, key negotiation and
//! whole login conversations. Whatever arrives is answered without panicking, and random
//! conversations never get past CHAP without the secret. Seeded, so a failure repeats
//! (`VVOLD_FUZZ_SEED` explores others).

use super::login::{LoginMachine, LoginOutcome};
use super::negotiate::Negotiator;
use super::pdu::{Bhs, InitiatorPdu, Itt, LoginRequest, SerialNumber};
use super::policy::{ChapCredentials, LoginPolicy, Portal, TargetEntry};
use super::text::{self, KeyValue, TextAccumulator};
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::Arc;

const ROUNDS: usize = 20_000;
const INITIATOR: &str = "iqn.2026-11.test:fuzz";
const OPEN: &str = "iqn.2026-11.test:open";
const GUARDED: &str = "iqn.2026-11.test:chap";

fn rng(salt: u64) -> StdRng {
    crate::seeded::rng(0x15C5 ^ salt)
}

/// Initiator opcodes (RFC 7143 §11.1.1), drawn more often than the rest.
const OPCODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x1c, 0x1d, 0x1e,
];

/// Keys of every stage, to draw from; values come from `random_value`.
const KEYS: &[&str] = &[
    "InitiatorName",
    "TargetName",
    "SessionType",
    "AuthMethod",
    "CHAP_A",
    "CHAP_N",
    "CHAP_R",
    "CHAP_I",
    "CHAP_C",
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "SendTargets",
    "TargetAlias",
    "X-com.example.private",
    "",
];

fn random_value(rng: &mut StdRng) -> String {
    const WORDS: &[&str] = &[
        "None",
        "CHAP",
        "None,CHAP",
        "CRC32C",
        "CRC32C,None",
        "Yes",
        "No",
        "Normal",
        "Discovery",
        "5",
        "7",
        "0",
        "1",
        "512",
        "262144",
        "16777216",
        "4294967296",
        "Reject",
        "Irrelevant",
        "NotUnderstood",
        "0x00",
        "0xzz",
        "0b",
        "All",
        OPEN,
        GUARDED,
        INITIATOR,
    ];
    match rng.gen_range(0..4) {
        0 => (0..rng.gen_range(0..300))
            .map(|_| rng.gen_range(0x20u8..0x7f) as char)
            .collect(),
        1 => format!("0x{:x}", rng.gen::<u128>()),
        _ => WORDS[rng.gen_range(0..WORDS.len())].to_string(),
    }
}

fn random_pairs(rng: &mut StdRng) -> Vec<KeyValue> {
    (0..rng.gen_range(0..8))
        .map(|_| KeyValue::new(KEYS[rng.gen_range(0..KEYS.len())], random_value(rng)))
        .collect()
}

#[test]
fn random_headers_decode_or_fail_cleanly() {
    let mut rng = rng(1);
    let mut decoded = 0;
    for _ in 0..ROUNDS * 5 {
        let mut bhs = Bhs::default();
        rng.fill(&mut bhs.0[..]);
        if rng.gen_bool(0.8) {
            bhs.0[0] = (bhs.0[0] & 0x40) | OPCODES[rng.gen_range(0..OPCODES.len())];
        }
        if rng.gen_bool(0.7) {
            bhs.0[4] = 0; // no AHS
        }
        let ahs: Vec<u8> = (0..bhs.total_ahs_len().min(1020))
            .map(|_| rng.gen())
            .collect();
        if InitiatorPdu::decode(&bhs, &ahs).is_ok() {
            decoded += 1;
        }
    }
    assert!(decoded > ROUNDS / 10, "only {decoded} decoded");
}

#[test]
fn random_text_parses_or_fails_cleanly() {
    let mut rng = rng(2);
    for _ in 0..ROUNDS {
        let data: Vec<u8> = if rng.gen_bool(0.5) {
            (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect()
        } else {
            let mut d = text::encode(&random_pairs(&mut rng));
            for _ in 0..rng.gen_range(0..3) {
                if !d.is_empty() {
                    let at = rng.gen_range(0..d.len());
                    d[at] = *[0u8, b'=', b'\0', b'x']
                        .get(rng.gen_range(0..4))
                        .unwrap_or(&0);
                }
            }
            d
        };
        if let Ok(pairs) = text::parse(&data) {
            // What parsed encodes back to something that parses to the same pairs.
            assert_eq!(text::parse(&text::encode(&pairs)).ok(), Some(pairs));
        }
        let mut acc = TextAccumulator::new();
        let cut = rng.gen_range(0..=data.len());
        let _ = acc.push(&data[..cut], true);
        let _ = acc.push(&data[cut..], false);
    }
}

#[test]
fn random_offers_are_negotiated_without_panics() {
    let mut rng = rng(3);
    for _ in 0..ROUNDS {
        let mut neg = Negotiator::new(Default::default());
        for _ in 0..rng.gen_range(1..4) {
            let pairs = random_pairs(&mut rng);
            for answer in neg.negotiate(&pairs) {
                // Answers only what was offered (the target's own keys are declarations).
                assert!(
                    pairs.iter().any(|p| p.key == answer.key),
                    "answered {answer:?} to {pairs:?}"
                );
            }
        }
        neg.declarations();
    }
}

fn policy() -> Arc<LoginPolicy> {
    let target = |name: &str, chap: Option<ChapCredentials>| TargetEntry {
        name: name.into(),
        alias: None,
        portals: vec![Portal {
            addr: "0.0.0.0:3260".parse().unwrap(),
            tpgt: 1,
        }],
        allowed_initiators: Vec::new(),
        chap,
        mutual_chap: None,
    };
    Arc::new(LoginPolicy {
        targets: vec![
            target(OPEN, None),
            target(
                GUARDED,
                Some(ChapCredentials {
                    user: "user".into(),
                    secret: "a-secret-of-16ch".into(),
                }),
            ),
        ],
        ..LoginPolicy::default()
    })
}

fn random_request(rng: &mut StdRng, step: u32) -> LoginRequest {
    LoginRequest {
        transit: rng.gen_bool(0.6),
        cont: rng.gen_bool(0.1),
        csg: rng.gen_range(0..4),
        nsg: rng.gen_range(0..4),
        version_max: rng.gen_range(0..2),
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: if rng.gen_bool(0.9) { 0 } else { rng.gen() },
        itt: Itt(7),
        cid: 0,
        cmdsn: SerialNumber(step),
        expstatsn: SerialNumber(step),
    }
}

#[test]
fn random_logins_never_pass_chap_and_sometimes_complete_without_it() {
    let policy = policy();
    let mut rng = rng(4);
    let mut completed = 0;
    for _ in 0..ROUNDS {
        let mut m = LoginMachine::new(policy.clone(), "127.0.0.1:3260".parse().unwrap(), 1);
        let target = if rng.gen_bool(0.5) { OPEN } else { GUARDED };
        for step in 0..rng.gen_range(1..6) {
            let req = random_request(&mut rng, step);
            let mut pairs = random_pairs(&mut rng);
            if step == 0 && rng.gen_bool(0.8) {
                pairs.insert(0, KeyValue::new("InitiatorName", INITIATOR));
                pairs.insert(1, KeyValue::new("TargetName", target));
                if rng.gen_bool(0.7) {
                    pairs.insert(2, KeyValue::new("AuthMethod", "None"));
                }
            }
            let out = m.on_request(&req, &text::encode(&pairs));
            match out.outcome {
                LoginOutcome::Complete(result) => {
                    // A discovery session (TargetName aside) needs no target's CHAP.
                    assert_ne!(
                        result.target.as_deref(),
                        Some(GUARDED),
                        "a normal session without CHAP"
                    );
                    completed += usize::from(result.target.is_some());
                    break;
                }
                LoginOutcome::Failed { class, .. } => {
                    assert!(class == 1 || class == 2 || class == 3, "class {class}");
                    assert!(m.is_finished());
                    break;
                }
                LoginOutcome::Continue => {}
            }
        }
    }
    // Otherwise the conversations are too random to reach the end, and prove little.
    assert!(completed > 0, "no random normal login completed");
}
