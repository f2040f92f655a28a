//! Restart strategies: whether a failed job (or failover region) restarts,
//! and after how long.
//!
//! Flink's `restart-strategy.type` and its options, with the same names and
//! meanings:
//!
//! | type | options | decision on each failure |
//! |------|---------|--------------------------|
//! | `none` | | give up at once: the job fails |
//! | `fixed-delay` | `restart-strategy.fixed-delay.attempts`, `.delay` | restart after `delay`, at most `attempts` times over the job's life |
//! | `failure-rate` | `restart-strategy.failure-rate.max-failures-per-interval`, `.failure-rate-interval`, `.delay` | restart after `delay` unless more than `max-failures-per-interval` failures fall in the last `failure-rate-interval` |
//! | `exponential-delay` | `restart-strategy.exponential-delay.initial-backoff`, `.max-backoff`, `.backoff-multiplier`, `.jitter-factor`, `.reset-backoff-threshold`, `.attempts-before-reset-backoff` | restart after the current backoff (± jitter); the backoff is multiplied after each restart up to `max-backoff`; a failure that comes at least `reset-backoff-threshold` after the previous one resets the backoff and the attempt count; give up after `attempts-before-reset-backoff` restarts without a reset |
//!
//! When `restart-strategy.type` is not set, the strategy is Flink's default:
//! `exponential-delay` (1 s growing by 1.5 to 1 min, ±10 % jitter, reset
//! after 1 h without failures, unlimited attempts) when checkpointing is on,
//! `none` when it is off (a restart without a checkpoint would replay the
//! input from its start). Setting any `restart-strategy.<type>.*` option does
//! not select that type: only `restart-strategy.type` does.
//!
//! With region failover every region failure is one failure for the
//! strategy, as in Flink (one strategy per job, not per region). A failure
//! that is only a consequence of a failure being recovered (a subtask of the
//! region being stopped) is not counted: the job master filters those before
//! asking.
//!
//! The decision is a pure function of the failure times
//! ([`RestartTracker::on_failure`] takes the time as an argument), so the
//! strategies are tested without clocks; the job master
//! ([`crate::job`]) owns the I/O: it measures the time, waits the delay
//! (without blocking its mailbox) and restarts.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{options, Conf};

/// A configured restart strategy (`restart-strategy.*`).
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// `none`: never restart.
    None {
        /// `restart-strategy.type` was not set (and checkpointing is off),
        /// for the message that explains the job's failure.
        defaulted: bool,
    },
    /// `fixed-delay`.
    FixedDelay {
        /// Restarts allowed over the job's life.
        attempts: u64,
        /// Pause before each restart.
        delay: Duration,
    },
    /// `failure-rate`.
    FailureRate {
        /// Failures tolerated within one interval.
        max_failures_per_interval: u64,
        /// The sliding window failures are counted in.
        interval: Duration,
        /// Pause before each restart.
        delay: Duration,
    },
    /// `exponential-delay`.
    ExponentialDelay {
        /// The first backoff.
        initial_backoff: Duration,
        /// The largest backoff.
        max_backoff: Duration,
        /// Factor applied to the backoff after each restart.
        multiplier: f64,
        /// Relative random spread of each delay (0.1: ±10 %).
        jitter: f64,
        /// A failure this long after the previous one resets backoff and attempts.
        reset_threshold: Duration,
        /// Restarts allowed without a reset.
        attempts: u64,
    },
}

