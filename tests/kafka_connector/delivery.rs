//! Delivery guarantees end to end, against the broker.
//!
//! - The exactly-once sink's protocol at each crash point, driven
//!   deterministically (a `KafkaSink` called as the runtime calls it):
//!   after the pre-commit, during the commit (a transaction left open),
//!   after the commit, and a restore that runs twice.
//! - wordcount processes reading and writing Kafka: SIGKILL and `-s`
//!   resume from the checkpointed offsets; random actor kills (fixed seeds)
//!   with exactly-once (a `read_committed` reader sees every word's counts
//!   exactly `1..N`) and at-least-once (no count missing); a downscale
//!   resolves the transactional ids of the removed subtasks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir::operators::kafka::rdkafka::producer::Producer;
use weir::operators::kafka::KafkaSink;
use weir::operators::rng::SplitMix64;
use weir::prelude::*;
use weir::runtime::state::StateBackendConfig;

use super::common::{example, latest_checkpoint};
use super::kafka;

const IDLE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// The sink's protocol at its crash points.
// ---------------------------------------------------------------------------

fn ctx(subtask: usize, parallelism: usize) -> RuntimeContext {
    RuntimeContext {
        job_id: "f00d".repeat(8),
        run_id: "f00df00d".into(),
        operator: "Kafka sink".into(),
        subtask,
        parallelism,
        max_parallelism: 8,
        checkpointing: true,
        state_backend: StateBackendConfig::default(),
        auto_watermark_interval: Duration::from_millis(200),
        num_records_in_errors: Default::default(),
    }
}

/// An exactly-once sink subtask 0 of 1, opened.
fn sink(topic: &str, prefix: &str) -> KafkaSink<String> {
    let mut s = KafkaSink::values(topic)
        .bootstrap_servers(kafka::bootstrap())
        .transactional_id_prefix(prefix)
        .build()
        .unwrap();
    s.open(&ctx(0, 1)).unwrap();
    s
}

