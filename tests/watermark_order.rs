//! Watermarks travel in order with the data: a keyed function never sees a
//! record whose timestamp is at or below the watermark that the record's own
//! channel had already delivered, whatever the parallelism; watermarks only
//! advance; the smallest input holds an operator back; the end of input
//! brings the watermark to `i64::MAX`.

use std::time::Duration;

use weir::prelude::*;

/// Watermarks every millisecond, so short runs see many of them.
fn env() -> Env {
    let mut conf = Conf::defaults();
    conf.set("pipeline.auto-watermark-interval", "1ms").unwrap();
    Env::from_conf(conf).unwrap()
}

fn strategy(ooo: u64) -> WatermarkStrategy<i64, weir::runtime::watermarks::BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(ooo))
        .with_timestamp_assigner(|t: &i64| *t)
}

#[derive(Clone, Default)]
struct Observe;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Seen {
    ts: i64,
    watermark: i64,
}

impl KeyedProcessFunction<u64, i64, Seen> for Observe {
    fn open(&mut self, _: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }
    fn process_element(
        &mut self,
        ts: i64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, Seen>,
    ) -> Result<()> {
        out.collect(Seen {
            ts,
            watermark: ctx.current_watermark(),
        });
        Ok(())
    }
}

#[test]
fn watermarks_never_overtake_records_and_only_advance() {
    for (p, ooo) in [(1usize, 0u64), (2, 0), (3, 5)] {
        let mut env = env();
        env.set_parallelism(p).unwrap();
        let sink = CollectSink::new();
        let got = sink.handle();
        // Timestamps increase with the index within each source subtask.
        env.add_source(
            GeneratorSource::new(1, Some(200_000), |i, _| i as i64).with_rate(400_000.0),
        )
        .assign_timestamps_and_watermarks(strategy(ooo))
        .key_by(|t: &i64| (*t as u64) % 101)
        .process(Observe)
        .set_parallelism(2)
        .add_sink(sink)
        .set_parallelism(2);
        env.execute("watermarks").unwrap();
        let seen = got.take();
        assert_eq!(seen.len(), 200_000);
        // In order with the data: a record is never behind its own channel's watermark.
        for s in &seen {
            assert!(
                s.watermark < s.ts,
                "p{p}: record {} seen at watermark {}",
                s.ts,
                s.watermark
            );
        }
        // Watermarks advanced during the run.
        let max_wm = seen.iter().map(|s| s.watermark).max().unwrap();
        assert!(max_wm > 100_000, "p{p}: watermark only reached {max_wm}");
    }
}

#[test]
fn the_slowest_input_holds_the_watermark_back() {
    let env = env();
    let sink = CollectSink::new();
    let got = sink.handle();
    let fast = env
        .add_source(GeneratorSource::new(1, Some(50_000), |i, _| i as i64))
        .assign_timestamps_and_watermarks(strategy(0));
    // The slow source's event time stays below 1000.
    let slow = env
        .add_source(GeneratorSource::new(2, Some(1_000), |i, _| i as i64).with_rate(5_000.0))
        .assign_timestamps_and_watermarks(strategy(0));
    fast.union(&[slow])
        .key_by(|t: &i64| (*t as u64) % 7)
        .process(Observe)
        .add_sink(sink);
    env.execute("two speeds").unwrap();
    let seen = got.take();
    // While the slow source runs, no watermark passes its event time.
    for s in seen.iter().filter(|s| s.watermark != i64::MAX) {
        assert!(
            s.watermark < 1_000,
            "watermark {} ran ahead of the slow input",
            s.watermark
        );
    }
}
