//! What crosses between the state backends and the checkpoints: the
//! snapshot forms of keyed state (canonical, or a RocksDB instance's files),
//! operator state, and what a restored operator receives.
//!
//! The checkpoint protocol ([`crate::checkpoint`]) stores and reads these
//! types in subtask state files and `_metadata`; the backends
//! ([`crate::state`]) make them at snapshot time and read them on restore.
//! This module depends on neither, so the two can depend on it: the
//! checkpoint side never reaches into a backend, and a backend reaches the
//! checkpoint side only to upload files (`crate::checkpoint::storage`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::record::Data;
use crate::Result;

/// The kind of a registered state, for error messages and snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateKind {
    /// [`ValueState`](crate::state::ValueState).
    Value,
    /// [`ListState`](crate::state::ListState).
    List,
    /// [`MapState`](crate::state::MapState).
    Map,
}

/// Where the keyed state of one operator comes from on restore: the state of
/// every old subtask, in either backend's form.
#[derive(Debug, Default, Clone)]
pub struct RestoredKeyed {
    /// The canonical snapshots of the old subtasks, merged (disjoint key groups).
    pub canonical: KeyedStateSnapshot,
    /// The RocksDB instances of the old subtasks, with the job directory their paths are relative to.
    pub rocks: Vec<(PathBuf, RocksStateHandle)>,
}

/// The canonical serialized form of keyed state: per state, per key group, the
/// postcard-encoded `(key, value)` entries.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyedStateSnapshot {
    /// The states by name.
    pub states: BTreeMap<String, StateSnapshot>,
}

/// One named state in a [`KeyedStateSnapshot`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateSnapshot {
    /// Its kind.
    pub kind: StateKind,
    /// Key group -> postcard-encoded `Vec<(K, V)>` for that key group.
    pub key_groups: BTreeMap<u16, Vec<u8>>,
}

/// Where union lists live among the named lists (a name users cannot
/// clash with by accident).
const UNION_PREFIX: &str = "union:";

/// Non-keyed state of one subtask: named lists of values, serialized with
/// postcard. Sources keep their split positions here.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperatorStateStore {
    lists: BTreeMap<String, Vec<Vec<u8>>>,
}

impl OperatorStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The list called `name` (empty if never written).
    pub fn get_list<T: Data>(&self, name: &str) -> Result<Vec<T>> {
        self.lists
            .get(name)
            .map(|items| {
                items
                    .iter()
                    .map(|b| postcard::from_bytes(b).map_err(Into::into))
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Replaces the list called `name`.
    pub fn update_list<T: Data>(&mut self, name: &str, items: &[T]) -> Result<()> {
        let enc = items
            .iter()
            .map(postcard::to_allocvec)
            .collect::<Result<Vec<_>, _>>()?;
        self.lists.insert(name.to_string(), enc);
        Ok(())
    }

    /// The **union** list called `name`: on restore every subtask gets the
    /// elements all old subtasks wrote (Flink's union list state), whatever
    /// the parallelism. For state whose owner a subtask decides itself, such
    /// as the Kafka partitions a source subtask reads.
    pub fn get_union_list<T: Data>(&self, name: &str) -> Result<Vec<T>> {
        self.get_list(&format!("{UNION_PREFIX}{name}"))
    }

    /// Replaces the union list called `name` (see [`get_union_list`](Self::get_union_list)).
    pub fn update_union_list<T: Data>(&mut self, name: &str, items: &[T]) -> Result<()> {
        self.update_list(&format!("{UNION_PREFIX}{name}"), items)
    }

    /// Whether nothing was stored.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Each list's name, number of elements and bytes (for inspection tools).
    pub fn summary(&self) -> Vec<(String, usize, usize)> {
        self.lists
            .iter()
            .map(|(k, v)| (k.clone(), v.len(), v.iter().map(Vec::len).sum()))
            .collect()
    }

    /// Merges the lists of several stores (used when parallelism changes: the
    /// elements of all old subtasks are redistributed round-robin; every
    /// subtask gets all elements of a union list).
    pub fn redistribute(
        stores: &[OperatorStateStore],
        parallelism: usize,
        index: usize,
    ) -> OperatorStateStore {
        let mut out = OperatorStateStore::new();
        let mut names: Vec<&String> = stores.iter().flat_map(|s| s.lists.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let all: Vec<&Vec<u8>> = stores
                .iter()
                .filter_map(|s| s.lists.get(name))
                .flatten()
                .collect();
            let union = name.starts_with(UNION_PREFIX);
            let mine = all
                .into_iter()
                .enumerate()
                .filter(|(i, _)| union || i % parallelism == index)
                .map(|(_, b)| b.clone())
                .collect();
            out.lists.insert(name.clone(), mine);
        }
        out
    }
}

/// The keyed state of one operator of one subtask in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyedStateHandle {
    /// The canonical form, inline in the subtask's state file (heap backend).
    Canonical(KeyedStateSnapshot),
    /// The files of a RocksDB instance (RocksDB backend).
    Rocks(RocksStateHandle),
}

/// A RocksDB instance in a checkpoint: the files that make up a RocksDB
/// checkpoint of it, stored in checkpoint storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocksStateHandle {
    /// The backend instance (unique per subtask attempt; part of shared file names).
    pub instance: String,
    /// The key groups the instance held (its keys start with one of them, big-endian u16).
    pub key_groups: crate::keygroup::KeyGroupRange,
    /// Every state (column family) with its kind.
    pub states: Vec<(String, StateKind)>,
    /// The files: SST files, the MANIFEST, CURRENT and OPTIONS.
    pub files: Vec<StateFile>,
}

impl RocksStateHandle {
    /// Whether the instance holds any key group of `range`.
    pub fn overlaps(&self, range: crate::keygroup::KeyGroupRange) -> bool {
        self.key_groups.start <= range.end && range.start <= self.key_groups.end
    }

    /// Total bytes of its files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// One raw file of a checkpoint (not framed: its size and CRC-32 are recorded here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// Where it is, relative to the job directory: `shared/<name>` (incremental,
    /// reference-counted) or `chk-<n>/<name>` (owned by checkpoint n).
    pub path: String,
    /// Its name in the RocksDB directory (`000012.sst`, `MANIFEST-000005`, `CURRENT`, ...).
    pub local: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 of the content.
    pub crc32: u32,
}

#[cfg(test)]
mod tests {
    use super::OperatorStateStore;

    fn store(round_robin: &[u32], union: &[u32]) -> OperatorStateStore {
        let mut s = OperatorStateStore::new();
        s.update_list("rr", round_robin).unwrap();
        s.update_union_list("u", union).unwrap();
        s
    }

    #[test]
    fn union_lists_go_to_every_subtask_round_robin_lists_are_dealt() {
        let old = [store(&[1, 2], &[10, 11]), store(&[3], &[12])];
        for p in [1, 2, 3] {
            let mut dealt = Vec::new();
            for i in 0..p {
                let s = OperatorStateStore::redistribute(&old, p, i);
                assert_eq!(s.get_union_list::<u32>("u").unwrap(), vec![10, 11, 12]);
                // a union list is not visible as an ordinary list of that name
                assert!(s.get_list::<u32>("u").unwrap().is_empty());
                dealt.extend(s.get_list::<u32>("rr").unwrap());
            }
            dealt.sort();
            assert_eq!(dealt, vec![1, 2, 3], "parallelism {p}");
        }
    }
}
