//! Cluster mode: throughput over the network data plane, and recovery after
//! a TaskManager process is killed.
//!
//! ```text
//! cargo bench --all-features --bench cluster -- throughput [--words N] [--runs R] [--flink]
//! cargo bench --all-features --bench cluster -- recovery [--kills K]
//! ```
//!
//! **throughput**: the wordcount example on its built-in text (vocabulary
//! 10 000, aligned exactly-once checkpoints every second, no output files)
//! at parallelism 2, in one process and as a cluster of a JobManager and two
//! TaskManagers of one slot each (one slice per TaskManager: the keyed
//! shuffle crosses processes over TCP on loopback), R runs of each,
//! interleaved; words/s = the JobManager's word count over its job's elapsed
//! time (the TaskManagers registered before the JobManager starts the
//! job). With `--flink`, Flink 2.3's word count at parallelism 2 (hashmap,
//! checkpoints every second, `../shared/peers/flink/run.sh N 10000 2
//! hashmap 1000`) in the same sitting. Prints every run, the medians and the
//! ratios cluster / in-process and cluster / Flink.
//!
//! **recovery**: a JobManager and three TaskManagers of one slot (p2: two
//! run a slice, one is spare), the built-in text without end paced to 1 M
//! words/s, checkpoints every 200 ms, `restart-strategy.type: fixed-delay`
//! with no delay; K times: SIGKILL a TaskManager that runs a slice, start a
//! replacement, and time from the kill to the first record processed by
//! the redeployed job (the TaskManagers print `generation G: first record
//! processed ... at T ms since the epoch`). Prints each kill, p50, p99, max.
//!
//! Builds the wordcount example first (`cargo build --release
//! --all-features --example wordcount`, same target directory).

#[path = "common/procs.rs"]
mod procs;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procs::{example, first_record, free_port, now_ms, spawn, Proc};

