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
//! cargo run --release --example wordcount -- --words 0 --rate 1000000   # without end, paced
//! ```
//!
//! `--words 0` generates the built-in text without end (stop it with
//! `weir stop` or `weir cancel`, or Ctrl-C) and `--rate N` paces it to about
//! N words per second over all source subtasks.
//!
//! A word is a maximal run of alphanumeric characters (`char::is_alphanumeric`),
//! lowercased. With `--output DIR` every update is written as a line
//! `word<TAB>count` (Flink's running count: a word seen N times has the lines
//! with counts 1..N, in that order) to part files in DIR. The job itself is
//! [`weir::wordcount::wordcount`]; this file is the command line around it.
//!
//! With an OTLP collector configured (`-D otel.exporter.otlp.endpoint=http://localhost:4318`,
//! or `OTEL_EXPORTER_OTLP_ENDPOINT`; `otel.exporter.otlp.protocol` picks `grpc`
//! or `http/protobuf`) every checkpoint and failover is exported as a trace.
//!
//! # Kafka (feature `kafka`)
//! ```text
//! cargo run --release --features kafka --example wordcount -- \
//!     --kafka-brokers 127.0.0.1:9092 --kafka-input-topic lines --kafka-output-topic counts
//! ```
//! reads lines from the topic's record values instead of `--input`, and
//! writes every update as one record (key: the word, value:
//! `word<TAB>count`) to the output topic, exactly once by default (a Kafka
//! transaction per completed checkpoint; `-D
//! kafka.sink.delivery-guarantee=at-least-once` for at least once).
//! `--kafka-bounded` ends at the end offsets the topic had when the job
//! first started (Flink's bounded mode), so a run over a filled topic ends
//! by itself. `-s` restores as with files: the source resumes at the
//! checkpointed offsets. Every `kafka.*` option of `conf/weir.yaml` applies.
//!
//! SIGTERM or Ctrl-C cancels the job cleanly and exits non-zero (a second
//! one exits at once): see [`weir::cli::Termination`].
//!
//! While it runs it serves the REST API and web UI and prints the UI's URL
//! (on `rest.port`, 8081 by default, else any free port when 8081 is taken;
//! off with `--no-ui` or `-D rest.enabled=false`); `--serve` keeps serving
//! after the job ended (finished, failed or cancelled), until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use weir::cli::{human_rate, ConfArgs, Driver, Rate};
use weir::operators::text::{generated_text, uniform_text};
use weir::prelude::*;
use weir::runtime::config::{options, ValueSource};
use weir::runtime::telemetry::{OtlpProtocol, TelemetryConfig};
use weir::wordcount::{wordcount_to, words_counted};

// The example's allocator; any allocator works, this one is faster for
// batches allocated on one thread and freed on another.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    about = "Counts words: a text file or directory (--input), or the built-in generated text"
)]
struct Args {
    /// A text file or a directory of text files (default: the built-in generated text).
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,
    /// Writes `word<TAB>count` lines (one per update) into part files in DIR.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Parallelism of every operator (default: parallelism.default).
    #[arg(long, short = 'p')]
    parallelism: Option<usize>,
    /// Words in the built-in text; 0: without end (stop it with `weir stop`
    /// or `weir cancel`, or Ctrl-C).
    #[arg(long, default_value_t = 20_000_000)]
    words: u64,
    /// Paces the input to about this many words per second over all source
    /// subtasks (default: as fast as it goes); with --input, lines are paced
    /// to a tenth of it (about ten words a line).
    #[arg(long, value_name = "WORDS_PER_SECOND", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Size of the built-in text's vocabulary.
    #[arg(long, default_value_t = 10_000)]
    vocabulary: usize,
    /// How the built-in text draws its words: zipf (like real text: a few
    /// words most of the time) or uniform (`w<hex>` words, every one as
    /// likely, any vocabulary size without memory for it: large keyed state).
    #[arg(long, value_enum, default_value_t = Distribution::Zipf)]
    distribution: Distribution,
    /// Seed of the built-in text.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No progress lines.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Keep serving the web UI and REST API after the job ended (finished, failed or
    /// cancelled), until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// No web UI / REST API (same as -D rest.enabled=false).
    #[arg(long, conflicts_with = "serve")]
    no_ui: bool,
    /// Kafka brokers, host:port[,host:port...] (sets kafka.properties.bootstrap.servers).
    #[arg(long, value_name = "HOST:PORT")]
    kafka_brokers: Option<String>,
    /// Reads lines from this Kafka topic (record values, UTF-8) instead of --input.
    #[arg(long, value_name = "TOPIC", conflicts_with_all = ["input", "rate"])]
    kafka_input_topic: Option<String>,
    /// Writes every update as a record (key: word, value: word<TAB>count) to this topic.
    #[arg(long, value_name = "TOPIC")]
    kafka_output_topic: Option<String>,
    /// Ends at the end offsets the input topic had when the job first started
    /// (sets kafka.scan.bounded.mode=latest-offset).
    #[arg(long, requires = "kafka_input_topic")]
    kafka_bounded: bool,
    #[command(flatten)]
    conf: ConfArgs,
}

