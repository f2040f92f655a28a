//! The heap keyed-state backend (`state.backend.type: hashmap`): per
//! registered state, one typed hash map **per key group**, in the subtask's
//! memory; a key group that reaches `SPLIT_AT` (4096) entries is split
//! into `SUBS` (64) sub-maps, picked by hash bits of the key.
//!
//! # Copy-on-write snapshots (docs/design.md invariant 2: the synchronous part is cheap)
//! Each map (a small key group's, or a sub-map of a split one) is owned by
//! the live state until a snapshot shares it: the synchronous part of a
//! snapshot (`HeapKeyedStateBackend::snapshot_async`) moves each non-empty
//! map into an [`Arc`] and keeps a clone of that `Arc`: O(number of maps,
//! at most 64 per key group), independent of the number of keys. The
//! returned job serializes the frozen maps later, in the asynchronous
//! upload, off the processing loop. The first write to a map after a
//! snapshot takes it back (`Arc::try_unwrap`) if the upload is done with
//! it, or copies that one map if the upload still holds it (Flink's
//! copy-on-write state table does the same per entry). So a write stalls
//! processing for at most one map's copy (at most 4096 entries, or 1/64 of
//! a large key group), and only while an upload still holds it: the stall
//! per checkpoint grows with the number of maps written during the upload,
//! not with the size of the key groups. (Writes that reach every map while
//! an upload still holds them still copy the whole state, in as many
//! pieces.) Between snapshots every map is owned and an access costs no
//! atomic operation.
//!
//! Measured (`cargo bench --bench state_backends -- --only sync`: a
//! `ValueState<u64>` in one subtask of 128 key groups, then 1000 writes
//! over every key group while the upload holds the maps, medians of 3 on a
//! noisy 2-core VM): 38.6 ms with one map per key group, 4.5 ms with
//! sub-maps, at 10 M keys (0.3-0.4 ms without a held snapshot); 3.4 ms and
//! 0.95 ms at 1 M keys. The synchronous part went from about 0.01 ms to
//! 0.1-0.2 ms at 1-10 M keys (8192 maps instead of 128); below 4096 keys
//! per key group nothing changes.
//!
//! Access costs one key-group lookup (the key group is computed from the key,
//! as routing did), in a split key group one `FxHash` of the key to pick the
//! sub-map, plus one hash lookup and one type check per call. The
//! canonical form ([`KeyedStateSnapshot`]: per state, per key group, the
//! postcard-encoded `Vec<(K, V)>`, a split key group's sub-maps one after
//! the other) is what is serialized, so snapshots split
//! by key-group range when a job is rescaled, and a RocksDB snapshot can be
//! restored here (and the other way round).

use std::any::Any;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHasher};
use serde::ser::SerializeSeq;
use serde::Serialize;

use super::{KeyedStateSnapshot, StateKind, StateSnapshot};
use crate::keygroup::KeyGroupRange;
use crate::record::{Data, Key};
use crate::{Error, Result};

/// Serializes frozen state later (in the asynchronous part of a snapshot).
pub(crate) type SerializeJob = Box<dyn FnOnce() -> Result<BTreeMap<u16, Vec<u8>>> + Send>;

/// Sub-shards per split key group (see [`SPLIT_AT`]): the unit of
/// copy-on-write. 64 makes the copy after a snapshot 1/64 of a key group
/// (1/8192 of a subtask's state with the default 128 key groups), while a
/// split group costs 64 map headers (2 KiB) and a snapshot one `Arc` per
/// non-empty sub-shard (8192 for a state spread over 128 split groups:
/// about 0.1 ms). A power of two.
const SUBS: usize = 64;

