//! Failover: a job whose subtasks are killed (or fail) restarts from its
//! latest completed checkpoint, as often as the restart strategy allows, and
//! its committed output is still exactly once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use weir::operators::rng::SplitMix64;
use weir::prelude::*;

fn conf(dir: &std::path::Path, pairs: &[(&str, &str)]) -> Conf {
    let mut c = Conf::defaults();
    c.set("execution.checkpointing.dir", dir.display()).unwrap();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

/// A keyed running count into the exactly-once file sink.
fn build(env: &Env, n: u64, out: &std::path::Path) {
    let sink = FileSink::new(out, |(k, c): &(u64, u64), line: &mut String| {
        line.push_str(&format!("{k}\t{c}"))
    })
    .unwrap();
    env.add_source(GeneratorSource::new(3, Some(n), |i, _| i % 997).with_rate(400_000.0))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count")
        .add_sink(sink)
        .name("files");
}

fn reference(n: u64) -> std::collections::BTreeMap<String, u64> {
    let mut r = std::collections::BTreeMap::new();
    for i in 0..n {
        *r.entry((i % 997).to_string()).or_insert(0) += 1;
    }
    r
}

#[test]
fn exactly_once_through_random_kills() {
    for (seed, extra) in [
        (1u64, vec![]),
        (
            2,
            vec![("execution.checkpointing.unaligned.enabled", "true")],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let n = 600_000u64;
        let mut pairs = vec![
            ("execution.checkpointing.interval", "20ms"),
            ("parallelism.default", "2"),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "1000"),
        ];
        pairs.extend(extra);
        let env = Env::from_conf(conf(&dir.path().join("ckpt"), &pairs)).unwrap();
        build(&env, n, &out);
        let mut job = env.execute_async("killed").unwrap();
        let mut rng = SplitMix64::new(seed);
        let targets = [("numbers", 2), ("count", 2)];
        let mut kills = 0;
        let started = Instant::now();
        while !job.is_done() && kills < 20 {
            std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
            let (op, p) = targets[rng.below(2) as usize];
            if job.kill_subtask(op, rng.below(p) as usize).is_ok() {
                kills += 1;
            }
            assert!(started.elapsed() < Duration::from_secs(120));
        }
        let restarts = job.num_restarts();
        job.wait().unwrap();
        eprintln!("seed {seed}: {kills} kills, {restarts} restarts");
        assert!(kills >= 5, "only {kills} kills landed");
        assert!(restarts >= 5, "only {restarts} restarts");
        assert_running_counts(&read_output(&out), &reference(n));
    }
}

#[test]
fn restart_strategy_gives_up_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_conf(conf(
        dir.path(),
        &[
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "2"),
        ],
    ))
    .unwrap();
    env.add_source(GeneratorSource::new(3, None, |i, _| i))
        .map(|i: u64| {
            if i == 3_000 {
                panic!("bad record {i}")
            } else {
                i
            }
        })
        .name("fragile")
        .add_sink(DiscardSink);
    let job = env.execute_async("fragile-job").unwrap();
    let err = job.wait().unwrap_err().to_string();
    assert!(err.contains("gave up after 2 restarts"), "{err}");
    assert!(
        err.contains("operator 'fragile' (subtask 0) failed: panicked: bad record 3000"),
        "{err}"
    );
}

#[test]
fn no_restart_strategy_fails_at_once_and_bad_kill_requests_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_conf(conf(dir.path(), &[("restart-strategy.type", "none")])).unwrap();
    env.add_source(GeneratorSource::new(3, None, |i, _| i).with_rate(10_000.0))
        .name("src")
        .add_sink(DiscardSink);
    let job = env.execute_async("one-shot").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(job
        .kill_subtask("nope", 0)
        .unwrap_err()
        .to_string()
        .contains("no operator named 'nope'"));
    assert!(job
        .kill_subtask("src", 5)
        .unwrap_err()
        .to_string()
        .contains("no subtask 5"));
    job.kill_subtask("src", 0).unwrap();
    let err = job.wait().unwrap_err().to_string();
    assert!(err.contains("killed on request"), "{err}");
}

