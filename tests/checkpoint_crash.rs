//! Crashes injected while RocksDB files are uploaded and while subsumed
//! checkpoints and unreferenced shared files are deleted (named failure
//! points, `WEIR_FAILPOINTS=point=exit@n`: the process exits at once, like a
//! crash). Afterwards every complete checkpoint is intact (nothing it
//! references was lost: sizes and CRC-32 verified), the leftovers are exactly
//! what `weir checkpoints gc` removes, gc never removes a referenced file,
//! and a restore from what remains finishes with exactly-once output.
#![cfg(feature = "rocksdb")]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use weir::runtime::checkpoint::storage::{
    list_checkpoints, load_checkpoint, orphans, verify_checkpoint,
};

fn wordcount(
    out: &Path,
    ckpt: &Path,
    extra: &[&str],
    failpoints: Option<&str>,
    restore: Option<&Path>,
) -> Output {
    let mut all = vec![
        "-D",
        "state.backend.type=rocksdb",
        "-D",
        "state.backend.rocksdb.value-cache.entries=512",
    ];
    all.extend_from_slice(extra);
    wordcount_with_failpoints(out, ckpt, "50000", &all, failpoints, restore)
}

fn reference() -> std::collections::BTreeMap<String, u64> {
    generated_reference(crash_test_words().parse().unwrap(), 50000, 42)
}

fn weir_gc(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["checkpoints", "gc", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every complete checkpoint of `job` loads and its files check out; returns how many.
fn complete_and_intact(job: &Path) -> usize {
    let mut n = 0;
    for c in list_checkpoints(job).unwrap() {
        if c.status == "complete" {
            let l = load_checkpoint(&c.dir).unwrap();
            verify_checkpoint(&l).unwrap();
            n += 1;
        } else {
            assert_eq!(c.status, "incomplete", "{:?}", c.problem);
        }
    }
    n
}

/// Crash at `point` (n-th pass), check, gc, check again, restore and finish.
fn crash_gc_restore(point: &str, nth: u32, extra: &[&str]) {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let crashed = wordcount(
        &out,
        &ckpt,
        extra,
        Some(&format!("{point}=exit@{nth}")),
        None,
    );
    assert_eq!(
        crashed.status.code(),
        Some(86),
        "{point}: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let job = single_job_dir(&ckpt);
    let before = complete_and_intact(&job);
    assert!(before >= 1, "{point}: no complete checkpoint survived");
    let leftovers = orphans(&job).unwrap();
    assert!(
        !leftovers.is_empty(),
        "{point}: the crash left nothing behind (the failure point fired too early?)"
    );
    let printed = weir_gc(&ckpt);
    for p in &leftovers {
        assert!(!p.exists(), "{point}: gc left {}", p.display());
        assert!(printed.contains(&p.display().to_string()), "{printed}");
    }
    assert!(orphans(&job).unwrap().is_empty());
    assert_eq!(
        complete_and_intact(&job),
        before,
        "{point}: gc removed a checkpoint"
    );
    let restored = wordcount(&out, &dir.path().join("ckpt2"), extra, None, Some(&job));
    assert!(
        restored.status.success(),
        "{point}: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_running_counts(&read_output(&out), &reference);
}

#[test]
fn crash_mid_upload_incremental() {
    crash_gc_restore(
        "rocksdb-upload-file",
        30,
        &["-D", "execution.checkpointing.incremental=true"],
    );
}

#[test]
fn crash_mid_upload_full() {
    crash_gc_restore("rocksdb-upload-file", 30, &[]);
}

#[test]
fn crash_between_metadata_and_directory_deletion() {
    crash_gc_restore(
        "discard-after-metadata",
        4,
        &["-D", "execution.checkpointing.incremental=true"],
    );
}

#[test]
fn crash_while_deleting_unreferenced_shared_files() {
    crash_gc_restore(
        "delete-shared-file",
        3,
        &["-D", "execution.checkpointing.incremental=true"],
    );
}

#[test]
fn inspect_lists_and_verify_checks_shared_files() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let run = wordcount(
        &out,
        &ckpt,
        &[
            "-D",
            "execution.checkpointing.incremental=true",
            "-D",
            "execution.checkpointing.num-retained=3",
        ],
        None,
        None,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let job = single_job_dir(&ckpt);
    let last = list_checkpoints(&job).unwrap().pop().unwrap();
    let weir = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .output()
            .unwrap()
    };
    let shown = weir(&["checkpoints", "inspect", last.dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success(), "{text}");
    assert!(
        text.contains("(rocksdb)") && text.contains("shared file shared/"),
        "{text}"
    );
    assert!(weir(&["checkpoints", "verify", ckpt.to_str().unwrap()])
        .status
        .success());
    // Flip a byte of a shared SST file: verify reports the checkpoint corrupt, gc keeps the file.
    let l = load_checkpoint(&last.dir).unwrap();
    let f = l
        .raw_files()
        .into_iter()
        .find(|f| f.path.starts_with("shared/"))
        .unwrap()
        .clone();
    let p = job.join(&f.path);
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&p, b).unwrap();
    let v = weir(&["checkpoints", "verify", ckpt.to_str().unwrap()]);
    let vt = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(!v.status.success(), "{vt}");
    assert!(vt.contains("CORRUPT") && vt.contains("checksum"), "{vt}");
    weir_gc(&ckpt);
    assert!(p.exists(), "gc deleted a referenced shared file");
}
