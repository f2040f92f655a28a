//! The REST API against running jobs: every endpoint, Flink's field names,
//! errors (404, 400, 405, 409), savepoints and stop-with-savepoint as
//! asynchronous operations (restored from, job FINISHED), the kill endpoint really restarting a
//! subtask, a triggered checkpoint really completing, and `/metrics`.

mod common;

use common::{get_json, http, wait_for};
use serde_json::Value;
use weir::prelude::*;

/// A running keyed count with a REST server on a free port.
struct Running {
    job: JobHandle,
    base: String,
    _dir: tempfile::TempDir,
}

fn start(name: &str, extra: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vec![
        ("execution.checkpointing.interval", "100ms"),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "1000"),
        ("parallelism.default", "2"),
    ];
    settings.extend_from_slice(extra);
    let env = common::rest_env(&dir.path().join("ckpt"), &settings);
    common::numbers_count_job(&env, 7, 1000, 50_000.0);
    let job = env.execute_async(name).unwrap();
    let addr = job.rest_address().expect("rest.enabled starts the server");
    assert!(
        addr.ip().is_loopback(),
        "binds to loopback by default: {addr}"
    );
    Running {
        base: format!("http://{addr}"),
        job,
        _dir: dir,
    }
}

fn completed_count(base: &str, id: &str) -> u64 {
    get_json(&format!("{base}/jobs/{id}/checkpoints"))["counts"]["completed"]
        .as_u64()
        .unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn assert_fields(what: &str, v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(
            v.get(*f).is_some(),
            "{what} lacks Flink's field '{f}'; has {:?}",
            keys(v)
        );
    }
}

/// Fields Flink has that weir cannot measure are absent, not a made-up 0
/// (see `runtime/src/rest/json.rs`).
fn assert_absent(what: &str, v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(*f).is_none(), "{what} has '{f}': {v}");
    }
}

fn error_of(status: u16, body: &str, expected: u16) -> String {
    assert_eq!(status, expected, "body: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {body}"));
    assert_eq!(errors.len(), 1, "{body}");
    errors[0].as_str().unwrap().to_string()
}

