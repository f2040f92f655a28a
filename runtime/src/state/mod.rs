//! Keyed state and operator state.
//!
//! # Keyed state
//! A keyed operator (after `key_by`) registers named states through
//! descriptors when it opens: [`ValueStateDescriptor`], [`ListStateDescriptor`],
//! [`MapStateDescriptor`]. Registration returns a small, copyable handle
//! ([`ValueState`], [`ListState`], [`MapState`]); every access goes through the
//! [`KeyedContext`] the runtime passes with each record, so the value read or
//! written is always the **current key's**. Handles hold no data and no
//! borrow: state lives in the subtask's [`KeyedStateBackend`].
//!
//! # Backends
//! [`KeyedStateBackend`] is an enum over the backends; operator code only sees
//! the handles, so adding a backend (RocksDB) changes no operator. The heap
//! backend ([`heap`]) keeps one typed hash map per state and serializes only
//! when a snapshot is taken, per key group ([`crate::keygroup`]), so a snapshot
//! can be split by key-group range when a job is rescaled.
//!
//! # Operator state
//! Non-keyed state of a subtask (a source's split positions) is an
//! [`OperatorStateStore`]: named lists of serialized values, written by
//! the operator when a snapshot is taken and handed back when it is restored.

pub mod heap;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::keygroup::{key_group_for, KeyGroupRange};
use crate::record::{Data, Key};
use crate::Result;

pub use heap::HeapKeyedStateBackend;

/// The kind of a registered state, for error messages and snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateKind {
    /// [`ValueState`].
    Value,
    /// [`ListState`].
    List,
    /// [`MapState`].
    Map,
}

