//! The subtask actor and its processing loop, including barrier handling.
//!
//! Every subtask (one parallel instance of an operator chain) is a ractor
//! actor, spawned linked under the job's [`crate::job`] supervisor. The actor
//! owns control: it starts the subtask's **processing loop** as a tokio task
//! in `post_start`, aborts it in `post_stop` (so stopping or killing the actor
//! always stops its work), forwards checkpoint control (trigger, complete,
//! abort, final checkpoint) from its mailbox to the loop over an unbounded
//! control channel, and turns the loop's outcome into the actor's exit: a
//! normal stop when the input ended, an actor failure (seen by the supervisor
//! as `ActorFailed`) when user code returned an error or panicked.
//!
//! The loop never blocks inside an actor handler: it awaits on bounded
//! channels (backpressure) while the actor's mailbox stays free for control.
//!
//! **Source subtasks**: poll a batch, run it through the chained operators,
//! write it to the output edges; between polls, handle control: on a trigger,
//! snapshot (the source's position and every chained operator) and emit the
//! barrier on every output. **Other subtasks**: take the next event from the
//! input gate (round-robin over unblocked inputs; when nothing is queued,
//! flush partially filled output batches first, then wait). Barriers are
//! handled per barrier mode as described in [`crate::checkpoint`]: the
//! synchronous snapshot happens on the loop, the upload (file write, fsync)
//! and the acknowledgement run in a separate task, so processing continues.
//! At the end of input the chain is finished and end-of-stream sent; with
//! checkpointing on, the subtask then waits for the final checkpoint and its
//! completion before it exits, so two-phase-commit sinks commit everything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::channel::{Barrier, Event, InputGate};
use crate::checkpoint::coordinator::{Ack, CoordMsg};
use crate::checkpoint::storage::CheckpointStorage;
use crate::checkpoint::{
    now_ms, BarrierMode, ChannelStateEntry, KeyedStateHandle, OperatorSnapshot, StateHandle,
    SubtaskCheckpointStats, SubtaskState,
};
use crate::graph::{ChainedOp, Head, SubtaskSpec};
use crate::operator::{guarded, SourceContext, SourceStatus};
use crate::record::AnyBatch;
use crate::state::{OperatorStateStore, PendingKeyedSnapshot, UploadTarget};
use crate::telemetry::SubtaskPhases;
use crate::{Error, Result};

/// Shared by all subtasks of one job: the first root-cause failure.
#[derive(Default)]
pub(crate) struct JobShared {
    failure: Mutex<Option<Error>>,
    /// Processing-loop threads still running (a restart waits for zero).
    live: std::sync::atomic::AtomicUsize,
    /// Per subtask: its processing-loop thread is running.
    task_live: Mutex<std::collections::HashSet<usize>>,
    /// The job's telemetry, when it is on.
    pub(crate) telemetry: Option<crate::telemetry::Telemetry>,
}

impl JobShared {
    pub(crate) fn with_telemetry(telemetry: Option<crate::telemetry::Telemetry>) -> Self {
        JobShared {
            telemetry,
            ..Default::default()
        }
    }

    /// Records `e` unless a failure is already known; a root cause replaces a
    /// mere disconnection (which is a consequence of another failure).
    pub(crate) fn record_failure(&self, e: Error) {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let replace = match &*slot {
            None => true,
            Some(Error::Disconnected(_)) => !matches!(e, Error::Disconnected(_)),
            Some(_) => false,
        };
        if replace {
            *slot = Some(e);
        }
    }

