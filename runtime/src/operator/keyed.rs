//! The keyed operators: [`KeyedProcessOp`] runs a user's
//! [`KeyedProcessFunction`] record by record with the state of the record's
//! key, and the running aggregations of `KeyedStream` (count, sum, min, max,
//! reduce) are keyed process functions over one `ValueState` each.
//!
//! The record reached this subtask through the hash partitioner of its
//! input edge (`crate::exchange`), which routed it by the key group of
//! its key, so the key's state is in one of this subtask's key groups
//! (`crate::keygroup`). The state backend ([`crate::state`]) is opened
//! here, per subtask, and snapshotted, restored and told of completed
//! checkpoints through the `ChainOp` methods.

use std::marker::PhantomData;
use std::sync::Arc;

use super::{
    non_empty, ChainOp, Collector, KeyedOpenContext, KeyedProcessFunction, RuntimeContext,
    WatermarkOut,
};
use crate::keygroup::key_group_for;
use crate::record::{downcast, AnyBatch, Data, Key};
use crate::side_output::SideOutputs;
use crate::state::{
    KeyedContext, KeyedStateBackend, OperatorStateStore, PendingKeyedSnapshot, RestoredKeyed,
    ValueState, ValueStateDescriptor,
};
use crate::time::TimeDomain;
use crate::timers::InternalTimers;
use crate::watermarks::TimestampFn;
use crate::{Error, Result};

/// Runs a [`KeyedProcessFunction`] per record with its key's state, and
/// its timers ([`crate::timers`]) as the watermark and the clock reach them.
pub(crate) struct KeyedProcessOp<K: Key, I, O, P, KS> {
    pub(crate) watermark: i64,
    pub(crate) function: P,
    pub(crate) selector: Arc<KS>,
    pub(crate) backend: Option<KeyedStateBackend<K>>,
    pub(crate) timers: Option<InternalTimers<K, ()>>,
    pub(crate) max_parallelism: usize,
    /// The input's timestamps, when it has them.
    pub(crate) timestamps: Option<TimestampFn<I>>,
    ts_buf: Vec<i64>,
    /// The current batch's keys and key groups (buffers reused across batches).
    keys: Vec<K>,
    groups: Vec<u16>,
    side: SideOutputs,
    pub(crate) _t: PhantomData<fn(I) -> O>,
}

impl<K, I, O, P, KS> KeyedProcessOp<K, I, O, P, KS>
where
    K: Key,
    I: Data,
    O: Data,
    P: KeyedProcessFunction<K, I, O>,
    KS: Fn(&I) -> K + Send + Sync + 'static,
{
    /// Fires the timers of `domain` due at `time`, in timestamp order.
    fn fire(&mut self, domain: TimeDomain, time: i64) -> Result<Option<AnyBatch>> {
        let (Some(backend), Some(timers)) = (self.backend.as_mut(), self.timers.as_mut()) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(t) = timers.pop_due(backend, self.max_parallelism, domain, time)? {
            let mut ctx = KeyedContext::new(&t.key, backend, self.max_parallelism)
                .at(self.watermark, Some(t.timestamp));
            let mut c = Collector::new(&mut out);
            self.function
                .on_timer(t.timestamp, domain, &mut ctx, &mut c)?;
            let KeyedContext {
                timers: ops, side, ..
            } = ctx;
            for r in side {
                self.side.add(r)?;
            }
            if !ops.is_empty() {
                let mut ctx = KeyedContext::new(&t.key, backend, self.max_parallelism);
                timers.apply(&mut ctx, &ops, &())?;
            }
        }
        backend.end_batch()?;
        Ok(non_empty(out))
    }
}

