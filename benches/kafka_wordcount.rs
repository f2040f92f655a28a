//! Kafka -> wordcount -> Kafka throughput: the `wordcount` example binary
//! reading a bounded input topic of a real Kafka-protocol broker (noida-db,
//! started here by `tests/common/kafka.rs`), for each sink delivery guarantee.
//!
//! ```text
//! cargo build --release --features kafka --examples
//! cargo bench --features kafka --bench kafka_wordcount -- LINES PARTITIONS PARALLELISM RUNS
//! cargo bench --features kafka --bench kafka_wordcount -- 1000000 4 2 3     # the defaults
//! ```
//!
//! The input topic (PARTITIONS partitions) gets LINES deterministic lines of
//! 10 words each (vocabulary 10,000, fixed seed), line `i` to partition
//! `i % PARTITIONS`, from one batched idempotent producer. Then, for each mode,
//! the example runs RUNS times with `--kafka-bounded -p PARALLELISM -q --no-ui
//! -D execution.checkpointing.interval=1s` and a fresh checkpoint directory:
//!
//! - `source-only`: no output topic (the counts go nowhere but the top-10);
//! - `none`, `at-least-once`, `exactly-once`: every count update to a fresh
//!   output topic (PARTITIONS partitions) with
//!   `-D kafka.sink.delivery-guarantee=<mode>`.
//!
//! Throughput is `total words:` over `elapsed:` as the example prints them
//! (the job's duration: process start-up and broker start-up excluded; for
//! exactly-once it includes the final checkpoint whose commit makes the
//! last transaction visible). `ok=true` only when every run counted exactly
//! 10 LINES words and, with an output topic, a `read_committed` consumer
//! read back exactly 10 LINES updates after the run whose highest count for
//! every word is that word's total. The verification is not timed.
//!
//! The broker runs on the same machine and shares its cores with the job.

#[path = "../tests/common/kafka.rs"]
mod kafka;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir::operators::rng::splitmix64;
use weir_operators::kafka::rdkafka;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const WORDS_PER_LINE: u64 = 10;
const VOCABULARY: u64 = 10_000;
const SEED: u64 = 0x5EED_2024;
const MODES: [&str; 4] = ["source-only", "none", "at-least-once", "exactly-once"];

/// Word `i` of the vocabulary: `w` and three lowercase letters (26^3 > 10,000).
fn word(i: u64) -> String {
    let mut s = String::from("w");
    let mut x = i;
    let mut letters = [b'a'; 3];
    for l in letters.iter_mut().rev() {
        *l = b'a' + (x % 26) as u8;
        x /= 26;
    }
    s.push_str(std::str::from_utf8(&letters).unwrap());
    s
}

/// Line `i`: 10 words drawn from the vocabulary by splitmix64 with the fixed seed.
fn line(i: u64, vocab: &[String], totals: &mut [u64]) -> String {
    let mut l = String::with_capacity(50);
    for j in 0..WORDS_PER_LINE {
        let w = (splitmix64(SEED ^ (i * WORDS_PER_LINE + j)) % VOCABULARY) as usize;
        totals[w] += 1;
        if j > 0 {
            l.push(' ');
        }
        l.push_str(&vocab[w]);
    }
    l
}

#[derive(Default)]
struct Errors(std::sync::Mutex<Vec<String>>);
impl ClientContext for Errors {}
impl ProducerContext for Errors {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.0.lock().unwrap().push(e.to_string());
        }
    }
}

