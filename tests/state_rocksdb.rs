//! The RocksDB keyed state backend (feature `rocksdb`): the same semantics as
//! the heap backend through the same handles, with the value cache on and
//! off; snapshots that restore on the other backend (heap -> RocksDB and
//! RocksDB -> heap, through the canonical per-key-group form); and a job
//! rescaled 2 -> 4 -> 1 through retained RocksDB checkpoints that ends with
//! the counts of an unscaled run.
#![cfg(feature = "rocksdb")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use weir::prelude::*;
use weir::runtime::checkpoint::storage::{load_checkpoint, resolve_restore, CheckpointStorage};
use weir::runtime::checkpoint::KeyedStateHandle;
use weir::runtime::keygroup::{key_group_for, KeyGroupRange};
use weir::runtime::state::{
    BackendKind, KeyedStateBackend, RestoredKeyed, StateBackendConfig, UploadTarget,
};

const MAX: usize = 32;

fn rocks(
    parallelism: usize,
    subtask: usize,
    cache: usize,
    incremental: bool,
) -> KeyedStateBackend<String> {
    let ctx = RuntimeContext {
        job_id: "0".repeat(32),
        run_id: "0".repeat(8),
        operator: "test".into(),
        subtask,
        parallelism,
        max_parallelism: MAX,
        checkpointing: true,
        state_backend: StateBackendConfig {
            kind: BackendKind::RocksDb,
            incremental,
            local_dir: None,
            value_cache_entries: cache,
            memory: Default::default(),
        },
        auto_watermark_interval: std::time::Duration::from_millis(200),
        num_records_in_errors: Default::default(),
    };
    KeyedStateBackend::for_subtask(&ctx).unwrap()
}

struct States {
    count: ValueState<u64>,
    seen: ListState<u32>,
    tags: MapState<String, i64>,
}

fn register(b: &mut KeyedStateBackend<String>) -> States {
    States {
        count: b.value_state(&ValueStateDescriptor::new("count")).unwrap(),
        seen: b.list_state(&ListStateDescriptor::new("seen")).unwrap(),
        tags: b.map_state(&MapStateDescriptor::new("tags")).unwrap(),
    }
}

fn keys() -> Vec<String> {
    (0..300).map(|i| format!("key-{i}")).collect()
}

fn write(b: &mut KeyedStateBackend<String>, s: &States) {
    for (i, k) in keys().iter().enumerate() {
        let mut ctx = KeyedContext::new(k, b, MAX);
        s.count.update(&mut ctx, i as u64).unwrap();
        s.count
            .update_with(&mut ctx, |v| v.copied().unwrap_or(0) + 1)
            .unwrap();
        s.seen.add(&mut ctx, i as u32).unwrap();
        s.seen.add(&mut ctx, 7).unwrap();
        s.tags.put(&mut ctx, "a".into(), i as i64).unwrap();
        s.tags.put(&mut ctx, "b".into(), -1).unwrap();
        s.tags.put(&mut ctx, "c".into(), 3).unwrap();
        s.tags.remove(&mut ctx, &"b".to_string()).unwrap();
        if i % 10 == 0 {
            s.count.clear(&mut ctx).unwrap();
            s.tags.clear(&mut ctx).unwrap();
        }
    }
}

/// Checks every key of `range` (all keys when `None`) holds what [`write`] wrote.
fn check(b: &mut KeyedStateBackend<String>, s: &States, range: Option<KeyGroupRange>) -> usize {
    let mut n = 0;
    for (i, k) in keys().iter().enumerate() {
        if range.is_some_and(|r| !r.contains(key_group_for(k, MAX))) {
            continue;
        }
        n += 1;
        let ctx = KeyedContext::new(k, b, MAX);
        let (count, tags) = if i % 10 == 0 {
            (None, vec![])
        } else {
            (
                Some(i as u64 + 1),
                vec![("a".to_string(), i as i64), ("c".to_string(), 3)],
            )
        };
        assert_eq!(s.count.value(&ctx).unwrap(), count, "{k}");
        assert_eq!(s.seen.get(&ctx).unwrap(), vec![i as u32, 7], "{k}");
        let mut got = s.tags.entries(&ctx).unwrap();
        got.sort();
        assert_eq!(got, tags, "{k}");
        assert_eq!(s.tags.get(&ctx, &"b".to_string()).unwrap(), None);
    }
    n
}

