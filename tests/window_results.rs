//! Window results equal a reference computed directly from the same
//! records: tumbling, sliding and session windows on event time, in-order
//! and shuffled input, at parallelism 1 and 3; `reduce`, `aggregate`,
//! `aggregate_with` and `process` agree; a window only fires once the
//! watermark passed it.

use std::collections::BTreeMap;
use std::time::Duration;

use weir::operators::rng::SplitMix64;
use weir::prelude::*;

/// A click: key, event time (ms), value.
type Rec = (u32, i64, u64);

const N: u64 = 20_000;
const KEYS: u64 = 37;
/// Event time advances 5 ms per record index; shuffled input is up to this late.
const DISORDER: i64 = 3_000;

fn record(i: u64, shuffled: bool) -> Rec {
    let mut r = SplitMix64::for_index(42, i);
    let key = (r.next_u64() % KEYS) as u32;
    let late = if shuffled {
        (r.next_u64() % DISORDER as u64) as i64
    } else {
        0
    };
    (key, i as i64 * 5 - late, i % 100)
}

fn env(p: usize) -> Env {
    let mut conf = Conf::defaults();
    conf.set("pipeline.auto-watermark-interval", "5ms").unwrap();
    conf.set("parallelism.default", p).unwrap();
    Env::from_conf(conf).unwrap()
}

fn source(env: &Env, shuffled: bool) -> DataStream<Rec> {
    env.add_source(
        GeneratorSource::new(7, Some(N), move |i, _| record(i, shuffled)).with_rate(400_000.0),
    )
    .assign_timestamps_and_watermarks(
        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(DISORDER as u64))
            .with_timestamp_assigner(|r: &Rec| r.1),
    )
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

/// (key, start, end) -> (count, sum)
type Table = BTreeMap<(u32, i64, i64), (u64, u64)>;

fn floor(ts: i64, size: i64) -> i64 {
    ts - ts.rem_euclid(size)
}

/// The reference for tumbling (`slide == size`) and sliding windows.
fn reference_sliding(recs: &[Rec], size: i64, slide: i64) -> Table {
    let mut t = Table::new();
    for &(k, ts, v) in recs {
        let mut start = floor(ts, slide);
        while start > ts - size {
            let e = t.entry((k, start, start + size)).or_default();
            e.0 += 1;
            e.1 += v;
            start -= slide;
        }
    }
    t
}

/// The reference for session windows: per key, timestamps closer than `gap` share a session.
fn reference_sessions(recs: &[Rec], gap: i64) -> Table {
    let mut by_key: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
    for &(k, ts, v) in recs {
        by_key.entry(k).or_default().push((ts, v));
    }
    let mut t = Table::new();
    for (k, mut v) in by_key {
        v.sort();
        let (mut start, mut last, mut n, mut sum) = (v[0].0, v[0].0, 0, 0);
        for &(ts, x) in &v {
            if ts > last + gap {
                t.insert((k, start, last + gap), (n, sum));
                start = ts;
                n = 0;
                sum = 0;
            }
            last = ts;
            n += 1;
            sum += x;
        }
        t.insert((k, start, last + gap), (n, sum));
    }
    t
}

fn records(shuffled: bool) -> Vec<Rec> {
    (0..N).map(|i| record(i, shuffled)).collect()
}

type Out = (u32, i64, i64, u64, u64);

fn run(p: usize, shuffled: bool, assigner: WindowAssigner) -> Table {
    let env = env(p);
    let sink = CollectSink::<Out>::new();
    let got = sink.handle();
    source(&env, shuffled)
        .key_by(|r: &Rec| r.0)
        .window(assigner)
        .aggregate_with(
            CountSum,
            |k: &u32, w: &WindowContext, r: Vec<(u64, u64)>, out: &mut Collector<'_, Out>| {
                assert!(
                    w.current_watermark >= w.window.max_timestamp(),
                    "window {:?} fired at watermark {}",
                    w.window,
                    w.current_watermark
                );
                out.collect((*k, w.window.start, w.window.end, r[0].0, r[0].1));
                Ok(())
            },
        )
        .add_sink(sink);
    env.execute("windows").unwrap();
    let mut t = Table::new();
    for (k, s, e, n, sum) in got.take() {
        assert!(
            t.insert((k, s, e), (n, sum)).is_none(),
            "window ({k}, {s}, {e}) fired twice"
        );
    }
    t
}

use weir::runtime::window::WindowAssigner;

