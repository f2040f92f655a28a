//! Which windows a record belongs to (Flink's `WindowAssigner`s), and the
//! arithmetic of [`TimeWindow`]s. Pure.

use std::time::Duration;

use crate::time::TimeDomain;

/// A window of time `[start, end)` in ms (Flink's `TimeWindow`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TimeWindow {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after the window.
    pub end: i64,
}

impl TimeWindow {
    /// `[start, end)`.
    pub fn new(start: i64, end: i64) -> Self {
        TimeWindow { start, end }
    }
    /// The largest timestamp in the window, `end - 1`: the window fires
    /// when the watermark (or the clock) reaches it.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }
    /// Whether the windows overlap or touch (Flink's `intersects`, used to merge sessions).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && self.end >= other.start
    }
    /// The smallest window covering both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// The start of the window of `size` (and `offset`) that holds `timestamp`
/// (Flink's `TimeWindow.getWindowStartWithOffset`, floored for negative
/// timestamps too).
pub fn window_start(timestamp: i64, offset: i64, size: i64) -> i64 {
    timestamp - (timestamp - offset).rem_euclid(size)
}

/// How a keyed stream is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Windows of `size` ms, one after the other.
    Tumbling {
        /// Window length (ms).
        size: i64,
        /// Shift of the window starts (ms).
        offset: i64,
        /// Event time or processing time.
        domain: TimeDomain,
    },
    /// Windows of `size` ms starting every `slide` ms.
    Sliding {
        /// Window length (ms).
        size: i64,
        /// Distance between window starts (ms).
        slide: i64,
        /// Shift of the window starts (ms).
        offset: i64,
        /// Event time or processing time.
        domain: TimeDomain,
    },
    /// Sessions: a window per record `[t, t + gap)`, merged with every
    /// window it touches.
    Session {
        /// The gap (ms) after which a session ends.
        gap: i64,
        /// Event time or processing time.
        domain: TimeDomain,
    },
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128 / 4) as i64
}

/// Tumbling windows on event time (Flink's `TumblingEventTimeWindows`).
pub struct TumblingEventTimeWindows;
impl TumblingEventTimeWindows {
    /// Windows of `size`.
    pub fn of(size: Duration) -> WindowAssigner {
        Self::of_with_offset(size, Duration::ZERO)
    }
    /// Windows of `size` whose starts are shifted by `offset`.
    pub fn of_with_offset(size: Duration, offset: Duration) -> WindowAssigner {
        WindowAssigner::Tumbling {
            size: ms(size),
            offset: ms(offset),
            domain: TimeDomain::EventTime,
        }
    }
}

/// Tumbling windows on processing time (Flink's `TumblingProcessingTimeWindows`).
pub struct TumblingProcessingTimeWindows;
impl TumblingProcessingTimeWindows {
    /// Windows of `size`.
    pub fn of(size: Duration) -> WindowAssigner {
        WindowAssigner::Tumbling {
            size: ms(size),
            offset: 0,
            domain: TimeDomain::ProcessingTime,
        }
    }
}

/// Sliding windows on event time (Flink's `SlidingEventTimeWindows`).
pub struct SlidingEventTimeWindows;
impl SlidingEventTimeWindows {
    /// Windows of `size` starting every `slide`.
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        WindowAssigner::Sliding {
            size: ms(size),
            slide: ms(slide),
            offset: 0,
            domain: TimeDomain::EventTime,
        }
    }
}

/// Sliding windows on processing time (Flink's `SlidingProcessingTimeWindows`).
pub struct SlidingProcessingTimeWindows;
impl SlidingProcessingTimeWindows {
    /// Windows of `size` starting every `slide`.
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        WindowAssigner::Sliding {
            size: ms(size),
            slide: ms(slide),
            offset: 0,
            domain: TimeDomain::ProcessingTime,
        }
    }
}

/// Session windows on event time (Flink's `EventTimeSessionWindows`).
pub struct EventTimeSessionWindows;
impl EventTimeSessionWindows {
    /// A session ends after `gap` without records of its key.
    pub fn with_gap(gap: Duration) -> WindowAssigner {
        WindowAssigner::Session {
            gap: ms(gap),
            domain: TimeDomain::EventTime,
        }
    }
}

/// Session windows on processing time (Flink's `ProcessingTimeSessionWindows`).
pub struct ProcessingTimeSessionWindows;
impl ProcessingTimeSessionWindows {
    /// A session ends after `gap` without records of its key.
    pub fn with_gap(gap: Duration) -> WindowAssigner {
        WindowAssigner::Session {
            gap: ms(gap),
            domain: TimeDomain::ProcessingTime,
        }
    }
}

