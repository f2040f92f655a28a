//! The Kafka connector against a real Kafka-protocol broker: noida-db
//! (`python3 -m pip install noida-db==0.2.3`, installed by `tests/run.sh`),
//! one broker for the whole binary, started by the first test that needs it
//! (see `common/kafka.rs`). Every test uses topics of its own
//! (`kafka::unique_topic`), so the tests run in parallel on one broker.
//! Built only with the `kafka` feature.

#[path = "common/mod.rs"]
mod common;
#[path = "common/kafka.rs"]
mod kafka;

use std::time::Duration;

/// The harness itself: a topic of 3 partitions, 100 records written
/// round-robin, read back at both isolation levels.
#[test]
fn broker_roundtrip() {
    let topic = kafka::unique_topic("roundtrip");
    kafka::create_topic(&topic, 3);
    assert_eq!(kafka::partition_count(&topic), 3);
    assert_eq!(kafka::end_offsets(&topic), vec![0, 0, 0]);
    let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    kafka::produce_lines(&topic, &lines);
    assert_eq!(kafka::end_offsets(&topic), vec![34, 33, 33]);
    assert!(!kafka::open_transaction_blocks(&topic));
    for isolation in ["read_uncommitted", "read_committed"] {
        let records = kafka::consume_all(&topic, isolation, Duration::from_millis(300));
        assert_eq!(records.len(), 100, "{isolation}");
        for r in &records {
            // Line i went to partition i % 3, at offset i / 3.
            let i = r.partition as i64 + 3 * r.offset;
            assert_eq!(r.text(), format!("line {i}"), "{isolation}: {r:?}");
            assert_eq!(r.key, None);
            assert!(r.timestamp.is_some_and(|t| t > 0), "{r:?}");
        }
    }
    // Keys, explicit partitions and timestamps come back as written.
    kafka::produce(
        &topic,
        &[
            (Some(2), Some(b"k".as_slice()), b"v".as_slice(), Some(1_000)),
            (Some(0), None, b"w".as_slice(), Some(2_000)),
        ],
    );
    assert_eq!(kafka::end_offsets(&topic), vec![35, 33, 34]);
    let records = kafka::consume_all(&topic, "read_committed", Duration::from_millis(300));
    let last = records.iter().find(|r| r.partition == 2 && r.offset == 33);
    assert_eq!(
        last,
        Some(&kafka::Record {
            partition: 2,
            offset: 33,
            key: Some(b"k".to_vec()),
            value: b"v".to_vec(),
            timestamp: Some(1_000),
        })
    );
    let w = records.iter().find(|r| r.partition == 0 && r.offset == 34);
    assert_eq!(w.map(|r| (r.text(), r.timestamp)), Some(("w", Some(2_000))));
    // Growing the topic.
    kafka::add_partitions(&topic, 5);
    assert_eq!(kafka::end_offsets(&topic), vec![35, 33, 34, 0, 0]);
    assert_eq!(
        kafka::committed_offsets("nobody-committed", &topic),
        vec![None; 5]
    );
}

/// The harness's view of transactions: records of an open transaction hold
/// read_committed readers back (last stable offset below the end offset)
/// until the transaction is committed.
#[test]
fn broker_open_transaction_blocks_read_committed() {
    use weir_operators::kafka::rdkafka::producer::{BaseRecord, Producer};
    let topic = kafka::unique_topic("open-tx");
    kafka::create_topic(&topic, 2);
    let p = kafka::transactional_producer(&kafka::unique_topic("open-tx-producer"));
    p.begin_transaction().unwrap();
    for i in 0..5 {
        let v = format!("tx {i}");
        p.send(
            BaseRecord::<[u8], [u8]>::to(&topic)
                .partition(i % 2)
                .payload(v.as_bytes()),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    assert!(kafka::open_transaction_blocks(&topic));
    assert_eq!(kafka::last_stable_offsets(&topic), vec![0, 0]);
    assert_eq!(kafka::end_offsets(&topic), vec![3, 2]);
    let idle = Duration::from_millis(200);
    assert_eq!(kafka::consume_all(&topic, "read_committed", idle), vec![]);
    assert_eq!(
        kafka::consume_all(&topic, "read_uncommitted", idle).len(),
        5
    );
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    assert!(!kafka::open_transaction_blocks(&topic));
    // The commit markers take an offset in each partition.
    assert_eq!(kafka::end_offsets(&topic), vec![4, 3]);
    let committed = kafka::consume_all(&topic, "read_committed", idle);
    let mut values: Vec<&str> = committed.iter().map(|r| r.text()).collect();
    values.sort();
    assert_eq!(values, ["tx 0", "tx 1", "tx 2", "tx 3", "tx 4"]);
}

// ---- connector tests below ----

/// Exactly-once and at-least-once end to end: wordcount processes killed,
/// restored, rescaled, fenced.
#[path = "kafka_connector/delivery.rs"]
mod delivery;
/// The source's options, one job per test in this process (`Env` + `CollectSink`).
#[path = "kafka_connector/source.rs"]
mod source;
#[path = "kafka_connector/visits.rs"]
mod visits;

/// A Kafka example (`wordcount`, `kafka_visits`) against the test broker,
/// checkpointing every 100 ms into `ckpt`.
fn kafka_example(name: &str, ckpt: &std::path::Path) -> std::process::Command {
    let mut cmd = common::example_command(name);
    cmd.args(["--kafka-brokers", &kafka::bootstrap()])
        .args([
            "-D",
            &format!("execution.checkpointing.dir={}", ckpt.display()),
        ])
        .args(["-D", "execution.checkpointing.interval=100ms"]);
    cmd
}