#[test]
fn every_read_endpoint_has_flinks_fields() {
    let r = start("rest-read", &[]);
    let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
    wait_for("two completed checkpoints", 60, || {
        (completed_count(base, &id) >= 2).then_some(())
    });

    let o = get_json(&format!("{base}/overview"));
    assert_fields(
        "/overview",
        &o,
        &[
            "taskmanagers",
            "slots-total",
            "slots-available",
            "jobs-running",
            "jobs-finished",
            "jobs-cancelled",
            "jobs-failed",
        ],
    );
    assert!(o["jobs-running"].as_u64().unwrap() >= 1);

    let jobs = get_json(&format!("{base}/jobs"));
    let mine = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .expect("/jobs lists the job");
    assert_eq!(mine["status"], "RUNNING");

    let ov = get_json(&format!("{base}/jobs/overview"));
    let mine = ov["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["jid"] == id.as_str())
        .expect("/jobs/overview lists the job");
    assert_fields(
        "/jobs/overview entry",
        mine,
        &[
            "jid",
            "name",
            "state",
            "start-time",
            "end-time",
            "duration",
            "last-modification",
            "tasks",
        ],
    );
    assert_eq!(mine["name"], "rest-read");
    assert_eq!(mine["end-time"], -1);
    assert_eq!(mine["tasks"]["total"], 4);

    let d = get_json(&format!("{base}/jobs/{id}"));
    assert_fields(
        "/jobs/:id",
        &d,
        &[
            "jid",
            "name",
            "isStoppable",
            "state",
            "start-time",
            "end-time",
            "duration",
            "now",
            "timestamps",
            "vertices",
            "status-counts",
            "plan",
        ],
    );
    assert_eq!(d["state"], "RUNNING");
    assert!(d["timestamps"]["RUNNING"].as_u64().unwrap() > 0);
    let vertices = d["vertices"].as_array().unwrap();
    assert_eq!(vertices.len(), 2, "source chain and count -> sink chain");
    for v in vertices {
        assert_fields(
            "vertex",
            v,
            &[
                "id",
                "name",
                "parallelism",
                "maxParallelism",
                "status",
                "start-time",
                "duration",
                "tasks",
                "metrics",
            ],
        );
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
        assert_eq!(v["parallelism"], 2);
        assert_fields(
            "vertex metrics",
            &v["metrics"],
            &[
                "read-records",
                "write-records",
                "accumulated-backpressured-time",
                "accumulated-idle-time",
                "accumulated-busy-time",
            ],
        );
        assert_absent(
            "vertex metrics",
            &v["metrics"],
            &["read-bytes", "write-bytes"],
        );
        assert_eq!(v["subtasks"].as_array().unwrap().len(), 2);
        for s in v["subtasks"].as_array().unwrap() {
            assert_fields(
                "subtask metrics",
                s,
                &[
                    "backPressuredTimeMsPerSecond",
                    "idleTimeMsPerSecond",
                    "busyTimeMsPerSecond",
                    "isBackPressured",
                    "outPoolUsage",
                    "inPoolUsage",
                    "checkpointAlignmentTime",
                ],
            );
        }
    }
    assert_eq!(vertices[0]["name"], "numbers");
    assert_eq!(vertices[1]["name"], "count -> sink");
    let nodes = d["plan"]["nodes"].as_array().unwrap();
    assert_eq!(nodes[1]["inputs"][0]["ship_strategy"], "HASH");
    assert_eq!(nodes[1]["inputs"][0]["id"], vertices[0]["id"]);
    // Records flow and their rates are measured (the sampler runs each second).
    wait_for("a records/s rate on the source", 30, || {
        let d = get_json(&format!("{base}/jobs/{id}"));
        (d["vertices"][0]["numRecordsOutPerSecond"].as_f64().unwrap() > 0.0).then_some(())
    });
    // The rate-limited source sleeps between polls: idle time.
    wait_for("idle time on the rate-limited source", 30, || {
        let d = get_json(&format!("{base}/jobs/{id}"));
        (d["vertices"][0]["subtasks"][0]["idleTimeMsPerSecond"]
            .as_f64()
            .unwrap()
            > 0.0)
            .then_some(())
    });
    let d = get_json(&format!("{base}/jobs/{id}"));
    assert!(
        d["vertices"][1]["metrics"]["read-records"]
            .as_u64()
            .unwrap()
            > 0
    );
    let ops = d["vertices"][1]["operators"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0]["name"], "count");
    assert!(ops[0]["numRecordsIn"].as_u64().unwrap() > 0);

    let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
    assert_fields(
        "/checkpoints",
        &c,
        &["counts", "summary", "latest", "history"],
    );
    assert_fields(
        "counts",
        &c["counts"],
        &["restored", "total", "in_progress", "completed", "failed"],
    );
    assert_fields(
        "summary",
        &c["summary"],
        &[
            "checkpointed_size",
            "state_size",
            "end_to_end_duration",
            "persisted_data",
        ],
    );
    assert_fields(
        "summary.end_to_end_duration",
        &c["summary"]["end_to_end_duration"],
        &["min", "max", "avg", "p50", "p90", "p95", "p99", "p999"],
    );
    assert!(
        c["summary"]["state_size"]["max"].as_u64().unwrap() > 0,
        "keyed counts have state"
    );
    let latest = &c["latest"]["completed"];
    assert_fields(
        "latest.completed",
        latest,
        &[
            "id",
            "status",
            "is_savepoint",
            "trigger_timestamp",
            "latest_ack_timestamp",
            "checkpointed_size",
            "state_size",
            "end_to_end_duration",
            "persisted_data",
            "num_subtasks",
            "num_acknowledged_subtasks",
            "checkpoint_type",
            "external_path",
            "discarded",
        ],
    );
    assert_absent(
        "checkpoint",
        latest,
        &["alignment_buffered", "processed_data"],
    );
    assert_eq!(latest["status"], "COMPLETED");
    assert_eq!(latest["num_subtasks"], 4);
    assert_eq!(latest["num_acknowledged_subtasks"], 4);
    assert_eq!(latest["checkpoint_type"], "CHECKPOINT");
    let latest_id = latest["id"].as_u64().unwrap();
    assert!(c["latest"].get("failed").is_some());
    assert!(c["latest"].get("restored").is_some());
    assert!(c["latest"].get("savepoint").is_some());
    let history = c["history"].as_array().unwrap();
    assert!(!history.is_empty());
    let ids: Vec<u64> = history.iter().map(|h| h["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    for h in history {
        let status = h["status"].as_str().unwrap();
        assert!(["IN_PROGRESS", "COMPLETED", "FAILED"].contains(&status));
    }
    assert!(history.iter().any(|h| h["id"] == latest_id));

    let det = get_json(&format!("{base}/jobs/{id}/checkpoints/details/{latest_id}"));
    assert_eq!(det["id"], latest_id);
    assert_eq!(det["status"], "COMPLETED");
    let tasks = det["tasks"].as_object().unwrap();
    assert_eq!(tasks.len(), 2);
    let vid = vertices[1]["id"].as_str().unwrap();
    let t = &tasks[vid];
    assert_fields(
        "details task",
        t,
        &[
            "id",
            "status",
            "latest_ack_timestamp",
            "checkpointed_size",
            "state_size",
            "end_to_end_duration",
            "num_subtasks",
            "num_acknowledged_subtasks",
            "subtasks",
        ],
    );
    assert_eq!(t["num_acknowledged_subtasks"], 2);
    for s in t["subtasks"].as_array().unwrap() {
        assert_eq!(s["status"], "completed");
        assert_fields(
            "subtask checkpoint",
            s,
            &[
                "index",
                "ack_timestamp",
                "end_to_end_duration",
                "state_size",
                "checkpoint",
                "alignment",
                "start_delay",
                "unaligned_checkpoint",
                "aborted",
            ],
        );
        assert_fields("checkpoint phases", &s["checkpoint"], &["sync", "async"]);
        assert_fields("alignment", &s["alignment"], &["persisted", "duration"]);
        assert_absent("alignment", &s["alignment"], &["buffered", "processed"]);
    }
    let sub = get_json(&format!(
        "{base}/jobs/{id}/checkpoints/details/{latest_id}/subtasks/{vid}"
    ));
    assert_fields(
        "task details",
        &sub,
        &["id", "status", "summary", "subtasks"],
    );
    assert_fields(
        "task summary",
        &sub["summary"],
        &[
            "state_size",
            "end_to_end_duration",
            "checkpoint_duration",
            "alignment",
            "start_delay",
        ],
    );

    let cfg = get_json(&format!("{base}/jobs/{id}/checkpoints/config"));
    assert_fields(
        "/checkpoints/config",
        &cfg,
        &[
            "mode",
            "interval",
            "timeout",
            "min_pause",
            "max_concurrent",
            "externalization",
            "state_backend",
            "unaligned_checkpoints",
            "tolerable_failed_checkpoints",
            "aligned_checkpoint_timeout",
        ],
    );
    assert_eq!(cfg["mode"], "exactly_once");
    assert_eq!(cfg["interval"], 100);
    assert_eq!(cfg["externalization"]["delete_on_cancellation"], false);

    let ex = get_json(&format!("{base}/jobs/{id}/exceptions"));
    assert_fields("/exceptions", &ex, &["root-exception", "exceptionHistory"]);
    assert_eq!(
        ex["exceptionHistory"]["entries"].as_array().unwrap().len(),
        0
    );

    let reg = get_json(&format!("{base}/jobs/{id}/regions"));
    assert_eq!(
        reg["regions"].as_array().unwrap().len(),
        1,
        "hash edge: one region"
    );
    assert_eq!(reg["regions"][0]["subtasks"].as_array().unwrap().len(), 4);

    let m = get_json(&format!(
        "{base}/jobs/{id}/metrics?get=numberOfCompletedCheckpoints,numRestarts"
    ));
    let m = m.as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|x| x["value"].is_string()));

    let api = get_json(&format!("{base}/openapi.json"));
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/jobs/{jobid}/checkpoints",
        "/jobs/{jobid}/subtasks/{name}/{index}/kill",
        "/metrics",
    ] {
        assert!(api["paths"].get(p).is_some(), "openapi documents {p}");
    }

    let (status, html) = http("GET", &format!("{base}/"), None);
    assert_eq!(status, 200);
    assert!(html.contains("<script src=\"app.js\""), "the UI: {html}");

    r.job.cancel();
    assert!(r.job.wait().is_err());
}

