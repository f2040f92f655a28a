//! The `weir` command-line tool.
//!
//! - `weir config show [-D key=value]...`: every option, its value and where the value came from.
//! - `weir config check [-D key=value]...`: validates the configuration; exit status 1 with the error if invalid.
//! - `weir config keys`: every option with its default, accepted values and description.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::cli::ConfArgs;
use weir::runtime::config::options;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: Flink-style stream processing on actors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and validate configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Shows every option's effective value and its source.
    Show {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Validates the configuration (file, environment, -D).
    Check {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Lists every option with its default and what it accepts.
    Keys,
}

fn main() -> ExitCode {
    weir::cli::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Config { command } => match command {
            ConfigCommand::Show { conf } => match conf.load() {
                Ok(c) => {
                    for (k, v, src) in c.entries() {
                        println!("{k:<50} {v:<12} ({src})");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            ConfigCommand::Check { conf } => match conf.load() {
                Ok(_) => {
                    println!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            ConfigCommand::Keys => {
                for d in options::ALL {
                    println!(
                        "{} (default {}): {}; accepts {}",
                        d.key,
                        d.default,
                        d.doc,
                        d.kind.accepted()
                    );
                }
                ExitCode::SUCCESS
            }
        },
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
