//! The window operator (Flink's `WindowOperator` with the default
//! triggers). Window state is keyed state, kept two ways:
//!
//! - **Tumbling and sliding windows** (`Flat`): per key, one value
//!   (`window-contents`): the list of the key's open windows, each with
//!   its accumulator and whether it fired already. A record's windows
//!   (size / slide of them) are found in that one short contiguous list,
//!   so a record costs one state lookup, not one per window (on the heap
//!   the difference is one cache miss against ten; RocksDB's value cache
//!   holds the list). Their timers are not stored apart: every window in
//!   the state has exactly one pending timer, its firing time
//!   (`max_timestamp`) until it fired and its cleanup time
//!   (`max_timestamp + allowed_lateness`) after, so the in-memory timer
//!   index is rebuilt from the state on restore.
//! - **Session windows** (`Merging`): a record's window merges with the
//!   windows of its key it touches, which needs the key's windows: a map
//!   per key (`window-contents`, user key = the window), with timers as
//!   keyed state ([`crate::timers`], namespace = the window).
//!
//! One record's way: its key and timestamp (event time: the stream's
//! timestamps; processing time: the clock) -> the assigner's windows ->
//! for each window not already past its cleanup time: add to its
//! accumulator; a new window's timer is set; a window the watermark has
//! passed already (a late record within the allowed lateness) fires again
//! at once. A record all of whose windows are past cleanup is late: it
//! goes to the late-data side output, or is dropped.
//!
//! One watermark's way: the timers up to it fire in timestamp order: a
//! firing timer emits the window's result (and, without lateness, removes
//! its state); a cleanup timer removes the window's state. So a window's
//! state and timers live exactly until the watermark passes
//! `max_timestamp + allowed_lateness`. Processing-time windows fire and go
//! when the clock passes their end.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use super::function::{WindowContext, WindowFn};
use super::{TimeWindow, WindowAssigner};
use crate::operator::{non_empty, ChainOp, Collector, RuntimeContext, WatermarkOut};
use crate::record::{downcast, AnyBatch, Data, Key};
use crate::side_output::{OutputTag, SideOutputs};
use crate::state::{
    KeyedContext, KeyedStateBackend, MapState, MapStateDescriptor, OperatorStateStore,
    PendingKeyedSnapshot, RestoredKeyed, ValueState, ValueStateDescriptor,
};
use crate::time::{processing_time_now, TimeDomain};
use crate::timers::InternalTimers;
use crate::watermarks::TimestampFn;
use crate::{Error, Result};

/// The keyed state of window contents.
const CONTENTS: &str = "window-contents";

/// A key's open windows: each with its accumulator and whether it fired
/// already. Few (size / slide, plus the allowed lateness's worth), so a
/// record's windows are found by a scan of one small contiguous list.
type Windows<A> = Vec<(TimeWindow, A, bool)>;

/// Tumbling and sliding windows: a list of open windows per key; the
/// timer index derived from it.
struct Flat<K: Key, A> {
    backend: KeyedStateBackend<K>,
    contents: ValueState<Windows<A>>,
    /// Due time -> windows; each window in the state has one entry.
    index: BTreeMap<i64, Vec<(K, TimeWindow)>>,
}

/// Session windows: a map of windows per key, timers as keyed state.
struct Merging<K: Key, A> {
    backend: KeyedStateBackend<K>,
    contents: MapState<TimeWindow, A>,
    timers: InternalTimers<K, TimeWindow>,
}

enum Store<K: Key, A> {
    Flat(Flat<K, A>),
    Merging(Merging<K, A>),
}

/// Which clock and bounds a window operator works with (copied out so
/// the stores can be borrowed while they are used).
#[derive(Clone, Copy)]
struct Times {
    event_time: bool,
    lateness: i64,
    watermark: i64,
}

impl Times {
    /// When a window's state goes: the end of its allowed lateness (event
    /// time) or its end (processing time).
    fn cleanup(&self, w: &TimeWindow) -> i64 {
        if self.event_time {
            w.max_timestamp().saturating_add(self.lateness)
        } else {
            w.max_timestamp()
        }
    }
    /// A window past its cleanup time takes no more records.
    fn is_late(&self, w: &TimeWindow) -> bool {
        self.event_time && self.cleanup(w) <= self.watermark
    }
    /// A window the watermark has passed fires again with each record.
    fn fires_now(&self, w: &TimeWindow) -> bool {
        self.event_time && w.max_timestamp() <= self.watermark
    }
}

