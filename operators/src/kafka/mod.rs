//! # Kafka: a source with its offsets in the checkpoint, and an exactly-once sink
//!
//! Built on `rdkafka` (librdkafka, the production C client, compiled from
//! its bundled sources; feature `kafka`). Both ends are configured with
//! Flink's Kafka connector option names under `kafka.` in weir's
//! configuration (`conf/weir.yaml`, `-D`, `WEIR_KAFKA_*`), or with builder
//! calls; every `kafka.properties.<name>` is handed to librdkafka as it is
//! (`security.protocol`, `sasl.mechanism`, `sasl.username`,
//! `sasl.password`, ...). Secrets are never logged or shown: `weir config
//! show` and `Debug` print `******` for them.
//!
//! - [`KafkaSource`] ([`source`]): topic partitions are the splits, owned by
//!   subtasks through [`assign::owner`] (Flink's assignment); positions are
//!   checkpointed union state, so a restore (also a rescaled one) resumes
//!   every partition at its checkpointed offset. Starting offsets, bounded
//!   mode, partition discovery, per-partition watermarks and the
//!   deserialization-error policies are described there.
//! - [`KafkaSink`] ([`sink`]): `none`, `at-least-once` (every record
//!   acknowledged before a checkpoint completes) or `exactly-once` (Kafka
//!   transactions committed when a checkpoint completes, with a fenced
//!   transactional id per subtask). The protocol, and why its pre-commit
//!   keeps the records in the checkpoint, is in the [`sink`] module guide.
//!
//! `rdkafka` is re-exported for tests and tools that need a plain client.

pub mod assign;
mod properties;
pub mod sink;
pub mod source;

pub use properties::KafkaProperties;
pub use rdkafka;
pub use sink::{DeliveryGuarantee, KafkaSink, KafkaSinkBuilder, ProducerRecord};
pub use source::{
    utf8_value, DeserializationErrors, Fallback, KafkaRecord, KafkaSource, KafkaSourceBuilder,
    StartingOffsets,
};

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::ClientContext;
use weir_runtime::{Error, Result};

/// Longest wait for metadata, offsets and group requests.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a producer's queued records to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// An error of the Kafka client, naming what was being done and the brokers
/// (never other properties: they may hold secrets).
fn kafka_error(what: &str, props: &KafkaProperties, e: KafkaError) -> Error {
    Error::user(format!("{what} (Kafka brokers {}): {e}", props.brokers()))
}

/// A producer context that remembers the first record Kafka did not take
/// (librdkafka reports deliveries through callbacks, served by `poll` and
/// `flush`): a sink checks it before a checkpoint may complete.
#[derive(Default)]
pub(crate) struct DeliveryErrors {
    first: Mutex<Option<String>>,
}

impl DeliveryErrors {
    /// The first failed delivery since the producer was made, as an error.
    pub(crate) fn check(&self) -> Result<()> {
        match self
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            None => Ok(()),
            Some(e) => Err(Error::user(format!("Kafka did not take a record: {e}"))),
        }
    }
}

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::Message;
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(format!("{} partition {}: {e}", m.topic(), m.partition()));
            }
        }
    }
}

/// Waits until Kafka acknowledged every record `producer` queued, and fails
/// if it refused any (`what` names the topic for the error).
fn flush_acknowledged(
    producer: &BaseProducer<DeliveryErrors>,
    what: &str,
    props: &KafkaProperties,
) -> Result<()> {
    use rdkafka::producer::Producer;
    producer
        .flush(FLUSH_TIMEOUT)
        .map_err(|e| kafka_error(&format!("cannot flush {what}"), props, e))?;
    producer.context().check()
}

/// Queues a record, waiting (and serving delivery reports) while
/// librdkafka's queue is full.
fn send_retrying<'a>(
    producer: &BaseProducer<DeliveryErrors>,
    mut rec: BaseRecord<'a, [u8], [u8]>,
) -> std::result::Result<(), KafkaError> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
