//! Telemetry: OpenTelemetry traces of checkpoints and failovers, and the
//! job's metrics, exported over OTLP.
//!
//! This module owns every span weir emits, their names and attributes (this
//! page is the one place they are documented), and their export
//! (`export.rs`: a bounded batch span processor in front of an OTLP exporter,
//! gRPC or HTTP/protobuf), and the OTLP export of the job's metrics
//! (`metrics_export.rs`, see [Metrics](#metrics)).
//!
//! # Turning it on
//! Off by default. It is on when `otel.exporter.otlp.endpoint` is set (or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) and `otel.sdk.disabled` is false (or
//! `OTEL_SDK_DISABLED`); see the `otel.*` options in [`crate::config::options`]
//! and `conf/weir.yaml`. When it is off no span is ever built: no
//! [`Telemetry`] is registered among the job's observers, so the checkpoint
//! and failover events find no one to report to (the hooks run once per
//! checkpoint phase per subtask, never per record); no metric export thread
//! is started either.
//!
//! # How the spans are fed
//! [`Telemetry`] is an observer of the job (it implements
//! `checkpoint::events::CheckpointObserver` and `observer::FailoverObserver`):
//! the coordinator, the subtasks and the job supervisor report events
//! without knowing that telemetry exists, and [`crate::stream`] registers the
//! job's `Telemetry` when it is on. The data the protocol carries for the
//! spans (`SubtaskPhases`, `alignment_name`) belongs to the checkpoint
//! protocol (`checkpoint::events`).
//!
//! # Traces
//! **One trace per checkpoint.** Its trace id and root span id are derived
//! from the job id and the checkpoint id, so every actor and thread that
//! takes part can attach its spans to the root without carrying a context in
//! the barrier. Each span is built with the real start and end instants of
//! its phase (the same instants [`crate::checkpoint::CheckpointStats`]'
//! durations are computed from), when the phase is over.
//!
//! A checkpoint's trace is a tree: the root, one span per task (operator
//! chain), under each one span per subtask, under each its phases. How deep
//! it goes is `traces.checkpoint.span-detail-level` (Flink's option and
//! levels, each adding to the one before): `SPAN_PER_CHECKPOINT` emits the
//! root only; `SPAN_PER_CHECKPOINT_WITH_TASKS` adds per-task arrays to the
//! root (`weir.checkpoint.tasks`, `weir.checkpoint.task_bytes_written`);
//! `CHILDREN_SPANS_PER_TASK` adds the task spans; `CHILDREN_SPANS_PER_SUBTASK`
//! (weir's default; Flink's is `SPAN_PER_CHECKPOINT`) adds the subtask spans
//! and their phases.
//!
//! | span | parent | from → to |
//! |---|---|---|
//! | `checkpoint` | — (root) | trigger → completion (`_metadata` written; `end_to_end_duration`) or abort (status error with the reason) |
//! | `checkpoint.task` | root | the task's first subtask's first phase → its last acknowledgement received (emitted when the checkpoint ends, for the subtasks that acknowledged) |
//! | `checkpoint.subtask` | its task | its first barrier (or snapshot, for sources and finished subtasks) → its acknowledgement received |
//! | `checkpoint.alignment` | its subtask | aligned or at-least-once subtask: first barrier → all barriers in (`alignment_duration`); sources and final checkpoints have none |
//! | `checkpoint.unaligned_capture` | its subtask | unaligned subtask: first barrier → its in-flight data (channel state) is captured |
//! | `checkpoint.sync_snapshot` | its subtask | synchronous snapshot on the subtask's loop (`sync_duration`) |
//! | `checkpoint.async_upload` | its subtask | state file written and synced (`async_duration`) |
//! | `checkpoint.ack` | its subtask | acknowledgement sent → received by the coordinator |
//! | `checkpoint.notify` | its subtask | `notify_complete` of the subtask's operators (two-phase-commit sinks commit); it follows the root's end, since completion is what it reacts to |
//!
//! **One trace per failover**, from a failure to the restarted subtasks running again:
//!
//! | span | parent | from → to |
//! |---|---|---|
//! | `failover` | — (root) | failure seen by the job supervisor → every restarted subtask is running; a span link to the root of the checkpoint it restored from (when that checkpoint completed in this process) |
//! | `failover.cancel_region` | root | failure → every subtask of the region (or job, with `full`) has stopped |
//! | `failover.restore_state` | root | after the restart strategy's delay: latest completed checkpoint read and assigned, new subtasks deployed |
//! | `failover.running` | root | deployed → every new subtask has restored its operators and replayed its channel state |
//!
//! # Attributes
//!
//! | attribute | on | value |
//! |---|---|---|
//! | `weir.job.id` | every span | the job id (32 hex characters) |
//! | `weir.job.name` | root spans | the job's name |
//! | `weir.checkpoint.id` | checkpoint spans | the checkpoint id |
//! | `weir.checkpoint.kind` | checkpoint spans | `checkpoint` or `savepoint` |
//! | `weir.checkpoint.alignment` | checkpoint spans but `checkpoint.notify` | `aligned`, `unaligned` or `at_least_once` (the root and task spans: `unaligned` when any subtask was); a savepoint is `aligned` also in a job with unaligned checkpoints |
//! | `weir.operator` | task and subtask spans | the chain, e.g. `Source -> flat_map` |
//! | `weir.subtask.index` | subtask spans | the subtask index (0-based) |
//! | `weir.checkpoint.subtasks` | `checkpoint.task` | its subtasks that acknowledged |
//! | `weir.checkpoint.tasks`, `weir.checkpoint.task_bytes_written` | root, from `SPAN_PER_CHECKPOINT_WITH_TASKS` | the tasks (chains) that acknowledged, and the bytes each wrote, in the same order |
//! | `weir.checkpoint.bytes_written` | root, `checkpoint.task`, `checkpoint.subtask`, `checkpoint.async_upload` | bytes of state written for this checkpoint, `checkpointed_size` (root and task: summed); less than the state's size with incremental checkpoints, 0 for a finished subtask's final state recorded earlier |
//! | `weir.checkpoint.inflight_bytes` | root, `checkpoint.task`, `checkpoint.subtask`, `checkpoint.async_upload`, `checkpoint.unaligned_capture` | in-flight bytes persisted as channel state |
//! | `weir.checkpoint.failure` | root of an aborted checkpoint | why it was aborted (also the status message) |
//! | `error.message` | a `checkpoint.notify` that failed | the error (also the status message) |
//! | `weir.failover.region` | failover spans | the failover region's index; absent when the whole job restarts |
//! | `weir.failover.strategy` | failover spans | `region` or `full` |
//! | `weir.failover.failed_subtask` | failover spans | the subtask that failed, e.g. `Source -> map (1)`, when known |
//! | `weir.failover.cause` | failover spans | the failure's message |
//! | `weir.failover.restart` | root `failover` | the job's restart count after this restart (`numRestarts`) |
//! | `weir.failover.subtasks` | root `failover` | how many subtasks were restarted |
//! | `weir.failover.restored_checkpoint` | root `failover` | the id of this job's checkpoint the subtasks were restored from (absent: none) |
//!
//! Resource: `service.name` (`otel.service.name`), `service.version`.
//! Instrumentation scope: `weir`.
//!
//! # Metrics
//! The metrics of [`crate::metrics`] (Flink's names, the same values as
//! [`crate::job::JobHandle::metrics_snapshot`] and the Prometheus endpoint)
//! are exported every `otel.metric.export-interval` (10 s;
//! `OTEL_METRIC_EXPORT_INTERVAL` in ms) by one thread per job, and once more
//! when the job ends (bounded by `otel.flush-timeout`), to the same endpoint
//! (HTTP/protobuf: `<endpoint>/v1/metrics`). Each request is bounded by
//! `otel.exporter.otlp.timeout` and never retried; a failed one is counted
//! ([`ExportStats::failed_metric_exports`]) and logged at most once per
//! `otel.drop-log-interval`: the next export carries newer values. Sums are
//! cumulative and monotonic. Same resource and scope as the spans.
//!
//! | metric | type | attributes | unit |
//! |---|---|---|---|
//! | `uptime` | gauge | job | ms |
//! | `numRestarts` | sum | job | |
//! | `lastCheckpointDuration` | gauge | job | ms |
//! | `lastCheckpointSize`, `lastCheckpointFullSize` | gauge | job | bytes |
//! | `lastCompletedCheckpointId` | gauge | job | |
//! | `lastCheckpointRestoreTimestamp` | gauge | job | ms since the epoch |
//! | `numberOfCompletedCheckpoints`, `numberOfFailedCheckpoints`, `totalNumberOfCheckpoints` | sum | job | |
//! | `numberOfInProgressCheckpoints` | gauge | job | |
//! | `numRecordsIn`, `numRecordsOut`, `numRecordsInErrors` | sum | operator subtask | |
//! | `numRecordsInPerSecond`, `numRecordsOutPerSecond` | gauge | operator subtask | records/s |
//! | `backPressuredTimeMsPerSecond`, `idleTimeMsPerSecond`, `busyTimeMsPerSecond` | gauge | task subtask | ms/s |
//! | `isBackPressured` | gauge | task subtask | 0 or 1 |
//! | `outPoolUsage`, `inPoolUsage` | gauge | task subtask | 0 to 1 |
//! | `checkpointAlignmentTime` | gauge | task subtask | ns |
//!
//! Attributes: job: `weir.job.id`, `weir.job.name`; operator subtask: those
//! and `weir.operator` (the operator's name) and `weir.subtask.index`; task
//! subtask: the same with `weir.operator` the chain's name (`A -> B`), as on
//! subtask spans. The `last*` gauges have no data point until a checkpoint
//! completed (or the job restored).