/// `checkpointed_size` is what a checkpoint uploaded, `state_size` what it
/// references, at every level (subtask, task, checkpoint, summary): with
/// incremental RocksDB checkpoints the two differ after the first checkpoint
/// (per task and subtask, `checkpointed_size` used to repeat `state_size`);
/// with full (heap) checkpoints they are equal.
#[test]
fn checkpointed_size_is_what_was_uploaded() {
    let sizes = |s: &Value| {
        (
            s["checkpointed_size"].as_u64().unwrap(),
            s["state_size"].as_u64().unwrap(),
        )
    };
    for incremental in [true, false] {
        let backend: &[(&str, &str)] = if incremental {
            &[
                ("state.backend.type", "rocksdb"),
                ("execution.checkpointing.incremental", "true"),
            ]
        } else {
            &[("state.backend.type", "hashmap")]
        };
        let r = start(&format!("sizes-{incremental}"), backend);
        let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
        wait_for("four completed checkpoints", 60, || {
            (completed_count(base, &id) >= 4).then_some(())
        });
        let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
        let mut smaller = 0;
        for h in c["history"].as_array().unwrap() {
            if h["status"] != "COMPLETED" {
                continue;
            }
            let cid = h["id"].as_u64().unwrap();
            let det = get_json(&format!("{base}/jobs/{id}/checkpoints/details/{cid}"));
            let (mut up, mut all) = (0, 0);
            for (vid, t) in det["tasks"].as_object().unwrap() {
                let (mut sub_up, mut sub_all) = (0, 0);
                for s in t["subtasks"].as_array().unwrap() {
                    let (u, a) = sizes(s);
                    assert!(u <= a, "subtask uploads more than it references: {s}");
                    if !incremental {
                        assert_eq!(u, a, "a full checkpoint uploads all it references: {s}");
                    } else if u < a {
                        smaller += 1;
                    }
                    sub_up += u;
                    sub_all += a;
                }
                assert_eq!(sizes(t), (sub_up, sub_all), "task {vid} of {cid}: {t}");
                let summary = get_json(&format!(
                    "{base}/jobs/{id}/checkpoints/details/{cid}/subtasks/{vid}"
                ));
                assert_eq!(
                    summary["summary"]["checkpointed_size"]["max"].as_u64(),
                    t["subtasks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| sizes(s).0)
                        .max(),
                    "{summary}"
                );
                up += sub_up;
                all += sub_all;
            }
            assert_eq!(sizes(h), (up, all), "checkpoint {cid}: {h}");
        }
        if incremental {
            assert!(
                smaller > 0,
                "no incremental checkpoint uploaded less than its state: {c}"
            );
        }
        r.job.cancel();
    }
}

#[test]
fn prometheus_metrics_use_flinks_names() {
    let r = start("rest-prometheus", &[]);
    let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
    wait_for("a completed checkpoint", 60, || {
        (completed_count(base, &id) >= 1).then_some(())
    });
    let (status, text) = http("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200);
    for name in [
        "lastCheckpointDuration",
        "lastCheckpointSize",
        "lastCheckpointFullSize",
        "lastCompletedCheckpointId",
        "numberOfCompletedCheckpoints",
        "numberOfFailedCheckpoints",
        "numberOfInProgressCheckpoints",
        "numRestarts",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("weir_job_{name}{{job_id=\"{id}\"")))
            .unwrap_or_else(|| panic!("no weir_job_{name} for the job in:\n{text}"));
        assert!(
            line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
            "{line}"
        );
    }
    assert!(text.contains("# TYPE weir_job_numberOfCompletedCheckpoints counter"));
    for name in [
        "weir_operator_numRecordsIn{",
        "weir_operator_numRecordsOut{",
        "weir_operator_numRecordsInErrors{",
        "weir_operator_numRecordsInPerSecond{",
        "weir_operator_numRecordsOutPerSecond{",
        "weir_task_backPressuredTimeMsPerSecond{",
        "weir_task_isBackPressured{",
        "weir_task_outPoolUsage{",
        "weir_task_checkpointAlignmentTime{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)
                && l.contains(&id)
                && l.contains("subtask_index=\"1\"")),
            "no {name} per subtask in:\n{text}"
        );
    }
    // The same numbers through the handle.
    let m = r.job.metrics_snapshot();
    assert!(m.number_of_completed_checkpoints >= 1);
    assert!(m.last_completed_checkpoint_id.is_some());
    assert_eq!(m.operators.len(), 3);
    assert_eq!(m.tasks.len(), 2);
    assert_eq!(m.tasks[1].subtasks.len(), 2);
    r.job.cancel();
    let _ = r.job.wait();
}

