//! The cancellation watchdog: a stopped subtask ends in bounded time, or the
//! job fails naming it.
//!
//! Stopping a subtask is cooperative. Its actor stops at once and aborts the
//! processing loop at the loop's next `.await`; user code that blocks or
//! spins (a `map` stuck in a network call, an endless loop) never reaches
//! one, and its thread keeps running. A restart must wait for that thread
//! (invariant 7 of `docs/design.md`: an old and a new attempt of one subtask
//! never run at the same time), so without a bound one stuck subtask would
//! hang failover forever, silently.
//!
//! Flink's `TaskCancelerWatchDog` bounds it; weir keeps its options and
//! meanings:
//!
//! - `task.cancellation.interval` (30 s): while a stopped subtask's loop
//!   still runs, a warning naming it and how long it has been stuck is
//!   logged this often (Flink also interrupts the task thread then; a Rust
//!   thread cannot be interrupted, so the loop is only asked, once, at its
//!   next await).
//! - `task.cancellation.timeout` (180 s, `0` disables the watchdog): when the
//!   loop still runs this long after the stop, the job fails with
//!   [`crate::Error::CancellationTimeout`], naming the stuck subtasks: never
//!   a silent hang. (Flink's TaskManager exits its process there; weir fails
//!   the job, which ends `weir`'s job binaries with exit status 1, the stuck
//!   thread with them; a library user gets the error from `execute`.)
//!
//! The watchdog runs where the job supervisor waits for a restart
//! (`JobState::restart_when_ready`, `JobState::restart_region_when_ready`);
//! the decision is the pure function [`decide`], tested here without clocks.
//! A cancelled or failed job does not wait for stuck loops (nothing is
//! started after it), so the watchdog is about restarts only.

use std::time::{Duration, Instant};

use crate::config::{options, Conf};

/// `task.cancellation.interval` and `task.cancellation.timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CancellationConfig {
    /// How often a stuck subtask is reported.
    pub interval: Duration,
    /// How long a stopped subtask may run on before the job fails (`None`: forever).
    pub timeout: Option<Duration>,
}

impl CancellationConfig {
    pub(crate) fn from_conf(conf: &Conf) -> Self {
        let timeout = conf.get(&options::TASK_CANCELLATION_TIMEOUT);
        CancellationConfig {
            interval: conf.get(&options::TASK_CANCELLATION_INTERVAL),
            timeout: (!timeout.is_zero()).then_some(timeout),
        }
    }
}

/// What to do about subtasks still running after their stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep waiting.
    Wait,
    /// Keep waiting, and log that they are stuck (one interval passed since
    /// the stop or the last report).
    Report,
    /// The timeout passed: the job fails.
    TimedOut,
}

/// The decision for a wait that began `waited` ago and was last reported
/// `since_report` ago (`None`: never).
pub(crate) fn decide(
    cfg: &CancellationConfig,
    waited: Duration,
    since_report: Option<Duration>,
) -> Verdict {
    if cfg.timeout.is_some_and(|t| waited >= t) {
        Verdict::TimedOut
    } else if since_report.unwrap_or(waited) >= cfg.interval {
        Verdict::Report
    } else {
        Verdict::Wait
    }
}

/// One wait for stopped subtasks (a region's, or the whole job's).
#[derive(Debug, Clone)]
pub(crate) struct CancellationWatch {
    since: Instant,
    reported: Option<Instant>,
}

impl CancellationWatch {
    /// The subtasks were asked to stop at `since`.
    pub(crate) fn new(since: Instant) -> Self {
        CancellationWatch {
            since,
            reported: None,
        }
    }

    /// How long the wait has lasted at `now`.
    pub(crate) fn waited(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// Decides at `now`; a [`Verdict::Report`] is remembered.
    pub(crate) fn check(&mut self, cfg: &CancellationConfig, now: Instant) -> Verdict {
        let since_report = self.reported.map(|r| now.saturating_duration_since(r));
        let v = decide(cfg, self.waited(now), since_report);
        if v == Verdict::Report {
            self.reported = Some(now);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const CFG: CancellationConfig = CancellationConfig {
        interval: Duration::from_millis(100),
        timeout: Some(Duration::from_millis(350)),
    };

    #[test]
    fn waits_reports_each_interval_then_times_out() {
        let t0 = Instant::now();
        let mut w = CancellationWatch::new(t0);
        let verdicts: Vec<Verdict> = [0u64, 50, 99, 100, 150, 199, 200, 310, 349, 350, 900]
            .iter()
            .map(|&m| w.check(&CFG, t0 + ms(m)))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Wait, Wait, Wait, Report, Wait, Wait, Report, Report, Wait, TimedOut, TimedOut]
        );
        assert_eq!(w.waited(t0 + ms(350)), ms(350));
    }

    #[test]
    fn a_zero_timeout_never_times_out() {
        let cfg = CancellationConfig {
            timeout: None,
            ..CFG
        };
        assert_eq!(decide(&cfg, ms(1_000_000), Some(ms(1))), Verdict::Wait);
        assert_eq!(decide(&cfg, ms(1_000_000), Some(ms(100))), Verdict::Report);
        let mut conf = Conf::defaults();
        assert_eq!(
            CancellationConfig::from_conf(&conf),
            CancellationConfig {
                interval: Duration::from_secs(30),
                timeout: Some(Duration::from_secs(180)),
            }
        );
        conf.set("task.cancellation.timeout", "0").unwrap();
        assert_eq!(CancellationConfig::from_conf(&conf).timeout, None);
    }
}
