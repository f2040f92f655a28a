//! Metrics: what a job measures about itself, with Flink's metric names, and
//! their Prometheus text exposition.
//!
//! **Collection is cheap and lock-free on the data path.**
//! - Records: one relaxed atomic add per batch and operator into the
//!   subtask's own slot ([`crate::graph::OperatorCounters`], one cache line per
//!   subtask): Flink's `numRecordsIn` / `numRecordsOut`.
//! - Records in errors: Flink's `numRecordsInErrors`, counted by the function
//!   itself (e.g. a source skipping a record it cannot deserialize) through
//!   the [`Counter`] of its `RuntimeContext::num_records_in_errors`, which
//!   is the subtask's slot.
//! - Time: a subtask notes when it starts and stops waiting for space on an
//!   output (back-pressured) or for input (idle) in its [`SubtaskIo`]; only the
//!   waiting path touches the clock, never the path of a batch that goes
//!   through. Busy time is the rest. Flink's `backPressuredTimeMsPerSecond`,
//!   `idleTimeMsPerSecond`, `busyTimeMsPerSecond`, `isBackPressured`.
//! - Channel occupancy: queued batches / capacity of every channel, read from
//!   the channels when a snapshot is taken (Flink's `outPoolUsage`,
//!   `inPoolUsage`: here the fullest output / input channel of a subtask).
//! - Checkpoints: from the coordinator's statistics and counters
//!   (`lastCheckpointDuration`, `lastCheckpointSize`, `lastCheckpointFullSize`,
//!   `lastCompletedCheckpointId`, `numberOfCompletedCheckpoints`,
//!   `numberOfFailedCheckpoints`, `numberOfInProgressCheckpoints`,
//!   `totalNumberOfCheckpoints`, per subtask `checkpointAlignmentTime` of the
//!   latest completed checkpoint, in nanoseconds as in Flink); restarts
//!   (`numRestarts`).
//!
//! Rates (`numRecordsInPerSecond`, ...) are computed by one sampler thread per
//! job, once a second, from the difference of two samples; it stops when the
//! job ends. Readers ([`crate::job::JobHandle::metrics_snapshot`], the REST
//! server) take a [`JobMetrics`] snapshot: atomics and short locks only.
//! Both read a job through a borrowed view of what it shares (`JobView`,
//! built by the job's core), so this module imports nothing of
//! [`crate::job`] (which imports it); the job's status comes from
//! `lifecycle.rs`.
//!
//! [`prometheus_text`] renders snapshots in the Prometheus text format
//! (version 0.0.4), served at `GET /metrics` by [`crate::rest`]. Metric names
//! are `weir_job_<flink name>`, `weir_operator_<flink name>` and
//! `weir_task_<flink name>`, labelled with `job_id`, `job_name`, and
//! `operator_name` / `task_name` and `subtask_index`; Flink's JobManager
//! metrics of the TaskManagers ([`ClusterMetrics`]:
//! `numRegisteredTaskManagers`, `taskSlotsTotal`, `taskSlotsAvailable`) are
//! `weir_jobmanager_<flink name>`, unlabelled ([`cluster_prometheus_text`]).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{CheckpointCounts, CheckpointStats, CheckpointStatus};
use crate::graph::{JobPlan, OperatorCounters};
use crate::lifecycle::{JobStatus, Lifecycle};

pub use crate::counter::Counter;
pub use crate::waits::SubtaskIo;

/// One operator of a job, as the metrics see it.
pub(crate) struct OperatorInfo {
    pub name: String,
    pub parallelism: usize,
    /// The chain (job vertex) the operator runs in.
    pub chain: usize,
    pub counters: Arc<OperatorCounters>,
}

/// What the metrics read of one job: borrowed from the job's shared core
/// (`crate::job::JobCore` builds it), so that this module needs none of
/// the job module's types. Everything is read when a snapshot is taken,
/// in the same order as always: atomics and short locks only.
pub(crate) struct JobView<'a> {
    pub job_id: &'a str,
    pub job_name: &'a str,
    pub started: Instant,
    pub lifecycle: &'a Lifecycle,
    pub operators: &'a [OperatorInfo],
    pub plan: &'a JobPlan,
    pub channels: &'a std::sync::Mutex<Vec<crate::exchange::ChannelWatch>>,
    /// Time accounting per subtask (index among all subtasks).
    pub io: &'a [Arc<SubtaskIo>],
    pub restarts: &'a std::sync::atomic::AtomicU64,
    pub checkpoints: &'a std::sync::Mutex<Vec<CheckpointStats>>,
    pub counts: &'a CheckpointCounts,
    /// Written by the sampler.
    pub rates: &'a std::sync::Mutex<Rates>,
}

