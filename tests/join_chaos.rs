//! Exactly-once of two-input operators under 100+ random actor kills
//! (`chaos.kill-interval`, region failover): two generated inputs, left
//! and right (key, event time up to 3 s resp. 1.5 s out of order, id),
//! each with bounded-out-of-orderness watermarks of its own, go through
//! - an interval join on the key, `between(LOWER, UPPER)`, emitting one
//!   line per pair (key, left id, right id),
//! - a `KeyedCoProcessFunction` on `connect(left, right)` keyed the same
//!   way whose state both inputs share: per key and timer time, map state
//!   with the number of left and right records whose event-time timer
//!   (registered from either input at `ts + 1000`) it is; per key, value
//!   state with the totals (count and id sum) of each input, and one with
//!   the number of records whose timers have fired. Each timer firing
//!   emits (key, timer time, left and right count, records of the key
//!   whose timers fired so far, this one included); a timer after the end
//!   of the input emits the key's totals,
//!
//! into the two-phase-commit file sink. The committed lines must be exactly
//! those of a failure-free run, computed here from the same records: every
//! pair once, every timer once with its exact counts. The co-process
//! function must see nothing that contradicts its state or event time (a
//! record without its timestamp or not after the watermark, a timer before
//! the watermark, out of order or without its state, an end with records
//! whose timers did not fire). Modes: aligned, unaligned, and (feature
//! `rocksdb`) RocksDB with incremental checkpoints; fixed chaos seeds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::operators::rng::SplitMix64;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

/// Kills per run the tests insist on.
const KILLS: u64 = 100;
/// Records in each input.
const N: u64 = 12_000;
/// Records per second of each input (over its two source subtasks): the
/// input lasts 6 s of wall time without failures; with the rollbacks a run
/// lasts 8 to 25 s here, with 160 to 480 kills (seeds 11, 23 and eight
/// others).
const RATE: f64 = 2_000.0;
/// With RocksDB, whose kills wait for checkpoints (`chaos.wait-for-checkpoint`;
/// about 4 kills a second here): the input lasts 24 s; a run lasts about
/// 38 s here, with 145 to 155 kills (three seeds).
#[cfg(feature = "rocksdb")]
const ROCKSDB_RATE: f64 = 500.0;
const KEYS: u64 = 37;
/// Event time advances this much per record index, on both inputs.
const STEP: i64 = 5;
/// A left record is up to this late (less than the left watermark bound).
const LEFT_DISORDER: i64 = 3_000;
/// A right record is up to this late (less than the right watermark bound).
const RIGHT_DISORDER: i64 = 1_500;
/// The interval join pairs a left record at `t` with the right records of
/// its key in `[t + LOWER, t + UPPER]`.
const LOWER: i64 = -250;
const UPPER: i64 = 400;
/// Event-time timers fire this long after their record's timestamp.
const TIMER_DELAY: i64 = 1_000;
/// After every record's timer: fires only with the end of the input.
const END: i64 = N as i64 * STEP + 10 * TIMER_DELAY;

/// The runs take turns: each has the machine to itself, so its kill rate
/// does not depend on what else runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A record: key, event time (ms), id (unique over both inputs).
type Rec = (u32, i64, u64);

/// Record `i` of the input with `seed` (1: left, 2: right).
fn record(seed: u64, disorder: i64, i: u64) -> Rec {
    let mut r = SplitMix64::for_index(seed, i);
    let key = (r.next_u64() % KEYS) as u32;
    let late = (r.next_u64() % disorder as u64) as i64;
    (key, i as i64 * STEP - late, seed * 1_000_000 + i)
}

fn left(i: u64) -> Rec {
    record(1, LEFT_DISORDER, i)
}

fn right(i: u64) -> Rec {
    record(2, RIGHT_DISORDER, i)
}

/// What the co-process function saw that contradicts its own state.
#[derive(Clone, Default)]
struct Checks {
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

/// Per key: `pending` maps an event-time timer's time to the number of
/// left and right records that registered it; `totals` counts and sums the
/// ids of each input's records; `fired` is the number of records whose
/// timers fired and the last timer that fired.
#[derive(Clone)]
struct TimerCounts {
    pending: Option<MapState<i64, (u64, u64)>>,
    totals: Option<ValueState<[u64; 4]>>,
    fired: Option<ValueState<(u64, i64)>>,
    checks: Checks,
}

impl TimerCounts {
    fn new(checks: Checks) -> Self {
        TimerCounts {
            pending: None,
            totals: None,
            fired: None,
            checks,
        }
    }

