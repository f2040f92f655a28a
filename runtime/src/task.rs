//! The subtask actor and its processing loop.
//!
//! Every subtask (one parallel instance of an operator chain) is a ractor
//! actor, spawned linked under the job's [`crate::job`] supervisor. The actor
//! owns control: it starts the subtask's **processing loop** as a tokio task
//! in `post_start`, aborts it in `post_stop` (so stopping or killing the actor
//! always stops its work), and turns the loop's outcome into the actor's exit:
//! a normal stop when the input ended, an actor failure (seen by the
//! supervisor as `ActorFailed`) when user code returned an error or panicked.
//!
//! The loop never blocks inside an actor handler: it awaits on bounded
//! channels (backpressure) while the actor's mailbox stays free for control.
//!
//! Loop, for a subtask whose chain starts with a source:
//! poll a batch -> run it through the chained operators -> write to the
//! output edges (awaiting when a channel is full); on `Idle` flush partial
//! batches and sleep; on `Finished` finish the operators in order, flush, and
//! send end-of-stream on every output channel.
//!
//! For a subtask fed by channels: take the next queued event from the input
//! gate (round-robin over inputs); when nothing is queued, flush partially
//! filled output batches first (so latency stays low when the input is slow),
//! then wait. End-of-stream on every input finishes the chain as above.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::channel::Event;
use crate::graph::{ChainedOp, Head, SubtaskSpec};
use crate::operator::{guarded, SourceContext, SourceStatus};
use crate::record::AnyBatch;
use crate::state::OperatorStateStore;
use crate::{Error, Result};

/// Shared by all subtasks of one job: the first root-cause failure.
#[derive(Default)]
pub(crate) struct JobShared {
    failure: Mutex<Option<Error>>,
}

impl JobShared {
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

    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Messages to a subtask actor.
pub(crate) enum SubtaskMsg {
    /// The processing loop ended.
    LoopEnded(std::result::Result<(), String>),
}

pub(crate) struct SubtaskActor;

pub(crate) struct SubtaskState {
    spec: Option<SubtaskSpec>,
    shared: Arc<JobShared>,
    task: Option<JoinHandle<()>>,
}

impl Actor for SubtaskActor {
    type Msg = SubtaskMsg;
    type State = SubtaskState;
    type Arguments = (SubtaskSpec, Arc<JobShared>);

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        (spec, shared): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SubtaskState {
            spec: Some(spec),
            shared,
            task: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let spec = state.spec.take().ok_or("subtask started twice")?;
        let shared = state.shared.clone();
        state.task = Some(tokio::spawn(async move {
            let name = format!("{} ({})", spec.chain, spec.subtask);
            let mut spec = spec;
            // `spec` (with its channel ends) outlives the failure record, so a
            // neighbour that sees this subtask's channels close finds the root
            // cause already recorded.
            let outcome = run(&mut spec).await;
            let msg = match outcome {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::debug!(subtask = %name, error = %e, "subtask failed");
                    let text = e.to_string();
                    shared.record_failure(e);
                    Err(text)
                }
            };
            // The actor may already be stopping (cancel); then nobody needs the outcome.
            drop(spec);
            let _ = myself.cast(SubtaskMsg::LoopEnded(msg));
        }));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubtaskMsg::LoopEnded(Ok(())) => {
                myself.stop(Some("finished".into()));
                Ok(())
            }
            SubtaskMsg::LoopEnded(Err(e)) => Err(e.into()),
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.task.take() {
            t.abort();
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
        counters
            .records_in
            .fetch_add(in_len(&batch) as u64, std::sync::atomic::Ordering::Relaxed);
        match guarded(ctx, || op.process(batch))? {
            Some(out) => {
                counters
                    .records_out
                    .fetch_add(out_len(&out) as u64, std::sync::atomic::Ordering::Relaxed);
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

/// End of input: finish each operator in chain order, passing what it emits
/// through the rest of the chain, then end every output channel.
async fn finish(spec: &mut SubtaskSpec) -> Result<()> {
    for i in 0..spec.ops.len() {
        let out = {
            let op = &mut spec.ops[i];
            guarded(&op.ctx, || op.op.finish())?
        };
        if let Some(b) = out {
            let op = &spec.ops[i];
            op.counters.records_out.fetch_add(
                (op.out_len)(&b) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            if i + 1 < spec.ops.len() {
                Box::pin(push(spec, i + 1, b)).await?;
            } else {
                emit(spec, b).await?;
            }
        }
    }
    for o in spec.outputs.iter_mut() {
        o.end_of_stream().await?;
    }
    Ok(())
}

pub(crate) async fn run(spec: &mut SubtaskSpec) -> Result<()> {
    for op in spec.ops.iter_mut().rev() {
        guarded(&op.ctx, || op.op.open(&op.ctx))?;
    }
    let mut head = std::mem::replace(
        &mut spec.head,
        Head::Input(crate::channel::InputGate::new(Vec::new())),
    );
    match &mut head {
        Head::Source {
            op,
            ctx,
            counters,
            out_len,
        } => {
            let state = OperatorStateStore::new();
            guarded(ctx, || {
                op.open(&SourceContext {
                    runtime: ctx,
                    state: &state,
                    restored: false,
                })
            })?;
            loop {
                let (batch, status) = guarded(ctx, || op.poll(spec.source_batch_size))?;
                if let Some(b) = batch {
                    counters
                        .records_out
                        .fetch_add(out_len(&b) as u64, std::sync::atomic::Ordering::Relaxed);
                    push(spec, 0, b).await?;
                }
                match status {
                    SourceStatus::More => tokio::task::consume_budget().await,
                    SourceStatus::Idle(d) => {
                        flush(spec).await?;
                        tokio::time::sleep(d).await;
                    }
                    SourceStatus::Finished => break,
                }
            }
            guarded(ctx, || op.close())?;
        }
        Head::Input(gate) => {
            while !gate.is_finished() {
                let (_, ev) = match gate.try_next()? {
                    Some(ev) => ev,
                    None => {
                        flush(spec).await?;
                        gate.next().await?
                    }
                };
                match ev {
                    Event::Batch(b) => push(spec, 0, b).await?,
                    Event::EndOfStream => {}
                }
            }
        }
    }
    finish(spec).await
}