/// A job whose metrics can be read and sampled (the job's shared core).
pub(crate) trait MetricSource: Send + Sync + 'static {
    /// The job as the metrics see it, right now.
    fn view(&self) -> JobView<'_>;
}

/// Rates of the last sampling interval.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rates {
    /// Per operator, per subtask.
    records_in: Vec<Vec<f64>>,
    records_out: Vec<Vec<f64>>,
    /// Per subtask (index among all of the job's subtasks), ms per second.
    back_pressured: Vec<f64>,
    idle: Vec<f64>,
}

fn at(v: &[Vec<f64>], op: usize, i: usize) -> f64 {
    v.get(op).and_then(|s| s.get(i)).copied().unwrap_or(0.0)
}

struct Sample {
    at: Instant,
    records_in: Vec<Vec<u64>>,
    records_out: Vec<Vec<u64>>,
    back_pressured: Vec<u64>,
    idle: Vec<u64>,
}

impl Sample {
    fn take(core: &JobView<'_>) -> Sample {
        let per_sub = |f: fn(&crate::graph::SubtaskCounts) -> u64| {
            core.operators
                .iter()
                .map(|o| o.counters.subtasks().iter().map(f).collect())
                .collect()
        };
        Sample {
            at: Instant::now(),
            records_in: per_sub(|s| s.records_in.load(Ordering::Relaxed)),
            records_out: per_sub(|s| s.records_out.load(Ordering::Relaxed)),
            back_pressured: core.io.iter().map(|i| i.back_pressured_ns()).collect(),
            idle: core.io.iter().map(|i| i.idle_ns()).collect(),
        }
    }

    fn rates_since(&self, prev: &Sample) -> Rates {
        let secs = self.at.duration_since(prev.at).as_secs_f64().max(1e-3);
        let per_sec = |now: &[Vec<u64>], before: &[Vec<u64>]| {
            now.iter()
                .zip(before)
                .map(|(n, b)| {
                    n.iter()
                        .zip(b)
                        .map(|(n, b)| n.saturating_sub(*b) as f64 / secs)
                        .collect()
                })
                .collect()
        };
        // ns waited per second of wall time, as ms per second, at most 1000.
        let ms_per_sec = |now: &[u64], before: &[u64]| {
            now.iter()
                .zip(before)
                .map(|(n, b)| (n.saturating_sub(*b) as f64 / 1e6 / secs).min(1000.0))
                .collect()
        };
        Rates {
            records_in: per_sec(&self.records_in, &prev.records_in),
            records_out: per_sec(&self.records_out, &prev.records_out),
            back_pressured: ms_per_sec(&self.back_pressured, &prev.back_pressured),
            idle: ms_per_sec(&self.idle, &prev.idle),
        }
    }
}

