//! When a plan runs: a 5-field cron pattern read in an IANA time zone (croner, chrono-tz), and
//! what a scheduler does with the slots it finds.
//!
//! Daylight saving time, as Vixie cron does it: a wall-clock time that does not exist (the
//! spring-forward gap) runs at the next valid time, and a time that exists twice (the fall-back
//! hour) runs once, at its first instance. A gateway that was down over slots runs the latest
//! of them once if it is still within the start window, otherwise records it missed; it never
//! replays a backlog.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// How far back the latest slot is looked for (a yearly pattern has one in a year and a day).
const LOOK_BACK_DAYS: i64 = 367;

/// A parsed schedule: when a plan's slots fall.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    cron: Cron,
    zone: Tz,
}

/// What a scheduler does about a plan at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Due {
    /// Run the slot now (it is the latest, and within its start window).
    Run(DateTime<Utc>),
    /// The latest slot passed more than the start window ago: record it missed, run nothing.
    Missed(DateTime<Utc>),
    /// Nothing is due; the next slot is then (`None`: the pattern has no further slot).
    Wait(Option<DateTime<Utc>>),
}

/// Reads a 5-field cron pattern (minute, hour, day of month, month, day of week).
pub(crate) fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "must be a 5-field cron pattern (minute hour day-of-month month day-of-week), got {fields} field{}",
            if fields == 1 { "" } else { "s" }
        ));
    }
    let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
    let cron = parser.parse(text).map_err(|e| format!("is not a valid cron pattern: {e}"))?;
    // A pattern that never matches (30 February) would never run: say so now.
    let probe = DateTime::<Utc>::UNIX_EPOCH;
    if cron.find_next_occurrence(&probe, false).is_err() {
        return Err("matches no time at all".to_owned());
    }
    Ok(cron)
}

/// Reads an IANA time zone name (`Europe/Berlin`, `UTC`).
pub(crate) fn parse_zone(text: &str) -> Result<Tz, String> {
    Tz::from_str(text).map_err(|_| format!("{text:?} is not an IANA time zone name (such as Europe/Berlin or UTC)"))
}

impl Schedule {
    /// Parses a pattern and a zone; each error names its field.
    pub(crate) fn parse(pattern: &str, zone: &str) -> Result<Schedule, (&'static str, String)> {
        let cron = parse_cron(pattern).map_err(|e| ("schedule", e))?;
        let zone = parse_zone(zone).map_err(|e| ("timezone", e))?;
        Ok(Schedule { cron, zone })
    }

