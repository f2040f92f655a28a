//! Event time at the sources: timestamps, watermark strategies and
//! idleness (Flink's `WatermarkStrategy`).
//!
//! A [`WatermarkStrategy`] says how records get their timestamps
//! ([`WatermarkStrategy::with_timestamp_assigner`]) and how watermarks are
//! made from them: a [`WatermarkGenerator`] sees every record
//! ([`on_event`](WatermarkGenerator::on_event): punctuated generators emit
//! there) and is asked periodically, every `pipeline.auto-watermark-interval`
//! (200 ms) of processing time ([`on_periodic_emit`](WatermarkGenerator::on_periodic_emit)):
//! periodic generators emit there. Built in:
//! [`WatermarkStrategy::for_bounded_out_of_orderness`] (watermark = largest
//! timestamp seen - bound - 1) and
//! [`WatermarkStrategy::for_monotonous_timestamps`] (bound 0).
//!
//! # Per split, combined per subtask (`SplitWatermarks`)
//! With [`Env::from_source`](crate::stream::Env::from_source) each split a
//! source subtask reads gets its own generator; the subtask's watermark is
//! the minimum over its splits that are neither idle nor finished, and it
//! never goes back (Flink's `WatermarkOutputMultiplexer`). With
//! [`DataStream::assign_timestamps_and_watermarks`](crate::stream::DataStream::assign_timestamps_and_watermarks)
//! a subtask's whole input is one split.
//!
//! # Idleness
//! [`WatermarkStrategy::with_idleness`]: a split with no record for that
//! long (processing time) is idle and stops holding the watermark back;
//! when all of a subtask's splits are idle the subtask marks its outputs
//! idle, and downstream the watermark valve leaves idle inputs out of the
//! minimum (`task::watermark`). A record on an idle split makes it active
//! again: from then on it holds the watermark again (the combined watermark
//! waits for it; it never goes back).
//!
//! # Checkpoints
//! Each split's watermark is operator state of its subtask (list
//! `_split-watermarks`, `(split, watermark)`), written with every snapshot;
//! a restored subtask's split starts from it instead of from the start of
//! time, so a restored job's windows do not wait for watermarks they had.
//!
//! Everything here is pure: the clock is passed in (`now`, ms), so the
//! decisions are tested directly.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::record::Data;

/// Extracts the timestamps of a whole batch of records (one dynamic call
/// per batch; the user's per-record function is inlined inside).
pub type TimestampFn<T> = Arc<dyn Fn(&[T], &mut Vec<i64>) + Send + Sync>;

/// A batch timestamp extractor made from a per-record one.
pub fn batch_timestamps<T: Data, F: Fn(&T) -> i64 + Send + Sync + 'static>(f: F) -> TimestampFn<T> {
    Arc::new(move |batch: &[T], out: &mut Vec<i64>| {
        out.clear();
        out.extend(batch.iter().map(&f));
    })
}

/// What a [`WatermarkGenerator`] emits (Flink's `WatermarkOutput`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkOutput {
    watermark: Option<i64>,
    idle: Option<bool>,
}

impl WatermarkOutput {
    /// Emits watermark `w`: no record with a timestamp `<= w` should follow.
    /// A watermark below one emitted before is ignored.
    pub fn emit_watermark(&mut self, w: i64) {
        self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
        self.idle = Some(false);
    }
    /// Marks the split idle: it stops holding the watermark back.
    pub fn mark_idle(&mut self) {
        self.idle = Some(true);
    }
    /// Marks the split active again.
    pub fn mark_active(&mut self) {
        self.idle = Some(false);
    }
}

/// Makes watermarks from records and time (Flink's `WatermarkGenerator`).
/// One per split; called on the processing loop, so keep it cheap.
pub trait WatermarkGenerator<T>: Send + 'static {
    /// Called for every record with its timestamp (punctuated generators emit here).
    fn on_event(&mut self, event: &T, timestamp: i64, output: &mut WatermarkOutput);
    /// Called every `pipeline.auto-watermark-interval` (periodic generators emit here).
    fn on_periodic_emit(&mut self, output: &mut WatermarkOutput);
}

/// Flink's `BoundedOutOfOrdernessWatermarks`: emits the largest timestamp
/// seen minus the bound minus 1, periodically.
#[derive(Debug, Clone)]
pub struct BoundedOutOfOrderness {
    max_timestamp: i64,
    bound: i64,
}

