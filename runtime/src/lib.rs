//! # weir-runtime: the engine
//!
//! weir runs dataflow jobs the way Apache Flink does, on an actor model.
//! This crate is the engine; `weir-operators` holds sources and sinks built on
//! its public API, and the `weir` crate re-exports both.
//!
//! ## Architecture
//!
//! ```text
//!   DataStream API (stream)  ──builds──▶  logical graph (graph::StreamGraph)
//!                                              │ plan(): parallelism, partitioning, chaining
//!                                              ▼
//!                                        physical plan (graph::JobPlan)
//!                                              │ instantiate(): one SubtaskSpec per subtask,
//!                                              │ one bounded channel per subtask pair
//!                                              ▼
//!   job supervisor actor (job) ──deploy (deploy)──▶ subtask actors (task), one per chain × parallelism
//!                                                   │ each runs its processing loop (task::runner) on its own thread
//!                                                   ▼
//!                      batches ═══ bounded channels (exchange) ═══▶ batches
//! ```
//!
//! - [`stream`]: `Env`, `DataStream`, `KeyedStream`, and the builders of
//!   windows (`WindowedStream`) and two-input operators (`ConnectedStreams`,
//!   `IntervalJoin`): what users call.
//! - [`graph`]: the logical graph, chaining, the physical plan.
//! - [`job`]: the job supervisor actor, `JobHandle`, `JobResult`.
//! - [`deploy`]: the deployment seam between the supervisor and where
//!   subtasks run (`TaskExecutor`; the in-process `LocalExecutor` today, a
//!   TaskManager's slots beside it in cluster mode).
//! - [`task`]: the subtask actor and its processing loop (I/O only), which
//!   consults two pure state machines: the barrier handler (`task/barrier.rs`:
//!   aligned, unaligned, aligned with timeout, at-least-once) and the
//!   watermark valve (`task/watermark.rs`); the asynchronous upload of
//!   snapshots is `task/upload.rs`.
//! - [`job_shared`]: what a job's subtasks, coordinator and supervisor share
//!   (the root-cause failure, the live processing loops, the job's observers).
//! - `observer`: who is told about a job's checkpoints and failovers
//!   (`Observers`, fanned out to each registered observer); the protocol and
//!   the supervisor report events there and never import [`telemetry`],
//!   which is one observer. The checkpoint events and the data they carry
//!   are the protocol's own (`checkpoint::events`).
//! - `lifecycle`: a job's status ([`job::JobStatus`]), its failures and
//!   restores; read by [`job`], [`metrics`] and [`rest`].
//! - [`restart`]: restart strategies (fixed-delay, failure-rate,
//!   exponential-delay) as pure decisions the job supervisor applies.
//! - `cancellation`: the watchdog that bounds how long a restart waits for
//!   stopped subtasks stuck in user code (`task.cancellation.*`).
//! - [`exchange`]: the data plane: the channel seam (in-process bounded
//!   queues, and network channels between TaskManagers with credit-based
//!   flow control), partitioners, output edges, the input gate.
//! - [`cluster`]: cluster mode: the JobManager and TaskManager roles of one
//!   program, the gRPC control plane, slot placement, generation fencing.
//! - [`ha`]: high availability without a coordination service: stable job
//!   ids, automatic resume, and JobManager leadership fenced through a
//!   create-only log in the checkpoint storage. docs/design.md invariant 12.
//! - [`operator`]: the traits users implement (`SourceFunction`,
//!   `KeyedProcessFunction`, `SinkFunction`) and the operators that run them.
//! - Event time: [`watermarks`] (watermark strategies, per-split
//!   generators, idleness), [`time`] (the clocks and the `TimerService` a
//!   function registers timers through), [`timers`] (timers kept as keyed
//!   state), [`window`] (assigners, window functions, the window operator),
//!   [`connect`] (two inputs in one operator; the interval join),
//!   [`side_output`] (`OutputTag`). docs/design.md invariant 9.
//! - [`state`]: keyed state (`ValueState`, `ListState`, `MapState`) and
//!   operator state, behind a backend enum (heap, RocksDB with the `rocksdb` feature).
//! - [`snapshot`]: what crosses between the state backends and the
//!   checkpoints (keyed snapshots, state handles, operator state).
//! - [`checkpoint`]: the protocol's data (configuration, barriers' kinds,
//!   statistics, events) and the checkpoint files (`storage`, `store`).
//! - [`coordinator`]: the checkpoint coordinator actor.
//! - [`restore`]: maps a checkpoint onto the subtasks of a new job (rescaling).
//! - `rescale`: spreads the in-flight data of an unaligned checkpoint over
//!   a chain's subtasks at another parallelism.
//! - [`waits`]: the time subtasks wait (back-pressured, idle), written by
//!   the data plane and read by the metrics.
//! - [`keygroup`]: key groups, Flink's unit of keyed-state partitioning.
//! - [`config`]: every option, with Flink's key names, and its validation.
//! - [`telemetry`]: OpenTelemetry traces of checkpoints and failovers, OTLP export.
//! - [`metrics`]: Flink's metrics (checkpoints, restarts, records, back
//!   pressure), collected with atomics, and their Prometheus text format.
//!   `counter`: the [`metrics::Counter`] a function counts into (Flink's
//!   `numRecordsInErrors`), held by `RuntimeContext` and read by the metrics.
//! - [`registry`]: every job of the process, for the REST server.
//! - [`operations`]: what clients asked over REST (savepoints, stops,
//!   triggered checkpoints, cancels) and the promise that its result is
//!   read before the job's process goes away.
//! - [`rest`]: the REST API (Flink's paths), the web UI and `/metrics` (axum).
//! - [`error`]: the one error type.
//!
//! The modules import each other without a circle, also when a directory
//! (`checkpoint/`, `exchange/`, `task/`, ...) counts as one module:
//! `tests/architecture_modules.rs` checks it.
//!
//! The vocabulary and every protocol invariant, each with the module that
//! keeps it and the tests that check it, are in `docs/design.md`, which also
//! follows one record and one barrier through these modules.
//!
//! ## Rules of the data plane
//! Records move in batches over bounded channels; actor mailboxes carry only
//! control. Per record there is no allocation by the runtime, no lock, no
//! message and no dynamic dispatch: dynamic calls happen once per batch.

