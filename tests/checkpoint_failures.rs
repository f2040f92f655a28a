//! Crashes at named points of the checkpoint protocol, corrupt checkpoint
//! files, and the coordinator's failure handling, observed as a user would:
//! through the wordcount example's exit status, messages and output files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn wordcount(
    out: &Path,
    ckpt: &Path,
    extra: &[&str],
    failpoints: Option<&str>,
    restore: Option<&Path>,
) -> Output {
    wordcount_with_failpoints(out, ckpt, "3000", extra, failpoints, restore)
}

fn reference() -> std::collections::BTreeMap<String, u64> {
    generated_reference(crash_test_words().parse().unwrap(), 3000, 42)
}

fn chk_ids(job: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(job)
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
    ids
}

/// Runs wordcount with `failpoint` (`point=exit@n`) armed; asserts it
/// crashed there (exit status 86, the failure named on stderr) and returns
/// its job directory.
fn crashed_at(out: &Path, ckpt: &Path, extra: &[&str], failpoint: &str) -> PathBuf {
    let crashed = wordcount(out, ckpt, extra, Some(failpoint), None);
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert_eq!(
        crashed.status.code(),
        Some(86),
        "no crash at {failpoint} (did the job end first?): {stderr}"
    );
    let point = failpoint.split('=').next().unwrap_or(failpoint);
    assert!(
        stderr.contains(&format!("failure injected at '{point}'")),
        "{stderr}"
    );
    single_job_dir(ckpt)
}

/// A crash (process exit) at `point` on its n-th pass, then a restore from the
/// job directory and a run to the end: the output is exactly once.
fn crash_then_restore(point: &str, nth: u32) {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let job = crashed_at(&out, &ckpt, &[], &format!("{point}=exit@{nth}"));
    let restored = wordcount(&out, &dir.path().join("ckpt2"), &[], None, Some(&job));
    assert!(
        restored.status.success(),
        "{point}: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert!(stderr.contains("restored from checkpoint"), "{stderr}");
    assert_running_counts(&read_output(&out), &reference);
}

#[test]
fn crash_after_metadata_temp_file_before_rename() {
    // chk-3 has `_metadata.<pid>-<random>.inprogress` only: incomplete,
    // skipped; chk-2 is used.
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let job = crashed_at(
        &out,
        &ckpt,
        &["-D", "execution.checkpointing.num-retained=5"],
        "after-metadata-write=exit@3",
    );
    let temp: Vec<String> = std::fs::read_dir(job.join("chk-3"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("_metadata.") && n.ends_with(".inprogress"))
        .collect();
    assert_eq!(temp.len(), 1, "the temporary _metadata is left: {temp:?}");
    assert!(!job.join("chk-3/_metadata").exists());
    let restored = wordcount(&out, &dir.path().join("ckpt2"), &[], None, Some(&job));
    assert!(restored.status.success());
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert!(
        stderr.contains("skipping") && stderr.contains("chk-3"),
        "{stderr}"
    );
    assert!(stderr.contains("restored from checkpoint 2"), "{stderr}");
    assert_running_counts(&read_output(&out), &reference());
}

#[test]
fn crash_after_metadata_before_notify() {
    crash_then_restore("before-notify-complete", 3);
}

#[test]
fn crash_during_sink_commit() {
    crash_then_restore("sink-commit", 2);
}

#[test]
fn crash_during_upload() {
    crash_then_restore("during-upload", 5);
}

#[test]
fn crash_before_ack() {
    crash_then_restore("before-ack", 5);
}

#[test]
fn crash_during_sync_snapshot() {
    crash_then_restore("sync-snapshot", 5);
}

#[test]
fn corrupt_files_are_detected_and_the_previous_checkpoint_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    // Keep three checkpoints, crash after the sixth is complete. Every 5 ms
    // (not 20): six checkpoints must complete before the input ends, and a
    // fast run of the whole input took less than six times 20 ms.
    let job = crashed_at(
        &out,
        &ckpt,
        &[
            "-D",
            "execution.checkpointing.num-retained=3",
            "-D",
            "execution.checkpointing.interval=5ms",
        ],
        "before-notify-complete=exit@6",
    );
    // The crash came before subsumed chk-3 was deleted (deletion follows notification).
    // (A later checkpoint may have started, never completed.)
    let ids = chk_ids(&job);
    assert!(
        [4, 5, 6].iter().all(|i| ids.contains(i))
            && ids
                .iter()
                .filter(|&&i| i > 6)
                .all(|i| !job.join(format!("chk-{i}/_metadata")).exists()),
        "{ids:?}"
    );
    // Flip one bit in chk-6's _metadata, truncate a state file of chk-5.
    let meta = job.join("chk-6/_metadata");
    let mut bytes = std::fs::read(&meta).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&meta, bytes).unwrap();
    let state = std::fs::read_dir(job.join("chk-5"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "state"))
        .unwrap();
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    // Restoring the corrupt checkpoint itself is refused with the reason.
    let refused = wordcount(
        &out,
        &dir.path().join("ckpt2"),
        &[],
        None,
        Some(&job.join("chk-6")),
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("checksum mismatch") && err.contains("chk-6"),
        "{err}"
    );
    let refused = wordcount(
        &out,
        &dir.path().join("ckpt2"),
        &[],
        None,
        Some(&job.join("chk-5")),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("truncated"),
        "{err}"
    );

    // The job directory: both are skipped, with a message each, and chk-4 is used.
    let restored = wordcount(
        &out,
        &dir.path().join("ckpt3"),
        &["-D", "execution.checkpointing.interval=off"],
        None,
        Some(&job),
    );
    assert!(restored.status.success());
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert!(
        stderr.contains("skipping") && stderr.contains("chk-6") && stderr.contains("chk-5"),
        "{stderr}"
    );
    assert!(stderr.contains("restored from checkpoint 4"), "{stderr}");
}