/// How often the sampler computes rates.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Starts the job's sampler thread: it computes rates once a second until the
/// job ends (then the rates are zero) or nobody holds the job any more.
pub(crate) fn start_sampler<J: MetricSource>(job: &Arc<J>) {
    let weak = Arc::downgrade(job);
    let spawned = std::thread::Builder::new()
        .name("weir-metrics".into())
        .spawn(move || {
            let mut last: Option<Sample> = None;
            loop {
                let Some(job) = weak.upgrade() else { break };
                let core = job.view();
                if core.lifecycle.status().is_terminal() {
                    *core.rates.lock().unwrap_or_else(|p| p.into_inner()) = Rates::default();
                    break;
                }
                let now = Sample::take(&core);
                if let Some(prev) = &last {
                    let rates = now.rates_since(prev);
                    *core.rates.lock().unwrap_or_else(|p| p.into_inner()) = rates;
                }
                last = Some(now);
                drop(job);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics sampler: rates stay at zero");
    }
}

/// Flink's back-pressure level of a subtask from its back-pressured ratio:
/// `ok` up to 10 %, `low` up to 50 %, `high` above.
pub fn backpressure_level(ratio: f64) -> &'static str {
    if ratio <= 0.10 {
        "ok"
    } else if ratio <= 0.5 {
        "low"
    } else {
        "high"
    }
}

/// Every metric of one job at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMetrics {
    /// The job's id.
    pub job_id: String,
    /// The job's name.
    pub job_name: String,
    /// Its status.
    pub status: JobStatus,
    /// Milliseconds since the job started (Flink's `uptime`).
    pub uptime_ms: u64,
    /// `lastCheckpointDuration`: trigger to completion of the latest completed checkpoint, ms.
    pub last_checkpoint_duration: Option<u64>,
    /// `lastCheckpointSize`: bytes written by the latest completed checkpoint.
    pub last_checkpoint_size: Option<u64>,
    /// `lastCheckpointFullSize`: full state size of the latest completed checkpoint.
    pub last_checkpoint_full_size: Option<u64>,
    /// `lastCompletedCheckpointId`.
    pub last_completed_checkpoint_id: Option<u64>,
    /// `lastCheckpointRestoreTimestamp`: when the job last restored from a checkpoint (ms since the epoch).
    pub last_checkpoint_restore_timestamp: Option<u64>,
    /// `numberOfCompletedCheckpoints`.
    pub number_of_completed_checkpoints: u64,
    /// `numberOfFailedCheckpoints`.
    pub number_of_failed_checkpoints: u64,
    /// `numberOfInProgressCheckpoints`.
    pub number_of_in_progress_checkpoints: u64,
    /// `totalNumberOfCheckpoints`: completed, failed and in progress.
    pub total_number_of_checkpoints: u64,
    /// `numRestarts`.
    pub num_restarts: u64,
    /// Per operator, in graph order.
    pub operators: Vec<OperatorMetricsSnapshot>,
    /// Per task (operator chain, Flink's job vertex), in plan order.
    pub tasks: Vec<TaskMetrics>,
}

/// Record metrics of one operator, summed over its subtasks and per subtask.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorMetricsSnapshot {
    /// The operator's name.
    pub name: String,
    /// The chain (task) it runs in: an index into [`JobMetrics::tasks`].
    pub task: usize,
    /// Its parallelism.
    pub parallelism: usize,
    /// `numRecordsIn`.
    pub num_records_in: u64,
    /// `numRecordsOut`.
    pub num_records_out: u64,
    /// `numRecordsInErrors`: records the function received but could not
    /// use (counted by the function, see `RuntimeContext::num_records_in_errors`).
    pub num_records_in_errors: u64,
    /// `numRecordsInPerSecond`.
    pub num_records_in_per_second: f64,
    /// `numRecordsOutPerSecond`.
    pub num_records_out_per_second: f64,
    /// `currentInputWatermark`: the smallest over the subtasks (`i64::MIN`: none yet).
    pub current_input_watermark: i64,
    /// The same, per subtask.
    pub subtasks: Vec<OperatorSubtaskMetrics>,
}

/// Record metrics of one operator subtask.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorSubtaskMetrics {
    /// The subtask index.
    pub index: usize,
    /// `numRecordsIn`.
    pub num_records_in: u64,
    /// `numRecordsOut`.
    pub num_records_out: u64,
    /// `numRecordsInErrors`: records the function received but could not
    /// use (counted by the function, see `RuntimeContext::num_records_in_errors`).
    pub num_records_in_errors: u64,
    /// `numRecordsInPerSecond`.
    pub num_records_in_per_second: f64,
    /// `numRecordsOutPerSecond`.
    pub num_records_out_per_second: f64,
    /// `currentInputWatermark` (`i64::MIN`: none yet).
    pub current_input_watermark: i64,
}

/// Metrics of one task (operator chain): time and back pressure per subtask.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetrics {
    /// The chain's index in the plan.
    pub index: usize,
    /// The chain's name, `A -> B`.
    pub name: String,
    /// Its parallelism.
    pub parallelism: usize,
    /// The highest back-pressure level of its subtasks.
    pub backpressure_level: &'static str,
    /// Per subtask.
    pub subtasks: Vec<TaskSubtaskMetrics>,
}

