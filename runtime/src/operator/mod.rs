//! The functions users write, and the operators that run them.
//!
//! Public traits, in Flink's words:
//! - [`SourceFunction`]: produces batches of records; its positions are
//!   operator state ([`OperatorStateStore`]) so it can resume exactly where a
//!   snapshot left it.
//! - [`KeyedProcessFunction`]: called per record of a keyed stream with a
//!   [`KeyedContext`] whose state is the current key's.
//! - [`SinkFunction`]: consumes batches; [`SinkFunction::finish`] at end of input.
//!
//! Plain transformations (`map`, `flat_map`, `filter`) are closures.
//!
//! The keyed operators (the one that runs a [`KeyedProcessFunction`] with
//! its key's state, and the running aggregations built on it: count, sum,
//! min, max, reduce) are in `keyed`.
//!
//! Internally every operator is a `ChainOp` that turns a whole batch into a
//! whole batch, so a chain of operators inside one subtask costs one dynamic
//! call per batch and operator, never per record; records are moved, not copied
//! or boxed.

mod keyed;
mod timestamps;

pub(crate) use keyed::{Aggregate, KeyedProcessOp, Reduce};
pub(crate) use timestamps::{TimestampsAndWatermarksOp, WatermarkedSource};

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::counter::Counter;
use crate::keygroup::KeyGroupRange;
use crate::record::{downcast, AnyBatch, Data, Key};
use crate::state::{
    BackendScope, KeyedContext, KeyedStateBackend, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, OperatorStateStore, PendingKeyedSnapshot, RestoredKeyed,
    StateBackendConfig, ValueState, ValueStateDescriptor,
};
use crate::{Error, Result};

/// Who a running function is: operator, subtask and job.
#[derive(Debug, Clone)]
pub struct RuntimeContext {
    /// The job's id (32 hex characters).
    pub job_id: String,
    /// This run of the job, for names that two processes of one job must
    /// never both write (the file sink's part files): the first 8
    /// characters of the job id, and with high availability the JobManager
    /// generation after them (`crate::ha::run_id`), so a superseded process
    /// still running never writes a file of the current one.
    pub run_id: String,
    /// The operator's name.
    pub operator: String,
    /// This subtask's index, `0..parallelism`.
    pub subtask: usize,
    /// The operator's parallelism.
    pub parallelism: usize,
    /// `pipeline.max-parallelism`: the number of key groups.
    pub max_parallelism: usize,
    /// Whether the job takes checkpoints (two-phase-commit sinks commit on
    /// checkpoint completion then; without checkpoints they commit at the end of input).
    pub checkpointing: bool,
    /// The keyed state backend keyed operators use (`state.backend.*`).
    pub state_backend: StateBackendConfig,
    /// `pipeline.auto-watermark-interval`.
    pub auto_watermark_interval: Duration,
    /// Flink's `numRecordsInErrors` of this operator subtask: records the
    /// function received but could not use (e.g. a source's records that
    /// fail to deserialize and that it skips). The function counts them
    /// itself; the runtime never does. It is the very counter the metrics
    /// report (REST, `/metrics`, OTLP), kept over the whole job: restarts of
    /// the subtask count on from where they stopped.
    pub num_records_in_errors: Counter,
}

impl<'a> From<&'a RuntimeContext> for BackendScope<'a> {
    fn from(ctx: &'a RuntimeContext) -> Self {
        BackendScope {
            config: &ctx.state_backend,
            operator: &ctx.operator,
            subtask: ctx.subtask,
            key_groups: ctx.key_group_range(),
            max_parallelism: ctx.max_parallelism,
            job_id: &ctx.job_id,
            parallelism: ctx.parallelism,
        }
    }
}

impl RuntimeContext {
    /// The key groups this subtask owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        KeyGroupRange::for_subtask(self.max_parallelism, self.parallelism, self.subtask)
    }
}

/// What a source reports after filling a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records are ready: call again.
    More,
    /// Nothing more right now: the runtime flushes buffered output and calls
    /// again after this long (an unbounded source waiting for input).
    Idle(Duration),
    /// The input is exhausted: end of stream.
    Finished,
}

/// What a source sees when it opens.
pub struct SourceContext<'a> {
    /// Who it is.
    pub runtime: &'a RuntimeContext,
    /// Its restored operator state (empty on a fresh start).
    pub state: &'a OperatorStateStore,
    /// Whether this is a restore.
    pub restored: bool,
}

