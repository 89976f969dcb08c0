//! `sinew`: check, run and serve business backends written as JSON specs.

use sinew_host::{admin, check, diff, run, schedule, serve, studio};

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc: the interpreter and the JSON it handles are many small,
/// short-lived allocations, where it is about twice as fast as the system
/// allocator (see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<serve::Args>),
    Preview(studio::Args),
    Migrate(admin::MigrateArgs),
    Diff(diff::Args),
    Audit(admin::AuditArgs),
    Outbox(admin::OutboxArgs),
    Keys(admin::KeysArgs),
    Token(admin::TokenArgs),
    Schedule(schedule::Args),
    Component(ComponentArgs),
}

/// Write the core's WebAssembly component (built from these sources) to a
/// file, for other runtimes (wasmtime CLI, jco for Node and the browser).
///
/// The component imports only `sinew:executor/storage`, `clock` and
/// `external`, and exports `executor` and `risk` (see `wit/`). With
/// `--composed`, the core composed onto the in-memory world instead: it
/// imports only `clock` and also exports `memory` (`wit/memory.wit`), as
/// the browser preview runs it. With `--npm DIR`, the npm package
/// `sinew-core` (the composed component transpiled for JavaScript, with its
/// API and TypeScript types): `npm pack DIR` makes the tarball.
#[derive(clap::Args)]
struct ComponentArgs {
    /// Where to write it (default: `sinew.component.wasm`, or
    /// `sinew.composed.wasm` with `--composed`).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Write the core composed onto the in-memory world.
    #[arg(long, conflicts_with = "precompile")]
    composed: bool,
    /// Instead, compile it ahead of time into this cache directory (what
    /// `sinew serve --cache-dir` reads; container images bake it in).
    #[arg(long, value_name = "DIR")]
    precompile: Option<std::path::PathBuf>,
    /// Instead, write the npm package `sinew-core` into this directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["precompile", "composed", "out"])]
    npm: Option<std::path::PathBuf>,
}

/// Output piped into a reader that stopped (`sinew schedule … | head`)
/// ends the command quietly, as it would end any Unix tool (status 141,
/// SIGPIPE's), not with a panic and a backtrace.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Component(ComponentArgs {
            precompile: Some(dir),
            ..
        }) => match sinew_host::runtime::Engine::new(Some(&dir)) {
            Ok(engine) => print(&format!(
                "compiled {} into {}{}\n",
                engine.component_hash,
                dir.display(),
                if engine.from_cache() {
                    " (already there)"
                } else {
                    ""
                }
            )),
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        },
        Command::Component(ComponentArgs { npm: Some(dir), .. }) => {
            match sinew_host::npm::Package::new().and_then(|p| Ok((p.write(&dir)?, p.size()))) {
                Ok((n, size)) => print(&format!(
                    "wrote the npm package sinew-core into {} ({n} files, {size} bytes; `npm pack {}` makes the tarball)\n",
                    dir.display(),
                    dir.display()
                )),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            }
        }
        Command::Component(args) => {
            let (bytes, hash, default) = if args.composed {
                (
                    sinew_host::COMPOSED,
                    sinew_host::COMPOSED_SHA256,
                    "sinew.composed.wasm",
                )
            } else {
                (
                    sinew_host::COMPONENT,
                    sinew_host::COMPONENT_SHA256,
                    "sinew.component.wasm",
                )
            };
            let out = args.out.unwrap_or_else(|| default.into());
            match std::fs::write(&out, bytes) {
                Ok(()) => print(&format!(
                    "wrote {} ({} bytes, sha256:{hash})\n",
                    out.display(),
                    bytes.len(),
                )),
                Err(e) => {
                    eprintln!("error: cannot write `{}`: {e}", out.display());
                    2
                }
            }
        }
        Command::Serve(args) => exit(serve::run(&args)),
        Command::Preview(args) => exit(studio::run(&args)),
        Command::Migrate(args) => exit(admin::migrate(&args)),
        Command::Diff(args) => exit(diff::run(&args)),
        Command::Audit(args) => exit(admin::audit(&args)),
        Command::Outbox(args) => exit(admin::outbox(&args)),
        Command::Keys(args) => exit(admin::keys(&args)),
        Command::Token(args) => exit(admin::token(&args)),
        Command::Schedule(args) => exit(schedule::run(&args)),
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

/// Prints a command's output (see [`sinew_host::write_stdout`]): 0, or 2
/// when it cannot be written.
fn print(text: &str) -> u8 {
    match sinew_host::write_stdout(text) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            2
        }
    }
}

fn exit(r: anyhow::Result<u8>) -> u8 {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}
