//! [`KafkaSource`]: records of Kafka topics, with their offsets in the
//! checkpoint.
//!
//! # Splits are partitions
//! Each subtask reads the partitions [`super::assign::owner`] gives it and
//! polls each partition's own queue (librdkafka's partition queues), so one
//! poll returns the records of one partition: with
//! [`Env::from_source`](weir_runtime::stream::Env::from_source) every
//! partition gets its own watermark generator, and an idle partition stops
//! holding the watermark back (`with_idleness`).
//!
//! # Offsets
//! A partition's position is the offset of the next record to read. At a
//! checkpoint every subtask writes the positions of its partitions into a
//! **union list** (`kafka-partitions`): on restore every subtask sees all
//! positions and takes those of the partitions it owns now, so a rescaled
//! job resumes every partition where the checkpoint left it. The checkpoint
//! is the truth: the consumer group's committed offsets are written when a
//! checkpoint completes (Flink's behaviour), for monitoring tools and for
//! `group-offsets` start-up of a *new* job, never read by a restore.
//!
//! Where a source starts when it is not restored ([`StartingOffsets`]) is
//! resolved to concrete offsets at open, so even a checkpoint taken before
//! the first record holds exact positions. A partition that appears later
//! (discovery every `kafka.scan.topic-partition-discovery.interval`), or
//! that a restored checkpoint does not know, is read from its earliest
//! offset: all of it is new to the job.
//!
//! # Bounded mode
//! With `bounded`, the end offsets are the partitions' high watermarks when
//! the job first starts; they are kept in the checkpoint, so a restored
//! bounded job ends where the first attempt would have. A bounded job
//! restored from an unbounded one's checkpoint ends at the high watermarks
//! of its own start; an unbounded job restored from a bounded one's
//! checkpoint does not end. A partition is done
//! when its next offset reaches its end, or when librdkafka reports its end
//! (partition EOF) beyond that (a transactional topic's last offsets are
//! commit markers, never delivered as records).
//!
//! # Isolation
//! `isolation.level` is `read_committed` unless set: records of aborted or
//! still open transactions are never read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_runtime::config::{options, Conf};
use weir_runtime::metrics::Counter;
use weir_runtime::operator::blocking;
use weir_runtime::prelude::*;

use super::assign::owner;
use super::properties::KafkaProperties;
use super::{kafka_error, DeliveryErrors, METADATA_TIMEOUT};

/// The consumer's client context: the end of a partition (which bounded
/// mode waits for) is not an error worth a log line; other client errors
/// are logged as warnings (librdkafka retries them).
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "Kafka consumer");
        }
    }
}

impl ConsumerContext for Quiet {}

/// One record as read from Kafka, handed to the deserializer.
#[derive(Debug, Clone, Copy)]
pub struct KafkaRecord<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms since the epoch), when it has one.
    pub timestamp: Option<i64>,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
}

/// Turns a Kafka record into a stream record, or says why it cannot.
pub type Deserializer<T> = dyn Fn(&KafkaRecord<'_>) -> std::result::Result<T, String> + Send + Sync;

/// The value as UTF-8 text: the deserializer of line-oriented topics.
pub fn utf8_value(r: &KafkaRecord<'_>) -> std::result::Result<String, String> {
    match r.value {
        None => Err("the record has no value".into()),
        Some(v) => std::str::from_utf8(v)
            .map(str::to_string)
            .map_err(|e| format!("the value is not UTF-8: {e}")),
    }
}

/// Where a source that is not restored starts reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The partition's first offset (`earliest-offset`).
    Earliest,
    /// Its end when the job starts: only records written after it (`latest-offset`).
    Latest,
    /// The consumer group's committed offset (`group-offsets`); where there
    /// is none, `fallback` (`None`: fail).
    Committed {
        /// Where to start without a committed offset: `Some(Earliest)` or
        /// `Some(Latest)`, or `None` to fail naming the partition.
        fallback: Option<Fallback>,
    },
    /// The first record with a timestamp at or after this (ms since the
    /// epoch), or the end when there is none (`timestamp`).
    Timestamp(i64),
}

