//! Revisions: etcd's (main, sub) pair, where `main` counts write requests and `sub` counts the
//! changes inside one request (a txn), and their fixed-width big-endian encodings, whose byte
//! order equals numeric order so RocksDB iterates revisions in order.

use std::fmt;

/// A point in the store's history: `main` is the revision clients see; `sub` orders the
/// changes one write request (a txn) makes at that revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Length of an encoded [`Revision`].
pub const REVISION_LEN: usize = 16;

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Encodes as 16 big-endian bytes; byte order equals numeric order for non-negative parts.
    pub fn encode(self) -> [u8; REVISION_LEN] {
        let mut out = [0u8; REVISION_LEN];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    /// Encodes so that byte order is the reverse of numeric order (newest first).
    pub fn encode_desc(self) -> [u8; REVISION_LEN] {
        let mut out = [0u8; REVISION_LEN];
        out[..8].copy_from_slice(&(u64::MAX - self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(u64::MAX - self.sub as u64).to_be_bytes());
        out
    }

    /// Decodes [`Revision::encode`]'s output; `None` if the slice is not 16 bytes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != REVISION_LEN {
            return None;
        }
        let main = u64::from_be_bytes(bytes[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(bytes[8..].try_into().ok()?) as i64;
        Some(Revision { main, sub })
    }

    /// Decodes [`Revision::encode_desc`]'s output.
    pub fn decode_desc(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != REVISION_LEN {
            return None;
        }
        let main = u64::MAX - u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let sub = u64::MAX - u64::from_be_bytes(bytes[8..].try_into().ok()?);
        Some(Revision {
            main: main as i64,
            sub: sub as i64,
        })
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_preserves_order(a in 0i64..i64::MAX, b in 0i64..i64::MAX, c in 0i64..1000, d in 0i64..1000) {
            let (x, y) = (Revision::new(a, c), Revision::new(b, d));
            prop_assert_eq!(x.cmp(&y), x.encode().cmp(&y.encode()));
            prop_assert_eq!(x.cmp(&y).reverse(), x.encode_desc().cmp(&y.encode_desc()));
            prop_assert_eq!(Revision::decode(&x.encode()), Some(x));
            prop_assert_eq!(Revision::decode_desc(&x.encode_desc()), Some(x));
        }
    }
}
