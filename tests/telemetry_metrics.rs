//! Metrics over OTLP end to end: a real job with checkpoints exports its
//! metrics (Flink's names) periodically and once more at its end, over gRPC
//! and HTTP/protobuf, to receivers run in this process; a collector that is
//! down neither slows nor fails the job. Names and attributes:
//! `weir_runtime::telemetry` (section Metrics).

mod common;
#[path = "common/otlp.rs"]
mod otlp;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use otlp::Point;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

/// The data points of metric `name` in export request `request`.
fn of<'a>(points: &'a [Point], name: &str, request: usize) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| p.name == name && p.request == request)
        .collect()
}

/// The single job-level value of `name` in `request`, if any.
fn job_value(points: &[Point], name: &str, request: usize) -> Option<f64> {
    let p = of(points, name, request);
    assert!(p.len() <= 1, "{name} has one data point per export: {p:?}");
    p.first().map(|p| p.value)
}

fn exports_metrics(protocol: &str) {
    let rx = match protocol {
        "grpc" => otlp::grpc_receiver(Duration::ZERO),
        _ => otlp::http_receiver(Duration::ZERO),
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 60_000;
    let env = Env::from_conf(conf_with(
        &dir.path().join("ckpt"),
        &[
            ("execution.checkpointing.interval", "100ms"),
            ("parallelism.default", "2"),
            ("otel.exporter.otlp.endpoint", &rx.endpoint()),
            ("otel.exporter.otlp.protocol", protocol),
            ("otel.service.name", "weir-test"),
            ("otel.metric.export-interval", "200ms"),
            ("otel.flush-timeout", "5s"),
        ],
    ))
    .unwrap();
    // About 2 s of running: several exports while checkpoints complete.
    numbers_into_files(&env, n, 30_000.0, &out, Duration::ZERO);
    let mut job = env.execute_async("metered").unwrap();
    while !job.is_done() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = job.checkpoint_stats();
    let snapshot = job.metrics_snapshot();
    let exports_before_end = rx.metric_requests();
    let result = job.wait().unwrap();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    assert_eq!(rx.bad_requests(), 0, "every request was a protobuf POST");
    assert!(
        rx.metric_requests() > exports_before_end,
        "a final export at the job's end"
    );

    let points = rx.points();
    let requests: BTreeSet<usize> = points.iter().map(|p| p.request).collect();
    assert!(
        requests.len() >= 4,
        "periodic exports every 200 ms over ~2 s, got {}",
        requests.len()
    );
    let last = *requests.last().unwrap();

    // Names, kinds, resource and attributes.
    let names: BTreeSet<&str> = points.iter().map(|p| p.name.as_str()).collect();
    for name in [
        "uptime",
        "lastCheckpointDuration",
        "lastCheckpointSize",
        "lastCheckpointFullSize",
        "lastCompletedCheckpointId",
        "numberOfCompletedCheckpoints",
        "numberOfFailedCheckpoints",
        "numberOfInProgressCheckpoints",
        "totalNumberOfCheckpoints",
        "numRestarts",
        "numRecordsIn",
        "numRecordsOut",
        "numRecordsInErrors",
        "numRecordsInPerSecond",
        "numRecordsOutPerSecond",
        "backPressuredTimeMsPerSecond",
        "idleTimeMsPerSecond",
        "busyTimeMsPerSecond",
        "isBackPressured",
        "outPoolUsage",
        "inPoolUsage",
        "checkpointAlignmentTime",
    ] {
        assert!(names.contains(name), "{name} was exported: {names:?}");
    }
    for p in &points {
        assert_eq!(p.service, "weir-test", "service.name of {}", p.name);
        assert_eq!(p.attr("weir.job.id"), result.job_id, "{p:?}");
        assert_eq!(p.attr("weir.job.name"), "metered", "{p:?}");
        let per_subtask = p.attrs.contains_key("weir.operator");
        assert_eq!(
            per_subtask,
            p.attrs.contains_key("weir.subtask.index"),
            "{p:?}"
        );
        let job_level = [
            "uptime",
            "numRestarts",
            "numberOfCompletedCheckpoints",
            "numberOfFailedCheckpoints",
            "numberOfInProgressCheckpoints",
            "totalNumberOfCheckpoints",
        ]
        .contains(&p.name.as_str())
            || p.name.starts_with("last");
        assert_eq!(per_subtask, !job_level, "attributes of {p:?}");
        let counter = [
            "numRestarts",
            "numberOfCompletedCheckpoints",
            "numberOfFailedCheckpoints",
            "totalNumberOfCheckpoints",
            "numRecordsIn",
            "numRecordsOut",
            "numRecordsInErrors",
        ]
        .contains(&p.name.as_str());
        if counter {
            assert!(
                p.kind == "sum" && p.monotonic && p.cumulative,
                "{} is a cumulative monotonic sum: {p:?}",
                p.name
            );
        } else {
            assert_eq!(p.kind, "gauge", "{p:?}");
        }
    }

    // numberOfCompletedCheckpoints grows, and ends at the job's statistics.
    let completed: Vec<f64> = requests
        .iter()
        .filter_map(|r| job_value(&points, "numberOfCompletedCheckpoints", *r))
        .collect();
    assert!(
        completed.windows(2).all(|w| w[0] <= w[1]),
        "never decreases: {completed:?}"
    );
    let done: Vec<u64> = stats
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .map(|c| c.id)
        .collect();
    assert!(done.len() >= 5, "only {} checkpoints completed", done.len());
    assert!(
        completed.first() < completed.last() && completed.iter().any(|c| *c > 0.0),
        "grows while the job runs: {completed:?}"
    );
    assert_eq!(
        job_value(&points, "numberOfCompletedCheckpoints", last),
        Some(done.len() as f64),
        "the final export matches JobHandle::checkpoint_stats()"
    );
    assert_eq!(
        job_value(&points, "numberOfCompletedCheckpoints", last),
        Some(snapshot.number_of_completed_checkpoints as f64)
    );
    assert_eq!(
        job_value(&points, "lastCompletedCheckpointId", last),
        done.iter().max().map(|id| *id as f64)
    );
    assert_eq!(job_value(&points, "numRestarts", last), Some(0.0));

    // The sink's numRecordsIn: every record the job processed, once.
    let sink_in: Vec<&Point> = of(&points, "numRecordsIn", last)
        .into_iter()
        .filter(|p| p.attr("weir.operator") == "files")
        .collect();
    let indexes: BTreeSet<&str> = sink_in
        .iter()
        .map(|p| p.attr("weir.subtask.index"))
        .collect();
    assert_eq!(indexes, BTreeSet::from(["0", "1"]), "{sink_in:?}");
    let total: f64 = sink_in.iter().map(|p| p.value).sum();
    assert_eq!(total, n as f64, "numRecordsIn of the sink");
    let source_out: f64 = of(&points, "numRecordsOut", last)
        .into_iter()
        .filter(|p| p.attr("weir.operator") == "numbers")
        .map(|p| p.value)
        .sum();
    assert_eq!(source_out, n as f64, "numRecordsOut of the source");
    // No function of this job counts records in errors.
    assert!(
        of(&points, "numRecordsInErrors", last)
            .iter()
            .all(|p| p.value == 0.0),
        "numRecordsInErrors of every operator subtask is 0"
    );
    // Rates were seen while the job ran.
    assert!(
        points
            .iter()
            .any(|p| p.name == "numRecordsInPerSecond" && p.value > 0.0),
        "a positive numRecordsInPerSecond while the job ran"
    );
    // Task metrics carry the chain's name.
    let chains: BTreeSet<&str> = of(&points, "backPressuredTimeMsPerSecond", last)
        .into_iter()
        .map(|p| p.attr("weir.operator"))
        .collect();
    assert!(
        chains.iter().any(|c| c.contains("files")),
        "the sink's chain is among {chains:?}"
    );

    eprintln!(
        "{protocol}: {} exports, {} data points",
        requests.len(),
        points.len()
    );
}

#[test]
fn a_running_job_exports_its_metrics_over_grpc() {
    exports_metrics("grpc");
}

#[test]
fn a_running_job_exports_its_metrics_over_http_protobuf() {
    exports_metrics("http/protobuf");
}

/// Runs the test job with `extra` options; its wall time and export stats.
fn timed_run(extra: &[(&str, &str)]) -> (Duration, Option<weir::runtime::telemetry::ExportStats>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 150_000;
    let mut pairs = vec![
        ("execution.checkpointing.interval", "50ms"),
        ("parallelism.default", "2"),
    ];
    pairs.extend_from_slice(extra);
    let env = Env::from_conf(conf_with(&dir.path().join("ckpt"), &pairs)).unwrap();
    numbers_into_files(&env, n, 150_000.0, &out, Duration::ZERO);
    let started = Instant::now();
    let mut job = env.execute_async("collector-down").unwrap();
    while !job.is_done() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = job.telemetry_stats();
    let result = job.wait().unwrap();
    let took = started.elapsed();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    assert!(
        result
            .checkpoints
            .iter()
            .filter(|c| c.status == CheckpointStatus::Completed)
            .count()
            >= 3,
        "checkpoints completed"
    );
    (took, stats)
}

#[test]
fn a_collector_that_is_down_or_slow_neither_slows_nor_fails_the_job() {
    let (base, none) = timed_run(&[]);
    assert!(none.is_none(), "telemetry is off without an endpoint");
    let bound = base * 3 + Duration::from_secs(2);
    for protocol in ["grpc", "http/protobuf"] {
        let endpoint = otlp::closed_endpoint();
        let (took, stats) = timed_run(&[
            ("otel.exporter.otlp.endpoint", &endpoint),
            ("otel.exporter.otlp.protocol", protocol),
            ("otel.metric.export-interval", "50ms"),
        ]);
        let stats = stats.expect("telemetry is on");
        eprintln!("down ({protocol}): {took:?} (without telemetry {base:?}); {stats:?}");
        assert!(
            stats.failed_metric_exports >= 1 && stats.metric_exports == 0,
            "metric exports to a closed port fail: {stats:?}"
        );
        assert!(
            took <= bound,
            "with the collector down the job took {took:?}, without telemetry {base:?}"
        );
    }

    // Slow: answers after 3 s; requests time out after 300 ms.
    let rx = otlp::http_receiver(Duration::from_secs(3));
    let (took, stats) = timed_run(&[
        ("otel.exporter.otlp.endpoint", &rx.endpoint()),
        ("otel.exporter.otlp.protocol", "http/protobuf"),
        ("otel.exporter.otlp.timeout", "300ms"),
        ("otel.metric.export-interval", "50ms"),
        ("otel.flush-timeout", "500ms"),
    ]);
    let stats = stats.expect("telemetry is on");
    eprintln!(
        "slow: {took:?} (without telemetry {base:?}); {stats:?}; {} metric requests",
        rx.metric_requests()
    );
    assert!(rx.metric_requests() >= 1, "the slow collector was asked");
    assert!(
        stats.failed_metric_exports >= 1 && stats.metric_exports == 0,
        "exports that time out fail: {stats:?}"
    );
    assert!(
        took <= bound,
        "with a slow collector the job took {took:?}, without telemetry {base:?}"
    );
}