macro_rules! descriptor {
    ($(#[$m:meta])* $name:ident, [$($p:ident),*]) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name<$($p),*> {
            name: String,
            _t: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> $name<$($p),*> {
            /// A descriptor for the state called `name` (unique within the operator).
            pub fn new(name: impl Into<String>) -> Self {
                Self { name: name.into(), _t: PhantomData }
            }
            /// The state's name.
            pub fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

descriptor!(
    /// Describes a [`ValueState`]: one value of type `T` per key.
    ValueStateDescriptor, [T]
);
descriptor!(
    /// Describes a [`ListState`]: a list of `T` per key.
    ListStateDescriptor, [T]
);
descriptor!(
    /// Describes a [`MapState`]: a map from `UK` to `UV` per key.
    MapStateDescriptor, [UK, UV]
);

macro_rules! handle {
    ($(#[$m:meta])* $name:ident, [$($p:ident),*]) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name<$($p),*> {
            pub(crate) id: usize,
            _t: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $name<$($p),*> {}
        impl<$($p),*> $name<$($p),*> {
            pub(crate) fn from_id(id: usize) -> Self {
                Self { id, _t: PhantomData }
            }
        }
    };
}

handle!(
    /// One value per key. Read and write it through the [`KeyedContext`] of the current record.
    ValueState, [T]
);
handle!(
    /// A list of values per key.
    ListState, [T]
);
handle!(
    /// A map per key.
    MapState, [UK, UV]
);

/// The keyed state of one subtask, over all registered states.
pub enum KeyedStateBackend<K: Key> {
    /// In-memory hash maps (`state.backend.type: hashmap`).
    Heap(HeapKeyedStateBackend<K>),
}

impl<K: Key> KeyedStateBackend<K> {
    /// A backend for the subtask that owns `range` of `max_parallelism` key groups.
    pub fn heap(range: KeyGroupRange, max_parallelism: usize) -> Self {
        KeyedStateBackend::Heap(HeapKeyedStateBackend::new(range, max_parallelism))
    }

    /// Registers (or looks up) a value state.
    pub fn value_state<T: Data + Clone>(
        &mut self,
        d: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        match self {
            KeyedStateBackend::Heap(h) => h
                .register::<heap::ValueTable<K, T>>(d.name(), StateKind::Value)
                .map(ValueState::from_id),
        }
    }

    /// Registers (or looks up) a list state.
    pub fn list_state<T: Data + Clone>(
        &mut self,
        d: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        match self {
            KeyedStateBackend::Heap(h) => h
                .register::<heap::ListTable<K, T>>(d.name(), StateKind::List)
                .map(ListState::from_id),
        }
    }

    /// Registers (or looks up) a map state.
    pub fn map_state<UK: Key, UV: Data + Clone>(
        &mut self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        match self {
            KeyedStateBackend::Heap(h) => h
                .register::<heap::MapTable<K, UK, UV>>(d.name(), StateKind::Map)
                .map(MapState::from_id),
        }
    }

    /// The key groups this backend holds.
    pub fn key_group_range(&self) -> KeyGroupRange {
        match self {
            KeyedStateBackend::Heap(h) => h.range,
        }
    }

    /// Number of (state, key) entries, over all states.
    pub fn num_entries(&self) -> usize {
        match self {
            KeyedStateBackend::Heap(h) => h.num_entries(),
        }
    }

    /// Serializes the state of every key, grouped by key group: the canonical,
    /// backend-independent form that snapshots are made of.
    pub fn snapshot(&self) -> Result<KeyedStateSnapshot> {
        match self {
            KeyedStateBackend::Heap(h) => h.snapshot(),
        }
    }

    /// Loads the entries of `snap` whose key group this backend owns.
    pub fn restore(&mut self, snap: &KeyedStateSnapshot) -> Result<()> {
        match self {
            KeyedStateBackend::Heap(h) => h.restore(snap),
        }
    }
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

/// What a keyed function sees with each record: the current key and access to
/// its state.
pub struct KeyedContext<'a, K: Key> {
    pub(crate) key: &'a K,
    pub(crate) backend: &'a mut KeyedStateBackend<K>,
    pub(crate) max_parallelism: usize,
    pub(crate) watermark: i64,
}

impl<'a, K: Key> KeyedContext<'a, K> {
    /// A context for `key` over `backend` (for operators and tests).
    pub fn new(key: &'a K, backend: &'a mut KeyedStateBackend<K>, max_parallelism: usize) -> Self {
        KeyedContext {
            key,
            backend,
            max_parallelism,
            watermark: i64::MIN,
        }
    }

    /// The operator's current event-time watermark (`i64::MIN` before the first).
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }

    /// The key of the record being processed.
    pub fn key(&self) -> &K {
        self.key
    }

    /// The key group of the current key.
    pub fn key_group(&self) -> u16 {
        key_group_for(self.key, self.max_parallelism)
    }
}

impl<T: Data + Clone> ValueState<T> {
    /// The current key's value, or `None` if it has none.
    pub fn value<K: Key>(&self, ctx: &KeyedContext<'_, K>) -> Result<Option<T>> {
        match &*ctx.backend {
            KeyedStateBackend::Heap(h) => Ok(h
                .table::<heap::ValueTable<K, T>>(self.id)?
                .map
                .get(ctx.key)
                .cloned()),
        }
    }

    /// Sets the current key's value.
    pub fn update<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, value: T) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                let t = h.table_mut::<heap::ValueTable<K, T>>(self.id)?;
                match t.map.get_mut(ctx.key) {
                    Some(v) => *v = value,
                    None => {
                        t.map.insert(ctx.key.clone(), value);
                    }
                }
                Ok(())
            }
        }
    }

    /// Replaces the current key's value with `f(old)` in one lookup and returns the new value.
    #[inline]
    pub fn update_with<K: Key>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        f: impl FnOnce(Option<&T>) -> T,
    ) -> Result<T> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                let t = h.table_mut::<heap::ValueTable<K, T>>(self.id)?;
                match t.map.get_mut(ctx.key) {
                    Some(v) => {
                        *v = f(Some(&*v));
                        Ok(v.clone())
                    }
                    None => {
                        let v = f(None);
                        t.map.insert(ctx.key.clone(), v.clone());
                        Ok(v)
                    }
                }
            }
        }
    }

    /// Removes the current key's value.
    pub fn clear<K: Key>(&self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                h.table_mut::<heap::ValueTable<K, T>>(self.id)?
                    .map
                    .remove(ctx.key);
                Ok(())
            }
        }
    }
}

