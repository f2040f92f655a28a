//! Large keyed state: the Flink peer's word count (`../shared/peers/flink`,
//! mirrored in `common/peer.rs`) with a vocabulary far bigger than any cache,
//! at a chosen parallelism and state backend, with checkpoints every second.
//!
//! ```text
//! cargo bench --features rocksdb --bench large_state -- N VOCAB PARALLELISM BACKEND [options]
//! cargo bench --features rocksdb --bench large_state -- 20000000 10000000 2 rocksdb-inc
//! cargo bench --features rocksdb --bench large_state -- 20000000 10000000 2 rocksdb-inc --dist zipf
//! cargo bench --features rocksdb --bench large_state -- 20000000 10000000 2 hashmap --flink
//! ```
//!
//! BACKEND is `rocksdb-inc` (RocksDB, incremental checkpoints) or `hashmap`
//! (the heap backend). Options:
//! - `--dist uniform|zipf`: word(i) = "w" + key(i) with key(i) =
//!   splitmix64(i) mod VOCAB (uniform, the Flink peer's job), or Zipf-like
//!   (s = 1): key(i) = floor((VOCAB + 1)^u) - 1 with u = splitmix64(i ^
//!   0x5A1F) / 2^64, so rank r has probability ln((r + 2) / (r + 1)) /
//!   ln(VOCAB + 1), about 1 / ((r + 1.5) ln VOCAB).
//! - `--interval-ms MS` (default 1000): the checkpoint interval.
//! - `-D key=value`: any other configuration option (to measure one RocksDB
//!   setting at a time, e.g. `-D state.backend.rocksdb.value-cache.entries=0`).
//! - `--flink`: afterwards, the same job on Flink 2.3
//!   (`../shared/peers/flink/run.sh N VOCAB PARALLELISM rocksdb-inc|hashmap
//!   MS`, uniform only) and the ratio of the two.
//!
//! While the job runs, a sampler thread records the process's RSS and the
//! disk use of the RocksDB working directories plus the checkpoint directory
//! (files counted once per inode: local checkpoints are hard links) every
//! 250 ms, and prints a line every 10 s. At the end: words/s, checkpoint
//! durations (p50, max), bytes uploaded per checkpoint, peak and final RSS and
//! disk use, and one `RESULT` line of `key=value` fields. `ok=true` when the
//! count operator saw N records and the sum of every emitted count equals
//! sum over words of n_w (n_w + 1) / 2, n_w the word's number of occurrences
//! (computed again from the generator after the run): that holds exactly when
//! every word's counts were 1, 2, ..., n_w, so the final counts sum to N.

#[path = "common/peer.rs"]
#[allow(dead_code)] // add_peer_job: this bench has its own sink
mod peer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::operators::rng::splitmix64;
use weir::operators::text::Word;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dist {
    Uniform,
    Zipf,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf",
        }
    }
}

/// The key (word number) of record `i`.
#[inline]
fn key_of(dist: Dist, i: u64, vocab: u64) -> u64 {
    match dist {
        Dist::Uniform => splitmix64(i) % vocab,
        Dist::Zipf => {
            let u = (splitmix64(i ^ 0x5A1F) >> 11) as f64 / (1u64 << 53) as f64;
            let r = ((vocab as f64 + 1.0).powf(u).floor() as u64).saturating_sub(1);
            r.min(vocab - 1)
        }
    }
}