/// Records the skipping source reads over all subtasks.
const SKIPPING_N: u64 = 10_000;

/// Whether the skipping source has failed its one time.
static SKIPPING_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A source that "reads" `i` for `i` in `0..SKIPPING_N` (every `parallelism`th
/// from its subtask's index), skips those with `i % 7 == 3` as undeserializable
/// and counts them in its `numRecordsInErrors`. Subtask 0 fails once, in the
/// middle of its range; without checkpoints its restart reads from the start.
#[derive(Clone, Default)]
struct SkippingSource {
    next: u64,
    step: u64,
    subtask: usize,
    errors: Counter,
}

impl SkippingSource {
    fn is_error(i: u64) -> bool {
        i % 7 == 3
    }

    /// The errors of subtask `subtask` of `parallelism` over `0..end`.
    fn errors_below(end: u64, subtask: u64, parallelism: u64) -> u64 {
        (subtask..end)
            .step_by(parallelism as usize)
            .filter(|i| Self::is_error(*i))
            .count() as u64
    }
}

impl SourceFunction<u64> for SkippingSource {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        self.subtask = ctx.runtime.subtask;
        self.next = ctx.runtime.subtask as u64;
        self.step = ctx.runtime.parallelism as u64;
        self.errors = ctx.runtime.num_records_in_errors.clone();
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourceStatus> {
        let max = max.min(100);
        while out.len() < max && self.next < SKIPPING_N {
            if self.subtask == 0
                && self.next >= SKIPPING_N / 2
                && !SKIPPING_FAILED.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(Error::User("the broker went away".into()));
            }
            let i = self.next;
            self.next += self.step;
            if Self::is_error(i) {
                self.errors.inc();
            } else {
                out.push(i);
            }
        }
        Ok(if self.next < SKIPPING_N {
            SourceStatus::More
        } else {
            SourceStatus::Finished
        })
    }
}

