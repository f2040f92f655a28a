//! [`Counter`]: a count a function keeps and the metrics read (re-exported
//! as `metrics::Counter`). Depends on nothing else in the crate, so the
//! operators and the graph, which the metrics import, can hold one (as
//! `waits.rs` does for the wait accounting).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A monotonic count shared between the code that counts (a user function,
/// through its [`crate::operator::RuntimeContext`]) and the metrics that
/// report it. Clones count into the same value. One relaxed atomic add per
/// call: cheap, but count per batch where a function can.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_count_into_one_value() {
        let c = Counter::default();
        assert_eq!(c.count(), 0);
        let d = c.clone();
        c.inc();
        d.inc_by(41);
        assert_eq!(c.count(), 42);
        assert_eq!(d.count(), 42);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.count(), 4042);
        assert_eq!(Counter::default().count(), 0, "a new counter is its own");
    }
}
