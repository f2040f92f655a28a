//! State backends: what checkpointing costs with each keyed state backend.
//!
//! 1. **Heap snapshot, synchronous part vs state size**: a `ValueState<u64>`
//!    with 10 k, 100 k and 1 M keys; the time the processing loop is stopped
//!    for the copy-on-write snapshot (`snapshot_async`), the time the
//!    asynchronous part then takes to serialize, and for comparison the time
//!    of serializing everything synchronously (what the heap backend did
//!    before copy-on-write). With the `rocksdb` feature, RocksDB's
//!    synchronous part (write-back of the value cache, flush, hard links) too.
//! 2. **Wordcount throughput** (parallelism 2, built-in input, checkpoints
//!    every second): heap, RocksDB full, RocksDB incremental, and RocksDB
//!    incremental with the value cache off (every record a RocksDB get and
//!    put); plus the job of the Flink peer (`../shared/peers/flink`) with
//!    RocksDB incremental checkpoints.
//! 3. **Bytes uploaded per checkpoint as state grows** (RocksDB, full vs
//!    incremental): a job that adds new keys all the time and updates a few
//!    hot ones; per completed checkpoint, the bytes uploaded and the state size.
//!
//! ```text
//! cargo bench --features rocksdb --bench state_backends                 # 20 M words
//! cargo bench --features rocksdb --bench state_backends -- --words 5000000 --runs 1
//! ```

#[path = "common/peer.rs"]
mod peer;

use std::time::{Duration, Instant};

use weir::operators::text::generated_lines;
use weir::prelude::*;
use weir::runtime::checkpoint::storage::CheckpointStorage;
use weir::runtime::checkpoint::CheckpointStatus;
use weir::runtime::keygroup::KeyGroupRange;
use weir::runtime::state::{KeyedStateBackend, UploadTarget};
use weir::wordcount::{wordcount, words_counted};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VOCAB: usize = 10_000;
const SEED: u64 = 42;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fill(b: &mut KeyedStateBackend<u64>, keys: u64) -> ValueState<u64> {
    let st = b
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .expect("register");
    for k in 0..keys {
        let mut ctx = KeyedContext::new(&k, b, 128);
        st.update(&mut ctx, k).expect("update");
    }
    st
}

fn sync_phase() {
    println!(
        "## Synchronous part of a keyed snapshot vs state size (ValueState<u64>, one subtask)"
    );
    println!(
        "{:>10}  {:>16}  {:>16}  {:>22}  {:>26}  {:>24}",
        "keys",
        "heap sync (ms)",
        "heap async (ms)",
        "heap all-sync, before",
        "1000 writes after sync (ms)",
        "1000 writes, no snapshot"
    );
    let tmp = std::env::temp_dir().join(format!("weir-bench-sync-{}", std::process::id()));
    let storage = CheckpointStorage::create(&tmp, "bench").expect("storage");
    let range = KeyGroupRange::for_subtask(128, 1, 0);
    for keys in [10_000u64, 100_000, 1_000_000, 10_000_000] {
        let mut b = KeyedStateBackend::<u64>::heap(range, 128);
        let st = fill(&mut b, keys);
        let (mut sync, mut asyn, mut full) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cow, mut plain) = (Vec::new(), Vec::new());
        for id in 1..=5u64 {
            // 1000 writes spread over every key group, nothing shared.
            let t = Instant::now();
            for k in 0..1000u64 {
                let mut ctx = KeyedContext::new(&k, &mut b, 128);
                st.update(&mut ctx, k + id).expect("update");
            }
            plain.push(ms(t.elapsed()));
            let t = Instant::now();
            let p = b.snapshot_async(id).expect("snapshot");
            sync.push(ms(t.elapsed()));
            // The loop goes on while the upload holds the maps: the first
            // write to each key group copies that group (the stall).
            let t = Instant::now();
            for k in 0..1000u64 {
                let mut ctx = KeyedContext::new(&k, &mut b, 128);
                st.update(&mut ctx, k + id).expect("update");
            }
            cow.push(ms(t.elapsed()));
            let t = Instant::now();
            let target = UploadTarget {
                storage: &storage,
                checkpoint_id: id,
            };
            std::hint::black_box(p.upload(&target).expect("upload").full_size);
            asyn.push(ms(t.elapsed()));
            let t = Instant::now();
            std::hint::black_box(b.snapshot().expect("snapshot"));
            full.push(ms(t.elapsed()));
        }
        println!(
            "{:>10}  {:>16.3}  {:>16.1}  {:>22.1}  {:>26.2}  {:>24.3}",
            keys,
            median(sync),
            median(asyn),
            median(full),
            median(cow),
            median(plain)
        );
    }
    #[cfg(feature = "rocksdb")]
    {
        use weir::runtime::state::{BackendKind, StateBackendConfig};
        println!(
            "{:>10}  {:>22}  {:>18}",
            "keys", "rocksdb sync (ms)", "rocksdb async (ms)"
        );
        for keys in [10_000u64, 100_000, 1_000_000] {
            let ctx = RuntimeContext {
                job_id: "0".repeat(32),
                run_id: "0".repeat(8),
                operator: "bench".into(),
                subtask: 0,
                parallelism: 1,
                max_parallelism: 128,
                checkpointing: true,
                state_backend: StateBackendConfig {
                    kind: BackendKind::RocksDb,
                    incremental: true,
                    local_dir: None,
                    value_cache_entries: 65_536,
                    memory: Default::default(),
                },
                auto_watermark_interval: std::time::Duration::from_millis(200),
                num_records_in_errors: Default::default(),
            };
            let mut b = KeyedStateBackend::<u64>::for_subtask(&ctx).expect("rocksdb");
            let st = fill(&mut b, keys);
            let (mut sync, mut asyn) = (Vec::new(), Vec::new());
            for id in 1..=5u64 {
                for k in 0..1000u64 {
                    let mut ctx = KeyedContext::new(&k, &mut b, 128);
                    st.update(&mut ctx, k + id).expect("update");
                }
                let t = Instant::now();
                let p = b.snapshot_async(id).expect("snapshot");
                sync.push(ms(t.elapsed()));
                let t = Instant::now();
                let target = UploadTarget {
                    storage: &storage,
                    checkpoint_id: id,
                };
                std::hint::black_box(p.upload(&target).expect("upload").full_size);
                asyn.push(ms(t.elapsed()));
                b.notify_complete(id);
            }
            println!(
                "{:>10}  {:>22.3}  {:>18.1}",
                keys,
                median(sync),
                median(asyn)
            );
        }
    }
    storage.release();
    let _ = std::fs::remove_dir_all(&tmp);
    println!();
}

