//! The watermark valve of a subtask (Flink's `StatusWatermarkValve`).
//!
//! A subtask with several inputs has one event-time clock: its input
//! watermark is the minimum of the latest watermark of every input that has
//! not ended. The valve keeps the per-input watermarks and answers, for each
//! event, whether that combined watermark advanced (and to what); it never
//! goes back. An input that ends stops holding the others back; when the
//! last one ends, event time is complete ([`WatermarkValve::end_of_time`]).
//! Pure: no I/O, no clock. The processing loop ([`super::runner`]) passes
//! what the valve lets through to the chain.

/// Per-input watermarks and their minimum over the active inputs.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkValve {
    inputs: Vec<i64>,
    ended: Vec<bool>,
    combined: i64,
}

impl WatermarkValve {
    /// A valve for `inputs` input channels, all at the start of time.
    pub(crate) fn new(inputs: usize) -> Self {
        WatermarkValve {
            inputs: vec![i64::MIN; inputs],
            ended: vec![false; inputs],
            combined: i64::MIN,
        }
    }

    /// The combined watermark let through so far.
    #[cfg(test)]
    pub(crate) fn current(&self) -> i64 {
        self.combined
    }

    /// Input `i` delivered watermark `w`: the new combined watermark, if it advanced.
    pub(crate) fn on_watermark(&mut self, i: usize, w: i64) -> Option<i64> {
        self.inputs[i] = self.inputs[i].max(w);
        self.advance()
    }

    /// Input `i` ended: the new combined watermark, if it advanced.
    pub(crate) fn on_input_finished(&mut self, i: usize) -> Option<i64> {
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

    fn advance(&mut self) -> Option<i64> {
        let min = self
            .inputs
            .iter()
            .zip(&self.ended)
            .filter(|(_, ended)| !**ended)
            .map(|(w, _)| *w)
            .min()?;
        (min > self.combined).then(|| {
            self.combined = min;
            min
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The combined watermark is the minimum over the inputs, and only moves forward.
    #[test]
    fn minimum_over_inputs_and_never_back() {
        let mut v = WatermarkValve::new(3);
        assert_eq!(v.on_watermark(0, 10), None);
        assert_eq!(v.on_watermark(1, 20), None);
        assert_eq!(v.on_watermark(2, 5), Some(5));
        assert_eq!(v.on_watermark(2, 15), Some(10));
        // An input going back changes nothing.
        assert_eq!(v.on_watermark(0, 3), None);
        assert_eq!(v.on_watermark(0, 30), Some(15));
        assert_eq!(v.current(), 15);
    }

    /// An ended input no longer holds the watermark back; when all have
    /// ended, nothing more advances (end of time comes from the loop).
    #[test]
    fn ended_inputs_are_excluded() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, 100), None);
        assert_eq!(v.on_input_finished(1), Some(100));
        assert_eq!(v.on_watermark(0, 150), Some(150));
        assert_eq!(v.on_input_finished(0), None);
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
        assert_eq!(v.on_input_finished(0), None);
        assert_eq!(v.on_watermark(1, 7), Some(7));
    }
}
