//! What all subtasks of one job share with the job supervisor and the
//! checkpoint coordinator: the first root-cause failure (the job's error),
//! the processing loops still running (a restart waits until a region's
//! loops have ended), and the job's observers (who is told about its
//! checkpoints and failovers, see `crate::observer`; telemetry is one of
//! them, but nothing here knows it).
//!
//! Its own module, below the subtask, the coordinator and the job, so none
//! of them imports another for it.

use std::sync::{Arc, Mutex};

use crate::observer::Observers;
use crate::Error;

/// Shared by all subtasks of one job: the first root-cause failure.
#[derive(Default)]
pub(crate) struct JobShared {
    failure: Mutex<Option<Error>>,
    /// Processing-loop threads still running (a restart waits for zero).
    live: std::sync::atomic::AtomicUsize,
    /// Per subtask: its processing-loop thread is running.
    task_live: Mutex<std::collections::HashSet<usize>>,
    /// Who is told about the job's checkpoints and failovers (none when
    /// telemetry is off).
    pub(crate) observers: Observers,
}

impl JobShared {
    pub(crate) fn with_observers(observers: Observers) -> Self {
        JobShared {
            observers,
            ..Default::default()
        }
    }

    /// Records `e` unless a failure is already known; a root cause replaces a
    /// mere disconnection (which is a consequence of another failure).
    pub(crate) fn record_failure(&self, e: Error) {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let replace = match &*slot {
            None => true,
            Some(Error::Disconnected(_)) => !matches!(e, Error::Disconnected(_)),
            Some(_) => false,
        };
        if replace {
            *slot = Some(e);
        }
    }

    /// A subtask's processing loop starts: it counts as live until the guard drops.
    pub(crate) fn loop_started(self: &Arc<Self>, task: usize) -> LiveGuard {
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.task_live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task);
        LiveGuard(self.clone(), task)
    }

    pub(crate) fn live_loops(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether any of `tasks` still has a running processing loop.
    pub(crate) fn any_live(&self, tasks: &[usize]) -> bool {
        let live = self.task_live.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().any(|t| live.contains(t))
    }

    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Marks a subtask's loop thread as ended when dropped.
pub(crate) struct LiveGuard(Arc<JobShared>, usize);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0
            .task_live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
        self.0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
