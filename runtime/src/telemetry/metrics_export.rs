//! The OTLP export of a job's metrics: one background thread per job,
//! `weir-otel-metrics`, built like the span export (`export.rs`).
//!
//! Every `otel.metric.export-interval` the thread takes a
//! [`JobMetrics`] snapshot (atomics and short locks, as the REST server
//! does), lets the OpenTelemetry SDK turn it into OTLP data points (its
//! observable instruments read the snapshot; a `ManualReader` collects them,
//! cumulative temporality) and sends them with the same OTLP exporter
//! settings as the spans: gRPC or HTTP/protobuf (`<endpoint>/v1/metrics`),
//! each request bounded by `otel.exporter.otlp.timeout`, never retried. A
//! failed export is counted and dropped (the next one carries the newer
//! values anyway); failures are logged at most once per
//! `otel.drop-log-interval`. The job never waits for the thread; at job end
//! [`MetricsExport::shutdown`] asks for one last export (the final values)
//! and waits for it at most until the given deadline, and not at all when the
//! last export failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{AsyncInstrument, Meter, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{
    Protocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter as _;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline as SdkPipeline, SdkMeterProvider, Temporality,
};

use super::{attr, TelemetryConfig};
use crate::metrics::JobMetrics;
use crate::{Error, Result};

/// Where the export thread reads the job's metrics; `None` once the job is gone.
pub(crate) type MetricsSource = Box<dyn Fn() -> Option<JobMetrics> + Send + 'static>;