    /// The first slot strictly after `after`.
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.with_timezone(&self.zone);
        // Bounded: each round passes one instance of a repeated hour.
        for _ in 0..4 {
            let found = self.cron.find_next_occurrence(&from, false).ok()?;
            if self.is_second_instance(&found) {
                from = found;
                continue;
            }
            return Some(found.with_timezone(&Utc));
        }
        None
    }

    /// The latest slot at or before `at` (within a year), if any.
    pub(crate) fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let floor = at - chrono::Duration::days(LOOK_BACK_DAYS);
        let mut before = at.with_timezone(&self.zone);
        let mut inclusive = true;
        for _ in 0..4 {
            let found = self.cron.find_previous_occurrence(&before, inclusive).ok()?;
            if found.with_timezone(&Utc) < floor {
                return None;
            }
            if self.is_second_instance(&found) {
                before = found;
                inclusive = false;
                continue;
            }
            return Some(found.with_timezone(&Utc));
        }
        None
    }

    /// Whether `t` is the later instance of a wall-clock time the zone has twice.
    fn is_second_instance(&self, t: &DateTime<Tz>) -> bool {
        match self.zone.from_local_datetime(&t.naive_local()) {
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc) != t.with_timezone(&Utc),
            _ => false,
        }
    }

    /// What is due at `now` for a plan whose latest recorded slot (run or missed) is `last`,
    /// applied at `since` (slots before it are not its), with the start window `window`.
    pub(crate) fn due(
        &self,
        now: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
        since: DateTime<Utc>,
        window: Duration,
    ) -> Due {
        let floor = last.map_or(since, |last| last.max(since));
        match self.latest_at_or_before(now) {
            // Only the latest: any earlier slot not run is a backlog, and never replayed.
            Some(slot) if slot > floor || (last.is_none() && slot == since) => {
                let late = (now - slot).to_std().unwrap_or_default();
                if late <= window { Due::Run(slot) } else { Due::Missed(slot) }
            }
            _ => Due::Wait(self.next_after(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn slots(schedule: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut at = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            at = schedule.next_after(at).unwrap();
            out.push(at.to_rfc3339());
        }
        out
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn every_minute_is_every_minute() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(
            slots(&s, "2026-12-03T10:00:30Z", 3),
            ["2026-12-03T10:01:00+00:00", "2026-12-03T10:02:00+00:00", "2026-12-03T10:03:00+00:00"]
        );
    }

    #[test]
    fn three_in_berlin_is_two_utc_in_winter_and_one_in_summer() {
        let s = Schedule::parse("0 3 * * *", "Europe/Berlin").unwrap();
        assert_eq!(slots(&s, "2026-12-03T12:00:00Z", 1), ["2026-12-04T02:00:00+00:00"]);
        assert_eq!(slots(&s, "2026-07-01T12:00:00Z", 1), ["2026-07-02T01:00:00+00:00"]);
    }

    #[test]
    fn a_time_in_the_spring_gap_runs_at_the_next_valid_time_once() {
        // 2026-03-29: Berlin's clocks go from 02:00 CET straight to 03:00 CEST.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let got = slots(&s, "2026-03-27T12:00:00Z", 4);
        assert_eq!(got[0], "2026-03-28T01:30:00+00:00", "02:30 CET");
        // 02:30 does not exist on the 29th: the next valid time, 03:00 CEST, is 01:00 UTC.
        assert_eq!(got[1], "2026-03-29T01:00:00+00:00", "{got:?}");
        assert_eq!(got[2], "2026-03-30T00:30:00+00:00", "02:30 CEST");
        assert_eq!(got[3], "2026-03-31T00:30:00+00:00");
    }

    #[test]
    fn a_time_in_the_repeated_autumn_hour_runs_once() {
        // 2026-10-25: Berlin's clocks go from 03:00 CEST back to 02:00 CET; 02:30 is there twice.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let got = slots(&s, "2026-10-24T12:00:00Z", 3);
        assert_eq!(got, ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00", "2026-10-27T01:30:00+00:00"]);
        // Seen from inside the repeated hour, the second 02:30 is not a slot either.
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T01:45:00Z")),
            Some(utc("2026-10-25T00:30:00Z")),
            "the latest slot is the first 02:30"
        );
    }

    #[test]
    fn three_oclock_daily_is_once_a_day_across_both_changes() {
        let s = Schedule::parse("0 3 * * *", "Europe/Berlin").unwrap();
        for (from, expect) in [
            ("2026-03-28T12:00:00Z", ["2026-03-29T01:00:00+00:00", "2026-03-30T01:00:00+00:00"]),
            ("2026-10-24T12:00:00Z", ["2026-10-25T02:00:00+00:00", "2026-10-26T02:00:00+00:00"]),
        ] {
            assert_eq!(slots(&s, from, 2), expect);
        }
    }

    #[test]
    fn a_slot_is_run_when_due_and_not_again() {
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        let since = utc("2026-12-01T00:00:00Z");
        let now = utc("2026-12-03T03:00:05Z");
        assert_eq!(s.due(now, None, since, HOUR), Due::Run(utc("2026-12-03T03:00:00Z")));
        let last = Some(utc("2026-12-03T03:00:00Z"));
        assert_eq!(s.due(now, last, since, HOUR), Due::Wait(Some(utc("2026-12-04T03:00:00Z"))));
    }

    #[test]
    fn a_slot_missed_inside_its_window_runs_late_and_outside_it_is_missed() {
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        let since = utc("2026-12-01T00:00:00Z");
        let last = Some(utc("2026-12-02T03:00:00Z"));
        assert_eq!(
            s.due(utc("2026-12-03T03:59:00Z"), last, since, HOUR),
            Due::Run(utc("2026-12-03T03:00:00Z")),
            "59 minutes late, the window is 60"
        );
        assert_eq!(
            s.due(utc("2026-12-03T04:01:00Z"), last, since, HOUR),
            Due::Missed(utc("2026-12-03T03:00:00Z")),
            "61 minutes late"
        );
    }

    #[test]
    fn a_long_outage_is_no_backlog() {
        // Down for ten days: only the latest slot is considered, once.
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        let since = utc("2026-11-01T00:00:00Z");
        let last = Some(utc("2026-11-20T03:00:00Z"));
        let now = utc("2026-11-30T03:10:00Z");
        assert_eq!(s.due(now, last, since, HOUR), Due::Run(utc("2026-11-30T03:00:00Z")));
        let after = Some(utc("2026-11-30T03:00:00Z"));
        assert_eq!(s.due(now, after, since, HOUR), Due::Wait(Some(utc("2026-12-01T03:00:00Z"))));
        // Back after the window: the latest is missed, and nothing older is run.
        let now = utc("2026-11-30T09:00:00Z");
        assert_eq!(s.due(now, last, since, HOUR), Due::Missed(utc("2026-11-30T03:00:00Z")));
        assert_eq!(s.due(now, after, since, HOUR), Due::Wait(Some(utc("2026-12-01T03:00:00Z"))));
    }

    #[test]
    fn slots_before_the_plan_was_applied_are_not_its() {
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        let since = utc("2026-12-03T03:30:00Z");
        assert_eq!(s.due(utc("2026-12-03T03:40:00Z"), None, since, HOUR), Due::Wait(Some(utc("2026-12-04T03:00:00Z"))));
    }

    #[test]
    fn bad_patterns_and_zones_say_why() {
        for (pattern, says) in [
            ("0 3 * *", "5-field"),
            ("0 0 3 * * *", "5-field"),
            ("61 3 * * *", "not a valid cron pattern"),
            ("0 25 * * *", "not a valid cron pattern"),
            ("0 3 30 2 *", "matches no time"),
            ("@daily", "5-field"),
            ("", "5-field"),
        ] {
            let error = parse_cron(pattern).unwrap_err();
            assert!(error.contains(says), "{pattern:?}: {error}");
        }
        assert!(parse_zone("Europe/Berlln").unwrap_err().contains("IANA"));
        assert!(parse_zone("Europe/Berlin").is_ok() && parse_zone("UTC").is_ok());
        assert_eq!(Schedule::parse("0 3 * * *", "Mars/Olympus").unwrap_err().0, "timezone");
    }
}
