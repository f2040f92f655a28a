//! Claim modes (`execution.state-recovery.claim-mode`) on restore from a
//! retained checkpoint of another job directory:
//! - `NO_CLAIM` (default): after the restored job ran and checkpointed
//!   several times, every file of the restored job directory is still there,
//!   byte for byte; the first new checkpoint is full and references none of
//!   them (with RocksDB incremental checkpoints: later ones are incremental again).
//! - `CLAIM`: the restored checkpoint and its shared files are deleted once
//!   a checkpoint of the new job subsumed it.
//!
//! Both end with the counts of an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use weir::prelude::*;
use weir::runtime::checkpoint::storage::{file_crc, resolve_restore};
use weir::runtime::checkpoint::{CheckpointStats, CheckpointStatus};

/// Keeps, per key, the highest count seen (a running count's last value is its total).
#[derive(Clone)]
struct MaxSink(Arc<Mutex<BTreeMap<u64, u64>>>);

impl SinkFunction<(u64, u64)> for MaxSink {
    fn invoke(&mut self, batch: Vec<(u64, u64)>) -> Result<()> {
        let mut m = self.0.lock().unwrap();
        for (k, c) in batch {
            let e = m.entry(k).or_insert(0);
            *e = (*e).max(c);
        }
        Ok(())
    }
}

/// Counts records `0..upto` (continuing from `restore`); returns the job
/// directory and the checkpoint statistics.
fn phase(
    root: &Path,
    upto: u64,
    restore: Option<&Path>,
    extra: &[(&str, &str)],
    out: &Arc<Mutex<BTreeMap<u64, u64>>>,
) -> (PathBuf, Vec<CheckpointStats>) {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", root.display())
        .unwrap();
    c.set("parallelism.default", 2).unwrap();
    c.set("execution.checkpointing.interval", "20ms").unwrap();
    if let Some(r) = restore {
        c.set("execution.state-recovery.path", r.display()).unwrap();
    }
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    let env = Env::from_conf(c).unwrap();
    env.add_source(
        GeneratorSource::new(3, Some(upto), |i, _| (i * i + 7 * i) % 1000).with_rate(100_000.0),
    )
    .set_parallelism(1)
    .name("numbers")
    .key_by(|k: &u64| *k)
    .count()
    .name("count")
    .add_sink(MaxSink(out.clone()))
    .name("max");
    let r = env.execute("claim").unwrap();
    (root.join(r.job_id), r.checkpoints)
}

/// Every file under `dir` (relative path -> size and CRC-32).
fn files(dir: &Path) -> BTreeMap<String, (u64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name() != ".running" {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, file_crc(&p).unwrap());
            }
        }
    }
    out
}

fn reference() -> BTreeMap<u64, u64> {
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let dir = tempfile::tempdir().unwrap();
    phase(dir.path(), 200_000, None, &[], &out);
    let r = out.lock().unwrap().clone();
    r
}

fn completed(stats: &[CheckpointStats]) -> Vec<&CheckpointStats> {
    stats
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .collect()
}

fn no_claim(backend: &[(&str, &str)], want: &BTreeMap<u64, u64>, incremental: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let (j1, _) = phase(&dir.path().join("a"), 80_000, None, backend, &out);
    let restored = resolve_restore(&j1).unwrap();
    let before = files(&j1);
    assert!(before.keys().any(|f| f.starts_with("chk-")), "{before:?}");
    let mut extra = backend.to_vec();
    extra.push(("execution.checkpointing.num-retained", "1000"));
    let (j2, stats) = phase(&dir.path().join("b"), 200_000, Some(&j1), &extra, &out);
    assert_eq!(*out.lock().unwrap(), *want);
    // Every file of the restored job directory is still there, unchanged.
    assert_eq!(files(&j1), before);
    assert!(restored.dir.join("_metadata").is_file());
    let done = completed(&stats);
    assert!(done.len() >= 3, "several checkpoints after the restore");
    // The first checkpoint after the restore is full: it uploaded all it references.
    assert_eq!(done[0].checkpointed_size, done[0].state_size);
    if incremental {
        assert!(
            done[1..].iter().any(|s| s.checkpointed_size < s.state_size),
            "later checkpoints are incremental again"
        );
    }
    // No checkpoint of the new job references a file of the restored one.
    let old_files: Vec<String> = before.keys().cloned().collect();
    for c in resolve_all(&j2) {
        for f in c {
            assert!(
                !old_files.contains(&f),
                "{f} is a file of the restored checkpoint"
            );
            assert!(j2.join(&f).is_file(), "{f} is in the new job's directory");
        }
    }
}

/// The referenced files (relative to the job directory) of every complete checkpoint of `job_dir`.
fn resolve_all(job_dir: &Path) -> Vec<Vec<String>> {
    weir::runtime::checkpoint::storage::list_checkpoints(job_dir)
        .unwrap()
        .into_iter()
        .filter(|c| c.status == "complete")
        .map(|c| {
            let l = weir::runtime::checkpoint::storage::load_checkpoint(&c.dir).unwrap();
            l.raw_files().iter().map(|f| f.path.clone()).collect()
        })
        .collect()
}

fn claim(backend: &[(&str, &str)], want: &BTreeMap<u64, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let (j1, _) = phase(&dir.path().join("a"), 80_000, None, backend, &out);
    let restored = resolve_restore(&j1).unwrap();
    let shared: Vec<String> = restored
        .raw_files()
        .iter()
        .filter(|f| f.path.starts_with("shared/"))
        .map(|f| f.path.clone())
        .collect();
    let mut extra = backend.to_vec();
    extra.push(("execution.state-recovery.claim-mode", "CLAIM"));
    phase(&dir.path().join("b"), 200_000, Some(&j1), &extra, &out);
    assert_eq!(*out.lock().unwrap(), *want);
    // Subsumed by the new job's checkpoints: deleted, with its shared files.
    assert!(
        !restored.dir.exists(),
        "{} was claimed and subsumed",
        restored.dir.display()
    );
    for f in &shared {
        assert!(
            !j1.join(f).exists(),
            "shared file {f} of the claimed checkpoint"
        );
    }
}

#[test]
fn no_claim_keeps_the_restored_checkpoint_and_claim_deletes_it_heap() {
    let want = reference();
    no_claim(&[], &want, false);
    claim(&[], &want);
}

#[cfg(feature = "rocksdb")]
#[test]
fn no_claim_and_claim_with_rocksdb_incremental_checkpoints() {
    let want = reference();
    let rocks = [
        ("state.backend.type", "rocksdb"),
        ("execution.checkpointing.incremental", "true"),
    ];
    no_claim(&rocks, &want, true);
    claim(&rocks, &want);
}

#[test]
fn a_bad_claim_mode_is_a_clear_config_error() {
    let mut c = Conf::defaults();
    let err = c
        .set("execution.state-recovery.claim-mode", "LEGACY")
        .unwrap_err()
        .to_string();
    assert!(err.contains("execution.state-recovery.claim-mode"), "{err}");
    assert!(err.contains("NO_CLAIM, CLAIM"), "{err}");
}
