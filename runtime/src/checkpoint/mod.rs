//! Checkpoints: Flink's asynchronous barrier snapshots on actors.
//!
//! # Protocol (the invariants of docs/design.md, and where each is kept)
//! 1. **Sources** ([`crate::task`]): on `Trigger(n)` a source subtask
//!    snapshots its position S^n (operator state), then emits barrier `n` on
//!    every output after the last record it emitted (partial output buffers
//!    are flushed first). Restored, it resumes exactly at S^n.
//! 2. **Aligned** (`EXACTLY_ONCE`): a task that has barrier `n` on input `c`
//!    stops reading `c` until `n` arrived on every input (finished inputs
//!    count as arrived), then snapshots, forwards `n`, resumes, and uploads
//!    asynchronously before acknowledging.
//! 3. **Unaligned** (`execution.checkpointing.unaligned.enabled`): on the first
//!    barrier `n` a task snapshots at once and sends `n` ahead of the batches
//!    queued in its output channels (`exchange::ChannelSender::send_priority`: the
//!    barrier records how many batches it overtook). Per input it then
//!    captures, as channel state, every batch that logically precedes that
//!    input's barrier `n`: all batches until the barrier arrives, plus the
//!    batches it overtook. Restored, a task replays its channel state before
//!    any new input. With `aligned-checkpoint-timeout` > 0 a checkpoint starts
//!    aligned and a task switches to unaligned when the time since the trigger
//!    exceeds the timeout (or an upstream already switched). Several unaligned
//!    checkpoints can be in flight: a batch is captured by each that it precedes.
//! 4. **At-least-once**: no input is blocked; the snapshot is taken when the
//!    last barrier `n` arrives.
//! 5. **Coordinator** ([`crate::coordinator`]): triggers on the interval, honouring
//!    min-pause, max-concurrent and timeout; a checkpoint completes when every
//!    subtask acknowledged; only then is `_metadata` written (locally temp +
//!    fsync + rename; on an object store one atomic PUT), then subtasks are
//!    told `complete(n)` (two-phase-commit sinks commit), then subsumed
//!    checkpoints are deleted. Aborted checkpoints are
//!    announced to every subtask. Checkpoints complete in id order: when `m`
//!    completes, pending `n < m` are subsumed (aborted).
//! 6. **Storage** ([`storage`]): Flink's layout, framed files with a version
//!    and a CRC-32 (raw RocksDB files: size and CRC-32 recorded in the framed
//!    state file); corrupt or incomplete checkpoints are detected and skipped.
//!    Shared files (incremental RocksDB checkpoints) are reference-counted by
//!    the coordinator and deleted only when no retained checkpoint references them.
//!    The bytes live on the local filesystem or an object store (`s3://`),
//!    behind the [`store::Store`] trait.
//!
//! # Savepoints (Flink's)
//! A savepoint is a checkpoint with `Barrier::savepoint` set, taken on
//! request ([`crate::job::JobHandle::trigger_savepoint`], `POST
//! /jobs/:id/savepoints`, `weir savepoint`), never on the interval:
//! - **Always aligned**, whatever `execution.checkpointing.mode` and
//!   `unaligned.enabled` say: sources send its barrier in order with the
//!   data, every task aligns on it and never switches to unaligned, so it
//!   holds no channel state.
//! - The coordinator triggers it only when no checkpoint is in flight and
//!   triggers none while it is: it subsumes nothing and nothing subsumes it.
//! - **Canonical** state: keyed state as postcard entries per key group
//!   (RocksDB: read out of the local RocksDB checkpoint off the processing
//!   loop), operator state (source positions), sink transactions; written to
//!   `<target>/savepoint-<job id prefix>-<random>/` (see [`storage`]), self-contained
//!   and relocatable, in the framed, versioned, checksummed file format.
//! - On completion subtasks are told `complete(n)`: two-phase-commit sinks
//!   commit, so output stays exactly-once across a stop and a restore.
//! - It is not one of the job's checkpoints: not retained or counted by
//!   `num-retained`, never deleted by weir (retention, `gc`, cancel), and
//!   never a failover restore point (a region or full restart uses the job's
//!   own latest checkpoint, as Flink does by default).
//! - A failed savepoint (declined, expired, a region failed) is reported to
//!   the requester and does not count towards `tolerable-failed-checkpoints`.
//! - **Stop-with-savepoint** (`stop`): every subtask is told first; the
//!   sources emit nothing after the savepoint's barrier and end once it is
//!   complete, then the job finishes (final checkpoint) and ends `FINISHED`.
//!   Without drain, no `MAX_WATERMARK` and no operator `finish`; with drain,
//!   sources emit `MAX_WATERMARK` right before the barrier and operators
//!   finish afterwards. If the savepoint fails, the job goes on.
//! - Savepoints need checkpointing on (`execution.checkpointing.interval`
//!   not `off`): the coordinator only exists then.
//!
//! # Restore and claim modes (`execution.state-recovery.*`)
//! `path` names a `chk-<n>` directory, a savepoint directory, either's
//! `_metadata` file, or a job directory (its latest complete checkpoint).
//! Every restore goes through `restore::assign`: any parallelism, either
//! backend. A job always checkpoints into its own new `<dir>/<job-id>/`, and
//! a restore rewrites RocksDB state into a new instance (new shared file
//! names), so the first checkpoint after any restore is full and references
//! no file of the restored checkpoint; incremental ones follow.
//! - `NO_CLAIM` (default): the restored checkpoint stays the user's: weir
//!   never deletes or changes any file of it.
//! - `CLAIM`: the restored checkpoint (not a savepoint: those are never
//!   deleted; CLAIM on one is logged and ignored) counts as the oldest of the job's
//!   retained checkpoints: once the job completed `num-retained`
//!   checkpoints of its own it is deleted, `_metadata` first, then its
//!   directory, then its shared files that no other complete checkpoint of
//!   its job directory references ([`storage::discard_claimed`]).
//! - A restart of the job within its run (failover) restores from its own
//!   directory first (`adopt_existing` counts those checkpoints), and from
//!   the restored checkpoint only while it has none; a claimed checkpoint is
//!   deleted only after the job has a complete checkpoint of its own, so a
//!   restart never needs it.
//!
//! Bounded jobs end with a **final checkpoint**: when every subtask has
//! finished its input, the coordinator checkpoints all of them directly (no
//! data is in flight any more), so two-phase-commit sinks commit everything
//! before `execute` returns.

