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
    fn snapshot_state(
        &mut self,
        _checkpoint_id: u64,
        state: &mut OperatorStateStore,
    ) -> Result<()> {
        state.update_list("next", &[self.next])
    }
}

const KEYS: u64 = 50;

/// The uneven source at parallelism 2 -> key_by -> count -> `sink`.
fn uneven_job(env: &Env, sink: CollectSink<(u64, u64)>) {
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
}
const COUNTS: [u64; 2] = [100, 3000];

/// What a run of the uneven job did.
struct Ran {
    /// Completed checkpoints, the final one excluded.
    completed: usize,
    restarts: u64,
    /// The largest count seen per key.
    max: BTreeMap<u64, u64>,
    /// Its checkpoint directory.
    job_dir: std::path::PathBuf,
    checkpoints: Vec<weir::runtime::checkpoint::CheckpointStats>,
}

/// Runs the uneven job (checkpoints every 20 ms, `extra` options); with
/// `kill`, kills the count subtask 0 once `kill` checkpoints completed
/// after the start.
fn run(dir: &std::path::Path, kill: Option<usize>, extra: &[(&str, &str)]) -> Ran {
    let mut settings = vec![
        ("execution.checkpointing.interval", "20ms"),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.delay", "10ms"),
    ];
    settings.extend_from_slice(extra);
    let conf = conf_with(dir, &settings);
    let env = Env::from_conf(conf).unwrap();
    let sink = CollectSink::new();
    let out = sink.handle();
    uneven_job(&env, sink);
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
    Ran {
        // Minus the final checkpoint, taken when every subtask has finished.
        completed: completed.saturating_sub(1),
        restarts: r.restarts,
        max,
        job_dir: dir.join(&r.job_id),
        checkpoints: r.checkpoints,
    }
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
    let Ran {
        completed,
        restarts,
        max,
        ..
    } = run(dir.path(), None, &[]);
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
    let Ran {
        completed,
        restarts,
        max,
        ..
    } = run(dir.path(), Some(3), &[]);
    assert_eq!(restarts, 1);
    assert!(completed >= 3, "{completed}");
    // The finished subtask restored at its end (it emits nothing twice),
    // the running one at its checkpointed position: every key's final
    // count is its number of records.
    assert_eq!(max, expected());
}

/// A finished subtask's final state is recorded once: after its end of
/// input and the commit of its first snapshot after that, every later
/// checkpoint names one file in `shared/`, written once (nothing uploaded
/// for it: checkpointed size 0), which a restore reads like any state file.
/// It used to be snapshotted and written again for every checkpoint.
#[test]
fn a_finished_subtask_records_its_final_state_once() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        dir.path(),
        None,
        &[("execution.checkpointing.num-retained", "100")],
    );
    assert_eq!(ran.max, expected());
    // Source subtask 0 ends at once: its state in every retained checkpoint.
    let mut files = Vec::new();
    for c in weir::runtime::checkpoint::storage::list_checkpoints(&ran.job_dir).unwrap() {
        assert_eq!(c.status, "complete", "{}", c.dir.display());
        let loaded = weir::runtime::checkpoint::storage::load_checkpoint(&c.dir).unwrap();
        weir::runtime::checkpoint::storage::verify_checkpoint(&loaded).unwrap();
        let h = loaded
            .metadata
            .subtasks
            .iter()
            .find(|h| h.chain.starts_with("uneven") && h.subtask == 0)
            .unwrap();
        files.push((c.id, h.file.clone(), h.files.clone()));
    }
    let recorded: Vec<_> = files
        .iter()
        .filter(|(_, f, _)| f.starts_with("shared/final-"))
        .collect();
    assert!(
        recorded.len() >= 3,
        "the final state is named by the later checkpoints: {files:?}"
    );
    let first = &recorded[0].1;
    for (id, f, shared) in &recorded {
        assert_eq!(f, first, "checkpoint {id} names another file: {files:?}");
        assert!(shared.contains(f), "reference-counted as a shared file");
    }
    assert!(ran.job_dir.join(first).is_file());
    // Once recorded, every later checkpoint names it.
    let from = files.iter().position(|(_, f, _)| f == first).unwrap();
    assert!(
        files[from..].iter().all(|(_, f, _)| f == first),
        "{files:?}"
    );
    // Nothing was uploaded for it after the checkpoint that wrote it.
    let reused = ran
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .flat_map(|c| &c.subtasks)
        .filter(|s| s.task.starts_with("uneven") && s.index == 0 && s.finished)
        .filter(|s| s.checkpointed_size == 0 && s.state_size > 0)
        .count();
    assert!(
        reused >= recorded.len() - 1,
        "{reused} acknowledgements without an upload"
    );
    // A restore reads it: from the last checkpoint naming it, every source
    // subtask is at its end and nothing is emitted twice.
    let (last, _, _) = recorded.last().unwrap();
    let conf = conf_with(
        &dir.path().join("again"),
        &[(
            "execution.state-recovery.path",
            ran.job_dir.join(format!("chk-{last}")).to_str().unwrap(),
        )],
    );
    let env = Env::from_conf(conf).unwrap();
    let sink = CollectSink::new();
    let out = sink.handle();
    uneven_job(&env, sink);
    env.execute("uneven-again").unwrap();
    assert!(
        out.take().is_empty(),
        "the restored sources were at their end"
    );
}

