//! The asynchronous part of a subtask's snapshot (docs/design.md, invariant 2).
//!
//! The synchronous part (on the processing loop) leaves a list of
//! [`PendingOperator`]s: each operator's operator state and, for keyed
//! operators, a consistent view of its keyed state that is cheap to take
//! (copy-on-write on the heap, a RocksDB checkpoint). The [`Uploader`] turns
//! that into files, off the subtask's thread: it encodes or uploads the keyed
//! state (savepoints in the canonical form, inline), writes the subtask's
//! state file with its channel state, and acknowledges the checkpoint to the
//! coordinator with the handles and the subtask's statistics, or declines it
//! with the error.
//!
//! One upload runs at a time per subtask, in snapshot order (a queue to one
//! worker task): acknowledgements arrive in checkpoint order, so a
//! checkpoint is never subsumed by a later one of the same subtask while
//! its files are still being written.
//!
//! **The final state of a finished subtask is recorded once** (Flink's
//! FLIP-147 records finished operators once too). A subtask whose input
//! ended takes part in every later checkpoint; once its state can no longer
//! change (it finished and every snapshot it took was committed or aborted:
//! a two-phase-commit sink's state changes at its commit), its next
//! snapshot is written once to `shared/` ([`Snapshot::final_state`]), and
//! every later checkpoint acknowledges that same file
//! ([`Uploader::submit_recorded`]) without a snapshot or a write. The file
//! is listed among the handle's shared files, so it is reference-counted
//! and deleted with the last checkpoint that names it. Only a state whose
//! files are all shared can be recorded so (the heap backend's, and none
//! keyed); a RocksDB subtask keeps snapshotting (its SST files are shared
//! and, incremental, not uploaded again). Savepoints are always written
//! whole, into the savepoint.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::CheckpointLink;
use crate::checkpoint::events::SubtaskPhases;
use crate::checkpoint::{
    now_ms, ChannelStateEntry, KeyedStateHandle, OperatorSnapshot, StateHandle,
    SubtaskCheckpointStats, SubtaskState,
};
use crate::coordinator::{Ack, CoordMsg};
use crate::state::{OperatorStateStore, PendingKeyedSnapshot, UploadTarget};
use crate::{Error, Result};

/// One operator's snapshot after the synchronous part: its keyed state is
/// uploaded or encoded by the asynchronous part.
pub(crate) struct PendingOperator {
    pub name: String,
    pub keyed: Option<PendingKeyedSnapshot>,
    pub operator: OperatorStateStore,
}

/// The subtask a snapshot belongs to.
#[derive(Clone)]
pub(crate) struct SubtaskId {
    pub chain: String,
    pub chain_index: usize,
    pub subtask: usize,
    pub parallelism: usize,
    /// `pipeline.max-parallelism`: recorded in the state file.
    pub max_parallelism: usize,
    /// The job-wide task index (the coordinator's numbering).
    pub task: usize,
    /// This subtask's actor: the coordinator ignores messages of replaced actors.
    pub actor: ractor::ActorId,
}

/// A snapshot whose synchronous part is done.
pub(crate) struct Snapshot {
    pub id: u64,
    pub operators: Vec<PendingOperator>,
    pub channel_state: Vec<ChannelStateEntry>,
    pub stats: SubtaskCheckpointStats,
    pub phases: SubtaskPhases,
    /// The final state of a finished subtask, which no longer changes: write
    /// it once to `shared/` when it can be (see the module doc).
    pub final_state: bool,
}

/// The final state of a finished subtask, as recorded once.
#[derive(Clone)]
enum Recorded {
    /// Not recorded (yet, or its upload failed).
    No,
    /// Its upload is queued: a later request, queued behind it, uses it.
    Pending,
    /// Written: every later checkpoint names this handle.
    Done {
        handle: StateHandle,
        state_size: u64,
    },
}