impl<T: Data + Clone> ListState<T> {
    /// The current key's list (empty if none).
    pub fn get<K: Key>(&self, ctx: &KeyedContext<'_, K>) -> Result<Vec<T>> {
        match &*ctx.backend {
            KeyedStateBackend::Heap(h) => Ok(h
                .table::<heap::ListTable<K, T>>(self.id)?
                .map
                .get(ctx.key)
                .cloned()
                .unwrap_or_default()),
        }
    }

    /// Appends to the current key's list.
    pub fn add<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, value: T) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                let t = h.table_mut::<heap::ListTable<K, T>>(self.id)?;
                match t.map.get_mut(ctx.key) {
                    Some(l) => l.push(value),
                    None => {
                        t.map.insert(ctx.key.clone(), vec![value]);
                    }
                }
                Ok(())
            }
        }
    }

    /// Replaces the current key's list.
    pub fn update<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, values: Vec<T>) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                let t = h.table_mut::<heap::ListTable<K, T>>(self.id)?;
                if values.is_empty() {
                    t.map.remove(ctx.key);
                } else {
                    t.map.insert(ctx.key.clone(), values);
                }
                Ok(())
            }
        }
    }

    /// Removes the current key's list.
    pub fn clear<K: Key>(&self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        self.update(ctx, Vec::new())
    }
}

impl<UK: Key, UV: Data + Clone> MapState<UK, UV> {
    /// The value under `user_key` in the current key's map.
    pub fn get<K: Key>(&self, ctx: &KeyedContext<'_, K>, user_key: &UK) -> Result<Option<UV>> {
        match &*ctx.backend {
            KeyedStateBackend::Heap(h) => Ok(h
                .table::<heap::MapTable<K, UK, UV>>(self.id)?
                .map
                .get(ctx.key)
                .and_then(|m| m.get(user_key))
                .cloned()),
        }
    }

    /// Puts `value` under `user_key` in the current key's map.
    pub fn put<K: Key>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                let t = h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?;
                t.map
                    .entry(ctx.key.clone())
                    .or_default()
                    .insert(user_key, value);
                Ok(())
            }
        }
    }

    /// Removes `user_key` from the current key's map.
    pub fn remove<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, user_key: &UK) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                let t = h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?;
                if let Some(m) = t.map.get_mut(ctx.key) {
                    m.remove(user_key);
                    if m.is_empty() {
                        t.map.remove(ctx.key);
                    }
                }
                Ok(())
            }
        }
    }

    /// All entries of the current key's map, in no particular order.
    pub fn entries<K: Key>(&self, ctx: &KeyedContext<'_, K>) -> Result<Vec<(UK, UV)>> {
        match &*ctx.backend {
            KeyedStateBackend::Heap(h) => Ok(h
                .table::<heap::MapTable<K, UK, UV>>(self.id)?
                .map
                .get(ctx.key)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()),
        }
    }

    /// Removes the current key's whole map.
    pub fn clear<K: Key>(&self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        match &mut *ctx.backend {
            KeyedStateBackend::Heap(h) => {
                h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?
                    .map
                    .remove(ctx.key);
                Ok(())
            }
        }
    }
}

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
    /// elements of all old subtasks are redistributed round-robin).
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
            let mine = all
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % parallelism == index)
                .map(|(_, b)| b.clone())
                .collect();
            out.lists.insert(name.clone(), mine);
        }
        out
    }
}
