//! The coordinator as a user sees it through the Rust API: retention,
//! cancel policies, completion order, and aligned vs unaligned barriers under
//! backpressure, including a restore of in-flight data.

mod common;

use std::time::{Duration, Instant};

use common::*;
use weir::prelude::*;
use weir::runtime::checkpoint::storage::load_checkpoint;
use weir::runtime::checkpoint::{CheckpointStats, CheckpointStatus};

#[derive(Clone)]
struct SlowSink(Duration);

impl<T: Data> SinkFunction<T> for SlowSink {
    fn invoke(&mut self, _batch: Vec<T>) -> Result<()> {
        std::thread::sleep(self.0);
        Ok(())
    }
}

/// An unbounded keyed job; runs for `secs`, then is cancelled.
fn run_unbounded(c: Conf, sink_delay: Duration, secs: f64) -> (Vec<CheckpointStats>, String) {
    let env = Env::from_conf(c).unwrap();
    env.add_source(GeneratorSource::new(5, None, |i, _| i))
        .name("numbers")
        .key_by(|x: &u64| x % 997)
        .count()
        .name("count")
        .add_sink(SlowSink(sink_delay))
        .name("slow");
    let mut job = env.execute_async("unbounded").unwrap();
    let id = job.job_id().to_string();
    std::thread::sleep(Duration::from_secs_f64(secs));
    job.cancel();
    while !job.is_done() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = job.checkpoint_stats();
    assert!(matches!(job.wait(), Err(Error::Cancelled(_))));
    (stats, id)
}

fn completed(stats: &[CheckpointStats]) -> Vec<&CheckpointStats> {
    stats
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .collect()
}

#[test]
fn retention_keeps_exactly_num_retained_and_cancel_retains() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf_with(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "10ms"),
            ("execution.checkpointing.num-retained", "3"),
            ("parallelism.default", "2"),
        ],
    );
    let (stats, id) = run_unbounded(c, Duration::ZERO, 0.6);
    let done = completed(&stats);
    assert!(done.len() >= 5, "{} checkpoints completed", done.len());
    let job = dir.path().join(&id);
    let mut ids: Vec<u64> = std::fs::read_dir(&job)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("chk-")
                .and_then(|n| n.parse().ok())
        })
        .collect();
    ids.sort();
    let last3: Vec<u64> = done[done.len() - 3..].iter().map(|s| s.id).collect();
    // Checkpoints in flight at cancel are aborted; an upload that was still
    // writing may leave an incomplete directory behind (never restored, and
    // removed by `weir checkpoints gc`), always newer than the last completed one.
    let (complete, incomplete): (Vec<u64>, Vec<u64>) = ids
        .into_iter()
        .partition(|i| job.join(format!("chk-{i}/_metadata")).exists());
    assert_eq!(
        complete, last3,
        "exactly the three newest completed checkpoints remain"
    );
    assert!(
        incomplete.iter().all(|i| *i > last3[2]),
        "incomplete leftovers {incomplete:?}"
    );
    let ids = complete;
    for i in ids {
        load_checkpoint(&job.join(format!("chk-{i}"))).unwrap();
    }
}

#[test]
fn delete_on_cancellation_removes_the_job_directory() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf_with(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "10ms"),
            (
                "execution.checkpointing.externalized-checkpoint-retention",
                "DELETE_ON_CANCELLATION",
            ),
        ],
    );
    let (stats, id) = run_unbounded(c, Duration::ZERO, 0.3);
    assert!(!completed(&stats).is_empty());
    assert!(
        !dir.path().join(id).exists(),
        "checkpoints deleted on cancel"
    );
}