    pub(crate) fn live_loops(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether any of `tasks` still has a running processing loop.
    pub(crate) fn any_live(&self, tasks: &[usize]) -> bool {
        let live = self.task_live.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().any(|t| live.contains(t))
    }

    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Marks a subtask's loop thread as ended when dropped.
struct LiveGuard(Arc<JobShared>, usize);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0
            .task_live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
        self.0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Checkpoint control for the loop.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    Trigger(Barrier),
    /// Stop-with-savepoint `id`: sources stop right after its barrier and
    /// end once it completes; without `drain` no operator is finished.
    StopAfter {
        id: u64,
        drain: bool,
    },
    FinalCheckpoint(Barrier),
    Complete(u64),
    Abort(u64),
}

/// Messages to a subtask actor.
pub(crate) enum SubtaskMsg {
    /// The processing loop ended.
    LoopEnded(std::result::Result<(), String>),
    /// Inject barrier (sources).
    Trigger(Barrier),
    /// Snapshot now: every subtask has finished its input.
    FinalCheckpoint(Barrier),
    /// Checkpoint complete.
    Complete(u64),
    /// Checkpoint aborted.
    Abort(u64),
    /// Savepoint `id` is a stop-with-savepoint (sent before its trigger).
    StopAfter { id: u64, drain: bool },
}

/// What a subtask needs to take part in checkpoints.
#[derive(Clone)]
pub(crate) struct CheckpointLink {
    pub coordinator: ActorRef<CoordMsg>,
    pub storage: CheckpointStorage,
    pub mode: BarrierMode,
}

pub(crate) struct SubtaskActor;

pub(crate) struct SubtaskArgs {
    pub spec: SubtaskSpec,
    pub shared: Arc<JobShared>,
    pub checkpoint: Option<CheckpointLink>,
}

pub(crate) struct SubtaskActorState {
    args: Option<SubtaskArgs>,
    /// Raised when a trigger arrives for an unaligned checkpoint, so a
    /// source blocked by backpressure takes it at once.
    urgent: Option<Arc<crate::channel::TaskSignals>>,
    control: UnboundedSender<Control>,
    control_rx: Option<UnboundedReceiver<Control>>,
    task: Option<LoopHandle>,
}

/// The processing loop's thread; aborting stops the loop at its next await.
pub(crate) struct LoopHandle {
    abort: futures::future::AbortHandle,
    _thread: std::thread::JoinHandle<()>,
}

impl Actor for SubtaskActor {
    type Msg = SubtaskMsg;
    type State = SubtaskActorState;
    type Arguments = SubtaskArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: SubtaskArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (control, rx) = unbounded_channel();
        let urgent = args
            .checkpoint
            .as_ref()
            .filter(|c| c.mode == BarrierMode::Unaligned)
            .map(|_| args.spec.signals.clone());
        Ok(SubtaskActorState {
            urgent,
            args: Some(args),
            control,
            control_rx: Some(rx),
            task: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let args = state.args.take().ok_or("subtask started twice")?;
        let control = state.control_rx.take().ok_or("subtask started twice")?;
        let main = tokio::runtime::Handle::current();
        let me = myself.get_id();
        let name = format!("{} ({})", args.spec.chain, args.spec.subtask);
        let (abort, registration) = futures::future::AbortHandle::new_pair();
        let live = args.shared.clone();
        let task_index = args.spec.task_index;
        live.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        live.task_live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task_index);
        let body = async move {
            let SubtaskArgs {
                mut spec,
                shared,
                checkpoint,
            } = args;
            // `spec` (with its channel ends) outlives the failure record, so a
            // neighbour that sees this subtask's channels close finds the root
            // cause already recorded.
            // A panic outside user code (which `guarded` already catches) is
            // a failure of this subtask like any other, never a silent exit.
            let mut runner = Runner::new(&mut spec, checkpoint, control, main, me);
            runner.telemetry = shared.telemetry.clone();
            let run = runner.run();
            let outcome =
                match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
                    Ok(r) => r,
                    Err(panic) => Err(Error::Operator {
                        operator: spec.chain.clone(),
                        subtask: spec.subtask,
                        message: format!("panicked: {}", crate::operator::panic_message(&panic)),
                    }),
                };
            let msg = match outcome {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::debug!(subtask = %spec.chain, index = spec.subtask, error = %e, "subtask failed");
                    let text = e.to_string();
                    shared.record_failure(e);
                    Err(text)
                }
            };
            drop(spec);
            let _ = myself.cast(SubtaskMsg::LoopEnded(msg));
        };
        // The processing loop runs on a thread of its own (Flink's task
        // thread): user code that blocks or spins delays only its own
        // subtask, never the actors, the coordinator or other subtasks.
        let thread = std::thread::Builder::new()
            .name(format!(
                "weir-{}",
                name.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(12)
                    .collect::<String>()
            ))
            .spawn(move || {
                // Counted out however the thread ends (even by a panic).
                let _live = LiveGuard(live, task_index);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        let _ = rt.block_on(futures::future::Abortable::new(body, registration));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a subtask thread's runtime")
                    }
                }
            })
            .map_err(|e| format!("cannot start subtask thread: {e}"))?;
        state.task = Some(LoopHandle {
            abort,
            _thread: thread,
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ctl = match msg {
            SubtaskMsg::LoopEnded(Ok(())) => {
                myself.stop(Some("finished".into()));
                return Ok(());
            }
            SubtaskMsg::LoopEnded(Err(e)) => return Err(e.into()),
            SubtaskMsg::Trigger(b) => {
                let _ = state.control.send(Control::Trigger(b));
                if let Some(u) = &state.urgent {
                    u.raise_urgent();
                }
                return Ok(());
            }
            SubtaskMsg::FinalCheckpoint(b) => Control::FinalCheckpoint(b),
            SubtaskMsg::Complete(id) => Control::Complete(id),
            SubtaskMsg::Abort(id) => Control::Abort(id),
            SubtaskMsg::StopAfter { id, drain } => Control::StopAfter { id, drain },
        };
        let _ = state.control.send(ctl);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.task.take() {
            t.abort.abort();
        }
        Ok(())
    }
}

/// Runs one batch through the chain starting at operator `from`, then writes
/// what comes out of the tail to every output edge.
async fn push(spec: &mut SubtaskSpec, from: usize, batch: AnyBatch) -> Result<()> {
    let mut batch = batch;
    for op in spec.ops[from..].iter_mut() {
        let ChainedOp {
            op,
            ctx,
            counters,
            in_len,
            out_len,
        } = op;
        counters.add_in(in_len(&batch));
        match guarded(ctx, || op.process(batch))? {
            Some(out) => {
                counters.add_out(out_len(&out));
                batch = out;
            }
            None => return Ok(()),
        }
    }
    emit(spec, batch).await
}

async fn emit(spec: &mut SubtaskSpec, batch: AnyBatch) -> Result<()> {
    let n = spec.outputs.len();
    if n == 0 {
        return Ok(());
    }
    for i in 0..n - 1 {
        let copy = (spec.fanout_clone)(&batch)?;
        spec.outputs[i].write(copy).await?;
    }
    spec.outputs[n - 1].write(batch).await
}

async fn flush(spec: &mut SubtaskSpec) -> Result<()> {
    for o in spec.outputs.iter_mut() {
        o.flush().await?;
    }
    Ok(())
}

enum Wake {
    Input(Option<(usize, Event)>),
    Control(Option<Control>),
}

/// Capture progress of one input for one unaligned checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// The input's barrier has not arrived: every batch taken is channel state.
    All,
    /// The barrier arrived; the batches it overtook were captured from the
    /// queue (without waiting for them to be processed).
    Done,
}

/// An unaligned checkpoint whose synchronous snapshot is taken and whose
/// channel state is being captured.
struct UnalignedCapture {
    inputs: Vec<Capture>,
    channel: Vec<Vec<Vec<u8>>>,
    operators: Vec<PendingOperator>,
    stats: SubtaskCheckpointStats,
    phases: SubtaskPhases,
}

/// One operator's snapshot after the synchronous part: its keyed state is
/// uploaded or encoded by the asynchronous part.
pub(crate) struct PendingOperator {
    name: String,
    keyed: Option<PendingKeyedSnapshot>,
    operator: OperatorStateStore,
}

