//! What the checkpoint protocol tells whoever watches it.
//!
//! The coordinator and the subtasks do not know who observes a checkpoint:
//! they report its events to a [`CheckpointObserver`] (through the job's
//! `crate::observer::Observers`, which fans out to every registered
//! observer; none is registered when telemetry is off). The trace spans of
//! [`crate::telemetry`] are built by one such observer.
//!
//! This module owns the events and the pure data they carry:
//! - [`SubtaskPhases`]: the instants of one subtask's part in a checkpoint,
//!   carried with its acknowledgement to the coordinator;
//! - [`alignment_name`]: the name of a barrier mode (`aligned`, `unaligned`,
//!   `at_least_once`);
//! - [`SubtaskAcked`], [`CheckpointEnded`] and [`SubtaskNotified`]: what
//!   one subtask's acknowledgement, a checkpoint's end and one subtask's
//!   `notify_complete` report.
//!
//! Observers are called on the coordinator's actor and on the subtasks'
//! processing loops, once per checkpoint phase per subtask, never per
//! record: they must be quick and must not block.

use std::time::Instant;

use super::{BarrierMode, SubtaskCheckpointStats};

/// The instants of one subtask's part in one checkpoint, carried with its
/// acknowledgement to the coordinator (which reports them to the observers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubtaskPhases {
    /// The first barrier (none for sources and final checkpoints).
    pub first_barrier: Option<Instant>,
    pub sync_start: Instant,
    pub sync_end: Instant,
    /// Unaligned: when the channel state was complete.
    pub capture_end: Option<Instant>,
    pub upload_start: Instant,
    pub upload_end: Instant,
}

impl SubtaskPhases {
    /// Phases up to the synchronous snapshot; the rest is filled in later.
    pub(crate) fn synced(
        first_barrier: Option<Instant>,
        sync_start: Instant,
        sync_end: Instant,
    ) -> Self {
        SubtaskPhases {
            first_barrier,
            sync_start,
            sync_end,
            capture_end: None,
            upload_start: sync_end,
            upload_end: sync_end,
        }
    }
}

/// The alignment name of a barrier mode (`weir.checkpoint.alignment` on
/// trace spans): `unaligned` is whether the subtask (or, for a whole
/// checkpoint, any subtask) took its snapshot unaligned. A savepoint is
/// aligned, as in Flink, also in a job with unaligned checkpoints.
pub(crate) fn alignment_name(mode: BarrierMode, unaligned: bool, savepoint: bool) -> &'static str {
    match mode {
        BarrierMode::AtLeastOnce => "at_least_once",
        _ if unaligned => "unaligned",
        _ if savepoint => "aligned",
        BarrierMode::Unaligned => "unaligned",
        _ => "aligned",
    }
}

/// The coordinator received one subtask's acknowledgement of a checkpoint
/// still pending (only a current subtask's is reported).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubtaskAcked<'a> {
    /// The checkpoint id.
    pub id: u64,
    /// Whether it is a savepoint.
    pub savepoint: bool,
    /// The job's barrier mode.
    pub mode: BarrierMode,
    /// The subtask (index among all of the job's subtasks).
    pub task: usize,
    /// Its statistics (chain name, index, sizes, durations).
    pub stats: &'a SubtaskCheckpointStats,
    /// The instants of its phases.
    pub phases: &'a SubtaskPhases,
    /// When the coordinator received the acknowledgement.
    pub received: Instant,
}

/// A checkpoint (or savepoint) ended: completed (`_metadata` written) or aborted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckpointEnded<'a> {
    /// The checkpoint id.
    pub id: u64,
    /// Whether it is a savepoint.
    pub savepoint: bool,
    /// [`alignment_name`] of the job's barrier mode, `unaligned` when any
    /// subtask that acknowledged was.
    pub alignment: &'static str,
    /// When it was triggered.
    pub started: Instant,
    /// When it completed or was aborted.
    pub ended: Instant,
    /// Bytes of state written for this checkpoint (`checkpointed_size`),
    /// over the subtasks that acknowledged.
    pub bytes_written: u64,
    /// In-flight bytes persisted as channel state, over the same subtasks.
    pub inflight_bytes: u64,
    /// Why it was aborted; `None` when it completed.
    pub failure: Option<&'a str>,
}

/// One subtask ran `notify_complete` of its operators for a completed checkpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubtaskNotified<'a> {
    /// The checkpoint id.
    pub id: u64,
    /// The subtask (index among all of the job's subtasks).
    pub task: usize,
    /// The subtask's chain name, `A -> B`.
    pub chain: &'a str,
    /// The subtask index within its chain.
    pub index: usize,
    /// When the first operator was notified.
    pub start: Instant,
    /// When the last one returned.
    pub end: Instant,
    /// The error of the operator that failed, if one did.
    pub error: Option<&'a str>,
}

/// Receives the events of a job's checkpoints. Every method does nothing
/// by default, so an observer implements only what it needs.
pub(crate) trait CheckpointObserver: Send + Sync {
    /// The coordinator received a subtask's acknowledgement.
    fn subtask_acked(&self, acked: &SubtaskAcked<'_>) {
        let _ = acked;
    }

    /// A checkpoint completed or was aborted.
    fn checkpoint_ended(&self, ended: &CheckpointEnded<'_>) {
        let _ = ended;
    }

    /// A subtask's operators were told that a checkpoint completed.
    fn subtask_notified(&self, notified: &SubtaskNotified<'_>) {
        let _ = notified;
    }
}