    /// A record of input `side` (0: left, 1: right).
    fn element(&mut self, side: usize, r: Rec, ctx: &mut KeyedContext<'_, u32>) -> Result<()> {
        let (pending, totals) = (self.pending.unwrap(), self.totals.unwrap());
        let Some(ts) = ctx.timestamp() else {
            self.checks
                .violation(format!("record {r:?} without timestamp"));
            return Ok(());
        };
        if ts != r.1 {
            self.checks
                .violation(format!("record {r:?} has timestamp {ts}"));
        }
        if ctx.current_watermark() != i64::MIN && ts <= ctx.current_watermark() {
            self.checks.violation(format!(
                "record {r:?} behind the watermark {}",
                ctx.current_watermark()
            ));
        }
        let at = ts + TIMER_DELAY;
        pending.update_with(
            ctx,
            &at,
            || (0, 0),
            |n| {
                if side == 0 {
                    n.0 += 1;
                } else {
                    n.1 += 1;
                }
            },
        )?;
        totals.update_with(ctx, |old| {
            let mut t = old.copied().unwrap_or_default();
            t[side] += 1;
            t[2 + side] += r.2;
            t
        })?;
        ctx.timer_service().register_event_time_timer(at);
        ctx.timer_service().register_event_time_timer(END);
        Ok(())
    }
}

/// Timer lines: (key, timer time, left count, right count, records fired
/// so far); end lines: (key, END, left count, right count, left id sum,
/// right id sum) — told apart by the time.
type Line = (u32, i64, u64, u64, u64, u64);

impl KeyedCoProcessFunction<u32, Rec, Rec, Line> for TimerCounts {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        self.pending = Some(ctx.map_state(&MapStateDescriptor::new("pending"))?);
        self.totals = Some(ctx.value_state(&ValueStateDescriptor::new("totals"))?);
        self.fired = Some(ctx.value_state(&ValueStateDescriptor::new("fired"))?);
        Ok(())
    }

    fn process_element1(
        &mut self,
        r: Rec,
        ctx: &mut KeyedContext<'_, u32>,
        _: &mut Collector<'_, Line>,
    ) -> Result<()> {
        self.element(0, r, ctx)
    }

    fn process_element2(
        &mut self,
        r: Rec,
        ctx: &mut KeyedContext<'_, u32>,
        _: &mut Collector<'_, Line>,
    ) -> Result<()> {
        self.element(1, r, ctx)
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, Line>,
    ) -> Result<()> {
        let (pending, totals, fired) = (
            self.pending.unwrap(),
            self.totals.unwrap(),
            self.fired.unwrap(),
        );
        let key = *ctx.key();
        if domain != TimeDomain::EventTime {
            self.checks
                .violation(format!("key {key}: {domain:?} timer {timestamp}"));
            return Ok(());
        }
        if ctx.current_watermark() < timestamp {
            self.checks.violation(format!(
                "key {key}: timer {timestamp} fired at watermark {}",
                ctx.current_watermark()
            ));
        }
        let (done, last) = fired.value(ctx)?.unwrap_or((0, i64::MIN));
        if timestamp <= last {
            self.checks.violation(format!(
                "key {key}: timer {timestamp} fired after timer {last}"
            ));
        }
        let t = totals.value(ctx)?.unwrap_or_default();
        if timestamp == END {
            if done != t[0] + t[1] {
                self.checks.violation(format!(
                    "key {key}: {done} records' timers fired, {} records seen",
                    t[0] + t[1]
                ));
            }
            fired.update(ctx, (done, timestamp))?;
            out.collect((key, END, t[0], t[1], t[2], t[3]));
            return Ok(());
        }
        match pending.get(ctx, &timestamp)? {
            Some((a, b)) => {
                pending.remove(ctx, &timestamp)?;
                let done = done + a + b;
                if done > t[0] + t[1] {
                    self.checks.violation(format!(
                        "key {key}: {done} records' timers fired, {} records seen",
                        t[0] + t[1]
                    ));
                }
                fired.update(ctx, (done, timestamp))?;
                out.collect((key, timestamp, a, b, done, 0));
            }
            None => self.checks.violation(format!(
                "key {key}: timer {timestamp} fired without its state"
            )),
        }
        Ok(())
    }
}

