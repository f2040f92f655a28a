//! `execution.checkpointing.aligned-checkpoint-timeout` under backpressure
//! (issue 14, item 3): a checkpoint starts aligned and, once the timeout
//! (measured from its trigger) has passed, its barriers overtake the data
//! queued ahead of them, *also where they wait in an output queue*: the
//! sender converts them (Flink's output-side conversion), not only a
//! receiver that has already seen one barrier. Before, a barrier stuck
//! behind a full queue waited for the whole queue, so an "aligned with
//! timeout" checkpoint took as long as an aligned one.

use std::time::Duration;

use weir::prelude::*;
use weir::runtime::checkpoint::{CheckpointStats, CheckpointStatus};

/// Runs the backpressured job (unbounded sources far faster than the
/// counting subtasks) with `extra` options for `run_for`, then cancels it;
/// its completed checkpoints. Unbounded, so every checkpoint is taken under
/// the same backpressure (none while sources finish).
fn run(dir: &std::path::Path, extra: &[(&str, &str)], run_for: Duration) -> Vec<CheckpointStats> {
    let mut conf = Conf::defaults();
    conf.set("execution.checkpointing.dir", dir.join("ckpt").display())
        .unwrap();
    conf.set("execution.checkpointing.interval", "100ms")
        .unwrap();
    conf.set("parallelism.default", 2).unwrap();
    for (k, v) in extra {
        conf.set(k, v).unwrap();
    }
    let env = Env::from_conf(conf).unwrap();
    // The counting subtasks take 50 µs per record (20k/s each); the sources
    // offer 200k/s: every channel into them stays full.
    let slow = Duration::from_micros(50);
    env.add_source(GeneratorSource::new(3, None, |i, _| i % 997).with_rate(200_000.0))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count")
        .map(move |kc: (u64, u64)| {
            let t = std::time::Instant::now();
            while t.elapsed() < slow {
                std::hint::spin_loop();
            }
            kc
        })
        .name("slow")
        .add_sink(DiscardSink);
    let job = env.execute_async("aligned-timeout").unwrap();
    std::thread::sleep(run_for);
    // The first checkpoint may start before the queues are full: left out.
    let done: Vec<CheckpointStats> = job
        .checkpoint_stats()
        .into_iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .skip(1)
        .collect();
    job.cancel();
    assert!(matches!(job.wait(), Err(Error::Cancelled(_))));
    assert!(!done.is_empty(), "no checkpoint completed under load");
    done
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn under_backpressure_the_timeout_switches_to_unaligned_at_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let aligned = run(&dir.path().join("aligned"), &[], Duration::from_secs(5));
    let switched = run(
        &dir.path().join("switched"),
        &[
            ("execution.checkpointing.unaligned.enabled", "true"),
            ("execution.checkpointing.aligned-checkpoint-timeout", "20ms"),
        ],
        Duration::from_secs(2),
    );
    let aligned_ms = median(aligned.iter().map(|c| c.end_to_end_duration).collect());
    let switched_ms = median(switched.iter().map(|c| c.end_to_end_duration).collect());
    eprintln!(
        "aligned: median {aligned_ms:.1} ms over {}; with a 20 ms timeout: median {switched_ms:.1} ms over {}",
        aligned.len(),
        switched.len()
    );
    assert!(
        switched.len() >= 5,
        "{} checkpoints with the timeout",
        switched.len()
    );
    assert!(aligned
        .iter()
        .all(|c| c.subtasks.iter().all(|s| !s.unaligned_checkpoint)));
    // Every checkpoint taken under load switched: its counting subtasks
    // snapshotted unaligned and persisted the data their barriers overtook.
    for c in &switched {
        let counting: Vec<_> = c.subtasks.iter().filter(|s| s.task != "numbers").collect();
        assert!(
            counting.iter().all(|s| s.unaligned_checkpoint),
            "checkpoint {} did not switch: {:?}",
            c.id,
            c.subtasks
        );
        assert!(
            c.persisted_data > 0,
            "checkpoint {} persisted nothing",
            c.id
        );
    }
    // And it no longer waits for the queues: far below the aligned time.
    assert!(
        switched_ms * 5.0 < aligned_ms,
        "with the timeout {switched_ms:.1} ms, aligned {aligned_ms:.1} ms"
    );
}
