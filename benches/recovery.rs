//! Recovery time: a keyed job with small state (1000 keys) checkpointing every
//! 100 ms; a subtask is killed 50 times; for each kill, the time from the kill
//! to the first record processed by the restarted job (the sink's record
//! counter moving again after the restart). Prints p50 and p99.
//!
//! `cargo bench --bench recovery [-- --kills 50]`
//!
//! The job is keyed, so it is a single failover region: a kill restarts all of it.

use std::time::{Duration, Instant};

use weir::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut kills = 50usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--kills") {
        kills = args[i + 1].parse().expect("--kills N");
    }
    let dir = std::env::temp_dir().join("weir-bench-recovery");
    let _ = std::fs::remove_dir_all(&dir);
    let mut conf = Conf::defaults();
    for (k, v) in [
        ("parallelism.default", "2"),
        ("execution.checkpointing.interval", "100ms"),
        (
            "execution.checkpointing.dir",
            dir.to_str().expect("utf-8 temp dir"),
        ),
        (
            "execution.checkpointing.externalized-checkpoint-retention",
            "DELETE_ON_CANCELLATION",
        ),
        ("restart-strategy.fixed-delay.attempts", "1000000"),
    ] {
        conf.set(k, v).expect("valid");
    }
    let env = Env::from_conf(conf).expect("env");
    env.add_source(GeneratorSource::new(1, None, |i, _| i % 1000).with_rate(1_000_000.0))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count")
        .add_sink(DiscardSink)
        .name("sink");
    let job = env.execute_async("recovery").expect("start");
    let sink_in = |job: &JobHandle| {
        job.metrics()
            .iter()
            .find(|o| o.name == "sink")
            .map_or(0, |o| o.records_in)
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    for k in 0..kills {
        let restarts = job.num_restarts();
        let target = if k % 2 == 0 { "numbers" } else { "count" };
        let t0 = Instant::now();
        job.kill_subtask(target, k % 2).expect("kill");
        // Wait for the restart, then for records to flow again.
        while job.num_restarts() == restarts {
            std::thread::sleep(Duration::from_micros(100));
        }
        let base = sink_in(&job);
        while sink_in(&job) == base {
            std::thread::sleep(Duration::from_micros(100));
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        // Let a checkpoint complete before the next kill.
        std::thread::sleep(Duration::from_millis(250));
    }
    job.cancel();
    let _ = job.wait();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!("recovery time over {kills} kills (kill -> first record processed after restore), small state, region failover (the keyed job is one region):");
    println!(
        "p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        times[0],
        times[times.len() - 1]
    );
}
