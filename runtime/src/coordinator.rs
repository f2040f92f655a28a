//! The checkpoint coordinator actor: one per job, linked to the job supervisor.
//!
//! It triggers checkpoint `n` at the source subtasks on the interval (when
//! fewer than `max-concurrent-checkpoints` are in flight and `min-pause` has
//! passed since the last one ended), collects one acknowledgement per subtask,
//! and completes `n` when all are in: `_metadata` is written (atomically,
//! see [`crate::checkpoint::storage`]), then every subtask is told `complete(n)`, then
//! checkpoints beyond `num-retained` are deleted, and with them the shared
//! files (incremental RocksDB checkpoints) whose reference count, kept here
//! over the retained checkpoints, drops to zero. A new attempt of the job
//! adopts and counts the complete checkpoints already in the job directory. A checkpoint that times out
//! or that a subtask declines is aborted: every subtask is told, its files are
//! deleted, and it counts towards `tolerable-failed-checkpoints`; exceeding
//! that fails the job. When `m` completes, pending checkpoints `n < m` are
//! subsumed.
//!
//! **Checkpoints after tasks finished** (Flink's FLIP-147): a subtask whose
//! input ended reports `TaskFinished` and waits, alive, for the final
//! checkpoint. Checkpoints go on meanwhile: running sources inject the
//! barrier; a finished subtask, which no barrier reaches any more, is asked
//! directly (`SnapshotFinished`) and snapshots its final state, unless it
//! snapshotted that checkpoint already from a barrier that reached it
//! before its input ended; it also puts the barrier before the end of
//! stream it left queued downstream, so a backlog does not hold the
//! checkpoint back (see `task::runner`). This is consistent: a finished source's position
//! is its end, and everything it emitted precedes its end of stream, which
//! downstream alignment waits for (an ended input counts as aligned;
//! unaligned, the records before it are captured as channel state). When a
//! subtask reports `TaskFinished` while checkpoints are pending, it is asked
//! for those too. When every subtask has finished its input, the coordinator
//! takes the final checkpoint by asking every subtask directly; two-phase
//! commit sinks commit on every completed checkpoint, the final one last.
//!
//! When the job ends: finished, its retained checkpoints (the final one
//! included) stay, so restoring a finished job re-emits nothing; cancelled,
//! `externalized-checkpoint-retention` decides; failed, they stay for a restore.
//!
//! Savepoints (see the module doc of [`super`]) are queued requests: one
//! is triggered when nothing is in flight, no checkpoint is triggered while
//! it is, and its completion answers the requester instead of retaining it.
//! In `CLAIM` mode the restored checkpoint is deleted by the retention step
//! once `num-retained` checkpoints of this job completed.
//!
//! The decisions are plain functions of the coordinator's state; the only
//! I/O is writing `_metadata`, creating savepoint directories and deleting
//! directories (all through [`crate::checkpoint::storage`]).
//!
//! Each acknowledgement received and each checkpoint's end are reported to
//! the job's observers (`JobShared::observers`, see `checkpoint::events`): the
//! coordinator does not know who watches (telemetry builds trace spans).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::checkpoint::events::{
    alignment_name, CheckpointEnded, CheckpointObserver, SubtaskAcked, SubtaskPhases,
};
use crate::checkpoint::storage::CheckpointStorage;
use crate::checkpoint::{
    now_ms, CheckpointConfig, CheckpointMetadata, CheckpointStats, CheckpointStatus, StateHandle,
    SubtaskCheckpointStats,
};
use crate::exchange::Barrier;
use crate::job_shared::JobShared;
use crate::{Error, SavepointError};

/// The shared files (`shared/...`) the handles reference.
fn shared_files(handles: &[StateHandle]) -> Vec<String> {
    let mut v: Vec<String> = handles
        .iter()
        .flat_map(|h| h.files.iter())
        .filter(|f| f.starts_with("shared/"))
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What the coordinator tells a subtask (its processing loop carries it out).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) enum CheckpointControl {
    /// Inject barrier (sources).
    Trigger(Barrier),
    /// Savepoint `id` is a stop-with-savepoint (sent before its trigger):
    /// sources stop right after its barrier and end once it completes;
    /// without `drain` no operator is finished.
    StopAfter { id: u64, drain: bool },
    /// Snapshot now: every subtask has finished its input.
    FinalCheckpoint(Barrier),
    /// Checkpoint `n` runs while this subtask has finished (its input ended
    /// and it waits for the final checkpoint): it snapshots its final state
    /// for `n`, unless it has taken a snapshot of `n` or later already (the
    /// barrier reached it before its input ended).
    SnapshotFinished(Barrier),
    /// Checkpoint complete.
    Complete(u64),
    /// Checkpoint aborted.
    Abort(u64),
}

