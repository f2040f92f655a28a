//! The harness of the exactly-once tests whose jobs write generated keyed
//! records through the two-phase-commit file sink (`window_chaos.rs`,
//! `window_rescale.rs`, `join_chaos.rs`): record generation, the process
//! function with event- and processing-time timers the window tests share,
//! reading and comparing the committed lines, and one run under chaos
//! kills (`chaos.kill-interval`, region failover).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::operators::rng::SplitMix64;
use weir::prelude::*;
use weir::runtime::checkpoint::CheckpointStatus;

/// Kills per chaos run the tests insist on.
pub const KILLS: u64 = 100;
/// Event-time timers of `TimerSums` fire this long after their record's
/// timestamp.
pub const TIMER_DELAY: i64 = 1_000;
/// Processing-time timers of `TimerSums` fire this long after their
/// registration.
pub const PROCESSING_DELAY: i64 = 20;

/// The chaos runs take turns: each has the machine to itself, so its kill
/// rate does not depend on what else runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A record: key, event time (ms), value.
pub type Rec = (u32, i64, u64);

/// The start of generated record `i` of the input with `seed`: a key below
/// `keys` and an event time of `i * step` less up to `disorder` ms; the
/// generator, for what else the record holds.
pub fn key_and_time(
    seed: u64,
    i: u64,
    keys: u64,
    step: i64,
    disorder: i64,
) -> (u32, i64, SplitMix64) {
    let mut r = SplitMix64::for_index(seed, i);
    let key = (r.next_u64() % keys) as u32;
    let late = (r.next_u64() % disorder as u64) as i64;
    (key, i as i64 * step - late, r)
}

/// Count and sum of the records' values.
#[derive(Clone)]
pub struct CountSum;
impl AggregateFunction<Rec> for CountSum {
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, r: &Rec, acc: &mut (u64, u64)) {
        acc.0 += 1;
        acc.1 += r.2;
    }
    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// What a process function saw that contradicts its own state, and how
/// many processing-time timers fired.
#[derive(Clone, Default)]
pub struct Checks {
    pub processing_fired: Arc<AtomicU64>,
    pub violations: Arc<Mutex<Vec<String>>>,
}

impl Checks {
    pub fn violation(&self, what: String) {
        let mut v = self.violations.lock().unwrap();
        if v.len() < 20 {
            v.push(what);
        }
    }

    /// The violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

/// Per key: `pending` maps an event-time timer's time to the (count, sum)
/// of the records that registered it; `processing` is the time of the
/// key's registered processing-time timer.
#[derive(Clone)]
pub struct TimerSums {
    pending: Option<MapState<i64, (u64, u64)>>,
    processing: Option<ValueState<i64>>,
    checks: Checks,
}

impl TimerSums {
    pub fn new(checks: Checks) -> Self {
        TimerSums {
            pending: None,
            processing: None,
            checks,
        }
    }
}

/// (key, timer time, count, sum) of an event-time timer's records.
pub type TimerOut = (u32, i64, u64, u64);

impl KeyedProcessFunction<u32, Rec, TimerOut> for TimerSums {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        self.pending = Some(ctx.map_state(&MapStateDescriptor::new("pending"))?);
        self.processing = Some(ctx.value_state(&ValueStateDescriptor::new("processing"))?);
        Ok(())
    }

