//! Command-line pieces shared by the examples and the `weir` tool.
//!
//! Every example accepts `-D key=value` (repeatable) to override any
//! configuration option (see `conf/weir.yaml`), on top of the file and the
//! `WEIR_*` environment variables. [`init_tracing`] sets up logging: `RUST_LOG`
//! (e.g. `RUST_LOG=weir_runtime=debug`) chooses what is shown, warnings by default.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_runtime::config::{options, Conf, ConfigError};
use weir_runtime::job::{JobHandle, JobResult};

/// The termination signals of the process: SIGTERM (what Kubernetes and
/// systemd send) and SIGINT (Ctrl-C). Once watched, they no longer kill the
/// process at once: the program asks its job to cancel cleanly (uploads
/// finish or are aborted, temporary files go, retention applies, the job
/// directory's `.running` lock is removed) and exits non-zero. A second
/// signal while that runs exits at once.
#[derive(Clone, Default)]
pub struct Termination(Arc<AtomicI32>);

impl Termination {
    /// Starts watching (a thread of its own).
    pub fn watch() -> std::io::Result<Termination> {
        let t = Termination::default();
        let seen = t.0.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered here, so a signal right after `watch` returns is seen.
        let (mut term, mut int) = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })?;
        std::thread::Builder::new()
            .name("weir-signals".into())
            .spawn(move || {
                rt.block_on(async move {
                    loop {
                        let n = tokio::select! {
                            _ = term.recv() => 15,
                            _ = int.recv() => 2,
                        };
                        if seen.swap(n, Ordering::SeqCst) != 0 {
                            eprintln!("second {}: exiting now", signal_name(n));
                            std::process::exit(128 + n);
                        }
                    }
                })
            })?;
        Ok(t)
    }

    /// The signal received (`SIGTERM` or `SIGINT`), if any.
    pub fn received(&self) -> Option<&'static str> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(signal_name(n)),
        }
    }
}

fn signal_name(n: i32) -> &'static str {
    if n == 15 {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}

/// Runs a started job in the foreground of a command line, as the examples
/// do: [`Driver::start`] announces it, [`Driver::drive`] follows it to its
/// end, [`Driver::finish`] takes its result and [`Driver::serve`] keeps the
/// web UI up for `--serve`. Between `drive` and `finish` the ended job can
/// still be asked (e.g. [`JobHandle::telemetry_stats`]).
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// # let env = weir::prelude::Env::from_conf(weir::prelude::Conf::default())?;
/// let mut job = env.execute_async("job")?;
/// let mut driver = weir::cli::Driver::start(&job, false, false)?;
/// driver.drive(&mut job, env.conf(), |job| format!("{} operators", job.metrics().len()));
/// let result = driver.finish(job)?;
/// println!("restarts: {}", result.restarts);
/// driver.serve();
/// # Ok(())
/// # }
/// ```
pub struct Driver {
    termination: Termination,
    quiet: bool,
    serve: bool,
    checkpoints_seen: u64,
    cancelled_by: Option<&'static str>,
}

impl Driver {
    /// Prints the job's web UI (`web UI: http://ADDR/#/jobs/ID`, when the
    /// REST server runs) and what it was restored from (`restored from
    /// checkpoint|savepoint N (DIR)`) to stderr, then starts watching SIGTERM
    /// and SIGINT ([`Termination::watch`]). `quiet`: no checkpoint or progress
    /// lines; `serve`: the command line's `--serve` (see [`Driver::finish`]
    /// and [`Driver::serve`]).
    pub fn start(job: &JobHandle, quiet: bool, serve: bool) -> std::io::Result<Driver> {
        if let Some(addr) = job.rest_address() {
            eprintln!("web UI: http://{addr}/#/jobs/{}", job.job_id());
        }
        if let Some((dir, id)) = job.restored_from() {
            let kind = match weir_runtime::checkpoint::storage::read_metadata(dir) {
                Ok(m) if m.is_savepoint => "savepoint",
                _ => "checkpoint",
            };
            eprintln!("restored from {kind} {id} ({})", dir.display());
        }
        Ok(Driver {
            termination: Termination::watch()?,
            quiet,
            serve,
            checkpoints_seen: 0,
            cancelled_by: None,
        })
    }

    /// Returns once the job has ended. Meanwhile: the first SIGTERM or SIGINT
    /// cancels the job (`received SIG...: cancelling the job ...`), and unless
    /// quiet every checkpoint that completes or fails is printed
    /// ([`print_checkpoints`]), and every `client.progress-interval` of `conf`
    /// the line `[ELAPSEDs] ` + what `progress` makes of the job (stderr).
    pub fn drive(
        &mut self,
        job: &mut JobHandle,
        conf: &Conf,
        mut progress: impl FnMut(&JobHandle) -> String,
    ) {
        let interval = conf.get(&options::PROGRESS_INTERVAL);
        let mut next_report = interval;
        while !job.is_done() {
            std::thread::sleep(Duration::from_millis(10));
            if let (None, Some(sig)) = (self.cancelled_by, self.termination.received()) {
                eprintln!("received {sig}: cancelling the job (a second {sig} exits at once)");
                job.cancel();
                self.cancelled_by = Some(sig);
            }
            if !self.quiet {
                self.checkpoints_seen =
                    print_checkpoints(&job.checkpoint_stats(), self.checkpoints_seen);
            }
            if !self.quiet && job.elapsed() >= next_report {
                next_report += interval;
                let line = progress(job);
                eprintln!("[{:>6.1}s] {line}", job.elapsed().as_secs_f64());
            }
        }
    }

