use super::*;
use crate::iscsi::chap::{chap_response, decode_binary, encode_hex, ChapAlgorithm};
use crate::iscsi::pdu::Itt;
use crate::iscsi::policy::{ChapCredentials, Portal};
use crate::iscsi::text::parse;

const INI: &str = "iqn.2024-01.com.example:host1";
const TGT: &str = "iqn.2024-01.lab.vvold:pe1";
const ISID: [u8; 6] = [0x80, 0, 0x02, 0x3d, 0, 1];

fn portal() -> SocketAddr {
    "192.0.2.10:3260".parse().unwrap()
}

fn creds(u: &str, s: &str) -> ChapCredentials {
    ChapCredentials {
        user: u.into(),
        secret: s.into(),
    }
}

fn policy(chap: Option<ChapCredentials>, mutual: Option<ChapCredentials>) -> Arc<LoginPolicy> {
    Arc::new(LoginPolicy {
        targets: vec![TargetEntry {
            name: TGT.into(),
            alias: Some("pe1".into()),
            portals: vec![Portal {
                addr: "0.0.0.0:3260".parse().unwrap(),
                tpgt: 7,
            }],
            allowed_initiators: vec![INI.into()],
            chap,
            mutual_chap: mutual,
        }],
        ..LoginPolicy::default()
    })
}

fn req(csg: u8, transit: bool, nsg: u8) -> LoginRequest {
    LoginRequest {
        transit,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: Itt(0x1234),
        cid: 0,
        cmdsn: SerialNumber(1000),
        expstatsn: SerialNumber(50),
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let v: Vec<KeyValue> = pairs.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
    text::encode(&v)
}

fn answers(step: &LoginStep) -> Vec<(String, String)> {
    parse(&step.data)
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

fn get(step: &LoginStep, k: &str) -> Option<String> {
    answers(step)
        .into_iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v)
}

fn status_of(step: &LoginStep) -> (u8, u8) {
    (step.bhs.0[36], step.bhs.0[37])
}

/// What libiscsi sends in its operational-stage request.
fn libiscsi_operational() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "None"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("MaxConnections", "1"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ]
}

fn identity() -> Vec<(&'static str, &'static str)> {
    vec![
        ("InitiatorName", INI),
        ("InitiatorAlias", "host1"),
        ("TargetName", TGT),
        ("SessionType", "Normal"),
    ]
}

fn complete(step: &LoginStep) -> &LoginResult {
    match &step.outcome {
        LoginOutcome::Complete(r) => r,
        o => panic!("not complete: {o:?}"),
    }
}

#[test]
fn libiscsi_login_without_security_stage() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 0x0042);
    let mut keys = identity();
    keys.extend(libiscsi_operational());
    let step = m.on_request(&req(1, true, 3), &kv(&keys));
    let b = &step.bhs.0;
    assert_eq!(b[0], 0x23);
    assert_eq!(b[1], 0x87, "T=1 CSG=1 NSG=3");
    assert_eq!(&b[8..14], &ISID);
    assert_eq!(&b[14..16], &[0x00, 0x42], "TSIH on the final response");
    assert_eq!(&b[16..20], &[0, 0, 0x12, 0x34]);
    assert_eq!(&b[24..28], &50u32.to_be_bytes(), "StatSN = ExpStatSN");
    assert_eq!(&b[28..32], &1000u32.to_be_bytes(), "ExpCmdSN = CmdSN");
    assert_eq!(&b[32..36], &1127u32.to_be_bytes(), "MaxCmdSN");
    assert_eq!(status_of(&step), (0, 0));
    assert_eq!(step.bhs.data_segment_len(), step.data.len());
    let a = answers(&step);
    assert_eq!(a[0], ("TargetPortalGroupTag".into(), "7".into()));
    assert_eq!(a[1], ("TargetAlias".into(), "pe1".into()));
    assert_eq!(get(&step, "HeaderDigest").unwrap(), "None");
    assert_eq!(get(&step, "InitialR2T").unwrap(), "No");
    assert_eq!(get(&step, "DefaultTime2Retain").unwrap(), "0");
    assert_eq!(get(&step, "MaxOutstandingR2T").unwrap(), "1");
    assert_eq!(get(&step, "MaxRecvDataSegmentLength").unwrap(), "262144");
    assert!(get(&step, "InitiatorName").is_none());
    let r = complete(&step);
    assert_eq!(r.tsih, 0x42);
    assert_eq!(r.isid, ISID);
    assert_eq!(r.expcmdsn, SerialNumber(1000));
    assert_eq!(r.statsn, SerialNumber(51));
    assert_eq!(r.target.as_deref(), Some(TGT));
    let p = &r.params;
    assert_eq!(p.initiator_name, INI);
    assert_eq!(p.initiator_alias.as_deref(), Some("host1"));
    assert_eq!(p.max_xmit_data_segment_length, 262144);
    assert_eq!(p.max_recv_data_segment_length, 262144);
    assert!(!p.initial_r2t && p.immediate_data);
    assert_eq!(p.first_burst_length, 262144);
    assert!(m.is_finished());
    // Anything after completion is refused.
    let again = m.on_request(&req(1, true, 3), &[]);
    assert_eq!(status_of(&again), (2, 0x0B));
}