/// A parallel source. Each subtask gets its own clone and decides from its
/// [`RuntimeContext`] which part of the input (which splits) it reads.
pub trait SourceFunction<T>: Send + 'static {
    /// Called once before the first poll.
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    /// Appends at most `max` records to `out` (an empty, reused buffer) and says
    /// whether more follow.
    fn poll_next(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus>;
    /// Writes the current input positions into `state` for checkpoint
    /// `checkpoint_id` (the synchronous part of its snapshot).
    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        let _ = (checkpoint_id, state);
        Ok(())
    }
    /// Checkpoint `checkpoint_id` is complete (every subtask's state of it is
    /// stored): e.g. report the positions it holds to an external system, as
    /// Flink's Kafka source commits offsets to the consumer group. Nothing
    /// here may be needed for correctness: a notification can be lost when
    /// the job fails right after the checkpoint completes.
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
    /// Checkpoint `checkpoint_id` was aborted.
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
    /// Called once after the last poll.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// How many splits this subtask reads (asked after `open`; it may grow
    /// later). With [`Env::from_source`](crate::stream::Env::from_source)
    /// each split gets its own watermark generator. A source without
    /// splits is one split per subtask.
    fn split_count(&self) -> usize {
        1
    }
    /// The split the records of the last `poll_next` came from: one poll
    /// returns the records of one split.
    fn last_split(&self) -> usize {
        0
    }
    /// A name of split `i` that stays the same across restores (its
    /// watermark is checkpointed under it).
    fn split_name(&self, i: usize) -> String {
        i.to_string()
    }
    /// Whether split `i` has no more records (it then stops holding the
    /// watermark back).
    fn split_finished(&self, i: usize) -> bool {
        let _ = i;
        false
    }
}

/// A sink. Each subtask gets its own clone.
pub trait SinkFunction<T>: Send + 'static {
    /// Called once before the first batch.
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    /// Consumes one batch.
    fn invoke(&mut self, batch: Vec<T>) -> Result<()>;
    /// End of input (or a stop with drain): flush what is buffered. Not
    /// called when the job fails or is cancelled, nor on a stop-with-savepoint
    /// without drain (a job restored from that savepoint goes on with this
    /// sink's state, so nothing may be flushed as if the input had ended).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// The subtask ends without failing: at the end of input or a stop with
    /// drain (after [`finish`](Self::finish) and the final checkpoint), and
    /// on a stop-with-savepoint without drain (with no `finish`). Release
    /// resources or report what was seen here. Unlike Flink's
    /// `RichFunction::close`, it is not called when the job fails, restarts
    /// or is cancelled: that attempt's work is discarded.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// Writes what must survive a failure (e.g. pending transactions) for checkpoint `checkpoint_id`.
    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        let _ = (checkpoint_id, state);
        Ok(())
    }
    /// Restores from a checkpoint; called after `open`.
    fn restore_state(&mut self, state: &OperatorStateStore) -> Result<()> {
        let _ = state;
        Ok(())
    }
    /// Checkpoint `checkpoint_id` is complete: commit what it covers.
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
    /// Checkpoint `checkpoint_id` was aborted.
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
}

/// Collects the output of a function, Flink's `Collector`.
pub struct Collector<'a, T> {
    buf: &'a mut Vec<T>,
}

impl<'a, T> Collector<'a, T> {
    /// A collector appending to `buf`.
    pub fn new(buf: &'a mut Vec<T>) -> Self {
        Collector { buf }
    }
    /// Emits one record.
    #[inline]
    pub fn collect(&mut self, record: T) {
        self.buf.push(record);
    }
}

/// What a keyed function sees when it opens: where it runs, and the state
/// backend to register its states with.
pub struct KeyedOpenContext<'a, K: Key> {
    /// Who it is.
    pub runtime: &'a RuntimeContext,
    backend: &'a mut KeyedStateBackend<K>,
}

impl<K: Key> KeyedOpenContext<'_, K> {
    /// Registers a [`ValueState`].
    pub fn value_state<T: Data + Clone>(
        &mut self,
        d: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        self.backend.value_state(d)
    }
    /// Registers a [`ListState`].
    pub fn list_state<T: Data + Clone>(
        &mut self,
        d: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        self.backend.list_state(d)
    }
    /// Registers a [`MapState`].
    pub fn map_state<UK: Key, UV: Data + Clone>(
        &mut self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        self.backend.map_state(d)
    }
}