fn field(out: &str, prefix: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// words/s of one run: total words / elapsed seconds from its stdout.
fn rate_of(ok: bool, out: &str, what: &str) -> f64 {
    let (Some(words), Some(secs)) = (field(out, "total words:"), field(out, "elapsed:")) else {
        panic!("{what}: no result ({ok}):\n{out}");
    };
    assert!(ok, "{what} failed:\n{out}");
    words / secs
}

fn common_args(words: u64, tmp: &Path) -> Vec<String> {
    [
        "--words",
        &words.to_string(),
        "-p",
        "2",
        "-q",
        "--no-ui",
        "-D",
        "execution.checkpointing.interval=1s",
        "-D",
        &format!("execution.checkpointing.dir={}", tmp.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn in_process(bin: &Path, words: u64, tmp: &Path) -> f64 {
    let (ok, out) = spawn(bin, &common_args(words, tmp)).wait_stdout();
    rate_of(ok, &out, "in-process")
}

fn cluster(bin: &Path, words: u64, tmp: &Path) -> f64 {
    let port = free_port();
    let mut args = common_args(words, tmp);
    args.extend(["-D".into(), format!("jobmanager.rpc.port={port}")]);
    let tm = |a: &Vec<String>| {
        let mut a = a.clone();
        a.extend(["--taskmanager".to_string()]);
        a
    };
    // The TaskManagers first: they dial until the JobManager listens.
    let _t1 = spawn(bin, &tm(&args));
    let _t2 = spawn(bin, &tm(&args));
    std::thread::sleep(Duration::from_millis(300));
    let mut jm = args.clone();
    jm.push("--jobmanager".into());
    let (ok, out) = spawn(bin, &jm).wait_stdout();
    rate_of(ok, &out, "cluster")
}

fn flink(words: u64) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/flink/run.sh");
    if !script.exists() {
        println!("FLINK skipped: {} not found", script.display());
        return None;
    }
    let out = Command::new(&script)
        .args([&words.to_string(), "10000", "2", "hashmap", "1000"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("RESULT"))?;
    println!("FLINK {line}");
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("words_per_s_execute="))
        .and_then(|v| v.parse().ok())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn throughput(words: u64, runs: usize, with_flink: bool) {
    let bin = example();
    let tmp = tempfile::tempdir().unwrap();
    println!("# wordcount p2, {words} words, checkpoints every 1 s; {runs} runs each, interleaved");
    let (mut local, mut clus) = (Vec::new(), Vec::new());
    for r in 0..runs {
        let l = in_process(&bin, words, &tmp.path().join(format!("l{r}")));
        println!("run {r}: in-process {:.3} M words/s", l / 1e6);
        local.push(l);
        let c = cluster(&bin, words, &tmp.path().join(format!("c{r}")));
        println!(
            "run {r}: cluster (JobManager + 2 TaskManagers) {:.3} M words/s",
            c / 1e6
        );
        clus.push(c);
    }
    let (l, c) = (median(&mut local), median(&mut clus));
    println!(
        "median: in-process {:.3} M words/s, cluster {:.3} M words/s, cluster / in-process = {:.2}",
        l / 1e6,
        c / 1e6,
        c / l
    );
    let f = if with_flink { flink(words) } else { None };
    if let Some(f) = f {
        println!(
            "Flink 2.3 p2 hashmap: {:.3} M words/s; cluster / Flink = {:.1}x",
            f / 1e6,
            c / f
        );
    }
    println!(
        "RESULT bench=cluster_throughput words={words} runs={runs} in_process_words_per_s={l:.0} cluster_words_per_s={c:.0} ratio={:.3}{}",
        c / l,
        f.map_or(String::new(), |f| format!(" flink_words_per_s={f:.0} vs_flink={:.2}", c / f))
    );
}

/// Which TaskManagers (indices) ran generation `g`.
fn runners(logs: &[Arc<Mutex<Vec<String>>>], g: u64) -> Vec<usize> {
    let prefix = format!("generation {g}: first record processed");
    (0..logs.len())
        .filter(|&i| {
            logs[i]
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with(&prefix))
        })
        .collect()
}

fn recovery(kills: usize) {
    let bin = example();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut args: Vec<String> = [
        "--words",
        "0",
        "--rate",
        "1000000",
        "-p",
        "2",
        "-q",
        "--no-ui",
        "-D",
        "execution.checkpointing.interval=200ms",
        "-D",
        "restart-strategy.type=fixed-delay",
        "-D",
        "restart-strategy.fixed-delay.attempts=1000",
        "-D",
        "restart-strategy.fixed-delay.delay=0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-D".into(),
        format!("execution.checkpointing.dir={}", tmp.path().display()),
        "-D".into(),
        format!("jobmanager.rpc.port={port}"),
    ]);
    let mut jm = args.clone();
    jm.push("--jobmanager".into());
    let _jm = spawn(&bin, &jm);
    let mut tm = args.clone();
    tm.push("--taskmanager".into());
    let mut tms: Vec<Option<Proc>> = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..3 {
        let p = spawn(&bin, &tm);
        logs.push(p.log.clone());
        tms.push(Some(p));
    }
    println!("# recovery: JobManager + 3 TaskManagers (1 slot each, p2: one spare), {kills} kills");
    let mut generation = 1;
    let mut times = Vec::new();
    for k in 0..kills {
        // The current generation runs; let it checkpoint a little.
        let deadline = Instant::now() + Duration::from_secs(60);
        while first_record(&logs, generation).is_none() {
            assert!(
                Instant::now() < deadline,
                "generation {generation} never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(700));
        let live: Vec<usize> = runners(&logs, generation)
            .into_iter()
            .filter(|&i| tms[i].is_some())
            .collect();
        let victim = live[k % live.len()];
        let killed_at = now_ms();
        if let Some(mut p) = tms[victim].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let p = spawn(&bin, &tm);
        logs.push(p.log.clone());
        tms.push(Some(p));
        // The next generation's first record (a failed deployment can
        // take more than one generation: follow the newest).
        let deadline = Instant::now() + Duration::from_secs(60);
        let (g, at) = loop {
            let next = (generation + 1..generation + 5)
                .filter_map(|g| first_record(&logs, g).map(|t| (g, t)))
                .next();
            if let Some(n) = next {
                break n;
            }
            assert!(Instant::now() < deadline, "no recovery after kill {k}");
            std::thread::sleep(Duration::from_millis(2));
        };
        let ms = at.saturating_sub(killed_at);
        println!("kill {k}: TaskManager {victim} -> generation {g} processing after {ms} ms");
        times.push(ms as f64);
        generation = g;
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "RESULT bench=cluster_recovery kills={kills} p50_ms={:.0} p99_ms={:.0} max_ms={:.0}",
        p(0.5),
        p(0.99),
        sorted[sorted.len() - 1]
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let get = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("recovery") => recovery(get("--kills", 20) as usize),
        Some("throughput") | None => throughput(
            get("--words", 50_000_000),
            get("--runs", 3) as usize,
            args.iter().any(|a| a == "--flink"),
        ),
        Some(other) => {
            eprintln!("unknown mode {other}: throughput or recovery");
            std::process::exit(2);
        }
    }
}
