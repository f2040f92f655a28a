//! Barrier handling as a pure state machine (Flink's
//! `SingleCheckpointBarrierHandler` with its `BarrierHandlerState`s, and its
//! `CheckpointBarrierTracker` for at-least-once).
//!
//! The [`BarrierHandler`] of a subtask is told what happened on its inputs,
//! and answers with [`Decision`]s; it does no I/O, reads no clock (callers
//! pass the time) and never touches records. The processing loop
//! ([`super::runner`]) carries the decisions out: it blocks and unblocks
//! inputs of the gate, takes the synchronous snapshot, forwards the barrier,
//! reads overtaken batches from the queue, and starts the upload.
//!
//! | event                              | method                                  |
//! |------------------------------------|-----------------------------------------|
//! | barrier `n` taken from input `i`   | [`BarrierHandler::on_barrier`]          |
//! | input `i` delivered end of stream  | [`BarrierHandler::on_input_finished`]   |
//! | the alignment timer fired          | [`BarrierHandler::on_alignment_timeout`]|
//! | checkpoint `n` was aborted         | [`BarrierHandler::on_abort`]            |
//!
//! # States, per barrier mode (docs/design.md, invariants 2 to 4)
//!
//! - **Aligned** (exactly-once): barrier `n` on input `i` blocks `i`
//!   ([`Decision::Block`]) until `n` has arrived on every input that has not
//!   ended; then every input is unblocked and the subtask snapshots
//!   ([`Decision::SnapshotAligned`]). One alignment at a time: a newer
//!   barrier cancels an older alignment (that checkpoint was abandoned
//!   upstream); a barrier older than the alignment in progress is stale and
//!   ignored. Savepoints are always aligned, whatever the mode (as in Flink).
//! - **Unaligned**: the first barrier `n` snapshots at once
//!   ([`Decision::SnapshotUnaligned`], the barrier then goes out ahead of the
//!   queued output) and starts a *capture*: every batch taken from an input
//!   whose barrier `n` has not arrived yet is channel state of `n`
//!   ([`BarrierHandler::capturing`]); when `n` arrives on such an input, the
//!   batches it overtook in that input's queue are added
//!   ([`Decision::CaptureOvertaken`]). When every input is done (barrier
//!   arrived or input ended) the capture is complete
//!   ([`Decision::CaptureComplete`]). Several captures can be in flight.
//! - **Aligned with timeout** (`execution.checkpointing.aligned-checkpoint-timeout`):
//!   aligned, until the alignment has lasted longer than the timeout measured
//!   from the checkpoint's trigger ([`BarrierHandler::alignment_deadline`]);
//!   then [`BarrierHandler::on_alignment_timeout`] switches it to unaligned:
//!   inputs whose barrier arrived are done, the others are captured. A
//!   barrier that arrives already unaligned (an upstream switched) switches
//!   the checkpoint here too.
//! - **At-least-once**: no input is ever blocked; checkpoint `n` snapshots
//!   when barrier `n` has arrived on every input that has not ended. Several
//!   checkpoints are counted at once; snapshotting `n` drops the count of
//!   every older one (they can no longer complete here).
//!
//! Every barrier of a checkpoint at or below the last one snapshotted here
//! is ignored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::checkpoint::BarrierMode;
use crate::exchange::Barrier;

/// What the processing loop must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Stop reading input `i` (it delivered the barrier being aligned).
    Block(usize),
    /// Read every input again.
    UnblockAll,
    /// Snapshot now, forward the barrier aligned, then upload.
    SnapshotAligned(Start),
    /// Snapshot now, forward the barrier as unaligned (ahead of queued
    /// output), and begin capturing in-flight input for it. `overtaken`:
    /// the input whose barrier triggered this and how many queued batches
    /// the barrier overtook there (read them from the queue into the
    /// capture of that input).
    SnapshotUnaligned {
        start: Start,
        overtaken: Option<(usize, usize)>,
    },
    /// Add the `count` batches barrier `id` overtook on `input` to its capture.
    CaptureOvertaken { id: u64, input: usize, count: usize },
    /// Every input of capture `id` is done: upload that checkpoint.
    CaptureComplete(u64),
}