mod export;
mod metrics_export;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

pub use export::ExportStats;

pub(crate) use crate::checkpoint::events::alignment_name;
use crate::checkpoint::events::{
    CheckpointEnded, CheckpointObserver, SubtaskAcked, SubtaskNotified,
};
use crate::config::{options, Conf, ConfigError, ValueSource};
use crate::observer::FailoverObserver;
use crate::Result;

/// Span names.
pub mod span {
    /// Root of a checkpoint's trace.
    pub const CHECKPOINT: &str = "checkpoint";
    /// One task's (operator chain's) part in a checkpoint.
    pub const TASK: &str = "checkpoint.task";
    /// One subtask's part in a checkpoint.
    pub const SUBTASK: &str = "checkpoint.subtask";
    /// Barrier alignment of one subtask.
    pub const ALIGNMENT: &str = "checkpoint.alignment";
    /// Capture of in-flight data by one subtask (unaligned).
    pub const UNALIGNED_CAPTURE: &str = "checkpoint.unaligned_capture";
    /// Synchronous snapshot of one subtask.
    pub const SYNC_SNAPSHOT: &str = "checkpoint.sync_snapshot";
    /// Asynchronous upload of one subtask's state.
    pub const ASYNC_UPLOAD: &str = "checkpoint.async_upload";
    /// One subtask's acknowledgement on its way to the coordinator.
    pub const ACK: &str = "checkpoint.ack";
    /// One subtask's `notify_complete` (commit).
    pub const NOTIFY: &str = "checkpoint.notify";
    /// Root of a failover's trace.
    pub const FAILOVER: &str = "failover";
    /// Stopping the failed region.
    pub const CANCEL_REGION: &str = "failover.cancel_region";
    /// Reading the checkpoint and deploying the new subtasks.
    pub const RESTORE_STATE: &str = "failover.restore_state";
    /// From deployment until every new subtask runs.
    pub const RUNNING: &str = "failover.running";
}