/// A subtask as the coordinator knows it.
#[derive(Clone)]
pub(crate) struct TaskRef {
    pub chain: String,
    pub is_source: bool,
    pub actor: ractor::DerivedActorRef<CheckpointControl>,
}

/// A subtask's acknowledgement of checkpoint `id`.
pub(crate) struct Ack {
    pub id: u64,
    pub task: usize,
    /// The acknowledging actor: messages of a subtask replaced by a restart are ignored.
    pub from: ractor::ActorId,
    pub handle: StateHandle,
    pub stats: SubtaskCheckpointStats,
    /// When each phase of the subtask's part happened (for its trace spans).
    pub phases: SubtaskPhases,
}

/// How the job ended, for the retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobEnd {
    Finished,
    Cancelled,
    Failed,
}

pub(crate) enum CoordMsg {
    Start(Vec<TaskRef>),
    /// A region is failing: abort what is in flight, trigger nothing until it is back.
    RegionDown(Vec<usize>),
    /// The region's new subtasks replace the old ones.
    RegionUp(Vec<(usize, TaskRef)>),
    Tick,
    Ack(Box<Ack>),
    Decline {
        id: u64,
        task: usize,
        from: ractor::ActorId,
        reason: String,
        finished: bool,
    },
    TaskFinished(usize, ractor::ActorId),
    /// Trigger a checkpoint now (a request, e.g. from the REST API): at once
    /// when none is in flight, else right after the one in flight ends. The
    /// reply is the new checkpoint's id.
    TriggerNow(tokio::sync::oneshot::Sender<Result<u64, String>>),
    Timeout(u64),
    /// Take a savepoint (when nothing is in flight); the reply comes when it
    /// completed (its directory) or failed.
    TriggerSavepoint(SavepointRequest),
    /// The newest checkpoint completed in this job's directory (or the one
    /// this attempt was restored from). Asked after `RegionDown`: from then
    /// on nothing completes until the region is up again, so the answer is
    /// the region's restore point, never older than what sinks committed.
    LatestCompleted(ractor::RpcReplyPort<Option<u64>>),
    Shutdown(JobEnd),
}

/// A request for a savepoint.
pub(crate) struct SavepointRequest {
    /// The directory the `savepoint-...` directory is created in.
    pub target: std::path::PathBuf,
    /// Stop-with-savepoint: `Some(drain)`.
    pub stop: Option<bool>,
    pub reply: tokio::sync::oneshot::Sender<Result<std::path::PathBuf, SavepointError>>,
}

pub(crate) struct CoordinatorArgs {
    pub cfg: CheckpointConfig,
    pub job_id: String,
    pub job_name: String,
    pub storage: CheckpointStorage,
    pub first_id: u64,
    /// The checkpoint of this job's directory the attempt was restored from.
    pub latest: Option<u64>,
    pub stats: Arc<Mutex<Vec<CheckpointStats>>>,
    pub counts: Arc<crate::checkpoint::CheckpointCounts>,
    pub shared: Arc<JobShared>,
    /// `CLAIM` mode: the checkpoint directory restored from, which this job
    /// now owns (deleted once subsumed, see [`crate::checkpoint::storage::discard_claimed`]).
    pub claimed: Option<std::path::PathBuf>,
}

struct Pending {
    trigger_ts: u64,
    started: Instant,
    acks: BTreeMap<usize, (StateHandle, SubtaskCheckpointStats)>,
}

pub(crate) struct CoordState {
    args: CoordinatorArgs,
    tasks: Vec<TaskRef>,
    next_id: u64,
    /// Newest completed checkpoint (see [`CoordMsg::LatestCompleted`]).
    latest: Option<u64>,
    pending: BTreeMap<u64, Pending>,
    /// Completed checkpoints kept, oldest first, with the shared files each references.
    retained: VecDeque<(u64, Vec<String>)>,
    /// Shared file -> number of retained checkpoints that reference it.
    shared_refs: BTreeMap<String, usize>,
    /// Shared files acknowledged for checkpoints that were aborted, by
    /// checkpoint id: deleted once a later checkpoint completes without them.
    aborted_shared: BTreeMap<u64, Vec<String>>,
    /// The latest completed checkpoint.
    latest_completed: u64,
    last_end: Option<Instant>,
    failures: usize,
    finished: BTreeSet<usize>,
    /// `TaskFinished` from an actor of a region that is down: the restarted
    /// actor can finish before the job's `RegionUp` reaches the coordinator.
    early_finished: BTreeMap<usize, ractor::ActorId>,
    final_id: Option<u64>,
    aborted: BTreeSet<u64>,
    /// Subtasks of regions being restarted.
    down: BTreeSet<usize>,
    /// Requests for a checkpoint now, waiting for the one in flight to end.
    requested: Vec<tokio::sync::oneshot::Sender<Result<u64, String>>>,
    /// Savepoint requests waiting for nothing to be in flight.
    savepoint_requests: VecDeque<SavepointRequest>,
    /// Savepoints in flight: id -> who waits for the outcome.
    savepoints: BTreeMap<u64, SavepointRequest>,
    /// A stop-with-savepoint completed: the sources are ending; no more checkpoints but the final one.
    stopping: bool,
}

