//! The processing loop of one subtask: I/O only.
//!
//! The loop reads its inputs (a source's `poll`, or the input gate), runs
//! batches through the chained operators, writes to the output edges, and
//! hands every barrier, end of input, alignment timer and abort to the
//! [`BarrierHandler`] and every watermark to the [`WatermarkValve`]; it then
//! carries out what they decide (block an input, snapshot, forward the
//! barrier, capture in-flight batches, pass a watermark on). The
//! asynchronous part of each snapshot goes to the [`Uploader`].
//!
//! One barrier's way through a subtask with inputs: the gate yields
//! `Event::Barrier` ([`Runner::run_input`]) -> [`BarrierHandler::on_barrier`]
//! -> [`Decision`]s -> [`Runner::apply`]: the synchronous snapshot
//! ([`Runner::snapshot_operators`]), the barrier on every output edge, then
//! [`Uploader::submit`], which acknowledges to the coordinator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::barrier::{BarrierHandler, Decision, Start};
use super::upload::{PendingOperator, Snapshot, SubtaskId, Uploader};
use super::watermark::{ValveOutput, WatermarkValve};
use super::{CheckpointLink, Control};
use crate::checkpoint::events::{CheckpointObserver, SubtaskNotified, SubtaskPhases};
use crate::checkpoint::{now_ms, BarrierMode, ChannelStateEntry, SubtaskCheckpointStats};
use crate::coordinator::CoordMsg;
use crate::exchange::{Barrier, Event, InputGate};
use crate::graph::{ChainedOp, Head, SubtaskSpec};
use crate::observer::{FailoverObserver, Observers};
use crate::operator::{guarded, SourceContext, SourceStatus};
use crate::record::AnyBatch;
use crate::state::OperatorStateStore;
use crate::{Error, Result};

/// Runs one batch through the chain starting at operator `from`, then writes
/// what comes out of the tail to every main output edge, and the tail's
/// side outputs to their edges.
async fn push(spec: &mut SubtaskSpec, from: usize, batch: AnyBatch) -> Result<()> {
    let mut batch = Some(batch);
    let last = spec.ops.len().saturating_sub(1);
    let mut side = Vec::new();
    for (k, op) in spec.ops.iter_mut().enumerate().skip(from) {
        let Some(b) = batch.take() else { break };
        let ChainedOp {
            op,
            ctx,
            counters,
            in_len,
            out_len,
        } = op;
        counters.add_in(in_len(&b));
        batch = guarded(ctx, || op.process(b))?;
        if let Some(out) = &batch {
            counters.add_out(out_len(out));
        }
        // Side records of an operator inside a chain have no consumer (a
        // consumed side output ends its chain): they are dropped.
        let s = op.take_side_outputs();
        if k == last {
            side = s;
        }
    }
    if let Some(b) = batch {
        emit(spec, b).await?;
    }
    emit_side(spec, side).await
}

/// Runs `batch`, emitted by operator `k` outside `process` (fired timers,
/// finished input), through the rest of the chain.
async fn forward_from(spec: &mut SubtaskSpec, k: usize, batch: AnyBatch) -> Result<()> {
    let op = &spec.ops[k];
    op.counters.add_out((op.out_len)(&batch));
    if k + 1 < spec.ops.len() {
        Box::pin(push(spec, k + 1, batch)).await
    } else {
        emit(spec, batch).await
    }
}

/// Routes the side outputs operator `k` collected (only the tail's have
/// consumers).
async fn side_outputs_of(spec: &mut SubtaskSpec, k: usize) -> Result<()> {
    let side = spec.ops[k].op.take_side_outputs();
    if k + 1 == spec.ops.len() {
        emit_side(spec, side).await?;
    }
    Ok(())
}

/// Writes a batch to every main output edge (copies for all but the last).
async fn emit(spec: &mut SubtaskSpec, batch: AnyBatch) -> Result<()> {
    let n = spec.outputs.iter().filter(|o| o.side.is_none()).count();
    let mut seen = 0;
    for i in 0..spec.outputs.len() {
        if spec.outputs[i].side.is_some() {
            continue;
        }
        seen += 1;
        if seen == n {
            return spec.outputs[i].write(batch).await;
        }
        let copy = (spec.fanout_clone)(&batch)?;
        spec.outputs[i].write(copy).await?;
    }
    Ok(())
}

