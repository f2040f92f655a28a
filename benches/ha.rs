//! High availability: how long a single-process job is down after a
//! SIGKILL, when a supervisor starts it again with the same command line and
//! it resumes by itself (`high-availability.type: storage`, no `-s`).
//!
//! ```text
//! cargo bench --all-features --bench ha -- [--kills K] [--state small|large] [--state-mb M]
//! ```
//!
//! The wordcount example on its built-in text without end, parallelism 2,
//! checkpoints every 500 ms, run by a supervisor loop (a thread of this
//! bench: it starts the process again the moment it exits, as systemd's
//! `Restart=always` or `bin/weir-supervise.sh` would). K times: once the
//! current run has processed records for a while, SIGKILL it and time from
//! the kill to the first record processed by the next run (the process
//! prints `generation G: first record processed ... (at T ms since the
//! epoch)`). Prints each kill, then p50, p99 and max.
//!
//! - `--state small` (default): vocabulary 10 000, the heap backend, paced
//!   to 1 M words/s: the state is a few hundred KiB.
//! - `--state large`: the RocksDB backend with incremental checkpoints and
//!   a uniform vocabulary of 1 000 M words (`--distribution uniform`: nearly every word a new key); the first run fills the state until its
//!   latest checkpoint holds `--state-mb` MiB (default 1024) of files, then
//!   the kills start (each run restores the whole database: RocksDB files
//!   are hard-linked from the checkpoint directory, nothing re-read).
//!
//! Builds the wordcount example first (`cargo build --release
//! --all-features --example wordcount`, same target directory).

#[path = "common/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procs::{example, first_record, now_ms, spawn, Proc};

/// The stderr lines of one process.
type Log = Arc<Mutex<Vec<String>>>;

/// The supervisor: runs the command again whenever it exits, until stopped.
struct Supervisor {
    current: Arc<Mutex<Option<Proc>>>,
    logs: Arc<Mutex<Vec<Log>>>,
    stop: Arc<AtomicBool>,
}

impl Supervisor {
    fn start(bin: PathBuf, args: Vec<String>) -> Supervisor {
        let current: Arc<Mutex<Option<Proc>>> = Arc::default();
        let logs: Arc<Mutex<Vec<Log>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, l, s) = (current.clone(), logs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let p = spawn(&bin, &args);
                l.lock().unwrap().push(p.log.clone());
                *c.lock().unwrap() = Some(p);
                // Wait for it to exit (the bench kills it).
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    let mut g = c.lock().unwrap();
                    let exited = match g.as_mut() {
                        Some(p) => p.child.try_wait().ok().flatten().is_some(),
                        None => true,
                    };
                    if exited {
                        *g = None;
                        break;
                    }
                }
            }
        });
        Supervisor {
            current,
            logs,
            stop,
        }
    }

    fn kill(&self) -> Option<u32> {
        let mut g = self.current.lock().unwrap();
        let p = g.as_mut()?;
        let pid = p.child.id();
        let _ = p.child.kill();
        Some(pid)
    }

    fn logs(&self) -> Vec<Log> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kill();
    }
}

/// Total bytes of the files of the newest complete `chk-<n>` of `job_dir`,
/// with the shared files it references (approximated by `shared/`).
fn state_bytes(job_dir: &Path) -> u64 {
    fn du(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let m = e.metadata().unwrap();
                        if m.is_dir() {
                            du(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    du(&job_dir.join("shared")) + du(&job_dir.join("taskowned"))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let kills: usize = get("--kills").and_then(|v| v.parse().ok()).unwrap_or(20);
    let large = get("--state").as_deref() == Some("large");
    let state_mb: u64 = get("--state-mb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let bin = example();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("chk");
    let mut job: Vec<String> = [
        "--words",
        "0",
        "-p",
        "2",
        "-q",
        "--no-ui",
        "-D",
        &format!("execution.checkpointing.dir={}", ckpt.display()),
        "-D",
        "execution.checkpointing.interval=500ms",
        "-D",
        "high-availability.type=storage",
        "-D",
        "high-availability.cluster-id=bench",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if large {
        job.extend(
            [
                "--vocabulary",
                "1000000000",
                "--distribution",
                "uniform",
                "-D",
                "state.backend.type=rocksdb",
                "-D",
                "execution.checkpointing.incremental=true",
            ]
            .map(String::from),
        );
    } else {
        job.extend(["--rate", "1000000"].map(String::from));
    }
    let job_dir = ckpt.join(weir::runtime::ha::job_id("bench", "wordcount"));
    println!(
        "# ha recovery: single process, supervisor loop, {kills} kills, state {}",
        if large {
            format!("rocksdb-inc, filled to {state_mb} MiB")
        } else {
            "small (heap, vocabulary 10 000)".into()
        }
    );
    let sup = Supervisor::start(bin, job);
    let wait_first = |g: u64, what: &str| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(t) = first_record(&sup.logs(), g) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "generation {g} never processed a record ({what})"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_first(1, "first run");
    if large {
        let started = Instant::now();
        let mut last_print = Instant::now();
        while state_bytes(&job_dir) < state_mb << 20 {
            if last_print.elapsed() > Duration::from_secs(10) {
                println!(
                    "# filling: {} MiB after {:.0} s",
                    state_bytes(&job_dir) >> 20,
                    started.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        println!(
            "# filled: {} MiB of checkpoint files after {:.0} s",
            state_bytes(&job_dir) >> 20,
            started.elapsed().as_secs_f64()
        );
    }
    let mut times = Vec::new();
    for (k, generation) in (0..kills).zip(1u64..) {
        // Let the current run checkpoint at least once after it resumed.
        std::thread::sleep(Duration::from_millis(1200));
        let killed_at = now_ms();
        let pid = sup.kill().expect("a running process");
        let at = wait_first(generation + 1, "after a kill");
        let ms = at.saturating_sub(killed_at);
        println!(
            "kill {k}: pid {pid} -> generation {} processing after {ms} ms",
            generation + 1
        );
        times.push(ms as f64);
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "RESULT bench=ha_recovery state={} state_mib={} kills={kills} p50_ms={:.0} p99_ms={:.0} max_ms={:.0}",
        if large { "rocksdb-inc" } else { "small" },
        state_bytes(&job_dir) >> 20,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
}
