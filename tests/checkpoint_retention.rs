//! Retention: after 200 checkpoints with `num-retained: 3` the job directory
//! holds exactly the files the 3 retained checkpoints reference (their
//! `_metadata`, state files, and the RocksDB files they reference, in their
//! directories or in `shared/`), counted and summed, for the heap backend and
//! for RocksDB in full and incremental mode. The job changes its state all the
//! time (new keys and updates) and checkpoints every 5 ms.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::keyed_count_until_checkpoints;
use weir::prelude::*;
use weir::runtime::checkpoint::storage::{list_checkpoints, load_checkpoint};

/// Every file under `dir` (relative path -> size).
fn files_under(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    out
}

/// Runs the job until `n` checkpoints completed, lets it finish; returns the
/// job directory and the ids of the completed checkpoints.
pub fn run_until_checkpoints(
    root: &Path,
    n: usize,
    pairs: &[(&str, &str)],
) -> (std::path::PathBuf, Vec<u64>) {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", root.display())
        .unwrap();
    c.set("execution.checkpointing.interval", "5ms").unwrap();
    c.set("execution.checkpointing.num-retained", "3").unwrap();
    c.set("parallelism.default", "2").unwrap();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    let (job_id, ids) = keyed_count_until_checkpoints(c, "retention", n);
    (root.join(job_id), ids)
}

fn exactly_the_retained_files(pairs: &[(&str, &str)]) {
    let root = tempfile::tempdir().unwrap();
    let (dir, completed) = run_until_checkpoints(root.path(), 200, pairs);
    assert!(completed.len() >= 200, "{} completed", completed.len());
    let listed = list_checkpoints(&dir).unwrap();
    let ids: Vec<u64> = listed.iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        completed[completed.len() - 3..].to_vec(),
        "exactly the three newest completed checkpoints remain ({pairs:?})"
    );
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for c in &listed {
        assert_eq!(c.status, "complete");
        let loaded = load_checkpoint(&c.dir).unwrap();
        let chk = format!("chk-{}", c.id);
        expected.insert(
            format!("{chk}/_metadata"),
            std::fs::metadata(c.dir.join("_metadata")).unwrap().len(),
        );
        for h in &loaded.metadata.subtasks {
            expected.insert(format!("{chk}/{}", h.file), h.size);
        }
        for f in loaded.raw_files() {
            expected.insert(f.path.clone(), f.size);
        }
    }
    let actual = files_under(&dir);
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{pairs:?}: {} files no retained checkpoint references (e.g. {:?}); {} referenced but missing (e.g. {:?})",
        extra.len(),
        &extra[..extra.len().min(5)],
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(actual.len(), expected.len());
    assert_eq!(
        actual.values().sum::<u64>(),
        expected.values().sum::<u64>(),
        "total size"
    );
    assert_eq!(actual, expected);
    eprintln!(
        "{pairs:?}: {} checkpoints, {} files ({} bytes) remain",
        completed.len(),
        actual.len(),
        actual.values().sum::<u64>()
    );
}

#[test]
fn heap_full_keeps_exactly_the_retained_files() {
    exactly_the_retained_files(&[]);
}

#[test]
fn heap_with_incremental_setting_keeps_exactly_the_retained_files() {
    // The heap backend has no incremental mode: the setting changes nothing.
    exactly_the_retained_files(&[("execution.checkpointing.incremental", "true")]);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_full_keeps_exactly_the_retained_files() {
    exactly_the_retained_files(&[
        ("state.backend.type", "rocksdb"),
        ("state.backend.rocksdb.value-cache.entries", "64"),
    ]);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_keeps_exactly_the_retained_files() {
    exactly_the_retained_files(&[
        ("state.backend.type", "rocksdb"),
        ("execution.checkpointing.incremental", "true"),
        ("state.backend.rocksdb.value-cache.entries", "64"),
    ]);
}