#[test]
fn security_none_then_operational() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 9);
    let mut keys = identity();
    keys.push(("AuthMethod", "CHAP,None"));
    let s1 = m.on_request(&req(0, true, 1), &kv(&keys));
    assert_eq!(s1.bhs.0[1], 0x81, "T=1 CSG=0 NSG=1");
    assert_eq!(
        &s1.bhs.0[14..16],
        &[0, 0],
        "no TSIH before the final response"
    );
    assert_eq!(get(&s1, "AuthMethod").unwrap(), "None");
    assert_eq!(s1.outcome, LoginOutcome::Continue);
    let mut r2 = req(1, true, 3);
    r2.expstatsn = SerialNumber(51);
    let s2 = m.on_request(&r2, &kv(&libiscsi_operational()));
    assert_eq!(s2.bhs.0[1], 0x87);
    assert_eq!(&s2.bhs.0[24..28], &51u32.to_be_bytes());
    assert!(get(&s2, "TargetPortalGroupTag").is_none());
    assert_eq!(complete(&s2).statsn, SerialNumber(52));
}

fn chap_login(
    alg_list: &str,
    secret: &str,
    mutual_req: Option<(&str, Vec<u8>)>,
    mutual_cfg: Option<ChapCredentials>,
) -> (LoginMachine, LoginStep, Vec<u8>, ChapAlgorithm) {
    let pol = policy(Some(creds("alice", "sesame-secret")), mutual_cfg);
    chap_login_to(pol, alg_list, secret, mutual_req)
}

/// A CHAP login as user "alice" with `secret`, under `pol`.
fn chap_login_to(
    pol: Arc<LoginPolicy>,
    alg_list: &str,
    secret: &str,
    mutual_req: Option<(&str, Vec<u8>)>,
) -> (LoginMachine, LoginStep, Vec<u8>, ChapAlgorithm) {
    let mut m = LoginMachine::new(pol, portal(), 5);
    let mut keys = identity();
    keys.push(("AuthMethod", "CHAP,None"));
    let s1 = m.on_request(&req(0, true, 1), &kv(&keys));
    assert_eq!(s1.bhs.0[1], 0x00, "T=0 while authenticating");
    assert_eq!(get(&s1, "AuthMethod").unwrap(), "CHAP");
    let s2 = m.on_request(&req(0, false, 0), &kv(&[("CHAP_A", alg_list)]));
    assert_eq!(s2.bhs.0[1], 0x00);
    let alg = match get(&s2, "CHAP_A").unwrap().as_str() {
        "5" => ChapAlgorithm::Md5,
        "7" => ChapAlgorithm::Sha256,
        a => panic!("{a}"),
    };
    let id: u8 = get(&s2, "CHAP_I").unwrap().parse().unwrap();
    let c = get(&s2, "CHAP_C").unwrap();
    assert!(c.starts_with("0x"));
    let c = decode_binary(&c).unwrap();
    assert_eq!(c.len(), alg.challenge_len());
    // Compute the response independently of chap_response.
    let mut buf = vec![id];
    buf.extend_from_slice(secret.as_bytes());
    buf.extend_from_slice(&c);
    let r = match alg {
        ChapAlgorithm::Md5 => {
            use md5::Digest;
            md5::Md5::digest(&buf).to_vec()
        }
        ChapAlgorithm::Sha256 => {
            use sha2::Digest;
            sha2::Sha256::digest(&buf).to_vec()
        }
    };
    let r_hex = encode_hex(&r);
    let mut keys = vec![("CHAP_N", "alice".to_string()), ("CHAP_R", r_hex)];
    if let Some((i, mc)) = &mutual_req {
        keys.push(("CHAP_I", i.to_string()));
        keys.push(("CHAP_C", encode_hex(mc)));
    }
    let keys: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s3 = m.on_request(&req(0, true, 1), &kv(&keys));
    (m, s3, c, alg)
}

