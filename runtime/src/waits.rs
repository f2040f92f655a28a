//! Wait accounting of a subtask: how long it waited for space on an output
//! (back-pressured) and for input (idle). Only the waiting path touches the
//! clock. The data plane ([`crate::exchange`]) records here; the metrics
//! ([`super`]) read it. Depends on nothing else in the crate, so the data
//! plane does not depend on the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The process's monotonic clock origin for wait accounting.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since [`EPOCH`], never zero (zero means "not waiting").
fn mono_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Wait accounting of one subtask, kept across restarts of the subtask.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct SubtaskIo {
    back_pressured_ns: AtomicU64,
    back_pressured_since: AtomicU64,
    idle_ns: AtomicU64,
    idle_since: AtomicU64,
}

/// A wait in progress; its time is added when it is dropped (also when the
/// waiting future is dropped because the subtask was stopped).
pub(crate) struct Waiting<'a> {
    total: &'a AtomicU64,
    since: &'a AtomicU64,
    t0: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.total
            .fetch_add(mono_ns().saturating_sub(self.t0), Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }
}

fn ongoing(total: &AtomicU64, since: &AtomicU64) -> u64 {
    let t = total.load(Ordering::Relaxed);
    match since.load(Ordering::Relaxed) {
        0 => t,
        s => t + mono_ns().saturating_sub(s),
    }
}

impl SubtaskIo {
    /// Starts a wait for space on an output.
    pub(crate) fn back_pressured(&self) -> Waiting<'_> {
        let t0 = mono_ns();
        self.back_pressured_since.store(t0, Ordering::Relaxed);
        Waiting {
            total: &self.back_pressured_ns,
            since: &self.back_pressured_since,
            t0,
        }
    }

    /// Starts a wait for input.
    pub(crate) fn idle(&self) -> Waiting<'_> {
        let t0 = mono_ns();
        self.idle_since.store(t0, Ordering::Relaxed);
        Waiting {
            total: &self.idle_ns,
            since: &self.idle_since,
            t0,
        }
    }

    /// Nanoseconds spent back-pressured so far, the current wait included.
    pub fn back_pressured_ns(&self) -> u64 {
        ongoing(&self.back_pressured_ns, &self.back_pressured_since)
    }

    /// Nanoseconds spent idle so far, the current wait included.
    pub fn idle_ns(&self) -> u64 {
        ongoing(&self.idle_ns, &self.idle_since)
    }

    /// Whether the subtask waits for space on an output right now.
    pub fn is_back_pressured(&self) -> bool {
        self.back_pressured_since.load(Ordering::Relaxed) != 0
    }
}
