//! Full-feature-phase Text requests (RFC 7143 §11.10-11.11): SendTargets discovery and the
//! few keys that make sense after login, with long answers served over several Text
//! Responses that the initiator pulls with the Target Transfer Tag.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::negotiate::{is_operational_key, parse_number, Answer};
use super::params::{MAX_LENGTH, MIN_LENGTH};
use super::pdu::{text_response, Bhs, Itt, RejectReason, Seq, TextRequest};
use super::policy::{LoginPolicy, TargetEntry};
use super::text::{self, KeyValue, TextAccumulator, TextError};

/// The reserved Target Transfer Tag: "no continuation".
pub const TTT_NONE: u32 = 0xFFFF_FFFF;

fn format_addr(addr: SocketAddr, local: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        local.ip()
    } else {
        addr.ip()
    };
    // A dual-stack portal ([::]) sees IPv4 peers on IPv4-mapped addresses; an IPv4 initiator
    // must be told the plain IPv4 address it connected to.
    let ip = ip.to_canonical();
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
    }
}

fn describe(t: &TargetEntry, local: SocketAddr, out: &mut Vec<KeyValue>) {
    out.push(KeyValue::new("TargetName", t.name.clone()));
    if t.portals.is_empty() {
        let a = format!(
            "{},{}",
            format_addr(local, local),
            super::policy::DEFAULT_TPGT
        );
        out.push(KeyValue::new("TargetAddress", a));
    }
    for p in &t.portals {
        let a = format!("{},{}", format_addr(p.addr, local), p.tpgt);
        out.push(KeyValue::new("TargetAddress", a));
    }
}

/// The answer to `SendTargets=<query>` as text bytes. `session_target` is the target of a
/// normal session (None on a discovery session). Targets the initiator may not access are
/// never listed.
pub fn send_targets(
    policy: &LoginPolicy,
    initiator_name: &str,
    query: &str,
    local_portal: SocketAddr,
    session_target: Option<&str>,
) -> Vec<u8> {
    let visible = |t: &&TargetEntry| t.allows(initiator_name);
    let mut out = Vec::new();
    match (query, session_target) {
        ("All", None) => {
            for t in policy.targets.iter().filter(visible) {
                describe(t, local_portal, &mut out);
            }
        }
        ("All", Some(_)) | ("", None) => {
            out.push(KeyValue::new("SendTargets", Answer::Reject.as_str()));
        }
        (q, s) => {
            let name = if q.is_empty() {
                s.unwrap_or_default()
            } else {
                q
            };
            if let Some(t) = policy.target(name).filter(visible) {
                describe(t, local_portal, &mut out);
            }
        }
    }
    text::encode(&out)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextRequestError {
    #[error("Target Transfer Tag {0:#x} names no exchange of ours")]
    UnknownTtt(u32),
    #[error("data in a request that only pulls the rest of a response")]
    UnexpectedData,
    #[error("malformed text: {0}")]
    Malformed(#[from] TextError),
}

impl TextRequestError {
    /// What the connection answers with in a Reject PDU.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            TextRequestError::UnknownTtt(_) => RejectReason::InvalidPduField,
            _ => RejectReason::ProtocolError,
        }
    }
}

/// One Text Response to send.
#[derive(Debug, Clone)]
pub struct TextStep {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}

#[derive(Debug)]
enum Pending {
    /// The initiator is sending a long request (C bit); we handed it this TTT.
    Incoming { itt: Itt, ttt: u32 },
    /// We are sending a long response; these chunks remain.
    Outgoing {
        itt: Itt,
        ttt: u32,
        chunks: VecDeque<Vec<u8>>,
    },
}

/// Serves the Text requests of one connection in full feature phase.
pub struct TextResponder {
    policy: Arc<LoginPolicy>,
    initiator_name: String,
    session_target: Option<String>,
    local_portal: SocketAddr,
    max_recv: u32,
    max_xmit: u32,
    pending: Option<Pending>,
    inbuf: TextAccumulator,
    next_ttt: u32,
}