#[test]
fn records_in_errors_counted_by_a_source_show_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let env = common::rest_env(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "off"),
            ("parallelism.default", "2"),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.delay", "10ms"),
            ("jobmanager.execution.failover-strategy", "region"),
        ],
    );
    env.add_source(SkippingSource::default())
        .name("skipping")
        .add_sink(DiscardSink);
    let mut job = env.execute_async("rest-records-in-errors").unwrap();
    let base = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    wait_for("the job's end", 60, || job.is_done().then_some(()));
    let m = job.metrics_snapshot();
    let result = job.wait().unwrap();
    assert_eq!(result.restarts, 1, "subtask 0 failed once");
    // Subtask 0 counted its errors below the failure, then all of them
    // again after its restart (the counter lives as long as the job, like
    // numRecordsIn); subtask 1, another region, ran once.
    let per_subtask = [
        SkippingSource::errors_below(SKIPPING_N / 2, 0, 2)
            + SkippingSource::errors_below(SKIPPING_N, 0, 2),
        SkippingSource::errors_below(SKIPPING_N, 1, 2),
    ];
    let total: u64 = per_subtask.iter().sum();
    assert!(per_subtask.iter().all(|e| *e > 0), "{per_subtask:?}");
    assert_eq!(
        result.operator("skipping").unwrap().records_in_errors,
        total
    );
    assert_eq!(result.operators.len(), 2);
    assert!(result
        .operators
        .iter()
        .all(|o| o.name == "skipping" || o.records_in_errors == 0));

    // The handle's snapshot.
    assert_eq!(m.num_restarts, 1);
    let op = m.operators.iter().find(|o| o.name == "skipping").unwrap();
    assert_eq!(op.num_records_in_errors, total);
    let subs: Vec<u64> = op
        .subtasks
        .iter()
        .map(|s| s.num_records_in_errors)
        .collect();
    assert_eq!(subs, per_subtask);

    // REST: the vertex's operators, in total and per subtask.
    let d = wait_for("the FINISHED state", 10, || {
        let d = get_json(&format!("{base}/jobs/{id}"));
        (d["state"] == "FINISHED").then_some(d)
    });
    let ops = d["vertices"][0]["operators"].as_array().unwrap();
    let src = ops.iter().find(|o| o["name"] == "skipping").unwrap();
    assert_eq!(src["numRecordsInErrors"].as_u64(), Some(total), "{src}");
    for (i, want) in per_subtask.iter().enumerate() {
        assert_eq!(src["subtasks"][i]["subtask"], i);
        assert_eq!(
            src["subtasks"][i]["numRecordsInErrors"].as_u64(),
            Some(*want),
            "{src}"
        );
    }
    for o in ops.iter().filter(|o| o["name"] != "skipping") {
        assert_eq!(o["numRecordsInErrors"], 0, "{o}");
    }

    // Prometheus: one counter per operator subtask.
    let (status, text) = http("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE weir_operator_numRecordsInErrors counter"));
    for (i, want) in per_subtask.iter().enumerate() {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("weir_operator_numRecordsInErrors{")
                    && l.contains(&format!("job_id=\"{id}\""))
                    && l.contains("operator_name=\"skipping\"")
                    && l.contains(&format!("subtask_index=\"{i}\""))
            })
            .unwrap_or_else(|| panic!("no numRecordsInErrors of subtask {i} in:\n{text}"));
        assert_eq!(
            line.rsplit(' ').next(),
            Some(want.to_string().as_str()),
            "{line}"
        );
    }
}