#[derive(Default)]
struct State {
    shutdown: bool,
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    /// The last export succeeded (or none was tried yet).
    healthy: AtomicBool,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The thread that exports a job's metrics periodically.
pub(crate) struct MetricsExport {
    shared: Arc<Shared>,
}

impl MetricsExport {
    /// Starts the export thread; fails on an exporter that cannot be built.
    /// The first export happens one interval after the start.
    pub(crate) fn start(
        cfg: &TelemetryConfig,
        job_id: &str,
        job_name: &str,
        source: MetricsSource,
    ) -> Result<MetricsExport> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            healthy: AtomicBool::new(true),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let worker = Worker {
            shared: shared.clone(),
            cfg: cfg.clone(),
            job: [
                KeyValue::new(attr::JOB_ID, job_id.to_string()),
                KeyValue::new(attr::JOB_NAME, job_name.to_string()),
            ],
            source,
        };
        std::thread::Builder::new()
            .name("weir-otel-metrics".into())
            .spawn(move || worker.run(ready_tx))
            .map_err(|e| Error::Internal(format!("cannot start the metric export thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Internal("the metric export thread stopped at start".into()))??;
        Ok(MetricsExport { shared })
    }

    /// Export requests the collector accepted, and those that failed.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.shared.exported.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// Asks for the final export and the end of the thread, without waiting.
    pub(crate) fn request_shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }

    /// Requests the final export and waits for it until `deadline` at most
    /// (not at all when the last export failed); returns whether it was
    /// done in time. Later calls return at once.
    pub(crate) fn shutdown(&self, deadline: Instant) -> bool {
        self.request_shutdown();
        if !self.shared.healthy.load(Ordering::SeqCst) {
            // The thread skips the final export; don't wait for it.
            return false;
        }
        let mut s = self.shared.lock();
        while !s.finished {
            let now = Instant::now();
            if now >= deadline {
                drop(s);
                tracing::warn!(
                    "the final metric export did not finish within otel.flush-timeout; giving up on it"
                );
                return false;
            }
            s = self
                .shared
                .done
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.shared.healthy.load(Ordering::SeqCst)
    }
}

impl Drop for MetricsExport {
    fn drop(&mut self) {
        // The thread makes its last export and exits on its own.
        self.request_shutdown();
    }
}

/// The SDK's manual reader, shared between the meter provider and the thread.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<SdkPipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The snapshot the instruments' callbacks read during a collection.
type Latest = Arc<Mutex<Option<JobMetrics>>>;

struct Worker {
    shared: Arc<Shared>,
    cfg: TelemetryConfig,
    job: [KeyValue; 2],
    source: MetricsSource,
}

impl Worker {
    fn run(self, ready: std::sync::mpsc::Sender<Result<()>>) {
        let Some((rt, exporter)) =
            super::export::start_runtime("metric", &ready, || build_exporter(&self.cfg))
        else {
            return;
        };
        let reader = SharedReader(Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        ));
        let provider = SdkMeterProvider::builder()
            .with_resource(super::export::resource(&self.cfg))
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter_with_scope(
            InstrumentationScope::builder("weir")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let latest: Latest = Arc::new(Mutex::new(None));
        register(&meter, &latest, &self.job);
        let _ = ready.send(Ok(()));

        let shared = &self.shared;
        let mut logged_failed = 0u64;
        let mut last_log: Option<Instant> = None;
        let mut last_error = String::new();
        let mut next_export = Instant::now() + self.cfg.metric_export_interval;
        loop {
            let stop = {
                let mut s = shared.lock();
                loop {
                    let now = Instant::now();
                    if s.shutdown || now >= next_export {
                        break;
                    }
                    s = shared
                        .wake
                        .wait_timeout(s, next_export - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                s.shutdown
            };
            next_export = Instant::now() + self.cfg.metric_export_interval;
            // At job end the final export is skipped when the collector failed
            // the last one: the end of the job is not kept waiting.
            let skip = stop && !shared.healthy.load(Ordering::SeqCst);
            let snapshot = if skip { None } else { (self.source)() };
            let gone = snapshot.is_none();
            if let Some(m) = snapshot {
                *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                let mut rm = ResourceMetrics::default();
                let outcome = match reader.collect(&mut rm) {
                    Ok(()) => {
                        // The exporter bounds the request by its timeout; this
                        // bound also covers a transport that ignores it.
                        let limit = self.cfg.timeout + Duration::from_secs(1);
                        match rt.block_on(async {
                            tokio::time::timeout(limit, exporter.export(&rm)).await
                        }) {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("no answer within {limit:?}")),
                        }
                    }
                    Err(e) => Err(format!("cannot collect the metrics: {e}")),
                };
                shared.healthy.store(outcome.is_ok(), Ordering::SeqCst);
                match outcome {
                    Ok(()) => {
                        shared.exported.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        last_error = e;
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let failed = shared.failed.load(Ordering::Relaxed);
            if failed > logged_failed
                && last_log.is_none_or(|t| t.elapsed() >= self.cfg.drop_log_interval)
            {
                tracing::warn!(
                    endpoint = %self.cfg.endpoint,
                    failed_exports = failed,
                    last_error = %last_error,
                    "metric export is failing (collector down or slow); the job is not affected"
                );
                logged_failed = failed;
                last_log = Some(Instant::now());
            }
            if stop || gone {
                let _ = exporter.shutdown_with_timeout(Duration::from_millis(100));
                let _ = provider.shutdown_with_timeout(Duration::from_millis(100));
                shared.lock().finished = true;
                shared.done.notify_all();
                return;
            }
        }
    }
}

/// Attributes of a job-level data point, of an operator subtask's, and of a
/// task (chain) subtask's.
fn with(job: &[KeyValue; 2], operator: &str, index: usize) -> [KeyValue; 4] {
    [
        job[0].clone(),
        job[1].clone(),
        KeyValue::new(attr::OPERATOR, operator.to_string()),
        KeyValue::new(attr::SUBTASK_INDEX, index as i64),
    ]
}

/// The latest sample, when there is one.
fn read(latest: &Latest) -> Option<JobMetrics> {
    latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Registers every instrument; their callbacks read `latest`.
fn register(meter: &Meter, latest: &Latest, job: &[KeyValue; 2]) {
    register_job(meter, latest, job);
    register_operator_subtasks(meter, latest, job);
    register_task_subtasks(meter, latest, job);
}

/// Job-level gauges and sums (counters).
fn register_job(meter: &Meter, latest: &Latest, job: &[KeyValue; 2]) {
    type JobU64 = fn(&JobMetrics) -> Option<u64>;
    let job_gauges: [(&'static str, &'static str, &'static str, JobU64); 7] = [
        ("uptime", "ms", "time since the job started", |m| {
            Some(m.uptime_ms)
        }),
        (
            "lastCheckpointDuration",
            "ms",
            "trigger to completion of the latest completed checkpoint",
            |m| m.last_checkpoint_duration,
        ),
        (
            "lastCheckpointSize",
            "By",
            "bytes written by the latest completed checkpoint",
            |m| m.last_checkpoint_size,
        ),
        (
            "lastCheckpointFullSize",
            "By",
            "full state size of the latest completed checkpoint",
            |m| m.last_checkpoint_full_size,
        ),
        (
            "lastCompletedCheckpointId",
            "",
            "id of the latest completed checkpoint",
            |m| m.last_completed_checkpoint_id,
        ),
        (
            "lastCheckpointRestoreTimestamp",
            "ms",
            "when the job last restored from a checkpoint, since the epoch",
            |m| m.last_checkpoint_restore_timestamp,
        ),
        (
            "numberOfInProgressCheckpoints",
            "",
            "checkpoints in progress",
            |m| Some(m.number_of_in_progress_checkpoints),
        ),
    ];
    for (name, unit, help, f) in job_gauges {
        let (latest, job) = (latest.clone(), job.clone());
        let _ = meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                if let Some(v) = read(&latest).as_ref().and_then(f) {
                    o.observe(v, &job);
                }
            })
            .build();
    }
    let job_sums: [(&'static str, &'static str, JobU64); 4] = [
        ("numRestarts", "restarts after failures", |m| {
            Some(m.num_restarts)
        }),
        (
            "numberOfCompletedCheckpoints",
            "completed checkpoints",
            |m| Some(m.number_of_completed_checkpoints),
        ),
        ("numberOfFailedCheckpoints", "failed checkpoints", |m| {
            Some(m.number_of_failed_checkpoints)
        }),
        ("totalNumberOfCheckpoints", "checkpoints triggered", |m| {
            Some(m.total_number_of_checkpoints)
        }),
    ];
    for (name, help, f) in job_sums {
        let (latest, job) = (latest.clone(), job.clone());
        let _ = meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                if let Some(v) = read(&latest).as_ref().and_then(f) {
                    o.observe(v, &job);
                }
            })
            .build();
    }
}

/// Per operator subtask: records in and out, records in errors, and the rates.
fn register_operator_subtasks(meter: &Meter, latest: &Latest, job: &[KeyValue; 2]) {
    type OpU64 = fn(&crate::metrics::OperatorSubtaskMetrics) -> u64;
    type OpF64 = fn(&crate::metrics::OperatorSubtaskMetrics) -> f64;
    let op_sums: [(&'static str, &'static str, OpU64); 3] = [
        ("numRecordsIn", "records that entered the operator", |s| {
            s.num_records_in
        }),
        ("numRecordsOut", "records the operator emitted", |s| {
            s.num_records_out
        }),
        (
            "numRecordsInErrors",
            "records the operator received but could not use",
            |s| s.num_records_in_errors,
        ),
    ];
    for (name, help, f) in op_sums {
        let (latest, job) = (latest.clone(), job.clone());
        let _ = meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                if let Some(m) = read(&latest) {
                    for op in &m.operators {
                        for s in &op.subtasks {
                            o.observe(f(s), &with(&job, &op.name, s.index));
                        }
                    }
                }
            })
            .build();
    }
    let op_gauges: [(&'static str, &'static str, OpF64); 2] = [
        (
            "numRecordsInPerSecond",
            "records in per second over the last second",
            |s| s.num_records_in_per_second,
        ),
        (
            "numRecordsOutPerSecond",
            "records out per second over the last second",
            |s| s.num_records_out_per_second,
        ),
    ];
    for (name, help, f) in op_gauges {
        let (latest, job) = (latest.clone(), job.clone());
        let _ = meter
            .f64_observable_gauge(name)
            .with_unit("{record}/s")
            .with_description(help)
            .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                if let Some(m) = read(&latest) {
                    for op in &m.operators {
                        for s in &op.subtasks {
                            o.observe(f(s), &with(&job, &op.name, s.index));
                        }
                    }
                }
            })
            .build();
    }
}

/// Per task (chain) subtask: waits, channel usage, alignment;
/// `weir.operator` is the chain's name.
fn register_task_subtasks(meter: &Meter, latest: &Latest, job: &[KeyValue; 2]) {
    type TaskF64 = fn(&crate::metrics::TaskSubtaskMetrics) -> f64;
    let task_gauges: [(&'static str, &'static str, &'static str, TaskF64); 7] = [
        (
            "backPressuredTimeMsPerSecond",
            "ms/s",
            "time spent waiting for space on an output",
            |s| s.back_pressured_time_ms_per_second,
        ),
        (
            "idleTimeMsPerSecond",
            "ms/s",
            "time spent waiting for input",
            |s| s.idle_time_ms_per_second,
        ),
        (
            "busyTimeMsPerSecond",
            "ms/s",
            "time neither idle nor back-pressured",
            |s| s.busy_time_ms_per_second,
        ),
        (
            "isBackPressured",
            "",
            "1 while the subtask waits for space on an output",
            |s| f64::from(u8::from(s.is_back_pressured)),
        ),
        (
            "outPoolUsage",
            "1",
            "queued batches / capacity of the fullest output channel",
            |s| s.out_pool_usage,
        ),
        (
            "inPoolUsage",
            "1",
            "queued batches / capacity of the fullest input channel",
            |s| s.in_pool_usage,
        ),
        (
            "checkpointAlignmentTime",
            "ns",
            "barrier alignment of the latest completed checkpoint",
            |s| s.checkpoint_alignment_time as f64,
        ),
    ];
    for (name, unit, help, f) in task_gauges {
        let (latest, job) = (latest.clone(), job.clone());
        let _ = meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                if let Some(m) = read(&latest) {
                    for t in &m.tasks {
                        for s in &t.subtasks {
                            o.observe(f(s), &with(&job, &t.name, s.index));
                        }
                    }
                }
            })
            .build();
    }
}

fn build_exporter(cfg: &TelemetryConfig) -> Result<opentelemetry_otlp::MetricExporter> {
    let built = match cfg.protocol {
        super::OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_retry_policy(RetryPolicy::disabled())
            .with_temporality(Temporality::Cumulative)
            .build(),
        super::OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            // The standard's rule for the signal-independent endpoint.
            .with_endpoint(format!("{}/v1/metrics", cfg.endpoint))
            .with_timeout(cfg.timeout)
            .with_retry_policy(RetryPolicy::disabled())
            .with_temporality(Temporality::Cumulative)
            .build(),
    };
    built.map_err(|e| {
        Error::Internal(format!(
            "cannot build the OTLP metric exporter for {}: {e}",
            cfg.endpoint
        ))
    })
}