impl WindowAssigner {
    /// Event time or processing time.
    pub fn domain(&self) -> TimeDomain {
        match *self {
            WindowAssigner::Tumbling { domain, .. }
            | WindowAssigner::Sliding { domain, .. }
            | WindowAssigner::Session { domain, .. } => domain,
        }
    }

    /// Whether windows merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }

    /// Checks the sizes (all must be positive; a slide at most the size).
    pub(crate) fn validate(&self) -> Result<(), String> {
        match *self {
            WindowAssigner::Tumbling { size, offset, .. } if size <= 0 || offset.abs() >= size => {
                Err(format!(
                    "tumbling windows need a size above 0 ms and |offset| below it (size {size} ms, offset {offset} ms)"
                ))
            }
            WindowAssigner::Sliding { size, slide, offset, .. }
                if size <= 0 || slide <= 0 || offset.abs() >= slide =>
            {
                Err(format!(
                    "sliding windows need a size and a slide above 0 ms and |offset| below the slide (size {size} ms, slide {slide} ms)"
                ))
            }
            WindowAssigner::Session { gap, .. } if gap <= 0 => Err(format!(
                "session windows need a gap above 0 ms (gap {gap} ms)"
            )),
            _ => Ok(()),
        }
    }

    /// The windows a record at `timestamp` belongs to, into `out` (cleared
    /// first), latest start first.
    pub fn assign(&self, timestamp: i64, out: &mut Vec<TimeWindow>) {
        out.clear();
        match *self {
            WindowAssigner::Tumbling { size, offset, .. } => {
                let start = window_start(timestamp, offset, size);
                out.push(TimeWindow::new(start, start.saturating_add(size)));
            }
            WindowAssigner::Sliding {
                size,
                slide,
                offset,
                ..
            } => {
                let mut start = window_start(timestamp, offset, slide);
                while start > timestamp.saturating_sub(size) {
                    out.push(TimeWindow::new(start, start.saturating_add(size)));
                    start -= slide;
                }
            }
            WindowAssigner::Session { gap, .. } => {
                out.push(TimeWindow::new(timestamp, timestamp.saturating_add(gap)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(a: WindowAssigner, ts: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        a.assign(ts, &mut v);
        v.into_iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn tumbling_floors_negative_timestamps_too() {
        let t = TumblingEventTimeWindows::of(Duration::from_secs(10));
        assert_eq!(assign(t, 0), vec![(0, 10_000)]);
        assert_eq!(assign(t, 9_999), vec![(0, 10_000)]);
        assert_eq!(assign(t, 10_000), vec![(10_000, 20_000)]);
        assert_eq!(assign(t, -1), vec![(-10_000, 0)]);
        let o = TumblingEventTimeWindows::of_with_offset(
            Duration::from_secs(10),
            Duration::from_secs(3),
        );
        assert_eq!(assign(o, 2_999), vec![(-7_000, 3_000)]);
    }

    /// Each record lies in exactly size/slide windows whose start is in (ts - size, ts].
    #[test]
    fn sliding_gives_every_covering_window() {
        let s = SlidingEventTimeWindows::of(Duration::from_secs(10), Duration::from_secs(1));
        for ts in [-1_999, -1, 0, 1, 999, 1_000, 12_345, 9_999_999] {
            let w = assign(s, ts);
            assert_eq!(w.len(), 10, "ts {ts}");
            for (start, end) in w {
                assert_eq!(start.rem_euclid(1_000), 0);
                assert!(start <= ts && ts < end && end - start == 10_000);
            }
        }
        let uneven =
            SlidingEventTimeWindows::of(Duration::from_millis(25), Duration::from_millis(10));
        assert_eq!(assign(uneven, 12), vec![(10, 35), (0, 25), (-10, 15)]);
        assert_eq!(assign(uneven, 5), vec![(0, 25), (-10, 15)]);
    }

    #[test]
    fn sessions_and_window_arithmetic() {
        let s = EventTimeSessionWindows::with_gap(Duration::from_millis(100));
        assert_eq!(assign(s, 50), vec![(50, 150)]);
        let a = TimeWindow::new(0, 100);
        assert!(a.intersects(&TimeWindow::new(100, 200)), "touching merges");
        assert!(!a.intersects(&TimeWindow::new(101, 200)));
        assert_eq!(a.cover(&TimeWindow::new(50, 300)), TimeWindow::new(0, 300));
        assert_eq!(a.max_timestamp(), 99);
        assert!(s.is_merging());
        assert!(EventTimeSessionWindows::with_gap(Duration::ZERO)
            .validate()
            .is_err());
        assert!(
            SlidingEventTimeWindows::of(Duration::from_secs(1), Duration::ZERO)
                .validate()
                .is_err()
        );
    }
}
