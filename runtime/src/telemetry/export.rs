//! The export side of telemetry: a bounded batch span processor in front of
//! an OTLP exporter (gRPC with tonic, or HTTP/protobuf).
//!
//! Finished spans go into a bounded queue ([`Pipeline::push`] never blocks
//! and never waits for the collector: when the queue is full the span is
//! dropped and counted). One background thread, `weir-otel-export`, owns the
//! exporter and a single-threaded tokio runtime for it; it sends a batch when
//! `max-export-batch-size` spans are queued or `schedule-delay` has passed,
//! each request bounded by the exporter's timeout and never retried (a failed
//! batch is dropped; the next one tries again). Dropped spans and failed
//! exports are counted ([`ExportStats`]) and logged at most once per
//! `otel.drop-log-interval`. [`Pipeline::shutdown`] exports what is queued
//! and waits for it at most the given time, so the end of a job is never held
//! up by a collector that is down or slow.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_otlp::{
    Protocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;

use super::TelemetryConfig;
use crate::{Error, Result};

/// What the export pipeline has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans dropped: the queue was full, an export failed, or they were
    /// still queued when the job's flush timed out.
    pub dropped: u64,
    /// Span export requests that failed (collector down, slow or refusing).
    pub failed_exports: u64,
    /// Metric export requests the collector accepted.
    pub metric_exports: u64,
    /// Metric export requests that failed (their values were dropped; the
    /// next export carries newer ones).
    pub failed_metric_exports: u64,
}