struct Args {
    words: u64,
    vocab: u64,
    parallelism: usize,
    backend: String,
    dist: Dist,
    interval_ms: u64,
    flink: bool,
    options: Vec<(String, String)>,
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}");
    eprintln!(
        "usage: cargo bench --features rocksdb --bench large_state -- N VOCAB PARALLELISM rocksdb-inc|hashmap \
         [--dist uniform|zipf] [--interval-ms MS] [-D key=value]... [--flink]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut pos = Vec::new();
    let mut a = Args {
        words: 0,
        vocab: 0,
        parallelism: 0,
        backend: String::new(),
        dist: Dist::Uniform,
        interval_ms: 1000,
        flink: false,
        options: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--dist" => {
                a.dist = match it.next().as_deref() {
                    Some("uniform") => Dist::Uniform,
                    Some("zipf") => Dist::Zipf,
                    _ => usage("--dist takes uniform or zipf"),
                }
            }
            "--interval-ms" => {
                a.interval_ms = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|ms| *ms > 0)
                    .unwrap_or_else(|| usage("--interval-ms takes a positive number"))
            }
            "--flink" => a.flink = true,
            "-D" => {
                let kv = it.next().unwrap_or_else(|| usage("-D takes key=value"));
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| usage("-D takes key=value"));
                a.options.push((k.to_string(), v.to_string()));
            }
            s if s.starts_with('-') => usage(&format!("unknown option {s}")),
            s => pos.push(s.to_string()),
        }
    }
    if pos.len() != 4 {
        usage("expected N VOCAB PARALLELISM BACKEND");
    }
    let num = |s: &str, what: &str| -> u64 {
        s.parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| usage(&format!("{what} must be a positive number, not '{s}'")))
    };
    a.words = num(&pos[0], "N");
    a.vocab = num(&pos[1], "VOCAB");
    a.parallelism = num(&pos[2], "PARALLELISM") as usize;
    a.backend = pos[3].clone();
    if !matches!(a.backend.as_str(), "rocksdb-inc" | "hashmap") {
        usage("BACKEND is rocksdb-inc or hashmap");
    }
    if a.backend == "rocksdb-inc" && !cfg!(feature = "rocksdb") {
        usage("rocksdb-inc needs --features rocksdb");
    }
    a
}

/// Sums what the count operator emits: the records and their counts.
#[derive(Clone)]
struct CheckSink {
    records: Arc<AtomicU64>,
    sum: Arc<AtomicU64>,
}

