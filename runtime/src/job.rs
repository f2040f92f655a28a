//! Running a job: the job supervisor actor, the [`JobHandle`] a client holds,
//! and the [`JobResult`] a finished job returns.
//!
//! The **job supervisor** (`JobMaster`) is a ractor actor that deploys one
//! [`crate::task`] per subtask through a task executor ([`crate::deploy`]:
//! in this process, an actor *linked* to the supervisor), and every
//! subtask's end reaches it once, as a `SubtaskEnded`:
//! - every subtask terminated normally: the job finished;
//! - a subtask failed (user code returned an error or panicked) or was
//!   killed: the restart strategy ([`crate::restart`]) decides between
//!   restarting its region (or, with `jobmanager.execution.failover-strategy:
//!   full`, every subtask) from the latest completed checkpoint, and failing
//!   the job with that operator's name and message, all subtasks stopped;
//! - a cancel request stops every subtask and the job ends as cancelled.
//!
//! Records are counted per operator and subtask in [`OperatorCounters`] (one
//! relaxed atomic add per batch, not per record) so a client can print
//! progress while the job runs ([`JobHandle::metrics`],
//! [`JobHandle::metrics_snapshot`], see [`crate::metrics`]).
//!
//! What readers share lives in a `JobCore` (the handle, the process's
//! [`crate::registry`] and the REST server hold it): counters, checkpoint
//! statistics, and the job's `Lifecycle` (its [`JobStatus`] and when each
//! status began, its failures and restores; defined in `lifecycle.rs` and
//! re-exported here), which the supervisor writes. The metrics read the core
//! through a borrowed view (`metrics::JobView`, built by `JobCore`), so
//! [`crate::metrics`] does not import this module.
//!
//! Failovers (started, old subtasks stopped, restoring, deployed) are
//! reported to the job's observers (`JobShared::observers`); the supervisor
//! does not know that telemetry is one of them. Only the [`JobHandle`] keeps
//! the job's [`crate::telemetry::Telemetry`] itself, as the builder gave it,
//! for [`JobHandle::telemetry_stats`] and the final flush when the job ends.
//! Requests from outside (kill a subtask, trigger a checkpoint now, cancel)
//! are messages to the supervisor; a checkpoint request is forwarded to the
//! coordinator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use crate::cancellation::{CancellationConfig, CancellationWatch, Verdict};
use crate::checkpoint::storage::CheckpointStorage;
use crate::checkpoint::{CheckpointConfig, CheckpointStats};
use crate::cluster::jobmanager::ClusterExecutor;
use crate::coordinator::{CoordMsg, Coordinator, CoordinatorArgs, JobEnd};
use crate::deploy::{LocalExecutor, SubtaskEnded, TaskExecutor};
use crate::graph::{OperatorCounters, SubtaskSpec};
use crate::job_shared::JobShared;
pub(crate) use crate::lifecycle::Lifecycle;
pub use crate::lifecycle::{FailureRecord, JobStatus, RestoreRecord};
use crate::metrics::{JobMetrics, JobView, MetricSource, OperatorInfo};
use crate::observer::FailoverObserver;
use crate::task::CheckpointLink;
use crate::{Error, KillError, Result};

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
    /// Records the operator received but could not use, over all subtasks
    /// (Flink's `numRecordsInErrors`).
    pub records_in_errors: u64,
    /// The smallest input watermark over its subtasks (Flink's
    /// `currentInputWatermark`; `i64::MIN` before every subtask had one).
    pub current_input_watermark: i64,
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
    /// How often the job (or one of its regions) was restarted after a failure.
    pub restarts: u64,
}

impl JobResult {
    /// The counts of the operator called `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorMetrics> {
        self.operators.iter().find(|o| o.name == name)
    }
}

fn snapshot_metrics(ops: &[OperatorInfo]) -> Vec<OperatorMetrics> {
    ops.iter()
        .map(|o| OperatorMetrics {
            name: o.name.clone(),
            parallelism: o.parallelism,
            records_in: o.counters.records_in(),
            records_out: o.counters.records_out(),
            records_in_errors: o.counters.records_in_errors(),
            current_input_watermark: o.counters.input_watermark(),
        })
        .collect()
}

/// Everything readers of a job share: the handle, the process's job
/// registry ([`crate::registry`]) and the REST server. Readers take
/// snapshots of atomics and short locks; none of them slows the job.
pub(crate) struct JobCore {
    pub job_id: String,
    pub name: String,
    pub started: Instant,
    /// Start time, ms since the epoch.
    pub start_ms: u64,
    pub operators: Vec<OperatorInfo>,
    pub plan: crate::graph::JobPlan,
    pub master: ActorRef<JobMsg>,
    pub channels: Arc<Mutex<Vec<crate::exchange::ChannelWatch>>>,
    /// Time accounting per subtask (index among all subtasks), kept across restarts.
    pub io: Vec<Arc<crate::metrics::SubtaskIo>>,
    pub restarts: Arc<AtomicU64>,
    pub region_restarts: Arc<Vec<AtomicU64>>,
    pub last_failure: Arc<Mutex<Option<(std::time::SystemTime, String)>>>,
    pub regions: Vec<Vec<String>>,
    pub checkpoints: Arc<Mutex<Vec<CheckpointStats>>>,
    pub counts: Arc<crate::checkpoint::CheckpointCounts>,
    pub checkpoint_cfg: Option<CheckpointConfig>,
    pub conf: crate::config::Conf,
    pub restored_from: Option<(std::path::PathBuf, u64)>,
    pub lifecycle: Arc<Lifecycle>,
    /// Rates computed by the metrics sampler once a second.
    pub rates: Mutex<crate::metrics::Rates>,
    /// Checkpoints, savepoints, stops and cancels requested over REST, and
    /// whether their results were read ([`crate::operations`]).
    pub operations: crate::operations::JobOperations,
    /// Cluster mode (this process is the JobManager): the TaskManagers.
    pub cluster: Option<Arc<crate::cluster::jobmanager::ClusterManager>>,
}

impl MetricSource for JobCore {
    fn view(&self) -> JobView<'_> {
        JobView {
            job_id: &self.job_id,
            job_name: &self.name,
            started: self.started,
            lifecycle: &self.lifecycle,
            operators: &self.operators,
            plan: &self.plan,
            channels: &self.channels,
            io: &self.io,
            restarts: &self.restarts,
            checkpoints: &self.checkpoints,
            counts: &self.counts,
            rates: &self.rates,
        }
    }
}

impl JobCore {
    /// Every metric of the job, now.
    pub(crate) fn metrics(&self) -> JobMetrics {
        JobMetrics::of(&self.view())
    }

    pub(crate) fn checkpoint_stats(&self) -> Vec<CheckpointStats> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn status(&self) -> JobStatus {
        self.lifecycle.status()
    }

