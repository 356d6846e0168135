//! CRC32C header and data digests (RFC 7143 §12.1). The `crc32c` crate uses the CPU's CRC32
//! instruction (SSE4.2 / ARMv8) when present and folds several streams in parallel.

/// Digest of one buffer.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continue a digest over the next piece of a segment, so digests are computed as bytes arrive.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Digest of a data segment including its zero padding, as the wire carries it.
pub fn data_digest<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    let mut crc = 0;
    let mut len = 0usize;
    for p in pieces {
        crc = crc32c_append(crc, p);
        len += p.len();
    }
    let pad = super::pdu::pad_len(len);
    crc32c_append(crc, &[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_test_vectors() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros, of ones, incrementing.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a9136aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd794e);
    }

    #[test]
    fn pieces_equal_whole() {
        let whole: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(
            data_digest([&whole[..10], &whole[10..]]),
            data_digest([&whole[..]])
        );
    }
}
