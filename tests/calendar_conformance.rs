//! Calendar conformance: the fires kedge produces for a cron job with a
//! business calendar (`calendar`, `business_days`, `shift`) against an
//! independent computation written here, from the definitions in the
//! README, not from kedge's code:
//!
//! - a date is a working day when `((weekday in working_days or date in
//!   dates) and not in holidays) or a working day of an included calendar`,
//!   and not a working day of an excluded one;
//! - the n-th business day of a month is the n-th working day in it
//!   (counted from its end for a negative n);
//! - a shifted fire goes to the nearest working day after (next) or before
//!   (previous), at the same local time;
//! - a local time's instant is the earliest instant showing that local time;
//!   a local time skipped by a spring-forward fires at the first instant
//!   after it (Debian cron).
//!
//! Random calendars (weekday sets, holidays on weekends and weekdays, extra
//! dates, include and exclude), random time zones (DST north and south,
//! half-hour offsets, UTC+14 — a day ahead of UTC, where a Monday fire is a
//! Sunday in UTC) and random ranges over 2024–2028 (two leap years, every
//! DST change) are run through `proptest`. The instants are computed here
//! by scanning the zone's UTC offsets, never with `from_local_datetime`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use kedge::config::calendar::Calendars;
use kedge::config::job::CronTrigger;
use kedge::triggers::rules;

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Pacific/Auckland",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Kiritimati",
];

/// A calendar as the oracle sees it.
#[derive(Debug, Clone)]
struct Cal {
    weekdays: [bool; 7], // Monday first
    holidays: BTreeSet<NaiveDate>,
    dates: BTreeSet<NaiveDate>,
}

/// The scenario: `main` (with optional include `plus` and exclude `minus`,
/// both lists of dates), a daily-time cron on some weekdays, the rules.
#[derive(Debug, Clone)]
struct Case {
    main: Cal,
    plus: Option<BTreeSet<NaiveDate>>,
    minus: Option<BTreeSet<NaiveDate>>,
    zone: &'static str,
    hour: u32,
    minute: u32,
    /// Cron day-of-week values (0 = Sunday); empty: `*`.
    dow: Vec<u32>,
    business_days: Vec<i32>,
    shift: &'static str,
    start: NaiveDate,
    days: i64,
}

impl Case {
    fn working(&self, d: NaiveDate) -> bool {
        let m = &self.main;
        let own = (m.weekdays[d.weekday().num_days_from_monday() as usize] || m.dates.contains(&d))
            && !m.holidays.contains(&d);
        let plus = self.plus.as_ref().is_some_and(|p| p.contains(&d));
        let minus = self.minus.as_ref().is_some_and(|p| p.contains(&d));
        (own || plus) && !minus
    }

    fn cron_day(&self, d: NaiveDate) -> bool {
        self.dow.is_empty() || self.dow.contains(&d.weekday().num_days_from_sunday())
    }

    /// The n-th (or n-th last) business day asked for?
    fn selected(&self, d: NaiveDate) -> bool {
        let month: Vec<NaiveDate> = (1..=31)
            .filter_map(|k| NaiveDate::from_ymd_opt(d.year(), d.month(), k))
            .filter(|x| self.working(*x))
            .collect();
        let Some(i) = month.iter().position(|x| *x == d) else {
            return false;
        };
        let len = month.len() as i32;
        self.business_days
            .iter()
            .any(|n| (*n > 0 && *n - 1 == i as i32) || (*n < 0 && len + *n == i as i32))
    }

