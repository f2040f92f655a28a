//! The `kafka_visits` example end to end: visits `user,page,event_time_ms`
//! in a Kafka topic whose partitions are skewed in event time (30 s apart,
//! up to 3 s out of order within a partition), page visits per 10 s
//! tumbling event-time window written exactly once to a Kafka topic (key:
//! the page, value `window_start<TAB>window_end<TAB>page<TAB>visits`).
//!
//! The records are deterministic (a seed); every test computes the windows
//! it expects from the records it wrote and reads the output with
//! `read_committed`: one record per (window, page), exact counts.
//!
//! - a bounded run at parallelism 2 with malformed records skipped;
//! - SIGKILL after completed checkpoints, more input, a bounded restore
//!   with `-s`;
//! - per-partition watermarks: an empty partition holds the watermark back
//!   until it is idle (`--idle-seconds`), so in an unbounded run the
//!   windows below the other partitions' watermark fire only because of
//!   idleness; with a long idle timeout they do not fire.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::operators::rng::SplitMix64;
use weir::visit_windows::START_MS;

use super::common::latest_checkpoint;
use super::kafka;

const IDLE: Duration = Duration::from_millis(300);
/// The example's defaults: 10 s windows, 5 s out-of-orderness.
const WINDOW_MS: i64 = 10_000;
const OUT_OF_ORDERNESS_MS: i64 = 5_000;
/// Partition `p`'s event times start `p * SKEW_MS` after partition 0's.
const SKEW_MS: i64 = 30_000;
/// A visit's event time is up to this much before its place in its
/// partition (within the watermark's bound: never late).
const DISORDER_MS: i64 = 3_000;
const PAGES: u64 = 6;
const PARTITIONS: i32 = 4;

/// One visit as written to the input topic.
#[derive(Clone, Debug)]
struct Visit {
    partition: i32,
    page: String,
    ts: i64,
    line: String,
}

/// `per_partition` visits in each of `partitions`, in partition order
/// (the order they are written in): visit `i` of partition `p` happens at
/// `base + p * SKEW_MS + i * spacing_ms` minus a random delay below
/// `DISORDER_MS`.
fn visits(
    seed: u64,
    partitions: &[i32],
    per_partition: i64,
    spacing_ms: i64,
    base: i64,
) -> Vec<Visit> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for &p in partitions {
        for i in 0..per_partition {
            let ts =
                base + p as i64 * SKEW_MS + i * spacing_ms - rng.below(DISORDER_MS as u64) as i64;
            let page = format!("/page/{}", rng.below(PAGES));
            let user = rng.below(1000);
            out.push(Visit {
                partition: p,
                line: format!("{user},{page},{ts}"),
                page,
                ts,
            });
        }
    }
    out
}

/// Records that are not visits: skipped and counted with
/// `kafka.scan.deserialization-errors=skip`.
const MALFORMED: [&[u8]; 6] = [
    b"not a visit",
    b"7,/page/1",
    b"x,/page/2,1704067200000",
    b"",
    b"\xff\xfe\xfd",
    b"user,page,event_time_ms",
];

/// Writes `visits`, with `malformed` records (value, partition) after
/// every `visits.len() / (n + 1)`-th visit. The Kafka timestamps are the
/// producer's clock: event times of 2024 as timestamps would be older than
/// the topic's retention (`retention.ms`, 7 days), and the broker would
/// delete them (the earliest offset becomes the end offset).
fn produce(topic: &str, visits: &[Visit], malformed: &[(&[u8], i32)]) {
    let every = visits.len() / (malformed.len() + 1);
    let mut records: Vec<kafka::Produce<'_>> = Vec::new();
    let mut bad = malformed.iter();
    for (i, v) in visits.iter().enumerate() {
        records.push((Some(v.partition), None, v.line.as_bytes(), None));
        if (i + 1) % every.max(1) == 0 {
            if let Some((value, p)) = bad.next() {
                records.push((Some(*p), None, value, None));
            }
        }
    }
    for (value, p) in bad {
        records.push((Some(*p), None, value, None));
    }
    kafka::produce(topic, &records);
}