    fn process_element(
        &mut self,
        r: Rec,
        ctx: &mut KeyedContext<'_, u32>,
        _: &mut Collector<'_, TimerOut>,
    ) -> Result<()> {
        let (pending, processing) = (self.pending.unwrap(), self.processing.unwrap());
        let Some(ts) = ctx.timestamp() else {
            self.checks
                .violation(format!("record {r:?} without timestamp"));
            return Ok(());
        };
        if ts != r.1 {
            self.checks
                .violation(format!("record {r:?} has timestamp {ts}"));
        }
        let at = ts + TIMER_DELAY;
        pending.update_with(
            ctx,
            &at,
            || (0, 0),
            |acc| {
                acc.0 += 1;
                acc.1 += r.2;
            },
        )?;
        ctx.timer_service().register_event_time_timer(at);
        if processing.value(ctx)?.is_none() {
            let due = ctx.timer_service().current_processing_time() + PROCESSING_DELAY;
            processing.update(ctx, due)?;
            ctx.timer_service().register_processing_time_timer(due);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, TimerOut>,
    ) -> Result<()> {
        let (pending, processing) = (self.pending.unwrap(), self.processing.unwrap());
        let key = *ctx.key();
        match domain {
            TimeDomain::EventTime => {
                if ctx.current_watermark() < timestamp {
                    self.checks.violation(format!(
                        "key {key}: event-time timer {timestamp} fired at watermark {}",
                        ctx.current_watermark()
                    ));
                }
                match pending.get(ctx, &timestamp)? {
                    Some((n, sum)) => {
                        pending.remove(ctx, &timestamp)?;
                        out.collect((key, timestamp, n, sum));
                    }
                    None => self.checks.violation(format!(
                        "key {key}: event-time timer {timestamp} fired without its state"
                    )),
                }
            }
            TimeDomain::ProcessingTime => {
                let registered = processing.value(ctx)?;
                if registered != Some(timestamp) {
                    self.checks.violation(format!(
                        "key {key}: processing-time timer {timestamp} fired, registered {registered:?}"
                    ));
                }
                processing.clear(ctx)?;
                self.checks.processing_fired.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// The committed files of the file sink's directory (hidden in-progress
/// files are not committed output): name and lines of each, in directory
/// order.
pub fn committed_files(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let lines = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        files.push((name, lines));
    }
    files
}

/// The committed lines of the file sink's directory, sorted.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = committed_files(dir)
        .into_iter()
        .flat_map(|(_, lines)| lines)
        .collect();
    lines.sort();
    lines
}

/// Asserts `got == want` (both sorted), describing the difference: lines
/// missing, lines extra (duplicates included), per kind (first character).
pub fn assert_same_lines(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    fn count(v: &[String]) -> BTreeMap<&str, i64> {
        let mut m: BTreeMap<&str, i64> = BTreeMap::new();
        for l in v {
            *m.entry(l.as_str()).or_default() += 1;
        }
        m
    }
    let (g, w) = (count(got), count(want));
    // Per kind, the lines `a` has more often than `b`.
    let surplus = |a: &BTreeMap<&str, i64>, b: &BTreeMap<&str, i64>| {
        let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (l, n) in a {
            let d = n - b.get(l).copied().unwrap_or(0);
            if d > 0 {
                by_kind
                    .entry(l.chars().take(1).collect())
                    .or_default()
                    .push(format!("{l} (x{d})"));
            }
        }
        by_kind
            .iter()
            .map(|(kind, v)| format!("{kind}: {}, first {:?}", v.len(), &v[..v.len().min(5)]))
            .collect::<Vec<_>>()
            .join("; ")
    };
    panic!(
        "{what}: {} lines committed, {} expected; missing: [{}]; extra or duplicated: [{}]",
        got.len(),
        want.len(),
        surplus(&w, &g),
        surplus(&g, &w)
    );
}

/// A finished chaos run.
pub struct ChaosRun {
    pub restarts: u64,
    /// The committed lines, sorted.
    pub lines: Vec<String>,
    pub seconds: f64,
    /// End-to-end durations (ms) of the completed checkpoints.
    pub checkpoints: Vec<f64>,
}

impl ChaosRun {
    /// Restarts, time and checkpoints, for the test's log.
    pub fn summary(&self) -> String {
        format!(
            "{} restarts in {:.1} s, {} checkpoints completed (mean {:.0} ms)",
            self.restarts,
            self.seconds,
            self.checkpoints.len(),
            self.checkpoints.iter().sum::<f64>() / self.checkpoints.len().max(1) as f64,
        )
    }

    /// Asserts there were at least `KILLS` kills.
    pub fn assert_kills(&self, what: &str) {
        assert!(
            self.restarts >= KILLS,
            "{what}: only {} kills",
            self.restarts
        );
    }
}

/// Runs the job `build` defines (into the given directory) at parallelism
/// 2 with a kill every 40 ms and checkpoints every 10 ms, `chaos.seed` at
/// `seed`, and `mode`'s settings on top; one run at a time. Fails after
/// 240 s.
pub fn run_under_chaos(
    job_name: &str,
    seed: u64,
    mode: &[(&str, &str)],
    build: impl FnOnce(&Env, &Path),
) -> ChaosRun {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut conf = Conf::defaults();
    for (k, v) in [
        (
            "execution.checkpointing.dir",
            dir.path().join("ckpt").display().to_string().as_str(),
        ),
        ("execution.checkpointing.interval", "10ms"),
        ("parallelism.default", "2"),
        ("pipeline.auto-watermark-interval", "5ms"),
        ("pipeline.batch-size", "64"),
        ("chaos.kill-interval", "40ms"),
        ("chaos.seed", &seed.to_string()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "1000000"),
    ] {
        conf.set(k, v).unwrap();
    }
    for (k, v) in mode {
        conf.set(k, v).unwrap();
    }
    let env = Env::from_conf(conf).unwrap();
    build(&env, &out);
    let t0 = Instant::now();
    let mut job = env.execute_async(job_name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !job.is_done() {
        if Instant::now() > deadline {
            let completed = job
                .checkpoint_stats()
                .iter()
                .rev()
                .find(|c| c.status == CheckpointStatus::Completed)
                .map(|c| c.id);
            job.cancel();
            panic!(
                "seed {seed} {mode:?}: not done after 240 s ({} restarts, last completed checkpoint {completed:?}, last failure {:?})",
                job.num_restarts(),
                job.last_failure()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let checkpoints: Vec<f64> = job
        .checkpoint_stats()
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .map(|c| c.end_to_end_duration)
        .collect();
    let result = job
        .wait()
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}"));
    ChaosRun {
        restarts: result.restarts,
        seconds: t0.elapsed().as_secs_f64(),
        checkpoints,
        lines: committed_lines(&out),
    }
}
