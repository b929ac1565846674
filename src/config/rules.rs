//! A cron trigger's calendar rules: `calendar`, `exclude_calendar`,
//! `business_days`, `shift`, `blackout` and `on_blackout` — their file
//! shape and validation. [`crate::triggers::rules`] applies them.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveTime};
use schemars::JsonSchema;
use serde::Deserialize;

use super::calendar::{parse_date, Calendar, Calendars, DayName, Weekdays};
use super::diagnostic::{FieldPath, Problem};
use super::yaml::string_enum;

/// What happens to a day the cron expression matches that is not a working
/// day of the calendar (Control-M's confirmation calendars).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Shift {
    /// The day has no fire. The default.
    #[default]
    None,
    /// To the next working day, at the same local time.
    Next,
    /// To the previous working day, at the same local time.
    Previous,
    /// The day has no fire (as `none`, said explicitly).
    Skip,
}

string_enum!(Shift {
    None => "none",
    Next => "next",
    Previous => "previous",
    Skip => "skip",
});

/// What a fire inside a blackout window does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBlackout {
    /// Not run; recorded as `skipped: blackout`. The default.
    #[default]
    Skip,
    /// Run when the window ends (fires deferred to the same end run once).
    Defer,
}

string_enum!(OnBlackout {
    Skip => "skip",
    Defer => "defer",
});

/// A blackout window: `{from, to}` local times (on `days`, or every day),
/// or whole `dates`. A window whose `to` is not after its `from` ends the
/// next day (crosses midnight).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with from and to (and days), or dates")]
#[schemars(deny_unknown_fields, rename = "Blackout")]
pub struct RawBlackout {
    /// Local time the window starts (HH:MM), in the job's time zone.
    pub from: Option<String>,
    /// Local time the window ends (HH:MM), exclusive; not after `from`: the next day.
    pub to: Option<String>,
    /// The weekdays the window starts on [default: every day].
    pub days: Option<Vec<DayName>>,
    /// Dates (YYYY-MM-DD) the window starts on; without from/to, the whole day.
    pub dates: Option<Vec<String>>,
}

/// A validated blackout window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blackout {
    /// `None`: the whole day (00:00 to 00:00 the next day).
    pub times: Option<(NaiveTime, NaiveTime)>,
    /// The weekdays it starts on.
    pub days: Weekdays,
    /// When set, only these dates (and only those of them on `days`).
    pub dates: Option<BTreeSet<NaiveDate>>,
}

impl Blackout {
    /// True when a window starts on local date `d`.
    pub fn starts_on(&self, d: NaiveDate) -> bool {
        use chrono::Datelike;
        self.days.has(d.weekday()) && self.dates.as_ref().is_none_or(|s| s.contains(&d))
    }
}

impl std::fmt::Display for Blackout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.times {
            Some((a, b)) => write!(f, "{}-{}", a.format("%H:%M"), b.format("%H:%M"))?,
            None => f.write_str("all day")?,
        }
        if self.days != Weekdays::ALL {
            write!(f, " {}", self.days)?;
        }
        if let Some(dates) = &self.dates {
            let list: Vec<String> = dates.iter().map(|d| d.to_string()).collect();
            write!(f, " on {}", list.join(","))?;
        }
        Ok(())
    }
}

/// A cron trigger's validated calendar rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Fires only on this calendar's working days.
    pub calendar: Option<Arc<Calendar>>,
    /// No fire on this calendar's working days.
    pub exclude_calendar: Option<Arc<Calendar>>,
    /// Only the n-th business day of the month (negative: n-th last). Empty: any day.
    pub business_days: Vec<i32>,
    pub shift: Shift,
    pub blackout: Vec<Blackout>,
    pub on_blackout: OnBlackout,
}

impl Rules {
    /// True when no rule is set: the cron expression alone decides.
    pub fn is_empty(&self) -> bool {
        self.calendar.is_none()
            && self.exclude_calendar.is_none()
            && self.business_days.is_empty()
            && self.blackout.is_empty()
    }
}

/// The raw rule fields of a trigger.
pub struct RawRules<'a> {
    pub calendar: Option<&'a str>,
    pub exclude_calendar: Option<&'a str>,
    pub business_days: Option<&'a [i32]>,
    pub shift: Option<Shift>,
    pub blackout: Option<&'a [RawBlackout]>,
    pub on_blackout: Option<OnBlackout>,
}

/// The most business days a month can have (31 days, every one working).
pub const MAX_BUSINESS_DAY: i32 = 31;