/// Time, back pressure and checkpoint alignment of one subtask.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSubtaskMetrics {
    /// The subtask index.
    pub index: usize,
    /// `backPressuredTimeMsPerSecond`: waiting for space on an output.
    pub back_pressured_time_ms_per_second: f64,
    /// `idleTimeMsPerSecond`: waiting for input.
    pub idle_time_ms_per_second: f64,
    /// `busyTimeMsPerSecond`: the rest.
    pub busy_time_ms_per_second: f64,
    /// `isBackPressured`: waiting for space on an output right now.
    pub is_back_pressured: bool,
    /// Flink's back-pressure level: ok, low or high.
    pub backpressure_level: &'static str,
    /// `outPoolUsage`: queued batches / capacity of its fullest output channel (0 to 1).
    pub out_pool_usage: f64,
    /// `inPoolUsage`: queued batches / capacity of its fullest input channel (0 to 1).
    pub in_pool_usage: f64,
    /// `checkpointAlignmentTime`: alignment of the latest completed checkpoint, ns.
    pub checkpoint_alignment_time: u64,
}

impl JobMetrics {
    /// Every metric of the job `core` shows, now.
    pub(crate) fn of(core: &JobView<'_>) -> JobMetrics {
        let rates = core.rates.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (in_progress, last, alignment) = {
            let stats = core.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            let in_progress = stats
                .iter()
                .filter(|s| s.status == CheckpointStatus::InProgress)
                .count() as u64;
            let last = stats
                .iter()
                .rev()
                .find(|s| s.status == CheckpointStatus::Completed);
            let alignment: Vec<(String, usize, u64)> = last
                .map(|l| {
                    l.subtasks
                        .iter()
                        .map(|s| (s.task.clone(), s.index, (s.alignment_duration * 1e6) as u64))
                        .collect()
                })
                .unwrap_or_default();
            let last = last.map(|l| {
                (
                    l.id,
                    l.end_to_end_duration.round() as u64,
                    l.checkpointed_size,
                    l.state_size,
                )
            });
            (in_progress, last, alignment)
        };
        let completed = core.counts.completed.load(Ordering::Relaxed);
        let failed = core.counts.failed.load(Ordering::Relaxed);
        let operators = core
            .operators
            .iter()
            .enumerate()
            .map(|(o, op)| {
                let subtasks: Vec<OperatorSubtaskMetrics> = op
                    .counters
                    .subtasks()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| OperatorSubtaskMetrics {
                        index: i,
                        num_records_in: c.records_in.load(Ordering::Relaxed),
                        num_records_out: c.records_out.load(Ordering::Relaxed),
                        num_records_in_errors: c.records_in_errors.count(),
                        num_records_in_per_second: at(&rates.records_in, o, i),
                        num_records_out_per_second: at(&rates.records_out, o, i),
                        current_input_watermark: c.input_watermark.load(Ordering::Relaxed),
                    })
                    .collect();
                OperatorMetricsSnapshot {
                    name: op.name.clone(),
                    task: op.chain,
                    parallelism: op.parallelism,
                    num_records_in: subtasks.iter().map(|s| s.num_records_in).sum(),
                    num_records_out: subtasks.iter().map(|s| s.num_records_out).sum(),
                    num_records_in_errors: subtasks.iter().map(|s| s.num_records_in_errors).sum(),
                    num_records_in_per_second: subtasks
                        .iter()
                        .map(|s| s.num_records_in_per_second)
                        .sum(),
                    num_records_out_per_second: subtasks
                        .iter()
                        .map(|s| s.num_records_out_per_second)
                        .sum(),
                    current_input_watermark: subtasks
                        .iter()
                        .map(|s| s.current_input_watermark)
                        .min()
                        .unwrap_or(i64::MIN),
                    subtasks,
                }
            })
            .collect();
        // Channel occupancy per subtask: the fullest output and input channel.
        let n = core.plan.num_subtasks();
        let (mut out_pool, mut in_pool) = (vec![0.0f64; n], vec![0.0f64; n]);
        for w in core
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some((queued, capacity)) = w.occupancy() {
                let usage = (queued as f64 / capacity.max(1) as f64).min(1.0);
                if let Some(o) = out_pool.get_mut(w.from) {
                    *o = o.max(usage);
                }
                if let Some(i) = in_pool.get_mut(w.to) {
                    *i = i.max(usage);
                }
            }
        }
        let mut tasks = Vec::with_capacity(core.plan.chains.len());
        let mut t = 0;
        for chain in &core.plan.chains {
            let name = chain.name();
            let subtasks: Vec<TaskSubtaskMetrics> = (0..chain.parallelism)
                .map(|i| {
                    let task = t + i;
                    let bp = rates.back_pressured.get(task).copied().unwrap_or(0.0);
                    let idle = rates.idle.get(task).copied().unwrap_or(0.0);
                    TaskSubtaskMetrics {
                        index: i,
                        back_pressured_time_ms_per_second: bp,
                        idle_time_ms_per_second: idle,
                        busy_time_ms_per_second: (1000.0 - bp - idle).max(0.0),
                        is_back_pressured: core
                            .io
                            .get(task)
                            .is_some_and(|io| io.is_back_pressured()),
                        backpressure_level: backpressure_level(bp / 1000.0),
                        out_pool_usage: out_pool.get(task).copied().unwrap_or(0.0),
                        in_pool_usage: in_pool.get(task).copied().unwrap_or(0.0),
                        checkpoint_alignment_time: alignment
                            .iter()
                            .find(|(n, idx, _)| *n == name && *idx == i)
                            .map_or(0, |a| a.2),
                    }
                })
                .collect();
            t += chain.parallelism;
            let worst = subtasks
                .iter()
                .map(|s| s.back_pressured_time_ms_per_second)
                .fold(0.0, f64::max);
            tasks.push(TaskMetrics {
                index: chain.id,
                name,
                parallelism: chain.parallelism,
                backpressure_level: backpressure_level(worst / 1000.0),
                subtasks,
            });
        }
        let (restored, _) = core.lifecycle.restores();
        JobMetrics {
            job_id: core.job_id.to_string(),
            job_name: core.job_name.to_string(),
            status: core.lifecycle.status(),
            uptime_ms: core.started.elapsed().as_millis() as u64,
            last_checkpoint_duration: last.map(|l| l.1),
            last_checkpoint_size: last.map(|l| l.2),
            last_checkpoint_full_size: last.map(|l| l.3),
            last_completed_checkpoint_id: last.map(|l| l.0),
            last_checkpoint_restore_timestamp: restored.map(|r| r.timestamp),
            number_of_completed_checkpoints: completed,
            number_of_failed_checkpoints: failed,
            number_of_in_progress_checkpoints: in_progress,
            total_number_of_checkpoints: completed + failed + in_progress,
            num_restarts: core.restarts.load(Ordering::Relaxed),
            operators,
            tasks,
        }
    }
}

