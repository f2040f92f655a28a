//! Rescaling word count through savepoints and through retained checkpoints:
//! run part of the input at parallelism 2, stop (with a savepoint, or cancel
//! after a retained checkpoint), restore at 4, stop again, restore at 1 and
//! run to the end. The committed output of the three runs, read in run
//! order, must be exactly-once: every word's lines are its counts 1..N, N
//! its count in the whole text (what an unscaled run gives). Also: heap ->
//! RocksDB -> heap through savepoints (no RocksDB file in a savepoint), a
//! savepoint moved elsewhere restores, and a restore by its `_metadata` path.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir::operators::text::generated_lines;
use weir::prelude::*;
use weir::runtime::checkpoint::storage::load_checkpoint;
use weir::wordcount::wordcount;

const WORDS: u64 = 300_000;
const VOCABULARY: usize = 2_000;
const SEED: u64 = 11;
/// Lines per second: the whole text takes about 5 s, so a stop after
/// 1 s always lands in the middle.
const RATE: f64 = 6_000.0;

/// How a run ends.
enum End {
    /// Runs to the end of the input.
    Finish,
    /// Stop-with-savepoint into this directory; returns the savepoint.
    Stop(PathBuf),
    /// Cancel once a checkpoint completed (retained on cancellation); returns the job directory.
    CancelAfterCheckpoint,
}

struct Run {
    job_id: String,
    restore_from: Option<PathBuf>,
}

/// One run of word count over the generated text, writing to `out`.
fn run(
    root: &Path,
    out: &Path,
    parallelism: usize,
    restore: Option<&Path>,
    extra: &[(&str, &str)],
    end: End,
) -> Run {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", root.display())
        .unwrap();
    c.set("execution.checkpointing.interval", "100ms").unwrap();
    c.set("parallelism.default", parallelism).unwrap();
    c.set("pipeline.max-parallelism", 128).unwrap();
    if let Some(r) = restore {
        c.set("execution.state-recovery.path", r.display()).unwrap();
    }
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    let env = Env::from_conf(c).unwrap();
    // The source stays at parallelism 1 (generator positions are per
    // parallelism); tokenizer, count and sink are rescaled.
    let lines = env
        .add_source(generated_lines(WORDS, VOCABULARY, SEED).with_rate(RATE))
        .set_parallelism(1)
        .name("Lines");
    wordcount(&lines, Some(out)).unwrap();
    let job = env.execute_async("rescale").unwrap();
    let job_id = job.job_id().to_string();
    match end {
        End::Finish => {
            job.wait().unwrap();
            Run {
                job_id,
                restore_from: None,
            }
        }
        End::Stop(target) => {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let sp = job.stop_with_savepoint(Some(&target), false).unwrap();
            let r = job.wait().expect("a stopped job ends FINISHED");
            assert_eq!(r.job_id, job_id);
            Run {
                job_id,
                restore_from: Some(sp),
            }
        }
        End::CancelAfterCheckpoint => {
            std::thread::sleep(std::time::Duration::from_secs(1));
            common::wait_for("a completed checkpoint", 60, || {
                job.checkpoint_stats()
                    .iter()
                    .any(|s| s.status == weir::runtime::checkpoint::CheckpointStatus::Completed)
                    .then_some(())
            });
            job.cancel();
            assert!(matches!(job.wait(), Err(Error::Cancelled(_))));
            Run {
                restore_from: Some(root.join(&job_id)),
                job_id,
            }
        }
    }
}

/// The committed `word -> counts` of `out`, read in run order (the runs'
/// job ids), then subtask, then part number.
fn read_runs(out: &Path, runs: &[&str]) -> BTreeMap<String, Vec<u64>> {
    let mut files: Vec<((usize, u64, u64), PathBuf)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // part-<run>-<subtask>-<n>
            let parts: Vec<&str> = name.split('-').collect();
            assert_eq!(parts.len(), 4, "unexpected file {name}");
            let run = runs
                .iter()
                .position(|r| r.starts_with(parts[1]))
                .unwrap_or_else(|| panic!("{name} is of no known run"));
            (
                (run, parts[2].parse().unwrap(), parts[3].parse().unwrap()),
                p,
            )
        })
        .collect();
    files.sort();
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, f) in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let (w, c) = line.rsplit_once('\t').unwrap();
            counts
                .entry(w.to_string())
                .or_default()
                .push(c.parse().unwrap());
        }
    }
    counts
}

