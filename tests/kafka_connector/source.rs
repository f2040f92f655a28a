//! The Kafka source: starting offsets, bounded mode, partition discovery,
//! deserialization errors, consumer-group offsets, rescaled restores,
//! per-partition watermarks. Every test has topics of its own and runs a
//! job in this process (`Env` + `CollectSink`); the records it read are
//! compared, as (partition, offset, value), with what is in the topic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::prelude::*;
use weir_operators::kafka::rdkafka;
use weir_operators::kafka::{
    utf8_value, DeserializationErrors, KafkaRecord, KafkaSource, StartingOffsets,
};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka;

/// What the tests' sources emit: (partition, offset, value).
type Rec = (i32, i64, String);

/// The name of the Kafka source in every job.
const SOURCE: &str = "Kafka source";

/// The tests' deserializer: the position and the value as UTF-8.
fn rec(r: &KafkaRecord<'_>) -> Result<Rec, String> {
    Ok((r.partition, r.offset, utf8_value(r)?))
}

/// A deserializer that rejects values that are not numbers.
fn number(r: &KafkaRecord<'_>) -> Result<Rec, String> {
    let v = utf8_value(r)?;
    match v.parse::<i64>() {
        Ok(_) => Ok((r.partition, r.offset, v)),
        Err(_) => Err(format!("not a number: {v:?}")),
    }
}

/// A configuration for this binary's broker: no restarts (a failure fails
/// the job), checkpoints (when on) under `dir`, and `extra`.
fn conf(dir: &Path, extra: &[(&str, &str)]) -> Conf {
    let mut c = Conf::defaults();
    c.set("kafka.properties.bootstrap.servers", kafka::bootstrap())
        .unwrap();
    c.set("restart-strategy.type", "none").unwrap();
    c.set("execution.checkpointing.dir", dir.display()).unwrap();
    c.set("pipeline.auto-watermark-interval", "10ms").unwrap();
    for (k, v) in extra {
        c.set(k, v).unwrap_or_else(|e| panic!("{k}: {v}: {e}"));
    }
    c
}

/// A running job: source -> collect sink.
struct Job {
    _env: Env,
    handle: JobHandle,
    out: CollectHandle<Rec>,
}

/// Starts `source` at `parallelism` into a collect sink.
fn start(conf: Conf, parallelism: usize, source: KafkaSource<Rec>) -> Job {
    let env = Env::from_conf(conf).unwrap();
    let sink = CollectSink::new();
    let out = sink.handle();
    env.add_source(source)
        .name(SOURCE)
        .set_parallelism(parallelism)
        .add_sink(sink);
    let handle = env.execute_async("kafka-source-test").unwrap();
    Job {
        _env: env,
        handle,
        out,
    }
}

/// Runs `source` at `parallelism` to its end (bounded): what it read, sorted,
/// and the job's result.
fn run_bounded(conf: Conf, parallelism: usize, source: KafkaSource<Rec>) -> (Vec<Rec>, JobResult) {
    let job = start(conf, parallelism, source);
    let result = job.handle.wait().expect("the bounded job finishes");
    (sorted(job.out.take()), result)
}

/// Runs `source` and returns its job's error (from the start, when the
/// source fails to open, or from its end).
fn run_failing(conf: Conf, source: KafkaSource<Rec>) -> String {
    let env = Env::from_conf(conf).unwrap();
    env.add_source(source)
        .name(SOURCE)
        .set_parallelism(1)
        .add_sink(DiscardSink);
    match env.execute_async("kafka-source-test") {
        Err(e) => e.to_string(),
        Ok(job) => match job.wait() {
            Ok(_) => panic!("the job finished instead of failing"),
            Err(e) => e.to_string(),
        },
    }
}

fn sorted(mut v: Vec<Rec>) -> Vec<Rec> {
    v.sort();
    v
}

/// Every record of `topic` as the source would emit it, sorted.
fn in_topic(topic: &str) -> Vec<Rec> {
    kafka::consume_all(topic, "read_committed", Duration::from_millis(50))
        .into_iter()
        .map(|r| (r.partition, r.offset, r.text().to_string()))
        .collect()
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `secs` seconds.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "waited {secs} s for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `out` holds at least `n` records; returns them, sorted.
fn wait_records(out: &CollectHandle<Rec>, n: usize, what: &str) -> Vec<Rec> {
    wait_for(what, 30, || (out.len() >= n).then_some(()));
    let mut got = out.take();
    // `take` empties the sink: the caller owns what was read so far.
    got.sort();
    got
}

/// Values `<prefix> <i>` for `i` in `range`.
fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

/// Writes `values` to `partition` of `topic`.
fn produce_to(topic: &str, partition: i32, values: &[&str]) {
    let records: Vec<kafka::Produce<'_>> = values
        .iter()
        .map(|v| (Some(partition), None, v.as_bytes(), None))
        .collect();
    kafka::produce(topic, &records);
}

/// Commits `offsets` (partition, offset) of `topic` for `group` with a
/// plain consumer, and checks the broker has them.
fn commit(group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let c: BaseConsumer = kafka::client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync)
        .unwrap_or_else(|e| panic!("committing {offsets:?} for {group}: {e}"));
    let committed = kafka::committed_offsets(group, topic);
    for (p, o) in offsets {
        assert_eq!(committed[*p as usize], Some(*o), "{committed:?}");
    }
}

