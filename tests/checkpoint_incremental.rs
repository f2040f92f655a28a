//! Incremental RocksDB checkpoints: a later checkpoint references shared SST
//! files an earlier one uploaded, and uploads only the files no earlier
//! checkpoint referenced (the bytes a checkpoint reports as uploaded are
//! exactly its state files, its own files and its new shared files); and
//! every retained checkpoint restores to the exact state at its source
//! position, on RocksDB and on the heap backend.
#![cfg(feature = "rocksdb")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::prelude::*;
use weir::runtime::checkpoint::storage::{list_checkpoints, load_checkpoint, verify_checkpoint};
use weir::runtime::checkpoint::{CheckpointStatus, KeyedStateHandle};
use weir::runtime::state::{BackendKind, KeyedStateBackend, RestoredKeyed, StateBackendConfig};

const MAX: usize = 128;

fn key(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % (2000 + i / 8)
}

/// Emits 0, 1, 2, ... (paced) until told to stop; its position is operator state.
#[derive(Clone)]
struct Until {
    stop: Arc<AtomicBool>,
    next: u64,
}

impl SourceFunction<u64> for Until {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        if let Some(n) = ctx.state.get_list::<u64>("next")?.first() {
            self.next = *n;
        }
        Ok(())
    }
    fn poll_next(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourceStatus> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(SourceStatus::Finished);
        }
        for _ in 0..max.min(128) {
            out.push(self.next);
            self.next += 1;
        }
        Ok(SourceStatus::Idle(Duration::from_micros(200)))
    }
    fn snapshot_state(
        &mut self,
        _checkpoint_id: u64,
        state: &mut OperatorStateStore,
    ) -> Result<()> {
        state.update_list("next", &[self.next])
    }
}

fn backend(kind: BackendKind) -> KeyedStateBackend<u64> {
    let ctx = RuntimeContext {
        job_id: "0".repeat(32),
        run_id: "0".repeat(8),
        operator: "check".into(),
        subtask: 0,
        parallelism: 1,
        max_parallelism: MAX,
        checkpointing: true,
        state_backend: StateBackendConfig {
            kind,
            incremental: true,
            local_dir: None,
            value_cache_entries: 0,
            memory: Default::default(),
        },
        auto_watermark_interval: std::time::Duration::from_millis(200),
        num_records_in_errors: Default::default(),
    };
    KeyedStateBackend::for_subtask(&ctx).unwrap()
}

#[test]
fn later_checkpoints_reuse_shared_files_and_every_retained_one_restores() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", root.path().display())
        .unwrap();
    c.set("execution.checkpointing.interval", "30ms").unwrap();
    c.set("execution.checkpointing.num-retained", "1000")
        .unwrap();
    c.set("parallelism.default", "2").unwrap();
    c.set("pipeline.max-parallelism", MAX).unwrap();
    c.set("state.backend.type", "rocksdb").unwrap();
    c.set("execution.checkpointing.incremental", "true")
        .unwrap();
    // A small cache: RocksDB sees writes all the time, so SST files pile up.
    c.set("state.backend.rocksdb.value-cache.entries", "256")
        .unwrap();
    let env = Env::from_conf(c).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    env.add_source(Until {
        stop: stop.clone(),
        next: 0,
    })
    .set_parallelism(1)
    .name("numbers")
    .key_by(|i: &u64| key(*i))
    .count()
    .name("count")
    .add_sink(DiscardSink)
    .name("sink");
    let job = env.execute_async("incremental").unwrap();
    let dir = root.path().join(job.job_id());
    let t = Instant::now();
    while job
        .checkpoint_stats()
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .count()
        < 40
    {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "too few checkpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let r = job.wait().unwrap();
    let stats: BTreeMap<u64, (u64, u64)> = r
        .checkpoints
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .map(|s| (s.id, (s.checkpointed_size, s.state_size)))
        .collect();

    let listed = list_checkpoints(&dir).unwrap();
    assert_eq!(
        listed.len(),
        stats.len(),
        "num-retained 1000 keeps them all"
    );
    let mut earlier: BTreeSet<String> = BTreeSet::new();
    let mut reused_total = 0usize;
    let last = listed.last().unwrap().id;
    for info in &listed {
        let c = load_checkpoint(&info.dir).unwrap();
        verify_checkpoint(&c).unwrap();
        let shared: BTreeMap<String, u64> = c
            .raw_files()
            .into_iter()
            .filter(|f| f.path.starts_with("shared/"))
            .map(|f| (f.path.clone(), f.size))
            .collect();
        let owned: u64 = c
            .raw_files()
            .into_iter()
            .filter(|f| !f.path.starts_with("shared/"))
            .map(|f| f.size)
            .sum();
        let state_files: u64 = c.metadata.subtasks.iter().map(|h| h.size).sum();
        // `_metadata` lists every shared file the states reference.
        let listed_shared: BTreeSet<&String> = c
            .metadata
            .subtasks
            .iter()
            .flat_map(|h| &h.files)
            .filter(|f| f.starts_with("shared/"))
            .collect();
        assert_eq!(listed_shared, shared.keys().collect());
        let reused = shared.keys().filter(|p| earlier.contains(*p)).count();
        reused_total += reused;
        let new_bytes: u64 = shared
            .iter()
            .filter(|(p, _)| !earlier.contains(*p))
            .map(|(_, s)| *s)
            .sum();
        let (uploaded, state_size) = stats[&info.id];
        assert_eq!(
            state_size,
            state_files + owned + shared.values().sum::<u64>(),
            "checkpoint {} state size",
            info.id
        );
        if info.id != last {
            assert_eq!(
                uploaded,
                state_files + owned + new_bytes,
                "checkpoint {} uploads its state files, its own files and only the shared files no earlier checkpoint had",
                info.id
            );
        }
        earlier.extend(shared.into_keys());
    }
    assert!(
        reused_total > 0,
        "no checkpoint reused a shared file of an earlier one"
    );

    // Every retained checkpoint restores to the counts at its source position.
    for info in &listed {
        let c = load_checkpoint(&info.dir).unwrap();
        let mut next = None;
        let mut restored = RestoredKeyed::default();
        for st in &c.states {
            for op in &st.operators {
                if op.name == "numbers" {
                    next = op
                        .operator
                        .get_list::<u64>("next")
                        .unwrap()
                        .first()
                        .copied();
                }
                if let Some(KeyedStateHandle::Rocks(h)) = &op.keyed {
                    restored.rocks.push((dir.clone(), h.clone()));
                }
            }
        }
        let next = next.expect("source position");
        let mut want: BTreeMap<u64, u64> = BTreeMap::new();
        for i in 0..next {
            *want.entry(key(i)).or_insert(0) += 1;
        }
        for kind in [BackendKind::Heap, BackendKind::RocksDb] {
            let mut b = backend(kind);
            let v = b
                .value_state(&ValueStateDescriptor::<u64>::new("aggregate"))
                .unwrap();
            b.restore_from(&restored).unwrap();
            assert_eq!(
                b.num_entries(),
                want.len(),
                "checkpoint {} ({kind:?})",
                info.id
            );
            for (k, n) in &want {
                let ctx = KeyedContext::new(k, &mut b, MAX);
                assert_eq!(
                    v.value(&ctx).unwrap(),
                    Some(*n),
                    "checkpoint {} key {k} ({kind:?})",
                    info.id
                );
            }
        }
    }
}
