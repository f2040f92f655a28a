//! The operators that run a [`WatermarkStrategy`]: the assigner operator
//! (`DataStream::assign_timestamps_and_watermarks`: the subtask's input is
//! one split) and the source wrapper (`Env::from_source`: one generator per
//! split the source reads). Both keep the decisions in
//! [`SplitWatermarks`](crate::watermarks::SplitWatermarks) and checkpoint
//! each split's watermark as operator state (`_split-watermarks`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ChainOp, RuntimeContext, SourceContext, SourceFunction, SourceOp, WatermarkOut};
use crate::operator::SourceStatus;
use crate::record::{AnyBatch, Data};
use crate::snapshot::{OperatorStateStore, RestoredKeyed};
use crate::state::PendingKeyedSnapshot;
use crate::time::processing_time_now;
use crate::watermarks::{SplitWatermarks, WatermarkGenerator, WatermarkStrategy};
use crate::{Error, Result};

/// The operator state list of split watermarks.
pub(crate) const SPLIT_WATERMARKS: &str = "_split-watermarks";

fn no_timestamps(what: &str) -> Error {
    Error::User(format!(
        "{what}: the watermark strategy has no timestamp assigner; add one with with_timestamp_assigner"
    ))
}

/// Assigns timestamps and watermarks inside a chain.
pub(crate) struct TimestampsAndWatermarksOp<T, G> {
    strategy: WatermarkStrategy<T, G>,
    clock: Option<SplitWatermarks<G>>,
    timestamps: Vec<i64>,
    signals: (Option<i64>, Option<bool>),
    ended: bool,
}

impl<T: Data, G: WatermarkGenerator<T>> TimestampsAndWatermarksOp<T, G> {
    pub(crate) fn new(strategy: WatermarkStrategy<T, G>) -> Self {
        TimestampsAndWatermarksOp {
            strategy,
            clock: None,
            timestamps: Vec::new(),
            signals: (None, None),
            ended: false,
        }
    }

    fn start(&mut self, interval: Duration, restored: Option<i64>) {
        let now = processing_time_now();
        let mut clock = SplitWatermarks::new(self.strategy.idleness, interval, now);
        clock.add_split("0".into(), (self.strategy.generator)(), restored, now);
        self.clock = Some(clock);
    }

    fn pull(&mut self) {
        if let Some(c) = self.clock.as_mut() {
            let (w, i) = c.take();
            if w.is_some() {
                self.signals.0 = w;
            }
            if i.is_some() {
                self.signals.1 = i;
            }
        }
    }
}

impl<T: Data, G: WatermarkGenerator<T>> ChainOp for TimestampsAndWatermarksOp<T, G> {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        if self.strategy.timestamps.is_none() {
            return Err(no_timestamps(&ctx.operator));
        }
        self.start(ctx.auto_watermark_interval, None);
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        if let (Some(v), Some(ts), Some(clock)) = (
            batch.downcast_ref::<Vec<T>>(),
            self.strategy.timestamps.as_ref(),
            self.clock.as_mut(),
        ) {
            ts(v, &mut self.timestamps);
            clock.on_events(0, v, &self.timestamps, processing_time_now());
        }
        self.pull();
        Ok(Some(batch))
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        self.ended = true;
        Ok(None)
    }
    fn on_watermark(&mut self, wm: i64) -> Result<WatermarkOut> {
        // Only the end of input passes: everything else is this operator's to decide.
        Ok(WatermarkOut {
            records: None,
            watermark: (wm == i64::MAX).then_some(wm),
        })
    }
    fn on_idle(&mut self, _: bool) -> bool {
        false
    }
    fn take_watermark(&mut self) -> Option<i64> {
        self.signals.0.take()
    }
    fn take_idle(&mut self) -> Option<bool> {
        self.signals.1.take()
    }
    fn next_processing_time(&self) -> Option<i64> {
        if self.ended {
            return None;
        }
        self.clock.as_ref().map(|c| c.next_periodic())
    }
    fn on_processing_time(&mut self, now: i64) -> Result<Option<AnyBatch>> {
        if let Some(c) = self.clock.as_mut() {
            c.on_periodic::<T>(now);
        }
        self.pull();
        Ok(None)
    }
    fn snapshot(&mut self, _: u64) -> Result<(Option<PendingKeyedSnapshot>, OperatorStateStore)> {
        let mut st = OperatorStateStore::new();
        if let Some(c) = &self.clock {
            st.update_list(SPLIT_WATERMARKS, &c.snapshot())?;
        }
        Ok((None, st))
    }
    fn restore(&mut self, _: Option<&RestoredKeyed>, state: &OperatorStateStore) -> Result<()> {
        let saved: Vec<(String, i64)> = state.get_list(SPLIT_WATERMARKS)?;
        // After a rescale a subtask may get several old subtasks' watermarks
        // (or none): the smallest is safe (a watermark may only be lower).
        let restored = saved.iter().map(|s| s.1).min();
        let interval = Duration::from_millis(
            self.clock
                .as_ref()
                .map_or(200, |c| c.interval_ms().max(1) as u64),
        );
        self.start(interval, restored);
        Ok(())
    }
}