    /// The expected fire instants in `(after, until]`.
    fn expected(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let tz: Tz = self.zone.parse().unwrap();
        let mut out = BTreeSet::new();
        let first = self.start - Duration::days(400);
        for k in 0..(self.days + 800) {
            let d = first + Duration::days(k);
            if !self.cron_day(d) {
                continue;
            }
            let day = if !self.business_days.is_empty() {
                self.selected(d).then_some(d)
            } else if self.working(d) {
                Some(d)
            } else {
                let step = match self.shift {
                    "next" => 1,
                    "previous" => -1,
                    _ => 0,
                };
                (step != 0)
                    .then(|| {
                        (1..=366)
                            .map(|j| d + Duration::days(step * j))
                            .find(|x| self.working(*x))
                    })
                    .flatten()
            };
            if let Some(day) = day {
                out.insert(instant(
                    tz,
                    day.and_hms_opt(self.hour, self.minute, 0).unwrap(),
                ));
            }
        }
        out.into_iter()
            .filter(|t| *t > after && *t <= until)
            .collect()
    }

    fn yaml_files(&self) -> Vec<(String, String)> {
        let dates = |s: &BTreeSet<NaiveDate>| {
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let wd: Vec<&str> = (0..7)
            .filter(|i| self.main.weekdays[*i])
            .map(|i| NAMES[i])
            .collect();
        let mut main = format!(
            "name: main\nworking_days: [{}]\nholidays: [{}]\ndates: [{}]\n",
            wd.join(", "),
            dates(&self.main.holidays),
            dates(&self.main.dates)
        );
        let mut files = Vec::new();
        if let Some(p) = &self.plus {
            main.push_str("include: [plus]\n");
            files.push((
                "calendars/plus.yaml".to_string(),
                format!("name: plus\nworking_days: []\ndates: [{}]\n", dates(p)),
            ));
        }
        if let Some(m) = &self.minus {
            main.push_str("exclude: [minus]\n");
            files.push((
                "calendars/minus.yaml".to_string(),
                format!("name: minus\nworking_days: []\ndates: [{}]\n", dates(m)),
            ));
        }
        files.push(("calendars/main.yaml".to_string(), main));
        files
    }

    fn trigger_yaml(&self) -> String {
        let dow = if self.dow.is_empty() {
            "*".to_string()
        } else {
            self.dow
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut t = format!(
            "  cron: \"{} {} * * {dow}\"\n  timezone: {}\n  calendar: main\n",
            self.minute, self.hour, self.zone
        );
        if !self.business_days.is_empty() {
            let list: Vec<String> = self.business_days.iter().map(i32::to_string).collect();
            t.push_str(&format!("  business_days: [{}]\n", list.join(", ")));
        } else {
            t.push_str(&format!("  shift: {}\n", self.shift));
        }
        t
    }
}

/// The earliest instant whose local time in `tz` is `local`; for a local
/// time that does not exist (a spring-forward gap), the first instant whose
/// local time is later. Found by trying every UTC offset the zone has
/// around that day, then (in a gap) scanning minute by minute.
fn instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let as_utc = local.and_utc();
    let local_of = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
    let offsets: BTreeSet<i64> = (-15..=15)
        .map(|h| {
            let at = as_utc + Duration::hours(h);
            i64::from(
                tz.offset_from_utc_datetime(&at.naive_utc())
                    .fix()
                    .local_minus_utc(),
            )
        })
        .collect();
    let candidates: Vec<DateTime<Utc>> = offsets
        .iter()
        .map(|o| as_utc - Duration::seconds(*o))
        .collect();
    if let Some(t) = candidates.iter().filter(|c| local_of(**c) == local).min() {
        return *t;
    }
    let lo = *candidates.iter().min().unwrap() - Duration::hours(3);
    (0..24 * 60)
        .map(|m| lo + Duration::minutes(m))
        .find(|t| local_of(*t) >= local)
        .expect("a gap shorter than a day")
}

fn trigger(case: &Case, dir: &Path) -> CronTrigger {
    let files = case.yaml_files();
    let texts: Vec<(&str, &str)> = files
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let calendars = Calendars::from_texts(&texts);
    assert!(calendars.problems.is_empty(), "{}", calendars.problems);
    let mut daemon =
        kedge::config::daemon::validate(Default::default(), &|_| None).expect("default config");
    daemon.calendars = Arc::new(calendars);
    let file = dir.join("job.yaml");
    std::fs::write(
        &file,
        format!(
            "name: j\ntrigger:\n{}template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n",
            case.trigger_yaml()
        ),
    )
    .unwrap();
    let (job, _) = kedge::config::load_job_file(&file, &daemon, &|_| None)
        .unwrap_or_else(|d| panic!("{d}\n{}", case.trigger_yaml()));
    job.cron().expect("a cron job").clone()
}

fn check(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let c = trigger(case, dir.path());
    let after = case.start.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let until = after + Duration::days(case.days);
    let got: Vec<DateTime<Utc>> = rules::fires_between(&c, after, until)
        .into_iter()
        .map(|f| f.at)
        .collect();
    let want = case.expected(after, until);
    assert_eq!(got, want, "{case:#?}\n{}", case.trigger_yaml());
    // Asked in two halves, the same fires (a scheduler resuming mid-way).
    let mid = after + Duration::days(case.days / 2) + Duration::minutes(7);
    let mut halves: Vec<DateTime<Utc>> = rules::fires_between(&c, after, mid)
        .into_iter()
        .map(|f| f.at)
        .collect();
    halves.extend(
        rules::fires_between(&c, mid, until)
            .into_iter()
            .map(|f| f.at),
    );
    assert_eq!(halves, want, "split at {mid}");
}

/// kedge's fires for the whole of the case's range.
fn fires(case: &Case) -> Vec<rules::Fire> {
    let dir = tempfile::tempdir().unwrap();
    let after = case.start.and_hms_opt(0, 0, 0).unwrap().and_utc();
    rules::fires_between(
        &trigger(case, dir.path()),
        after,
        after + Duration::days(case.days),
    )
}

fn dates_in(start: NaiveDate, span: i64) -> impl Strategy<Value = BTreeSet<NaiveDate>> {
    proptest::collection::btree_set(
        (-40..span + 40).prop_map(move |k| start + Duration::days(k)),
        0..12,
    )
}

fn case() -> impl Strategy<Value = Case> {
    let start = (0i64..5 * 365)
        .prop_map(|k| NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + Duration::days(k));
    (start, 20i64..100).prop_flat_map(|(start, days)| {
        let weekdays = proptest::array::uniform7(any::<bool>())
            .prop_filter("some working weekday", |w| {
                w.iter().filter(|x| **x).count() >= 2
            });
        (
            (weekdays, dates_in(start, days), dates_in(start, days)),
            (
                proptest::option::of(dates_in(start, days)),
                proptest::option::of(dates_in(start, days)),
            ),
            proptest::sample::select(ZONES),
            (
                prop_oneof![Just(0u32), Just(1), Just(2), Just(3), 0u32..24],
                prop_oneof![Just(0u32), Just(30), 0u32..60],
            ),
            proptest::collection::vec(0u32..7, 0..3),
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(prop_oneof![1i32..4, -3i32..0], 1..3)
            ],
            proptest::sample::select(&["none", "skip", "next", "previous"][..]),
        )
            .prop_map(
                move |(
                    (weekdays, holidays, dates),
                    (plus, minus),
                    zone,
                    (hour, minute),
                    dow,
                    mut bdays,
                    shift,
                )| {
                    let dates: BTreeSet<NaiveDate> = dates.difference(&holidays).copied().collect();
                    bdays.sort();
                    bdays.dedup();
                    let dow = if bdays.is_empty() {
                        let mut d = dow;
                        d.sort();
                        d.dedup();
                        d
                    } else {
                        Vec::new()
                    };
                    Case {
                        main: Cal {
                            weekdays,
                            holidays,
                            dates,
                        },
                        plus,
                        minus,
                        zone,
                        hour,
                        minute,
                        dow,
                        business_days: bdays,
                        shift,
                        start,
                        days,
                    }
                },
            )
    })
}