pub(crate) struct Coordinator;

impl CoordState {
    /// `Start`: the subtasks of the first attempt; starts the trigger clock.
    fn on_start(&mut self, myself: &ActorRef<CoordMsg>, tasks: Vec<TaskRef>) {
        self.tasks = tasks;
        // Subtasks that finished before the coordinator started.
        if self.finished.len() == self.tasks.len() && self.final_id.is_none() {
            self.trigger(myself, true);
        }
        if let Some(interval) = self.args.cfg.interval {
            // A thread of its own: busy subtask loops on the runtime's
            // workers must not delay the trigger clock.
            let me = myself.clone();
            let _ = std::thread::Builder::new()
                .name("weir-checkpoint-timer".into())
                .spawn(move || loop {
                    std::thread::sleep(interval);
                    if me.cast(CoordMsg::Tick).is_err() {
                        break;
                    }
                });
        }
    }

    /// `RegionDown`: a region failed; what is in flight is aborted and
    /// nothing is triggered until it is back.
    fn on_region_down(&mut self, tasks: Vec<usize>) -> Result<(), Error> {
        self.down.extend(tasks.iter().copied());
        for t in &tasks {
            self.finished.remove(t);
        }
        // A final checkpoint (pending or even complete) no longer covers
        // the region: a new one follows when its subtasks finish again.
        self.final_id = None;
        for id in self.pending.keys().copied().collect::<Vec<_>>() {
            self.abort(id, "a region failed", false)?;
        }
        Ok(())
    }

    /// `RegionUp`: the region's new subtasks replace the old ones.
    fn on_region_up(&mut self, myself: &ActorRef<CoordMsg>, tasks: Vec<(usize, TaskRef)>) {
        for (i, t) in tasks {
            self.down.remove(&i);
            // The new actor may have finished before this message
            // arrived (a source restored at its end finishes at once).
            if self.early_finished.remove(&i) == Some(t.actor.get_id()) {
                self.finished.insert(i);
            }
            if let Some(slot) = self.tasks.get_mut(i) {
                *slot = t;
            }
        }
        if !self.tasks.is_empty()
            && self.down.is_empty()
            && self.finished.len() == self.tasks.len()
            && self.final_id.is_none()
        {
            self.trigger(myself, true);
        }
    }

    /// `Ack`: a subtask acknowledged a checkpoint with its state handle; the
    /// last acknowledgement completes it.
    async fn on_ack(&mut self, ack: Ack) -> Result<(), Error> {
        let Ack {
            id,
            task,
            from,
            handle,
            stats,
            phases,
        } = ack;
        let current = self.is_current(task, from);
        match self.pending.get_mut(&id) {
            Some(p) if current => {
                let observers = &self.args.shared.observers;
                if !observers.is_empty() {
                    observers.subtask_acked(&SubtaskAcked {
                        id,
                        savepoint: self.args.storage.is_savepoint(id),
                        mode: self.args.cfg.barrier_mode(),
                        task,
                        stats: &stats,
                        phases: &phases,
                        received: Instant::now(),
                    });
                }
                p.acks.insert(task, (handle, stats.clone()));
                let n = p.acks.len();
                // Each acknowledgement is visible at once (the REST
                // API's timeline of a checkpoint in progress).
                self.record(id, |s| {
                    s.num_acknowledged_subtasks = n;
                    s.latest_ack_timestamp = s.latest_ack_timestamp.max(stats.ack_timestamp);
                    s.subtasks.push(stats);
                });
                if n == self.tasks.len() {
                    self.complete(id).await?;
                }
            }
            _ if self.aborted.contains(&id) => {
                self.args.storage.discard(id);
                self.note_aborted_shared(id, std::slice::from_ref(&handle));
                self.apply_retention();
            }
            _ => {}
        }
        Ok(())
    }

    /// `TaskFinished`: a subtask's input ended; when all have, the final
    /// checkpoint is triggered.
    fn on_task_finished(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        task: usize,
        from: ractor::ActorId,
    ) {
        // Before `Start` no restart can have happened: the report is current.
        if !self.tasks.is_empty() && !self.is_current(task, from) {
            if self.down.contains(&task) {
                // Perhaps the restarted actor, ahead of its `RegionUp`.
                self.early_finished.insert(task, from);
            }
            return;
        }
        self.finished.insert(task);
        // Checkpoints in flight that this subtask may never see a barrier
        // of (its inputs ended before it): it snapshots its final state
        // for them, or ignores what it has taken already. (Before the final
        // checkpoint: its acknowledgements come in this order.)
        if let Some(t) = self.tasks.get(task) {
            for (&id, p) in &self.pending {
                if !p.acks.contains_key(&task) && Some(id) != self.final_id {
                    let barrier = Barrier {
                        id,
                        timestamp_ms: p.trigger_ts,
                        savepoint: self.savepoints.contains_key(&id),
                        stop_without_drain: self.stops_without_drain(id),
                        unaligned: false,
                        overtaken: 0,
                    };
                    let _ = t
                        .actor
                        .send_message(CheckpointControl::SnapshotFinished(barrier));
                }
            }
        }
        if self.finished.len() == self.tasks.len() && self.final_id.is_none() {
            self.trigger(myself, true);
        }
    }

