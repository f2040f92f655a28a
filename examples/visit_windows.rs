//! Page visits per 10-second event-time window, with late data: a click
//! stream `(user, page, event_time_ms)` that arrives out of order.
//!
//! With no arguments it generates 20 million clicks (fixed seed; one
//! millisecond of event time apart, each delayed by up to 3 s, and 0.5% of
//! them an hour late), assigns timestamps and watermarks (bounded
//! out-of-orderness of 5 s), counts the visits of each page in tumbling
//! 10-second windows and sends the clicks too late for their window to a side
//! output. Every second it prints the event time the watermark reached, the
//! windows emitted and the late clicks so far; at the end the totals, the
//! elapsed time and the throughput.
//!
//! ```text
//! cargo run --release --example visit_windows
//! cargo run --release --example visit_windows -- --output out/ --parallelism 2
//! cargo run --release --example visit_windows -- --input clicks.csv --output out/
//! cargo run --release --example visit_windows -- --clicks 0 --rate 100000   # without end, paced
//! ```
//!
//! With `--output DIR` the window results are written exactly once as lines
//! `window_start<TAB>window_end<TAB>page<TAB>visits` (ms since the epoch) into
//! part files under `DIR/visits`, and the late clicks as CSV lines
//! `user,page,event_time_ms` under `DIR/late`. `--input` reads clicks from
//! such CSV lines (a file or a directory of files). The job itself is
//! [`weir::visit_windows::visit_windows`]; this file is the command line
//! around it.
//!
//! Like `wordcount`: `-D key=value` sets any option (e.g.
//! `-D pipeline.auto-watermark-interval=50ms`), `-s PATH` restores from a
//! checkpoint or savepoint, SIGTERM or Ctrl-C cancels the job cleanly and
//! exits non-zero, and the REST API and web UI are served while it runs
//! (`--no-ui` turns them off, `--serve` keeps them up after the job ended).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use weir::cli::{human_rate, ConfArgs, Driver, Rate};
use weir::prelude::*;
use weir::runtime::config::{options, ValueSource};
use weir::visit_windows::{
    csv_clicks, format_event_time, generated_clicks, visit_windows, ClickSpec, VisitWindows, VISITS,
};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    about = "Counts page visits per 10-second event-time window of a click stream \
             (generated, or --input CSV), with late clicks in a side output"
)]
struct Args {
    /// Clicks from CSV lines `user,page,event_time_ms`: a file or a directory
    /// of files (default: the generated click stream).
    #[arg(long, value_name = "CSV")]
    input: Option<PathBuf>,
    /// Writes the window results into DIR/visits and the late clicks into DIR/late.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Parallelism of every operator (default: parallelism.default).
    #[arg(long, short = 'p')]
    parallelism: Option<usize>,
    /// Generated clicks; 0: without end (stop it with `weir stop` or
    /// `weir cancel`, or Ctrl-C).
    #[arg(long, default_value_t = 20_000_000)]
    clicks: u64,
    /// Paces the generated clicks to about this many per second over all
    /// source subtasks (default: as fast as it goes).
    #[arg(long, value_name = "CLICKS_PER_SECOND", value_parser = parse_rate, conflicts_with = "input")]
    rate: Option<f64>,
    /// Distinct pages of the generated clicks.
    #[arg(long, default_value_t = ClickSpec::default().pages)]
    pages: u64,
    /// Distinct users of the generated clicks.
    #[arg(long, default_value_t = ClickSpec::default().users)]
    users: u32,
    /// Fraction of the generated clicks that arrive an hour late (0 to 1).
    #[arg(long, default_value_t = ClickSpec::default().late_fraction)]
    late_fraction: f64,
    /// Seed of the generated clicks.
    #[arg(long, default_value_t = ClickSpec::default().seed)]
    seed: u64,
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

/// A positive number of clicks per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate: a positive number of clicks per second, e.g. 100000"
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
    let spec = ClickSpec {
        pages: args.pages,
        users: args.users,
        late_fraction: args.late_fraction,
        seed: args.seed,
    };
    if args.input.is_none() {
        spec.validate()?;
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
    let clicks = match &args.input {
        Some(path) => {
            let (stream, n) = csv_clicks(&env, path)?;
            eprintln!(
                "visits per page and window of {n} clicks in {}",
                path.display()
            );
            stream
        }
        None => {
            let count = (args.clicks > 0).then_some(args.clicks);
            eprintln!(
                "visits per page and window of generated clicks: {}, {} pages, {} users, {}% very late, seed {}{}",
                count.map_or("without end".to_string(), |c| format!("{c} clicks")),
                spec.pages,
                spec.users,
                spec.late_fraction * 100.0,
                spec.seed,
                args.rate
                    .map_or(String::new(), |r| format!(", about {r} clicks/s"))
            );
            generated_clicks(&env, spec, count, args.rate)?
        }
    };
    let progress = visit_windows(&clicks, args.output.as_deref())?;

    let mut job = env.execute_async("visit_windows")?;
    let mut driver = Driver::start(&job, args.quiet, args.serve)?;
    let mut rate = Rate::default();
    driver.drive(&mut job, env.conf(), |job| {
        let clicks = clicks_in(&job.metrics());
        format!(
            "watermark {}  {:>8} windows  {:>7} late  {:>10} clicks  {}",
            watermark(progress.watermark()),
            progress.windows(),
            progress.late(),
            clicks,
            human_rate(rate.of(clicks))
        )
    });
    let result = driver.finish(job)?;
    summary(&progress, &result);
    if let Some(dir) = &args.output {
        println!("output: {}", dir.display());
    }
    driver.serve();
    Ok(())
}

/// Clicks into the window operator in this run.
fn clicks_in(ops: &[OperatorMetrics]) -> u64 {
    ops.iter()
        .find(|o| o.name == VISITS)
        .map_or(0, |o| o.records_in)
}

fn summary(progress: &VisitWindows, result: &JobResult) {
    let secs = result.duration.as_secs_f64();
    let (visits, late) = (progress.visits(), progress.late());
    let processed = clicks_in(&result.operators);
    println!("windows emitted: {}", progress.windows());
    println!("total visits: {visits}");
    println!("late clicks: {late}");
    println!("clicks: {} (visits + late clicks)", visits + late);
    println!("watermark: {}", watermark(progress.watermark()));
    println!("elapsed: {secs:.3} s");
    println!(
        "throughput: {} clicks ({processed} in this run)",
        human_rate(processed as f64 / secs)
    );
    println!("restarts: {}", result.restarts);
}
