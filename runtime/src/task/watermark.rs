//! The watermark valve of a subtask (Flink's `StatusWatermarkValve`).
//!
//! A subtask with several inputs has one event-time clock: its input
//! watermark is the minimum of the latest watermark of every input that is
//! **active**: not ended and not idle. The valve keeps the per-input
//! watermarks and statuses and answers, for each event, whether that
//! combined watermark advanced (and to what) and whether the subtask's own
//! status changed; the watermark never goes back.
//!
//! - An input that ends stops holding the others back; when the last one
//!   ends, event time is complete ([`WatermarkValve::end_of_time`]).
//! - An input that turns idle (its sources found no data for
//!   `with_idleness`' timeout) is left out of the minimum; when every open
//!   input is idle the subtask is idle too and says so downstream.
//! - An input that becomes active again counts from its current watermark
//!   on: the combined watermark waits for it (it does not go back, and it
//!   does not pass it), so its records are not made late by its pause.
//!
//! Pure: no I/O, no clock. The processing loop ([`super::runner`]) passes
//! what the valve lets through to the chain.

/// What the valve lets through for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ValveOutput {
    /// The new combined watermark, if it advanced.
    pub(crate) watermark: Option<i64>,
    /// The subtask's status changed: idle (`true`) or active again.
    pub(crate) idle: Option<bool>,
}

/// Per-input watermarks and statuses, and their combination.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkValve {
    inputs: Vec<i64>,
    ended: Vec<bool>,
    idle: Vec<bool>,
    combined: i64,
    /// Whether the subtask's output is idle.
    output_idle: bool,
}

impl WatermarkValve {
    /// A valve for `inputs` input channels, all active at the start of time.
    pub(crate) fn new(inputs: usize) -> Self {
        WatermarkValve {
            inputs: vec![i64::MIN; inputs],
            ended: vec![false; inputs],
            idle: vec![false; inputs],
            combined: i64::MIN,
            output_idle: false,
        }
    }

    /// The combined watermark let through so far.
    #[cfg(test)]
    pub(crate) fn current(&self) -> i64 {
        self.combined
    }

    /// Input `i` delivered watermark `w`: the new combined watermark, if it advanced.
    pub(crate) fn on_watermark(&mut self, i: usize, w: i64) -> ValveOutput {
        self.inputs[i] = self.inputs[i].max(w);
        // A watermark on an idle channel means it is active again (Flink's
        // sources mark themselves active before they emit).
        self.idle[i] = false;
        self.advance()
    }

    /// Input `i` turned idle (`true`) or active again (`false`).
    pub(crate) fn on_idle(&mut self, i: usize, idle: bool) -> ValveOutput {
        self.idle[i] = idle;
        self.advance()
    }

    /// Input `i` ended: the new combined watermark, if it advanced.
    pub(crate) fn on_input_finished(&mut self, i: usize) -> ValveOutput {
        self.ended[i] = true;
        self.advance()
    }

    /// Event time is complete (end of input, stop with drain): `i64::MAX`,
    /// unless that was let through already.
    pub(crate) fn end_of_time(&mut self) -> Option<i64> {
        (self.combined < i64::MAX).then(|| {
            self.combined = i64::MAX;
            i64::MAX
        })
    }

    fn advance(&mut self) -> ValveOutput {
        let mut out = ValveOutput::default();
        let open = self.ended.iter().filter(|e| !**e).count();
        let min = (0..self.inputs.len())
            .filter(|&i| !self.ended[i] && !self.idle[i])
            .map(|i| self.inputs[i])
            .min();
        match min {
            // Every open input is idle: so is this subtask.
            None if open > 0 && !self.output_idle => {
                self.output_idle = true;
                out.idle = Some(true);
            }
            None => {}
            Some(min) => {
                if self.output_idle {
                    self.output_idle = false;
                    out.idle = Some(false);
                }
                if min > self.combined {
                    self.combined = min;
                    out.watermark = Some(min);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm(o: ValveOutput) -> Option<i64> {
        o.watermark
    }

    /// The combined watermark is the minimum over inputs, and only moves forward.
    #[test]
    fn minimum_over_inputs_and_never_back() {
        let mut v = WatermarkValve::new(3);
        assert_eq!(wm(v.on_watermark(0, 10)), None);
        assert_eq!(wm(v.on_watermark(1, 20)), None);
        assert_eq!(wm(v.on_watermark(2, 5)), Some(5));
        assert_eq!(wm(v.on_watermark(2, 15)), Some(10));
        // An input going back changes nothing.
        assert_eq!(wm(v.on_watermark(0, 3)), None);
        assert_eq!(wm(v.on_watermark(0, 30)), Some(15));
        assert_eq!(v.current(), 15);
    }

    /// An ended input no longer holds the watermark back; when all have
    /// ended, nothing more advances (end of time comes from the loop).
    #[test]
    fn ended_inputs_are_excluded() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(wm(v.on_watermark(0, 100)), None);
        assert_eq!(wm(v.on_input_finished(1)), Some(100));
        assert_eq!(wm(v.on_watermark(0, 150)), Some(150));
        assert_eq!(v.on_input_finished(0), ValveOutput::default());
        assert_eq!(v.end_of_time(), Some(i64::MAX));
        assert_eq!(v.end_of_time(), None);
        assert_eq!(v.current(), i64::MAX);
    }

    /// A subtask without inputs (a source) has no input watermark.
    #[test]
    fn no_inputs_no_watermark() {
        let mut v = WatermarkValve::new(0);
        assert_eq!(v.current(), i64::MIN);
        assert_eq!(v.end_of_time(), Some(i64::MAX));
    }

    /// An input that ends before any watermark does not hold back the others.
    #[test]
    fn input_ending_without_watermarks() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(wm(v.on_input_finished(0)), None);
        assert_eq!(wm(v.on_watermark(1, 7)), Some(7));
    }

    /// An idle input is left out; active again, it holds the watermark again.
    #[test]
    fn idle_inputs_are_left_out_until_active() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(wm(v.on_watermark(0, 100)), None);
        assert_eq!(wm(v.on_watermark(1, 10)), Some(10));
        assert_eq!(
            v.on_idle(1, true),
            ValveOutput {
                watermark: Some(100),
                idle: None
            }
        );
        assert_eq!(wm(v.on_watermark(0, 200)), Some(200));
        // Input 1 comes back at 50: the watermark stays at 200 and waits for it.
        assert_eq!(v.on_idle(1, false), ValveOutput::default());
        assert_eq!(wm(v.on_watermark(0, 300)), None);
        assert_eq!(wm(v.on_watermark(1, 250)), Some(250));
        assert_eq!(wm(v.on_watermark(1, 400)), Some(300));
    }

    /// All inputs idle: the subtask is idle; any input active: it is active.
    #[test]
    fn all_idle_makes_the_subtask_idle() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_idle(0, true).idle, None);
        assert_eq!(v.on_idle(1, true).idle, Some(true));
        assert_eq!(v.on_idle(1, true).idle, None, "reported once");
        let o = v.on_watermark(0, 5);
        assert_eq!(o.idle, Some(false));
        assert_eq!(o.watermark, Some(5));
        // An ended input does not count as idle or active.
        let mut v = WatermarkValve::new(2);
        v.on_input_finished(0);
        assert_eq!(v.on_idle(1, true).idle, Some(true));
    }
}