    /// `Shutdown`: the job ended; requests are answered, what is in flight
    /// is aborted, and retention applies (`end` decides what is kept).
    fn on_shutdown(&mut self, myself: &ActorRef<CoordMsg>, end: JobEnd) {
        self.args.storage.release();
        for r in self.savepoint_requests.drain(..) {
            let _ = r
                .reply
                .send(Err(SavepointError::NotRunning("it has ended".into())));
        }
        for id in self.savepoints.keys().copied().collect::<Vec<_>>() {
            let _ = self.abort(id, "the job ended", false);
        }
        match end {
            // A finished job keeps its final checkpoint (and what
            // num-retained keeps): a restart after the end, e.g. by a
            // supervisor that missed the exit, restores the end state
            // and emits nothing twice. With high availability the job
            // directory outlives many processes: what their crashes left
            // (uploads of a killed generation) goes now.
            JobEnd::Finished => {
                if self.args.storage.leadership().is_some() {
                    // A checkpoint directory that is not retained here is
                    // not in the log either (a superseded process wrote it).
                    let job_dir = self.args.storage.job_dir();
                    let retained: BTreeSet<u64> = self.retained.iter().map(|(id, _)| *id).collect();
                    for (id, dir) in
                        crate::checkpoint::storage::chk_dirs(job_dir).unwrap_or_default()
                    {
                        if !retained.contains(&id) {
                            let _ = crate::checkpoint::storage::remove(&dir);
                        }
                    }
                    if let Err(e) = crate::checkpoint::storage::sweep(job_dir) {
                        tracing::warn!(error = %e, "orphan sweep at the end failed");
                    }
                }
            }
            JobEnd::Cancelled if !self.args.cfg.retain_on_cancel => self.args.storage.discard_all(),
            _ => {
                for id in self.pending.keys().copied().collect::<Vec<_>>() {
                    let _ = self.abort(id, "job ended", false);
                }
            }
        }
        myself.stop(None);
    }

    fn record(&self, id: u64, f: impl FnOnce(&mut CheckpointStats)) {
        let mut all = self.args.stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.iter_mut().rev().find(|s| s.id == id) {
            f(s);
        }
    }

    /// Whether checkpoint `id` is the savepoint of a stop without drain.
    fn stops_without_drain(&self, id: u64) -> bool {
        self.savepoints
            .get(&id)
            .is_some_and(|r| r.stop == Some(false))
    }

    fn trigger(&mut self, myself: &ActorRef<CoordMsg>, is_final: bool) {
        self.trigger_kind(myself, is_final, false)
    }

