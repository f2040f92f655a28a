//! Command-line pieces shared by the examples and the `weir` tool.
//!
//! Every example accepts `-D key=value` (repeatable) to override any
//! configuration option (see `conf/weir.yaml`), on top of the file and the
//! `WEIR_*` environment variables. [`init_tracing`] sets up logging: `RUST_LOG`
//! (e.g. `RUST_LOG=weir_runtime=debug`) chooses what is shown, warnings by default.

use weir_runtime::config::{Conf, ConfigError};

/// Options every example takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfArgs {
    /// Sets a configuration option, e.g. -D parallelism.default=2 (repeatable).
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    pub dynamic: Vec<String>,
}

impl ConfArgs {
    /// Loads the configuration: defaults, `conf/weir.yaml` (or `$WEIR_CONF_DIR/weir.yaml`),
    /// `WEIR_*` environment variables, then the `-D` options.
    pub fn load(&self) -> Result<Conf, ConfigError> {
        Conf::load(&self.dynamic)
    }
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
