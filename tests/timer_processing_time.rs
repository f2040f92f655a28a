//! Processing-time timers and processing-time windows: a timer fires once,
//! not before its time, with its key's state; a deleted timer never fires;
//! tumbling processing-time windows fire once each, never early, and
//! count each record in one window.

use std::collections::BTreeMap;
use std::time::Duration;

use weir::prelude::*;
use weir::runtime::time::processing_time_now;

#[derive(Clone, Default)]
struct Remind {
    count: Option<ValueState<u64>>,
}

/// (key, timer time, wall time when it fired, records of the key by then)
type Fired = (u64, i64, i64, u64);

impl KeyedProcessFunction<u64, u64, Fired> for Remind {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        self.count = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Collector<'_, Fired>,
    ) -> Result<()> {
        let n = self
            .count
            .unwrap()
            .update_with(ctx, |c| c.copied().unwrap_or(0) + 1)?;
        if n == 1 {
            // The first record of a key asks for a reminder in 150 ms, and
            // for one it cancels at once.
            let now = ctx.timer_service().current_processing_time();
            ctx.timer_service()
                .register_processing_time_timer(now + 150);
            ctx.timer_service()
                .register_processing_time_timer(now + 100);
            ctx.timer_service().delete_processing_time_timer(now + 100);
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        ts: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, Fired>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        let n = self.count.unwrap().value(ctx)?.unwrap_or(0);
        out.collect((*ctx.key(), ts, processing_time_now(), n));
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_once_on_time_and_deleted_ones_never() {
    let mut env = Env::local().unwrap();
    env.set_parallelism(2).unwrap();
    let sink = CollectSink::<Fired>::new();
    let got = sink.handle();
    // 20 keys, 200 records each, over about 1.6 s: the timers fire while it runs.
    env.add_source(GeneratorSource::new(1, Some(4_000), |i, _| i % 20).with_rate(2_500.0))
        .key_by(|v: &u64| *v)
        .process(Remind::default())
        .add_sink(sink);
    env.execute("processing-time timers").unwrap();
    let fired = got.take();
    let mut by_key: BTreeMap<u64, Vec<Fired>> = BTreeMap::new();
    for f in fired {
        by_key.entry(f.0).or_default().push(f);
    }
    assert_eq!(by_key.len(), 20, "every key's timer fired: {by_key:?}");
    for (k, f) in by_key {
        assert_eq!(
            f.len(),
            1,
            "key {k}: only the timer that was not deleted fires, once"
        );
        let (_, ts, at, n) = f[0];
        assert!(at >= ts, "key {k}: fired at {at}, before its time {ts}");
        assert!(
            (1..200).contains(&n),
            "key {k}: fired during the run, with {n} records seen"
        );
    }
}

#[derive(Clone)]
struct Count;
impl AggregateFunction<u64> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: &u64, acc: &mut u64) {
        *acc += 1
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

#[test]
fn processing_time_windows_fire_once_each_and_never_early() {
    let mut env = Env::local().unwrap();
    env.set_parallelism(2).unwrap();
    let sink = CollectSink::<(u64, i64, u64)>::new();
    let got = sink.handle();
    // Bounded input over about 1 s into 200 ms windows. Processing-time
    // windows still open when the input ends do not fire (as in Flink: the
    // end of input is the end of event time, not of processing time), so
    // the last window's records (up to about 600) are not counted.
    env.add_source(GeneratorSource::new(1, Some(3_000), |i, _| i % 7).with_rate(3_000.0))
        .key_by(|v: &u64| *v)
        .window(TumblingProcessingTimeWindows::of(Duration::from_millis(
            200,
        )))
        .aggregate_with(
            Count,
            |k: &u64, w: &WindowContext, n: Vec<u64>, out: &mut Collector<'_, (u64, i64, u64)>| {
                assert!(w.current_processing_time >= w.window.max_timestamp());
                out.collect((*k, w.window.start, n[0]));
                Ok(())
            },
        )
        .add_sink(sink);
    env.execute("processing-time windows").unwrap();
    let rows = got.take();
    let total: u64 = rows.iter().map(|r| r.2).sum();
    let windows: std::collections::BTreeSet<(u64, i64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(windows.len(), rows.len(), "a window fired twice");
    assert!(
        windows.len() >= 7 * 3,
        "only {} windows fired",
        windows.len()
    );
    assert!(
        (2_000..=3_000).contains(&total),
        "{total} of 3000 records counted"
    );
}

/// Registers one processing-time timer per key, `delay_ms` after the key's first record.
#[derive(Clone)]
struct Later {
    delay_ms: i64,
    seen: Option<ValueState<bool>>,
}

impl KeyedProcessFunction<u64, u64, Fired> for Later {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        self.seen = Some(ctx.value_state(&ValueStateDescriptor::new("seen"))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Collector<'_, Fired>,
    ) -> Result<()> {
        let seen = self.seen.unwrap();
        if seen.value(ctx)?.is_none() {
            seen.update(ctx, true)?;
            let now = ctx.timer_service().current_processing_time();
            ctx.timer_service()
                .register_processing_time_timer(now + self.delay_ms);
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        ts: i64,
        _: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, Fired>,
    ) -> Result<()> {
        out.collect((*ctx.key(), ts, processing_time_now(), 0));
        Ok(())
    }
}

/// Timers are in the savepoint; those whose time passed while the job was
/// down fire as soon as the restored job runs, once.
#[test]
fn processing_time_timers_that_passed_while_down_fire_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let job = |restore: Option<&std::path::Path>, sp: &str, ms: u64| {
        let mut c = Conf::defaults();
        c.set(
            "execution.checkpointing.dir",
            dir.path().join("ckpt").display(),
        )
        .unwrap();
        c.set("parallelism.default", 2).unwrap();
        if let Some(r) = restore {
            c.set("execution.state-recovery.path", r.display()).unwrap();
        }
        let env = Env::from_conf(c).unwrap();
        let sink = CollectSink::<Fired>::new();
        let got = sink.handle();
        env.add_source(GeneratorSource::new(1, None, |i, _| i % 10).with_rate(1_000.0))
            .key_by(|v: &u64| *v)
            .process(Later {
                delay_ms: 1_000,
                seen: None,
            })
            .name("Later")
            .add_sink(sink);
        let job = env.execute_async("timers across a restore").unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let sp = job
            .stop_with_savepoint(Some(&dir.path().join(sp)), false)
            .unwrap();
        job.wait().unwrap();
        (sp, got.take())
    };
    // The first run stops before any timer is due.
    let (sp, fired) = job(None, "sp1", 300);
    assert!(fired.is_empty(), "fired before their time: {fired:?}");
    std::thread::sleep(Duration::from_millis(1_000));
    // Due by now: the restored run fires all ten at once, once each.
    let started = processing_time_now();
    let (_, fired) = job(Some(&sp), "sp2", 600);
    let mut keys: Vec<u64> = fired.iter().map(|f| f.0).collect();
    keys.sort();
    assert_eq!(keys, (0..10).collect::<Vec<_>>(), "{fired:?}");
    for (k, ts, at, _) in fired {
        assert!(
            ts < started,
            "key {k}: a timer of the restored run, not of the first"
        );
        assert!(
            at >= ts && at - started < 600,
            "key {k}: due at {ts}, fired at {at}"
        );
    }
}