#[test]
fn control_initiators_prove_the_control_secret_not_the_targets() {
    // INI is a control initiator: the target's secret, which every host knows, is not enough.
    let with_control = |target_chap: Option<ChapCredentials>| {
        let mut p = (*policy(target_chap, None)).clone();
        p.control = Some(crate::iscsi::policy::ControlLogin {
            initiators: vec![INI.to_ascii_lowercase()],
            chap: creds("alice", "control-secret-9"),
        });
        Arc::new(p)
    };
    let target = || Some(creds("alice", "sesame-secret"));
    let (_, s3, _, _) = chap_login_to(with_control(target()), "5", "sesame-secret", None);
    assert_eq!(status_of(&s3), (2, 1), "the hosts' secret");
    let (_, s3, _, _) = chap_login_to(with_control(target()), "5", "control-secret-9", None);
    assert_eq!(status_of(&s3), (0, 0));
    // On a target without CHAP, the control initiator still has to prove itself.
    let (_, s3, _, _) = chap_login_to(with_control(None), "7", "control-secret-9", None);
    assert_eq!(status_of(&s3), (0, 0));
    let mut m = LoginMachine::new(with_control(None), portal(), 5);
    let mut keys = identity();
    keys.push(("AuthMethod", "None"));
    let s = m.on_request(&req(0, true, 1), &kv(&keys));
    assert_eq!(status_of(&s), (2, 1));
}

#[test]
fn chap_md5_login() {
    let (mut m, s3, _, alg) = chap_login("5", "sesame-secret", None, None);
    assert_eq!(alg, ChapAlgorithm::Md5);
    assert_eq!(status_of(&s3), (0, 0));
    assert_eq!(s3.bhs.0[1], 0x81);
    assert!(s3.data.is_empty());
    let s4 = m.on_request(&req(1, true, 3), &kv(&libiscsi_operational()));
    assert_eq!(s4.bhs.0[1], 0x87);
    assert_eq!(complete(&s4).tsih, 5);
}

#[test]
fn chap_sha256_login() {
    let (_, s3, _, alg) = chap_login("6,7,5", "sesame-secret", None, None);
    assert_eq!(alg, ChapAlgorithm::Sha256);
    assert_eq!(status_of(&s3), (0, 0));
    assert_eq!(s3.bhs.0[1], 0x81);
}

#[test]
fn chap_wrong_password() {
    let (m, s3, _, _) = chap_login("5", "wrong", None, None);
    assert_eq!(status_of(&s3), (2, 1));
    assert_eq!(s3.bhs.0[1] & 0x80, 0);
    assert_eq!(
        s3.outcome,
        LoginOutcome::Failed {
            class: 2,
            detail: 1
        }
    );
    assert!(m.is_finished());
}

#[test]
fn chap_mutual() {
    let mc: Vec<u8> = (100u8..116).collect();
    let cfg = Some(creds("target-pe1", "target-secret"));
    let (_, s3, _, _) = chap_login("5", "sesame-secret", Some(("77", mc.clone())), cfg);
    assert_eq!(status_of(&s3), (0, 0));
    assert_eq!(get(&s3, "CHAP_N").unwrap(), "target-pe1");
    let mut buf = vec![77u8];
    buf.extend_from_slice(b"target-secret");
    buf.extend_from_slice(&mc);
    use md5::Digest;
    assert_eq!(
        get(&s3, "CHAP_R").unwrap(),
        encode_hex(&md5::Md5::digest(&buf))
    );
    let direct = chap_response(ChapAlgorithm::Md5, 77, b"target-secret", &mc);
    assert_eq!(get(&s3, "CHAP_R").unwrap(), encode_hex(&direct));
}

