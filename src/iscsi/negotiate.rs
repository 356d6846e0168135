//! Operational key negotiation (RFC 7143 §6.2, §13): one result function per key, value
//! syntax and bounds, the target's declarations and offers.

use super::params::{
    NegotiatedParams, SessionType, TargetLimits, MAX_LENGTH, MIN_LENGTH, PROTOCOL_LEVEL,
};
use super::text::KeyValue;

/// How the target answers one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Value(String),
    NotUnderstood,
    Irrelevant,
    Reject,
}

impl Answer {
    pub fn as_str(&self) -> &str {
        match self {
            Answer::Value(v) => v,
            Answer::NotUnderstood => "NotUnderstood",
            Answer::Irrelevant => "Irrelevant",
            Answer::Reject => "Reject",
        }
    }
    fn yes_no(b: bool) -> Answer {
        Answer::Value(if b { "Yes" } else { "No" }.into())
    }
    fn num(n: u64) -> Answer {
        Answer::Value(n.to_string())
    }
}

/// The three reserved answer values a peer may send back instead of a value.
pub fn is_special(v: &str) -> bool {
    matches!(v, "NotUnderstood" | "Irrelevant" | "Reject")
}

/// A numerical value: decimal or 0x-hex (RFC 7143 §6.1 numerical-value).
pub fn parse_number(v: &str) -> Option<u64> {
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (v, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn number_in(v: &str, lo: u64, hi: u64) -> Option<u64> {
    parse_number(v).filter(|n| (lo..=hi).contains(n))
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Keys irrelevant in a discovery session (RFC 7143 §13: "Irrelevant when: SessionType=Discovery").
fn discovery_irrelevant(key: &str) -> bool {
    matches!(
        key,
        "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
    )
}

/// Operational keys the negotiator understands (login stage use).
pub fn is_operational_key(key: &str) -> bool {
    matches!(
        key,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxRecvDataSegmentLength"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "OFMarker"
            | "IFMarker"
            | "OFMarkInt"
            | "IFMarkInt"
            | "TaskReporting"
            | "iSCSIProtocolLevel"
            | "RDMAExtensions"
    )
}

/// A marker interval "n~m" or "n" (obsolete OFMarkInt/IFMarkInt syntax, RFC 3720 §A.3.2).
fn valid_mark_int(v: &str) -> bool {
    let ok = |s: &str| number_in(s, 1, 65535).is_some();
    match v.split_once('~') {
        Some((a, b)) => ok(a) && ok(b),
        None => ok(v),
    }
}

/// Negotiation state of one login: the result so far, what we offered, what we declared.
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: TargetLimits,
    params: NegotiatedParams,
    received: Vec<String>,
    offered: Vec<&'static str>,
    declared_mrdsl: bool,
}

impl Negotiator {
    pub fn new(limits: TargetLimits) -> Negotiator {
        Negotiator {
            limits,
            params: NegotiatedParams::default(),
            received: Vec::new(),
            offered: Vec::new(),
            declared_mrdsl: false,
        }
    }

    pub fn set_session_type(&mut self, t: SessionType) {
        self.params.session_type = t;
    }

    pub fn session_type(&self) -> SessionType {
        self.params.session_type
    }

    /// Negotiate all operational keys of one PDU; answers in order, None = no answer needed.
    /// FirstBurstLength's answer is fixed up once the whole PDU is known.
    pub fn negotiate(&mut self, pairs: &[KeyValue]) -> Vec<KeyValue> {
        let mut out: Vec<KeyValue> = Vec::new();
        for kv in pairs {
            if let Some(a) = self.key(&kv.key, &kv.value) {
                out.push(KeyValue::new(kv.key.clone(), a.as_str()));
            }
        }
        if let Some(fb) = out.iter_mut().find(|kv| kv.key == "FirstBurstLength") {
            if fb.value != "Reject" && fb.value != "Irrelevant" {
                fb.value = if self.params.initial_r2t && !self.params.immediate_data {
                    "Irrelevant".into()
                } else {
                    self.first_burst().to_string()
                };
            }
        }
        out
    }

    fn first_burst(&self) -> u32 {
        self.params
            .first_burst_length
            .min(self.params.max_burst_length)
    }

    /// Negotiate one key. None when the key needs no answer (declarations, answers to our
    /// offers).
    pub fn key(&mut self, key: &str, value: &str) -> Option<Answer> {
        let answering_offer = match self.offered.iter().position(|k| *k == key) {
            Some(i) => {
                self.offered.remove(i);
                true
            }
            None => false,
        };
        if is_special(value) {
            // Reject, NotUnderstood or Irrelevant: to one of our offers, the key keeps its
            // default (RFC 7143 §6.2), which is what the initiator will use; otherwise
            // nonsense. No reply either way.
            if answering_offer {
                self.revert(key);
            }
            return None;
        }
        let answer = self.result(key, value);
        // Only keys we understand can matter to our offers; recording the others would let a
        // login full of unknown keys grow this list without bound.
        if !matches!(answer, Some(Answer::NotUnderstood)) && !self.received.iter().any(|k| k == key)
        {
            self.received.push(key.to_string());
        }
        if answering_offer || key == "MaxRecvDataSegmentLength" && answer.is_none() {
            return None;
        }
        Some(answer.unwrap_or(Answer::Reject))
    }

    /// The result function of each key; None = declarative, accepted without answer.
    fn result(&mut self, key: &str, v: &str) -> Option<Answer> {
        let discovery = self.params.session_type == SessionType::Discovery;
        if discovery && discovery_irrelevant(key) {
            return Some(Answer::Irrelevant);
        }
        let l = &self.limits;
        let p = &mut self.params;
        let a = match key {
            "HeaderDigest" | "DataDigest" => match self.digest(v) {
                Some(crc) => {
                    let p = &mut self.params;
                    if key == "HeaderDigest" {
                        p.header_digest = crc;
                    } else {
                        p.data_digest = crc;
                    }
                    Answer::Value(if crc { "CRC32C" } else { "None" }.into())
                }
                None => Answer::Reject,
            },
            "MaxConnections" => match number_in(v, 1, 65535) {
                Some(_) => Answer::num(1),
                None => Answer::Reject,
            },
            "InitialR2T" => match parse_bool(v) {
                Some(b) => {
                    p.initial_r2t = b || l.initial_r2t;
                    Answer::yes_no(p.initial_r2t)
                }
                None => Answer::Reject,
            },
            "ImmediateData" => match parse_bool(v) {
                Some(b) => {
                    p.immediate_data = b && l.immediate_data;
                    Answer::yes_no(p.immediate_data)
                }
                None => Answer::Reject,
            },
            "DataPDUInOrder" => match parse_bool(v) {
                Some(b) => {
                    p.data_pdu_in_order = b || l.data_pdu_in_order;
                    Answer::yes_no(p.data_pdu_in_order)
                }
                None => Answer::Reject,
            },
            "DataSequenceInOrder" => match parse_bool(v) {
                Some(b) => {
                    p.data_sequence_in_order = b || l.data_sequence_in_order;
                    Answer::yes_no(p.data_sequence_in_order)
                }
                None => Answer::Reject,
            },
            "MaxRecvDataSegmentLength" => match number_in(v, MIN_LENGTH, MAX_LENGTH) {
                Some(n) => {
                    p.max_xmit_data_segment_length = n as u32;
                    return None;
                }
                None => Answer::Reject,
            },
            "MaxBurstLength" => match number_in(v, MIN_LENGTH, MAX_LENGTH) {
                Some(n) => {
                    p.max_burst_length = (n as u32).min(l.max_burst_length);
                    Answer::num(p.max_burst_length.into())
                }
                None => Answer::Reject,
            },
            "FirstBurstLength" => match number_in(v, MIN_LENGTH, MAX_LENGTH) {
                Some(n) => {
                    p.first_burst_length = (n as u32).min(l.first_burst_length);
                    Answer::num(p.first_burst_length.into())
                }
                None => Answer::Reject,
            },
            "DefaultTime2Wait" => match number_in(v, 0, 3600) {
                Some(n) => {
                    p.default_time2wait = (n as u32).max(l.default_time2wait);
                    Answer::num(p.default_time2wait.into())
                }
                None => Answer::Reject,
            },
            "DefaultTime2Retain" => match number_in(v, 0, 3600) {
                Some(n) => {
                    p.default_time2retain = (n as u32).min(l.default_time2retain);
                    Answer::num(p.default_time2retain.into())
                }
                None => Answer::Reject,
            },
            "MaxOutstandingR2T" => match number_in(v, 1, 65535) {
                Some(n) => {
                    p.max_outstanding_r2t = (n as u32).min(l.max_outstanding_r2t);
                    Answer::num(p.max_outstanding_r2t.into())
                }
                None => Answer::Reject,
            },
            "ErrorRecoveryLevel" => match number_in(v, 0, 2) {
                Some(n) => {
                    let ours = if discovery { 0 } else { l.error_recovery_level };
                    p.error_recovery_level = (n as u8).min(ours);
                    Answer::num(p.error_recovery_level.into())
                }
                None => Answer::Reject,
            },
            "OFMarker" | "IFMarker" | "RDMAExtensions" => match parse_bool(v) {
                Some(_) => Answer::yes_no(false),
                None => Answer::Reject,
            },
            "OFMarkInt" | "IFMarkInt" => {
                if valid_mark_int(v) {
                    Answer::Irrelevant
                } else {
                    Answer::Reject
                }
            }
            "TaskReporting" => {
                if v.split(',').any(|t| t == "RFC3720") {
                    Answer::Value("RFC3720".into())
                } else {
                    Answer::Reject
                }
            }
            "iSCSIProtocolLevel" => match number_in(v, 0, 31) {
                Some(n) => Answer::num(n.min(PROTOCOL_LEVEL)),
                None => Answer::Reject,
            },
            // Target-declared keys, login-identity keys and FFP-only keys are not the
            // initiator's to negotiate here.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
                Answer::Irrelevant
            }
            _ => Answer::NotUnderstood,
        };
        Some(a)
    }

    /// HeaderDigest/DataDigest: the first of the initiator's list we support.
    fn digest(&self, v: &str) -> Option<bool> {
        v.split(',').find_map(|d| match d {
            "CRC32C" if self.limits.crc32c => Some(true),
            "None" => Some(false),
            _ => None,
        })
    }

    /// Our MaxRecvDataSegmentLength declaration, once per login.
    pub fn declarations(&mut self) -> Vec<KeyValue> {
        if self.declared_mrdsl {
            return Vec::new();
        }
        self.declared_mrdsl = true;
        let ours = (self.limits.max_recv_data_segment_length as u64).clamp(MIN_LENGTH, MAX_LENGTH);
        self.params.max_recv_data_segment_length = ours as u32;
        vec![KeyValue::new("MaxRecvDataSegmentLength", ours.to_string())]
    }

    /// Keys whose defaults we want changed and which the initiator has not sent (either side
    /// may offer operational keys). Each offered key awaits the initiator's answer.
    pub fn offers(&mut self) -> Vec<KeyValue> {
        if self.params.session_type == SessionType::Discovery {
            return Vec::new();
        }
        let l = self.limits.clone();
        let d = NegotiatedParams::default();
        let mut wanted: Vec<(&'static str, String)> = Vec::new();
        if !l.initial_r2t && d.initial_r2t {
            wanted.push(("InitialR2T", "No".into()));
        }
        if !l.immediate_data && d.immediate_data {
            wanted.push(("ImmediateData", "No".into()));
        }
        if l.max_burst_length < d.max_burst_length {
            wanted.push(("MaxBurstLength", l.max_burst_length.to_string()));
        }
        if l.first_burst_length < d.first_burst_length {
            wanted.push(("FirstBurstLength", l.first_burst_length.to_string()));
        }
        let mut out = Vec::new();
        for (k, v) in wanted {
            if self.received.iter().any(|r| r == k) || self.offered.contains(&k) {
                continue;
            }
            // Apply our side now: the initiator's answer can only move the result our way
            // or keep it.
            self.result(k, &v);
            self.offered.push(k);
            out.push(KeyValue::new(k, v));
        }
        out
    }

    /// Whether the result so far stays within this target's configuration. It leaves it only
    /// where a key keeps an RFC default our configuration does not allow: the initiator sent
    /// it with a value we answered Reject, and a key is negotiated once per login (RFC 7143
    /// §6.2), so we cannot offer ours after that.
    pub fn within_limits(&self) -> bool {
        let (l, p) = (&self.limits, &self.params);
        p.session_type == SessionType::Discovery
            || (l.immediate_data || !p.immediate_data)
                && p.max_burst_length <= l.max_burst_length
                && self.first_burst() <= l.first_burst_length
    }

    /// Whether offers are still awaiting the initiator's answer.
    pub fn offers_pending(&self) -> bool {
        !self.offered.is_empty()
    }

    /// Forget unanswered offers: the initiator never took them up, so those keys keep their
    /// defaults, as on its side. (`within_limits` then tells whether the login can go on.)
    pub fn drop_offers(&mut self) {
        for key in std::mem::take(&mut self.offered) {
            self.revert(key);
        }
    }

    /// Put an offered key back to its RFC default (our offer was applied when made).
    fn revert(&mut self, key: &str) {
        let d = NegotiatedParams::default();
        match key {
            "InitialR2T" => self.params.initial_r2t = d.initial_r2t,
            "ImmediateData" => self.params.immediate_data = d.immediate_data,
            "MaxBurstLength" => self.params.max_burst_length = d.max_burst_length,
            "FirstBurstLength" => self.params.first_burst_length = d.first_burst_length,
            _ => {}
        }
    }

    /// The negotiated parameters; FirstBurstLength clamped to MaxBurstLength.
    pub fn finish(&self) -> NegotiatedParams {
        let mut p = self.params.clone();
        p.first_burst_length = self.first_burst();
        if p.session_type == SessionType::Discovery {
            p.error_recovery_level = 0;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg() -> Negotiator {
        Negotiator::new(TargetLimits::default())
    }

    fn ans(n: &mut Negotiator, k: &str, v: &str) -> Option<String> {
        n.key(k, v).map(|a| a.as_str().to_string())
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("512"), Some(512));
        assert_eq!(parse_number("0x200"), Some(512));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    #[test]
    fn digests_pick_first_supported() {
        let mut n = neg();
        assert_eq!(
            ans(&mut n, "HeaderDigest", "CRC32C,None").unwrap(),
            "CRC32C"
        );
        assert_eq!(ans(&mut n, "DataDigest", "None,CRC32C").unwrap(), "None");
        assert!(n.finish().header_digest);
        assert!(!n.finish().data_digest);
        assert_eq!(ans(&mut n, "DataDigest", "MD5,CRC32C").unwrap(), "CRC32C");
        assert_eq!(ans(&mut n, "DataDigest", "MD5").unwrap(), "Reject");
        let mut n = Negotiator::new(TargetLimits {
            crc32c: false,
            ..TargetLimits::default()
        });
        assert_eq!(ans(&mut n, "HeaderDigest", "CRC32C,None").unwrap(), "None");
    }

    #[test]
    fn boolean_functions() {
        let mut n = neg();
        // OR with our No.
        assert_eq!(ans(&mut n, "InitialR2T", "Yes").unwrap(), "Yes");
        assert_eq!(ans(&mut n, "InitialR2T", "No").unwrap(), "No");
        // AND with our Yes.
        assert_eq!(ans(&mut n, "ImmediateData", "No").unwrap(), "No");
        assert_eq!(ans(&mut n, "ImmediateData", "Yes").unwrap(), "Yes");
        // OR with our Yes.
        assert_eq!(ans(&mut n, "DataPDUInOrder", "No").unwrap(), "Yes");
        assert_eq!(ans(&mut n, "DataSequenceInOrder", "No").unwrap(), "Yes");
        assert_eq!(ans(&mut n, "InitialR2T", "yes").unwrap(), "Reject");
        // Markers: always No.
        assert_eq!(ans(&mut n, "OFMarker", "Yes").unwrap(), "No");
        assert_eq!(ans(&mut n, "IFMarker", "No").unwrap(), "No");
        assert_eq!(ans(&mut n, "IFMarkInt", "2048~8192").unwrap(), "Irrelevant");
        assert_eq!(ans(&mut n, "OFMarkInt", "0~x").unwrap(), "Reject");
        let mut n = Negotiator::new(TargetLimits {
            immediate_data: false,
            initial_r2t: true,
            ..TargetLimits::default()
        });
        assert_eq!(ans(&mut n, "ImmediateData", "Yes").unwrap(), "No");
        assert_eq!(ans(&mut n, "InitialR2T", "No").unwrap(), "Yes");
    }

    #[test]
    fn numeric_functions_and_bounds() {
        let mut n = neg();
        assert_eq!(ans(&mut n, "MaxBurstLength", "1048576").unwrap(), "1048576");
        assert_eq!(
            ans(&mut n, "MaxBurstLength", "16777215").unwrap(),
            "16777215"
        );
        assert_eq!(ans(&mut n, "MaxBurstLength", "16777216").unwrap(), "Reject");
        assert_eq!(ans(&mut n, "MaxBurstLength", "511").unwrap(), "Reject");
        assert_eq!(
            ans(&mut n, "FirstBurstLength", "1048576").unwrap(),
            "262144"
        );
        assert_eq!(ans(&mut n, "FirstBurstLength", "65536").unwrap(), "65536");
        assert_eq!(ans(&mut n, "DefaultTime2Wait", "0").unwrap(), "2");
        assert_eq!(ans(&mut n, "DefaultTime2Wait", "10").unwrap(), "10");
        assert_eq!(ans(&mut n, "DefaultTime2Wait", "3601").unwrap(), "Reject");
        assert_eq!(ans(&mut n, "DefaultTime2Retain", "0").unwrap(), "0");
        assert_eq!(ans(&mut n, "DefaultTime2Retain", "60").unwrap(), "20");
        assert_eq!(ans(&mut n, "MaxOutstandingR2T", "1").unwrap(), "1");
        assert_eq!(ans(&mut n, "MaxOutstandingR2T", "64").unwrap(), "32");
        assert_eq!(ans(&mut n, "MaxOutstandingR2T", "0").unwrap(), "Reject");
        assert_eq!(ans(&mut n, "MaxOutstandingR2T", "65536").unwrap(), "Reject");
        assert_eq!(ans(&mut n, "ErrorRecoveryLevel", "2").unwrap(), "0");
        assert_eq!(ans(&mut n, "ErrorRecoveryLevel", "3").unwrap(), "Reject");
        assert_eq!(ans(&mut n, "MaxConnections", "4").unwrap(), "1");
        assert_eq!(ans(&mut n, "MaxConnections", "0").unwrap(), "Reject");
        assert_eq!(ans(&mut n, "iSCSIProtocolLevel", "2").unwrap(), "1");
        assert_eq!(ans(&mut n, "iSCSIProtocolLevel", "0").unwrap(), "0");
        assert_eq!(
            ans(&mut n, "TaskReporting", "FastAbort,RFC3720").unwrap(),
            "RFC3720"
        );
        assert_eq!(ans(&mut n, "TaskReporting", "FastAbort").unwrap(), "Reject");
        let p = n.finish();
        assert_eq!(p.max_burst_length, 16_777_215);
        assert_eq!(p.default_time2wait, 10);
        assert_eq!(p.max_outstanding_r2t, 32);
    }

    #[test]
    fn first_burst_clamped_to_max_burst() {
        let mut n = neg();
        let out = n.negotiate(&[
            KeyValue::new("FirstBurstLength", "262144"),
            KeyValue::new("MaxBurstLength", "65536"),
        ]);
        assert_eq!(out[0], KeyValue::new("FirstBurstLength", "65536"));
        assert_eq!(out[1], KeyValue::new("MaxBurstLength", "65536"));
        assert_eq!(n.finish().first_burst_length, 65536);
        // Irrelevant when InitialR2T=Yes and ImmediateData=No.
        let mut n = neg();
        let out = n.negotiate(&[
            KeyValue::new("InitialR2T", "Yes"),
            KeyValue::new("ImmediateData", "No"),
            KeyValue::new("FirstBurstLength", "65536"),
        ]);
        assert_eq!(out[2], KeyValue::new("FirstBurstLength", "Irrelevant"));
    }

    #[test]
    fn declarative_and_unknown() {
        let mut n = neg();
        assert_eq!(n.key("MaxRecvDataSegmentLength", "65536"), None);
        assert_eq!(n.finish().max_xmit_data_segment_length, 65536);
        assert_eq!(
            ans(&mut n, "MaxRecvDataSegmentLength", "256").unwrap(),
            "Reject"
        );
        assert_eq!(
            ans(&mut n, "X-com.example.foo", "1").unwrap(),
            "NotUnderstood"
        );
        assert_eq!(ans(&mut n, "X#bar", "1").unwrap(), "NotUnderstood");
        assert_eq!(ans(&mut n, "Bogus", "1").unwrap(), "NotUnderstood");
        assert_eq!(ans(&mut n, "SendTargets", "All").unwrap(), "Irrelevant");
        assert_eq!(
            n.declarations(),
            vec![KeyValue::new("MaxRecvDataSegmentLength", "262144")]
        );
        assert_eq!(n.declarations(), vec![]);
        assert_eq!(n.finish().max_recv_data_segment_length, 262_144);
    }

    #[test]
    fn discovery_irrelevant_keys() {
        let mut n = neg();
        n.set_session_type(SessionType::Discovery);
        assert_eq!(ans(&mut n, "InitialR2T", "No").unwrap(), "Irrelevant");
        assert_eq!(ans(&mut n, "MaxBurstLength", "512").unwrap(), "Irrelevant");
        assert_eq!(ans(&mut n, "HeaderDigest", "CRC32C").unwrap(), "CRC32C");
        assert_eq!(n.key("MaxRecvDataSegmentLength", "4096"), None);
        assert_eq!(n.finish().max_xmit_data_segment_length, 4096);
        assert!(n.offers().is_empty());
    }

    #[test]
    fn offers_only_unsent_keys() {
        let mut n = neg();
        assert_eq!(n.offers(), vec![KeyValue::new("InitialR2T", "No")]);
        assert!(n.offers_pending());
        // The initiator's answer is not answered again.
        assert_eq!(n.key("InitialR2T", "No"), None);
        assert!(!n.offers_pending());
        assert!(!n.finish().initial_r2t);

        let mut n = neg();
        assert_eq!(ans(&mut n, "InitialR2T", "Yes").unwrap(), "Yes");
        assert!(n.offers().is_empty());
    }

    #[test]
    fn offers_refused_or_ignored_leave_the_defaults() {
        // Our offers are applied when made; an initiator that rejects one, or never answers,
        // keeps the RFC default, and so must we (then a default our limits do not allow ends
        // the login instead of leaving the two sides apart).
        let strict = TargetLimits {
            immediate_data: false,
            max_burst_length: 65536,
            first_burst_length: 65536,
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new(strict.clone());
        let offered: Vec<String> = n.offers().into_iter().map(|kv| kv.key).collect();
        assert!(offered.iter().any(|k| k == "ImmediateData"), "{offered:?}");
        assert!(!n.finish().immediate_data, "applied when offered");
        assert_eq!(n.key("ImmediateData", "Reject"), None);
        assert_eq!(n.key("MaxBurstLength", "65536"), None);
        assert!(n.finish().immediate_data, "the default stands");
        assert!(!n.within_limits());

        let mut n = Negotiator::new(strict);
        n.offers();
        n.drop_offers();
        let p = n.finish();
        assert!(p.immediate_data && p.initial_r2t);
        assert_eq!(p.max_burst_length, 262_144);
        assert!(!n.within_limits());
    }
}
