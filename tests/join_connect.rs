//! Two-input operators: `connect` with a keyed co-process function (one
//! keyed state and one set of timers shared by both inputs) and with a
//! plain co-process function, and the interval join, each against a
//! reference computed from the same records, at parallelism 1 and 3.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weir::operators::rng::SplitMix64;
use weir::prelude::*;

/// (key, event time ms, id)
type Rec = (u32, i64, u64);

const KEYS: u64 = 23;
const DISORDER: i64 = 400;

fn rec(seed: u64, i: u64, step: i64) -> Rec {
    let mut r = SplitMix64::for_index(seed, i);
    let key = (r.next_u64() % KEYS) as u32;
    let late = (r.next_u64() % DISORDER as u64) as i64;
    (key, i as i64 * step - late, seed * 1_000_000 + i)
}

fn env(p: usize) -> Env {
    let mut conf = Conf::defaults();
    conf.set("pipeline.auto-watermark-interval", "5ms").unwrap();
    conf.set("parallelism.default", p).unwrap();
    Env::from_conf(conf).unwrap()
}

fn input(env: &Env, seed: u64, n: u64, step: i64) -> DataStream<Rec> {
    env.add_source(
        GeneratorSource::new(seed, Some(n), move |i, _| rec(seed, i, step)).with_rate(200_000.0),
    )
    .assign_timestamps_and_watermarks(
        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(DISORDER as u64))
            .with_timestamp_assigner(|r: &Rec| r.1),
    )
}

/// Sums both inputs per key in one shared state, and registers an
/// event-time timer per record at `ts + 1000` from either input.
#[derive(Clone, Default)]
struct Totals {
    sums: Option<ValueState<(u64, u64)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Out {
    Sums(u32, u64, u64),
    Timer(u32, i64),
}

impl KeyedCoProcessFunction<u32, Rec, Rec, Out> for Totals {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        self.sums = Some(ctx.value_state(&ValueStateDescriptor::new("sums"))?);
        Ok(())
    }
    fn process_element1(
        &mut self,
        v: Rec,
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        assert_eq!(
            ctx.timestamp(),
            Some(v.1),
            "the record's timestamp reaches the function"
        );
        let s = self.sums.unwrap().update_with(ctx, |old| {
            let (a, b) = old.copied().unwrap_or_default();
            (a + v.2 % 1000, b)
        })?;
        out.collect(Out::Sums(v.0, s.0, s.1));
        ctx.timer_service().register_event_time_timer(v.1 + 1000);
        Ok(())
    }
    fn process_element2(
        &mut self,
        v: Rec,
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        let s = self.sums.unwrap().update_with(ctx, |old| {
            let (a, b) = old.copied().unwrap_or_default();
            (a, b + v.2 % 1000)
        })?;
        out.collect(Out::Sums(v.0, s.0, s.1));
        ctx.timer_service().register_event_time_timer(v.1 + 1000);
        Ok(())
    }
    fn on_timer(
        &mut self,
        ts: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::EventTime);
        assert!(ctx.current_watermark() >= ts, "timer {ts} fired early");
        out.collect(Out::Timer(*ctx.key(), ts));
        Ok(())
    }
}

#[test]
fn keyed_co_process_shares_state_and_timers_between_inputs() {
    let (na, nb) = (6_000, 4_000);
    let a: Vec<Rec> = (0..na).map(|i| rec(1, i, 3)).collect();
    let b: Vec<Rec> = (0..nb).map(|i| rec(2, i, 5)).collect();
    let mut want_sums: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for r in &a {
        want_sums.entry(r.0).or_default().0 += r.2 % 1000;
    }
    for r in &b {
        want_sums.entry(r.0).or_default().1 += r.2 % 1000;
    }
    let want_timers: BTreeSet<(u32, i64)> = a.iter().chain(&b).map(|r| (r.0, r.1 + 1000)).collect();
    for p in [1, 3] {
        let env = env(p);
        let sink = CollectSink::<Out>::new();
        let got = sink.handle();
        input(&env, 1, na, 3)
            .connect(&input(&env, 2, nb, 5))
            .key_by(|r: &Rec| r.0, |r: &Rec| r.0)
            .process(Totals::default())
            .add_sink(sink);
        env.execute("co-process").unwrap();
        let out = got.take();
        // One output per record; per key, the largest sums are the totals
        // of both inputs: one state saw both.
        let sums: Vec<_> = out.iter().filter(|o| matches!(o, Out::Sums(..))).collect();
        assert_eq!(sums.len() as u64, na + nb, "p{p}");
        let mut last: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for o in &sums {
            if let Out::Sums(k, x, y) = o {
                let e = last.entry(*k).or_default();
                *e = (e.0.max(*x), e.1.max(*y));
            }
        }
        assert_eq!(last, want_sums, "p{p}");
        // Each distinct (key, time) timer fired once, whichever input registered it.
        let timers: Vec<(u32, i64)> = out
            .iter()
            .filter_map(|o| match o {
                Out::Timer(k, t) => Some((*k, *t)),
                _ => None,
            })
            .collect();
        let distinct: BTreeSet<(u32, i64)> = timers.iter().copied().collect();
        assert_eq!(timers.len(), distinct.len(), "p{p}: a timer fired twice");
        assert_eq!(distinct, want_timers, "p{p}");
    }
}