/// The job: the interval join and the co-process function over the
/// generated inputs (each `rate` a second), into `out`.
fn build(env: &Env, out: &Path, rate: f64, checks: Checks) {
    let input = |name: &str, seed: u64, f: fn(u64) -> Rec, bound: i64| {
        env.from_source(
            GeneratorSource::new(seed, Some(N), move |i, _| f(i)).with_rate(rate),
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(bound as u64))
                .with_timestamp_assigner(|r: &Rec| r.1),
            name,
        )
    };
    let l = input("Left", 1, left, LEFT_DISORDER);
    let r = input("Right", 2, right, RIGHT_DISORDER);
    let pairs = l
        .key_by(|r: &Rec| r.0)
        .interval_join(&r.key_by(|r: &Rec| r.0))
        .between(LOWER, UPPER)
        .process(|a: &Rec, b: &Rec, out: &mut Collector<'_, String>| {
            out.collect(format!("J\t{}\t{}\t{}", a.0, a.2, b.2));
            Ok(())
        })
        .name("Join");
    let timers = l
        .connect(&r)
        .key_by(|r: &Rec| r.0, |r: &Rec| r.0)
        .process(TimerCounts::new(checks))
        .name("Timers")
        .map(|(k, t, a, b, x, y): Line| {
            if t == END {
                format!("F\t{k}\t{a}\t{b}\t{x}\t{y}")
            } else {
                format!("C\t{k}\t{t}\t{a}\t{b}\t{x}")
            }
        })
        .name("TimerLines");
    pairs
        .union(&[timers])
        .name("Lines")
        .add_sink(FileSink::new(out, |l: &String, line: &mut String| line.push_str(l)).unwrap())
        .name("Files");
}

