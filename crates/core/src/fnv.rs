//! FNV-1a hashes: tiny, dependency-free and stable across Rust versions and
//! platforms (unlike `std`'s hasher), for values every process and host
//! must compute alike: a definition set's fingerprint and lock keys.

/// 64-bit FNV-1a of `bytes`. Usable in constants.
///
/// ```
/// assert_eq!(waymark_core::store::fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
/// ```
pub const fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// 128-bit FNV-1a, fed piece by piece; collisions between two real sets of
/// migration names are not a practical concern at 128 bits.
pub(crate) struct Fnv128(pub(crate) u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    pub(crate) fn new() -> Self {
        Self(Self::OFFSET)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Fixed values: a change would let old and new versions disagree.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