/// The records in `out` of the source, over its subtasks.
fn records_in_errors(result: &JobResult) -> u64 {
    result
        .operator(SOURCE)
        .unwrap_or_else(|| {
            panic!(
                "no operator {SOURCE:?} in {:?}",
                result.operators.iter().map(|o| &o.name).collect::<Vec<_>>()
            )
        })
        .records_in_errors
}

/// A recent time in ms since the epoch, a multiple of 10 s: record
/// timestamps must be recent, or the broker's retention (7 days, by record
/// time) deletes them at once.
fn recent_base() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 3_600_000) / 10_000 * 10_000
}

// ---- 1. starting offsets ----

#[test]
fn earliest_reads_every_partition_from_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-earliest");
    kafka::create_topic(&topic, 3);
    kafka::produce_lines(&topic, &lines("e", 0..30));
    let source = KafkaSource::builder(rec)
        .conf(&conf(dir.path(), &[]))
        .unwrap()
        .topics([topic.as_str()])
        .starting_offsets(StartingOffsets::Earliest)
        .bounded(true)
        .build()
        .unwrap();
    let (got, result) = run_bounded(conf(dir.path(), &[]), 2, source);
    let expected: Vec<Rec> = (0..30i32)
        .map(|i| (i % 3, (i / 3) as i64, format!("e {i}")))
        .collect();
    assert_eq!(got, sorted(expected));
    assert_eq!(result.operator(SOURCE).unwrap().records_out, 30);
    assert_eq!(records_in_errors(&result), 0);
}

/// `latest-offset`: the positions are the end offsets when the job starts
/// (seen in the group's committed offsets after a checkpoint); only records
/// written after that are read.
#[test]
fn latest_reads_only_records_written_after_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-latest");
    let group = kafka::unique_topic("src-latest-group");
    kafka::create_topic(&topic, 3);
    kafka::produce_lines(&topic, &lines("before", 0..10));
    let c = conf(
        dir.path(),
        &[
            ("kafka.scan.startup.mode", "latest-offset"),
            ("kafka.properties.group.id", &group),
            ("execution.checkpointing.interval", "100ms"),
        ],
    );
    let source = KafkaSource::builder(rec)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .build()
        .unwrap();
    let job = start(c, 2, source);
    // A completed checkpoint commits the positions: the ends at the start.
    wait_for("the start positions committed", 30, || {
        (kafka::committed_offsets(&group, &topic) == [Some(4), Some(3), Some(3)]).then_some(())
    });
    kafka::produce_lines(&topic, &lines("after", 0..9));
    let got = wait_records(&job.out, 9, "the 9 records written after the start");
    let expected: Vec<Rec> = (0..9)
        .map(|i| {
            (
                (i % 3) as i32,
                [4, 3, 3][i % 3] + (i / 3) as i64,
                format!("after {i}"),
            )
        })
        .collect();
    assert_eq!(got, sorted(expected));
    job.handle.cancel();
    assert!(matches!(job.handle.wait(), Err(Error::Cancelled(_))));
    assert!(job.out.is_empty(), "{:?}", job.out.take());
}

/// The topic of the group-offsets tests: 3 partitions of 10 records
/// (`g <i>` at partition i % 3, offset i / 3); the group committed 4 for
/// partition 0 and 7 for partition 1, nothing for partition 2.
fn group_topic(name: &str) -> (String, String) {
    let topic = kafka::unique_topic(name);
    let group = kafka::unique_topic(&format!("{name}-group"));
    kafka::create_topic(&topic, 3);
    kafka::produce_lines(&topic, &lines("g", 0..30));
    commit(&group, &topic, &[(0, 4), (1, 7)]);
    (topic, group)
}

