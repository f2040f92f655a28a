//! Checkpoints under backpressure: a keyed job at parallelism 2 whose sink is
//! slowed to a fixed rate, so every channel is full. Aligned barriers wait
//! behind the queued batches; unaligned barriers overtake them and store them
//! as channel state; aligned with a timeout (`--aligned-timeout`, 20 ms by
//! default) they start aligned and are converted where they wait, in the
//! senders' output queues included. Prints the end-to-end duration of 20
//! checkpoints in each mode, their medians and ratios, and the in-flight
//! bytes persisted.
//!
//! ```text
//! cargo bench --bench checkpoint_backpressure [-- --checkpoints 20 --sink-rate 20000 --aligned-timeout 20]
//! ```

use std::time::{Duration, Instant};

use weir::prelude::*;
use weir::runtime::checkpoint::{CheckpointStats, CheckpointStatus};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A sink that takes `per_batch` for every batch: a fixed records/s rate.
#[derive(Clone)]
struct FixedRateSink {
    per_record: Duration,
}

impl<T: Data> SinkFunction<T> for FixedRateSink {
    fn invoke(&mut self, batch: Vec<T>) -> Result<()> {
        std::thread::sleep(self.per_record * batch.len() as u32);
        Ok(())
    }
}

/// One mode: unaligned, with its aligned-checkpoint-timeout in ms (0: none).
fn run(
    (unaligned, timeout_ms): (bool, u64),
    checkpoints: usize,
    sink_rate: f64,
) -> Vec<CheckpointStats> {
    let dir = std::env::temp_dir().join("weir-bench-backpressure");
    let _ = std::fs::remove_dir_all(&dir);
    let mut conf = Conf::defaults();
    for (k, v) in [
        ("parallelism.default", "2".to_string()),
        ("execution.checkpointing.interval", "300ms".to_string()),
        (
            "execution.checkpointing.unaligned.enabled",
            unaligned.to_string(),
        ),
        (
            "execution.checkpointing.aligned-checkpoint-timeout",
            format!("{timeout_ms}ms"),
        ),
        ("execution.checkpointing.dir", dir.display().to_string()),
        (
            "execution.checkpointing.externalized-checkpoint-retention",
            "DELETE_ON_CANCELLATION".to_string(),
        ),
    ] {
        conf.set(k, v).expect("valid");
    }
    let env = Env::from_conf(conf).expect("env");
    env.add_source(GeneratorSource::new(1, None, |i, _| i))
        .name("numbers")
        .key_by(|x: &u64| x % 10_007)
        .count()
        .name("count")
        .add_sink(FixedRateSink {
            per_record: Duration::from_secs_f64(2.0 / sink_rate),
        })
        .name("fixed-rate sink");
    let job = env
        .execute_async(match (unaligned, timeout_ms) {
            (false, _) => "aligned",
            (true, 0) => "unaligned",
            _ => "aligned-timeout",
        })
        .expect("start");
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let done = job
            .checkpoint_stats()
            .iter()
            .filter(|s| s.status == CheckpointStatus::Completed)
            .count();
        if done > checkpoints || started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    job.cancel();
    let stats = job.checkpoint_stats();
    let _ = job.wait();
    // The first checkpoint starts before the queues fill: leave it out.
    stats
        .into_iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .skip(1)
        .take(checkpoints)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut checkpoints = 20usize;
    let mut sink_rate = 20_000.0;
    let mut timeout_ms = 20u64;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--checkpoints" => {
                checkpoints = args[i + 1].parse().expect("--checkpoints N");
                i += 1;
            }
            "--aligned-timeout" => {
                timeout_ms = args[i + 1].parse().expect("--aligned-timeout ms");
                i += 1;
            }
            "--sink-rate" => {
                sink_rate = args[i + 1].parse().expect("--sink-rate records/s");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    println!("checkpoints under backpressure: keyed job, parallelism 2, sink limited to {sink_rate} records/s in all, {checkpoints} checkpoints per mode");
    let aligned = run((false, 0), checkpoints, sink_rate);
    let unaligned = run((true, 0), checkpoints, sink_rate);
    let timeout = run((true, timeout_ms.max(1)), checkpoints, sink_rate);
    let timeout_name = format!("aligned with a {timeout_ms} ms timeout");
    for (name, s) in [
        ("aligned", &aligned),
        ("unaligned", &unaligned),
        (timeout_name.as_str(), &timeout),
    ] {
        let d: Vec<String> = s
            .iter()
            .map(|c| format!("{:.1}", c.end_to_end_duration))
            .collect();
        println!("{name} end-to-end ms: {}", d.join(" "));
    }
    let ma = median(aligned.iter().map(|c| c.end_to_end_duration).collect());
    let mu = median(unaligned.iter().map(|c| c.end_to_end_duration).collect());
    let persisted = median(unaligned.iter().map(|c| c.persisted_data as f64).collect());
    println!("median end-to-end: aligned {ma:.1} ms, unaligned {mu:.1} ms, ratio unaligned/aligned {:.4} (target <= 0.01)", mu / ma);
    println!("median in-flight bytes persisted by unaligned checkpoints: {persisted:.0}");
    let mt = median(timeout.iter().map(|c| c.end_to_end_duration).collect());
    let switched = timeout
        .iter()
        .filter(|c| c.subtasks.iter().any(|s| s.unaligned_checkpoint))
        .count();
    println!(
        "{timeout_name}: median end-to-end {mt:.1} ms, ratio to aligned {:.4}; {switched} of {} switched to unaligned, median in-flight bytes {:.0}",
        mt / ma,
        timeout.len(),
        median(timeout.iter().map(|c| c.persisted_data as f64).collect())
    );
    println!(
        "median checkpointed state: aligned {:.0} bytes, unaligned {:.0} bytes",
        median(aligned.iter().map(|c| c.checkpointed_size as f64).collect()),
        median(
            unaligned
                .iter()
                .map(|c| c.checkpointed_size as f64)
                .collect()
        )
    );
}