#[test]
fn trigger_checkpoint_completes_a_new_checkpoint() {
    // A long interval: only the requested checkpoint completes soon.
    let r = start(
        "rest-trigger",
        &[("execution.checkpointing.interval", "1h")],
    );
    let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(completed_count(base, &id), 0);
    let (status, body) = http("POST", &format!("{base}/jobs/{id}/checkpoints"), None);
    assert_eq!(status, 202, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let trigger = v["request-id"].as_str().unwrap().to_string();
    assert_eq!(trigger.len(), 32);
    let cid = v["checkpoint-id"].as_u64().unwrap();
    let done = wait_for("the triggered checkpoint to complete", 60, || {
        let s = get_json(&format!("{base}/jobs/{id}/checkpoints/{trigger}"));
        (s["status"]["id"] == "COMPLETED").then_some(s)
    });
    assert_eq!(done["operation"]["checkpointId"], cid);
    assert!(done["operation"].get("failure-cause").is_none(), "{done}");
    let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
    assert_eq!(c["counts"]["completed"], 1);
    assert_eq!(c["latest"]["completed"]["id"], cid);
    // A body with Flink's checkpointType works too; a bad one is a 400.
    let (status, body) = http(
        "POST",
        &format!("{base}/jobs/{id}/checkpoints"),
        Some(r#"{"checkpointType": "FULL"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = http(
        "POST",
        &format!("{base}/jobs/{id}/checkpoints"),
        Some(r#"{"checkpointType": 7}"#),
    );
    error_of(status, &body, 400);
    let (status, body) = http(
        "POST",
        &format!("{base}/jobs/{id}/checkpoints"),
        Some("{oops"),
    );
    error_of(status, &body, 400);
    r.job.cancel();
    let _ = r.job.wait();
}

#[test]
fn kill_endpoint_restarts_the_subtask() {
    let r = start("rest-kill", &[]);
    let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
    wait_for("a completed checkpoint", 60, || {
        (completed_count(base, &id) >= 1).then_some(())
    });
    assert_eq!(r.job.num_restarts(), 0);
    let (status, body) = http(
        "POST",
        &format!("{base}/jobs/{id}/subtasks/count/1/kill"),
        None,
    );
    assert_eq!(status, 202, "{body}");
    wait_for("the restart", 60, || {
        (r.job.num_restarts() >= 1).then_some(())
    });
    let d = get_json(&format!("{base}/jobs/{id}"));
    assert!(d["numRestarts"].as_u64().unwrap() >= 1);
    let reg = get_json(&format!("{base}/jobs/{id}/regions"));
    assert!(reg["regions"][0]["restarts"].as_u64().unwrap() >= 1);
    let ex = get_json(&format!("{base}/jobs/{id}/exceptions"));
    let entries = ex["exceptionHistory"]["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert_eq!(entries[0]["taskName"], "count -> sink (1)");
    assert!(entries[0]["stacktrace"]
        .as_str()
        .unwrap()
        .contains("killed"));
    assert_fields(
        "exception",
        &entries[0],
        &["exceptionName", "stacktrace", "timestamp", "taskName"],
    );
    // It keeps running and checkpointing after the restart.
    let before = completed_count(base, &id);
    wait_for("a checkpoint after the restart", 60, || {
        (completed_count(base, &id) > before).then_some(())
    });
    let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
    assert!(c["counts"]["restored"].as_u64().unwrap() >= 1);
    assert!(
        c["latest"]["restored"]["id"].as_u64().is_some(),
        "{}",
        c["latest"]
    );
    // Unknown operator or subtask: 404; a bad index: 400.
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/subtasks/nope/0/kill"),
        None,
    );
    assert!(error_of(s, &b, 404).contains("nope"));
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/subtasks/count/2/kill"),
        None,
    );
    assert!(error_of(s, &b, 404).contains("parallelism 2"));
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/subtasks/count/x/kill"),
        None,
    );
    error_of(s, &b, 400);
    r.job.cancel();
    let _ = r.job.wait();
    // A job that has ended: 409, said by the job master, not guessed by the server.
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/subtasks/count/0/kill"),
        None,
    );
    let e = error_of(s, &b, 409);
    assert!(
        e.contains("the job has ended") && e.contains("CANCELED"),
        "{e}"
    );
}

#[test]
fn errors_are_flink_shaped_with_proper_statuses() {
    let r = start("rest-errors", &[]);
    let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
    let unknown = "0123456789abcdef0123456789abcdef";
    for path in [
        format!("/jobs/{unknown}"),
        format!("/jobs/{unknown}/checkpoints"),
        format!("/jobs/{unknown}/checkpoints/config"),
        format!("/jobs/{unknown}/regions"),
        "/jobs/not-a-job-id".to_string(),
        "/no/such/path".to_string(),
        format!("/jobs/{id}/checkpoints/details/999999"),
        format!("/jobs/{id}/checkpoints/0123456789abcdef0123456789abcdef"),
    ] {
        let (s, b) = http("GET", &format!("{base}{path}"), None);
        error_of(s, &b, 404);
    }
    let (s, b) = http(
        "GET",
        &format!("{base}/jobs/{id}/checkpoints/details/abc"),
        None,
    );
    error_of(s, &b, 400);
    let (s, b) = http("POST", &format!("{base}/jobs/{unknown}/checkpoints"), None);
    error_of(s, &b, 404);
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{unknown}/subtasks/count/0/kill"),
        None,
    );
    error_of(s, &b, 404);
    // Wrong methods.
    let (s, b) = http("DELETE", &format!("{base}/jobs/{id}"), None);
    error_of(s, &b, 405);
    let (s, b) = http("POST", &format!("{base}/overview"), None);
    error_of(s, &b, 405);
    let (s, b) = http("GET", &format!("{base}/jobs/{id}/savepoints"), None);
    error_of(s, &b, 405);
    // A savepoint needs a directory: 400 naming the option; a bad body is a 400 too.
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/savepoints"),
        Some(r#"{"cancel-job": false}"#),
    );
    assert!(error_of(s, &b, 400).contains("execution.checkpointing.savepoint-dir"));
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/stop"),
        Some(r#"{"drain": "no"}"#),
    );
    error_of(s, &b, 400);
    let (s, b) = http(
        "GET",
        &format!("{base}/jobs/{id}/savepoints/no-such-trigger"),
        None,
    );
    error_of(s, &b, 404);
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/savepoints"),
        Some(r#"{"cancel-job": "yes"}"#),
    );
    error_of(s, &b, 400);
    let (s, b) = http(
        "POST",
        &format!("{base}/jobs/{id}/savepoints"),
        Some("not json"),
    );
    error_of(s, &b, 400);
    // PATCH with a mode other than cancel: 400; cancel: 202, then 409.
    let (s, b) = http("PATCH", &format!("{base}/jobs/{id}?mode=explode"), None);
    error_of(s, &b, 400);
    let (s, b) = http("PATCH", &format!("{base}/jobs/{id}?mode=cancel"), None);
    assert_eq!(s, 202, "{b}");
    assert!(matches!(r.job.wait(), Err(Error::Cancelled(_))));
    let d = get_json(&format!("{base}/jobs/{id}"));
    assert_eq!(d["state"], "CANCELED");
    assert!(d["end-time"].as_i64().unwrap() > 0);
    let (s, b) = http("PATCH", &format!("{base}/jobs/{id}?mode=cancel"), None);
    error_of(s, &b, 409);
    let (s, b) = http("POST", &format!("{base}/jobs/{id}/checkpoints"), None);
    error_of(s, &b, 409);
}

