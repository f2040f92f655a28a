//! Rescaling open event-time windows and pending timers through
//! savepoints: the job of `window_chaos.rs` (tumbling and session windows
//! with `aggregate_with`, a `KeyedProcessFunction` with an event-time timer
//! per record at `ts + 1000` and a processing-time timer per key) runs with
//! its windows, process function and sink at parallelism 2, is stopped with
//! a savepoint (no drain) in the middle of the input, restored at 3,
//! stopped again, restored at 1 and run to the end. The source (and its
//! watermark assigner) keeps its parallelism, 1 or 3, in all three runs:
//! generator positions are per parallelism. The union of the three runs'
//! committed lines must be exactly the failure-free output computed here
//! from the same records (what an unscaled run commits); windows and
//! timers that had records in one run must fire, complete, in a later one
//! (so the savepoints held open windows, merged sessions and pending
//! timers, redistributed by key group). On the heap backend and (feature
//! `rocksdb`) on RocksDB.
//!
//! With three source subtasks each keyed subtask has three inputs, which
//! end one after the other once a stop savepoint completed: nothing done
//! after the savepoint (timers and windows an ended input no longer holds
//! back) may reach the committed output, since the next run does it again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chaos::{
    committed_files, key_and_time, Checks, CountSum, Rec, TimerOut, TimerSums, TIMER_DELAY,
};
use weir::prelude::*;

/// Records in the input.
const N: u64 = 20_000;
/// Records per second over both source subtasks: the input lasts about 5 s.
const RATE: f64 = 4_000.0;
const KEYS: u64 = 37;
/// Event time advances 5 ms per record index; a record is up to this late.
const DISORDER: i64 = 3_000;
const TUMBLE: i64 = 10_000;
/// Keys are about 185 ms apart on average: sessions merge and split.
const GAP: i64 = 400;

/// A record: key, event time (ms), value (its index, so every sum tells
/// which records it holds).
fn record(i: u64) -> Rec {
    let (key, ts, _) = key_and_time(42, i, KEYS, 5, DISORDER);
    (key, ts, i)
}

/// How far the source got in a run: per source subtask (subtask `s` of `p`
/// generates the indices `s, s + p, ...`) one more than the largest index
/// it emitted.
#[derive(Clone)]
struct Progress(Arc<Vec<AtomicU64>>);

impl Progress {
    fn new(sources: usize) -> Self {
        Progress(Arc::new((0..sources).map(|_| AtomicU64::new(0)).collect()))
    }
    fn emitted(&self, index: u64) {
        self.0[(index % self.0.len() as u64) as usize].fetch_max(index + 1, Ordering::SeqCst);
    }
    /// Every record with an index below this went through the run.
    fn prefix(&self) -> u64 {
        self.0
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }
}

/// The job into `out`: the source (and its watermarks) at `sources`
/// subtasks, the rest at the default parallelism.
fn build(env: &Env, out: &Path, sources: usize, checks: Checks, progress: Progress) {
    let recs = env
        .add_source(GeneratorSource::new(7, Some(N), |i, _| record(i)).with_rate(RATE))
        .set_parallelism(sources)
        .name("Generator")
        .map(move |r: Rec| {
            progress.emitted(r.2);
            r
        })
        .set_parallelism(sources)
        .name("Progress")
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(DISORDER as u64))
                .with_timestamp_assigner(|r: &Rec| r.1),
        )
        .set_parallelism(sources)
        .name("Timestamps");
    let keyed = recs.key_by(|r: &Rec| r.0);
    let late = OutputTag::<Rec>::new("late");
    let window_line = |kind: &'static str| {
        move |k: &u32, w: &WindowContext, r: Vec<(u64, u64)>, out: &mut Collector<'_, String>| {
            out.collect(format!(
                "{kind}\t{k}\t{}\t{}\t{}\t{}",
                w.window.start, w.window.end, r[0].0, r[0].1
            ));
            Ok(())
        }
    };
    let tumbling = keyed
        .window(TumblingEventTimeWindows::of(Duration::from_millis(
            TUMBLE as u64,
        )))
        .side_output_late_data(&late)
        .aggregate_with(CountSum, window_line("T"))
        .name("Tumbling");
    let sessions = keyed
        .window(EventTimeSessionWindows::with_gap(Duration::from_millis(
            GAP as u64,
        )))
        .side_output_late_data(&late)
        .aggregate_with(CountSum, window_line("S"))
        .name("Sessions");
    let timers = keyed
        .process(TimerSums::new(checks))
        .name("Timers")
        .map(|(k, t, n, sum): TimerOut| format!("E\t{k}\t{t}\t{n}\t{sum}"))
        .name("TimerLines");
    // Late records (there should be none) show up in the output as such.
    let late_lines = |s: &DataStream<String>, name: &str| {
        s.get_side_output(&late)
            .map(|r: Rec| format!("L\t{}\t{}\t{}", r.0, r.1, r.2))
            .name(name)
    };
    let late_t = late_lines(&tumbling, "LateTumbling");
    let late_s = late_lines(&sessions, "LateSessions");
    tumbling
        .union(&[sessions, timers, late_t, late_s])
        .name("Lines")
        .add_sink(FileSink::new(out, |l: &String, line: &mut String| line.push_str(l)).unwrap())
        .name("Files");
}