/// An aligned (or at-least-once) checkpoint waiting for barriers.
struct Alignment {
    barrier: Barrier,
    arrived: Vec<bool>,
    first_at: Instant,
    start_delay: f64,
}

struct Runner<'a> {
    spec: &'a mut SubtaskSpec,
    head: Head,
    link: Option<CheckpointLink>,
    control: UnboundedReceiver<Control>,
    mode: BarrierMode,
    /// Aligned / aligned-then-unaligned: the checkpoint being aligned.
    aligning: Option<Alignment>,
    /// At-least-once: barriers seen per checkpoint.
    counting: BTreeMap<u64, Alignment>,
    /// Unaligned checkpoints capturing channel state.
    captures: BTreeMap<u64, UnalignedCapture>,
    /// The highest checkpoint id snapshotted here.
    last_snapshot: u64,
    batches_since_yield: u32,
    /// The job's runtime: uploads run there, off this subtask's thread.
    main: tokio::runtime::Handle,
    /// Chunks of an input batch set aside for an unaligned barrier.
    remainder: Option<(usize, Vec<AnyBatch>)>,
    /// This subtask's actor: the coordinator ignores messages of replaced actors.
    me: ractor::ActorId,
    /// Queue of this subtask's uploads, run one at a time in snapshot order.
    uploads: UnboundedSender<UploadJob>,
    /// Latest watermark per input, the chain's input watermark (their
    /// minimum over open inputs) and the last watermark emitted downstream.
    input_wm: Vec<i64>,
    combined_wm: i64,
    output_wm: i64,
    /// The job's telemetry, when it is on.
    telemetry: Option<crate::telemetry::Telemetry>,
    /// A stop-with-savepoint in progress: (savepoint id, drain).
    stop: Option<(u64, bool)>,
    /// Source: the stop savepoint's barrier is out; wait for its outcome.
    stop_barrier_sent: Option<u64>,
    /// The job stopped with a savepoint without drain: end without finishing operators.
    stopped_without_drain: bool,
}

/// The asynchronous part of one snapshot (upload, then acknowledgement).
type UploadJob = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Records per chunk when batches are processed in chunks (unaligned checkpoints).
const CHUNK: usize = 64;

impl<'a> Runner<'a> {
    fn new(
        spec: &'a mut SubtaskSpec,
        link: Option<CheckpointLink>,
        control: UnboundedReceiver<Control>,
        main: tokio::runtime::Handle,
        me: ractor::ActorId,
    ) -> Self {
        let head = std::mem::replace(
            &mut spec.head,
            Head::Input(InputGate::new(
                Vec::new(),
                Arc::new(crate::channel::TaskSignals::default()),
            )),
        );
        let mode = link.as_ref().map_or(BarrierMode::Aligned, |l| l.mode);
        let (uploads, mut queue) = unbounded_channel::<UploadJob>();
        main.spawn(async move {
            while let Some(job) = queue.recv().await {
                job.await;
            }
        });
        Runner {
            spec,
            head,
            link,
            control,
            mode,
            aligning: None,
            counting: BTreeMap::new(),
            captures: BTreeMap::new(),
            last_snapshot: 0,
            batches_since_yield: 0,
            main,
            me,
            uploads,
            remainder: None,
            input_wm: Vec::new(),
            combined_wm: i64::MIN,
            output_wm: i64::MIN,
            telemetry: None,
            stop: None,
            stop_barrier_sent: None,
            stopped_without_drain: false,
        }
    }

    async fn run(mut self) -> Result<()> {
        self.open().await?;
        if let Some(t) = &self.telemetry {
            t.subtask_running(self.spec.task_index);
        }
        let finished_normally = if matches!(self.head, Head::Source { .. }) {
            self.run_source().await?
        } else {
            self.run_input().await?
        };
        if !finished_normally {
            return Ok(());
        }
        self.finish().await?;
        self.await_final_checkpoint().await
    }