fn committed_values(topic: &str) -> Vec<String> {
    let mut v: Vec<String> = kafka::consume_all(topic, "read_committed", IDLE)
        .iter()
        .map(|r| r.text().to_string())
        .collect();
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Crash after the pre-commit (the checkpoint completed, the commit never
/// ran): the restore commits the output; the old attempt, if it still
/// lives, is fenced and its late commit fails.
#[test]
fn sink_crash_after_precommit_restore_commits_and_fences_the_zombie() {
    let topic = kafka::unique_topic("eos-precommit");
    kafka::create_topic(&topic, 1);
    let prefix = format!("{topic}-tx");
    let mut a = sink(&topic, &prefix);
    a.invoke(strings(&["a1", "a2"])).unwrap();
    let mut s1 = OperatorStateStore::new();
    a.snapshot_state(1, &mut s1).unwrap();
    assert!(
        committed_values(&topic).is_empty(),
        "nothing visible before the checkpoint completes"
    );

    let mut b = sink(&topic, &prefix);
    b.restore_state(&s1).unwrap();
    assert_eq!(committed_values(&topic), ["a1", "a2"]);

    // the zombie's commit of the same output is refused (commits run on
    // the sink's committer thread: the error shows at the next call)
    a.notify_checkpoint_complete(1).unwrap();
    let err = a.close().unwrap_err().to_string();
    assert!(err.contains("fenced"), "{err}");
    assert_eq!(committed_values(&topic), ["a1", "a2"]);
    assert!(!kafka::open_transaction_blocks(&topic));

    // the new attempt goes on: its next output is committed once
    b.invoke(strings(&["b1"])).unwrap();
    let mut s2 = OperatorStateStore::new();
    b.snapshot_state(2, &mut s2).unwrap();
    b.notify_checkpoint_complete(2).unwrap();
    b.close().unwrap();
    assert_eq!(committed_values(&topic), ["a1", "a2", "b1"]);
}

/// Crash after the commit, before anything else: the restore finds the
/// commit marker and sends nothing again, also when it runs twice.
#[test]
fn sink_crash_after_commit_restore_sends_nothing_again() {
    let topic = kafka::unique_topic("eos-committed");
    kafka::create_topic(&topic, 1);
    let prefix = format!("{topic}-tx");
    let mut a = sink(&topic, &prefix);
    a.invoke(strings(&["x1"])).unwrap();
    let mut s1 = OperatorStateStore::new();
    a.snapshot_state(1, &mut s1).unwrap();
    a.invoke(strings(&["x2"])).unwrap();
    let mut s2 = OperatorStateStore::new();
    a.snapshot_state(2, &mut s2).unwrap();
    // checkpoint 1's notification is lost; 2 completes and covers both
    a.notify_checkpoint_complete(2).unwrap();
    a.close().unwrap();
    assert_eq!(committed_values(&topic), ["x1", "x2"]);
    for _ in 0..2 {
        let mut b = sink(&topic, &prefix);
        b.restore_state(&s2).unwrap();
        let mut c = sink(&topic, &prefix);
        c.restore_state(&s1).unwrap();
    }
    assert_eq!(committed_values(&topic), ["x1", "x2"]);
    assert!(!kafka::open_transaction_blocks(&topic));
}

/// Crash during the commit: the transaction stays open and holds
/// `read_committed` readers back. The restore aborts it (fencing by
/// transactional id) and commits the checkpoint's output exactly once.
#[test]
fn sink_crash_during_commit_restore_aborts_the_open_transaction() {
    let topic = kafka::unique_topic("eos-open");
    kafka::create_topic(&topic, 1);
    let prefix = format!("{topic}-tx");
    let mut a = sink(&topic, &prefix);
    a.invoke(strings(&["c1", "c2", "c3"])).unwrap();
    let mut s1 = OperatorStateStore::new();
    a.snapshot_state(1, &mut s1).unwrap();
    drop(a);
    // what the dying attempt had sent of its commit
    let dying = kafka::transactional_producer(&format!("{prefix}-0"));
    dying.begin_transaction().unwrap();
    kafka::send_in_transaction(&dying, &topic, b"c1");
    assert!(kafka::open_transaction_blocks(&topic));

    let mut b = sink(&topic, &prefix);
    b.restore_state(&s1).unwrap();
    assert!(!kafka::open_transaction_blocks(&topic));
    assert_eq!(committed_values(&topic), ["c1", "c2", "c3"]);
    let all: Vec<String> = kafka::consume_all(&topic, "read_uncommitted", IDLE)
        .iter()
        .map(|r| r.text().to_string())
        .collect();
    assert_eq!(all.len(), 4, "the aborted record is in the log: {all:?}");
}

/// A downscale: the state of a removed subtask (transactional id
/// `<prefix>-1`) is restored by subtask 0 of 1, which commits its pending
/// output and aborts the transaction it left open.
#[test]
fn sink_downscale_resolves_the_removed_subtasks_transactions() {
    let topic = kafka::unique_topic("eos-downscale");
    kafka::create_topic(&topic, 2);
    let prefix = format!("{topic}-tx");
    let mut states = Vec::new();
    for i in 0..2 {
        let mut s = KafkaSink::values(&topic)
            .bootstrap_servers(kafka::bootstrap())
            .transactional_id_prefix(&prefix)
            .build()
            .unwrap();
        s.open(&ctx(i, 2)).unwrap();
        s.invoke(vec![format!("s{i}")]).unwrap();
        let mut st = OperatorStateStore::new();
        s.snapshot_state(7, &mut st).unwrap();
        states.push(st);
    }
    let dying = kafka::transactional_producer(&format!("{prefix}-1"));
    dying.begin_transaction().unwrap();
    kafka::send_in_transaction(&dying, &topic, b"junk");
    assert!(kafka::open_transaction_blocks(&topic));

    let merged = OperatorStateStore::redistribute(&states, 1, 0);
    let mut only = KafkaSink::values(&topic)
        .bootstrap_servers(kafka::bootstrap())
        .transactional_id_prefix(&prefix)
        .build()
        .unwrap();
    only.open(&ctx(0, 1)).unwrap();
    only.restore_state(&merged).unwrap();
    assert!(!kafka::open_transaction_blocks(&topic));
    assert_eq!(committed_values(&topic), ["s0", "s1"]);
}

/// Exactly-once without checkpoints cannot commit: refused at open, naming
/// the way out.
#[test]
fn sink_exactly_once_without_checkpointing_is_refused() {
    let mut s = KafkaSink::values("t")
        .bootstrap_servers(kafka::bootstrap())
        .build()
        .unwrap();
    let mut c = ctx(0, 1);
    c.checkpointing = false;
    let err = s.open(&c).unwrap_err().to_string();
    assert!(
        err.contains("checkpointing is off") && err.contains("at-least-once"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// wordcount processes over Kafka.
// ---------------------------------------------------------------------------

/// Deterministic lines of four words from a vocabulary of 60.
fn lines(seed: u64, n: usize) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            (0..4)
                .map(|_| format!("w{}", rng.next_u64() % 60))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn word_totals(lines: &[String]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        for w in l.split_whitespace() {
            *m.entry(w.to_string()).or_default() += 1;
        }
    }
    m
}

/// Every word's counts in `topic` (values `word<TAB>count`), in log order:
/// a word's updates share its key, so one partition, in order.
fn counts(topic: &str, isolation: &str) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in kafka::consume_all(topic, isolation, IDLE) {
        let (w, c) = r
            .text()
            .split_once('\t')
            .unwrap_or_else(|| panic!("not word<TAB>count: {:?}", r.text()));
        assert_eq!(r.key.as_deref(), Some(w.as_bytes()), "the key is the word");
        m.entry(w.to_string()).or_default().push(c.parse().unwrap());
    }
    m
}

fn assert_exactly_once(got: &BTreeMap<String, Vec<u64>>, want: &BTreeMap<String, u64>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "words"
    );
    let mut wrong = Vec::new();
    for (w, n) in want {
        let g = &got[w];
        if g.iter().copied().ne(1..=*n) {
            let at = g
                .iter()
                .zip(1..)
                .position(|(c, i)| *c != i)
                .unwrap_or(g.len().min(*n as usize));
            let around = &g[at.saturating_sub(3)..(at + 4).min(g.len())];
            wrong.push(format!(
                "{w}: {} counts for a total of {n}, first wrong at index {at}: ...{around:?}",
                g.len()
            ));
        }
    }
    assert!(wrong.is_empty(), "not exactly 1..N:\n{}", wrong.join("\n"));
}

fn assert_none_missing(got: &BTreeMap<String, Vec<u64>>, want: &BTreeMap<String, u64>) {
    let mut wrong = Vec::new();
    for (w, n) in want {
        let seen: std::collections::BTreeSet<u64> =
            got.get(w).into_iter().flatten().copied().collect();
        let missing: Vec<u64> = (1..=*n).filter(|c| !seen.contains(c)).take(5).collect();
        let beyond: Vec<u64> = seen.iter().filter(|c| **c > *n).take(5).copied().collect();
        if !missing.is_empty() || !beyond.is_empty() {
            wrong.push(format!(
                "{w} (total {n}): missing {missing:?}, beyond {beyond:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "counts missing:\n{}", wrong.join("\n"));
}

/// wordcount reading `input` and writing `output`, checkpointing into `ckpt`.
fn wordcount(input: &str, output: &str, ckpt: &Path, extra: &[&str]) -> Command {
    let mut cmd = crate::kafka_example("wordcount", ckpt);
    cmd.args(["--kafka-input-topic", input, "--kafka-output-topic", output])
        .args(["-q", "--no-ui"])
        .args(extra);
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wordcount failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn restarts(out: &Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("restarts: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a restarts line")
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The source's consumer group has committed (at a completed checkpoint)
/// the end offsets of `topic`: everything written so far is in a checkpoint.
fn wait_checkpointed_to_end(topic: &str) {
    let group = format!("weir-{topic}");
    let end: Vec<Option<i64>> = kafka::end_offsets(topic).into_iter().map(Some).collect();
    wait_until(
        "a checkpoint holding the input's end offsets",
        Duration::from_secs(60),
        || kafka::committed_offsets(&group, topic) == end,
    );
}

/// SIGKILL, more input, `-s` from the latest checkpoint with
/// `--kafka-bounded`: the source goes on from the checkpointed offsets
/// (from earliest the counts would run past N, from latest the second
/// batch would be missing), and the output is exactly once.
#[test]
fn wordcount_resumes_from_checkpointed_offsets_after_sigkill() {
    let input = kafka::unique_topic("wc-in");
    let output = kafka::unique_topic("wc-out");
    kafka::create_topic(&input, 3);
    kafka::create_topic(&output, 2);
    let first = lines(1, 3000);
    kafka::produce_lines(&input, &first);
    let ckpt = tempfile::tempdir().unwrap();

    let mut child = wordcount(&input, &output, ckpt.path(), &["-p", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_checkpointed_to_end(&input);
    child.kill().unwrap();
    child.wait().unwrap();

    let second = lines(2, 2000);
    kafka::produce_lines(&input, &second);
    let restore = latest_checkpoint(ckpt.path()).expect("a completed checkpoint");
    let out = run(wordcount(
        &input,
        &output,
        ckpt.path(),
        &[
            "-p",
            "2",
            "--kafka-bounded",
            "-s",
            restore.to_str().unwrap(),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("restored from checkpoint"), "{stderr}");

    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let want = word_totals(&all);
    assert_exactly_once(&counts(&output, "read_committed"), &want);
    assert!(!kafka::open_transaction_blocks(&output));
    let total: u64 = want.values().sum();
    assert!(String::from_utf8_lossy(&out.stdout).contains("total words:"));
    assert_eq!(total, 4 * all.len() as u64);
}

fn chaos(seed: u64) -> Vec<String> {
    [
        "chaos.kill-interval=100ms".to_string(),
        format!("chaos.seed={seed}"),
        "chaos.wait-for-checkpoint=true".into(),
        "restart-strategy.type=fixed-delay".into(),
        "restart-strategy.fixed-delay.attempts=1000".into(),
        "restart-strategy.fixed-delay.delay=10ms".into(),
    ]
    .into_iter()
    .flat_map(|d| ["-D".to_string(), d])
    .collect()
}

/// Random subtask kills (fixed seeds) in a Kafka -> keyed count -> Kafka
/// job: `read_committed` sees every word's counts exactly 1..N;
/// `read_uncommitted` (aborted transactions included) misses none.
#[test]
fn wordcount_exactly_once_under_random_kills() {
    let data = lines(7, 150_000);
    let want = word_totals(&data);
    let input = kafka::unique_topic("chaos-in");
    kafka::create_topic(&input, 4);
    kafka::produce_lines(&input, &data);
    for seed in [1, 2] {
        let output = kafka::unique_topic("chaos-out");
        kafka::create_topic(&output, 3);
        let ckpt = tempfile::tempdir().unwrap();
        let mut extra = chaos(seed);
        extra.extend(["-p".into(), "2".into(), "--kafka-bounded".into()]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = run(wordcount(&input, &output, ckpt.path(), &extra));
        assert!(restarts(&out) >= 1, "seed {seed}: no kill landed");
        assert_exactly_once(&counts(&output, "read_committed"), &want);
        assert_none_missing(&counts(&output, "read_uncommitted"), &want);
        assert!(!kafka::open_transaction_blocks(&output));
    }
}

/// The same kills with `kafka.sink.delivery-guarantee=at-least-once`: no
/// transaction, every record visible at once; duplicates may appear, no
/// count is missing, and each word's highest count is its total.
#[test]
fn wordcount_at_least_once_under_random_kills_misses_nothing() {
    let data = lines(8, 100_000);
    let want = word_totals(&data);
    let input = kafka::unique_topic("alo-in");
    let output = kafka::unique_topic("alo-out");
    kafka::create_topic(&input, 4);
    kafka::create_topic(&output, 3);
    kafka::produce_lines(&input, &data);
    let ckpt = tempfile::tempdir().unwrap();
    let mut extra = chaos(3);
    extra.extend([
        "-p".into(),
        "2".into(),
        "--kafka-bounded".into(),
        "-D".into(),
        "kafka.sink.delivery-guarantee=at-least-once".into(),
    ]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = run(wordcount(&input, &output, ckpt.path(), &extra));
    assert!(restarts(&out) >= 1, "no kill landed");
    let got = counts(&output, "read_uncommitted");
    assert_none_missing(&got, &want);
    for (w, n) in &want {
        assert_eq!(got[w].iter().max(), Some(n), "highest count of {w}");
    }
}

/// A job at parallelism 3 is killed; a transaction of its sink subtask 2 is
/// left open; the job is restored at parallelism 1: the open transaction
/// is aborted (nothing holds `read_committed` readers back, Flink's
/// FLINK-40626) and the output is exactly once.
#[test]
fn wordcount_downscale_leaves_no_transaction_open() {
    let input = kafka::unique_topic("down-in");
    let output = kafka::unique_topic("down-out");
    kafka::create_topic(&input, 3);
    kafka::create_topic(&output, 3);
    let prefix = format!("{output}-tx");
    let data = lines(9, 3000);
    kafka::produce_lines(&input, &data);
    let ckpt = tempfile::tempdir().unwrap();
    let prefix_opt = format!("kafka.sink.transactional-id-prefix={prefix}");
    let mut child = wordcount(
        &input,
        &output,
        ckpt.path(),
        &["-p", "3", "-D", &prefix_opt],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_checkpointed_to_end(&input);
    child.kill().unwrap();
    child.wait().unwrap();

    let dying = kafka::transactional_producer(&format!("{prefix}-2"));
    dying.begin_transaction().unwrap();
    kafka::send_in_transaction(&dying, &output, b"w0\t999999");
    assert!(kafka::open_transaction_blocks(&output));

    let restore = latest_checkpoint(ckpt.path()).expect("a completed checkpoint");
    run(wordcount(
        &input,
        &output,
        ckpt.path(),
        &[
            "-p",
            "1",
            "--kafka-bounded",
            "-D",
            &prefix_opt,
            "-s",
            restore.to_str().unwrap(),
        ],
    ));
    assert!(!kafka::open_transaction_blocks(&output));
    assert_exactly_once(&counts(&output, "read_committed"), &word_totals(&data));
}

/// Bad configurations fail before the job runs, naming the option; a
/// password given as an option never shows in the output.
#[test]
fn wordcount_kafka_config_errors_are_clear_and_secrets_stay_hidden() {
    let ckpt = tempfile::tempdir().unwrap();
    let bad = Command::new(example("wordcount"))
        .args(["--kafka-input-topic", "x", "-q", "--no-ui"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--kafka-brokers"));

    let out = wordcount(
        "no-such-topic-anywhere",
        "out",
        ckpt.path(),
        &[
            "-D",
            "kafka.properties.sasl.password=hunter2-secret",
            "-D",
            "kafka.properties.sasl.username=alice",
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("hunter2-secret"), "{text}");
    assert!(text.contains("no-such-topic-anywhere"), "{text}");

    let mode = wordcount(
        "x",
        "y",
        ckpt.path(),
        &["-D", "kafka.scan.startup.mode=newest"],
    )
    .output()
    .unwrap();
    assert!(!mode.status.success());
    let err = String::from_utf8_lossy(&mode.stderr);
    assert!(
        err.contains("kafka.scan.startup.mode") && err.contains("earliest-offset"),
        "{err}"
    );
}