proptest! {
    // 96 cases by default; PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn fires_agree_with_the_independent_computation(case in case()) {
        check(&case);
    }
}

fn fixed(zone: &'static str, start: &str, days: i64) -> Case {
    Case {
        main: Cal {
            weekdays: [true, true, true, true, true, false, false],
            holidays: BTreeSet::new(),
            dates: BTreeSet::new(),
        },
        plus: None,
        minus: None,
        zone,
        hour: 2,
        minute: 30,
        dow: Vec::new(),
        business_days: Vec::new(),
        shift: "none",
        start: start.parse().unwrap(),
        days,
    }
}

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

#[test]
fn spring_forward_and_fall_back_days_in_berlin_and_new_york() {
    // 02:30 does not exist on 2026-03-29 in Berlin nor on 2026-03-08 in New
    // York (a Sunday: made a working day with `dates`); 01:30 is repeated
    // on 2026-11-01 in New York.
    for (zone, start, day, hour) in [
        ("Europe/Berlin", "2026-03-20", "2026-03-29", 2),
        ("America/New_York", "2026-03-01", "2026-03-08", 2),
        ("America/New_York", "2026-10-25", "2026-11-01", 1),
    ] {
        let mut c = fixed(zone, start, 14);
        c.hour = hour;
        c.main.dates.insert(d(day));
        check(&c);
        let fires = fires(&c);
        let tz: Tz = zone.parse().unwrap();
        assert!(
            fires
                .iter()
                .any(|f| f.at.with_timezone(&tz).date_naive() == d(day)),
            "{zone}: the DST day {day} fires"
        );
    }
}