#[test]
fn chap_mutual_refusals() {
    // Not configured.
    let mc: Vec<u8> = (100u8..116).collect();
    let (_, s3, _, _) = chap_login("5", "sesame-secret", Some(("1", mc)), None);
    assert_eq!(status_of(&s3), (2, 1));
    // Reflection of our own challenge: rebuild the exchange by hand.
    let pol = policy(Some(creds("alice", "pw")), Some(creds("target", "tsecret")));
    let mut m = LoginMachine::new(pol, portal(), 5);
    let mut keys = identity();
    keys.push(("AuthMethod", "CHAP"));
    keys.push(("CHAP_A", "5"));
    let s = m.on_request(&req(0, false, 0), &kv(&keys));
    assert_eq!(get(&s, "AuthMethod").unwrap(), "CHAP");
    let id: u8 = get(&s, "CHAP_I").unwrap().parse().unwrap();
    let c_hex = get(&s, "CHAP_C").unwrap();
    let c = decode_binary(&c_hex).unwrap();
    let r = encode_hex(&chap_response(ChapAlgorithm::Md5, id, b"pw", &c));
    let s = m.on_request(
        &req(0, true, 1),
        &kv(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &r),
            ("CHAP_I", "3"),
            ("CHAP_C", &c_hex),
        ]),
    );
    assert_eq!(status_of(&s), (2, 1));
}

#[test]
fn chap_unsupported_algorithm() {
    let pol = policy(Some(creds("alice", "pw")), None);
    let mut m = LoginMachine::new(pol, portal(), 5);
    let mut keys = identity();
    keys.push(("AuthMethod", "CHAP"));
    m.on_request(&req(0, false, 0), &kv(&keys));
    let s = m.on_request(&req(0, false, 0), &kv(&[("CHAP_A", "6,128")]));
    assert_eq!(status_of(&s), (2, 1));
    assert_eq!(s.data, b"CHAP_A=Reject\0");
}