#[test]
fn a_job_without_checkpointing_answers_409_and_404() {
    let r = start(
        "rest-no-checkpoints",
        &[("execution.checkpointing.interval", "off")],
    );
    let (base, id) = (r.base.as_str(), r.job.job_id().to_string());
    let (s, b) = http("POST", &format!("{base}/jobs/{id}/checkpoints"), None);
    assert!(error_of(s, &b, 409).contains("disabled"));
    let (s, b) = http("GET", &format!("{base}/jobs/{id}/checkpoints/config"), None);
    error_of(s, &b, 404);
    let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
    assert_eq!(c["counts"]["total"], 0);
    assert!(c["latest"]["completed"].is_null());
    r.job.cancel();
    let _ = r.job.wait();
}

#[test]
fn a_finished_job_stays_listed_as_finished() {
    let dir = tempfile::tempdir().unwrap();
    let mut conf = Conf::defaults();
    conf.set("rest.enabled", "true").unwrap();
    conf.set("rest.port", "0").unwrap();
    conf.set("execution.checkpointing.dir", dir.path().display())
        .unwrap();
    let env = Env::from_conf(conf).unwrap();
    env.add_source(CollectionSource::new((0..1000u64).collect()))
        .name("few")
        .add_sink(DiscardSink);
    let job = env.execute_async("rest-finished").unwrap();
    let base = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    job.wait().unwrap();
    let d = wait_for("the FINISHED state", 10, || {
        let d = get_json(&format!("{base}/jobs/{id}"));
        (d["state"] == "FINISHED").then_some(d)
    });
    assert_eq!(d["vertices"][0]["operators"][0]["numRecordsOut"], 1000);
    let ov = get_json(&format!("{base}/overview"));
    assert!(ov["jobs-finished"].as_u64().unwrap() >= 1);
}

#[test]
fn back_pressure_shows_on_the_sender_of_a_slow_operator() {
    let dir = tempfile::tempdir().unwrap();
    let env = common::rest_env(dir.path(), &[("execution.checkpointing.interval", "off")]);
    common::slow_operator_job(&env, 500);
    let job = env.execute_async("rest-backpressure").unwrap();
    let base = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    // The source waits for space nearly all the time; the slow map never does.
    let d = wait_for("the source to be back-pressured", 60, || {
        let d = get_json(&format!("{base}/jobs/{id}"));
        let s = &d["vertices"][0]["subtasks"][0];
        (s["backPressuredTimeMsPerSecond"].as_f64().unwrap() > 500.0).then_some(d)
    });
    let src = &d["vertices"][0];
    assert_eq!(src["name"], "fast");
    assert_eq!(src["backpressure-level"], "high");
    assert!(
        src["subtasks"][0]["outPoolUsage"].as_f64().unwrap() >= 0.5,
        "{src}"
    );
    assert!(
        src["metrics"]["accumulated-backpressured-time"]
            .as_u64()
            .unwrap()
            > 0
    );
    let vid = src["id"].as_str().unwrap();
    let bp = get_json(&format!("{base}/jobs/{id}/vertices/{vid}/backpressure"));
    assert_eq!(bp["status"], "ok");
    assert_eq!(bp["backpressure-level"], "high");
    let sub = &bp["subtasks"][0];
    assert_eq!(sub["subtask"], 0);
    assert!(sub["ratio"].as_f64().unwrap() > 0.5, "{bp}");
    assert!(sub.get("idleRatio").is_some() && sub.get("busyRatio").is_some());
    let (s, b) = http(
        "GET",
        &format!("{base}/jobs/{id}/vertices/nope/backpressure"),
        None,
    );
    error_of(s, &b, 404);
    let slow = &d["vertices"][1];
    assert_eq!(slow["name"], "slow -> sink");
    assert_eq!(slow["backpressure-level"], "ok");
    assert!(
        slow["subtasks"][0]["inPoolUsage"].as_f64().unwrap() >= 0.5,
        "{slow}"
    );
    assert!(
        slow["subtasks"][0]["busyTimeMsPerSecond"].as_f64().unwrap() > 500.0,
        "{slow}"
    );
    let m = job.metrics_snapshot();
    assert!(m.tasks[0].subtasks[0].back_pressured_time_ms_per_second > 500.0);
    job.cancel();
    let _ = job.wait();
}