/// Attribute keys.
pub mod attr {
    /// The job id.
    pub const JOB_ID: &str = "weir.job.id";
    /// The job's name.
    pub const JOB_NAME: &str = "weir.job.name";
    /// The checkpoint id.
    pub const CHECKPOINT_ID: &str = "weir.checkpoint.id";
    /// `checkpoint` or `savepoint`.
    pub const CHECKPOINT_KIND: &str = "weir.checkpoint.kind";
    /// `aligned`, `unaligned` or `at_least_once`.
    pub const ALIGNMENT: &str = "weir.checkpoint.alignment";
    /// The subtask's chain name.
    pub const OPERATOR: &str = "weir.operator";
    /// The subtask index.
    pub const SUBTASK_INDEX: &str = "weir.subtask.index";
    /// Bytes of state written.
    pub const BYTES_WRITTEN: &str = "weir.checkpoint.bytes_written";
    /// In-flight bytes persisted.
    pub const INFLIGHT_BYTES: &str = "weir.checkpoint.inflight_bytes";
    /// Subtasks of a task that acknowledged.
    pub const SUBTASKS_ACKED: &str = "weir.checkpoint.subtasks";
    /// The tasks of a checkpoint (root, with tasks).
    pub const TASKS: &str = "weir.checkpoint.tasks";
    /// Bytes written per task, in the order of `weir.checkpoint.tasks`.
    pub const TASK_BYTES: &str = "weir.checkpoint.task_bytes_written";
    /// The checkpoint a failover restored from.
    pub const RESTORED_CHECKPOINT: &str = "weir.failover.restored_checkpoint";
    /// Why a checkpoint was aborted.
    pub const FAILURE: &str = "weir.checkpoint.failure";
    /// The failover region.
    pub const REGION: &str = "weir.failover.region";
    /// `region` or `full`.
    pub const STRATEGY: &str = "weir.failover.strategy";
    /// The subtask that failed.
    pub const FAILED_SUBTASK: &str = "weir.failover.failed_subtask";
    /// The failure's message.
    pub const CAUSE: &str = "weir.failover.cause";
    /// Restart count after this restart.
    pub const RESTART: &str = "weir.failover.restart";
    /// Subtasks restarted.
    pub const SUBTASKS: &str = "weir.failover.subtasks";
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (tonic).
    Grpc,
    /// OTLP/HTTP with protobuf bodies, to `<endpoint>/v1/traces`.
    HttpProtobuf,
}

/// The `otel.*` options of a job whose telemetry is on.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The collector's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The transport.
    pub protocol: OtlpProtocol,
    /// Timeout of one export request.
    pub timeout: Duration,
    /// `service.name`.
    pub service_name: String,
    /// Longest time a span waits before it is exported.
    pub schedule_delay: Duration,
    /// Spans waiting for export at most; more are dropped.
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// At job end: longest wait for the queued spans.
    pub flush_timeout: Duration,
    /// Drops and failures are logged at most once per this interval.
    pub drop_log_interval: Duration,
    /// How often the job's metrics are exported.
    pub metric_export_interval: Duration,
    /// How much of a checkpoint each trace shows (`traces.checkpoint.span-detail-level`).
    pub detail: SpanDetail,
}

/// `traces.checkpoint.span-detail-level`: Flink's levels, each one adding
/// to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpanDetail {
    /// `SPAN_PER_CHECKPOINT`: the root span only.
    PerCheckpoint,
    /// `SPAN_PER_CHECKPOINT_WITH_TASKS`: the root, with per-task arrays.
    PerCheckpointWithTasks,
    /// `CHILDREN_SPANS_PER_TASK`: plus one child span per task.
    PerTask,
    /// `CHILDREN_SPANS_PER_SUBTASK`: plus one span per subtask under its
    /// task, with the subtask's phases under it (weir's default).
    PerSubtask,
}

impl SpanDetail {
    fn from_conf(conf: &Conf) -> SpanDetail {
        match conf.get(&options::TRACES_SPAN_DETAIL).as_str() {
            "SPAN_PER_CHECKPOINT" => SpanDetail::PerCheckpoint,
            "SPAN_PER_CHECKPOINT_WITH_TASKS" => SpanDetail::PerCheckpointWithTasks,
            "CHILDREN_SPANS_PER_TASK" => SpanDetail::PerTask,
            _ => SpanDetail::PerSubtask,
        }
    }
}

