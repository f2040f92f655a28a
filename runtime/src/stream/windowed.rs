//! [`WindowedStream`]: a keyed stream cut into windows (`KeyedStream::window`),
//! and what each window computes; the operator is [`crate::window`]'s.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::{DataStream, KeyedStream, Prototype};
use crate::operator::ChainOp;
use crate::record::{Data, Key};
use crate::side_output::OutputTag;
use crate::time::TimeDomain;
use crate::window::{
    AggregateFn, AggregateFunction, Plain, ProcessFn, ProcessWindowFunction, ReduceFn,
    WindowAssigner, WindowFn, WindowOperator, WithProcess,
};

/// A keyed stream cut into windows; say what each window computes.
pub struct WindowedStream<T, K, F> {
    keyed: KeyedStream<T, K, F>,
    assigner: WindowAssigner,
    lateness: Duration,
    late: Option<OutputTag<T>>,
}

impl<T: Data, K: Key, F: Fn(&T) -> K + Send + Sync + 'static> WindowedStream<T, K, F> {
    pub(crate) fn new(keyed: KeyedStream<T, K, F>, assigner: WindowAssigner) -> Self {
        WindowedStream {
            keyed,
            assigner,
            lateness: Duration::ZERO,
            late: None,
        }
    }

    /// Keeps event-time windows open for records up to `lateness` behind
    /// the watermark: each such record fires its window again (Flink's
    /// `allowedLateness`; default 0). Ignored for processing time.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = lateness;
        self
    }

    /// Sends records too late for all their windows to side output `tag`
    /// instead of dropping them (Flink's `sideOutputLateData`); read them
    /// with [`DataStream::get_side_output`].
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late = Some(tag.clone());
        self
    }

    /// Reduces each window's records with `f`; emits the result per window.
    pub fn reduce<R: Fn(T, T) -> T + Send + Sync + 'static>(&self, f: R) -> DataStream<T>
    where
        T: Clone,
    {
        let f = Arc::new(f);
        self.build("Window(Reduce)", move || ReduceFn {
            f: f.clone(),
            _t: PhantomData,
        })
    }

    /// Aggregates each window incrementally; emits the result per window.
    pub fn aggregate<A: AggregateFunction<T>>(&self, agg: A) -> DataStream<A::Out> {
        let agg = Arc::new(agg);
        self.build("Window(Aggregate)", move || AggregateFn {
            agg: agg.clone(),
            process: Plain,
            _o: PhantomData,
        })
    }

    /// Aggregates each window incrementally, then calls `process` with the
    /// key, the window and the one result (Flink's `aggregate(agg, process)`).
    pub fn aggregate_with<A, P, O>(&self, agg: A, process: P) -> DataStream<O>
    where
        A: AggregateFunction<T>,
        P: ProcessWindowFunction<K, A::Out, O> + Clone,
        O: Data,
    {
        let agg = Arc::new(agg);
        let process = Prototype::new(process);
        let process = Arc::new(process);
        self.build("Window(Aggregate, Process)", move || AggregateFn {
            agg: agg.clone(),
            process: WithProcess(process.get()),
            _o: PhantomData,
        })
    }

    /// Keeps every record of each window and calls `process` with all of
    /// them when it fires (Flink's `process`).
    pub fn process<P, O>(&self, process: P) -> DataStream<O>
    where
        T: Clone,
        P: ProcessWindowFunction<K, T, O> + Clone,
        O: Data,
    {
        let process = Arc::new(Prototype::new(process));
        self.build("Window(Process)", move || ProcessFn {
            process: process.get(),
            _o: PhantomData,
        })
    }

    fn build<W, M>(&self, name: &str, make: M) -> DataStream<W::Out>
    where
        W: WindowFn<K, T>,
        M: Fn() -> W + Send + Sync + 'static,
    {
        let event_time = self.assigner.domain() == TimeDomain::EventTime;
        if let Err(e) = self.assigner.validate() {
            self.keyed.stream().record_error(format!("{name}: {e}"));
        }
        let timestamps = if event_time {
            self.keyed.stream().timestamps_for(name)
        } else {
            None
        };
        let assigner = self.assigner;
        let lateness = if event_time {
            self.lateness.as_millis().min(i64::MAX as u128 / 4) as i64
        } else {
            0
        };
        let late = self.late.clone();
        let selector = self.keyed.selector();
        let factory = Arc::new(move || {
            Box::new(WindowOperator::new(
                assigner,
                lateness,
                late.clone(),
                make(),
                selector.clone(),
                timestamps.clone(),
            )) as Box<dyn ChainOp>
        });
        self.keyed.then_keyed(name, factory)
    }
}