    async fn open(&mut self) -> Result<()> {
        let restore = self.spec.restore.take();
        for op in self.spec.ops.iter_mut().rev() {
            guarded(&op.ctx, || op.op.open(&op.ctx))?;
            if let Some(r) = &restore {
                if let Some((keyed, st)) = r.operators.get(&op.ctx.operator) {
                    guarded(&op.ctx, || op.op.restore(keyed.as_deref(), st))?;
                }
            }
        }
        if let Head::Source { op, ctx, .. } = &mut self.head {
            let restored = restore
                .as_ref()
                .and_then(|r| r.operators.get(&ctx.operator));
            let empty = OperatorStateStore::new();
            let state = restored.map_or(&empty, |(_, s)| s);
            guarded(ctx, || {
                op.open(&SourceContext {
                    runtime: ctx,
                    state,
                    restored: restored.is_some(),
                })
            })?;
        }
        if let Some(r) = restore {
            // Channel state of an unaligned checkpoint: replayed before any new input.
            if !r.channel_state.is_empty() {
                let decode = self.spec.input_codec.map(|c| c.1).ok_or_else(|| {
                    Error::Restore("channel state for a subtask without inputs".into())
                })?;
                for entry in r.channel_state {
                    for bytes in entry.batches {
                        let batch = decode(&bytes)?;
                        push(self.spec, 0, batch).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns false if the loop should end without finishing (never today).
    async fn run_source(&mut self) -> Result<bool> {
        loop {
            self.spec.signals.take_urgent();
            while let Ok(c) = self.control.try_recv() {
                self.on_control(c).await?;
            }
            if let Some(id) = self.stop_barrier_sent.take() {
                if self.await_stop(id).await? {
                    if let Head::Source { op, ctx, .. } = &mut self.head {
                        guarded(ctx, || op.close())?;
                    }
                    return Ok(true);
                }
                continue;
            }
            let Head::Source {
                op,
                ctx,
                counters,
                out_len,
            } = &mut self.head
            else {
                return Err(Error::Internal("source loop without a source".into()));
            };
            let (batch, status) = guarded(ctx, || op.poll(self.spec.source_batch_size))?;
            if let Some(b) = batch {
                counters.add_out(out_len(&b));
                push(self.spec, 0, b).await?;
                self.generated_watermarks().await?;
            }
            match status {
                SourceStatus::More => self.maybe_yield().await,
                SourceStatus::Idle(d) => {
                    flush(self.spec).await?;
                    let control = &mut self.control;
                    // Nothing to read: idle time (metrics).
                    let io = self.spec.signals.io.clone();
                    let idle = io.idle();
                    let woke = tokio::select! {
                        _ = tokio::time::sleep(d) => None,
                        c = control.recv() => c,
                    };
                    drop(idle);
                    if let Some(c) = woke {
                        self.on_control(c).await?;
                    }
                }
                SourceStatus::Finished => {
                    if let Head::Source { op, ctx, .. } = &mut self.head {
                        guarded(ctx, || op.close())?;
                    }
                    return Ok(true);
                }
            }
        }
    }

    async fn run_input(&mut self) -> Result<bool> {
        loop {
            let Head::Input(gate) = &mut self.head else {
                return Err(Error::Internal("input loop without an input gate".into()));
            };
            if gate.is_finished() {
                return Ok(true);
            }
            if self.spec.signals.take_urgent() {
                // Unaligned barriers first, ahead of everything queued.
                while let Some((i, b)) = self.take_priority() {
                    self.on_barrier(i, b).await?;
                }
            }
            if let Some((i, rest)) = self.remainder.take() {
                // The unprocessed part of a batch interrupted by a barrier.
                for chunk in rest {
                    self.process_input(i, chunk).await?;
                }
                continue;
            }
            let Head::Input(gate) = &mut self.head else {
                return Err(Error::Internal("input loop without an input gate".into()));
            };
            let ev = match gate.try_next()? {
                Some(ev) => Some(ev),
                None => {
                    flush(self.spec).await?;
                    let deadline = self.alignment_deadline();
                    let wake = async move {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d.into()).await,
                            None => std::future::pending::<()>().await,
                        }
                    };
                    let Head::Input(gate) = &mut self.head else {
                        return Err(Error::Internal("input loop without an input gate".into()));
                    };
                    let control = &mut self.control;
                    let woke = tokio::select! {
                        ev = gate.next_or(wake) => Wake::Input(ev?),
                        c = control.recv() => Wake::Control(c),
                    };
                    match woke {
                        Wake::Input(Some(ev)) => Some(ev),
                        Wake::Input(None) => {
                            self.alignment_timed_out().await?;
                            None
                        }
                        Wake::Control(c) => {
                            if let Some(c) = c {
                                self.on_control(c).await?;
                            }
                            None
                        }
                    }
                }
            };
            while let Ok(c) = self.control.try_recv() {
                self.on_control(c).await?;
            }
            match ev {
                Some((i, Event::Batch(b))) => {
                    self.capture(i, &b)?;
                    self.process_input(i, b).await?;
                    self.generated_watermarks().await?;
                    self.maybe_yield().await;
                }
                Some((i, Event::Watermark(w))) => self.on_input_watermark(i, w).await?,
                Some((i, Event::Barrier(b))) => self.on_barrier(i, b).await?,
                Some((i, Event::EndOfStream)) => self.on_input_finished(i).await?,
                None => {}
            }
        }
    }

    /// Runs a batch from input `i` through the chain. With unaligned
    /// checkpoints the batch goes in chunks of [`CHUNK`] records, and when an
    /// unaligned barrier is waiting the rest is set aside (it becomes channel
    /// state of that checkpoint, then is processed): a barrier waits for a
    /// few records, not for a whole batch of a slow operator.
    async fn process_input(&mut self, i: usize, b: AnyBatch) -> Result<()> {
        let chunk = match (self.mode, self.spec.input_chunk) {
            (BarrierMode::Unaligned | BarrierMode::AlignedThenUnaligned(_), Some(f))
                if self.link.is_some() =>
            {
                f
            }
            _ => return push(self.spec, 0, b).await,
        };
        let mut chunks = chunk(b, CHUNK).into_iter();
        while let Some(c) = chunks.next() {
            push(self.spec, 0, c).await?;
            if self
                .spec
                .signals
                .urgent
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                let rest: Vec<AnyBatch> = chunks.collect();
                if !rest.is_empty() {
                    self.remainder = Some((i, rest));
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Watermarks operators of the chain generated (assigners), passed on.
    async fn generated_watermarks(&mut self) -> Result<()> {
        for k in 0..self.spec.ops.len() {
            if let Some(w) = self.spec.ops[k].op.take_watermark() {
                self.propagate_watermark(k + 1, w).await?;
            }
        }
        Ok(())
    }

    /// Passes watermark `wm` through the chain from operator `from`, and
    /// downstream when it advances the chain's output watermark.
    async fn propagate_watermark(&mut self, from: usize, wm: i64) -> Result<()> {
        let mut w = wm;
        for op in self.spec.ops[from..].iter_mut() {
            match guarded(&op.ctx, || op.op.on_watermark(w))? {
                Some(next) => w = next,
                None => return Ok(()),
            }
        }
        if w > self.output_wm {
            self.output_wm = w;
            for o in self.spec.outputs.iter_mut() {
                o.watermark(w).await?;
            }
        }
        Ok(())
    }

    async fn on_input_watermark(&mut self, i: usize, w: i64) -> Result<()> {
        let n = self.num_inputs();
        if self.input_wm.len() != n {
            self.input_wm = vec![i64::MIN; n];
        }
        self.input_wm[i] = self.input_wm[i].max(w);
        self.advance_input_watermark().await
    }

    /// The chain's input watermark is the minimum over the open inputs.
    async fn advance_input_watermark(&mut self) -> Result<()> {
        let n = self.num_inputs();
        if self.input_wm.len() != n {
            self.input_wm = vec![i64::MIN; n];
        }
        let min = (0..n)
            .filter(|&j| !self.input_finished(j))
            .map(|j| self.input_wm[j])
            .min();
        if let Some(m) = min {
            if m > self.combined_wm {
                self.combined_wm = m;
                self.propagate_watermark(0, m).await?;
            }
        }
        Ok(())
    }

    /// A busy subtask never waits, so it yields to the scheduler every few
    /// batches: control (actors, timers, other subtasks on this thread) runs
    /// within a few batches' time.
    async fn maybe_yield(&mut self) {
        self.batches_since_yield += 1;
        if self.batches_since_yield >= 8 {
            self.batches_since_yield = 0;
            tokio::task::yield_now().await;
        }
    }

    fn take_priority(&mut self) -> Option<(usize, Barrier)> {
        match &mut self.head {
            Head::Input(g) => g.take_priority(),
            Head::Source { .. } => None,
        }
    }

    fn num_inputs(&self) -> usize {
        match &self.head {
            Head::Input(g) => g.len(),
            Head::Source { .. } => 0,
        }
    }

    fn input_finished(&self, i: usize) -> bool {
        match &self.head {
            Head::Input(g) => g.input_finished(i),
            Head::Source { .. } => true,
        }
    }

    fn alignment_deadline(&self) -> Option<Instant> {
        let BarrierMode::AlignedThenUnaligned(timeout) = self.mode else {
            return None;
        };
        let a = self.aligning.as_ref()?;
        if a.barrier.savepoint {
            return None; // savepoints are always aligned
        }
        let since_trigger = Duration::from_millis(now_ms().saturating_sub(a.barrier.timestamp_ms));
        Some(Instant::now() + timeout.saturating_sub(since_trigger))
    }

    /// Synchronous part of a snapshot: the source position and every operator's state.
    fn snapshot_operators(&mut self, id: u64) -> Result<Vec<PendingOperator>> {
        crate::failpoint::hit("sync-snapshot")?;
        let mut out = Vec::with_capacity(self.spec.ops.len() + 1);
        if let Head::Source { op, ctx, .. } = &mut self.head {
            let st = guarded(ctx, || op.snapshot())?;
            out.push(PendingOperator {
                name: ctx.operator.clone(),
                keyed: None,
                operator: st,
            });
        }
        for op in self.spec.ops.iter_mut() {
            let (keyed, st) = guarded(&op.ctx, || op.op.snapshot(id))?;
            out.push(PendingOperator {
                name: op.ctx.operator.clone(),
                keyed,
                operator: st,
            });
        }
        self.last_snapshot = self.last_snapshot.max(id);
        Ok(out)
    }

    async fn forward_barrier(&mut self, b: Barrier) -> Result<()> {
        for o in self.spec.outputs.iter_mut() {
            o.barrier(b).await?;
        }
        Ok(())
    }

    /// Snapshot, forward the barrier, and upload (aligned and at-least-once).
    async fn checkpoint_aligned(&mut self, a: Alignment) -> Result<()> {
        let t0 = Instant::now();
        let operators = self.snapshot_operators(a.barrier.id)?;
        let t1 = Instant::now();
        let sync = t1 - t0;
        self.forward_barrier(Barrier {
            unaligned: false,
            overtaken: 0,
            ..a.barrier
        })
        .await?;
        let stats = SubtaskCheckpointStats {
            sync_duration: sync.as_secs_f64() * 1e3,
            alignment_duration: (t0 - a.first_at).as_secs_f64() * 1e3,
            start_delay: a.start_delay,
            ..Default::default()
        };
        let phases = SubtaskPhases::synced(Some(a.first_at), t0, t1);
        self.upload(a.barrier.id, operators, Vec::new(), stats, phases);
        Ok(())
    }

    /// Unaligned: snapshot at once, send the barrier ahead of queued output,
    /// and start capturing the inputs' in-flight batches.
    async fn checkpoint_unaligned(
        &mut self,
        b: Barrier,
        inputs: Vec<Capture>,
        channel: Vec<Vec<Vec<u8>>>,
        first_at: Instant,
        start_delay: f64,
    ) -> Result<()> {
        let t0 = Instant::now();
        let operators = self.snapshot_operators(b.id)?;
        let t1 = Instant::now();
        let sync = t1 - t0;
        let mut channel = channel;
        if let Some((i, rest)) = &self.remainder {
            // Taken from input `i` before the barrier, not processed yet: in-flight data.
            let enc = self
                .spec
                .input_codec
                .ok_or_else(|| Error::Internal("capture without a codec".into()))?
                .0;
            let mut first = rest.iter().map(enc).collect::<Result<Vec<_>>>()?;
            first.append(&mut channel[*i]);
            channel[*i] = first;
        }
        self.forward_barrier(Barrier {
            unaligned: true,
            overtaken: 0,
            ..b
        })
        .await?;
        let cap = UnalignedCapture {
            inputs,
            channel,
            operators,
            stats: SubtaskCheckpointStats {
                sync_duration: sync.as_secs_f64() * 1e3,
                alignment_duration: (t0 - first_at).as_secs_f64() * 1e3,
                start_delay,
                unaligned_checkpoint: true,
                ..Default::default()
            },
            phases: SubtaskPhases::synced(Some(first_at), t0, t1),
        };
        self.captures.insert(b.id, cap);
        self.finish_captures();
        Ok(())
    }

    /// Uploads every capture whose inputs are all done.
    fn finish_captures(&mut self) {
        let done: Vec<u64> = self
            .captures
            .iter()
            .filter(|(_, c)| c.inputs.iter().all(|s| *s == Capture::Done))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(mut c) = self.captures.remove(&id) {
                let channel: Vec<ChannelStateEntry> = c
                    .channel
                    .into_iter()
                    .enumerate()
                    .filter(|(_, b)| !b.is_empty())
                    .map(|(input, batches)| ChannelStateEntry { input, batches })
                    .collect();
                c.stats.persisted_data = channel
                    .iter()
                    .flat_map(|e| &e.batches)
                    .map(|b| b.len() as u64)
                    .sum();
                c.phases.capture_end = Some(Instant::now());
                self.upload(id, c.operators, channel, c.stats, c.phases);
            }
        }
    }

    /// Records `batch` from input `i` in every unaligned checkpoint it precedes.
    fn capture(&mut self, i: usize, batch: &AnyBatch) -> Result<()> {
        if self.captures.is_empty() {
            return Ok(());
        }
        let mut encoded: Option<Vec<u8>> = None;
        for c in self.captures.values_mut() {
            if c.inputs[i] == Capture::All {
                if encoded.is_none() {
                    let enc = self
                        .spec
                        .input_codec
                        .ok_or_else(|| Error::Internal("capture without a codec".into()))?
                        .0;
                    encoded = Some(enc(batch)?);
                }
                c.channel[i].push(encoded.clone().unwrap_or_default());
            }
        }
        Ok(())
    }

    async fn on_barrier(&mut self, i: usize, b: Barrier) -> Result<()> {
        let delay = now_ms().saturating_sub(b.timestamp_ms) as f64;
        if b.savepoint {
            // A savepoint is always aligned, as in Flink, whatever the mode.
            return self.aligned_barrier(i, b, delay).await;
        }
        match self.mode {
            BarrierMode::AtLeastOnce => {
                if b.id <= self.last_snapshot {
                    return Ok(());
                }
                let n = self.num_inputs();
                let a = self.counting.entry(b.id).or_insert_with(|| Alignment {
                    barrier: b,
                    arrived: vec![false; n],
                    first_at: Instant::now(),
                    start_delay: delay,
                });
                a.arrived[i] = true;
                self.check_counting().await
            }
            BarrierMode::Aligned => self.aligned_barrier(i, b, delay).await,
            BarrierMode::Unaligned => self.unaligned_barrier(i, b, delay).await,
            BarrierMode::AlignedThenUnaligned(_) => {
                if b.unaligned || self.captures.contains_key(&b.id) {
                    self.unaligned_barrier(i, b, delay).await
                } else {
                    self.aligned_barrier(i, b, delay).await
                }
            }
        }
    }

    async fn check_counting(&mut self) -> Result<()> {
        let ready: Vec<u64> = self
            .counting
            .iter()
            .filter(|(_, a)| {
                a.arrived
                    .iter()
                    .enumerate()
                    .all(|(j, got)| *got || self.input_finished(j))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(a) = self.counting.remove(&id) {
                self.checkpoint_aligned(a).await?;
            }
        }
        Ok(())
    }

    async fn aligned_barrier(&mut self, i: usize, b: Barrier, delay: f64) -> Result<()> {
        if b.id <= self.last_snapshot {
            return Ok(());
        }
        if self.aligning.as_ref().is_some_and(|a| a.barrier.id < b.id) {
            // A newer barrier: the older checkpoint was abandoned upstream.
            self.cancel_alignment();
        }
        let n = self.num_inputs();
        let a = self.aligning.get_or_insert_with(|| Alignment {
            barrier: b,
            arrived: vec![false; n],
            first_at: Instant::now(),
            start_delay: delay,
        });
        a.arrived[i] = true;
        let waiting = a.arrived.iter().any(|x| !x);
        if let Head::Input(gate) = &mut self.head {
            gate.set_blocked(i, true);
        }
        if waiting {
            // Some inputs are blocked, others not yet at the barrier.
            crate::failpoint::hit("during-alignment")?;
        }
        self.check_aligned().await
    }

    async fn check_aligned(&mut self) -> Result<()> {
        let complete = self.aligning.as_ref().is_some_and(|a| {
            a.arrived
                .iter()
                .enumerate()
                .all(|(j, got)| *got || self.input_finished(j))
        });
        if complete {
            if let Some(a) = self.aligning.take() {
                if let Head::Input(gate) = &mut self.head {
                    gate.unblock_all();
                }
                self.checkpoint_aligned(a).await?;
            }
        }
        Ok(())
    }

    fn cancel_alignment(&mut self) {
        self.aligning = None;
        if let Head::Input(gate) = &mut self.head {
            gate.unblock_all();
        }
    }

    /// The batches barrier `b` overtook on input `i`, serialized from the queue.
    fn overtaken(&self, i: usize, b: &Barrier) -> Result<Vec<Vec<u8>>> {
        if b.overtaken == 0 {
            return Ok(Vec::new());
        }
        let enc = self
            .spec
            .input_codec
            .ok_or_else(|| Error::Internal("capture without a codec".into()))?
            .0;
        match &self.head {
            Head::Input(g) => g.peek_encode(i, b.overtaken, enc),
            Head::Source { .. } => Ok(Vec::new()),
        }
    }

    async fn unaligned_barrier(&mut self, i: usize, b: Barrier, delay: f64) -> Result<()> {
        if self.captures.contains_key(&b.id) {
            let bytes = self.overtaken(i, &b)?;
            if let Some(c) = self.captures.get_mut(&b.id) {
                c.channel[i].extend(bytes);
                c.inputs[i] = Capture::Done;
            }
            self.finish_captures();
            return Ok(());
        }
        if b.id <= self.last_snapshot {
            return Ok(());
        }
        // First barrier `n` here (or the upstream switched to unaligned while we were aligning).
        let (arrived, first_at, start_delay) = match self.aligning.take() {
            Some(a) if a.barrier.id == b.id => (a.arrived, a.first_at, a.start_delay),
            _ => (vec![false; self.num_inputs()], Instant::now(), delay),
        };
        if let Head::Input(gate) = &mut self.head {
            gate.unblock_all();
        }
        let overtaken = self.overtaken(i, &b)?;
        let inputs = (0..self.num_inputs())
            .map(|j| {
                if j == i || arrived[j] || self.input_finished(j) {
                    Capture::Done
                } else {
                    Capture::All
                }
            })
            .collect();
        let mut channel = vec![Vec::new(); self.num_inputs()];
        if let Some(c) = channel.get_mut(i) {
            *c = overtaken;
        }
        self.checkpoint_unaligned(b, inputs, channel, first_at, start_delay)
            .await
    }

    /// Aligned-then-unaligned: alignment took too long; switch this checkpoint to unaligned.
    async fn alignment_timed_out(&mut self) -> Result<()> {
        let Some(a) = self.aligning.take() else {
            return Ok(());
        };
        if let Head::Input(gate) = &mut self.head {
            gate.unblock_all();
        }
        let inputs = (0..self.num_inputs())
            .map(|j| {
                if a.arrived[j] || self.input_finished(j) {
                    Capture::Done
                } else {
                    Capture::All
                }
            })
            .collect();
        tracing::debug!(
            id = a.barrier.id,
            "alignment timed out; switching to unaligned"
        );
        let channel = vec![Vec::new(); self.num_inputs()];
        self.checkpoint_unaligned(a.barrier, inputs, channel, a.first_at, a.start_delay)
            .await
    }

    async fn on_input_finished(&mut self, i: usize) -> Result<()> {
        self.advance_input_watermark().await?;
        for c in self.captures.values_mut() {
            c.inputs[i] = Capture::Done;
        }
        self.finish_captures();
        self.check_aligned().await?;
        self.check_counting().await
    }

    async fn on_control(&mut self, c: Control) -> Result<()> {
        match c {
            Control::Trigger(b) => {
                if !matches!(self.head, Head::Source { .. }) {
                    return Ok(());
                }
                let unaligned = self.mode == BarrierMode::Unaligned && !b.savepoint;
                let stopping = self.stop.filter(|(id, _)| *id == b.id);
                if let Some((_, true)) = stopping {
                    // Drain: event time ends before the savepoint's barrier
                    // (Flink's MAX_WATERMARK), so every timer fires first.
                    if self.combined_wm < i64::MAX {
                        self.combined_wm = i64::MAX;
                        self.propagate_watermark(0, i64::MAX).await?;
                    }
                }
                let t0 = Instant::now();
                let operators = self.snapshot_operators(b.id)?;
                let t1 = Instant::now();
                let sync = t1 - t0;
                self.forward_barrier(Barrier {
                    unaligned,
                    overtaken: 0,
                    ..b
                })
                .await?;
                let stats = SubtaskCheckpointStats {
                    sync_duration: sync.as_secs_f64() * 1e3,
                    start_delay: now_ms().saturating_sub(b.timestamp_ms) as f64,
                    ..Default::default()
                };
                let phases = SubtaskPhases::synced(None, t0, t1);
                self.upload(b.id, operators, Vec::new(), stats, phases);
                if stopping.is_some() {
                    // Nothing is emitted after a stop savepoint's barrier.
                    self.stop_barrier_sent = Some(b.id);
                }
            }
            Control::StopAfter { id, drain } => self.stop = Some((id, drain)),
            Control::FinalCheckpoint(b) => {
                let t0 = Instant::now();
                let operators = self.snapshot_operators(b.id)?;
                let t1 = Instant::now();
                let stats = SubtaskCheckpointStats {
                    sync_duration: (t1 - t0).as_secs_f64() * 1e3,
                    ..Default::default()
                };
                let phases = SubtaskPhases::synced(None, t0, t1);
                self.upload(b.id, operators, Vec::new(), stats, phases);
            }
            Control::Complete(id) => {
                let t0 = Instant::now();
                let mut outcome = Ok(());
                for op in self.spec.ops.iter_mut() {
                    outcome = guarded(&op.ctx, || op.op.notify_complete(id));
                    if outcome.is_err() {
                        break;
                    }
                }
                if let Some(t) = &self.telemetry {
                    let error = outcome.as_ref().err().map(|e| e.to_string());
                    let s = &*self.spec;
                    t.notify(
                        id,
                        s.task_index,
                        &s.chain,
                        s.subtask,
                        t0,
                        Instant::now(),
                        error.as_deref(),
                    );
                }
                outcome?;
            }
            Control::Abort(id) => {
                if self.stop.is_some_and(|(s, _)| s == id) {
                    // The stop failed: the job goes on.
                    self.stop = None;
                }
                if self.aligning.as_ref().is_some_and(|a| a.barrier.id == id) {
                    self.cancel_alignment();
                }
                self.counting.remove(&id);
                self.captures.remove(&id);
                for op in self.spec.ops.iter_mut() {
                    guarded(&op.ctx, || op.op.notify_aborted(id))?;
                }
            }
        }
        Ok(())
    }

    /// Starts the asynchronous part: encode or upload keyed state, write the
    /// state file, then acknowledge.
    fn upload(
        &self,
        id: u64,
        operators: Vec<PendingOperator>,
        channel_state: Vec<ChannelStateEntry>,
        mut stats: SubtaskCheckpointStats,
        mut phases: SubtaskPhases,
    ) {
        let Some(link) = self.link.clone() else {
            return;
        };
        let (chain, chain_index, subtask, parallelism) = (
            self.spec.chain.clone(),
            self.spec.chain_index,
            self.spec.subtask,
            self.spec.parallelism,
        );
        let task = self.spec.task_index;
        let me = self.me;
        stats.task = self.spec.chain.clone();
        stats.index = self.spec.subtask;
        // One upload at a time per subtask, in snapshot order (a queue to one
        // worker task): acknowledgements arrive in checkpoint order, so a
        // checkpoint is never subsumed by a later one of the same subtask
        // while its files are still being written.
        let job = Box::pin(async move {
            let t0 = Instant::now();
            let storage = link.storage.clone();
            let chain_name = chain.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::failpoint::hit("during-upload")?;
                let target = UploadTarget {
                    storage: &storage,
                    checkpoint_id: id,
                };
                let (mut files, mut uploaded, mut full) = (Vec::new(), 0u64, 0u64);
                let mut snapshots = Vec::with_capacity(operators.len());
                let savepoint = storage.is_savepoint(id);
                for p in operators {
                    let keyed = match p.keyed {
                        // Savepoints: the canonical form, inline (no backend files).
                        Some(k) if savepoint => Some(KeyedStateHandle::Canonical(k.canonical()?)),
                        Some(k) => {
                            let u = k.upload(&target)?;
                            files.extend(u.files);
                            uploaded += u.uploaded;
                            full += u.full_size;
                            Some(u.handle)
                        }
                        None => None,
                    };
                    snapshots.push(OperatorSnapshot {
                        name: p.name,
                        keyed,
                        operator: p.operator,
                    });
                }
                let state = SubtaskState {
                    chain: chain_name,
                    chain_index,
                    subtask,
                    parallelism,
                    operators: snapshots,
                    channel_state,
                };
                let (file, size) = storage.write_state(id, chain_index, subtask, &state)?;
                Ok((file, size, files, uploaded, full))
            })
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("upload panicked: {e}"))))
            .and_then(|w| {
                // A panic here must still decline the checkpoint, or it
                // would wait for this acknowledgement until its timeout.
                std::panic::catch_unwind(|| crate::failpoint::hit("before-ack"))
                    .unwrap_or_else(|p| {
                        Err(Error::Internal(format!(
                            "upload panicked: {}",
                            crate::operator::panic_message(&p)
                        )))
                    })
                    .map(|()| w)
            });
            match written {
                Ok((file, size, files, uploaded, full)) => {
                    let t1 = Instant::now();
                    phases.upload_start = t0;
                    phases.upload_end = t1;
                    stats.async_duration = (t1 - t0).as_secs_f64() * 1e3;
                    stats.state_size = size + full;
                    stats.checkpointed_size = size + uploaded;
                    stats.ack_timestamp = now_ms();
                    let _ = link.coordinator.cast(CoordMsg::Ack(Box::new(Ack {
                        id,
                        from: me,
                        task,
                        handle: StateHandle {
                            chain,
                            chain_index,
                            subtask,
                            file,
                            size,
                            files,
                        },
                        stats,
                        phases,
                    })));
                }
                Err(e) => {
                    let _ = link.coordinator.cast(CoordMsg::Decline {
                        id,
                        task,
                        from: me,
                        reason: e.to_string(),
                        finished: false,
                    });
                }
            }
        });
        if let Err(e) = self.uploads.send(job) {
            // The worker is gone only when the runtime shuts down: run it anyway.
            self.main.spawn(e.0);
        }
    }

    /// End of input: finish each operator in chain order, passing what it
    /// emits through the rest of the chain, then end every output channel.
    async fn finish(&mut self) -> Result<()> {
        if self.stop.is_some_and(|(_, drain)| !drain) || self.stopped_without_drain {
            // Stop-with-savepoint without drain: no end of event time, no
            // operator finishes; the outputs just end.
            for o in self.spec.outputs.iter_mut() {
                o.end_of_stream().await?;
            }
            return Ok(());
        }
        // End of input: event time is complete.
        if self.combined_wm < i64::MAX {
            self.combined_wm = i64::MAX;
            self.propagate_watermark(0, i64::MAX).await?;
        }
        self.finish_operators().await?;
        self.generated_watermarks().await?;
        for o in self.spec.outputs.iter_mut() {
            o.end_of_stream().await?;
        }
        Ok(())
    }

    async fn finish_operators(&mut self) -> Result<()> {
        let spec = &mut *self.spec;
        for i in 0..spec.ops.len() {
            let out = {
                let op = &mut spec.ops[i];
                guarded(&op.ctx, || op.op.finish())?
            };
            if let Some(b) = out {
                let op = &spec.ops[i];
                op.counters.add_out((op.out_len)(&b));
                if i + 1 < spec.ops.len() {
                    Box::pin(push(spec, i + 1, b)).await?;
                } else {
                    emit(spec, b).await?;
                }
            }
        }
        Ok(())
    }

    /// Source after a stop savepoint's barrier: emits nothing until the
    /// savepoint completes (true: end the source now) or is aborted (false:
    /// the job goes on).
    async fn await_stop(&mut self, id: u64) -> Result<bool> {
        flush(self.spec).await?;
        while let Some(c) = self.control.recv().await {
            match c {
                Control::Complete(n) if n >= id => {
                    self.on_control(c).await?;
                    if self.stop.is_some_and(|(_, drain)| !drain) {
                        self.stopped_without_drain = true;
                    }
                    tracing::info!(subtask = %self.spec.chain, index = self.spec.subtask, savepoint = id, "stopping with savepoint");
                    return Ok(true);
                }
                Control::Abort(n) if n == id => {
                    self.on_control(c).await?;
                    self.stop = None;
                    return Ok(false);
                }
                other => self.on_control(other).await?,
            }
        }
        Ok(false)
    }

    /// With checkpointing: report the end of input, take part in the final
    /// checkpoint, and exit once it is complete.
    async fn await_final_checkpoint(&mut self) -> Result<()> {
        let Some(link) = self.link.clone() else {
            return Ok(());
        };
        let _ = link
            .coordinator
            .cast(CoordMsg::TaskFinished(self.spec.task_index, self.me));
        let mut final_id = None;
        while let Some(c) = self.control.recv().await {
            match c {
                Control::Trigger(b) => {
                    let _ = link.coordinator.cast(CoordMsg::Decline {
                        from: self.me,
                        id: b.id,
                        task: self.spec.task_index,
                        reason: "the source has finished".into(),
                        finished: true,
                    });
                }
                Control::FinalCheckpoint(b) => {
                    final_id = Some(b.id);
                    self.on_control(c).await?;
                }
                Control::Complete(id) => {
                    self.on_control(c).await?;
                    if final_id.is_some_and(|f| id >= f) {
                        return Ok(());
                    }
                }
                Control::Abort(_) | Control::StopAfter { .. } => self.on_control(c).await?,
            }
        }
        Ok(())
    }
}