/// Where the sub-shard index is taken from in the key's `FxHash` (the very
/// hash the sub-maps compute: [`FxHashMap`]'s hasher is stateless): the
/// bits just below the top 7. hashbrown takes a map's bucket index from the
/// low bits (fewer than 51 in any map that fits in memory) and its control
/// byte from the top 7 bits, so these bits, equal within a sub-map, take
/// nothing from the spread of its bucket indexes and control bytes
/// (simulated with 10 M `u64` and string keys over 128 key groups: the same
/// probe lengths and control-byte false matches as one map per key group).
/// Why the highest of the free bits: `FxHasher` multiplies and then rotates
/// left by 26, so result bit `b` of a one-word key is product bit `b - 26`,
/// which depends only on the key's bits below it. Bits 51..57 depend on the
/// key's low 31 bits (bits 40..46 would depend on its low 20 only: keys
/// that are multiples of 2^20 would all fall in one sub-shard). Keys that
/// are multiples of 2^31 still do (bits 26..57 of their hash are all zero):
/// for them a split key group copies as much as an unsplit one would.
const SUB_SHIFT: u32 = 57 - SUBS.trailing_zeros();
const _: () = assert!(SUBS.is_power_of_two());

/// The sub-shard of `key` in its key group.
#[inline]
fn sub_of<K: Hash>(key: &K) -> usize {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    (h.finish() >> SUB_SHIFT) as usize & (SUBS - 1)
}

/// A key group's maps frozen for a snapshot (the non-empty ones).
type Frozen<K, V> = Vec<Arc<FxHashMap<K, V>>>;

/// A map per key group of a range, each shared with snapshots copy-on-write
/// by sub-shard.
pub(crate) struct KgMap<K, V> {
    first: u16,
    groups: Vec<Group<K, V>>,
}

/// One key group's entries: one map while the group is small, [`SUBS`]
/// sub-maps selected by [`sub_of`] the key once it has reached
/// [`SPLIT_AT`] entries. Its methods are the subset of the `HashMap` API
/// the state primitives use; each write takes only its key's map back from
/// a snapshot.
pub(crate) enum Group<K, V> {
    /// At most [`SPLIT_AT`] entries (an empty group allocates nothing).
    One(Shard<K, V>),
    /// Split: never merged back.
    Split(Box<[Shard<K, V>; SUBS]>),
}

/// Entries from which a key group is split into sub-shards. A smaller group
/// stays one map: copying it after a snapshot takes microseconds, and its
/// accesses skip the second hash of the key that picks a sub-shard (with
/// every key group split, `large_state 20000000 10000 2 hashmap`, 10 k words
/// over 2 x 64 key groups, lost about 13% of its throughput). So a write
/// after a snapshot copies at most `max(SPLIT_AT, group / SUBS)` entries.
const SPLIT_AT: usize = 4096;

/// One map (a small key group's or a sub-shard's): owned by the live state, or shared with snapshots
/// taken since it was last written. Telling them apart is a plain enum
/// check, so an access to an owned map (every access between two
/// snapshots) costs no atomic operation, where `Arc::make_mut` costs one
/// compare-and-swap per call.
pub(crate) enum Shard<K, V> {
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

impl<K: Clone, V: Clone> Shard<K, V> {
    /// The map, for writing: taken back from the snapshots, or copied if
    /// one still holds it.
    #[inline]
    fn owned(&mut self) -> &mut FxHashMap<K, V> {
        if let Shard::Shared(_) = self {
            self.unshare();
        }
        match self {
            Shard::Owned(m) => m,
            Shard::Shared(_) => unreachable!("unshare leaves the shard owned"),
        }
    }

    #[cold]
    #[inline(never)]
    fn unshare(&mut self) {
        if let Shard::Shared(m) = std::mem::replace(self, Shard::Owned(FxHashMap::default())) {
            *self = Shard::Owned(Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone()));
        }
    }
}

impl<K: Key, V: Clone> Group<K, V> {
    /// The map `key` is in.
    #[inline]
    fn map_of(&self, key: &K) -> &FxHashMap<K, V> {
        match self {
            Group::One(s) => s.map(),
            Group::Split(subs) => subs[sub_of(key)].map(),
        }
    }

    /// The map `key` is in, for writing.
    #[inline]
    fn map_mut(&mut self, key: &K) -> &mut FxHashMap<K, V> {
        match self {
            Group::One(s) => s.owned(),
            Group::Split(subs) => subs[sub_of(key)].owned(),
        }
    }