/// Flink's JobManager metrics of the TaskManagers, as the REST API's
/// `/taskmanagers` lists them: in cluster mode the TaskManagers registered
/// with this JobManager; a process whose jobs run in it counts as one
/// TaskManager whose slots are its running jobs' slices, all in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// `numRegisteredTaskManagers`.
    pub num_registered_task_managers: u64,
    /// `taskSlotsTotal`: the slots they offer.
    pub task_slots_total: u64,
    /// `taskSlotsAvailable`: those no subtask uses.
    pub task_slots_available: u64,
}

/// Renders [`ClusterMetrics`] in the Prometheus text format (0.0.4), as
/// `weir_jobmanager_<flink name>` without labels; [`prometheus_text`] renders
/// the jobs' metrics, and a scrape is the two concatenated.
pub fn cluster_prometheus_text(c: &ClusterMetrics) -> String {
    let mut f = Families::default();
    f.add(
        "weir_jobmanager_numRegisteredTaskManagers",
        "gauge",
        "TaskManagers registered (a process that runs its jobs itself counts as one)",
        "",
        c.num_registered_task_managers as f64,
    );
    f.add(
        "weir_jobmanager_taskSlotsTotal",
        "gauge",
        "task slots the registered TaskManagers offer",
        "",
        c.task_slots_total as f64,
    );
    f.add(
        "weir_jobmanager_taskSlotsAvailable",
        "gauge",
        "task slots no subtask uses",
        "",
        c.task_slots_available as f64,
    );
    f.render()
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric family being written: its samples, then emitted with one HELP/TYPE.
struct Family {
    name: String,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

#[derive(Default)]
struct Families(Vec<Family>);

impl Families {
    fn add(&mut self, name: &str, kind: &'static str, help: &'static str, labels: &str, v: f64) {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family {
                    name: name.to_string(),
                    kind,
                    help,
                    samples: String::new(),
                });
                self.0.len() - 1
            }
        };
        let value = if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        };
        if labels.is_empty() {
            let _ = writeln!(self.0[i].samples, "{name} {value}");
        } else {
            let _ = writeln!(self.0[i].samples, "{name}{{{labels}}} {value}");
        }
    }

    fn render(self) -> String {
        let mut out = String::new();
        for f in self.0 {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }
}

