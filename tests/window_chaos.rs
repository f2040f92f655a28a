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

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::chaos::{
    assert_same_lines, key_and_time, run_under_chaos, Checks, CountSum, Rec, TimerOut, TimerSums,
    TIMER_DELAY,
};
use weir::prelude::*;

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

/// A record: key, event time, value (below 1000).
fn record(i: u64) -> Rec {
    let (key, ts, mut r) = key_and_time(42, i, KEYS, 5, DISORDER);
    (key, ts, r.next_u64() % 1_000)
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

/// The job under chaos kills (`chaos.kill-interval`); asserts its
/// committed lines are the reference, with no violation, at least `KILLS`
/// kills and some processing-time timers.
fn exactly_once(seed: u64, mode: &[(&str, &str)], rate: f64) {
    let checks = Checks::default();
    let run = run_under_chaos("chaos-windows", seed, mode, |env, out| {
        build(env, out, rate, checks.clone())
    });
    eprintln!(
        "seed {seed} {mode:?}: {}, {} processing-time timers fired",
        run.summary(),
        checks.processing_fired.load(Ordering::SeqCst)
    );
    let what = format!("seed {seed} {mode:?}");
    assert_same_lines(&run.lines, &reference(), &what);
    let violations = checks.violations();
    assert!(violations.is_empty(), "{what}: {violations:?}");
    run.assert_kills(&what);
    assert!(
        checks.processing_fired.load(Ordering::SeqCst) > 0,
        "{what}: no processing-time timer fired"
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