#[test]
fn chap_base64_response_accepted() {
    let pol = policy(Some(creds("alice", "pw")), None);
    let mut m = LoginMachine::new(pol, portal(), 5);
    let mut keys = identity();
    keys.push(("AuthMethod", "CHAP"));
    keys.push(("CHAP_A", "5"));
    let s = m.on_request(&req(0, false, 0), &kv(&keys));
    let id: u8 = get(&s, "CHAP_I").unwrap().parse().unwrap();
    let c = decode_binary(&get(&s, "CHAP_C").unwrap()).unwrap();
    let r = chap_response(ChapAlgorithm::Md5, id, b"pw", &c);
    let b64 = format!("0b{}", base64(&r));
    assert_eq!(decode_binary(&b64).unwrap(), r);
    let s = m.on_request(
        &req(0, true, 3),
        &kv(&[("CHAP_N", "alice"), ("CHAP_R", &b64)]),
    );
    assert_eq!(status_of(&s), (0, 0));
    assert_eq!(
        s.bhs.0[1], 0x81,
        "authenticated; on to the operational stage"
    );
    let s = m.on_request(&req(1, true, 3), &kv(&libiscsi_operational()));
    assert!(matches!(s.outcome, LoginOutcome::Complete(_)));
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for ch in b.chunks(3) {
        let n = ch
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &x)| a | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= ch.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn skipping_required_security_fails() {
    let pol = policy(Some(creds("alice", "pw")), None);
    let mut m = LoginMachine::new(pol.clone(), portal(), 5);
    let s = m.on_request(&req(1, true, 3), &kv(&identity()));
    assert_eq!(status_of(&s), (2, 1));
    // Also when asking to leave the security stage without AuthMethod.
    let mut m = LoginMachine::new(pol, portal(), 5);
    let s = m.on_request(&req(0, true, 1), &kv(&identity()));
    assert_eq!(status_of(&s), (2, 1));
}

#[test]
fn who_and_what_failures() {
    let pol = policy(None, None);
    let run = |keys: &[(&str, &str)]| {
        let mut m = LoginMachine::new(pol.clone(), portal(), 5);
        status_of(&m.on_request(&req(1, true, 3), &kv(keys)))
    };
    assert_eq!(
        run(&[("InitiatorName", INI), ("TargetName", "iqn.nope")]),
        (2, 3)
    );
    assert_eq!(
        run(&[("InitiatorName", "iqn.other"), ("TargetName", TGT)]),
        (2, 2)
    );
    assert_eq!(run(&[("TargetName", TGT)]), (2, 7));
    assert_eq!(run(&[("InitiatorName", INI)]), (2, 7));
    assert_eq!(
        run(&[("InitiatorName", INI), ("SessionType", "Weird")]),
        (2, 9)
    );
    // Wrong portal.
    let mut m = LoginMachine::new(pol.clone(), "192.0.2.10:3261".parse().unwrap(), 5);
    let s = m.on_request(&req(1, true, 3), &kv(&identity()));
    assert_eq!(status_of(&s), (2, 3));
}

#[test]
fn header_field_failures() {
    let pol = policy(None, None);
    let mut r = req(1, true, 3);
    r.version_min = 1;
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&r, &kv(&identity()));
    assert_eq!(status_of(&s), (2, 5));
    let mut r = req(1, true, 3);
    r.tsih = 77;
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&r, &kv(&identity()));
    assert_eq!(status_of(&s), (2, 0x0A));
    // NSG 2 is reserved; CSG 3 is not a login stage; T with C.
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&req(0, true, 2), &[]);
    assert_eq!(status_of(&s), (2, 0x0B));
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&req(3, false, 0), &[]);
    assert_eq!(status_of(&s), (2, 0x0B));
    let mut r = req(0, true, 1);
    r.cont = true;
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&r, &[]);
    assert_eq!(status_of(&s), (2, 0x0B));
    // ISID changes mid-login.
    let mut m = LoginMachine::new(pol.clone(), portal(), 5);
    let s = m.on_request(&req(1, false, 0), &kv(&identity()));
    assert_eq!(status_of(&s), (0, 0));
    let mut r = req(1, true, 3);
    r.isid[5] = 9;
    assert_eq!(status_of(&m.on_request(&r, &[])), (2, 0x0B));
    // Malformed text.
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&req(1, true, 3), b"junk");
    assert_eq!(status_of(&s), (2, 0));
    // Security keys in the operational stage.
    let mut keys = identity();
    keys.push(("AuthMethod", "None"));
    let s = LoginMachine::new(pol.clone(), portal(), 5).on_request(&req(1, true, 3), &kv(&keys));
    assert_eq!(status_of(&s), (2, 0x0B));
    // The caller's own refusal.
    let mut m = LoginMachine::new(pol, portal(), 5);
    let s = m.fail(&req(1, true, 3), 2, 6);
    assert_eq!(status_of(&s), (2, 6));
    assert!(m.is_finished());
}

#[test]
fn initiator_continue_is_accumulated() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 5);
    let mut keys = identity();
    keys.extend(libiscsi_operational());
    let all = kv(&keys);
    let (a, rest) = all.split_at(20);
    let (b, c) = rest.split_at(100);
    let mut r = req(1, false, 0);
    r.cont = true;
    let s = m.on_request(&r, a);
    assert_eq!(s.bhs.0[1], 0x04, "CSG=1, no T, no C");
    assert!(s.data.is_empty());
    assert_eq!(&s.bhs.0[24..28], &50u32.to_be_bytes());
    let s = m.on_request(&r, b);
    assert!(s.data.is_empty());
    assert_eq!(&s.bhs.0[24..28], &51u32.to_be_bytes());
    let s = m.on_request(&req(1, true, 3), c);
    assert_eq!(s.bhs.0[1], 0x87);
    assert_eq!(get(&s, "TargetPortalGroupTag").unwrap(), "7");
    assert!(matches!(s.outcome, LoginOutcome::Complete(_)));
}