type Windows = BTreeMap<(i64, i64, String), u64>;

/// The visits per (window start, window end, page) of `visits`.
fn expected<'a>(visits: impl IntoIterator<Item = &'a Visit>) -> Windows {
    let mut m = Windows::new();
    for v in visits {
        let start = v.ts - v.ts.rem_euclid(WINDOW_MS);
        *m.entry((start, start + WINDOW_MS, v.page.clone()))
            .or_default() += 1;
    }
    m
}

/// The window results in `topic` (read_committed), asserting that every
/// record is one window of one page, keyed by the page, and that no
/// (window, page) comes twice.
fn windows_in(topic: &str, idle: Duration) -> Windows {
    let mut m = Windows::new();
    let mut twice = Vec::new();
    for r in kafka::consume_all(topic, "read_committed", idle) {
        let text = r.text();
        let f: Vec<&str> = text.split('\t').collect();
        let [start, end, page, n] = f[..] else {
            panic!("not window_start<TAB>window_end<TAB>page<TAB>visits: {text:?}");
        };
        assert_eq!(
            r.key.as_deref(),
            Some(page.as_bytes()),
            "the key is the page: {r:?}"
        );
        let (start, end): (i64, i64) = (start.parse().unwrap(), end.parse().unwrap());
        assert_eq!(end - start, WINDOW_MS, "{text:?}");
        assert_eq!(start.rem_euclid(WINDOW_MS), 0, "{text:?}");
        if let Some(old) = m.insert((start, end, page.to_string()), n.parse().unwrap()) {
            twice.push(format!("{text:?} (before: {old} visits)"));
        }
    }
    assert!(
        twice.is_empty(),
        "{} windows written more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    m
}

/// Asserts `got == want`, naming the differences.
fn assert_windows(got: &Windows, want: &Windows, what: &str) {
    if got == want {
        return;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, _)| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .take(5)
        .collect();
    let wrong: Vec<_> = want
        .iter()
        .filter_map(|(k, n)| got.get(k).filter(|g| *g != n).map(|g| (k, n, g)))
        .take(5)
        .collect();
    panic!(
        "{what}: {} windows, expected {}; missing (first 5) {missing:?}; not expected {extra:?}; \
         wrong counts (window, expected, got) {wrong:?}",
        got.len(),
        want.len()
    );
}

/// The example reading `input`, writing `output`, at parallelism 2,
/// checkpointing every 100 ms into `ckpt`, progress lines every 500 ms.
fn kafka_visits(input: &str, output: &str, ckpt: &Path, extra: &[&str]) -> Command {
    let mut cmd = crate::kafka_example("kafka_visits", ckpt);
    cmd.args(["--input-topic", input, "--output-topic", output])
        .args(["-p", "2", "--no-ui"])
        .args(["-D", "client.progress-interval=500ms"])
        .args(extra);
    cmd
}

/// Runs the example to its end (`-q`: only the summary); asserts success.
fn run(mut cmd: Command) -> Output {
    let out = cmd
        .arg("-q")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka_visits failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running example (its stdout and stderr in a file), killed (SIGKILL)
/// when dropped.
struct Running {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Running { child, log }
    }
    /// What the process printed so far (lines about checkpoints left out;
    /// the first and the last 3000 characters).
    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let s: String = s
            .lines()
            .filter(|l| !(l.starts_with("checkpoint ") && l.contains(" completed in ")))
            .flat_map(|l| [l, "\n"])
            .collect();
        if s.len() <= 6000 {
            return s;
        }
        let head = (0..=3000).rev().find(|i| s.is_char_boundary(*i)).unwrap();
        let tail = (s.len() - 3000..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap();
        format!("{}\n[...]\n{}", &s[..head], &s[tail..])
    }
    /// Panics if the process has exited.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kafka_visits exited early: {status}\n{}", self.log());
        }
    }
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("kafka_visits printed:\n{}", self.log());
        }
    }
}

