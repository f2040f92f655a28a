//! Idleness and per-split watermarks (`Env::from_source` with
//! `with_idleness`): a split that has no data stops holding the watermark
//! back, so windows fed by the other split fire; when it gets data again it
//! holds the watermark again; without idleness the quiet split holds
//! everything back. One source subtask reads two splits; an observer
//! records the watermark an operator sees on every record, with the wall
//! time, and the source records when the quiet split went quiet and came
//! back.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::prelude::*;

/// (split, ts)
type Ev = (u32, i64);

/// Split 0: `ts = i * 10` for `i < N0`, one record per millisecond.
/// Split 1: one record at ts 0, then nothing for `pause`, then records 2000
/// ms of event time behind split 0, at the same pace, until split 0 ends.
#[derive(Clone)]
struct TwoSplits {
    n0: i64,
    pause: Duration,
    i: i64,
    /// The clock both the source and the observer read.
    origin: Instant,
    last: usize,
    one_started: bool,
    times: Arc<Times>,
}

#[derive(Default)]
struct Times {
    /// Wall ms (since the origin) when split 1 resumed.
    resumed_ms: AtomicI64,
}

impl SourceFunction<Ev> for TwoSplits {
    fn poll_next(&mut self, out: &mut Vec<Ev>, _: usize) -> Result<SourceStatus> {
        let now_ms = self.origin.elapsed().as_millis() as i64;
        if !self.one_started {
            self.one_started = true;
            self.last = 1;
            out.push((1, 0));
            return Ok(SourceStatus::More);
        }
        if self.i >= self.n0 {
            return Ok(SourceStatus::Finished);
        }
        // Split 1 resumes after the pause, alternating with split 0.
        if now_ms >= self.pause.as_millis() as i64 && self.last == 0 {
            if self.times.resumed_ms.load(Ordering::SeqCst) < 0 {
                self.times.resumed_ms.store(now_ms, Ordering::SeqCst);
            }
            self.last = 1;
            out.push((1, (self.i * 10 - 2_000).max(0)));
            return Ok(SourceStatus::More);
        }
        if self.i > now_ms {
            return Ok(SourceStatus::Idle(Duration::from_millis(1)));
        }
        self.last = 0;
        out.push((0, self.i * 10));
        self.i += 1;
        Ok(SourceStatus::More)
    }
    fn split_count(&self) -> usize {
        2
    }
    fn last_split(&self) -> usize {
        self.last
    }
}

/// What an operator saw: (wall ms since the origin, record ts, watermark) per record of split 0.
type Seen = Arc<Mutex<Vec<(i64, i64, i64)>>>;

#[derive(Clone)]
struct Observe(Seen, Instant);

impl KeyedProcessFunction<u32, Ev, ()> for Observe {
    fn open(&mut self, _: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        Ok(())
    }
    fn process_element(
        &mut self,
        e: Ev,
        ctx: &mut KeyedContext<'_, u32>,
        _: &mut Collector<'_, ()>,
    ) -> Result<()> {
        if e.0 == 0 {
            let t = self.1.elapsed().as_millis() as i64;
            self.0
                .lock()
                .unwrap()
                .push((t, e.1, ctx.current_watermark()));
        }
        Ok(())
    }
}

struct Run {
    seen: Vec<(i64, i64, i64)>,
    resumed_ms: i64,
}

fn run(idleness: Option<Duration>) -> Run {
    let mut conf = Conf::defaults();
    conf.set("pipeline.auto-watermark-interval", "10ms")
        .unwrap();
    let env = Env::from_conf(conf).unwrap();
    let origin = Instant::now();
    let times = Arc::new(Times::default());
    times.resumed_ms.store(-1, Ordering::SeqCst);
    let source = TwoSplits {
        n0: 2_000,
        pause: Duration::from_millis(1_000),
        i: 0,
        origin,
        last: 0,
        one_started: false,
        times: times.clone(),
    };
    let mut strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
        .with_timestamp_assigner(|e: &Ev| e.1);
    if let Some(d) = idleness {
        strategy = strategy.with_idleness(d);
    }
    let seen: Seen = Arc::default();
    env.from_source(source, strategy, "two splits")
        .key_by(|e: &Ev| e.0)
        .process(Observe(seen.clone(), origin))
        .add_sink(DiscardSink);
    env.execute("idleness").unwrap();
    let seen = seen.lock().unwrap().clone();
    Run {
        seen,
        resumed_ms: times.resumed_ms.load(Ordering::SeqCst),
    }
}

#[test]
fn an_idle_split_releases_the_watermark_and_holds_it_again_when_active() {
    let r = run(Some(Duration::from_millis(200)));
    assert!(r.resumed_ms > 0, "split 1 never resumed");
    // While split 1 was quiet (from 200 ms idleness on, until it resumed),
    // split 0 alone moved the watermark: it passed several seconds of event time.
    let before: i64 = r
        .seen
        .iter()
        .filter(|s| s.0 < r.resumed_ms)
        .map(|s| s.2)
        .max()
        .unwrap();
    assert!(
        before >= 5_000,
        "the watermark reached only {before} before split 1 resumed at {} ms",
        r.resumed_ms
    );
    // After split 1 resumed 2000 ms of event time behind split 0, it holds
    // the watermark again: the watermark stays where it was (it never goes
    // back; 200 ms of event time allowed for what was in flight) until
    // split 1 passes it, and from then on trails split 0 by 2000 ms.
    let after: Vec<&(i64, i64, i64)> = r
        .seen
        .iter()
        .filter(|s| s.0 > r.resumed_ms + 50 && s.2 != i64::MAX)
        .collect();
    assert!(
        after.len() > 100,
        "only {} records after split 1 resumed",
        after.len()
    );
    for (t, ts, wm) in after {
        let bound = (before + 200).max(ts - 2_000);
        assert!(
            *wm <= bound,
            "at {t} ms a record at {ts} saw watermark {wm} above {bound}: split 1 (at {}) did not hold it",
            ts - 2_000
        );
    }
}

#[test]
fn without_idleness_a_quiet_split_holds_the_watermark() {
    let r = run(None);
    let before: i64 = r
        .seen
        .iter()
        .filter(|s| s.0 < r.resumed_ms)
        .map(|s| s.2)
        .max()
        .unwrap();
    // Split 1 sits at ts 0: the watermark stays at or below 0 - 100 - 1.
    assert!(
        before <= -101,
        "the watermark moved to {before} while split 1 had no data"
    );
}
