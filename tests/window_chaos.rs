//! Exactly-once of event-time windows and timers under 100+ random actor
//! kills (`chaos.kill-interval`, region failover): generated records (key,
//! event time up to 3 s out of order, value) with bounded-out-of-orderness
//! watermarks go through
//! - tumbling and session windows (`aggregate_with`: key, window, count, sum),
//! - a `KeyedProcessFunction` that keeps per key and timer time the count and
//!   sum of its records in map state, registers an event-time timer at
//!   `ts + 1000` per record (one timer when several records of a key share
//!   it) and emits that count and sum when it fires; it also keeps one
//!   processing-time timer per key, registered in value state too, whose
//!   firings emit nothing but must each match that registration,
//!
//! into the two-phase-commit file sink. The committed lines must be exactly
//! those of a failure-free run, computed here from the same records: each
//! window and each event-time timer once, with its exact count and sum.
//! Modes: aligned, unaligned, and (feature `rocksdb`) RocksDB with
//! incremental checkpoints; fixed chaos seeds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::operators::rng::SplitMix64;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

/// Kills per run the tests insist on.
const KILLS: u64 = 100;
/// Records in the input.
const N: u64 = 24_000;
/// Records per second over both source subtasks: the input lasts 8 s of
/// wall time without failures, so even a machine that restarts at once
/// sees over 150 kills (one per 40 ms of running); with the rollbacks a run
/// lasts 10 to 20 s here, with 200 to 400 kills.
const RATE: f64 = 3_000.0;
/// With RocksDB, whose kills wait for checkpoints (`chaos.wait-for-checkpoint`;
/// 3 to 4 kills a second here): the input lasts 40 s; a run lasts about
/// 60 s here, with 160 to 250 kills.
#[cfg(feature = "rocksdb")]
const ROCKSDB_RATE: f64 = 600.0;
const KEYS: u64 = 37;
/// Event time advances 5 ms per record index; a record is up to this late.
const DISORDER: i64 = 3_000;
const TUMBLE: i64 = 10_000;
/// Keys are about 185 ms apart on average: sessions merge and split.
const GAP: i64 = 400;
/// Event-time timers fire this long after their record's timestamp.
const TIMER_DELAY: i64 = 1_000;
/// Processing-time timers fire this long after their registration.
const PROCESSING_DELAY: i64 = 20;

/// The runs take turns: each has the machine to itself, so its kill rate
/// does not depend on what else runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A record: key, event time (ms), value.
type Rec = (u32, i64, u64);

fn record(i: u64) -> Rec {
    let mut r = SplitMix64::for_index(42, i);
    let key = (r.next_u64() % KEYS) as u32;
    let late = (r.next_u64() % DISORDER as u64) as i64;
    (key, i as i64 * 5 - late, r.next_u64() % 1_000)
}

#[derive(Clone)]
struct CountSum;
impl AggregateFunction<Rec> for CountSum {
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, r: &Rec, acc: &mut (u64, u64)) {
        acc.0 += 1;
        acc.1 += r.2;
    }
    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// What the process function saw that contradicts its own state.
#[derive(Clone, Default)]
struct Checks {
    processing_fired: Arc<AtomicU64>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Checks {
    fn violation(&self, what: String) {
        let mut v = self.violations.lock().unwrap();
        if v.len() < 20 {
            v.push(what);
        }
    }
}

/// Per key: `pending` maps an event-time timer's time to the (count, sum)
/// of the records that registered it; `processing` is the time of the
/// key's registered processing-time timer.
#[derive(Clone)]
struct TimerSums {
    pending: Option<MapState<i64, (u64, u64)>>,
    processing: Option<ValueState<i64>>,
    checks: Checks,
}

impl TimerSums {
    fn new(checks: Checks) -> Self {
        TimerSums {
            pending: None,
            processing: None,
            checks,
        }
    }
}

type TimerOut = (u32, i64, u64, u64);

impl KeyedProcessFunction<u32, Rec, TimerOut> for TimerSums {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        self.pending = Some(ctx.map_state(&MapStateDescriptor::new("pending"))?);
        self.processing = Some(ctx.value_state(&ValueStateDescriptor::new("processing"))?);
        Ok(())
    }

