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
            zone: tz,
        } = &tool.trigger
        else {
            continue;
        };
        any = true;
        println!("{name}  `{schedule}` in {timezone}");
        let mut at = after;
        let mut listed = 0;
        while listed < args.count {
            let Some(next) = times.next_after(at, tz) else {
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

/// One cron tool as `sinew serve` runs it.
#[derive(Clone)]
pub struct Job {
    /// The tool.
    pub tool: String,
    /// The roles its runs have (the tool's `auth.roles`).
    pub roles: Vec<String>,
    /// Its schedule, as written.
    pub schedule: String,
    /// Its time zone's name.
    pub timezone: String,
    times: sinew_core::cron::Schedule,
    zone: jiff::tz::TimeZone,
}

impl Job {
    /// Whether `at` (RFC 3339) is one of the job's times.
    pub fn fires_at(&self, at: &str) -> bool {
        at.parse::<jiff::Timestamp>()
            .is_ok_and(|t| self.times.fires_at(t, &self.zone))
    }
}

/// The cron tools of a spec (those with spec errors are not served).
pub fn jobs(spec: &sinew_core::spec::Spec) -> Vec<Job> {
    spec.tools
        .iter()
        .filter(|(name, _)| !spec.broken_tools.contains(*name))
        .filter_map(|(name, tool)| match &tool.trigger {
            Trigger::Cron {
                schedule,
                times,
                timezone,
                zone,
            } => Some(Job {
                tool: name.clone(),
                roles: tool.auth.roles.clone(),
                schedule: schedule.clone(),
                timezone: timezone.clone(),
                times: times.clone(),
                zone: zone.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// How a scheduled run ended, for the scheduler.
pub enum Ran {
    /// Run (or answered from an earlier run): this time is done.
    Done,
    /// Another instance holds the time's claim and has not finished, or
    /// the database is unavailable: ask again later (a claim abandoned by a
    /// crashed instance is taken over after 15 minutes).
    Later,
}

/// How often a time whose claim another instance holds is asked again.
const LATER_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest sleep between looks at the clock (a clock set forward is
/// noticed within it).
const LONGEST_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `job` forever: at each scheduled time, and once at the start for
/// the latest time missed since `first_seen` (ms; when the database first
/// recorded this schedule), if no instance ran it. `now` reads the clock;
/// `poll` set, the clock is read that often (a test clock moves without
/// the scheduler sleeping); `run` executes the tool for a time.
pub async fn run_job<F, Fut>(
    job: Job,
    first_seen: i64,
    now: impl Fn() -> i64,
    poll: Option<std::time::Duration>,
    run: F,
) where
    F: Fn(jiff::Timestamp) -> Fut,
    Fut: std::future::Future<Output = Ran>,
{
    let Ok(first_seen) = jiff::Timestamp::from_millisecond(first_seen) else {
        return;
    };
    // The latest time handled; none before the schedule was recorded.
    let mut done: Option<jiff::Timestamp> = None;
    let mut retry_at: Option<jiff::Timestamp> = None;
    loop {
        let Ok(t_now) = jiff::Timestamp::from_millisecond(now()) else {
            return;
        };
        let due = job
            .times
            .latest_at_or_before(t_now, &job.zone)
            .filter(|t| *t >= first_seen && done.is_none_or(|d| *t > d));
        if let Some(at) = due
            && retry_at.is_none_or(|r| t_now >= r)
        {
            match run(at).await {
                Ran::Done => {
                    done = Some(at);
                    retry_at = None;
                }
                Ran::Later => {
                    retry_at = Some(
                        t_now + jiff::SignedDuration::try_from(LATER_RETRY).unwrap_or_default(),
                    );
                }
            }
            continue;
        }
        let wait = match poll {
            Some(p) => p,
            None => {
                let next = job.times.next_after(t_now, &job.zone);
                let until = [next, retry_at]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.duration_since(t_now).unsigned_abs())
                    .unwrap_or(LONGEST_SLEEP);
                until.min(LONGEST_SLEEP)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
