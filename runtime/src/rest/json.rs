//! The JSON documents of the REST API, built from a job's shared state.
//! Field names are Flink's (`jid`, `start-time`, `checkpointed_size`, ...);
//! additions of ours use Flink's metric names (`numRecordsInPerSecond`,
//! `backPressuredTimeMsPerSecond`, ...) or say what they are.
//! Durations are milliseconds and timestamps milliseconds since the epoch,
//! as integers like Flink's; `durations_us` adds microseconds where
//! sub-millisecond phases matter (the checkpoint timeline).
//!
//! Every number says what it measures; a field Flink has that weir cannot
//! measure is left out rather than filled with a made-up 0:
//! - `checkpointed_size` is what the checkpoint uploaded (per subtask, task
//!   and checkpoint): with incremental checkpoints, less than `state_size`,
//!   the size of everything the checkpoint references.
//! - `alignment_buffered` (checkpoint, task) and `alignment.buffered`
//!   (subtask): Flink has reported 0 there since 1.11, when alignment
//!   stopped buffering; weir never buffers either, so the field is absent.
//! - `processed_data` and `alignment.processed` (bytes processed during
//!   alignment), and a vertex's `read-bytes` / `write-bytes`: Flink counts
//!   the serialized bytes of network buffers. weir's in-process channels
//!   carry records as values and never serialize them, so there are no
//!   bytes to count; records are counted (`read-records`, `write-records`)
//!   and in-flight data that is serialized (unaligned checkpoints) is
//!   `persisted_data`. Network channels (cluster mode) serialize, and will
//!   report bytes there.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::checkpoint::{CheckpointStats, CheckpointStatus, SubtaskCheckpointStats};
use crate::job::{JobCore, JobStatus};
use crate::metrics::JobMetrics;

/// Checkpoints listed in `history`, newest first (Flink's `web.checkpoints.history` is 10).
pub(crate) const HISTORY: usize = 20;

/// A job vertex's (operator chain's) id: 32 hex characters, stable per job.
pub(crate) fn vertex_id(job_id: &str, chain: usize) -> String {
    format!("{}{:08x}", &job_id[..job_id.len().min(24)], chain)
}

fn end_time(core: &JobCore) -> i64 {
    core.lifecycle.end_ms().map_or(-1, |e| e as i64)
}

fn duration(core: &JobCore) -> u64 {
    match core.lifecycle.end_ms() {
        Some(end) => end.saturating_sub(core.start_ms),
        None => core.started.elapsed().as_millis() as u64,
    }
}

/// Flink's task state counts for a job whose subtasks all share `status`.
fn tasks(core: &JobCore) -> Value {
    let n = core.plan.num_subtasks();
    let (running, finished, canceling, canceled, failed, deploying) = match core.status() {
        JobStatus::Running => (n, 0, 0, 0, 0, 0),
        JobStatus::Restarting => (0, 0, 0, 0, 0, n),
        JobStatus::Cancelling => (0, 0, n, 0, 0, 0),
        JobStatus::Finished => (0, n, 0, 0, 0, 0),
        JobStatus::Canceled => (0, 0, 0, n, 0, 0),
        JobStatus::Failed => (0, 0, 0, 0, n, 0),
    };
    json!({
        "total": n, "created": 0, "scheduled": 0, "deploying": deploying, "running": running,
        "finished": finished, "canceling": canceling, "canceled": canceled, "failed": failed,
        "reconciling": 0, "initializing": 0,
    })
}

fn last_modification(core: &JobCore) -> u64 {
    core.lifecycle.last_change()
}

/// One entry of `/jobs/overview`.
pub(crate) fn job_overview(core: &JobCore) -> Value {
    json!({
        "jid": core.job_id,
        "name": core.name,
        "state": core.status().as_str(),
        "start-time": core.start_ms,
        "end-time": end_time(core),
        "duration": duration(core),
        "last-modification": last_modification(core),
        "tasks": tasks(core),
    })
}

/// `/jobs/:id`: Flink's job details plus live metrics per operator and subtask.
pub(crate) fn job_details(core: &JobCore) -> Value {
    let m = core.metrics();
    let status = core.status();
    let max_p = core.conf.get(&crate::config::options::MAX_PARALLELISM);
    // Subtask indices among all of the job's subtasks start at `offset`.
    let mut offset = 0;
    let mut vertices = Vec::new();
    let locations = subtask_locations(core);
    for (c, chain) in core.plan.chains.iter().enumerate() {
        vertices.push(vertex(core, &m, (c, chain), offset, max_p, &locations));
        offset += chain.parallelism;
    }
    let nodes = plan_nodes(core);
    let timestamps: serde_json::Map<String, Value> = core
        .lifecycle
        .timestamps()
        .into_iter()
        .map(|(s, t)| (s.as_str().to_string(), json!(t)))
        .collect();
    let mut counts = serde_json::Map::new();
    counts.insert(
        vertex_state(status).to_string(),
        json!(core.plan.chains.len()),
    );
    json!({
        "jid": core.job_id,
        "name": core.name,
        "isStoppable": false,
        "state": status.as_str(),
        "job-type": "STREAMING",
        "start-time": core.start_ms,
        "end-time": end_time(core),
        "duration": duration(core),
        "maxParallelism": max_p,
        "now": crate::checkpoint::now_ms(),
        "timestamps": timestamps,
        "vertices": vertices,
        "status-counts": counts,
        "plan": { "jid": core.job_id, "name": core.name, "type": "STREAMING", "nodes": nodes },
        "numRestarts": m.num_restarts,
        "checkpointing": core.checkpoint_cfg.is_some(),
    })
}

