//! Process-level exactly-once: wordcount over a real text corpus with the
//! file sink is killed with SIGKILL at random moments (fixed seeds) and
//! restarted from its latest complete checkpoint with `-s`, until it
//! finishes. For every word the committed output must be exactly the lines
//! with counts 1..N in order, N its true count: for aligned, unaligned,
//! aligned-with-timeout and three concurrent checkpoints, and with the
//! RocksDB backend (feature `rocksdb`) in full and incremental mode.
//! At-least-once may duplicate but never lose.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Instant;

use common::*;
use weir::operators::rng::SplitMix64;

fn words() -> u64 {
    if cfg!(debug_assertions) {
        150_000
    } else {
        1_500_000
    }
}

fn spawn(input: &Path, out: &Path, ckpt: &Path, extra: &[&str], restore: Option<&Path>) -> Child {
    let mut cmd = wordcount_command(out, &ckpt.display().to_string(), "25ms");
    cmd.args(["--input", input.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(r) = restore {
        cmd.args(["-s", r.to_str().unwrap()]);
    }
    cmd.spawn().expect("spawn wordcount")
}

/// Runs to completion through `kills` SIGKILLs at random moments; returns
/// how many kills landed and the restores' checkpoint ids.
fn run_with_kills(
    input: &Path,
    out: &Path,
    ckpt: &Path,
    extra: &[&str],
    seed: u64,
    kills: usize,
) -> (usize, Vec<String>) {
    // How long an uninterrupted run takes here (debug or release, loaded or not).
    let probe_out = out.with_extension("probe");
    let probe_ck = ckpt.with_extension("probe");
    let t = Instant::now();
    let status = spawn(input, &probe_out, &probe_ck, extra, None)
        .wait()
        .unwrap();
    assert!(status.success());
    let full = t.elapsed();
    let _ = std::fs::remove_dir_all(&probe_out);
    let _ = std::fs::remove_dir_all(&probe_ck);

    let mut rng = SplitMix64::new(seed);
    let mut landed = 0;
    let mut restores = Vec::new();
    for _ in 0..kills {
        let restore = latest_checkpoint(ckpt);
        if let Some(r) = &restore {
            restores.push(r.file_name().unwrap().to_string_lossy().into_owned());
        }
        let mut child = spawn(input, out, ckpt, extra, restore.as_deref());
        let delay = full.mul_f64(0.03 + 0.17 * rng.unit_f64());
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(status.success(), "run failed: {err}");
                return (landed, restores);
            }
            None => {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                if status.success() {
                    // It finished between the look and the kill: done.
                    return (landed, restores);
                }
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "the run failed by itself: {status:?}"
                );
                landed += 1;
            }
        }
    }
    let restore = latest_checkpoint(ckpt);
    if let Some(r) = &restore {
        restores.push(r.file_name().unwrap().to_string_lossy().into_owned());
    }
    let child = spawn(input, out, ckpt, extra, restore.as_deref());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (landed, restores)
}

fn exactly_once(mode: &str, extra: &[&str], seeds: &[u64]) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let reference = write_big_corpus(&input, words(), 11);
    for &seed in seeds {
        let out = dir.path().join(format!("out-{seed}"));
        let ckpt = dir.path().join(format!("ckpt-{seed}"));
        let (landed, restores) = run_with_kills(&input, &out, &ckpt, extra, seed, 4);
        eprintln!("{mode} seed {seed}: {landed} kills landed, restored from {restores:?}");
        assert!(
            landed >= 2,
            "{mode}: too few kills landed mid-run ({landed})"
        );
        assert_running_counts(&read_output(&out), &reference);
    }
}

#[test]
fn aligned_survives_kills() {
    exactly_once("aligned", &[], &[1, 2]);
}

#[test]
fn unaligned_survives_kills() {
    exactly_once(
        "unaligned",
        &["-D", "execution.checkpointing.unaligned.enabled=true"],
        &[3, 4],
    );
}

#[test]
fn aligned_with_timeout_survives_kills() {
    exactly_once(
        "aligned-timeout",
        &[
            "-D",
            "execution.checkpointing.unaligned.enabled=true",
            "-D",
            "execution.checkpointing.aligned-checkpoint-timeout=2ms",
        ],
        &[5, 6],
    );
}

#[test]
fn three_concurrent_checkpoints_survive_kills() {
    exactly_once(
        "concurrent",
        &[
            "-D",
            "execution.checkpointing.max-concurrent-checkpoints=3",
            "-D",
            "execution.checkpointing.interval=5ms",
        ],
        &[7, 8],
    );
}

#[test]
fn three_concurrent_unaligned_checkpoints_survive_kills() {
    exactly_once(
        "concurrent-unaligned",
        &[
            "-D",
            "execution.checkpointing.max-concurrent-checkpoints=3",
            "-D",
            "execution.checkpointing.interval=5ms",
            "-D",
            "execution.checkpointing.unaligned.enabled=true",
        ],
        &[9],
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_full_survives_kills() {
    exactly_once(
        "rocksdb-full",
        &[
            "-D",
            "state.backend.type=rocksdb",
            "-D",
            "state.backend.rocksdb.value-cache.entries=1024",
        ],
        &[13, 14],
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_survives_kills() {
    exactly_once(
        "rocksdb-incremental",
        &[
            "-D",
            "state.backend.type=rocksdb",
            "-D",
            "execution.checkpointing.incremental=true",
            "-D",
            "state.backend.rocksdb.value-cache.entries=1024",
        ],
        &[15, 16],
    );
}

#[test]
fn at_least_once_never_loses() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let reference = write_big_corpus(&input, words(), 12);
    let out = dir.path().join("out");
    let ckpt = dir.path().join("ckpt");
    let (landed, _) = run_with_kills(
        &input,
        &out,
        &ckpt,
        &["-D", "execution.checkpointing.mode=AT_LEAST_ONCE"],
        21,
        4,
    );
    let (missing, duplicates) = at_least_once_report(&read_output(&out), &reference);
    eprintln!("at-least-once: {landed} kills, {duplicates} duplicate lines");
    assert!(
        missing.is_empty(),
        "counts missing for {} words, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn checkpoints_are_taken_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let out = run_example(
        "wordcount",
        &[
            "--words",
            if cfg!(debug_assertions) {
                "500000"
            } else {
                "5000000"
            },
            "-D",
            "execution.checkpointing.interval=20ms",
            "-D",
            &format!("execution.checkpointing.dir={}", ckpt.display()),
        ],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("checkpoint ") && l.contains(" completed in "))
        .collect();
    assert!(lines.len() >= 3, "{stderr}");
    // A finished job keeps exactly its final checkpoint (num-retained 1).
    let jobs: Vec<_> = std::fs::read_dir(&ckpt).unwrap().flatten().collect();
    assert_eq!(jobs.len(), 1);
    let chks: Vec<String> = std::fs::read_dir(jobs[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chk-"))
        .collect();
    assert_eq!(chks.len(), 1, "{chks:?}");
    let last_id: u64 = chks[0].trim_start_matches("chk-").parse().unwrap();
    let last_printed: u64 = lines
        .last()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        last_id, last_printed,
        "the final checkpoint is the last one printed"
    );
    weir::runtime::checkpoint::storage::load_checkpoint(&jobs[0].path().join(&chks[0])).unwrap();
}