/// The start of a partition without a committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Its first offset.
    Earliest,
    /// Its end.
    Latest,
}

/// What the source does with a record its deserializer rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeserializationErrors {
    /// The job fails with an error naming the topic, partition and offset.
    Fail,
    /// The record is left out and counted in `numRecordsInErrors`.
    Skip,
    /// The record is copied as it is (key, value, timestamp) to this topic,
    /// with headers `weir.error`, `weir.topic`, `weir.partition` and
    /// `weir.offset`, and counted in `numRecordsInErrors`. At least once:
    /// the copies are flushed at every checkpoint.
    DeadLetter(String),
}

/// Configures a [`KafkaSource`].
pub struct KafkaSourceBuilder<T> {
    properties: KafkaProperties,
    topics: Vec<String>,
    starting: StartingOffsets,
    bounded: bool,
    discovery: Option<Duration>,
    errors: DeserializationErrors,
    deserializer: Arc<Deserializer<T>>,
}

/// Reads Kafka topics in parallel; partitions are the splits.
pub struct KafkaSource<T> {
    cfg: Arc<SourceConfig>,
    deserializer: Arc<Deserializer<T>>,
    run: Option<Running>,
}

#[derive(Debug)]
struct SourceConfig {
    properties: KafkaProperties,
    topics: Vec<String>,
    starting: StartingOffsets,
    bounded: bool,
    discovery: Option<Duration>,
    errors: DeserializationErrors,
}

/// A partition's position in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionState {
    topic: String,
    partition: i32,
    /// The offset of the next record to read.
    next: i64,
    /// Bounded mode: the offset it ends at.
    end: Option<i64>,
}

/// The union list of partition positions.
const STATE: &str = "kafka-partitions";

struct Split {
    topic: String,
    partition: i32,
    next: i64,
    end: Option<i64>,
    finished: bool,
    queue: Option<PartitionQueue<Quiet>>,
}

struct Running {
    consumer: Arc<BaseConsumer<Quiet>>,
    splits: Vec<Split>,
    /// Where each (topic, partition) is in `splits`.
    index: HashMap<(String, i32), usize>,
    cursor: usize,
    last: usize,
    subtask: usize,
    parallelism: usize,
    errors: Counter,
    dead_letters: Option<(BaseProducer<DeliveryErrors>, String)>,
    next_discovery: Option<Instant>,
    /// Positions of snapshots waiting for their checkpoint to complete.
    to_commit: BTreeMap<u64, TopicPartitionList>,
    warned_skip: bool,
    operator: String,
}

impl<T> Clone for KafkaSource<T> {
    fn clone(&self) -> Self {
        KafkaSource {
            cfg: self.cfg.clone(),
            deserializer: self.deserializer.clone(),
            run: None,
        }
    }
}

impl KafkaSource<String> {
    /// A builder of a source whose records are the values as UTF-8 text.
    pub fn lines() -> KafkaSourceBuilder<String> {
        KafkaSource::builder(utf8_value)
    }
}

