//! Time as keyed functions see it: the two clocks ([`TimeDomain`]), the
//! wall clock ([`processing_time_now`]), and the handle a function
//! registers timers through ([`TimerService`]). The timers themselves,
//! kept as keyed state, are [`crate::timers`]; this module is what the
//! state's [`KeyedContext`](crate::state::KeyedContext) hands out, so it
//! depends on nothing.

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TimeDomain {
    /// The operator's watermark.
    EventTime,
    /// The wall clock (milliseconds since the Unix epoch).
    ProcessingTime,
}

impl TimeDomain {
    pub(crate) fn code(self) -> u8 {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }
    pub(crate) fn from_code(c: u8) -> Self {
        if c == 0 {
            TimeDomain::EventTime
        } else {
            TimeDomain::ProcessingTime
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch (processing time).
pub fn processing_time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A change a function asked for while handling a record or a timer,
/// applied by the operator once the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerOp {
    pub(crate) domain: TimeDomain,
    pub(crate) timestamp: i64,
    pub(crate) register: bool,
}

/// The timers of the current key, as a keyed function sees them
/// (Flink's `TimerService`).
pub struct TimerService<'c> {
    pub(crate) ops: &'c mut Vec<TimerOp>,
    pub(crate) watermark: i64,
}

impl TimerService<'_> {
    /// Fires [`on_timer`](crate::operator::KeyedProcessFunction::on_timer)
    /// for the current key once the watermark reaches `timestamp`.
    pub fn register_event_time_timer(&mut self, timestamp: i64) {
        self.push(TimeDomain::EventTime, timestamp, true);
    }
    /// Fires `on_timer` for the current key once the wall clock reaches
    /// `timestamp` (ms since the Unix epoch).
    pub fn register_processing_time_timer(&mut self, timestamp: i64) {
        self.push(TimeDomain::ProcessingTime, timestamp, true);
    }
    /// Deletes the current key's event-time timer at `timestamp`, if any.
    pub fn delete_event_time_timer(&mut self, timestamp: i64) {
        self.push(TimeDomain::EventTime, timestamp, false);
    }
    /// Deletes the current key's processing-time timer at `timestamp`, if any.
    pub fn delete_processing_time_timer(&mut self, timestamp: i64) {
        self.push(TimeDomain::ProcessingTime, timestamp, false);
    }
    /// The operator's current watermark (`i64::MIN` before the first).
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    /// The wall clock, ms since the Unix epoch.
    pub fn current_processing_time(&self) -> i64 {
        processing_time_now()
    }
    fn push(&mut self, domain: TimeDomain, timestamp: i64, register: bool) {
        self.ops.push(TimerOp {
            domain,
            timestamp,
            register,
        });
    }
}
