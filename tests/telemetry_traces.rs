//! Telemetry end to end: real jobs export the traces of their checkpoints and
//! failovers over OTLP (gRPC and HTTP/protobuf) to receivers run in this
//! process, and a collector that is down or slow neither slows a job nor
//! loses a checkpoint. Span names and attributes: `weir_runtime::telemetry`.

mod common;
#[path = "common/otlp.rs"]
mod otlp;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use otlp::Span;
use weir::prelude::*;
use weir::runtime::checkpoint::{CheckpointStats, CheckpointStatus};

fn traced(dir: &Path, endpoint: &str, protocol: &str, extra: &[(&str, &str)]) -> Conf {
    let mut pairs = vec![
        ("execution.checkpointing.interval", "50ms"),
        ("parallelism.default", "2"),
        ("otel.exporter.otlp.endpoint", endpoint),
        ("otel.exporter.otlp.protocol", protocol),
        ("otel.service.name", "weir-test"),
        ("otel.bsp.schedule-delay", "100ms"),
        ("otel.flush-timeout", "5s"),
    ];
    pairs.extend_from_slice(extra);
    conf_with(dir, &pairs)
}

const TOL_MS: f64 = 0.05;

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= TOL_MS,
        "{what}: span says {a:.4} ms, CheckpointStats says {b:.4} ms"
    );
}