/// Every line a failure-free run commits, sorted.
fn reference() -> Vec<String> {
    let lefts: Vec<Rec> = (0..N).map(left).collect();
    let rights: Vec<Rec> = (0..N).map(right).collect();
    let mut lines = Vec::new();
    // The join: per key, the right records sorted by time; each left
    // record's range of them.
    let mut by_key: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
    for r in &rights {
        by_key.entry(r.0).or_default().push((r.1, r.2));
    }
    for v in by_key.values_mut() {
        v.sort();
    }
    for l in &lefts {
        let Some(rs) = by_key.get(&l.0) else { continue };
        let from = rs.partition_point(|r| r.0 < l.1 + LOWER);
        let to = rs.partition_point(|r| r.0 <= l.1 + UPPER);
        for r in &rs[from..to] {
            lines.push(format!("J\t{}\t{}\t{}", l.0, l.2, r.1));
        }
    }
    // The timers, in time order per key, and the totals.
    let mut timers: BTreeMap<(u32, i64), (u64, u64)> = BTreeMap::new();
    let mut totals: BTreeMap<u32, [u64; 4]> = BTreeMap::new();
    for (side, recs) in [&lefts, &rights].into_iter().enumerate() {
        for r in recs {
            let e = timers.entry((r.0, r.1 + TIMER_DELAY)).or_default();
            if side == 0 {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
            let t = totals.entry(r.0).or_default();
            t[side] += 1;
            t[2 + side] += r.2;
        }
    }
    let mut done: BTreeMap<u32, u64> = BTreeMap::new();
    for ((k, t), (a, b)) in timers {
        let d = done.entry(k).or_default();
        *d += a + b;
        lines.push(format!("C\t{k}\t{t}\t{a}\t{b}\t{d}"));
    }
    for (k, t) in totals {
        lines.push(format!("F\t{k}\t{}\t{}\t{}\t{}", t[0], t[1], t[2], t[3]));
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
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut extra: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (l, n) in &w {
        let d = n - g.get(l).copied().unwrap_or(0);
        if d > 0 {
            missing
                .entry(&l[..1])
                .or_default()
                .push(format!("{l} (x{d})"));
        }
    }
    for (l, n) in &g {
        let d = n - w.get(l).copied().unwrap_or(0);
        if d > 0 {
            extra
                .entry(&l[..1])
                .or_default()
                .push(format!("{l} (x{d})"));
        }
    }
    let describe = |m: &BTreeMap<&str, Vec<String>>| {
        m.iter()
            .map(|(kind, v)| format!("{kind}: {}, first {:?}", v.len(), &v[..v.len().min(5)]))
            .collect::<Vec<_>>()
            .join("; ")
    };
    panic!(
        "{what}: {} lines committed, {} expected; missing: [{}]; extra or duplicated: [{}]",
        got.len(),
        want.len(),
        describe(&missing),
        describe(&extra)
    );
}

struct Run {
    restarts: u64,
    lines: Vec<String>,
    checks: Checks,
}

/// The job at parallelism 2 with a kill every 40 ms and checkpoints every 10 ms.
fn chaos_join(seed: u64, mode: &[(&str, &str)], rate: f64) -> Run {
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
    let mut job = env.execute_async("chaos-join").unwrap();
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
        "seed {seed} {mode:?}: {} restarts in {:.1} s, {} checkpoints completed (mean {:.0} ms)",
        result.restarts,
        t0.elapsed().as_secs_f64(),
        durations.len(),
        durations.iter().sum::<f64>() / durations.len().max(1) as f64,
    );
    Run {
        restarts: result.restarts,
        lines: committed_lines(&out),
        checks,
    }
}

fn exactly_once(seed: u64, mode: &[(&str, &str)], rate: f64) {
    let run = chaos_join(seed, mode, rate);
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
}

/// The reference itself: the join pairs records of both inputs, at the
/// interval's bounds too; every record is counted once by the timer lines
/// (records of both inputs share timers) and by its key's totals (so a
/// wrong reference cannot make the comparison vacuous). The exact numbers
/// are those of the fixed seeds.
#[test]
fn reference_pairs_and_counts_every_record() {
    let r = reference();
    let field = |l: &str, i: usize| -> i64 { l.split('\t').nth(i).unwrap().parse().unwrap() };
    let lefts: BTreeMap<u64, Rec> = (0..N).map(left).map(|r| (r.2, r)).collect();
    let rights: BTreeMap<u64, Rec> = (0..N).map(right).map(|r| (r.2, r)).collect();
    let (mut pairs, mut at_lower, mut at_upper) = (0, 0, 0);
    for l in r.iter().filter(|l| l.starts_with("J\t")) {
        let (a, b) = (lefts[&(field(l, 2) as u64)], rights[&(field(l, 3) as u64)]);
        assert_eq!(a.0, b.0, "{l}");
        assert!(b.1 >= a.1 + LOWER && b.1 <= a.1 + UPPER, "{l}");
        pairs += 1;
        at_lower += u64::from(b.1 == a.1 + LOWER);
        at_upper += u64::from(b.1 == a.1 + UPPER);
    }
    let (mut timers, mut shared, mut records) = (0, 0, 0);
    for l in r.iter().filter(|l| l.starts_with("C\t")) {
        let (a, b) = (field(l, 3), field(l, 4));
        timers += 1;
        shared += u64::from(a > 0 && b > 0);
        records += a + b;
    }
    let totals: i64 = r
        .iter()
        .filter(|l| l.starts_with("F\t"))
        .map(|l| field(l, 2) + field(l, 3))
        .sum();
    assert_eq!(records, 2 * N as i64, "records in timer lines");
    assert_eq!(totals, 2 * N as i64, "records in totals");
    // (pairs, pairs at the lower bound, at the upper bound, timer lines,
    // timers both inputs registered, lines)
    assert_eq!(
        (pairs, at_lower, at_upper, timers, shared, r.len()),
        (41_851, 64, 62, 23_881, 67, 41_851 + 23_881 + KEYS as usize)
    );
}

#[test]
fn aligned_join_and_co_process_exactly_once_under_100_kills() {
    exactly_once(11, &[], RATE);
}

#[test]
fn unaligned_join_and_co_process_exactly_once_under_100_kills() {
    exactly_once(
        23,
        &[("execution.checkpointing.unaligned.enabled", "true")],
        RATE,
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_incremental_join_and_co_process_exactly_once_under_100_kills() {
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