/// Validates the rule fields of a trigger at `tp`. `day_fields_star`:
/// whether the cron expression's day-of-month and day-of-week are `*`.
pub fn validate(
    raw: &RawRules<'_>,
    calendars: &Calendars,
    day_fields_star: bool,
    tp: &FieldPath,
    problems: &mut Vec<Problem>,
) -> Rules {
    let mut calendar_of = |field: &str, name: Option<&str>| {
        name.and_then(|n| {
            calendars
                .get(n)
                .map_err(|e| problems.push((tp.key(field), e)))
                .ok()
        })
    };
    let calendar = calendar_of("calendar", raw.calendar);
    let exclude_calendar = calendar_of("exclude_calendar", raw.exclude_calendar);
    let business_days = raw.business_days.map(<[i32]>::to_vec).unwrap_or_default();
    for (i, n) in business_days.iter().enumerate() {
        if *n == 0 || n.abs() > MAX_BUSINESS_DAY {
            problems.push((
                tp.key("business_days").index(i),
                format!("{n} is not a business day of a month: use 1 to {MAX_BUSINESS_DAY} (the n-th), or -1 to -{MAX_BUSINESS_DAY} (-1 = the last)"),
            ));
        } else if business_days[..i].contains(n) {
            problems.push((
                tp.key("business_days").index(i),
                format!("{n} is listed twice"),
            ));
        }
    }
    if raw.business_days.is_some_and(|b| b.is_empty()) {
        problems.push((
            tp.key("business_days"),
            "is empty; list days such as [1, -1], or leave it out".into(),
        ));
    }
    if !business_days.is_empty() && !day_fields_star {
        problems.push((
            tp.key("cron"),
            "with business_days, the day is chosen by business_days: write * for day-of-month and day-of-week (such as \"30 2 * * *\")".into(),
        ));
    }
    let shift = raw.shift.unwrap_or_default();
    if matches!(shift, Shift::Next | Shift::Previous) {
        if raw.calendar.is_none() && raw.exclude_calendar.is_none() {
            problems.push((
                tp.key("shift"),
                "needs `calendar` (or `exclude_calendar`): it moves fires off the days that are not working days".into(),
            ));
        }
        if raw.business_days.is_some() {
            problems.push((
                tp.key("shift"),
                "cannot be combined with `business_days`: business days are always working days"
                    .into(),
            ));
        }
    }
    let blackout = raw
        .blackout
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, b)| validate_blackout(b, &tp.key("blackout").index(i), problems))
        .collect();
    if raw.on_blackout.is_some() && raw.blackout.is_none_or(|b| b.is_empty()) {
        problems.push((tp.key("on_blackout"), "needs `blackout` windows".into()));
    }
    Rules {
        calendar,
        exclude_calendar,
        business_days,
        shift,
        blackout,
        on_blackout: raw.on_blackout.unwrap_or_default(),
    }
}

fn parse_time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map_err(|_| format!("\"{s}\" is not a time of day; write HH:MM, such as 08:00"))
}

fn validate_blackout(
    b: &RawBlackout,
    path: &FieldPath,
    problems: &mut Vec<Problem>,
) -> Option<Blackout> {
    let before = problems.len();
    let mut time = |field: &str, v: &Option<String>| {
        v.as_deref().and_then(|s| {
            parse_time(s)
                .map_err(|e| problems.push((path.key(field), e)))
                .ok()
        })
    };
    let (from, to) = (time("from", &b.from), time("to", &b.to));
    let times = match (&b.from, &b.to) {
        (Some(_), Some(_)) => from.zip(to),
        (None, None) => None,
        (Some(_), None) => {
            problems.push((path.key("to"), "is required with `from`".into()));
            None
        }
        (None, Some(_)) => {
            problems.push((path.key("from"), "is required with `to`".into()));
            None
        }
    };
    if let Some((a, z)) = times {
        if a == z {
            problems.push((
                path.key("to"),
                "equals `from`: for a whole day leave out from and to".into(),
            ));
        }
    }
    let dates = b.dates.as_ref().map(|list| {
        let mut out = BTreeSet::new();
        for (i, s) in list.iter().enumerate() {
            match parse_date(s) {
                Ok(d) => {
                    out.insert(d);
                }
                Err(e) => problems.push((path.key("dates").index(i), e)),
            }
        }
        out
    });
    if b.from.is_none() && b.to.is_none() && b.days.is_none() && b.dates.is_none() {
        problems.push((
            path.clone(),
            "needs `from` and `to` (and optionally `days`), or `dates`".into(),
        ));
    }
    if b.days.as_ref().is_some_and(|d| d.is_empty()) {
        problems.push((
            path.key("days"),
            "is empty: the window would never apply".into(),
        ));
    }
    (problems.len() == before).then(|| Blackout {
        times,
        days: b.days.as_deref().map(Weekdays::of).unwrap_or(Weekdays::ALL),
        dates,
    })
}
