//! The word-count job, shared by the `wordcount` example, its tests and the
//! throughput bench: lines -> words -> `key_by(word)` -> running count -> sink.
//!
//! A word is a maximal run of characters for which `char::is_alphanumeric`
//! holds, lowercased ([`for_each_word`]). The count emits `(word, count so
//! far)` per word (Flink's running count). The sink keeps the top words (for
//! the summary; in its operator state, so a restored job reports them too)
//! and, given an output directory, writes every update as a line
//! `word<TAB>count` with a [`FileSink`]; given a Kafka sink (feature
//! `kafka`, [`wordcount_to`]), every update is one record with the word as
//! its key and `word<TAB>count` as its value, so a word's updates are in
//! one partition, in order.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use weir_runtime::Result;

use crate::prelude::*;

/// Name of the counting operator (its `records_in` is the number of words).
pub const COUNT: &str = "Count";

/// What a word count job gives back after it ran.
#[derive(Clone, Default)]
pub struct TopWords {
    merged: Arc<Mutex<Vec<(Word, u64)>>>,
}

impl TopWords {
    /// The `n` most frequent words with their counts, most frequent first (ties by word).
    pub fn top(&self, n: usize) -> Vec<(Word, u64)> {
        // A word can be a candidate at two subtasks after a rescaled
        // restore (its restored count at one, its newer counts at its
        // owner): its largest count is its total.
        let mut best: FxHashMap<Word, u64> = FxHashMap::default();
        for (w, c) in self.merged.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let e = best.entry(w.clone()).or_default();
            *e = (*e).max(*c);
        }
        let mut all: Vec<(Word, u64)> = best.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// Adds the word count to `lines`; with `output`, every update is written
/// there. Returns a handle on the top words, filled when the job ends
/// without failing (its input ended, or it was stopped with a savepoint).
pub fn wordcount(lines: &DataStream<String>, output: Option<&Path>) -> Result<TopWords> {
    wordcount_to(lines, output, None)
}

/// The Kafka output of the word count: `(word, count)` records.
#[cfg(feature = "kafka")]
pub type KafkaOutput = weir_operators::kafka::KafkaSink<(Word, u64)>;
/// Without the `kafka` feature there is no Kafka output.
#[cfg(not(feature = "kafka"))]
pub type KafkaOutput = std::convert::Infallible;

/// A builder of the word count's Kafka sink for `topic`: key = the word,
/// value = `word<TAB>count`.
#[cfg(feature = "kafka")]
pub fn kafka_output(topic: &str) -> weir_operators::kafka::KafkaSinkBuilder<(Word, u64)> {
    weir_operators::kafka::KafkaSink::builder(topic, |r: &(Word, u64)| {
        let mut line = String::new();
        format_line(r, &mut line);
        weir_operators::kafka::ProducerRecord::keyed(r.0.as_str().as_bytes(), line)
    })
}

/// [`wordcount`], also writing every update to `kafka` when given.
pub fn wordcount_to(
    lines: &DataStream<String>,
    output: Option<&Path>,
    kafka: Option<KafkaOutput>,
) -> Result<TopWords> {
    let top = TopWords::default();
    let file = match output {
        Some(dir) => Some(FileSink::new(dir, format_line as Format)?),
        None => None,
    };
    lines
        .flat_map(|line: String, out: &mut Collector<Word>| {
            for_each_word(&line, |w| out.collect(w))
        })
        .name("Tokenizer")
        .key_by(|w: &Word| w.clone())
        .count()
        .name(COUNT)
        .add_sink(WordCountSink {
            file,
            kafka,
            top: Top::default(),
            merged: top.merged.clone(),
        })
        .name("Sink");
    Ok(top)
}

/// Words counted so far, from a job's metrics.
pub fn words_counted(ops: &[OperatorMetrics]) -> u64 {
    ops.iter()
        .find(|o| o.name == COUNT)
        .map_or(0, |o| o.records_in)
}

type Format = fn(&(Word, u64), &mut String);

fn format_line((w, c): &(Word, u64), line: &mut String) {
    use std::fmt::Write;
    let _ = write!(line, "{w}\t{c}");
}

/// Keeps the words that can still be among the top [`Top::N`] at one sink
/// subtask. A word's running counts arrive in increasing order at one
/// subtask, so its last count is its total; the threshold (the N-th best
/// count seen) never exceeds the final N-th best, so no top word is missed,
/// and records below it cost one comparison.
#[derive(Default)]
struct Top {
    best: FxHashMap<Word, u64>,
    threshold: u64,
}

impl Clone for Top {
    fn clone(&self) -> Self {
        Top::default()
    }
}

impl Top {
    const N: usize = 10;
    /// Its operator state: the candidates, so a restored job's top words
    /// include the words that see no update after the restore.
    const STATE: &'static str = "wordcount-top-words";

