//! Page visits per event-time window, from a Kafka topic to a Kafka topic
//! (feature `kafka`).
//!
//! Reads visits, record values `user,page,event_time_ms` (UTF-8, event time
//! in ms since the epoch), from `--input-topic`; every partition of the
//! topic has its own watermark (bounded out-of-orderness of 5 s; a partition
//! without records for `--idle-seconds` stops holding the watermark back).
//! Counts the visits of each page in tumbling event-time windows of
//! `--window-seconds` and writes every window result as one record of
//! `--output-topic`, key = the page, value
//! `window_start<TAB>window_end<TAB>page<TAB>visits` (ms since the epoch),
//! exactly once by default: a Kafka transaction per completed checkpoint, so
//! read the output with `isolation.level=read_committed`.
//!
//! ```text
//! cargo run --release --features kafka --example kafka_visits -- \
//!     --kafka-brokers 127.0.0.1:9092 --input-topic visits --output-topic visit-counts --bounded
//! ```
//!
//! `--bounded` ends at the end offsets the input topic had when the job
//! first started (`kafka.scan.bounded.mode=latest-offset`): the end of input
//! fires every window. Without it the job runs until stopped (`weir stop`,
//! `weir cancel`, SIGTERM or Ctrl-C). A record that is not a visit fails the
//! job naming its topic, partition and offset (the restart strategy then
//! restarts it from the latest checkpoint, where it fails again at the same
//! record: `-D restart-strategy.type=none` ends it at once), unless `-D
//! kafka.scan.deserialization-errors=skip` (or `dead-letter` with `-D
//! kafka.scan.dead-letter-topic=...`): then it is counted in the source's
//! `numRecordsInErrors`, printed at the end as "records rejected" (of this
//! run: metrics start at 0 when a job is restored). Visits too late for
//! their window are counted, not written. Every `kafka.*` option of
//! `conf/weir.yaml` applies.
//!
//! Like the other examples: `-D key=value` sets any option, `-s PATH`
//! restores from a checkpoint or savepoint (the source resumes at the
//! checkpointed offsets, the sink commits what the checkpoint pre-committed),
//! SIGTERM or Ctrl-C cancels the job cleanly and exits non-zero, and the
//! REST API and web UI are served while it runs (`--no-ui` turns them off,
//! `--serve` keeps them up after the job ended). The job itself is
//! [`weir::kafka_visits::kafka_visits`]; this file is the command line
//! around it.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weir::cli::{human_rate, ConfArgs, Driver, Rate};
use weir::kafka_visits::{kafka_visits, rejected, visits_read, KafkaVisits, IDLENESS, WINDOW};
use weir::prelude::*;
use weir::runtime::config::{options, ValueSource};
use weir::visit_windows::{format_event_time, VisitWindows};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    about = "Counts page visits per event-time window: visits user,page,event_time_ms from a \
             Kafka topic, window results to a Kafka topic (exactly once)"
)]
struct Args {
    /// Kafka brokers, host:port[,host:port...] (sets kafka.properties.bootstrap.servers).
    #[arg(long, value_name = "HOST:PORT")]
    kafka_brokers: Option<String>,
    /// The topic of the visits (record values `user,page,event_time_ms`).
    #[arg(long, value_name = "TOPIC")]
    input_topic: String,
    /// The topic of the window results (key: page; value:
    /// `window_start<TAB>window_end<TAB>page<TAB>visits`).
    #[arg(long, value_name = "TOPIC")]
    output_topic: String,
    /// Ends at the end offsets the input topic had when the job first
    /// started (sets kafka.scan.bounded.mode=latest-offset).
    #[arg(long)]
    bounded: bool,
    /// Parallelism of every operator (default: parallelism.default).
    #[arg(long, short = 'p')]
    parallelism: Option<usize>,
    /// Size of the tumbling event-time windows, in seconds.
    #[arg(long, default_value_t = WINDOW.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    window_seconds: u64,
    /// A partition without records for this many seconds no longer holds
    /// the watermark back.
    #[arg(long, default_value_t = IDLENESS.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_seconds: u64,
    /// No progress lines.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Keep serving the web UI and REST API after the job ended (finished,
    /// failed or cancelled), until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// No web UI / REST API (same as -D rest.enabled=false).
    #[arg(long, conflicts_with = "serve")]
    no_ui: bool,
    #[command(flatten)]
    conf: ConfArgs,
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

/// The watermark for people.
fn watermark(w: Option<i64>) -> String {
    match w {
        None => "-".to_string(),
        Some(i64::MAX) => "end of input".to_string(),
        Some(w) => format_event_time(w),
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
    if args.bounded {
        conf.set(options::KAFKA_BOUNDED_MODE.def.key, "latest-offset")?;
    }
    if conf
        .get(&options::KAFKA_BOOTSTRAP_SERVERS)
        .trim()
        .is_empty()
    {
        anyhow::bail!(
            "kafka_visits needs --kafka-brokers HOST:PORT (or kafka.properties.bootstrap.servers)"
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
    // The default port may be taken (another example): then any free port.
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
    let spec = KafkaVisits {
        input_topic: args.input_topic.clone(),
        output_topic: args.output_topic.clone(),
        window: Duration::from_secs(args.window_seconds),
        idleness: Duration::from_secs(args.idle_seconds),
    };
    let progress = kafka_visits(&env, &spec)?;
    eprintln!(
        "visits per page and {} s window: Kafka topic {} -> {} on {} ({}, deserialization errors: {}){}",
        args.window_seconds,
        spec.input_topic,
        spec.output_topic,
        env.conf().get(&options::KAFKA_BOOTSTRAP_SERVERS),
        env.conf().get(&options::KAFKA_DELIVERY_GUARANTEE),
        env.conf().get(&options::KAFKA_DESERIALIZATION_ERRORS),
        if env.conf().get(&options::KAFKA_BOUNDED_MODE) == "latest-offset" {
            "; bounded: up to the end offsets at the first start"
        } else {
            ""
        }
    );

    let mut job = env.execute_async("kafka_visits")?;
    let mut driver = Driver::start(&job, args.quiet, args.serve)?;
    let mut rate = Rate::default();
    driver.drive(&mut job, env.conf(), |job| {
        let metrics = job.metrics();
        let read = visits_read(&metrics);
        format!(
            "watermark {}  {:>7} windows  {:>9} visits read  {:>6} rejected  {:>6} late  {}",
            watermark(progress.watermark()),
            progress.windows(),
            read,
            rejected(&metrics),
            progress.late(),
            human_rate(rate.of(read))
        )
    });
    let result = driver.finish(job)?;
    summary(&progress, &result, &spec);
    driver.serve();
    Ok(())
}

fn summary(progress: &VisitWindows, result: &JobResult, spec: &KafkaVisits) {
    let secs = result.duration.as_secs_f64();
    let read = visits_read(&result.operators);
    println!("windows written: {}", progress.windows());
    println!("visits counted: {}", progress.visits());
    println!("late visits: {} (not written)", progress.late());
    println!(
        "records rejected: {} (numRecordsInErrors of the visits source, this run)",
        rejected(&result.operators)
    );
    println!("watermark: {}", watermark(progress.watermark()));
    println!("elapsed: {secs:.3} s");
    println!(
        "throughput: {} visits ({read} read in this run)",
        human_rate(read as f64 / secs)
    );
    println!("restarts: {}", result.restarts);
    println!("output topic: {}", spec.output_topic);
}