    /// Triggers a checkpoint now (outside the interval); returns its id once triggered.
    pub(crate) async fn trigger_checkpoint(&self) -> std::result::Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        self.master
            .cast(JobMsg::TriggerCheckpoint(tx))
            .map_err(|_| "the job has ended".to_string())?;
        rx.await.map_err(|_| "the job has ended".to_string())?
    }

    /// Takes a savepoint into `target` (else `execution.checkpointing.savepoint-dir`);
    /// with `stop: Some(drain)` the job then stops (see [`JobHandle::stop_with_savepoint`]).
    /// Returns the savepoint's directory once it is complete.
    pub(crate) async fn savepoint(
        &self,
        target: Option<&std::path::Path>,
        stop: Option<bool>,
    ) -> std::result::Result<std::path::PathBuf, crate::SavepointError> {
        let target = self.savepoint_target(target)?;
        let (tx, rx) = oneshot::channel();
        let req = crate::coordinator::SavepointRequest {
            target,
            stop,
            reply: tx,
        };
        self.master
            .cast(JobMsg::TriggerSavepoint(req))
            .map_err(|_| crate::SavepointError::NotRunning("it has ended".into()))?;
        rx.await
            .map_err(|_| crate::SavepointError::NotRunning("it has ended".into()))?
    }

    /// Checks that a savepoint can be requested now; returns its absolute target directory.
    pub(crate) fn savepoint_target(
        &self,
        target: Option<&std::path::Path>,
    ) -> std::result::Result<std::path::PathBuf, crate::SavepointError> {
        use crate::SavepointError;
        let target = match target {
            Some(t) if !t.as_os_str().is_empty() => t.to_path_buf(),
            _ => {
                let d = self.conf.get(&crate::config::options::SAVEPOINT_DIR);
                if d.trim().is_empty() {
                    return Err(SavepointError::NoTargetDirectory);
                }
                std::path::PathBuf::from(d.trim())
            }
        };
        // The path reported to the user is absolute (the process's working directory may differ from theirs).
        let target = std::path::absolute(&target).unwrap_or(target);
        if self.checkpoint_cfg.is_none() {
            return Err(SavepointError::CheckpointingDisabled);
        }
        if self.cluster.is_some() {
            // A TaskManager's subtasks write a checkpoint's files where the
            // JobManager's storage routes them only in this process.
            return Err(SavepointError::Unsupported(
                "in cluster mode yet (execution.target: cluster): the job's checkpoints are retained and restorable with -s".into(),
            ));
        }
        let status = self.status();
        if status.is_terminal() {
            return Err(SavepointError::NotRunning(status.as_str().into()));
        }
        Ok(target)
    }

    /// Kills a subtask (see [`JobHandle::kill_subtask`]).
    pub(crate) async fn kill_subtask(
        &self,
        operator: &str,
        index: usize,
    ) -> std::result::Result<(), KillError> {
        let (tx, rx) = oneshot::channel();
        self.master
            .cast(JobMsg::Kill {
                operator: operator.to_string(),
                index,
                reply: tx,
            })
            .map_err(|_| KillError::Ended)?;
        rx.await.map_err(|_| KillError::Ended)?
    }

    pub(crate) fn cancel(&self) {
        if !self.status().is_terminal() {
            self.lifecycle.set_status(JobStatus::Cancelling);
        }
        if let Some(c) = &self.cluster {
            // The supervisor may be waiting for slots: that wait ends now.
            c.cancel();
        }
        let _ = self.master.cast(JobMsg::Cancel);
    }
}

/// A running job.
pub struct JobHandle {
    pub(crate) core: Arc<JobCore>,
    pub(crate) done: oneshot::Receiver<Result<()>>,
    pub(crate) outcome: Option<Result<()>>,
    pub(crate) runtime: Arc<tokio::runtime::Runtime>,
    /// The job's telemetry as [`crate::stream`] built it, for
    /// [`JobHandle::telemetry_stats`] and the final flush when the job ends
    /// (the job's events reach it as one of its observers, not from here).
    pub(crate) telemetry: Option<crate::telemetry::Telemetry>,
    pub(crate) rest: Option<std::net::SocketAddr>,
}

impl JobHandle {
    /// The job's id (32 hex characters).
    pub fn job_id(&self) -> &str {
        &self.core.job_id
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The job's status now.
    pub fn status(&self) -> JobStatus {
        self.core.status()
    }

    /// Where the process's REST server (and web UI) listens, when
    /// `rest.enabled` started one.
    pub fn rest_address(&self) -> Option<std::net::SocketAddr> {
        self.rest
    }

    /// Current per-operator record counts.
    pub fn metrics(&self) -> Vec<OperatorMetrics> {
        snapshot_metrics(&self.core.operators)
    }

    /// Every metric of the job now (Flink's names; see [`crate::metrics`]):
    /// checkpoint counts and sizes, restarts, records and rates per operator
    /// and subtask, back pressure and channel occupancy per subtask.
    pub fn metrics_snapshot(&self) -> crate::metrics::JobMetrics {
        self.core.metrics()
    }

    /// Batches queued right now over all of the job's channels. Backpressure
    /// bounds it by `channels x taskmanager.network.memory.buffers-per-channel`.
    pub fn queued_batches(&self) -> usize {
        crate::exchange::queued(&self.core.channels.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// When the last failure happened and what it was.
    pub fn last_failure(&self) -> Option<(std::time::SystemTime, String)> {
        self.core
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every failure so far (the newest 100), oldest first.
    pub fn failures(&self) -> Vec<FailureRecord> {
        self.core.lifecycle.failures().0
    }

    /// Restarts per failover region, in the order of [`crate::graph::JobPlan::regions`].
    pub fn region_restarts(&self) -> Vec<u64> {
        self.core
            .region_restarts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The failover regions: the subtask names of each.
    pub fn regions(&self) -> &[Vec<String>] {
        &self.core.regions
    }

    /// How often the job was restarted after a failure (Flink's `numRestarts`).
    pub fn num_restarts(&self) -> u64 {
        self.core.restarts.load(Ordering::Relaxed)
    }

    /// Kills subtask `index` of the operator called `operator` (its chain's
    /// actor): a failure on purpose. The job restarts from its latest
    /// completed checkpoint as the restart strategy allows.
    pub fn kill_subtask(&self, operator: &str, index: usize) -> Result<()> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::User(
                "kill_subtask blocks: call it outside async code".into(),
            ));
        }
        Ok(self
            .runtime
            .block_on(self.core.kill_subtask(operator, index))?)
    }

    /// Triggers a checkpoint now, outside the interval (after the one in
    /// flight, if any); returns its id. Follow it in
    /// [`JobHandle::checkpoint_stats`].
    pub fn trigger_checkpoint(&self) -> Result<u64> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::User(
                "trigger_checkpoint blocks: call it outside async code".into(),
            ));
        }
        self.runtime
            .block_on(self.core.trigger_checkpoint())
            .map_err(Error::User)
    }

    /// Takes a savepoint and waits until it is complete; returns its
    /// directory, `<target>/savepoint-<job id prefix>-<random>` (`target`:
    /// this directory, else `execution.checkpointing.savepoint-dir`).
    ///
    /// A savepoint is an aligned checkpoint (even when the job runs
    /// unaligned or at-least-once) whose state is in the canonical,
    /// backend-independent form: it restores (`execution.state-recovery.path`)
    /// at any parallelism, on either state backend, from wherever the
    /// directory is moved. Two-phase-commit sinks commit on it as on a
    /// checkpoint. It is never deleted by weir and never used for failover.
    /// Errors: [`crate::SavepointError`] (no directory, checkpointing off,
    /// job not running, savepoint declined or expired).
    pub fn trigger_savepoint(
        &self,
        target: Option<&std::path::Path>,
    ) -> Result<std::path::PathBuf> {
        self.block_on_savepoint(target, None)
    }

    /// Flink's `stop`: takes a savepoint, after whose barrier the sources
    /// emit nothing; once it is complete the sources end and the job ends
    /// `FINISHED` (its final checkpoint commits nothing new). Returns the
    /// savepoint's directory once the savepoint is complete; [`JobHandle::wait`]
    /// then returns when the job has finished.
    ///
    /// `drain: false` (the default of `weir stop`): nothing ends event
    /// time: no `MAX_WATERMARK`, no operator's `finish`, so a restore from the
    /// savepoint continues exactly where the job stopped. `drain: true`:
    /// the sources emit `MAX_WATERMARK` right before the savepoint's barrier
    /// (every event-time timer and window fires into the savepoint) and the
    /// job then ends as at the end of its input (operators finish); use it
    /// when the job is not meant to be resumed. If the savepoint fails the
    /// job goes on running and the error is returned.
    pub fn stop_with_savepoint(
        &self,
        target: Option<&std::path::Path>,
        drain: bool,
    ) -> Result<std::path::PathBuf> {
        self.block_on_savepoint(target, Some(drain))
    }

    /// Takes a savepoint, then cancels the job (Flink's deprecated
    /// cancel-with-savepoint; the job ends `CANCELED`). Prefer
    /// [`JobHandle::stop_with_savepoint`]: output after the savepoint is not
    /// committed here and is produced again by a job restored from it.
    pub fn cancel_with_savepoint(
        &self,
        target: Option<&std::path::Path>,
    ) -> Result<std::path::PathBuf> {
        let path = self.trigger_savepoint(target)?;
        self.cancel();
        Ok(path)
    }

    fn block_on_savepoint(
        &self,
        target: Option<&std::path::Path>,
        stop: Option<bool>,
    ) -> Result<std::path::PathBuf> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::User(
                "savepoints block until complete: call this outside async code".into(),
            ));
        }
        Ok(self.runtime.block_on(self.core.savepoint(target, stop))?)
    }

    /// Statistics of every checkpoint so far (the newest 1000), oldest first.
    pub fn checkpoint_stats(&self) -> Vec<CheckpointStats> {
        self.core.checkpoint_stats()
    }

    /// The checkpoint directory and id this job was restored from.
    pub fn restored_from(&self) -> Option<&(std::path::PathBuf, u64)> {
        self.core.restored_from.as_ref()
    }

    /// Number of channels in the job.
    pub fn num_channels(&self) -> usize {
        self.core
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// What the trace and metric export have done so far; `None` when telemetry is off.
    pub fn telemetry_stats(&self) -> Option<crate::telemetry::ExportStats> {
        self.telemetry.as_ref().map(|t| t.stats())
    }

    /// Time since the job started.
    pub fn elapsed(&self) -> Duration {
        self.core.started.elapsed()
    }

    /// Cluster mode (this process is the JobManager): the TaskManagers
    /// registered now, with their slots and the subtasks they run; empty
    /// for a job that runs in this process.
    pub fn taskmanagers(&self) -> Vec<crate::cluster::jobmanager::TaskManagerInfo> {
        self.core
            .cluster
            .as_ref()
            .map(|c| c.taskmanagers())
            .unwrap_or_default()
    }

    /// Asks the job to stop; [`JobHandle::wait`] then returns [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.core.cancel();
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
        let core = self.core;
        let duration = core.started.elapsed();
        linger_for_results(&core).await;
        if let Some(t) = self.telemetry {
            // Bounded by otel.flush-timeout: a slow collector never holds the result up long.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        match outcome {
            Ok(()) => Ok(JobResult {
                job_id: core.job_id.clone(),
                name: core.name.clone(),
                duration,
                operators: snapshot_metrics(&core.operators),
                checkpoints: core.checkpoint_stats(),
                restarts: core.restarts.load(Ordering::Relaxed),
            }),
            Err(e @ Error::Cancelled(_)) => Err(e),
            Err(cause) => Err(Error::JobFailed {
                job: core.name.clone(),
                cause: Box::new(cause),
            }),
        }
    }
}

