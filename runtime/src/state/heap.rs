//! The heap keyed-state backend (`state.backend.type: hashmap`): per
//! registered state, one typed hash map **per key group**, in the subtask's
//! memory.
//!
//! # Copy-on-write snapshots (docs/design.md invariant 2: the synchronous part is cheap)
//! Each key group's map is owned by the live state until a snapshot shares
//! it: the synchronous part of a snapshot
//! (`HeapKeyedStateBackend::snapshot_async`) moves each non-empty map into an
//! [`Arc`] and keeps a clone of that `Arc`: O(number of key groups),
//! independent of the number of keys. The returned job serializes the frozen
//! maps later, in the asynchronous upload, off the processing loop. The first
//! write to a key group after a snapshot takes its map back
//! (`Arc::try_unwrap`) if the upload is done with it, or copies that one key
//! group's map if the upload still holds it (Flink's copy-on-write state
//! table does the same per entry). So processing never stalls for the whole
//! state: at most one key group is copied at a time, and only while an
//! upload still holds it. Between snapshots every map is owned and an access
//! costs no atomic operation.
//!
//! Access costs one key-group lookup (the key group is computed from the key,
//! as routing did) plus one hash lookup and one type check per call. The
//! canonical form ([`KeyedStateSnapshot`]: per state, per key group, the
//! postcard-encoded `Vec<(K, V)>`) is what is serialized, so snapshots split
//! by key-group range when a job is rescaled, and a RocksDB snapshot can be
//! restored here (and the other way round).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{KeyedStateSnapshot, StateKind, StateSnapshot};
use crate::keygroup::KeyGroupRange;
use crate::record::{Data, Key};
use crate::{Error, Result};

/// Serializes frozen state later (in the asynchronous part of a snapshot).
pub(crate) type SerializeJob = Box<dyn FnOnce() -> Result<BTreeMap<u16, Vec<u8>>> + Send>;

/// A map per key group of a range, each shared with snapshots copy-on-write.
pub(crate) struct KgMap<K, V> {
    first: u16,
    shards: Vec<Shard<K, V>>,
}

/// One key group's map: owned by the live state, or shared with snapshots
/// taken since it was last written. Telling them apart is a plain enum
/// check, so an access to an owned map (every access between two
/// snapshots) costs no atomic operation, where `Arc::make_mut` costs one
/// compare-and-swap per call.
enum Shard<K, V> {
    Owned(FxHashMap<K, V>),
    Shared(Arc<FxHashMap<K, V>>),
}

impl<K, V> Shard<K, V> {
    #[inline]
    fn map(&self) -> &FxHashMap<K, V> {
        match self {
            Shard::Owned(m) => m,
            Shard::Shared(m) => m,
        }
    }
}

impl<K: Key, V: Clone + Send + Sync + 'static> KgMap<K, V> {
    fn new(range: KeyGroupRange) -> Self {
        KgMap {
            first: range.start,
            shards: (0..range.len())
                .map(|_| Shard::Owned(FxHashMap::default()))
                .collect(),
        }
    }

    #[inline]
    fn index(&self, kg: u16) -> Result<usize> {
        let i = kg.wrapping_sub(self.first) as usize;
        if i < self.shards.len() {
            Ok(i)
        } else {
            Err(Error::Internal(format!(
                "key group {kg} is not in this subtask's range (starts at {}, {} groups)",
                self.first,
                self.shards.len()
            )))
        }
    }

    /// The value of `key` (in key group `kg`).
    #[inline]
    pub(crate) fn get(&self, kg: u16, key: &K) -> Result<Option<&V>> {
        Ok(self.shards[self.index(kg)?].map().get(key))
    }

    /// The map of key group `kg`, for writing. A map still shared with a
    /// snapshot is taken back, or copied if the snapshot still holds it.
    #[inline]
    pub(crate) fn shard_mut(&mut self, kg: u16) -> Result<&mut FxHashMap<K, V>> {
        let i = self.index(kg)?;
        let shard = &mut self.shards[i];
        if let Shard::Shared(m) = shard {
            let m = std::mem::take(m);
            *shard = Shard::Owned(Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone()));
        }
        match shard {
            Shard::Owned(m) => Ok(m),
            Shard::Shared(_) => Err(Error::Internal("a shard stayed shared".into())),
        }
    }

    /// Every entry of every key group.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.map().iter())
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map().len()).sum()
    }

    /// O(key groups): the current maps, shared with the live state.
    fn freeze(&mut self) -> Vec<(u16, Arc<FxHashMap<K, V>>)> {
        let first = self.first;
        self.shards
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| !s.map().is_empty())
            .map(|(i, s)| {
                let shared = match s {
                    Shard::Shared(m) => m.clone(),
                    Shard::Owned(m) => {
                        let m = Arc::new(std::mem::take(m));
                        *s = Shard::Shared(m.clone());
                        m
                    }
                };
                (first + i as u16, shared)
            })
            .collect()
    }
}

