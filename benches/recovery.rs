//! Recovery time: a keyed job checkpointing on an interval; a subtask is
//! killed again and again; for each kill, the time from the kill to the first
//! record processed by the restarted job (the sink's record counter moving
//! again after the restart). Prints p50 and p99 and the size of the state
//! that was restored.
//!
//! ```text
//! cargo bench --bench recovery                         # small state (1000 counters), heap, 50 kills
//! cargo bench --features rocksdb --bench recovery -- \
//!     --backend rocksdb --state-mb 1024 --incremental --kills 50
//! ```
//!
//! Options: `--kills N` (50), `--backend hashmap|rocksdb` (hashmap),
//! `--state-mb M` (0: small state; otherwise M MiB of keyed state as 1 KiB
//! pseudo-random values, one per key), `--incremental` (RocksDB incremental
//! checkpoints), `--interval D` (checkpoint interval, default 100ms for small
//! state, 2s for large), `--dir PATH` (checkpoint directory, default in the
//! system's temporary directory).
//!
//! With large state the job first writes every key once (progress is
//! printed), waits for a checkpoint that holds all of it, and only then
//! starts killing; after each recovery it waits for one more checkpoint to
//! complete, so every kill restores a checkpoint with the whole state.
//!
//! The job is keyed, so it is a single failover region: a kill restarts all of it.

use std::time::{Duration, Instant};

use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes of the value kept per key in the large-state job.
const VALUE_BYTES: usize = 1024;

struct Args {
    kills: usize,
    backend: String,
    state_mb: u64,
    incremental: bool,
    interval: Option<String>,
    dir: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        kills: 50,
        backend: "hashmap".into(),
        state_mb: 0,
        incremental: false,
        interval: None,
        dir: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let value = |i: usize, name: &str| -> String {
        args.get(i + 1).cloned().unwrap_or_else(|| {
            eprintln!("{name} needs a value");
            std::process::exit(2)
        })
    };
    while i < args.len() {
        match args[i].as_str() {
            "--kills" => {
                a.kills = value(i, "--kills").parse().unwrap_or_else(|_| {
                    eprintln!("--kills N: N must be a positive number");
                    std::process::exit(2)
                });
                i += 1;
            }
            "--backend" => {
                a.backend = value(i, "--backend");
                i += 1;
            }
            "--state-mb" => {
                a.state_mb = value(i, "--state-mb").parse().unwrap_or_else(|_| {
                    eprintln!("--state-mb M: M must be a number of MiB");
                    std::process::exit(2)
                });
                i += 1;
            }
            "--interval" => {
                a.interval = Some(value(i, "--interval"));
                i += 1;
            }
            "--dir" => {
                a.dir = Some(value(i, "--dir"));
                i += 1;
            }
            "--incremental" => a.incremental = true,
            // cargo bench passes --bench to every harness = false target.
            "--bench" => {}
            other => {
                eprintln!("unknown option {other}; see the doc comment of benches/recovery.rs");
                std::process::exit(2)
            }
        }
        i += 1;
    }
    if a.kills == 0 {
        eprintln!("--kills must be at least 1");
        std::process::exit(2)
    }
    a
}

/// Large state: per key a 1 KiB value written the first time the key is
/// seen (later records only read it); emits the key.
#[derive(Clone, Default)]
struct Payload {
    value: Option<ValueState<Vec<u8>>>,
}

impl KeyedProcessFunction<u64, u64, u64> for Payload {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        self.value = Some(ctx.value_state(&ValueStateDescriptor::new("payload"))?);
        Ok(())
    }

    fn process_element(
        &mut self,
        key: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let state = self.value.expect("opened");
        if state.value(ctx)?.is_none() {
            // Pseudo-random bytes, so compression does not shrink the state.
            let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let bytes = (0..VALUE_BYTES)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            state.update(ctx, bytes)?;
        }
        out.collect(key);
        Ok(())
    }
}

fn sink_in(job: &JobHandle) -> u64 {
    job.metrics()
        .iter()
        .find(|o| o.name == "sink")
        .map_or(0, |o| o.records_in)
}

fn latest_completed(job: &JobHandle) -> Option<(u64, u64)> {
    job.checkpoint_stats()
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .map(|c| (c.id, c.state_size))
        .max()
}

