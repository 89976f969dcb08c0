//! `sinew diff OLD NEW`: what a change of spec does (`sinew_core::diff`).

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Show what a change of spec does, for reviewers and CI.
///
/// The API changes of each tool, breaking (a removed tool or route, a new
/// required input field, a narrowed input schema, a removed output field,
/// fewer roles allowed, a success status or idempotency key changed, an
/// owner added) or compatible; each tool's risk level before and
/// after; the migration from the old spec's schema to the new one's, step
/// by step with its risk and lock; the policies and acknowledgments
/// changed. Exit 0: nothing breaking or destructive; 1: something is; 2: a
/// spec does not load.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The spec as it is (deployed).
    pub old: PathBuf,
    /// The spec as it will be.
    pub new: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::admin::MigrateFormat::Human)]
    pub format: crate::admin::MigrateFormat,
}

/// Runs `sinew diff`; returns the exit code.
pub fn run(args: &Args) -> Result<u8> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read `{}`", p.display()))
    };
    let (old, new) = (read(&args.old)?, read(&args.new)?);
    let d = match sinew_core::diff::diff(&old, &new) {
        Ok(d) => d,
        Err(e) => {
            let path = if e.side == "old" {
                &args.old
            } else {
                &args.new
            };
            eprintln!(
                "error: `{}` is not a valid spec: {} (run `sinew check`)",
                path.display(),
                e.error
            );
            return Ok(2);
        }
    };
    let out = match args.format {
        crate::admin::MigrateFormat::Human => d.human(),
        crate::admin::MigrateFormat::Json => serde_json::to_string(&d)? + "\n",
    };
    crate::write_stdout(&out)?;
    Ok(u8::from(d.breaking || d.destructive))
}
