//! Bounds-checked CDB field access. A CDB is validated against the opcode table (length and
//! usage mask) before any handler reads it, but handlers still read through these helpers so a
//! mistake in the table can never turn into a panic on attacker-controlled input.

use bytes::Bytes;

/// A CDB that has already been matched to a table entry and cut to its nominal length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cdb<'a>(&'a [u8]);

impl<'a> Cdb<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Cdb<'a> {
        Cdb(bytes)
    }

    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.0
    }

    pub(crate) fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub(crate) fn bit(&self, i: usize, bit: u8) -> bool {
        self.u8(i) & (1 << bit) != 0
    }

    pub(crate) fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.u8(i), self.u8(i + 1)])
    }

    pub(crate) fn be32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.u8(i), self.u8(i + 1), self.u8(i + 2), self.u8(i + 3)])
    }

    pub(crate) fn be64(&self, i: usize) -> u64 {
        (u64::from(self.be32(i)) << 32) | u64::from(self.be32(i + 4))
    }
}

/// Cuts parameter data to the CDB's ALLOCATION LENGTH (SPC-4 §4.2.5.6): the device server
/// builds the whole answer and returns only what the initiator made room for.
pub(crate) fn trim(mut data: Vec<u8>, allocation_length: usize) -> Bytes {
    data.truncate(allocation_length);
    Bytes::from(data)
}

/// Writes `text` left-aligned and space-padded into `dst` (SPC-4 §4.4.1 ASCII fields).
pub(crate) fn put_ascii(dst: &mut [u8], text: &str) {
    dst.fill(b' ');
    for (d, s) in dst.iter_mut().zip(text.bytes()) {
        *d = if (0x20..=0x7E).contains(&s) { s } else { b' ' };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero_not_panics() {
        let c = Cdb::new(&[0x28, 0x01]);
        assert_eq!(c.u8(1), 1);
        assert_eq!(c.u8(9), 0);
        assert_eq!(c.be32(1), 0x0100_0000);
        assert_eq!(c.be64(100), 0);
        assert!(c.bit(1, 0));
    }

    #[test]
    fn ascii_fields_are_padded_and_sanitised() {
        let mut b = [0u8; 8];
        put_ascii(&mut b, "AB\u{7}");
        assert_eq!(&b, b"AB      ");
        put_ascii(&mut b, "0123456789");
        assert_eq!(&b, b"01234567");
    }

    #[test]
    fn trim_cuts_to_allocation_length() {
        assert_eq!(trim(vec![1, 2, 3], 2).as_ref(), &[1, 2]);
        assert_eq!(trim(vec![1, 2, 3], 10).as_ref(), &[1, 2, 3]);
    }
}
