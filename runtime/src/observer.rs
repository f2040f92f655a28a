//! Observers of a running job: who is told about its checkpoints and
//! failovers, without the job, the coordinator or the subtasks knowing who.
//!
//! The job supervisor, the checkpoint coordinator and the subtasks report
//! events to the job's [`Observers`] (kept in `crate::job_shared::JobShared`),
//! which hands each event to every registered [`JobObserver`] in turn.
//! Checkpoint events are defined with the protocol
//! ([`crate::checkpoint::events::CheckpointObserver`]); failover events here
//! ([`FailoverObserver`]). A job's observers are fixed when it is built
//! ([`crate::stream`] registers the job's [`crate::telemetry::Telemetry`]
//! when telemetry is on); with none registered, every report is a loop over
//! nothing, and callers skip preparing an event's data
//! ([`Observers::is_empty`]).
//!
//! Observers are called on actors and processing loops, a few times per
//! checkpoint or failover, never per record: they must be quick and must
//! not block.

use std::sync::Arc;

pub(crate) use crate::checkpoint::events::CheckpointObserver;
use crate::checkpoint::events::{CheckpointEnded, SubtaskAcked, SubtaskNotified};

/// Receives the failover events of a job. Every method does nothing by
/// default. `region` is the failover region's index, `None` when the whole
/// job restarts.
pub(crate) trait FailoverObserver: Send + Sync {
    /// A failure: region `region` with subtasks `members` is about to be
    /// cancelled and restarted (after the restart strategy's delay).
    /// `failed` names the subtask that failed, when known; `restart` is the
    /// job's restart count after this restart.
    fn failover_started(
        &self,
        region: Option<usize>,
        members: &[usize],
        failed: Option<&str>,
        cause: &str,
        restart: u64,
    ) {
        let _ = (region, members, failed, cause, restart);
    }

    /// Every old subtask of the failover's region has stopped.
    fn failover_stopped(&self, region: Option<usize>) {
        let _ = region;
    }

    /// The restart (after the strategy's delay) begins: the checkpoint is
    /// read next. `restart` is the job's restart count now.
    fn failover_restoring(&self, region: Option<usize>, restart: u64) {
        let _ = (region, restart);
    }

    /// The region's new subtasks are deployed, restored from checkpoint
    /// `restored` of this job (`None`: from their start, or from a
    /// checkpoint of another job).
    fn failover_deployed(&self, region: Option<usize>, restored: Option<u64>) {
        let _ = (region, restored);
    }

    /// Subtask `task` has opened (state restored, channel state replayed)
    /// and runs: reported by every subtask when it starts, restarted or not.
    fn subtask_running(&self, task: usize) {
        let _ = task;
    }
}

/// An observer of every event of a job: implemented by any type that
/// implements both event traits.
pub(crate) trait JobObserver: CheckpointObserver + FailoverObserver {}

impl<T: CheckpointObserver + FailoverObserver> JobObserver for T {}

/// The observers of one job: each event goes to each of them, in
/// registration order. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Observers(Vec<Arc<dyn JobObserver>>);

impl Observers {
    /// No observer: every event is dropped.
    pub(crate) fn none() -> Self {
        Observers::default()
    }

    /// Adds `observer`; it receives events after those added before.
    pub(crate) fn register(&mut self, observer: Arc<dyn JobObserver>) {
        self.0.push(observer);
    }

    /// Whether no observer is registered (callers skip preparing events).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("count", &self.0.len())
            .finish()
    }
}

impl CheckpointObserver for Observers {
    fn subtask_acked(&self, acked: &SubtaskAcked<'_>) {
        for o in &self.0 {
            o.subtask_acked(acked);
        }
    }

    fn checkpoint_ended(&self, ended: &CheckpointEnded<'_>) {
        for o in &self.0 {
            o.checkpoint_ended(ended);
        }
    }

    fn subtask_notified(&self, notified: &SubtaskNotified<'_>) {
        for o in &self.0 {
            o.subtask_notified(notified);
        }
    }
}

impl FailoverObserver for Observers {
    fn failover_started(
        &self,
        region: Option<usize>,
        members: &[usize],
        failed: Option<&str>,
        cause: &str,
        restart: u64,
    ) {
        for o in &self.0 {
            o.failover_started(region, members, failed, cause, restart);
        }
    }

    fn failover_stopped(&self, region: Option<usize>) {
        for o in &self.0 {
            o.failover_stopped(region);
        }
    }

    fn failover_restoring(&self, region: Option<usize>, restart: u64) {
        for o in &self.0 {
            o.failover_restoring(region, restart);
        }
    }

    fn failover_deployed(&self, region: Option<usize>, restored: Option<u64>) {
        for o in &self.0 {
            o.failover_deployed(region, restored);
        }
    }

    fn subtask_running(&self, task: usize) {
        for o in &self.0 {
            o.subtask_running(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl CheckpointObserver for Log {
        fn subtask_notified(&self, n: &SubtaskNotified<'_>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("notified {} {}", n.id, n.task));
        }
    }

    impl FailoverObserver for Log {
        fn failover_started(
            &self,
            region: Option<usize>,
            members: &[usize],
            failed: Option<&str>,
            _cause: &str,
            restart: u64,
        ) {
            self.0.lock().unwrap().push(format!(
                "started {region:?} {members:?} {failed:?} {restart}"
            ));
        }
    }

    #[test]
    fn every_observer_gets_every_event_in_order() {
        let (a, b) = (Arc::new(Log::default()), Arc::new(Log::default()));
        let mut obs = Observers::none();
        assert!(obs.is_empty());
        obs.register(a.clone());
        obs.register(b.clone());
        assert!(!obs.is_empty());
        let now = std::time::Instant::now();
        obs.subtask_notified(&SubtaskNotified {
            id: 3,
            task: 1,
            chain: "a -> b",
            index: 0,
            start: now,
            end: now,
            error: None,
        });
        obs.failover_started(Some(0), &[0, 1], Some("a (0)"), "boom", 1);
        // Events an observer does not implement are dropped.
        obs.failover_deployed(Some(0), Some(2));
        obs.subtask_running(1);
        for log in [a, b] {
            assert_eq!(
                *log.0.lock().unwrap(),
                ["notified 3 1", "started Some(0) [0, 1] Some(\"a (0)\") 1"]
            );
        }
    }
}