    /// Splits a group of one full map before it grows.
    #[inline]
    fn before_insert(&mut self) {
        if let Group::One(s) = self {
            if s.map().len() >= SPLIT_AT {
                self.split();
            }
        }
    }

    /// Distributes the one map over [`SUBS`] sub-maps (moves the entries,
    /// or copies them if a snapshot still holds the map).
    #[cold]
    #[inline(never)]
    fn split(&mut self) {
        let Group::One(s) = self else { return };
        let map = match std::mem::replace(s, Shard::Owned(FxHashMap::default())) {
            Shard::Owned(m) => m,
            Shard::Shared(m) => Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone()),
        };
        let mut subs: Box<[Shard<K, V>; SUBS]> =
            Box::new(std::array::from_fn(|_| Shard::Owned(FxHashMap::default())));
        for (k, v) in map {
            subs[sub_of(&k)].owned().insert(k, v);
        }
        *self = Group::Split(subs);
    }

    /// The maps of the group.
    fn shards(&self) -> &[Shard<K, V>] {
        match self {
            Group::One(s) => std::slice::from_ref(s),
            Group::Split(subs) => &subs[..],
        }
    }

    /// The value of `key`.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map_of(key).get(key)
    }

    /// The value of `key`, for writing.
    #[inline]
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map_mut(key).get_mut(key)
    }

    /// Sets the value of `key`; returns the previous one.
    #[inline]
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.before_insert();
        self.map_mut(&key).insert(key, value)
    }

    /// Removes `key`; returns its value.
    #[inline]
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.map_mut(key).remove(key)
    }

    /// The entry of `key`, for writing.
    #[inline]
    pub(crate) fn entry(&mut self, key: K) -> std::collections::hash_map::Entry<'_, K, V> {
        self.before_insert();
        self.map_mut(&key).entry(key)
    }

    /// Adds entries (restore).
    fn extend(&mut self, entries: Vec<(K, V)>) {
        if let Group::One(s) = self {
            if s.map().len() + entries.len() <= SPLIT_AT {
                s.owned().extend(entries);
                return;
            }
            self.split();
        }
        for (k, v) in entries {
            self.map_mut(&k).insert(k, v);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards().iter().flat_map(|s| s.map().iter())
    }

    fn len(&self) -> usize {
        self.shards().iter().map(|s| s.map().len()).sum()
    }

    /// O(sub-shards): the current non-empty maps, shared with the live state.
    fn freeze(&mut self) -> Frozen<K, V> {
        let shards = match self {
            Group::One(s) => std::slice::from_mut(s),
            Group::Split(subs) => &mut subs[..],
        };
        shards
            .iter_mut()
            .filter(|s| !s.map().is_empty())
            .map(|s| match s {
                Shard::Shared(m) => m.clone(),
                Shard::Owned(m) => {
                    let m = Arc::new(std::mem::take(m));
                    *s = Shard::Shared(m.clone());
                    m
                }
            })
            .collect()
    }
}

impl<K: Key, V: Clone + Send + Sync + 'static> KgMap<K, V> {
    fn new(range: KeyGroupRange) -> Self {
        KgMap {
            first: range.start,
            groups: (0..range.len())
                .map(|_| Group::One(Shard::Owned(FxHashMap::default())))
                .collect(),
        }
    }

    #[inline]
    fn index(&self, kg: u16) -> Result<usize> {
        let i = kg.wrapping_sub(self.first) as usize;
        if i < self.groups.len() {
            Ok(i)
        } else {
            Err(Error::Internal(format!(
                "key group {kg} is not in this subtask's range (starts at {}, {} groups)",
                self.first,
                self.groups.len()
            )))
        }
    }

    /// The value of `key` (in key group `kg`).
    #[inline]
    pub(crate) fn get(&self, kg: u16, key: &K) -> Result<Option<&V>> {
        Ok(self.groups[self.index(kg)?].get(key))
    }

    /// Key group `kg`, for writing. Each write through it takes its key's
    /// sub-shard back from a snapshot, or copies that sub-shard if the
    /// snapshot still holds it.
    #[inline]
    pub(crate) fn shard_mut(&mut self, kg: u16) -> Result<&mut Group<K, V>> {
        let i = self.index(kg)?;
        Ok(&mut self.groups[i])
    }

    /// Every entry of every key group (key group by key group).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.groups.iter().flat_map(|g| g.iter())
    }

    fn len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }

    /// O(key groups x sub-shards): the current maps of every non-empty key
    /// group, shared with the live state.
    fn freeze(&mut self) -> Vec<(u16, Frozen<K, V>)> {
        let first = self.first;
        self.groups
            .iter_mut()
            .enumerate()
            .map(|(i, g)| (first + i as u16, g.freeze()))
            .filter(|(_, subs)| !subs.is_empty())
            .collect()
    }
}