#[test]
fn failing_uploads_abort_checkpoints_and_exceed_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let failed = wordcount(
        &out,
        &ckpt,
        &[
            "-D",
            "execution.checkpointing.tolerable-failed-checkpoints=2",
            // The default (exponential-delay) would restart the job forever.
            "-D",
            "restart-strategy.type=none",
        ],
        Some("during-upload=error"),
        None,
    );
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("tolerable-failed-checkpoints")
            && err.contains("failure injected at 'during-upload'"),
        "{err}"
    );
    // No checkpoint ever completed: no _metadata anywhere, aborted directories removed.
    let job = single_job_dir(&ckpt);
    for id in chk_ids(&job) {
        assert!(
            !job.join(format!("chk-{id}/_metadata")).exists(),
            "chk-{id} has metadata without all acks"
        );
    }
    // Nothing was committed.
    assert!(read_output(&out).is_empty());
    // The failed job leaves only complete checkpoints (here none): no lock,
    // no incomplete `chk-<n>`, no temporary file (the lock used to stay).
    assert_eq!(only_complete_checkpoints(&job), 0);
}

#[test]
fn checkpoint_timeout_aborts_and_tolerance_decides() {
    let dir = tempfile::tempdir().unwrap();
    // Under load no checkpoint completes within 1 ms: each one expires and is
    // aborted. Without tolerance the job fails on the first.
    let strict = wordcount(
        &dir.path().join("out1"),
        &dir.path().join("ckpt1"),
        &[
            "-D",
            "execution.checkpointing.timeout=1ms",
            "-D",
            "restart-strategy.type=none",
        ],
        None,
        None,
    );
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(!strict.status.success(), "{err}");
    assert!(
        err.contains("expired after 1ms") && err.contains("tolerable-failed-checkpoints (0)"),
        "{err}"
    );
    assert!(
        read_output(&dir.path().join("out1")).is_empty(),
        "nothing committed"
    );
}

/// A checkpoint's keyed state is partitioned into `pipeline.max-parallelism`
/// key groups: a restore with another value is refused, naming the operator
/// and both values (it used to run to the end with wrong counts), and the
/// same value restores exactly once.
#[test]
fn restore_with_another_max_parallelism_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let job = crashed_at(&out, &ckpt, &[], "before-notify-complete=exit@2");
    let refused = wordcount(
        &out,
        &dir.path().join("ckpt2"),
        &["-D", "pipeline.max-parallelism=64"],
        None,
        Some(&job),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("pipeline.max-parallelism 128")
            && err.contains("this job has 64")
            && err.contains("'Count'"),
        "{err}"
    );
    // Nothing was emitted by the refused run: the output is the crashed run's.
    let restored = wordcount(&out, &dir.path().join("ckpt3"), &[], None, Some(&job));
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_running_counts(&read_output(&out), &reference());
}

/// The top words the example prints are part of its checkpoint: restored
/// from its final checkpoint (a crash right after it completed), the job
/// reads nothing more and still prints the whole text's top 10 (it printed
/// an empty list).
#[test]
fn top_words_survive_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    // No periodic checkpoint: the first to complete is the final one.
    let interval = ["-D", "execution.checkpointing.interval=1h"];
    let job = crashed_at(&out, &ckpt, &interval, "before-notify-complete=exit@1");
    let restored = wordcount(&out, &dir.path().join("ckpt2"), &interval, None, Some(&job));
    let stdout = String::from_utf8_lossy(&restored.stdout);
    assert!(
        restored.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let mut expected: Vec<(String, u64)> = reference().into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    expected.truncate(10);
    assert_eq!(top_words(&stdout), expected, "{stdout}");
}
