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
};
use crate::record::{downcast, AnyBatch, Data, Key};
use crate::state::{
    KeyedContext, KeyedStateBackend, OperatorStateStore, PendingKeyedSnapshot, RestoredKeyed,
    ValueState, ValueStateDescriptor,
};
use crate::{Error, Result};

/// Runs a [`KeyedProcessFunction`] per record with its key's state.
pub(crate) struct KeyedProcessOp<K: Key, I, O, P, KS> {
    pub(crate) watermark: i64,
    pub(crate) function: P,
    pub(crate) selector: Arc<KS>,
    pub(crate) backend: Option<KeyedStateBackend<K>>,
    pub(crate) max_parallelism: usize,
    pub(crate) _t: PhantomData<fn(I) -> O>,
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
        self.backend = Some(backend);
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let input = downcast::<I>(batch);
        let backend = self
            .backend
            .as_mut()
            .ok_or_else(|| Error::Internal("keyed operator used before open".into()))?;
        let mut out = Vec::with_capacity(input.len());
        let mut c = Collector::new(&mut out);
        for v in input {
            let key = (self.selector)(&v);
            let mut ctx = KeyedContext {
                key: &key,
                backend,
                max_parallelism: self.max_parallelism,
                watermark: self.watermark,
            };
            self.function.process_element(v, &mut ctx, &mut c)?;
        }
        backend.end_batch()?;
        Ok(non_empty(out))
    }
    fn on_watermark(&mut self, wm: i64) -> Result<Option<i64>> {
        self.watermark = wm;
        Ok(Some(wm))
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
    pub(crate) fn new(function: P, selector: Arc<KS>) -> Self {
        KeyedProcessOp {
            watermark: i64::MIN,
            function,
            selector,
            backend: None,
            max_parallelism: 0,
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