/// Checks the trace of every completed checkpoint of `result` against its
/// statistics; `alignment` is `aligned` or `unaligned`. Checkpoints up to
/// `notify_optional_upto` may lack `checkpoint.notify` spans (completed just
/// before a failover: a subtask killed first never commits them).
fn check_checkpoint_traces(
    job_id: &str,
    checkpoints: &[CheckpointStats],
    spans: &[Span],
    alignment: &str,
    notify_optional_upto: u64,
) {
    let completed: Vec<&CheckpointStats> = checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .collect();
    assert!(
        completed.len() >= 3,
        "only {} checkpoints completed",
        completed.len()
    );
    let final_id = completed.iter().map(|c| c.id).max().unwrap();
    let mut traces = std::collections::BTreeSet::new();
    let mut aligned_subtasks = 0;
    for cp in &completed {
        let id = cp.id.to_string();
        let roots: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.name == "checkpoint"
                    && s.attrs.get("weir.checkpoint.id") == Some(&id)
                    && s.status_code == 1
            })
            .collect();
        assert_eq!(
            roots.len(),
            1,
            "one completed root span for checkpoint {id}"
        );
        let root = roots[0];
        assert!(root.parent_span_id.is_empty(), "the root has no parent");
        assert_eq!(root.status_code, 1, "a completed checkpoint's root is OK");
        assert_eq!(root.service, "weir-test");
        assert_eq!(root.attr("weir.job.id"), job_id);
        assert_eq!(root.attr("weir.checkpoint.kind"), "checkpoint");
        assert_eq!(
            root.attr("weir.checkpoint.bytes_written"),
            cp.checkpointed_size.to_string()
        );
        assert_eq!(
            root.attr("weir.checkpoint.inflight_bytes"),
            cp.persisted_data.to_string()
        );
        if cp.id != final_id {
            assert_eq!(root.attr("weir.checkpoint.alignment"), alignment);
        }
        close(root.duration_ms(), cp.end_to_end_duration, "root duration");
        assert!(
            traces.insert(root.trace_id.clone()),
            "each checkpoint has its own trace"
        );
        let children: Vec<&Span> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
            .collect();
        assert_eq!(cp.subtasks.len(), 4, "four subtasks acknowledged");
        // The tree: root -> one span per task -> one per subtask -> phases.
        let tasks: Vec<&&Span> = children
            .iter()
            .filter(|s| s.name == "checkpoint.task")
            .collect();
        let mut task_names: Vec<&str> = tasks.iter().map(|t| t.attr("weir.operator")).collect();
        task_names.sort();
        let mut expected: Vec<&str> = cp.subtasks.iter().map(|s| s.task.as_str()).collect();
        expected.sort();
        expected.dedup();
        assert_eq!(
            task_names, expected,
            "one task span per task of checkpoint {id}"
        );
        for t in &tasks {
            assert_eq!(
                t.parent_span_id, root.span_id,
                "a task's parent is the root"
            );
            let mine: Vec<_> = cp
                .subtasks
                .iter()
                .filter(|s| s.task == t.attr("weir.operator"))
                .collect();
            assert_eq!(t.attr("weir.checkpoint.subtasks"), mine.len().to_string());
            assert_eq!(
                t.attr("weir.checkpoint.bytes_written"),
                mine.iter()
                    .map(|s| s.checkpointed_size)
                    .sum::<u64>()
                    .to_string()
            );
            assert!(t.start_ns >= root.start_ns && t.end_ns <= root.end_ns);
        }
        for st in &cp.subtasks {
            let mine = |name: &str| -> Option<&Span> {
                let found: Vec<&&Span> = children
                    .iter()
                    .filter(|s| {
                        s.name == name
                            && s.attrs.get("weir.operator") == Some(&st.task)
                            && s.attrs.get("weir.subtask.index") == Some(&st.index.to_string())
                    })
                    .collect();
                assert!(
                    found.len() <= 1,
                    "{name} of {} ({}) twice",
                    st.task,
                    st.index
                );
                found.first().map(|s| **s)
            };
            let who = format!("checkpoint {id}, {} ({})", st.task, st.index);
            let sync =
                mine("checkpoint.sync_snapshot").unwrap_or_else(|| panic!("no sync span: {who}"));
            let upload =
                mine("checkpoint.async_upload").unwrap_or_else(|| panic!("no upload span: {who}"));
            let ack = mine("checkpoint.ack").unwrap_or_else(|| panic!("no ack span: {who}"));
            let notify = mine("checkpoint.notify");
            let subtask = mine("checkpoint.subtask").unwrap_or_else(|| {
                panic!(
                    "no subtask span: checkpoint {id}, {} ({})",
                    st.task, st.index
                )
            });
            let task = tasks
                .iter()
                .find(|t| t.attr("weir.operator") == st.task)
                .unwrap();
            assert_eq!(
                subtask.parent_span_id, task.span_id,
                "a subtask's parent is its task"
            );
            assert!(subtask.start_ns >= task.start_ns && subtask.end_ns <= task.end_ns);
            assert_eq!(
                subtask.attr("weir.checkpoint.bytes_written"),
                st.checkpointed_size.to_string()
            );
            assert!(
                notify.is_some() || cp.id <= notify_optional_upto,
                "no notify span: {who}"
            );
            close(
                sync.duration_ms(),
                st.sync_duration,
                &format!("sync, {who}"),
            );
            close(
                upload.duration_ms(),
                st.async_duration,
                &format!("upload, {who}"),
            );
            assert_eq!(
                upload.attr("weir.checkpoint.bytes_written"),
                st.checkpointed_size.to_string()
            );
            assert_eq!(
                upload.attr("weir.checkpoint.inflight_bytes"),
                st.persisted_data.to_string()
            );
            // The phases follow each other.
            assert!(sync.end_ns <= upload.start_ns, "sync before upload: {who}");
            assert_eq!(
                upload.end_ns, ack.start_ns,
                "the ack leaves when the upload ends: {who}"
            );
            let mut phases = vec![sync, upload, ack];
            let before_sync = if st.task == "numbers" || cp.id == final_id || st.finished {
                assert!(
                    mine("checkpoint.alignment").is_none()
                        && mine("checkpoint.unaligned_capture").is_none(),
                    "sources, final checkpoints and subtasks that had finished align nothing: {who}"
                );
                None
            } else if alignment == "aligned" {
                let a = mine("checkpoint.alignment")
                    .unwrap_or_else(|| panic!("no alignment span: {who}"));
                close(
                    a.duration_ms(),
                    st.alignment_duration,
                    &format!("alignment, {who}"),
                );
                assert_eq!(
                    a.end_ns, sync.start_ns,
                    "the snapshot starts when alignment ends: {who}"
                );
                assert_eq!(a.attr("weir.checkpoint.alignment"), "aligned");
                aligned_subtasks += 1;
                Some(a)
            } else {
                let c = mine("checkpoint.unaligned_capture")
                    .unwrap_or_else(|| panic!("no capture span: {who}"));
                assert!(st.unaligned_checkpoint, "{who}");
                assert!(
                    c.start_ns <= sync.start_ns,
                    "capture starts at the first barrier: {who}"
                );
                assert!(
                    c.end_ns >= sync.end_ns && c.end_ns <= upload.start_ns,
                    "capture ends between snapshot and upload: {who}"
                );
                assert_eq!(c.attr("weir.checkpoint.alignment"), "unaligned");
                assert_eq!(
                    c.attr("weir.checkpoint.inflight_bytes"),
                    st.persisted_data.to_string()
                );
                aligned_subtasks += 1;
                Some(c)
            };
            phases.extend(before_sync);
            for s in &phases {
                assert_eq!(
                    s.parent_span_id, subtask.span_id,
                    "{} is a child of its subtask's span: {who}",
                    s.name
                );
                assert!(
                    s.start_ns >= subtask.start_ns && s.end_ns <= subtask.end_ns,
                    "{} lies within its subtask's time: {who}",
                    s.name
                );
                assert_eq!(s.attr("weir.job.id"), job_id);
                assert_eq!(s.attr("weir.checkpoint.id"), id);
                assert!(s.start_ns <= s.end_ns, "{} has a negative duration", s.name);
                assert!(
                    s.start_ns >= root.start_ns && s.end_ns <= root.end_ns,
                    "{} lies within the root's time: {who}",
                    s.name
                );
            }
            // The phases' durations fit in the checkpoint's (an unaligned
            // capture contains the snapshot: counted once).
            let sum: f64 = phases
                .iter()
                .filter(|s| {
                    !(s.name == "checkpoint.sync_snapshot"
                        && alignment == "unaligned"
                        && phases.len() == 4)
                })
                .map(|s| s.duration_ms())
                .sum();
            assert!(
                sum <= cp.end_to_end_duration + TOL_MS,
                "{who}: phases {sum} ms > end to end {} ms",
                cp.end_to_end_duration
            );
            // The commit reacts to the completion.
            if let Some(notify) = notify {
                assert_eq!(notify.parent_span_id, subtask.span_id);
                assert!(
                    notify.start_ns >= root.end_ns,
                    "notify follows completion: {who}"
                );
            }
        }
    }
    assert!(
        aligned_subtasks >= 4,
        "alignment/capture spans of non-source subtasks seen: {aligned_subtasks}"
    );
}