impl TextResponder {
    /// `max_recv`/`max_xmit` are the negotiated MaxRecvDataSegmentLength of each side.
    pub fn new(
        policy: Arc<LoginPolicy>,
        initiator_name: String,
        session_target: Option<String>,
        local_portal: SocketAddr,
        max_recv: u32,
        max_xmit: u32,
    ) -> TextResponder {
        TextResponder {
            policy,
            initiator_name,
            session_target,
            local_portal,
            max_recv,
            max_xmit,
            pending: None,
            inbuf: TextAccumulator::new(),
            next_ttt: 1,
        }
    }

    /// The initiator's current MaxRecvDataSegmentLength (it may re-declare it in FFP).
    pub fn max_xmit_data_segment_length(&self) -> u32 {
        self.max_xmit
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = match t.wrapping_add(1) {
            TTT_NONE => 1,
            n => n,
        };
        t
    }

    /// Handle one Text Request; `seq` supplies StatSN/ExpCmdSN/MaxCmdSN for the response.
    pub fn on_request(
        &mut self,
        req: &TextRequest,
        data: &[u8],
        seq: Seq,
    ) -> Result<TextStep, TextRequestError> {
        if req.ttt == TTT_NONE {
            // A new exchange (or a restart): forget any earlier one.
            self.pending = None;
            self.inbuf.reset();
        } else {
            match self.pending.take() {
                Some(Pending::Outgoing { itt, ttt, chunks })
                    if ttt == req.ttt && itt == req.itt =>
                {
                    if !data.is_empty() {
                        return Err(TextRequestError::UnexpectedData);
                    }
                    return Ok(self.send_chunks(req.itt, ttt, chunks, seq));
                }
                Some(Pending::Incoming { itt, ttt }) if ttt == req.ttt && itt == req.itt => {}
                _ => {
                    self.inbuf.reset();
                    return Err(TextRequestError::UnknownTtt(req.ttt));
                }
            }
        }
        let Some(segment) = self.inbuf.push(data, req.cont)? else {
            let ttt = self.alloc_ttt();
            self.pending = Some(Pending::Incoming { itt: req.itt, ttt });
            let bhs = text_response(req.itt, false, false, ttt, seq, 0);
            return Ok(TextStep {
                bhs,
                data: Vec::new(),
            });
        };
        let pairs = text::parse(&segment)?;
        let answer = self.answer(&pairs);
        let chunks = text::chunks(&answer, self.max_xmit as usize).into();
        let ttt = self.alloc_ttt();
        Ok(self.send_chunks(req.itt, ttt, chunks, seq))
    }

    fn send_chunks(
        &mut self,
        itt: Itt,
        ttt: u32,
        mut chunks: VecDeque<Vec<u8>>,
        seq: Seq,
    ) -> TextStep {
        let data = chunks.pop_front().unwrap_or_default();
        let more = !chunks.is_empty();
        let bhs = if more {
            self.pending = Some(Pending::Outgoing { itt, ttt, chunks });
            text_response(itt, false, true, ttt, seq, data.len())
        } else {
            text_response(itt, true, false, TTT_NONE, seq, data.len())
        };
        TextStep { bhs, data }
    }

