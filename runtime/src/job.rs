//! Running a job: the job supervisor actor, the [`JobHandle`] a client holds,
//! and the [`JobResult`] a finished job returns.
//!
//! The **job supervisor** (`JobMaster`) is a ractor actor that spawns one
//! [`crate::task`] actor per subtask, *linked* to itself, so every subtask's
//! exit reaches it as a supervision event:
//! - every subtask terminated normally: the job finished;
//! - a subtask failed (user code returned an error or panicked): the job fails
//!   with that operator's name and message, and the other subtasks are stopped.
//!   (Restarting the failed region from a checkpoint is failover's job; until
//!   it exists a failure ends the job.)
//! - a cancel request stops every subtask and the job ends as cancelled.
//!
//! Records are counted per operator in [`OperatorCounters`] (one relaxed
//! atomic add per batch, not per record) so a client can print progress while
//! the job runs ([`JobHandle::metrics`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use crate::checkpoint::coordinator::{CoordMsg, Coordinator, CoordinatorArgs, JobEnd, TaskRef};
use crate::checkpoint::storage::CheckpointStorage;
use crate::checkpoint::{CheckpointConfig, CheckpointStats};
use crate::graph::{OperatorCounters, SubtaskSpec};
use crate::task::{CheckpointLink, JobShared, SubtaskActor, SubtaskArgs};
use crate::{Error, Result};

/// Live record counts of one operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorMetrics {
    /// The operator's name.
    pub name: String,
    /// Its parallelism.
    pub parallelism: usize,
    /// Records in, over all subtasks.
    pub records_in: u64,
    /// Records out, over all subtasks.
    pub records_out: u64,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job's id.
    pub job_id: String,
    /// The job's name.
    pub name: String,
    /// Wall time from start to the end of the last subtask.
    pub duration: Duration,
    /// Per operator record counts, in graph order.
    pub operators: Vec<OperatorMetrics>,
    /// Every checkpoint's statistics (the newest 1000).
    pub checkpoints: Vec<CheckpointStats>,
}

impl JobResult {
    /// The counts of the operator called `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorMetrics> {
        self.operators.iter().find(|o| o.name == name)
    }
}

pub(crate) struct OperatorInfo {
    pub name: String,
    pub parallelism: usize,
    pub counters: Arc<OperatorCounters>,
}

fn snapshot_metrics(ops: &[OperatorInfo]) -> Vec<OperatorMetrics> {
    ops.iter()
        .map(|o| OperatorMetrics {
            name: o.name.clone(),
            parallelism: o.parallelism,
            records_in: o.counters.records_in.load(Ordering::Relaxed),
            records_out: o.counters.records_out.load(Ordering::Relaxed),
        })
        .collect()
}

/// A running job.
pub struct JobHandle {
    pub(crate) job_id: String,
    pub(crate) name: String,
    pub(crate) started: Instant,
    pub(crate) operators: Arc<Vec<OperatorInfo>>,
    pub(crate) master: ActorRef<JobMsg>,
    pub(crate) done: oneshot::Receiver<Result<()>>,
    pub(crate) outcome: Option<Result<()>>,
    pub(crate) channels: Vec<crate::channel::WeakTx>,
    pub(crate) checkpoints: Arc<Mutex<Vec<CheckpointStats>>>,
    pub(crate) restored_from: Option<(std::path::PathBuf, u64)>,
    pub(crate) runtime: Arc<tokio::runtime::Runtime>,
}

impl JobHandle {
    /// The job's id (32 hex characters).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Current per-operator record counts.
    pub fn metrics(&self) -> Vec<OperatorMetrics> {
        snapshot_metrics(&self.operators)
    }

    /// Batches queued right now over all of the job's channels. Backpressure
    /// bounds it by `channels x taskmanager.network.memory.buffers-per-channel`.
    pub fn queued_batches(&self) -> usize {
        crate::channel::queued(&self.channels)
    }

