//! Timers of keyed operators (Flink's `InternalTimerService`).
//!
//! A keyed function registers timers for the current key through
//! [`KeyedContext::timer_service`](crate::state::KeyedContext::timer_service):
//! an **event-time** timer fires when the operator's watermark reaches its
//! timestamp, a **processing-time** timer when the wall clock does. A timer
//! is `(key, namespace, domain, timestamp)`; the namespace is `()` for
//! process functions and the window for window operators. Registering the
//! same timer twice keeps one; deleting a timer that does not exist does
//! nothing.
//!
//! # Timers are keyed state (docs/design.md invariant 7)
//! Every timer is an entry of the operator's keyed map state `_timers`
//! (user key `(domain, timestamp, namespace)`), so it lives in the key
//! group of its key: it is part of every snapshot, restored with the state,
//! and moves with its key group when a job is rescaled, on the heap and the
//! RocksDB backend alike. What is kept in memory besides is only an index
//! (timestamp -> keys) for finding due timers, rebuilt from the state after
//! a restore (`InternalTimers::rebuild`). The state is the truth: an index
//! entry whose state entry is gone (deleted, or fired already) is skipped
//! when it comes due, so deletion never searches the index.
//!
//! Processing-time timers whose time passed while the job was down fire
//! as soon as the restored operator runs (as in Flink). Event-time timers
//! fire in timestamp order as the watermark advances; the final watermark
//! at the end of input fires all of them. Processing-time timers do not
//! fire at the end of input (a bounded job ends when its input does).

use std::collections::BTreeMap;

pub use crate::time::{processing_time_now, TimeDomain, TimerService};

use crate::record::Key;
use crate::state::{KeyedContext, KeyedStateBackend, MapState, MapStateDescriptor};
use crate::time::TimerOp;
use crate::Result;

/// The state entry of a timer: (domain code, timestamp, namespace).
type TimerKey<N> = (u8, i64, N);

/// A timer that came due: its key, namespace and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueTimer<K, N> {
    pub(crate) key: K,
    pub(crate) namespace: N,
    pub(crate) timestamp: i64,
}

/// The timers of one keyed operator subtask: the `_timers` map state and
/// the in-memory index of each domain.
pub(crate) struct InternalTimers<K, N> {
    state: MapState<TimerKey<N>, ()>,
    event: BTreeMap<i64, Vec<(K, N)>>,
    processing: BTreeMap<i64, Vec<(K, N)>>,
}

/// The name of the keyed state that holds an operator's timers.
pub(crate) const TIMER_STATE: &str = "_timers";

impl<K: Key, N: Key> InternalTimers<K, N> {
    /// Registers the `_timers` state with `backend`.
    pub(crate) fn open(backend: &mut KeyedStateBackend<K>) -> Result<Self> {
        Ok(InternalTimers {
            state: backend.map_state(&MapStateDescriptor::new(TIMER_STATE))?,
            event: BTreeMap::new(),
            processing: BTreeMap::new(),
        })
    }

    fn index(&mut self, domain: TimeDomain) -> &mut BTreeMap<i64, Vec<(K, N)>> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer for `ctx`'s key (a no-op if it exists).
    pub(crate) fn register(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        domain: TimeDomain,
        timestamp: i64,
        namespace: N,
    ) -> Result<()> {
        let tk = (domain.code(), timestamp, namespace);
        if self.state.get(ctx, &tk)?.is_none() {
            let namespace = tk.2.clone();
            self.state.put(ctx, tk, ())?;
            self.index(domain)
                .entry(timestamp)
                .or_default()
                .push((ctx.key().clone(), namespace));
        }
        Ok(())
    }

    /// Deletes a timer of `ctx`'s key (its index entry is skipped when due).
    pub(crate) fn delete(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        domain: TimeDomain,
        timestamp: i64,
        namespace: N,
    ) -> Result<()> {
        self.state
            .remove(ctx, &(domain.code(), timestamp, namespace))
    }

    /// Applies what a function asked for through its [`TimerService`].
    pub(crate) fn apply(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        ops: &[TimerOp],
        namespace: &N,
    ) -> Result<()> {
        for op in ops {
            if op.register {
                self.register(ctx, op.domain, op.timestamp, namespace.clone())?;
            } else {
                self.delete(ctx, op.domain, op.timestamp, namespace.clone())?;
            }
        }
        Ok(())
    }

