//! CRC-32C (Castagnoli) of a few bytes by table, for a record's 4-byte length field: the
//! `crc32c` crate's call costs more than those 4 bytes do. Longer input goes to the crate.
//!
//! Invariant: `crc32c_4(b)` equals `crc32c::crc32c(&b)` for every `b` (tested).

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// The CRC-32C step of each byte value.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of 4 bytes, as `crc32c::crc32c` computes it (so `crc32c_append` goes on from it).
#[inline]
pub(crate) fn crc32c_4(bytes: [u8; 4]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc = TABLE[usize::from(crc.to_le_bytes()[0] ^ b)] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::crc32c_4;

    #[test]
    fn matches_the_crate() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let b = x.to_le_bytes();
            assert_eq!(crc32c_4(b), crc32c::crc32c(&b));
        }
        for b in [[0; 4], [0xff; 4], [1, 0, 0, 0], [0, 0, 0, 0x80]] {
            assert_eq!(crc32c_4(b), crc32c::crc32c(&b));
        }
    }
}