/// A forward-only job at parallelism 4 is four regions: killing one slice
/// restarts that slice only; the others keep running (their counters move
/// during the recovery) and the output stays exactly once per slice.
fn forward_job(strategy: &str) -> (Vec<u64>, u64, bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 200_000u64;
    let env = Env::from_conf(conf(
        &dir.path().join("ckpt"),
        &[
            ("parallelism.default", "4"),
            ("execution.checkpointing.interval", "20ms"),
            ("jobmanager.execution.failover-strategy", strategy),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.delay", "300ms"),
        ],
    ))
    .unwrap();
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let p = progress.clone();
    let sink = FileSink::new(&out, |i: &u64, line: &mut String| {
        line.push_str(&format!("{}\t{i}", i % 4))
    })
    .unwrap();
    env.add_source(GeneratorSource::new(3, Some(n), |i, _| i).with_rate(200_000.0))
        .name("numbers")
        .map(move |i: u64| {
            p[(i % 4) as usize].fetch_add(1, Ordering::Relaxed);
            i
        })
        .name("tap")
        .add_sink(sink)
        .name("files");
    let job = env.execute_async("slices").unwrap();
    assert_eq!(job.regions().len(), 4, "{:?}", job.regions());
    std::thread::sleep(Duration::from_millis(300));
    job.kill_subtask("tap", 1).unwrap();
    let before: Vec<u64> = progress.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    std::thread::sleep(Duration::from_millis(200)); // inside the 300 ms restart delay
    let during: Vec<u64> = progress.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let others_moved = [0usize, 2, 3].iter().all(|&r| during[r] > before[r]);
    let started = std::time::Instant::now();
    while job.num_restarts() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no restart");
        std::thread::sleep(Duration::from_millis(5));
    }
    let region_restarts = job.region_restarts();
    let restarts = job.num_restarts();
    job.wait().unwrap();
    // Exactly once, in order, per slice.
    let mut per: Vec<Vec<u64>> = vec![Vec::new(); 4];
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('-').collect();
        (
            parts[parts.len() - 2].parse::<u64>().unwrap(),
            parts[parts.len() - 1].parse::<u64>().unwrap(),
        )
    });
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let (r, i) = line.split_once('\t').unwrap();
            per[r.parse::<usize>().unwrap()].push(i.parse().unwrap());
        }
    }
    for (r, v) in per.iter().enumerate() {
        let want: Vec<u64> = (r as u64..n).step_by(4).collect();
        assert!(
            v == &want,
            "slice {r}: {} lines, expected {}",
            v.len(),
            want.len()
        );
    }
    (region_restarts, restarts, others_moved)
}

#[test]
fn region_failover_restarts_only_the_failed_slice() {
    let (region_restarts, restarts, others_moved) = forward_job("region");
    assert_eq!(
        region_restarts,
        vec![0, 1, 0, 0],
        "only the killed slice's region restarted"
    );
    assert_eq!(restarts, 1);
    assert!(
        others_moved,
        "the other slices kept processing during the recovery"
    );
}

#[test]
fn full_failover_restarts_everything() {
    let (region_restarts, restarts, others_moved) = forward_job("full");
    assert_eq!(restarts, 1);
    assert!(
        region_restarts.iter().all(|r| *r == 0),
        "{region_restarts:?}"
    );
    assert!(
        !others_moved,
        "with full failover every slice stops during the recovery"
    );
}

/// `chaos.*` on the wordcount example: random subtasks are killed while it
/// runs (each kill logged), the job recovers each time, and the committed
/// output is exactly once.
#[test]
fn chaos_kills_during_wordcount_keep_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    // Long enough (about a second here) for several kills at the interval below.
    let words = if cfg!(debug_assertions) {
        300_000
    } else {
        4_000_000
    };
    let reference = write_big_corpus(&input, words, 13);
    let out = dir.path().join("out");
    let ckpt = dir.path().join("ckpt").display().to_string();
    let run = wordcount_command(&out, &ckpt, "20ms")
        .args(["--input", input.to_str().unwrap()])
        // Kills further apart than a checkpoint cycle, so the job makes progress between them.
        .args(["-D", "chaos.kill-interval=120ms", "-D", "chaos.seed=7"])
        .args(["-D", "restart-strategy.type=fixed-delay"])
        .args(["-D", "restart-strategy.fixed-delay.attempts=100000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let kills = stderr
        .lines()
        .filter(|l| l.contains("chaos: killing subtask"))
        .count();
    eprintln!("{kills} chaos kills");
    assert!(kills >= 1, "no chaos kill: {stderr}");
    assert_running_counts(&read_output(&out), &reference);
}

#[test]
fn chaos_targets_must_name_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = conf(
        dir.path(),
        &[
            ("chaos.kill-interval", "10ms"),
            ("chaos.targets", "no-such-op"),
        ],
    );
    c.set("parallelism.default", 1).unwrap();
    let env = Env::from_conf(c).unwrap();
    env.add_source(GeneratorSource::new(1, Some(10), |i, _| i))
        .add_sink(DiscardSink);
    let err = env.execute("chaos").unwrap_err().to_string();
    assert!(err.contains("chaos.targets 'no-such-op'"), "{err}");
}

