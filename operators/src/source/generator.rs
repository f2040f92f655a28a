//! [`GeneratorSource`]: records computed from their index, deterministically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_runtime::prelude::*;

use crate::rng::SplitMix64;

/// Generates record `i` as `f(i, rng)` where `rng` is seeded from `(seed, i)`,
/// for `i` in `0..count` (bounded) or forever (unbounded). Subtask `s` of `p`
/// generates the indices `s, s + p, s + 2p, ...`, so the records are the same
/// for every parallelism. Its position is the next index; with
/// [`GeneratorSource::with_rate`] it paces itself.
pub struct GeneratorSource<T, F> {
    f: Arc<F>,
    seed: u64,
    count: Option<u64>,
    rate: Option<f64>,
    next: u64,
    stride: u64,
    emitted: u64,
    started: Option<Instant>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> Clone for GeneratorSource<T, F> {
    fn clone(&self) -> Self {
        GeneratorSource {
            f: self.f.clone(),
            seed: self.seed,
            count: self.count,
            rate: self.rate,
            next: self.next,
            stride: self.stride,
            emitted: 0,
            started: None,
            _t: std::marker::PhantomData,
        }
    }
}

const POSITION: &str = "generator-position";

impl<T: Data, F: Fn(u64, &mut SplitMix64) -> T + Send + Sync + 'static> GeneratorSource<T, F> {
    /// `count` records (`None`: unbounded) from `f`, seeded with `seed`.
    pub fn new(seed: u64, count: Option<u64>, f: F) -> Self {
        GeneratorSource {
            f: Arc::new(f),
            seed,
            count,
            rate: None,
            next: 0,
            stride: 1,
            emitted: 0,
            started: None,
            _t: std::marker::PhantomData,
        }
    }

    /// Limits the source to about `records_per_second` over all subtasks.
    pub fn with_rate(mut self, records_per_second: f64) -> Self {
        self.rate = Some(records_per_second.max(0.001));
        self
    }
}

impl<T: Data, F: Fn(u64, &mut SplitMix64) -> T + Send + Sync + 'static> SourceFunction<T>
    for GeneratorSource<T, F>
{
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        let (s, p) = (ctx.runtime.subtask as u64, ctx.runtime.parallelism as u64);
        self.stride = p;
        self.next = s;
        if ctx.restored {
            let saved: Vec<(u64, u64)> = ctx.state.get_list(POSITION)?;
            match saved.as_slice() {
                [(next, stride)] if *stride == p => self.next = *next,
                [] => {}
                _ => {
                    return Err(Error::user(format!(
                        "generator positions were saved at parallelism {:?} and cannot be restored at parallelism {p}",
                        saved.iter().map(|x| x.1).collect::<Vec<_>>()
                    )))
                }
            }
        }
        if let Some(r) = self.rate {
            self.rate = Some(r / p as f64);
        }
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        let mut budget = max as u64;
        if let Some(rate) = self.rate {
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            let allowed = due.saturating_sub(self.emitted);
            if allowed == 0 {
                let wait = (self.emitted + 1) as f64 / rate - started.elapsed().as_secs_f64();
                return Ok(SourceStatus::Idle(Duration::from_secs_f64(
                    wait.clamp(0.0005, 0.1),
                )));
            }
            budget = budget.min(allowed);
        }
        for _ in 0..budget {
            if self.count.is_some_and(|c| self.next >= c) {
                return Ok(SourceStatus::Finished);
            }
            let mut rng = SplitMix64::for_index(self.seed, self.next);
            out.push((self.f)(self.next, &mut rng));
            self.next += self.stride;
            self.emitted += 1;
        }
        if self.count.is_some_and(|c| self.next >= c) {
            Ok(SourceStatus::Finished)
        } else {
            Ok(SourceStatus::More)
        }
    }

    fn snapshot_state(
        &mut self,
        _checkpoint_id: u64,
        state: &mut OperatorStateStore,
    ) -> Result<()> {
        state.update_list(POSITION, &[(self.next, self.stride)])
    }
}
