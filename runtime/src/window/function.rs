//! What a window computes: the user's traits (Flink's `AggregateFunction`
//! and `ProcessWindowFunction`) and the one internal shape the window
//! operator runs ([`WindowFn`]: an accumulator per key and window, added
//! to per record, merged for sessions, turned into output when it fires).

use std::marker::PhantomData;
use std::sync::Arc;

use super::TimeWindow;
use crate::operator::Collector;
use crate::record::{Data, Key};
use crate::Result;

/// An incremental aggregation (Flink's `AggregateFunction`): one
/// accumulator per key and window, updated per record, so a window holds
/// one value however many records it has.
pub trait AggregateFunction<IN>: Send + Sync + 'static {
    /// The accumulator (kept in keyed state).
    type Acc: Data + Clone;
    /// The result.
    type Out: Data;
    /// A new, empty accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds a record.
    fn add(&self, value: &IN, accumulator: &mut Self::Acc);
    /// The result of an accumulator.
    fn get_result(&self, accumulator: &Self::Acc) -> Self::Out;
    /// Merges two accumulators (session windows merge).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// What a [`ProcessWindowFunction`] knows about the window that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowContext {
    /// The window.
    pub window: TimeWindow,
    /// The operator's watermark when it fired.
    pub current_watermark: i64,
    /// The wall clock when it fired (ms since the epoch).
    pub current_processing_time: i64,
}

/// Called with a window's contents when it fires (Flink's
/// `ProcessWindowFunction`): every record of the window, or the one
/// result of an incremental aggregation (`aggregate_with`). Closures
/// `FnMut(&K, &WindowContext, Vec<IN>, &mut Collector<OUT>) -> Result<()>`
/// are process window functions.
pub trait ProcessWindowFunction<K, IN, OUT>: Send + 'static {
    /// Emits the window's output.
    fn process(
        &mut self,
        key: &K,
        context: &WindowContext,
        elements: Vec<IN>,
        out: &mut Collector<'_, OUT>,
    ) -> Result<()>;
}

impl<K, IN, OUT, F> ProcessWindowFunction<K, IN, OUT> for F
where
    F: FnMut(&K, &WindowContext, Vec<IN>, &mut Collector<'_, OUT>) -> Result<()> + Send + 'static,
{
    fn process(
        &mut self,
        key: &K,
        context: &WindowContext,
        elements: Vec<IN>,
        out: &mut Collector<'_, OUT>,
    ) -> Result<()> {
        self(key, context, elements, out)
    }
}

/// The internal shape of every window computation.
pub(crate) trait WindowFn<K, T>: Send + 'static {
    type Acc: Data + Clone;
    type Out: Data;
    fn create(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, value: &T);
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn emit(
        &mut self,
        key: &K,
        context: &WindowContext,
        acc: &Self::Acc,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
}

/// `reduce`: the accumulator is the reduced record so far.
pub(crate) struct ReduceFn<T, R> {
    pub(crate) f: Arc<R>,
    pub(crate) _t: PhantomData<fn(T)>,
}

impl<K: Key, T: Data + Clone, R: Fn(T, T) -> T + Send + Sync + 'static> WindowFn<K, T>
    for ReduceFn<T, R>
{
    type Acc = Option<T>;
    type Out = T;
    fn create(&self) -> Option<T> {
        None
    }
    #[inline]
    fn add(&self, acc: &mut Option<T>, value: &T) {
        *acc = Some(match acc.take() {
            Some(a) => (self.f)(a, value.clone()),
            None => value.clone(),
        });
    }
    fn merge(&self, a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some((self.f)(a, b)),
            (a, b) => a.or(b),
        }
    }
    fn emit(
        &mut self,
        _: &K,
        _: &WindowContext,
        acc: &Option<T>,
        out: &mut Collector<'_, T>,
    ) -> Result<()> {
        if let Some(v) = acc {
            out.collect(v.clone());
        }
        Ok(())
    }
}

/// `aggregate`, optionally followed by a process window function (`aggregate_with`).
pub(crate) struct AggregateFn<A, P, O> {
    pub(crate) agg: Arc<A>,
    pub(crate) process: P,
    pub(crate) _o: PhantomData<fn() -> O>,
}

/// The result of an aggregation, as it is (no process window function).
#[derive(Clone, Copy)]
pub(crate) struct Plain;

impl<K: Key, T: Data, A: AggregateFunction<T>> WindowFn<K, T> for AggregateFn<A, Plain, A::Out> {
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> A::Acc {
        self.agg.create_accumulator()
    }
    #[inline]
    fn add(&self, acc: &mut A::Acc, value: &T) {
        self.agg.add(value, acc)
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> A::Acc {
        self.agg.merge(a, b)
    }
    fn emit(
        &mut self,
        _: &K,
        _: &WindowContext,
        acc: &A::Acc,
        out: &mut Collector<'_, A::Out>,
    ) -> Result<()> {
        out.collect(self.agg.get_result(acc));
        Ok(())
    }
}

/// Marks a process window function after an aggregation.
pub(crate) struct WithProcess<P>(pub(crate) P);

impl<K, T, A, P, O> WindowFn<K, T> for AggregateFn<A, WithProcess<P>, O>
where
    K: Key,
    T: Data,
    O: Data,
    A: AggregateFunction<T>,
    P: ProcessWindowFunction<K, A::Out, O>,
{
    type Acc = A::Acc;
    type Out = O;
    fn create(&self) -> A::Acc {
        self.agg.create_accumulator()
    }
    #[inline]
    fn add(&self, acc: &mut A::Acc, value: &T) {
        self.agg.add(value, acc)
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> A::Acc {
        self.agg.merge(a, b)
    }
    fn emit(
        &mut self,
        key: &K,
        context: &WindowContext,
        acc: &A::Acc,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.process
            .0
            .process(key, context, vec![self.agg.get_result(acc)], out)
    }
}

/// `process`: the window keeps every record and hands them all over.
pub(crate) struct ProcessFn<P, O> {
    pub(crate) process: P,
    pub(crate) _o: PhantomData<fn() -> O>,
}

impl<K, T, P, O> WindowFn<K, T> for ProcessFn<P, O>
where
    K: Key,
    T: Data + Clone,
    O: Data,
    P: ProcessWindowFunction<K, T, O>,
{
    type Acc = Vec<T>;
    type Out = O;
    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    #[inline]
    fn add(&self, acc: &mut Vec<T>, value: &T) {
        acc.push(value.clone())
    }
    fn merge(&self, mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
        a.extend(b);
        a
    }
    fn emit(
        &mut self,
        key: &K,
        context: &WindowContext,
        acc: &Vec<T>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.process.process(key, context, acc.clone(), out)
    }
}
