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
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use crate::graph::{OperatorCounters, SubtaskSpec};
use crate::task::{JobShared, SubtaskActor};
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

pub(crate) struct JobArgs {
    pub name: String,
    pub specs: Vec<SubtaskSpec>,
    pub done: oneshot::Sender<Result<()>>,
}

pub(crate) struct JobState {
    name: String,
    running: usize,
    failure: Option<Error>,
    failed: Option<String>,
    cancelled: bool,
    done: Option<oneshot::Sender<Result<()>>>,
    shared: Arc<JobShared>,
}

impl JobState {
    fn end_if_idle(&mut self, myself: &ActorRef<JobMsg>) {
        if self.running > 0 {
            return;
        }
        if let Some(fallback) = self.failed.take() {
            // The best cause is known only now: a root cause recorded by any
            // subtask wins over the disconnections it caused.
            self.failure =
                Some(self.shared.take_failure().unwrap_or_else(|| {
                    Error::Internal(format!("subtask actor failed: {fallback}"))
                }));
        }
        let outcome = if let Some(e) = self.failure.take() {
            Err(e)
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
        let mut running = 0;
        for spec in args.specs {
            SubtaskActor::spawn_linked(
                None,
                SubtaskActor,
                (spec, shared.clone()),
                myself.get_cell(),
            )
            .await?;
            running += 1;
        }
        Ok(JobState {
            name: args.name,
            running,
            failure: None,
            failed: None,
            cancelled: false,
            done: Some(args.done),
            shared,
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
                state.cancelled = true;
                myself.stop_children(Some("cancelled".into()));
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
        match evt {
            SupervisionEvent::ActorTerminated(..) => {
                state.running -= 1;
            }
            SupervisionEvent::ActorFailed(_, err) => {
                state.running -= 1;
                if state.failed.is_none() && !state.cancelled {
                    tracing::error!(job = %state.name, error = %err, "subtask failed; stopping all subtasks");
                    state.failed = Some(err.to_string());
                    myself.stop_children(Some("job failed".into()));
                }
            }
            _ => {}
        }
        state.end_if_idle(&myself);
        Ok(())
    }
}
