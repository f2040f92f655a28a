//! A subtask's wake-ups, shared with the channels around it, and the
//! accounting of its waits (back-pressured, idle) for the metrics.

use std::sync::Arc;

use tokio::sync::Notify;

/// Wake-ups of one subtask, shared with the channels around it.
///
/// `urgent` is raised when an unaligned barrier waits for the subtask (a
/// trigger at a source, a priority barrier at an input). While it is up the
/// subtask's sends do not wait for space: the batch in hand goes out at once
/// (a bounded overshoot of one push), so the subtask gets back to its loop and
/// takes the barrier instead of sitting behind backpressure.
#[derive(Default)]
pub(crate) struct TaskSignals {
    /// Data or a barrier arrived on an input.
    pub gate: Notify,
    /// An unaligned barrier is waiting for this subtask.
    pub urgent: std::sync::atomic::AtomicBool,
    /// Wakes a send blocked on a full channel when `urgent` is raised.
    pub urgent_wake: Notify,
    /// Time this subtask spent back-pressured (waiting for space on an
    /// output) and idle (waiting for input): the job's metrics read it.
    pub io: Arc<crate::waits::SubtaskIo>,
}

impl TaskSignals {
    /// Signals of a subtask whose time is accounted in `io`.
    pub(crate) fn with_io(io: Arc<crate::waits::SubtaskIo>) -> Self {
        TaskSignals {
            io,
            ..TaskSignals::default()
        }
    }

    pub(crate) fn raise_urgent(&self) {
        self.urgent.store(true, std::sync::atomic::Ordering::SeqCst);
        self.urgent_wake.notify_one();
    }

    pub(crate) fn take_urgent(&self) -> bool {
        self.urgent.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn is_urgent(&self) -> bool {
        self.urgent.load(std::sync::atomic::Ordering::SeqCst)
    }
}