/// The job has ended: keeps the process (and so its REST server) up while a
/// client has not yet read the result of what it asked over REST, at most
/// `rest.async.result-linger` ([`crate::operations`]).
async fn linger_for_results(core: &JobCore) {
    let limit = core.conf.get(&crate::config::options::REST_RESULT_LINGER);
    let ended = Instant::now();
    let unread = core.operations.unread();
    if !crate::operations::linger(unread, Duration::ZERO, limit) {
        return;
    }
    tracing::info!(job = %core.name, unread, "the job ended; the REST server answers until the results asked for are read");
    while crate::operations::linger(core.operations.unread(), ended.elapsed(), limit) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unread = core.operations.unread();
    if unread > 0 {
        tracing::warn!(job = %core.name, unread, "rest.async.result-linger ({limit:?}) passed with results no client read");
    }
}

/// Control messages to the job supervisor.
pub(crate) enum JobMsg {
    Cancel,
    /// Kill subtask `index` of the chain that holds `operator` (a failure on purpose).
    Kill {
        operator: String,
        index: usize,
        reply: oneshot::Sender<std::result::Result<(), KillError>>,
    },
    /// Start the next attempt once the previous one has fully stopped.
    Restart,
    /// Restart one region once its subtasks have fully stopped.
    RestartRegion(usize),
    /// `chaos.kill-interval` elapsed: kill a random target subtask.
    ChaosKill,
    /// Trigger a checkpoint now; the reply is its id once triggered.
    TriggerCheckpoint(oneshot::Sender<std::result::Result<u64, String>>),
    /// Take a savepoint (or stop with one); the reply comes when it is complete.
    TriggerSavepoint(crate::coordinator::SavepointRequest),
}

pub(crate) struct JobMaster;

/// What the job supervisor needs to run checkpoints.
pub(crate) struct CheckpointSetup {
    pub cfg: CheckpointConfig,
    pub storage: CheckpointStorage,
    pub first_id: u64,
    pub stats: Arc<Mutex<Vec<CheckpointStats>>>,
    pub counts: Arc<crate::checkpoint::CheckpointCounts>,
}

/// How often and when a failed job is restarted (`restart-strategy.*`,
/// see [`crate::restart`]), and what restarts
/// (`jobmanager.execution.failover-strategy`).
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    pub strategy: crate::restart::RestartStrategy,
    /// Seed of the exponential-delay jitter.
    pub seed: u64,
    /// Restart only the failed region (else the whole job).
    pub region: bool,
}

pub(crate) struct JobArgs {
    pub name: String,
    pub job_id: String,
    pub graph: crate::graph::StreamGraph,
    pub plan: crate::graph::JobPlan,
    pub conf: crate::config::Conf,
    pub counters: Vec<Arc<OperatorCounters>>,
    pub channels: Arc<Mutex<Vec<crate::exchange::ChannelWatch>>>,
    pub restore: Option<Vec<Vec<crate::checkpoint::SubtaskRestore>>>,
    /// The checkpoint the job was started from (`-s`), for restarts before its own first checkpoint.
    pub restored_from: Option<std::path::PathBuf>,
    /// `CLAIM` mode: the restored checkpoint this job owns (deleted once subsumed).
    pub claimed: Option<std::path::PathBuf>,
    pub checkpoint: Option<CheckpointSetup>,
    pub restart: Failover,
    pub restarts: Arc<AtomicU64>,
    pub region_restarts: Arc<Vec<AtomicU64>>,
    pub last_failure: Arc<Mutex<Option<(std::time::SystemTime, String)>>>,
    pub io: Vec<Arc<crate::metrics::SubtaskIo>>,
    pub lifecycle: Arc<Lifecycle>,
    pub done: oneshot::Sender<Result<()>>,
    /// Who is told about the job's checkpoints and failovers.
    pub observers: crate::observer::Observers,
    /// Cluster mode (the JobManager): the TaskManagers' sessions; subtasks
    /// run there instead of in this process.
    pub cluster: Option<Arc<crate::cluster::jobmanager::ClusterManager>>,
}

