//! A cron job's fires with its calendar rules applied: the one place where
//! fire times are produced. The scheduler ([`super::scheduler`]), `kedge
//! plan` (upcoming fires and the forecast) and backfills all call
//! [`fires_between`] / [`next_fire`], so what the forecast shows is what
//! runs.
//!
//! # Expected flow
//!
//! 1. The cron expression gives its times (in the job's time zone, with
//!    Debian cron's DST rules, [`super::cron`]).
//! 2. The day of each time (its local date) decides: with `business_days`,
//!    the day must be the n-th (or n-th last) business day of its month;
//!    otherwise it must be a working day (`calendar`, minus
//!    `exclude_calendar`), or `shift: next | previous` moves the fire to
//!    the nearest working day at the same local time; `none`/`skip` drop it.
//! 3. A fire inside a `blackout` window is skipped (a fire recorded as
//!    `skipped: blackout`) or, with `on_blackout: defer`, moved to the
//!    window's end.
//! 4. Fires that land on the same instant (shifted onto a day with its own
//!    fire, deferred to the same window end) are one fire.
//!
//! # Guarantees
//!
//! A fire's time depends only on the definition and its calendars, never on
//! when it is asked for: `fires_between(a, c)` is `fires_between(a, b)`
//! followed by `fires_between(b, c)`, so a scheduler that resumes after its
//! last recorded fire neither repeats nor drops one. Fire times never go
//! past 2100 (the cron search's end).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::calendar::{DayStatus, Weekdays};
use crate::config::job::CronTrigger;
use crate::config::rules::{Blackout, OnBlackout, Shift};

/// One fire of a cron job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fire {
    /// When it fires (the time the scheduler records it under).
    pub at: DateTime<Utc>,
    /// The cron expression's time it comes from (differs when shifted or deferred).
    pub cron_time: DateTime<Utc>,
    /// Run, deferred or skipped.
    pub outcome: Planned,
    /// The rule that placed it: `cron 30 2 * * * on bank working day`,
    /// `shifted next from 2026-12-25 (holiday)`, `business day -1 of 2026-12`.
    pub rule: String,
}

/// What a fire does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Planned {
    /// Runs at `at`.
    Run,
    /// Runs at `at`, the end of the blackout window its cron time fell in.
    Deferred { window: String },
    /// Does not run: `reason` starts with `blackout`.
    Skipped { reason: String },
}

impl Fire {
    /// The fire's outcome and rule in a few words, for `kedge plan`.
    pub fn describe(&self) -> String {
        match &self.outcome {
            Planned::Run => self.rule.clone(),
            Planned::Deferred { .. } => self.rule.clone(),
            Planned::Skipped { reason } => format!("skipped: {reason} ({})", self.rule),
        }
    }
}

/// How many cron times one call looks at, at most.
const MAX_CRON_TIMES: usize = 200_000;
/// How far `shift` looks for a working day, and scans for days that shift.
const SEARCH_DAYS: u32 = 366;

/// Every fire with `after < at <= until`, ascending.
pub fn fires_between(c: &CronTrigger, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Fire> {
    Eval::new(c).between(after, until)
}

/// The first fire after `after` (of any outcome), or `None` when the
/// schedule has no further one.
pub fn next_fire(c: &CronTrigger, after: DateTime<Utc>) -> Option<Fire> {
    let mut ev = Eval::new(c);
    if c.rules.is_empty() {
        return c
            .schedule
            .next_after(after, c.timezone)
            .map(|t| ev.plain(t));
    }
    // Widening windows: cheap for frequent schedules, few steps for rare ones.
    let mut span = Duration::hours(1);
    let end = NaiveDate::from_ymd_opt(2101, 1, 1)?
        .and_hms_opt(0, 0, 0)?
        .and_utc();
    let mut lo = after;
    while lo < end {
        let hi = (lo + span).min(end);
        // Past `lo` (not `after`), a shift previous may still place a fire
        // before `hi` from a later day: `between` scans for those.
        if let Some(f) = ev.between(after, hi).into_iter().next() {
            return Some(f);
        }
        lo = hi;
        span = span * 2;
    }
    None
}

/// Up to `n` fires after `after`, ascending.
pub fn upcoming(c: &CronTrigger, after: DateTime<Utc>, n: usize) -> Vec<Fire> {
    let mut out = Vec::new();
    let mut cursor = after;
    while out.len() < n {
        let Some(f) = next_fire(c, cursor) else { break };
        cursor = f.at;
        out.push(f);
    }
    out
}

/// One evaluation, with per-day and per-month caches.
struct Eval<'a> {
    c: &'a CronTrigger,
    tz: Tz,
    status: HashMap<NaiveDate, DayStatus>,
    months: HashMap<(i32, u32), Vec<NaiveDate>>,
}