/// A checkpoint's snapshot is due: its barrier and when it first arrived here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Start {
    pub barrier: Barrier,
    /// When the first barrier of this checkpoint arrived here.
    pub first_at: Instant,
    /// Trigger to first barrier, ms (Flink's start delay).
    pub start_delay: f64,
}

/// A checkpoint waiting for its barriers (aligned or at-least-once).
#[derive(Debug, Clone)]
struct Alignment {
    start: Start,
    arrived: Vec<bool>,
}

/// Capture progress of one input for one unaligned checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// The input's barrier has not arrived: every batch taken is channel state.
    All,
    /// The barrier arrived (its overtaken batches were captured) or the input ended.
    Done,
}

/// The barrier state of one subtask (see the module docs).
#[derive(Debug)]
pub(crate) struct BarrierHandler {
    mode: BarrierMode,
    finished: Vec<bool>,
    /// The highest checkpoint id snapshotted here.
    last_snapshot: u64,
    /// Aligned / aligned with timeout / savepoints: the checkpoint being aligned.
    aligning: Option<Alignment>,
    /// At-least-once: barriers seen per checkpoint.
    counting: BTreeMap<u64, Alignment>,
    /// Unaligned checkpoints capturing channel state: per input, its progress.
    captures: BTreeMap<u64, Vec<Capture>>,
}

impl BarrierHandler {
    /// A handler for a subtask with `inputs` input channels.
    pub(crate) fn new(mode: BarrierMode, inputs: usize) -> Self {
        BarrierHandler {
            mode,
            finished: vec![false; inputs],
            last_snapshot: 0,
            aligning: None,
            counting: BTreeMap::new(),
            captures: BTreeMap::new(),
        }
    }

    /// Records that checkpoint `id` was snapshotted here (a source's trigger,
    /// a final checkpoint): its barriers and older ones are ignored from now on.
    pub(crate) fn snapshotted(&mut self, id: u64) {
        self.last_snapshot = self.last_snapshot.max(id);
    }

    /// Whether an alignment is in progress (some inputs blocked).
    pub(crate) fn is_aligning(&self) -> bool {
        self.aligning.is_some()
    }

    /// Whether any unaligned checkpoint is capturing input.
    pub(crate) fn is_capturing(&self) -> bool {
        !self.captures.is_empty()
    }