    fn trigger_kind(&mut self, myself: &ActorRef<CoordMsg>, is_final: bool, savepoint: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let ts = now_ms();
        let barrier = Barrier {
            id,
            timestamp_ms: ts,
            savepoint,
            stop_without_drain: self.stops_without_drain(id),
            unaligned: false,
            overtaken: 0,
        };
        self.pending.insert(
            id,
            Pending {
                trigger_ts: ts,
                started: Instant::now(),
                acks: BTreeMap::new(),
            },
        );
        {
            let mut all = self.args.stats.lock().unwrap_or_else(|p| p.into_inner());
            all.push(CheckpointStats {
                id,
                status: CheckpointStatus::InProgress,
                is_savepoint: savepoint,
                trigger_timestamp: ts,
                latest_ack_timestamp: 0,
                end_to_end_duration: 0.0,
                checkpointed_size: 0,
                state_size: 0,
                persisted_data: 0,
                num_subtasks: self.tasks.len(),
                num_acknowledged_subtasks: 0,
                failure_message: None,
                external_path: None,
                subtasks: Vec::new(),
            });
            let len = all.len();
            if len > 1000 {
                all.drain(..len - 1000);
            }
        }
        if is_final {
            self.final_id = Some(id);
            tracing::debug!(id, "final checkpoint");
            for t in &self.tasks {
                let _ = t
                    .actor
                    .send_message(CheckpointControl::FinalCheckpoint(barrier));
            }
        } else {
            tracing::debug!(
                id,
                savepoint,
                finished = self.finished.len(),
                "triggering checkpoint"
            );
            // Running sources inject the barrier; subtasks that finished
            // (checkpoints after tasks finished, Flink's FLIP-147) are not
            // reached by it and snapshot their final state.
            for (i, t) in self.tasks.iter().enumerate() {
                if self.finished.contains(&i) {
                    let _ = t
                        .actor
                        .send_message(CheckpointControl::SnapshotFinished(barrier));
                } else if t.is_source {
                    let _ = t.actor.send_message(CheckpointControl::Trigger(barrier));
                }
            }
        }
        let timeout = self.args.cfg.timeout;
        let me = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = me.cast(CoordMsg::Timeout(id));
        });
    }

    /// Starts reference counting with the complete checkpoints already in
    /// the job directory (a restarted attempt keeps and counts them).
    fn adopt_existing(&mut self) {
        // Only the `_metadata` files are read: they list every referenced file.
        let Ok(dirs) = crate::checkpoint::storage::chk_dirs(self.args.storage.job_dir()) else {
            return;
        };
        let mut ids: Vec<u64> = dirs.into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        for id in ids {
            // High availability: only what the log committed (a superseded
            // JobManager may have left a `_metadata` of its own).
            if let Some(l) = self.args.storage.leadership() {
                if !l.is_committed(id) {
                    continue;
                }
            }
            if let Ok(m) =
                crate::checkpoint::storage::read_metadata(&self.args.storage.checkpoint_dir(id))
            {
                self.retain(id, &m.subtasks);
                self.latest_completed = self.latest_completed.max(id);
            }
        }
        self.apply_retention();
    }

    /// Counts the shared files of completed checkpoint `id`.
    fn retain(&mut self, id: u64, handles: &[StateHandle]) {
        let shared: Vec<String> = shared_files(handles);
        for f in &shared {
            *self.shared_refs.entry(f.clone()).or_insert(0) += 1;
        }
        self.retained.push_back((id, shared));
    }

    /// Deletes the checkpoints beyond `num-retained`, oldest first, then the
    /// shared files no retained checkpoint references (order: see storage).
    fn apply_retention(&mut self) {
        if self.retained.len() >= self.args.cfg.num_retained {
            // CLAIM: the restored checkpoint counts as the oldest retained one.
            if let Some(dir) = self.args.claimed.take() {
                crate::checkpoint::storage::discard_claimed(&dir);
            }
        }
        let mut unreferenced = Vec::new();
        let dropped = self.retained.len() > self.args.cfg.num_retained;
        while self.retained.len() > self.args.cfg.num_retained {
            if let Some((old, shared)) = self.retained.pop_front() {
                self.args.storage.discard(old);
                for f in shared {
                    if let Some(n) = self.shared_refs.get_mut(&f) {
                        *n -= 1;
                        if *n == 0 {
                            self.shared_refs.remove(&f);
                            unreferenced.push(f);
                        }
                    }
                }
            }
        }
        // Shared files of aborted checkpoints older than the latest completed
        // one: a checkpoint in flight that needs one of them also made the
        // latest completed one reference it (see storage), so unreferenced means unused.
        let done: Vec<u64> = self
            .aborted_shared
            .range(..self.latest_completed)
            .map(|(k, _)| *k)
            .collect();
        for id in done {
            if let Some(files) = self.aborted_shared.remove(&id) {
                unreferenced.extend(
                    files
                        .into_iter()
                        .filter(|f| !self.shared_refs.contains_key(f)),
                );
            }
        }
        unreferenced.sort();
        unreferenced.dedup();
        self.args.storage.delete_unreferenced(&unreferenced);
        // High availability: the log keeps entries from the oldest retained
        // checkpoint on (see crate::ha).
        if let (true, Some(l), Some((oldest, _))) = (
            dropped,
            self.args.storage.leadership(),
            self.retained.front(),
        ) {
            l.prune(*oldest);
        }
    }

    /// Remembers the shared files an acknowledgement of aborted checkpoint `id` listed.
    fn note_aborted_shared(&mut self, id: u64, handles: &[StateHandle]) {
        let files = shared_files(handles);
        if !files.is_empty() {
            self.aborted_shared.entry(id).or_default().extend(files);
        }
    }

    /// Aborts `id`; returns an error when the failure tolerance is exceeded.
    fn abort(&mut self, id: u64, reason: &str, counts: bool) -> Result<(), Error> {
        let Some(p) = self.pending.remove(&id) else {
            if self.aborted.contains(&id) {
                // A late upload of an aborted checkpoint: remove what it wrote.
                self.args.storage.discard(id);
            }
            return Ok(());
        };
        let savepoint = self.savepoints.remove(&id);
        let counts = counts && savepoint.is_none();
        if let Some(req) = savepoint {
            tracing::warn!(id, reason, "savepoint aborted");
            let _ = req.reply.send(Err(SavepointError::Failed {
                id,
                reason: reason.to_string(),
            }));
        } else {
            tracing::warn!(id, reason, "checkpoint aborted");
        }
        self.aborted.insert(id);
        let acked: Vec<StateHandle> = p.acks.values().map(|(h, _)| h.clone()).collect();
        self.note_aborted_shared(id, &acked);
        for t in &self.tasks {
            let _ = t.actor.send_message(CheckpointControl::Abort(id));
        }
        self.args.storage.discard(id);
        let ended = Instant::now();
        let e2e = (ended - p.started).as_secs_f64() * 1e3;
        self.traced(id, &p, ended, Some(reason));
        self.args
            .counts
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.record(id, |s| {
            s.status = CheckpointStatus::Failed;
            s.end_to_end_duration = e2e;
            s.failure_message = Some(reason.to_string());
        });
        self.last_end = Some(Instant::now());
        if counts {
            self.failures += 1;
            if self.failures > self.args.cfg.tolerable_failures {
                return Err(Error::Checkpoint {
                    id,
                    reason: format!(
                        "{reason}; {} consecutive failed checkpoints exceed execution.checkpointing.tolerable-failed-checkpoints ({})",
                        self.failures, self.args.cfg.tolerable_failures
                    ),
                });
            }
        }
        if Some(id) == self.final_id {
            return Err(Error::Checkpoint {
                id,
                reason: format!("the final checkpoint failed: {reason}"),
            });
        }
        Ok(())
    }

    async fn complete(&mut self, id: u64) -> Result<(), Error> {
        let older: Vec<u64> = self.pending.range(..id).map(|(k, _)| *k).collect();
        for o in older {
            self.abort(o, &format!("subsumed by checkpoint {id}"), false)?;
        }
        let Some(p) = self.pending.remove(&id) else {
            return Ok(());
        };
        let mut handles: Vec<StateHandle> = p.acks.values().map(|(h, _)| h.clone()).collect();
        handles.sort_by_key(|h| (h.chain_index, h.subtask));
        let kept = handles.clone();
        let savepoint = self.savepoints.remove(&id);
        let meta = CheckpointMetadata {
            job_id: self.args.job_id.clone(),
            job_name: self.args.job_name.clone(),
            checkpoint_id: id,
            trigger_timestamp: p.trigger_ts,
            completed_timestamp: now_ms(),
            is_savepoint: savepoint.is_some(),
            subtasks: handles,
        };
        crate::failpoint::hit("before-metadata-write")?;
        let storage = self.args.storage.clone();
        let written = tokio::task::spawn_blocking(move || storage.write_metadata(&meta))
            .await
            .map_err(|e| Error::Internal(format!("metadata writer panicked: {e}")))
            .and_then(|r| r);
        let dir = match written {
            Ok(dir) => dir,
            Err(Error::CheckpointExists(dir)) if savepoint.is_none() => {
                // Another generation's JobManager wrote this id (see
                // crate::ha): not ours, and not complete for us.
                // If that JobManager is a newer leader, this one stops here
                // (aborting would delete the newer one's checkpoint).
                if let Some(l) = self.args.storage.leadership().cloned() {
                    if let Ok(Err(Error::Fenced(m))) =
                        tokio::task::spawn_blocking(move || l.check()).await
                    {
                        crate::ha::fenced_exit(&m);
                    }
                }
                let why = format!("{} has a _metadata of another JobManager", dir.display());
                tracing::warn!(id, "{why}");
                self.pending.insert(id, p);
                self.abort(id, &why, true)?;
                return Ok(());
            }
            Err(e) => {
                let Some(req) = savepoint else {
                    return Err(e);
                };
                // A savepoint that cannot be written fails alone, not the job.
                self.args.storage.discard(id);
                let _ = req.reply.send(Err(SavepointError::Failed {
                    id,
                    reason: e.to_string(),
                }));
                self.last_end = Some(Instant::now());
                return Ok(());
            }
        };
        if savepoint.is_none() {
            self.commit(id).await?;
        }
        let ended = Instant::now();
        let e2e = (ended - p.started).as_secs_f64() * 1e3;
        self.traced(id, &p, ended, None);
        let subtasks: Vec<SubtaskCheckpointStats> =
            p.acks.values().map(|(_, s)| s.clone()).collect();
        let size: u64 = subtasks.iter().map(|s| s.state_size).sum();
        let uploaded: u64 = subtasks.iter().map(|s| s.checkpointed_size).sum();
        let persisted: u64 = subtasks.iter().map(|s| s.persisted_data).sum();
        let latest = subtasks.iter().map(|s| s.ack_timestamp).max().unwrap_or(0);
        self.args
            .counts
            .completed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.record(id, |s| {
            s.status = CheckpointStatus::Completed;
            s.end_to_end_duration = e2e;
            s.checkpointed_size = uploaded;
            s.state_size = size;
            s.persisted_data = persisted;
            s.latest_ack_timestamp = latest;
            s.num_acknowledged_subtasks = subtasks.len();
            s.external_path = Some(dir.clone());
            s.subtasks = subtasks;
        });
        if let Some(req) = savepoint {
            // Not this job's to delete any more; never a failover restore point.
            self.args.storage.end_savepoint(id);
            tracing::info!(id, bytes = size, ms = e2e, path = %dir.display(), stop = ?req.stop, "savepoint completed");
            // Sinks commit on a savepoint as on a checkpoint (exactly-once).
            for t in &self.tasks {
                let _ = t.actor.send_message(CheckpointControl::Complete(id));
            }
            self.stopping |= req.stop.is_some();
            let _ = req.reply.send(Ok(dir));
            self.failures = 0;
            self.last_end = Some(Instant::now());
            return Ok(());
        }
        tracing::info!(id, bytes = size, ms = e2e, "checkpoint completed");
        crate::failpoint::hit("before-notify-complete")?;
        for t in &self.tasks {
            let _ = t.actor.send_message(CheckpointControl::Complete(id));
        }
        self.latest = Some(id);
        self.retain(id, &kept);
        self.latest_completed = self.latest_completed.max(id);
        self.apply_retention();
        self.failures = 0;
        self.last_end = Some(Instant::now());
        Ok(())
    }

    /// High availability: checkpoint `id`, its `_metadata` written, becomes
    /// complete only with its entry in the leadership log (`crate::ha`,
    /// rule 2). Fenced (a newer JobManager took over), the process stops at
    /// once: no subtask is told, no sink commits. Any other failure deletes
    /// the checkpoint, so nothing ever restores from it, and fails the job.
    async fn commit(&mut self, id: u64) -> Result<(), Error> {
        let Some(leadership) = self.args.storage.leadership().cloned() else {
            return Ok(());
        };
        let committed = tokio::task::spawn_blocking(move || leadership.commit(id))
            .await
            .map_err(|e| Error::Internal(format!("leadership log writer panicked: {e}")))
            .and_then(|r| r);
        match committed {
            Ok(()) => Ok(()),
            Err(Error::Fenced(m)) => crate::ha::fenced_exit(&m),
            Err(e) => {
                self.args.storage.discard(id);
                Err(e)
            }
        }
    }

    /// Tells the job's observers that checkpoint `id` ended (nothing is
    /// computed when there are none).
    fn traced(&self, id: u64, p: &Pending, ended: Instant, failure: Option<&str>) {
        let observers = &self.args.shared.observers;
        if !observers.is_empty() {
            let acks = p.acks.values().map(|(_, s)| s);
            let unaligned = acks.clone().any(|s| s.unaligned_checkpoint);
            let bytes_written = acks.clone().map(|s| s.checkpointed_size).sum();
            let inflight_bytes = acks.map(|s| s.persisted_data).sum();
            let mode = self.args.cfg.barrier_mode();
            // Called before the savepoint is unregistered (completed) or discarded.
            let savepoint = self.args.storage.is_savepoint(id);
            let alignment = alignment_name(mode, unaligned, savepoint);
            observers.checkpoint_ended(&CheckpointEnded {
                id,
                savepoint,
                alignment,
                started: p.started,
                ended,
                bytes_written,
                inflight_bytes,
                failure,
            });
        }
    }

    /// Whether `from` is the live actor of subtask `task` (not one a restart replaced).
    fn is_current(&self, task: usize, from: ractor::ActorId) -> bool {
        self.tasks
            .get(task)
            .is_some_and(|t| t.actor.get_id() == from)
            && !self.down.contains(&task)
    }

    /// Serves the requests for a checkpoint now once nothing is in flight
    /// (min-pause and max-concurrent do not apply to a request).
    fn serve_requests(&mut self, myself: &ActorRef<CoordMsg>) {
        self.serve_savepoints(myself);
        if self.requested.is_empty() || !self.pending.is_empty() {
            return;
        }
        if self.final_id.is_some() || self.finished.len() == self.tasks.len() {
            for r in self.requested.drain(..) {
                let _ = r.send(Err(
                    "the job is finishing: its final checkpoint is under way".into(),
                ));
            }
            return;
        }
        if self.tasks.is_empty() || !self.down.is_empty() {
            return; // after the restart (RegionUp / Start)
        }
        let id = self.next_id;
        self.trigger(myself, false);
        for r in self.requested.drain(..) {
            let _ = r.send(Ok(id));
        }
    }

    /// Triggers the first waiting savepoint once nothing is in flight (a
    /// savepoint is never concurrent with a checkpoint: it is aligned, and
    /// completing it subsumes nothing).
    fn serve_savepoints(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.savepoint_requests.is_empty() || !self.pending.is_empty() {
            return;
        }
        if self.final_id.is_some() || !self.finished.is_empty() {
            for r in self.savepoint_requests.drain(..) {
                let _ = r.reply.send(Err(SavepointError::NotRunning(
                    "its input has ended: it is finishing".into(),
                )));
            }
            return;
        }
        if self.tasks.is_empty() || !self.down.is_empty() {
            return; // after the restart (RegionUp / Start)
        }
        let Some(req) = self.savepoint_requests.pop_front() else {
            return;
        };
        let id = self.next_id;
        match self
            .args
            .storage
            .begin_savepoint(id, &req.target, &self.args.job_id)
        {
            Ok(dir) => {
                tracing::info!(id, dir = %dir.display(), stop = ?req.stop, "triggering savepoint");
            }
            Err(e) => {
                let _ = req.reply.send(Err(SavepointError::Directory {
                    path: req.target.display().to_string(),
                    reason: e.to_string(),
                }));
                return;
            }
        }
        if let Some(drain) = req.stop {
            for t in &self.tasks {
                let _ = t
                    .actor
                    .send_message(CheckpointControl::StopAfter { id, drain });
            }
        }
        self.savepoints.insert(id, req);
        self.trigger_kind(myself, false, true);
    }

    fn may_trigger(&self) -> bool {
        self.savepoints.is_empty()
            && self.savepoint_requests.is_empty()
            && !self.stopping
            && !self.tasks.is_empty()
            && self.down.is_empty()
            // Checkpoints go on while some subtasks have finished; when all
            // have, the final checkpoint is the last.
            && self.finished.len() < self.tasks.len()
            && self.final_id.is_none()
            && self.pending.len() < self.args.cfg.max_concurrent
            && self
                .last_end
                .is_none_or(|t| t.elapsed() >= self.args.cfg.min_pause)
    }
}