/// Serializes a map as the sequence of its `(key, value)` pairs: the same
/// bytes as a `Vec<(K, V)>`, without building the vector.
struct Entries<'a, K, V>(&'a FxHashMap<K, V>);

impl<K: Serialize, V: Serialize> Serialize for Entries<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// One registered state's storage.
pub(crate) trait Table: Send + 'static {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn len(&self) -> usize;
    /// Freezes the current contents (O(key groups)); the job encodes them per key group.
    fn freeze(&mut self) -> SerializeJob;
    /// Adds the entries of key group `kg` (canonical bytes).
    fn restore(&mut self, kg: u16, bytes: &[u8]) -> Result<()>;
}

/// Constructs an empty table of a given type (so `register` can be generic).
pub(crate) trait NewTable: Table + Sized {
    fn empty(range: KeyGroupRange) -> Self;
}

macro_rules! table {
    ($name:ident, [$($p:ident: $b:path),*], $val:ty) => {
        pub(crate) struct $name<K, $($p),*> {
            pub(crate) map: KgMap<K, $val>,
        }
        impl<K: Key, $($p: $b),*> NewTable for $name<K, $($p),*> {
            fn empty(range: KeyGroupRange) -> Self {
                $name { map: KgMap::new(range) }
            }
        }
        impl<K: Key, $($p: $b),*> Table for $name<K, $($p),*> {
            fn as_any(&self) -> &dyn Any { self }
            fn as_any_mut(&mut self) -> &mut dyn Any { self }
            fn len(&self) -> usize { self.map.len() }
            fn freeze(&mut self) -> SerializeJob {
                let frozen = self.map.freeze();
                Box::new(move || {
                    frozen
                        .iter()
                        .map(|(g, m)| Ok((*g, postcard::to_allocvec(&Entries(m))?)))
                        .collect()
                })
            }
            fn restore(&mut self, kg: u16, bytes: &[u8]) -> Result<()> {
                let entries: Vec<(K, $val)> = postcard::from_bytes(bytes)?;
                self.map.shard_mut(kg)?.extend(entries);
                Ok(())
            }
        }
    };
}

/// Bounds of values in heap tables (`Sync` comes with [`Data`]).
pub(crate) trait Val: Data + Clone {}
impl<T: Data + Clone> Val for T {}

table!(ValueTable, [T: Val], T);
table!(ListTable, [T: Val], Vec<T>);
table!(MapTable, [UK: Key, UV: Val], FxHashMap<UK, UV>);

struct Registered {
    name: String,
    kind: StateKind,
    table: Box<dyn Table>,
}

/// In-memory keyed state of one subtask.
pub struct HeapKeyedStateBackend<K> {
    pub(crate) range: KeyGroupRange,
    states: Vec<Registered>,
    _k: std::marker::PhantomData<fn() -> K>,
}

/// The synchronous part of a heap snapshot: the frozen maps of every state.
pub(crate) struct HeapPending {
    states: Vec<(String, StateKind, SerializeJob)>,
}

