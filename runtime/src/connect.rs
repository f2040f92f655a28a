//! Two inputs in one operator: what `DataStream::connect` and
//! `KeyedStream::interval_join` build ([`ConnectedStreams`](crate::stream::ConnectedStreams),
//! [`IntervalJoin`](crate::stream::IntervalJoin), in `stream`) runs here:
//! [`CoProcessFunction`], [`KeyedCoProcessFunction`], and the interval
//! join as a keyed co-process function.
//!
//! # How two inputs become one
//! Each input's records are wrapped, in a chained operator right after
//! the input, into [`CoInput::First`] or [`CoInput::Second`] together with
//! their event timestamp (when the input has timestamps). The two-input
//! operator is then an ordinary operator with two input edges of
//! `CoInput<A, B>` batches, so everything the runtime does for several
//! inputs holds for both: its checkpoint barriers are aligned over the
//! channels of both inputs (or overtake both, unaligned), its watermark is
//! the minimum over both inputs' active channels, and after `key_by` both
//! inputs are partitioned by the same key groups, so a keyed co-process
//! function sees one key's records of both sides in one subtask, with one
//! keyed state and one set of timers shared by both.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operator::{
    non_empty, ChainOp, Collector, KeyedOpenContext, KeyedProcessFunction, RuntimeContext,
};
use crate::record::{downcast, AnyBatch, Data, Key};
use crate::state::{KeyedContext, MapState, MapStateDescriptor};
use crate::time::TimeDomain;
use crate::watermarks::TimestampFn;
use crate::Result;

/// A record of one of the two inputs of a two-input operator, with its
/// event timestamp when its input has timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoInput<A, B> {
    /// From the first input (the stream `connect` was called on).
    First(A, Option<i64>),
    /// From the second input.
    Second(B, Option<i64>),
}

impl<A, B> CoInput<A, B> {
    /// The record's event timestamp.
    pub fn timestamp(&self) -> Option<i64> {
        match self {
            CoInput::First(_, t) | CoInput::Second(_, t) => *t,
        }
    }
}

/// Timestamps of `CoInput` batches: the ones carried in the records.
pub(crate) fn co_timestamps<A: Data, B: Data>() -> TimestampFn<CoInput<A, B>> {
    Arc::new(|batch: &[CoInput<A, B>], out: &mut Vec<i64>| {
        out.clear();
        out.extend(batch.iter().map(|r| r.timestamp().unwrap_or(i64::MIN)));
    })
}

/// Wraps one input's records (chained right after the input).
pub(crate) struct Wrap<T, A, B> {
    /// `CoInput::First` or `CoInput::Second`, for this input's type.
    pub(crate) wrap: fn(T, Option<i64>) -> CoInput<A, B>,
    pub(crate) timestamps: Option<TimestampFn<T>>,
    pub(crate) ts: Vec<i64>,
}

impl<T: Data, A: Data, B: Data> ChainOp for Wrap<T, A, B> {
    fn open(&mut self, _: &RuntimeContext) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let input = downcast::<T>(batch);
        if let Some(f) = &self.timestamps {
            f(&input, &mut self.ts);
        }
        let ts = &self.ts;
        let wrap = self.wrap;
        let out: Vec<CoInput<A, B>> = input
            .into_iter()
            .enumerate()
            .map(|(i, v)| wrap(v, ts.get(i).copied()))
            .collect();
        self.ts.clear();
        Ok(non_empty(out))
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
}