    fn process_element(
        &mut self,
        r: Rec,
        ctx: &mut KeyedContext<'_, u32>,
        _: &mut Collector<'_, TimerOut>,
    ) -> Result<()> {
        let (pending, processing) = (self.pending.unwrap(), self.processing.unwrap());
        let Some(ts) = ctx.timestamp() else {
            self.checks
                .violation(format!("record {r:?} without timestamp"));
            return Ok(());
        };
        if ts != r.1 {
            self.checks
                .violation(format!("record {r:?} has timestamp {ts}"));
        }
        let at = ts + TIMER_DELAY;
        pending.update_with(
            ctx,
            &at,
            || (0, 0),
            |acc| {
                acc.0 += 1;
                acc.1 += r.2;
            },
        )?;
        ctx.timer_service().register_event_time_timer(at);
        if processing.value(ctx)?.is_none() {
            let due = ctx.timer_service().current_processing_time() + PROCESSING_DELAY;
            processing.update(ctx, due)?;
            ctx.timer_service().register_processing_time_timer(due);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, TimerOut>,
    ) -> Result<()> {
        let (pending, processing) = (self.pending.unwrap(), self.processing.unwrap());
        let key = *ctx.key();
        match domain {
            TimeDomain::EventTime => {
                if ctx.current_watermark() < timestamp {
                    self.checks.violation(format!(
                        "key {key}: event-time timer {timestamp} fired at watermark {}",
                        ctx.current_watermark()
                    ));
                }
                match pending.get(ctx, &timestamp)? {
                    Some((n, sum)) => {
                        pending.remove(ctx, &timestamp)?;
                        out.collect((key, timestamp, n, sum));
                    }
                    None => self.checks.violation(format!(
                        "key {key}: event-time timer {timestamp} fired without its state"
                    )),
                }
            }
            TimeDomain::ProcessingTime => {
                let registered = processing.value(ctx)?;
                if registered != Some(timestamp) {
                    self.checks.violation(format!(
                        "key {key}: processing-time timer {timestamp} fired, registered {registered:?}"
                    ));
                }
                processing.clear(ctx)?;
                self.checks.processing_fired.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// The job: windows and timers over the generated records (`rate` a
/// second), into `out`.
fn build(env: &Env, out: &Path, rate: f64, checks: Checks) {
    let recs = env.from_source(
        GeneratorSource::new(7, Some(N), |i, _| record(i)).with_rate(rate),
        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(DISORDER as u64))
            .with_timestamp_assigner(|r: &Rec| r.1),
        "Records",
    );
    let keyed = recs.key_by(|r: &Rec| r.0);
    let late = OutputTag::<Rec>::new("late");
    let window_line = |kind: &'static str| {
        move |k: &u32, w: &WindowContext, r: Vec<(u64, u64)>, out: &mut Collector<'_, String>| {
            out.collect(format!(
                "{kind}\t{k}\t{}\t{}\t{}\t{}",
                w.window.start, w.window.end, r[0].0, r[0].1
            ));
            Ok(())
        }
    };
    let tumbling = keyed
        .window(TumblingEventTimeWindows::of(Duration::from_millis(
            TUMBLE as u64,
        )))
        .side_output_late_data(&late)
        .aggregate_with(CountSum, window_line("T"))
        .name("Tumbling");
    let sessions = keyed
        .window(EventTimeSessionWindows::with_gap(Duration::from_millis(
            GAP as u64,
        )))
        .side_output_late_data(&late)
        .aggregate_with(CountSum, window_line("S"))
        .name("Sessions");
    let timers = keyed
        .process(TimerSums::new(checks))
        .name("Timers")
        .map(|(k, t, n, sum): TimerOut| format!("E\t{k}\t{t}\t{n}\t{sum}"))
        .name("TimerLines");
    // Late records (there should be none) show up in the output as such.
    let late_lines = |s: &DataStream<String>, name: &str| {
        s.get_side_output(&late)
            .map(|r: Rec| format!("L\t{}\t{}\t{}", r.0, r.1, r.2))
            .name(name)
    };
    let late_t = late_lines(&tumbling, "LateTumbling");
    let late_s = late_lines(&sessions, "LateSessions");
    tumbling
        .union(&[sessions, timers, late_t, late_s])
        .name("Lines")
        .add_sink(FileSink::new(out, |l: &String, line: &mut String| line.push_str(l)).unwrap())
        .name("Files");
}

/// Every line a failure-free run commits, sorted.
fn reference() -> Vec<String> {
    let recs: Vec<Rec> = (0..N).map(record).collect();
    let mut lines = Vec::new();
    let mut tumbling: BTreeMap<(u32, i64), (u64, u64)> = BTreeMap::new();
    let mut timers: BTreeMap<(u32, i64), (u64, u64)> = BTreeMap::new();
    let mut by_key: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
    for &(k, ts, v) in &recs {
        let start = ts - ts.rem_euclid(TUMBLE);
        let e = tumbling.entry((k, start)).or_default();
        e.0 += 1;
        e.1 += v;
        let e = timers.entry((k, ts + TIMER_DELAY)).or_default();
        e.0 += 1;
        e.1 += v;
        by_key.entry(k).or_default().push((ts, v));
    }
    for ((k, start), (n, sum)) in tumbling {
        lines.push(format!("T\t{k}\t{start}\t{}\t{n}\t{sum}", start + TUMBLE));
    }
    for ((k, t), (n, sum)) in timers {
        lines.push(format!("E\t{k}\t{t}\t{n}\t{sum}"));
    }
    for (k, mut v) in by_key {
        v.sort();
        let (mut start, mut last, mut n, mut sum) = (v[0].0, v[0].0, 0, 0);
        for &(ts, x) in &v {
            if ts > last + GAP {
                lines.push(format!("S\t{k}\t{start}\t{}\t{n}\t{sum}", last + GAP));
                (start, n, sum) = (ts, 0, 0);
            }
            last = ts;
            n += 1;
            sum += x;
        }
        lines.push(format!("S\t{k}\t{start}\t{}\t{n}\t{sum}", last + GAP));
    }
    lines.sort();
    lines
}

/// The committed lines of the file sink's directory, sorted (hidden
/// in-progress files are not committed output).
fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        lines.extend(
            std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .map(String::from),
        );
    }
    lines.sort();
    lines
}