impl<T> KafkaSource<T> {
    /// A builder with this deserializer (its error is the reason a record
    /// is rejected; see [`DeserializationErrors`]).
    pub fn builder(
        deserializer: impl Fn(&KafkaRecord<'_>) -> std::result::Result<T, String>
            + Send
            + Sync
            + 'static,
    ) -> KafkaSourceBuilder<T> {
        KafkaSourceBuilder {
            properties: KafkaProperties::new(),
            topics: Vec::new(),
            starting: StartingOffsets::Earliest,
            bounded: false,
            discovery: Some(Duration::from_secs(300)),
            errors: DeserializationErrors::Fail,
            deserializer: Arc::new(deserializer),
        }
    }
}

impl<T> KafkaSourceBuilder<T> {
    /// Everything weir's configuration says about Kafka sources:
    /// `kafka.properties.*`, `kafka.scan.startup.*`, `kafka.scan.bounded.mode`,
    /// `kafka.scan.topic-partition-discovery.interval`,
    /// `kafka.scan.deserialization-errors` and `kafka.scan.dead-letter-topic`.
    /// Builder calls after this one override it.
    pub fn conf(mut self, conf: &Conf) -> Result<Self> {
        self.properties = KafkaProperties::from_conf(conf);
        let fallback = match self.properties.get("auto.offset.reset") {
            None | Some("earliest" | "smallest" | "beginning") => Some(Fallback::Earliest),
            Some("latest" | "largest" | "end") => Some(Fallback::Latest),
            Some("none" | "error") => {
                // librdkafka's word for Kafka's `none`
                self.properties.set("auto.offset.reset", "error");
                None
            }
            Some(other) => {
                return Err(Error::user(format!(
                    "kafka.properties.auto.offset.reset: '{other}' is not one of earliest, latest, none"
                )))
            }
        };
        self.starting = match conf.get(&options::KAFKA_STARTUP_MODE).as_str() {
            "latest-offset" => StartingOffsets::Latest,
            "group-offsets" => StartingOffsets::Committed { fallback },
            "timestamp" => StartingOffsets::Timestamp(conf.get(&options::KAFKA_STARTUP_TIMESTAMP)),
            _ => StartingOffsets::Earliest,
        };
        self.bounded = conf.get(&options::KAFKA_BOUNDED_MODE) == "latest-offset";
        self.discovery = conf.get(&options::KAFKA_DISCOVERY_INTERVAL);
        self.errors = match conf.get(&options::KAFKA_DESERIALIZATION_ERRORS).as_str() {
            "skip" => DeserializationErrors::Skip,
            "dead-letter" => {
                DeserializationErrors::DeadLetter(conf.get(&options::KAFKA_DEAD_LETTER_TOPIC))
            }
            _ => DeserializationErrors::Fail,
        };
        Ok(self)
    }
    /// The brokers, `host:port[,host:port...]`.
    pub fn bootstrap_servers(mut self, brokers: impl Into<String>) -> Self {
        self.properties.set("bootstrap.servers", brokers);
        self
    }
    /// A librdkafka consumer property (`group.id`, `isolation.level`, `security.protocol`, ...).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.set(key, value);
        self
    }
    /// The consumer group checkpointed offsets are committed to (default `weir-<first topic>`).
    pub fn group_id(self, group: impl Into<String>) -> Self {
        self.property("group.id", group)
    }
    /// The topics to read (all their partitions).
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }
    /// Where to start when not restored (default [`StartingOffsets::Earliest`]).
    pub fn starting_offsets(mut self, s: StartingOffsets) -> Self {
        self.starting = s;
        self
    }
    /// End at the end offsets seen when the job first starts (default: never end).
    pub fn bounded(mut self, bounded: bool) -> Self {
        self.bounded = bounded;
        self
    }
    /// How often to look for new partitions (`None`: never; default 5 min).
    pub fn partition_discovery(mut self, every: Option<Duration>) -> Self {
        self.discovery = every;
        self
    }
    /// What to do with records the deserializer rejects (default [`DeserializationErrors::Fail`]).
    pub fn on_deserialization_error(mut self, errors: DeserializationErrors) -> Self {
        self.errors = errors;
        self
    }
    /// Checks the configuration, and that the brokers answer and every
    /// topic exists: a clear error now rather than at run time.
    pub fn build(mut self) -> Result<KafkaSource<T>> {
        if self.properties.brokers().trim().is_empty() {
            return Err(Error::user(
                "the Kafka source needs brokers: set kafka.properties.bootstrap.servers (or --kafka-brokers)",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::user(
                "the Kafka source needs at least one topic, none empty",
            ));
        }
        if let DeserializationErrors::DeadLetter(t) = &self.errors {
            if t.trim().is_empty() {
                return Err(Error::user(
                    "kafka.scan.deserialization-errors: dead-letter needs kafka.scan.dead-letter-topic",
                ));
            }
            if self.topics.contains(t) {
                return Err(Error::user(format!(
                    "the dead-letter topic '{t}' is also a topic the source reads"
                )));
            }
        }
        if self.bounded {
            // a bounded job reads what was there at its start
            self.discovery = None;
        }
        if self.properties.get("auto.offset.reset") == Some("none") {
            // Kafka's `none` is librdkafka's `error`
            self.properties.set("auto.offset.reset", "error");
        }
        let default_group = format!("weir-{}", self.topics[0]);
        self.properties.set_default("group.id", default_group);
        self.properties
            .set_default("isolation.level", "read_committed");
        let cfg = SourceConfig {
            properties: self.properties,
            topics: self.topics,
            starting: self.starting,
            bounded: self.bounded,
            discovery: self.discovery,
            errors: self.errors,
        };
        // Unreachable brokers or a missing topic are configuration errors:
        // said now, before the job starts (at run time they would fail
        // every restart the same way).
        cfg.partitions(&*cfg.consumer()?)?;
        Ok(KafkaSource {
            cfg: Arc::new(cfg),
            deserializer: self.deserializer,
            run: None,
        })
    }
}