    /// Statistics of every checkpoint so far (the newest 1000), oldest first.
    pub fn checkpoint_stats(&self) -> Vec<CheckpointStats> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The checkpoint directory and id this job was restored from.
    pub fn restored_from(&self) -> Option<&(std::path::PathBuf, u64)> {
        self.restored_from.as_ref()
    }

    /// Number of channels in the job.
    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    /// Time since the job started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Asks the job to stop; [`JobHandle::wait`] then returns [`Error::Cancelled`].
    pub fn cancel(&self) {
        let _ = self.master.cast(JobMsg::Cancel);
    }

    /// Whether the job has ended (finished, failed or cancelled).
    pub fn is_done(&mut self) -> bool {
        if self.outcome.is_none() {
            match self.done.try_recv() {
                Ok(r) => self.outcome = Some(r),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.outcome = Some(Err(Error::Internal(
                        "the job supervisor stopped without a result".into(),
                    )))
                }
            }
        }
        true
    }

    /// Blocks until the job ends. Call it from synchronous code (like
    /// `Env::execute`); from async code use [`JobHandle::wait_async`].
    pub fn wait(self) -> Result<JobResult> {
        let rt = self.runtime.clone();
        rt.block_on(self.wait_async())
    }

    /// Waits until the job ends.
    pub async fn wait_async(self) -> Result<JobResult> {
        let outcome = match self.outcome {
            Some(o) => o,
            None => self.done.await.unwrap_or_else(|_| {
                Err(Error::Internal(
                    "the job supervisor stopped without a result".into(),
                ))
            }),
        };
        let duration = self.started.elapsed();
        match outcome {
            Ok(()) => Ok(JobResult {
                job_id: self.job_id,
                name: self.name,
                duration,
                operators: snapshot_metrics(&self.operators),
                checkpoints: self
                    .checkpoints
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            }),
            Err(e @ Error::Cancelled(_)) => Err(e),
            Err(cause) => Err(Error::JobFailed {
                job: self.name,
                cause: Box::new(cause),
            }),
        }
    }
}

/// Control messages to the job supervisor.
pub(crate) enum JobMsg {
    Cancel,
}

pub(crate) struct JobMaster;

/// What the job supervisor needs to run checkpoints.
pub(crate) struct CheckpointSetup {
    pub cfg: CheckpointConfig,
    pub storage: CheckpointStorage,
    pub first_id: u64,
    pub stats: Arc<Mutex<Vec<CheckpointStats>>>,
}

pub(crate) struct JobArgs {
    pub name: String,
    pub job_id: String,
    pub specs: Vec<SubtaskSpec>,
    pub checkpoint: Option<CheckpointSetup>,
    pub done: oneshot::Sender<Result<()>>,
}

pub(crate) struct JobState {
    name: String,
    running: usize,
    failed: Option<String>,
    cancelled: bool,
    done: Option<oneshot::Sender<Result<()>>>,
    shared: Arc<JobShared>,
    coordinator: Option<ActorRef<CoordMsg>>,
    shutting_down: bool,
}

impl JobState {
    fn end_if_idle(&mut self, myself: &ActorRef<JobMsg>) {
        if self.running > 0 {
            return;
        }
        if let Some(c) = &self.coordinator {
            if !self.shutting_down {
                self.shutting_down = true;
                let end = if self.failed.is_some() {
                    JobEnd::Failed
                } else if self.cancelled {
                    JobEnd::Cancelled
                } else {
                    JobEnd::Finished
                };
                if c.cast(CoordMsg::Shutdown(end)).is_ok() {
                    // The outcome is sent when the coordinator has applied the retention policy.
                    return;
                }
            } else {
                return;
            }
        }
        let outcome = if let Some(fallback) = self.failed.take() {
            // The best cause is known only now: a root cause recorded by any
            // subtask wins over the disconnections it caused.
            Err(self
                .shared
                .take_failure()
                .unwrap_or_else(|| Error::Internal(format!("subtask actor failed: {fallback}"))))
        } else if self.cancelled {
            Err(Error::Cancelled(self.name.clone()))
        } else {
            Ok(())
        };
        if let Some(tx) = self.done.take() {
            let _ = tx.send(outcome);
        }
        myself.stop(None);
    }

