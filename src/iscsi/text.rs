//! Text key=value data segments of Login and Text PDUs (RFC 7143 §6.1): parsing with limits,
//! encoding, and reassembly of a segment spread over several PDUs with the Continue bit.

use nom::bytes::complete::{tag, take_till, take_till1};
use nom::sequence::{separated_pair, terminated};
use nom::IResult;

/// Longest key name (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest ordinary value.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of the keys that carry large binary values (CHAP challenges and responses).
pub const MAX_LARGE_VALUE_LEN: usize = 8192;
/// Largest reassembled text segment we are willing to buffer.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most pairs one segment may hold. RFC 7143 defines about 30 keys, so no real initiator
/// comes near; 64 KiB of short unknown keys is about 14,000 pairs, which the duplicate check
/// and the per-key answers (a NotUnderstood each) would otherwise pay for before
/// authentication: 0.1-0.2 s of CPU (measured, release build) and a quarter-megabyte answer
/// per login.
pub const MAX_PAIRS: usize = 256;

/// One key=value pair, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text pair not terminated by NUL")]
    Unterminated,
    #[error("text pair without '=' or with an empty key")]
    Malformed,
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    #[error("value of {0} too long")]
    ValueTooLong(String),
    #[error("key {0} sent twice")]
    Duplicate(String),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("text segment larger than {MAX_TEXT_LEN} bytes")]
    TooLarge,
    #[error("more than {MAX_PAIRS} key=value pairs in one text segment")]
    TooManyPairs,
}

/// The value length limit for `key`.
pub fn value_limit(key: &str) -> usize {
    match key {
        "CHAP_C" | "CHAP_R" => MAX_LARGE_VALUE_LEN,
        _ => MAX_VALUE_LEN,
    }
}

fn pair(i: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    terminated(
        separated_pair(
            take_till1(|c| c == b'=' || c == 0),
            tag(&b"="[..]),
            take_till(|c| c == 0),
        ),
        tag(&b"\0"[..]),
    )(i)
}

/// Parse a complete text segment. Empty strings between NULs (padding) are skipped.
pub fn parse(data: &[u8]) -> Result<Vec<KeyValue>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLarge);
    }
    let mut out: Vec<KeyValue> = Vec::new();
    let mut rest = data;
    loop {
        while let [0, tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return Ok(out);
        }
        let (tail, (k, v)) = match pair(rest) {
            Ok(ok) => ok,
            Err(_) if !rest.contains(&0) => return Err(TextError::Unterminated),
            Err(_) => return Err(TextError::Malformed),
        };
        let key = std::str::from_utf8(k).map_err(|_| TextError::NotUtf8)?;
        let value = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8)?;
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if value.len() > value_limit(key) {
            return Err(TextError::ValueTooLong(key.to_string()));
        }
        if out.iter().any(|kv| kv.key == key) {
            return Err(TextError::Duplicate(key.to_string()));
        }
        if out.len() == MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        out.push(KeyValue::new(key, value));
        rest = tail;
    }
}

/// Encode pairs as `key=value\0...`.
pub fn encode(pairs: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in pairs {
        out.extend_from_slice(kv.key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(kv.value.as_bytes());
        out.push(0);
    }
    out
}

/// Reassembles a text segment sent over several PDUs (C bit set on all but the last).
#[derive(Debug, Default)]
pub struct TextAccumulator {
    buf: Vec<u8>,
}

impl TextAccumulator {
    pub fn new() -> TextAccumulator {
        TextAccumulator::default()
    }

    /// Add one PDU's data. Returns the whole segment once a PDU without C arrives.
    pub fn push(&mut self, data: &[u8], cont: bool) -> Result<Option<Vec<u8>>, TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            self.buf.clear();
            return Err(TextError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        if cont {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    /// Whether a segment is partly received.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

/// Split an outgoing segment into chunks of at most `max` bytes (at least one chunk).
pub fn chunks(data: &[u8], max: usize) -> Vec<Vec<u8>> {
    let max = max.max(1);
    if data.is_empty() {
        return vec![Vec::new()];
    }
    data.chunks(max).map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_pairs_per_segment() {
        let text = |n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| format!("X-k{i}=\0").into_bytes())
                .collect()
        };
        assert_eq!(parse(&text(MAX_PAIRS)).unwrap().len(), MAX_PAIRS);
        assert_eq!(parse(&text(MAX_PAIRS + 1)), Err(TextError::TooManyPairs));
    }

    #[test]
    fn parses_in_order_and_skips_padding() {
        let kv = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0\0").unwrap();
        assert_eq!(
            kv,
            vec![
                KeyValue::new("InitiatorName", "iqn.x"),
                KeyValue::new("SessionType", "Normal")
            ]
        );
        assert_eq!(parse(b"A=\0").unwrap(), vec![KeyValue::new("A", "")]);
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(b"A=1"), Err(TextError::Unterminated));
        assert_eq!(parse(b"A1\0"), Err(TextError::Malformed));
        assert_eq!(parse(b"=1\0"), Err(TextError::Malformed));
        assert_eq!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate("A".into())));
        assert_eq!(parse(b"A=\xff\0"), Err(TextError::NotUtf8));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse(ok_key.as_bytes()).is_ok());
        let long_val = format!("TargetAlias={}\0", "v".repeat(256));
        assert!(matches!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong(_))
        ));
        let chap = format!("CHAP_C=0x{}\0", "a".repeat(8000));
        assert!(parse(chap.as_bytes()).is_ok());
        let chap = format!("CHAP_C=0x{}\0", "a".repeat(8200));
        assert!(parse(chap.as_bytes()).is_err());
    }

    #[test]
    fn encode_round_trips() {
        let kv = vec![KeyValue::new("A", "1"), KeyValue::new("B", "x,y")];
        let bytes = encode(&kv);
        assert_eq!(bytes, b"A=1\0B=x,y\0");
        assert_eq!(parse(&bytes).unwrap(), kv);
    }

    #[test]
    fn accumulates_split_pairs() {
        let mut acc = TextAccumulator::new();
        assert_eq!(acc.push(b"Initiator", true), Ok(None));
        assert!(acc.in_progress());
        assert_eq!(acc.push(b"Name=iqn", true), Ok(None));
        let all = acc.push(b".a\0", false).unwrap().unwrap();
        assert_eq!(all, b"InitiatorName=iqn.a\0");
        assert!(!acc.in_progress());
        assert_eq!(
            acc.push(&vec![b'a'; MAX_TEXT_LEN + 1], true),
            Err(TextError::TooLarge)
        );
    }

    #[test]
    fn chunking() {
        assert_eq!(chunks(b"", 4), vec![Vec::<u8>::new()]);
        assert_eq!(chunks(b"abcdefghij", 4).len(), 3);
        assert_eq!(chunks(b"abcd", 4), vec![b"abcd".to_vec()]);
    }
}