/// A source whose splits each get a watermark generator (`Env::from_source`).
pub(crate) struct WatermarkedSource<T, S, G> {
    pub(crate) source: S,
    pub(crate) buf: Vec<T>,
    pub(crate) strategy: WatermarkStrategy<T, G>,
    clock: Option<SplitWatermarks<G>>,
    restored: BTreeMap<String, i64>,
    timestamps: Vec<i64>,
    finished: Vec<bool>,
}

impl<T: Data, S: SourceFunction<T>, G: WatermarkGenerator<T>> WatermarkedSource<T, S, G> {
    pub(crate) fn new(source: S, strategy: WatermarkStrategy<T, G>) -> Self {
        WatermarkedSource {
            source,
            buf: Vec::new(),
            strategy,
            clock: None,
            restored: BTreeMap::new(),
            timestamps: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Gives splits the source added since the last call their generators.
    fn sync_splits(&mut self, now: i64) {
        let Some(clock) = self.clock.as_mut() else {
            return;
        };
        while clock.len() < self.source.split_count() {
            let i = clock.len();
            let name = self.source.split_name(i);
            let restored = self.restored.get(&name).copied();
            clock.add_split(name, (self.strategy.generator)(), restored, now);
            self.finished.push(false);
        }
        for (i, done) in self.finished.iter_mut().enumerate() {
            if !*done && self.source.split_finished(i) {
                *done = true;
                clock.finish_split(i);
            }
        }
    }
}

impl<T: Data, S: SourceFunction<T>, G: WatermarkGenerator<T>> SourceOp
    for WatermarkedSource<T, S, G>
{
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        if self.strategy.timestamps.is_none() {
            return Err(no_timestamps(&ctx.runtime.operator));
        }
        self.source.open(ctx)?;
        if ctx.restored {
            let saved: Vec<(String, i64)> = ctx.state.get_list(SPLIT_WATERMARKS)?;
            self.restored = saved.into_iter().collect();
        }
        let now = processing_time_now();
        self.clock = Some(SplitWatermarks::new(
            self.strategy.idleness,
            ctx.runtime.auto_watermark_interval,
            now,
        ));
        self.sync_splits(now);
        Ok(())
    }
    fn poll(&mut self, max: usize) -> Result<(Option<AnyBatch>, SourceStatus)> {
        let mut out = std::mem::replace(&mut self.buf, Vec::with_capacity(max));
        out.clear();
        let status = self.source.poll_next(&mut out, max)?;
        let now = processing_time_now();
        self.sync_splits(now);
        if !out.is_empty() {
            if let (Some(ts), Some(clock)) =
                (self.strategy.timestamps.as_ref(), self.clock.as_mut())
            {
                ts(&out, &mut self.timestamps);
                clock.on_events(self.source.last_split(), &out, &self.timestamps, now);
            }
        }
        if status == SourceStatus::Finished {
            if let Some(clock) = self.clock.as_mut() {
                for i in 0..clock.len() {
                    clock.finish_split(i);
                }
            }
        }
        Ok((super::non_empty(out), status))
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.source.notify_checkpoint_complete(checkpoint_id)
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.source.notify_checkpoint_aborted(checkpoint_id)
    }
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<OperatorStateStore> {
        let mut st = OperatorStateStore::new();
        self.source.snapshot_state(checkpoint_id, &mut st)?;
        if let Some(c) = &self.clock {
            st.update_list(SPLIT_WATERMARKS, &c.snapshot())?;
        }
        Ok(st)
    }
    fn close(&mut self) -> Result<()> {
        self.source.close()
    }
    fn take_time_signals(&mut self, now: i64) -> (Option<i64>, Option<bool>) {
        match self.clock.as_mut() {
            Some(c) => {
                c.on_periodic::<T>(now);
                c.take()
            }
            None => (None, None),
        }
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.clock.as_ref().map(|c| c.next_periodic())
    }
}