    fn answer(&mut self, pairs: &[KeyValue]) -> Vec<u8> {
        let mut out = Vec::new();
        for kv in pairs {
            let reply = match kv.key.as_str() {
                "SendTargets" => {
                    out.extend(send_targets(
                        &self.policy,
                        &self.initiator_name,
                        &kv.value,
                        self.local_portal,
                        self.session_target.as_deref(),
                    ));
                    continue;
                }
                "MaxRecvDataSegmentLength" => match parse_number(&kv.value)
                    .filter(|n| (MIN_LENGTH..=MAX_LENGTH).contains(n))
                {
                    Some(n) => {
                        self.max_xmit = n as u32;
                        Answer::Value(self.max_recv.to_string())
                    }
                    None => Answer::Reject,
                },
                // Keys negotiable only during login.
                k if is_operational_key(k)
                    || matches!(
                        k,
                        "InitiatorName"
                            | "InitiatorAlias"
                            | "TargetName"
                            | "TargetAlias"
                            | "TargetAddress"
                            | "TargetPortalGroupTag"
                            | "SessionType"
                            | "AuthMethod"
                    )
                    || k.starts_with("CHAP_") =>
                {
                    Answer::Reject
                }
                _ => Answer::NotUnderstood,
            };
            out.extend(text::encode(&[KeyValue::new(
                kv.key.clone(),
                reply.as_str(),
            )]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::SerialNumber;
    use crate::iscsi::policy::Portal;

    #[test]
    fn ipv4_peers_of_a_dual_stack_portal_get_ipv4_addresses() {
        let any6: SocketAddr = "[::]:3260".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:3260".parse().unwrap();
        assert_eq!(format_addr(any6, mapped), "10.1.2.3:3260");
        let v6: SocketAddr = "[fd00::7]:3260".parse().unwrap();
        assert_eq!(format_addr(any6, v6), "[fd00::7]:3260");
        let v4: SocketAddr = "192.0.2.9:3261".parse().unwrap();
        assert_eq!(format_addr(v4, mapped), "192.0.2.9:3261");
    }

    fn entry(name: &str, portals: Vec<Portal>, allowed: Vec<String>) -> TargetEntry {
        TargetEntry {
            name: name.into(),
            alias: None,
            portals,
            allowed_initiators: allowed,
            chap: None,
            mutual_chap: None,
        }
    }

    fn policy() -> Arc<LoginPolicy> {
        Arc::new(LoginPolicy {
            targets: vec![
                entry(
                    "iqn.t:a",
                    vec![
                        Portal {
                            addr: "0.0.0.0:3260".parse().unwrap(),
                            tpgt: 1,
                        },
                        Portal {
                            addr: "[2001:db8::1]:3260".parse().unwrap(),
                            tpgt: 2,
                        },
                    ],
                    vec![],
                ),
                entry("iqn.t:b", vec![], vec!["iqn.i:only".into()]),
            ],
            ..LoginPolicy::default()
        })
    }

    fn local() -> SocketAddr {
        "192.0.2.5:3260".parse().unwrap()
    }

    #[test]
    fn send_targets_all_and_named() {
        let p = policy();
        let all = send_targets(&p, "iqn.i:any", "All", local(), None);
        assert_eq!(
            all,
            b"TargetName=iqn.t:a\0TargetAddress=192.0.2.5:3260,1\0\
              TargetAddress=[2001:db8::1]:3260,2\0"
        );
        let all = send_targets(&p, "iqn.i:only", "All", local(), None);
        assert!(all.ends_with(b"TargetName=iqn.t:b\0TargetAddress=192.0.2.5:3260,1\0"));
        assert_eq!(send_targets(&p, "iqn.i:any", "iqn.t:b", local(), None), b"");
        assert_eq!(
            send_targets(&p, "iqn.i:only", "iqn.t:b", local(), None),
            b"TargetName=iqn.t:b\0TargetAddress=192.0.2.5:3260,1\0"
        );
        assert_eq!(
            send_targets(&p, "iqn.i:any", "", local(), Some("iqn.t:a")),
            send_targets(&p, "iqn.i:any", "iqn.t:a", local(), None)
        );
        assert_eq!(
            send_targets(&p, "iqn.i:any", "", local(), None),
            b"SendTargets=Reject\0"
        );
    }

    fn treq(itt: u32, ttt: u32, cont: bool) -> TextRequest {
        TextRequest {
            immediate: false,
            final_bit: !cont,
            cont,
            itt: Itt(itt),
            ttt,
            cmdsn: SerialNumber(1),
            expstatsn: SerialNumber(1),
        }
    }

    fn big_policy() -> Arc<LoginPolicy> {
        let targets = (0..100)
            .map(|i| {
                entry(
                    &format!("iqn.2024-01.lab.vvold:target-{i:03}"),
                    vec![],
                    vec![],
                )
            })
            .collect();
        Arc::new(LoginPolicy {
            targets,
            ..LoginPolicy::default()
        })
    }

    #[test]
    fn send_targets_over_several_pdus() {
        let p = big_policy();
        let expected = send_targets(&p, "iqn.i", "All", local(), None);
        assert!(expected.len() > 2 * 1024);
        let mut r = TextResponder::new(p, "iqn.i".into(), None, local(), 8192, 1024);
        let seq = Seq::default();
        let first = r
            .on_request(&treq(9, TTT_NONE, false), b"SendTargets=All\0", seq)
            .unwrap();
        assert_eq!(first.bhs.0[0], 0x24);
        assert_eq!(first.bhs.0[1], 0x40, "C=1, F=0");
        assert_eq!(first.data.len(), 1024);
        let ttt = first.bhs.u32_at(20);
        assert_ne!(ttt, TTT_NONE);
        let mut got = first.data;
        let mut pdus = 1;
        loop {
            let s = r.on_request(&treq(9, ttt, false), &[], seq).unwrap();
            pdus += 1;
            got.extend_from_slice(&s.data);
            if s.bhs.0[1] == 0x80 {
                assert_eq!(s.bhs.u32_at(20), TTT_NONE);
                break;
            }
            assert_eq!(s.bhs.0[1], 0x40);
            assert_eq!(s.bhs.u32_at(20), ttt);
        }
        assert_eq!(pdus, expected.len().div_ceil(1024));
        assert_eq!(got, expected);
        // The exchange is over: the old TTT is unknown now.
        let e = r.on_request(&treq(9, ttt, false), &[], seq).unwrap_err();
        assert_eq!(e.reject_reason(), RejectReason::InvalidPduField);
    }

    #[test]
    fn restart_and_bad_continuations() {
        let mut r = TextResponder::new(big_policy(), "iqn.i".into(), None, local(), 8192, 1024);
        let seq = Seq::default();
        let first = r
            .on_request(&treq(9, TTT_NONE, false), b"SendTargets=All\0", seq)
            .unwrap();
        let ttt = first.bhs.u32_at(20);
        assert_eq!(
            r.on_request(&treq(9, ttt, false), b"A=1\0", seq)
                .unwrap_err(),
            TextRequestError::UnexpectedData
        );
        // A fresh request with the reserved TTT restarts.
        let again = r
            .on_request(&treq(10, TTT_NONE, false), b"SendTargets=All\0", seq)
            .unwrap();
        assert_eq!(again.data, first.data);
        assert!(r
            .on_request(&treq(10, TTT_NONE, false), b"bad", seq)
            .is_err());
    }

    #[test]
    fn initiator_continue_in_text() {
        let mut r = TextResponder::new(policy(), "iqn.i".into(), None, local(), 8192, 8192);
        let seq = Seq::default();
        let s = r
            .on_request(&treq(3, TTT_NONE, true), b"SendTar", seq)
            .unwrap();
        assert_eq!(s.bhs.0[1], 0x00);
        assert!(s.data.is_empty());
        let ttt = s.bhs.u32_at(20);
        assert_ne!(ttt, TTT_NONE);
        let s = r
            .on_request(&treq(3, ttt, false), b"gets=iqn.t:a\0", seq)
            .unwrap();
        assert_eq!(s.bhs.0[1], 0x80);
        assert!(s.data.starts_with(b"TargetName=iqn.t:a\0"));
    }

    #[test]
    fn other_keys_in_full_feature_phase() {
        let mut r = TextResponder::new(policy(), "iqn.i".into(), None, local(), 65536, 8192);
        let s = r
            .on_request(
                &treq(1, TTT_NONE, false),
                b"MaxRecvDataSegmentLength=16384\0InitialR2T=Yes\0X-foo=1\0Bar=2\0\
                  MaxRecvDataSegmentLength=1\0",
                Seq::default(),
            )
            .unwrap_err();
        // Duplicate keys make the whole request malformed.
        assert_eq!(s.reject_reason(), RejectReason::ProtocolError);
        let s = r
            .on_request(
                &treq(1, TTT_NONE, false),
                b"MaxRecvDataSegmentLength=16384\0InitialR2T=Yes\0X-foo=1\0Bar=2\0",
                Seq::default(),
            )
            .unwrap();
        assert_eq!(
            s.data,
            b"MaxRecvDataSegmentLength=65536\0InitialR2T=Reject\0X-foo=NotUnderstood\0\
              Bar=NotUnderstood\0"
        );
        assert_eq!(r.max_xmit_data_segment_length(), 16384);
        let s = r
            .on_request(
                &treq(2, TTT_NONE, false),
                b"MaxRecvDataSegmentLength=100\0",
                Seq::default(),
            )
            .unwrap();
        assert_eq!(s.data, b"MaxRecvDataSegmentLength=Reject\0");
        assert_eq!(r.max_xmit_data_segment_length(), 16384);
    }
}