    /// The ended job's result; unless quiet, prints the checkpoints
    /// [`Driver::drive`] has not printed yet. The job's error if it failed or
    /// was cancelled: `ERROR (on SIGTERM)` when a signal cancelled it; else,
    /// with `serve`, the error is printed (`error: ...`) and the web UI served
    /// until a signal ([`Driver::serve`]) before it is returned.
    pub fn finish(&mut self, job: JobHandle) -> anyhow::Result<JobResult> {
        let result = match (job.wait(), self.cancelled_by) {
            (Ok(r), _) => r,
            (Err(e), Some(sig)) => anyhow::bail!("{e} (on {sig})"),
            (Err(e), None) => {
                // A failed or cancelled job is worth a look in the UI too.
                if self.serve {
                    eprintln!("error: {e}");
                    self.serve();
                }
                return Err(e.into());
            }
        };
        if !self.quiet {
            print_checkpoints(&result.checkpoints, self.checkpoints_seen);
        }
        Ok(result)
    }

    /// With `serve` (`--serve`): the job has ended (finished, failed or
    /// cancelled); the REST API and web UI keep answering until SIGTERM or
    /// Ctrl-C (stdout is flushed first). Without, or when no REST server
    /// runs: returns at once.
    pub fn serve(&self) {
        if !self.serve {
            return;
        }
        if let Some(addr) = weir_runtime::rest::address() {
            eprintln!("the job ended; still serving the web UI on http://{addr}/ (Ctrl-C stops)");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            while self.termination.received().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The rate of a count that grows, per second between two calls of
/// [`Rate::of`]: for progress lines.
pub struct Rate {
    last: u64,
    since: Instant,
}

impl Default for Rate {
    /// Counting from 0, now.
    fn default() -> Rate {
        Rate {
            last: 0,
            since: Instant::now(),
        }
    }
}

impl Rate {
    /// Per second since the previous call (or [`Rate::default`]): `count`
    /// less the previous count (0 if it went down).
    pub fn of(&mut self, count: u64) -> f64 {
        let rate = count.saturating_sub(self.last) as f64 / self.since.elapsed().as_secs_f64();
        (self.last, self.since) = (count, Instant::now());
        rate
    }
}

/// Options every example takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfArgs {
    /// Sets a configuration option, e.g. -D parallelism.default=2 (repeatable).
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    pub dynamic: Vec<String>,
    /// Restores from a checkpoint or savepoint: a `chk-<n>` or `savepoint-...`
    /// directory (or its `_metadata`), or a job directory (its latest complete
    /// checkpoint). Same as -D execution.state-recovery.path=PATH.
    #[arg(short = 's', long = "from-checkpoint", value_name = "PATH")]
    pub from_checkpoint: Option<std::path::PathBuf>,
    /// Runs this process as the JobManager of a cluster (schedules the job
    /// on TaskManagers started with the same arguments plus --taskmanager).
    /// Same as -D execution.target=cluster -D cluster.role=jobmanager.
    #[arg(long, conflicts_with = "taskmanager")]
    pub jobmanager: bool,
    /// Runs this process as a TaskManager of a cluster: registers
    /// taskmanager.numberOfTaskSlots slots with the JobManager at
    /// jobmanager.rpc.address:jobmanager.rpc.port and runs the subtasks it
    /// is given. Same as -D execution.target=cluster -D cluster.role=taskmanager.
    #[arg(long)]
    pub taskmanager: bool,
}

impl ConfArgs {
    /// Loads the configuration: defaults, `conf/weir.yaml` (or `$WEIR_CONF_DIR/weir.yaml`),
    /// `WEIR_*` environment variables, then the `-D` options, then `-s`.
    pub fn load(&self) -> Result<Conf, ConfigError> {
        let mut dynamic = self.dynamic.clone();
        for (flag, role) in [
            (self.jobmanager, "jobmanager"),
            (self.taskmanager, "taskmanager"),
        ] {
            if flag {
                dynamic.push("execution.target=cluster".into());
                dynamic.push(format!("cluster.role={role}"));
                if role == "taskmanager" {
                    // The JobManager serves the REST API and the web UI.
                    dynamic.push("rest.enabled=false".into());
                }
            }
        }
        if let Some(p) = &self.from_checkpoint {
            dynamic.push(format!("execution.state-recovery.path={}", p.display()));
        }
        Conf::load(&dynamic)
    }
}

/// Prints one line per checkpoint that completed or failed since `seen`
/// (the highest id already printed); returns the new highest id.
pub fn print_checkpoints(stats: &[weir_runtime::checkpoint::CheckpointStats], seen: u64) -> u64 {
    use weir_runtime::checkpoint::CheckpointStatus;
    let mut high = seen;
    for s in stats.iter().filter(|s| s.id > seen) {
        match s.status {
            CheckpointStatus::InProgress => break,
            CheckpointStatus::Completed => eprintln!(
                "checkpoint {} completed in {:.1} ms, {} bytes{}",
                s.id,
                s.end_to_end_duration,
                s.checkpointed_size,
                if s.persisted_data > 0 {
                    format!(" ({} bytes in flight)", s.persisted_data)
                } else {
                    String::new()
                }
            ),
            CheckpointStatus::Failed => {
                eprintln!(
                    "checkpoint {} failed: {}",
                    s.id,
                    s.failure_message.as_deref().unwrap_or("unknown")
                )
            }
        }
        high = s.id;
    }
    high
}

/// Logs to stderr; `RUST_LOG` filters (default: warnings and errors).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Formats a rate for people: `31.4 M/s`.
pub fn human_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} /s")
    }
}