struct Queue {
    spans: VecDeque<SpanData>,
    shutdown: bool,
    finished: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    done: Condvar,
    max_queue: usize,
    /// The last export succeeded (or none was tried yet).
    healthy: AtomicBool,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bounded queue of finished spans and the thread that exports them.
pub(crate) struct Pipeline {
    shared: Arc<Shared>,
    batch: usize,
}

impl Pipeline {
    /// Starts the export thread with an exporter built from `cfg`; fails on
    /// an exporter that cannot be built (nothing is sent before the first span).
    pub(crate) fn start(cfg: &TelemetryConfig) -> Result<Pipeline> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                spans: VecDeque::new(),
                shutdown: false,
                finished: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            max_queue: cfg.max_queue_size,
            healthy: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let worker = Worker {
            shared: shared.clone(),
            cfg: cfg.clone(),
        };
        std::thread::Builder::new()
            .name("weir-otel-export".into())
            .spawn(move || worker.run(ready_tx))
            .map_err(|e| Error::Internal(format!("cannot start the span export thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Internal("the span export thread stopped at start".into()))??;
        Ok(Pipeline {
            shared,
            batch: cfg.max_export_batch_size,
        })
    }

    /// Queues a finished span; drops (and counts) it when the queue is full.
    pub(crate) fn push(&self, span: SpanData) {
        let mut q = self.shared.lock();
        if q.shutdown || q.spans.len() >= self.shared.max_queue {
            drop(q);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.spans.push_back(span);
        let wake = q.spans.len() >= self.batch;
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    pub(crate) fn stats(&self) -> ExportStats {
        ExportStats {
            exported: self.shared.exported.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed_exports: self.shared.failed.load(Ordering::Relaxed),
            ..ExportStats::default()
        }
    }

    /// Exports what is queued and stops the thread, waiting at most
    /// `timeout`; returns whether everything was handed to the collector in
    /// time. When the last export failed (the collector is down or too
    /// slow) the queued spans are dropped at once instead. Later calls
    /// return at once.
    pub(crate) fn shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.lock();
        q.shutdown = true;
        self.shared.wake.notify_one();
        if !q.finished && !self.shared.healthy.load(Ordering::SeqCst) {
            let left = q.spans.len();
            q.spans.clear();
            drop(q);
            self.shared
                .dropped
                .fetch_add(left as u64, Ordering::Relaxed);
            if left > 0 {
                tracing::warn!(
                    spans = left,
                    "the trace collector failed the last export; dropping the queued spans at job end"
                );
            }
            return false;
        }
        while !q.finished {
            let now = Instant::now();
            if now >= deadline {
                let left = q.spans.len();
                drop(q);
                tracing::warn!(
                    spans = left,
                    ?timeout,
                    "trace export did not finish within otel.flush-timeout; giving up on the queued spans"
                );
                return false;
            }
            q = self
                .shared
                .done
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // The thread exports what is left and exits on its own.
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

struct Worker {
    shared: Arc<Shared>,
    cfg: TelemetryConfig,
}

impl Worker {
    fn run(self, ready: std::sync::mpsc::Sender<Result<()>>) {
        let Some((rt, exporter)) = start_runtime("span", &ready, || build_exporter(&self.cfg))
        else {
            return;
        };
        let _ = ready.send(Ok(()));
        let shared = &self.shared;
        let mut logged_dropped = 0u64;
        let mut logged_failed = 0u64;
        let mut last_log: Option<Instant> = None;
        let mut last_error = String::new();
        let mut next_export = Instant::now() + self.cfg.schedule_delay;
        loop {
            let (batch, stop) = {
                let mut q = shared.lock();
                loop {
                    let now = Instant::now();
                    if q.shutdown || q.spans.len() >= self.cfg.max_export_batch_size {
                        break;
                    }
                    if now >= next_export {
                        break;
                    }
                    q = shared
                        .wake
                        .wait_timeout(q, next_export - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if q.shutdown && !shared.healthy.load(Ordering::SeqCst) {
                    // The collector failed the last export: don't keep the end of the job waiting.
                    let left = q.spans.len() as u64;
                    q.spans.clear();
                    shared.dropped.fetch_add(left, Ordering::Relaxed);
                }
                let n = q.spans.len().min(self.cfg.max_export_batch_size);
                let batch: Vec<SpanData> = q.spans.drain(..n).collect();
                (batch, q.shutdown && q.spans.is_empty())
            };
            if batch.len() < self.cfg.max_export_batch_size {
                // Sent because of the delay (not a full batch): wait a whole delay again.
                next_export = Instant::now() + self.cfg.schedule_delay;
            }
            if !batch.is_empty() {
                let n = batch.len() as u64;
                // The exporter bounds each request by its timeout; this bound
                // also covers a transport that ignores it.
                let limit = self.cfg.timeout + Duration::from_secs(1);
                let outcome = rt
                    .block_on(async { tokio::time::timeout(limit, exporter.export(batch)).await });
                shared
                    .healthy
                    .store(matches!(outcome, Ok(Ok(()))), Ordering::SeqCst);
                match outcome {
                    Ok(Ok(())) => {
                        shared.exported.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        last_error = e.to_string();
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        shared.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {
                        last_error = format!("no answer within {limit:?}");
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        shared.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            let dropped = shared.dropped.load(Ordering::Relaxed);
            let failed = shared.failed.load(Ordering::Relaxed);
            if (dropped > logged_dropped || failed > logged_failed)
                && last_log.is_none_or(|t| t.elapsed() >= self.cfg.drop_log_interval)
            {
                tracing::warn!(
                    endpoint = %self.cfg.endpoint,
                    dropped_spans = dropped,
                    failed_exports = failed,
                    last_error = %last_error,
                    "trace export is losing spans (collector down, slow or queue full); the job is not affected"
                );
                logged_dropped = dropped;
                logged_failed = failed;
                last_log = Some(Instant::now());
            }
            if stop {
                let _ = exporter.shutdown_with_timeout(Duration::from_millis(100));
                let mut q = shared.lock();
                q.finished = true;
                drop(q);
                shared.done.notify_all();
                return;
            }
        }
    }
}

/// The start of an export thread: its own current-thread runtime, and the
/// exporter `build` makes inside it (a tonic channel is created inside the
/// runtime it will run on). A failure is sent to `ready` (the job's start
/// waits for it) and gives `None`.
pub(super) fn start_runtime<E>(
    what: &str,
    ready: &std::sync::mpsc::Sender<Result<()>>,
    build: impl FnOnce() -> Result<E>,
) -> Option<(tokio::runtime::Runtime, E)> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::Internal(format!(
                "cannot start the {what} export runtime: {e}"
            ))));
            return None;
        }
    };
    match rt.block_on(async { build() }) {
        Ok(e) => Some((rt, e)),
        Err(e) => {
            let _ = ready.send(Err(e));
            None
        }
    }
}

fn build_exporter(cfg: &TelemetryConfig) -> Result<opentelemetry_otlp::SpanExporter> {
    let built = match cfg.protocol {
        super::OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
        super::OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            // The standard's rule for the signal-independent endpoint.
            .with_endpoint(format!("{}/v1/traces", cfg.endpoint))
            .with_timeout(cfg.timeout)
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
    };
    let mut exporter = built.map_err(|e| {
        Error::Internal(format!(
            "cannot build the OTLP exporter for {}: {e}",
            cfg.endpoint
        ))
    })?;
    exporter.set_resource(&resource(cfg));
    Ok(exporter)
}

/// The resource of every span and metric: `service.name`, `service.version`.
pub(super) fn resource(cfg: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attributes([
            opentelemetry::KeyValue::new("telemetry.sdk.language", "rust"),
            opentelemetry::KeyValue::new("telemetry.sdk.name", "opentelemetry"),
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}
