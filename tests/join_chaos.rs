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

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::chaos::{assert_same_lines, key_and_time, run_under_chaos, Checks};
use weir::prelude::*;

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

/// A record: key, event time (ms), id (unique over both inputs).
type Rec = (u32, i64, u64);

/// Record `i` of the input with `seed` (1: left, 2: right).
fn record(seed: u64, disorder: i64, i: u64) -> Rec {
    let (key, ts, _) = key_and_time(seed, i, KEYS, STEP, disorder);
    (key, ts, seed * 1_000_000 + i)
}

fn left(i: u64) -> Rec {
    record(1, LEFT_DISORDER, i)
}

fn right(i: u64) -> Rec {
    record(2, RIGHT_DISORDER, i)
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

/// The job under chaos kills (`chaos.kill-interval`); asserts its
/// committed lines are the reference, with no violation and at least
/// `KILLS` kills.
fn exactly_once(seed: u64, mode: &[(&str, &str)], rate: f64) {
    let checks = Checks::default();
    let run = run_under_chaos("chaos-join", seed, mode, |env, out| {
        build(env, out, rate, checks.clone())
    });
    eprintln!("seed {seed} {mode:?}: {}", run.summary());
    let what = format!("seed {seed} {mode:?}");
    assert_same_lines(&run.lines, &reference(), &what);
    let violations = checks.violations();
    assert!(violations.is_empty(), "{what}: {violations:?}");
    run.assert_kills(&what);
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