/// The asynchronous part of one snapshot (upload, then acknowledgement).
type UploadJob = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs one subtask's uploads, one at a time, on the job's runtime.
pub(crate) struct Uploader {
    link: CheckpointLink,
    id: SubtaskId,
    queue: UnboundedSender<UploadJob>,
    main: tokio::runtime::Handle,
    recorded: Arc<Mutex<Recorded>>,
}

impl Uploader {
    /// Starts the upload worker of subtask `id` on `main` (the job's runtime).
    pub(crate) fn new(link: CheckpointLink, id: SubtaskId, main: tokio::runtime::Handle) -> Self {
        let (queue, mut jobs) = unbounded_channel::<UploadJob>();
        main.spawn(async move {
            while let Some(job) = jobs.recv().await {
                job.await;
            }
        });
        Uploader {
            link,
            id,
            queue,
            main,
            recorded: Arc::new(Mutex::new(Recorded::No)),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this subtask's final state is recorded (or being recorded):
    /// then [`Uploader::submit_recorded`] acknowledges a checkpoint with it.
    pub(crate) fn has_recorded_final(&self) -> bool {
        !matches!(*self.recorded(), Recorded::No)
    }

    /// Acknowledges checkpoint `checkpoint` with the final state recorded
    /// once (queued after its upload); declines it when that upload failed
    /// (the next checkpoint records it again).
    pub(crate) fn submit_recorded(&self, checkpoint: u64) {
        let (link, id, recorded) = (self.link.clone(), self.id.clone(), self.recorded.clone());
        let job = Box::pin(async move {
            let now = Instant::now();
            let done = recorded.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let msg = match done {
                Recorded::Done { handle, state_size } => CoordMsg::Ack(Box::new(Ack {
                    id: checkpoint,
                    from: id.actor,
                    task: id.task,
                    handle,
                    stats: SubtaskCheckpointStats {
                        task: id.chain.clone(),
                        index: id.subtask,
                        ack_timestamp: now_ms(),
                        state_size,
                        // Nothing is uploaded: the file is there already.
                        checkpointed_size: 0,
                        finished: true,
                        ..Default::default()
                    },
                    phases: SubtaskPhases::synced(None, now, now),
                })),
                _ => CoordMsg::Decline {
                    id: checkpoint,
                    task: id.task,
                    from: id.actor,
                    reason: "the final state of a finished subtask could not be recorded".into(),
                    finished: false,
                },
            };
            let _ = link.coordinator.cast(msg);
        });
        if let Err(e) = self.queue.send(job) {
            self.main.spawn(e.0);
        }
    }

    /// Queues the asynchronous part of `snapshot`; its outcome goes to the coordinator.
    pub(crate) fn submit(&self, snapshot: Snapshot) {
        let (link, id) = (self.link.clone(), self.id.clone());
        if snapshot.final_state {
            *self.recorded() = Recorded::Pending;
        }
        let recorded = self.recorded.clone();
        let job = Box::pin(async move {
            let checkpoint = snapshot.id;
            let t0 = Instant::now();
            let (storage, sub) = (link.storage.clone(), id.clone());
            let Snapshot {
                operators,
                channel_state,
                mut stats,
                mut phases,
                final_state,
                ..
            } = snapshot;
            let written = tokio::task::spawn_blocking(move || {
                write(
                    &storage,
                    &sub,
                    checkpoint,
                    operators,
                    channel_state,
                    final_state,
                )
            })
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("upload panicked: {e}"))))
            .and_then(|w| {
                // A panic here must still decline the checkpoint, or it
                // would wait for this acknowledgement until its timeout.
                std::panic::catch_unwind(|| {
                    crate::failpoint::hit("before-ack").map_err(Error::from)
                })
                .unwrap_or_else(|p| {
                    Err(Error::Internal(format!(
                        "upload panicked: {}",
                        crate::operator::panic_message(&p)
                    )))
                })
                .map(|()| w)
            });
            let msg = match written {
                Ok(w) => {
                    let t1 = Instant::now();
                    phases.upload_start = t0;
                    phases.upload_end = t1;
                    stats.task = id.chain.clone();
                    stats.index = id.subtask;
                    stats.async_duration = (t1 - t0).as_secs_f64() * 1e3;
                    stats.state_size = w.size + w.full;
                    stats.checkpointed_size = w.size + w.uploaded;
                    stats.ack_timestamp = now_ms();
                    let handle = StateHandle {
                        chain: id.chain,
                        chain_index: id.chain_index,
                        subtask: id.subtask,
                        file: w.file,
                        size: w.size,
                        files: w.files,
                    };
                    if final_state {
                        let mut r = recorded.lock().unwrap_or_else(|p| p.into_inner());
                        *r = if w.recorded {
                            Recorded::Done {
                                handle: handle.clone(),
                                state_size: stats.state_size,
                            }
                        } else {
                            Recorded::No
                        };
                    }
                    CoordMsg::Ack(Box::new(Ack {
                        id: checkpoint,
                        from: id.actor,
                        task: id.task,
                        handle,
                        stats,
                        phases,
                    }))
                }
                Err(e) => {
                    if final_state {
                        *recorded.lock().unwrap_or_else(|p| p.into_inner()) = Recorded::No;
                    }
                    CoordMsg::Decline {
                        id: checkpoint,
                        task: id.task,
                        from: id.actor,
                        reason: e.to_string(),
                        finished: false,
                    }
                }
            };
            let _ = link.coordinator.cast(msg);
        });
        if let Err(e) = self.queue.send(job) {
            // The worker is gone only when the runtime shuts down: run it anyway.
            self.main.spawn(e.0);
        }
    }
}