fn group_run(topic: &str, group: &str, reset: &str) -> Result<Vec<Rec>, String> {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        &[
            ("kafka.scan.startup.mode", "group-offsets"),
            ("kafka.scan.bounded.mode", "latest-offset"),
            ("kafka.properties.group.id", group),
            ("kafka.properties.auto.offset.reset", reset),
        ],
    );
    let source = KafkaSource::builder(rec)
        .conf(&c)
        .map_err(|e| e.to_string())?
        .topics([topic])
        .build()
        .map_err(|e| e.to_string())?;
    let job = start(c, 2, source);
    match job.handle.wait() {
        Ok(_) => Ok(sorted(job.out.take())),
        Err(e) => Err(e.to_string()),
    }
}

/// Records `g <i>` of the group topic at partition `p` from offset `from`.
fn group_records(p: i32, from: i64) -> Vec<Rec> {
    (from..10)
        .map(|o| (p, o, format!("g {}", o * 3 + p as i64)))
        .collect()
}

#[test]
fn group_offsets_start_at_the_committed_offsets_else_earliest() {
    let (topic, group) = group_topic("src-group-earliest");
    let got = group_run(&topic, &group, "earliest").unwrap();
    let expected: Vec<Rec> = [
        group_records(0, 4),
        group_records(1, 7),
        group_records(2, 0),
    ]
    .concat();
    assert_eq!(got, expected);
}

#[test]
fn group_offsets_start_at_the_committed_offsets_else_latest() {
    let (topic, group) = group_topic("src-group-latest");
    let got = group_run(&topic, &group, "latest").unwrap();
    let expected: Vec<Rec> = [group_records(0, 4), group_records(1, 7)].concat();
    assert_eq!(got, expected);
}

/// `auto.offset.reset: none` (Flink's and Kafka's name): a partition without
/// a committed offset fails the job, naming it.
#[test]
fn group_offsets_without_a_committed_offset_and_reset_none_fail_naming_the_partition() {
    let (topic, group) = group_topic("src-group-none");
    let err = group_run(&topic, &group, "none").expect_err("the job fails");
    assert!(err.contains(&format!("{topic}-2")), "{err}");
    assert!(err.contains(&group), "{err}");
    assert!(err.contains("auto.offset.reset"), "{err}");
    for p in [0, 1] {
        assert!(!err.contains(&format!("{topic}-{p} ")), "{err}");
    }
}

/// `timestamp`: each partition starts at its first record with a timestamp
/// at or after the time; a partition with none reads nothing.
#[test]
fn timestamp_starts_each_partition_at_its_first_record_at_or_after_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-timestamp");
    kafka::create_topic(&topic, 3);
    let base = recent_base();
    let mut records: Vec<(i32, String, i64)> = Vec::new();
    for (i, dt) in [0, 1_000, 2_000, 3_000, 4_000].iter().enumerate() {
        records.push((0, format!("p0 {i}"), base + dt));
    }
    for (i, dt) in [500, 2_500, 2_600].iter().enumerate() {
        records.push((1, format!("p1 {i}"), base + dt));
    }
    for (i, dt) in [100, 200].iter().enumerate() {
        records.push((2, format!("p2 {i}"), base + dt));
    }
    let produce: Vec<kafka::Produce<'_>> = records
        .iter()
        .map(|(p, v, ts)| (Some(*p), None, v.as_bytes(), Some(*ts)))
        .collect();
    kafka::produce(&topic, &produce);
    let at = (base + 2_500).to_string();
    let c = conf(
        dir.path(),
        &[
            ("kafka.scan.startup.mode", "timestamp"),
            ("kafka.scan.startup.timestamp-millis", &at),
            ("kafka.scan.bounded.mode", "latest-offset"),
        ],
    );
    let source = KafkaSource::builder(|r: &KafkaRecord<'_>| {
        Ok((
            r.partition,
            r.offset,
            format!("{}@{}", utf8_value(r)?, r.timestamp.unwrap_or(-1)),
        ))
    })
    .conf(&c)
    .unwrap()
    .topics([topic.as_str()])
    .build()
    .unwrap();
    let (got, _) = run_bounded(c, 2, source);
    let expected: Vec<Rec> = vec![
        (0, 3, format!("p0 3@{}", base + 3_000)),
        (0, 4, format!("p0 4@{}", base + 4_000)),
        (1, 1, format!("p1 1@{}", base + 2_500)),
        (1, 2, format!("p1 2@{}", base + 2_600)),
    ];
    assert_eq!(got, expected);
}

// ---- 2. bounded mode ----

