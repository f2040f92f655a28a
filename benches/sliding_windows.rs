//! Sliding event-time windows: the second job of the Flink peer in
//! `../shared/peers/flink` (its `WindowBench.java` and `run-window.sh`, README
//! section "Second job: sliding event-time windows"), mirrored in weir so the
//! two engines can be compared on the same job, with the same RESULT fields.
//!
//! ```text
//! cargo bench --bench sliding_windows -- N KEYS RATE PARALLELISM MODE INTERVAL_MS [DUMP_FILE]
//! cargo bench --all-features --bench sliding_windows -- 20000000 100000 1000000 2 hashmap 1000
//! cargo bench --bench sliding_windows -- 30000 3 1000 2 off 1000 /tmp/w.txt
//! ../shared/peers/flink/window_expected.py 30000 3 1000 /tmp/w.txt     # exact check; exit 0 on a match
//! ```
//!
//! MODE is `off` (no checkpoints), `hashmap`, `rocksdb` (full snapshots) or
//! `rocksdb-inc` (incremental; both RocksDB modes need `--features rocksdb`);
//! checkpoints are exactly-once (aligned) every INTERVAL_MS into a temporary
//! directory that is deleted afterwards. DUMP_FILE, when given, receives every
//! emitted window as `key window_end count`, sorted, for `window_expected.py`.
//!
//! The job (as the peer's README states it):
//!
//! ```text
//! seq i in 0..N, split in P contiguous ranges (subtask s reads [s*N/P, (s+1)*N/P), like fromSequence)
//!   event(i) = (splitmix64(i) mod KEYS, floor(i*1000/RATE) - splitmix64(i ^ 0x5DEECE66D) mod 200)
//!   timestamps and watermarks in the source, per split: bounded out-of-orderness 200 ms,
//!   emitted every pipeline.auto-watermark-interval (200 ms, Flink's default); an ended split emits i64::MAX
//!   -> key_by(key) -> sliding event-time windows, size 10 s, slide 1 s
//!   -> incremental count (AggregateFunction) + (key, window end, count) per window
//!   -> sink: counts windows, sums counts, discards
//! ```
//!
//! No event is late, so `sum_of_counts` must be exactly 10 N (`ok=true` only then).
//!
//! The RESULT line has the peer's fields. Timing, and how it differs from the peer:
//! - `execute_s` / `events_per_s_execute`: wall time of `env.execute` (plan,
//!   deployment, run, final checkpoint, teardown), as the peer's `env.execute`
//!   (whose MiniCluster start-up is inside it too; JVM start excluded there,
//!   process start excluded here).
//! - `processing_s` / `events_per_s_processing`: from the first event made (the
//!   first `poll_next` of any source subtask; the peer stamps it in the map
//!   right after its source, one record later) to the last sink subtask's
//!   end of input (`SinkFunction::finish`, the peer's `flush(endOfInput)`),
//!   when every window has been emitted.
//! - `processing_to_close_s`: first event to the last sink's `close`, which
//!   comes after the final checkpoint (as the peer's `SinkWriter::close`).
//! - `net_runtime_s`: weir's `JobResult::duration` (start to the end of the
//!   last subtask), the counterpart of Flink's `getNetRuntime`.
//! - `checkpoints_completed`: completed checkpoints in the job's statistics
//!   (which keep the newest 1000; the peer counts coordinator log lines).
//!
//! With checkpointing on, a second line `CHECKPOINTS` gives the median and
//! maximum end-to-end duration of the completed checkpoints taken while every
//! subtask still ran (`while_running`; the final checkpoint, after the input
//! ended, holds almost no state and is left out unless there is no other),
//! and the sizes of the one in the middle of those (state referenced and
//! bytes uploaded). Every checkpoint, with its slowest subtask, goes to stderr.
//!
//! To compare, run the two in one sitting on a quiet machine with the same arguments:
//! `./run-window.sh N KEYS RATE P MODE INTERVAL_MS` in the peer's directory, then this bench.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use weir::operators::rng::splitmix64;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WINDOW_MS: u64 = 10_000;
const SLIDE_MS: u64 = 1_000;
const OUT_OF_ORDER_MS: u64 = 200;

/// An event: (key, event time in ms).
type Event = (u64, i64);
/// A window's result: (key, window end, count).
type Row = (u64, i64, u64);