/// Fills `topic` with the lines; returns each vocabulary word's total.
fn fill(topic: &str, lines: u64, partitions: i32, vocab: &[String]) -> Vec<u64> {
    let producer: BaseProducer<Errors> = kafka::client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "50")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Errors::default())
        .expect("a producer");
    let mut totals = vec![0u64; vocab.len()];
    for i in 0..lines {
        let value = line(i, vocab, &mut totals);
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(value.as_bytes())
            .partition((i % partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("flushing to {topic}: {e}"));
    let errors = producer.context().0.lock().unwrap();
    assert!(errors.is_empty(), "producing to {topic}: {errors:?}");
    totals
}

/// Reads `topic` from the beginning with read_committed up to every
/// partition's end: (records, highest count per word, consumer errors).
fn read_counts(topic: &str, partitions: i32) -> (u64, HashMap<String, u64>, u64) {
    let c: BaseConsumer = kafka::client_config()
        .set("group.id", kafka::unique_topic("bench-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut at_end = vec![false; partitions as usize];
    let mut n = 0u64;
    let mut max: HashMap<String, u64> = HashMap::new();
    let mut errors = 0u64;
    let start = Instant::now();
    while !at_end.iter().all(|e| *e) {
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                n += 1;
                let v = std::str::from_utf8(m.payload().unwrap_or_default()).expect("UTF-8");
                let (w, count) = v.split_once('\t').expect("word\\tcount");
                let count: u64 = count.parse().expect("a count");
                let e = max.entry(w.to_string()).or_default();
                *e = (*e).max(count);
                at_end[m.partition() as usize] = false;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
            Some(Err(e)) => {
                // Not fatal here: reported, and a lost record shows in the count.
                errors += 1;
                if errors <= 5 {
                    eprintln!("consuming {topic}: {e}");
                }
                if errors >= 1000 {
                    eprintln!("consuming {topic}: giving up after {errors} errors");
                    break;
                }
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            eprintln!("reading {topic}: not at the end after 120 s; giving up");
            errors += 1;
            break;
        }
    }
    (n, max, errors)
}

fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        kafka::client_config().create().expect("an admin client");
    let opts = rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if let Err(e) = kafka::block_on(admin.delete_topics(&[topic], &opts)) {
        eprintln!("deleting topic {topic}: {e} (ignored)");
    }
}

/// The release `wordcount` example beside this bench's target directory.
fn wordcount_binary() -> PathBuf {
    let mut dir = std::env::current_exe().expect("the bench's path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("examples").join("wordcount");
    if !p.exists() {
        eprintln!(
            "the release wordcount example with the kafka feature is not built ({} is missing): \
             run `cargo build --release --features kafka --examples` first (same CARGO_TARGET_DIR)",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

fn field<T: std::str::FromStr>(stdout: &str, prefix: &str) -> Option<T> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().trim_end_matches(" s").trim().parse().ok())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("nproc={cores} cpu=\"{model}\"")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, default: u64| -> u64 {
        args.get(i).map_or(default, |a| {
            a.parse()
                .unwrap_or_else(|_| panic!("argument {} is not a number: {a}", i + 1))
        })
    };
    let lines = arg(0, 1_000_000);
    let partitions = arg(1, 4) as i32;
    let parallelism = arg(2, 2);
    let runs = arg(3, 3).max(1);
    let bin = wordcount_binary();
    println!("MACHINE {}", machine());
    println!(
        "note: the noida-db broker runs on this machine and shares its cores with the job \
         (and with the verification, which is not timed)"
    );

    let t = Instant::now();
    let bootstrap = kafka::bootstrap();
    println!(
        "broker: noida-db at {bootstrap} (ready in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let vocab: Vec<String> = (0..VOCABULARY).map(word).collect();
    let input = kafka::unique_topic("bench-lines");
    kafka::create_topic(&input, partitions);
    let t = Instant::now();
    let totals = fill(&input, lines, partitions, &vocab);
    let want_words = WORDS_PER_LINE * lines;
    println!(
        "input: {lines} lines ({want_words} words) into {input} ({partitions} partitions) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    for mode in MODES {
        let mut rates = Vec::new();
        let mut ok = true;
        for run in 0..runs {
            let ckpt = tempfile::Builder::new()
                .prefix("weir-bench-kafka-ckpt-")
                .tempdir()
                .expect("a checkpoint directory");
            let output = (mode != "source-only").then(|| {
                let t = kafka::unique_topic(&format!("bench-out-{mode}"));
                kafka::create_topic(&t, partitions);
                t
            });
            let mut cmd = Command::new(&bin);
            cmd.args(["--kafka-brokers", &bootstrap, "--kafka-input-topic", &input])
                .args(["--kafka-bounded", "-q", "--no-ui"])
                .args(["-p", &parallelism.to_string()])
                .args(["-D", "execution.checkpointing.interval=1s"])
                .args([
                    "-D",
                    &format!("execution.checkpointing.dir={}", ckpt.path().display()),
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(Stdio::null());
            for (k, _) in std::env::vars() {
                if k.starts_with("WEIR_") {
                    cmd.env_remove(k);
                }
            }
            if let Some(out) = &output {
                cmd.args(["--kafka-output-topic", out])
                    .args(["-D", &format!("kafka.sink.delivery-guarantee={mode}")])
                    .args(["-D", &format!("kafka.sink.transactional-id-prefix={out}")]);
            }
            let res = cmd.output().expect("running the wordcount example");
            let stdout = String::from_utf8_lossy(&res.stdout);
            if !res.status.success() {
                eprintln!(
                    "mode {mode} run {run}: wordcount failed ({}); is it built with \
                     `cargo build --release --features kafka --examples`?\nstdout:\n{stdout}\nstderr:\n{}",
                    res.status,
                    String::from_utf8_lossy(&res.stderr)
                );
                ok = false;
                continue;
            }
            let total: u64 = field(&stdout, "total words:").expect("a `total words:` line");
            let secs: f64 = field(&stdout, "elapsed:").expect("an `elapsed:` line");
            let rate = total as f64 / secs;
            let mut check = String::new();
            if total != want_words {
                ok = false;
                check = format!(" WRONG TOTAL (want {want_words})");
            }
            if let Some(out) = &output {
                let t = Instant::now();
                let (records, max, errors) = read_counts(out, partitions);
                let wrong_words = vocab
                    .iter()
                    .zip(&totals)
                    .filter(|(w, n)| max.get(w.as_str()).copied().unwrap_or(0) != **n)
                    .count();
                let words_out = max.len();
                check += &format!(
                    " | output: {records} records read_committed, {words_out} words, \
                     {wrong_words} with a wrong highest count, {errors} consumer errors \
                     (read in {:.1} s)",
                    t.elapsed().as_secs_f64()
                );
                if records != want_words || wrong_words > 0 || errors > 0 {
                    ok = false;
                    check += " WRONG";
                }
                delete_topic(out);
            }
            eprintln!(
                "mode {mode} run {run}: {total} words in {secs:.3} s = {rate:.0} words/s{check}"
            );
            rates.push(rate);
        }
        let (lo, hi) = rates
            .iter()
            .fold((f64::INFINITY, 0f64), |(a, b), r| (a.min(*r), b.max(*r)));
        let med = if rates.is_empty() {
            0.0
        } else {
            median(&mut rates)
        };
        ok &= rates.len() as u64 == runs;
        println!(
            "RESULT mode={mode} lines={lines} partitions={partitions} parallelism={parallelism} \
             runs={runs} words_per_s_median={med:.0} words_per_s_min={lo:.0} \
             words_per_s_max={hi:.0} ok={ok}"
        );
    }
}