#[test]
fn same_semantics_as_the_heap_backend_with_and_without_value_cache() {
    for cache in [0usize, 4, 100_000] {
        let mut b = rocks(1, 0, cache, false);
        let s = register(&mut b);
        write(&mut b, &s);
        b.end_batch().unwrap();
        assert_eq!(check(&mut b, &s, None), 300);
        // Registering a name again with another type is an error.
        assert!(b
            .value_state(&ValueStateDescriptor::<String>::new("count"))
            .is_err());
        // The canonical form equals the heap backend's for the same writes.
        let mut h = KeyedStateBackend::<String>::heap(KeyGroupRange::for_subtask(MAX, 1, 0), MAX);
        let hs = register(&mut h);
        write(&mut h, &hs);
        let (rs, hsnap) = (b.snapshot().unwrap(), h.snapshot().unwrap());
        assert_eq!(
            rs.states.keys().collect::<Vec<_>>(),
            hsnap.states.keys().collect::<Vec<_>>()
        );
        // Same key groups per state (the byte order of map entries may differ).
        for (name, st) in &rs.states {
            assert_eq!(
                st.key_groups.keys().collect::<Vec<_>>(),
                hsnap.states[name].key_groups.keys().collect::<Vec<_>>(),
                "{name}"
            );
        }
    }
}

/// Takes a checkpoint-style snapshot of `b` into `storage` (sync part, then upload).
fn upload(
    b: &mut KeyedStateBackend<String>,
    storage: &CheckpointStorage,
    id: u64,
) -> KeyedStateHandle {
    let p = b.snapshot_async(id).unwrap();
    p.upload(&UploadTarget {
        storage,
        checkpoint_id: id,
    })
    .unwrap()
    .handle
}

#[test]
fn snapshots_restore_across_backends_and_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::create(dir.path(), "job").unwrap();
    for incremental in [false, true] {
        // RocksDB at parallelism 2 -> heap at parallelism 3 and RocksDB at parallelism 3.
        let mut restored = RestoredKeyed::default();
        for sub in 0..2 {
            let mut b = rocks(2, sub, 16, incremental);
            register(&mut b);
            // Every subtask writes only the keys of its own key groups.
            let range = KeyGroupRange::for_subtask(MAX, 2, sub);
            let mut full =
                KeyedStateBackend::<String>::heap(KeyGroupRange::for_subtask(MAX, 1, 0), MAX);
            let fs = register(&mut full);
            write(&mut full, &fs);
            let mut part = full.snapshot().unwrap();
            for st in part.states.values_mut() {
                st.key_groups.retain(|g, _| range.contains(*g));
            }
            b.restore(&part).unwrap();
            match upload(&mut b, &storage, 10 + sub as u64) {
                KeyedStateHandle::Rocks(h) => {
                    assert_eq!(h.key_groups, range);
                    restored.rocks.push((storage.job_dir().to_path_buf(), h));
                }
                other => panic!("a RocksDB backend uploaded {other:?}"),
            }
        }
        let mut total = 0;
        for sub in 0..3 {
            let range = KeyGroupRange::for_subtask(MAX, 3, sub);
            let mut h = KeyedStateBackend::<String>::heap(range, MAX);
            let hs = register(&mut h);
            h.restore_from(&restored).unwrap();
            let n = check(&mut h, &hs, Some(range));
            let mut r = rocks(3, sub, 16, incremental);
            let rs = register(&mut r);
            r.restore_from(&restored).unwrap();
            assert_eq!(check(&mut r, &rs, Some(range)), n);
            total += n;
            // And back: the restored RocksDB state as a heap (canonical) snapshot into RocksDB.
            let canonical = RestoredKeyed {
                canonical: h.snapshot().unwrap(),
                rocks: Vec::new(),
            };
            let mut r2 = rocks(3, sub, 0, incremental);
            let rs2 = register(&mut r2);
            r2.restore_from(&canonical).unwrap();
            assert_eq!(check(&mut r2, &rs2, Some(range)), n);
        }
        assert_eq!(total, 300);
    }
    storage.release();
}

