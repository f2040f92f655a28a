//! Windows on keyed streams (Flink's `WindowedStream`).
//!
//! ```no_run
//! # use std::time::Duration;
//! # use weir_runtime::prelude::*;
//! # use weir_runtime::window::*;
//! # use weir_runtime::watermarks::WatermarkStrategy;
//! # use weir_runtime::side_output::OutputTag;
//! # fn demo(clicks: DataStream<(String, i64)>) {
//! struct Count;
//! impl AggregateFunction<(String, i64)> for Count {
//!     type Acc = u64;
//!     type Out = u64;
//!     fn create_accumulator(&self) -> u64 { 0 }
//!     fn add(&self, _: &(String, i64), acc: &mut u64) { *acc += 1 }
//!     fn get_result(&self, acc: &u64) -> u64 { *acc }
//!     fn merge(&self, a: u64, b: u64) -> u64 { a + b }
//! }
//! let late = OutputTag::<(String, i64)>::new("late");
//! let counts = clicks
//!     .assign_timestamps_and_watermarks(
//!         WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_secs(3))
//!             .with_timestamp_assigner(|c: &(String, i64)| c.1),
//!     )
//!     .key_by(|c: &(String, i64)| c.0.clone())
//!     .window(TumblingEventTimeWindows::of(Duration::from_secs(10)))
//!     .allowed_lateness(Duration::from_secs(5))
//!     .side_output_late_data(&late)
//!     .aggregate_with(Count, |page: &String, w: &WindowContext, n: Vec<u64>, out: &mut Collector<(String, i64, u64)>| {
//!         out.collect((page.clone(), w.window.end, n[0]));
//!         Ok(())
//!     });
//! let late_clicks = counts.get_side_output(&late);
//! # }
//! ```
//!
//! | module     | concept |
//! |------------|---------|
//! | `assigner` | which windows a record belongs to: tumbling, sliding, session; event or processing time |
//! | `function` | what a window computes: `reduce`, [`AggregateFunction`], [`ProcessWindowFunction`] |
//! | `operator` | the window operator: contents in keyed state, timers, the default triggers, lateness |
//!
//! Semantics are Flink's default triggers: an event-time window fires when
//! the watermark reaches its `max_timestamp` (`end - 1`), a processing-time
//! window when the clock does. With [`WindowedStream::allowed_lateness`] an
//! event-time window keeps its state until the watermark passes
//! `max_timestamp + lateness`, and every late record in that time fires it
//! again with the updated result. Records later than that go to
//! [`WindowedStream::side_output_late_data`], or are dropped. Window
//! contents, merged sessions and pending timers are keyed state: they are
//! in every checkpoint and savepoint, restored, and rescaled by key group.
//! Event-time windows need the stream's timestamps
//! ([`DataStream::assign_timestamps_and_watermarks`] or [`Env::from_source`]
//! with a timestamp assigner, upstream of any `map`).
//!
//! [`DataStream::assign_timestamps_and_watermarks`]: crate::stream::DataStream::assign_timestamps_and_watermarks
//! [`Env::from_source`]: crate::stream::Env::from_source

mod assigner;
mod function;
mod operator;

pub use assigner::{
    window_start, EventTimeSessionWindows, ProcessingTimeSessionWindows, SlidingEventTimeWindows,
    SlidingProcessingTimeWindows, TimeWindow, TumblingEventTimeWindows,
    TumblingProcessingTimeWindows, WindowAssigner,
};
pub use function::{AggregateFunction, ProcessWindowFunction, WindowContext};

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use function::{AggregateFn, Plain, ProcessFn, ReduceFn, WindowFn, WithProcess};
use operator::WindowOperator;

use crate::operator::ChainOp;
use crate::record::{Data, Key};
use crate::side_output::OutputTag;
use crate::stream::{DataStream, KeyedStream};
use crate::timers::TimeDomain;

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
        P: crate::window::ProcessWindowFunction<K, A::Out, O> + Clone,
        O: Data,
    {
        let agg = Arc::new(agg);
        let process = crate::stream::Prototype::new(process);
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
        let process = Arc::new(crate::stream::Prototype::new(process));
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
