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
        &[("restart-strategy.fixed-delay.attempts", "2")],
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