/// A bounded job ends by itself at the end offsets of its start: records
/// written while it runs (after it resolved its ends) are not read.
#[test]
fn bounded_ends_at_the_end_offsets_of_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-bounded");
    kafka::create_topic(&topic, 2);
    kafka::produce_lines(&topic, &lines("old", 0..20));
    // The first record waits until the test has written more.
    let calls = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicBool::new(false));
    let (c2, o2) = (calls.clone(), open.clone());
    let source = KafkaSource::builder(move |r: &KafkaRecord<'_>| {
        c2.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        while !o2.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
        }
        rec(r)
    })
    .bootstrap_servers(kafka::bootstrap())
    .topics([topic.as_str()])
    .bounded(true)
    .build()
    .unwrap();
    let job = start(conf(dir.path(), &[]), 1, source);
    wait_for("the first record read", 30, || {
        (calls.load(Ordering::SeqCst) > 0).then_some(())
    });
    kafka::produce_lines(&topic, &lines("new", 0..10));
    assert_eq!(kafka::end_offsets(&topic), vec![15, 15]);
    open.store(true, Ordering::SeqCst);
    let result = job.handle.wait().expect("the bounded job finishes");
    let expected: Vec<Rec> = (0..20i32)
        .map(|i| (i % 2, (i / 2) as i64, format!("old {i}")))
        .collect();
    assert_eq!(sorted(job.out.take()), sorted(expected));
    assert_eq!(result.operator(SOURCE).unwrap().records_out, 20);
}

// ---- 3. partition discovery ----

#[test]
fn discovered_partitions_are_read_from_their_earliest_offset() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-discovery");
    kafka::create_topic(&topic, 2);
    kafka::produce_lines(&topic, &lines("first", 0..6));
    let source = KafkaSource::builder(rec)
        .bootstrap_servers(kafka::bootstrap())
        .topics([topic.as_str()])
        .partition_discovery(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let job = start(conf(dir.path(), &[]), 2, source);
    let mut got = wait_records(&job.out, 6, "the first 6 records");
    kafka::add_partitions(&topic, 4);
    produce_to(&topic, 2, &["p2 a", "p2 b", "p2 c"]);
    produce_to(&topic, 3, &["p3 a", "p3 b"]);
    produce_to(&topic, 0, &["p0 late"]);
    got.extend(wait_records(
        &job.out,
        6,
        "the records of the new partitions",
    ));
    got.sort();
    job.handle.cancel();
    assert!(matches!(job.handle.wait(), Err(Error::Cancelled(_))));
    got.extend(job.out.take());
    got.sort();
    assert_eq!(got, in_topic(&topic));
    assert_eq!(got.len(), 12);
    assert_eq!(
        got.iter().filter(|r| r.0 >= 2).cloned().collect::<Vec<_>>(),
        vec![
            (2, 0, "p2 a".to_string()),
            (2, 1, "p2 b".to_string()),
            (2, 2, "p2 c".to_string()),
            (3, 0, "p3 a".to_string()),
            (3, 1, "p3 b".to_string()),
        ]
    );
}

// ---- 4. deserialization errors ----

#[test]
fn a_bad_record_fails_the_job_naming_topic_partition_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-deser-fail");
    kafka::create_topic(&topic, 2);
    produce_to(&topic, 0, &["1", "2", "3"]);
    produce_to(&topic, 1, &["4", "five", "6"]);
    let c = conf(dir.path(), &[("kafka.scan.bounded.mode", "latest-offset")]);
    let source = KafkaSource::builder(number)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .build()
        .unwrap();
    let err = run_failing(c, source);
    assert!(
        err.contains(&format!("topic '{topic}' partition 1 offset 1")),
        "{err}"
    );
    assert!(err.contains("not a number: \"five\""), "{err}");
}

/// The topic of the skip and dead-letter tests: 7 good and 3 bad records,
/// with keys and timestamps `base + 1000..`. Returns the good ones and `base`.
fn mixed_topic(topic: &str) -> (Vec<Rec>, i64) {
    kafka::create_topic(topic, 2);
    let base = recent_base();
    let recs: [(i32, &str, &str, i64); 10] = [
        (0, "k0", "1", 1_000),
        (0, "k1", "x", 1_001),
        (0, "k2", "3", 1_002),
        (0, "k3", "y", 1_003),
        (0, "k4", "5", 1_004),
        (1, "k5", "6", 2_000),
        (1, "k6", "z z", 2_001),
        (1, "k7", "8", 2_002),
        (1, "k8", "9", 2_003),
        (1, "k9", "10", 2_004),
    ];
    let produce: Vec<kafka::Produce<'_>> = recs
        .iter()
        .map(|(p, k, v, ts)| (Some(*p), Some(k.as_bytes()), v.as_bytes(), Some(base + ts)))
        .collect();
    kafka::produce(topic, &produce);
    let good = vec![
        (0, 0, "1".into()),
        (0, 2, "3".into()),
        (0, 4, "5".into()),
        (1, 0, "6".into()),
        (1, 2, "8".into()),
        (1, 3, "9".into()),
        (1, 4, "10".into()),
    ];
    (good, base)
}

