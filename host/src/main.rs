//! `sinew`: check, run and serve business backends written as JSON specs.

mod check;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// sinew runs business backends written as JSON specs.
///
/// A spec describes entities, tools (API endpoints with a flow graph),
/// externals and policies. `sinew check` judges every tool Green, Yellow or
/// Red before anything is deployed.
#[derive(Parser)]
#[command(name = "sinew", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Check(check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => check::run(&args),
    };
    ExitCode::from(code)
}