impl SourceConfig {
    fn consumer(&self) -> Result<Arc<BaseConsumer<Quiet>>> {
        let c: BaseConsumer<Quiet> = self
            .properties
            .client_config(&[
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
            ])
            .create_with_context(Quiet)
            .map_err(|e| kafka_error("cannot create the Kafka consumer", &self.properties, e))?;
        Ok(Arc::new(c))
    }

    /// Every partition of the topics, in order. A topic that does not exist is an error.
    fn partitions(&self, consumer: &BaseConsumer<Quiet>) -> Result<Vec<(String, i32)>> {
        let mut out = Vec::new();
        for topic in &self.topics {
            let md = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|e| {
                    kafka_error(
                        &format!("cannot read the partitions of topic '{topic}'"),
                        &self.properties,
                        e,
                    )
                })?;
            let t = md.topics().iter().find(|t| t.name() == topic);
            match t {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    out.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())))
                }
                Some(t) => {
                    return Err(Error::user(format!(
                        "Kafka topic '{topic}' cannot be read on {}: {}",
                        self.properties.brokers(),
                        t.error()
                            .map(|e| format!("{:?}", rdkafka::types::RDKafkaErrorCode::from(e)))
                            .unwrap_or_else(|| "it has no partitions".into())
                    )))
                }
                None => {
                    return Err(Error::user(format!(
                        "Kafka topic '{topic}' does not exist on {}",
                        self.properties.brokers()
                    )))
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Resolves where each of `parts` starts, to concrete offsets.
fn resolve_start(
    cfg: &SourceConfig,
    consumer: &BaseConsumer<Quiet>,
    parts: &[(String, i32)],
    how: StartingOffsets,
) -> Result<Vec<i64>> {
    let watermarks = |t: &str, p: i32| {
        consumer
            .fetch_watermarks(t, p, METADATA_TIMEOUT)
            .map_err(|e| {
                kafka_error(
                    &format!("cannot read the offsets of {t}-{p}"),
                    &cfg.properties,
                    e,
                )
            })
    };
    let mut out = Vec::with_capacity(parts.len());
    match how {
        StartingOffsets::Earliest => {
            for (t, p) in parts {
                out.push(watermarks(t, *p)?.0);
            }
        }
        StartingOffsets::Latest => {
            for (t, p) in parts {
                out.push(watermarks(t, *p)?.1);
            }
        }
        StartingOffsets::Committed { fallback } => {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in parts {
                tpl.add_partition(t, *p);
            }
            let committed = consumer
                .committed_offsets(tpl, METADATA_TIMEOUT)
                .map_err(|e| {
                    kafka_error(
                        "cannot read the group's committed offsets",
                        &cfg.properties,
                        e,
                    )
                })?;
            for (t, p) in parts {
                let c = committed
                    .find_partition(t, *p)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::Invalid);
                match (c, fallback) {
                    (Offset::Offset(o), _) => out.push(o),
                    (_, Some(Fallback::Earliest)) => out.push(watermarks(t, *p)?.0),
                    (_, Some(Fallback::Latest)) => out.push(watermarks(t, *p)?.1),
                    (_, None) => {
                        return Err(Error::user(format!(
                            "group '{}' has no committed offset for {t}-{p} and kafka.properties.auto.offset.reset is none",
                            cfg.properties.get("group.id").unwrap_or("")
                        )))
                    }
                }
            }
        }
        StartingOffsets::Timestamp(ts) => {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in parts {
                tpl.add_partition_offset(t, *p, Offset::Offset(ts))
                    .map_err(|e| kafka_error("bad timestamp", &cfg.properties, e))?;
            }
            let found = consumer
                .offsets_for_times(tpl, METADATA_TIMEOUT)
                .map_err(|e| kafka_error("cannot look up offsets by time", &cfg.properties, e))?;
            for (t, p) in parts {
                match found.find_partition(t, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => out.push(o),
                    // no record at or after the time: start at the end
                    _ => out.push(watermarks(t, *p)?.1),
                }
            }
        }
    }
    Ok(out)
}