#[derive(Clone, Default)]
struct Tally;

impl CoProcessFunction<Rec, u64, String> for Tally {
    fn process_element1(&mut self, v: Rec, out: &mut Collector<'_, String>) -> Result<()> {
        out.collect(format!("a{}", v.2));
        Ok(())
    }
    fn process_element2(&mut self, v: u64, out: &mut Collector<'_, String>) -> Result<()> {
        out.collect(format!("b{v}"));
        Ok(())
    }
}

#[test]
fn co_process_sees_every_record_of_both_inputs() {
    for p in [1, 3] {
        let env = env(p);
        let sink = CollectSink::<String>::new();
        let got = sink.handle();
        let numbers = env.add_source(GeneratorSource::new(9, Some(777), |i, _| i));
        input(&env, 1, 1_000, 3)
            .connect(&numbers)
            .process(Tally)
            .add_sink(sink);
        env.execute("co-process").unwrap();
        let mut out = got.take();
        out.sort();
        let mut want: Vec<String> = (0..1_000)
            .map(|i| format!("a{}", rec(1, i, 3).2))
            .chain((0..777).map(|i| format!("b{i}")))
            .collect();
        want.sort();
        assert_eq!(out, want, "p{p}");
    }
}

/// Every pair with the same key and `right.ts - left.ts` in `[lower, upper]`.
fn reference_join(a: &[Rec], b: &[Rec], lower: i64, upper: i64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for l in a {
        for r in b {
            if l.0 == r.0 && r.1 >= l.1 + lower && r.1 <= l.1 + upper {
                out.push((l.2, r.2));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn interval_join_matches_the_reference() {
    let (na, nb) = (3_000, 3_000);
    let a: Vec<Rec> = (0..na).map(|i| rec(3, i, 4)).collect();
    let b: Vec<Rec> = (0..nb).map(|i| rec(4, i, 4)).collect();
    for (lower, upper) in [(-200, 300), (0, 0), (100, 900), (-900, -100)] {
        let want = reference_join(&a, &b, lower, upper);
        assert!(!want.is_empty() || (lower, upper) == (0, 0));
        for p in [1, 3] {
            let env = env(p);
            let sink = CollectSink::<(u64, u64)>::new();
            let got = sink.handle();
            input(&env, 3, na, 4)
                .key_by(|r: &Rec| r.0)
                .interval_join(&input(&env, 4, nb, 4).key_by(|r: &Rec| r.0))
                .between(lower, upper)
                .process(|l: &Rec, r: &Rec, out: &mut Collector<'_, (u64, u64)>| {
                    out.collect((l.2, r.2));
                    Ok(())
                })
                .add_sink(sink);
            env.execute("interval join").unwrap();
            let mut out = got.take();
            out.sort();
            assert_eq!(out.len(), want.len(), "p{p} [{lower}, {upper}]");
            assert_eq!(out, want, "p{p} [{lower}, {upper}]");
        }
    }
}

#[test]
fn interval_join_without_timestamps_is_refused() {
    let env = env(1);
    let plain = env.add_source(GeneratorSource::new(1, Some(10), |i, _| {
        (1u32, i as i64, i)
    }));
    input(&env, 3, 10, 4)
        .key_by(|r: &Rec| r.0)
        .interval_join(&plain.key_by(|r: &Rec| r.0))
        .between(-1, 1)
        .process(|_: &Rec, _: &Rec, _: &mut Collector<'_, u64>| Ok(()))
        .add_sink(DiscardSink);
    let err = env.execute("no timestamps").unwrap_err().to_string();
    assert!(
        err.contains("interval_join (right input) needs event timestamps"),
        "{err}"
    );
}
