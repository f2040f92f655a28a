//! Checkpoints after tasks finished (Flink's FLIP-147): when one subtask's
//! input ends early, checkpoints go on for the rest of the job; the finished
//! subtask takes part with its final state, and a failure afterwards
//! restores from those checkpoints with exact state.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

/// Subtask `s` emits `(s, i)` for `i` in `0..counts[s]`, its position in
/// operator state; subtask 1 pauses `pause` after every 16 records.
#[derive(Clone)]
struct Uneven {
    counts: [u64; 2],
    pause: Duration,
    sub: usize,
    next: u64,
}

impl SourceFunction<(u64, u64)> for Uneven {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        self.sub = ctx.runtime.subtask;
        if let Some(n) = ctx.state.get_list::<u64>("next")?.first() {
            self.next = *n;
        }
        Ok(())
    }
    fn poll_next(&mut self, out: &mut Vec<(u64, u64)>, max: usize) -> Result<SourceStatus> {
        let end = self.counts[self.sub];
        for _ in 0..max.min(16) {
            if self.next >= end {
                break;
            }
            out.push((self.sub as u64, self.next));
            self.next += 1;
        }
        if self.next >= end && out.is_empty() {
            return Ok(SourceStatus::Finished);
        }
        Ok(if self.sub == 1 {
            SourceStatus::Idle(self.pause)
        } else {
            SourceStatus::More
        })
    }
    fn snapshot_state(&mut self, state: &mut OperatorStateStore) -> Result<()> {
        state.update_list("next", &[self.next])
    }
}

const KEYS: u64 = 50;
const COUNTS: [u64; 2] = [100, 3000];

/// Runs the uneven job (checkpoints every 20 ms); with `kill`, kills the
/// count subtask 0 once `kill` checkpoints completed after the start.
/// Returns the completed checkpoints (final one excluded), the restarts and
/// the largest count seen per key.
fn run(dir: &std::path::Path, kill: Option<usize>) -> (usize, u64, BTreeMap<u64, u64>) {
    let conf = conf_with(
        dir,
        &[
            ("execution.checkpointing.interval", "20ms"),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.delay", "10ms"),
        ],
    );
    let env = Env::from_conf(conf).unwrap();
    let sink = CollectSink::new();
    let out = sink.handle();
    env.add_source(Uneven {
        counts: COUNTS,
        pause: Duration::from_millis(2),
        sub: 0,
        next: 0,
    })
    .set_parallelism(2)
    .name("uneven")
    .key_by(|r: &(u64, u64)| r.1 % KEYS)
    .count()
    .name("count")
    .add_sink(sink)
    .name("sink");
    let job = env.execute_async("uneven").unwrap();
    if let Some(n) = kill {
        // A subtask of the source has finished by then (it ends at once).
        wait_for_completed_checkpoints(&job, n, Duration::from_secs(60));
        job.kill_subtask("count", 0).unwrap();
    }
    let r = job.wait().unwrap();
    let completed = r
        .checkpoints
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .count();
    let mut max: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, c) in out.take() {
        let m = max.entry(k).or_default();
        *m = (*m).max(c);
    }
    // Minus the final checkpoint, taken when every subtask has finished.
    (completed.saturating_sub(1), r.restarts, max)
}

fn expected() -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for count in COUNTS {
        for i in 0..count {
            *m.entry(i % KEYS).or_default() += 1;
        }
    }
    m
}

#[test]
fn checkpoints_go_on_after_a_source_subtask_finished() {
    let dir = tempfile::tempdir().unwrap();
    // Subtask 0 of the source ends at once; subtask 1 runs for about 0.4 s.
    let (completed, restarts, max) = run(dir.path(), None);
    assert_eq!(restarts, 0);
    assert!(
        completed >= 5,
        "{completed} checkpoints completed while a source subtask had finished"
    );
    assert_eq!(max, expected());
}

#[test]
fn a_failure_after_a_subtask_finished_restores_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    let (completed, restarts, max) = run(dir.path(), Some(3));
    assert_eq!(restarts, 1);
    assert!(completed >= 3, "{completed}");
    // The finished subtask restored at its end (it emits nothing twice),
    // the running one at its checkpointed position: every key's final
    // count is its number of records.
    assert_eq!(max, expected());
}