    /// The checkpoints for which a batch taken from input `i` now is channel state.
    pub(crate) fn capturing(&self, i: usize) -> impl Iterator<Item = u64> + '_ {
        self.captures
            .iter()
            .filter(move |(_, c)| c[i] == Capture::All)
            .map(|(id, _)| *id)
    }

    /// Aligned with timeout: how long the alignment in progress may still
    /// last before it switches to unaligned (`now_ms`: wall clock, ms since
    /// the epoch; the timeout counts from the trigger). `None` when no timer
    /// is due (other modes, no alignment, savepoints).
    pub(crate) fn alignment_deadline(&self, now_ms: u64) -> Option<Duration> {
        let BarrierMode::AlignedThenUnaligned(timeout) = self.mode else {
            return None;
        };
        let a = self.aligning.as_ref()?;
        if a.start.barrier.savepoint {
            return None;
        }
        let since_trigger = now_ms.saturating_sub(a.start.barrier.timestamp_ms);
        Some(timeout.saturating_sub(Duration::from_millis(since_trigger)))
    }

    /// Barrier `b` was taken from input `i` at `now` (`now_ms`: the same
    /// moment on the wall clock, for the start delay).
    pub(crate) fn on_barrier(
        &mut self,
        i: usize,
        b: Barrier,
        now: Instant,
        now_ms: u64,
    ) -> Vec<Decision> {
        let start = Start {
            barrier: b,
            first_at: now,
            start_delay: now_ms.saturating_sub(b.timestamp_ms) as f64,
        };
        let mut out = Vec::new();
        if b.savepoint {
            self.aligned(i, start, &mut out);
            return out;
        }
        match self.mode {
            BarrierMode::AtLeastOnce => self.counted(i, start, &mut out),
            BarrierMode::Aligned => self.aligned(i, start, &mut out),
            BarrierMode::Unaligned => self.unaligned(i, start, &mut out),
            BarrierMode::AlignedThenUnaligned(_) => {
                if b.unaligned || self.captures.contains_key(&b.id) {
                    self.unaligned(i, start, &mut out)
                } else {
                    self.aligned(i, start, &mut out)
                }
            }
        }
        out
    }

    /// Input `i` ended: it no longer holds back any checkpoint.
    pub(crate) fn on_input_finished(&mut self, i: usize) -> Vec<Decision> {
        let mut out = Vec::new();
        self.finished[i] = true;
        for c in self.captures.values_mut() {
            c[i] = Capture::Done;
        }
        self.finish_captures(&mut out);
        self.check_aligned(&mut out);
        self.check_counted(&mut out);
        out
    }

    /// The alignment timer fired: the checkpoint being aligned switches to unaligned.
    pub(crate) fn on_alignment_timeout(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(a) = self.aligning.take() else {
            return out;
        };
        out.push(Decision::UnblockAll);
        let inputs = self.capture_plan(&a.arrived, None);
        self.begin_capture(a.start, inputs, None, &mut out);
        out
    }

    /// Checkpoint `id` was aborted: forget it (its alignment ends).
    pub(crate) fn on_abort(&mut self, id: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        if self
            .aligning
            .as_ref()
            .is_some_and(|a| a.start.barrier.id == id)
        {
            self.aligning = None;
            out.push(Decision::UnblockAll);
        }
        self.counting.remove(&id);
        self.captures.remove(&id);
        out
    }

    fn counted(&mut self, i: usize, start: Start, out: &mut Vec<Decision>) {
        let id = start.barrier.id;
        if id <= self.last_snapshot {
            return;
        }
        let n = self.finished.len();
        let a = self.counting.entry(id).or_insert_with(|| Alignment {
            start,
            arrived: vec![false; n],
        });
        a.arrived[i] = true;
        self.check_counted(out);
    }

    fn check_counted(&mut self, out: &mut Vec<Decision>) {
        let ready: Vec<u64> = self
            .counting
            .iter()
            .filter(|(_, a)| self.complete(&a.arrived))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(a) = self.counting.remove(&id) {
                self.snapshotted(id);
                out.push(Decision::SnapshotAligned(a.start));
            }
        }
        let last = self.last_snapshot;
        self.counting.retain(|id, _| *id > last);
    }

    fn aligned(&mut self, i: usize, start: Start, out: &mut Vec<Decision>) {
        let id = start.barrier.id;
        if id <= self.last_snapshot {
            return;
        }
        match &self.aligning {
            Some(a) if a.start.barrier.id < id => {
                // A newer barrier: the older checkpoint was abandoned upstream.
                self.aligning = None;
                out.push(Decision::UnblockAll);
            }
            // Stale: older than the alignment in progress (it was aborted).
            Some(a) if a.start.barrier.id > id => return,
            _ => {}
        }
        let n = self.finished.len();
        let a = self.aligning.get_or_insert_with(|| Alignment {
            start,
            arrived: vec![false; n],
        });
        a.arrived[i] = true;
        out.push(Decision::Block(i));
        self.check_aligned(out);
    }

    fn check_aligned(&mut self, out: &mut Vec<Decision>) {
        if !self
            .aligning
            .as_ref()
            .is_some_and(|a| self.complete(&a.arrived))
        {
            return;
        }
        if let Some(a) = self.aligning.take() {
            out.push(Decision::UnblockAll);
            self.snapshotted(a.start.barrier.id);
            out.push(Decision::SnapshotAligned(a.start));
        }
    }

    fn unaligned(&mut self, i: usize, start: Start, out: &mut Vec<Decision>) {
        let b = start.barrier;
        if let Some(c) = self.captures.get_mut(&b.id) {
            c[i] = Capture::Done;
            out.push(Decision::CaptureOvertaken {
                id: b.id,
                input: i,
                count: b.overtaken,
            });
            self.finish_captures(out);
            return;
        }
        if b.id <= self.last_snapshot {
            return;
        }
        // The first barrier `n` here, or the upstream switched to unaligned
        // while this checkpoint was being aligned here.
        let (arrived, start) = match self.aligning.take() {
            Some(a) if a.start.barrier.id == b.id => (
                a.arrived,
                Start {
                    barrier: b,
                    ..a.start
                },
            ),
            _ => (vec![false; self.finished.len()], start),
        };
        out.push(Decision::UnblockAll);
        let inputs = self.capture_plan(&arrived, Some(i));
        self.begin_capture(start, inputs, Some((i, b.overtaken)), out);
    }

    /// Per input: captured (its barrier has not arrived) or done.
    fn capture_plan(&self, arrived: &[bool], now: Option<usize>) -> Vec<Capture> {
        (0..self.finished.len())
            .map(|j| {
                if Some(j) == now || arrived[j] || self.finished[j] {
                    Capture::Done
                } else {
                    Capture::All
                }
            })
            .collect()
    }

    fn begin_capture(
        &mut self,
        start: Start,
        inputs: Vec<Capture>,
        overtaken: Option<(usize, usize)>,
        out: &mut Vec<Decision>,
    ) {
        let id = start.barrier.id;
        self.snapshotted(id);
        out.push(Decision::SnapshotUnaligned { start, overtaken });
        self.captures.insert(id, inputs);
        self.finish_captures(out);
    }

    fn finish_captures(&mut self, out: &mut Vec<Decision>) {
        let done: Vec<u64> = self
            .captures
            .iter()
            .filter(|(_, c)| c.iter().all(|s| *s == Capture::Done))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.captures.remove(&id);
            out.push(Decision::CaptureComplete(id));
        }
    }

    /// Every input has delivered the barrier or has ended.
    fn complete(&self, arrived: &[bool]) -> bool {
        arrived
            .iter()
            .zip(&self.finished)
            .all(|(got, ended)| *got || *ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    const T0: u64 = 1_000_000;

    fn barrier(id: u64) -> Barrier {
        Barrier {
            id,
            timestamp_ms: T0,
            savepoint: false,
            stop_without_drain: false,
            unaligned: false,
            overtaken: 0,
        }
    }

    fn unaligned(id: u64, overtaken: usize) -> Barrier {
        Barrier {
            unaligned: true,
            overtaken,
            ..barrier(id)
        }
    }

    /// Drives a handler with a fixed clock: every event at the same instant,
    /// `T0 + 5` ms on the wall clock.
    struct Harness {
        h: BarrierHandler,
        now: Instant,
    }

    impl Harness {
        fn new(mode: BarrierMode, inputs: usize) -> Self {
            Harness {
                h: BarrierHandler::new(mode, inputs),
                now: Instant::now(),
            }
        }
        fn barrier(&mut self, i: usize, b: Barrier) -> Vec<Decision> {
            self.h.on_barrier(i, b, self.now, T0 + 5)
        }
        fn start(&self, b: Barrier) -> Start {
            Start {
                barrier: b,
                first_at: self.now,
                start_delay: 5.0,
            }
        }
    }

    /// Ids of the checkpoints snapshotted by these decisions.
    fn snapshots(d: &[Decision]) -> Vec<u64> {
        d.iter()
            .filter_map(|d| match d {
                SnapshotAligned(s) | SnapshotUnaligned { start: s, .. } => Some(s.barrier.id),
                _ => None,
            })
            .collect()
    }

    /// Invariant 2: barrier n on input c blocks c until n has arrived on
    /// every input; then all inputs are unblocked and the snapshot is taken.
    #[test]
    fn aligned_blocks_each_input_until_the_last_barrier() {
        let mut t = Harness::new(BarrierMode::Aligned, 3);
        assert_eq!(t.barrier(1, barrier(1)), vec![Block(1)]);
        assert!(t.h.is_aligning());
        assert_eq!(t.barrier(0, barrier(1)), vec![Block(0)]);
        let b = barrier(1);
        assert_eq!(
            t.barrier(2, b),
            vec![Block(2), UnblockAll, SnapshotAligned(t.start(b))]
        );
        assert!(!t.h.is_aligning());
        // A repeated barrier of a checkpoint already taken changes nothing.
        assert_eq!(t.barrier(0, barrier(1)), vec![]);
    }

    /// An ended input does not hold an alignment back, whether it ended
    /// before the barrier arrived elsewhere or during the alignment.
    #[test]
    fn aligned_ignores_inputs_that_ended() {
        let mut t = Harness::new(BarrierMode::Aligned, 3);
        assert_eq!(t.h.on_input_finished(2), vec![]);
        assert_eq!(t.barrier(0, barrier(4)), vec![Block(0)]);
        let d = t.h.on_input_finished(1);
        assert_eq!(d, vec![UnblockAll, SnapshotAligned(t.start(barrier(4)))]);
    }

    /// A newer barrier cancels an abandoned alignment; an older one is stale
    /// and must not count as the newer checkpoint's barrier on its input.
    #[test]
    fn aligned_newer_barrier_cancels_and_stale_barrier_is_ignored() {
        let mut t = Harness::new(BarrierMode::Aligned, 2);
        assert_eq!(t.barrier(0, barrier(1)), vec![Block(0)]);
        assert_eq!(t.barrier(0, barrier(2)), vec![UnblockAll, Block(0)]);
        // Checkpoint 1's barrier on input 1 arrives late: input 1 must go on
        // reading (its records before barrier 2 belong to checkpoint 2).
        assert_eq!(t.barrier(1, barrier(1)), vec![]);
        let b = barrier(2);
        assert_eq!(
            t.barrier(1, b),
            vec![Block(1), UnblockAll, SnapshotAligned(t.start(b))]
        );
    }

    /// An abort ends the alignment and unblocks the inputs.
    #[test]
    fn abort_ends_the_alignment() {
        let mut t = Harness::new(BarrierMode::Aligned, 2);
        t.barrier(0, barrier(3));
        assert_eq!(t.h.on_abort(2), vec![]);
        assert_eq!(t.h.on_abort(3), vec![UnblockAll]);
        assert!(!t.h.is_aligning());
        // Checkpoint 4 aligns from scratch.
        assert_eq!(t.barrier(1, barrier(4)), vec![Block(1)]);
    }

    /// Invariant 3: the first barrier n snapshots at once; batches from
    /// inputs whose barrier n has not arrived are captured, and the batches
    /// each later barrier overtook are added; the capture completes when
    /// every input is done.
    #[test]
    fn unaligned_snapshots_on_the_first_barrier_and_captures_the_rest() {
        let mut t = Harness::new(BarrierMode::Unaligned, 3);
        assert!(!t.h.is_capturing());
        let b = unaligned(1, 2);
        assert_eq!(
            t.barrier(1, b),
            vec![
                UnblockAll,
                SnapshotUnaligned {
                    start: t.start(b),
                    overtaken: Some((1, 2)),
                }
            ]
        );
        assert_eq!(t.h.capturing(0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.h.capturing(1).count(), 0);
        assert_eq!(t.h.capturing(2).collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            t.barrier(0, unaligned(1, 7)),
            vec![CaptureOvertaken {
                id: 1,
                input: 0,
                count: 7
            }]
        );
        assert_eq!(t.h.capturing(0).count(), 0);
        assert_eq!(
            t.barrier(2, unaligned(1, 0)),
            vec![
                CaptureOvertaken {
                    id: 1,
                    input: 2,
                    count: 0
                },
                CaptureComplete(1)
            ]
        );
        assert!(!t.h.is_capturing());
        assert_eq!(t.barrier(2, unaligned(1, 0)), vec![]);
    }

    /// Several unaligned checkpoints in flight: each input's batches belong
    /// to every checkpoint whose barrier has not passed on that input.
    #[test]
    fn unaligned_captures_several_checkpoints_in_flight() {
        let mut t = Harness::new(BarrierMode::Unaligned, 2);
        assert_eq!(snapshots(&t.barrier(0, unaligned(1, 0))), vec![1]);
        assert_eq!(snapshots(&t.barrier(0, unaligned(2, 0))), vec![2]);
        assert_eq!(t.h.capturing(1).collect::<Vec<_>>(), vec![1, 2]);
        let d = t.barrier(1, unaligned(1, 3));
        assert_eq!(d.last(), Some(&CaptureComplete(1)));
        assert_eq!(t.h.capturing(1).collect::<Vec<_>>(), vec![2]);
        // Input 1 ends before barrier 2: nothing more to capture for 2.
        assert_eq!(t.h.on_input_finished(1), vec![CaptureComplete(2)]);
    }

    /// A single-input (or all-other-inputs-ended) subtask completes its
    /// unaligned capture at once: only the overtaken batches are channel state.
    #[test]
    fn unaligned_single_input_completes_at_once() {
        let mut t = Harness::new(BarrierMode::Unaligned, 1);
        let b = unaligned(5, 4);
        assert_eq!(
            t.barrier(0, b),
            vec![
                UnblockAll,
                SnapshotUnaligned {
                    start: t.start(b),
                    overtaken: Some((0, 4)),
                },
                CaptureComplete(5)
            ]
        );
    }

    /// An aborted unaligned checkpoint captures nothing more.
    #[test]
    fn abort_drops_a_capture() {
        let mut t = Harness::new(BarrierMode::Unaligned, 2);
        t.barrier(0, unaligned(1, 0));
        assert!(t.h.is_capturing());
        assert_eq!(t.h.on_abort(1), vec![]);
        assert!(!t.h.is_capturing());
        assert_eq!(t.barrier(1, unaligned(1, 0)), vec![]);
    }

    /// Savepoints are aligned in every mode.
    #[test]
    fn savepoints_are_always_aligned() {
        for mode in [
            BarrierMode::Unaligned,
            BarrierMode::AtLeastOnce,
            BarrierMode::AlignedThenUnaligned(Duration::ZERO),
        ] {
            let mut t = Harness::new(mode, 2);
            let sp = Barrier {
                savepoint: true,
                ..barrier(9)
            };
            assert_eq!(t.barrier(0, sp), vec![Block(0)], "{mode:?}");
            assert_eq!(t.h.alignment_deadline(u64::MAX), None, "{mode:?}");
            assert_eq!(snapshots(&t.barrier(1, sp)), vec![9], "{mode:?}");
        }
    }

    /// Aligned with timeout: the deadline counts from the trigger; when it
    /// fires, inputs whose barrier arrived are done and the others captured.
    #[test]
    fn aligned_with_timeout_switches_to_unaligned() {
        let timeout = Duration::from_millis(100);
        let mut t = Harness::new(BarrierMode::AlignedThenUnaligned(timeout), 3);
        assert_eq!(t.h.alignment_deadline(T0), None);
        let b = barrier(2);
        assert_eq!(t.barrier(0, b), vec![Block(0)]);
        assert_eq!(
            t.h.alignment_deadline(T0 + 30),
            Some(Duration::from_millis(70))
        );
        assert_eq!(t.h.alignment_deadline(T0 + 500), Some(Duration::ZERO));
        assert_eq!(
            t.h.on_alignment_timeout(),
            vec![
                UnblockAll,
                SnapshotUnaligned {
                    start: t.start(b),
                    overtaken: None,
                }
            ]
        );
        assert_eq!(t.h.capturing(0).count(), 0);
        assert_eq!(t.h.capturing(1).collect::<Vec<_>>(), vec![2]);
        assert_eq!(t.h.alignment_deadline(T0 + 30), None);
        // The remaining barriers arrive aligned but complete the capture.
        assert_eq!(
            t.barrier(1, b),
            vec![CaptureOvertaken {
                id: 2,
                input: 1,
                count: 0
            }]
        );
        assert_eq!(t.barrier(2, b).last(), Some(&CaptureComplete(2)));
        // A timer that fires with no alignment does nothing.
        assert_eq!(t.h.on_alignment_timeout(), vec![]);
    }

    /// Aligned with timeout: an unaligned barrier from upstream switches an
    /// alignment in progress, keeping its first arrival and its done inputs.
    #[test]
    fn aligned_with_timeout_follows_an_upstream_switch() {
        let mut t = Harness::new(BarrierMode::AlignedThenUnaligned(Duration::from_secs(9)), 3);
        let b = barrier(1);
        t.barrier(0, b);
        let u = unaligned(1, 3);
        assert_eq!(
            t.barrier(2, u),
            vec![
                UnblockAll,
                SnapshotUnaligned {
                    start: t.start(u),
                    overtaken: Some((2, 3)),
                }
            ]
        );
        assert_eq!(t.h.capturing(0).count(), 0);
        assert_eq!(t.h.capturing(1).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.h.capturing(2).count(), 0);
    }

    /// Invariant 4: at-least-once never blocks; checkpoint n snapshots when
    /// its last barrier arrives, several counted at once.
    #[test]
    fn at_least_once_never_blocks_and_snapshots_on_the_last_barrier() {
        let mut t = Harness::new(BarrierMode::AtLeastOnce, 2);
        assert_eq!(t.barrier(0, barrier(1)), vec![]);
        assert_eq!(t.barrier(0, barrier(2)), vec![]);
        assert!(!t.h.is_aligning());
        assert_eq!(
            t.barrier(1, barrier(1)),
            vec![SnapshotAligned(t.start(barrier(1)))]
        );
        assert_eq!(snapshots(&t.barrier(1, barrier(2))), vec![2]);
        assert_eq!(t.barrier(1, barrier(2)), vec![]);
    }

    /// At-least-once: a newer checkpoint completing here drops the count of
    /// an older one, whose late barrier is then ignored.
    #[test]
    fn at_least_once_newer_checkpoint_subsumes_older_counts() {
        let mut t = Harness::new(BarrierMode::AtLeastOnce, 2);
        t.barrier(0, barrier(1));
        t.barrier(0, barrier(2));
        assert_eq!(t.h.on_abort(1), vec![]);
        t.barrier(0, barrier(3));
        assert_eq!(snapshots(&t.barrier(1, barrier(3))), vec![3]);
        assert_eq!(t.barrier(1, barrier(2)), vec![]);
        assert!(t.h.counting.is_empty());
        // An ended input completes the counts waiting for it.
        t.barrier(0, barrier(4));
        assert_eq!(snapshots(&t.h.on_input_finished(1)), vec![4]);
    }

    /// A checkpoint snapshotted elsewhere (a final checkpoint) ignores its barriers.
    #[test]
    fn snapshotted_checkpoints_ignore_their_barriers() {
        for mode in [
            BarrierMode::Aligned,
            BarrierMode::Unaligned,
            BarrierMode::AtLeastOnce,
        ] {
            let mut t = Harness::new(mode, 1);
            t.h.snapshotted(7);
            assert_eq!(t.barrier(0, unaligned(7, 0)), vec![], "{mode:?}");
            assert_eq!(t.barrier(0, barrier(6)), vec![], "{mode:?}");
            assert_eq!(snapshots(&t.barrier(0, barrier(8))), vec![8], "{mode:?}");
        }
    }

    /// Random event orders (fixed seeds): every checkpoint whose barrier
    /// reached all inputs is snapshotted exactly once, in increasing order,
    /// no input stays blocked after the last snapshot, and in aligned mode
    /// no input delivers anything while blocked.
    #[test]
    fn random_orders_snapshot_each_checkpoint_once() {
        for seed in 0..200u64 {
            for mode in [
                BarrierMode::Aligned,
                BarrierMode::Unaligned,
                BarrierMode::AtLeastOnce,
            ] {
                random_run(seed, mode);
            }
        }
    }

    fn random_run(seed: u64, mode: BarrierMode) {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let inputs = 1 + next(3);
        let checkpoints = 1 + next(4) as u64;
        let mut t = Harness::new(mode, inputs);
        let mut pos = vec![1u64; inputs];
        let mut blocked = vec![false; inputs];
        let mut taken = Vec::new();
        while pos.iter().any(|p| *p <= checkpoints) {
            let open: Vec<usize> = (0..inputs)
                .filter(|&i| !blocked[i] && pos[i] <= checkpoints)
                .collect();
            assert!(
                !open.is_empty(),
                "seed {seed} {mode:?}: every open input blocked"
            );
            let i = open[next(open.len())];
            let id = pos[i];
            pos[i] += 1;
            let b = match mode {
                BarrierMode::Unaligned => unaligned(id, next(3)),
                _ => barrier(id),
            };
            for d in t.barrier(i, b) {
                match d {
                    Block(j) => blocked[j] = true,
                    UnblockAll => blocked.iter_mut().for_each(|b| *b = false),
                    SnapshotAligned(s) | SnapshotUnaligned { start: s, .. } => {
                        taken.push(s.barrier.id)
                    }
                    CaptureOvertaken { .. } | CaptureComplete(_) => {}
                }
            }
        }
        let all: Vec<u64> = (1..=checkpoints).collect();
        assert_eq!(taken, all, "seed {seed} {mode:?} inputs {inputs}");
        assert!(blocked.iter().all(|b| !b), "seed {seed} {mode:?}");
        assert!(!t.h.is_capturing(), "seed {seed} {mode:?}");
    }
}