/// How the built-in text draws its words.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Distribution {
    Zipf,
    Uniform,
}

/// A positive number of words per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate: a positive number of words per second, e.g. 100000"
        )),
    }
}

fn main() -> ExitCode {
    weir::cli::init_tracing();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut conf = args.conf.load()?;
    if let Some(p) = args.parallelism {
        conf.set(options::PARALLELISM_DEFAULT.def.key, p)?;
    }
    if let Some(b) = &args.kafka_brokers {
        conf.set(options::KAFKA_BOOTSTRAP_SERVERS.def.key, b)?;
    }
    if args.kafka_bounded {
        conf.set(options::KAFKA_BOUNDED_MODE.def.key, "latest-offset")?;
    }
    let kafka_used = args.kafka_input_topic.is_some() || args.kafka_output_topic.is_some();
    if kafka_used && !cfg!(feature = "kafka") {
        anyhow::bail!(
            "this wordcount was built without Kafka: run it with `cargo run --release --features kafka --example wordcount -- ...`"
        );
    }
    if kafka_used
        && conf
            .get(&options::KAFKA_BOOTSTRAP_SERVERS)
            .trim()
            .is_empty()
    {
        anyhow::bail!("--kafka-input-topic and --kafka-output-topic need --kafka-brokers HOST:PORT (or kafka.properties.bootstrap.servers)");
    }
    if let Some(otel) = TelemetryConfig::from_conf(&conf)? {
        eprintln!(
            "exporting checkpoint and failover traces over OTLP ({}) to {}",
            match otel.protocol {
                OtlpProtocol::Grpc => "grpc",
                OtlpProtocol::HttpProtobuf => "http/protobuf",
            },
            otel.endpoint
        );
    }
    // The web UI is on unless --no-ui, or -D / WEIR_REST_ENABLED turned it off.
    let explicit = matches!(
        conf.source(options::REST_ENABLED.def.key),
        Some(ValueSource::Dynamic | ValueSource::Env(_))
    );
    if args.no_ui {
        conf.set(options::REST_ENABLED.def.key, false)?;
    } else if !explicit {
        conf.set(options::REST_ENABLED.def.key, true)?;
    }
    if args.serve && !conf.get(&options::REST_ENABLED) {
        anyhow::bail!("--serve needs the REST server: rest.enabled is false");
    }
    // The default port may be taken (another wordcount): then any free port.
    if let Err(e) = weir::runtime::rest::ensure_started(&conf) {
        if matches!(
            conf.source(options::REST_PORT.def.key),
            Some(ValueSource::Dynamic | ValueSource::Env(_) | ValueSource::Code)
        ) || conf.get(&options::REST_PORT) != 8081
        {
            return Err(e.into());
        }
        eprintln!("{e}; serving the web UI on another port");
        conf.set(options::REST_PORT.def.key, 0)?;
    }
    let env = Env::from_conf(conf)?;
    let lines = match (&args.input, &args.kafka_input_topic) {
        (_, Some(topic)) => kafka_lines(&env, topic)?,
        (Some(path), None) => {
            let src = FileSource::new(path)?;
            let bytes: u64 = src.files().iter().map(|f| f.1).sum();
            eprintln!(
                "counting words of {} ({} files, {bytes} bytes)",
                path.display(),
                src.files().len()
            );
            match args.rate {
                Some(rate) => env.add_source(weir::operators::source::Paced::new(src, rate / 10.0)),
                None => env.add_source(src),
            }
        }
        (None, None) => {
            let words = (args.words > 0).then_some(args.words);
            eprintln!(
                "counting words of the built-in text: {}, vocabulary {} ({:?}), seed {}{}",
                words.map_or("without end".to_string(), |w| format!("about {w} words")),
                args.vocabulary,
                args.distribution,
                args.seed,
                args.rate
                    .map_or(String::new(), |r| format!(", about {r} words/s"))
            );
            // Ten words per line on average.
            let lines_per_s = args.rate.map(|r| r / 10.0);
            match args.distribution {
                Distribution::Zipf => {
                    let mut source = generated_text(words, args.vocabulary, args.seed);
                    if let Some(r) = lines_per_s {
                        source = source.with_rate(r);
                    }
                    env.add_source(source)
                }
                Distribution::Uniform => {
                    let mut source = uniform_text(words, args.vocabulary as u64, args.seed);
                    if let Some(r) = lines_per_s {
                        source = source.with_rate(r);
                    }
                    env.add_source(source)
                }
            }
        }
    }
    .name("Source");
    let kafka_out = match &args.kafka_output_topic {
        Some(topic) => Some(kafka_output(&env, topic)?),
        None => None,
    };
    let top = wordcount_to(&lines, args.output.as_deref(), kafka_out)?;

    let mut job = env.execute_async("wordcount")?;
    let mut driver = Driver::start(&job, args.quiet, args.serve)?;
    let mut rate = Rate::default();
    driver.drive(&mut job, env.conf(), |job| {
        let words = words_counted(&job.metrics());
        format!("{words:>12} words  {}", human_rate(rate.of(words)))
    });
    let traces = job.telemetry_stats();
    let result = driver.finish(job)?;
    let total = words_counted(&result.operators);
    println!("top 10 words:");
    for (w, c) in top.top(10) {
        println!("  {c:>10}  {w}");
    }
    let secs = result.duration.as_secs_f64();
    println!("total words: {total}");
    println!("elapsed: {secs:.3} s");
    println!("throughput: {} words", human_rate(total as f64 / secs));
    println!("restarts: {}", result.restarts);
    if let Some(dir) = &args.output {
        println!("output: {}", dir.display());
    }
    if let Some(topic) = &args.kafka_output_topic {
        println!("output topic: {topic}");
    }
    if let Some(t) = traces {
        // Counted before the final flush, which the job's end bounds by otel.flush-timeout.
        println!(
            "traces: {} spans exported, {} dropped, {} failed exports (before the final flush)",
            t.exported, t.dropped, t.failed_exports
        );
        println!(
            "metrics: {} OTLP exports, {} failed (before the final one)",
            t.metric_exports, t.failed_metric_exports
        );
    }
    driver.serve();
    Ok(())
}