/// A function over a keyed stream with keyed state, Flink's `KeyedProcessFunction`.
/// Each subtask gets its own clone; register states in [`open`](Self::open).
pub trait KeyedProcessFunction<K: Key, I, O>: Send + 'static {
    /// Registers states; called once per subtask before the first record.
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, K>) -> Result<()>;
    /// Handles one record; `ctx`'s state is the record's key's.
    fn process_element(
        &mut self,
        value: I,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()>;
    /// A timer registered through [`KeyedContext::timer_service`] fired:
    /// `ctx` is its key's, [`KeyedContext::timestamp`] is `timestamp`, and
    /// `domain` says which clock reached it.
    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: crate::time::TimeDomain,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let _ = (timestamp, domain, ctx, out);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Internal operator interface.

/// A type-erased operator inside a chain: batch in, batch out.
pub(crate) trait ChainOp: Send {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()>;
    /// Processes one batch; `None` when it produced nothing.
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>>;
    /// End of input; may emit final records.
    fn finish(&mut self) -> Result<Option<AnyBatch>>;
    /// The subtask ends without failing (see [`SinkFunction::close`]).
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// The input watermark advanced to `wm`: the records it fires (event-time
    /// timers, windows), which go down the chain ahead of it, and the
    /// watermark to pass on (`None`: swallow it, as a watermark assigner does).
    fn on_watermark(&mut self, wm: i64) -> Result<WatermarkOut> {
        Ok(WatermarkOut {
            records: None,
            watermark: Some(wm),
        })
    }
    /// The input became idle (`true`) or active again: whether to pass the
    /// status on (an assigner decides its own status instead).
    fn on_idle(&mut self, idle: bool) -> bool {
        let _ = idle;
        true
    }
    /// A watermark this operator generates itself (assigners), after a batch
    /// or a processing-time call.
    fn take_watermark(&mut self) -> Option<i64> {
        None
    }
    /// A status change this operator generates itself (an assigner's
    /// idleness): `Some(true)` idle, `Some(false)` active again.
    fn take_idle(&mut self) -> Option<bool> {
        None
    }
    /// When (wall clock, ms since the epoch) the operator next needs
    /// [`on_processing_time`](Self::on_processing_time): its earliest
    /// processing-time timer, or its next periodic watermark.
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
    /// The wall clock reached `now`: the records that fires.
    fn on_processing_time(&mut self, now: i64) -> Result<Option<AnyBatch>> {
        let _ = now;
        Ok(None)
    }
    /// The side-output batches collected since the last call, by tag.
    fn take_side_outputs(&mut self) -> Vec<(Arc<str>, AnyBatch)> {
        Vec::new()
    }
    /// Synchronous part of a snapshot: keyed state (to be uploaded) and operator state.
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<(Option<PendingKeyedSnapshot>, OperatorStateStore)> {
        let _ = checkpoint_id;
        Ok((None, OperatorStateStore::new()))
    }
    /// Restores from a snapshot; called after `open`.
    fn restore(&mut self, keyed: Option<&RestoredKeyed>, state: &OperatorStateStore) -> Result<()> {
        let _ = (keyed, state);
        Ok(())
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
}

/// What an operator does when the watermark advances (see [`ChainOp::on_watermark`]).
pub(crate) struct WatermarkOut {
    /// Records fired by the watermark, emitted before it.
    pub(crate) records: Option<AnyBatch>,
    /// The watermark passed on.
    pub(crate) watermark: Option<i64>,
}

/// A type-erased source.
pub(crate) trait SourceOp: Send {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()>;
    fn poll(&mut self, max: usize) -> Result<(Option<AnyBatch>, SourceStatus)>;
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<OperatorStateStore>;
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()>;
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()>;
    fn close(&mut self) -> Result<()>;
    /// Watermark and idleness to emit now (sources with a watermark strategy).
    fn take_time_signals(&mut self, now: i64) -> (Option<i64>, Option<bool>) {
        let _ = now;
        (None, None)
    }
    /// When `take_time_signals` is next due (ms since the epoch).
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
}

/// Makes one operator instance per subtask.
pub(crate) type OpFactory = Arc<dyn Fn() -> Box<dyn ChainOp> + Send + Sync>;
/// Makes one source instance per subtask.
pub(crate) type SourceFactory = Arc<dyn Fn() -> Box<dyn SourceOp> + Send + Sync>;

/// Runs `f`, which blocks its thread (a connector's network round trips,
/// e.g. a Kafka transaction commit), without starving the other subtasks:
/// on weir's multi-threaded runtime the worker hands its other tasks to
/// another thread first (`tokio::task::block_in_place`). Outside a runtime
/// (unit tests) it simply runs `f`.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs user code, turning a panic into an [`Error::Operator`] and tagging an
/// error with the operator's name.
pub(crate) fn guarded<R>(ctx: &RuntimeContext, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e @ (Error::Operator { .. } | Error::Disconnected(_)))) => Err(e),
        Ok(Err(e)) => Err(Error::Operator {
            operator: ctx.operator.clone(),
            subtask: ctx.subtask,
            message: e.to_string(),
        }),
        Err(panic) => Err(Error::Operator {
            operator: ctx.operator.clone(),
            subtask: ctx.subtask,
            message: format!("panicked: {}", panic_message(&panic)),
        }),
    }
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