impl BoundedOutOfOrderness {
    /// Records may be up to `bound` late.
    pub fn new(bound: Duration) -> Self {
        let bound = bound.as_millis().min(i64::MAX as u128 / 2) as i64;
        BoundedOutOfOrderness {
            // So that the first watermark (before any record) is i64::MIN.
            max_timestamp: i64::MIN.saturating_add(bound).saturating_add(1),
            bound,
        }
    }
}

impl<T> WatermarkGenerator<T> for BoundedOutOfOrderness {
    #[inline]
    fn on_event(&mut self, _: &T, timestamp: i64, _: &mut WatermarkOutput) {
        if timestamp > self.max_timestamp {
            self.max_timestamp = timestamp;
        }
    }
    fn on_periodic_emit(&mut self, output: &mut WatermarkOutput) {
        let w = self
            .max_timestamp
            .saturating_sub(self.bound)
            .saturating_sub(1);
        if w > i64::MIN {
            output.emit_watermark(w);
        }
    }
}

/// Emits no watermark (Flink's `WatermarkStrategy.noWatermarks()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWatermarks;

impl<T> WatermarkGenerator<T> for NoWatermarks {
    fn on_event(&mut self, _: &T, _: i64, _: &mut WatermarkOutput) {}
    fn on_periodic_emit(&mut self, _: &mut WatermarkOutput) {}
}

/// How a stream gets timestamps and watermarks.
pub struct WatermarkStrategy<T, G> {
    pub(crate) generator: Arc<dyn Fn() -> G + Send + Sync>,
    pub(crate) timestamps: Option<TimestampFn<T>>,
    pub(crate) idleness: Option<Duration>,
    _t: PhantomData<fn(&T)>,
}

impl<T, G> Clone for WatermarkStrategy<T, G> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            generator: self.generator.clone(),
            timestamps: self.timestamps.clone(),
            idleness: self.idleness,
            _t: PhantomData,
        }
    }
}

impl<T: Data> WatermarkStrategy<T, BoundedOutOfOrderness> {
    /// Records may arrive up to `bound` out of order (Flink's `forBoundedOutOfOrderness`).
    pub fn for_bounded_out_of_orderness(bound: Duration) -> Self {
        Self::for_generator(move || BoundedOutOfOrderness::new(bound))
    }
    /// Timestamps only grow (Flink's `forMonotonousTimestamps`).
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO)
    }
}

impl<T: Data> WatermarkStrategy<T, NoWatermarks> {
    /// Timestamps without watermarks (Flink's `noWatermarks`).
    pub fn no_watermarks() -> Self {
        Self::for_generator(|| NoWatermarks)
    }
}

impl<T: Data, G: WatermarkGenerator<T>> WatermarkStrategy<T, G> {
    /// A custom generator, one made per split by `make` (Flink's `forGenerator`).
    pub fn for_generator(make: impl Fn() -> G + Send + Sync + 'static) -> Self {
        WatermarkStrategy {
            generator: Arc::new(make),
            timestamps: None,
            idleness: None,
            _t: PhantomData,
        }
    }
    /// Where records' timestamps come from (ms; Flink's `withTimestampAssigner`).
    pub fn with_timestamp_assigner(
        mut self,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.timestamps = Some(batch_timestamps(timestamp));
        self
    }
    /// A split with no record for `timeout` is idle (Flink's `withIdleness`).
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }
}

/// One split's generator and where it stands.
struct Split<G> {
    name: String,
    generator: G,
    watermark: i64,
    idle: bool,
    finished: bool,
    /// The first periodic check that saw no record since the check before
    /// (Flink's `IdlenessTimer`): the split is idle once a check finds it
    /// inactive for more than the idleness timeout from there. So after its
    /// last records a split emits their watermark at two checks at least
    /// before it can go idle, and a split that never had a record (its
    /// inactivity counted from its first check) goes idle first: the
    /// watermark of the active one is emitted before all are idle.
    inactive_since: Option<i64>,
    /// Records arrived since the last periodic check: the split is active
    /// at that check whatever the clock says, so a late check (a loaded
    /// machine) never turns a split idle before it emitted the watermark of
    /// its last records.
    active_since_check: bool,
}