/// Renders job metrics in the Prometheus text exposition format (0.0.4).
pub fn prometheus_text(jobs: &[JobMetrics]) -> String {
    let mut f = Families::default();
    for j in jobs {
        let job = format!(
            "job_id=\"{}\",job_name=\"{}\"",
            label(&j.job_id),
            label(&j.job_name)
        );
        add_job(&mut f, j, &job);
        add_operator_subtasks(&mut f, j, &job);
        add_task_subtasks(&mut f, j, &job);
    }
    f.render()
}

/// The job-level families (`weir_job_*`) of `j`, labelled `job`.
fn add_job(f: &mut Families, j: &JobMetrics, job: &str) {
    let opt = |v: Option<u64>| v.map_or(-1.0, |v| v as f64);
    f.add(
        "weir_job_uptime",
        "gauge",
        "milliseconds since the job started",
        job,
        j.uptime_ms as f64,
    );
    f.add(
        "weir_job_numRestarts",
        "counter",
        "restarts after failures",
        job,
        j.num_restarts as f64,
    );
    f.add(
        "weir_job_lastCheckpointDuration",
        "gauge",
        "trigger to completion of the latest completed checkpoint, ms (-1: none yet)",
        job,
        opt(j.last_checkpoint_duration),
    );
    f.add(
        "weir_job_lastCheckpointSize",
        "gauge",
        "bytes written by the latest completed checkpoint (-1: none yet)",
        job,
        opt(j.last_checkpoint_size),
    );
    f.add(
        "weir_job_lastCheckpointFullSize",
        "gauge",
        "full state size of the latest completed checkpoint, bytes (-1: none yet)",
        job,
        opt(j.last_checkpoint_full_size),
    );
    f.add(
        "weir_job_lastCompletedCheckpointId",
        "gauge",
        "id of the latest completed checkpoint (-1: none yet)",
        job,
        opt(j.last_completed_checkpoint_id),
    );
    f.add(
        "weir_job_lastCheckpointRestoreTimestamp",
        "gauge",
        "when the job last restored from a checkpoint, ms since the epoch (-1: never)",
        job,
        opt(j.last_checkpoint_restore_timestamp),
    );
    f.add(
        "weir_job_numberOfCompletedCheckpoints",
        "counter",
        "completed checkpoints",
        job,
        j.number_of_completed_checkpoints as f64,
    );
    f.add(
        "weir_job_numberOfFailedCheckpoints",
        "counter",
        "failed checkpoints",
        job,
        j.number_of_failed_checkpoints as f64,
    );
    f.add(
        "weir_job_numberOfInProgressCheckpoints",
        "gauge",
        "checkpoints in progress",
        job,
        j.number_of_in_progress_checkpoints as f64,
    );
    f.add(
        "weir_job_totalNumberOfCheckpoints",
        "counter",
        "checkpoints triggered",
        job,
        j.total_number_of_checkpoints as f64,
    );
}

/// The per-operator-subtask families (`weir_operator_*`).
fn add_operator_subtasks(f: &mut Families, j: &JobMetrics, job: &str) {
    for op in &j.operators {
        for s in &op.subtasks {
            let l = format!(
                "{job},operator_name=\"{}\",subtask_index=\"{}\"",
                label(&op.name),
                s.index
            );
            f.add(
                "weir_operator_numRecordsIn",
                "counter",
                "records that entered the operator",
                &l,
                s.num_records_in as f64,
            );
            f.add(
                "weir_operator_numRecordsOut",
                "counter",
                "records the operator emitted",
                &l,
                s.num_records_out as f64,
            );
            f.add(
                "weir_operator_numRecordsInErrors",
                "counter",
                "records the operator received but could not use (e.g. skipped as undeserializable)",
                &l,
                s.num_records_in_errors as f64,
            );
            f.add(
                "weir_operator_numRecordsInPerSecond",
                "gauge",
                "records in per second over the last second",
                &l,
                s.num_records_in_per_second,
            );
            f.add(
                "weir_operator_numRecordsOutPerSecond",
                "gauge",
                "records out per second over the last second",
                &l,
                s.num_records_out_per_second,
            );
            f.add(
                "weir_operator_currentInputWatermark",
                "gauge",
                "the last watermark the operator received, ms since the epoch (-9223372036854775808: none yet)",
                &l,
                s.current_input_watermark as f64,
            );
        }
    }
}

