//! A savepoint is always aligned (Flink's rule): in a back-pressured job
//! that takes unaligned checkpoints (which do capture in-flight data), and
//! in an at-least-once job, the savepoint holds no channel state and every
//! subtask reports it aligned.

mod common;

use weir::prelude::*;
use weir::runtime::checkpoint::storage::load_checkpoint;
use weir::runtime::checkpoint::CheckpointStatus;

fn savepoint_of(settings: &[(&str, &str)], expect_unaligned_checkpoints: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conf::defaults();
    c.set(
        "execution.checkpointing.dir",
        dir.path().join("ckpt").display(),
    )
    .unwrap();
    c.set("execution.checkpointing.interval", "50ms").unwrap();
    c.set("parallelism.default", 2).unwrap();
    for (k, v) in settings {
        c.set(k, v).unwrap();
    }
    let env = Env::from_conf(c).unwrap();
    common::slow_operator_job(&env, 200);
    let job = env.execute_async("aligned-savepoint").unwrap();
    if expect_unaligned_checkpoints {
        // The job's own checkpoints are unaligned and capture in-flight data.
        common::wait_for("an unaligned checkpoint with in-flight data", 120, || {
            job.checkpoint_stats()
                .iter()
                .any(|s| s.status == CheckpointStatus::Completed && s.persisted_data > 0)
                .then_some(())
        });
    }
    let sp = job.trigger_savepoint(Some(&dir.path().join("sp"))).unwrap();
    let stats = job
        .checkpoint_stats()
        .into_iter()
        .find(|s| s.is_savepoint)
        .expect("the savepoint's statistics");
    job.cancel();
    let _ = job.wait();
    assert_eq!(stats.status, CheckpointStatus::Completed);
    assert_eq!(stats.external_path.as_deref(), Some(sp.as_path()));
    assert_eq!(stats.persisted_data, 0);
    assert!(
        stats.subtasks.iter().all(|s| !s.unaligned_checkpoint),
        "every subtask took the savepoint aligned"
    );
    let c = load_checkpoint(&sp).unwrap();
    assert!(c.metadata.is_savepoint);
    assert!(c.states.iter().all(|s| s.channel_state.is_empty()));
}

#[test]
fn a_savepoint_of_an_unaligned_job_is_aligned() {
    savepoint_of(
        &[
            ("execution.checkpointing.unaligned.enabled", "true"),
            ("taskmanager.network.memory.buffers-per-channel", "2"),
        ],
        true,
    );
}

#[test]
fn a_savepoint_of_an_at_least_once_job_is_aligned() {
    savepoint_of(&[("execution.checkpointing.mode", "AT_LEAST_ONCE")], false);
}
