//! # weir
//!
//! Stream processing with Apache Flink's fault-tolerance model, on an actor
//! runtime (ractor + tokio). This crate re-exports the engine
//! ([`runtime`], crate `weir-runtime`) and the stock operators ([`operators`],
//! crate `weir-operators`), hosts the examples and end-to-end tests, and the
//! `weir` command-line tool.
//!
//! Start with [`prelude`], [`runtime::stream::Env`] and the `wordcount` example.

pub use weir_operators as operators;
pub use weir_runtime as runtime;

pub mod cli;
pub mod client;
#[cfg(feature = "kafka")]
pub mod kafka_visits;
pub mod visit_windows;
pub mod wordcount;

/// Everything a job needs: the DataStream API, state, and the stock sources and sinks.
pub mod prelude {
    pub use weir_operators::sink::{CollectHandle, CollectSink, DiscardSink, FileSink, PrintSink};
    pub use weir_operators::source::{CollectionSource, FileSource, GeneratorSource};
    pub use weir_operators::text::{for_each_word, Word};
    pub use weir_runtime::prelude::*;
}