#[test]
fn tumbling_windows_match_the_reference() {
    for shuffled in [false, true] {
        let want = reference_sliding(&records(shuffled), 10_000, 10_000);
        for p in [1, 3] {
            let got = run(
                p,
                shuffled,
                TumblingEventTimeWindows::of(Duration::from_secs(10)),
            );
            assert_eq!(got, want, "p{p} shuffled={shuffled}");
        }
    }
}

#[test]
fn sliding_windows_match_the_reference() {
    for shuffled in [false, true] {
        let want = reference_sliding(&records(shuffled), 10_000, 3_000);
        for p in [1, 3] {
            let got = run(
                p,
                shuffled,
                SlidingEventTimeWindows::of(Duration::from_secs(10), Duration::from_secs(3)),
            );
            assert_eq!(got.len(), want.len(), "p{p} shuffled={shuffled}");
            assert_eq!(got, want, "p{p} shuffled={shuffled}");
        }
    }
}

#[test]
fn session_windows_match_the_reference() {
    for shuffled in [false, true] {
        // Keys are ~185 ms apart on average: a gap of 400 ms merges many
        // sessions and still splits some.
        let want = reference_sessions(&records(shuffled), 400);
        assert!(
            want.len() > 100,
            "the reference has {} sessions",
            want.len()
        );
        for p in [1, 3] {
            let got = run(
                p,
                shuffled,
                EventTimeSessionWindows::with_gap(Duration::from_millis(400)),
            );
            assert_eq!(got, want, "p{p} shuffled={shuffled}");
        }
    }
}

/// `reduce`, `aggregate` and `process` give the same windows.
#[test]
fn reduce_aggregate_and_process_agree() {
    let want = reference_sliding(&records(true), 10_000, 10_000);
    let sums: BTreeMap<u32, u64> = want.iter().fold(BTreeMap::new(), |mut m, ((k, ..), v)| {
        *m.entry(*k).or_default() += v.1;
        m
    });
    let env = env(2);
    let reduced = CollectSink::<Rec>::new();
    let aggregated = CollectSink::<(u64, u64)>::new();
    let processed = CollectSink::<Out>::new();
    let (r, a, pr) = (reduced.handle(), aggregated.handle(), processed.handle());
    let windowed = source(&env, true)
        .key_by(|r: &Rec| r.0)
        .window(TumblingEventTimeWindows::of(Duration::from_secs(10)));
    windowed
        .reduce(|a: Rec, b: Rec| (a.0, a.1.max(b.1), a.2 + b.2))
        .add_sink(reduced);
    windowed.aggregate(CountSum).add_sink(aggregated);
    windowed
        .process(
            |k: &u32, w: &WindowContext, all: Vec<Rec>, out: &mut Collector<'_, Out>| {
                let sum = all.iter().map(|r| r.2).sum();
                out.collect((*k, w.window.start, w.window.end, all.len() as u64, sum));
                Ok(())
            },
        )
        .add_sink(processed);
    env.execute("three window functions").unwrap();
    let processed: Table = pr
        .take()
        .into_iter()
        .map(|(k, s, e, n, sum)| ((k, s, e), (n, sum)))
        .collect();
    assert_eq!(processed, want);
    let mut agg: Vec<(u64, u64)> = a.take();
    let mut want_agg: Vec<(u64, u64)> = want.values().copied().collect();
    agg.sort();
    want_agg.sort();
    assert_eq!(agg, want_agg);
    let reduced = r.take();
    assert_eq!(reduced.len(), want.len());
    let mut by_key: BTreeMap<u32, u64> = BTreeMap::new();
    for (k, _, s) in reduced {
        *by_key.entry(k).or_default() += s;
    }
    assert_eq!(by_key, sums);
}

/// A map drops the timestamps; an event-time window after it is refused
/// when the job is planned, with a message that says what to do.
#[test]
fn event_time_windows_without_timestamps_are_refused() {
    let env = env(1);
    env.add_source(GeneratorSource::new(1, Some(10), |i, _| {
        (i as u32, i as i64, i)
    }))
    .assign_timestamps_and_watermarks(
        WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &Rec| r.1),
    )
    .map(|r: Rec| r)
    .key_by(|r: &Rec| r.0)
    .window(TumblingEventTimeWindows::of(Duration::from_secs(1)))
    .aggregate(CountSum)
    .add_sink(DiscardSink);
    let err = env.execute("no timestamps").unwrap_err().to_string();
    assert!(
        err.contains("needs event timestamps") && err.contains("assign_timestamps_and_watermarks"),
        "{err}"
    );
}