/// One vertex (chain) `c` of `/jobs/:id`, whose first subtask has index
/// `offset` among all of the job's subtasks; `locations`: where each of the
/// job's subtasks runs ([`subtask_locations`]).
fn vertex(
    core: &JobCore,
    m: &crate::metrics::JobMetrics,
    (c, chain): (usize, &crate::graph::ChainPlan),
    offset: usize,
    max_p: usize,
    locations: &[(Option<String>, Option<String>)],
) -> Value {
    let status = core.status();
    let ops: Vec<&crate::metrics::OperatorMetricsSnapshot> =
        m.operators.iter().filter(|o| o.task == c).collect();
    let head = ops.first();
    let tail = ops.last();
    let task = m.tasks.get(c);
    let io = &core.io[offset.min(core.io.len())..(offset + chain.parallelism).min(core.io.len())];
    let bp_ms: u64 = io.iter().map(|i| i.back_pressured_ns() / 1_000_000).sum();
    let idle_ms: u64 = io.iter().map(|i| i.idle_ns() / 1_000_000).sum();
    let busy_ms = (duration(core) * chain.parallelism as u64).saturating_sub(bp_ms + idle_ms);
    // Records into the chain: its head's input (a source reads none).
    let is_source = core.plan.channels.iter().all(|e| e.to_chain != c);
    let read = if is_source {
        0
    } else {
        head.map_or(0, |h| h.num_records_in)
    };
    let written = tail.map_or(0, |t| t.num_records_out);
    let subtasks: Vec<Value> = task
        .map(|t| {
            t.subtasks
                .iter()
                .map(|s| {
                    let (endpoint, tm) = locations
                        .get(offset + s.index)
                        .cloned()
                        .unwrap_or((None, None));
                    json!({
                        "subtask": s.index,
                        "status": vertex_state(status),
                        "endpoint": endpoint,
                        "host": endpoint,
                        "taskmanager-id": tm,
                        "backPressuredTimeMsPerSecond": s.back_pressured_time_ms_per_second,
                        "idleTimeMsPerSecond": s.idle_time_ms_per_second,
                        "busyTimeMsPerSecond": s.busy_time_ms_per_second,
                        "isBackPressured": s.is_back_pressured,
                        "backpressure-level": s.backpressure_level,
                        "outPoolUsage": s.out_pool_usage,
                        "inPoolUsage": s.in_pool_usage,
                        "checkpointAlignmentTime": s.checkpoint_alignment_time,
                        "numRecordsInPerSecond": head.and_then(|h| h.subtasks.get(s.index)).map_or(0.0, |x| if is_source { 0.0 } else { x.num_records_in_per_second }),
                        "numRecordsOutPerSecond": tail.and_then(|h| h.subtasks.get(s.index)).map_or(0.0, |x| x.num_records_out_per_second),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let operators: Vec<Value> = ops
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "parallelism": o.parallelism,
                "numRecordsIn": o.num_records_in,
                "numRecordsOut": o.num_records_out,
                "numRecordsInErrors": o.num_records_in_errors,
                "numRecordsInPerSecond": o.num_records_in_per_second,
                "numRecordsOutPerSecond": o.num_records_out_per_second,
                "subtasks": o.subtasks.iter().map(|s| json!({
                    "subtask": s.index,
                    "numRecordsIn": s.num_records_in,
                    "numRecordsOut": s.num_records_out,
                    "numRecordsInErrors": s.num_records_in_errors,
                    "numRecordsInPerSecond": s.num_records_in_per_second,
                    "numRecordsOutPerSecond": s.num_records_out_per_second,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": vertex_id(&core.job_id, c),
        "index": c,
        "name": chain.name(),
        "maxParallelism": max_p,
        "parallelism": chain.parallelism,
        "status": vertex_state(status),
        "start-time": core.start_ms,
        "end-time": end_time(core),
        "duration": duration(core),
        "tasks": tasks_of(status, chain.parallelism),
        "metrics": {
            "read-records": read, "read-records-complete": true,
            "write-records": written, "write-records-complete": true,
            "accumulated-backpressured-time": bp_ms,
            "accumulated-idle-time": idle_ms,
            "accumulated-busy-time": busy_ms,
        },
        "numRecordsInPerSecond": if is_source { 0.0 } else { head.map_or(0.0, |h| h.num_records_in_per_second) },
        "numRecordsOutPerSecond": tail.map_or(0.0, |t| t.num_records_out_per_second),
        "backpressure-level": task.map_or("ok", |t| t.backpressure_level),
        "operators": operators,
        "subtasks": subtasks,
    })
}

/// The `plan` of `/jobs/:id`: Flink's JSON plan, one node per chain.
fn plan_nodes(core: &JobCore) -> Vec<Value> {
    core.plan
        .chains
        .iter()
        .enumerate()
        .map(|(c, chain)| {
            let inputs: Vec<Value> = core
                .plan
                .channels
                .iter()
                .filter(|e| e.to_chain == c)
                .enumerate()
                .map(|(num, e)| {
                    json!({
                        "num": num,
                        "id": vertex_id(&core.job_id, e.from_chain),
                        "ship_strategy": e.ship.to_string(),
                        "exchange": "pipelined_bounded",
                    })
                })
                .collect();
            json!({
                "id": vertex_id(&core.job_id, c),
                "parallelism": chain.parallelism,
                "operator": "",
                "operator_strategy": "",
                "description": chain.name(),
                "inputs": inputs,
                "optimizer_properties": {},
            })
        })
        .collect()
}

/// A vertex's (and its subtasks') state for a job in `status`.
fn vertex_state(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Running => "RUNNING",
        JobStatus::Restarting => "DEPLOYING",
        JobStatus::Cancelling => "CANCELING",
        JobStatus::Finished => "FINISHED",
        JobStatus::Canceled => "CANCELED",
        JobStatus::Failed => "FAILED",
    }
}

fn tasks_of(status: JobStatus, n: usize) -> Value {
    let mut t = serde_json::Map::new();
    for s in [
        "CREATED",
        "SCHEDULED",
        "DEPLOYING",
        "RUNNING",
        "FINISHED",
        "CANCELING",
        "CANCELED",
        "FAILED",
        "RECONCILING",
        "INITIALIZING",
    ] {
        t.insert(
            s.to_string(),
            json!(if s == vertex_state(status) { n } else { 0 }),
        );
    }
    Value::Object(t)
}

fn status_str(s: CheckpointStatus) -> &'static str {
    match s {
        CheckpointStatus::InProgress => "IN_PROGRESS",
        CheckpointStatus::Completed => "COMPLETED",
        CheckpointStatus::Failed => "FAILED",
    }
}

fn ms(v: f64) -> u64 {
    v.max(0.0).round() as u64
}

fn us(v: f64) -> u64 {
    (v.max(0.0) * 1000.0).round() as u64
}

/// End to end duration of a checkpoint: its final value, or the time since
/// the trigger while it is in progress.
fn e2e(s: &CheckpointStats) -> u64 {
    match s.status {
        CheckpointStatus::InProgress => {
            crate::checkpoint::now_ms().saturating_sub(s.trigger_timestamp)
        }
        _ => ms(s.end_to_end_duration),
    }
}

/// One checkpoint, Flink's `CheckpointStatistics` (with `tasks` when `tasks` is given).
pub(crate) fn checkpoint(
    core: &JobCore,
    s: &CheckpointStats,
    discarded: bool,
    with_tasks: bool,
) -> Value {
    let unaligned = s.subtasks.iter().any(|t| t.unaligned_checkpoint);
    let mut v = json!({
        "className": match s.status {
            CheckpointStatus::InProgress => "in_progress",
            CheckpointStatus::Completed => "completed",
            CheckpointStatus::Failed => "failed",
        },
        "id": s.id,
        "status": status_str(s.status),
        "is_savepoint": s.is_savepoint,
        "savepointFormat": Value::Null,
        "trigger_timestamp": s.trigger_timestamp,
        "latest_ack_timestamp": s.latest_ack_timestamp.max(s.subtasks.iter().map(|t| t.ack_timestamp).max().unwrap_or(0)),
        "checkpointed_size": s.checkpointed_size,
        "state_size": s.state_size,
        "end_to_end_duration": e2e(s),
        "persisted_data": s.persisted_data,
        "num_subtasks": s.num_subtasks,
        "num_acknowledged_subtasks": s.num_acknowledged_subtasks,
        "checkpoint_type": if s.is_savepoint { "SAVEPOINT" } else if unaligned { "UNALIGNED_CHECKPOINT" } else { "CHECKPOINT" },
        "tasks": {},
    });
    if let Some(o) = v.as_object_mut() {
        match s.status {
            CheckpointStatus::Completed => {
                o.insert(
                    "external_path".into(),
                    json!(s.external_path.as_ref().map(|p| p.display().to_string())),
                );
                o.insert("discarded".into(), json!(discarded));
            }
            CheckpointStatus::Failed => {
                o.insert(
                    "failure_timestamp".into(),
                    json!(s.trigger_timestamp + ms(s.end_to_end_duration)),
                );
                o.insert("failure_message".into(), json!(s.failure_message));
            }
            CheckpointStatus::InProgress => {}
        }
    }
    if let (Some(o), true) = (v.as_object_mut(), with_tasks) {
        let mut tasks = serde_json::Map::new();
        for (c, _) in core.plan.chains.iter().enumerate() {
            tasks.insert(
                vertex_id(&core.job_id, c),
                task_checkpoint(core, s, c, false),
            );
        }
        o.insert("tasks".into(), Value::Object(tasks));
    }
    v
}

/// One task (chain) of one checkpoint, with its subtasks' phases
/// (`subtasks` always; Flink's per-task `summary` when `summary` is set).
pub(crate) fn task_checkpoint(
    core: &JobCore,
    s: &CheckpointStats,
    c: usize,
    summary: bool,
) -> Value {
    let Some(chain) = core.plan.chains.get(c) else {
        return Value::Null;
    };
    let name = chain.name();
    let acks: Vec<&SubtaskCheckpointStats> = s.subtasks.iter().filter(|t| t.task == name).collect();
    let latest = acks.iter().map(|a| a.ack_timestamp).max().unwrap_or(0);
    let size: u64 = acks.iter().map(|a| a.state_size).sum();
    let uploaded: u64 = acks.iter().map(|a| a.checkpointed_size).sum();
    let persisted: u64 = acks.iter().map(|a| a.persisted_data).sum();
    let subtasks: Vec<Value> = (0..chain.parallelism)
        .map(|i| match acks.iter().find(|a| a.index == i) {
            Some(a) => json!({
                "index": i,
                "status": "completed",
                "ack_timestamp": a.ack_timestamp,
                "end_to_end_duration": a.ack_timestamp.saturating_sub(s.trigger_timestamp),
                "state_size": a.state_size,
                "checkpointed_size": a.checkpointed_size,
                "checkpoint": { "sync": ms(a.sync_duration), "async": ms(a.async_duration) },
                "alignment": { "persisted": a.persisted_data, "duration": ms(a.alignment_duration) },
                "start_delay": ms(a.start_delay),
                "unaligned_checkpoint": a.unaligned_checkpoint,
                "aborted": false,
                "durations_us": {
                    "start_delay": us(a.start_delay),
                    "alignment": us(a.alignment_duration),
                    "sync": us(a.sync_duration),
                    "async": us(a.async_duration),
                    "end_to_end": a.ack_timestamp.saturating_sub(s.trigger_timestamp) * 1000,
                },
            }),
            None => json!({ "index": i, "status": "pending_or_failed" }),
        })
        .collect();
    let mut v = json!({
        "id": s.id,
        "vertex": vertex_id(&core.job_id, c),
        "name": name,
        "status": status_str(s.status),
        "latest_ack_timestamp": latest,
        "checkpointed_size": uploaded,
        "state_size": size,
        "end_to_end_duration": latest.saturating_sub(s.trigger_timestamp),
        "persisted_data": persisted,
        "num_subtasks": chain.parallelism,
        "num_acknowledged_subtasks": acks.len(),
        "subtasks": subtasks,
    });
    if summary {
        let stat = |f: &dyn Fn(&SubtaskCheckpointStats) -> f64| {
            stats_summary(&acks.iter().map(|a| f(a)).collect::<Vec<_>>())
        };
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "summary".into(),
                json!({
                    "state_size": stat(&|a| a.state_size as f64),
                    "checkpointed_size": stat(&|a| a.checkpointed_size as f64),
                    "end_to_end_duration": stat(&|a| a.ack_timestamp.saturating_sub(s.trigger_timestamp) as f64),
                    "checkpoint_duration": { "sync": stat(&|a| a.sync_duration), "async": stat(&|a| a.async_duration) },
                    "alignment": { "persisted": stat(&|a| a.persisted_data as f64), "duration": stat(&|a| a.alignment_duration) },
                    "start_delay": stat(&|a| a.start_delay),
                }),
            );
        }
    }
    v
}

/// Flink's `StatsSummaryDto`: min, max, avg and percentiles of `values`
/// (all zero for none).
pub(crate) fn stats_summary(values: &[f64]) -> Value {
    if values.is_empty() {
        return json!({"min": 0, "max": 0, "avg": 0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0});
    }
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let rank = (p * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    let avg = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "min": v[0].round() as u64,
        "max": v[v.len() - 1].round() as u64,
        "avg": avg.round() as u64,
        "p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99), "p999": q(0.999),
    })
}

/// `/jobs/:id/checkpoints`: counts, summary, latest, history.
pub(crate) fn checkpoints(core: &JobCore) -> Value {
    let stats = core.checkpoint_stats();
    let completed = core.counts.completed.load(Ordering::Relaxed);
    let failed = core.counts.failed.load(Ordering::Relaxed);
    let in_progress = stats
        .iter()
        .filter(|s| s.status == CheckpointStatus::InProgress)
        .count() as u64;
    let (restored, restores) = core.lifecycle.restores();
    let retained = core.checkpoint_cfg.as_ref().map_or(1, |c| c.num_retained);
    let done: Vec<&CheckpointStats> = stats
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .collect();
    // Savepoints are never discarded and do not count towards num-retained.
    let discarded = |s: &CheckpointStats| {
        s.status == CheckpointStatus::Completed
            && !s.is_savepoint
            && done
                .iter()
                .filter(|d| d.id > s.id && !d.is_savepoint)
                .count()
                >= retained
    };
    let field = |f: &dyn Fn(&CheckpointStats) -> f64| {
        stats_summary(&done.iter().map(|s| f(s)).collect::<Vec<_>>())
    };
    let latest_completed = done
        .iter()
        .rev()
        .find(|s| !s.is_savepoint)
        .map(|s| checkpoint(core, s, false, false));
    let latest_savepoint = done
        .iter()
        .rev()
        .find(|s| s.is_savepoint)
        .map(|s| checkpoint(core, s, false, false));
    let latest_failed = stats
        .iter()
        .rev()
        .find(|s| s.status == CheckpointStatus::Failed)
        .map(|s| checkpoint(core, s, false, false));
    let history: Vec<Value> = stats
        .iter()
        .rev()
        .take(HISTORY)
        .map(|s| checkpoint(core, s, discarded(s), false))
        .collect();
    json!({
        "counts": {
            "restored": restores,
            "total": completed + failed + in_progress,
            "in_progress": in_progress,
            "completed": completed,
            "failed": failed,
        },
        "summary": {
            "checkpointed_size": field(&|s| s.checkpointed_size as f64),
            "state_size": field(&|s| s.state_size as f64),
            "end_to_end_duration": field(&|s| s.end_to_end_duration),
            "persisted_data": field(&|s| s.persisted_data as f64),
        },
        "latest": {
            "completed": latest_completed,
            "savepoint": latest_savepoint,
            "failed": latest_failed,
            "restored": restored.map(|r| json!({
                "id": r.id,
                "restore_timestamp": r.timestamp,
                "is_savepoint": crate::checkpoint::storage::read_metadata(&r.path)
                    .is_ok_and(|m| m.is_savepoint),
                "external_path": r.path.display().to_string(),
            })),
        },
        "history": history,
    })
}

/// `/jobs/:id/checkpoints/config` (the job has checkpointing on).
pub(crate) fn checkpoint_config(
    core: &JobCore,
    cfg: &crate::checkpoint::CheckpointConfig,
) -> Value {
    let millis = |d: std::time::Duration| d.as_millis() as u64;
    json!({
        "mode": if cfg.exactly_once { "exactly_once" } else { "at_least_once" },
        "interval": cfg.interval.map_or(0, millis),
        "timeout": millis(cfg.timeout),
        "min_pause": millis(cfg.min_pause),
        "max_concurrent": cfg.max_concurrent,
        "externalization": { "enabled": true, "delete_on_cancellation": !cfg.retain_on_cancel },
        "state_backend": core.conf.get(&crate::config::options::STATE_BACKEND),
        "checkpoint_storage": "filesystem",
        "checkpoint_dir": cfg.dir.join(&core.job_id).display().to_string(),
        "unaligned_checkpoints": cfg.unaligned,
        "tolerable_failed_checkpoints": cfg.tolerable_failures,
        "aligned_checkpoint_timeout": millis(cfg.aligned_timeout),
        "checkpoints_after_tasks_finish": true,
        "num_retained": cfg.num_retained,
    })
}

/// `/jobs/:id/exceptions`: Flink's exception history, newest first.
pub(crate) fn exceptions(core: &JobCore) -> Value {
    let (failures, truncated) = core.lifecycle.failures();
    let latest = failures.last();
    let lost = core
        .cluster
        .as_ref()
        .map(|cm| lost_taskmanagers(cm))
        .unwrap_or_default();
    let caused = failures_of_losses(&failures, &lost);
    let entries: Vec<Value> = failures
        .iter()
        .enumerate()
        .rev()
        .map(|(i, f)| {
            // The TaskManagers whose loss this failure is: where it
            // happened; their loss records are its concurrent exceptions
            // (the JobManager's record of a loss may come second, after a
            // network channel's failure that names the TaskManager too).
            let losses: Vec<&LostTaskManager> = lost
                .iter()
                .zip(&caused)
                .filter(|(_, c)| **c == Some(i))
                .map(|(l, _)| l)
                .collect();
            let tm = losses.first();
            let concurrent: Vec<Value> = losses
                .iter()
                .filter(|l| !f.message.contains(&l.message))
                .map(|l| l.exception())
                .collect();
            json!({
                "exceptionName": "SubtaskFailure",
                "stacktrace": f.message,
                "timestamp": f.timestamp,
                "taskName": f.task,
                "location": tm.map(|l| l.data_address.clone()),
                "endpoint": tm.map(|l| l.data_address.clone()),
                "taskManagerId": tm.map(|l| l.id.clone()),
                "failureLabels": {},
                "concurrentExceptions": concurrent,
                "action": f.action,
            })
        })
        .collect();
    json!({
        "root-exception": latest.map(|f| f.message.clone()),
        "timestamp": latest.map(|f| f.timestamp),
        "all-exceptions": [],
        "truncated": truncated,
        "exceptionHistory": { "entries": entries, "truncated": truncated },
    })
}

/// `/jobs/:id/regions`: failover regions, their subtasks and restarts.
pub(crate) fn regions(core: &JobCore) -> Value {
    let regions: Vec<Value> = core
        .regions
        .iter()
        .enumerate()
        .map(|(r, members)| {
            json!({
                "index": r,
                "subtasks": members,
                "restarts": core.region_restarts.get(r).map_or(0, |c| c.load(Ordering::Relaxed)),
            })
        })
        .collect();
    json!({
        "failover-strategy": core.conf.get(&crate::config::options::FAILOVER_STRATEGY),
        "numRestarts": core.restarts.load(Ordering::Relaxed),
        "regions": regions,
    })
}

/// `/jobs/:id/metrics`: the job's metrics as Flink's `[{"id", "value"}]`.
pub(crate) fn job_metrics(m: &JobMetrics) -> Vec<(&'static str, String)> {
    let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    vec![
        ("uptime", m.uptime_ms.to_string()),
        ("numRestarts", m.num_restarts.to_string()),
        ("lastCheckpointDuration", opt(m.last_checkpoint_duration)),
        ("lastCheckpointSize", opt(m.last_checkpoint_size)),
        ("lastCheckpointFullSize", opt(m.last_checkpoint_full_size)),
        (
            "lastCompletedCheckpointId",
            opt(m.last_completed_checkpoint_id),
        ),
        (
            "lastCheckpointRestoreTimestamp",
            opt(m.last_checkpoint_restore_timestamp),
        ),
        (
            "numberOfCompletedCheckpoints",
            m.number_of_completed_checkpoints.to_string(),
        ),
        (
            "numberOfFailedCheckpoints",
            m.number_of_failed_checkpoints.to_string(),
        ),
        (
            "numberOfInProgressCheckpoints",
            m.number_of_in_progress_checkpoints.to_string(),
        ),
        (
            "totalNumberOfCheckpoints",
            m.total_number_of_checkpoints.to_string(),
        ),
    ]
}

// ---------- TaskManagers ----------

/// The TaskManager id of this process in `/taskmanagers` when jobs run in it
/// (`execution.target: local`): the process is its own TaskManager, as
/// Flink's local mini cluster is.
pub(crate) const LOCAL_TASKMANAGER: &str = "local";

/// The host of a subtask of a job that runs in this process.
const LOCAL_HOST: &str = "localhost";

/// A lost TaskManager, from the JobManager's record
/// `TaskManager <id> (pid <pid>) lost: <why>` (ids are `<data address>-<pid>`).
struct LostTaskManager {
    timestamp: u64,
    /// The whole record.
    message: String,
    id: String,
    pid: Option<u32>,
    data_address: String,
    why: Option<String>,
}

impl LostTaskManager {
    fn parse(timestamp: u64, message: String) -> LostTaskManager {
        let (name, why) = match message.split_once(") lost: ") {
            Some((n, w)) => (n, Some(w.to_string())),
            None => (message.as_str(), None),
        };
        let rest = name.strip_prefix("TaskManager ").unwrap_or(name);
        let (id, pid) = match rest.rsplit_once(" (pid ") {
            Some((id, pid)) => (id, pid.trim_end_matches(')').parse().ok()),
            None => (rest, None),
        };
        let data_address = id.rsplit_once('-').map_or(id, |(a, _)| a);
        LostTaskManager {
            timestamp,
            id: id.to_string(),
            pid,
            data_address: data_address.to_string(),
            why,
            message: message.clone(),
        }
    }

    /// Whether `text` names this TaskManager (`TaskManager <data address>`,
    /// which its id starts with too): the JobManager's failure of its
    /// subtasks, or a network channel's failure on another TaskManager
    /// (`connection to TaskManager <address> lost`).
    fn named_in(&self, text: &str) -> bool {
        let needle = format!("TaskManager {}", self.data_address);
        text.match_indices(&needle).any(|(i, _)| {
            !text[i + needle.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    }

    /// The loss as an entry of Flink's exception history.
    fn exception(&self) -> Value {
        json!({
            "exceptionName": "TaskManagerLost",
            "stacktrace": self.message,
            "timestamp": self.timestamp,
            "taskName": Value::Null,
            "location": self.data_address,
            "endpoint": self.data_address,
            "taskManagerId": self.id,
            "failureLabels": {},
        })
    }
}

fn lost_taskmanagers(cm: &crate::cluster::jobmanager::ClusterManager) -> Vec<LostTaskManager> {
    cm.lost()
        .into_iter()
        .map(|(timestamp, message)| LostTaskManager::parse(timestamp, message))
        .collect()
}

/// The failure (index into `failures`) each of `lost` caused: the first
/// that names it and happened at most a second before it was found lost
/// (its subtasks' failure, or a network channel's to it on another
/// TaskManager, whichever came first); `None` for a TaskManager whose loss
/// failed nothing (it ran no subtask) or whose failure was not recorded
/// (the job was restarting already).
fn failures_of_losses(
    failures: &[crate::job::FailureRecord],
    lost: &[LostTaskManager],
) -> Vec<Option<usize>> {
    lost.iter()
        .map(|l| {
            failures.iter().position(|f| {
                f.timestamp + 1000 >= l.timestamp
                    && f.timestamp <= l.timestamp + 1000
                    && l.named_in(&f.message)
            })
        })
        .collect()
}

/// The chain and the index in it of the job's subtask `task` (its index
/// among all of the job's subtasks).
fn chain_of(core: &JobCore, task: usize) -> Option<(usize, usize)> {
    let mut t = task;
    for (c, chain) in core.plan.chains.iter().enumerate() {
        if t < chain.parallelism {
            return Some((c, t));
        }
        t -= chain.parallelism;
    }
    None
}

/// The subtasks `tasks` of `core` as `/taskmanagers` lists them.
fn subtask_refs(core: &JobCore, tasks: impl IntoIterator<Item = usize>) -> Vec<Value> {
    tasks
        .into_iter()
        .filter_map(|t| {
            let (c, i) = chain_of(core, t)?;
            let chain = &core.plan.chains[c];
            Some(json!({
                "jid": core.job_id,
                "vertex-id": vertex_id(&core.job_id, c),
                "vertex-name": chain.name(),
                "subtask": i,
                "name": core.plan.subtask_name(t),
            }))
        })
        .collect()
}

/// Where each of the job's subtasks runs (index among all of its
/// subtasks): the `host:port` of its TaskManager's data plane and the
/// TaskManager's id; `localhost` and [`LOCAL_TASKMANAGER`] for a job that
/// runs in this process; `None` before the first deployment of a cluster job.
pub(crate) fn subtask_locations(core: &JobCore) -> Vec<(Option<String>, Option<String>)> {
    let n = core.plan.num_subtasks();
    let Some(cm) = &core.cluster else {
        let here = (
            Some(LOCAL_HOST.to_string()),
            Some(LOCAL_TASKMANAGER.to_string()),
        );
        return vec![here; n];
    };
    let placement = cm.placement();
    let registered = cm.taskmanagers();
    let lost = lost_taskmanagers(cm);
    (0..n)
        .map(|t| match placement.get(t) {
            None => (None, None),
            Some(addr) => {
                let id = registered
                    .iter()
                    .find(|tm| &tm.data_address == addr)
                    .map(|tm| tm.id.clone())
                    .or_else(|| {
                        lost.iter()
                            .rev()
                            .find(|l| &l.data_address == addr)
                            .map(|l| l.id.clone())
                    });
                (Some(addr.clone()), id)
            }
        })
        .collect()
}

/// `/taskmanagers`: the TaskManagers of this process's jobs and those lost.
///
/// Cluster mode (this process is a JobManager): the TaskManagers registered
/// with it now, in the order they registered. Jobs that run in this process
/// (`execution.target: local`) make the process one TaskManager of its own
/// ([`LOCAL_TASKMANAGER`]), whose slots are the slices of its running local
/// jobs (a job of parallelism p uses p slots), all in use. With no job at
/// all the list is empty.
pub(crate) fn taskmanagers(jobs: &[std::sync::Arc<JobCore>]) -> Value {
    let now = crate::checkpoint::now_ms();
    let mut list: Vec<Value> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut lost_docs = Vec::new();
    for core in jobs {
        let Some(cm) = &core.cluster else { continue };
        let generation = cm.generation();
        for tm in cm.taskmanagers() {
            if seen.contains(&tm.id) {
                continue;
            }
            seen.push(tm.id.clone());
            let (host, port) = match tm.data_address.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<i64>().unwrap_or(-1)),
                None => (tm.data_address.as_str(), -1),
            };
            list.push(json!({
                "id": tm.id,
                "path": tm.data_address,
                "dataPort": port,
                "timeSinceLastHeartbeat": now.saturating_sub(tm.last_heartbeat_age_ms),
                "slotsNumber": tm.slots,
                "freeSlots": tm.slots.saturating_sub(tm.slots_used),
                "host": host,
                "dataAddress": tm.data_address,
                "pid": tm.pid,
                "registeredTime": tm.registered_ms,
                "lastHeartbeatAge": tm.last_heartbeat_age_ms,
                "slotsUsed": tm.slots_used,
                "generation": generation,
                "subtasks": subtask_refs(core, tm.subtasks.iter().copied()),
            }));
        }
        let (failures, _) = core.lifecycle.failures();
        let lost = lost_taskmanagers(cm);
        let caused = failures_of_losses(&failures, &lost);
        for (l, c) in lost.iter().zip(caused) {
            lost_docs.push(json!({
                "id": l.id,
                "pid": l.pid,
                "dataAddress": l.data_address,
                "timestamp": l.timestamp,
                "jid": core.job_id,
                "cause": l.why,
                "failure": c.and_then(|c| failures.get(c)).map(|f| f.message.clone()),
            }));
        }
    }
    let local: Vec<&std::sync::Arc<JobCore>> =
        jobs.iter().filter(|j| j.cluster.is_none()).collect();
    if !local.is_empty() {
        let running: Vec<&&std::sync::Arc<JobCore>> =
            local.iter().filter(|j| !j.status().is_terminal()).collect();
        let slots: usize = running
            .iter()
            .map(|j| {
                j.plan
                    .chains
                    .iter()
                    .map(|c| c.parallelism)
                    .max()
                    .unwrap_or(0)
            })
            .sum();
        let subtasks: Vec<Value> = running
            .iter()
            .flat_map(|j| subtask_refs(j, 0..j.plan.num_subtasks()))
            .collect();
        list.push(json!({
            "id": LOCAL_TASKMANAGER,
            "path": LOCAL_HOST,
            "dataPort": -1,
            "timeSinceLastHeartbeat": now,
            "slotsNumber": slots,
            "freeSlots": 0,
            "host": LOCAL_HOST,
            "dataAddress": Value::Null,
            "pid": std::process::id(),
            "registeredTime": local.iter().map(|j| j.start_ms).min().unwrap_or(now),
            "lastHeartbeatAge": 0,
            "slotsUsed": slots,
            "generation": Value::Null,
            "subtasks": subtasks,
        }));
    }
    lost_docs.sort_by_key(|l| std::cmp::Reverse(l["timestamp"].as_u64().unwrap_or(0)));
    json!({ "taskmanagers": list, "lost": lost_docs })
}

/// `/jobs/:id/vertices/:vertexid`: Flink's `JobVertexDetailsInfo`, each
/// subtask with where it runs (`endpoint`, `host`, `taskmanager-id`).
pub(crate) fn vertex_details(core: &JobCore, c: usize) -> Value {
    let Some(chain) = core.plan.chains.get(c) else {
        return Value::Null;
    };
    let m = core.metrics();
    let status = core.status();
    let offset: usize = core.plan.chains[..c].iter().map(|x| x.parallelism).sum();
    let locations = subtask_locations(core);
    let ops: Vec<&crate::metrics::OperatorMetricsSnapshot> =
        m.operators.iter().filter(|o| o.task == c).collect();
    let is_source = core.plan.channels.iter().all(|e| e.to_chain != c);
    let restarts = core.restarts.load(Ordering::Relaxed);
    let region_restarts: Vec<u64> = core
        .region_restarts
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .collect();
    let full_restarts = restarts.saturating_sub(region_restarts.iter().sum());
    let subtasks: Vec<Value> = (0..chain.parallelism)
        .map(|i| {
            let t = offset + i;
            let (endpoint, tm) = locations.get(t).cloned().unwrap_or((None, None));
            let name = core.plan.subtask_name(t);
            let region = core.regions.iter().position(|r| r.contains(&name));
            let attempt = full_restarts
                + region
                    .and_then(|r| region_restarts.get(r))
                    .copied()
                    .unwrap_or(0);
            let read = if is_source {
                0
            } else {
                ops.first()
                    .and_then(|h| h.subtasks.get(i))
                    .map_or(0, |s| s.num_records_in)
            };
            let written = ops
                .last()
                .and_then(|h| h.subtasks.get(i))
                .map_or(0, |s| s.num_records_out);
            json!({
                "subtask": i,
                "status": vertex_state(status),
                "attempt": attempt,
                "endpoint": endpoint,
                "host": endpoint,
                "taskmanager-id": tm,
                "start-time": core.start_ms,
                "end-time": end_time(core),
                "duration": duration(core),
                "metrics": {
                    "read-records": read, "read-records-complete": true,
                    "write-records": written, "write-records-complete": true,
                },
            })
        })
        .collect();
    json!({
        "id": vertex_id(&core.job_id, c),
        "name": chain.name(),
        "parallelism": chain.parallelism,
        "maxParallelism": core.conf.get(&crate::config::options::MAX_PARALLELISM),
        "now": crate::checkpoint::now_ms(),
        "subtasks": subtasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_values() {
        let s = stats_summary(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s["min"], 1);
        assert_eq!(s["max"], 10);
        assert_eq!(s["avg"], 4);
        assert_eq!(s["p50"], 2.0);
        assert_eq!(s["p99"], 10.0);
        assert_eq!(stats_summary(&[])["max"], 0);
    }

    #[test]
    fn lost_taskmanagers_are_parsed_and_found_in_failures() {
        let l = LostTaskManager::parse(
            5,
            "TaskManager 127.0.0.1:4100-77 (pid 77) lost: connection broken: x (y)".into(),
        );
        assert_eq!(l.id, "127.0.0.1:4100-77");
        assert_eq!(l.pid, Some(77));
        assert_eq!(l.data_address, "127.0.0.1:4100");
        assert_eq!(l.why.as_deref(), Some("connection broken: x (y)"));
        assert!(l.named_in(&l.message));
        assert!(
            l.named_in("channel disconnected: connection to TaskManager 127.0.0.1:4100 lost: eof")
        );
        assert!(!l.named_in("connection to TaskManager 127.0.0.1:41001 lost: eof"));
        assert!(!l.named_in("connection to TaskManager 127.0.0.1:410 lost: eof"));
        let failure = |timestamp: u64, message: &str| crate::job::FailureRecord {
            timestamp,
            message: message.into(),
            task: None,
            action: "full restart".into(),
        };
        let failures = [
            failure(1, "connection to TaskManager 127.0.0.1:4100 lost: eof"),
            failure(3000, "connection to TaskManager 127.0.0.1:4100 lost: eof"),
            failure(4000, "something else"),
        ];
        let l = LostTaskManager::parse(3500, l.message.clone());
        assert_eq!(failures_of_losses(&failures, &[l]), vec![Some(1)]);
        let spare = LostTaskManager::parse(3500, "TaskManager h:9-1 (pid 1) lost: gone".into());
        assert_eq!(failures_of_losses(&failures, &[spare]), vec![None]);
    }

    #[test]
    fn vertex_ids_are_32_hex() {
        let id = vertex_id("0123456789abcdef0123456789abcdef", 3);
        assert_eq!(id.len(), 32);
        assert!(id.ends_with("00000003"));
    }
}
