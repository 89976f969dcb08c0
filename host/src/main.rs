//! `sinew`: check, run and serve business backends written as JSON specs.

use sinew_host::{check, run};

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
    Run(run::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Run(args) => match run::run(&args) {
            Ok(run::Outcome::Ok) => 0,
            Ok(run::Outcome::Error) => 1,
            Err(e) => {
                let code = if e.downcast_ref::<run::NotRunnable>().is_some() {
                    3
                } else {
                    2
                };
                eprintln!("error: {e:#}");
                code
            }
        },
    };
    ExitCode::from(code)
}