/// Every line a failure-free run commits, with the smallest index of the
/// records it sums.
fn reference() -> BTreeMap<String, u64> {
    let recs: Vec<Rec> = (0..N).map(record).collect();
    let mut lines = BTreeMap::new();
    let add = |e: &mut (u64, u64, u64), i: u64| {
        e.0 += 1;
        e.1 += i;
        e.2 = e.2.min(i);
    };
    let mut tumbling: BTreeMap<(u32, i64), (u64, u64, u64)> = BTreeMap::new();
    let mut timers: BTreeMap<(u32, i64), (u64, u64, u64)> = BTreeMap::new();
    let mut by_key: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
    for &(k, ts, i) in &recs {
        let start = ts - ts.rem_euclid(TUMBLE);
        add(tumbling.entry((k, start)).or_insert((0, 0, u64::MAX)), i);
        add(
            timers
                .entry((k, ts + TIMER_DELAY))
                .or_insert((0, 0, u64::MAX)),
            i,
        );
        by_key.entry(k).or_default().push((ts, i));
    }
    for ((k, start), (n, sum, first)) in tumbling {
        lines.insert(
            format!("T\t{k}\t{start}\t{}\t{n}\t{sum}", start + TUMBLE),
            first,
        );
    }
    for ((k, t), (n, sum, first)) in timers {
        lines.insert(format!("E\t{k}\t{t}\t{n}\t{sum}"), first);
    }
    for (k, mut v) in by_key {
        v.sort();
        let (mut start, mut last) = (v[0].0, v[0].0);
        let mut e = (0, 0, u64::MAX);
        for &(ts, i) in &v {
            if ts > last + GAP {
                lines.insert(
                    format!("S\t{k}\t{start}\t{}\t{}\t{}", last + GAP, e.0, e.1),
                    e.2,
                );
                start = ts;
                e = (0, 0, u64::MAX);
            }
            last = ts;
            add(&mut e, i);
        }
        lines.insert(
            format!("S\t{k}\t{start}\t{}\t{}\t{}", last + GAP, e.0, e.1),
            e.2,
        );
    }
    lines
}

/// The committed lines of the file sink's directory per run (the first 8
/// characters of its job id name its files, `part-<run>-<subtask>-<n>`).
fn committed_lines(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, lines) in committed_files(dir) {
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 4, "unexpected file {name}");
        runs.entry(parts[1].to_string()).or_default().extend(lines);
    }
    runs
}

/// Asserts that the runs' lines together are exactly those of `want`,
/// each once; describes the difference, with the runs (by position) that
/// committed each extra line.
fn assert_same_lines(runs: &[Vec<String>], want: &BTreeMap<String, u64>, what: &str) {
    let mut count: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, lines) in runs.iter().enumerate() {
        for l in lines {
            count.entry(l.as_str()).or_default().push(i);
        }
    }
    let total: usize = runs.iter().map(Vec::len).sum();
    let missing: Vec<&String> = want
        .keys()
        .filter(|l| !count.contains_key(l.as_str()))
        .collect();
    let extra: Vec<(&&str, &Vec<usize>)> = count
        .iter()
        .filter(|(l, n)| n.len() > 1 || !want.contains_key(**l))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && total == want.len(),
        "{what}: {total} lines committed, {} expected; {} missing, first {:?}; {} extra or duplicated (line, committing runs), first {:?}",
        want.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
}

/// How a run ends.
enum End {
    /// Stop-with-savepoint (no drain) once every record below this index
    /// went through; returns the savepoint.
    StopAfter(u64),
    /// Runs to the end of the input.
    Finish,
}

struct Run {
    job_id: String,
    savepoint: Option<PathBuf>,
    /// Every record with an index below this went through the run.
    prefix: u64,
}

/// The runs of one test: where they write, the source's parallelism (the
/// same in every run: generator positions are per parallelism) and extra
/// settings.
struct Runs<'a> {
    root: &'a Path,
    out: PathBuf,
    sources: usize,
    extra: &'a [(&'a str, &'a str)],
    checks: Checks,
}

impl<'a> Runs<'a> {
    fn new(root: &'a Path, sources: usize, extra: &'a [(&'a str, &'a str)]) -> Self {
        Runs {
            root,
            out: root.join("out"),
            sources,
            extra,
            checks: Checks::default(),
        }
    }

