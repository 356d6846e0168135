//! CHAP authentication (RFC 1994, RFC 7143 §12.1.3): algorithm choice, challenge, response
//! verification and the mutual (target-authenticating) leg.

use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::policy::ChapCredentials;
use super::text::KeyValue;

/// CHAP_A algorithm identifiers we implement (IANA PPP authentication algorithms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    Md5,
    Sha256,
}

impl ChapAlgorithm {
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha256 => 7,
        }
    }
    pub fn from_code(c: u64) -> Option<ChapAlgorithm> {
        match c {
            5 => Some(ChapAlgorithm::Md5),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }
    /// Length of the challenges we send.
    pub fn challenge_len(self) -> usize {
        self.digest_len()
    }
}

/// The first algorithm of the initiator's CHAP_A list that we support.
pub fn select_algorithm(list: &str) -> Option<ChapAlgorithm> {
    list.split(',')
        .filter_map(|a| a.trim().parse::<u64>().ok())
        .find_map(ChapAlgorithm::from_code)
}

/// H(identifier || secret || challenge).
pub fn chap_response(alg: ChapAlgorithm, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    match alg {
        ChapAlgorithm::Md5 => {
            let mut h = Md5::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        ChapAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("binary value without 0x or 0b prefix")]
    NoPrefix,
    #[error("bad hex digit")]
    BadHex,
    #[error("bad base64")]
    BadBase64,
}

/// `0x` + hex digits.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A binary value (RFC 7143 §6.1): `0x`/`0X` hex or `0b`/`0B` base64.
pub fn decode_binary(v: &str) -> Result<Vec<u8>, BinaryError> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        decode_hex(h)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        decode_base64(b)
    } else {
        Err(BinaryError::NoPrefix)
    }
}