/// A function over two connected streams without keys (Flink's `CoProcessFunction`).
pub trait CoProcessFunction<A, B, O>: Send + 'static {
    /// A record of the first input.
    fn process_element1(&mut self, value: A, out: &mut Collector<'_, O>) -> Result<()>;
    /// A record of the second input.
    fn process_element2(&mut self, value: B, out: &mut Collector<'_, O>) -> Result<()>;
}

/// Runs a [`CoProcessFunction`].
pub(crate) struct CoProcessOp<A, B, O, P> {
    pub(crate) function: P,
    pub(crate) _t: PhantomData<fn(A, B) -> O>,
}

impl<A: Data, B: Data, O: Data, P: CoProcessFunction<A, B, O>> ChainOp for CoProcessOp<A, B, O, P> {
    fn open(&mut self, _: &RuntimeContext) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let mut out = Vec::new();
        let mut c = Collector::new(&mut out);
        for r in downcast::<CoInput<A, B>>(batch) {
            match r {
                CoInput::First(a, _) => self.function.process_element1(a, &mut c)?,
                CoInput::Second(b, _) => self.function.process_element2(b, &mut c)?,
            }
        }
        Ok(non_empty(out))
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
}

/// A function over two connected keyed streams (Flink's
/// `KeyedCoProcessFunction`): both inputs share the key's state and timers.
pub trait KeyedCoProcessFunction<K: Key, A, B, O>: Send + 'static {
    /// Registers states; called once per subtask before the first record.
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, K>) -> Result<()>;
    /// A record of the first input; `ctx` is its key's.
    fn process_element1(
        &mut self,
        value: A,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()>;
    /// A record of the second input; `ctx` is its key's.
    fn process_element2(
        &mut self,
        value: B,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()>;
    /// A timer of the key fired.
    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let _ = (timestamp, domain, ctx, out);
        Ok(())
    }
}

/// A keyed co-process function as a keyed process function over `CoInput`.
pub(crate) struct CoAdapter<P, A, B>(pub(crate) P, pub(crate) PhantomData<fn(A, B)>);

impl<P: Clone, A, B> Clone for CoAdapter<P, A, B> {
    fn clone(&self) -> Self {
        CoAdapter(self.0.clone(), PhantomData)
    }
}

impl<K, A, B, O, P> KeyedProcessFunction<K, CoInput<A, B>, O> for CoAdapter<P, A, B>
where
    K: Key,
    A: Data,
    B: Data,
    P: KeyedCoProcessFunction<K, A, B, O>,
{
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, K>) -> Result<()> {
        self.0.open(ctx)
    }
    fn process_element(
        &mut self,
        value: CoInput<A, B>,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        match value {
            CoInput::First(a, _) => self.0.process_element1(a, ctx, out),
            CoInput::Second(b, _) => self.0.process_element2(b, ctx, out),
        }
    }
    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.0.on_timer(timestamp, domain, ctx, out)
    }
}

/// Called per matching pair of an interval join (Flink's `ProcessJoinFunction`):
/// the left record, the right record, and the output. Closures
/// `FnMut(&A, &B, &mut Collector<O>) -> Result<()>` are join functions.
pub trait ProcessJoinFunction<A, B, O>: Send + 'static {
    /// One pair whose timestamps are within the interval.
    fn process_element(&mut self, left: &A, right: &B, out: &mut Collector<'_, O>) -> Result<()>;
}