#![warn(missing_docs)]

pub(crate) mod cancellation;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod coordinator;
pub(crate) mod counter;
pub mod deploy;
pub mod error;
pub mod exchange;
pub mod failpoint;
pub mod graph;
pub mod ha;
pub mod job;
pub mod job_shared;
pub mod keygroup;
pub(crate) mod lifecycle;
pub mod metrics;
pub(crate) mod observer;
pub mod operations;
pub mod operator;
pub mod record;
pub mod registry;
pub(crate) mod rescale;
pub mod rest;
pub mod restart;
pub mod restore;
pub mod side_output;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod task;
pub mod telemetry;
pub mod time;
pub mod timers;
pub mod waits;
pub mod watermarks;
pub mod window;

pub use error::{Error, KillError, Result, SavepointError};

/// What most programs need.
pub mod prelude {
    pub use crate::config::{options, Conf};
    pub use crate::connect::{CoProcessFunction, KeyedCoProcessFunction, ProcessJoinFunction};
    pub use crate::job::{JobHandle, JobResult, JobStatus, OperatorMetrics};
    pub use crate::metrics::Counter;
    pub use crate::operator::{
        Collector, KeyedOpenContext, KeyedProcessFunction, RuntimeContext, SinkFunction,
        SourceContext, SourceFunction, SourceStatus,
    };
    pub use crate::record::{Data, Key};
    pub use crate::side_output::OutputTag;
    pub use crate::state::{
        KeyedContext, ListState, ListStateDescriptor, MapState, MapStateDescriptor,
        OperatorStateStore, ValueState, ValueStateDescriptor,
    };
    pub use crate::stream::{
        ConnectedKeyedStreams, ConnectedStreams, DataStream, Env, IntervalJoin, KeyedStream,
        WindowedStream,
    };
    pub use crate::time::{TimeDomain, TimerService};
    pub use crate::watermarks::{WatermarkGenerator, WatermarkOutput, WatermarkStrategy};
    pub use crate::window::{
        AggregateFunction, EventTimeSessionWindows, ProcessWindowFunction,
        ProcessingTimeSessionWindows, SlidingEventTimeWindows, SlidingProcessingTimeWindows,
        TimeWindow, TumblingEventTimeWindows, TumblingProcessingTimeWindows, WindowContext,
    };
    pub use crate::{Error, Result};
}