/// Waits until a checkpoint with an id above `after` completed; returns its state size.
fn await_checkpoint(job: &JobHandle, after: u64, what: &str) -> u64 {
    let t0 = Instant::now();
    let mut said = Instant::now();
    loop {
        if let Some((id, size)) = latest_completed(job) {
            if id > after {
                return size;
            }
        }
        if job.status().is_terminal() {
            eprintln!(
                "the job ended while waiting for {what}: {:?}",
                job.last_failure()
            );
            std::process::exit(1)
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  ... waiting for {what} ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let a = parse_args();
    let large = a.state_mb > 0;
    let dir = a.dir.clone().map_or_else(
        || std::env::temp_dir().join("weir-bench-recovery"),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let interval = a
        .interval
        .clone()
        .unwrap_or_else(|| if large { "2s" } else { "100ms" }.into());
    let mut conf = Conf::defaults();
    for (k, v) in [
        ("parallelism.default", "2"),
        ("execution.checkpointing.interval", interval.as_str()),
        ("execution.checkpointing.dir", &dir.display().to_string()),
        (
            "execution.checkpointing.externalized-checkpoint-retention",
            "DELETE_ON_CANCELLATION",
        ),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "1000000"),
        ("state.backend.type", a.backend.as_str()),
        (
            "execution.checkpointing.incremental",
            if a.incremental { "true" } else { "false" },
        ),
    ] {
        if let Err(e) = conf.set(k, v) {
            eprintln!("{e}");
            std::process::exit(2)
        }
    }
    let env = Env::from_conf(conf).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let keys = a.state_mb * 1024 * 1024 / VALUE_BYTES as u64;
    if large {
        env.add_source(GeneratorSource::new(1, None, move |i, _| i % keys))
            .name("numbers")
            .key_by(|x: &u64| *x)
            .process(Payload::default())
            .name("payload")
            .add_sink(DiscardSink)
            .name("sink");
    } else {
        env.add_source(GeneratorSource::new(1, None, |i, _| i % 1000).with_rate(1_000_000.0))
            .name("numbers")
            .key_by(|x: &u64| *x)
            .count()
            .name("count")
            .add_sink(DiscardSink)
            .name("sink");
    }
    let stateful = if large { "payload" } else { "count" };
    let job = env.execute_async("recovery").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    if large {
        let t0 = Instant::now();
        let mut said = Instant::now();
        while sink_in(&job) < keys {
            if said.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "filling state: {} of {keys} keys ({:.0} s)",
                    sink_in(&job).min(keys),
                    t0.elapsed().as_secs_f64()
                );
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A checkpoint triggered after every key was written holds all of it.
        let filled = latest_completed(&job).map_or(0, |c| c.0);
        let after = await_checkpoint(&job, filled + 1, "a checkpoint with the whole state");
        eprintln!(
            "state filled in {:.1} s: {keys} keys, checkpoint state size {:.1} MiB",
            t0.elapsed().as_secs_f64(),
            after as f64 / (1024.0 * 1024.0)
        );
    } else {
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut times = Vec::new();
    let mut restored_sizes = Vec::new();
    for k in 0..a.kills {
        let restarts = job.num_restarts();
        let (restored_id, restored_size) = latest_completed(&job).unwrap_or((0, 0));
        let target = if k % 2 == 0 { "numbers" } else { stateful };
        let t0 = Instant::now();
        if let Err(e) = job.kill_subtask(target, k % 2) {
            eprintln!("kill failed: {e}");
            std::process::exit(1)
        }
        // Wait for the restart, then for records to flow again.
        while job.num_restarts() == restarts {
            std::thread::sleep(Duration::from_micros(100));
        }
        let base = sink_in(&job);
        while sink_in(&job) == base {
            std::thread::sleep(Duration::from_micros(100));
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        times.push(ms);
        restored_sizes.push(restored_size);
        if large {
            eprintln!(
                "kill {}/{}: recovered in {ms:.1} ms (restored checkpoint {restored_id}, {:.1} MiB)",
                k + 1,
                a.kills,
                restored_size as f64 / (1024.0 * 1024.0)
            );
            // Every kill restores a checkpoint with the whole state.
            await_checkpoint(&job, restored_id, "a checkpoint after the recovery");
        } else {
            // Let a checkpoint complete before the next kill.
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    job.cancel();
    let _ = job.wait();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    restored_sizes.sort_unstable();
    let state = if large {
        format!(
            "{} MiB of {} state ({keys} keys, restored checkpoints {:.1} MiB median){}",
            a.state_mb,
            a.backend,
            restored_sizes[restored_sizes.len() / 2] as f64 / (1024.0 * 1024.0),
            if a.incremental { ", incremental" } else { "" }
        )
    } else {
        format!("small {} state (1000 counters)", a.backend)
    };
    println!(
        "recovery time over {} kills (kill -> first record processed after restore), {state}, \
         parallelism 2, checkpoint interval {interval}, region failover (the keyed job is one region):",
        a.kills
    );
    println!(
        "p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        times[0],
        times[times.len() - 1]
    );
}