/// The lines of a Kafka topic, configured by the `kafka.*` options.
#[cfg(feature = "kafka")]
fn kafka_lines(env: &Env, topic: &str) -> anyhow::Result<DataStream<String>> {
    use weir::operators::kafka::KafkaSource;
    let source = KafkaSource::lines()
        .conf(env.conf())?
        .topics([topic])
        .build()?;
    eprintln!(
        "counting words of Kafka topic {topic} on {}{}",
        env.conf().get(&options::KAFKA_BOOTSTRAP_SERVERS),
        if env.conf().get(&options::KAFKA_BOUNDED_MODE) == "latest-offset" {
            " (bounded: up to its end offsets at the first start)"
        } else {
            ""
        }
    );
    Ok(env.add_source(source))
}

#[cfg(not(feature = "kafka"))]
fn kafka_lines(_: &Env, _: &str) -> anyhow::Result<DataStream<String>> {
    unreachable!("rejected in run() without the kafka feature")
}

/// The word count's Kafka sink, configured by the `kafka.*` options.
#[cfg(feature = "kafka")]
fn kafka_output(env: &Env, topic: &str) -> anyhow::Result<weir::wordcount::KafkaOutput> {
    let sink = weir::wordcount::kafka_output(topic)
        .conf(env.conf())
        .build()?;
    eprintln!(
        "writing updates to Kafka topic {topic} ({})",
        env.conf().get(&options::KAFKA_DELIVERY_GUARANTEE)
    );
    Ok(sink)
}

#[cfg(not(feature = "kafka"))]
fn kafka_output(_: &Env, _: &str) -> anyhow::Result<weir::wordcount::KafkaOutput> {
    unreachable!("rejected in run() without the kafka feature")
}