#[test]
fn skip_leaves_bad_records_out_and_counts_them_in_num_records_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-deser-skip");
    let (good, _) = mixed_topic(&topic);
    let c = conf(dir.path(), &[]);
    let source = KafkaSource::builder(number)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .bounded(true)
        .on_deserialization_error(DeserializationErrors::Skip)
        .build()
        .unwrap();
    let (got, result) = run_bounded(c, 2, source);
    assert_eq!(got, good);
    assert_eq!(records_in_errors(&result), 3);
    assert_eq!(result.operator(SOURCE).unwrap().records_out, 7);
}

/// A dead letter as read back: (partition, offset, key, value, timestamp, headers).
type DeadLetter = (
    i32,
    i64,
    Option<String>,
    String,
    Option<i64>,
    BTreeMap<String, String>,
);

/// Every record of `topic` with its headers, by (partition, offset).
fn read_with_headers(topic: &str) -> Vec<DeadLetter> {
    let ends = kafka::end_offsets(topic);
    let total: i64 = ends.iter().sum();
    let c: BaseConsumer = kafka::client_config()
        .set("group.id", kafka::unique_topic("src-dlt-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..ends.len() as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    while (out.len() as i64) < total {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "read {} of {total} records of {topic}",
            out.len()
        );
        match c.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers.insert(
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    m.timestamp().to_millis(),
                    headers,
                ));
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out.sort_by_key(|d| (d.0, d.1));
    out
}

#[test]
fn dead_letter_copies_bad_records_with_their_origin_in_headers() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-deser-dlt");
    let dlt = kafka::unique_topic("src-deser-dlt-dead");
    let (good, base) = mixed_topic(&topic);
    kafka::create_topic(&dlt, 1);
    let c = conf(
        dir.path(),
        &[
            ("kafka.scan.bounded.mode", "latest-offset"),
            ("kafka.scan.deserialization-errors", "dead-letter"),
            ("kafka.scan.dead-letter-topic", &dlt),
        ],
    );
    let source = KafkaSource::builder(number)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .build()
        .unwrap();
    let (got, result) = run_bounded(c, 2, source);
    assert_eq!(got, good);
    assert_eq!(records_in_errors(&result), 3);
    assert_eq!(kafka::end_offsets(&dlt), vec![3]);
    let mut dead: Vec<DeadLetter> = read_with_headers(&dlt);
    // The two source partitions are read by different subtasks or in
    // either order: compare by origin.
    dead.sort_by(|a, b| {
        (&a.5["weir.partition"], &a.5["weir.offset"])
            .cmp(&(&b.5["weir.partition"], &b.5["weir.offset"]))
    });
    let expected = [
        ("k1", "x", 1_001, 0, 1),
        ("k3", "y", 1_003, 0, 3),
        ("k6", "z z", 2_001, 1, 1),
    ];
    assert_eq!(dead.len(), expected.len(), "{dead:?}");
    for (d, (k, v, ts, p, o)) in dead.iter().zip(expected) {
        assert_eq!(d.2.as_deref(), Some(k), "{d:?}");
        assert_eq!(d.3, v, "{d:?}");
        assert_eq!(d.4, Some(base + ts), "{d:?}");
        let h: BTreeMap<String, String> = [
            ("weir.error", format!("not a number: {v:?}")),
            ("weir.topic", topic.clone()),
            ("weir.partition", p.to_string()),
            ("weir.offset", o.to_string()),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect();
        assert_eq!(d.5, h, "{d:?}");
    }
}

// ---- 5. offsets committed to the consumer group ----

/// While the job runs, every completed checkpoint commits the positions of
/// its snapshot: once everything is read, the group's offsets are the ends.
#[test]
fn completed_checkpoints_commit_the_positions_to_the_consumer_group() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-commit");
    let group = kafka::unique_topic("src-commit-group");
    kafka::create_topic(&topic, 3);
    kafka::produce_lines(&topic, &lines("c", 0..29));
    let c = conf(dir.path(), &[("execution.checkpointing.interval", "100ms")]);
    let source = KafkaSource::builder(rec)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .group_id(&group)
        .build()
        .unwrap();
    let job = start(c, 2, source);
    let got = wait_records(&job.out, 29, "all 29 records");
    assert_eq!(got, in_topic(&topic));
    wait_for("the ends committed", 30, || {
        (kafka::committed_offsets(&group, &topic) == [Some(10), Some(10), Some(9)]).then_some(())
    });
    kafka::produce_lines(&topic, &lines("d", 0..3));
    wait_records(&job.out, 3, "3 more records");
    wait_for("the new ends committed", 30, || {
        (kafka::committed_offsets(&group, &topic) == [Some(11), Some(11), Some(10)]).then_some(())
    });
    job.handle.cancel();
    let _ = job.handle.wait();
}