impl SinkFunction<(Word, u64)> for CheckSink {
    fn invoke(&mut self, batch: Vec<(Word, u64)>) -> Result<()> {
        let s: u64 = batch.iter().map(|(_, c)| *c).sum();
        self.records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.sum.fetch_add(s, Ordering::Relaxed);
        Ok(())
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes on disk under `dirs`, each inode once.
fn disk_bytes(dirs: &[&Path]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// The sum of every count the job must emit: sum over words of n(n+1)/2.
fn expected_sum(a: &Args) -> u64 {
    let mut n = vec![0u32; a.vocab as usize];
    for i in 0..a.words {
        n[key_of(a.dist, i, a.vocab) as usize] += 1;
    }
    n.iter().map(|&c| c as u64 * (c as u64 + 1) / 2).sum()
}

fn flink_run(a: &Args) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/flink/run.sh");
    if !script.exists() {
        println!("FLINK skipped: {} not found", script.display());
        return None;
    }
    let mode = if a.backend == "hashmap" {
        "hashmap"
    } else {
        "rocksdb-inc"
    };
    println!(
        "## Flink 2.3: {} {} {} {} {mode} {}",
        script.display(),
        a.words,
        a.vocab,
        a.parallelism,
        a.interval_ms
    );
    let out = std::process::Command::new(&script)
        .args([
            a.words.to_string(),
            a.vocab.to_string(),
            a.parallelism.to_string(),
            mode.to_string(),
            a.interval_ms.to_string(),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("RESULT"))?;
    println!("FLINK {line}");
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("words_per_s_execute="))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let a = parse_args();
    let base = std::env::temp_dir().join(format!("weir-bench-large-state-{}", std::process::id()));
    let checkpoints = base.join("checkpoints");
    let local = base.join("rocksdb");
    std::fs::create_dir_all(&local).expect("temp dir");

    let mut conf = Conf::defaults();
    let mut set = |k: &str, v: String| {
        if let Err(e) = conf.set(k, &v) {
            usage(&format!("{k}={v}: {e}"))
        }
    };
    set("parallelism.default", a.parallelism.to_string());
    set(
        "execution.checkpointing.dir",
        checkpoints.display().to_string(),
    );
    set(
        "execution.checkpointing.interval",
        format!("{}ms", a.interval_ms),
    );
    if a.backend == "rocksdb-inc" {
        set("state.backend.type", "rocksdb".into());
        set("execution.checkpointing.incremental", "true".into());
        set(
            "state.backend.rocksdb.localdir",
            local.display().to_string(),
        );
    }
    for (k, v) in &a.options {
        set(k, v.clone());
    }
    let env = Env::from_conf(conf).unwrap_or_else(|e| usage(&e.to_string()));

    let sink = CheckSink {
        records: Arc::default(),
        sum: Arc::default(),
    };
    let (dist, vocab) = (a.dist, a.vocab);
    env.add_source(GeneratorSource::new(0, Some(a.words), move |i, _| {
        peer::word_of(key_of(dist, i, vocab))
    }))
    .name("words")
    .key_by(|w: &Word| w.clone())
    .count()
    .name("Count")
    .map(|x| x)
    .add_sink(sink.clone());

    println!(
        "## Large state: {} M words, vocabulary {} M ({}), parallelism {}, {}, checkpoints every {} ms{}",
        a.words as f64 / 1e6,
        a.vocab as f64 / 1e6,
        a.dist.name(),
        a.parallelism,
        a.backend,
        a.interval_ms,
        a.options
            .iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    println!(
        "{:>7}  {:>10}  {:>12}  {:>8}  {:>9}",
        "t (s)", "words (M)", "words/s", "RSS (MB)", "disk (MB)"
    );
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, records) = (done.clone(), sink.records.clone());
        let dirs = [checkpoints.clone(), local.clone()];
        std::thread::spawn(move || {
            let start = Instant::now();
            let (mut peak_rss, mut peak_disk) = (0f64, 0u64);
            let (mut last_t, mut last_n) = (0f64, 0u64);
            let mut rss_series = Vec::new();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let rss = rss_mb();
                let disk = disk_bytes(&[&dirs[0], &dirs[1]]);
                peak_rss = peak_rss.max(rss);
                peak_disk = peak_disk.max(disk);
                let t = start.elapsed().as_secs_f64();
                rss_series.push((t, rss));
                if t - last_t >= 10.0 {
                    let n = records.load(Ordering::Relaxed);
                    println!(
                        "{:>7.1}  {:>10.2}  {:>12.0}  {:>8.0}  {:>9.0}",
                        t,
                        n as f64 / 1e6,
                        (n - last_n) as f64 / (t - last_t),
                        rss,
                        disk as f64 / 1e6
                    );
                    (last_t, last_n) = (t, n);
                }
            }
            (peak_rss, peak_disk, rss_series)
        })
    };
    let result = env.execute("large-state");
    let disk_end = disk_bytes(&[&checkpoints, &local]);
    let rss_end = rss_mb();
    done.store(true, Ordering::Relaxed);
    let (peak_rss, peak_disk, rss_series) = sampler.join().expect("sampler");
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            println!(
                "RESULT bench=large_state ok=false error={:?}",
                e.to_string()
            );
            let _ = std::fs::remove_dir_all(&base);
            std::process::exit(1);
        }
    };
    let _ = std::fs::remove_dir_all(&base);

    let secs = r.duration.as_secs_f64();
    let words_per_s = a.words as f64 / secs;
    let done_cps: Vec<_> = r
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed && !c.is_savepoint)
        .collect();
    let failed = r
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Failed)
        .count();
    let durations: Vec<f64> = done_cps.iter().map(|c| c.end_to_end_duration).collect();
    let sync: Vec<f64> = done_cps
        .iter()
        .flat_map(|c| c.subtasks.iter().map(|s| s.sync_duration))
        .collect();
    let uploaded: Vec<f64> = done_cps
        .iter()
        .map(|c| c.checkpointed_size as f64)
        .collect();
    let state_last = done_cps.last().map_or(0, |c| c.state_size);
    // RSS over the second half of the run against the first: flat when memory is bounded.
    let half = secs / 2.0;
    let avg = |it: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = it.collect();
        0.0 + v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let rss_first = avg(&mut rss_series
        .iter()
        .filter(|(t, _)| *t > 1.0 && *t <= half)
        .map(|x| x.1));
    let rss_second = avg(&mut rss_series.iter().filter(|(t, _)| *t > half).map(|x| x.1));

    let counted = r.operator("Count").map_or(0, |o| o.records_in);
    let records = sink.records.load(Ordering::Relaxed);
    let sum = sink.sum.load(Ordering::Relaxed);
    let expected = expected_sum(&a);
    let ok = counted == a.words && records == a.words && sum == expected;

    let (d50, dmax) = (percentile(&durations, 0.5), percentile(&durations, 1.0));
    let (s50, smax) = (percentile(&sync, 0.5), percentile(&sync, 1.0));
    let (u50, umax) = (percentile(&uploaded, 0.5), percentile(&uploaded, 1.0));
    println!();
    println!(
        "words/s {words_per_s:.0} ({secs:.1} s); checkpoints {} completed, {failed} failed; \
         duration p50 {d50:.0} ms, max {dmax:.0} ms; synchronous part p50 {s50:.1} ms, max {smax:.1} ms (per subtask)",
        done_cps.len(),
    );
    println!(
        "uploaded per checkpoint p50 {:.1} MB, max {:.1} MB; state of the last {:.1} MB; \
         RSS peak {:.0} MB, end {:.0} MB (mean {:.0} MB in the first half, {:.0} MB in the second); \
         disk peak {:.0} MB, end {:.0} MB",
        u50 / 1e6,
        umax / 1e6,
        state_last as f64 / 1e6,
        peak_rss,
        rss_end,
        rss_first,
        rss_second,
        peak_disk as f64 / 1e6,
        disk_end as f64 / 1e6
    );
    if !ok {
        println!(
            "CHECK FAILED: count operator saw {counted} records, the sink {records} (expected {}); \
             sum of counts {sum}, expected {expected}",
            a.words
        );
    }
    println!(
        "RESULT bench=large_state n={} vocab={} dist={} parallelism={} backend={} interval_ms={} \
         words_per_s={:.0} seconds={:.1} checkpoints={} checkpoints_failed={} checkpoint_p50_ms={:.0} \
         checkpoint_max_ms={:.0} sync_p50_ms={:.1} sync_max_ms={:.1} uploaded_p50_bytes={:.0} \
         uploaded_max_bytes={:.0} state_bytes={} peak_rss_mb={:.0} rss_first_half_mb={:.0} \
         rss_second_half_mb={:.0} peak_disk_mb={:.0} disk_end_mb={:.0} ok={}",
        a.words,
        a.vocab,
        a.dist.name(),
        a.parallelism,
        a.backend,
        a.interval_ms,
        words_per_s,
        secs,
        done_cps.len(),
        failed,
        d50,
        dmax,
        s50,
        smax,
        u50,
        umax,
        state_last,
        peak_rss,
        rss_first,
        rss_second,
        peak_disk as f64 / 1e6,
        disk_end as f64 / 1e6,
        ok
    );
    if a.flink {
        if a.dist != Dist::Uniform {
            println!("FLINK skipped: the Flink peer's job is uniform only");
        } else if let Some(f) = flink_run(&a) {
            println!(
                "RATIO weir/flink {:.1} (weir {:.0} words/s, Flink {:.0} words/s, same job, same sitting)",
                words_per_s / f,
                words_per_s,
                f
            );
        }
    }
    if !ok {
        std::process::exit(1);
    }
}