pub(crate) mod events;
pub mod lock;
pub mod storage;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{options, Conf};
pub use crate::snapshot::{KeyedStateHandle, RocksStateHandle, StateFile};
use crate::snapshot::{OperatorStateStore, RestoredKeyed};

/// Where a checkpoint becomes complete when `_metadata` alone does not make
/// it so: with high availability, the leadership log of `crate::ha` (the
/// coordinator commits each checkpoint to it after `_metadata`, before any
/// subtask is told). Defined here so the checkpoint code does not depend on
/// who implements it.
pub trait CompletionLog: Send + Sync + std::fmt::Debug {
    /// The committing JobManager's generation.
    fn generation(&self) -> u64;
    /// Makes checkpoint `id` complete; `Err(Error::Fenced)` when a newer
    /// JobManager took over (then it is not complete).
    fn commit(&self, id: u64) -> crate::Result<()>;
    /// `Err(Error::Fenced)` when a newer JobManager took over.
    fn check(&self) -> crate::Result<()>;
    /// Checkpoints older than `oldest_retained` were deleted: forget them.
    fn prune(&self, oldest_retained: u64);
    /// Whether checkpoint `id` is complete by this log (a `_metadata` alone
    /// may be a superseded JobManager's).
    fn is_committed(&self, id: u64) -> bool;
}

/// What one new subtask restores (assigned by [`crate::restore`] from a checkpoint;
/// carried to the subtask by its spec, `crate::graph::SubtaskSpec`).
#[derive(Default)]
pub(crate) struct SubtaskRestore {
    /// Operator name -> (keyed state of all key groups, this subtask's operator state).
    pub operators: std::collections::HashMap<
        String,
        (Option<std::sync::Arc<RestoredKeyed>>, OperatorStateStore),
    >,
    pub channel_state: Vec<ChannelStateEntry>,
    /// Subtask 0 of a chain whose parallelism changed: every old subtask's
    /// channel state `(old subtask, entry)`, in old subtask order, which
    /// `crate::graph::instantiate` spreads over the new subtasks
    /// (`crate::rescale`).
    pub rescaled: Vec<(usize, ChannelStateEntry)>,
}