/// Writes side batches to the edges of their tags (a tag nobody consumes
/// is dropped). A tag with several consumers gets copies.
async fn emit_side(spec: &mut SubtaskSpec, side: Vec<(Arc<str>, AnyBatch)>) -> Result<()> {
    for (tag, batch) in side {
        let edges: Vec<usize> = (0..spec.outputs.len())
            .filter(|&i| spec.outputs[i].side.as_deref() == Some(&*tag))
            .collect();
        let Some((&last, rest)) = edges.split_last() else {
            continue;
        };
        for &i in rest {
            let copy = (spec.outputs[i].side_clone.ok_or_else(|| {
                Error::Internal("a side output edge without a copy function".into())
            })?)(&batch)?;
            spec.outputs[i].write(copy).await?;
        }
        spec.outputs[last].write(batch).await?;
    }
    Ok(())
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

/// An unaligned checkpoint whose synchronous snapshot is taken and whose
/// channel state is being captured (the handler knows which inputs).
struct CaptureData {
    channel: Vec<Vec<Vec<u8>>>,
    operators: Vec<PendingOperator>,
    stats: SubtaskCheckpointStats,
    phases: SubtaskPhases,
}

pub(super) struct Runner<'a> {
    spec: &'a mut SubtaskSpec,
    head: Head,
    link: Option<CheckpointLink>,
    control: UnboundedReceiver<Control>,
    mode: BarrierMode,
    /// What the barriers decide (pure).
    barriers: BarrierHandler,
    /// The data of the unaligned checkpoints being captured.
    captures: BTreeMap<u64, CaptureData>,
    batches_since_yield: u32,
    /// Chunks of an input batch set aside for an unaligned barrier.
    remainder: Option<(usize, Vec<AnyBatch>)>,
    /// This subtask's actor: the coordinator ignores messages of replaced actors.
    me: ractor::ActorId,
    /// The asynchronous part of snapshots (with checkpointing on).
    uploader: Option<Uploader>,
    /// The chain's input watermark: the minimum over open inputs.
    valve: WatermarkValve,
    /// The last watermark emitted downstream.
    output_wm: i64,
    /// Whether the outputs were last told the subtask is idle.
    output_idle: bool,
    /// Who is told that the subtask runs and that its operators were notified.
    pub(super) observers: Observers,
    /// A stop-with-savepoint in progress: (savepoint id, drain).
    stop: Option<(u64, bool)>,
    /// Source: the stop savepoint's barrier is out; wait for its outcome.
    stop_barrier_sent: Option<u64>,
    /// The job stopped with a savepoint without drain: end without finishing operators.
    stopped_without_drain: bool,
    /// This subtask took its snapshot for a stop-with-savepoint without
    /// drain whose outcome is not known yet: processing-time timers wait
    /// (what they emitted would not be in the savepoint).
    stop_pending: Option<u64>,
    /// That savepoint completed: it is the job's last state. Nothing fires
    /// any more (inputs ending as the sources stop would let the watermark
    /// jump and fire timers whose output the savepoint does not hold).
    frozen: bool,
    /// What the watermark valve let through while `stop_pending`: passed
    /// on if the savepoint is aborted, dropped if it completes.
    deferred: ValveOutput,
    /// The newest checkpoint this subtask snapshotted: after its input
    /// ended, a checkpoint it has not snapshotted takes its final state.
    last_snapshot: Option<u64>,
    /// Checkpoints snapshotted here and not yet completed or aborted: while
    /// any is, a two-phase-commit operator's state may still change (at its
    /// commit), so a finished subtask's state is not final yet.
    unresolved: std::collections::BTreeSet<u64>,
    /// Snapshots taken since the input ended (directly asked, no barrier).
    snapshots_after_finish: usize,
}

/// The wall clock in ms since the epoch (processing time).
fn now_i64() -> i64 {
    crate::time::processing_time_now()
}

/// Records per chunk when batches are processed in chunks (unaligned checkpoints).
const CHUNK: usize = 64;