/// What one snapshot wrote.
struct Written {
    file: String,
    size: u64,
    /// Files of the keyed state backends (e.g. RocksDB SSTs).
    files: Vec<String>,
    /// Bytes uploaded for this checkpoint (incremental: only new files).
    uploaded: u64,
    /// Full size of the keyed state.
    full: u64,
    /// The state file was written once to `shared/` (a final state).
    recorded: bool,
}

/// Blocking: uploads each operator's keyed state and writes the state file.
fn write(
    storage: &crate::checkpoint::storage::CheckpointStorage,
    sub: &SubtaskId,
    id: u64,
    operators: Vec<PendingOperator>,
    channel_state: Vec<ChannelStateEntry>,
    final_state: bool,
) -> Result<Written> {
    crate::failpoint::hit("during-upload")?;
    let target = UploadTarget {
        storage,
        checkpoint_id: id,
    };
    let (mut files, mut uploaded, mut full) = (Vec::new(), 0u64, 0u64);
    let mut snapshots = Vec::with_capacity(operators.len());
    let savepoint = storage.is_savepoint(id);
    for p in operators {
        let keyed = match p.keyed {
            // Savepoints: the canonical form, inline (no backend files).
            Some(k) if savepoint => Some(KeyedStateHandle::Canonical(k.canonical()?)),
            Some(k) => {
                let u = k.upload(&target)?;
                files.extend(u.files);
                uploaded += u.uploaded;
                full += u.full_size;
                Some(u.handle)
            }
            None => None,
        };
        snapshots.push(OperatorSnapshot {
            name: p.name,
            keyed,
            operator: p.operator,
        });
    }
    let state = SubtaskState {
        chain: sub.chain.clone(),
        chain_index: sub.chain_index,
        subtask: sub.subtask,
        parallelism: sub.parallelism,
        operators: snapshots,
        channel_state,
        max_parallelism: Some(sub.max_parallelism),
    };
    // A final state is written once to `shared/` when everything it names
    // is shared too (a per-checkpoint file would go with its checkpoint).
    let recorded = final_state
        && !savepoint
        && state.channel_state.is_empty()
        && files.iter().all(|f| f.starts_with("shared/"));
    let (file, size) = if recorded {
        let (rel, size) = storage.write_final_state(id, sub.chain_index, sub.subtask, &state)?;
        files.push(rel.clone());
        (rel, size)
    } else {
        storage.write_state(id, sub.chain_index, sub.subtask, &state)?
    };
    Ok(Written {
        file,
        size,
        files,
        uploaded,
        full,
        recorded,
    })
}
