//! Every source split's watermark is part of the checkpoint, and a
//! restored job starts from it: a job stopped with a savepoint at
//! watermark W resumes at W, not at the start of time, even when its
//! source (which keeps no position here) starts its timestamps from 0 again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::prelude::*;

/// Two splits, both `ts = i * 10`, one record per millisecond per split;
/// no state: a restored source starts again from ts 0.
#[derive(Clone)]
struct Clock {
    origin: Option<Instant>,
    i: i64,
    last: usize,
}

impl SourceFunction<(u32, i64)> for Clock {
    fn poll_next(&mut self, out: &mut Vec<(u32, i64)>, _: usize) -> Result<SourceStatus> {
        let origin = *self.origin.get_or_insert_with(Instant::now);
        if self.i > origin.elapsed().as_millis() as i64 {
            return Ok(SourceStatus::Idle(Duration::from_millis(1)));
        }
        self.last = 1 - self.last;
        out.push((self.last as u32, self.i * 10));
        if self.last == 1 {
            self.i += 1;
        }
        Ok(SourceStatus::More)
    }
    fn split_count(&self) -> usize {
        2
    }
    fn last_split(&self) -> usize {
        self.last
    }
    fn split_name(&self, i: usize) -> String {
        format!("clock-{i}")
    }
}

#[derive(Clone)]
struct Watermarks(Arc<Mutex<Vec<i64>>>);

impl KeyedProcessFunction<u32, (u32, i64), ()> for Watermarks {
    fn open(&mut self, _: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        Ok(())
    }
    fn process_element(
        &mut self,
        _: (u32, i64),
        ctx: &mut KeyedContext<'_, u32>,
        _: &mut Collector<'_, ()>,
    ) -> Result<()> {
        self.0.lock().unwrap().push(ctx.current_watermark());
        Ok(())
    }
}

/// Runs for `ms`, stops with a savepoint; returns it and the watermarks seen.
fn run(
    dir: &std::path::Path,
    restore: Option<&std::path::Path>,
    ms: u64,
    sp: &str,
) -> (std::path::PathBuf, Vec<i64>) {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", dir.join("ckpt").display())
        .unwrap();
    c.set("pipeline.auto-watermark-interval", "10ms").unwrap();
    if let Some(r) = restore {
        c.set("execution.state-recovery.path", r.display()).unwrap();
    }
    let env = Env::from_conf(c).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    env.from_source(
        Clock {
            origin: None,
            i: 0,
            last: 1,
        },
        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
            .with_timestamp_assigner(|e: &(u32, i64)| e.1),
        "Clock",
    )
    .key_by(|e: &(u32, i64)| e.0)
    .process(Watermarks(seen.clone()))
    .name("Watermarks")
    .add_sink(DiscardSink);
    let job = env.execute_async("watermark restore").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let sp = job.stop_with_savepoint(Some(&dir.join(sp)), false).unwrap();
    job.wait().unwrap();
    let seen = seen.lock().unwrap().clone();
    (sp, seen)
}

#[test]
fn a_restored_job_starts_from_its_splits_checkpointed_watermarks() {
    let dir = tempfile::tempdir().unwrap();
    let (sp, first) = run(dir.path(), None, 800, "sp1");
    let reached = first
        .iter()
        .copied()
        .filter(|w| *w != i64::MAX)
        .max()
        .unwrap();
    assert!(
        reached > 3_000,
        "the first run's watermark reached only {reached}"
    );
    let (_, second) = run(dir.path(), Some(&sp), 300, "sp2");
    // The restored run's records start at ts 0 again, but its watermark
    // starts where the savepoint left it: once the first watermark is
    // through, none is below what the first run had reached.
    let restored: Vec<i64> = second.iter().copied().filter(|w| *w != i64::MIN).collect();
    assert!(!restored.is_empty(), "no watermark in the restored run");
    assert!(
        restored[0] >= reached,
        "the restored run's first watermark {} is below the savepoint's {reached}",
        restored[0]
    );
}
