//! The deployment seam: where a job's subtasks run.
//!
//! The job supervisor ([`crate::job`]) decides *what* runs: which subtasks,
//! restored from which checkpoint, which region restarts after a failure. A
//! `TaskExecutor` decides *where*, and does four things for it:
//!
//! 1. **deploy** a subtask (its `SubtaskSpec`: operators, channels,
//!    restore state) and hand back the reference the checkpoint coordinator
//!    uses to reach it (`TaskRef`);
//! 2. **stop** one subtask (region failover), or all of them (cancel, full
//!    restart, job failure);
//! 3. **kill** one on request (`weir kill`, the chaos monkey): a stop that is
//!    remembered, so its end is reported as a kill and handled as a failure;
//! 4. **report ends**: every subtask it deployed ends exactly once, as a
//!    `SubtaskEnded` (normal end, failure with its message, or kill) that
//!    the supervisor passes to one handler (`JobState::subtask_ended`),
//!    whatever the executor.
//!
//! `LocalExecutor` runs subtasks as actors of this process, spawned
//! *linked* to the supervisor: their exits arrive as ractor supervision
//! events, which `LocalExecutor::ended` turns into `SubtaskEnded`. A
//! remote executor (cluster mode: a TaskManager's slots) stands beside it:
//! `deploy` sends the spec (its operators are rebuilt from the job's program,
//! which every process runs; channels to subtasks elsewhere are network
//! channels, see [`crate::exchange`]), `stop` and `kill` are messages to the
//! TaskManager, and the TaskManager's "subtask ended" reports and the loss
//! of its heartbeat (every subtask it held has failed) become the same
//! `SubtaskEnded` values. The supervisor's failover logic does not change.
//!
//! Invariant kept here (invariant 7 of `docs/design.md`): a subtask that
//! was deployed is counted as running until its end is reported, and its
//! end is reported once; the supervisor restarts a region only when all of
//! the region's subtasks have ended, so an old and a new attempt of one
//! subtask never run at the same time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, SupervisionEvent};

use crate::coordinator::TaskRef;
use crate::graph::{Head, SubtaskSpec};
use crate::job_shared::JobShared;
use crate::task::{CheckpointLink, SubtaskActor, SubtaskArgs};

/// How a deployed subtask ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubtaskEnded {
    /// The subtask (index among all of the job's subtasks), when the
    /// executor knows it.
    pub task: Option<usize>,
    /// `None`: it ended normally (input done, or stopped); `Some`: it
    /// failed, with this message.
    pub failure: Option<String>,
    /// It ended because it was killed on request.
    pub killed: bool,
}

/// Where subtasks run: see the module doc.
pub(crate) trait TaskExecutor {
    /// Starts `spec` under `supervisor`; returns its index and the
    /// coordinator's reference to it.
    fn deploy(
        &mut self,
        supervisor: &ActorCell,
        spec: SubtaskSpec,
        shared: &Arc<JobShared>,
        checkpoint: &Option<CheckpointLink>,
    ) -> impl Future<Output = Result<(usize, TaskRef), ActorProcessingErr>> + Send;

    /// Stops subtask `task`, if it runs; its end is reported as usual.
    fn stop(&mut self, task: usize, reason: &str);

    /// Stops every subtask it runs.
    fn stop_all(&mut self, reason: &str);

    /// Kills subtask `task`: stops it and reports its end as a kill.
    /// `false` when it was never deployed.
    fn kill(&mut self, task: usize) -> bool;
}

/// Subtasks as actors of this process, linked to the job supervisor.
#[derive(Default)]
pub(crate) struct LocalExecutor {
    /// The actor of each subtask index, of its newest attempt (kept after
    /// it ended: a kill or stop of an ended actor does nothing, and a kill
    /// is still a failure the supervisor handles).
    current: HashMap<usize, ActorCell>,
    /// Every live actor deployed, with its subtask index.
    live: HashMap<ActorId, (usize, ActorCell)>,
    /// Actors stopped by [`TaskExecutor::kill`].
    killed: HashSet<ActorId>,
}

impl LocalExecutor {
    /// Records `cell` as the newest attempt of subtask `index`.
    pub(crate) fn track(&mut self, index: usize, cell: ActorCell) {
        self.live.insert(cell.get_id(), (index, cell.clone()));
        self.current.insert(index, cell);
    }

    /// The end of a subtask actor this executor deployed, from a supervision
    /// event of the supervisor (`None` for events that are not an end, or
    /// not of a subtask).
    pub(crate) fn ended(&mut self, evt: &SupervisionEvent) -> Option<SubtaskEnded> {
        let (cell, failure) = match evt {
            SupervisionEvent::ActorTerminated(cell, ..) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return None,
        };
        let id = cell.get_id();
        let task = self.live.remove(&id).map(|(t, _)| t);
        let killed = self.killed.remove(&id);
        Some(SubtaskEnded {
            task,
            failure,
            killed,
        })
    }
}