/// The checkpointing settings of a job.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Trigger interval; `None`: checkpointing is off.
    pub interval: Option<Duration>,
    /// Exactly-once (aligned or unaligned barriers) or at-least-once.
    pub exactly_once: bool,
    /// Abort a checkpoint not complete after this long.
    pub timeout: Duration,
    /// Least time between the end of a checkpoint and the next trigger.
    pub min_pause: Duration,
    /// Checkpoints in flight at once.
    pub max_concurrent: usize,
    /// Consecutive failures tolerated.
    pub tolerable_failures: usize,
    /// Unaligned checkpoints.
    pub unaligned: bool,
    /// With `unaligned`: start aligned and switch after this long (zero: unaligned at once).
    pub aligned_timeout: Duration,
    /// Base directory.
    pub dir: PathBuf,
    /// Completed checkpoints kept.
    pub num_retained: usize,
    /// Keep checkpoints when the job is cancelled.
    pub retain_on_cancel: bool,
}

impl CheckpointConfig {
    /// Reads the `execution.checkpointing.*` options.
    pub fn from_conf(conf: &Conf) -> Self {
        CheckpointConfig {
            interval: conf.get(&options::CHECKPOINTING_INTERVAL),
            exactly_once: conf.get(&options::CHECKPOINTING_MODE) == "EXACTLY_ONCE",
            timeout: conf.get(&options::CHECKPOINTING_TIMEOUT),
            min_pause: conf.get(&options::CHECKPOINTING_MIN_PAUSE),
            max_concurrent: conf.get(&options::CHECKPOINTING_MAX_CONCURRENT),
            tolerable_failures: conf.get(&options::CHECKPOINTING_TOLERABLE_FAILURES),
            unaligned: conf.get(&options::CHECKPOINTING_UNALIGNED),
            aligned_timeout: conf.get(&options::CHECKPOINTING_ALIGNED_TIMEOUT),
            dir: conf.get(&options::CHECKPOINTING_DIR),
            num_retained: conf.get(&options::CHECKPOINTING_NUM_RETAINED),
            retain_on_cancel: conf.get(&options::CHECKPOINTING_RETENTION)
                == "RETAIN_ON_CANCELLATION",
        }
    }

    /// Whether checkpoints are taken.
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    pub(crate) fn barrier_mode(&self) -> BarrierMode {
        if !self.exactly_once {
            BarrierMode::AtLeastOnce
        } else if !self.unaligned {
            BarrierMode::Aligned
        } else if self.aligned_timeout.is_zero() {
            BarrierMode::Unaligned
        } else {
            BarrierMode::AlignedThenUnaligned(self.aligned_timeout)
        }
    }
}

/// How a task treats barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarrierMode {
    Aligned,
    Unaligned,
    AlignedThenUnaligned(Duration),
    AtLeastOnce,
}

/// The state of one operator of a subtask in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    /// The operator's name (operators are matched by name on restore).
    pub name: String,
    /// Its keyed state.
    pub keyed: Option<KeyedStateHandle>,
    /// Its operator state.
    pub operator: OperatorStateStore,
}

/// In-flight batches of one input channel captured by an unaligned checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelStateEntry {
    /// The input channel's index in the subtask's input gate.
    pub input: usize,
    /// The batches, in order, each postcard-encoded.
    pub batches: Vec<Vec<u8>>,
}

/// Everything one subtask stores in a checkpoint (one file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// The chain's name.
    pub chain: String,
    /// The chain's index in the plan.
    pub chain_index: usize,
    /// The subtask index.
    pub subtask: usize,
    /// The chain's parallelism.
    pub parallelism: usize,
    /// Every operator of the chain, head first.
    pub operators: Vec<OperatorSnapshot>,
    /// Captured in-flight data (unaligned checkpoints).
    pub channel_state: Vec<ChannelStateEntry>,
    /// `pipeline.max-parallelism` the subtask ran with: the number of key
    /// groups its keyed state is partitioned into (every keyed operator of a
    /// job shares it). A restore with another value is refused, as Flink
    /// does: key groups would not line up. Stored after the state itself in
    /// the file (see `checkpoint::storage::StateFileExtension`), so files
    /// written before it was recorded still read (`None`: not checked).
    #[serde(skip)]
    pub max_parallelism: Option<usize>,
}