impl Running {
    /// Starts reading `parts` at `starts` (appended to the splits).
    fn add_splits(&mut self, parts: Vec<(String, i32, i64, Option<i64>)>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let first = self.splits.len();
        for (topic, partition, next, end) in parts {
            let finished = end.is_some_and(|e| next >= e);
            if !finished {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(next))
                    .map_err(|e| Error::user(format!("{topic}-{partition}: {e}")))?;
            }
            self.index
                .insert((topic.clone(), partition), self.splits.len());
            self.splits.push(Split {
                topic,
                partition,
                next,
                end,
                finished,
                queue: None,
            });
        }
        // Each partition's queue is split off before the partition is
        // assigned: a fetch that lands in between would otherwise go to
        // the consumer's main queue.
        for s in &mut self.splits[first..] {
            if !s.finished {
                s.queue = self.consumer.split_partition_queue(&s.topic, s.partition);
                if s.queue.is_none() {
                    return Err(Error::user(format!(
                        "cannot open the queue of {}-{}",
                        s.topic, s.partition
                    )));
                }
            }
        }
        if tpl.count() > 0 {
            self.consumer
                .incremental_assign(&tpl)
                .map_err(|e| Error::user(format!("cannot assign Kafka partitions: {e}")))?;
        }
        Ok(())
    }

    fn positions(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for s in &self.splits {
            let _ = tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.next));
        }
        tpl
    }
}

impl<T: Data> KafkaSource<T> {
    fn discover(&mut self) -> Result<()> {
        blocking(|| {
            let cfg = self.cfg.clone();
            let Some(run) = self.run.as_mut() else {
                return Ok(());
            };
            let all = cfg.partitions(&run.consumer)?;
            let new: Vec<(String, i32)> = all
                .into_iter()
                .filter(|(t, p)| owner(t, *p, run.parallelism) == run.subtask)
                .filter(|(t, p)| !run.index.contains_key(&(t.clone(), *p)))
                .collect();
            if new.is_empty() {
                return Ok(());
            }
            // Created after the job started: everything in them is new.
            let starts = resolve_start(&cfg, &run.consumer, &new, StartingOffsets::Earliest)?;
            tracing::info!(
                operator = %run.operator,
                subtask = run.subtask,
                partitions = ?new,
                "new Kafka partitions discovered, read from their earliest offsets"
            );
            run.add_splits(
                new.into_iter()
                    .zip(starts)
                    .map(|((t, p), o)| (t, p, o, None))
                    .collect(),
            )
        })
    }