impl<K, I, O, P, KS> ChainOp for KeyedProcessOp<K, I, O, P, KS>
where
    K: Key,
    I: Data,
    O: Data,
    P: KeyedProcessFunction<K, I, O>,
    KS: Fn(&I) -> K + Send + Sync + 'static,
{
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.max_parallelism = ctx.max_parallelism;
        let mut backend = KeyedStateBackend::for_subtask(ctx)?;
        self.function.open(&mut KeyedOpenContext {
            runtime: ctx,
            backend: &mut backend,
        })?;
        self.timers = Some(InternalTimers::open(&mut backend)?);
        self.backend = Some(backend);
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let input = downcast::<I>(batch);
        let backend = self
            .backend
            .as_mut()
            .ok_or_else(|| Error::Internal("keyed operator used before open".into()))?;
        let timers = self
            .timers
            .as_mut()
            .ok_or_else(|| Error::Internal("keyed operator used before open".into()))?;
        if let Some(ts) = &self.timestamps {
            ts(&input, &mut self.ts_buf);
        }
        // The batch's keys first, so that the backend can read their state
        // in one go (RocksDB's MultiGet) before the records need it.
        let (mut keys, mut groups) = (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.groups),
        );
        for v in &input {
            let key = (self.selector)(v);
            groups.push(key_group_for(&key, self.max_parallelism));
            keys.push(key);
        }
        backend.prefetch(&keys, &groups)?;
        let mut out = Vec::with_capacity(input.len());
        let mut c = Collector::new(&mut out);
        for (i, ((v, key), kg)) in input
            .into_iter()
            .zip(keys.drain(..))
            .zip(groups.drain(..))
            .enumerate()
        {
            let mut ctx = KeyedContext::in_group(&key, kg, backend)
                .at(self.watermark, self.ts_buf.get(i).copied());
            self.function.process_element(v, &mut ctx, &mut c)?;
            if !ctx.timers.is_empty() || !ctx.side.is_empty() {
                let KeyedContext {
                    timers: ops, side, ..
                } = ctx;
                for r in side {
                    self.side.add(r)?;
                }
                let mut ctx = KeyedContext::new(&key, backend, self.max_parallelism);
                timers.apply(&mut ctx, &ops, &())?;
            }
        }
        self.ts_buf.clear();
        (self.keys, self.groups) = (keys, groups);
        backend.end_batch()?;
        Ok(non_empty(out))
    }
    fn on_watermark(&mut self, wm: i64) -> Result<WatermarkOut> {
        self.watermark = wm;
        let records = self.fire(TimeDomain::EventTime, wm)?;
        Ok(WatermarkOut {
            records,
            watermark: Some(wm),
        })
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.timers
            .as_ref()
            .and_then(|t| t.next(TimeDomain::ProcessingTime))
            .map(|t| t.saturating_add(1))
    }
    fn on_processing_time(&mut self, now: i64) -> Result<Option<AnyBatch>> {
        // A timer at t fires once the clock is past t (t + 1 ms): records
        // that still read the clock as t come before it, so a
        // processing-time window at t never fires twice.
        self.fire(TimeDomain::ProcessingTime, now.saturating_sub(1))
    }
    fn take_side_outputs(&mut self) -> Vec<(Arc<str>, AnyBatch)> {
        if self.side.is_empty() {
            Vec::new()
        } else {
            self.side.take()
        }
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<(Option<PendingKeyedSnapshot>, OperatorStateStore)> {
        let backend = self
            .backend
            .as_mut()
            .ok_or_else(|| Error::Internal("keyed operator snapshot before open".into()))?;
        Ok((
            Some(backend.snapshot_async(checkpoint_id)?),
            OperatorStateStore::new(),
        ))
    }
    fn restore(&mut self, keyed: Option<&RestoredKeyed>, _: &OperatorStateStore) -> Result<()> {
        if let (Some(snap), Some(backend)) = (keyed, self.backend.as_mut()) {
            backend.restore_from(snap)?;
            if let Some(t) = self.timers.as_mut() {
                t.rebuild(backend)?;
            }
        }
        Ok(())
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(b) = self.backend.as_mut() {
            b.notify_complete(checkpoint_id);
        }
        Ok(())
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(b) = self.backend.as_mut() {
            b.notify_aborted(checkpoint_id);
        }
        Ok(())
    }
}