impl HeapPending {
    /// Serializes the frozen maps into the canonical form (asynchronous part).
    pub(crate) fn encode(self) -> Result<KeyedStateSnapshot> {
        let mut out = KeyedStateSnapshot::default();
        for (name, kind, job) in self.states {
            out.states.insert(
                name,
                StateSnapshot {
                    kind,
                    key_groups: job()?,
                },
            );
        }
        Ok(out)
    }
}

impl<K: Key> HeapKeyedStateBackend<K> {
    /// An empty backend for `range`.
    pub fn new(range: KeyGroupRange, max_parallelism: usize) -> Self {
        let _ = max_parallelism;
        HeapKeyedStateBackend {
            range,
            states: Vec::new(),
            _k: std::marker::PhantomData,
        }
    }

    pub(crate) fn register<T: NewTable>(&mut self, name: &str, kind: StateKind) -> Result<usize> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            let s = &self.states[i];
            if s.kind != kind || !s.table.as_any().is::<T>() {
                return Err(Error::User(format!(
                    "state '{name}' is already registered as a {:?} state of another type",
                    s.kind
                )));
            }
            return Ok(i);
        }
        self.states.push(Registered {
            name: name.to_string(),
            kind,
            table: Box::new(T::empty(self.range)),
        });
        Ok(self.states.len() - 1)
    }

    #[inline]
    pub(crate) fn table<T: 'static>(&self, id: usize) -> Result<&T> {
        self.states
            .get(id)
            .and_then(|s| s.table.as_any().downcast_ref::<T>())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "state handle {id} does not belong to this operator"
                ))
            })
    }

    #[inline]
    pub(crate) fn table_mut<T: 'static>(&mut self, id: usize) -> Result<&mut T> {
        self.states
            .get_mut(id)
            .and_then(|s| s.table.as_any_mut().downcast_mut::<T>())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "state handle {id} does not belong to this operator"
                ))
            })
    }

    pub(crate) fn num_entries(&self) -> usize {
        self.states.iter().map(|s| s.table.len()).sum()
    }

    /// Synchronous part of a snapshot: O(states x key groups), no serialization.
    pub(crate) fn snapshot_async(&mut self) -> HeapPending {
        HeapPending {
            states: self
                .states
                .iter_mut()
                .map(|s| (s.name.clone(), s.kind, s.table.freeze()))
                .collect(),
        }
    }

    pub(crate) fn snapshot(&mut self) -> Result<KeyedStateSnapshot> {
        self.snapshot_async().encode()
    }

    pub(crate) fn restore(&mut self, snap: &KeyedStateSnapshot) -> Result<()> {
        for (name, st) in &snap.states {
            if st.key_groups.is_empty() {
                // Nothing to restore (e.g. the `_timers` of an operator
                // that never set a timer): not checked against the operator.
                continue;
            }
            let s = self
                .states
                .iter_mut()
                .find(|s| &s.name == name)
                .ok_or_else(|| {
                    Error::User(format!(
                        "restored state '{name}' was not registered by the operator"
                    ))
                })?;
            if s.kind != st.kind {
                return Err(Error::User(format!(
                    "restored state '{name}' is a {:?} state but the operator registers a {:?} state",
                    st.kind, s.kind
                )));
            }
            for (g, bytes) in &st.key_groups {
                if self.range.contains(*g) {
                    s.table.restore(*g, bytes)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::keygroup::key_group_for;

    #[test]
    fn values_are_per_key_and_snapshot_splits_by_key_group() {
        let max = 16;
        let mut b = KeyedStateBackend::<String>::heap(KeyGroupRange::for_subtask(max, 1, 0), max);
        let count = b
            .value_state(&ValueStateDescriptor::<u64>::new("count"))
            .unwrap();
        let seen = b
            .list_state(&ListStateDescriptor::<u32>::new("seen"))
            .unwrap();
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            let mut ctx = KeyedContext::new(k, &mut b, max);
            count.update(&mut ctx, i as u64).unwrap();
            seen.add(&mut ctx, i as u32).unwrap();
            seen.add(&mut ctx, 7).unwrap();
        }
        for (i, k) in keys.iter().enumerate() {
            let ctx = KeyedContext::new(k, &mut b, max);
            assert_eq!(count.value(&ctx).unwrap(), Some(i as u64));
            assert_eq!(seen.get(&ctx).unwrap(), vec![i as u32, 7]);
        }
        // Registering the same name with another type is an error, not a silent reuse.
        assert!(b
            .value_state(&ValueStateDescriptor::<String>::new("count"))
            .is_err());

        // Split the snapshot over 3 subtasks: every key lands in exactly the one that owns its key group.
        let snap = b.snapshot().unwrap();
        let mut total = 0;
        for i in 0..3 {
            let range = KeyGroupRange::for_subtask(max, 3, i);
            let mut part = KeyedStateBackend::<String>::heap(range, max);
            let c = part
                .value_state(&ValueStateDescriptor::<u64>::new("count"))
                .unwrap();
            part.list_state(&ListStateDescriptor::<u32>::new("seen"))
                .unwrap();
            part.restore(&snap).unwrap();
            for (j, k) in keys.iter().enumerate() {
                if !range.contains(key_group_for(k, max)) {
                    continue;
                }
                let ctx = KeyedContext::new(k, &mut part, max);
                assert_eq!(c.value(&ctx).unwrap(), Some(j as u64));
                total += 1;
            }
        }
        assert_eq!(total, keys.len());
    }

    #[test]
    fn snapshot_is_copy_on_write() {
        let max = 8;
        let mut b = KeyedStateBackend::<u32>::heap(KeyGroupRange::for_subtask(max, 1, 0), max);
        let v = b
            .value_state(&ValueStateDescriptor::<u64>::new("v"))
            .unwrap();
        for k in 0..1000u32 {
            let mut ctx = KeyedContext::new(&k, &mut b, max);
            v.update(&mut ctx, 1).unwrap();
        }
        let pending = match &mut b {
            KeyedStateBackend::Heap(h) => h.snapshot_async(),
            #[allow(unreachable_patterns)]
            _ => unreachable!(),
        };
        // Writes after the synchronous part are not in the snapshot.
        for k in 0..2000u32 {
            let mut ctx = KeyedContext::new(&k, &mut b, max);
            v.update(&mut ctx, 2).unwrap();
        }
        let snap = pending.encode().unwrap();
        let mut r = KeyedStateBackend::<u32>::heap(KeyGroupRange::for_subtask(max, 1, 0), max);
        let rv = r
            .value_state(&ValueStateDescriptor::<u64>::new("v"))
            .unwrap();
        r.restore(&snap).unwrap();
        assert_eq!(r.num_entries(), 1000);
        for k in 0..1000u32 {
            let ctx = KeyedContext::new(&k, &mut r, max);
            assert_eq!(rv.value(&ctx).unwrap(), Some(1));
        }
        assert_eq!(b.num_entries(), 2000);
    }

    #[test]
    fn map_state() {
        let mut b = KeyedStateBackend::<u32>::heap(KeyGroupRange::for_subtask(128, 1, 0), 128);
        let m = b
            .map_state(&MapStateDescriptor::<String, i64>::new("m"))
            .unwrap();
        let (a, z) = (1u32, 2u32);
        let mut ctx = KeyedContext::new(&a, &mut b, 128);
        m.put(&mut ctx, "x".into(), 1).unwrap();
        m.put(&mut ctx, "y".into(), 2).unwrap();
        m.remove(&mut ctx, &"x".to_string()).unwrap();
        assert_eq!(m.entries(&ctx).unwrap(), vec![("y".to_string(), 2)]);
        let ctx = KeyedContext::new(&z, &mut b, 128);
        assert_eq!(m.get(&ctx, &"y".to_string()).unwrap(), None);
    }
}
