//! The window operator (Flink's `WindowOperator` with the default
//! triggers): per key and window one accumulator in keyed map state
//! (`window-contents`, user key = the window), and per window its timers
//! ([`crate::timers`], namespace = the window).
//!
//! One record's way: its key and timestamp (event time: the stream's
//! timestamps; processing time: the clock) -> the assigner's windows ->
//! for each window not already past its cleanup time: add to its
//! accumulator; a new window registers its firing timer at
//! `max_timestamp` and, with allowed lateness, its cleanup timer at
//! `max_timestamp + lateness`; a window the watermark has passed already
//! (a late record within the allowed lateness) fires again at once. A record
//! all of whose windows are past cleanup is late: it goes to the late-data
//! side output, or is dropped.
//!
//! One watermark's way: the event-time timers up to it fire in timestamp
//! order: a firing timer emits the window's result; a cleanup timer (or
//! the firing timer when there is no lateness) removes the window's
//! state. So a window's state and timers live exactly until the watermark
//! passes `max_timestamp + allowed_lateness`.
//!
//! Session windows (merging): a record's window `[t, t + gap)` merges
//! with every window of its key it touches; their accumulators merge into
//! the covering window, whose timers replace theirs. The merged window is
//! ordinary state from then on, so it survives checkpoints and rescaling
//! like any other.

use std::marker::PhantomData;
use std::sync::Arc;

use super::function::{WindowContext, WindowFn};
use super::{TimeWindow, WindowAssigner};
use crate::operator::{non_empty, ChainOp, Collector, RuntimeContext, WatermarkOut};
use crate::record::{downcast, AnyBatch, Data, Key};
use crate::side_output::{OutputTag, SideOutputs};
use crate::state::{
    KeyedContext, KeyedStateBackend, MapState, MapStateDescriptor, OperatorStateStore,
    PendingKeyedSnapshot, RestoredKeyed,
};
use crate::time::{processing_time_now, TimeDomain};
use crate::timers::InternalTimers;
use crate::watermarks::TimestampFn;
use crate::{Error, Result};

/// The keyed state of window contents.
const CONTENTS: &str = "window-contents";

pub(crate) struct WindowOperator<K: Key, T, W: WindowFn<K, T>, KS> {
    pub(crate) assigner: WindowAssigner,
    pub(crate) lateness: i64,
    pub(crate) late: Option<OutputTag<T>>,
    pub(crate) function: W,
    pub(crate) selector: Arc<KS>,
    pub(crate) timestamps: Option<TimestampFn<T>>,
    backend: Option<KeyedStateBackend<K>>,
    timers: Option<InternalTimers<K, TimeWindow>>,
    contents: Option<MapState<TimeWindow, W::Acc>>,
    watermark: i64,
    max_parallelism: usize,
    ts_buf: Vec<i64>,
    windows: Vec<TimeWindow>,
    side: SideOutputs,
    _t: PhantomData<fn(T)>,
}

impl<K, T, W, KS> WindowOperator<K, T, W, KS>
where
    K: Key,
    T: Data,
    W: WindowFn<K, T>,
    KS: Fn(&T) -> K + Send + Sync + 'static,
{
    pub(crate) fn new(
        assigner: WindowAssigner,
        lateness: i64,
        late: Option<OutputTag<T>>,
        function: W,
        selector: Arc<KS>,
        timestamps: Option<TimestampFn<T>>,
    ) -> Self {
        WindowOperator {
            assigner,
            lateness,
            late,
            function,
            selector,
            timestamps,
            backend: None,
            timers: None,
            contents: None,
            watermark: i64::MIN,
            max_parallelism: 0,
            ts_buf: Vec::new(),
            windows: Vec::new(),
            side: SideOutputs::default(),
            _t: PhantomData,
        }
    }

    fn event_time(&self) -> bool {
        self.assigner.domain() == TimeDomain::EventTime
    }

    /// When a window's state goes: the end of its allowed lateness (event
    /// time) or its end (processing time).
    fn cleanup_time(&self, w: &TimeWindow) -> i64 {
        if self.event_time() {
            w.max_timestamp().saturating_add(self.lateness)
        } else {
            w.max_timestamp()
        }
    }

    fn context(&self, window: TimeWindow) -> WindowContext {
        WindowContext {
            window,
            current_watermark: self.watermark,
            current_processing_time: processing_time_now(),
        }
    }
}

/// The parts of the operator one record's handling needs at once.
struct Parts<'a, K: Key, T, W: WindowFn<K, T>> {
    backend: &'a mut KeyedStateBackend<K>,
    timers: &'a mut InternalTimers<K, TimeWindow>,
    contents: MapState<TimeWindow, W::Acc>,
    function: &'a mut W,
}

