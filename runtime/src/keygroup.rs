//! Key groups: how keys map to subtasks, the same way Flink does it.
//!
//! A key's **key group** is `((h >> 32) * max_parallelism) >> 32` where `h` is
//! the key's [`stable_hash`] (`pipeline.max-parallelism`, default 128): the
//! upper 32 bits of a well-mixed hash scaled to the range, which spreads keys
//! as evenly as Flink's `murmur(hash) % max` without a division per record. Subtask `i` of an operator with
//! parallelism `p` owns the contiguous key-group range
//! `[ceil(i * max / p), floor(((i + 1) * max - 1) / p)]`, and key group `g` is
//! processed by subtask `g * p / max` (Flink's `KeyGroupRangeAssignment`).
//! Because state is kept and snapshotted per key group, a job restored with
//! another parallelism only reassigns whole key groups.
//!
//! [`StableHasher`] is part of the checkpoint format: it must give the same
//! hash for the same key on every run, machine and weir version, so it is
//! defined here rather than borrowed from a crate whose algorithm may change.
//! It hashes whatever the key's [`Hash`] impl writes; integers are hashed by
//! value (not native byte order), so results do not depend on endianness.

use std::hash::{Hash, Hasher};

/// A fixed, documented 64-bit hash (FxHash-style multiply-rotate over 8-byte
/// words, then the murmur3 finaliser). Stable across runs and versions.
#[derive(Default, Clone, Copy)]
pub struct StableHasher {
    h: u64,
}

const K: u64 = 0x517c_c1b7_2722_0a95;

impl StableHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.h = (self.h.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for StableHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.h)
    }
}

/// murmur3's 64-bit finaliser: spreads every input bit over the output.
#[inline]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The stable hash of a key.
#[inline]
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = StableHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// The key group of `key` among `max_parallelism` key groups.
#[inline]
pub fn key_group_for<K: Hash + ?Sized>(key: &K, max_parallelism: usize) -> u16 {
    key_group_of_hash(stable_hash(key), max_parallelism)
}

/// The key group of a key whose [`stable_hash`] is `hash`.
#[inline]
pub fn key_group_of_hash(hash: u64, max_parallelism: usize) -> u16 {
    (((hash >> 32) * max_parallelism as u64) >> 32) as u16
}

/// The subtask (of `parallelism`) that owns `key_group`.
#[inline]
pub fn subtask_for_key_group(key_group: u16, max_parallelism: usize, parallelism: usize) -> usize {
    key_group as usize * parallelism / max_parallelism
}

/// A contiguous, inclusive range of key groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    /// First key group (inclusive).
    pub start: u16,
    /// Last key group (inclusive).
    pub end: u16,
}

impl KeyGroupRange {
    /// The range subtask `index` of `parallelism` owns.
    pub fn for_subtask(max_parallelism: usize, parallelism: usize, index: usize) -> Self {
        assert!(parallelism >= 1 && parallelism <= max_parallelism && index < parallelism);
        let start = (index * max_parallelism).div_ceil(parallelism);
        let end = ((index + 1) * max_parallelism - 1) / parallelism;
        KeyGroupRange {
            start: start as u16,
            end: end as u16,
        }
    }

    /// Whether `key_group` is in the range.
    pub fn contains(&self, key_group: u16) -> bool {
        key_group >= self.start && key_group <= self.end
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize + 1
    }

    /// Always false: a range holds at least one key group.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The key groups in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_stable() {
        // These values are part of the checkpoint format: a change here breaks restores.
        assert_eq!(stable_hash("hello"), stable_hash(&String::from("hello")));
        assert_eq!(
            key_group_for("hello", 128),
            key_group_for(&String::from("hello"), 128)
        );
        let pinned: Vec<u16> = ["a", "the", "weir", "flink"]
            .iter()
            .map(|k| key_group_for(*k, 128))
            .collect();
        assert_eq!(pinned, PINNED);
    }
    const PINNED: [u16; 4] = [48, 93, 29, 59];

    proptest! {
        #[test]
        fn ranges_partition_key_groups(max in 1usize..600, p_seed in 1usize..600) {
            let p = 1 + p_seed % max;
            let mut next = 0usize;
            for i in 0..p {
                let r = KeyGroupRange::for_subtask(max, p, i);
                prop_assert_eq!(r.start as usize, next);
                for g in r.iter() {
                    prop_assert_eq!(subtask_for_key_group(g, max, p), i);
                }
                next = r.end as usize + 1;
            }
            prop_assert_eq!(next, max);
        }
    }
}
