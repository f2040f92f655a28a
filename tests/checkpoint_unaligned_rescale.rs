//! Unaligned checkpoints restored at another parallelism (issue 14, item
//! 4): the in-flight data they hold is spread over the new subtasks, by key
//! group on keyed (hash) edges and round robin on rebalance edges (Flink
//! does the same). A job runs at parallelism 2 under backpressure until a
//! checkpoint with in-flight data on both kinds of edge is retained, is
//! cancelled, restored at 3, cancelled the same way, and restored at 1 to
//! the end: every key's committed counts are exactly 1..N. Before, the
//! restore at 3 was refused ("can only be restored with the same job graph
//! and parallelism").

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use weir::prelude::*;
use weir::runtime::checkpoint::storage::{list_checkpoints, load_checkpoint};
use weir::runtime::checkpoint::CheckpointStatus;

const N: u64 = 200_000;

fn spin(d: Duration) {
    let t = std::time::Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// numbers (parallelism 1: generator positions are per parallelism) ->
/// rebalance -> `widen` (slow) -> key_by -> `count` -> `slow` -> files.
/// With `restore`, starts from that job directory's latest checkpoint.
/// Runs to the end, or (with `cancel`) until a checkpoint holding in-flight
/// data of both `widen` and `count` is retained, then cancels; returns the
/// job directory.
fn run(
    root: &Path,
    out: &Path,
    parallelism: usize,
    restore: Option<&Path>,
    cancel: bool,
) -> PathBuf {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", root.display())
        .unwrap();
    c.set("execution.checkpointing.interval", "50ms").unwrap();
    c.set("execution.checkpointing.unaligned.enabled", "true")
        .unwrap();
    c.set("parallelism.default", parallelism).unwrap();
    if let Some(r) = restore {
        c.set("execution.state-recovery.path", r.display()).unwrap();
    }
    let env = Env::from_conf(c).unwrap();
    let sink = FileSink::new(out, |(k, n): &(u64, u64), line: &mut String| {
        line.push_str(&format!("{k}\t{n}"))
    })
    .unwrap();
    env.add_source(GeneratorSource::new(1, Some(N), |i, _| i).with_rate(150_000.0))
        .set_parallelism(1)
        .name("numbers")
        .rebalance()
        .map(|i: u64| {
            spin(Duration::from_micros(8));
            i % 997
        })
        .name("widen")
        .key_by(|k: &u64| *k)
        .count()
        .name("count")
        .map(|kc: (u64, u64)| {
            spin(Duration::from_micros(8));
            kc
        })
        .name("slow")
        .add_sink(sink)
        .name("files");
    let job = env.execute_async("unaligned-rescale").unwrap();
    let job_dir = root.join(job.job_id());
    if !cancel {
        job.wait().unwrap();
        return job_dir;
    }
    // A retained checkpoint with in-flight data towards `widen` (rebalance
    // edge) and `count` (hash edge).
    wait_for("a checkpoint with in-flight data on both edges", 60, || {
        let latest = job
            .checkpoint_stats()
            .into_iter()
            .filter(|s| s.status == CheckpointStatus::Completed)
            .max_by_key(|s| s.id)?;
        let holds = |chain: &str| {
            latest
                .subtasks
                .iter()
                .any(|s| s.task.starts_with(chain) && s.persisted_data > 0)
        };
        (holds("widen") && holds("count")).then_some(())
    });
    job.cancel();
    assert!(matches!(job.wait(), Err(Error::Cancelled(_))));
    job_dir
}

/// The chains with channel state in the latest complete checkpoint of `job`,
/// and that checkpoint's parallelism per chain.
fn in_flight(job: &Path) -> BTreeMap<String, usize> {
    let latest = list_checkpoints(job)
        .unwrap()
        .into_iter()
        .filter(|c| c.status == "complete")
        .max_by_key(|c| c.id)
        .unwrap();
    let cp = load_checkpoint(&latest.dir).unwrap();
    cp.states
        .iter()
        .filter(|s| !s.channel_state.is_empty())
        .map(|s| (s.chain.clone(), s.parallelism))
        .collect()
}

#[test]
fn unaligned_checkpoints_restore_at_2_then_3_then_1_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("ckpt"), dir.path().join("out"));
    let first = run(&root, &out, 2, None, true);
    let held = in_flight(&first);
    assert!(
        held.keys().any(|c| c.starts_with("widen")) && held.keys().any(|c| c.starts_with("count")),
        "the checkpoint restored from holds in-flight data of both edges: {held:?}"
    );
    assert!(held.values().all(|p| *p == 2), "{held:?}");
    let second = run(&root, &out, 3, Some(&first), true);
    let held = in_flight(&second);
    assert!(held.values().all(|p| *p == 3), "{held:?}");
    run(&root, &out, 1, Some(&second), false);
    // Every key's committed counts, over the three runs: 1..N, each once.
    let mut reference: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..N {
        *reference.entry((i % 997).to_string()).or_default() += 1;
    }
    let mut got = read_output(&out);
    for counts in got.values_mut() {
        counts.sort_unstable();
    }
    assert_running_counts(&got, &reference);
}