/// The clock every timestamp below counts from (set before the job starts).
static T0: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the source and sink subtasks report, shared through statics (the
/// job runs in this process). Sinks add their totals at `close`, which a
/// failed or cancelled attempt never reaches, so nothing is counted twice.
static FIRST_NS: AtomicU64 = AtomicU64::new(u64::MAX);
static END_NS: AtomicU64 = AtomicU64::new(0);
static CLOSE_NS: AtomicU64 = AtomicU64::new(0);
static WINDOWS: AtomicU64 = AtomicU64::new(0);
static SUM: AtomicU64 = AtomicU64::new(0);

fn event(i: u64, keys: u64, rate: u64) -> Event {
    let key = splitmix64(i) % keys;
    let ts = (i as u128 * 1000 / rate as u128) as i64
        - (splitmix64(i ^ 0x5DEECE66D) % OUT_OF_ORDER_MS) as i64;
    (key, ts)
}

/// Flink's `NumberSequenceSource` as `fromSequence` splits it: subtask `s`
/// of `p` reads the contiguous range `[s*n/p, (s+1)*n/p)` (one split) and
/// makes `event(i)` from each index. Its position is operator state.
#[derive(Clone)]
struct SequenceSource {
    n: u64,
    keys: u64,
    rate: u64,
    next: u64,
    end: u64,
    started: bool,
}

const POSITION: &str = "sequence-position";

impl SequenceSource {
    fn new(n: u64, keys: u64, rate: u64) -> Self {
        SequenceSource {
            n,
            keys,
            rate,
            next: 0,
            end: 0,
            started: false,
        }
    }
}

impl SourceFunction<Event> for SequenceSource {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        let (s, p) = (ctx.runtime.subtask as u128, ctx.runtime.parallelism as u128);
        let n = self.n as u128;
        self.next = (s * n / p) as u64;
        self.end = ((s + 1) * n / p) as u64;
        if ctx.restored {
            let saved: Vec<(u64, u64)> = ctx.state.get_list(POSITION)?;
            match saved.as_slice() {
                [(next, end)] if *end == self.end => self.next = *next,
                [] => {}
                _ => {
                    return Err(Error::user(format!(
                        "sequence positions {saved:?} were saved at another parallelism than {p}"
                    )))
                }
            }
        }
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<Event>, max: usize) -> Result<SourceStatus> {
        if !self.started {
            self.started = true;
            FIRST_NS.fetch_min(now_ns(), Ordering::Relaxed);
        }
        let stop = self.end.min(self.next.saturating_add(max as u64));
        out.extend((self.next..stop).map(|i| event(i, self.keys, self.rate)));
        self.next = stop;
        Ok(if self.next >= self.end {
            SourceStatus::Finished
        } else {
            SourceStatus::More
        })
    }

    fn snapshot_state(
        &mut self,
        _checkpoint_id: u64,
        state: &mut OperatorStateStore,
    ) -> Result<()> {
        state.update_list(POSITION, &[(self.next, self.end)])
    }

    fn split_finished(&self, _i: usize) -> bool {
        self.next >= self.end
    }
}

struct CountAgg;