/// An unbounded job to kill by hand, with the given restart options.
fn killable(dir: &std::path::Path, pairs: &[(&str, &str)]) -> JobHandle {
    let env = Env::from_conf(conf(dir, pairs)).unwrap();
    env.add_source(GeneratorSource::new(3, None, |i, _| i).with_rate(50_000.0))
        .name("src")
        .add_sink(DiscardSink);
    env.execute_async("killable").unwrap()
}

/// Kills `src` and returns how long the restart took to begin.
fn kill_and_time_restart(job: &JobHandle) -> Duration {
    let before = job.num_restarts();
    let t = Instant::now();
    job.kill_subtask("src", 0).unwrap();
    while job.num_restarts() == before {
        assert!(t.elapsed() < Duration::from_secs(30), "no restart");
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = t.elapsed();
    // Let the new attempt start before the next kill.
    std::thread::sleep(Duration::from_millis(30));
    took
}

#[test]
fn failure_rate_restarts_slow_failures_and_gives_up_on_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let job = killable(
        dir.path(),
        &[
            ("restart-strategy.type", "failure-rate"),
            (
                "restart-strategy.failure-rate.max-failures-per-interval",
                "2",
            ),
            (
                "restart-strategy.failure-rate.failure-rate-interval",
                "400ms",
            ),
            ("restart-strategy.failure-rate.delay", "20ms"),
        ],
    );
    std::thread::sleep(Duration::from_millis(50));
    // Spaced failures: never more than 2 in a 400 ms window.
    for _ in 0..4 {
        let took = kill_and_time_restart(&job);
        assert!(
            took >= Duration::from_millis(20),
            "the delay is honoured: {took:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(job.num_restarts(), 4);
    // A burst: the third failure within 400 ms fails the job (a kill that
    // lands while the job restarts is refused, so keep killing until it ends).
    let mut job = job;
    let t = Instant::now();
    while !job.is_done() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the job never gave up"
        );
        let _ = job.kill_subtask("src", 0);
        std::thread::sleep(Duration::from_millis(30));
    }
    let err = job.wait().unwrap_err().to_string();
    assert!(
        err.contains("failure-rate: 3 failures within 400ms")
            && err.contains("max-failures-per-interval = 2"),
        "{err}"
    );
    assert!(err.contains("killed on request"), "{err}");
}