#[test]
fn unaligned_checkpoints_show_their_type_and_in_flight_data() {
    let dir = tempfile::tempdir().unwrap();
    let env = common::rest_env(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "100ms"),
            ("execution.checkpointing.unaligned.enabled", "true"),
        ],
    );
    common::slow_operator_job(&env, 100);
    let job = env.execute_async("rest-unaligned").unwrap();
    let base = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    // Under back pressure the barrier overtakes queued batches: they are persisted.
    let c = wait_for("an unaligned checkpoint with in-flight data", 60, || {
        let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
        let l = &c["latest"]["completed"];
        (l["checkpoint_type"] == "UNALIGNED_CHECKPOINT" && l["persisted_data"].as_u64() > Some(0))
            .then_some(c)
    });
    let cid = c["latest"]["completed"]["id"].as_u64().unwrap();
    assert!(c["summary"]["persisted_data"]["max"].as_u64().unwrap() > 0);
    let d = get_json(&format!("{base}/jobs/{id}/checkpoints/details/{cid}"));
    let persisted: u64 = d["tasks"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|t| t["subtasks"].as_array().unwrap().clone())
        .map(|s| s["alignment"]["persisted"].as_u64().unwrap())
        .sum();
    assert_eq!(persisted, d["persisted_data"].as_u64().unwrap());
    assert!(d["tasks"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|t| t["subtasks"].as_array().unwrap().clone())
        .any(|s| s["unaligned_checkpoint"] == true));
    job.cancel();
    let _ = job.wait();
}

/// Polls a savepoint operation until it is COMPLETED; returns its `operation`.
fn poll_savepoint(base: &str, id: &str, trigger: &str) -> Value {
    wait_for("the savepoint to complete", 120, || {
        let v = get_json(&format!("{base}/jobs/{id}/savepoints/{trigger}"));
        (v["status"]["id"] == "COMPLETED").then(|| v["operation"].clone())
    })
}

#[test]
fn savepoint_and_stop_over_rest_then_restore() {
    let r = start("rest-savepoint", &[]);
    let id = r.job.job_id().to_string();
    let sps = r._dir.path().join("savepoints");
    let body = format!(
        r#"{{"target-directory": "{}", "cancel-job": false}}"#,
        sps.display()
    );
    let (s, b) = http(
        "POST",
        &format!("{}/jobs/{id}/savepoints", r.base),
        Some(&body),
    );
    assert_eq!(s, 202, "{b}");
    let t: Value = serde_json::from_str(&b).unwrap();
    let trigger = t["request-id"].as_str().unwrap().to_string();
    let op = poll_savepoint(&r.base, &id, &trigger);
    let location = op["location"].as_str().unwrap_or_else(|| panic!("{op}"));
    assert!(
        std::path::Path::new(location).starts_with(&sps),
        "{location}"
    );
    assert!(std::path::Path::new(location).join("_metadata").is_file());
    // It is listed as a savepoint, not as the latest checkpoint.
    let c = get_json(&format!("{}/jobs/{id}/checkpoints", r.base));
    assert_eq!(
        c["latest"]["savepoint"]["external_path"].as_str(),
        Some(location),
        "{}",
        c["latest"]
    );
    r.job.cancel();
    assert!(matches!(r.job.wait(), Err(Error::Cancelled(_))));

    // Restore from it, then stop with a savepoint over REST: FINISHED.
    let r2 = start(
        "rest-restored",
        &[("execution.state-recovery.path", location)],
    );
    let id2 = r2.job.job_id().to_string();
    assert_eq!(
        r2.job.restored_from().map(|(p, _)| p.as_path()),
        Some(std::path::Path::new(location))
    );
    let body = format!(
        r#"{{"targetDirectory": "{}", "drain": false}}"#,
        sps.display()
    );
    let (s, b) = http("POST", &format!("{}/jobs/{id2}/stop", r2.base), Some(&body));
    assert_eq!(s, 202, "{b}");
    let t: Value = serde_json::from_str(&b).unwrap();
    let op = poll_savepoint(&r2.base, &id2, t["request-id"].as_str().unwrap());
    let location2 = op["location"].as_str().unwrap_or_else(|| panic!("{op}"));
    assert_ne!(location2, location);
    r2.job
        .wait()
        .expect("stop-with-savepoint ends the job FINISHED");
    let d = get_json(&format!("{}/jobs/{id2}", r2.base));
    assert_eq!(d["state"], "FINISHED");
    // A savepoint of a finished job: 409.
    let (s, b) = http(
        "POST",
        &format!("{}/jobs/{id2}/savepoints", r2.base),
        Some(&format!(r#"{{"target-directory": "{}"}}"#, sps.display())),
    );
    error_of(s, &b, 409);
}