fn env_with(parallelism: usize, pairs: &[(&str, &str)]) -> (Env, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("weir-bench-state-{}", std::process::id()));
    let mut conf = Conf::defaults();
    conf.set("parallelism.default", parallelism).expect("valid");
    conf.set("execution.checkpointing.dir", dir.display())
        .expect("valid");
    conf.set("execution.checkpointing.interval", "1s")
        .expect("valid");
    for (k, v) in pairs {
        conf.set(k, v).expect("valid option");
    }
    (Env::from_conf(conf).expect("env"), dir)
}

fn wordcount_run(words: u64, pairs: &[(&str, &str)]) -> (f64, usize) {
    let (env, dir) = env_with(2, pairs);
    let lines = env
        .add_source(generated_lines(words, VOCAB, SEED))
        .name("Source");
    wordcount(&lines, None).expect("job");
    let r = env.execute("wordcount-state-bench").expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    let done = r
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .count();
    (
        words_counted(&r.operators) as f64 / r.duration.as_secs_f64(),
        done,
    )
}

/// The Flink peer's job ([`peer::add_peer_job`]) at parallelism 2 with `pairs`; words/s.
fn peer_run(words: u64, pairs: &[(&str, &str)]) -> f64 {
    let (env, dir) = env_with(2, pairs);
    peer::add_peer_job(&env, words, VOCAB as u64);
    let r = env.execute("peer-job").expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    words as f64 / r.duration.as_secs_f64()
}