#[test]
fn long_response_is_split_with_continue() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 5);
    let mut keys = identity();
    keys.extend(libiscsi_operational());
    let unknown: Vec<String> = (0..200).map(|i| format!("X-com.example.{i:045}")).collect();
    for k in &unknown {
        keys.push((k.as_str(), "1"));
    }
    let s1 = m.on_request(&req(1, true, 3), &kv(&keys));
    assert_eq!(s1.bhs.0[1], 0x44, "C=1, T=0, CSG=1");
    assert_eq!(s1.data.len(), 8192);
    assert_eq!(s1.outcome, LoginOutcome::Continue);
    let s2 = m.on_request(&req(1, true, 3), &[]);
    assert_eq!(s2.bhs.0[1], 0x87);
    assert_eq!(&s2.bhs.0[14..16], &[0, 5]);
    let mut whole = s1.data.clone();
    whole.extend_from_slice(&s2.data);
    let a = parse(&whole).unwrap();
    assert_eq!(
        a.iter().filter(|kv| kv.value == "NotUnderstood").count(),
        200
    );
    assert!(matches!(s2.outcome, LoginOutcome::Complete(_)));
}

#[test]
fn target_offers_keys_the_initiator_left_out() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 5);
    let keys = identity();
    let s1 = m.on_request(&req(1, true, 3), &kv(&keys));
    assert_eq!(s1.bhs.0[1], 0x04, "no transit while our offer is open");
    assert_eq!(get(&s1, "InitialR2T").unwrap(), "No");
    let s2 = m.on_request(&req(1, true, 3), &kv(&[("InitialR2T", "No")]));
    assert_eq!(s2.bhs.0[1], 0x87);
    assert!(s2.data.is_empty(), "answers to offers are not answered");
    let p = &complete(&s2).params;
    assert!(!p.initial_r2t);
    assert_eq!(p.max_xmit_data_segment_length, 8192);
}

#[test]
fn discovery_session_login() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 5);
    let s = m.on_request(
        &req(1, true, 3),
        &kv(&[
            ("InitiatorName", "iqn.anyone"),
            ("SessionType", "Discovery"),
            ("HeaderDigest", "CRC32C,None"),
            ("ErrorRecoveryLevel", "2"),
            ("InitialR2T", "No"),
            ("MaxRecvDataSegmentLength", "32768"),
        ]),
    );
    assert_eq!(s.bhs.0[1], 0x87);
    assert!(get(&s, "TargetPortalGroupTag").is_none());
    assert_eq!(get(&s, "InitialR2T").unwrap(), "Irrelevant");
    assert_eq!(get(&s, "ErrorRecoveryLevel").unwrap(), "0");
    let r = complete(&s);
    assert_eq!(r.params.session_type, SessionType::Discovery);
    assert!(r.params.header_digest);
    assert_eq!(r.params.max_xmit_data_segment_length, 32768);
    assert_eq!(r.target, None);
}

#[test]
fn discovery_chap_required() {
    let pol = Arc::new(LoginPolicy {
        discovery_chap: Some(creds("d", "dsecret")),
        ..LoginPolicy::default()
    });
    let mut m = LoginMachine::new(pol, portal(), 5);
    let s = m.on_request(
        &req(0, true, 1),
        &kv(&[
            ("InitiatorName", INI),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]),
    );
    assert_eq!(status_of(&s), (2, 1));
    assert_eq!(get(&s, "AuthMethod").unwrap(), "Reject");
}

fn policy_with(limits: crate::iscsi::params::TargetLimits) -> Arc<LoginPolicy> {
    let mut p = (*policy(None, None)).clone();
    p.limits = limits;
    Arc::new(p)
}