/// Checkpointing settings, storage and statistics of a job, kept across attempts.
type CheckpointParts = (
    CheckpointConfig,
    CheckpointStorage,
    Arc<Mutex<Vec<CheckpointStats>>>,
);

pub(crate) struct JobState {
    name: String,
    job_id: String,
    graph: crate::graph::StreamGraph,
    plan: crate::graph::JobPlan,
    conf: crate::config::Conf,
    counters: Vec<Arc<OperatorCounters>>,
    channels: Arc<Mutex<Vec<crate::exchange::ChannelWatch>>>,
    restored_from: Option<std::path::PathBuf>,
    claimed: Option<std::path::PathBuf>,
    checkpoint: Option<CheckpointParts>,
    counts: Option<Arc<crate::checkpoint::CheckpointCounts>>,
    io: Vec<Arc<crate::metrics::SubtaskIo>>,
    lifecycle: Arc<Lifecycle>,
    /// Restart only the failed region (else the whole job).
    region_failover: bool,
    /// The restart strategy's decisions so far.
    tracker: crate::restart::RestartTracker,
    /// Origin of the failure times given to `tracker`.
    epoch: std::time::Instant,
    /// Why the restart strategy gave up, once it has.
    gave_up: Option<String>,
    /// When the pending full restart may start (the strategy's delay).
    restart_at: std::time::Instant,
    restarts: Arc<AtomicU64>,
    region_restarts: Arc<Vec<AtomicU64>>,
    last_failure: Arc<Mutex<Option<(std::time::SystemTime, String)>>>,
    /// `chaos.*`: random state and the candidate subtasks (operator name, subtask).
    chaos_rng: u64,
    chaos_targets: Vec<(String, usize)>,
    /// `chaos.kill-interval`, and since when the job has run without a kill
    /// or a recovery: the next kill comes only a whole interval after that,
    /// so recovery always gets the interval to run (and to checkpoint).
    chaos_every: Duration,
    chaos_quiet_since: std::time::Instant,
    /// `chaos.wait-for-checkpoint`: the completed-checkpoint count at the
    /// last kill or recovery, which must have grown before the next kill.
    chaos_wait_for_checkpoint: bool,
    chaos_completed_base: u64,
    /// `chaos.wait-for-checkpoint`: which step of [`JobState::chaos_due`] the next kill waits for.
    chaos_phase: u8,
    /// Subtask indices per pipelined region, and each subtask's region.
    regions: Vec<Vec<usize>>,
    region_of: Vec<usize>,
    /// Live subtask actors per region.
    region_running: Vec<usize>,
    /// Regions being restarted, with the failure and when the restart may start.
    regions_recovering: std::collections::BTreeMap<usize, (String, std::time::Instant)>,
    /// `task.cancellation.*`, and one watch per wait for stopped subtasks
    /// (key: the region, `None` for a full restart), see [`crate::cancellation`].
    cancellation: CancellationConfig,
    cancel_watches: std::collections::BTreeMap<Option<usize>, CancellationWatch>,
    /// Where the subtasks run ([`crate::deploy`]).
    executor: Executor,
    running: usize,
    failed: Option<String>,
    /// A failure is being recovered from: the attempt is stopping.
    recovering: Option<String>,
    cancelled: bool,
    done: Option<oneshot::Sender<Result<()>>>,
    shared: Arc<JobShared>,
    coordinator: Option<ActorRef<CoordMsg>>,
    shutting_down: bool,
}

impl JobState {
    /// Spawns the coordinator and every subtask of one attempt.
    async fn start_attempt(
        &mut self,
        myself: &ActorRef<JobMsg>,
        restore: Option<Vec<Vec<crate::checkpoint::SubtaskRestore>>>,
        first_id: u64,
        latest: Option<u64>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let mut link = None;
        if let Some((cfg, storage, stats)) = &self.checkpoint {
            let (c, _) = Coordinator::spawn_linked(
                None,
                Coordinator,
                CoordinatorArgs {
                    cfg: cfg.clone(),
                    job_id: self.job_id.clone(),
                    job_name: self.name.clone(),
                    storage: storage.clone(),
                    first_id,
                    latest,
                    stats: stats.clone(),
                    counts: self.counts.clone().unwrap_or_default(),
                    shared: self.shared.clone(),
                    claimed: self.claimed.clone(),
                },
                myself.get_cell(),
            )
            .await?;
            link = Some(CheckpointLink {
                coordinator: c.clone(),
                storage: storage.clone(),
                mode: cfg.barrier_mode(),
            });
            self.coordinator = Some(c);
        }
        let restoring = restore.is_some();
        let (specs, channels) = self.instantiate(restore)?;
        *self.channels.lock().unwrap_or_else(|p| p.into_inner()) = channels;
        if let Executor::Cluster(c) = &self.executor {
            // The TaskManagers restore from the directory the attempt restores.
            let dir = restoring
                .then(|| self.lifecycle.restores().0.map(|r| r.path))
                .flatten();
            c.cm.set_coordinator(self.coordinator.clone());
            c.cm.deploy_generation(dir).await?;
        }
        let mut refs = Vec::with_capacity(specs.len());
        for spec in specs {
            let (index, task) = self
                .executor
                .deploy(&myself.get_cell(), spec, &self.shared, &link)
                .await?;
            debug_assert_eq!(index, refs.len());
            refs.push(task);
        }
        self.running = refs.len();
        self.region_running = self.regions.iter().map(Vec::len).collect();
        if let Some(c) = &self.coordinator {
            c.cast(CoordMsg::Start(refs))?;
        }
        Ok(())
    }

    /// Every subtask of the plan with fresh channels, restored from `restore`.
    fn instantiate(
        &self,
        restore: Option<Vec<Vec<crate::checkpoint::SubtaskRestore>>>,
    ) -> Result<(Vec<SubtaskSpec>, Vec<crate::exchange::ChannelWatch>)> {
        let mut channels = Vec::new();
        let generation = self
            .checkpoint
            .as_ref()
            .and_then(|(_, storage, _)| storage.leadership().map(|l| l.generation()))
            .unwrap_or(0);
        let specs = crate::graph::instantiate(
            &self.graph,
            &self.plan,
            &self.conf,
            &self.job_id,
            &crate::ha::run_id(&self.job_id, generation),
            crate::graph::Instruments {
                counters: &self.counters,
                io: &self.io,
            },
            &mut channels,
            restore,
            None,
        )?;
        Ok((specs, channels))
    }

