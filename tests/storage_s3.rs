//! Checkpoint storage on S3, against a real S3-compatible server (moto's,
//! started by each test on a free port of 127.0.0.1, see `common/s3.rs`):
//! - the store round trip: framed state and `_metadata`, a multipart upload
//!   of a large file, size and CRC-32 checks, listing and deletion;
//! - wordcount checkpointing to `s3://bucket/prefix`, killed with SIGKILL and
//!   restored from S3 until it finishes: the committed output is exactly once
//!   (heap backend, and RocksDB incremental with the feature `rocksdb`);
//! - retention: after many checkpoints with `num-retained: 2` the bucket holds
//!   exactly the objects the two retained checkpoints reference (listed
//!   through the server);
//! - `weir checkpoints list|verify|gc` on an `s3://` URI.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use s3::S3Server;
use weir::operators::rng::SplitMix64;
use weir::prelude::*;
use weir::runtime::checkpoint::storage::{
    self, job_dirs, list_checkpoints, load_checkpoint, verify_checkpoint, CheckpointStorage,
};
use weir::runtime::checkpoint::{CheckpointMetadata, StateHandle, SubtaskState};

#[test]
fn s3_storage_round_trip() {
    let server = S3Server::start();
    server.configure();
    let root = PathBuf::from(server.uri("roundtrip"));
    let st = CheckpointStorage::create(&root, "job1").unwrap();
    assert_eq!(st.job_dir(), root.join("job1"));

    // A subtask's state, a big shared file (multipart), then `_metadata`.
    let state = SubtaskState {
        chain: "count".into(),
        chain_index: 0,
        subtask: 0,
        parallelism: 1,
        ..Default::default()
    };
    let (file, size) = st.write_state(1, 0, 0, &state).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("000007.sst");
    let data: Vec<u8> = (0..(20 << 20) + 4321)
        .map(|i: usize| (i % 253) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let (n, crc) = st.copy_in(&big, "shared/i1-000007.sst", true).unwrap();
    assert_eq!((n, crc), (data.len() as u64, crc32fast_hash(&data)));
    assert!(st.exists("shared/i1-000007.sst").unwrap());
    // Uploading a shared file again skips it (same name, same bytes).
    assert_eq!(
        st.copy_in(&big, "shared/i1-000007.sst", true).unwrap(),
        (n, crc)
    );
    let meta = CheckpointMetadata {
        job_id: "job1".into(),
        job_name: "roundtrip".into(),
        checkpoint_id: 1,
        trigger_timestamp: 1,
        completed_timestamp: 2,
        is_savepoint: false,
        subtasks: vec![StateHandle {
            chain: "count".into(),
            chain_index: 0,
            subtask: 0,
            file: file.clone(),
            size,
            files: vec!["shared/i1-000007.sst".into()],
        }],
    };
    let chk = st.write_metadata(&meta).unwrap();
    assert_eq!(chk, root.join("job1/chk-1"));

    // Read back through the server: metadata, state, sizes, CRC-32.
    let loaded = load_checkpoint(&chk).unwrap();
    assert_eq!(loaded.metadata, meta);
    assert_eq!(loaded.states, vec![state]);
    verify_checkpoint(&loaded).unwrap();
    assert_eq!(
        storage::file_crc(&root.join("job1/shared/i1-000007.sst")).unwrap(),
        (n, crc)
    );
    let back = dir.path().join("back.sst");
    assert_eq!(
        storage::copy_crc(&root.join("job1/shared/i1-000007.sst"), &back).unwrap(),
        (n, crc)
    );
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert_eq!(
        storage::resolve_restore(&root.join("job1"))
            .unwrap()
            .metadata
            .checkpoint_id,
        1
    );
    let objects = server.objects("roundtrip/job1");
    assert_eq!(
        objects.keys().cloned().collect::<Vec<_>>(),
        vec![
            ".running".to_string(),
            "chk-1/0-0.state".into(),
            "chk-1/_metadata".into(),
            "shared/i1-000007.sst".into()
        ]
    );
    assert_eq!(objects["shared/i1-000007.sst"], data.len() as u64);

    // A checkpoint without `_metadata` is incomplete: never restored, swept.
    st.write_state(2, 0, 0, &SubtaskState::default()).unwrap();
    assert_eq!(
        list_checkpoints(&root.join("job1"))
            .unwrap()
            .iter()
            .map(|c| (c.id, c.status))
            .collect::<Vec<_>>(),
        vec![(1, "complete"), (2, "incomplete")]
    );
    let swept = storage::sweep(&root.join("job1")).unwrap();
    assert_eq!(swept, vec![root.join("job1/chk-2")]);

    // Discard: `_metadata` first, then the rest, then unreferenced shared files.
    st.discard(1);
    st.delete_unreferenced(&["shared/i1-000007.sst".into()]);
    st.release();
    assert!(server.objects("roundtrip/job1").is_empty());
}

fn crc32fast_hash(data: &[u8]) -> u32 {
    // The CRC-32 (IEEE) weir records, computed here independently.
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

// ---------------------------------------------------------------- exactly once

fn words() -> u64 {
    if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    }
}

fn spawn(
    server: &S3Server,
    input: &Path,
    out: &Path,
    root: &str,
    extra: &[&str],
    restore: Option<&str>,
) -> Child {
    let mut cmd = wordcount_command(out, root, "50ms");
    cmd.args(["--input", input.to_str().unwrap()])
        .args(server.dynamic())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("WEIR_REST_PORT", "0");
    if let Some(r) = restore {
        cmd.args(["-s", r]);
    }
    cmd.spawn().expect("spawn wordcount")
}

/// The newest complete checkpoint under an `s3://` root (any job).
fn latest_s3_checkpoint(root: &str) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for job in job_dirs(Path::new(root)).ok()? {
        for c in list_checkpoints(&job).ok()? {
            if c.status == "complete" && best.as_ref().is_none_or(|(id, _)| c.id > *id) {
                best = Some((c.id, c.dir));
            }
        }
    }
    best.map(|b| b.1)
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// `scale` multiplies the corpus: a run must outlast its first checkpoint on S3.
fn exactly_once_through_s3(prefix: &str, extra: &[&str], seed: u64, scale: u64) {
    let server = S3Server::start();
    server.configure();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let reference = write_big_corpus(&input, words() * scale, 17);
    let out = dir.path().join("out");
    let root = server.uri(prefix);

    let mut rng = SplitMix64::new(seed);
    let (mut landed, mut restores) = (0, Vec::new());
    let mut finished = false;
    for _ in 0..3 {
        let restore = latest_s3_checkpoint(&root);
        if let Some(r) = &restore {
            restores.push(r.display().to_string());
        }
        let restore_uri = restore.as_ref().map(|r| r.display().to_string());
        let mut child = spawn(&server, &input, &out, &root, extra, restore_uri.as_deref());
        // The kill comes a random moment (0-40 ms) after this run completed
        // a checkpoint of its own on S3, so every restore has progress to
        // resume from, however fast or slow the run is here.
        let delay = Duration::from_millis(rng.below(40));
        let mut kill_at: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "run failed: {}", stderr_of(&mut child));
                finished = true;
                break;
            }
            if kill_at.is_none() && latest_s3_checkpoint(&root) != restore {
                kill_at = Some(Instant::now() + delay);
            }
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if finished {
            break;
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.success() {
            finished = true;
            break;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the run failed by itself: {}",
            stderr_of(&mut child)
        );
        landed += 1;
    }
    if !finished {
        let restore = latest_s3_checkpoint(&root);
        if let Some(r) = &restore {
            restores.push(r.display().to_string());
        }
        let restore_uri = restore.as_ref().map(|r| r.display().to_string());
        let child = spawn(&server, &input, &out, &root, extra, restore_uri.as_deref());
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "final run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    eprintln!("{prefix}: {landed} kills landed, restored from {restores:?}");
    assert!(landed >= 1, "no kill landed mid-run");
    assert!(
        restores.iter().all(|r| r.starts_with("s3://")) && !restores.is_empty(),
        "restored from S3 checkpoints: {restores:?}"
    );
    assert_running_counts(&read_output(&out), &reference);
}

#[test]
fn wordcount_killed_and_restored_from_s3_is_exactly_once() {
    exactly_once_through_s3("eo-heap", &[], 21, 4);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_killed_and_restored_from_s3_is_exactly_once() {
    exactly_once_through_s3(
        "eo-rocks",
        &[
            "-D",
            "state.backend.type=rocksdb",
            "-D",
            "execution.checkpointing.incremental=true",
        ],
        22,
        // A RocksDB checkpoint (flush, then upload of new SST files) takes
        // longer than a heap one: a longer run, so kills land after one.
        4,
    );
}

// ---------------------------------------------------------------- retention

/// Runs a keyed count checkpointing to `s3://.../<prefix>` until `n`
/// checkpoints completed; returns the job id and the completed ids.
fn run_on_s3(
    server: &S3Server,
    prefix: &str,
    n: usize,
    pairs: &[(&str, &str)],
) -> (String, Vec<u64>) {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", server.uri(prefix))
        .unwrap();
    c.set("execution.checkpointing.interval", "20ms").unwrap();
    c.set("execution.checkpointing.num-retained", "2").unwrap();
    c.set("parallelism.default", "2").unwrap();
    for (k, v) in server.settings() {
        c.set(k, v).unwrap();
    }
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    keyed_count_until_checkpoints(c, "retention-s3", n)
}

fn retention_on_s3(prefix: &str, pairs: &[(&str, &str)]) {
    let server = S3Server::start();
    let (job_id, completed) = run_on_s3(&server, prefix, 30, pairs);
    assert!(completed.len() >= 30, "{} completed", completed.len());
    server.configure();
    let job_dir = PathBuf::from(server.uri(&format!("{prefix}/{job_id}")));
    let listed = list_checkpoints(&job_dir).unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        completed[completed.len() - 2..].to_vec(),
        "exactly the two newest completed checkpoints remain"
    );
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for c in &listed {
        assert_eq!(c.status, "complete");
        let loaded = load_checkpoint(&c.dir).unwrap();
        verify_checkpoint(&loaded).unwrap();
        let chk = format!("chk-{}", c.id);
        let meta = server.objects(&format!("{prefix}/{job_id}/{chk}"))["_metadata"];
        expected.insert(format!("{chk}/_metadata"), meta);
        for h in &loaded.metadata.subtasks {
            expected.insert(format!("{chk}/{}", h.file), h.size);
        }
        for f in loaded.raw_files() {
            expected.insert(f.path.clone(), f.size);
        }
    }
    let actual = server.objects(&format!("{prefix}/{job_id}"));
    assert_eq!(
        actual, expected,
        "{pairs:?}: the bucket holds exactly the retained checkpoints' objects"
    );
    eprintln!(
        "{pairs:?}: {} checkpoints, {} objects ({} bytes) remain",
        completed.len(),
        actual.len(),
        actual.values().sum::<u64>()
    );
}

#[test]
fn retention_on_s3_keeps_exactly_the_retained_objects() {
    retention_on_s3("ret-heap", &[]);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_retention_on_s3_keeps_exactly_the_referenced_objects() {
    retention_on_s3(
        "ret-rocks",
        &[
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", "true"),
            ("state.backend.rocksdb.value-cache.entries", "64"),
        ],
    );
}

// ---------------------------------------------------------------- CLI

fn weir(server: &S3Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).args(server.dynamic());
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cli_lists_verifies_and_collects_s3_checkpoints() {
    let server = S3Server::start();
    let (job_id, completed) = run_on_s3(&server, "cli", 5, &[]);
    let root = server.uri("cli");
    let kept = &completed[completed.len() - 2..];

    let o = weir(&server, &["checkpoints", "list", &root]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for id in kept {
        let line = t
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no line for checkpoint {id}:\n{t}"));
        assert!(line.starts_with(&job_id), "{line}");
        assert!(line.ends_with("complete"), "{line}");
    }
    assert_eq!(t.lines().count(), 1 + kept.len(), "{t}");

    let o = weir(&server, &["checkpoints", "verify", &root]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for id in kept {
        assert!(
            t.contains(&format!(
                "{root}/{job_id}/chk-{id}: ok: checksums and references verified"
            )),
            "{t}"
        );
    }
    assert!(t.contains("2 checkpoints, 0 corrupt"), "{t}");

    let chk = format!("{root}/{job_id}/chk-{}", kept[1]);
    let o = weir(&server, &["checkpoints", "inspect", &chk, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checkpoint_id"], kept[1]);
    assert_eq!(v["job_id"], job_id.as_str());

    // A crash leftover: an incomplete checkpoint; gc removes it and only it.
    server.configure();
    storage::write_synced(
        Path::new(&format!("{root}/{job_id}/chk-999/0-0.state")),
        b"partial",
    )
    .unwrap();
    let o = weir(&server, &["checkpoints", "gc", &root]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!("deleted {root}/{job_id}/chk-999")),
        "{t}"
    );
    assert!(t.contains("1 orphaned entries deleted"), "{t}");
    let o = weir(&server, &["checkpoints", "verify", &root]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("2 checkpoints, 0 corrupt"),
        "{}",
        text(&o)
    );
}

/// High availability on S3: the leadership log's entries are created with
/// `If-None-Match: *`, so of two leaders only the newer can commit; the new
/// one resumes from the old one's last committed checkpoint; `_metadata` is
/// never replaced.
#[test]
fn ha_leadership_log_on_s3_is_exclusive_and_fences() {
    use weir::runtime::checkpoint::CompletionLog;
    use weir::runtime::ha::Leadership;
    let server = S3Server::start();
    server.configure();
    let root = PathBuf::from(server.uri("ha"));
    let job = root.join("job");
    let log = job.join("ha");
    let a = Leadership::acquire(&log, &job, None).unwrap();
    assert_eq!(a.leadership.generation(), 1);
    a.leadership.commit(1).unwrap();
    let b = Leadership::acquire(&log, &job, None).unwrap();
    assert_eq!(b.leadership.generation(), 2);
    assert_eq!(b.restore, Some(job.join("chk-1")));
    let fenced = a.leadership.commit(2).unwrap_err().to_string();
    assert!(
        fenced.starts_with("fenced:") && fenced.contains("generation 2"),
        "{fenced}"
    );
    assert!(a.leadership.check().is_err());
    b.leadership.commit(2).unwrap();
    b.leadership.check().unwrap();
    let history = weir::runtime::ha::log::Log::open(&log)
        .unwrap()
        .history()
        .unwrap();
    assert_eq!(
        history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "leader 1, checkpoint 1, leader 2, checkpoint 2: one entry per number"
    );
    // `_metadata` of one checkpoint id written twice: the second is refused.
    let st = CheckpointStorage::create(&root, "job2").unwrap();
    let meta = CheckpointMetadata {
        job_id: "job2".into(),
        job_name: "ha".into(),
        checkpoint_id: 7,
        trigger_timestamp: 1,
        completed_timestamp: 2,
        is_savepoint: false,
        subtasks: Vec::new(),
    };
    st.write_metadata(&meta).unwrap();
    let again = st.write_metadata(&meta).unwrap_err().to_string();
    assert!(again.contains("exists already"), "{again}");
}