impl Actor for Coordinator {
    type Msg = CoordMsg;
    type State = CoordState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        _: ActorRef<CoordMsg>,
        args: CoordinatorArgs,
    ) -> Result<CoordState, ActorProcessingErr> {
        let mut state = CoordState {
            next_id: args.first_id,
            latest: args.latest,
            args,
            tasks: Vec::new(),
            pending: BTreeMap::new(),
            retained: VecDeque::new(),
            shared_refs: BTreeMap::new(),
            aborted_shared: BTreeMap::new(),
            latest_completed: 0,
            last_end: None,
            failures: 0,
            finished: BTreeSet::new(),
            early_finished: BTreeMap::new(),
            final_id: None,
            aborted: BTreeSet::new(),
            down: BTreeSet::new(),
            requested: Vec::new(),
            savepoint_requests: VecDeque::new(),
            savepoints: BTreeMap::new(),
            stopping: false,
        };
        state.adopt_existing();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordMsg>,
        msg: CoordMsg,
        state: &mut CoordState,
    ) -> Result<(), ActorProcessingErr> {
        let outcome: Result<(), Error> = async {
            match msg {
                CoordMsg::Start(tasks) => state.on_start(&myself, tasks),
                CoordMsg::RegionDown(tasks) => state.on_region_down(tasks)?,
                CoordMsg::RegionUp(tasks) => state.on_region_up(&myself, tasks),
                CoordMsg::Tick => {
                    if state.may_trigger() {
                        state.trigger(&myself, false);
                    }
                }
                CoordMsg::TriggerNow(reply) => state.requested.push(reply),
                CoordMsg::TriggerSavepoint(req) => state.savepoint_requests.push_back(req),
                CoordMsg::Ack(ack) => state.on_ack(*ack).await?,
                CoordMsg::Decline {
                    id,
                    task,
                    from,
                    reason,
                    finished,
                } => {
                    if !state.is_current(task, from) {
                        return Ok(());
                    }
                    let name = state
                        .tasks
                        .get(task)
                        .map(|t| t.chain.clone())
                        .unwrap_or_default();
                    state.abort(id, &format!("declined by {name}: {reason}"), !finished)?;
                }
                CoordMsg::Timeout(id) => {
                    if state.pending.contains_key(&id) {
                        let timeout = state.args.cfg.timeout;
                        state.abort(
                            id,
                            &format!("expired after {timeout:?} (execution.checkpointing.timeout)"),
                            true,
                        )?;
                    }
                }
                CoordMsg::TaskFinished(task, from) => state.on_task_finished(&myself, task, from),
                CoordMsg::LatestCompleted(reply) => {
                    let _ = reply.send(state.latest);
                }
                CoordMsg::Shutdown(end) => state.on_shutdown(&myself, end),
            }
            Ok(())
        }
        .await;
        if outcome.is_ok() {
            state.serve_requests(&myself);
        }
        if let Err(e) = outcome {
            let text = e.to_string();
            state.args.shared.record_failure(e);
            return Err(text.into());
        }
        Ok(())
    }
}
