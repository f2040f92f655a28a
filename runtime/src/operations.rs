//! Asynchronous operations: what a client asked of a job over REST and polls
//! for by request id (Flink's "asynchronous operations": triggered
//! checkpoints, savepoints, stop-with-savepoint), and the one promise they
//! make.
//!
//! # The result reaches the client
//!
//! An operation that ends the job (stop, cancel with a savepoint, a plain
//! cancel) would otherwise race the process: the job ends, the program
//! returns from [`crate::job::JobHandle::wait`], the process exits and takes
//! the REST server with it, and the client that asked polls a closed port.
//! So every accepted operation counts as *unread* until a client was served
//! its final result (or, for a cancel, the job's terminal state), and the
//! job's end waits while anything is unread, bounded by
//! `rest.async.result-linger` ([`linger`] decides; `JobHandle::wait_async`
//! sleeps). Flink's application mode keeps its cluster up until the job's
//! result was fetched for the same reason.
//!
//! An operation that ends the job completes when the job has reached its
//! terminal state, as Flink's stop-with-savepoint does, and its result names
//! that state, so the client needs no second request after it.
//!
//! I/O is elsewhere: this module is bookkeeping behind short locks, and the
//! pure decision [`linger`]; it depends on nothing else in the crate.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Operations of each kind a job remembers; the oldest are forgotten first.
pub const MAX_OPERATIONS: usize = 1000;

/// The state of a savepoint (or stop) requested over REST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SavepointOp {
    /// Running (for a stop or cancel: the savepoint, then the job's end).
    InProgress,
    /// The savepoint is complete at `location`; `job_state` is the state the
    /// job ended in (Flink's name, `FINISHED`) when the operation ended it
    /// (stop, cancel-job).
    Completed {
        location: PathBuf,
        job_state: Option<&'static str>,
    },
    /// The savepoint failed (the job goes on).
    Failed(String),
}

impl SavepointOp {
    /// Whether this is the operation's final result.
    pub(crate) fn is_final(&self) -> bool {
        !matches!(self, SavepointOp::InProgress)
    }
}

struct Entry<T> {
    id: String,
    value: T,
    /// A client was served this operation's final result.
    read: bool,
}

/// The operations of one kind, by request id.
pub(crate) struct Operations<T> {
    entries: Mutex<VecDeque<Entry<T>>>,
}

impl<T> Default for Operations<T> {
    fn default() -> Self {
        Operations {
            entries: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T: Clone> Operations<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry<T>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an accepted operation.
    pub(crate) fn accept(&self, id: String, value: T) {
        let mut e = self.lock();
        if e.len() >= MAX_OPERATIONS {
            e.pop_front();
        }
        e.push_back(Entry {
            id,
            value,
            read: false,
        });
    }

    /// Replaces what is known of operation `id` (its progress or result).
    pub(crate) fn update(&self, id: &str, value: T) {
        if let Some(e) = self.lock().iter_mut().find(|e| e.id == id) {
            e.value = value;
        }
    }

    /// What is known of operation `id`.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.lock()
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.value.clone())
    }

    /// A client was served operation `id`'s final result.
    pub(crate) fn mark_read(&self, id: &str) {
        if let Some(e) = self.lock().iter_mut().find(|e| e.id == id) {
            e.read = true;
        }
    }

    /// Operations whose final result no client was served yet.
    pub(crate) fn unread(&self) -> usize {
        self.lock().iter().filter(|e| !e.read).count()
    }
}

/// Every asynchronous operation of one job.
#[derive(Default)]
pub(crate) struct JobOperations {
    /// Checkpoints triggered on request: request id -> checkpoint id (the
    /// status is the checkpoint's).
    pub(crate) checkpoints: Operations<u64>,
    /// Savepoints and stops requested over REST.
    pub(crate) savepoints: Operations<SavepointOp>,
    /// Cancels requested over REST since a client last saw the job ended.
    cancels_unseen: AtomicUsize,
}

impl JobOperations {
    /// A client asked for the job to be cancelled: it will look for the end.
    pub(crate) fn cancel_requested(&self) {
        self.cancels_unseen.fetch_add(1, Ordering::Relaxed);
    }

    /// A client was served the job's terminal state.
    pub(crate) fn end_seen(&self) {
        self.cancels_unseen.store(0, Ordering::Relaxed);
    }

    /// What clients asked for and have not yet been told the outcome of.
    pub(crate) fn unread(&self) -> usize {
        self.checkpoints.unread()
            + self.savepoints.unread()
            + self.cancels_unseen.load(Ordering::Relaxed)
    }
}

/// Whether a job that has ended keeps its REST server answering a while
/// longer: while some result is unread and the linger has not passed.
pub fn linger(unread: usize, ended_for: Duration, limit: Duration) -> bool {
    unread > 0 && ended_for < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_unread_until_its_final_result_was_served() {
        let ops = Operations::default();
        ops.accept("a".into(), SavepointOp::InProgress);
        ops.accept("b".into(), SavepointOp::InProgress);
        assert_eq!(ops.unread(), 2);
        assert_eq!(ops.get("a"), Some(SavepointOp::InProgress));
        let done = SavepointOp::Completed {
            location: "/sp/savepoint-1".into(),
            job_state: Some("FINISHED"),
        };
        ops.update("a", done.clone());
        assert_eq!(ops.get("a"), Some(done));
        ops.mark_read("a");
        assert_eq!(ops.unread(), 1);
        assert_eq!(ops.get("nope"), None);
        ops.mark_read("nope");
        assert_eq!(ops.unread(), 1);
    }

    #[test]
    fn the_oldest_operations_are_forgotten() {
        let ops = Operations::default();
        for i in 0..MAX_OPERATIONS + 5 {
            ops.accept(i.to_string(), i);
        }
        assert_eq!(ops.get("0"), None);
        assert_eq!(ops.get("4"), None);
        assert_eq!(ops.get("5"), Some(5));
        assert_eq!(ops.unread(), MAX_OPERATIONS);
    }

    #[test]
    fn a_cancel_is_unread_until_a_client_saw_the_end() {
        let ops = JobOperations::default();
        assert_eq!(ops.unread(), 0);
        ops.cancel_requested();
        ops.cancel_requested();
        ops.checkpoints.accept("c".into(), 7);
        assert_eq!(ops.unread(), 3);
        ops.end_seen();
        assert_eq!(ops.unread(), 1);
        ops.checkpoints.mark_read("c");
        assert_eq!(ops.unread(), 0);
    }

    #[test]
    fn lingers_only_while_something_is_unread_and_within_the_limit() {
        let s = Duration::from_secs;
        assert!(linger(1, s(0), s(5)));
        assert!(linger(3, s(4), s(5)));
        assert!(!linger(1, s(5), s(5)));
        assert!(!linger(0, s(0), s(5)));
        assert!(!linger(1, s(0), s(0)));
    }

    #[test]
    fn final_results() {
        assert!(!SavepointOp::InProgress.is_final());
        assert!(SavepointOp::Failed("x".into()).is_final());
    }
}