impl TelemetryConfig {
    /// Reads the `otel.*` options: `None` when telemetry is off (no
    /// endpoint, or `otel.sdk.disabled`).
    pub fn from_conf(conf: &Conf) -> Result<Option<TelemetryConfig>, ConfigError> {
        if conf.get(&options::OTEL_SDK_DISABLED) {
            return Ok(None);
        }
        let raw = conf.get(&options::OTEL_ENDPOINT);
        let Some(endpoint) = crate::config::parse_endpoint(&raw).flatten() else {
            return Ok(None);
        };
        // Never zero: `Kind::PositiveDuration` rejects it when it is set.
        let metric_export_interval = conf.get(&options::OTEL_METRIC_EXPORT_INTERVAL);
        let max_queue_size = conf.get(&options::OTEL_BSP_MAX_QUEUE_SIZE);
        let max_export_batch_size = conf.get(&options::OTEL_BSP_MAX_EXPORT_BATCH_SIZE);
        if max_export_batch_size > max_queue_size {
            let key = options::OTEL_BSP_MAX_EXPORT_BATCH_SIZE.def.key;
            return Err(ConfigError::BadValue {
                key: key.to_string(),
                value: max_export_batch_size.to_string(),
                origin: conf
                    .entries()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, _, s)| s.clone())
                    .unwrap_or(ValueSource::Default),
                accepted: format!("at most otel.bsp.max-queue-size ({max_queue_size})"),
            });
        }
        Ok(Some(TelemetryConfig {
            endpoint,
            protocol: if conf.get(&options::OTEL_PROTOCOL) == "grpc" {
                OtlpProtocol::Grpc
            } else {
                OtlpProtocol::HttpProtobuf
            },
            timeout: conf.get(&options::OTEL_TIMEOUT),
            service_name: conf.get(&options::OTEL_SERVICE_NAME),
            schedule_delay: conf.get(&options::OTEL_BSP_SCHEDULE_DELAY),
            max_queue_size,
            max_export_batch_size,
            flush_timeout: conf.get(&options::OTEL_FLUSH_TIMEOUT),
            drop_log_interval: conf.get(&options::OTEL_DROP_LOG_INTERVAL),
            metric_export_interval,
            detail: SpanDetail::from_conf(conf),
        }))
    }
}

/// A failover being traced.
struct FailoverTrace {
    trace: TraceId,
    region: Option<usize>,
    failed: Option<String>,
    cause: String,
    started: Instant,
    stopped: Option<Instant>,
    restore_start: Option<Instant>,
    deployed: Option<Instant>,
    waiting: BTreeSet<usize>,
    members: usize,
    last_running: Option<Instant>,
    restart: u64,
    /// The checkpoint of this job the new subtasks were restored from.
    restored: Option<u64>,
}

/// One task's acknowledged subtasks in a checkpoint in progress: what its
/// `checkpoint.task` span and the root's per-task arrays show.
#[derive(Debug, Clone)]
struct TaskAgg {
    start: Instant,
    end: Instant,
    subtasks: usize,
    bytes_written: u64,
    inflight_bytes: u64,
}

/// Checkpoints in progress (their acknowledged subtasks per task) and
/// recently completed ones (for notify spans and failover links).
#[derive(Default)]
struct Checkpoints {
    open: std::collections::BTreeMap<u64, std::collections::BTreeMap<String, TaskAgg>>,
    /// `(id, trace, savepoint)`, newest last, at most [`COMPLETED_KEPT`].
    completed: std::collections::VecDeque<(u64, TraceId, bool)>,
}

/// Completed checkpoints remembered for links and notify spans.
const COMPLETED_KEPT: usize = 256;
/// Checkpoints in progress tracked at most (a restart drops the old ones).
const OPEN_KEPT: usize = 64;

struct Inner {
    job_id: String,
    job_name: String,
    seed: u128,
    anchor: (Instant, SystemTime),
    scope: InstrumentationScope,
    pipeline: export::Pipeline,
    /// The export thread of the job's metrics, once the job runs.
    metrics: Mutex<Option<Arc<metrics_export::MetricsExport>>>,
    cfg: TelemetryConfig,
    flush_timeout: Duration,
    failovers: Mutex<Vec<FailoverTrace>>,
    checkpoints: Mutex<Checkpoints>,
    failover_seq: AtomicU64,
    /// Full restarts so far: a restarted job may take a checkpoint id again
    /// (one that was aborted and deleted), in another trace.
    attempt: AtomicU64,
}

/// A job's telemetry: builds its spans and exports them. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry(Arc<Inner>);

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("job_id", &self.0.job_id)
            .finish_non_exhaustive()
    }
}

// Phase codes in span ids.
const P_ALIGN: u64 = 1;
const P_CAPTURE: u64 = 2;
const P_SYNC: u64 = 3;
const P_UPLOAD: u64 = 4;
const P_ACK: u64 = 5;
const P_NOTIFY: u64 = 6;
const P_CANCEL: u64 = 7;
const P_RESTORE: u64 = 8;
const P_RUNNING: u64 = 9;
const P_TASK: u64 = 10;
const P_SUBTASK: u64 = 11;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(parts: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C908u64;
    for p in parts {
        h = mix(h ^ p);
    }
    h.max(1)
}

impl Telemetry {
    /// The job's telemetry when the configuration turns it on, else `None`.
    pub fn from_conf(conf: &Conf, job_id: &str, job_name: &str) -> Result<Option<Telemetry>> {
        match TelemetryConfig::from_conf(conf)? {
            Some(cfg) => Telemetry::start(&cfg, job_id, job_name).map(Some),
            None => Ok(None),
        }
    }