/// Serializes a key group's sub-maps as the sequence of their `(key,
/// value)` pairs: the same bytes as a `Vec<(K, V)>` of the key group,
/// without building the vector.
struct Entries<'a, K, V>(&'a [Arc<FxHashMap<K, V>>]);

impl<K: Serialize, V: Serialize> Serialize for Entries<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The length first (postcard needs it): a chain of maps has no exact size hint.
        let len = self.0.iter().map(|m| m.len()).sum();
        let mut seq = s.serialize_seq(Some(len))?;
        for e in self.0.iter().flat_map(|m| m.iter()) {
            seq.serialize_element(&e)?;
        }
        seq.end()
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
                        .map(|(g, subs)| Ok((*g, postcard::to_allocvec(&Entries(subs))?)))
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

    /// A write after a snapshot, while the snapshot still holds the maps,
    /// copies its key's sub-shard only: every other sub-shard (of its key
    /// group too) stays shared, the snapshot keeps the old value and the
    /// live state has the new one.
    #[test]
    fn a_write_after_a_snapshot_copies_one_sub_shard() {
        use super::{Entries, KgMap, SUBS};
        use std::sync::Arc;
        let max = 8;
        let n = 100_000u64;
        let mut m = KgMap::<u64, u64>::new(KeyGroupRange::for_subtask(max, 1, 0));
        for k in 0..n {
            m.shard_mut(key_group_for(&k, max)).unwrap().insert(k, 1);
        }
        let frozen = m.freeze(); // held, as by an upload in progress
        let subs = || {
            frozen
                .iter()
                .flat_map(|(g, s)| s.iter().map(move |a| (*g, a)))
        };
        assert_eq!(
            subs().count(),
            max * SUBS,
            "100 k keys fill every sub-shard"
        );
        assert!(subs().all(|(_, a)| Arc::strong_count(a) == 2));

        let key = 42u64;
        let kg = key_group_for(&key, max);
        m.shard_mut(kg).unwrap().insert(key, 2);
        let copied: Vec<_> = subs().filter(|(_, a)| Arc::strong_count(a) == 1).collect();
        assert_eq!(copied.len(), 1, "one sub-shard copied");
        let (g, sub) = copied[0];
        assert_eq!(g, kg);
        assert_eq!(sub.get(&key), Some(&1), "the snapshot keeps the old value");
        let expected = n as usize / (max * SUBS);
        assert!(
            sub.len() < 2 * expected,
            "copied {} entries, about {expected} expected",
            sub.len()
        );
        assert_eq!(
            subs()
                .filter(|(g, a)| *g == kg && Arc::strong_count(a) == 2)
                .count(),
            SUBS - 1,
            "the other sub-shards of the key group are still shared"
        );
        assert_eq!(m.get(kg, &key).unwrap(), Some(&2));
        // Another write to the same sub-shard copies nothing more.
        let same = (0..n)
            .find(|k| *k != key && key_group_for(k, max) == kg && sub.contains_key(k))
            .unwrap();
        m.shard_mut(kg).unwrap().insert(same, 3);
        assert_eq!(subs().filter(|(_, a)| Arc::strong_count(a) == 1).count(), 1);

        // The snapshot serializes the old values, as a key group's `Vec<(K, V)>`.
        let mut total = 0;
        for (g, s) in &frozen {
            let bytes = postcard::to_allocvec(&Entries(s)).unwrap();
            let entries: Vec<(u64, u64)> = s
                .iter()
                .flat_map(|m| m.iter().map(|(k, v)| (*k, *v)))
                .collect();
            assert_eq!(bytes, postcard::to_allocvec(&entries).unwrap());
            assert!(entries
                .iter()
                .all(|(k, v)| *v == 1 && key_group_for(k, max) == *g));
            total += entries.len();
        }
        assert_eq!(total, n as usize);
        assert_eq!(m.len(), n as usize);
        assert_eq!(m.get(kg, &same).unwrap(), Some(&3));
        drop(frozen);
        // Once the upload is done, a write takes a map back without copying.
        let other = (0..n).find(|k| key_group_for(k, max) != kg).unwrap();
        let okg = key_group_for(&other, max);
        m.shard_mut(okg).unwrap().insert(other, 4);
        assert_eq!(m.get(okg, &other).unwrap(), Some(&4));
        assert_eq!(m.iter().filter(|(_, v)| **v == 1).count(), n as usize - 3);
    }

    /// A key group stays one map (no sub-shards, nothing allocated while
    /// empty) up to `SPLIT_AT` entries, then splits; entries, snapshots and
    /// restores are the same either way.
    #[test]
    fn key_groups_split_when_they_grow() {
        use super::{Group, KgMap, Table, ValueTable, SPLIT_AT, SUBS};
        let max = 4;
        let range = KeyGroupRange::for_subtask(max, 1, 0);
        let mut m = KgMap::<u64, u64>::new(range);
        let kg = key_group_for(&7u64, max);
        assert_eq!(m.get(kg, &7).unwrap(), None);
        assert_eq!(m.shard_mut(kg).unwrap().remove(&7), None);
        assert_eq!(m.shard_mut(kg).unwrap().get_mut(&7), None);
        assert!(m.shard_mut(max as u16).is_err());
        let one = |m: &KgMap<u64, u64>| {
            m.groups
                .iter()
                .filter(|g| matches!(g, Group::One(_)))
                .count()
        };
        let n = (max * SPLIT_AT) as u64; // about SPLIT_AT per group: some split, some not
        for k in 0..n {
            m.shard_mut(key_group_for(&k, max))
                .unwrap()
                .entry(k)
                .or_insert(k);
        }
        let sizes: Vec<usize> = m.groups.iter().map(|g| g.len()).collect();
        for (g, len) in m.groups.iter().zip(&sizes) {
            assert_eq!(matches!(g, Group::One(_)), *len <= SPLIT_AT, "{len}");
        }
        assert!(one(&m) > 0 && one(&m) < max, "{sizes:?}");
        let frozen = m.freeze();
        for ((_, subs), len) in frozen.iter().zip(&sizes) {
            assert_eq!(subs.len(), if *len <= SPLIT_AT { 1 } else { SUBS });
        }
        drop(frozen);
        assert_eq!(m.len(), n as usize);
        assert!((0..n).all(|k| m.get(key_group_for(&k, max), &k).unwrap() == Some(&k)));

        // Snapshot and restore: a group restored with more than SPLIT_AT entries is split.
        let mut t = ValueTable::<u64, u64> { map: m };
        let snap = (t.freeze())().unwrap();
        let mut r = ValueTable::<u64, u64> {
            map: KgMap::new(range),
        };
        for (g, bytes) in &snap {
            r.restore(*g, bytes).unwrap();
        }
        assert_eq!(r.map.len(), n as usize);
        assert_eq!(one(&r.map), one(&t.map));
        assert!((0..n).all(|k| r.map.get(key_group_for(&k, max), &k).unwrap() == Some(&k)));
        t.map.shard_mut(kg).unwrap().insert(7, 0);
        assert_eq!(t.map.get(kg, &7).unwrap(), Some(&0));
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