#[test]
fn a_restore_rejects_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::create(dir.path(), "job").unwrap();
    let mut b = rocks(1, 0, 16, true);
    let s = register(&mut b);
    write(&mut b, &s);
    let KeyedStateHandle::Rocks(h) = upload(&mut b, &storage, 1) else {
        panic!("not a RocksDB handle")
    };
    let sst = h.files.iter().find(|f| f.local.ends_with(".sst")).unwrap();
    let path = storage.job_dir().join(&sst.path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let restored = RestoredKeyed {
        canonical: Default::default(),
        rocks: vec![(storage.job_dir().to_path_buf(), h)],
    };
    let mut r = rocks(1, 0, 16, true);
    register(&mut r);
    let err = r.restore_from(&restored).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    storage.release();
}

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

/// Runs the counting job over records `0..upto` (continuing from `restore`) at `parallelism`.
fn phase(
    root: &std::path::Path,
    parallelism: usize,
    upto: u64,
    restore: Option<&std::path::Path>,
    extra: &[(&str, &str)],
    out: &Arc<Mutex<BTreeMap<u64, u64>>>,
) -> std::path::PathBuf {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", root.display())
        .unwrap();
    c.set("parallelism.default", parallelism).unwrap();
    c.set("pipeline.max-parallelism", MAX).unwrap();
    c.set("execution.checkpointing.interval", "20ms").unwrap();
    c.set("execution.checkpointing.num-retained", "2").unwrap();
    if let Some(r) = restore {
        c.set("execution.state-recovery.path", r.display()).unwrap();
    }
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    let env = Env::from_conf(c).unwrap();
    env.add_source(GeneratorSource::new(3, Some(upto), |i, _| {
        // 1000 keys, skewed.
        (i * i + 7 * i) % 1000
    }))
    .set_parallelism(1)
    .name("numbers")
    .key_by(|k: &u64| *k)
    .count()
    .name("count")
    .add_sink(MaxSink(out.clone()))
    .name("max");
    let r = env.execute("rescale").unwrap();
    root.join(r.job_id)
}

#[test]
fn rescale_rocksdb_checkpoints_2_4_1_gives_the_unscaled_counts() {
    let dir = tempfile::tempdir().unwrap();
    let reference = Arc::new(Mutex::new(BTreeMap::new()));
    phase(&dir.path().join("ref"), 2, 300_000, None, &[], &reference);
    for incremental in ["false", "true"] {
        let extra = [
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", incremental),
        ];
        let root = dir.path().join(format!("rocks-{incremental}"));
        let out = Arc::new(Mutex::new(BTreeMap::new()));
        let j1 = phase(&root, 2, 100_000, None, &extra, &out);
        // The retained (final) checkpoint of phase 1 holds RocksDB files of 2 instances.
        let cp = resolve_restore(&j1).unwrap();
        let instances = cp
            .states
            .iter()
            .flat_map(|s| &s.operators)
            .filter(|o| matches!(o.keyed, Some(KeyedStateHandle::Rocks(_))))
            .count();
        assert_eq!(instances, 2);
        load_checkpoint(&cp.dir).unwrap();
        let j2 = phase(&root, 4, 200_000, Some(&j1), &extra, &out);
        phase(&root, 1, 300_000, Some(&j2), &extra, &out);
        let got = out.lock().unwrap().clone();
        let want = reference.lock().unwrap().clone();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want, "incremental={incremental}");
    }
    // Heap -> RocksDB -> heap, rescaled too.
    let root = dir.path().join("mixed");
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let j1 = phase(&root, 2, 100_000, None, &[], &out);
    let j2 = phase(
        &root,
        4,
        200_000,
        Some(&j1),
        &[
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", "true"),
        ],
        &out,
    );
    phase(&root, 1, 300_000, Some(&j2), &[], &out);
    assert_eq!(*out.lock().unwrap(), *reference.lock().unwrap());
}