impl<'a> Eval<'a> {
    fn new(c: &'a CronTrigger) -> Self {
        Eval {
            c,
            tz: c.timezone,
            status: HashMap::new(),
            months: HashMap::new(),
        }
    }

    fn plain(&mut self, t: DateTime<Utc>) -> Fire {
        Fire {
            at: t,
            cron_time: t,
            outcome: Planned::Run,
            rule: format!("cron {}", self.c.schedule),
        }
    }

    fn between(&mut self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Fire> {
        if until <= after {
            return Vec::new();
        }
        if self.c.rules.is_empty() {
            let mut times = BTreeSet::new();
            self.collect(after, until, &mut times);
            return times.into_iter().map(|t| self.plain(t)).collect();
        }
        let rules = &self.c.rules;
        let tick = Duration::nanoseconds(1);
        let mut times = BTreeSet::new();
        self.collect(after, until, &mut times);
        // Cron times before `after` that land after it: deferred past a
        // blackout that `after` is in, ...
        if rules.on_blackout == OnBlackout::Defer {
            if let Some(start) = self.span_start(after) {
                self.collect(start - tick, after, &mut times);
            }
        }
        // ... or shifted forward from the days off just before it.
        // (Fires of the days off before `after`'s day land on it, or later,
        // when it is a working day.)
        if rules.shift == Shift::Next {
            let first = self.date(after);
            let mut d = first;
            for _ in 0..SEARCH_DAYS {
                if self.day_status(d) != DayStatus::Working {
                    self.collect(self.day_start(d) - tick, after, &mut times);
                } else if d != first {
                    break;
                }
                let Some(prev) = d.pred_opt() else { break };
                d = prev;
            }
        }
        // Cron times after `until` shifted back onto it or before.
        // (Likewise, fires of the days off after `until`'s day land on it.)
        if rules.shift == Shift::Previous {
            let last = self.date(until);
            let mut d = last;
            for _ in 0..SEARCH_DAYS {
                let Some(next) = d.succ_opt() else { break };
                if self.day_status(d) != DayStatus::Working {
                    let day_end = self.day_start(next) - tick;
                    self.collect(until, day_end, &mut times);
                } else if d != last {
                    break;
                }
                d = next;
            }
        }
        let placed: Vec<(Fire, u8)> = times.into_iter().filter_map(|t| self.place(t)).collect();
        let mut fires: Vec<(Fire, u8)> = placed
            .into_iter()
            .map(|(f, rank)| (self.blackout(f), rank))
            .filter(|(f, _)| f.at > after && f.at <= until)
            .collect();
        // One fire per instant: a day's own fire wins over one shifted or
        // deferred onto it, and the earliest cron time among equals.
        let key = |f: &Fire, rank: u8| (f.at, rank, f.at != f.cron_time, f.cron_time);
        fires.sort_by_key(|(f, rank)| key(f, *rank));
        fires.dedup_by(|later, first| later.0.at == first.0.at);
        fires.into_iter().map(|(f, _)| f).collect()
    }

    /// The cron times in `(after, until]`, into `out`.
    fn collect(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        out: &mut BTreeSet<DateTime<Utc>>,
    ) {
        let mut t = after;
        for _ in 0..MAX_CRON_TIMES {
            match self.c.schedule.next_after(t, self.tz) {
                Some(x) if x <= until => {
                    out.insert(x);
                    t = x;
                }
                _ => break,
            }
        }
    }

    /// The day rules for cron time `t`: the fire (before blackouts) and
    /// its rank among fires at one instant (0: on its own day).
    fn place(&mut self, t: DateTime<Utc>) -> Option<(Fire, u8)> {
        let rules = &self.c.rules;
        let expr = self.c.schedule.to_string();
        let d = self.date(t);
        let fire = |at, rule| Fire {
            at,
            cron_time: t,
            outcome: Planned::Run,
            rule,
        };
        if !rules.business_days.is_empty() {
            let label = self.business_label(d)?;
            return Some((fire(t, format!("{label} (cron {expr})")), 0));
        }
        match self.day_status(d) {
            DayStatus::Working => {
                let rule = match (&rules.calendar, &rules.exclude_calendar) {
                    (Some(c), _) => format!("cron {expr} on {} working day", c.name),
                    (None, Some(x)) => format!("cron {expr}, not a {} working day", x.name),
                    (None, None) => format!("cron {expr}"),
                };
                Some((fire(t, rule), 0))
            }
            DayStatus::Off(why) => {
                let forward = match rules.shift {
                    Shift::Next => true,
                    Shift::Previous => false,
                    Shift::None | Shift::Skip => return None,
                };
                let mut target = d;
                for _ in 0..SEARCH_DAYS {
                    target = if forward {
                        target.succ_opt()?
                    } else {
                        target.pred_opt()?
                    };
                    if self.day_status(target) == DayStatus::Working {
                        let naive = target.and_time(self.cron_time_of_day(t));
                        let at = local_instant(&self.tz, naive, None)?;
                        let how = if forward { "next" } else { "previous" };
                        return Some((
                            fire(at, format!("shifted {how} from {d} ({why}) (cron {expr})")),
                            1,
                        ));
                    }
                }
                None
            }
        }
    }

    /// Applies the blackout windows to a placed fire.
    fn blackout(&self, mut f: Fire) -> Fire {
        let Some((window, _)) = self.window_at(f.at) else {
            return f;
        };
        match self.c.rules.on_blackout {
            OnBlackout::Skip => {
                f.outcome = Planned::Skipped {
                    reason: format!("blackout ({window})"),
                }
            }
            OnBlackout::Defer => {
                let from = f.at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M");
                f.at = self.window_end(f.at);
                f.rule = format!("{}; deferred from {from} by blackout ({window})", f.rule);
                f.outcome = Planned::Deferred {
                    window: window.to_string(),
                };
            }
        }
        f
    }

    /// The blackout window `at` is in, with its local end.
    fn window_at(&self, at: DateTime<Utc>) -> Option<(&'a Blackout, NaiveDateTime)> {
        self.window_bounds(at).map(|(b, _, end)| (b, end))
    }

    /// The blackout window `at` is in, with its local start and end.
    fn window_bounds(
        &self,
        at: DateTime<Utc>,
    ) -> Option<(&'a Blackout, NaiveDateTime, NaiveDateTime)> {
        let n = at.with_timezone(&self.tz).naive_local();
        let day = n.date();
        let rules: &'a crate::config::rules::Rules = &self.c.rules;
        for b in &rules.blackout {
            for start_day in [day.pred_opt()?, day] {
                if !b.starts_on(start_day) {
                    continue;
                }
                let (s, e) = match b.times {
                    None => (
                        start_day.and_hms_opt(0, 0, 0)?,
                        start_day.succ_opt()?.and_hms_opt(0, 0, 0)?,
                    ),
                    Some((from, to)) => {
                        let end_day = if to > from {
                            start_day
                        } else {
                            start_day.succ_opt()?
                        };
                        (start_day.and_time(from), end_day.and_time(to))
                    }
                };
                if s <= n && n < e {
                    return Some((b, s, e));
                }
            }
        }
        None
    }

    /// The first instant at or after `at` outside every blackout window.
    fn window_end(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let mut cur = at;
        for _ in 0..1000 {
            let Some((_, end)) = self.window_at(cur) else {
                return cur;
            };
            match local_instant(&self.tz, end, Some(cur)) {
                Some(x) => cur = x,
                None => return cur,
            }
        }
        cur
    }

    /// The start of the run of blackout windows `at` is in, if it is in one.
    fn span_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut start = None;
        let mut cur = at;
        for _ in 0..1000 {
            let Some((_, s, _)) = self.window_bounds(cur) else {
                break;
            };
            let s = local_instant(&self.tz, s, None)?;
            if start.is_some_and(|x| s >= x) || s > cur {
                break;
            }
            start = Some(s);
            cur = s - Duration::nanoseconds(1);
        }
        start
    }