/// Where one subtask's state of a checkpoint is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateHandle {
    /// The chain's name.
    pub chain: String,
    /// The chain's index in the plan.
    pub chain_index: usize,
    /// The subtask index.
    pub subtask: usize,
    /// File name inside `chk-<n>/`.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Other files the state references (RocksDB files), relative to the job
    /// directory; `shared/...` ones are reference-counted across checkpoints.
    pub files: Vec<String>,
}

/// The `_metadata` of a completed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The job's id.
    pub job_id: String,
    /// The job's name.
    pub job_name: String,
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// When it was triggered (ms since the epoch).
    pub trigger_timestamp: u64,
    /// When it completed (ms since the epoch).
    pub completed_timestamp: u64,
    /// Whether it is a savepoint.
    pub is_savepoint: bool,
    /// One handle per subtask.
    pub subtasks: Vec<StateHandle>,
}

/// Status of a checkpoint, Flink's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    /// Triggered, not all acknowledgements in.
    InProgress,
    /// `_metadata` written.
    Completed,
    /// Aborted (timeout, decline, subsumed, failure).
    Failed,
}

/// Per-subtask statistics of a checkpoint (Flink's field names; durations in ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskCheckpointStats {
    /// The chain's name.
    pub task: String,
    /// The subtask index.
    pub index: usize,
    /// When the acknowledgement was sent (ms since the epoch).
    pub ack_timestamp: u64,
    /// Size of this subtask's state (all files it references).
    pub state_size: u64,
    /// Bytes uploaded by this checkpoint for this subtask (less than
    /// `state_size` when incremental checkpoints reuse shared files).
    pub checkpointed_size: u64,
    /// Synchronous part of the snapshot.
    pub sync_duration: f64,
    /// Asynchronous part (upload).
    pub async_duration: f64,
    /// From the first barrier to the snapshot (aligned), zero when unaligned at once.
    pub alignment_duration: f64,
    /// From the trigger to the first barrier reaching this subtask.
    pub start_delay: f64,
    /// Whether this subtask's snapshot was unaligned.
    pub unaligned_checkpoint: bool,
    /// In-flight bytes persisted as channel state.
    pub persisted_data: u64,
    /// Its input had ended: it was asked for its final state directly (the
    /// final checkpoint, or a checkpoint after it finished), so no barrier
    /// reached it and it aligned nothing.
    #[serde(default)]
    pub finished: bool,
}

/// Statistics of one checkpoint, kept by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// The checkpoint id.
    pub id: u64,
    /// Its status.
    pub status: CheckpointStatus,
    /// Whether it is a savepoint.
    pub is_savepoint: bool,
    /// When it was triggered (ms since the epoch).
    pub trigger_timestamp: u64,
    /// The last acknowledgement (ms since the epoch).
    pub latest_ack_timestamp: u64,
    /// Trigger to completion (or failure), ms.
    pub end_to_end_duration: f64,
    /// Bytes of state uploaded by this checkpoint.
    pub checkpointed_size: u64,
    /// Bytes of state the checkpoint references (full size; equal to `checkpointed_size` without incremental checkpoints).
    pub state_size: u64,
    /// In-flight bytes persisted (unaligned).
    pub persisted_data: u64,
    /// Subtasks involved.
    pub num_subtasks: usize,
    /// Subtasks that acknowledged.
    pub num_acknowledged_subtasks: usize,
    /// Why it failed.
    pub failure_message: Option<String>,
    /// Where it is stored, once completed.
    pub external_path: Option<PathBuf>,
    /// Per subtask.
    pub subtasks: Vec<SubtaskCheckpointStats>,
}

/// Checkpoints completed and failed since the job started (the statistics
/// list keeps only the newest 1000), updated by the coordinator.
#[derive(Debug, Default)]
pub(crate) struct CheckpointCounts {
    pub completed: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