/// Asserts `got == want` (both sorted), describing the difference: lines
/// missing, lines extra (duplicates included), per kind.
fn assert_same_lines(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    fn count(v: &[String]) -> BTreeMap<&str, i64> {
        let mut m: BTreeMap<&str, i64> = BTreeMap::new();
        for l in v {
            *m.entry(l.as_str()).or_default() += 1;
        }
        m
    }
    let (g, w) = (count(got), count(want));
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    for (l, n) in &w {
        let d = n - g.get(l).copied().unwrap_or(0);
        if d > 0 {
            missing.push(format!("{l} (x{d})"));
        }
    }
    for (l, n) in &g {
        let d = n - w.get(l).copied().unwrap_or(0);
        if d > 0 {
            extra.push(format!("{l} (x{d})"));
        }
    }
    panic!(
        "{what}: {} lines committed, {} expected; {} missing, first {:?}; {} extra or duplicated, first {:?}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
}

struct Run {
    restarts: u64,
    lines: Vec<String>,
    checks: Checks,
}

/// The job at parallelism 2 with a kill every 40 ms and checkpoints every 10 ms.
fn chaos_windows(seed: u64, mode: &[(&str, &str)], rate: f64) -> Run {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut conf = Conf::defaults();
    for (k, v) in [
        (
            "execution.checkpointing.dir",
            dir.path().join("ckpt").display().to_string().as_str(),
        ),
        ("execution.checkpointing.interval", "10ms"),
        ("parallelism.default", "2"),
        ("pipeline.auto-watermark-interval", "5ms"),
        ("pipeline.batch-size", "64"),
        ("chaos.kill-interval", "40ms"),
        ("chaos.seed", &seed.to_string()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "1000000"),
    ] {
        conf.set(k, v).unwrap();
    }
    for (k, v) in mode {
        conf.set(k, v).unwrap();
    }
    let env = Env::from_conf(conf).unwrap();
    let checks = Checks::default();
    build(&env, &out, rate, checks.clone());
    let t0 = Instant::now();
    let mut job = env.execute_async("chaos-windows").unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !job.is_done() {
        if Instant::now() > deadline {
            let completed = job
                .checkpoint_stats()
                .iter()
                .rev()
                .find(|c| c.status == CheckpointStatus::Completed)
                .map(|c| c.id);
            job.cancel();
            panic!(
                "seed {seed} {mode:?}: not done after 240 s ({} restarts, last completed checkpoint {completed:?}, last failure {:?})",
                job.num_restarts(),
                job.last_failure()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let durations: Vec<f64> = job
        .checkpoint_stats()
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .map(|c| c.end_to_end_duration)
        .collect();
    let result = job
        .wait()
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}"));
    eprintln!(
        "seed {seed} {mode:?}: {} restarts in {:.1} s, {} checkpoints completed (mean {:.0} ms), {} processing-time timers fired",
        result.restarts,
        t0.elapsed().as_secs_f64(),
        durations.len(),
        durations.iter().sum::<f64>() / durations.len().max(1) as f64,
        checks.processing_fired.load(Ordering::SeqCst)
    );
    Run {
        restarts: result.restarts,
        lines: committed_lines(&out),
        checks,
    }
}

fn exactly_once(seed: u64, mode: &[(&str, &str)], rate: f64) {
    let run = chaos_windows(seed, mode, rate);
    assert_same_lines(&run.lines, &reference(), &format!("seed {seed} {mode:?}"));
    let violations = run.checks.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "seed {seed} {mode:?}: {violations:?}"
    );
    assert!(
        run.restarts >= KILLS,
        "seed {seed} {mode:?}: only {} kills",
        run.restarts
    );
    assert!(
        run.checks.processing_fired.load(Ordering::SeqCst) > 0,
        "seed {seed} {mode:?}: no processing-time timer fired"
    );
}

/// The reference itself: each kind of line counts every record once;
/// tumbling windows cover the whole input, sessions both merge records and
/// split, and some records share their key's timer (so a wrong reference
/// cannot make the comparison vacuous). The exact numbers are those of the
/// fixed seed.
#[test]
fn reference_counts_every_record_once_per_kind() {
    let r = reference();
    let stats = |kind: &str| {
        let (mut lines, mut shared, mut records) = (0, 0, 0);
        for l in r.iter().filter(|l| l.starts_with(kind)) {
            let n: u64 = l.split('\t').rev().nth(1).unwrap().parse().unwrap();
            lines += 1;
            records += n;
            shared += u64::from(n > 1);
        }
        (lines, shared, records)
    };
    assert_eq!(stats("T\t"), (KEYS * 13, KEYS * 13, N), "tumbling windows");
    assert_eq!(stats("S\t"), (2_869, 2_487, N), "sessions");
    assert_eq!(stats("E\t"), (23_927, 73, N), "event-time timers");
    assert_eq!(stats("L\t"), (0, 0, 0), "late records");
}

#[test]
fn aligned_windows_and_timers_exactly_once_under_100_kills() {
    exactly_once(11, &[], RATE);
}

#[test]
fn unaligned_windows_and_timers_exactly_once_under_100_kills() {
    exactly_once(
        23,
        &[("execution.checkpointing.unaligned.enabled", "true")],
        RATE,
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_windows_and_timers_exactly_once_under_100_kills() {
    exactly_once(
        5,
        &[
            ("state.backend.type", "rocksdb"),
            ("execution.checkpointing.incremental", "true"),
            // RocksDB checkpoints may take longer than the 40 ms between kills.
            ("chaos.wait-for-checkpoint", "true"),
        ],
        ROCKSDB_RATE,
    );
}