pub(crate) struct WindowOperator<K: Key, T, W: WindowFn<K, T>, KS> {
    assigner: WindowAssigner,
    lateness: i64,
    late: Option<OutputTag<T>>,
    function: W,
    selector: Arc<KS>,
    timestamps: Option<TimestampFn<T>>,
    store: Option<Store<K, W::Acc>>,
    watermark: i64,
    max_parallelism: usize,
    ts_buf: Vec<i64>,
    windows: Vec<TimeWindow>,
    /// Windows a record added to the state, with their first due time (reused).
    created: Vec<(TimeWindow, i64)>,
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
            store: None,
            watermark: i64::MIN,
            max_parallelism: 0,
            ts_buf: Vec::new(),
            windows: Vec::new(),
            created: Vec::new(),
            side: SideOutputs::default(),
            _t: PhantomData,
        }
    }

    fn times(&self) -> Times {
        Times {
            event_time: self.assigner.domain() == TimeDomain::EventTime,
            lateness: self.lateness,
            watermark: self.watermark,
        }
    }

    fn store(&mut self) -> Result<&mut Store<K, W::Acc>> {
        self.store
            .as_mut()
            .ok_or_else(|| Error::Internal("window operator used before open".into()))
    }

    /// One record of a non-merging assigner: whether it was late for all its windows.
    fn add_flat(&mut self, value: &T, ts: i64, out: &mut Vec<W::Out>) -> Result<bool> {
        let key = (self.selector)(value);
        let times = self.times();
        let mut windows = std::mem::take(&mut self.windows);
        self.assigner.assign(ts, &mut windows);
        let mp = self.max_parallelism;
        let Some(Store::Flat(flat)) = self.store.as_mut() else {
            return Err(Error::Internal("flat window store expected".into()));
        };
        let f = &self.function;
        let mut all_late = true;
        // Windows new to the state (their timer is set below), and windows
        // the watermark passed already that this late record fires again.
        let mut created = std::mem::take(&mut self.created);
        let mut fire_now: Vec<(TimeWindow, W::Acc)> = Vec::new();
        let mut ctx = KeyedContext::new(&key, &mut flat.backend, mp);
        flat.contents.modify(&mut ctx, Vec::new, |list| {
            for w in &windows {
                if times.is_late(w) {
                    continue;
                }
                all_late = false;
                let now = times.fires_now(w);
                let slot = match list.iter().position(|e| e.0 == *w) {
                    Some(i) => &mut list[i],
                    None => {
                        // Its one pending timer: firing, or cleanup once fired.
                        let due = if now {
                            times.cleanup(w)
                        } else {
                            w.max_timestamp()
                        };
                        created.push((*w, due));
                        list.push((*w, f.create(), false));
                        let last = list.len() - 1;
                        &mut list[last]
                    }
                };
                f.add(&mut slot.1, value);
                if now {
                    slot.2 = true;
                    fire_now.push((*w, slot.1.clone()));
                }
            }
        })?;
        for (w, due) in created.drain(..) {
            flat.index.entry(due).or_default().push((key.clone(), w));
        }
        self.created = created;
        self.windows = windows;
        for (w, acc) in fire_now {
            let context = WindowContext {
                window: w,
                current_watermark: times.watermark,
                current_processing_time: processing_time_now(),
            };
            self.function
                .emit(&key, &context, &acc, &mut Collector::new(out))?;
        }
        Ok(all_late)
    }

    /// Fires the flat store's windows due at `time`.
    fn fire_flat(&mut self, time: i64, out: &mut Vec<W::Out>) -> Result<()> {
        let times = self.times();
        let mp = self.max_parallelism;
        let now = processing_time_now();
        let Some(Store::Flat(flat)) = self.store.as_mut() else {
            return Err(Error::Internal("flat window store expected".into()));
        };
        while let Some(mut first) = flat.index.first_entry() {
            if *first.key() > time {
                break;
            }
            let due = *first.key();
            let Some((key, w)) = first.get_mut().pop() else {
                first.remove();
                continue;
            };
            if first.get().is_empty() {
                first.remove();
            }
            let cleanup = times.cleanup(&w);
            let mut emit = None;
            let mut requeue = false;
            let mut empty = false;
            let mut ctx = KeyedContext::new(&key, &mut flat.backend, mp);
            flat.contents.modify(&mut ctx, Vec::new, |list| {
                // Not there: cleaned up already.
                if let Some(i) = list.iter().position(|e| e.0 == w) {
                    let fired = list[i].2;
                    if !fired && due == w.max_timestamp() {
                        emit = Some(list[i].1.clone());
                        if cleanup > due {
                            list[i].2 = true;
                            requeue = true;
                        }
                    }
                    if !requeue && due >= cleanup {
                        list.swap_remove(i);
                    }
                }
                empty = list.is_empty();
            })?;
            if empty {
                flat.contents.clear(&mut ctx)?;
            }
            if let Some(acc) = emit {
                let context = WindowContext {
                    window: w,
                    current_watermark: times.watermark,
                    current_processing_time: now,
                };
                self.function
                    .emit(&key, &context, &acc, &mut Collector::new(out))?;
            }
            if requeue {
                flat.index.entry(cleanup).or_default().push((key, w));
            }
        }
        flat.backend.end_batch()
    }

    /// One record of a merging assigner (sessions): whether it was late.
    fn add_to_session(&mut self, value: &T, ts: i64, out: &mut Vec<W::Out>) -> Result<bool> {
        let key = (self.selector)(value);
        let domain = self.assigner.domain();
        let times = self.times();
        let mut windows = std::mem::take(&mut self.windows);
        self.assigner.assign(ts, &mut windows);
        let proto = windows[0];
        self.windows = windows;
        let mp = self.max_parallelism;
        let Some(Store::Merging(m)) = self.store.as_mut() else {
            return Err(Error::Internal("merging window store expected".into()));
        };
        let mut ctx = KeyedContext::new(&key, &mut m.backend, mp);
        let touching: Vec<(TimeWindow, W::Acc)> = m
            .contents
            .entries(&ctx)?
            .into_iter()
            .filter(|(w, _)| w.intersects(&proto))
            .collect();
        let cover = touching.iter().fold(proto, |c, (w, _)| c.cover(w));
        if times.is_late(&cover) {
            return Ok(true);
        }
        let f = &mut self.function;
        let mut acc = f.create();
        for (w, a) in touching {
            acc = f.merge(acc, a);
            if w != cover {
                m.contents.remove(&mut ctx, &w)?;
                m.timers.delete(&mut ctx, domain, w.max_timestamp(), w)?;
                m.timers.delete(&mut ctx, domain, times.cleanup(&w), w)?;
            }
        }
        f.add(&mut acc, value);
        if times.fires_now(&cover) {
            let context = WindowContext {
                window: cover,
                current_watermark: times.watermark,
                current_processing_time: processing_time_now(),
            };
            f.emit(&key, &context, &acc, &mut Collector::new(out))?;
        }
        m.contents.put(&mut ctx, cover, acc)?;
        m.timers
            .register(&mut ctx, domain, cover.max_timestamp(), cover)?;
        if times.cleanup(&cover) != cover.max_timestamp() {
            m.timers
                .register(&mut ctx, domain, times.cleanup(&cover), cover)?;
        }
        Ok(false)
    }

    /// Fires the merging store's timers of `domain` due at `time`.
    fn fire_merging(&mut self, domain: TimeDomain, time: i64, out: &mut Vec<W::Out>) -> Result<()> {
        let times = self.times();
        let mp = self.max_parallelism;
        loop {
            let Some(Store::Merging(m)) = self.store.as_mut() else {
                return Err(Error::Internal("merging window store expected".into()));
            };
            let Some(t) = m.timers.pop_due(&mut m.backend, mp, domain, time)? else {
                return m.backend.end_batch();
            };
            let w = t.namespace;
            let mut ctx = KeyedContext::new(&t.key, &mut m.backend, mp);
            if t.timestamp == w.max_timestamp() {
                if let Some(acc) = m.contents.get(&ctx, &w)? {
                    let context = WindowContext {
                        window: w,
                        current_watermark: times.watermark,
                        current_processing_time: processing_time_now(),
                    };
                    self.function
                        .emit(&t.key, &context, &acc, &mut Collector::new(out))?;
                }
            }
            if t.timestamp == times.cleanup(&w) {
                m.contents.remove(&mut ctx, &w)?;
            }
        }
    }

    /// Fires what is due at `time` in `domain`.
    fn fire(&mut self, domain: TimeDomain, time: i64) -> Result<Option<AnyBatch>> {
        let mut out = Vec::new();
        match self.store()? {
            Store::Flat(_) => self.fire_flat(time, &mut out)?,
            Store::Merging(_) => self.fire_merging(domain, time, &mut out)?,
        }
        Ok(non_empty(out))
    }

    /// The earliest due time of the store's timers.
    fn next_due(&self) -> Option<i64> {
        match self.store.as_ref()? {
            Store::Flat(f) => f.index.keys().next().copied(),
            Store::Merging(m) => m.timers.next(self.assigner.domain()),
        }
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
        if self.assigner.domain() == TimeDomain::EventTime && self.timestamps.is_none() {
            return Err(Error::User(format!(
                "{}: event-time windows need timestamps: assign them upstream",
                ctx.operator
            )));
        }
        self.max_parallelism = ctx.max_parallelism;
        self.store = Some(if self.assigner.is_merging() {
            let mut backend = KeyedStateBackend::for_subtask(ctx)?;
            let contents = backend.map_state(&MapStateDescriptor::new(CONTENTS))?;
            let timers = InternalTimers::open(&mut backend)?;
            Store::Merging(Merging {
                backend,
                contents,
                timers,
            })
        } else {
            let mut backend = KeyedStateBackend::for_subtask(ctx)?;
            let contents = backend.value_state(&ValueStateDescriptor::new(CONTENTS))?;
            Store::Flat(Flat {
                backend,
                contents,
                index: BTreeMap::new(),
            })
        });
        Ok(())
    }
    fn process(&mut self, batch: AnyBatch) -> Result<Option<AnyBatch>> {
        let input = downcast::<T>(batch);
        let mut ts = std::mem::take(&mut self.ts_buf);
        match (&self.timestamps, self.assigner.domain()) {
            (Some(f), TimeDomain::EventTime) => f(&input, &mut ts),
            _ => {
                ts.clear();
                ts.resize(input.len(), processing_time_now());
            }
        }
        let mut out = Vec::new();
        let merging = self.assigner.is_merging();
        for (v, t) in input.into_iter().zip(ts.iter().copied()) {
            let late = if merging {
                self.add_to_session(&v, t, &mut out)?
            } else {
                self.add_flat(&v, t, &mut out)?
            };
            if late {
                if let Some(tag) = &self.late {
                    self.side.add_typed(tag, v)?;
                }
            }
        }
        self.ts_buf = ts;
        match self.store()? {
            Store::Flat(f) => f.backend.end_batch()?,
            Store::Merging(m) => m.backend.end_batch()?,
        }
        Ok(non_empty(out))
    }
    fn on_watermark(&mut self, wm: i64) -> Result<WatermarkOut> {
        self.watermark = wm;
        let records = if self.assigner.domain() == TimeDomain::EventTime {
            self.fire(TimeDomain::EventTime, wm)?
        } else {
            None
        };
        Ok(WatermarkOut {
            records,
            watermark: Some(wm),
        })
    }
    fn next_processing_time(&self) -> Option<i64> {
        if self.assigner.domain() != TimeDomain::ProcessingTime {
            return None;
        }
        self.next_due().map(|t| t.saturating_add(1))
    }
    fn on_processing_time(&mut self, now: i64) -> Result<Option<AnyBatch>> {
        // A window ending at t fires once the clock is past t (t + 1 ms):
        // records that still read the clock as t go into it first.
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
        let keyed = match self.store()? {
            Store::Flat(f) => f.backend.snapshot_async(checkpoint_id)?,
            Store::Merging(m) => m.backend.snapshot_async(checkpoint_id)?,
        };
        Ok((Some(keyed), OperatorStateStore::new()))
    }
    fn restore(&mut self, keyed: Option<&RestoredKeyed>, _: &OperatorStateStore) -> Result<()> {
        let Some(snap) = keyed else { return Ok(()) };
        let times = self.times();
        match self.store()? {
            Store::Flat(f) => {
                f.backend.restore_from(snap)?;
                // Every window in the state has one pending timer.
                f.index.clear();
                for (key, list) in f.contents.all_entries(&mut f.backend)? {
                    for (w, _, fired) in list {
                        let due = if fired {
                            times.cleanup(&w)
                        } else {
                            w.max_timestamp()
                        };
                        f.index.entry(due).or_default().push((key.clone(), w));
                    }
                }
            }
            Store::Merging(m) => {
                m.backend.restore_from(snap)?;
                m.timers.rebuild(&mut m.backend)?;
            }
        }
        Ok(())
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        match self.store()? {
            Store::Flat(f) => f.backend.notify_complete(checkpoint_id),
            Store::Merging(m) => m.backend.notify_complete(checkpoint_id),
        }
        Ok(())
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        match self.store()? {
            Store::Flat(f) => f.backend.notify_aborted(checkpoint_id),
            Store::Merging(m) => m.backend.notify_aborted(checkpoint_id),
        }
        Ok(())
    }
}