    fn fail(&mut self, myself: &ActorRef<JobMsg>, err: String) {
        if self.failed.is_none() && !self.cancelled {
            tracing::error!(job = %self.name, error = %err, "job failed; stopping all subtasks");
            self.failed = Some(err);
            myself.stop_children_except(self.coordinator.as_ref());
        }
    }
}

trait StopChildren {
    fn stop_children_except(&self, keep: Option<&ActorRef<CoordMsg>>);
}

impl StopChildren for ActorRef<JobMsg> {
    fn stop_children_except(&self, keep: Option<&ActorRef<CoordMsg>>) {
        let keep = keep.map(|k| k.get_id());
        for child in self.get_children() {
            if Some(child.get_id()) != keep {
                child.stop(Some("job stopping".into()));
            }
        }
    }
}

impl Actor for JobMaster {
    type Msg = JobMsg;
    type State = JobState;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<JobState, ActorProcessingErr> {
        let shared = Arc::new(JobShared::default());
        let mut coordinator = None;
        let mut link = None;
        if let Some(cp) = args.checkpoint {
            let mode = cp.cfg.barrier_mode();
            let storage = cp.storage.clone();
            let (c, _) = Coordinator::spawn_linked(
                None,
                Coordinator,
                CoordinatorArgs {
                    cfg: cp.cfg,
                    job_id: args.job_id.clone(),
                    job_name: args.name.clone(),
                    storage: cp.storage,
                    first_id: cp.first_id,
                    stats: cp.stats,
                    shared: shared.clone(),
                },
                myself.get_cell(),
            )
            .await?;
            link = Some(CheckpointLink {
                coordinator: c.clone(),
                storage,
                mode,
            });
            coordinator = Some(c);
        }
        let mut tasks = Vec::with_capacity(args.specs.len());
        for spec in args.specs {
            let chain = spec.chain.clone();
            let is_source = matches!(spec.head, crate::graph::Head::Source { .. });
            let (actor, _) = SubtaskActor::spawn_linked(
                None,
                SubtaskActor,
                SubtaskArgs {
                    spec,
                    shared: shared.clone(),
                    checkpoint: link.clone(),
                },
                myself.get_cell(),
            )
            .await?;
            tasks.push(TaskRef {
                chain,
                is_source,
                actor,
            });
        }
        let running = tasks.len();
        if let Some(c) = &coordinator {
            c.cast(CoordMsg::Start(tasks))?;
        }
        Ok(JobState {
            name: args.name,
            running,
            failed: None,
            cancelled: false,
            done: Some(args.done),
            shared,
            coordinator,
            shutting_down: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<JobMsg>,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        state.end_if_idle(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        msg: JobMsg,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JobMsg::Cancel => {
                if state.failed.is_none() {
                    state.cancelled = true;
                }
                myself.stop_children_except(state.coordinator.as_ref());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<JobMsg>,
        evt: SupervisionEvent,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        let coordinator_id = state.coordinator.as_ref().map(|c| c.get_id());
        match evt {
            SupervisionEvent::ActorTerminated(cell, ..)
                if Some(cell.get_id()) == coordinator_id =>
            {
                state.coordinator = None;
            }
            SupervisionEvent::ActorFailed(cell, err) if Some(cell.get_id()) == coordinator_id => {
                state.coordinator = None;
                state.fail(&myself, err.to_string());
            }
            SupervisionEvent::ActorTerminated(..) => {
                state.running -= 1;
            }
            SupervisionEvent::ActorFailed(_, err) => {
                state.running -= 1;
                state.fail(&myself, err.to_string());
            }
            _ => {}
        }
        state.end_if_idle(&myself);
        Ok(())
    }
}