#[test]
fn month_ends_and_leap_years() {
    // The last business day of February 2028 (a leap year) is Tuesday the
    // 29th; of February 2027, Friday the 26th; a holiday on the last day
    // moves it back.
    let mut c = fixed("UTC", "2027-01-25", 420);
    c.business_days = vec![-1, 1];
    c.main.holidays.insert(d("2027-04-30"));
    check(&c);
    let days: Vec<NaiveDate> = fires(&c).into_iter().map(|f| f.at.date_naive()).collect();
    for want in ["2027-02-26", "2027-04-29", "2028-02-29", "2028-03-01"] {
        assert!(days.contains(&d(want)), "{want} in {days:?}");
    }
}

#[test]
fn holidays_on_weekends_change_nothing_and_shift_skips_them() {
    // 2026-12-26 is a Saturday and a holiday; Christmas (Friday) shifts
    // next over the weekend to Monday the 28th.
    let mut c = fixed("Europe/Berlin", "2026-12-20", 14);
    c.main.holidays.extend([d("2026-12-25"), d("2026-12-26")]);
    c.shift = "next";
    c.dow = vec![5];
    check(&c);
}

#[test]
fn a_zone_a_day_ahead_of_utc_uses_its_own_date() {
    // Pacific/Kiritimati is UTC+14: Monday 00:30 there is Sunday 10:30 UTC,
    // and it is a working day; Saturday 00:30 there (Friday in UTC) is not.
    let mut c = fixed("Pacific/Kiritimati", "2026-06-01", 21);
    c.hour = 0;
    check(&c);
    let fires = fires(&c);
    assert!(fires
        .iter()
        .any(|f| f.at == "2026-06-07T10:30:00Z".parse::<DateTime<Utc>>().unwrap()));
    assert!(fires.iter().all(|f| f.at.weekday() != chrono::Weekday::Fri));
}

#[test]
fn a_fire_shifted_off_a_spring_forward_day_keeps_the_cron_time() {
    // Sunday 2025-03-09 02:00 does not exist in New York (it fires at 03:00
    // EDT); shifted to the Monday, the fire is at 02:00 EDT, the cron's
    // time, not at 03:00.
    let mut c = fixed("America/New_York", "2025-03-05", 10);
    c.hour = 2;
    c.minute = 0;
    c.dow = vec![0];
    c.shift = "next";
    check(&c);
    let at: Vec<String> = fires(&c).iter().map(|f| f.at.to_rfc3339()).collect();
    assert_eq!(at, ["2025-03-10T06:00:00+00:00"]);
}