/// A bounded job with checkpointing ends with a final checkpoint: when it
/// completes, the group's offsets are the end offsets (Flink commits the
/// offsets of finished splits on the next completed checkpoint).
#[test]
fn a_bounded_job_with_checkpoints_commits_its_end_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-commit-bounded");
    let group = kafka::unique_topic("src-commit-bounded-group");
    kafka::create_topic(&topic, 3);
    kafka::produce_lines(&topic, &lines("b", 0..30));
    let c = conf(dir.path(), &[("execution.checkpointing.interval", "100ms")]);
    let source = KafkaSource::builder(rec)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .group_id(&group)
        .bounded(true)
        .build()
        .unwrap();
    let (got, result) = run_bounded(c, 2, source);
    assert_eq!(got, in_topic(&topic));
    assert!(
        result
            .checkpoints
            .iter()
            .any(|s| s.status == weir::runtime::checkpoint::CheckpointStatus::Completed),
        "a checkpoint completed"
    );
    // The commit is asynchronous: give it a moment.
    let t = Instant::now();
    let mut committed = kafka::committed_offsets(&group, &topic);
    while committed != [Some(10), Some(10), Some(10)] && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        committed = kafka::committed_offsets(&group, &topic);
    }
    assert_eq!(committed, [Some(10), Some(10), Some(10)]);
}

// ---- 6. restores ----

/// Writes `counts[p]` records `<prefix> p<p> <i>` to each partition p.
fn produce_uneven(topic: &str, prefix: &str, counts: &[usize]) {
    for (p, n) in counts.iter().enumerate() {
        let values: Vec<String> = (0..*n).map(|i| format!("{prefix} p{p} {i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        if !refs.is_empty() {
            produce_to(topic, p as i32, &refs);
        }
    }
}

/// The union of `runs` has every record of `topic` exactly once.
fn assert_exactly_once(topic: &str, runs: &[&[Rec]]) {
    let mut all: Vec<Rec> = runs.iter().flat_map(|r| r.iter().cloned()).collect();
    all.sort();
    let mut dups: Vec<&Rec> = all
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    dups.dedup();
    assert!(dups.is_empty(), "read more than once: {dups:?}");
    assert_eq!(all, in_topic(topic));
}

/// An unbounded job at parallelism 2 over 5 partitions, stopped with a
/// savepoint, more records written after it, restored (bounded) at 3 and,
/// from the same savepoint, at 1: each restored run reads exactly what the
/// first did not (no partition from earliest, none from latest).
#[test]
fn a_savepoint_restores_at_other_parallelisms_and_every_record_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-restore");
    kafka::create_topic(&topic, 5);
    produce_uneven(&topic, "a", &[3, 10, 0, 7, 1]);
    let c = conf(dir.path(), &[("execution.checkpointing.interval", "200ms")]);
    let source = |bounded: bool, c: &Conf| {
        KafkaSource::builder(rec)
            .conf(c)
            .unwrap()
            .topics([topic.as_str()])
            .bounded(bounded)
            .build()
            .unwrap()
    };
    let job = start(c.clone(), 2, source(false, &c));
    let mut first = wait_records(&job.out, 21, "the first 21 records");
    produce_uneven(&topic, "b", &[2, 0, 4, 1, 0]);
    first.extend(wait_records(&job.out, 7, "7 more records"));
    let sp: PathBuf = job
        .handle
        .stop_with_savepoint(Some(&dir.path().join("savepoints")), false)
        .expect("a savepoint");
    job.handle.wait().expect("a stopped job finishes");
    first.extend(job.out.take());
    first.sort();
    assert_eq!(first.len(), 28, "{first:?}");
    // Written after the savepoint, also into partitions it read nothing of.
    produce_uneven(&topic, "c", &[5, 1, 2, 0, 6]);
    for parallelism in [3, 1] {
        let restored = conf(
            dir.path(),
            &[
                ("execution.checkpointing.interval", "200ms"),
                ("execution.state-recovery.path", &sp.display().to_string()),
            ],
        );
        let (second, _) = run_bounded(restored.clone(), parallelism, source(true, &restored));
        assert_eq!(second.len(), 14, "parallelism {parallelism}: {second:?}");
        assert!(
            second.iter().all(|r| r.2.starts_with("c ")),
            "parallelism {parallelism}: {second:?}"
        );
        assert_exactly_once(&topic, &[&first, &second]);
    }
}

