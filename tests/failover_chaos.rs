//! Exactly-once under 100+ random actor kills: wordcount over the real text
//! corpus into the two-phase-commit file sink, with `chaos.kill-interval`
//! killing random subtasks (any operator) throughout the run, for every
//! checkpointing mode and several fixed seeds. Every word's committed lines
//! must be exactly its counts 1..N in order, N the true count; at-least-once
//! may duplicate but never miss.
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

/// The real corpus, `COPIES` times, and its reference counts.
fn corpus(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        for c in 0..COPIES {
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
fn chaos_wordcount(seed: u64, mode: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let reference = corpus(&input);
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
    Run {
        restarts: result.restarts,
        output: read_output(&out),
        reference,
    }
}

/// Runs every seed at once (the runs mostly sleep in the throttle) and checks each.
fn exactly_once(mode: &[(&str, &str)]) {
    let seeds = [11u64, 23];
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .iter()
            .map(|&seed| s.spawn(move || chaos_wordcount(seed, mode)))
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
    let run = chaos_wordcount(5, &[("execution.checkpointing.mode", "AT_LEAST_ONCE")]);
    assert!(run.restarts >= KILLS, "only {} kills", run.restarts);
    let (missing, duplicates) = at_least_once_report(&run.output, &run.reference);
    assert!(missing.is_empty(), "counts missing for {missing:?}");
    eprintln!(
        "at-least-once under {} kills: {duplicates} duplicated lines",
        run.restarts
    );
}
