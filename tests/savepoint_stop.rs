//! Stop-with-savepoint with and without drain: both end the job FINISHED.
//! Without drain no operator is finished (`SinkFunction::finish` is never
//! called); with drain every operator is finished as at the end of the
//! input. Both are normal ends, so every sink subtask is closed once, and
//! the word count's sink publishes its top words either way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weir::operators::text::generated_lines;
use weir::prelude::*;
use weir::wordcount::wordcount;

/// Counts the calls of `finish` and `close` over every subtask.
#[derive(Clone, Default)]
struct Lifecycle {
    finished: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl SinkFunction<(Word, u64)> for Lifecycle {
    fn invoke(&mut self, _: Vec<(Word, u64)>) -> weir::runtime::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> weir::runtime::Result<()> {
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn close(&mut self) -> weir::runtime::Result<()> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Stops a parallelism-2 word count; returns (top words, sink finishes, sink closes).
fn stop(drain: bool) -> (usize, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conf::defaults();
    c.set(
        "execution.checkpointing.dir",
        dir.path().join("ckpt").display(),
    )
    .unwrap();
    c.set("execution.checkpointing.interval", "100ms").unwrap();
    c.set("parallelism.default", 2).unwrap();
    let env = Env::from_conf(c).unwrap();
    let lines = env
        .add_source(generated_lines(1_000_000, 1_000, 3).with_rate(5_000.0))
        .name("Lines");
    let top = wordcount(&lines, None).unwrap();
    let calls = Lifecycle::default();
    lines
        .flat_map(|line: String, out: &mut Collector<Word>| {
            for_each_word(&line, |w| out.collect(w))
        })
        .key_by(|w: &Word| w.clone())
        .count()
        .add_sink(calls.clone())
        .name("Lifecycle");
    let job = env.execute_async("stop").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sp = job
        .stop_with_savepoint(Some(&dir.path().join("sp")), drain)
        .unwrap();
    assert!(sp.join("_metadata").is_file());
    job.wait().expect("a stopped job ends FINISHED");
    (
        top.top(10).len(),
        calls.finished.load(Ordering::SeqCst),
        calls.closed.load(Ordering::SeqCst),
    )
}

#[test]
fn stop_without_drain_finishes_no_operator_and_closes_every_sink() {
    assert_eq!(stop(false), (10, 0, 2), "(top words, finishes, closes)");
}

#[test]
fn stop_with_drain_finishes_and_closes_every_sink() {
    assert_eq!(stop(true), (10, 2, 2), "(top words, finishes, closes)");
}