impl RestartStrategy {
    /// The strategy `conf` selects.
    pub fn from_conf(conf: &Conf) -> Self {
        match conf
            .get(&options::RESTART_STRATEGY)
            .to_ascii_lowercase()
            .as_str()
        {
            "none" | "off" | "disable" => RestartStrategy::None { defaulted: false },
            // Not set: Flink's default, exponential-delay with checkpointing
            // and none without (a restart without a checkpoint would replay
            // from the start and duplicate what was written).
            "" if conf.get(&options::CHECKPOINTING_INTERVAL).is_none() => {
                RestartStrategy::None { defaulted: true }
            }
            "" | "exponential-delay" | "exponentialdelay" => RestartStrategy::ExponentialDelay {
                initial_backoff: conf.get(&options::RESTART_EXP_INITIAL),
                max_backoff: conf.get(&options::RESTART_EXP_MAX),
                multiplier: conf.get(&options::RESTART_EXP_MULTIPLIER),
                jitter: conf.get(&options::RESTART_EXP_JITTER),
                reset_threshold: conf.get(&options::RESTART_EXP_RESET),
                attempts: conf.get(&options::RESTART_EXP_ATTEMPTS),
            },
            "failure-rate" | "failurerate" => RestartStrategy::FailureRate {
                max_failures_per_interval: conf.get(&options::RESTART_FAILURE_RATE_MAX),
                interval: conf.get(&options::RESTART_FAILURE_RATE_INTERVAL),
                delay: conf.get(&options::RESTART_FAILURE_RATE_DELAY),
            },
            _ => RestartStrategy::FixedDelay {
                attempts: conf.get(&options::RESTART_ATTEMPTS),
                delay: conf.get(&options::RESTART_DELAY),
            },
        }
    }

    /// The strategy's name and settings, as a user would write them.
    pub fn describe(&self) -> String {
        match self {
            RestartStrategy::None { defaulted } => none_reason(*defaulted).into(),
            RestartStrategy::FixedDelay { attempts, delay } => format!(
                "fixed-delay: restart-strategy.fixed-delay.attempts = {attempts}, delay {delay:?}"
            ),
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval,
                ..
            } => format!(
                "failure-rate: restart-strategy.failure-rate.max-failures-per-interval = \
                 {max_failures_per_interval} per {interval:?}"
            ),
            RestartStrategy::ExponentialDelay {
                attempts,
                reset_threshold,
                ..
            } => format!(
                "exponential-delay: restart-strategy.exponential-delay.attempts-before-reset-backoff \
                 = {attempts} without {reset_threshold:?} free of failures"
            ),
        }
    }
}

fn none_reason(defaulted: bool) -> &'static str {
    if defaulted {
        "restart-strategy.type is not set and checkpointing is off (execution.checkpointing.interval), \
         so no restart (set restart-strategy.type to restart without checkpoints)"
    } else {
        "restart-strategy.type = none"
    }
}

/// What to do about one failure.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    /// Restart after `delay`.
    Restart {
        /// The pause before the restart.
        delay: Duration,
    },
    /// Do not restart: the job fails.
    GiveUp {
        /// Why, naming the option that decided it.
        reason: String,
    },
}

/// The state of a [`RestartStrategy`] over a job's life.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    /// Restarts granted (since the last reset for exponential-delay).
    restarts: u64,
    /// Times of the failures in the current failure-rate window.
    window: VecDeque<Duration>,
    /// The next exponential backoff.
    backoff: Duration,
    /// Time of the previous failure.
    last_failure: Option<Duration>,
    /// SplitMix64 state for the jitter.
    rng: u64,
}

impl RestartTracker {
    /// A tracker with no failures yet; `seed` drives the jitter.
    pub fn new(strategy: RestartStrategy, seed: u64) -> Self {
        let backoff = match &strategy {
            RestartStrategy::ExponentialDelay {
                initial_backoff, ..
            } => *initial_backoff,
            _ => Duration::ZERO,
        };
        RestartTracker {
            strategy,
            restarts: 0,
            window: VecDeque::new(),
            backoff,
            last_failure: None,
            rng: seed,
        }
    }

    /// The strategy tracked.
    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// Whether the strategy ever restarts.
    pub fn may_restart(&self) -> bool {
        !matches!(
            self.strategy,
            RestartStrategy::None { .. } | RestartStrategy::FixedDelay { attempts: 0, .. }
        )
    }