    /// Handles a record the deserializer rejected.
    fn reject(
        errors: &Counter,
        warned_skip: &mut bool,
        dead_letters: Option<&(BaseProducer<DeliveryErrors>, String)>,
        cfg: &SourceConfig,
        r: &KafkaRecord<'_>,
        why: String,
    ) -> Result<()> {
        match &cfg.errors {
            DeserializationErrors::Fail => Err(Error::user(format!(
                "cannot deserialize the Kafka record at topic '{}' partition {} offset {}: {why}",
                r.topic, r.partition, r.offset
            ))),
            DeserializationErrors::Skip => {
                errors.inc();
                if !*warned_skip {
                    *warned_skip = true;
                    tracing::warn!(
                        topic = r.topic,
                        partition = r.partition,
                        offset = r.offset,
                        error = %why,
                        "skipping Kafka records that cannot be deserialized (counted in numRecordsInErrors; logged once per subtask)"
                    );
                }
                Ok(())
            }
            DeserializationErrors::DeadLetter(_) => {
                errors.inc();
                let Some((producer, topic)) = dead_letters else {
                    return Err(Error::Internal("dead-letter producer missing".into()));
                };
                let partition = r.partition.to_string();
                let offset = r.offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "weir.error",
                        value: Some(why.as_bytes()),
                    })
                    .insert(Header {
                        key: "weir.topic",
                        value: Some(r.topic.as_bytes()),
                    })
                    .insert(Header {
                        key: "weir.partition",
                        value: Some(partition.as_bytes()),
                    })
                    .insert(Header {
                        key: "weir.offset",
                        value: Some(offset.as_bytes()),
                    });
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
                if let Some(k) = r.key {
                    rec = rec.key(k);
                }
                if let Some(v) = r.value {
                    rec = rec.payload(v);
                }
                if let Some(ts) = r.timestamp {
                    rec = rec.timestamp(ts);
                }
                super::send_retrying(producer, rec).map_err(|e| {
                    Error::user(format!("cannot write to dead-letter topic '{topic}': {e}"))
                })
            }
        }
    }
}

