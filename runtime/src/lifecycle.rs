//! How a job's life goes: its [`JobStatus`], when it reached each status,
//! its failures (Flink's exception history) and its restores.
//!
//! The job supervisor writes a job's [`Lifecycle`]; the handle, the REST
//! server and the metrics read it. It is its own module, below
//! [`crate::job`] and [`crate::metrics`], so that the metrics read a job's
//! status without importing the job module (which imports them). The public
//! types are re-exported from [`crate::job`] (`weir_runtime::job::JobStatus`,
//! also in the prelude).

use std::sync::Mutex;

/// The state of a job, Flink's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobStatus {
    /// Subtasks are running (a region may be restarting).
    Running,
    /// The whole job is restarting after a failure.
    Restarting,
    /// A cancel was requested; subtasks are stopping.
    Cancelling,
    /// Every subtask finished its input.
    Finished,
    /// The job failed (the restart strategy gave up, or restarts are off).
    Failed,
    /// The job was cancelled.
    Canceled,
}

impl JobStatus {
    /// Flink's name: `RUNNING`, `RESTARTING`, `CANCELLING`, `FINISHED`, `FAILED`, `CANCELED`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "RUNNING",
            JobStatus::Restarting => "RESTARTING",
            JobStatus::Cancelling => "CANCELLING",
            JobStatus::Finished => "FINISHED",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Finished | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure of a job and what it caused (Flink's exception history).
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    /// When it happened (ms since the epoch).
    pub timestamp: u64,
    /// The error.
    pub message: String,
    /// The failed subtask (`chain name (index)`), when one failed.
    pub task: Option<String>,
    /// What the failure led to: `region <r> restart`, `full restart` or `job failed`.
    pub action: String,
}

/// A restore of the job from a checkpoint (Flink's `latest.restored`).
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRecord {
    /// The checkpoint id.
    pub id: u64,
    /// When the restore happened (ms since the epoch).
    pub timestamp: u64,
    /// The checkpoint's directory.
    pub path: std::path::PathBuf,
}

/// How a job's life went: its status, the time of each transition, its
/// failures and restores. Shared by the job supervisor (which writes it) and
/// every reader (handle, REST server).
#[derive(Debug)]
pub(crate) struct Lifecycle {
    inner: Mutex<LifecycleInner>,
}

#[derive(Debug)]
struct LifecycleInner {
    status: JobStatus,
    /// When the job first reached each status.
    timestamps: Vec<(JobStatus, u64)>,
    /// When the status last changed.
    last_change: u64,
    end_ms: Option<u64>,
    failures: std::collections::VecDeque<FailureRecord>,
    failures_dropped: bool,
    restored: Option<RestoreRecord>,
    restores: u64,
}

/// Failures kept in the history.
const MAX_FAILURES: usize = 100;

impl Lifecycle {
    pub(crate) fn new(restored: Option<RestoreRecord>) -> Self {
        let now = crate::checkpoint::now_ms();
        Lifecycle {
            inner: Mutex::new(LifecycleInner {
                status: JobStatus::Running,
                timestamps: vec![(JobStatus::Running, now)],
                last_change: now,
                end_ms: None,
                failures: Default::default(),
                failures_dropped: false,
                restores: u64::from(restored.is_some()),
                restored,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LifecycleInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_status(&self, status: JobStatus) {
        let mut l = self.lock();
        if l.status == status || l.status.is_terminal() {
            return;
        }
        let now = crate::checkpoint::now_ms();
        l.status = status;
        l.last_change = now;
        if !l.timestamps.iter().any(|(s, _)| *s == status) {
            l.timestamps.push((status, now));
        }
        if status.is_terminal() {
            l.end_ms = Some(now);
        }
    }

    pub(crate) fn status(&self) -> JobStatus {
        self.lock().status
    }

    /// When the job ended (ms since the epoch).
    pub(crate) fn end_ms(&self) -> Option<u64> {
        self.lock().end_ms
    }

    /// The first time the job reached each status (ms since the epoch).
    pub(crate) fn timestamps(&self) -> Vec<(JobStatus, u64)> {
        self.lock().timestamps.clone()
    }

    /// When the status last changed (ms since the epoch).
    pub(crate) fn last_change(&self) -> u64 {
        self.lock().last_change
    }

    pub(crate) fn record_failure(&self, f: FailureRecord) {
        let mut l = self.lock();
        if l.failures.len() == MAX_FAILURES {
            l.failures.pop_front();
            l.failures_dropped = true;
        }
        l.failures.push_back(f);
    }

    /// Failures, oldest first, and whether older ones were dropped.
    pub(crate) fn failures(&self) -> (Vec<FailureRecord>, bool) {
        let l = self.lock();
        (l.failures.iter().cloned().collect(), l.failures_dropped)
    }

    pub(crate) fn record_restore(&self, r: RestoreRecord) {
        let mut l = self.lock();
        l.restores += 1;
        l.restored = Some(r);
    }

    /// The latest restore and how many there were.
    pub(crate) fn restores(&self) -> (Option<RestoreRecord>, u64) {
        let l = self.lock();
        (l.restored.clone(), l.restores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_keeps_first_times_and_ends_once() {
        let l = Lifecycle::new(None);
        assert_eq!(l.status(), JobStatus::Running);
        for s in [
            JobStatus::Restarting,
            JobStatus::Running,
            JobStatus::Restarting,
            JobStatus::Running,
        ] {
            l.set_status(s);
        }
        assert_eq!(
            l.timestamps().iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![JobStatus::Running, JobStatus::Restarting],
            "one entry per status however often it recurs"
        );
        assert_eq!(l.end_ms(), None);
        l.set_status(JobStatus::Canceled);
        l.set_status(JobStatus::Running);
        assert_eq!(l.status(), JobStatus::Canceled, "an ended job stays ended");
        assert!(l.end_ms().is_some());
        assert_eq!(l.restores(), (None, 0));
    }

    #[test]
    fn failures_are_bounded() {
        let l = Lifecycle::new(None);
        for i in 0..MAX_FAILURES + 5 {
            l.record_failure(FailureRecord {
                timestamp: i as u64,
                message: format!("failure {i}"),
                task: None,
                action: "full restart".into(),
            });
        }
        let (f, dropped) = l.failures();
        assert_eq!(f.len(), MAX_FAILURES);
        assert!(dropped);
        assert_eq!(f[0].timestamp, 5, "the oldest are dropped");
    }
}
