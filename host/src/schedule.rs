//! `sinew schedule`: the next times a spec's `cron` tools fire.

use anyhow::{Context, Result};
use sinew_core::model::Trigger;
use std::path::PathBuf;

/// List the next times each `cron` tool of a spec fires, in UTC and in
/// its time zone.
///
/// A local time the clocks skip (spring forward) fires when they jump; one
/// they repeat (fall back) fires once, the first time.
#[derive(clap::Args)]
pub struct Args {
    /// The spec.
    spec: PathBuf,
    /// How many times per tool.
    #[arg(long, default_value_t = 5)]
    count: usize,
    /// List the times after this instant (RFC 3339; default: now).
    #[arg(long)]
    after: Option<String>,
}

/// Prints the schedule; returns the exit code (0, or 3 for a spec that does
/// not load).
pub fn run(args: &Args) -> Result<u8> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("cannot read the spec `{}`", args.spec.display()))?;
    let loaded = sinew_core::spec::load(&text);
    if let Some(d) = loaded.errors.first() {
        eprintln!(
            "error: `{}` is not a valid spec: {} at {} (run `sinew check`)",
            args.spec.display(),
            d.message,
            d.path
        );
        return Ok(3);
    }
    let after: jiff::Timestamp = match &args.after {
        Some(t) => t
            .parse()
            .with_context(|| format!("`--after {t}` is not an RFC 3339 time"))?,
        None => jiff::Timestamp::now(),
    };
    let mut any = false;
    for (name, tool) in &loaded.spec.tools {
        let Trigger::Cron {
            schedule,
            times,
            timezone,
        } = &tool.trigger
        else {
            continue;
        };
        any = true;
        let tz = jiff::tz::TimeZone::get(timezone)
            .with_context(|| format!("unknown time zone `{timezone}`"))?;
        println!("{name}  `{schedule}` in {timezone}");
        let mut at = after;
        let mut listed = 0;
        while listed < args.count {
            let Some(next) = times.next_after(at, &tz) else {
                if listed == 0 {
                    println!("  never (no such day in the next four years)");
                }
                break;
            };
            let local = next.to_zoned_datetime(tz.clone());
            println!(
                "  {}  {}",
                next.strftime("%Y-%m-%dT%H:%M:%SZ"),
                local.strftime("%Y-%m-%d %H:%M %Z")
            );
            at = next;
            listed += 1;
        }
    }
    if !any {
        println!("no tool of `{}` has a cron trigger", args.spec.display());
    }
    Ok(0)
}