/// Checkpoints after every source subtask finished, while the counting
/// subtasks still work through the backlog the sources left queued: no
/// barrier follows a finished source's data, so they waited for their end
/// of stream, behind the whole backlog, unaligned or not. Now a finished
/// subtask puts the barrier before the end of stream it sent (unaligned:
/// ahead of the queued batches), and downstream snapshots at once, the
/// backlog captured as channel state. The output stays exactly once.
#[test]
fn checkpoints_after_the_sources_finished_do_not_wait_for_their_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 120_000;
    let conf = conf_with(
        &dir.path().join("ckpt"),
        &[
            ("execution.checkpointing.interval", "50ms"),
            ("execution.checkpointing.unaligned.enabled", "true"),
            ("parallelism.default", "2"),
            // Long queues: a backlog of about 1.5 s when the sources end.
            ("taskmanager.network.memory.buffers-per-channel", "16"),
        ],
    );
    let env = Env::from_conf(conf).unwrap();
    numbers_into_files(&env, n, 1_000_000.0, &out, Duration::from_micros(25));
    let r = env.execute("backlog").unwrap();
    assert_running_counts(&read_output(&out), &numbers_reference(n));
    let after: Vec<_> = r
        .checkpoints
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .filter(|c| {
            let (sources, rest): (Vec<_>, Vec<_>) =
                c.subtasks.iter().partition(|s| s.task == "numbers");
            sources.iter().all(|s| s.finished) && rest.iter().all(|s| !s.finished)
        })
        .collect();
    eprintln!(
        "checkpoints after the sources finished: {:?}",
        after
            .iter()
            .map(|c| (c.id, c.end_to_end_duration.round(), c.persisted_data))
            .collect::<Vec<_>>()
    );
    assert!(after.len() >= 3, "{} such checkpoints", after.len());
    // Each such checkpoint overtook the backlog: unaligned, taken while the
    // subtask still ran. What it persisted is the backlog of that moment:
    // a subtask whose queues happened to be drained already (near the end,
    // one subtask may finish its share before the other) persists nothing,
    // so the data is asserted per subtask over the checkpoints.
    let mut persisted: std::collections::BTreeMap<usize, u64> = Default::default();
    for c in &after {
        for s in c.subtasks.iter().filter(|s| s.task != "numbers") {
            assert!(
                s.unaligned_checkpoint && !s.finished,
                "checkpoint {}: {} ({}) waited for the end of stream: {s:?}",
                c.id,
                s.task,
                s.index
            );
            *persisted.entry(s.index).or_default() += s.persisted_data;
        }
    }
    assert!(
        persisted.len() == 2 && persisted.values().all(|p| *p > 0),
        "every subtask persisted its backlog in some checkpoint: {persisted:?}"
    );
}
