//! Failures injected at every named point of the checkpoint protocol
//! (`runtime/src/failpoint.rs`), inside a running job: the subtask (or the
//! coordinator) panics there, the job fails over in-process from its latest
//! completed checkpoint, and the committed output is still exactly once.
//! Unlike `checkpoint_failures.rs`, nothing is restarted by hand: the
//! restart strategy brings the job back.

mod common;

use common::*;

/// Long enough that the third checkpoint is far from the end of the input
/// (a failure in a checkpoint the final one already subsumed is ignored).
const WORDS: &str = "6000000";
const VOCABULARY: &str = "3000";

/// The built-in text's reference counts for `WORDS` words.
fn reference() -> std::collections::BTreeMap<String, u64> {
    generated_reference(WORDS.parse().unwrap(), VOCABULARY.parse().unwrap(), 42)
}

/// Runs wordcount at parallelism 2 with `point` armed to panic on its third
/// hit; checks the run succeeds after a restart with exactly-once output.
fn inject(point: &str, unaligned: bool, reference: &std::collections::BTreeMap<String, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ckpt = dir.path().join("ckpt").display().to_string();
    let output = wordcount_command(&out, &ckpt, "20ms")
        .args(["--words", WORDS, "--vocabulary", VOCABULARY])
        .args([
            "-D",
            &format!("execution.checkpointing.unaligned.enabled={unaligned}"),
        ])
        .env("WEIR_FAILPOINTS", format!("{point}=panic@3"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let what = format!("point {point} (unaligned: {unaligned})");
    assert!(output.status.success(), "{what}: job failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("failure injected at '{point}'")),
        "{what}: the point was never reached:\n{stderr}"
    );
    let restarts: u64 = stdout_value(&output, "restarts:").parse().unwrap();
    assert!(restarts >= 1, "{what}: no restart:\n{stderr}");
    assert_running_counts(&read_output(&out), reference);
}

fn inject_all(points: &[&str], unaligned: bool) {
    let reference = reference();
    std::thread::scope(|s| {
        for p in points {
            let r = &reference;
            s.spawn(move || inject(p, unaligned, r));
        }
    });
}

#[test]
fn aligned_failures_at_every_point_keep_exactly_once() {
    inject_all(
        &[
            "during-alignment",
            "sync-snapshot",
            "during-upload",
            "before-ack",
            "after-metadata-write",
            "before-notify-complete",
            "sink-commit",
        ],
        false,
    );
}

#[test]
fn unaligned_failures_at_every_point_keep_exactly_once() {
    inject_all(
        &[
            "sync-snapshot",
            "during-upload",
            "before-ack",
            "after-metadata-write",
            "before-notify-complete",
            "sink-commit",
        ],
        true,
    );
}