    /// Spawns the subtasks of region `r` again, restored from the newest
    /// checkpoint; returns its id when it is one of this job's.
    async fn restart_region(
        &mut self,
        myself: &ActorRef<JobMsg>,
        r: usize,
    ) -> std::result::Result<Option<u64>, ActorProcessingErr> {
        // The coordinator, not a directory listing, says which checkpoint is
        // the latest: a `_metadata` write in flight when the region failed
        // may land after a listing, and its sinks may have committed already.
        let latest = match &self.coordinator {
            Some(c) => ractor::call_t!(c, CoordMsg::LatestCompleted, 10_000)
                .map_err(|e| format!("checkpoint coordinator did not answer: {e}"))?,
            None => None,
        };
        let (restore, restored) = match latest {
            Some(id) => (Some(self.restore_from(id)?), Some(id)),
            None => {
                let (restore, _, own) = self.restore_point()?;
                (restore, own)
            }
        };
        let link = match (&self.checkpoint, &self.coordinator) {
            (Some((cfg, storage, _)), Some(c)) => Some(CheckpointLink {
                coordinator: c.clone(),
                storage: storage.clone(),
                mode: cfg.barrier_mode(),
            }),
            _ => None,
        };
        // The other regions' specs (and their channels) are dropped unused.
        let (specs, watches) = self.instantiate(restore)?;
        let members = self.regions[r].clone();
        let specs: Vec<SubtaskSpec> = specs
            .into_iter()
            .filter(|s| members.contains(&s.task_index))
            .collect();
        {
            // The region's new channels replace its old ones in the watch list.
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels.retain(|w| w.is_alive());
            channels.extend(watches.into_iter().filter(|w| w.is_alive()));
        }
        let mut refs = Vec::new();
        for spec in specs {
            let (index, task) = self
                .executor
                .deploy(&myself.get_cell(), spec, &self.shared, &link)
                .await?;
            refs.push((index, task));
        }
        self.running += refs.len();
        self.region_running[r] = refs.len();
        if let Some(c) = &self.coordinator {
            c.cast(CoordMsg::RegionUp(refs))?;
        }
        Ok(restored)
    }

    /// Checkpoints completed since the job started.
    fn completed_checkpoints(&self) -> u64 {
        self.counts
            .as_ref()
            .map_or(0, |c| c.completed.load(Ordering::Relaxed))
    }

    /// A kill or a recovery: chaos waits a whole interval (and, with
    /// `chaos.wait-for-checkpoint`, completed checkpoints) before the next kill.
    fn chaos_quiet(&mut self) {
        self.chaos_quiet_since = std::time::Instant::now();
        self.chaos_completed_base = self.completed_checkpoints();
        self.chaos_phase = 0;
    }

    /// Whether the next chaos kill is due. Without `chaos.wait-for-checkpoint`:
    /// a whole interval since the last kill or recovery. With it, three steps,
    /// so every kill leaves at least an interval of progress checkpointed:
    /// a checkpoint completes (the restored subtasks run: each acknowledged
    /// it), then a whole interval passes, then one more checkpoint completes.
    fn chaos_due(&mut self) -> bool {
        if !self.chaos_wait_for_checkpoint {
            return self.chaos_quiet_since.elapsed() >= self.chaos_every;
        }
        let done = self.completed_checkpoints();
        match self.chaos_phase {
            0 => {
                if done > self.chaos_completed_base {
                    self.chaos_phase = 1;
                    self.chaos_quiet_since = std::time::Instant::now();
                }
                false
            }
            1 => {
                if self.chaos_quiet_since.elapsed() >= self.chaos_every {
                    self.chaos_phase = 2;
                    self.chaos_completed_base = done;
                }
                false
            }
            _ => done > self.chaos_completed_base,
        }
    }