/// Files of a savepoint directory: `_metadata` and state files only.
fn assert_self_contained(sp: &Path) {
    let names: Vec<String> = std::fs::read_dir(sp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"_metadata".to_string()), "{names:?}");
    for n in &names {
        assert!(
            n == "_metadata" || n.ends_with(".state"),
            "unexpected file {n} in savepoint {}",
            sp.display()
        );
    }
    let c = load_checkpoint(sp).unwrap();
    assert!(c.metadata.is_savepoint);
    assert!(
        c.raw_files().is_empty(),
        "a savepoint references no raw files"
    );
    assert!(c.metadata.subtasks.iter().all(|h| h.files.is_empty()));
}

fn savepoint_name_ok(sp: &Path, job_id: &str) {
    let name = sp.file_name().unwrap().to_string_lossy().into_owned();
    let rest = name
        .strip_prefix(&format!("savepoint-{}-", &job_id[..6]))
        .unwrap_or_else(|| panic!("savepoint directory {name} is not savepoint-<job6>-<hex12>"));
    assert_eq!(rest.len(), 12, "{name}");
    assert!(rest.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
}

#[test]
fn rescale_wordcount_2_4_1_through_savepoints_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    let out = dir.path().join("out");
    let sps = dir.path().join("savepoints");
    let r1 = run(&root, &out, 2, None, &[], End::Stop(sps.clone()));
    let sp1 = r1.restore_from.clone().unwrap();
    savepoint_name_ok(&sp1, &r1.job_id);
    assert!(sp1.starts_with(&sps));
    assert_self_contained(&sp1);
    // Restored by its `_metadata` file.
    let r2 = run(
        &root,
        &out,
        4,
        Some(&sp1.join("_metadata")),
        &[],
        End::Stop(sps.clone()),
    );
    let sp2 = r2.restore_from.clone().unwrap();
    assert_self_contained(&sp2);
    // Moved elsewhere, it still restores.
    let moved = dir.path().join("elsewhere").join("my-savepoint");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&sp2, &moved).unwrap();
    let r3 = run(&root, &out, 1, Some(&moved), &[], End::Finish);
    // Savepoints stay where they are: never deleted.
    assert!(sp1.join("_metadata").exists());
    assert!(moved.join("_metadata").exists());
    let got = read_runs(&out, &[&r1.job_id, &r2.job_id, &r3.job_id]);
    let reference = common::generated_reference(WORDS, VOCABULARY, SEED);
    common::assert_running_counts(&got, &reference);
}

#[test]
fn rescale_wordcount_2_4_1_through_retained_checkpoints_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    let out = dir.path().join("out");
    let r1 = run(&root, &out, 2, None, &[], End::CancelAfterCheckpoint);
    let r2 = run(
        &root,
        &out,
        4,
        r1.restore_from.as_deref(),
        &[],
        End::CancelAfterCheckpoint,
    );
    let r3 = run(&root, &out, 1, r2.restore_from.as_deref(), &[], End::Finish);
    let got = read_runs(&out, &[&r1.job_id, &r2.job_id, &r3.job_id]);
    let reference = common::generated_reference(WORDS, VOCABULARY, SEED);
    common::assert_running_counts(&got, &reference);
}

#[cfg(feature = "rocksdb")]
#[test]
fn heap_to_rocksdb_to_heap_through_savepoints() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    let out = dir.path().join("out");
    let sps = dir.path().join("savepoints");
    let rocks = [
        ("state.backend.type", "rocksdb"),
        ("execution.checkpointing.incremental", "true"),
    ];
    let r1 = run(&root, &out, 2, None, &[], End::Stop(sps.clone()));
    let sp1 = r1.restore_from.clone().unwrap();
    let r2 = run(&root, &out, 3, Some(&sp1), &rocks, End::Stop(sps.clone()));
    let sp2 = r2.restore_from.clone().unwrap();
    // Taken on RocksDB, it holds the canonical form only: no SST file.
    assert_self_contained(&sp2);
    let r3 = run(&root, &out, 1, Some(&sp2), &[], End::Finish);
    let got = read_runs(&out, &[&r1.job_id, &r2.job_id, &r3.job_id]);
    let reference = common::generated_reference(WORDS, VOCABULARY, SEED);
    common::assert_running_counts(&got, &reference);
}