#[test]
fn aligned_checkpoints_are_traced_over_grpc() {
    let rx = otlp::grpc_receiver(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 120_000;
    let env = Env::from_conf(traced(
        &dir.path().join("ckpt"),
        &rx.endpoint(),
        "grpc",
        &[],
    ))
    .unwrap();
    numbers_into_files(&env, n, 200_000.0, &out, Duration::ZERO);
    let result = env.execute("traced-aligned").unwrap();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    let completed = result
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .count();
    // The job's end flushed everything: no wait needed.
    let spans = rx.spans();
    let roots = spans.iter().filter(|s| s.name == "checkpoint").count();
    assert_eq!(
        roots,
        result.checkpoints.len(),
        "one root per checkpoint ({completed} completed)"
    );
    check_checkpoint_traces(&result.job_id, &result.checkpoints, &spans, "aligned", 0);
}

#[test]
fn a_savepoint_is_traced_as_a_savepoint() {
    let rx = otlp::grpc_receiver(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 200_000;
    let env = Env::from_conf(traced(
        &dir.path().join("ckpt"),
        &rx.endpoint(),
        "grpc",
        &[
            (
                "execution.checkpointing.savepoint-dir",
                dir.path().join("savepoints").to_str().unwrap(),
            ),
            // Savepoints are aligned also in a job with unaligned checkpoints.
            ("execution.checkpointing.unaligned.enabled", "true"),
        ],
    ))
    .unwrap();
    numbers_into_files(&env, n, 200_000.0, &out, Duration::ZERO);
    let job = env.execute_async("traced-savepoint").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let path = job.trigger_savepoint(None).unwrap();
    let result = job.wait().unwrap();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    let sp = result
        .checkpoints
        .iter()
        .find(|c| c.is_savepoint && c.status == CheckpointStatus::Completed)
        .expect("a completed savepoint in the statistics");
    assert_eq!(sp.external_path.as_deref(), Some(path.as_path()));
    let spans = rx.spans();
    let id = sp.id.to_string();
    let root = spans
        .iter()
        .find(|s| s.name == "checkpoint" && s.attrs.get("weir.checkpoint.id") == Some(&id))
        .unwrap_or_else(|| panic!("no root span for savepoint {id}"));
    assert_eq!(root.attr("weir.checkpoint.kind"), "savepoint");
    assert_eq!(root.attr("weir.checkpoint.alignment"), "aligned");
    assert_eq!(root.attr("weir.job.id"), result.job_id);
    // Every span of its trace (tasks, subtasks, phases, commits) says savepoint
    // and, but for commits, aligned (they said checkpoint and unaligned).
    let mine: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    for name in [
        "checkpoint.task",
        "checkpoint.subtask",
        "checkpoint.sync_snapshot",
        "checkpoint.notify",
    ] {
        assert!(
            mine.iter().any(|s| s.name == name),
            "the savepoint's trace has {name} spans"
        );
    }
    for s in &mine {
        assert_eq!(s.attr("weir.checkpoint.kind"), "savepoint", "{}", s.name);
        if s.name != "checkpoint.notify" {
            assert_eq!(s.attr("weir.checkpoint.alignment"), "aligned", "{}", s.name);
        }
    }
    // Every other root is a checkpoint.
    for s in spans
        .iter()
        .filter(|s| s.name == "checkpoint" && s.attrs.get("weir.checkpoint.id") != Some(&id))
    {
        assert_eq!(s.attr("weir.checkpoint.kind"), "checkpoint");
    }
}

#[test]
fn unaligned_checkpoints_are_traced_over_http_protobuf() {
    let rx = otlp::http_receiver(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 80_000;
    let env = Env::from_conf(traced(
        &dir.path().join("ckpt"),
        &rx.endpoint(),
        "http/protobuf",
        &[("execution.checkpointing.unaligned.enabled", "true")],
    ))
    .unwrap();
    // The counting subtasks (at most 40k records/s each) fall behind the sources
    // (200k/s): barriers overtake full channels and capture in-flight data.
    numbers_into_files(&env, n, 200_000.0, &out, Duration::from_micros(25));
    let result = env.execute("traced-unaligned").unwrap();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    assert_eq!(
        rx.bad_requests(),
        0,
        "every request was a protobuf POST to /v1/traces or /v1/metrics"
    );
    let spans = rx.spans();
    check_checkpoint_traces(&result.job_id, &result.checkpoints, &spans, "unaligned", 0);
    let with_inflight = result
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed && c.persisted_data > 0)
        .count();
    assert!(
        with_inflight >= 1,
        "some checkpoint persisted in-flight data"
    );
}

#[test]
fn a_region_failover_is_traced() {
    failover_is_traced("region");
}

#[test]
fn a_full_failover_is_traced() {
    failover_is_traced("full");
}

fn failover_is_traced(strategy: &str) {
    let rx = otlp::grpc_receiver(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 300_000;
    let env = Env::from_conf(traced(
        &dir.path().join("ckpt"),
        &rx.endpoint(),
        "grpc",
        &[("jobmanager.execution.failover-strategy", strategy)],
    ))
    .unwrap();
    numbers_into_files(&env, n, 200_000.0, &out, Duration::ZERO);
    let mut job = env.execute_async("traced-failover").unwrap();
    let started = Instant::now();
    while !job
        .checkpoint_stats()
        .iter()
        .any(|c| c.status == CheckpointStatus::Completed)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no checkpoint completed"
        );
        assert!(!job.is_done(), "the job ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before_kill = job
        .checkpoint_stats()
        .iter()
        .map(|c| c.id)
        .max()
        .unwrap_or(0);
    job.kill_subtask("count", 1).unwrap();
    let job_id = job.job_id().to_string();
    let regions = job.regions().to_vec();
    let result = job.wait().unwrap();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    let spans = rx.spans();
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == "failover").collect();
    assert_eq!(roots.len(), 1, "one failover trace");
    let root = roots[0];
    assert!(root.parent_span_id.is_empty());
    assert_eq!(
        root.status_code, 1,
        "the failover finished: {}",
        root.status_message
    );
    assert_eq!(root.attr("weir.job.id"), job_id);
    assert_eq!(root.attr("weir.failover.strategy"), strategy);
    let failed = root.attr("weir.failover.failed_subtask");
    assert_eq!(failed, "count -> files (1)");
    // One region here: the hash exchange connects every subtask.
    assert_eq!(regions.len(), 1, "{regions:?}");
    let region = 0;
    if strategy == "region" {
        assert_eq!(root.attr("weir.failover.region"), "0");
    } else {
        assert!(!root.attrs.contains_key("weir.failover.region"));
    }
    assert!(
        regions[region].iter().any(|s| s == failed),
        "{failed} is in region {region}: {regions:?}"
    );
    assert!(
        root.attr("weir.failover.cause").contains("killed"),
        "{:?}",
        root.attrs
    );
    assert_eq!(root.attr("weir.failover.restart"), "1");
    // A link to the root of the checkpoint it restored from.
    let restored = root.attr("weir.failover.restored_checkpoint");
    let from = spans
        .iter()
        .find(|s| {
            s.name == "checkpoint"
                && s.status_code == 1
                && s.attrs.get("weir.checkpoint.id").map(String::as_str) == Some(restored)
        })
        .unwrap_or_else(|| panic!("no completed checkpoint {restored} traced"));
    assert_eq!(
        root.links,
        vec![(from.trace_id.clone(), from.span_id.clone())],
        "the failover links to checkpoint {restored}'s root"
    );
    assert_eq!(
        root.attr("weir.failover.subtasks"),
        regions[region].len().to_string()
    );
    let child = |name: &str| -> &Span {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span");
        let s = found[0];
        assert_eq!(
            s.trace_id, root.trace_id,
            "{name} is in the failover's trace"
        );
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{name} is a child of the root"
        );
        assert!(s.start_ns <= s.end_ns);
        assert!(
            s.start_ns >= root.start_ns && s.end_ns <= root.end_ns,
            "{name} lies within the root's time"
        );
        assert_eq!(s.attr("weir.failover.failed_subtask"), failed);
        s
    };
    let cancel = child("failover.cancel_region");
    let restore = child("failover.restore_state");
    let running = child("failover.running");
    assert_eq!(
        cancel.start_ns, root.start_ns,
        "cancelling starts at the failure"
    );
    assert!(cancel.end_ns <= restore.start_ns, "restore after cancel");
    assert_eq!(
        restore.end_ns, running.start_ns,
        "running from deployment on"
    );
    assert_eq!(
        running.end_ns, root.end_ns,
        "the failover ends when everything runs"
    );
    // The checkpoints after the failover are traced too.
    check_checkpoint_traces(
        &result.job_id,
        &result.checkpoints,
        &spans,
        "aligned",
        before_kill + 1,
    );
}

/// `traces.checkpoint.span-detail-level`: Flink's four levels, each adding
/// to the one before (root only; root with per-task arrays; task spans;
/// subtask spans and their phases).
#[test]
fn the_span_detail_level_decides_how_deep_the_tree_goes() {
    for (level, names) in [
        ("SPAN_PER_CHECKPOINT", &["checkpoint"][..]),
        ("SPAN_PER_CHECKPOINT_WITH_TASKS", &["checkpoint"][..]),
        (
            "CHILDREN_SPANS_PER_TASK",
            &["checkpoint", "checkpoint.task"][..],
        ),
    ] {
        let rx = otlp::grpc_receiver(Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let env = Env::from_conf(traced(
            &dir.path().join("ckpt"),
            &rx.endpoint(),
            "grpc",
            &[("traces.checkpoint.span-detail-level", level)],
        ))
        .unwrap();
        numbers_into_files(
            &env,
            60_000,
            200_000.0,
            &dir.path().join("out"),
            Duration::ZERO,
        );
        let result = env.execute("traced-detail").unwrap();
        let spans = rx.spans();
        let seen: std::collections::BTreeSet<&str> =
            spans.iter().map(|s| s.name.as_str()).collect();
        let want: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(seen, want, "{level}");
        let cp = result
            .checkpoints
            .iter()
            .find(|c| c.status == CheckpointStatus::Completed)
            .unwrap();
        let root = spans
            .iter()
            .find(|s| s.name == "checkpoint" && s.attr("weir.checkpoint.id") == cp.id.to_string())
            .unwrap();
        let mut tasks: Vec<&str> = cp.subtasks.iter().map(|s| s.task.as_str()).collect();
        tasks.sort();
        tasks.dedup();
        if level == "SPAN_PER_CHECKPOINT" {
            assert!(!root.attrs.contains_key("weir.checkpoint.tasks"), "{level}");
        } else {
            assert_eq!(
                root.attr("weir.checkpoint.tasks"),
                tasks.join(","),
                "{level}"
            );
            let bytes: Vec<String> = tasks
                .iter()
                .map(|t| {
                    cp.subtasks
                        .iter()
                        .filter(|s| s.task == *t)
                        .map(|s| s.checkpointed_size)
                        .sum::<u64>()
                        .to_string()
                })
                .collect();
            assert_eq!(
                root.attr("weir.checkpoint.task_bytes_written"),
                bytes.join(","),
                "{level}"
            );
        }
        if level == "CHILDREN_SPANS_PER_TASK" {
            let under: Vec<&Span> = spans
                .iter()
                .filter(|s| s.name == "checkpoint.task" && s.trace_id == root.trace_id)
                .collect();
            assert_eq!(under.len(), tasks.len());
            assert!(under.iter().all(|t| t.parent_span_id == root.span_id));
        }
    }
}

/// Runs the test job with `extra` options; returns its wall time, its
/// checkpoints and the export stats seen just before the job's end.
fn timed_run(
    extra: &[(&str, &str)],
) -> (
    Duration,
    Vec<CheckpointStats>,
    Option<weir::runtime::telemetry::ExportStats>,
) {
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
    let mut job = env.execute_async("collector-trouble").unwrap();
    while !job.is_done() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = job.telemetry_stats();
    let result = job.wait().unwrap();
    let took = started.elapsed();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    // A checkpoint triggered after a bounded source finished is declined by
    // it, with or without telemetry: not a loss.
    let failed: Vec<_> = result
        .checkpoints
        .iter()
        .filter(|c| c.status != CheckpointStatus::Completed)
        .filter(|c| {
            !c.failure_message
                .as_deref()
                .is_some_and(|m| m.ends_with("the source has finished"))
        })
        .map(|c| (c.id, c.failure_message.clone()))
        .collect();
    assert!(
        failed.is_empty(),
        "checkpoints that did not complete: {failed:?}"
    );
    assert!(
        result.checkpoints.len() >= 3,
        "only {} checkpoints",
        result.checkpoints.len()
    );
    (took, result.checkpoints, stats)
}

#[test]
fn a_collector_that_is_down_or_slow_neither_slows_the_job_nor_loses_checkpoints() {
    let (base, _, none) = timed_run(&[]);
    assert!(none.is_none(), "telemetry is off without an endpoint");
    let bound = base * 3 + Duration::from_secs(2);

    // Down: nothing listens on the port.
    for protocol in ["grpc", "http/protobuf"] {
        let endpoint = otlp::closed_endpoint();
        let (took, _, stats) = timed_run(&[
            ("otel.exporter.otlp.endpoint", &endpoint),
            ("otel.exporter.otlp.protocol", protocol),
            ("otel.bsp.schedule-delay", "50ms"),
        ]);
        let stats = stats.expect("telemetry is on");
        eprintln!("down ({protocol}): {took:?} (without telemetry {base:?}); {stats:?}");
        assert!(
            stats.failed_exports >= 1 && stats.exported == 0,
            "exports to a closed port fail: {stats:?}"
        );
        assert!(
            took <= bound,
            "with the collector down the job took {took:?}, without telemetry {base:?}"
        );
    }

    // Slow: answers after 3 s; requests time out after 300 ms; a small queue overflows.
    let rx = otlp::http_receiver(Duration::from_secs(3));
    let (took, _, stats) = timed_run(&[
        ("otel.exporter.otlp.endpoint", &rx.endpoint()),
        ("otel.exporter.otlp.protocol", "http/protobuf"),
        ("otel.exporter.otlp.timeout", "300ms"),
        ("otel.bsp.schedule-delay", "50ms"),
        ("otel.bsp.max-queue-size", "16"),
        ("otel.bsp.max-export-batch-size", "8"),
        ("otel.flush-timeout", "500ms"),
    ]);
    let stats = stats.expect("telemetry is on");
    eprintln!(
        "slow: {took:?} (without telemetry {base:?}); {stats:?}; {} requests",
        rx.requests()
    );
    assert!(rx.requests() >= 1, "the slow collector was asked");
    assert!(
        stats.dropped >= 1,
        "spans were dropped, not waited for: {stats:?}"
    );
    assert!(
        took <= bound,
        "with a slow collector the job took {took:?}, without telemetry {base:?}"
    );
}

#[test]
fn an_aborted_checkpoint_has_an_error_root_with_the_reason() {
    let rx = otlp::grpc_receiver(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_conf(traced(
        &dir.path().join("ckpt"),
        &rx.endpoint(),
        "grpc",
        &[
            // Every checkpoint expires before it can complete.
            ("execution.checkpointing.timeout", "1ms"),
            (
                "execution.checkpointing.tolerable-failed-checkpoints",
                "1000000",
            ),
        ],
    ))
    .unwrap();
    env.add_source(GeneratorSource::new(3, None, |i, _| i % 997).with_rate(100_000.0))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count")
        .add_sink(DiscardSink);
    let job = env.execute_async("aborting").unwrap();
    let started = Instant::now();
    while job
        .checkpoint_stats()
        .iter()
        .filter(|c| c.status == CheckpointStatus::Failed)
        .count()
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no checkpoint failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    job.cancel();
    let checkpoints = job.checkpoint_stats();
    assert!(job.wait().is_err(), "cancelled");
    let spans = rx.spans();
    let mut checked = 0;
    for cp in checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Failed)
    {
        let reason = cp.failure_message.clone().unwrap();
        let root = spans
            .iter()
            .find(|s| {
                s.name == "checkpoint"
                    && s.attrs.get("weir.checkpoint.id") == Some(&cp.id.to_string())
            })
            .unwrap_or_else(|| panic!("no root span for failed checkpoint {}", cp.id));
        assert_eq!(
            root.status_code, 2,
            "an aborted checkpoint's root is an error"
        );
        assert_eq!(root.status_message, reason);
        assert_eq!(root.attr("weir.checkpoint.failure"), reason);
        close(
            root.duration_ms(),
            cp.end_to_end_duration,
            "aborted root duration",
        );
        if reason.contains("expired") {
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} expired checkpoints traced");
}

#[test]
fn bad_telemetry_configuration_is_rejected_with_clear_errors() {
    let mut c = Conf::defaults();
    let err = c
        .set("otel.exporter.otlp.endpoint", "localhost:4317")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("otel.exporter.otlp.endpoint") && err.contains("http://localhost:4317"),
        "{err}"
    );
    let err = c
        .set("otel.exporter.otlp.protocol", "http/json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("one of grpc, http/protobuf"), "{err}");
    let env = [(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        "https://collector:4317".to_string(),
    )];
    let err = Conf::load_from(None, &env, &[]).unwrap_err().to_string();
    assert!(
        err.contains("environment variable OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("no TLS"),
        "{err}"
    );
    // A cross-option rule is checked when the job starts.
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_conf(conf_with(
        dir.path(),
        &[
            ("otel.exporter.otlp.endpoint", "http://127.0.0.1:4317"),
            ("otel.bsp.max-queue-size", "100"),
            ("otel.bsp.max-export-batch-size", "200"),
        ],
    ))
    .unwrap();
    env.add_source(GeneratorSource::new(3, Some(10), |i, _| i))
        .add_sink(DiscardSink);
    let err = env.execute_async("bad-otel").err().unwrap().to_string();
    assert!(
        err.contains("otel.bsp.max-export-batch-size")
            && err.contains("at most otel.bsp.max-queue-size (100)"),
        "{err}"
    );
    // Disabled wins over an endpoint; no endpoint means off.
    for pairs in [
        vec![
            ("otel.exporter.otlp.endpoint", "http://127.0.0.1:4317"),
            ("otel.sdk.disabled", "true"),
        ],
        vec![],
    ] {
        let env = Env::from_conf(conf_with(dir.path(), &pairs)).unwrap();
        env.add_source(GeneratorSource::new(3, Some(10), |i, _| i))
            .add_sink(DiscardSink);
        let job = env.execute_async("no-otel").unwrap();
        assert!(
            job.telemetry_stats().is_none(),
            "telemetry off with {pairs:?}"
        );
        job.wait().unwrap();
    }
}

#[test]
fn wordcount_exports_its_checkpoint_traces_when_configured() {
    let rx = otlp::grpc_receiver(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(example("wordcount"));
    cmd.args([
        "--words",
        "400000",
        "-q",
        "-D",
        "execution.checkpointing.interval=100ms",
        "-D",
        "otel.bsp.schedule-delay=100ms",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .env("WEIR_EXECUTION_CHECKPOINTING_DIR", dir.path())
    .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    .env("OTEL_SERVICE_NAME", "wordcount-test");
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") && k != "WEIR_EXECUTION_CHECKPOINTING_DIR" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "exporting checkpoint and failover traces over OTLP (grpc) to {}",
            rx.endpoint()
        )),
        "{stderr}"
    );
    let traces = stdout_value(&out, "traces:");
    assert!(traces.contains("spans exported"), "{traces}");
    let spans = rx.spans();
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "checkpoint" && s.status_code == 1)
        .collect();
    assert!(!roots.is_empty(), "no checkpoint trace received");
    for r in &roots {
        assert_eq!(r.service, "wordcount-test");
        assert_eq!(r.attr("weir.job.name"), "wordcount");
    }
    assert!(spans.iter().any(|s| s.name == "checkpoint.async_upload"));
}