    fn end_if_idle(&mut self, myself: &ActorRef<JobMsg>) {
        for (r, _) in self.regions_recovering.iter() {
            if self.region_running[*r] == 0 {
                let _ = myself.cast(JobMsg::RestartRegion(*r));
            }
        }
        if !self.regions_recovering.is_empty() {
            return;
        }
        if self.running > 0 {
            return;
        }
        if self.recovering.is_some() {
            // Restart when the old attempt has fully stopped (its loops included).
            if let Some(c) = &self.coordinator {
                c.stop(Some("restarting".into()));
                return;
            }
            let _ = myself.cast(JobMsg::Restart);
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
        if self.failed.is_some() {
            self.clean_up_after_failure();
        }
        let outcome = if let Some(fallback) = self.failed.take() {
            // The best cause is known only now: a root cause recorded by any
            // subtask wins over the disconnections it caused.
            let cause = self
                .shared
                .take_failure()
                .unwrap_or_else(|| Error::Internal(format!("subtask actor failed: {fallback}")));
            let n = self.restarts.load(Ordering::Relaxed);
            // A strategy that may restart says why it stopped; so does
            // `none` when it was chosen for the user (not set, no
            // checkpointing): they did not ask for it.
            let explain = self.tracker.may_restart()
                || matches!(
                    self.tracker.strategy(),
                    crate::restart::RestartStrategy::None { defaulted: true }
                );
            if let (Some(reason), true) = (self.gave_up.take(), explain) {
                Err(Error::RestartsExhausted {
                    restarts: n,
                    strategy: reason,
                    cause: Box::new(cause),
                })
            } else {
                Err(cause)
            }
        } else if self.cancelled {
            Err(Error::Cancelled(self.name.clone()))
        } else {
            Ok(())
        };
        self.lifecycle.set_status(match &outcome {
            Ok(()) => JobStatus::Finished,
            Err(Error::Cancelled(_)) => JobStatus::Canceled,
            Err(_) => JobStatus::Failed,
        });
        if let Executor::Cluster(c) = &self.executor {
            match &outcome {
                Ok(()) => c.cm.job_ended(0, "finished"),
                Err(e) => c.cm.job_ended(1, &e.to_string()),
            }
        }
        if let Some(tx) = self.done.take() {
            let _ = tx.send(outcome);
        }
        myself.stop(None);
    }

    fn fail(&mut self, err: String, task: Option<usize>) {
        if self.failed.is_some() || self.cancelled || self.recovering.is_some() {
            return;
        }
        if task.is_none_or(|t| !self.regions_recovering.contains_key(&self.region_of[t])) {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::SystemTime::now(), err.clone()));
        }
        let region = task.map(|t| self.region_of[t]);
        if let (true, Some(r)) = (self.region_failover, region) {
            if self.regions_recovering.contains_key(&r) {
                return; // a consequence of the failure being recovered
            }
        }
        let decision = self.tracker.on_failure(self.epoch.elapsed());
        let delay = match decision {
            crate::restart::RestartDecision::Restart { delay } => Some(delay),
            crate::restart::RestartDecision::GiveUp { reason } => {
                self.gave_up = Some(reason);
                None
            }
        };
        if delay.is_some() && !self.shared.observers.is_empty() {
            let r = region.filter(|_| self.region_failover);
            let members: Vec<usize> = match r {
                Some(r) => self.regions[r].clone(),
                None => (0..self.plan.num_subtasks()).collect(),
            };
            let failed = task.map(|t| self.plan.subtask_name(t));
            let n = self.restarts.load(Ordering::Relaxed) + 1;
            self.shared
                .observers
                .failover_started(r, &members, failed.as_deref(), &err, n);
        }
        self.lifecycle.record_failure(FailureRecord {
            timestamp: crate::checkpoint::now_ms(),
            message: err.clone(),
            task: task.map(|t| self.plan.subtask_name(t)),
            action: match (self.region_failover, region, delay) {
                (_, _, None) => "job failed".to_string(),
                (true, Some(r), Some(_)) => format!("region {r} restart"),
                _ => "full restart".to_string(),
            },
        });
        if let (true, Some(r), Some(delay)) = (self.region_failover, region, delay) {
            tracing::warn!(job = %self.name, error = %err, region = r, ?delay, "subtask failed; restarting its region from the latest checkpoint");
            self.regions_recovering
                .insert(r, (err, std::time::Instant::now() + delay));
            self.cancel_watches
                .insert(Some(r), CancellationWatch::new(std::time::Instant::now()));
            for &t in &self.regions[r] {
                self.executor.stop(t, "region restarting");
            }
            if let Some(c) = &self.coordinator {
                let _ = c.cast(CoordMsg::RegionDown(self.regions[r].clone()));
            }
            return;
        }
        if let Some(delay) = delay {
            tracing::warn!(job = %self.name, error = %err, ?delay, "subtask failed; restarting the job from its latest checkpoint");
            self.lifecycle.set_status(JobStatus::Restarting);
            self.recovering = Some(err);
            self.restart_at = std::time::Instant::now() + delay;
            self.cancel_watches
                .insert(None, CancellationWatch::new(std::time::Instant::now()));
            self.stop_everything(false);
        } else {
            tracing::error!(job = %self.name, error = %err, "job failed; stopping all subtasks");
            self.failed = Some(err);
            self.stop_everything(true);
        }
    }

    /// `JobMsg::Cancel`: every subtask stops; the job ends as cancelled
    /// (unless it had failed already).
    fn cancel(&mut self, myself: &ActorRef<JobMsg>) {
        if self.failed.is_none() {
            self.cancelled = true;
            self.lifecycle.set_status(JobStatus::Cancelling);
        }
        self.recovering = None;
        self.stop_everything(true);
        self.end_if_idle(myself);
    }

    /// `JobMsg::Kill`: kills subtask `index` of the operator or chain called
    /// `operator`; the kill is the failure the restart strategy handles.
    fn kill(&mut self, operator: &str, index: usize) -> std::result::Result<(), KillError> {
        if self.cancelled || self.failed.is_some() || self.shutting_down {
            return Err(KillError::Ended);
        }
        let task = self.plan.subtask_named(operator, index)?;
        let region_down = self
            .region_of
            .get(task)
            .is_some_and(|r| self.regions_recovering.contains_key(r));
        if self.recovering.is_some() || region_down || !self.executor.kill(task) {
            return Err(KillError::Restarting);
        }
        tracing::warn!(operator, index, "killing subtask on request");
        // The failure is the kill, recorded now: neighbours that see the
        // killed subtask's channels close fail too, and their reports may
        // reach this mailbox before its termination.
        self.fail("subtask killed on request".into(), Some(task));
        Ok(())
    }

    /// `JobMsg::TriggerCheckpoint`: forwarded to the coordinator, or refused
    /// with the reason.
    fn trigger_checkpoint(&mut self, reply: oneshot::Sender<std::result::Result<u64, String>>) {
        let why_not = if self.checkpoint.is_none() {
            Some("checkpointing is disabled for this job (execution.checkpointing.interval: off)")
        } else if self.cancelled || self.failed.is_some() || self.shutting_down {
            Some("the job is ending")
        } else if self.recovering.is_some() || self.coordinator.is_none() {
            Some("the job is restarting")
        } else {
            None
        };
        match (why_not, &self.coordinator) {
            (None, Some(c)) => {
                // A coordinator that just stopped drops the reply: "the job has ended".
                let _ = c.cast(CoordMsg::TriggerNow(reply));
            }
            (why, _) => {
                let _ = reply.send(Err(why.unwrap_or("the job is restarting").into()));
            }
        }
    }

    /// `JobMsg::TriggerSavepoint`: forwarded to the coordinator, or refused
    /// with the reason.
    fn trigger_savepoint(&mut self, req: crate::coordinator::SavepointRequest) {
        let why_not = if self.cancelled || self.failed.is_some() || self.shutting_down {
            Some("it is ending")
        } else if self.recovering.is_some() || self.coordinator.is_none() {
            Some("it is restarting")
        } else {
            None
        };
        match (why_not, &self.coordinator) {
            (None, Some(c)) => {
                // A coordinator that just stopped drops the request: "it has ended".
                let _ = c.cast(CoordMsg::TriggerSavepoint(req));
            }
            (why, _) => {
                let _ = req.reply.send(Err(crate::SavepointError::NotRunning(
                    why.unwrap_or("it is restarting").into(),
                )));
            }
        }
    }

    /// `JobMsg::ChaosKill`: when a kill is due (`chaos.*`), kills the next
    /// subtask of the seeded sequence.
    fn chaos_kill(&mut self, myself: &ActorRef<JobMsg>) {
        if self.recovering.is_some()
            || !self.regions_recovering.is_empty()
            || self.chaos_targets.is_empty()
            || !self.chaos_due()
        {
            return;
        }
        self.chaos_quiet();
        // SplitMix64 step: the same seed kills the same sequence of subtasks.
        self.chaos_rng = self.chaos_rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.chaos_rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let (op, index) =
            self.chaos_targets[(z % self.chaos_targets.len() as u64) as usize].clone();
        let (tx, _rx) = oneshot::channel();
        tracing::warn!(operator = %op, index, "chaos: killing subtask");
        let _ = myself.cast(JobMsg::Kill {
            operator: op,
            index,
            reply: tx,
        });
    }

    /// `JobMsg::RestartRegion`: once every subtask and loop of region `r`
    /// has stopped and the strategy's delay has passed, deploys the region
    /// again from the latest completed checkpoint.
    async fn restart_region_when_ready(&mut self, myself: &ActorRef<JobMsg>, r: usize) {
        if !self.regions_recovering.contains_key(&r)
            || self.region_running[r] > 0
            || self.recovering.is_some()
        {
            return;
        }
        if self.shared.any_live(&self.regions[r]) {
            if self.stuck_subtasks_fail_the_job(myself, Some(r)) {
                return;
            }
            myself.send_after(Duration::from_millis(1), move || JobMsg::RestartRegion(r));
            return;
        }
        self.cancel_watches.remove(&Some(r));
        self.shared.observers.failover_stopped(Some(r));
        // The restart strategy's delay, without blocking this mailbox.
        let at = self.regions_recovering[&r].1;
        let now = std::time::Instant::now();
        if at > now {
            myself.send_after(at - now, move || JobMsg::RestartRegion(r));
            return;
        }
        let cause = self
            .regions_recovering
            .remove(&r)
            .map(|(c, _)| c)
            .unwrap_or_default();
        let _ = self.shared.take_failure();
        let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(c) = self.region_restarts.get(r) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(job = %self.name, region = r, restart = n, cause, "restarting region");
        self.chaos_quiet();
        self.shared.observers.failover_restoring(Some(r), n);
        match self.restart_region(myself, r).await {
            Ok(restored) => self.shared.observers.failover_deployed(Some(r), restored),
            Err(e) => {
                let text = e.to_string();
                self.failed = Some(format!("cannot restart region {r}: {text}"));
                self.stop_everything(true);
            }
        }
        self.end_if_idle(myself);
    }

    /// `JobMsg::Restart`: once the whole old attempt has stopped and the
    /// strategy's delay has passed, starts a new attempt from the latest
    /// completed checkpoint.
    async fn restart_when_ready(
        &mut self,
        myself: &ActorRef<JobMsg>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if self.recovering.is_none() || self.running > 0 || self.coordinator.is_some() {
            return Ok(());
        }
        if self.shared.live_loops() > 0 {
            if self.stuck_subtasks_fail_the_job(myself, None) {
                return Ok(());
            }
            // Old processing loops finish their current step first.
            myself.send_after(Duration::from_millis(2), || JobMsg::Restart);
            return Ok(());
        }
        self.cancel_watches.remove(&None);
        self.shared.observers.failover_stopped(None);
        let now = std::time::Instant::now();
        if self.restart_at > now {
            myself.send_after(self.restart_at - now, || JobMsg::Restart);
            return Ok(());
        }
        let cause = self.recovering.take().unwrap_or_default();
        let _ = self.shared.take_failure();
        let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.observers.failover_restoring(None, n);
        let (restore, first_id, latest) = match self.restore_point() {
            Ok(r) => r,
            Err(e) => {
                self.failed = Some(format!("cannot restore after a failure: {e}"));
                self.shared.record_failure(e);
                self.end_if_idle(myself);
                return Ok(());
            }
        };
        tracing::warn!(job = %self.name, restart = n, cause, "restarting");
        self.chaos_quiet();
        if let Err(e) = self.start_attempt(myself, restore, first_id, latest).await {
            if matches!(&self.executor, Executor::Cluster(c) if c.cm.is_cancelled()) {
                self.cancelled = true;
            } else {
                self.failed = Some(format!("cannot restart: {e}"));
            }
            self.stop_everything(false);
            self.end_if_idle(myself);
            return Ok(());
        }
        self.lifecycle.set_status(JobStatus::Running);
        self.shared.observers.failover_deployed(None, latest);
        Ok(())
    }

    /// The cancellation watchdog ([`crate::cancellation`]) over the wait for
    /// region `region`'s (`None`: every) stopped subtasks: logs the stuck
    /// ones each `task.cancellation.interval`; after
    /// `task.cancellation.timeout` fails the job naming them and returns
    /// `true`.
    fn stuck_subtasks_fail_the_job(
        &mut self,
        myself: &ActorRef<JobMsg>,
        region: Option<usize>,
    ) -> bool {
        let now = std::time::Instant::now();
        let cfg = self.cancellation;
        let watch = self
            .cancel_watches
            .entry(region)
            .or_insert_with(|| CancellationWatch::new(now));
        let verdict = watch.check(&cfg, now);
        let waited = watch.waited(now);
        if verdict == Verdict::Wait {
            return false;
        }
        let members: Vec<usize> = match region {
            Some(r) => self.regions[r].clone(),
            None => (0..self.plan.num_subtasks()).collect(),
        };
        let stuck = members
            .into_iter()
            .filter(|t| self.shared.any_live(&[*t]))
            .map(|t| format!("'{}'", self.plan.subtask_name(t)))
            .collect::<Vec<_>>()
            .join(", ");
        if verdict == Verdict::Report {
            tracing::warn!(job = %self.name, subtasks = %stuck, ?waited, "stopped for a restart, still running user code (task.cancellation.interval); the restart waits");
            return false;
        }
        let cause = match region {
            Some(r) => self.regions_recovering.remove(&r).map(|(c, _)| c),
            None => self.recovering.take(),
        }
        .unwrap_or_default();
        let err = Error::CancellationTimeout {
            subtasks: stuck,
            timeout: cfg.timeout.unwrap_or(waited),
            cause,
        };
        let text = err.to_string();
        tracing::error!(job = %self.name, error = %text, "job failed");
        self.lifecycle.record_failure(FailureRecord {
            timestamp: crate::checkpoint::now_ms(),
            message: text.clone(),
            task: None,
            action: "job failed".to_string(),
        });
        // This failure, not the one the restart was for, is the job's.
        let _ = self.shared.take_failure();
        self.shared.record_failure(err);
        self.recovering = None;
        self.regions_recovering.clear();
        self.cancel_watches.clear();
        self.gave_up = None;
        self.failed = Some(text);
        self.stop_everything(true);
        self.end_if_idle(myself);
        true
    }

    /// A failed job's directory keeps its complete checkpoints only: the
    /// coordinator, which cleans up at a normal end, may have failed itself
    /// (too many failed checkpoints) with aborted checkpoints half written.
    /// Removes the `.running` lock and what no complete checkpoint
    /// references (incomplete `chk-<n>` directories, temporary files,
    /// unreferenced shared files: `checkpoint::storage::sweep`).
    fn clean_up_after_failure(&self) {
        let Some((_, storage, _)) = &self.checkpoint else {
            return;
        };
        storage.release();
        match crate::checkpoint::storage::sweep(storage.job_dir()) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(job = %self.name, removed = gone.len(), "removed what no complete checkpoint references");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(job = %self.name, error = %e, "cannot clean up the job directory");
            }
        }
    }

    /// Stops every subtask, and the coordinator too unless `keep_coordinator`
    /// (it then applies the retention policy and reports the job's end).
    fn stop_everything(&mut self, keep_coordinator: bool) {
        self.executor.stop_all("job stopping");
        if !keep_coordinator {
            if let Some(c) = &self.coordinator {
                c.stop(Some("job stopping".into()));
            }
        }
    }

    /// One subtask ended (reported by the executor, see [`crate::deploy`]):
    /// it no longer runs; a failure or a kill is a failure of the job,
    /// which [`JobState::fail`] handles.
    fn subtask_ended(&mut self, ended: SubtaskEnded) {
        self.running = self.running.saturating_sub(1);
        if let Some(t) = ended.task {
            let r = self.region_of[t];
            self.region_running[r] = self.region_running[r].saturating_sub(1);
        }
        match (ended.failure, ended.killed) {
            (Some(err), _) => self.fail(err, ended.task),
            (None, true) => self.fail("subtask killed on request".into(), ended.task),
            (None, false) => {}
        }
    }

    /// The subtasks' restore data from checkpoint `id` of this job's directory.
    fn restore_from(&self, id: u64) -> Result<Vec<Vec<crate::checkpoint::SubtaskRestore>>> {
        let Some((_, storage, _)) = &self.checkpoint else {
            return Err(Error::Internal(format!(
                "checkpoint {id} without checkpointing"
            )));
        };
        let dir = storage.job_dir().join(format!("chk-{id}"));
        let loaded = crate::checkpoint::storage::load_checkpoint(&dir)?;
        let assigned = crate::restore::assign(
            &loaded,
            &self.plan,
            self.conf.get(&crate::config::options::MAX_PARALLELISM),
        )?;
        self.lifecycle.record_restore(RestoreRecord {
            id,
            timestamp: crate::checkpoint::now_ms(),
            path: dir,
        });
        Ok(assigned)
    }

    /// Where the next attempt starts: the newest complete checkpoint of this
    /// job, else the checkpoint the job was started from, else the beginning.
    /// Only for a full restart, when no coordinator is alive that could
    /// still complete a checkpoint.
    fn restore_point(&self) -> Result<RestorePoint> {
        let (assigned, next, from, own) = self.restore_point_from()?;
        if let Some((id, path)) = from {
            self.lifecycle.record_restore(RestoreRecord {
                id,
                timestamp: crate::checkpoint::now_ms(),
                path,
            });
        }
        Ok((assigned, next, own))
    }

    /// [`JobState::restore_point`], with the id and directory of the
    /// checkpoint used, and its id again when it is of this job's directory.
    #[allow(clippy::type_complexity)]
    fn restore_point_from(
        &self,
    ) -> Result<(
        Option<Vec<Vec<crate::checkpoint::SubtaskRestore>>>,
        u64,
        Option<(u64, std::path::PathBuf)>,
        Option<u64>,
    )> {
        let mut next_id = 1;
        if let Some((_, storage, _)) = &self.checkpoint {
            let ids =
                crate::checkpoint::storage::list_checkpoints(storage.job_dir()).unwrap_or_default();
            next_id = ids.iter().map(|c| c.id + 1).max().unwrap_or(1);
            if let Some(best) = ids.iter().rev().find(|c| c.status == "complete") {
                let loaded = crate::checkpoint::storage::load_checkpoint(&best.dir)?;
                let assigned = crate::restore::assign(
                    &loaded,
                    &self.plan,
                    self.conf.get(&crate::config::options::MAX_PARALLELISM),
                )?;
                return Ok((
                    Some(assigned),
                    next_id.max(loaded.metadata.checkpoint_id + 1),
                    Some((loaded.metadata.checkpoint_id, best.dir.clone())),
                    Some(loaded.metadata.checkpoint_id),
                ));
            }
        }
        match &self.restored_from {
            Some(p) => {
                let loaded = crate::checkpoint::storage::load_checkpoint(p)?;
                let assigned = crate::restore::assign(
                    &loaded,
                    &self.plan,
                    self.conf.get(&crate::config::options::MAX_PARALLELISM),
                )?;
                Ok((
                    Some(assigned),
                    next_id.max(loaded.metadata.checkpoint_id + 1),
                    Some((loaded.metadata.checkpoint_id, p.clone())),
                    None,
                ))
            }
            None => Ok((None, next_id, None, None)),
        }
    }
}