/// The per-task-subtask families (`weir_task_*`; a task is a chain).
fn add_task_subtasks(f: &mut Families, j: &JobMetrics, job: &str) {
    for t in &j.tasks {
        for s in &t.subtasks {
            let l = format!(
                "{job},task_name=\"{}\",subtask_index=\"{}\"",
                label(&t.name),
                s.index
            );
            f.add(
                "weir_task_backPressuredTimeMsPerSecond",
                "gauge",
                "ms per second spent waiting for space on an output",
                &l,
                s.back_pressured_time_ms_per_second,
            );
            f.add(
                "weir_task_idleTimeMsPerSecond",
                "gauge",
                "ms per second spent waiting for input",
                &l,
                s.idle_time_ms_per_second,
            );
            f.add(
                "weir_task_busyTimeMsPerSecond",
                "gauge",
                "ms per second neither idle nor back-pressured",
                &l,
                s.busy_time_ms_per_second,
            );
            f.add(
                "weir_task_isBackPressured",
                "gauge",
                "1 while the subtask waits for space on an output",
                &l,
                f64::from(u8::from(s.is_back_pressured)),
            );
            f.add(
                "weir_task_outPoolUsage",
                "gauge",
                "queued batches / capacity of the fullest output channel",
                &l,
                s.out_pool_usage,
            );
            f.add(
                "weir_task_inPoolUsage",
                "gauge",
                "queued batches / capacity of the fullest input channel",
                &l,
                s.in_pool_usage,
            );
            f.add(
                "weir_task_checkpointAlignmentTime",
                "gauge",
                "barrier alignment of the latest completed checkpoint, ns",
                &l,
                s.checkpoint_alignment_time as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_flink() {
        assert_eq!(backpressure_level(0.0), "ok");
        assert_eq!(backpressure_level(0.1), "ok");
        assert_eq!(backpressure_level(0.3), "low");
        assert_eq!(backpressure_level(0.9), "high");
    }

    #[test]
    fn waits_are_accounted_when_dropped() {
        let io = SubtaskIo::default();
        assert!(!io.is_back_pressured());
        {
            let _w = io.back_pressured();
            assert!(io.is_back_pressured());
            std::thread::sleep(Duration::from_millis(5));
            assert!(io.back_pressured_ns() >= 5_000_000);
        }
        assert!(!io.is_back_pressured());
        let after = io.back_pressured_ns();
        assert!(after >= 5_000_000);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(io.back_pressured_ns(), after, "no wait in progress");
        assert_eq!(io.idle_ns(), 0);
    }

    #[test]
    fn prometheus_labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut f = Families::default();
        f.add("m", "gauge", "help", "x=\"1\"", 2.0);
        f.add("m", "gauge", "help", "x=\"2\"", 0.5);
        assert_eq!(
            f.render(),
            "# HELP m help\n# TYPE m gauge\nm{x=\"1\"} 2\nm{x=\"2\"} 0.5\n"
        );
    }

    #[test]
    fn cluster_metrics_are_unlabelled_jobmanager_gauges() {
        let text = cluster_prometheus_text(&ClusterMetrics {
            num_registered_task_managers: 2,
            task_slots_total: 3,
            task_slots_available: 1,
        });
        assert!(text.contains("\nweir_jobmanager_numRegisteredTaskManagers 2\n"));
        assert!(text.contains("# TYPE weir_jobmanager_taskSlotsTotal gauge\n"));
        assert!(text.contains("\nweir_jobmanager_taskSlotsTotal 3\n"));
        assert!(text.contains("\nweir_jobmanager_taskSlotsAvailable 1\n"));
    }
}
