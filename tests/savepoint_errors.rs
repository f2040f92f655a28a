//! Savepoint errors a user sees: no savepoint directory, checkpointing off,
//! a corrupt savepoint and one of another format version (a clear error at
//! restore, never a panic), and a savepoint that fails because the job is
//! finishing.

mod common;

use std::path::Path;

use weir::prelude::*;
use weir::runtime::SavepointError;

fn env(dir: &Path, settings: &[(&str, &str)]) -> Env {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", dir.join("ckpt").display())
        .unwrap();
    c.set("execution.checkpointing.interval", "100ms").unwrap();
    c.set("parallelism.default", 2).unwrap();
    for (k, v) in settings {
        c.set(k, v).unwrap();
    }
    Env::from_conf(c).unwrap()
}

fn job(env: &Env) {
    env.add_source(GeneratorSource::new(1, None, |i, _| i % 50).with_rate(20_000.0))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count")
        .add_sink(DiscardSink)
        .name("sink");
}

#[test]
fn savepoint_without_a_directory_or_without_checkpointing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path(), &[]);
    job(&e);
    let j = e.execute_async("no-dir").unwrap();
    let err = j.trigger_savepoint(None).unwrap_err();
    assert!(
        matches!(err, Error::Savepoint(SavepointError::NoTargetDirectory)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("execution.checkpointing.savepoint-dir"),
        "{err}"
    );
    j.cancel();
    let _ = j.wait();

    let e = env(dir.path(), &[("execution.checkpointing.interval", "off")]);
    job(&e);
    let j = e.execute_async("no-checkpointing").unwrap();
    let err = j
        .trigger_savepoint(Some(&dir.path().join("sp")))
        .unwrap_err();
    assert!(
        matches!(err, Error::Savepoint(SavepointError::CheckpointingDisabled)),
        "{err:?}"
    );
    j.cancel();
    let _ = j.wait();
}

/// Takes a savepoint of a running job (into the configured savepoint-dir).
fn take_savepoint(dir: &Path) -> std::path::PathBuf {
    let e = env(
        dir,
        &[(
            "execution.checkpointing.savepoint-dir",
            dir.join("sps").to_str().unwrap(),
        )],
    );
    job(&e);
    let j = e.execute_async("sp").unwrap();
    let sp = j.trigger_savepoint(None).unwrap();
    assert!(sp.starts_with(dir.join("sps")), "{}", sp.display());
    j.cancel();
    let _ = j.wait();
    sp
}

fn restore_error(dir: &Path, from: &Path) -> String {
    let e = env(
        dir,
        &[("execution.state-recovery.path", from.to_str().unwrap())],
    );
    job(&e);
    match e.execute_async("restore") {
        Ok(j) => {
            j.cancel();
            panic!("restored from {}", from.display());
        }
        Err(err) => err.to_string(),
    }
}

#[test]
fn a_corrupt_or_wrong_version_savepoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sp = take_savepoint(dir.path());
    // A flipped byte in a state file.
    let bad = dir.path().join("corrupt");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&sp).unwrap().flatten() {
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let state = std::fs::read_dir(&bad)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "state"))
        .unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&state, bytes).unwrap();
    let err = restore_error(dir.path(), &bad);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains("unusable"), "{err}");

    // Another format version in `_metadata`.
    let meta = sp.join("_metadata");
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[5..7].copy_from_slice(&99u16.to_le_bytes());
    std::fs::write(&meta, bytes).unwrap();
    let err = restore_error(dir.path(), &meta);
    assert!(err.contains("format version 99"), "{err}");

    // Not a savepoint at all.
    let empty = dir.path().join("savepoint-000000-000000000000");
    std::fs::create_dir_all(&empty).unwrap();
    let err = restore_error(dir.path(), &empty);
    assert!(err.contains("no _metadata"), "{err}");
}