    fn snapshot(&self, state: &mut OperatorStateStore) -> Result<()> {
        let best: Vec<(String, u64)> = self
            .best
            .iter()
            .map(|(w, c)| (w.as_str().to_string(), *c))
            .collect();
        state.update_list(Self::STATE, &best)
    }

    /// Adds the candidates of a snapshot (of one or, after rescaling,
    /// several old subtasks: a word's updates all went to one of them).
    fn restore(&mut self, state: &OperatorStateStore) -> Result<()> {
        let restored: Vec<(String, u64)> = state.get_list(Self::STATE)?;
        let batch: Vec<(Word, u64)> = restored.iter().map(|(w, c)| (Word::new(w), *c)).collect();
        self.observe(&batch);
        Ok(())
    }

    fn observe(&mut self, batch: &[(Word, u64)]) {
        for (w, c) in batch {
            if *c >= self.threshold {
                match self.best.get_mut(w) {
                    Some(v) => *v = (*v).max(*c),
                    None => {
                        self.best.insert(w.clone(), *c);
                    }
                }
            }
        }
        if self.best.len() > 4 * Self::N {
            let mut v: Vec<u64> = self.best.values().copied().collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            self.threshold = v[Self::N - 1];
            let t = self.threshold;
            self.best.retain(|_, c| *c >= t);
        }
    }
}

#[derive(Clone)]
struct WordCountSink {
    file: Option<FileSink<(Word, u64), Format>>,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    kafka: Option<KafkaOutput>,
    top: Top,
    merged: Arc<Mutex<Vec<(Word, u64)>>>,
}

impl WordCountSink {
    /// Runs `f` on the Kafka sink, if there is one.
    #[allow(unused_variables, unused_mut)]
    fn each_kafka(
        &mut self,
        mut f: impl FnMut(&mut dyn SinkFunction<(Word, u64)>) -> Result<()>,
    ) -> Result<()> {
        #[cfg(feature = "kafka")]
        if let Some(k) = &mut self.kafka {
            return f(k);
        }
        Ok(())
    }
}

impl SinkFunction<(Word, u64)> for WordCountSink {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        if let Some(f) = &mut self.file {
            f.open(ctx)?;
        }
        self.each_kafka(|k| k.open(ctx))
    }
    fn invoke(&mut self, batch: Vec<(Word, u64)>) -> Result<()> {
        self.top.observe(&batch);
        #[cfg(feature = "kafka")]
        if let Some(k) = &mut self.kafka {
            match &mut self.file {
                Some(_) => k.invoke(batch.clone())?,
                None => return k.invoke(batch),
            }
        }
        match &mut self.file {
            Some(f) => f.invoke(batch),
            None => Ok(()),
        }
    }
    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        self.top.snapshot(state)?;
        if let Some(f) = &mut self.file {
            f.snapshot_state(checkpoint_id, state)?;
        }
        self.each_kafka(|k| k.snapshot_state(checkpoint_id, state))
    }
    fn restore_state(&mut self, state: &OperatorStateStore) -> Result<()> {
        self.top.restore(state)?;
        if let Some(f) = &mut self.file {
            f.restore_state(state)?;
        }
        self.each_kafka(|k| k.restore_state(state))
    }
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(f) = &mut self.file {
            f.notify_checkpoint_complete(checkpoint_id)?;
        }
        self.each_kafka(|k| k.notify_checkpoint_complete(checkpoint_id))
    }
    fn finish(&mut self) -> Result<()> {
        if let Some(f) = &mut self.file {
            f.finish()?;
        }
        self.each_kafka(|k| k.finish())
    }
    /// Every normal end (the input ended, or `weir stop` with or without
    /// drain) publishes this subtask's top words.
    fn close(&mut self) -> Result<()> {
        if let Some(f) = &mut self.file {
            f.close()?;
        }
        self.each_kafka(|k| k.close())?;
        self.merged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(self.top.best.iter().map(|(w, c)| (w.clone(), *c)));
        Ok(())
    }
}
