//! Word count, Flink's classic: lines -> words -> running count per word.
//!
//! With no arguments it counts the words of a built-in generated text (about
//! 20 million words from a 10,000-word Zipf vocabulary, fixed seed), printing
//! progress every second and, at the end, the top 10 words, the total, the
//! elapsed time and the throughput.
//!
//! ```text
//! cargo run --release --example wordcount
//! cargo run --release --example wordcount -- --input book.txt --output out/ --parallelism 2
//! ```
//!
//! A word is a maximal run of alphanumeric characters (`char::is_alphanumeric`),
//! lowercased. With `--output DIR` every update is written as a line
//! `word<TAB>count` (Flink's running count: a word seen N times has the lines
//! with counts 1..N, in that order) to part files in DIR.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use rustc_hash::FxHashMap;
use weir::cli::{human_rate, ConfArgs};
use weir::operators::text::generated_lines;
use weir::prelude::*;
use weir::runtime::config::options;

#[derive(Parser, Debug)]
#[command(
    about = "Counts words: a text file or directory (--input), or the built-in generated text"
)]
struct Args {
    /// A text file or a directory of text files (default: the built-in generated text).
    #[arg(long, value_name = "PATH")]
    input: Option<std::path::PathBuf>,
    /// Writes `word<TAB>count` lines (one per update) into part files in DIR.
    #[arg(long, value_name = "DIR")]
    output: Option<std::path::PathBuf>,
    /// Parallelism of every operator (default: parallelism.default).
    #[arg(long, short = 'p')]
    parallelism: Option<usize>,
    /// Words in the built-in text.
    #[arg(long, default_value_t = 20_000_000)]
    words: u64,
    /// Size of the built-in text's vocabulary.
    #[arg(long, default_value_t = 10_000)]
    vocabulary: usize,
    /// Seed of the built-in text.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No progress lines.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    conf: ConfArgs,
}

fn main() -> ExitCode {
    weir::cli::init_tracing();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps the top words seen by a sink subtask: a word's running counts arrive
/// in increasing order at one subtask, so its last count is its total. Only
/// records that can still be in the top 10 touch the map.
#[derive(Default)]
struct Top {
    best: FxHashMap<Word, u64>,
    threshold: u64,
}

impl Top {
    const N: usize = 10;

    fn observe(&mut self, batch: &[(Word, u64)]) {
        for (w, c) in batch {
            if *c >= self.threshold {
                match self.best.get_mut(w) {
                    Some(v) => *v = *c,
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

    fn merge_into(&self, all: &mut Vec<(Word, u64)>) {
        all.extend(self.best.iter().map(|(w, c)| (w.clone(), *c)));
    }
}

/// The example's sink: tracks the top words and, with --output, writes every update.
#[derive(Clone)]
struct WordCountSink<F: Clone> {
    file: Option<F>,
    top: Top2,
    results: Arc<Mutex<Vec<(Word, u64)>>>,
}

#[derive(Default)]
struct Top2(Top);
impl Clone for Top2 {
    fn clone(&self) -> Self {
        Top2::default()
    }
}

impl<F: SinkFunction<(Word, u64)> + Clone> SinkFunction<(Word, u64)> for WordCountSink<F> {
    fn open(&mut self, ctx: &RuntimeContext) -> weir::runtime::Result<()> {
        match &mut self.file {
            Some(f) => f.open(ctx),
            None => Ok(()),
        }
    }
    fn invoke(&mut self, batch: Vec<(Word, u64)>) -> weir::runtime::Result<()> {
        self.top.0.observe(&batch);
        match &mut self.file {
            Some(f) => f.invoke(batch),
            None => Ok(()),
        }
    }
    fn finish(&mut self) -> weir::runtime::Result<()> {
        self.top
            .0
            .merge_into(&mut self.results.lock().unwrap_or_else(|p| p.into_inner()));
        match &mut self.file {
            Some(f) => f.finish(),
            None => Ok(()),
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut conf = args.conf.load()?;
    if let Some(p) = args.parallelism {
        conf.set(options::PARALLELISM_DEFAULT.def.key, p)?;
    }
    let env = Env::from_conf(conf)?;
    let lines = match &args.input {
        Some(path) => {
            let src = FileSource::new(path)?;
            let bytes: u64 = src.files().iter().map(|f| f.1).sum();
            eprintln!(
                "counting words of {} ({} files, {} bytes)",
                path.display(),
                src.files().len(),
                bytes
            );
            env.add_source(src)
        }
        None => {
            eprintln!(
                "counting words of the built-in text: about {} words, vocabulary {}, seed {}",
                args.words, args.vocabulary, args.seed
            );
            env.add_source(generated_lines(args.words, args.vocabulary, args.seed))
        }
    }
    .name("Source");
    let counts = lines
        .flat_map(|line: String, out: &mut Collector<Word>| {
            for_each_word(&line, |w| out.collect(w))
        })
        .name("Tokenizer")
        .key_by(|w: &Word| w.clone())
        .count()
        .name("Count");
    let results = Arc::new(Mutex::new(Vec::new()));
    type Fmt = fn(&(Word, u64), &mut String);
    let file: Option<FileSink<(Word, u64), Fmt>> = match &args.output {
        Some(dir) => Some(FileSink::new(
            dir,
            (|(w, c): &(Word, u64), line: &mut String| {
                use std::fmt::Write;
                let _ = write!(line, "{w}\t{c}");
            }) as Fmt,
        )?),
        None => None,
    };
    counts
        .add_sink(WordCountSink {
            file,
            top: Top2::default(),
            results: results.clone(),
        })
        .name("Sink");

    let mut job = env.execute_async("wordcount")?;
    let interval = env.conf().get(&options::PROGRESS_INTERVAL);
    let mut last = (0u64, std::time::Instant::now());
    let mut next_report = interval;
    while !job.is_done() {
        std::thread::sleep(Duration::from_millis(20));
        if !args.quiet && job.elapsed() >= next_report {
            next_report += interval;
            let words = words_counted(&job.metrics());
            let now = std::time::Instant::now();
            let rate = (words - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
            last = (words, now);
            eprintln!(
                "[{:>6.1}s] {:>12} words  {}",
                job.elapsed().as_secs_f64(),
                words,
                human_rate(rate)
            );
        }
    }
    let result = job.wait()?;
    let total = words_counted(&result.operators);
    let mut top = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("top 10 words:");
    for (w, c) in top.iter().take(10) {
        println!("  {c:>10}  {w}");
    }
    let secs = result.duration.as_secs_f64();
    println!("total words: {total}");
    println!("elapsed: {secs:.3} s");
    println!("throughput: {} words", human_rate(total as f64 / secs));
    if let Some(dir) = &args.output {
        println!("output: {}", dir.display());
    }
    Ok(())
}

fn words_counted(ops: &[OperatorMetrics]) -> u64 {
    ops.iter()
        .find(|o| o.name == "Count")
        .map_or(0, |o| o.records_in)
}
