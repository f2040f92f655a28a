//! Exactly-once under 100+ random actor kills: wordcount over the real text
//! corpus into the two-phase-commit file sink, with `chaos.kill-interval`
//! killing random subtasks (any operator) throughout the run, for every
//! checkpointing mode and several fixed seeds. Every word's committed lines
//! must be exactly its counts 1..N in order, N the true count; at-least-once
//! may duplicate but never miss. The same runs with the RocksDB backend
//! (feature `rocksdb`), with full and incremental checkpoints.
//!
//! The source is throttled (a short sleep every few lines) so each run lasts
//! long enough for at least 100 kills whatever the machine's speed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

/// Kills per run the tests insist on.
const KILLS: u64 = 100;
/// Copies of the real corpus in the input.
const COPIES: usize = 100;
/// With RocksDB, whose kills wait for checkpoints (`chaos.wait-for-checkpoint`):
/// a longer input, so a quiet machine too sees 100 kills.
#[cfg(feature = "rocksdb")]
const ROCKSDB_COPIES: usize = 160;

/// The real corpus, `copies` times, and its reference counts.
fn corpus(dir: &Path, copies: usize) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        for c in 0..copies {
            std::fs::write(dir.join(format!("{c:02}-{name}")), &text).unwrap();
        }
    }
    reference_counts(dir)
}

struct Run {
    restarts: u64,
    output: BTreeMap<String, Vec<u64>>,
    reference: BTreeMap<String, u64>,
}