    /// One run, its keyed operators and sink at `parallelism`.
    fn run(&self, parallelism: usize, restore: Option<&Path>, end: End) -> Run {
        let mut c = Conf::defaults();
        c.set(
            "execution.checkpointing.dir",
            self.root.join("ckpt").display(),
        )
        .unwrap();
        c.set("execution.checkpointing.interval", "100ms").unwrap();
        c.set("parallelism.default", parallelism).unwrap();
        c.set("pipeline.max-parallelism", 128).unwrap();
        // Source subtasks' watermarks differ by up to an interval's worth
        // of event time (400 ms here): at a stop, the timers and windows in
        // between are due on one input of the keyed operators and not on
        // another.
        c.set("pipeline.auto-watermark-interval", "20ms").unwrap();
        if let Some(r) = restore {
            c.set("execution.state-recovery.path", r.display()).unwrap();
        }
        for (k, v) in self.extra {
            c.set(k, v).unwrap();
        }
        let env = Env::from_conf(c).unwrap();
        let progress = Progress::new(self.sources);
        build(
            &env,
            &self.out,
            self.sources,
            self.checks.clone(),
            progress.clone(),
        );
        let mut job = env.execute_async("window-rescale").unwrap();
        let job_id = job.job_id().to_string();
        let savepoint = match end {
            End::Finish => {
                let r = job.wait().unwrap();
                assert_eq!(r.restarts, 0, "no failure in a rescaling run");
                None
            }
            End::StopAfter(index) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while progress.prefix() < index {
                    assert!(
                        std::time::Instant::now() < deadline && !job.is_done(),
                        "run at parallelism {parallelism}: the source is at {} after 60 s",
                        progress.prefix()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                let sp = job
                    .stop_with_savepoint(Some(&self.root.join("savepoints")), false)
                    .unwrap();
                let r = job.wait().expect("a stopped job ends FINISHED");
                assert_eq!(r.restarts, 0, "no failure in a rescaling run");
                Some(sp)
            }
        };
        let prefix = progress.prefix();
        Run {
            job_id,
            savepoint,
            prefix,
        }
    }
}

/// Runs at parallelism 2, 3 and 1 with two stop-with-savepoints between
/// (the source at `sources` subtasks throughout); asserts the union of the
/// committed lines is the reference, and that each savepoint carried
/// windows and timers that had records before it and fired after it.
fn rescale_2_3_1(sources: usize, extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::new(dir.path(), sources, extra);
    let r1 = runs.run(2, None, End::StopAfter(N / 4));
    let r2 = runs.run(3, r1.savepoint.as_deref(), End::StopAfter(N * 3 / 5));
    let r3 = runs.run(1, r2.savepoint.as_deref(), End::Finish);
    let what = format!(
        "{sources} source subtasks, {extra:?}, stops after records {} and {}",
        r1.prefix, r2.prefix
    );
    assert!(r2.prefix > r1.prefix, "{what}");
    let want = reference();
    let by_run = committed_lines(&runs.out);
    let all = [&r1, &r2, &r3];
    for r in all {
        assert!(
            by_run.contains_key(&r.job_id[..8]),
            "{what}: run {} committed nothing",
            r.job_id
        );
    }
    assert_eq!(by_run.len(), 3, "files of other runs: {:?}", by_run.keys());
    let lines: Vec<Vec<String>> = all.iter().map(|r| by_run[&r.job_id[..8]].clone()).collect();
    assert_same_lines(&lines, &want, &what);
    // What each savepoint carried: windows and timers with a record from
    // before the stop that fired after it, of every kind.
    for (before, after) in [(&r1, &r2), (&r2, &r3)] {
        let fired_after = &by_run[&after.job_id[..8]];
        for kind in ["T\t", "S\t", "E\t"] {
            let carried = fired_after
                .iter()
                .filter(|l| l.starts_with(kind) && want[*l] < before.prefix)
                .count();
            assert!(
                carried > 0,
                "{what}: no {kind:?} line fired after the stop at {} had a record before it",
                before.prefix
            );
        }
    }
    let violations = runs.checks.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{what}: {violations:?}");
    assert!(
        runs.checks.processing_fired.load(Ordering::SeqCst) > 0,
        "{what}: no processing-time timer fired"
    );
}

/// The same job without stops, at parallelism 2 with 3 source subtasks:
/// the reference is what an unscaled run commits.
#[test]
fn unscaled_run_commits_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::new(dir.path(), 3, &[]);
    let r = runs.run(2, None, End::Finish);
    let by_run = committed_lines(&runs.out);
    assert_eq!(by_run.len(), 1);
    assert_same_lines(&[by_run[&r.job_id[..8]].clone()], &reference(), "unscaled");
    let violations = runs.checks.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
}

/// One source subtask: the keyed operators have one input each.
#[test]
fn heap_rescaled_2_3_1_from_one_source_subtask_equals_the_unscaled_run() {
    rescale_2_3_1(1, &[]);
}

/// Three source subtasks: the keyed operators' inputs end one after the
/// other after each stop.
#[test]
fn heap_rescaled_2_3_1_from_three_source_subtasks_equals_the_unscaled_run() {
    rescale_2_3_1(3, &[]);
}

#[cfg(feature = "rocksdb")]
const ROCKSDB: [(&str, &str); 2] = [
    ("state.backend.type", "rocksdb"),
    ("execution.checkpointing.incremental", "true"),
];

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_rescaled_2_3_1_from_one_source_subtask_equals_the_unscaled_run() {
    rescale_2_3_1(1, &ROCKSDB);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_rescaled_2_3_1_from_three_source_subtasks_equals_the_unscaled_run() {
    rescale_2_3_1(3, &ROCKSDB);
}
