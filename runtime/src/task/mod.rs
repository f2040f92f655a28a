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
//! | [`runner`]    | the processing loop: reads inputs, feeds operators, writes outputs, carries out decisions (I/O only) |
//! | [`barrier`]   | barrier handling as a pure state machine: aligned, unaligned, aligned with timeout, at-least-once |
//! | [`watermark`] | the watermark valve: minimum over active inputs (pure)           |
//! | [`upload`]    | the asynchronous part of a snapshot: upload, state file, acknowledgement |
//!
//! **Source subtasks**: poll a batch, run it through the chained operators,
//! write it to the output edges; between polls, handle control: on a trigger,
//! snapshot (the source's position and every chained operator) and emit the
//! barrier on every output. **Other subtasks**: take the next event from the
//! input gate (round-robin over unblocked inputs; when nothing is queued,
//! flush partially filled output batches first, then wait). Barriers go to
//! the [`barrier::BarrierHandler`]; the synchronous snapshot happens on the
//! loop, the upload (file write, fsync) and the acknowledgement run in the
//! [`upload::Uploader`], so processing continues. At the end of input the
//! chain is finished and end-of-stream sent; with checkpointing on, the
//! subtask then waits for the final checkpoint and its completion before it
//! exits, so two-phase-commit sinks commit everything.

pub(crate) mod barrier;
pub(crate) mod runner;
pub(crate) mod upload;
pub(crate) mod watermark;

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::channel::Barrier;
use crate::checkpoint::coordinator::CoordMsg;
use crate::checkpoint::storage::CheckpointStorage;
use crate::checkpoint::BarrierMode;
use crate::graph::SubtaskSpec;
use crate::Error;

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
            let mut runner = runner::Runner::new(&mut spec, checkpoint, control, main, me);
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
