//! The process's job registry: every job started in this process, running
//! or ended, for the REST server and any other reader that has no
//! [`crate::job::JobHandle`].
//!
//! Jobs are registered by `Env::execute_async`. The registry keeps every
//! running job and the newest [`MAX_ENDED`] ended ones (Flink's job store
//! keeps finished jobs for the web UI too); older ended jobs are dropped.
//! An entry holds only shared, read-mostly state (statistics, counters, the
//! supervisor's actor reference): never a runtime or a thread.

use std::sync::{Arc, LazyLock, Mutex};

use crate::job::JobCore;

/// Ended jobs kept for the REST API.
pub const MAX_ENDED: usize = 100;

static JOBS: LazyLock<Mutex<Vec<Arc<JobCore>>>> = LazyLock::new(Mutex::default);

fn jobs() -> std::sync::MutexGuard<'static, Vec<Arc<JobCore>>> {
    JOBS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a job; drops the oldest ended jobs beyond [`MAX_ENDED`].
pub(crate) fn register(job: Arc<JobCore>) {
    let mut all = jobs();
    let ended = all.iter().filter(|j| j.status().is_terminal()).count();
    if ended >= MAX_ENDED {
        let mut drop = ended + 1 - MAX_ENDED;
        all.retain(|j| {
            if drop > 0 && j.status().is_terminal() {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }
    all.push(job);
}

/// Every registered job, oldest first.
pub(crate) fn all() -> Vec<Arc<JobCore>> {
    jobs().clone()
}

/// The job with this id.
pub(crate) fn get(job_id: &str) -> Option<Arc<JobCore>> {
    jobs().iter().find(|j| j.job_id == job_id).cloned()
}

/// Ids and names of every registered job, oldest first.
pub fn job_ids() -> Vec<(String, String)> {
    jobs()
        .iter()
        .map(|j| (j.job_id.clone(), j.name.clone()))
        .collect()
}
