//! A real Kafka-protocol broker for the Kafka connector's tests: noida-db
//! (`noida-db==0.2.3` from PyPI, installed by `tests/run.sh`), one per test
//! binary, started on a free port of 127.0.0.1 with a fresh data directory the
//! first time [`broker`] is called. A watchdog shell kills it (and removes its
//! data directory) once the test process is gone, however it ended.
//!
//! The helpers talk to the broker with librdkafka (`weir_operators::kafka::rdkafka`),
//! synchronously: topics are created with the admin API (its futures are
//! driven by [`block_on`]), records written by an idempotent `BaseProducer`
//! and read back by a `BaseConsumer` on assigned partitions.
#![allow(dead_code)]

use std::ffi::OsString;
use std::future::Future;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use weir_operators::kafka::rdkafka;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// The noida-db release the tests are written against.
pub const NOIDA_DB_VERSION: &str = "0.2.3";

/// How long a request to the broker may take before a helper fails.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The broker of this test binary.
pub struct Broker {
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Mutex<Child>,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// The broker of this test binary, started on the first call (by whichever
/// test comes first; the others wait for it). Panics, with the broker's log,
/// when it does not start, and with the install command when noida-db is not
/// installed.
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(Broker::start)
}

/// `bootstrap.servers` of this binary's broker (starting it if needed).
pub fn bootstrap() -> String {
    broker().bootstrap()
}

/// A client configuration pointing at this binary's broker, for tests that
/// build their own producers and consumers.
pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

