//! Any source, paced: at most about `records_per_second` over all of its
//! subtasks (each subtask takes its share). For demos and failure tests
//! that need a job over a real input to run long enough to be killed in
//! the middle; positions, splits and notifications are the wrapped source's.

use std::time::{Duration, Instant};

use weir_runtime::operator::{SourceContext, SourceFunction, SourceStatus};
use weir_runtime::state::OperatorStateStore;
use weir_runtime::Result;

/// `inner`, paced to about `records_per_second` over all subtasks.
#[derive(Clone)]
pub struct Paced<S> {
    inner: S,
    rate: f64,
    started: Option<Instant>,
    emitted: u64,
}

impl<S> Paced<S> {
    /// Paces `inner` to about `records_per_second` (over all subtasks).
    pub fn new(inner: S, records_per_second: f64) -> Self {
        Paced {
            inner,
            rate: records_per_second.max(0.001),
            started: None,
            emitted: 0,
        }
    }
}

impl<T, S: SourceFunction<T>> SourceFunction<T> for Paced<S> {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        self.rate /= ctx.runtime.parallelism.max(1) as f64;
        self.inner.open(ctx)
    }

    fn poll_next(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = (started.elapsed().as_secs_f64() * self.rate) as u64;
        let allowed = due.saturating_sub(self.emitted);
        if allowed == 0 {
            let wait = (self.emitted + 1) as f64 / self.rate - started.elapsed().as_secs_f64();
            return Ok(SourceStatus::Idle(Duration::from_secs_f64(
                wait.clamp(0.0005, 0.1),
            )));
        }
        let max = max
            .min(usize::try_from(allowed).unwrap_or(usize::MAX))
            .max(1);
        let before = out.len();
        let status = self.inner.poll_next(out, max)?;
        self.emitted += (out.len() - before) as u64;
        Ok(status)
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        self.inner.snapshot_state(checkpoint_id, state)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.inner.notify_checkpoint_complete(checkpoint_id)
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.inner.notify_checkpoint_aborted(checkpoint_id)
    }

    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }

    fn split_count(&self) -> usize {
        self.inner.split_count()
    }

    fn last_split(&self) -> usize {
        self.inner.last_split()
    }

    fn split_name(&self, i: usize) -> String {
        self.inner.split_name(i)
    }

    fn split_finished(&self, i: usize) -> bool {
        self.inner.split_finished(i)
    }
}