pub(crate) fn non_empty<T: Send + 'static>(v: Vec<T>) -> Option<AnyBatch> {
    (!v.is_empty()).then(|| Box::new(v) as AnyBatch)
}

pub(crate) struct SourceAdapter<T, S> {
    pub(crate) source: S,
    pub(crate) buf: Vec<T>,
}

impl<T: Data, S: SourceFunction<T>> SourceOp for SourceAdapter<T, S> {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        self.source.open(ctx)
    }
    fn poll(&mut self, max: usize) -> Result<(Option<AnyBatch>, SourceStatus)> {
        let mut out = std::mem::replace(&mut self.buf, Vec::with_capacity(max));
        out.clear();
        let status = self.source.poll_next(&mut out, max)?;
        Ok((non_empty(out), status))
    }
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<OperatorStateStore> {
        let mut st = OperatorStateStore::new();
        self.source.snapshot_state(checkpoint_id, &mut st)?;
        Ok(st)
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.source.notify_checkpoint_complete(checkpoint_id)
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.source.notify_checkpoint_aborted(checkpoint_id)
    }
    fn close(&mut self) -> Result<()> {
        self.source.close()
    }
}

pub(crate) struct MapOp<I, O, F> {
    pub(crate) f: Arc<F>,
    pub(crate) _t: PhantomData<fn(I) -> O>,
}

impl<I: Data, O: Data, F: Fn(I) -> O + Send + Sync + 'static> ChainOp for MapOp<I, O, F> {
    fn open(&mut self, _: &RuntimeContext) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let f = &*self.f;
        Ok(non_empty(downcast::<I>(batch).into_iter().map(f).collect()))
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
}

pub(crate) struct FlatMapOp<I, O, F> {
    pub(crate) f: Arc<F>,
    /// Output records per input record in the last batch, to size the next
    /// output buffer once instead of growing it.
    pub(crate) fanout: usize,
    pub(crate) _t: PhantomData<fn(I) -> O>,
}

impl<I: Data, O: Data, F: Fn(I, &mut Collector<'_, O>) + Send + Sync + 'static> ChainOp
    for FlatMapOp<I, O, F>
{
    fn open(&mut self, _: &RuntimeContext) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let input = downcast::<I>(batch);
        let n = input.len();
        let mut out = Vec::with_capacity(n * self.fanout + n / 4);
        let mut c = Collector::new(&mut out);
        for v in input {
            (self.f)(v, &mut c);
        }
        self.fanout = out.len().div_ceil(n.max(1)).clamp(1, 64);
        Ok(non_empty(out))
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
}

pub(crate) struct FilterOp<T, F> {
    pub(crate) f: Arc<F>,
    pub(crate) _t: PhantomData<fn(T)>,
}

impl<T: Data, F: Fn(&T) -> bool + Send + Sync + 'static> ChainOp for FilterOp<T, F> {
    fn open(&mut self, _: &RuntimeContext) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let mut v = downcast::<T>(batch);
        v.retain(|r| (self.f)(r));
        Ok(non_empty(v))
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
}

pub(crate) struct SinkOp<T, S> {
    pub(crate) sink: S,
    pub(crate) _t: PhantomData<fn(T)>,
}

impl<T: Data, S: SinkFunction<T>> ChainOp for SinkOp<T, S> {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.sink.open(ctx)
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        self.sink.invoke(downcast::<T>(batch))?;
        Ok(None)
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        self.sink.finish()?;
        Ok(None)
    }
    fn close(&mut self) -> Result<()> {
        self.sink.close()
    }
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<(Option<PendingKeyedSnapshot>, OperatorStateStore)> {
        let mut st = OperatorStateStore::new();
        self.sink.snapshot_state(checkpoint_id, &mut st)?;
        Ok((None, st))
    }
    fn restore(&mut self, _: Option<&RestoredKeyed>, state: &OperatorStateStore) -> Result<()> {
        self.sink.restore_state(state)
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.sink.notify_checkpoint_complete(checkpoint_id)
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.sink.notify_checkpoint_aborted(checkpoint_id)
    }
}