/// Wordcount at parallelism 2 with chaos kills every 40 ms and checkpoints every 10 ms.
fn chaos_wordcount(seed: u64, mode: &[(&str, &str)], copies: usize) -> Run {
    // Kills, restarts and aborted checkpoints are logged into the test's
    // captured output: shown when a run fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let reference = corpus(&input, copies);
    let out = dir.path().join("out");
    let mut conf = Conf::defaults();
    for (k, v) in [
        (
            "execution.checkpointing.dir",
            dir.path().join("ckpt").display().to_string().as_str(),
        ),
        ("execution.checkpointing.interval", "10ms"),
        ("parallelism.default", "2"),
        ("chaos.kill-interval", "40ms"),
        ("chaos.seed", &seed.to_string()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "1000000"),
        // Small batches: the throttle takes about 3 ms per batch, so a barrier
        // never waits long behind one and checkpoints complete between kills.
        ("pipeline.batch-size", "64"),
    ] {
        conf.set(k, v).unwrap();
    }
    for (k, v) in mode {
        conf.set(k, v).unwrap();
    }
    let env = Env::from_conf(conf).unwrap();
    let lines = env
        .add_source(FileSource::new(&input).unwrap())
        .name("Source")
        .map(|line: String| {
            // Every subtask runs on its own thread: a per-thread line counter.
            thread_local!(static LINES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
            if LINES.with(|n| {
                n.set(n.get() + 1);
                n.get() % 25 == 0
            }) {
                std::thread::sleep(Duration::from_millis(1));
            }
            line
        })
        .name("Throttle");
    weir::wordcount::wordcount(&lines, Some(&out)).unwrap();
    let t0 = std::time::Instant::now();
    let mut job = env.execute_async("chaos-wordcount").unwrap();
    // A watchdog instead of a hang: no progress for minutes is a failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !job.is_done() {
        if std::time::Instant::now() > deadline {
            let completed = job
                .checkpoint_stats()
                .iter()
                .rev()
                .find(|c| c.status == CheckpointStatus::Completed)
                .map(|c| c.id);
            let last: Vec<_> = job
                .checkpoint_stats()
                .iter()
                .rev()
                .take(3)
                .map(|c| {
                    (
                        c.id,
                        c.status,
                        c.num_acknowledged_subtasks,
                        c.num_subtasks,
                        c.failure_message.clone(),
                    )
                })
                .collect();
            eprintln!(
                "seed {seed}: status {:?}, last checkpoints {last:?}, metrics {:?}",
                job.status(),
                job.metrics()
            );
            job.cancel();
            panic!(
                "seed {seed} {mode:?}: not done after 300 s ({} restarts, last completed checkpoint {completed:?}, last failure {:?})",
                job.num_restarts(),
                job.last_failure()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = job
        .wait()
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}"));
    eprintln!(
        "seed {seed} {mode:?}: {} restarts in {:.1} s",
        result.restarts,
        t0.elapsed().as_secs_f64()
    );
    Run {
        restarts: result.restarts,
        output: read_output(&out),
        reference,
    }
}

/// Runs every seed at once (the runs mostly sleep in the throttle) and checks each.
fn exactly_once(mode: &[(&str, &str)]) {
    exactly_once_with(mode, COPIES);
}

fn exactly_once_with(mode: &[(&str, &str)], copies: usize) {
    let seeds = [11u64, 23];
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .iter()
            .map(|&seed| s.spawn(move || chaos_wordcount(seed, mode, copies)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (seed, run) in seeds.iter().zip(runs) {
        assert!(
            run.restarts >= KILLS,
            "seed {seed} {mode:?}: only {} kills",
            run.restarts
        );
        assert_running_counts(&run.output, &run.reference);
    }
}

#[test]
fn aligned_exactly_once_under_100_kills() {
    exactly_once(&[]);
}

#[test]
fn unaligned_exactly_once_under_100_kills() {
    exactly_once(&[("execution.checkpointing.unaligned.enabled", "true")]);
}

#[test]
fn aligned_timeout_exactly_once_under_100_kills() {
    exactly_once(&[
        ("execution.checkpointing.unaligned.enabled", "true"),
        ("execution.checkpointing.aligned-checkpoint-timeout", "2ms"),
    ]);
}

#[test]
fn three_concurrent_checkpoints_exactly_once_under_100_kills() {
    exactly_once(&[("execution.checkpointing.max-concurrent-checkpoints", "3")]);
}

#[test]
fn at_least_once_misses_nothing_under_100_kills() {
    let run = chaos_wordcount(
        5,
        &[("execution.checkpointing.mode", "AT_LEAST_ONCE")],
        COPIES,
    );
    assert!(run.restarts >= KILLS, "only {} kills", run.restarts);
    let (missing, duplicates) = at_least_once_report(&run.output, &run.reference);
    assert!(missing.is_empty(), "counts missing for {missing:?}");
    eprintln!(
        "at-least-once under {} kills: {duplicates} duplicated lines",
        run.restarts
    );
}

/// With RocksDB (full checkpoints when `incremental` is false).
#[cfg(feature = "rocksdb")]
fn rocksdb(incremental: bool, mode: &[(&'static str, &'static str)]) {
    let mut all = vec![
        ("state.backend.type", "rocksdb"),
        // A RocksDB checkpoint (flush, hard links, upload with fsync) can take
        // longer than the 40 ms between kills on a loaded machine: without
        // this no checkpoint would ever complete and the job would not progress.
        ("chaos.wait-for-checkpoint", "true"),
        (
            "execution.checkpointing.incremental",
            if incremental { "true" } else { "false" },
        ),
    ];
    all.extend_from_slice(mode);
    exactly_once_with(&all, ROCKSDB_COPIES);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_aligned_exactly_once_under_100_kills() {
    rocksdb(true, &[]);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_full_unaligned_exactly_once_under_100_kills() {
    rocksdb(
        false,
        &[("execution.checkpointing.unaligned.enabled", "true")],
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_aligned_timeout_exactly_once_under_100_kills() {
    rocksdb(
        true,
        &[
            ("execution.checkpointing.unaligned.enabled", "true"),
            ("execution.checkpointing.aligned-checkpoint-timeout", "2ms"),
        ],
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_three_concurrent_checkpoints_exactly_once_under_100_kills() {
    rocksdb(
        true,
        &[("execution.checkpointing.max-concurrent-checkpoints", "3")],
    );
}