/// Where an attempt starts: each subtask's restore data (none: from the
/// beginning), the next checkpoint id, and the id of the checkpoint of this
/// job's own directory it restores (none when it starts elsewhere).
type RestorePoint = (
    Option<Vec<Vec<crate::checkpoint::SubtaskRestore>>>,
    u64,
    Option<u64>,
);

/// Where this job's subtasks run: in this process, or on the TaskManagers
/// of a cluster (this process is the JobManager).
enum Executor {
    Local(LocalExecutor),
    Cluster(ClusterExecutor),
}

impl Executor {
    fn ended(&mut self, evt: &SupervisionEvent) -> Option<SubtaskEnded> {
        match self {
            Executor::Local(e) => e.ended(evt),
            Executor::Cluster(e) => e.ended(evt),
        }
    }
}

impl TaskExecutor for Executor {
    async fn deploy(
        &mut self,
        supervisor: &ractor::ActorCell,
        spec: SubtaskSpec,
        shared: &Arc<JobShared>,
        checkpoint: &Option<CheckpointLink>,
    ) -> std::result::Result<(usize, crate::coordinator::TaskRef), ActorProcessingErr> {
        match self {
            Executor::Local(e) => e.deploy(supervisor, spec, shared, checkpoint).await,
            Executor::Cluster(e) => e.deploy(supervisor, spec, shared, checkpoint).await,
        }
    }