/// The number after `label` in the summary printed on stdout.
fn summary_number(out: &Output, label: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the source's consumer group (`weir-<input>` unless `group`)
/// has committed, at a completed checkpoint, at least `ends[p]` for every
/// partition `p` with `ends[p] > 0`.
fn checkpointed(group: &str, topic: &str, ends: &[i64]) -> bool {
    kafka::committed_offsets(group, topic)
        .iter()
        .zip(ends)
        .all(|(c, e)| *e == 0 || c.is_some_and(|c| c >= *e))
}

/// Bounded, parallelism 2, skewed partitions and malformed records
/// skipped: every window exactly once with its exact count, and the
/// summary's "records rejected" is the number of malformed records.
#[test]
fn kafka_visits_counts_every_window_exactly_once() {
    let input = kafka::unique_topic("visits-in");
    let output = kafka::unique_topic("visits-out");
    kafka::create_topic(&input, PARTITIONS);
    kafka::create_topic(&output, 2);
    let data = visits(11, &[0, 1, 2, 3], 2500, 20, START_MS);
    let malformed: Vec<(&[u8], i32)> = MALFORMED
        .iter()
        .enumerate()
        .map(|(i, v)| (*v, i as i32 % PARTITIONS))
        .collect();
    produce(&input, &data, &malformed);
    let want = expected(&data);
    let ckpt = tempfile::tempdir().unwrap();

    let out = run(kafka_visits(
        &input,
        &output,
        ckpt.path(),
        &["--bounded", "-D", "kafka.scan.deserialization-errors=skip"],
    ));
    assert_windows(&windows_in(&output, IDLE), &want, "bounded run");
    assert!(!kafka::open_transaction_blocks(&output));
    assert_eq!(
        summary_number(&out, "records rejected: "),
        MALFORMED.len() as u64,
        "rejected"
    );
    assert_eq!(summary_number(&out, "windows written: "), want.len() as u64);
    assert_eq!(summary_number(&out, "visits counted: "), data.len() as u64);
    assert_eq!(summary_number(&out, "late visits: "), 0);
}

/// An unbounded run checkpointing every 100 ms is killed (SIGKILL) once a
/// completed checkpoint holds the whole input and some windows are
/// committed; more visits (later windows) are written; a bounded restore
/// from the latest checkpoint goes on from the checkpointed offsets and
/// window state, and commits what the checkpoint pre-committed: every
/// window of both batches exactly once.
#[test]
fn kafka_visits_survives_sigkill_and_restore() {
    let input = kafka::unique_topic("visits-kill-in");
    let output = kafka::unique_topic("visits-kill-out");
    kafka::create_topic(&input, PARTITIONS);
    kafka::create_topic(&output, 2);
    let first = visits(21, &[0, 1, 2, 3], 1500, 20, START_MS);
    produce(&input, &first, &[]);
    let ckpt = tempfile::tempdir().unwrap();

    let mut child = Running::spawn(kafka_visits(&input, &output, ckpt.path(), &[]));
    let group = format!("weir-{input}");
    let ends = kafka::end_offsets(&input);
    wait_until(
        "a checkpoint holding the whole input and a committed window",
        Duration::from_secs(30),
        || {
            child.assert_alive();
            checkpointed(&group, &input, &ends)
                && kafka::last_stable_offsets(&output).iter().sum::<i64>() > 0
        },
    );
    child.kill();

    // Far beyond the first batch's windows (and its restored watermarks).
    let second = visits(22, &[0, 1, 2, 3], 1000, 20, START_MS + 200_000);
    produce(&input, &second, &[]);
    let restore = latest_checkpoint(ckpt.path()).expect("a completed checkpoint");
    let out = run(kafka_visits(
        &input,
        &output,
        ckpt.path(),
        &["--bounded", "-s", restore.to_str().unwrap()],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("restored from checkpoint"), "{stderr}");
    let want = expected(first.iter().chain(&second));
    assert_windows(
        &windows_in(&output, IDLE),
        &want,
        "after SIGKILL and restore",
    );
    assert!(!kafka::open_transaction_blocks(&output));
}

/// Per-partition watermarks, partition 3 empty, unbounded. Partitions 0-2
/// are kept active (a visit every 200 ms at each one's largest event
/// time, which moves no watermark and lands in a window that cannot fire).
/// With `--idle-seconds 1` the empty partition goes idle and the windows
/// ending at or below the smallest watermark of partitions 0-2 fire:
/// exactly those, with exact counts. With `--idle-seconds 3600` (run at the
/// same time on the same input) the empty partition holds the watermark
/// back and nothing is written, well after the input was checkpointed.
#[test]
fn kafka_visits_idle_partition_does_not_hold_the_watermark() {
    let input = kafka::unique_topic("visits-idle-in");
    let output = kafka::unique_topic("visits-idle-out");
    let held = kafka::unique_topic("visits-held-out");
    kafka::create_topic(&input, PARTITIONS);
    kafka::create_topic(&output, 2);
    kafka::create_topic(&held, 2);
    let data = visits(31, &[0, 1, 2], 2000, 20, START_MS);
    produce(&input, &data, &[]);
    let ends = kafka::end_offsets(&input);
    assert_eq!(ends[3], 0);
    let max_ts: Vec<i64> = (0..3)
        .map(|p| {
            data.iter()
                .filter(|v| v.partition == p)
                .map(|v| v.ts)
                .max()
                .unwrap()
        })
        .collect();
    // The watermark partitions 0-2 reach: largest timestamp - bound - 1.
    let watermark = max_ts.iter().min().unwrap() - OUT_OF_ORDERNESS_MS - 1;
    let mut want = expected(&data);
    want.retain(|(_, end, _), _| end - 1 <= watermark);
    assert!(want.len() >= 3 * PAGES as usize, "{} windows", want.len());

    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (stop, input) = (stop.clone(), input.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let lines: Vec<String> = max_ts
                    .iter()
                    .map(|ts| format!("0,/heartbeat,{ts}"))
                    .collect();
                let records: Vec<kafka::Produce<'_>> = lines
                    .iter()
                    .zip(0..)
                    .map(|(l, p)| (Some(p), None, l.as_bytes(), None))
                    .collect();
                kafka::produce(&input, &records);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let (ckpt, ckpt_held) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let held_group = format!("{held}-source");
    let mut idle = Running::spawn(kafka_visits(
        &input,
        &output,
        ckpt.path(),
        &["--idle-seconds", "1"],
    ));
    let mut not_idle = Running::spawn(kafka_visits(
        &input,
        &held,
        ckpt_held.path(),
        &[
            "--idle-seconds",
            "3600",
            "-D",
            &format!("kafka.properties.group.id={held_group}"),
        ],
    ));

    let t = Instant::now();
    let mut got = Windows::new();
    while got.len() < want.len() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the windows below the watermark of partitions 0-2 did not fire in 20 s \
             with partition 3 empty and --idle-seconds 1: {} of {} written",
            got.len(),
            want.len()
        );
        idle.assert_alive();
        std::thread::sleep(Duration::from_millis(100));
        got = windows_in(&output, Duration::from_millis(100));
    }
    assert_windows(&got, &want, "windows fired with partition 3 idle");

    // The converse: the same input fully read and checkpointed, the
    // empty partition never idle: no window has fired.
    wait_until(
        "the run with --idle-seconds 3600 to checkpoint the input",
        Duration::from_secs(20),
        || {
            not_idle.assert_alive();
            checkpointed(&held_group, &input, &ends)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    not_idle.assert_alive();
    let written = kafka::consume_all(&held, "read_uncommitted", IDLE);
    assert!(
        written.is_empty(),
        "with --idle-seconds 3600 the empty partition must hold the watermark back, \
         but {} window records were written, e.g. {:?}",
        written.len(),
        written.first().map(|r| r.text().to_string())
    );

    idle.kill();
    not_idle.kill();
    stop.store(true, Ordering::Relaxed);
    heartbeat.join().unwrap();
}