/// The watermarks of the splits of one subtask, combined (pure; the clock
/// is passed in). Emits through [`SplitWatermarks::take`].
pub(crate) struct SplitWatermarks<G> {
    splits: Vec<Split<G>>,
    idleness: Option<i64>,
    interval: i64,
    next_periodic: i64,
    /// The combined watermark emitted so far.
    combined: i64,
    /// Whether the subtask's output is idle now.
    idle: bool,
    pending_watermark: Option<i64>,
    pending_idle: Option<bool>,
}

impl<G> SplitWatermarks<G> {
    /// No splits yet; periodic emission every `interval` (ms, at least 1).
    pub(crate) fn new(idleness: Option<Duration>, interval: Duration, now: i64) -> Self {
        let interval = (interval.as_millis() as i64).max(1);
        SplitWatermarks {
            splits: Vec::new(),
            idleness: idleness.map(|d| d.as_millis() as i64),
            interval,
            next_periodic: now + interval,
            combined: i64::MIN,
            idle: false,
            pending_watermark: None,
            pending_idle: None,
        }
    }

    /// Adds split `name` (its watermark starts at `restored`, or the start
    /// of time). `_now`: idleness is counted by the periodic checks (from
    /// the first that sees no record), not from the time a split or record
    /// arrives; the clock stays in the signature of this pure type's inputs.
    pub(crate) fn add_split(
        &mut self,
        name: String,
        generator: G,
        restored: Option<i64>,
        _now: i64,
    ) {
        self.splits.push(Split {
            name,
            generator,
            watermark: restored.unwrap_or(i64::MIN),
            idle: false,
            finished: false,
            inactive_since: None,
            active_since_check: false,
        });
    }

    /// The periodic interval (ms).
    pub(crate) fn interval_ms(&self) -> i64 {
        self.interval
    }

    /// Number of splits.
    pub(crate) fn len(&self) -> usize {
        self.splits.len()
    }

    /// The records of one poll, all of split `split`, with their timestamps
    /// (`_now`: see [`Self::add_split`]).
    pub(crate) fn on_events<T>(&mut self, split: usize, events: &[T], timestamps: &[i64], _now: i64)
    where
        G: WatermarkGenerator<T>,
    {
        let Some(s) = self.splits.get_mut(split) else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let mut out = WatermarkOutput::default();
        for (e, ts) in events.iter().zip(timestamps) {
            s.generator.on_event(e, *ts, &mut out);
        }
        s.idle = false;
        s.active_since_check = true;
        apply(s, out);
        self.combine();
    }

    /// When the next periodic emission is due (ms).
    pub(crate) fn next_periodic(&self) -> i64 {
        self.next_periodic
    }

    /// Periodic emission and idleness, if due at `now`.
    pub(crate) fn on_periodic<T>(&mut self, now: i64)
    where
        G: WatermarkGenerator<T>,
    {
        if now < self.next_periodic {
            return;
        }
        self.next_periodic = now + self.interval;
        for s in self.splits.iter_mut().filter(|s| !s.finished) {
            let timed_out = if std::mem::take(&mut s.active_since_check) {
                s.inactive_since = None;
                false
            } else {
                let since = *s.inactive_since.get_or_insert(now);
                self.idleness.is_some_and(|t| now.saturating_sub(since) > t)
            };
            if timed_out {
                // Flink's WatermarksWithIdleness: an idle split emits nothing.
                s.idle = true;
                continue;
            }
            let mut out = WatermarkOutput::default();
            s.generator.on_periodic_emit(&mut out);
            apply(s, out);
        }
        self.combine();
    }

    /// Split `split` has ended: it no longer holds the watermark back.
    pub(crate) fn finish_split(&mut self, split: usize) {
        if let Some(s) = self.splits.get_mut(split) {
            s.finished = true;
            self.combine();
        }
    }

    /// Every split's watermark, for a snapshot.
    pub(crate) fn snapshot(&self) -> Vec<(String, i64)> {
        self.splits
            .iter()
            .map(|s| (s.name.clone(), s.watermark))
            .collect()
    }

    /// What to emit since the last call: a new watermark, and a status change.
    pub(crate) fn take(&mut self) -> (Option<i64>, Option<bool>) {
        (self.pending_watermark.take(), self.pending_idle.take())
    }