#[test]
fn exponential_delay_backoff_grows_and_resets_after_a_quiet_period() {
    let dir = tempfile::tempdir().unwrap();
    let job = killable(
        dir.path(),
        &[
            ("restart-strategy.type", "exponential-delay"),
            ("restart-strategy.exponential-delay.initial-backoff", "60ms"),
            ("restart-strategy.exponential-delay.backoff-multiplier", "2"),
            ("restart-strategy.exponential-delay.max-backoff", "300ms"),
            ("restart-strategy.exponential-delay.jitter-factor", "0"),
            (
                "restart-strategy.exponential-delay.reset-backoff-threshold",
                "1500ms",
            ),
            (
                "restart-strategy.exponential-delay.attempts-before-reset-backoff",
                "5",
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(50));
    let took: Vec<Duration> = (0..4).map(|_| kill_and_time_restart(&job)).collect();
    // 60, 120, 240, then capped at 300 ms: at least that long each time.
    for (t, min) in took.iter().zip([60u64, 120, 240, 300]) {
        assert!(*t >= Duration::from_millis(min), "{took:?}");
    }
    // Quiet for longer than the reset threshold: back to the initial backoff
    // (the uncapped next one would be 300 ms).
    std::thread::sleep(Duration::from_millis(1600));
    let after_reset = kill_and_time_restart(&job);
    assert!(
        after_reset >= Duration::from_millis(60) && after_reset < Duration::from_millis(290),
        "{after_reset:?} after a reset, {took:?} before"
    );
    // Five restarts without a reset allowed: 1 (after the reset) + 4 more, then it gives up.
    for _ in 0..4 {
        kill_and_time_restart(&job);
    }
    job.kill_subtask("src", 0).unwrap();
    let err = job.wait().unwrap_err().to_string();
    assert!(
        err.contains("gave up after 9 restarts")
            && err.contains("attempts-before-reset-backoff = 5"),
        "{err}"
    );
}

/// Not set, the restart strategy is Flink's default. With checkpointing on it
/// is exponential-delay with unlimited attempts: kills keep being recovered
/// (the previous default, fixed-delay with 3 attempts, failed the job at the
/// fourth kill). With checkpointing off the first failure fails the job,
/// saying why.
#[test]
fn the_default_restart_strategy_depends_on_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = killable(
        &dir.path().join("on"),
        &[
            ("execution.checkpointing.interval", "50ms"),
            // Short pauses keep the test fast; the type stays unset.
            ("restart-strategy.exponential-delay.initial-backoff", "10ms"),
            ("restart-strategy.exponential-delay.max-backoff", "40ms"),
        ],
    );
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..6 {
        kill_and_time_restart(&job);
    }
    assert_eq!(job.num_restarts(), 6);
    assert!(!job.is_done());
    job.cancel();
    let err = job.wait().unwrap_err().to_string();
    assert!(err.contains("cancel"), "{err}");

    let job = killable(
        &dir.path().join("off"),
        &[("execution.checkpointing.interval", "off")],
    );
    std::thread::sleep(Duration::from_millis(50));
    job.kill_subtask("src", 0).unwrap();
    let err = job.wait().unwrap_err().to_string();
    assert!(
        err.contains("restart-strategy.type is not set and checkpointing is off")
            && err.contains("killed on request"),
        "{err}"
    );
}

/// A subtask stuck in user code (it neither returns nor awaits) does not
/// stop when its region restarts. The restart used to wait for it forever,
/// silently; now the job fails after `task.cancellation.timeout`, naming the
/// subtask and the failure the restart was for.
#[test]
fn a_subtask_stuck_in_user_code_fails_the_job_after_the_cancellation_timeout() {
    static RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_conf(conf(
        dir.path(),
        &[
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "5"),
            ("task.cancellation.interval", "100ms"),
            ("task.cancellation.timeout", "700ms"),
        ],
    ))
    .unwrap();
    env.add_source(GeneratorSource::new(1, None, |i, _| i).with_rate(20_000.0))
        .name("src")
        .map(|i: u64| {
            if i == 200 {
                // Blocks its thread: never returns, never awaits.
                while !RELEASE.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            i
        })
        .name("stuck")
        .add_sink(DiscardSink);
    let mut job = env.execute_async("stuck-job").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    job.kill_subtask("stuck", 0).unwrap();
    let killed = Instant::now();
    while !job.is_done() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the restart waits for the stuck subtask forever"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = killed.elapsed();
    let err = job.wait().unwrap_err().to_string();
    RELEASE.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        err.contains("subtask 'src -> stuck -> Sink (0)'")
            && err.contains("did not stop within task.cancellation.timeout (700ms)")
            && err.contains("killed on request"),
        "{err}"
    );
    assert!(took >= Duration::from_millis(700), "{took:?}: {err}");
}

#[test]
fn restart_options_are_checked() {
    for (k, v) in [
        ("restart-strategy.type", "sometimes"),
        (
            "restart-strategy.exponential-delay.backoff-multiplier",
            "0.5",
        ),
        ("restart-strategy.exponential-delay.jitter-factor", "2"),
        (
            "restart-strategy.failure-rate.failure-rate-interval",
            "soon",
        ),
    ] {
        let mut c = Conf::defaults();
        let err = c.set(k, v).unwrap_err().to_string();
        assert!(err.contains(k) && err.contains(v), "{err}");
    }
}