impl<K, T, W, KS> WindowOperator<K, T, W, KS>
where
    K: Key,
    T: Data,
    W: WindowFn<K, T>,
    KS: Fn(&T) -> K + Send + Sync + 'static,
{
    fn parts(&mut self) -> Result<Parts<'_, K, T, W>> {
        match (self.backend.as_mut(), self.timers.as_mut(), self.contents) {
            (Some(backend), Some(timers), Some(contents)) => Ok(Parts {
                backend,
                timers,
                contents,
                function: &mut self.function,
            }),
            _ => Err(Error::Internal("window operator used before open".into())),
        }
    }

    /// Registers a window's timers (firing, and cleanup when it differs).
    fn register_timers(
        timers: &mut InternalTimers<K, TimeWindow>,
        ctx: &mut KeyedContext<'_, K>,
        domain: TimeDomain,
        w: TimeWindow,
        cleanup: i64,
    ) -> Result<()> {
        timers.register(ctx, domain, w.max_timestamp(), w)?;
        if cleanup != w.max_timestamp() {
            timers.register(ctx, domain, cleanup, w)?;
        }
        Ok(())
    }

    /// Emits window `w` of `key` (if it has contents).
    fn emit(&mut self, key: &K, w: TimeWindow, out: &mut Vec<W::Out>) -> Result<()> {
        let context = self.context(w);
        let mp = self.max_parallelism;
        let p = self.parts()?;
        let ctx = KeyedContext::new(key, p.backend, mp);
        if let Some(acc) = p.contents.get(&ctx, &w)? {
            p.function
                .emit(key, &context, &acc, &mut Collector::new(out))?;
        }
        Ok(())
    }

    /// One record of a non-merging assigner: whether it was late for all its windows.
    fn add_record(&mut self, value: &T, ts: i64, out: &mut Vec<W::Out>) -> Result<bool> {
        let key = (self.selector)(value);
        let domain = self.assigner.domain();
        let mut windows = std::mem::take(&mut self.windows);
        self.assigner.assign(ts, &mut windows);
        let (event_time, watermark, lateness, mp) = (
            self.event_time(),
            self.watermark,
            self.lateness,
            self.max_parallelism,
        );
        let mut all_late = true;
        let mut fire_now = Vec::new();
        {
            let p = self.parts()?;
            let mut ctx = KeyedContext::new(&key, p.backend, mp);
            let f = &*p.function;
            for w in &windows {
                let cleanup = if event_time {
                    w.max_timestamp().saturating_add(lateness)
                } else {
                    w.max_timestamp()
                };
                if event_time && cleanup <= watermark {
                    continue;
                }
                all_late = false;
                let new =
                    p.contents
                        .update_with(&mut ctx, w, || f.create(), |acc| f.add(acc, value))?;
                if new {
                    Self::register_timers(p.timers, &mut ctx, domain, *w, cleanup)?;
                }
                if event_time && w.max_timestamp() <= watermark {
                    // Late within the allowed lateness: fire again with this record.
                    fire_now.push(*w);
                }
            }
        }
        self.windows = windows;
        for w in fire_now {
            self.emit(&key, w, out)?;
        }
        Ok(all_late)
    }

    /// One record of a merging assigner (sessions).
    fn add_to_session(&mut self, value: &T, ts: i64, out: &mut Vec<W::Out>) -> Result<bool> {
        let key = (self.selector)(value);
        let domain = self.assigner.domain();
        let mut windows = std::mem::take(&mut self.windows);
        self.assigner.assign(ts, &mut windows);
        let proto = windows[0];
        self.windows = windows;
        let mp = self.max_parallelism;
        let event_time = self.event_time();
        let watermark = self.watermark;
        let lateness = self.lateness;
        let cleanup_of = |w: &TimeWindow| {
            if event_time {
                w.max_timestamp().saturating_add(lateness)
            } else {
                w.max_timestamp()
            }
        };
        let merged;
        {
            let p = self.parts()?;
            let mut ctx = KeyedContext::new(&key, p.backend, mp);
            let existing = p.contents.entries(&ctx)?;
            let touching: Vec<(TimeWindow, W::Acc)> = existing
                .into_iter()
                .filter(|(w, _)| w.intersects(&proto))
                .collect();
            let cover = touching.iter().fold(proto, |c, (w, _)| c.cover(w));
            if event_time && cleanup_of(&cover) <= watermark {
                return Ok(true);
            }
            let f = &*p.function;
            let mut acc = f.create();
            for (w, a) in touching {
                acc = f.merge(acc, a);
                if w != cover {
                    p.contents.remove(&mut ctx, &w)?;
                    p.timers.delete(&mut ctx, domain, w.max_timestamp(), w)?;
                    p.timers.delete(&mut ctx, domain, cleanup_of(&w), w)?;
                }
            }
            f.add(&mut acc, value);
            p.contents.put(&mut ctx, cover, acc)?;
            Self::register_timers(p.timers, &mut ctx, domain, cover, cleanup_of(&cover))?;
            merged = cover;
        }
        if event_time && merged.max_timestamp() <= watermark {
            self.emit(&key, merged, out)?;
        }
        Ok(false)
    }

    /// Fires the timers of `domain` due at `time`.
    fn fire(&mut self, domain: TimeDomain, time: i64) -> Result<Option<AnyBatch>> {
        let mut out = Vec::new();
        let mp = self.max_parallelism;
        loop {
            let due = {
                let p = self.parts()?;
                p.timers.pop_due(p.backend, mp, domain, time)?
            };
            let Some(t) = due else { break };
            let w = t.namespace;
            if t.timestamp == w.max_timestamp() {
                self.emit(&t.key, w, &mut out)?;
            }
            if t.timestamp == self.cleanup_time(&w) {
                let p = self.parts()?;
                let mut ctx = KeyedContext::new(&t.key, p.backend, mp);
                p.contents.remove(&mut ctx, &w)?;
            }
        }
        let p = self.parts()?;
        p.backend.end_batch()?;
        Ok(non_empty(out))
    }
}

