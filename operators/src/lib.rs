//! # weir-operators: sources, sinks and text helpers
//!
//! Built only on `weir-runtime`'s public API, as a user's own operators would be.
//!
//! - [`source`]: [`source::GeneratorSource`] (deterministic, seeded, bounded or
//!   unbounded), [`source::FileSource`] (lines of a file or a directory, resumable
//!   at `(file, byte offset)`), [`source::CollectionSource`].
//! - [`sink`]: [`sink::PrintSink`], [`sink::DiscardSink`], [`sink::CollectSink`]
//!   (for tests), [`sink::FileSink`] (lines into part files).
//! - [`text`]: the word tokenizer and the built-in Zipf-distributed text that
//!   the wordcount example counts.
//! - [`rng`]: the small deterministic random generator everything seeded uses.
//! - `kafka` (feature `kafka`): `KafkaSource` (partitions as splits, offsets
//!   in the checkpoint) and `KafkaSink` (none, at-least-once, exactly-once
//!   with Kafka transactions); its module guide describes both protocols.

#![warn(missing_docs)]

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod rng;
pub mod sink;
pub mod source;
pub mod text;
