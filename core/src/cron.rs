//! Five-field cron schedules (minute, hour, day of month, month, day of
//! week) as Vixie cron reads them: each field a list of `*`, a value or a
//! range `a-b`, each optionally with a step `/n`; months and weekdays also
//! by their English three-letter names; weekday 0 and 7 are Sunday. When
//! both day fields are restricted, a day matches if either does; a field
//! that begins with `*` (`*`, `*/2`) counts as unrestricted there, as in
//! Vixie cron, so `0 0 */2 * 1` is Mondays that are odd days.

/// A parsed schedule: the values each field allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month field begins with `*` (unrestricted, for how the
    /// two day fields combine).
    any_day: bool,
    /// The day-of-week field begins with `*`.
    any_weekday: bool,
}

/// One field's name, bounds and value names.
struct Field {
    name: &'static str,
    /// The name with its article, for "is not …".
    a: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        a: "a minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        a: "an hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        a: "a day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        a: "a month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day of week",
        a: "a day of week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

impl Schedule {
    /// Parses `text`; `Err` says which field is wrong and why.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = parts.as_slice() else {
            return Err(format!(
                "a schedule has five fields (minute hour day-of-month month day-of-week), this one {}",
                parts.len()
            ));
        };
        let [f_minute, f_hour, f_day, f_month, f_weekday] = &FIELDS;
        let weekdays = parse_field(weekday, f_weekday)?;
        Ok(Schedule {
            minutes: parse_field(minute, f_minute)?,
            hours: parse_field(hour, f_hour)? as u32,
            days: parse_field(day, f_day)? as u32,
            months: parse_field(month, f_month)? as u16,
            // Sunday is 0 and 7.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }

    /// Whether the schedule fires at this minute of local time (`month`
    /// 1–12, `day` 1–31, `weekday` 0–6 from Sunday).
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        has(self.minutes, minute)
            && has(u64::from(self.hours), hour)
            && self.matches_day(day, month, weekday)
    }

    /// Whether the schedule fires on this day (`month` 1–12, `day` 1–31,
    /// `weekday` 0–6 from Sunday).
    fn matches_day(&self, day: u32, month: u32, weekday: u32) -> bool {
        let by_day = has(u64::from(self.days), day);
        let by_weekday = has(u64::from(self.weekdays), weekday);
        // Vixie cron: either field unrestricted, both must match (a `*`
        // allows every value); both restricted, either.
        let day_ok = if self.any_day || self.any_weekday {
            by_day && by_weekday
        } else {
            by_day || by_weekday
        };
        has(u64::from(self.months), month) && day_ok
    }

    /// The first instant strictly after `after` at which the schedule
    /// fires in time zone `tz`; `None` if it never does in the next four
    /// years (`0 0 30 2 *`). Each local time fires once: a time the clocks
    /// skip (spring forward) fires when they jump, a time they repeat (fall
    /// back) at its first occurrence.
    pub fn next_after(
        &self,
        after: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> Option<jiff::Timestamp> {
        let start = tz.to_datetime(after);
        let mut day = start.date();
        for _ in 0..=4 * 366 {
            let weekday = u32::from(day.weekday().to_sunday_zero_offset().unsigned_abs());
            let (d, m) = (
                day.day().unsigned_abs().into(),
                day.month().unsigned_abs().into(),
            );
            if self.matches_day(d, m, weekday) {
                for hour in (0..24u8).filter(|h| self.hours & (1 << h) != 0) {
                    for minute in (0..60u8).filter(|m| self.minutes & (1 << m) != 0) {
                        let dt = day.at(hour.try_into().ok()?, minute.try_into().ok()?, 0, 0);
                        if let Some(at) = instant(dt, tz)
                            && at > after
                        {
                            return Some(at);
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

impl Schedule {
    /// The latest instant at or before `at` at which the schedule fires in
    /// `tz` (the mirror of [`Schedule::next_after`]); `None` if it did not
    /// in the four years before.
    pub fn latest_at_or_before(
        &self,
        at: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> Option<jiff::Timestamp> {
        // A local time in a gap fires later than it reads: start a day on.
        let mut day = tz.to_datetime(at).date().tomorrow().ok()?;
        for _ in 0..=4 * 366 + 1 {
            let weekday = u32::from(day.weekday().to_sunday_zero_offset().unsigned_abs());
            let (d, m) = (
                day.day().unsigned_abs().into(),
                day.month().unsigned_abs().into(),
            );
            if self.matches_day(d, m, weekday) {
                for hour in (0..24u8).rev().filter(|h| self.hours & (1 << h) != 0) {
                    for minute in (0..60u8).rev().filter(|m| self.minutes & (1 << m) != 0) {
                        let dt = day.at(hour.try_into().ok()?, minute.try_into().ok()?, 0, 0);
                        if let Some(t) = instant(dt, tz)
                            && t <= at
                        {
                            return Some(t);
                        }
                    }
                }
            }
            day = day.yesterday().ok()?;
        }
        None
    }

    /// Whether the schedule fires at exactly `at` in `tz`.
    pub fn fires_at(&self, at: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> bool {
        at.checked_sub(jiff::SignedDuration::from_nanos(1))
            .ok()
            .and_then(|before| self.next_after(before, tz))
            == Some(at)
    }
}

/// What begins the scope of every cron claim. Such a claim, once its run
/// finished, never expires, and pruning keeps each scope's latest: every
/// storage reads scopes this way (the in-memory store, Postgres's `CLAIM`
/// and `prune`).
pub const CLAIM_SCOPE_PREFIX: &str = "cron:";

/// A scheduled time as claims and audit entries write it: RFC 3339 UTC,
/// whole seconds.
pub fn time_text(at: jiff::Timestamp) -> String {
    at.round(jiff::Unit::Second).unwrap_or(at).to_string()
}

/// The idempotency key a run of cron tool `tool` for the scheduled time
/// `at` claims: `cron:<tool>:<at, RFC 3339 UTC>`.
pub fn claim_key(tool: &str, at: jiff::Timestamp) -> String {
    format!("{}:{}", claim_scope(tool), time_text(at))
}

/// The scope every run of cron tool `tool` claims its times in, whoever
/// calls.
pub fn claim_scope(tool: &str) -> String {
    format!("{CLAIM_SCOPE_PREFIX}{tool}")
}

/// The instant a local time names in `tz`: the first of two in a fold,
/// the end of the gap (when the clocks jump) for a time in one.
fn instant(dt: jiff::civil::DateTime, tz: &jiff::tz::TimeZone) -> Option<jiff::Timestamp> {
    use jiff::tz::AmbiguousOffset;
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { before, .. } => {
            // Read with the offset before the gap, the time is past the
            // jump, or on it (the gap's first instant, 02:00 when 02:00
            // becomes 03:00): the jump is the last transition at or before
            // it.
            let past = before.to_timestamp(dt).ok()?;
            let just_after = past.checked_add(jiff::SignedDuration::from_nanos(1)).ok()?;
            tz.preceding(just_after).next().map(|t| t.timestamp())
        }
    }
}

/// Whether bit `v` of `set` is on.
fn has(set: u64, v: u32) -> bool {
    v < 64 && set & (1 << v) != 0
}

/// The set of values one field allows, as bits.
fn parse_field(text: &str, f: &Field) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(n) if n > 0 => (r, Some(n)),
                _ => {
                    return Err(format!(
                        "`{item}` in the {} field: a step is a whole number from 1",
                        f.name
                    ));
                }
            },
            None => (item, None),
        };
        let (lo, hi) = match range {
            "*" => (f.min, f.max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a, f)?, value(b, f)?),
                // `a/n` runs from `a` to the field's end.
                None if step.is_some() => (value(r, f)?, f.max),
                None => {
                    let v = value(r, f)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!(
                "`{item}` in the {} field: a range runs from low to high",
                f.name
            ));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok(set)
}

/// One value of a field: a number within its bounds, or one of its names.
fn value(text: &str, f: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        // Months count from 1, weekdays from 0 (Sunday).
        return Ok(f.min + i as u32);
    }
    match text.parse::<u32>() {
        Ok(v) if (f.min..=f.max).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is not {} ({}–{}{})",
            f.a,
            f.min,
            f.max,
            if f.names.is_empty() {
                String::new()
            } else {
                format!(", or {}", f.names.join(", "))
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_as_vixie_cron_reads_them() {
        let s = Schedule::parse("*/15 3 * * *").unwrap();
        assert!(s.matches(0, 3, 1, 1, 0) && s.matches(45, 3, 9, 12, 4));
        assert!(!s.matches(10, 3, 1, 1, 0) && !s.matches(0, 4, 1, 1, 0));
        // Names, lists, ranges with steps, Sunday as 7.
        let s = Schedule::parse("0 9-17/4 * JAN,jul mon-fri").unwrap();
        assert!(s.matches(0, 13, 5, 7, 3));
        assert!(!s.matches(0, 11, 5, 7, 3), "9, 13, 17 only");
        assert!(!s.matches(0, 9, 5, 2, 3), "January and July only");
        assert!(!s.matches(0, 9, 5, 1, 0), "not on Sunday");
        assert!(Schedule::parse("0 0 * * 7").unwrap().matches(0, 0, 3, 3, 0));
        // Both day fields restricted: either matches.
        let s = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(s.matches(0, 0, 1, 5, 3) && s.matches(0, 0, 9, 5, 1));
        assert!(!s.matches(0, 0, 9, 5, 3));
        // A day field beginning with `*` counts as unrestricted: `*/2` and
        // Monday is an odd day that is a Monday (Vixie cron).
        let s = Schedule::parse("0 0 */2 * 1").unwrap();
        assert!(s.matches(0, 0, 27, 10, 1), "27 October, a Monday");
        assert!(!s.matches(0, 0, 26, 10, 1), "an even day");
        assert!(!s.matches(0, 0, 29, 10, 4), "not a Monday");
        // `a/n` runs to the end of the field.
        let s = Schedule::parse("50/5 * * * *").unwrap();
        assert!(s.matches(55, 0, 1, 1, 0) && !s.matches(0, 0, 1, 1, 0));
    }

    fn next(s: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(s).unwrap();
        let tz = jiff::tz::TimeZone::get(tz).unwrap();
        let mut at: jiff::Timestamp = after.parse().unwrap();
        (0..n)
            .map_while(|_| {
                at = s.next_after(at, &tz)?;
                Some(at.to_string())
            })
            .collect()
    }

    #[test]
    fn fire_times_follow_the_zone_and_its_clock_changes() {
        // Strictly after: at 03:00 itself, the next is the day after.
        assert_eq!(
            next("0 3 * * *", "UTC", "2026-01-01T03:00:00Z", 2),
            ["2026-01-02T03:00:00Z", "2026-01-03T03:00:00Z"]
        );
        // 03:00 in Paris is 02:00Z in winter, 01:00Z in summer.
        assert_eq!(
            next("0 3 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T02:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T01:00:00Z"
            ]
        );
        // 02:30 does not exist in Paris on 29 March 2026 (02:00 → 03:00):
        // it fires when the clocks jump, 01:00Z.
        assert_eq!(
            next("30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        // 02:00 itself, the gap's first instant, too: the nightly job runs
        // that night (it was skipped), in Paris, New York and Santiago
        // (midnight becomes 01:00).
        assert_eq!(
            next("0 2 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z"
            ]
        );
        assert_eq!(
            next("0 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"]
        );
        assert_eq!(
            next("0 0 * * *", "America/Santiago", "2026-09-05T12:00:00Z", 2),
            ["2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z"]
        );
        // 02:30 happens twice on 25 October 2026 (03:00 → 02:00): once, the
        // first time (00:30Z).
        assert_eq!(
            next("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // Every 30 minutes through the repeated hour: each local time once.
        assert_eq!(
            next("*/30 * * * *", "Europe/Paris", "2026-10-24T23:45:00Z", 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:30:00Z"
            ]
        );
        // Rare days, and never.
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00Z"]
        );
        assert!(next("0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z", 1).is_empty());
    }

    #[test]
    fn the_latest_time_mirrors_the_next() {
        let latest = |s: &str, tz: &str, at: &str| {
            let s = Schedule::parse(s).unwrap();
            let tz = jiff::tz::TimeZone::get(tz).unwrap();
            s.latest_at_or_before(at.parse().unwrap(), &tz)
                .map(|t| t.to_string())
        };
        // At a fire time, that time; just before it, the one before.
        assert_eq!(
            latest("0 3 * * *", "UTC", "2026-01-02T03:00:00Z").as_deref(),
            Some("2026-01-02T03:00:00Z")
        );
        assert_eq!(
            latest("0 3 * * *", "UTC", "2026-01-02T02:59:59Z").as_deref(),
            Some("2026-01-01T03:00:00Z")
        );
        // Through the clock changes, the same instants `next_after` gives.
        for (s, tz, from) in [
            ("30 2 * * *", "Europe/Paris", "2026-03-27T12:00:00Z"),
            ("0 2 * * *", "Europe/Paris", "2026-03-27T12:00:00Z"),
            ("30 2 * * *", "Europe/Paris", "2026-10-23T12:00:00Z"),
            ("*/30 * * * *", "Europe/Paris", "2026-10-24T23:45:00Z"),
            ("15 1 * * 1-5", "America/New_York", "2026-03-06T00:00:00Z"),
        ] {
            let times = next(s, tz, from, 6);
            for pair in times.windows(2) {
                let t: jiff::Timestamp = pair[1].parse().unwrap();
                let just_before = t - jiff::SignedDuration::from_secs(1);
                assert_eq!(latest(s, tz, &pair[1]).as_deref(), Some(pair[1].as_str()));
                assert_eq!(
                    latest(s, tz, &just_before.to_string()).as_deref(),
                    Some(pair[0].as_str()),
                    "{s} in {tz} before {t}"
                );
                let sched = Schedule::parse(s).unwrap();
                let zone = jiff::tz::TimeZone::get(tz).unwrap();
                assert!(sched.fires_at(t, &zone) && !sched.fires_at(just_before, &zone));
            }
        }
        assert!(latest("0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z").is_none());
        assert_eq!(
            claim_key("nightly", "2026-01-02T03:00:00.4Z".parse().unwrap()),
            "cron:nightly:2026-01-02T03:00:00Z"
        );
    }

    #[test]
    fn a_wrong_field_is_named() {
        for (text, says) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "`60` is not a minute (0–59)"),
            ("* 24 * * *", "`24` is not an hour"),
            ("* * 0 * *", "`0` is not a day of month (1–31)"),
            ("* * * 13 * ", "`13` is not a month (1–12, or jan"),
            ("* * * * funday", "`funday` is not a day of week"),
            ("*/0 * * * *", "a step is a whole number from 1"),
            ("30-10 * * * *", "a range runs from low to high"),
            ("@daily", "five fields"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