impl<K, T, W, KS> ChainOp for WindowOperator<K, T, W, KS>
where
    K: Key,
    T: Data,
    W: WindowFn<K, T>,
    KS: Fn(&T) -> K + Send + Sync + 'static,
{
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.assigner.validate().map_err(Error::User)?;
        if self.event_time() && self.timestamps.is_none() {
            return Err(Error::User(format!(
                "{}: event-time windows need timestamps: assign them upstream",
                ctx.operator
            )));
        }
        self.max_parallelism = ctx.max_parallelism;
        let mut backend = KeyedStateBackend::for_subtask(ctx)?;
        self.contents = Some(backend.map_state(&MapStateDescriptor::new(CONTENTS))?);
        self.timers = Some(InternalTimers::open(&mut backend)?);
        self.backend = Some(backend);
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let input = downcast::<T>(batch);
        let now = processing_time_now();
        let mut ts = std::mem::take(&mut self.ts_buf);
        match (&self.timestamps, self.event_time()) {
            (Some(f), true) => f(&input, &mut ts),
            _ => {
                ts.clear();
                ts.resize(input.len(), now);
            }
        }
        let mut out = Vec::new();
        let merging = self.assigner.is_merging();
        for (v, t) in input.into_iter().zip(ts.iter().copied()) {
            let late = if merging {
                self.add_to_session(&v, t, &mut out)?
            } else {
                self.add_record(&v, t, &mut out)?
            };
            if late {
                if let Some(tag) = &self.late {
                    self.side.add_typed(tag, v)?;
                }
            }
        }
        self.ts_buf = ts;
        self.parts()?.backend.end_batch()?;
        Ok(non_empty(out))
    }
    fn on_watermark(&mut self, wm: i64) -> Result<WatermarkOut> {
        self.watermark = wm;
        let records = self.fire(TimeDomain::EventTime, wm)?;
        Ok(WatermarkOut {
            records,
            watermark: Some(wm),
        })
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.timers
            .as_ref()
            .and_then(|t| t.next(TimeDomain::ProcessingTime))
            .map(|t| t.saturating_add(1))
    }
    fn on_processing_time(&mut self, now: i64) -> Result<Option<AnyBatch>> {
        // A timer at t fires once the clock is past t (t + 1 ms): records
        // that still read the clock as t come before it, so a
        // processing-time window at t never fires twice.
        self.fire(TimeDomain::ProcessingTime, now.saturating_sub(1))
    }
    fn take_side_outputs(&mut self) -> Vec<(Arc<str>, AnyBatch)> {
        if self.side.is_empty() {
            Vec::new()
        } else {
            self.side.take()
        }
    }
    fn finish(&mut self) -> Result<Option<AnyBatch>> {
        Ok(None)
    }
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<(Option<PendingKeyedSnapshot>, OperatorStateStore)> {
        let p = self.parts()?;
        Ok((
            Some(p.backend.snapshot_async(checkpoint_id)?),
            OperatorStateStore::new(),
        ))
    }
    fn restore(&mut self, keyed: Option<&RestoredKeyed>, _: &OperatorStateStore) -> Result<()> {
        if let Some(snap) = keyed {
            let p = self.parts()?;
            p.backend.restore_from(snap)?;
            p.timers.rebuild(p.backend)?;
        }
        Ok(())
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.parts()?.backend.notify_complete(checkpoint_id);
        Ok(())
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.parts()?.backend.notify_aborted(checkpoint_id);
        Ok(())
    }
}