    /// The time of day the cron expression named for the fire at `t`: its
    /// local time, unless that came from a spring-forward gap (02:30 fired
    /// at 03:00), then the matching time before it.
    fn cron_time_of_day(&self, t: DateTime<Utc>) -> chrono::NaiveTime {
        let local = t.with_timezone(&self.tz).time();
        let mut x = local;
        for _ in 0..(3 * 3600) {
            if self.c.schedule.matches_time(x) {
                return x;
            }
            x -= Duration::seconds(1);
        }
        local
    }

    fn date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The first instant of local date `d`.
    fn day_start(&self, d: NaiveDate) -> DateTime<Utc> {
        d.and_hms_opt(0, 0, 0)
            .and_then(|n| local_instant(&self.tz, n, None))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether `d` is a working day for the job: a working day of
    /// `calendar` (any day without one) that is not one of `exclude_calendar`.
    fn day_status(&mut self, d: NaiveDate) -> DayStatus {
        let rules = &self.c.rules;
        self.status
            .entry(d)
            .or_insert_with(|| {
                if let Some(x) = rules.exclude_calendar.as_ref().filter(|x| x.is_working(d)) {
                    return DayStatus::Off(format!("a {} working day", x.name));
                }
                match &rules.calendar {
                    Some(c) => c.status(d),
                    None => DayStatus::Working,
                }
            })
            .clone()
    }

    /// A business day: a working day of `calendar` (mon to fri without
    /// one) that is not one of `exclude_calendar`.
    fn is_business_day(&mut self, d: NaiveDate) -> bool {
        if self.c.rules.calendar.is_none() && !Weekdays::MON_FRI.has(d.weekday()) {
            return false;
        }
        self.day_status(d) == DayStatus::Working
    }

    /// `business day 2 of 2026-12` when `d` is one of the business days the
    /// rules ask for.
    fn business_label(&mut self, d: NaiveDate) -> Option<String> {
        let key = (d.year(), d.month());
        if !self.months.contains_key(&key) {
            let first = NaiveDate::from_ymd_opt(d.year(), d.month(), 1)?;
            let days: Vec<NaiveDate> = first
                .iter_days()
                .take_while(|x| x.month() == d.month())
                .filter(|x| self.is_business_day(*x))
                .collect();
            self.months.insert(key, days);
        }
        let days = &self.months[&key];
        let i = days.iter().position(|x| *x == d)?;
        let (nth, nth_last) = (i as i32 + 1, i as i32 - days.len() as i32);
        let n = self
            .c
            .rules
            .business_days
            .iter()
            .find(|n| **n == nth || **n == nth_last)?;
        Some(format!("business day {n} of {}", d.format("%Y-%m")))
    }
}

/// The instant of local time `naive` in `tz`: of a repeated time (fall-back)
/// the earliest one after `after` (the earliest when `after` is `None`); of
/// a skipped time (spring-forward) the instant the clock jumped.
fn local_instant(
    tz: &Tz,
    naive: NaiveDateTime,
    after: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(x) => Some(x.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            let (early, late) = (a.min(b), a.max(b));
            Some(match after {
                Some(x) if early <= x => late,
                _ => early,
            })
        }
        LocalResult::None => super::cron::gap_end(tz, naive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::calendar::Calendars;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// A cron trigger from the trigger's YAML, with calendar `bank`.
    fn trigger(yaml: &str) -> CronTrigger {
        let cals = Calendars::from_texts(&[(
            "calendars/bank.yaml",
            "name: bank\nholidays: [2026-12-25, 2027-01-01]\n",
        )]);
        let mut daemon = crate::config::daemon::validate(Default::default(), &|_| None).unwrap();
        daemon.calendars = std::sync::Arc::new(cals);
        let job = format!(
            "name: j\ntrigger:\n{}\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n",
            yaml.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        );
        let doc = crate::config::yaml::Located::parse(&job).unwrap();
        let (raw, d) = doc.deserialize::<crate::config::job::RawJob>(&Default::default());
        assert!(d.is_empty(), "{d:?}");
        let job = crate::config::job::validate(raw.unwrap(), "j.yaml".into(), &daemon, &|_| None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        job.cron().unwrap().clone()
    }

    fn ats(fires: &[Fire]) -> Vec<String> {
        fires.iter().map(|f| f.at.to_rfc3339()).collect()
    }

    #[test]
    fn shift_next_moves_a_holiday_and_collapses_onto_an_own_fire() {
        let c = trigger("cron: \"30 2 25 12 *\"\ncalendar: bank\nshift: next");
        let f = fires_between(&c, utc("2026-12-01T00:00:00Z"), utc("2026-12-31T00:00:00Z"));
        assert_eq!(ats(&f), ["2026-12-28T02:30:00+00:00"]);
        assert_eq!(
            f[0].rule,
            "shifted next from 2026-12-25 (holiday) (cron 30 2 25 12 *)"
        );
        // The same fire when asked from inside the days off.
        let f = next_fire(&c, utc("2026-12-27T00:00:00Z")).unwrap();
        assert_eq!(f.at, utc("2026-12-28T02:30:00Z"));
    }

    #[test]
    fn shift_previous_finds_a_fire_of_a_later_day() {
        let c = trigger("cron: \"0 9 27 12 *\"\ncalendar: bank\nshift: previous");
        // Sunday 27 Dec → Thursday 24 (25 is a holiday, 26 a Saturday).
        let f = next_fire(&c, utc("2026-12-20T00:00:00Z")).unwrap();
        assert_eq!(f.at, utc("2026-12-24T09:00:00Z"));
    }

    #[test]
    fn blackout_skip_and_defer() {
        let c = trigger("cron: \"0 * * * *\"\nblackout: [{from: \"22:00\", to: \"02:00\"}]");
        let f = fires_between(&c, utc("2026-03-02T21:30:00Z"), utc("2026-03-03T02:30:00Z"));
        let kinds: Vec<bool> = f.iter().map(|f| f.outcome == Planned::Run).collect();
        assert_eq!(kinds, [false, false, false, false, true], "{f:#?}");
        let c = trigger(
            "cron: \"0 * * * *\"\nblackout: [{from: \"22:00\", to: \"02:00\"}]\non_blackout: defer",
        );
        let f = fires_between(&c, utc("2026-03-02T21:30:00Z"), utc("2026-03-03T02:30:00Z"));
        assert_eq!(ats(&f), ["2026-03-03T02:00:00+00:00"], "{f:#?}");
        assert_eq!(
            f[0].cron_time,
            utc("2026-03-03T02:00:00Z"),
            "the own fire wins"
        );
        // Asked from inside the window, the deferred fire is still there.
        let f = fires_between(&c, utc("2026-03-02T23:30:00Z"), utc("2026-03-03T02:00:00Z"));
        assert_eq!(ats(&f), ["2026-03-03T02:00:00+00:00"]);
        assert!(matches!(
            f[0].outcome,
            Planned::Run | Planned::Deferred { .. }
        ));
    }

    #[test]
    fn business_days_first_and_last() {
        let c = trigger("cron: \"30 2 * * *\"\ncalendar: bank\nbusiness_days: [1, -1]");
        let f = fires_between(&c, utc("2026-12-01T00:00:00Z"), utc("2027-02-01T00:00:00Z"));
        assert_eq!(
            ats(&f),
            [
                "2026-12-01T02:30:00+00:00",
                "2026-12-31T02:30:00+00:00",
                "2027-01-04T02:30:00+00:00",
                "2027-01-29T02:30:00+00:00",
            ]
        );
        assert_eq!(f[1].rule, "business day -1 of 2026-12 (cron 30 2 * * *)");
    }
}