    fn stop(&mut self, task: usize, reason: &str) {
        match self {
            Executor::Local(e) => e.stop(task, reason),
            Executor::Cluster(e) => e.stop(task, reason),
        }
    }

    fn stop_all(&mut self, reason: &str) {
        match self {
            Executor::Local(e) => e.stop_all(reason),
            Executor::Cluster(e) => e.stop_all(reason),
        }
    }

    fn kill(&mut self, task: usize) -> bool {
        match self {
            Executor::Local(e) => e.kill(task),
            Executor::Cluster(e) => e.kill(task),
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
        let first_id = args.checkpoint.as_ref().map_or(1, |c| c.first_id);
        let cancellation = CancellationConfig::from_conf(&args.conf);
        let mut state = JobState {
            name: args.name,
            job_id: args.job_id,
            graph: args.graph,
            plan: args.plan,
            conf: args.conf,
            counters: args.counters,
            channels: args.channels,
            restored_from: args.restored_from,
            claimed: args.claimed,
            counts: args.checkpoint.as_ref().map(|c| c.counts.clone()),
            checkpoint: args.checkpoint.map(|c| (c.cfg, c.storage, c.stats)),
            io: args.io,
            lifecycle: args.lifecycle,
            // Cluster mode restarts the whole job (see crate::cluster).
            region_failover: args.restart.region && args.cluster.is_none(),
            tracker: crate::restart::RestartTracker::new(args.restart.strategy, args.restart.seed),
            epoch: std::time::Instant::now(),
            gave_up: None,
            restart_at: std::time::Instant::now(),
            restarts: args.restarts,
            region_restarts: args.region_restarts,
            last_failure: args.last_failure,
            chaos_rng: 0,
            chaos_targets: Vec::new(),
            chaos_every: Duration::MAX,
            chaos_quiet_since: std::time::Instant::now(),
            chaos_wait_for_checkpoint: false,
            chaos_completed_base: 0,
            chaos_phase: 0,
            region_of: Vec::new(),
            region_running: Vec::new(),
            regions_recovering: Default::default(),
            cancellation,
            cancel_watches: Default::default(),
            regions: Vec::new(),
            executor: match &args.cluster {
                Some(cm) => Executor::Cluster(ClusterExecutor::new(cm.clone())),
                None => Executor::Local(LocalExecutor::default()),
            },
            running: 0,
            failed: None,
            recovering: None,
            cancelled: false,
            done: Some(args.done),
            shared: Arc::new(JobShared::with_observers(args.observers)),
            coordinator: None,
            shutting_down: false,
        };
        state.regions = state.plan.regions();
        state.region_of = vec![0; state.plan.num_subtasks()];
        for (r, members) in state.regions.iter().enumerate() {
            for &t in members {
                state.region_of[t] = r;
            }
        }
        tracing::info!(
            job = %state.name,
            "failover regions:\n{}",
            state
                .regions
                .iter()
                .enumerate()
                .map(|(r, m)| format!("region {r}: {}", m.iter().map(|t| state.plan.subtask_name(*t)).collect::<Vec<_>>().join(", ")))
                .collect::<Vec<_>>()
                .join("\n")
        );
        state
            .start_attempt(&myself, args.restore, first_id, None)
            .await?;
        if let Some(every) = state.conf.get(&crate::config::options::CHAOS_KILL_INTERVAL) {
            state.chaos_rng = state.conf.get(&crate::config::options::CHAOS_SEED);
            let targets = state.conf.get(&crate::config::options::CHAOS_TARGETS);
            let names: Vec<&str> = targets
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            for c in &state.plan.chains {
                for op in &c.operators {
                    if names.contains(&"all") || names.contains(&op.as_str()) {
                        state
                            .chaos_targets
                            .extend((0..c.parallelism).map(|i| (op.clone(), i)));
                    }
                }
            }
            if state.chaos_targets.is_empty() {
                return Err(
                    format!("chaos.targets '{targets}' names no operator of this job").into(),
                );
            }
            state.chaos_every = every;
            state.chaos_wait_for_checkpoint = state
                .conf
                .get(&crate::config::options::CHAOS_WAIT_FOR_CHECKPOINT);
            state.chaos_quiet();
            // Ticks four times per interval; the handler decides whether a
            // whole interval of quiet running has passed.
            let tick = (every / 4).max(Duration::from_millis(1));
            let me = myself.clone();
            let _ = std::thread::Builder::new()
                .name("weir-chaos".into())
                .spawn(move || loop {
                    std::thread::sleep(tick);
                    if me.cast(JobMsg::ChaosKill).is_err() {
                        break;
                    }
                });
        }
        Ok(state)
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
            JobMsg::Cancel => state.cancel(&myself),
            JobMsg::Kill {
                operator,
                index,
                reply,
            } => {
                let _ = reply.send(state.kill(&operator, index));
            }
            JobMsg::TriggerCheckpoint(reply) => state.trigger_checkpoint(reply),
            JobMsg::TriggerSavepoint(req) => state.trigger_savepoint(req),
            JobMsg::ChaosKill => state.chaos_kill(&myself),
            JobMsg::RestartRegion(r) => state.restart_region_when_ready(&myself, r).await,
            JobMsg::Restart => state.restart_when_ready(&myself).await?,
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
                state.fail(err.to_string(), None);
            }
            other => {
                if let Some(ended) = state.executor.ended(&other) {
                    state.subtask_ended(ended);
                }
            }
        }
        state.end_if_idle(&myself);
        Ok(())
    }
}