    /// Starts the export pipeline for one job.
    pub fn start(cfg: &TelemetryConfig, job_id: &str, job_name: &str) -> Result<Telemetry> {
        let pipeline = export::Pipeline::start(cfg)?;
        let seed = u128::from_str_radix(job_id, 16).unwrap_or_else(|_| {
            let h = job_id.bytes().fold(0u64, |h, b| mix(h ^ u64::from(b)));
            (u128::from(h) << 64) | u128::from(mix(h))
        });
        tracing::info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, "exporting checkpoint and failover traces over OTLP");
        Ok(Telemetry(Arc::new(Inner {
            job_id: job_id.to_string(),
            job_name: job_name.to_string(),
            seed,
            anchor: (Instant::now(), SystemTime::now()),
            scope: InstrumentationScope::builder("weir")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            pipeline,
            metrics: Mutex::new(None),
            cfg: cfg.clone(),
            flush_timeout: cfg.flush_timeout,
            failovers: Mutex::new(Vec::new()),
            checkpoints: Mutex::new(Checkpoints::default()),
            failover_seq: AtomicU64::new(0),
            attempt: AtomicU64::new(0),
        })))
    }

    /// What the export has done so far.
    pub fn stats(&self) -> ExportStats {
        let mut stats = self.0.pipeline.stats();
        if let Some(m) = self.metrics_export() {
            (stats.metric_exports, stats.failed_metric_exports) = m.stats();
        }
        stats
    }

    fn metrics_export(&self) -> Option<Arc<metrics_export::MetricsExport>> {
        self.0
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts the periodic OTLP export of the job's metrics, read from
    /// `source` (`None` once the job is gone). A metric exporter that cannot
    /// be built is logged, never fatal: the job runs already.
    pub(crate) fn export_metrics(
        &self,
        source: impl Fn() -> Option<crate::metrics::JobMetrics> + Send + 'static,
    ) {
        match metrics_export::MetricsExport::start(
            &self.0.cfg,
            &self.0.job_id,
            &self.0.job_name,
            Box::new(source),
        ) {
            Ok(m) => *self.0.metrics.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m)),
            Err(e) => tracing::warn!(error = %e, "cannot export the job's metrics over OTLP"),
        }
    }

    /// Ends the job's telemetry: failovers still open are ended with an
    /// error, then the queued spans and the final metrics are exported,
    /// waiting at most `otel.flush-timeout` for both together. Returns
    /// whether everything was handed over in time.
    pub fn shutdown(&self) -> bool {
        let open: Vec<FailoverTrace> = std::mem::take(&mut *self.failovers());
        for f in open {
            self.emit_failover(f, Some("the job ended before the failover finished"));
        }
        let deadline = Instant::now() + self.0.flush_timeout;
        let metrics = self.metrics_export();
        if let Some(m) = &metrics {
            // Spans and metrics are exported at the same time.
            m.request_shutdown();
        }
        let spans = self.0.pipeline.shutdown(self.0.flush_timeout);
        let metrics = metrics.is_none_or(|m| m.shutdown(deadline));
        spans && metrics
    }

    /// The trace of checkpoint `id` of the job's current attempt.
    pub fn checkpoint_trace_id(&self, id: u64) -> TraceId {
        self.trace_id(1, id)
    }

    fn trace_id(&self, kind: u64, n: u64) -> TraceId {
        let (hi, lo) = ((self.0.seed >> 64) as u64, self.0.seed as u64);
        let attempt = self.0.attempt.load(Ordering::SeqCst);
        let a = hash(&[hi, lo, kind, n, attempt]);
        let b = hash(&[lo, hi, kind, n, attempt, a]);
        TraceId::from((u128::from(a) << 64) | u128::from(b))
    }

    fn span_id(trace: TraceId, phase: u64, task: u64) -> SpanId {
        let t = u128::from_be_bytes(trace.to_bytes());
        SpanId::from(hash(&[(t >> 64) as u64, t as u64, phase, task]))
    }

    fn root_id(trace: TraceId) -> SpanId {
        Self::span_id(trace, 0, 0)
    }

    /// The `checkpoint.task` span of the chain called `chain`.
    fn task_id(trace: TraceId, chain: &str) -> SpanId {
        let h = chain.bytes().fold(0u64, |h, b| mix(h ^ u64::from(b)));
        Self::span_id(trace, P_TASK, h)
    }

    /// The `checkpoint.subtask` span of subtask `task` (index among all of the job's).
    fn subtask_id(trace: TraceId, task: usize) -> SpanId {
        Self::span_id(trace, P_SUBTASK, task as u64)
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, Checkpoints> {
        self.0.checkpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The trace of completed checkpoint `id` and whether it was a
    /// savepoint, when it is remembered.
    fn completed(&self, id: u64) -> Option<(TraceId, bool)> {
        self.checkpoints()
            .completed
            .iter()
            .rev()
            .find(|c| c.0 == id)
            .map(|c| (c.1, c.2))
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (i0, s0) = self.0.anchor;
        if at >= i0 {
            s0 + (at - i0)
        } else {
            s0 - (i0 - at)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        trace: TraceId,
        id: SpanId,
        parent: Option<SpanId>,
        name: &'static str,
        start: Instant,
        end: Instant,
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        self.emit_linked(
            trace,
            id,
            parent,
            name,
            (start, end),
            attributes,
            status,
            Vec::new(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_linked(
        &self,
        trace: TraceId,
        id: SpanId,
        parent: Option<SpanId>,
        name: &'static str,
        (start, end): (Instant, Instant),
        mut attributes: Vec<KeyValue>,
        status: Status,
        links: Vec<opentelemetry::trace::Link>,
    ) {
        let mut span_links = SpanLinks::default();
        span_links.links = links;
        attributes.push(KeyValue::new(attr::JOB_ID, self.0.job_id.clone()));
        self.0.pipeline.push(SpanData {
            span_context: SpanContext::new(
                trace,
                id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: self.wall(start),
            end_time: self.wall(end.max(start)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: span_links,
            status,
            instrumentation_scope: self.0.scope.clone(),
        });
    }

    fn checkpoint_attrs(id: u64, savepoint: bool, alignment: &'static str) -> Vec<KeyValue> {
        vec![
            KeyValue::new(attr::CHECKPOINT_ID, id as i64),
            KeyValue::new(
                attr::CHECKPOINT_KIND,
                if savepoint { "savepoint" } else { "checkpoint" },
            ),
            KeyValue::new(attr::ALIGNMENT, alignment),
        ]
    }

    fn failovers(&self) -> std::sync::MutexGuard<'_, Vec<FailoverTrace>> {
        self.0.failovers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_failover(&self, region: Option<usize>, f: impl FnOnce(&mut FailoverTrace)) {
        if let Some(t) = self.failovers().iter_mut().find(|t| t.region == region) {
            f(t);
        }
    }

    fn finish_failovers(&self) {
        let done: Vec<FailoverTrace> = {
            let mut all = self.failovers();
            let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|t| t.deployed.is_some() && t.waiting.is_empty());
            *all = open;
            done
        };
        for t in done {
            self.emit_failover(t, None);
        }
    }

    fn emit_failover(&self, t: FailoverTrace, error: Option<&str>) {
        let now = Instant::now();
        let stopped = t.stopped.unwrap_or(now);
        let restore_start = t.restore_start.unwrap_or(stopped);
        let deployed = t.deployed.unwrap_or(now);
        let running = t.last_running.unwrap_or(deployed).max(deployed);
        let end = if error.is_some() { now } else { running };
        let mut base = vec![
            KeyValue::new(
                attr::STRATEGY,
                if t.region.is_some() { "region" } else { "full" },
            ),
            KeyValue::new(attr::CAUSE, t.cause.clone()),
        ];
        if let Some(r) = t.region {
            base.push(KeyValue::new(attr::REGION, r as i64));
        }
        if let Some(f) = &t.failed {
            base.push(KeyValue::new(attr::FAILED_SUBTASK, f.clone()));
        }
        let root = Self::root_id(t.trace);
        let mut attrs = base.clone();
        attrs.push(KeyValue::new(attr::JOB_NAME, self.0.job_name.clone()));
        attrs.push(KeyValue::new(attr::RESTART, t.restart as i64));
        attrs.push(KeyValue::new(attr::SUBTASKS, t.members as i64));
        let status = error.map_or(Status::Ok, |e| Status::error(e.to_string()));
        // A link to the trace of the checkpoint the failover restored from.
        let mut links = Vec::new();
        if let Some(id) = t.restored {
            attrs.push(KeyValue::new(attr::RESTORED_CHECKPOINT, id as i64));
            if let Some((trace, _)) = self.completed(id) {
                links.push(opentelemetry::trace::Link::new(
                    SpanContext::new(
                        trace,
                        Self::root_id(trace),
                        TraceFlags::SAMPLED,
                        false,
                        TraceState::default(),
                    ),
                    vec![KeyValue::new(attr::CHECKPOINT_ID, id as i64)],
                    0,
                ));
            }
        }
        self.emit_linked(
            t.trace,
            root,
            None,
            span::FAILOVER,
            (t.started, end),
            attrs,
            status,
            links,
        );
        let parent = Some(root);
        self.emit(
            t.trace,
            Self::span_id(t.trace, P_CANCEL, 0),
            parent,
            span::CANCEL_REGION,
            t.started,
            stopped,
            base.clone(),
            Status::Unset,
        );
        if t.restore_start.is_some() {
            self.emit(
                t.trace,
                Self::span_id(t.trace, P_RESTORE, 0),
                parent,
                span::RESTORE_STATE,
                restore_start,
                deployed,
                base.clone(),
                Status::Unset,
            );
        }
        if t.deployed.is_some() {
            self.emit(
                t.trace,
                Self::span_id(t.trace, P_RUNNING, 0),
                parent,
                span::RUNNING,
                deployed,
                running,
                base,
                Status::Unset,
            );
        }
    }
}

impl CheckpointObserver for Telemetry {
    /// The root span of checkpoint `id` (`failure` is `None` when it
    /// completed), and its task spans.
    fn checkpoint_ended(&self, e: &CheckpointEnded<'_>) {
        let CheckpointEnded {
            id,
            savepoint,
            alignment,
            started,
            ended,
            bytes_written,
            inflight_bytes,
            failure,
        } = *e;
        let trace = self.checkpoint_trace_id(id);
        let tasks = {
            let mut cps = self.checkpoints();
            if failure.is_none() {
                cps.completed.push_back((id, trace, savepoint));
                if cps.completed.len() > COMPLETED_KEPT {
                    cps.completed.pop_front();
                }
            }
            cps.open.remove(&id).unwrap_or_default()
        };
        let detail = self.0.cfg.detail;
        let mut attrs = Self::checkpoint_attrs(id, savepoint, alignment);
        attrs.push(KeyValue::new(attr::JOB_NAME, self.0.job_name.clone()));
        attrs.push(KeyValue::new(attr::BYTES_WRITTEN, bytes_written as i64));
        attrs.push(KeyValue::new(attr::INFLIGHT_BYTES, inflight_bytes as i64));
        if detail >= SpanDetail::PerCheckpointWithTasks {
            let names: Vec<opentelemetry::StringValue> =
                tasks.keys().map(|k| k.clone().into()).collect();
            let bytes: Vec<i64> = tasks.values().map(|t| t.bytes_written as i64).collect();
            attrs.push(KeyValue::new(
                attr::TASKS,
                opentelemetry::Value::Array(names.into()),
            ));
            attrs.push(KeyValue::new(
                attr::TASK_BYTES,
                opentelemetry::Value::Array(bytes.into()),
            ));
        }
        let status = match failure {
            Some(reason) => {
                attrs.push(KeyValue::new(attr::FAILURE, reason.to_string()));
                Status::error(reason.to_string())
            }
            None => Status::Ok,
        };
        let root = Self::root_id(trace);
        self.emit(
            trace,
            root,
            None,
            span::CHECKPOINT,
            started,
            ended,
            attrs,
            status,
        );
        if detail < SpanDetail::PerTask {
            return;
        }
        for (chain, t) in tasks {
            let mut a = Self::checkpoint_attrs(id, savepoint, alignment);
            a.push(KeyValue::new(attr::SUBTASKS_ACKED, t.subtasks as i64));
            a.push(KeyValue::new(attr::BYTES_WRITTEN, t.bytes_written as i64));
            a.push(KeyValue::new(attr::INFLIGHT_BYTES, t.inflight_bytes as i64));
            let id = Self::task_id(trace, &chain);
            a.push(KeyValue::new(attr::OPERATOR, chain));
            self.emit(
                trace,
                id,
                Some(root),
                span::TASK,
                t.start,
                t.end,
                a,
                Status::Unset,
            );
        }
    }

    /// One subtask's part in checkpoint `id`, up to its acknowledgement:
    /// counted for its task, and (per subtask detail) its `checkpoint.subtask`
    /// span with its phases under it.
    fn subtask_acked(&self, acked: &SubtaskAcked<'_>) {
        let SubtaskAcked {
            id,
            savepoint,
            mode,
            task,
            stats,
            phases,
            received,
        } = *acked;
        let trace = self.checkpoint_trace_id(id);
        let start = phases
            .first_barrier
            .map_or(phases.sync_start, |f| f.min(phases.sync_start));
        {
            let mut cps = self.checkpoints();
            let agg = cps
                .open
                .entry(id)
                .or_default()
                .entry(stats.task.clone())
                .or_insert(TaskAgg {
                    start,
                    end: received,
                    subtasks: 0,
                    bytes_written: 0,
                    inflight_bytes: 0,
                });
            agg.start = agg.start.min(start);
            agg.end = agg.end.max(received);
            agg.subtasks += 1;
            agg.bytes_written += stats.checkpointed_size;
            agg.inflight_bytes += stats.persisted_data;
            while cps.open.len() > OPEN_KEPT {
                cps.open.pop_first();
            }
        }
        if self.0.cfg.detail < SpanDetail::PerSubtask {
            return;
        }
        let alignment = alignment_name(mode, stats.unaligned_checkpoint, savepoint);
        let base = {
            let mut a = Self::checkpoint_attrs(id, savepoint, alignment);
            a.push(KeyValue::new(attr::OPERATOR, stats.task.clone()));
            a.push(KeyValue::new(attr::SUBTASK_INDEX, stats.index as i64));
            a
        };
        let t = task as u64;
        let subtask = Self::subtask_id(trace, task);
        let mut a = base.clone();
        a.push(KeyValue::new(
            attr::BYTES_WRITTEN,
            stats.checkpointed_size as i64,
        ));
        a.push(KeyValue::new(
            attr::INFLIGHT_BYTES,
            stats.persisted_data as i64,
        ));
        self.emit(
            trace,
            subtask,
            Some(Self::task_id(trace, &stats.task)),
            span::SUBTASK,
            start,
            received,
            a.clone(),
            Status::Unset,
        );
        let parent = Some(subtask);
        if let Some(first) = phases.first_barrier {
            if stats.unaligned_checkpoint {
                let mut c = base.clone();
                c.push(KeyValue::new(
                    attr::INFLIGHT_BYTES,
                    stats.persisted_data as i64,
                ));
                let end = phases.capture_end.unwrap_or(phases.sync_end);
                self.emit(
                    trace,
                    Self::span_id(trace, P_CAPTURE, t),
                    parent,
                    span::UNALIGNED_CAPTURE,
                    first,
                    end,
                    c,
                    Status::Unset,
                );
            } else {
                self.emit(
                    trace,
                    Self::span_id(trace, P_ALIGN, t),
                    parent,
                    span::ALIGNMENT,
                    first,
                    phases.sync_start,
                    base.clone(),
                    Status::Unset,
                );
            }
        }
        self.emit(
            trace,
            Self::span_id(trace, P_SYNC, t),
            parent,
            span::SYNC_SNAPSHOT,
            phases.sync_start,
            phases.sync_end,
            base.clone(),
            Status::Unset,
        );
        self.emit(
            trace,
            Self::span_id(trace, P_UPLOAD, t),
            parent,
            span::ASYNC_UPLOAD,
            phases.upload_start,
            phases.upload_end,
            a,
            Status::Unset,
        );
        self.emit(
            trace,
            Self::span_id(trace, P_ACK, t),
            parent,
            span::ACK,
            phases.upload_end,
            received,
            base,
            Status::Unset,
        );
    }

    /// One subtask's `notify_complete(id)` (per subtask detail only), under
    /// its `checkpoint.subtask` span: `error` when it failed.
    fn subtask_notified(&self, n: &SubtaskNotified<'_>) {
        let SubtaskNotified {
            id,
            task,
            chain,
            index,
            start,
            end,
            error,
        } = *n;
        if self.0.cfg.detail < SpanDetail::PerSubtask {
            return;
        }
        let (trace, savepoint) = self
            .completed(id)
            .unwrap_or_else(|| (self.checkpoint_trace_id(id), false));
        let mut a = vec![
            KeyValue::new(attr::CHECKPOINT_ID, id as i64),
            KeyValue::new(
                attr::CHECKPOINT_KIND,
                if savepoint { "savepoint" } else { "checkpoint" },
            ),
            KeyValue::new(attr::OPERATOR, chain.to_string()),
            KeyValue::new(attr::SUBTASK_INDEX, index as i64),
        ];
        let status = match error {
            Some(e) => {
                a.push(KeyValue::new("error.message", e.to_string()));
                Status::error(e.to_string())
            }
            None => Status::Unset,
        };
        self.emit(
            trace,
            Self::span_id(trace, P_NOTIFY, task as u64),
            Some(Self::subtask_id(trace, task)),
            span::NOTIFY,
            start,
            end,
            a,
            status,
        );
    }
}

impl FailoverObserver for Telemetry {
    /// A failure: region `region` (`None`: the whole job) with subtasks
    /// `members` is about to be cancelled and restarted.
    fn failover_started(
        &self,
        region: Option<usize>,
        members: &[usize],
        failed: Option<&str>,
        cause: &str,
        restart: u64,
    ) {
        let failed = failed.map(str::to_string);
        let n = self.0.failover_seq.fetch_add(1, Ordering::Relaxed);
        let trace = self.trace_id(2, n);
        let replaced = {
            let mut all = self.failovers();
            let old = all
                .iter()
                .position(|f| f.region == region)
                .map(|i| all.remove(i));
            all.push(FailoverTrace {
                trace,
                region,
                failed,
                cause: cause.to_string(),
                started: Instant::now(),
                stopped: None,
                restore_start: None,
                deployed: None,
                waiting: members.iter().copied().collect(),
                members: members.len(),
                last_running: None,
                restart,
                restored: None,
            });
            old
        };
        if let Some(old) = replaced {
            self.emit_failover(old, Some("superseded by another failure"));
        }
    }

    /// Every old subtask of the failover's region has stopped.
    fn failover_stopped(&self, region: Option<usize>) {
        self.with_failover(region, |t| {
            t.stopped.get_or_insert_with(Instant::now);
        });
    }

    /// The restart (after the strategy's delay) begins: checkpoint read next.
    fn failover_restoring(&self, region: Option<usize>, restart: u64) {
        if region.is_none() {
            // Every subtask and the coordinator of the old attempt have
            // stopped: its checkpoints in progress never end.
            self.0.attempt.fetch_add(1, Ordering::SeqCst);
            self.checkpoints().open.clear();
        }
        self.with_failover(region, |t| {
            let now = Instant::now();
            t.stopped.get_or_insert(now);
            t.restore_start = Some(now);
            t.restart = restart;
        });
    }

    /// The new subtasks are deployed, restored from checkpoint `restored`.
    fn failover_deployed(&self, region: Option<usize>, restored: Option<u64>) {
        self.with_failover(region, |t| {
            t.deployed = Some(Instant::now());
            t.restored = restored;
        });
        self.finish_failovers();
    }

    /// Subtask `task` has opened (state restored, channel state replayed) and runs.
    fn subtask_running(&self, task: usize) {
        {
            let mut all = self.failovers();
            if all.is_empty() {
                return;
            }
            for t in all.iter_mut().filter(|t| t.restore_start.is_some()) {
                if t.waiting.remove(&task) {
                    t.last_running = Some(Instant::now());
                }
            }
        }
        self.finish_failovers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let t1 = hash(&[1, 2, 3]);
        assert_eq!(t1, hash(&[1, 2, 3]));
        assert_ne!(t1, hash(&[1, 2, 4]));
        let trace = TraceId::from(0x1234_5678_9abc_def0_1122_3344_5566_7788u128);
        let ids: BTreeSet<u64> = (0..10)
            .flat_map(|p| (0..100).map(move |t| (p, t)))
            .map(|(p, t)| u64::from_be_bytes(Telemetry::span_id(trace, p, t).to_bytes()))
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn off_without_endpoint_or_when_disabled() {
        let mut conf = Conf::defaults();
        assert!(TelemetryConfig::from_conf(&conf).unwrap().is_none());
        conf.set("otel.exporter.otlp.endpoint", "http://127.0.0.1:4317")
            .unwrap();
        assert!(TelemetryConfig::from_conf(&conf).unwrap().is_some());
        conf.set("otel.sdk.disabled", "true").unwrap();
        assert!(TelemetryConfig::from_conf(&conf).unwrap().is_none());
    }

    #[test]
    fn metric_export_interval_must_be_positive() {
        let mut conf = Conf::defaults();
        conf.set("otel.exporter.otlp.endpoint", "http://127.0.0.1:4317")
            .unwrap();
        let cfg = TelemetryConfig::from_conf(&conf).unwrap().unwrap();
        assert_eq!(cfg.metric_export_interval, Duration::from_secs(10));
        for bad in ["0", "0s", "soon"] {
            let err = conf
                .set("otel.metric.export-interval", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("otel.metric.export-interval"), "{err}");
            assert!(err.contains("more than 0"), "{err}");
        }
        conf.set("otel.metric.export-interval", "250").unwrap();
        let cfg = TelemetryConfig::from_conf(&conf).unwrap().unwrap();
        assert_eq!(cfg.metric_export_interval, Duration::from_millis(250));
    }

    #[test]
    fn batch_larger_than_queue_is_rejected() {
        let mut conf = Conf::defaults();
        conf.set("otel.exporter.otlp.endpoint", "http://127.0.0.1:4317")
            .unwrap();
        conf.set("otel.bsp.max-queue-size", 10).unwrap();
        let err = TelemetryConfig::from_conf(&conf).unwrap_err().to_string();
        assert!(err.contains("otel.bsp.max-export-batch-size"), "{err}");
        assert!(
            err.contains("at most otel.bsp.max-queue-size (10)"),
            "{err}"
        );
    }
}