/// How noida-db is started: the program and the arguments before `start`.
fn launcher() -> Vec<OsString> {
    const INSTALL: &str = "python3 -m pip install noida-db==0.2.3";
    let works = |cmd: &[OsString]| {
        Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Some(p) = std::env::var_os("WEIR_NOIDA_DB") {
        let cmd = vec![p.clone()];
        assert!(
            works(&cmd),
            "WEIR_NOIDA_DB={} does not run (`{} version` fails); unset it to use the \
             noida-db on PATH, or install noida-db with `{INSTALL}`",
            Path::new(&p).display(),
            Path::new(&p).display()
        );
        return cmd;
    }
    let mut candidates: Vec<Vec<OsString>> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("noida-db");
            if p.is_file() {
                candidates.push(vec![p.into()]);
            }
        }
    }
    // `pip show` gives the package's directory: the binary itself is in it
    // (noida-db's entry point is a Python wrapper that runs that binary).
    if let Ok(out) = Command::new("python3")
        .args(["-m", "pip", "show", "noida-db"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(loc) = text.lines().find_map(|l| l.strip_prefix("Location:")) {
            let pkg = Path::new(loc.trim()).join("noida_db");
            candidates.push(vec![pkg.join("noida-db").into()]);
            candidates.push(vec!["python3".into(), "-m".into(), "noida_db.cli".into()]);
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(vec![Path::new(&home).join(".local/bin/noida-db").into()]);
    }
    candidates
        .into_iter()
        .find(|c| works(c))
        .unwrap_or_else(|| {
            panic!(
                "the Kafka tests need the noida-db broker, which is not installed \
             (not in WEIR_NOIDA_DB, on PATH, in `python3 -m pip show noida-db` or \
             ~/.local/bin): run `{INSTALL}` (tests/run.sh installs it)"
            )
        })
}

/// Runs the broker (`exec "$@"`, so the shell's pid is the broker's) in a
/// process group of its own, beside a watchdog that polls the test process
/// and, once it is gone, terminates the group (broker, and the binary behind
/// noida-db's Python wrapper), removes the data directory and kills what is
/// left. The watchdog ignores SIGTERM so that it outlives the group's SIGTERM.
const WATCHDOG: &str = r#"test_pid=$1; dir=$2; shift 2
(
  trap '' TERM INT HUP
  while kill -0 "$test_pid" 2>/dev/null; do sleep 0.5; done
  kill -s TERM -- -$$ 2>/dev/null
  i=0
  while kill -0 $$ 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  rm -rf -- "$dir"
  kill -s KILL -- -$$ 2>/dev/null
) &
exec "$@""#;

impl Broker {
    fn start() -> Broker {
        use std::os::unix::process::CommandExt;
        let launcher = launcher();
        let data_dir = tempfile::Builder::new()
            .prefix("weir-kafka-broker-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let log = data_dir.join("broker.log");
        let log_file = std::fs::File::create(&log).expect("the broker's log file");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("weir-kafka-broker")
            .arg(std::process::id().to_string())
            .arg(&data_dir)
            .args(&launcher)
            .args(["start", "--only", "kafka", "--host", "127.0.0.1"])
            .arg("--kafka-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting noida-db ({launcher:?}): {e}"));
        let broker = Broker {
            port,
            data_dir,
            log,
            child: Mutex::new(child),
        };
        broker.wait_ready(Duration::from_secs(60));
        broker
    }

    /// Waits until the port accepts connections and a metadata request is
    /// answered.
    fn wait_ready(&self, limit: Duration) {
        let t = Instant::now();
        let mut last = String::from("the port does not accept connections yet");
        loop {
            self.assert_alive();
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let consumer: BaseConsumer = client_config_for(&self.bootstrap())
                    .create()
                    .expect("a metadata client");
                match consumer.fetch_metadata(None, Duration::from_secs(5)) {
                    Ok(m) if !m.brokers().is_empty() => return,
                    Ok(_) => last = "the metadata lists no broker".into(),
                    Err(e) => last = format!("metadata request: {e}"),
                }
            }
            if t.elapsed() > limit {
                panic!(
                    "noida-db did not become ready on {} within {limit:?} ({last}); its log:\n{}",
                    self.bootstrap(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's data directory (removed when the test process is gone).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What the broker printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Panics, with the broker's log, when the broker has exited.
    pub fn assert_alive(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(Some(status)) = child.try_wait() {
            panic!("noida-db exited ({status}); its log:\n{}", self.log());
        }
    }
}

fn client_config_for(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Drives a future to its end on this thread (the admin client's futures are
/// completed by its own polling thread; no async runtime is needed).
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A topic name no other test of this binary uses: `<prefix>-<n>-<time>`.
pub fn unique_topic(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(120)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{clean}-{}-{nanos:08x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn admin() -> AdminClient<DefaultClientContext> {
    client_config().create().expect("an admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(TIMEOUT))
        .operation_timeout(Some(TIMEOUT))
}

/// The configuration of a consumer that only reads assigned partitions
/// (never joins its group, never commits).
fn consumer_config(isolation: &str) -> ClientConfig {
    assert!(
        isolation == "read_committed" || isolation == "read_uncommitted",
        "isolation must be read_committed or read_uncommitted, not {isolation:?}"
    );
    let mut c = client_config();
    c.set("group.id", unique_topic("weir-test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", isolation)
        .set("auto.offset.reset", "earliest");
    c
}

fn consumer(isolation: &str) -> BaseConsumer {
    consumer_config(isolation).create().expect("a consumer")
}

/// The number of partitions of `topic` in the broker's metadata (0 when the
/// topic is not known).
pub fn partition_count(topic: &str) -> usize {
    let c = consumer("read_uncommitted");
    let m = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    m.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len())
}

/// Waits until the metadata shows `topic` with `n` partitions.
fn wait_for_partitions(topic: &str, n: usize) {
    let t = Instant::now();
    loop {
        let have = partition_count(topic);
        if have == n {
            return;
        }
        assert!(
            t.elapsed() < TIMEOUT,
            "topic {topic} has {have} partitions in the metadata, not {n}, after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates `name` with `partitions` partitions (replication 1) and waits
/// until the metadata shows them all.
pub fn create_topic(name: &str, partitions: i32) {
    let results = block_on(admin().create_topics(
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
        &admin_options(),
    ))
    .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
    for r in results {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
    wait_for_partitions(name, partitions as usize);
}

/// Grows `topic` to `total` partitions and waits until the metadata shows them.
pub fn add_partitions(topic: &str, total: usize) {
    let results =
        block_on(admin().create_partitions(&[NewPartitions::new(topic, total)], &admin_options()))
            .unwrap_or_else(|e| panic!("adding partitions to {topic}: {e}"));
    for r in results {
        if let Err((t, e)) = r {
            panic!("adding partitions to {t}: {e}");
        }
    }
    wait_for_partitions(topic, total);
}

/// Collects the delivery errors of a producer.
#[derive(Default)]
struct Deliveries {
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.errors
                .lock()
                .unwrap()
                .push(format!("partition {}: {e}", m.partition()));
        }
    }
}

/// One record for [`produce`]: (partition (`None`: the default partitioner),
/// key, value, timestamp in ms (`None`: the producer's clock)).
pub type Produce<'a> = (Option<i32>, Option<&'a [u8]>, &'a [u8], Option<i64>);

/// Writes `records` to `topic` with a plain idempotent producer, in order,
/// and waits until every one is acknowledged. Panics on any delivery error.
pub fn produce(topic: &str, records: &[Produce<'_>]) {
    let producer: BaseProducer<Deliveries> = client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Deliveries::default())
        .expect("a producer");
    for &(partition, key, value, timestamp) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(TIMEOUT)
        .unwrap_or_else(|e| panic!("flushing the records to {topic}: {e}"));
    let errors = producer.context().errors.lock().unwrap();
    assert!(errors.is_empty(), "producing to {topic}: {errors:?}");
}

/// A transactional producer with `transactional_id`, its transactions
/// initialized (which aborts what an earlier producer with that id left open).
pub fn transactional_producer(transactional_id: &str) -> BaseProducer {
    let p: BaseProducer = client_config()
        .set("transactional.id", transactional_id)
        .create()
        .expect("a transactional producer");
    p.init_transactions(TIMEOUT)
        .unwrap_or_else(|e| panic!("init_transactions({transactional_id}): {e}"));
    p
}

/// Sends `value` to partition 0 of `topic` in `producer`'s open
/// transaction and waits until the broker has it (still uncommitted).
pub fn send_in_transaction(producer: &BaseProducer, topic: &str, value: &[u8]) {
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to(topic)
                .payload(value)
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("send in a transaction to {topic}: {e}"));
    producer
        .flush(TIMEOUT)
        .unwrap_or_else(|e| panic!("flush a transaction's record to {topic}: {e}"));
}

/// Writes `lines` (as values, no key) to `topic`, round-robin over its
/// partitions: line `i` to partition `i % partitions`.
pub fn produce_lines(topic: &str, lines: &[String]) {
    let n = partition_count(topic);
    assert!(n > 0, "topic {topic} does not exist");
    let records: Vec<Produce<'_>> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (Some((i % n) as i32), None, l.as_bytes(), None))
        .collect();
    produce(topic, &records);
}

/// A record read back by [`consume_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The record's timestamp in ms (create or log-append time), if any.
    pub timestamp: Option<i64>,
}

impl Record {
    /// The value as UTF-8 (panics when it is not).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.value).expect("a UTF-8 value")
    }
}

/// Every record of every partition of `topic`, from the beginning, with
/// `isolation` ("read_committed" or "read_uncommitted"): read until every
/// partition reached its end (for read_committed: its last stable offset)
/// and then no new record came for `idle`; ordered by (partition, offset).
/// Panics when the ends are not reached within 60 s.
pub fn consume_all(topic: &str, isolation: &str, idle: Duration) -> Vec<Record> {
    let c: BaseConsumer = consumer_config(isolation)
        .set("enable.partition.eof", "true")
        .create()
        .expect("a consumer");
    let n = partition_count(topic);
    assert!(n > 0, "topic {topic} does not exist");
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at_end = vec![false; n];
    let start = Instant::now();
    let mut last = Instant::now();
    while !at_end.iter().all(|e| *e) || last.elapsed() < idle {
        match c.poll(Duration::from_millis(20)) {
            None => {}
            Some(Ok(m)) => {
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    timestamp: m.timestamp().to_millis(),
                });
                at_end[m.partition() as usize] = false;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end[p as usize] = true;
                last = Instant::now();
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60) || at_end.iter().all(|e| *e),
            "consuming {topic} ({isolation}): partitions {:?} did not reach their end in 60 s",
            (0..n).filter(|p| !at_end[*p]).collect::<Vec<_>>()
        );
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// (low, high) watermarks of every partition of `topic` as a consumer with
/// `isolation` sees them: with read_committed, high is the last stable offset.
pub fn watermarks(topic: &str, isolation: &str) -> Vec<(i64, i64)> {
    let c = consumer(isolation);
    (0..partition_count(topic) as i32)
        .map(|p| {
            c.fetch_watermarks(topic, p, TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
        })
        .collect()
}

/// The end offset (high watermark) of every partition of `topic`.
pub fn end_offsets(topic: &str) -> Vec<i64> {
    watermarks(topic, "read_uncommitted")
        .into_iter()
        .map(|w| w.1)
        .collect()
}

/// The last stable offset of every partition of `topic`: where a
/// read_committed consumer stops (before the first record of a transaction
/// still open).
pub fn last_stable_offsets(topic: &str) -> Vec<i64> {
    watermarks(topic, "read_committed")
        .into_iter()
        .map(|w| w.1)
        .collect()
}

/// Whether an open transaction holds read_committed consumers back on some
/// partition of `topic` (its last stable offset is below its end offset).
pub fn open_transaction_blocks(topic: &str) -> bool {
    last_stable_offsets(topic)
        .iter()
        .zip(end_offsets(topic))
        .any(|(lso, end)| *lso < end)
}

/// The offsets `group` committed for every partition of `topic` (`None`
/// where it committed none).
pub fn committed_offsets(group: &str, topic: &str) -> Vec<Option<i64>> {
    let c: BaseConsumer = client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    let n = partition_count(topic);
    for p in 0..n as i32 {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, TIMEOUT)
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"));
    (0..n as i32)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}