    fn combine(&mut self) {
        // A subtask with no split (more subtasks than Kafka partitions)
        // has nothing to wait for: it is idle (as Flink's Kafka consumer
        // marks a subtask without partitions), until a split arrives.
        if !self.splits.is_empty() && self.splits.iter().all(|s| s.finished) {
            self.advance(i64::MAX);
            return;
        }
        let active = self
            .splits
            .iter()
            .filter(|s| !s.finished && !s.idle)
            .map(|s| s.watermark)
            .min();
        match active {
            None => {
                if !self.idle {
                    self.idle = true;
                    self.pending_idle = Some(true);
                }
            }
            Some(w) => {
                if self.idle {
                    self.idle = false;
                    self.pending_idle = Some(false);
                }
                self.advance(w);
            }
        }
    }

    fn advance(&mut self, w: i64) {
        if w > self.combined {
            self.combined = w;
            self.pending_watermark = Some(w);
        }
    }
}

fn apply<G>(s: &mut Split<G>, out: WatermarkOutput) {
    if let Some(w) = out.watermark {
        s.watermark = s.watermark.max(w);
    }
    if let Some(idle) = out.idle {
        s.idle = idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(ms: u64) -> BoundedOutOfOrderness {
        BoundedOutOfOrderness::new(Duration::from_millis(ms))
    }

    fn two_splits(idle: Option<u64>) -> SplitWatermarks<BoundedOutOfOrderness> {
        let mut w = SplitWatermarks::new(
            idle.map(Duration::from_millis),
            Duration::from_millis(200),
            0,
        );
        w.add_split("a".into(), bounded(10), None, 0);
        w.add_split("b".into(), bounded(10), None, 0);
        w
    }

    fn events(w: &mut SplitWatermarks<BoundedOutOfOrderness>, split: usize, ts: &[i64], now: i64) {
        let recs: Vec<()> = vec![(); ts.len()];
        w.on_events(split, &recs, ts, now);
    }

    /// Bounded out-of-orderness: largest timestamp - bound - 1, emitted periodically.
    #[test]
    fn bounded_out_of_orderness_emits_periodically() {
        let mut w = SplitWatermarks::new(None, Duration::from_millis(200), 0);
        w.add_split("s".into(), bounded(10), None, 0);
        events(&mut w, 0, &[100, 50, 120], 1);
        assert_eq!(w.take(), (None, None), "nothing before the period");
        w.on_periodic::<()>(199);
        assert_eq!(w.take(), (None, None));
        w.on_periodic::<()>(200);
        assert_eq!(w.take(), (Some(109), None));
        w.on_periodic::<()>(400);
        assert_eq!(w.take(), (None, None), "no new watermark without progress");
    }

    /// A periodic check long after a split's last records (a loaded
    /// machine) first emits their watermark; inactivity counts from the
    /// first check without records, idle once more than the timeout passed.
    #[test]
    fn a_late_check_emits_before_the_split_goes_idle() {
        let mut w = two_splits(Some(200));
        events(&mut w, 0, &[1000], 1);
        events(&mut w, 1, &[2000], 1);
        w.on_periodic::<()>(5_000);
        assert_eq!(w.take(), (Some(989), None), "both active at this check");
        w.on_periodic::<()>(5_200);
        assert_eq!(w.take(), (None, None), "first inactive check");
        w.on_periodic::<()>(5_400);
        assert_eq!(
            w.take(),
            (None, None),
            "200 ms inactive: not more than the timeout"
        );
        w.on_periodic::<()>(5_600);
        assert_eq!(w.take(), (None, Some(true)), "400 ms inactive: idle");
    }

    /// A split that never had a record goes idle before one whose records
    /// just stopped, so the active one's watermark is emitted before the
    /// subtask is idle (it was lost when both went idle at the same check).
    #[test]
    fn the_last_watermark_is_emitted_before_every_split_is_idle() {
        let mut w = two_splits(Some(200));
        w.on_periodic::<()>(200);
        events(&mut w, 0, &[5000], 250);
        w.on_periodic::<()>(400);
        assert_eq!(
            w.take(),
            (None, None),
            "the empty split holds it (not idle yet)"
        );
        w.on_periodic::<()>(600);
        assert_eq!(
            w.take(),
            (Some(4989), None),
            "the empty split is idle first: the active one's watermark goes out"
        );
        for t in [800, 1000] {
            w.on_periodic::<()>(t);
        }
        assert_eq!(w.take(), (None, Some(true)), "then both are idle");
    }

    /// A subtask without splits is idle, and active again once one arrives.
    #[test]
    fn no_split_is_idle_until_one_arrives() {
        let mut w: SplitWatermarks<BoundedOutOfOrderness> =
            SplitWatermarks::new(None, Duration::from_millis(200), 0);
        w.on_periodic::<()>(200);
        assert_eq!(w.take(), (None, Some(true)));
        w.add_split("p0".into(), bounded(10), None, 300);
        events(&mut w, 0, &[1000], 301);
        assert_eq!(
            w.take(),
            (None, Some(false)),
            "active again, no watermark yet"
        );
        w.on_periodic::<()>(400);
        assert_eq!(w.take(), (Some(989), None));
    }

    /// The subtask's watermark is the minimum over its splits, never going back.
    #[test]
    fn minimum_over_splits() {
        let mut w = two_splits(None);
        events(&mut w, 0, &[1000], 1);
        w.on_periodic::<()>(200);
        assert_eq!(w.take().0, None, "split b holds it back (no watermark yet)");
        events(&mut w, 1, &[500], 201);
        w.on_periodic::<()>(400);
        assert_eq!(w.take().0, Some(489));
        w.finish_split(1);
        assert_eq!(w.take().0, Some(989), "a finished split no longer holds it");
        w.finish_split(0);
        assert_eq!(w.take().0, Some(i64::MAX));
    }

    /// An idle split stops holding the watermark back; when it gets data again it holds it again.
    #[test]
    fn idle_split_released_and_reactivated() {
        let mut w = two_splits(Some(1000));
        events(&mut w, 0, &[100], 0);
        events(&mut w, 1, &[100], 0);
        w.on_periodic::<()>(200);
        assert_eq!(w.take(), (Some(89), None));
        // Only split a gets data from now on.
        for t in (400..=1600).step_by(200) {
            events(&mut w, 0, &[t * 10], t);
            w.on_periodic::<()>(t);
        }
        // Split b inactive from the check at 400; at 1600 more than 1000 ms:
        // idle, and a alone counts.
        assert_eq!(w.take(), (Some(15_989), None));
        // b becomes active again with an old timestamp: the watermark waits for it.
        events(&mut w, 1, &[5000], 1700);
        events(&mut w, 0, &[20_000], 1700);
        w.on_periodic::<()>(1800);
        assert_eq!(w.take(), (None, None), "b (at 4989) holds it at 15989");
        events(&mut w, 1, &[30_000], 1900);
        w.on_periodic::<()>(2000);
        assert_eq!(w.take(), (Some(19_989), None));
    }

    /// All splits idle: the subtask's output is idle, and active again with data.
    #[test]
    fn all_idle_marks_the_output_idle() {
        let mut w = two_splits(Some(500));
        w.on_periodic::<()>(600);
        assert_eq!(w.take(), (None, None), "inactive from this check on");
        w.on_periodic::<()>(1200);
        assert_eq!(w.take(), (None, Some(true)));
        w.on_periodic::<()>(1400);
        assert_eq!(w.take(), (None, None), "reported once");
        events(&mut w, 1, &[50], 1500);
        w.on_periodic::<()>(1600);
        assert_eq!(w.take(), (Some(39), Some(false)));
    }

    /// A restored split starts from its checkpointed watermark.
    #[test]
    fn restored_watermarks_are_floors() {
        let mut w = SplitWatermarks::new(None, Duration::from_millis(200), 0);
        w.add_split("a".into(), bounded(0), Some(5000), 0);
        w.on_periodic::<()>(200);
        assert_eq!(w.take().0, Some(5000));
        events(&mut w, 0, &[10], 300);
        w.on_periodic::<()>(400);
        assert_eq!(w.take().0, None, "never below the restored watermark");
        assert_eq!(w.snapshot(), vec![("a".to_string(), 5000)]);
    }

    /// A punctuated generator emits from on_event.
    #[test]
    fn punctuated_generator() {
        struct EveryTen;
        impl WatermarkGenerator<u32> for EveryTen {
            fn on_event(&mut self, e: &u32, ts: i64, out: &mut WatermarkOutput) {
                if e % 10 == 0 {
                    out.emit_watermark(ts);
                }
            }
            fn on_periodic_emit(&mut self, _: &mut WatermarkOutput) {}
        }
        let mut w = SplitWatermarks::new(None, Duration::from_millis(200), 0);
        w.add_split("s".into(), EveryTen, None, 0);
        w.on_events(0, &[1u32, 2, 10, 11], &[5, 6, 7, 8], 1);
        assert_eq!(w.take().0, Some(7));
    }
}