/// A bounded job at parallelism 2 over 2 partitions: partition 0 (2
/// records) is done at once and its subtask finishes, partition 1 (300
/// records, 5 ms each) is still being read when a checkpoint is taken; the
/// job is cancelled and restored from that checkpoint at parallelism 1. The
/// checkpoint must still hold the finished subtask's position (Flink's
/// checkpoints after tasks finished): partition 0 is not read again, and
/// partition 1 resumes where the checkpoint left it.
#[test]
fn a_checkpoint_after_a_subtask_finished_keeps_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-restore-finished");
    kafka::create_topic(&topic, 2);
    use weir_operators::kafka::assign::owner;
    assert_ne!(owner(&topic, 0, 2), owner(&topic, 1, 2));
    produce_uneven(&topic, "r", &[2, 300]);
    let c = conf(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "1h"),
            ("pipeline.source-batch-size", "1"),
        ],
    );
    let source = |c: &Conf| {
        KafkaSource::builder(|r: &KafkaRecord<'_>| {
            if r.partition == 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            rec(r)
        })
        .conf(c)
        .unwrap()
        .topics([topic.as_str()])
        .bounded(true)
        .build()
        .unwrap()
    };
    let job = start(c.clone(), 2, source(&c));
    let job_id = job.handle.job_id().to_string();
    let mut first = wait_records(&job.out, 22, "partition 0 and part of partition 1");
    assert_eq!(first.iter().filter(|r| r.0 == 0).count(), 2, "{first:?}");
    let id = job.handle.trigger_checkpoint().expect("a checkpoint");
    wait_for("the checkpoint to complete", 30, || {
        job.handle
            .checkpoint_stats()
            .iter()
            .any(|s| {
                s.id == id && s.status == weir::runtime::checkpoint::CheckpointStatus::Completed
            })
            .then_some(())
    });
    job.handle.cancel();
    assert!(matches!(job.handle.wait(), Err(Error::Cancelled(_))));
    first.extend(job.out.take());
    first.sort();
    assert!(
        first.len() < 302,
        "partition 1 ended before the checkpoint: {}",
        first.len()
    );
    let restored = conf(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "1h"),
            (
                "execution.state-recovery.path",
                &dir.path().join(&job_id).display().to_string(),
            ),
        ],
    );
    let (second, _) = run_bounded(restored.clone(), 1, source(&restored));
    assert_eq!(
        second.iter().filter(|r| r.0 == 0).collect::<Vec<_>>(),
        Vec::<&Rec>::new(),
        "partition 0 was read again after the restore"
    );
    // Partition 1: the restore reads from the checkpoint's position k to
    // the end; the first run read everything before k (and maybe more,
    // after the checkpoint, before it was cancelled).
    let offsets: Vec<i64> = second.iter().map(|r| r.1).collect();
    let k = offsets[0];
    assert!(k >= 20, "partition 1 restarted at {k}");
    assert_eq!(offsets, (k..300).collect::<Vec<_>>());
    let before: Vec<i64> = first.iter().filter(|r| r.0 == 1).map(|r| r.1).collect();
    assert!(before.len() as i64 >= k, "{before:?}");
    assert_eq!(before[..k as usize], (0..k).collect::<Vec<_>>());
}

// ---- 7. a missing topic ----

#[test]
fn a_missing_topic_fails_the_job_at_start_naming_it_and_the_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-missing");
    let c = conf(dir.path(), &[]);
    let t = Instant::now();
    // `build` may already check the topics; else the job fails when the
    // source opens.
    let err = match KafkaSource::builder(rec)
        .conf(&c)
        .unwrap()
        .topics([topic.as_str()])
        .build()
    {
        Err(e) => e.to_string(),
        Ok(source) => run_failing(c, source),
    };
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(err.contains(&format!("'{topic}'")), "{err}");
    assert!(err.contains(&kafka::bootstrap()), "{err}");
    assert!(
        err.contains("does not exist") || err.contains("UnknownTopicOrPartition"),
        "{err}"
    );
}

// ---- 8. per-partition watermarks ----

#[derive(Clone)]
struct Count;