fn throughput(words: u64, runs: usize) {
    println!(
        "## Wordcount, parallelism 2, {} M words (vocabulary {VOCAB}), checkpoints every 1 s; median of {runs}",
        words as f64 / 1e6
    );
    let mut configs: Vec<(&str, Vec<(&str, &str)>)> = vec![("heap (hashmap)", vec![])];
    if cfg!(feature = "rocksdb") {
        configs.push(("rocksdb full", vec![("state.backend.type", "rocksdb")]));
        configs.push((
            "rocksdb incremental",
            vec![
                ("state.backend.type", "rocksdb"),
                ("execution.checkpointing.incremental", "true"),
            ],
        ));
        configs.push((
            "rocksdb incremental, value cache off",
            vec![
                ("state.backend.type", "rocksdb"),
                ("execution.checkpointing.incremental", "true"),
                ("state.backend.rocksdb.value-cache.entries", "0"),
            ],
        ));
    }
    for (name, pairs) in &configs {
        let mut rates = Vec::new();
        let mut cps = 0;
        for _ in 0..runs {
            let (r, c) = wordcount_run(words, pairs);
            rates.push(r);
            cps = c;
        }
        println!(
            "{:<40} {:>8.2} M words/s   ({} checkpoints in the last run; runs: {})",
            name,
            median(rates.clone()) / 1e6,
            cps,
            rates
                .iter()
                .map(|r| format!("{:.2}", r / 1e6))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if cfg!(feature = "rocksdb") {
        let pairs = [
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", "true"),
        ];
        let rates: Vec<f64> = (0..runs).map(|_| peer_run(words, &pairs)).collect();
        println!(
            "{:<40} {:>8.2} M words/s   (Flink 2.3 peer, same job: ./run.sh {words} {VOCAB} 2 rocksdb-inc 1000)",
            "peer job, rocksdb incremental",
            median(rates) / 1e6
        );
        let pairs = [
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", "true"),
            ("state.backend.rocksdb.value-cache.entries", "0"),
        ];
        let rates: Vec<f64> = (0..runs).map(|_| peer_run(words, &pairs)).collect();
        println!(
            "{:<40} {:>8.2} M words/s",
            "peer job, rocksdb inc., cache off",
            median(rates) / 1e6
        );
    }
    println!();
}

/// Counts per key; keys 0.. grow with the input, a few hot keys change all the time.
fn growth(incremental: bool, records: u64) -> Vec<(u64, u64, u64)> {
    let inc = if incremental { "true" } else { "false" };
    let (env, dir) = env_with(
        1,
        &[
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", inc),
            ("execution.checkpointing.interval", "200ms"),
            ("execution.checkpointing.num-retained", "2"),
            ("state.backend.rocksdb.value-cache.entries", "1000"),
        ],
    );
    env.add_source(GeneratorSource::new(0, Some(records), |i, _| {
        // Every other record a new key; the rest hit 100 hot keys.
        if i % 2 == 0 {
            i
        } else {
            1u64 << 40 | (i % 100)
        }
    }))
    .name("keys")
    .key_by(|k: &u64| *k)
    .count()
    .name("Count")
    .add_sink(DiscardSink);
    let r = env.execute("growth").expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    r.checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .map(|c| (c.id, c.checkpointed_size, c.state_size))
        .collect()
}

fn upload_growth(records: u64) {
    println!(
        "## Bytes uploaded per checkpoint as state grows (rocksdb, parallelism 1, 200 ms interval)"
    );
    let full = growth(false, records);
    let inc = growth(true, records);
    println!(
        "{:>4}  {:>16}  {:>16}  {:>20}  {:>20}",
        "chk", "full: uploaded", "full: state", "incremental: uploaded", "incremental: state"
    );
    let rows = full.len().max(inc.len());
    let step = rows.div_ceil(25).max(1);
    for i in (0..rows).filter(|i| i % step == 0 || i + 1 == rows) {
        let f = full.get(i);
        let n = inc.get(i);
        println!(
            "{:>4}  {:>16}  {:>16}  {:>20}  {:>20}",
            i + 1,
            f.map_or("-".into(), |x| x.1.to_string()),
            f.map_or("-".into(), |x| x.2.to_string()),
            n.map_or("-".into(), |x| x.1.to_string()),
            n.map_or("-".into(), |x| x.2.to_string()),
        );
    }
    let sum = |v: &[(u64, u64, u64)]| v.iter().map(|x| x.1).sum::<u64>();
    println!(
        "total uploaded: full {} bytes in {} checkpoints, incremental {} bytes in {}",
        sum(&full),
        full.len(),
        sum(&inc),
        inc.len()
    );
    println!();
}

fn main() {
    let mut words = 20_000_000u64;
    let mut runs = 3usize;
    let mut only: Option<String> = None;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--words" => {
                words = args
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(words);
                i += 1;
            }
            "--runs" => {
                runs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(runs);
                i += 1;
            }
            "--only" => {
                only = args.get(i + 1).cloned();
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    println!("(figures from a shared, noisy machine: compare within one run)\n");
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    if want("sync") {
        sync_phase();
    }
    if want("throughput") {
        throughput(words, runs);
    }
    if cfg!(feature = "rocksdb") && want("growth") {
        upload_growth(3_000_000);
    }
}