impl<A, B, O, F> ProcessJoinFunction<A, B, O> for F
where
    F: FnMut(&A, &B, &mut Collector<'_, O>) -> Result<()> + Send + 'static,
{
    fn process_element(&mut self, left: &A, right: &B, out: &mut Collector<'_, O>) -> Result<()> {
        self(left, right, out)
    }
}

/// The interval join as a keyed co-process function (Flink's
/// `IntervalJoinOperator`): each side's records wait in keyed map state
/// (timestamp -> records) until the watermark makes a match impossible;
/// a record meets every record of the other side already buffered whose
/// timestamp is in its interval, so each pair is emitted once, when its
/// second record arrives. A record behind the watermark is late and
/// dropped (as in Flink). Buffers are cleaned by event-time timers.
pub(crate) struct IntervalJoinFn<A, B, J> {
    pub(crate) lower: i64,
    pub(crate) upper: i64,
    pub(crate) join: J,
    pub(crate) left: Option<MapState<i64, Vec<A>>>,
    pub(crate) right: Option<MapState<i64, Vec<B>>>,
}

impl<A, B, J: Clone> Clone for IntervalJoinFn<A, B, J> {
    fn clone(&self) -> Self {
        IntervalJoinFn {
            lower: self.lower,
            upper: self.upper,
            join: self.join.clone(),
            left: self.left,
            right: self.right,
        }
    }
}

/// Each side's buffer: timestamp -> records at it.
type Buffers<A, B> = (MapState<i64, Vec<A>>, MapState<i64, Vec<B>>);

impl<A: Data + Clone, B: Data + Clone, J> IntervalJoinFn<A, B, J> {
    fn states(&self) -> Result<Buffers<A, B>> {
        match (self.left, self.right) {
            (Some(l), Some(r)) => Ok((l, r)),
            _ => Err(crate::Error::Internal(
                "interval join used before open".into(),
            )),
        }
    }

    fn is_late<K: Key>(ctx: &KeyedContext<'_, K>, ts: i64) -> bool {
        ctx.current_watermark() != i64::MIN && ts < ctx.current_watermark()
    }
}

fn missing_timestamp() -> crate::Error {
    crate::Error::User(
        "interval_join needs event timestamps on both inputs: assign them upstream".into(),
    )
}

impl<K, A, B, O, J> KeyedCoProcessFunction<K, A, B, O> for IntervalJoinFn<A, B, J>
where
    K: Key,
    A: Data + Clone,
    B: Data + Clone,
    O: Data,
    J: ProcessJoinFunction<A, B, O>,
{
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, K>) -> Result<()> {
        self.left = Some(ctx.map_state(&MapStateDescriptor::new("interval-join-left"))?);
        self.right = Some(ctx.map_state(&MapStateDescriptor::new("interval-join-right"))?);
        Ok(())
    }
    fn process_element1(
        &mut self,
        value: A,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let ts = ctx.timestamp().ok_or_else(missing_timestamp)?;
        if Self::is_late(ctx, ts) {
            return Ok(());
        }
        let (left, right) = self.states()?;
        for (rt, rs) in right.entries(ctx)? {
            if rt >= ts.saturating_add(self.lower) && rt <= ts.saturating_add(self.upper) {
                for r in &rs {
                    self.join.process_element(&value, r, out)?;
                }
            }
        }
        left.update_with(ctx, &ts, Vec::new, |v| v.push(value))?;
        // A left record can meet right records up to ts + upper.
        let cleanup = if self.upper > 0 {
            ts.saturating_add(self.upper)
        } else {
            ts
        };
        ctx.timer_service().register_event_time_timer(cleanup);
        Ok(())
    }
    fn process_element2(
        &mut self,
        value: B,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let ts = ctx.timestamp().ok_or_else(missing_timestamp)?;
        if Self::is_late(ctx, ts) {
            return Ok(());
        }
        let (left, right) = self.states()?;
        for (lt, ls) in left.entries(ctx)? {
            if ts >= lt.saturating_add(self.lower) && ts <= lt.saturating_add(self.upper) {
                for l in &ls {
                    self.join.process_element(l, &value, out)?;
                }
            }
        }
        right.update_with(ctx, &ts, Vec::new, |v| v.push(value))?;
        // A right record can meet left records down to ts - upper, i.e.
        // until the watermark passes ts - lower.
        let cleanup = if self.lower < 0 {
            ts.saturating_sub(self.lower)
        } else {
            ts
        };
        ctx.timer_service().register_event_time_timer(cleanup);
        Ok(())
    }
    fn on_timer(
        &mut self,
        timestamp: i64,
        _: TimeDomain,
        ctx: &mut KeyedContext<'_, K>,
        _: &mut Collector<'_, O>,
    ) -> Result<()> {
        let (left, right) = self.states()?;
        // Left records at lt are needed while right records up to lt + upper may come.
        let left_done = |lt: i64| {
            if self.upper > 0 {
                lt.saturating_add(self.upper) <= timestamp
            } else {
                lt <= timestamp
            }
        };
        let right_done = |rt: i64| {
            if self.lower < 0 {
                rt.saturating_sub(self.lower) <= timestamp
            } else {
                rt <= timestamp
            }
        };
        for (lt, _) in left.entries(ctx)? {
            if left_done(lt) {
                left.remove(ctx, &lt)?;
            }
        }
        for (rt, _) in right.entries(ctx)? {
            if right_done(rt) {
                right.remove(ctx, &rt)?;
            }
        }
        Ok(())
    }
}
