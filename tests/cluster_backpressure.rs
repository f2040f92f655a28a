//! Backpressure across processes: a fast source (4 KiB records, as fast as
//! it goes) in slice 0 rebalanced to two sinks, of which the one in slice 1,
//! on the other TaskManager, takes 20 ms per batch. Credit-based flow
//! control must slow the source to the slow sink's pace across the network:
//! both TaskManagers' memory stays flat and the records between the source
//! and the sinks stay within what the channels' credits allow.
//!
//! The cluster's processes are this test binary itself, started with the
//! ignored test `cluster_process` and the role in `BP_ROLE` (a weir job is a
//! program; every process of a cluster runs the same one).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir::prelude::*;

const RECORD: usize = 4096;
const BATCH: usize = 64;
const CAPACITY: usize = 2;

/// Writes `n` to `path` (replacing it) at most every 50 ms.
#[derive(Clone)]
struct Report {
    path: PathBuf,
    last: Instant,
}

impl Report {
    fn new(path: PathBuf) -> Report {
        Report {
            path,
            last: Instant::now() - Duration::from_secs(1),
        }
    }

    fn maybe(&mut self, n: u64) {
        if self.last.elapsed() >= Duration::from_millis(50) {
            self.last = Instant::now();
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, n.to_string()).unwrap();
            std::fs::rename(&tmp, &self.path).unwrap();
        }
    }
}

#[derive(Clone)]
struct Fast {
    report: Report,
    emitted: u64,
}

impl SourceFunction<String> for Fast {
    fn poll_next(&mut self, out: &mut Vec<String>, max: usize) -> Result<SourceStatus> {
        for _ in 0..max {
            out.push("x".repeat(RECORD));
        }
        self.emitted += max as u64;
        self.report.maybe(self.emitted);
        Ok(SourceStatus::More)
    }
}

#[derive(Clone)]
struct Sink {
    dir: PathBuf,
    subtask: usize,
    consumed: u64,
    report: Option<Report>,
}

impl SinkFunction<String> for Sink {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.report = Some(Report::new(
            self.dir.join(format!("consumed-{}", ctx.subtask)),
        ));
        Ok(())
    }

    fn invoke(&mut self, batch: Vec<String>) -> Result<()> {
        if self.subtask == 1 {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.consumed += batch.len() as u64;
        if let Some(r) = &mut self.report {
            r.maybe(self.consumed);
        }
        Ok(())
    }
}

/// One process of the cluster (run by the test below, never by itself).
#[test]
#[ignore = "a process of cluster_backpressure's cluster, started by the test itself"]
fn cluster_process() {
    let role = std::env::var("BP_ROLE").expect("BP_ROLE");
    let dir = PathBuf::from(std::env::var("BP_DIR").expect("BP_DIR"));
    let mut dynamic: Vec<String> = std::env::var("BP_CONF")
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    dynamic.push("execution.target=cluster".into());
    dynamic.push(format!("cluster.role={role}"));
    let conf = Conf::load(&dynamic).unwrap();
    let env = Env::from_conf(conf).unwrap();
    env.add_source(Fast {
        report: Report::new(dir.join("emitted")),
        emitted: 0,
    })
    .name("fast")
    .set_parallelism(1)
    .rebalance()
    .add_sink(Sink {
        dir,
        subtask: 0,
        consumed: 0,
        report: None,
    })
    .name("sinks")
    .set_parallelism(2);
    let r = env.execute("backpressure");
    let _ = std::io::stdout().flush();
    eprintln!("job ended: {:?}", r.map(|_| ()));
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn read(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_sink_on_another_taskmanager_slows_the_source_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = [
        format!("jobmanager.rpc.port={port}"),
        format!("pipeline.batch-size={BATCH}"),
        format!("pipeline.source-batch-size={BATCH}"),
        format!("taskmanager.network.memory.buffers-per-channel={CAPACITY}"),
        "taskmanager.numberOfTaskSlots=1".into(),
        format!(
            "execution.checkpointing.dir={}",
            tmp.path().join("chk").display()
        ),
    ]
    .join(";");
    let exe = std::env::current_exe().unwrap();
    let start = |role: &str| {
        Command::new(&exe)
            .args(["cluster_process", "--exact", "--ignored", "--nocapture"])
            .env("BP_ROLE", role)
            .env("BP_DIR", tmp.path())
            .env("BP_CONF", &conf)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut procs = Procs(vec![start("jobmanager")]);
    procs.0.push(start("taskmanager"));
    procs.0.push(start("taskmanager"));
    let tms: Vec<u32> = procs.0[1..].iter().map(|c| c.id()).collect();
    // Running: both sinks consume.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(tmp.path(), "consumed-1") == 0 || read(tmp.path(), "consumed-0") == 0 {
        assert!(Instant::now() < deadline, "the job never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let early: Vec<u64> = tms.iter().map(|p| rss_kib(*p)).collect();
    let mut peak = early.clone();
    // Per channel at most CAPACITY batches queued at the sender plus
    // CAPACITY credits at the receiver (network), CAPACITY for the local
    // channel, and a batch in hand at each end; plus what a 50 ms stale
    // count may miss at the source's throttled pace.
    let bound = ((3 * CAPACITY + 4) * BATCH) as u64;
    let mut worst = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
        for (i, p) in tms.iter().enumerate() {
            peak[i] = peak[i].max(rss_kib(*p));
        }
        let emitted = read(tmp.path(), "emitted");
        let consumed = read(tmp.path(), "consumed-0") + read(tmp.path(), "consumed-1");
        worst = worst.max(emitted.saturating_sub(consumed));
    }
    let consumed1 = read(tmp.path(), "consumed-1");
    let emitted = read(tmp.path(), "emitted");
    // The slow sink takes 20 ms per batch of 64: about 3 200 records/s;
    // the rebalance gives it every other record, so the source is held to
    // about twice that (far below the GB/s it makes unthrottled).
    let secs = 5.0;
    assert!(
        (emitted as f64) < 2.0 * 3_200.0 * secs * 3.0 + 10_000.0,
        "the source was not slowed: {emitted} records of {RECORD} bytes"
    );
    let slack = 2 * 3_200 / 20; // 50 ms of staleness at the throttled pace, both counts
    assert!(
        worst <= bound + slack,
        "up to {worst} records between the source and the sinks; credits allow {bound}"
    );
    for (i, p) in tms.iter().enumerate() {
        assert!(
            peak[i] < 200 * 1024,
            "TaskManager pid {p}: RSS peaked at {} MiB",
            peak[i] / 1024
        );
        assert!(
            peak[i] < early[i] + 32 * 1024,
            "TaskManager pid {p}: RSS grew from {} to {} MiB",
            early[i] / 1024,
            peak[i] / 1024
        );
    }
    assert!(consumed1 > 0);
    eprintln!(
        "source {emitted} records, slow sink {consumed1}; at most {worst} in between (credits allow {bound}); RSS peaks {:?} KiB",
        peak
    );
}