impl AggregateFunction<Event> for CountAgg {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: &Event, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Counts windows and sums their counts; keeps the rows only for a dump.
#[derive(Clone)]
struct CountingSink {
    windows: u64,
    sum: u64,
    rows: Option<Vec<Row>>,
    dump: Option<Arc<Mutex<Vec<Row>>>>,
}

impl SinkFunction<Row> for CountingSink {
    fn invoke(&mut self, batch: Vec<Row>) -> Result<()> {
        self.windows += batch.len() as u64;
        self.sum += batch.iter().map(|r| r.2).sum::<u64>();
        if let Some(rows) = self.rows.as_mut() {
            rows.extend_from_slice(&batch);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        END_NS.fetch_max(now_ns(), Ordering::Relaxed);
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        CLOSE_NS.fetch_max(now_ns(), Ordering::Relaxed);
        WINDOWS.fetch_add(self.windows, Ordering::Relaxed);
        SUM.fetch_add(self.sum, Ordering::Relaxed);
        if let (Some(rows), Some(dump)) = (self.rows.take(), self.dump.as_ref()) {
            dump.lock().expect("dump rows").extend(rows);
        }
        Ok(())
    }
}

struct Args {
    n: u64,
    keys: u64,
    rate: u64,
    parallelism: usize,
    mode: String,
    interval_ms: u64,
    dump: Option<String>,
}

const USAGE: &str = "usage: cargo bench --bench sliding_windows -- N KEYS RATE PARALLELISM MODE INTERVAL_MS [DUMP_FILE]\n  MODE: off | hashmap | rocksdb | rocksdb-inc";

fn parse_args() -> Args {
    // cargo bench adds --bench (and harness options) to every harness = false target.
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|s| !s.starts_with("--"))
        .collect();
    let fail = |why: &str| -> ! {
        eprintln!("{why}\n{USAGE}");
        std::process::exit(2)
    };
    if a.len() < 5 || a.len() > 7 {
        fail("wrong number of arguments");
    }
    let num = |i: usize, name: &str| -> u64 {
        match a[i].parse::<u64>() {
            Ok(v) if v > 0 => v,
            _ => fail(&format!(
                "{name} must be a positive integer, not '{}'",
                a[i]
            )),
        }
    };
    let mode = a[4].clone();
    if !["off", "hashmap", "rocksdb", "rocksdb-inc"].contains(&mode.as_str()) {
        fail(&format!("unknown mode '{mode}'"));
    }
    Args {
        n: num(0, "N"),
        keys: num(1, "KEYS"),
        rate: num(2, "RATE"),
        parallelism: num(3, "PARALLELISM") as usize,
        interval_ms: if a.len() > 5 {
            num(5, "INTERVAL_MS")
        } else {
            1000
        },
        mode,
        dump: a.get(6).cloned(),
    }
}

fn conf_for(a: &Args, dir: &std::path::Path) -> Conf {
    let mut conf = Conf::defaults();
    let mut set = |k: &str, v: String| {
        if let Err(e) = conf.set(k, &v) {
            eprintln!("{k} = {v}: {e}");
            std::process::exit(2)
        }
    };
    set("parallelism.default", a.parallelism.to_string());
    set("execution.checkpointing.dir", dir.display().to_string());
    set("execution.checkpointing.mode", "EXACTLY_ONCE".into());
    let (interval, backend, incremental) = match a.mode.as_str() {
        "off" => ("off".to_string(), "hashmap", "false"),
        "hashmap" => (format!("{}ms", a.interval_ms), "hashmap", "false"),
        "rocksdb" => (format!("{}ms", a.interval_ms), "rocksdb", "false"),
        _ => (format!("{}ms", a.interval_ms), "rocksdb", "true"),
    };
    set("execution.checkpointing.interval", interval);
    set("state.backend.type", backend.into());
    set("execution.checkpointing.incremental", incremental.into());
    conf
}

/// The median of a non-empty list (the mean of the middle two for an even length).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

fn main() {
    let a = parse_args();
    let checkpointing = a.mode != "off";
    let dir = std::env::temp_dir().join(format!("weir-bench-windows-{}", std::process::id()));
    let conf = conf_for(&a, &dir);
    let env = Env::from_conf(conf).unwrap_or_else(|e| {
        eprintln!("environment: {e}");
        std::process::exit(2)
    });
    let watermark_interval_ms = env
        .conf()
        .get(&options::AUTO_WATERMARK_INTERVAL)
        .as_millis();

    let dump_rows = a.dump.as_ref().map(|_| Arc::new(Mutex::new(Vec::new())));
    let sink = CountingSink {
        windows: 0,
        sum: 0,
        rows: dump_rows.as_ref().map(|_| Vec::new()),
        dump: dump_rows.clone(),
    };
    env.from_source(
        SequenceSource::new(a.n, a.keys, a.rate),
        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(OUT_OF_ORDER_MS))
            .with_timestamp_assigner(|e: &Event| e.1),
        "Sequence",
    )
    .key_by(|e: &Event| e.0)
    .window(SlidingEventTimeWindows::of(
        Duration::from_millis(WINDOW_MS),
        Duration::from_millis(SLIDE_MS),
    ))
    .aggregate_with(
        CountAgg,
        |k: &u64, w: &WindowContext, c: Vec<u64>, out: &mut Collector<'_, Row>| {
            out.collect((*k, w.window.end, c[0]));
            Ok(())
        },
    )
    .name("SlidingCount")
    .add_sink(sink)
    .name("CountingSink");

    T0.get_or_init(Instant::now);
    let t = Instant::now();
    let r = env.execute("sliding-windows-bench").unwrap_or_else(|e| {
        eprintln!("job failed: {e}");
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(1)
    });
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    let first = FIRST_NS.load(Ordering::Relaxed);
    let proc_s = END_NS.load(Ordering::Relaxed).saturating_sub(first) as f64 / 1e9;
    let close_s = CLOSE_NS.load(Ordering::Relaxed).saturating_sub(first) as f64 / 1e9;
    let (windows, sum) = (WINDOWS.load(Ordering::Relaxed), SUM.load(Ordering::Relaxed));
    let expected = (WINDOW_MS / SLIDE_MS) * a.n;
    let ok = sum == expected;

    if let (Some(path), Some(rows)) = (&a.dump, &dump_rows) {
        let mut rows = std::mem::take(&mut *rows.lock().expect("dump rows"));
        rows.sort_unstable();
        let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("dump file"));
        for (k, end, c) in &rows {
            writeln!(w, "{k} {end} {c}").expect("write dump");
        }
        w.flush().expect("write dump");
    }

    let mut completed: Vec<_> = r
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .collect();
    completed.sort_by_key(|c| c.id);
    let failed = r
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Failed)
        .count();

    println!(
        "RESULT job=window engine=weir mode={} p={} events={} keys={} rate={} window_ms={WINDOW_MS} slide_ms={SLIDE_MS} interval_ms={} \
         watermark_interval_ms={watermark_interval_ms} execute_s={secs:.3} net_runtime_s={:.3} processing_s={proc_s:.3} \
         processing_to_close_s={close_s:.3} events_per_s_execute={:.0} events_per_s_processing={:.0} windows_emitted={windows} \
         sum_of_counts={sum} expected_sum={expected} checkpoints_completed={}{} ok={ok}",
        a.mode,
        a.parallelism,
        a.n,
        a.keys,
        a.rate,
        if checkpointing { a.interval_ms } else { 0 },
        r.duration.as_secs_f64(),
        a.n as f64 / secs,
        a.n as f64 / proc_s,
        completed.len(),
        a.dump
            .as_ref()
            .map_or(String::new(), |d| format!(" dumped={d}")),
    );
    if checkpointing {
        // Every checkpoint, to stderr (stdout stays RESULT and CHECKPOINTS).
        for c in &r.checkpoints {
            let slowest = c.subtasks.iter().max_by(|a, b| {
                (a.sync_duration + a.async_duration)
                    .total_cmp(&(b.sync_duration + b.async_duration))
            });
            eprintln!(
                "checkpoint {} {:?}: {:.1} ms, state {} bytes, uploaded {} bytes, {}/{} subtasks{}",
                c.id,
                c.status,
                c.end_to_end_duration,
                c.state_size,
                c.checkpointed_size,
                c.num_acknowledged_subtasks,
                c.num_subtasks,
                slowest.map_or(String::new(), |s| format!(
                    "; slowest {}#{}: sync {:.1} ms, async {:.1} ms, alignment {:.1} ms, start delay {:.1} ms, state {} bytes{}",
                    s.task,
                    s.index,
                    s.sync_duration,
                    s.async_duration,
                    s.alignment_duration,
                    s.start_delay,
                    s.state_size,
                    if s.finished { ", finished" } else { "" }
                )),
            );
        }
        // Checkpoints taken while every subtask still ran; the rest came
        // after some input had ended (the final one, with nearly empty state).
        let running: Vec<_> = completed
            .iter()
            .filter(|c| !c.subtasks.iter().any(|s| s.finished))
            .copied()
            .collect();
        let basis = if running.is_empty() {
            &completed
        } else {
            &running
        };
        if basis.is_empty() {
            println!("CHECKPOINTS completed=0 failed={failed}");
        } else {
            let durations: Vec<f64> = basis.iter().map(|c| c.end_to_end_duration).collect();
            let max = durations.iter().copied().fold(0.0, f64::max);
            let mid = basis[basis.len() / 2];
            println!(
                "CHECKPOINTS completed={} while_running={} failed={failed} duration_ms_median={:.1} duration_ms_max={max:.1} \
                 mid_checkpoint_id={} mid_state_bytes={} mid_uploaded_bytes={}",
                completed.len(),
                running.len(),
                median(durations),
                mid.id,
                mid.state_size,
                mid.checkpointed_size,
            );
        }
    }
}