    /// The earliest timestamp in `domain`'s index (may be a deleted timer).
    pub(crate) fn next(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event.keys().next().copied(),
            TimeDomain::ProcessingTime => self.processing.keys().next().copied(),
        }
    }

    /// Removes and returns the earliest timer of `domain` due at `time`
    /// (timestamp `<= time`), deleting it from the state; `None` when no
    /// timer is due. Timers registered while firing are found by the next
    /// call, so a timer registered for a time already passed fires too.
    pub(crate) fn pop_due(
        &mut self,
        backend: &mut KeyedStateBackend<K>,
        max_parallelism: usize,
        domain: TimeDomain,
        time: i64,
    ) -> Result<Option<DueTimer<K, N>>> {
        loop {
            let index = self.index(domain);
            let Some(mut first) = index.first_entry() else {
                return Ok(None);
            };
            let ts = *first.key();
            if ts > time {
                return Ok(None);
            }
            let (key, namespace) = match first.get_mut().pop() {
                Some(e) => e,
                None => {
                    first.remove();
                    continue;
                }
            };
            if first.get().is_empty() {
                first.remove();
            }
            let tk = (domain.code(), ts, namespace);
            let mut ctx = KeyedContext::new(&key, backend, max_parallelism);
            if self.state.get(&ctx, &tk)?.is_none() {
                continue; // deleted, or a duplicate index entry
            }
            self.state.remove(&mut ctx, &tk)?;
            return Ok(Some(DueTimer {
                key,
                namespace: tk.2,
                timestamp: ts,
            }));
        }
    }

    /// Rebuilds the index from the `_timers` state (after a restore).
    pub(crate) fn rebuild(&mut self, backend: &mut KeyedStateBackend<K>) -> Result<()> {
        self.event.clear();
        self.processing.clear();
        for (key, (d, ts, ns)) in self.state.all_user_keys(backend)? {
            self.index(TimeDomain::from_code(d))
                .entry(ts)
                .or_default()
                .push((key, ns));
        }
        Ok(())
    }

    /// Number of timers in the index of `domain` (deleted ones included until due).
    #[cfg(test)]
    pub(crate) fn indexed(&self, domain: TimeDomain) -> usize {
        match domain {
            TimeDomain::EventTime => self.event.values().map(Vec::len).sum(),
            TimeDomain::ProcessingTime => self.processing.values().map(Vec::len).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygroup::KeyGroupRange;

    fn backend() -> KeyedStateBackend<String> {
        KeyedStateBackend::heap(KeyGroupRange::for_subtask(128, 1, 0), 128)
    }

    fn fire_all(
        t: &mut InternalTimers<String, ()>,
        b: &mut KeyedStateBackend<String>,
        domain: TimeDomain,
        time: i64,
    ) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        while let Some(d) = t.pop_due(b, 128, domain, time).unwrap() {
            out.push((d.key, d.timestamp));
        }
        out
    }

    /// Timers fire in timestamp order, once, and only when due.
    #[test]
    fn due_timers_fire_in_order_once() {
        let mut b = backend();
        let mut t = InternalTimers::<String, ()>::open(&mut b).unwrap();
        for (k, ts) in [("a", 30), ("b", 10), ("a", 10), ("a", 30), ("c", 20)] {
            let key = k.to_string();
            let mut ctx = KeyedContext::new(&key, &mut b, 128);
            t.register(&mut ctx, TimeDomain::EventTime, ts, ()).unwrap();
        }
        assert_eq!(fire_all(&mut t, &mut b, TimeDomain::EventTime, 5), vec![]);
        let mut first = fire_all(&mut t, &mut b, TimeDomain::EventTime, 20);
        first.sort();
        assert_eq!(
            first,
            vec![("a".into(), 10), ("b".into(), 10), ("c".into(), 20)]
        );
        // The duplicate registration of (a, 30) fires once.
        assert_eq!(
            fire_all(&mut t, &mut b, TimeDomain::EventTime, i64::MAX),
            vec![("a".into(), 30)]
        );
        assert_eq!(
            fire_all(&mut t, &mut b, TimeDomain::EventTime, i64::MAX),
            vec![]
        );
    }

    /// A deleted timer never fires; domains are separate.
    #[test]
    fn deleted_timers_and_domains() {
        let mut b = backend();
        let mut t = InternalTimers::<String, ()>::open(&mut b).unwrap();
        let key = "k".to_string();
        let mut ctx = KeyedContext::new(&key, &mut b, 128);
        t.register(&mut ctx, TimeDomain::EventTime, 5, ()).unwrap();
        t.register(&mut ctx, TimeDomain::ProcessingTime, 5, ())
            .unwrap();
        t.delete(&mut ctx, TimeDomain::EventTime, 5, ()).unwrap();
        assert_eq!(fire_all(&mut t, &mut b, TimeDomain::EventTime, 100), vec![]);
        assert_eq!(
            fire_all(&mut t, &mut b, TimeDomain::ProcessingTime, 100),
            vec![(key.clone(), 5)]
        );
    }

    /// Timers survive a snapshot and restore, split by key group on a
    /// rescale: the index is rebuilt from the state.
    #[test]
    fn timers_are_restored_and_rescaled_with_the_state() {
        let mut b = backend();
        let mut t = InternalTimers::<String, ()>::open(&mut b).unwrap();
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            let mut ctx = KeyedContext::new(k, &mut b, 128);
            t.register(&mut ctx, TimeDomain::EventTime, i as i64, ())
                .unwrap();
        }
        // One fired before the snapshot: it must not come back.
        assert_eq!(fire_all(&mut t, &mut b, TimeDomain::EventTime, 0).len(), 1);
        let snap = b.snapshot().unwrap();
        let mut fired = Vec::new();
        for range in [
            KeyGroupRange::for_subtask(128, 2, 0),
            KeyGroupRange::for_subtask(128, 2, 1),
        ] {
            let mut nb = KeyedStateBackend::<String>::heap(range, 128);
            let mut nt = InternalTimers::<String, ()>::open(&mut nb).unwrap();
            nb.restore(&snap).unwrap();
            nt.rebuild(&mut nb).unwrap();
            assert!(nt.indexed(TimeDomain::EventTime) < 49);
            fired.extend(fire_all(&mut nt, &mut nb, TimeDomain::EventTime, i64::MAX));
        }
        fired.sort_by_key(|f| f.1);
        let want: Vec<(String, i64)> = keys
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, k)| (k.clone(), i as i64))
            .collect();
        assert_eq!(fired, want);
    }
}