impl LocalExecutor {
    /// Deployed subtasks whose end has not been reported yet.
    pub(crate) fn running(&self) -> usize {
        self.live.len()
    }
}

impl TaskExecutor for LocalExecutor {
    async fn deploy(
        &mut self,
        supervisor: &ActorCell,
        spec: SubtaskSpec,
        shared: &Arc<JobShared>,
        checkpoint: &Option<CheckpointLink>,
    ) -> Result<(usize, TaskRef), ActorProcessingErr> {
        let index = spec.task_index;
        let chain = spec.chain.clone();
        let is_source = matches!(spec.head, Head::Source { .. });
        let (actor, _) = SubtaskActor::spawn_linked(
            None,
            SubtaskActor,
            SubtaskArgs {
                spec,
                shared: shared.clone(),
                checkpoint: checkpoint.clone(),
            },
            supervisor.clone(),
        )
        .await?;
        self.track(index, actor.get_cell());
        Ok((
            index,
            TaskRef {
                chain,
                is_source,
                actor: actor.get_derived(),
            },
        ))
    }

    fn stop(&mut self, task: usize, reason: &str) {
        if let Some(cell) = self.current.get(&task) {
            cell.stop(Some(reason.to_string()));
        }
    }

    fn stop_all(&mut self, reason: &str) {
        for (_, cell) in self.live.values() {
            cell.stop(Some(reason.to_string()));
        }
    }

    fn kill(&mut self, task: usize) -> bool {
        match self.current.get(&task) {
            Some(cell) => {
                self.killed.insert(cell.get_id());
                cell.stop(Some("killed".into()));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    /// A supervisor that hands every supervision event to the test.
    struct Supervisor;

    impl Actor for Supervisor {
        type Msg = ();
        type State = UnboundedSender<SupervisionEvent>;
        type Arguments = UnboundedSender<SupervisionEvent>;
        async fn pre_start(
            &self,
            _: ActorRef<()>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }
        async fn handle_supervisor_evt(
            &self,
            _: ActorRef<()>,
            evt: SupervisionEvent,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(evt);
            Ok(())
        }
    }

    /// A stand-in subtask: fails when told to, else runs until stopped.
    struct Subtask;

    impl Actor for Subtask {
        type Msg = &'static str;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            failure: Self::Msg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            Err(failure.into())
        }
    }

    /// The next end of a subtask, skipping events that are not ends.
    async fn next_end(
        exec: &mut LocalExecutor,
        events: &mut UnboundedReceiver<SupervisionEvent>,
    ) -> SubtaskEnded {
        loop {
            let evt = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
                .await
                .expect("no supervision event within 10 s")
                .expect("supervisor gone");
            if let Some(end) = exec.ended(&evt) {
                return end;
            }
        }
    }

    /// The executor's contract: each deployed subtask ends once, a kill is
    /// reported as a kill, a failure with its message, a stop as a normal
    /// end; stopping or killing an ended subtask reports nothing new.
    #[tokio::test]
    async fn every_subtask_ends_once_with_how_it_ended() {
        let (tx, mut events) = unbounded_channel();
        let (sup, _) = Actor::spawn(None, Supervisor, tx).await.unwrap();
        let mut exec = LocalExecutor::default();
        let mut refs = Vec::new();
        for index in 0..3 {
            let (a, _) = Subtask::spawn_linked(None, Subtask, (), sup.get_cell())
                .await
                .unwrap();
            exec.track(index, a.get_cell());
            refs.push(a);
        }

        assert!(exec.kill(1));
        let end = next_end(&mut exec, &mut events).await;
        assert_eq!(
            end,
            SubtaskEnded {
                task: Some(1),
                failure: None,
                killed: true
            }
        );

        refs[2].cast("user code failed").unwrap();
        let end = next_end(&mut exec, &mut events).await;
        assert_eq!(end.task, Some(2));
        assert!(!end.killed);
        assert!(
            end.failure
                .as_deref()
                .is_some_and(|f| f.contains("user code failed")),
            "{end:?}"
        );

        // Stops reach only what still runs: subtask 0, once.
        exec.stop(1, "again");
        exec.stop_all("job stopping");
        let end = next_end(&mut exec, &mut events).await;
        assert_eq!(
            end,
            SubtaskEnded {
                task: Some(0),
                failure: None,
                killed: false
            }
        );
        assert!(exec.live.is_empty());
        // A kill of a subtask that never ran is refused.
        assert!(!exec.kill(7));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        while let Ok(evt) = events.try_recv() {
            assert!(
                exec.ended(&evt).is_none_or(|e| e.task.is_none()),
                "a second end"
            );
        }
        sup.stop(None);
    }
}