impl<T: Data> SourceFunction<T> for KafkaSource<T> {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        blocking(|| {
            let cfg = self.cfg.clone();
            let consumer = cfg.consumer()?;
            let (subtask, parallelism) = (ctx.runtime.subtask, ctx.runtime.parallelism);
            let all = cfg.partitions(&consumer)?;
            let mine: Vec<(String, i32)> = all
                .into_iter()
                .filter(|(t, p)| owner(t, *p, parallelism) == subtask)
                .collect();
            let restored: HashMap<(String, i32), PartitionState> = if ctx.restored {
                ctx.state
                    .get_union_list::<PartitionState>(STATE)?
                    .into_iter()
                    .map(|s| ((s.topic.clone(), s.partition), s))
                    .collect()
            } else {
                HashMap::new()
            };
            // Fresh partitions start as configured; partitions a restored
            // checkpoint does not know were created after it: earliest.
            let fresh: Vec<(String, i32)> = mine
                .iter()
                .filter(|k| !restored.contains_key(*k))
                .cloned()
                .collect();
            let how = if ctx.restored {
                StartingOffsets::Earliest
            } else {
                cfg.starting
            };
            let fresh_starts: HashMap<(String, i32), i64> = fresh
                .iter()
                .cloned()
                .zip(resolve_start(&cfg, &consumer, &fresh, how)?)
                .collect();
            let mut parts = Vec::with_capacity(mine.len());
            for (t, p) in mine {
                let key = (t.clone(), p);
                let end_now = || -> Result<Option<i64>> {
                    if !cfg.bounded {
                        return Ok(None);
                    }
                    let hw = consumer
                        .fetch_watermarks(&t, p, METADATA_TIMEOUT)
                        .map_err(|e| {
                            kafka_error(
                                &format!("cannot read the end of {t}-{p}"),
                                &cfg.properties,
                                e,
                            )
                        })?
                        .1;
                    Ok(Some(hw))
                };
                let (next, end) = match restored.get(&key) {
                    // A bounded run restored from an unbounded one's checkpoint
                    // ends at the end offsets of its own start.
                    Some(s) if cfg.bounded => (s.next, s.end.or(end_now()?)),
                    // An unbounded run never ends, whatever the checkpoint says.
                    Some(s) => (s.next, None),
                    None => (fresh_starts[&key], end_now()?),
                };
                parts.push((t, p, next, end));
            }
            let dead_letters = match &cfg.errors {
                DeserializationErrors::DeadLetter(topic) => {
                    let p: BaseProducer<DeliveryErrors> = cfg
                        .properties
                        .client_config(&[("enable.idempotence", "true")])
                        .create_with_context(DeliveryErrors::default())
                        .map_err(|e| {
                            kafka_error(
                                "cannot create the dead-letter producer",
                                &cfg.properties,
                                e,
                            )
                        })?;
                    Some((p, topic.clone()))
                }
                _ => None,
            };
            let mut run = Running {
                consumer,
                splits: Vec::new(),
                index: HashMap::new(),
                cursor: 0,
                last: 0,
                subtask,
                parallelism,
                errors: ctx.runtime.num_records_in_errors.clone(),
                dead_letters,
                next_discovery: cfg.discovery.map(|d| Instant::now() + d),
                to_commit: BTreeMap::new(),
                warned_skip: false,
                operator: ctx.runtime.operator.clone(),
            };
            tracing::info!(
                operator = %run.operator,
                subtask,
                brokers = cfg.properties.brokers(),
                partitions = ?parts.iter().map(|(t, p, o, e)| format!("{t}-{p}@{o}{}", e.map(|e| format!("..{e}")).unwrap_or_default())).collect::<Vec<_>>(),
                "Kafka source reads"
            );
            run.add_splits(parts)?;
            self.run = Some(run);
            Ok(())
        })
    }

    fn poll_next(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        if let Some(due) = self.run.as_ref().and_then(|r| r.next_discovery) {
            if Instant::now() >= due {
                self.discover()?;
                if let (Some(run), Some(every)) = (self.run.as_mut(), self.cfg.discovery) {
                    run.next_discovery = Some(Instant::now() + every);
                }
            }
        }
        let cfg = self.cfg.clone();
        let deserializer = self.deserializer.clone();
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| Error::Internal("Kafka source polled before open".into()))?;
        // The main queue carries client-level errors (partition messages
        // go to their own queues).
        match run.consumer.poll(Duration::ZERO) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(kafka_error("the Kafka consumer failed", &cfg.properties, e));
            }
            Some(Err(e)) => {
                tracing::warn!(operator = %run.operator, subtask = run.subtask, error = %e, "Kafka consumer")
            }
            // Never dropped silently: the attempt fails and the job restores
            // from its checkpoint (the queues are split before assignment,
            // so this is not expected).
            Some(Ok(m)) => {
                return Err(Error::Internal(format!(
                    "a record of {}-{} at offset {} arrived outside its partition's queue",
                    m.topic(),
                    m.partition(),
                    m.offset()
                )))
            }
        }
        if let Some((p, _)) = &run.dead_letters {
            p.poll(Duration::ZERO);
        }
        let Running {
            splits,
            cursor,
            last,
            errors,
            warned_skip,
            dead_letters,
            ..
        } = run;
        let n = splits.len();
        for k in 0..n {
            let i = (*cursor + k) % n;
            let split = &mut splits[i];
            if split.finished {
                continue;
            }
            let mut got = false;
            let mut done = false;
            if let Some(queue) = split.queue.as_ref() {
                while out.len() < max {
                    let msg = match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(m)) => m,
                        Some(Err(KafkaError::PartitionEOF(_))) => {
                            done = split.end.is_some();
                            break;
                        }
                        Some(Err(e)) => {
                            return Err(kafka_error(
                                &format!("cannot read {}-{}", split.topic, split.partition),
                                &cfg.properties,
                                e,
                            ))
                        }
                    };
                    let offset = msg.offset();
                    if split.end.is_some_and(|e| offset >= e) {
                        done = true;
                        break;
                    }
                    let rec = KafkaRecord {
                        topic: &split.topic,
                        partition: split.partition,
                        offset,
                        timestamp: msg.timestamp().to_millis(),
                        key: msg.key(),
                        value: msg.payload(),
                    };
                    match deserializer(&rec) {
                        Ok(v) => {
                            out.push(v);
                            got = true;
                        }
                        Err(why) => Self::reject(
                            errors,
                            warned_skip,
                            dead_letters.as_ref(),
                            &cfg,
                            &rec,
                            why,
                        )?,
                    }
                    split.next = offset + 1;
                    if split.end.is_some_and(|e| split.next >= e) {
                        done = true;
                        break;
                    }
                }
            }
            if done {
                split.finished = true;
                split.queue = None;
            }
            if got {
                *last = i;
                *cursor = (i + 1) % n;
                return Ok(SourceStatus::More);
            }
        }
        if cfg.bounded && run.splits.iter().all(|s| s.finished) {
            return Ok(SourceStatus::Finished);
        }
        Ok(SourceStatus::Idle(Duration::from_millis(5)))
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        blocking(|| {
            let Some(run) = self.run.as_mut() else {
                return Ok(());
            };
            if let Some((p, topic)) = &run.dead_letters {
                // the copies of records before the barrier are in Kafka before
                // the checkpoint can complete
                super::flush_acknowledged(
                    p,
                    &format!("the dead-letter topic '{topic}'"),
                    &self.cfg.properties,
                )?;
            }
            let list: Vec<PartitionState> = run
                .splits
                .iter()
                .map(|s| PartitionState {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    next: s.next,
                    end: s.end,
                })
                .collect();
            state.update_union_list(STATE, &list)?;
            let positions = run.positions();
            run.to_commit.insert(checkpoint_id, positions);
            Ok(())
        })
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        let done: Vec<u64> = run
            .to_commit
            .range(..=checkpoint_id)
            .map(|(k, _)| *k)
            .collect();
        let latest = done.last().and_then(|k| run.to_commit.get(k).cloned());
        for k in done {
            run.to_commit.remove(&k);
        }
        if let Some(tpl) = latest {
            if tpl.count() > 0 {
                // for monitoring only: a failure here changes nothing
                if let Err(e) = run
                    .consumer
                    .commit(&tpl, rdkafka::consumer::CommitMode::Async)
                {
                    tracing::warn!(operator = %run.operator, error = %e, "cannot commit offsets to the consumer group (monitoring only)");
                }
            }
        }
        Ok(())
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(run) = self.run.as_mut() {
            run.to_commit.remove(&checkpoint_id);
        }
        Ok(())
    }

    /// Flushes the dead-letter copies. The positions stay: a finished
    /// subtask is still snapshotted by the checkpoints that follow (its
    /// final positions are what a restore must see).
    fn close(&mut self) -> Result<()> {
        blocking(|| {
            if let Some(run) = self.run.as_ref() {
                if let Some((p, topic)) = &run.dead_letters {
                    super::flush_acknowledged(
                        p,
                        &format!("the dead-letter topic '{topic}'"),
                        &self.cfg.properties,
                    )?;
                }
            }
            Ok(())
        })
    }

    fn split_count(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.splits.len())
    }

    fn last_split(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.last)
    }

    fn split_name(&self, i: usize) -> String {
        self.run
            .as_ref()
            .and_then(|r| r.splits.get(i))
            .map_or_else(|| i.to_string(), |s| format!("{}-{}", s.topic, s.partition))
    }

    fn split_finished(&self, i: usize) -> bool {
        self.run
            .as_ref()
            .and_then(|r| r.splits.get(i))
            .is_some_and(|s| s.finished)
    }
}
