//! Command-line pieces shared by the examples and the `weir` tool.
//!
//! Every example accepts `-D key=value` (repeatable) to override any
//! configuration option (see `conf/weir.yaml`), on top of the file and the
//! `WEIR_*` environment variables. [`init_tracing`] sets up logging: `RUST_LOG`
//! (e.g. `RUST_LOG=weir_runtime=debug`) chooses what is shown, warnings by default.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use weir_runtime::config::{Conf, ConfigError};

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
}

impl ConfArgs {
    /// Loads the configuration: defaults, `conf/weir.yaml` (or `$WEIR_CONF_DIR/weir.yaml`),
    /// `WEIR_*` environment variables, then the `-D` options, then `-s`.
    pub fn load(&self) -> Result<Conf, ConfigError> {
        let mut dynamic = self.dynamic.clone();
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
