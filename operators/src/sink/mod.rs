//! Sinks.

mod file;

pub use file::FileSink;

use std::fmt::Debug;
use std::io::Write;
use std::sync::{Arc, Mutex};

use weir_runtime::prelude::*;

/// Drops every record (for benchmarks).
#[derive(Debug, Clone, Default)]
pub struct DiscardSink;

impl<T: Data> SinkFunction<T> for DiscardSink {
    fn invoke(&mut self, _batch: Vec<T>) -> Result<()> {
        Ok(())
    }
}

/// Prints every record with `{:?}` to stdout, prefixed with `n> ` (the
/// subtask's number, from 1) when the sink runs in parallel, like Flink's `print()`.
#[derive(Debug, Clone, Default)]
pub struct PrintSink {
    prefix: String,
}

impl PrintSink {
    /// A print sink.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Data + Debug> SinkFunction<T> for PrintSink {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        if ctx.parallelism > 1 {
            self.prefix = format!("{}> ", ctx.subtask + 1);
        }
        Ok(())
    }
    fn invoke(&mut self, batch: Vec<T>) -> Result<()> {
        let mut out = std::io::stdout().lock();
        for r in batch {
            writeln!(out, "{}{:?}", self.prefix, r)
                .map_err(|e| Error::io("cannot write", "stdout", e))?;
        }
        Ok(())
    }
}

/// Collects every record in memory, for tests: keep a [`CollectSink::handle`]
/// and read it after the job.
pub struct CollectSink<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for CollectSink<T> {
    fn clone(&self) -> Self {
        CollectSink {
            items: self.items.clone(),
        }
    }
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        CollectSink {
            items: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T> CollectSink<T> {
    /// An empty collect sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on what all clones of this sink collected.
    pub fn handle(&self) -> CollectHandle<T> {
        CollectHandle {
            items: self.items.clone(),
        }
    }
}

/// Reads what a [`CollectSink`] collected.
pub struct CollectHandle<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> CollectHandle<T> {
    /// Takes the records collected so far (in arrival order per subtask).
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Number of records collected so far.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Data> SinkFunction<T> for CollectSink<T> {
    fn invoke(&mut self, batch: Vec<T>) -> Result<()> {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(batch);
        Ok(())
    }
}
