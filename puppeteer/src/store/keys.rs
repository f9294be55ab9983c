//! Typed keys: how names, sequence numbers and offsets become sled keys.

/// `name 0x00`: the prefix of every composite key under `name`.
pub fn prefix_of(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// `name 0x00 n(u64 BE)`: sorts by name, then by n.
pub fn seq_key(name: &str, n: u64) -> Vec<u8> {
    let mut key = prefix_of(name);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// `name 0x00 version(u32 BE)`.
pub fn version_key(name: &str, version: u32) -> Vec<u8> {
    let mut key = prefix_of(name);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The u64 at the end of a [`seq_key`].
pub fn seq_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..].try_into().expect("8 bytes");
    u64::from_be_bytes(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_name_then_number() {
        assert!(seq_key("a", 2) < seq_key("a", 10));
        assert!(seq_key("a", u64::MAX) < seq_key("a-", 0));
        assert!(seq_key("ab", 0) > seq_key("a", u64::MAX));
        assert_eq!(seq_of(&seq_key("x", 42)), 42);
        assert!(version_key("t", 1) < version_key("t", 256));
    }
}