    /// Records a failure at time `now` (any fixed origin, non-decreasing) and decides.
    pub fn on_failure(&mut self, now: Duration) -> RestartDecision {
        let previous = self.last_failure.replace(now);
        match self.strategy.clone() {
            RestartStrategy::None { defaulted } => RestartDecision::GiveUp {
                reason: none_reason(defaulted).into(),
            },
            RestartStrategy::FixedDelay { attempts, delay } => {
                if self.restarts < attempts {
                    self.restarts += 1;
                    RestartDecision::Restart { delay }
                } else {
                    RestartDecision::GiveUp {
                        reason: format!("restart-strategy.fixed-delay.attempts = {attempts}"),
                    }
                }
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
            } => {
                self.window.push_back(now);
                while self
                    .window
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) >= interval)
                {
                    self.window.pop_front();
                }
                let in_window = self.window.len() as u64;
                if in_window <= max_failures_per_interval {
                    self.restarts += 1;
                    RestartDecision::Restart { delay }
                } else {
                    RestartDecision::GiveUp {
                        reason: format!(
                            "failure-rate: {in_window} failures within {interval:?}, more than \
                             restart-strategy.failure-rate.max-failures-per-interval = \
                             {max_failures_per_interval}"
                        ),
                    }
                }
            }
            RestartStrategy::ExponentialDelay {
                initial_backoff,
                max_backoff,
                multiplier,
                jitter,
                reset_threshold,
                attempts,
            } => {
                if previous.is_some_and(|p| now.saturating_sub(p) >= reset_threshold) {
                    self.backoff = initial_backoff;
                    self.restarts = 0;
                }
                if self.restarts >= attempts {
                    return RestartDecision::GiveUp {
                        reason: format!(
                            "exponential-delay: {attempts} restarts without {reset_threshold:?} \
                             free of failures (restart-strategy.exponential-delay.\
                             attempts-before-reset-backoff = {attempts})"
                        ),
                    };
                }
                self.restarts += 1;
                let base = self.backoff.min(max_backoff);
                let delay = self.jittered(base, jitter).min(max_backoff);
                self.backoff = base.mul_f64(multiplier.max(1.0)).min(max_backoff);
                RestartDecision::Restart { delay }
            }
        }
    }

    /// `base` spread uniformly by ±`jitter` × `base`.
    fn jittered(&mut self, base: Duration, jitter: f64) -> Duration {
        if jitter <= 0.0 || base.is_zero() {
            return base;
        }
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delay(d: RestartDecision) -> Duration {
        match d {
            RestartDecision::Restart { delay } => delay,
            RestartDecision::GiveUp { reason } => panic!("gave up: {reason}"),
        }
    }

    /// Not set, the strategy is Flink's default: exponential-delay with its
    /// defaults when checkpointing is on, none when it is off.
    #[test]
    fn the_default_depends_on_checkpointing() {
        let mut off = Conf::defaults();
        off.set("execution.checkpointing.interval", "off").unwrap();
        assert_eq!(
            RestartStrategy::from_conf(&off),
            RestartStrategy::None { defaulted: true }
        );
        // Checkpointing is on by default (every second).
        let mut conf = Conf::defaults();
        assert_eq!(
            RestartStrategy::from_conf(&conf),
            RestartStrategy::ExponentialDelay {
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
                multiplier: 1.5,
                jitter: 0.1,
                reset_threshold: Duration::from_secs(3600),
                attempts: 2_147_483_647,
            }
        );
        // An option of another type does not select it; the type does.
        conf.set("restart-strategy.fixed-delay.attempts", "7")
            .unwrap();
        assert!(matches!(
            RestartStrategy::from_conf(&conf),
            RestartStrategy::ExponentialDelay { .. }
        ));
        conf.set("restart-strategy.type", "fixed-delay").unwrap();
        assert_eq!(
            RestartStrategy::from_conf(&conf),
            RestartStrategy::FixedDelay {
                attempts: 7,
                delay: Duration::ZERO
            }
        );
        conf.set("restart-strategy.type", "none").unwrap();
        let mut t = RestartTracker::new(RestartStrategy::from_conf(&conf), 0);
        match t.on_failure(ms(0)) {
            RestartDecision::GiveUp { reason } => {
                assert_eq!(reason, "restart-strategy.type = none")
            }
            d => panic!("{d:?}"),
        }
        let mut t = RestartTracker::new(RestartStrategy::from_conf(&off), 0);
        match t.on_failure(ms(0)) {
            RestartDecision::GiveUp { reason } => {
                assert!(reason.contains("checkpointing is off"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn none_never_restarts() {
        let mut t = RestartTracker::new(RestartStrategy::None { defaulted: false }, 0);
        assert!(!t.may_restart());
        assert!(matches!(
            t.on_failure(ms(0)),
            RestartDecision::GiveUp { .. }
        ));
    }

    #[test]
    fn fixed_delay_gives_up_after_its_attempts() {
        let mut t = RestartTracker::new(
            RestartStrategy::FixedDelay {
                attempts: 3,
                delay: ms(7),
            },
            0,
        );
        for i in 0..3 {
            assert_eq!(delay(t.on_failure(ms(i * 100_000))), ms(7));
        }
        match t.on_failure(ms(1_000_000)) {
            RestartDecision::GiveUp { reason } => assert!(reason.contains("attempts = 3")),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn failure_rate_counts_failures_in_a_sliding_window() {
        let mut t = RestartTracker::new(
            RestartStrategy::FailureRate {
                max_failures_per_interval: 2,
                interval: ms(1000),
                delay: ms(5),
            },
            0,
        );
        assert_eq!(delay(t.on_failure(ms(0))), ms(5));
        assert_eq!(delay(t.on_failure(ms(500))), ms(5));
        // 0 left the window at 1000: two failures in it again.
        assert_eq!(delay(t.on_failure(ms(1000))), ms(5));
        // 500, 1000, 1400: three within one second.
        match t.on_failure(ms(1400)) {
            RestartDecision::GiveUp { reason } => {
                assert!(reason.contains("3 failures"), "{reason}");
                assert!(reason.contains("max-failures-per-interval = 2"), "{reason}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn failure_rate_keeps_restarting_slow_failures() {
        let mut t = RestartTracker::new(
            RestartStrategy::FailureRate {
                max_failures_per_interval: 1,
                interval: ms(100),
                delay: ms(0),
            },
            0,
        );
        for i in 0..1000 {
            delay(t.on_failure(ms(i * 100)));
        }
    }

    fn exponential(jitter: f64, attempts: u64) -> RestartStrategy {
        RestartStrategy::ExponentialDelay {
            initial_backoff: ms(10),
            max_backoff: ms(100),
            multiplier: 2.0,
            jitter,
            reset_threshold: ms(10_000),
            attempts,
        }
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets() {
        let mut t = RestartTracker::new(exponential(0.0, 100), 0);
        let delays: Vec<Duration> = (0..6).map(|i| delay(t.on_failure(ms(i)))).collect();
        assert_eq!(
            delays,
            vec![ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]
        );
        // Quiet for the reset threshold: back to the initial backoff.
        assert_eq!(delay(t.on_failure(ms(5 + 10_000))), ms(10));
        assert_eq!(delay(t.on_failure(ms(5 + 10_001))), ms(20));
    }

    #[test]
    fn exponential_delay_gives_up_without_a_reset_and_recovers_after_one() {
        let mut t = RestartTracker::new(exponential(0.0, 3), 0);
        for i in 0..3 {
            delay(t.on_failure(ms(i)));
        }
        assert!(matches!(
            t.on_failure(ms(4)),
            RestartDecision::GiveUp { .. }
        ));
        let mut t = RestartTracker::new(exponential(0.0, 3), 0);
        for i in 0..3 {
            delay(t.on_failure(ms(i)));
        }
        assert_eq!(delay(t.on_failure(ms(20_000))), ms(10));
    }

    #[test]
    fn jitter_stays_within_its_factor_and_is_seeded() {
        let run = |seed| {
            let mut t = RestartTracker::new(exponential(0.5, 1000), seed);
            (0..200)
                .map(|i| delay(t.on_failure(ms(i))))
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        assert!(a[0] >= ms(5) && a[0] <= ms(15), "{:?}", a[0]);
        assert!(a.iter().all(|d| *d <= ms(100)));
        assert!(
            a[10..].iter().any(|d| *d < ms(90)),
            "jitter spreads capped delays"
        );
    }
}
