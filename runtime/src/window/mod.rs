//! Windows on keyed streams: what `KeyedStream::window` builds
//! ([`WindowedStream`](crate::stream::WindowedStream), in `stream`) runs here.
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
//! [`WindowedStream::allowed_lateness`]: crate::stream::WindowedStream::allowed_lateness
//! [`WindowedStream::side_output_late_data`]: crate::stream::WindowedStream::side_output_late_data
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

pub(crate) use function::{AggregateFn, Plain, ProcessFn, ReduceFn, WindowFn, WithProcess};
pub(crate) use operator::WindowOperator;
