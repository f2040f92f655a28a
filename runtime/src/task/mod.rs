//! The subtask: its actor, its processing loop, and the pure state machines
//! the loop consults.
//!
//! Every subtask (one parallel instance of an operator chain) is a ractor
//! actor, spawned linked under the job's [`crate::job`] supervisor. The actor
//! owns control: it starts the subtask's **processing loop** on a thread of
//! its own in `post_start`, aborts it in `post_stop` (so stopping or killing
//! the actor always stops its work), forwards checkpoint control (trigger,
//! complete, abort, final checkpoint) from its mailbox to the loop over an
//! unbounded control channel, and turns the loop's outcome into the actor's
//! exit: a normal stop when the input ended, an actor failure (seen by the
//! supervisor as `ActorFailed`) when user code returned an error or panicked.
//! The loop never blocks inside an actor handler: it awaits on bounded
//! channels (backpressure) while the actor's mailbox stays free for control.
//!
//! | module        | concept                                                          |
//! |---------------|------------------------------------------------------------------|
//! | `runner`    | the processing loop: reads inputs, feeds operators, writes outputs, carries out decisions (I/O only) |
//! | `barrier`   | barrier handling as a pure state machine: aligned, unaligned, aligned with timeout, at-least-once |
//! | `watermark` | the watermark valve: minimum over active inputs (pure)           |
//! | `upload`    | the asynchronous part of a snapshot: upload, state file, acknowledgement |
//!
//! **Source subtasks**: poll a batch, run it through the chained operators,
//! write it to the output edges; between polls, handle control: on a trigger,
//! snapshot (the source's position and every chained operator) and emit the
//! barrier on every output. **Other subtasks**: take the next event from the
//! input gate (round-robin over unblocked inputs; when nothing is queued,
//! flush partially filled output batches first, then wait). Barriers go to
//! the `barrier::BarrierHandler`; the synchronous snapshot happens on the
//! loop, the upload (file write, fsync) and the acknowledgement run in the
//! `upload::Uploader`, so processing continues. At the end of input the
//! chain is finished and end-of-stream sent; with checkpointing on, the
//! subtask then waits for the final checkpoint and its completion before it
//! exits, so two-phase-commit sinks commit everything.

pub(crate) mod barrier;
pub(crate) mod runner;
pub(crate) mod upload;
pub(crate) mod watermark;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::checkpoint::storage::CheckpointStorage;
use crate::checkpoint::BarrierMode;
use crate::coordinator::CoordMsg;
use crate::graph::SubtaskSpec;
use crate::job_shared::JobShared;
use crate::Error;

/// Checkpoint control for the loop: what the coordinator sends.
pub(crate) use crate::coordinator::CheckpointControl as Control;

/// Messages to a subtask actor.
pub(crate) enum SubtaskMsg {
    /// The processing loop ended.
    LoopEnded(std::result::Result<(), String>),
    /// From the coordinator (which holds a [`ractor::DerivedActorRef`] of
    /// this type, so it does not depend on the subtask).
    Checkpoint(Control),
}

impl From<Control> for SubtaskMsg {
    fn from(c: Control) -> Self {
        SubtaskMsg::Checkpoint(c)
    }
}

impl TryFrom<SubtaskMsg> for Control {
    type Error = ();
    fn try_from(m: SubtaskMsg) -> std::result::Result<Self, ()> {
        match m {
            SubtaskMsg::Checkpoint(c) => Ok(c),
            SubtaskMsg::LoopEnded(_) => Err(()),
        }
    }
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
    /// Raised when a trigger arrives for an unaligned checkpoint (or one
    /// aligned with a timeout, which may switch), so a source blocked by
    /// backpressure takes it at once.
    urgent: Option<Arc<crate::exchange::TaskSignals>>,
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
            .filter(|c| {
                matches!(
                    c.mode,
                    BarrierMode::Unaligned | BarrierMode::AlignedThenUnaligned(_)
                )
            })
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
        // Counted out however the thread ends (even by a panic).
        let live = args.shared.loop_started(args.spec.task_index);
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
            let mut runner = runner::Runner::new(&mut spec, checkpoint, control, main, me);
            runner.observers = shared.observers.clone();
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
                let _live = live;
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
        match msg {
            SubtaskMsg::LoopEnded(Ok(())) => {
                myself.stop(Some("finished".into()));
                Ok(())
            }
            SubtaskMsg::LoopEnded(Err(e)) => Err(e.into()),
            SubtaskMsg::Checkpoint(c) => {
                let _ = state.control.send(c);
                if let (Control::Trigger(_), Some(u)) = (c, &state.urgent) {
                    u.raise_urgent();
                }
                Ok(())
            }
        }
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