#[test]
fn concurrent_checkpoints_complete_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf_with(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "2ms"),
            ("execution.checkpointing.max-concurrent-checkpoints", "3"),
            ("parallelism.default", "2"),
        ],
    );
    let (stats, _) = run_unbounded(c, Duration::from_micros(200), 0.8);
    let done = completed(&stats);
    assert!(done.len() >= 10, "{}", done.len());
    let ends: Vec<(f64, u64)> = done
        .iter()
        .map(|s| (s.trigger_timestamp as f64 + s.end_to_end_duration, s.id))
        .collect();
    for w in ends.windows(2) {
        assert!(w[0].1 < w[1].1);
        assert!(
            w[0].0 <= w[1].0 + 1.0,
            "checkpoint {} completed after {}",
            w[0].1,
            w[1].1
        );
    }
    // A failed one is only ever an older one, subsumed by a newer completion.
    for f in stats
        .iter()
        .filter(|s| s.status == CheckpointStatus::Failed)
    {
        let msg = f.failure_message.clone().unwrap_or_default();
        assert!(
            msg.contains("subsumed") || msg.contains("job ended"),
            "{msg}"
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn aligned_barriers_wait_behind_data_unaligned_overtake_it() {
    // The sink takes 10 ms per batch; each channel queues up to 8 batches.
    let delay = Duration::from_millis(10);
    let dir = tempfile::tempdir().unwrap();
    let base = [
        ("execution.checkpointing.interval", "200ms"),
        ("parallelism.default", "2"),
        ("pipeline.batch-size", "256"),
        ("taskmanager.network.memory.buffers-per-channel", "8"),
    ];
    let (aligned, _) = run_unbounded(conf_with(dir.path(), &base), delay, 2.5);
    let mut un = base.to_vec();
    un.push(("execution.checkpointing.unaligned.enabled", "true"));
    let (unaligned, _) = run_unbounded(conf_with(dir.path(), &un), delay, 2.5);
    let (a, u) = (completed(&aligned), completed(&unaligned));
    // Aligned: no in-flight data persisted, barriers waited behind the queued batches.
    for s in &a {
        assert_eq!(s.persisted_data, 0);
        assert!(s.subtasks.iter().all(|t| !t.unaligned_checkpoint));
    }
    // Unaligned: the barriers overtook queued batches, which were persisted.
    assert!(
        u.iter().any(|s| s.persisted_data > 0),
        "no in-flight data captured"
    );
    assert!(u
        .iter()
        .all(|s| s.subtasks.iter().any(|t| t.unaligned_checkpoint)));
    let (ma, mu) = (
        median(a.iter().map(|s| s.end_to_end_duration).collect()),
        median(u.iter().map(|s| s.end_to_end_duration).collect()),
    );
    // Aligned waits for the queued batches (8 x 10 ms per channel); unaligned does not.
    assert!(
        mu * 2.0 < ma,
        "unaligned median {mu} ms should be well below aligned {ma} ms under backpressure"
    );
}

/// Records the checkpoint's channel state is restored before new input:
/// a job cancelled mid-backpressure with unaligned checkpoints resumes from a
/// checkpoint holding in-flight batches and still counts exactly once.
#[test]
fn restore_replays_in_flight_data_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 400_000u64;
    let build = |env: &Env, slow: bool| {
        let counts = env
            .add_source(GeneratorSource::new(9, Some(n), |i, _| i % 1000))
            .name("numbers")
            .key_by(|x: &u64| *x)
            .count()
            .name("count")
            .disable_chaining();
        let slowed = counts.map(move |r| {
            if slow {
                std::thread::sleep(Duration::from_micros(3));
            }
            r
        });
        let sink = FileSink::new(&out, |(k, c): &(u64, u64), line: &mut String| {
            line.push_str(&format!("{k}\t{c}"))
        })
        .unwrap();
        slowed.name("slow").add_sink(sink).name("files");
    };
    let ckpt = dir.path().join("ckpt");
    let pairs = [
        ("execution.checkpointing.interval", "30ms"),
        ("execution.checkpointing.unaligned.enabled", "true"),
        ("execution.checkpointing.num-retained", "1000"),
        ("parallelism.default", "2"),
        ("pipeline.batch-size", "128"),
    ];
    let env = Env::from_conf(conf_with(&ckpt, &pairs)).unwrap();
    build(&env, true);
    let job = env.execute_async("first").unwrap();
    let started = Instant::now();
    let job_dir = ckpt.join(job.job_id());
    // Wait for a completed checkpoint that holds in-flight data.
    let with_channel_state = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint with in-flight data"
        );
        std::thread::sleep(Duration::from_millis(20));
        let found = job
            .checkpoint_stats()
            .iter()
            .filter(|s| s.status == CheckpointStatus::Completed && s.persisted_data > 0)
            .map(|s| s.id)
            .next_back();
        if let Some(id) = found {
            break id;
        }
    };
    job.cancel();
    let _ = job.wait();
    let chk = job_dir.join(format!("chk-{with_channel_state}"));
    let loaded = load_checkpoint(&chk).unwrap();
    assert!(loaded.states.iter().any(|s| !s.channel_state.is_empty()));

    let mut c = conf_with(&dir.path().join("ckpt2"), &pairs);
    c.set("execution.state-recovery.path", chk.display())
        .unwrap();
    let env = Env::from_conf(c).unwrap();
    build(&env, false);
    let job = env.execute_async("restored").unwrap();
    assert_eq!(job.restored_from().map(|r| r.1), Some(with_channel_state));
    job.wait().unwrap();

    let mut reference = std::collections::BTreeMap::new();
    for i in 0..n {
        *reference.entry((i % 1000).to_string()).or_insert(0u64) += 1;
    }
    assert_running_counts(&read_output(&out), &reference);
}
