//! How jobs end: bounded jobs finish and report per-operator counts; a panic
//! or an error in user code fails the job with the operator's name and
//! message; cancel stops an unbounded job. Also the data plane's partitioners
//! deliver every record exactly where they should.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weir::prelude::*;

/// `Env::local()` with no restart: with checkpointing on, the default
/// restart strategy (exponential-delay, as in Flink) would restart a job that
/// fails on every run forever.
fn env_failing_at_once() -> Env {
    let mut conf = Conf::defaults();
    conf.set(
        "execution.checkpointing.dir",
        std::env::temp_dir().join("weir-checkpoints").display(),
    )
    .unwrap();
    conf.set("restart-strategy.type", "none").unwrap();
    Env::from_conf(conf).unwrap()
}

#[test]
fn bounded_job_finishes_with_record_counts() {
    let mut env = Env::local().unwrap();
    env.set_parallelism(3).unwrap();
    let sink = CollectSink::new();
    let got = sink.handle();
    env.add_source(CollectionSource::new((0..10_000u64).collect()))
        .name("numbers")
        .filter(|x| x % 3 != 0)
        .name("not-div-3")
        .flat_map(|x: u64, out: &mut Collector<u64>| {
            out.collect(x);
            out.collect(x + 1_000_000);
        })
        .name("twice")
        .add_sink(sink)
        .name("collect");
    let r = env.execute("bounded").unwrap();
    let kept = (0..10_000u64).filter(|x| x % 3 != 0).count() as u64;
    assert_eq!(r.operator("numbers").unwrap().records_out, 10_000);
    assert_eq!(r.operator("not-div-3").unwrap().records_in, 10_000);
    assert_eq!(r.operator("not-div-3").unwrap().records_out, kept);
    assert_eq!(r.operator("twice").unwrap().records_out, 2 * kept);
    assert_eq!(r.operator("collect").unwrap().records_in, 2 * kept);
    assert_eq!(r.operator("collect").unwrap().parallelism, 3);
    assert_eq!(r.job_id.len(), 32);
    assert!(r.job_id.chars().all(|c| c.is_ascii_hexdigit()));
    let mut v = got.take();
    v.sort();
    let mut want: Vec<u64> = (0..10_000u64)
        .filter(|x| x % 3 != 0)
        .flat_map(|x| [x, x + 1_000_000])
        .collect();
    want.sort();
    assert_eq!(v, want);
}

#[test]
fn panic_in_operator_fails_the_job_with_its_name_and_message() {
    let env = env_failing_at_once();
    env.add_source(GeneratorSource::new(3, None, |i, _| i))
        .map(|i: u64| {
            if i == 5_000 {
                panic!("record {i} is cursed")
            } else {
                i
            }
        })
        .name("Exploder")
        .key_by(|i: &u64| i % 10)
        .count()
        .add_sink(DiscardSink);
    let started = Instant::now();
    let err = env.execute("doomed").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::JobFailed { .. }), "{msg}");
    assert!(msg.contains("job 'doomed' failed"), "{msg}");
    assert!(
        msg.contains("operator 'Exploder' (subtask 0) failed: panicked: record 5000 is cursed"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the unbounded job was stopped"
    );
}

#[derive(Clone)]
struct Picky;

impl KeyedProcessFunction<u64, u64, u64> for Picky {
    fn open(&mut self, _: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }
    fn process_element(
        &mut self,
        v: u64,
        _: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        if v == 777 {
            return Err(Error::user("777 is not allowed"));
        }
        out.collect(v);
        Ok(())
    }
}

#[test]
fn error_from_user_function_is_reported_as_the_root_cause() {
    let mut env = env_failing_at_once();
    env.set_parallelism(2).unwrap();
    env.add_source(CollectionSource::new((0..100_000u64).collect()))
        .key_by(|v: &u64| *v)
        .process(Picky)
        .name("picky")
        .add_sink(DiscardSink);
    let msg = env.execute("picky-job").unwrap_err().to_string();
    assert!(msg.contains("operator 'picky'"), "{msg}");
    assert!(msg.ends_with("777 is not allowed"), "{msg}");
    assert!(
        !msg.contains("disconnected"),
        "a consequence is not the cause: {msg}"
    );
}

#[test]
fn cancel_stops_an_unbounded_job() {
    let env = Env::local().unwrap();
    env.add_source(GeneratorSource::new(1, None, |i, _| i).with_rate(10_000.0))
        .add_sink(DiscardSink);
    let job = env.execute_async("forever").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seen = job.metrics()[0].records_out;
    assert!(seen > 500, "the rate-limited source runs: {seen}");
    assert!(seen < 10_000, "and is rate limited: {seen}");
    let t = Instant::now();
    job.cancel();
    assert!(matches!(job.wait(), Err(Error::Cancelled(name)) if name == "forever"));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn rebalance_broadcast_and_union_deliver_every_record() {
    let env = Env::local().unwrap();
    let (rb, bc, un) = (CollectSink::new(), CollectSink::new(), CollectSink::new());
    let (hrb, hbc, hun) = (rb.handle(), bc.handle(), un.handle());
    let nums = env
        .add_source(CollectionSource::new((0..5_000u64).collect()))
        .name("nums")
        .set_parallelism(2);
    nums.rebalance()
        .map(|x| x)
        .set_parallelism(3)
        .add_sink(rb)
        .set_parallelism(3);
    nums.broadcast()
        .map(|x| x)
        .set_parallelism(3)
        .add_sink(bc)
        .set_parallelism(3);
    let other = env
        .add_source(CollectionSource::new((5_000..6_000u64).collect()))
        .set_parallelism(1);
    nums.union(&[other]).add_sink(un);
    env.execute("partitioners").unwrap();
    let mut v = hrb.take();
    v.sort();
    assert_eq!(
        v,
        (0..5_000).collect::<Vec<_>>(),
        "rebalance: each record once"
    );
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for x in hbc.take() {
        *counts.entry(x).or_default() += 1;
    }
    assert_eq!(counts.len(), 5_000);
    assert!(
        counts.values().all(|c| *c == 3),
        "broadcast: each record to each of 3 subtasks"
    );
    let mut v = hun.take();
    v.sort();
    assert_eq!(v, (0..6_000).collect::<Vec<_>>(), "union of both sources");
}

#[test]
fn file_sink_hides_in_progress_files_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::local().unwrap();
    let sink = FileSink::new(dir.path(), |x: &u64, line: &mut String| {
        line.push_str(&x.to_string())
    })
    .unwrap()
    .with_rolling_size(10_000);
    env.add_source(CollectionSource::new((0..20_000u64).collect()))
        .add_sink(sink);
    env.execute("files").unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() > 5, "rolled into several part files: {names:?}");
    assert!(names.iter().all(|n| n.starts_with("part-")), "{names:?}");
    let mut all: Vec<u64> = Vec::new();
    for n in &names {
        all.extend(
            std::fs::read_to_string(dir.path().join(n))
                .unwrap()
                .lines()
                .map(|l| l.parse::<u64>().unwrap()),
        );
    }
    assert_eq!(all.len(), 20_000);
    all.sort();
    assert_eq!(all, (0..20_000).collect::<Vec<_>>());
}
