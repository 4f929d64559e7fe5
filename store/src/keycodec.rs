//! The order-preserving encoding of user keys inside RocksDB keys.
//!
//! A user key may contain any byte, and the `key` column family appends a revision to it, so
//! the key is escaped first: each 0x00 becomes 0x00 0xFF and the key ends with 0x00 0x00. The
//! escaped form sorts exactly as the raw key does, and no key's entries can interleave with a
//! longer key's (`"a"` → `61 00 00`, `"a\0"` → `61 00 FF 00 00`).

/// The byte pair that ends an escaped key.
pub const TERMINATOR: [u8; 2] = [0x00, 0x00];
/// The byte pair just past every entry of a key: `escaped(k) ++ [0, 1]` sorts after all of
/// `k`'s versions and before any longer key that has `k` as a prefix.
pub const PAST_KEY: [u8; 2] = [0x00, 0x01];

/// Appends the escaped form of `key`, terminator included, to `out`.
pub fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    out.reserve(key.len() + 2);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&TERMINATOR);
}

/// Returns the escaped form of `key`, terminator included.
pub fn escape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(key, &mut out);
    out
}

/// Splits an encoded key at the end of its escaped user key: returns the user key and the
/// length of the escaped part (terminator included), or `None` if the bytes are malformed.
pub fn unescape_prefix(encoded: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let b = encoded[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match encoded.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x00) => return Some((out, i + 2)),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaping_preserves_order_and_round_trips(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..8),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..8),
            suffix in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let (ea, eb) = (escape(&a), escape(&b));
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            let mut with_suffix = ea.clone();
            with_suffix.extend_from_slice(&suffix);
            prop_assert_eq!(unescape_prefix(&with_suffix), Some((a.clone(), ea.len())));
            // Every version of `a` sorts below `a`'s past-key bound, which sorts below `b` when a < b.
            let mut past = ea[..ea.len() - 2].to_vec();
            past.extend_from_slice(&PAST_KEY);
            prop_assert!(with_suffix < past);
            if a < b { prop_assert!(past <= eb); }
        }
    }
}