impl<'a> Runner<'a> {
    pub(super) fn new(
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
                Arc::new(crate::exchange::TaskSignals::default()),
            )),
        );
        let inputs = match &head {
            Head::Input(g) => g.len(),
            Head::Source { .. } => 0,
        };
        let mode = link.as_ref().map_or(BarrierMode::Aligned, |l| l.mode);
        let uploader = link.clone().map(|l| {
            let id = SubtaskId {
                chain: spec.chain.clone(),
                chain_index: spec.chain_index,
                subtask: spec.subtask,
                parallelism: spec.parallelism,
                max_parallelism: spec.max_parallelism,
                task: spec.task_index,
                actor: me,
            };
            Uploader::new(l, id, main)
        });
        Runner {
            spec,
            head,
            link,
            control,
            mode,
            barriers: BarrierHandler::new(mode, inputs),
            captures: BTreeMap::new(),
            batches_since_yield: 0,
            me,
            uploader,
            remainder: None,
            valve: WatermarkValve::new(inputs),
            output_wm: i64::MIN,
            output_idle: false,
            observers: Observers::none(),
            stop: None,
            stop_barrier_sent: None,
            stopped_without_drain: false,
            stop_pending: None,
            frozen: false,
            deferred: ValveOutput::default(),
            last_snapshot: None,
            unresolved: Default::default(),
            snapshots_after_finish: 0,
        }
    }

    pub(super) async fn run(mut self) -> Result<()> {
        self.open().await?;
        self.observers.subtask_running(self.spec.task_index);
        let finished_normally = if matches!(self.head, Head::Source { .. }) {
            self.run_source().await?
        } else {
            self.run_input().await?
        };
        if !finished_normally {
            return Ok(());
        }
        self.finish().await?;
        self.await_final_checkpoint().await?;
        self.close_operators()
    }

    /// The subtask ends without failing: close each operator in chain order.
    fn close_operators(&mut self) -> Result<()> {
        for op in self.spec.ops.iter_mut() {
            guarded(&op.ctx, || op.op.close())?;
        }
        Ok(())
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
            }
            self.generated_watermarks().await?;
            self.processing_time().await?;
            match status {
                SourceStatus::More => self.maybe_yield().await,
                SourceStatus::Idle(d) => {
                    flush(self.spec).await?;
                    // Wake for periodic watermarks and timers too.
                    let d = match self.next_processing_time() {
                        Some(t) => d.min(Duration::from_millis(
                            t.saturating_sub(now_i64()).max(0) as u64
                        )),
                        None => d,
                    };
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

    fn gate(&mut self) -> Result<&mut InputGate> {
        match &mut self.head {
            Head::Input(gate) => Ok(gate),
            Head::Source { .. } => Err(Error::Internal("input loop without an input gate".into())),
        }
    }

    async fn run_input(&mut self) -> Result<bool> {
        loop {
            if self.gate()?.is_finished() {
                return Ok(true);
            }
            if self.spec.signals.take_urgent() {
                // Unaligned barriers first, ahead of everything queued.
                while let Some((i, b)) = self.gate()?.take_priority() {
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
            let ev = match self.gate()?.try_next()? {
                Some(ev) => Some(ev),
                None => self.wait_input().await?,
            };
            while let Ok(c) = self.control.try_recv() {
                self.on_control(c).await?;
            }
            match ev {
                Some((i, Event::Batch(b))) => {
                    self.capture(i, &b)?;
                    self.process_input(i, b).await?;
                    self.generated_watermarks().await?;
                    self.processing_time().await?;
                    self.maybe_yield().await;
                }
                Some((i, Event::Watermark(w))) => {
                    let out = self.valve.on_watermark(i, w);
                    self.on_valve(out).await?;
                }
                Some((i, Event::Idle(idle))) => {
                    let out = self.valve.on_idle(i, idle);
                    self.on_valve(out).await?;
                }
                Some((i, Event::Barrier(b))) => self.on_barrier(i, b).await?,
                Some((i, Event::EndOfStream)) => self.on_input_finished(i).await?,
                None => {}
            }
        }
    }

    /// Nothing queued: flush partial output batches, then wait for input,
    /// control or the alignment timer (which it handles; `None` then).
    async fn wait_input(&mut self) -> Result<Option<(usize, Event)>> {
        flush(self.spec).await?;
        let alignment = self
            .barriers
            .alignment_deadline(now_ms())
            .map(|left| Instant::now() + left);
        // Processing-time timers and periodic watermarks wake the loop too.
        let timer = self.next_processing_time().map(|t| {
            let left = t.saturating_sub(now_i64()).max(0) as u64;
            Instant::now() + Duration::from_millis(left)
        });
        let deadline = match (alignment, timer) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        };
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
            Wake::Input(Some(ev)) => return Ok(Some(ev)),
            Wake::Input(None) => {
                if alignment.is_some_and(|a| a <= Instant::now()) {
                    let d = self.barriers.on_alignment_timeout();
                    if !d.is_empty() {
                        tracing::debug!("alignment timed out; switching to unaligned");
                    }
                    self.apply(d).await?;
                }
                self.processing_time().await?;
            }
            Wake::Control(Some(c)) => self.on_control(c).await?,
            Wake::Control(None) => {}
        }
        Ok(None)
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

    /// Watermarks and statuses operators of the chain generated
    /// (assigners), and a source's (per-split generators), passed on.
    async fn generated_watermarks(&mut self) -> Result<()> {
        if let Head::Source { op, .. } = &mut self.head {
            if op.next_processing_time().is_some() {
                let (w, idle) = op.take_time_signals(now_i64());
                if let Some(idle) = idle {
                    self.propagate_idle(0, idle).await?;
                }
                if let Some(w) = w {
                    self.propagate_watermark(0, w).await?;
                }
            }
        }
        for k in 0..self.spec.ops.len() {
            if let Some(idle) = self.spec.ops[k].op.take_idle() {
                self.propagate_idle(k + 1, idle).await?;
            }
            if let Some(w) = self.spec.ops[k].op.take_watermark() {
                self.propagate_watermark(k + 1, w).await?;
            }
        }
        Ok(())
    }

    /// Passes watermark `wm` through the chain from operator `from` (the
    /// records each operator fires with it go down the chain ahead of it),
    /// and downstream when it advances the chain's output watermark.
    async fn propagate_watermark(&mut self, from: usize, wm: i64) -> Result<()> {
        let mut w = wm;
        for k in from..self.spec.ops.len() {
            let out = {
                let op = &mut self.spec.ops[k];
                op.counters.set_input_watermark(w);
                guarded(&op.ctx, || op.op.on_watermark(w))?
            };
            if let Some(b) = out.records {
                forward_from(self.spec, k, b).await?;
            }
            side_outputs_of(self.spec, k).await?;
            match out.watermark {
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

    /// Passes a watermark status (idle or active again) through the chain
    /// from operator `from`, and downstream when the chain's status changes.
    async fn propagate_idle(&mut self, from: usize, idle: bool) -> Result<()> {
        for op in self.spec.ops[from..].iter_mut() {
            if !op.op.on_idle(idle) {
                return Ok(());
            }
        }
        if idle != self.output_idle {
            self.output_idle = idle;
            for o in self.spec.outputs.iter_mut() {
                o.idle(idle).await?;
            }
        }
        Ok(())
    }

    /// The earliest time an operator of the chain (or the source) asked to
    /// be called at (timers, periodic watermarks), ms since the epoch.
    fn next_processing_time(&self) -> Option<i64> {
        let head = match &self.head {
            Head::Source { op, .. } => op.next_processing_time(),
            Head::Input(_) => None,
        };
        self.spec
            .ops
            .iter()
            .filter_map(|o| o.op.next_processing_time())
            .chain(head)
            .min()
    }

    /// Calls every operator whose processing time has come (processing-time
    /// timers, periodic watermarks), passing on what it emits.
    async fn processing_time(&mut self) -> Result<()> {
        if self.frozen || self.stop_pending.is_some() {
            return Ok(());
        }
        let now = now_i64();
        if self.next_processing_time().is_none_or(|t| t > now) {
            return Ok(());
        }
        for k in 0..self.spec.ops.len() {
            if self.spec.ops[k]
                .op
                .next_processing_time()
                .is_none_or(|t| t > now)
            {
                continue;
            }
            let out = {
                let op = &mut self.spec.ops[k];
                guarded(&op.ctx, || op.op.on_processing_time(now))?
            };
            if let Some(b) = out {
                forward_from(self.spec, k, b).await?;
            }
            side_outputs_of(self.spec, k).await?;
        }
        self.generated_watermarks().await
    }

    /// Passes on what the watermark valve let through: a status change
    /// (active before the watermark it comes with), a new watermark.
    async fn on_valve(&mut self, out: ValveOutput) -> Result<()> {
        if self.frozen {
            return Ok(());
        }
        if self.stop_pending.is_some() {
            // The latest of each wins when it is passed on.
            self.deferred.watermark = out.watermark.or(self.deferred.watermark);
            self.deferred.idle = out.idle.or(self.deferred.idle);
            return Ok(());
        }
        if out.idle == Some(false) {
            self.propagate_idle(0, false).await?;
        }
        if let Some(w) = out.watermark {
            self.propagate_watermark(0, w).await?;
        }
        if out.idle == Some(true) {
            self.propagate_idle(0, true).await?;
        }
        Ok(())
    }

    /// Event time is complete (end of input, stop with drain).
    async fn end_of_time(&mut self) -> Result<()> {
        match self.valve.end_of_time() {
            Some(w) => self.propagate_watermark(0, w).await,
            None => Ok(()),
        }
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

    /// Synchronous part of a snapshot: the source position and every operator's state.
    fn snapshot_operators(&mut self, id: u64) -> Result<Vec<PendingOperator>> {
        crate::failpoint::hit("sync-snapshot")?;
        self.last_snapshot = Some(self.last_snapshot.map_or(id, |l| l.max(id)));
        self.unresolved.insert(id);
        let mut out = Vec::with_capacity(self.spec.ops.len() + 1);
        if let Head::Source { op, ctx, .. } = &mut self.head {
            let st = guarded(ctx, || op.snapshot(id))?;
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
        self.barriers.snapshotted(id);
        Ok(out)
    }

    /// Sends barrier `b` on every output edge (ahead of queued batches when
    /// unaligned).
    ///
    /// Aligned with timeout (`execution.checkpointing.aligned-checkpoint-timeout`),
    /// a checkpoint's barrier goes out aligned while its timeout, measured
    /// from the trigger, has not passed, and a timer of this loop's runtime
    /// converts it where it still waits in an output queue when it passes
    /// (Flink's output-side conversion): it then overtakes the queued
    /// batches, which the receiver persists as channel state. The timer runs
    /// while this loop waits for output space, so a backpressured sender's
    /// barrier no longer waits for the whole queue. Past the timeout already,
    /// the barrier goes out unaligned at once. Savepoints stay aligned.
    async fn forward_barrier(&mut self, b: Barrier, unaligned: bool) -> Result<()> {
        let mut unaligned = unaligned;
        let mut convertible = false;
        if let (BarrierMode::AlignedThenUnaligned(timeout), false, false) =
            (self.mode, unaligned, b.savepoint)
        {
            convertible = true;
            unaligned = !self.arm_conversion(b, timeout);
        }
        let b = Barrier {
            unaligned,
            overtaken: 0,
            ..b
        };
        for o in self.spec.outputs.iter_mut() {
            o.barrier(b, convertible).await?;
        }
        Ok(())
    }

    /// Aligned with timeout: arms the timer that converts barrier `b` in the
    /// output queues at its trigger + `timeout` (see [`Runner::forward_barrier`]);
    /// `false` when that moment has passed (the barrier goes out unaligned).
    fn arm_conversion(&self, b: Barrier, timeout: Duration) -> bool {
        let deadline = b.timestamp_ms + timeout.as_millis() as u64;
        let now = now_ms();
        if now >= deadline {
            return false;
        }
        let converters: Vec<crate::exchange::BarrierConverter> = self
            .spec
            .outputs
            .iter()
            .flat_map(|o| o.senders.iter().map(|s| s.barrier_converter()))
            .collect();
        let id = b.id;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
            let converted = converters.iter().filter(|c| c.convert(id)).count();
            if converted > 0 {
                tracing::debug!(
                    checkpoint = id,
                    channels = converted,
                    "aligned checkpoint timeout: barrier converted in the output queues"
                );
            }
        });
        true
    }

    /// A checkpoint after this subtask's input ended: what it sent before
    /// its end of stream may still be queued downstream (a backlog), and no
    /// barrier follows it. So that downstream need not wait for the whole
    /// backlog, barrier `b` goes on each output just before the end of
    /// stream still queued there: unaligned, ahead of the queued batches,
    /// which downstream captures as channel state; aligned with timeout, as
    /// an aligned barrier converted at the deadline; aligned (and for
    /// savepoints), where alignment would have found the end of stream.
    fn barrier_before_end_of_stream(&self, b: Barrier) {
        let priority = !b.savepoint
            && match self.mode {
                BarrierMode::Unaligned => true,
                BarrierMode::AlignedThenUnaligned(timeout) => !self.arm_conversion(b, timeout),
                _ => false,
            };
        for o in &self.spec.outputs {
            for s in &o.senders {
                // A receiver that is gone is being recovered from.
                let _ = s.barrier_before_end(b, priority);
            }
        }
    }

    /// Hands the asynchronous part of a snapshot to the uploader.
    fn upload(&self, snapshot: Snapshot) {
        if let Some(u) = &self.uploader {
            u.submit(snapshot);
        }
    }

    /// Carries out the barrier handler's decisions, in order.
    async fn apply(&mut self, decisions: Vec<Decision>) -> Result<()> {
        for d in decisions {
            match d {
                Decision::Block(i) => self.gate()?.set_blocked(i, true),
                Decision::UnblockAll => self.gate()?.unblock_all(),
                Decision::SnapshotAligned(start) => self.checkpoint_aligned(start).await?,
                Decision::SnapshotUnaligned { start, overtaken } => {
                    self.checkpoint_unaligned(start, overtaken).await?
                }
                Decision::CaptureOvertaken { id, input, count } => {
                    let bytes = self.overtaken(input, count)?;
                    if let Some(c) = self.captures.get_mut(&id) {
                        c.channel[input].extend(bytes);
                    }
                }
                Decision::CaptureComplete(id) => self.capture_complete(id),
            }
        }
        Ok(())
    }

    /// Snapshot, forward the barrier, and upload (aligned and at-least-once).
    async fn checkpoint_aligned(&mut self, a: Start) -> Result<()> {
        if a.barrier.stop_without_drain {
            self.stop_pending = Some(a.barrier.id);
        }
        let t0 = Instant::now();
        let operators = self.snapshot_operators(a.barrier.id)?;
        let t1 = Instant::now();
        self.forward_barrier(a.barrier, false).await?;
        let stats = SubtaskCheckpointStats {
            sync_duration: (t1 - t0).as_secs_f64() * 1e3,
            alignment_duration: (t0 - a.first_at).as_secs_f64() * 1e3,
            start_delay: a.start_delay,
            ..Default::default()
        };
        self.upload(Snapshot {
            id: a.barrier.id,
            operators,
            channel_state: Vec::new(),
            stats,
            phases: SubtaskPhases::synced(Some(a.first_at), t0, t1),
            final_state: false,
        });
        Ok(())
    }

    /// Unaligned: read the batches the barrier overtook, snapshot at once,
    /// send the barrier ahead of queued output, and start capturing the
    /// inputs' in-flight batches.
    async fn checkpoint_unaligned(
        &mut self,
        s: Start,
        overtaken: Option<(usize, usize)>,
    ) -> Result<()> {
        let mut channel = vec![Vec::new(); self.barriers_inputs()];
        if let Some((i, count)) = overtaken {
            channel[i] = self.overtaken(i, count)?;
        }
        let t0 = Instant::now();
        let operators = self.snapshot_operators(s.barrier.id)?;
        let t1 = Instant::now();
        if let Some((i, rest)) = &self.remainder {
            // Taken from input `i` before the barrier, not processed yet: in-flight data.
            let enc = self.encoder()?;
            let mut first = rest.iter().map(enc).collect::<Result<Vec<_>>>()?;
            first.append(&mut channel[*i]);
            channel[*i] = first;
        }
        self.forward_barrier(s.barrier, true).await?;
        let cap = CaptureData {
            channel,
            operators,
            stats: SubtaskCheckpointStats {
                sync_duration: (t1 - t0).as_secs_f64() * 1e3,
                alignment_duration: (t0 - s.first_at).as_secs_f64() * 1e3,
                start_delay: s.start_delay,
                unaligned_checkpoint: true,
                ..Default::default()
            },
            phases: SubtaskPhases::synced(Some(s.first_at), t0, t1),
        };
        self.captures.insert(s.barrier.id, cap);
        Ok(())
    }

    fn barriers_inputs(&self) -> usize {
        match &self.head {
            Head::Input(g) => g.len(),
            Head::Source { .. } => 0,
        }
    }

    fn encoder(&self) -> Result<crate::record::EncodeFn> {
        self.spec
            .input_codec
            .map(|c| c.0)
            .ok_or_else(|| Error::Internal("capture without a codec".into()))
    }

    /// Capture `id` is complete: upload its snapshot with its channel state.
    fn capture_complete(&mut self, id: u64) {
        let Some(mut c) = self.captures.remove(&id) else {
            return;
        };
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
        self.upload(Snapshot {
            id,
            operators: c.operators,
            channel_state: channel,
            stats: c.stats,
            phases: c.phases,
            final_state: false,
        });
    }

    /// Records `batch` from input `i` in every unaligned checkpoint it precedes.
    fn capture(&mut self, i: usize, batch: &AnyBatch) -> Result<()> {
        if !self.barriers.is_capturing() {
            return Ok(());
        }
        let mut encoded: Option<Vec<u8>> = None;
        for id in self.barriers.capturing(i) {
            let Some(c) = self.captures.get_mut(&id) else {
                continue;
            };
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
        Ok(())
    }

    /// The first `count` batches queued on input `i`, serialized from the queue.
    fn overtaken(&self, i: usize, count: usize) -> Result<Vec<Vec<u8>>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let enc = self.encoder()?;
        match &self.head {
            Head::Input(g) => g.peek_encode(i, count, enc),
            Head::Source { .. } => Ok(Vec::new()),
        }
    }

    async fn on_barrier(&mut self, i: usize, b: Barrier) -> Result<()> {
        let decisions = self.barriers.on_barrier(i, b, Instant::now(), now_ms());
        let aligning = decisions.iter().any(|d| matches!(d, Decision::Block(_)));
        self.apply(decisions).await?;
        if aligning && self.barriers.is_aligning() {
            // Some inputs are blocked, others not yet at the barrier.
            crate::failpoint::hit("during-alignment")?;
        }
        Ok(())
    }

    async fn on_input_finished(&mut self, i: usize) -> Result<()> {
        let out = self.valve.on_input_finished(i);
        self.on_valve(out).await?;
        let d = self.barriers.on_input_finished(i);
        self.apply(d).await
    }

    async fn on_control(&mut self, c: Control) -> Result<()> {
        match c {
            Control::Trigger(b) => self.on_trigger(b).await?,
            Control::StopAfter { id, drain } => self.stop = Some((id, drain)),
            Control::FinalCheckpoint(b) | Control::SnapshotFinished(b) => {
                // Finished: once every snapshot taken is committed or
                // aborted, the state no longer changes; it is recorded once
                // and named by every later checkpoint (see `upload`).
                if matches!(c, Control::SnapshotFinished(_)) {
                    self.barrier_before_end_of_stream(b);
                }
                if !b.savepoint {
                    if let Some(u) = &self.uploader {
                        if u.has_recorded_final() {
                            u.submit_recorded(b.id);
                            return Ok(());
                        }
                    }
                }
                // The first snapshot after the end of input takes what was
                // written since the last one (a sink's pending files); the
                // state is final after that one was committed.
                let final_state =
                    !b.savepoint && self.snapshots_after_finish > 0 && self.unresolved.is_empty();
                self.snapshots_after_finish += 1;
                let t0 = Instant::now();
                let operators = self.snapshot_operators(b.id)?;
                let t1 = Instant::now();
                let stats = SubtaskCheckpointStats {
                    sync_duration: (t1 - t0).as_secs_f64() * 1e3,
                    finished: true,
                    ..Default::default()
                };
                self.upload(Snapshot {
                    id: b.id,
                    operators,
                    channel_state: Vec::new(),
                    stats,
                    phases: SubtaskPhases::synced(None, t0, t1),
                    final_state,
                });
            }
            Control::Complete(id) => {
                self.unresolved.retain(|s| *s > id);
                self.on_complete(id)?;
                if self.stop_pending.is_some_and(|s| id >= s) {
                    self.stop_pending = None;
                    self.frozen = true;
                    self.deferred = ValveOutput::default();
                }
            }
            Control::Abort(id) => {
                self.unresolved.remove(&id);
                if self.stop.is_some_and(|(s, _)| s == id) {
                    // The stop failed: the job goes on.
                    self.stop = None;
                }
                if self.stop_pending == Some(id) {
                    // With what the watermark valve let through meanwhile.
                    self.stop_pending = None;
                    let deferred = std::mem::take(&mut self.deferred);
                    Box::pin(self.on_valve(deferred)).await?;
                }
                let d = self.barriers.on_abort(id);
                if !matches!(self.head, Head::Source { .. }) {
                    self.apply(d).await?;
                }
                self.captures.remove(&id);
                if let Head::Source { op, ctx, .. } = &mut self.head {
                    guarded(ctx, || op.notify_aborted(id))?;
                }
                for op in self.spec.ops.iter_mut() {
                    guarded(&op.ctx, || op.op.notify_aborted(id))?;
                }
            }
        }
        Ok(())
    }

    /// A source's trigger: snapshot the position and the chain, then emit
    /// the barrier on every output (invariant 1).
    async fn on_trigger(&mut self, b: Barrier) -> Result<()> {
        if !matches!(self.head, Head::Source { .. }) {
            return Ok(());
        }
        let unaligned = self.mode == BarrierMode::Unaligned && !b.savepoint;
        let stopping = self.stop.filter(|(id, _)| *id == b.id);
        if b.stop_without_drain {
            self.stop_pending = Some(b.id);
        }
        if let Some((_, true)) = stopping {
            // Drain: event time ends before the savepoint's barrier
            // (Flink's MAX_WATERMARK), so every timer fires first.
            self.end_of_time().await?;
        }
        // Trigger to its arrival here (Flink's start delay of a source).
        let start_delay = now_ms().saturating_sub(b.timestamp_ms) as f64;
        let t0 = Instant::now();
        let operators = self.snapshot_operators(b.id)?;
        let t1 = Instant::now();
        self.forward_barrier(b, unaligned).await?;
        let stats = SubtaskCheckpointStats {
            sync_duration: (t1 - t0).as_secs_f64() * 1e3,
            start_delay,
            ..Default::default()
        };
        self.upload(Snapshot {
            id: b.id,
            operators,
            channel_state: Vec::new(),
            stats,
            phases: SubtaskPhases::synced(None, t0, t1),
            final_state: false,
        });
        if stopping.is_some() {
            // Nothing is emitted after a stop savepoint's barrier.
            self.stop_barrier_sent = Some(b.id);
        }
        Ok(())
    }

    /// Checkpoint `id` is complete: tell every operator (sinks commit).
    fn on_complete(&mut self, id: u64) -> Result<()> {
        let t0 = Instant::now();
        let mut outcome = Ok(());
        if let Head::Source { op, ctx, .. } = &mut self.head {
            outcome = guarded(ctx, || op.notify_complete(id));
        }
        for op in self.spec.ops.iter_mut() {
            if outcome.is_err() {
                break;
            }
            outcome = guarded(&op.ctx, || op.op.notify_complete(id));
            if outcome.is_err() {
                break;
            }
        }
        if !self.observers.is_empty() {
            let error = outcome.as_ref().err().map(|e| e.to_string());
            let s = &*self.spec;
            self.observers.subtask_notified(&SubtaskNotified {
                id,
                task: s.task_index,
                chain: &s.chain,
                index: s.subtask,
                start: t0,
                end: Instant::now(),
                error: error.as_deref(),
            });
        }
        outcome
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
        self.end_of_time().await?;
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
                forward_from(spec, i, b).await?;
            }
            side_outputs_of(spec, i).await?;
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
                // A checkpoint after this subtask finished: its final state
                // is its state for `n` (a source's position is its end; all
                // it emitted precedes its end of stream downstream).
                Control::Trigger(b) | Control::SnapshotFinished(b) => {
                    if self.last_snapshot.is_none_or(|l| l < b.id) {
                        self.on_control(Control::SnapshotFinished(b)).await?;
                    }
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
