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

use crate::checkpoint::coordinator::TaskRef;
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
        let cell = actor.get_cell();
        self.live.insert(cell.get_id(), (index, cell.clone()));
        self.current.insert(index, cell);
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
