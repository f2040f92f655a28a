//! Backpressure: a fast unbounded source facing a slow sink is slowed down to
//! the sink's pace; queued batches and memory stay bounded.

use std::time::{Duration, Instant};

use weir::prelude::*;

#[derive(Clone)]
struct SlowSink;

impl SinkFunction<(u64, u64)> for SlowSink {
    fn invoke(&mut self, _batch: Vec<(u64, u64)>) -> Result<()> {
        std::thread::sleep(Duration::from_millis(5));
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn fast_source_slow_sink_stays_bounded() {
    let (batch, capacity, p) = (256usize, 2usize, 2usize);
    let mut conf = Conf::defaults();
    conf.set("pipeline.batch-size", batch).unwrap();
    conf.set("pipeline.source-batch-size", batch).unwrap();
    conf.set("taskmanager.network.memory.buffers-per-channel", capacity)
        .unwrap();
    conf.set("parallelism.default", p).unwrap();
    let env = Env::from_conf(conf).unwrap();
    // Unbounded: a source that never ends unless cancelled.
    env.add_source(GeneratorSource::new(1, None, |i, rng| (i, rng.next_u64())))
        .name("fast")
        .key_by(|r: &(u64, u64)| r.0 % 1000)
        .process(Passthrough)
        .name("keyed")
        .disable_chaining()
        .add_sink(SlowSink)
        .name("slow");
    let job = env.execute_async("backpressure").unwrap();
    let rss_start = rss_kib();
    let channels = job.num_channels();
    // 2x2 hash channels + 2 forward channels to the (unchained) sink.
    assert_eq!(channels, p * p + p);
    let bound_batches = channels * capacity;
    let started = Instant::now();
    let mut max_queued = 0;
    let mut max_in_flight = 0;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(20));
        max_queued = max_queued.max(job.queued_batches());
        let m = job.metrics();
        let produced = m.iter().find(|o| o.name == "fast").unwrap().records_out;
        let consumed = m.iter().find(|o| o.name == "slow").unwrap().records_in;
        max_in_flight = max_in_flight.max(produced.saturating_sub(consumed));
        samples += 1;
    }
    let m = job.metrics();
    let produced = m.iter().find(|o| o.name == "fast").unwrap().records_out;
    let consumed = m.iter().find(|o| o.name == "slow").unwrap().records_in;
    let rss_end = rss_kib();
    eprintln!(
        "queued max {max_queued}/{bound_batches} batches, in flight max {max_in_flight} records, produced {produced}, consumed {consumed}, RSS {rss_start} -> {rss_end} KiB"
    );
    job.cancel();
    let ended = job.wait();
    assert!(matches!(ended, Err(Error::Cancelled(_))), "{ended:?}");

    assert!(samples > 50);
    assert!(
        max_queued <= bound_batches,
        "queued batches {max_queued} > bound {bound_batches}"
    );
    // In flight: at most every channel full, plus per subtask one batch being
    // processed, one being sent and one partially filled buffer per target.
    let subtasks = 3 * p;
    let bound_records = (bound_batches + subtasks * (2 + p)) * batch;
    assert!(
        max_in_flight as usize <= bound_records,
        "in flight {max_in_flight} > bound {bound_records}"
    );
    // The sink takes at most ~200 batches/s per subtask: the source was slowed to that pace.
    let sink_limit = (4.5 * 200.0 * p as f64 * batch as f64) as u64;
    assert!(consumed <= sink_limit, "sink consumed {consumed}");
    assert!(
        produced <= consumed + bound_records as u64,
        "source ran ahead: {produced} vs {consumed}"
    );
    assert!(consumed > 10_000, "the job made progress: {consumed}");
    // Memory: bounded queues mean no growth with time (allow 64 MiB of slack for the allocator).
    assert!(
        rss_end < rss_start + 64 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

#[derive(Clone)]
struct Passthrough;

impl KeyedProcessFunction<u64, (u64, u64), (u64, u64)> for Passthrough {
    fn open(&mut self, _: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }
    fn process_element(
        &mut self,
        v: (u64, u64),
        _: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> Result<()> {
        out.collect(v);
        Ok(())
    }
}