impl AggregateFunction<(i32, i64)> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: &(i32, i64), acc: &mut u64) {
        *acc += 1
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// (window start, window end, records)
type Row = (i64, i64, u64);

/// A job counting the records of `topic` in 10 s event-time windows, every
/// partition with its own watermark generator (out-of-orderness 0, the
/// record's timestamp): one source subtask reads all partitions.
fn window_job(
    dir: &Path,
    topic: &str,
    idleness: Option<Duration>,
    parallelism: usize,
) -> (Env, JobHandle, CollectHandle<Row>) {
    let c = conf(dir, &[]);
    let env = Env::from_conf(c).unwrap();
    let source = KafkaSource::builder(|r: &KafkaRecord<'_>| {
        Ok((r.partition, r.timestamp.ok_or("no timestamp")?))
    })
    .bootstrap_servers(kafka::bootstrap())
    .topics([topic])
    .build()
    .unwrap();
    let mut strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::ZERO)
        .with_timestamp_assigner(|e: &(i32, i64)| e.1);
    if let Some(d) = idleness {
        strategy = strategy.with_idleness(d);
    }
    let rows = CollectSink::<Row>::new();
    let out = rows.handle();
    env.from_source(source, strategy, SOURCE)
        .set_parallelism(parallelism)
        .key_by(|_: &(i32, i64)| 0u8)
        .window(TumblingEventTimeWindows::of(Duration::from_secs(10)))
        .aggregate_with(
            Count,
            |_: &u8, w: &WindowContext, n: Vec<u64>, out: &mut Collector<'_, Row>| {
                out.collect((w.window.start, w.window.end, n[0]));
                Ok(())
            },
        )
        .add_sink(rows);
    let job = env.execute_async("kafka-watermarks").unwrap();
    (env, job, out)
}

/// Writes records with timestamps `base + ts` to `partition`.
fn produce_ts(topic: &str, partition: i32, base: i64, ts: &[i64]) {
    let values: Vec<String> = ts.iter().map(|t| format!("at {t}")).collect();
    let records: Vec<kafka::Produce<'_>> = values
        .iter()
        .zip(ts)
        .map(|(v, t)| (Some(partition), None, v.as_bytes(), Some(base + *t)))
        .collect();
    kafka::produce(topic, &records);
}

/// Records read by the source so far.
fn read_so_far(job: &JobHandle) -> u64 {
    job.metrics()
        .iter()
        .filter(|o| o.name == SOURCE)
        .map(|o| o.records_out)
        .sum()
}

/// Partition 1 holds only old timestamps: the window [0, 10 s) fires only
/// once partition 1's watermark passes it too, although partition 0 is far
/// ahead.
#[test]
fn a_window_fires_only_when_every_partitions_watermark_passed_it() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-wm");
    kafka::create_topic(&topic, 2);
    let b = recent_base();
    produce_ts(&topic, 0, b, &[1_000, 5_000, 12_000, 25_000]);
    produce_ts(&topic, 1, b, &[500, 1_500]);
    let (_env, job, rows) = window_job(dir.path(), &topic, None, 1);
    wait_for("the 6 records read", 30, || {
        (read_so_far(&job) == 6).then_some(())
    });
    // Many watermark intervals (10 ms) later, nothing fired: partition 1
    // holds the watermark at base + 1499.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rows.take(), vec![]);
    produce_ts(&topic, 1, b, &[15_000]);
    wait_for("the first window", 30, || (!rows.is_empty()).then_some(()));
    std::thread::sleep(Duration::from_millis(100));
    // [10 s, 20 s) holds 12000 and 15000 and stays open (watermark base + 14999).
    assert_eq!(rows.take(), vec![(b, b + 10_000, 4)]);
    job.cancel();
    let _ = job.wait();
}

/// With idleness, a partition without any record does not hold the
/// watermark back: the windows before partition 0's watermark fire.
#[test]
fn an_empty_partition_does_not_hold_the_watermark_with_idleness() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-wm-idle");
    kafka::create_topic(&topic, 2);
    let b = recent_base();
    produce_ts(&topic, 0, b, &[1_000, 5_000, 12_000, 25_000]);
    let (_env, job, rows) = window_job(dir.path(), &topic, Some(Duration::from_millis(200)), 1);
    wait_for("two windows", 30, || (rows.len() >= 2).then_some(()));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        rows.take(),
        vec![(b, b + 10_000, 2), (b + 10_000, b + 20_000, 1)]
    );
    job.cancel();
    let _ = job.wait();
}

/// Three source subtasks over two partitions: the subtask without a
/// partition is idle (no idleness configured), so it does not hold event
/// time back and the windows fire.
#[test]
fn a_subtask_without_partitions_does_not_hold_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("src-wm-nosplit");
    kafka::create_topic(&topic, 2);
    let b = recent_base();
    produce_ts(&topic, 0, b, &[1_000, 5_000, 12_000, 25_000]);
    produce_ts(&topic, 1, b, &[2_000, 26_000]);
    let (_env, job, rows) = window_job(dir.path(), &topic, None, 3);
    wait_for("two windows", 30, || (rows.len() >= 2).then_some(()));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        rows.take(),
        vec![(b, b + 10_000, 3), (b + 10_000, b + 20_000, 1)]
    );
    job.cancel();
    let _ = job.wait();
}