fn decode_hex(h: &str) -> Result<Vec<u8>, BinaryError> {
    let digits: Vec<u8> = h
        .bytes()
        .map(|c| (c as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or(BinaryError::BadHex)?;
    if digits.is_empty() {
        return Err(BinaryError::BadHex);
    }
    // An odd number of digits has an implied leading zero.
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    let (head, rest) = digits.split_at(digits.len() % 2);
    out.extend(head.iter().copied());
    out.extend(rest.chunks(2).map(|p| (p[0] << 4) | p[1]));
    Ok(out)
}

fn decode_base64(b: &str) -> Result<Vec<u8>, BinaryError> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a' + 26) as u32),
            b'0'..=b'9' => Some((c - b'0' + 52) as u32),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let body = b.trim_end_matches('=');
    if body.is_empty() || b.len() % 4 != 0 || b.len() - body.len() > 2 {
        return Err(BinaryError::BadBase64);
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        acc = (acc << 6) | val(c).ok_or(BinaryError::BadBase64)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Constant-time equality (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why CHAP failed; `reply` holds keys to send in the failing Login Response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CHAP authentication failed: {reason}")]
pub struct ChapFailure {
    pub reason: &'static str,
    pub reply: Vec<KeyValue>,
}

fn fail(reason: &'static str) -> ChapFailure {
    ChapFailure {
        reason,
        reply: Vec::new(),
    }
}

/// Largest challenge we accept from the initiator (bytes).
pub const MAX_INITIATOR_CHALLENGE: usize = 1024;

#[derive(Debug, Clone)]
enum ChapState {
    AwaitAlgorithm,
    AwaitResponse {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

/// The target side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapExchange {
    creds: ChapCredentials,
    mutual: Option<ChapCredentials>,
    state: ChapState,
}

impl ChapExchange {
    pub fn new(creds: ChapCredentials, mutual: Option<ChapCredentials>) -> ChapExchange {
        ChapExchange {
            creds,
            mutual,
            state: ChapState::AwaitAlgorithm,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, ChapState::Done)
    }

    /// The challenge we sent, if any (for tests and logging).
    pub fn challenge(&self) -> Option<(ChapAlgorithm, u8, &[u8])> {
        match &self.state {
            ChapState::AwaitResponse { alg, id, challenge } => Some((*alg, *id, challenge)),
            _ => None,
        }
    }

    /// Process the CHAP_* keys of one login request; returns keys to answer with.
    pub fn step(
        &mut self,
        keys: &[KeyValue],
        rng: &mut dyn RngCore,
    ) -> Result<Vec<KeyValue>, ChapFailure> {
        let get = |k: &str| {
            keys.iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        match std::mem::replace(&mut self.state, ChapState::Done) {
            ChapState::AwaitAlgorithm => {
                let Some(list) = get("CHAP_A") else {
                    self.state = ChapState::AwaitAlgorithm;
                    if keys.is_empty() {
                        return Ok(Vec::new());
                    }
                    return Err(fail("CHAP keys before CHAP_A"));
                };
                let Some(alg) = select_algorithm(list) else {
                    return Err(ChapFailure {
                        reason: "no supported CHAP_A",
                        reply: vec![KeyValue::new("CHAP_A", "Reject")],
                    });
                };
                let id = (rng.next_u32() & 0xFF) as u8;
                let mut challenge = vec![0u8; alg.challenge_len()];
                rng.fill_bytes(&mut challenge);
                let reply = vec![
                    KeyValue::new("CHAP_A", alg.code().to_string()),
                    KeyValue::new("CHAP_I", id.to_string()),
                    KeyValue::new("CHAP_C", encode_hex(&challenge)),
                ];
                self.state = ChapState::AwaitResponse { alg, id, challenge };
                Ok(reply)
            }
            ChapState::AwaitResponse { alg, id, challenge } => {
                let name = get("CHAP_N").ok_or(fail("missing CHAP_N"))?;
                let resp = get("CHAP_R").ok_or(fail("missing CHAP_R"))?;
                let resp = decode_binary(resp).map_err(|_| fail("malformed CHAP_R"))?;
                let expected = chap_response(alg, id, self.creds.secret.as_bytes(), &challenge);
                let name_ok = ct_eq(name.as_bytes(), self.creds.user.as_bytes());
                if !(ct_eq(&resp, &expected) & name_ok) {
                    return Err(fail("wrong CHAP_N or CHAP_R"));
                }
                self.mutual_leg(alg, &challenge, get("CHAP_I"), get("CHAP_C"))
            }
            ChapState::Done => Err(fail("CHAP keys after authentication")),
        }
    }

    /// The initiator's optional CHAP_I/CHAP_C asking the target to authenticate itself.
    fn mutual_leg(
        &self,
        alg: ChapAlgorithm,
        our_challenge: &[u8],
        id: Option<&str>,
        challenge: Option<&str>,
    ) -> Result<Vec<KeyValue>, ChapFailure> {
        let (id, challenge) = match (id, challenge) {
            (None, None) => return Ok(Vec::new()),
            (Some(i), Some(c)) => (i, c),
            _ => return Err(fail("CHAP_I without CHAP_C or the reverse")),
        };
        let mutual = self
            .mutual
            .as_ref()
            .ok_or(fail("mutual CHAP requested but not configured"))?;
        let id = super::negotiate::parse_number(id)
            .filter(|n| *n <= 255)
            .ok_or(fail("malformed CHAP_I"))? as u8;
        let challenge = decode_binary(challenge).map_err(|_| fail("malformed CHAP_C"))?;
        if challenge.is_empty() || challenge.len() > MAX_INITIATOR_CHALLENGE {
            return Err(fail("CHAP_C length"));
        }
        if ct_eq(&challenge, our_challenge) {
            return Err(fail("reflected CHAP_C"));
        }
        let r = chap_response(alg, id, mutual.secret.as_bytes(), &challenge);
        Ok(vec![
            KeyValue::new("CHAP_N", mutual.user.clone()),
            KeyValue::new("CHAP_R", encode_hex(&r)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0aFF").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("0bAQ==").unwrap(), vec![1]);
        assert!(decode_binary("0bA").is_err());
        assert!(decode_binary("0b====").is_err());
        assert!(decode_binary("0x").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("1234").is_err());
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }

    #[test]
    fn algorithm_choice() {
        assert_eq!(select_algorithm("7,5"), Some(ChapAlgorithm::Sha256));
        assert_eq!(select_algorithm("6,5"), Some(ChapAlgorithm::Md5));
        assert_eq!(select_algorithm("6,x"), None);
    }

    #[test]
    fn rfc1994_md5_vector() {
        // MD5(0x01 || "secret" || 00..0f), computed independently.
        let c: Vec<u8> = (0u8..16).collect();
        let r = chap_response(ChapAlgorithm::Md5, 1, b"secret", &c);
        let mut buf = vec![1u8];
        buf.extend_from_slice(b"secret");
        buf.extend_from_slice(&c);
        assert_eq!(r, Md5::digest(&buf).to_vec());
        assert_eq!(encode_hex(&r), "0x740e86463bda3a4d7017d6e0fba0699d");
    }

    #[test]
    fn sha256_vector() {
        // SHA-256(0x2a || "topsecret" || 00..1f), computed with Python's hashlib.
        let c: Vec<u8> = (0u8..32).collect();
        let r = chap_response(ChapAlgorithm::Sha256, 0x2a, b"topsecret", &c);
        assert_eq!(
            encode_hex(&r),
            "0x7225e84fa93943ed762cdbe108d7dea96905ae7f1d74300ae42217cf6b5f8eab"
        );
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn exchange_rejects_unsupported_algorithm() {
        let mut x = ChapExchange::new(
            ChapCredentials {
                user: "u".into(),
                secret: "s".into(),
            },
            None,
        );
        let mut rng = StepRng::new(1, 1);
        let e = x
            .step(&[KeyValue::new("CHAP_A", "6")], &mut rng)
            .unwrap_err();
        assert_eq!(e.reply, vec![KeyValue::new("CHAP_A", "Reject")]);
    }
}