impl<K: Key, I, O, P, KS> KeyedProcessOp<K, I, O, P, KS> {
    /// The operator running `function`, keyed by `selector`; its state
    /// backend is made in `open`.
    pub(crate) fn new(function: P, selector: Arc<KS>, timestamps: Option<TimestampFn<I>>) -> Self {
        KeyedProcessOp {
            watermark: i64::MIN,
            function,
            selector,
            backend: None,
            timers: None,
            max_parallelism: 0,
            timestamps,
            ts_buf: Vec::new(),
            keys: Vec::new(),
            groups: Vec::new(),
            side: SideOutputs::default(),
            _t: PhantomData,
        }
    }
}

/// A running reduction per key (`KeyedStream::reduce`).
pub(crate) struct Reduce<T, R> {
    f: Arc<R>,
    state: Option<ValueState<T>>,
}

impl<T, R> Reduce<T, R> {
    /// Reduces the values of a key with `f`.
    pub(crate) fn new(f: R) -> Self {
        Reduce {
            f: Arc::new(f),
            state: None,
        }
    }
}

impl<T, R> Clone for Reduce<T, R> {
    fn clone(&self) -> Self {
        Reduce {
            f: self.f.clone(),
            state: self.state,
        }
    }
}

impl<K: Key, T: Data + Clone, R: Fn(T, T) -> T + Send + Sync + 'static>
    KeyedProcessFunction<K, T, T> for Reduce<T, R>
{
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, K>) -> Result<()> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("reduce"))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, T>,
    ) -> Result<()> {
        let st = self
            .state
            .ok_or_else(|| Error::Internal("reduce used before open".into()))?;
        let f = &self.f;
        let new = st.update_with(ctx, |old| match old {
            Some(acc) => f(acc.clone(), value),
            None => value,
        })?;
        out.collect(new);
        Ok(())
    }
}

/// A running aggregation per key of a field of each record (`KeyedStream::count`, `sum`, `min`, `max`).
pub(crate) struct Aggregate<T, N, G> {
    field: Arc<G>,
    _t: PhantomData<fn(&T)>,
    combine: fn(&mut N, N),
    state: Option<ValueState<N>>,
}

impl<T, N, G> Aggregate<T, N, G> {
    /// Aggregates `field` of the records of a key with `combine`
    /// (accumulator, next value), starting from the first value.
    pub(crate) fn new(field: G, combine: fn(&mut N, N)) -> Self {
        Aggregate {
            field: Arc::new(field),
            _t: PhantomData,
            combine,
            state: None,
        }
    }
}

impl<T, N, G> Clone for Aggregate<T, N, G> {
    fn clone(&self) -> Self {
        Aggregate {
            field: self.field.clone(),
            _t: PhantomData,
            combine: self.combine,
            state: self.state,
        }
    }
}

impl<K, T, N, G> KeyedProcessFunction<K, T, (K, N)> for Aggregate<T, N, G>
where
    K: Key,
    T: Data,
    N: Data + Clone,
    G: Fn(&T) -> N + Send + Sync + 'static,
{
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, K>) -> Result<()> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("aggregate"))?);
        Ok(())
    }
    #[inline]
    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, (K, N)>,
    ) -> Result<()> {
        let st = self
            .state
            .ok_or_else(|| Error::Internal("aggregate used before open".into()))?;
        let v = (self.field)(&value);
        let combine = self.combine;
        let new = st.update_with(ctx, |old| match old {
            Some(acc) => {
                let mut acc = acc.clone();
                combine(&mut acc, v);
                acc
            }
            None => v,
        })?;
        out.collect((ctx.key().clone(), new));
        Ok(())
    }
}
