//! The input gate: all input channels of a subtask, read fairly.

use std::sync::Arc;

use super::{Barrier, ChannelReceiver, Event, TaskSignals};
use crate::Result;

/// All input channels of a subtask, read fairly (round-robin). An input can
/// be blocked (aligned checkpoints stop reading an input that delivered its
/// barrier until all inputs have).
pub(crate) struct InputGate {
    inputs: Vec<ChannelReceiver>,
    signals: Arc<TaskSignals>,
    finished: Vec<bool>,
    blocked: Vec<bool>,
    open: usize,
    next: usize,
}

impl InputGate {
    pub(crate) fn new(inputs: Vec<ChannelReceiver>, signals: Arc<TaskSignals>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            signals,
            finished: vec![false; n],
            blocked: vec![false; n],
            open: n,
            next: 0,
        }
    }

    /// Number of inputs.
    pub(crate) fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether every input has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.open == 0
    }

    /// Stops or resumes reading input `i`.
    pub(crate) fn set_blocked(&mut self, i: usize, blocked: bool) {
        self.blocked[i] = blocked;
    }

    /// Resumes every input.
    pub(crate) fn unblock_all(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }

    /// The first `k` data batches queued on input `i`, serialized, left in place.
    pub(crate) fn peek_encode(
        &self,
        i: usize,
        k: usize,
        encode: crate::record::EncodeFn,
    ) -> Result<Vec<Vec<u8>>> {
        self.inputs[i].peek_encode(k, encode)
    }

    /// An unaligned barrier waiting at the front of any unfinished input
    /// (blocked or not): these are taken before anything else.
    pub(crate) fn take_priority(&mut self) -> Option<(usize, Barrier)> {
        (0..self.inputs.len())
            .filter(|&i| !self.finished[i])
            .find_map(|i| self.inputs[i].try_recv_priority().map(|b| (i, b)))
    }

    /// The next event of an unblocked, unfinished input, if one is queued.
    pub(crate) fn try_next(&mut self) -> Result<Option<(usize, Event)>> {
        let n = self.inputs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.finished[i] || self.blocked[i] {
                continue;
            }
            if let Some(ev) = self.inputs[i].try_recv()? {
                self.next = (i + 1) % n;
                if matches!(ev, Event::EndOfStream) {
                    self.finished[i] = true;
                    self.open -= 1;
                }
                return Ok(Some((i, ev)));
            }
        }
        Ok(None)
    }

    /// Waits for the next event of an unblocked, unfinished input. With every
    /// open input blocked this waits until `wake` (a timer) fires: returns `None` then.
    pub(crate) async fn next_or(
        &mut self,
        wake: impl std::future::Future<Output = ()>,
    ) -> Result<Option<(usize, Event)>> {
        tokio::pin!(wake);
        let signals = self.signals.clone();
        // Started at the first wait for input: idle time (metrics).
        let mut _waiting: Option<crate::waits::Waiting<'_>> = None;
        loop {
            let notified = signals.gate.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(ev) = self.try_next()? {
                return Ok(Some(ev));
            }
            if _waiting.is_none() {
                _waiting = Some(signals.io.idle());
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut wake => return Ok(None),
            }
        }
    }
}