#[test]
fn a_normal_session_cannot_skip_the_operational_stage() {
    // ImmediateData=No and a 64 KiB MaxBurstLength are what the RFC defaults exceed.
    let limits = crate::iscsi::params::TargetLimits {
        immediate_data: false,
        max_burst_length: 65536,
        first_burst_length: 16384,
        ..Default::default()
    };
    let mut m = LoginMachine::new(policy_with(limits), portal(), 9);
    let mut keys = identity();
    keys.push(("AuthMethod", "None"));
    let s1 = m.on_request(&req(0, true, 3), &kv(&keys));
    assert_eq!(status_of(&s1), (0, 0));
    assert_eq!(
        s1.bhs.0[1], 0x81,
        "T=1 CSG=0 NSG=1: on to the operational stage"
    );
    assert_eq!(s1.outcome, LoginOutcome::Continue);
    // There we declare and offer; the initiator answers, then completes.
    let s2 = m.on_request(&req(1, true, 3), &[]);
    assert_eq!(
        s2.bhs.0[1], 0x04,
        "T=0 CSG=1 while our offers await answers"
    );
    assert_eq!(
        get(&s2, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    assert_eq!(get(&s2, "ImmediateData").as_deref(), Some("No"));
    assert_eq!(get(&s2, "MaxBurstLength").as_deref(), Some("65536"));
    let answer = kv(&[
        ("ImmediateData", "No"),
        ("MaxBurstLength", "65536"),
        ("FirstBurstLength", "16384"),
        ("InitialR2T", "No"),
    ]);
    let s3 = m.on_request(&req(1, true, 3), &answer);
    let p = &complete(&s3).params;
    assert!(!p.immediate_data);
    assert_eq!((p.max_burst_length, p.first_burst_length), (65536, 16384));
}

#[test]
fn a_discovery_session_may_skip_the_operational_stage() {
    let mut m = LoginMachine::new(policy(None, None), portal(), 9);
    let keys = kv(&[
        ("InitiatorName", INI),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
    ]);
    let s1 = m.on_request(&req(0, true, 3), &keys);
    assert_eq!(s1.bhs.0[1], 0x83, "T=1 CSG=0 NSG=3");
    assert!(matches!(s1.outcome, LoginOutcome::Complete(_)));
}

#[test]
fn an_invalid_value_for_a_key_our_limits_need_fails_the_login() {
    // Answered Reject, ImmediateData keeps its default Yes, which this target does not
    // allow, and cannot be offered again in this login: initiator error, not a session
    // outside the configuration.
    let limits = crate::iscsi::params::TargetLimits {
        immediate_data: false,
        ..Default::default()
    };
    let mut m = LoginMachine::new(policy_with(limits), portal(), 9);
    let mut keys = identity();
    keys.push(("ImmediateData", "maybe"));
    let s1 = m.on_request(&req(1, true, 3), &kv(&keys));
    assert_eq!(get(&s1, "ImmediateData").as_deref(), Some("Reject"));
    assert_eq!(
        s1.bhs.0[1], 0x04,
        "our other offer (InitialR2T=No) awaits its answer"
    );
    let s2 = m.on_request(&req(1, true, 3), &kv(&[("InitialR2T", "No")]));
    assert_eq!(status_of(&s2), (2, 0), "initiator error");
    // The same nonsense for a key whose default is within the limits is only answered
    // Reject (RFC 7143 §6.2), and the login goes on.
    let mut m = LoginMachine::new(policy(None, None), portal(), 9);
    let mut keys = identity();
    keys.extend(libiscsi_operational());
    keys.retain(|(k, _)| *k != "ImmediateData");
    keys.push(("ImmediateData", "maybe"));
    let s3 = m.on_request(&req(1, true, 3), &kv(&keys));
    assert_eq!(get(&s3, "ImmediateData").as_deref(), Some("Reject"));
    assert!(complete(&s3).params.immediate_data, "the default, Yes");
}

#[test]
fn a_login_text_of_too_many_keys_fails() {
    let mut keys: Vec<(String, String)> = identity()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    keys.extend((0..text::MAX_PAIRS).map(|i| (format!("X-k{i}"), String::new())));
    let pairs: Vec<KeyValue> = keys.iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let mut m = LoginMachine::new(policy(None, None), portal(), 9);
    let s = m.on_request(&req(1, true, 3), &text::encode(&pairs));
    assert_eq!(status_of(&s), (2, 0), "initiator error");
    // Up to the limit, each unknown key is answered NotUnderstood.
    let pairs = &pairs[..text::MAX_PAIRS];
    let mut m = LoginMachine::new(policy(None, None), portal(), 9);
    let s = m.on_request(&req(1, true, 3), &text::encode(pairs));
    assert_eq!(status_of(&s), (0, 0));
    assert_eq!(get(&s, "X-k0").as_deref(), Some("NotUnderstood"));
}
