//! The heap keyed-state backend (`state.backend.type: hashmap`): one typed
//! `HashMap<Key, Value>` per registered state, in the subtask's memory.
//!
//! Access costs one hash lookup and one type check per call; nothing is
//! serialized until `HeapKeyedStateBackend::snapshot`, which writes each
//! state grouped by key group (the canonical [`KeyedStateSnapshot`] form).
//! `HeapKeyedStateBackend::restore` keeps only the key groups of this
//! subtask's range, which is what rescaling needs.

use std::any::Any;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::{KeyedStateSnapshot, StateKind, StateSnapshot};
use crate::keygroup::{key_group_for, KeyGroupRange};
use crate::record::{Data, Key};
use crate::{Error, Result};

/// One registered state's storage.
pub(crate) trait Table: Send + 'static {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn len(&self) -> usize;
    /// Entries grouped by key group, each group postcard-encoded.
    fn snapshot(&self, max_parallelism: usize) -> Result<BTreeMap<u16, Vec<u8>>>;
    /// Adds the entries of one key group.
    fn restore(&mut self, bytes: &[u8]) -> Result<()>;
}

/// Constructs an empty table of a given type (so `register` can be generic).
pub(crate) trait NewTable: Table + Sized {
    fn empty() -> Self;
}

macro_rules! table {
    ($name:ident, [$($p:ident: $b:path),*], $val:ty) => {
        pub(crate) struct $name<K, $($p),*> {
            pub(crate) map: FxHashMap<K, $val>,
        }
        impl<K: Key, $($p: $b),*> NewTable for $name<K, $($p),*> {
            fn empty() -> Self {
                $name { map: FxHashMap::default() }
            }
        }
        impl<K: Key, $($p: $b),*> Table for $name<K, $($p),*> {
            fn as_any(&self) -> &dyn Any { self }
            fn as_any_mut(&mut self) -> &mut dyn Any { self }
            fn len(&self) -> usize { self.map.len() }
            fn snapshot(&self, max_parallelism: usize) -> Result<BTreeMap<u16, Vec<u8>>> {
                let mut groups: BTreeMap<u16, Vec<(&K, &$val)>> = BTreeMap::new();
                for (k, v) in &self.map {
                    groups.entry(key_group_for(k, max_parallelism)).or_default().push((k, v));
                }
                groups
                    .into_iter()
                    .map(|(g, entries)| Ok((g, postcard::to_allocvec(&entries)?)))
                    .collect()
            }
            fn restore(&mut self, bytes: &[u8]) -> Result<()> {
                let entries: Vec<(K, $val)> = postcard::from_bytes(bytes)?;
                self.map.extend(entries);
                Ok(())
            }
        }
    };
}

table!(ValueTable, [T: Data], T);
table!(ListTable, [T: Data], Vec<T>);
table!(MapTable, [UK: Key, UV: Data], FxHashMap<UK, UV>);

struct Registered {
    name: String,
    kind: StateKind,
    table: Box<dyn Table>,
}

/// In-memory keyed state of one subtask.
pub struct HeapKeyedStateBackend<K> {
    pub(crate) range: KeyGroupRange,
    max_parallelism: usize,
    states: Vec<Registered>,
    _k: std::marker::PhantomData<fn() -> K>,
}

impl<K: Key> HeapKeyedStateBackend<K> {
    /// An empty backend for `range`.
    pub fn new(range: KeyGroupRange, max_parallelism: usize) -> Self {
        HeapKeyedStateBackend {
            range,
            max_parallelism,
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
            table: Box::new(T::empty()),
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

    pub(crate) fn snapshot(&self) -> Result<KeyedStateSnapshot> {
        let mut out = KeyedStateSnapshot::default();
        for s in &self.states {
            out.states.insert(
                s.name.clone(),
                StateSnapshot {
                    kind: s.kind,
                    key_groups: s.table.snapshot(self.max_parallelism)?,
                },
            );
        }
        Ok(out)
    }

    pub(crate) fn restore(&mut self, snap: &KeyedStateSnapshot) -> Result<()> {
        for (name, st) in &snap.states {
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
                    s.table.restore(bytes)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

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
                let ctx = KeyedContext::new(k, &mut part, max);
                let v = c.value(&ctx).unwrap();
                if range.contains(key_group_for(k, max)) {
                    assert_eq!(v, Some(j as u64));
                    total += 1;
                } else {
                    assert_eq!(v, None);
                }
            }
        }
        assert_eq!(total, keys.len());
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
