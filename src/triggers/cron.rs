//! Cron calendars with Debian cron semantics (crontab(5), vixie cron as shipped by Debian),
//! evaluated in an IANA time zone.
//!
//! Syntax:
//! - 5 fields `minute hour day-of-month month day-of-week`, or 6 with seconds first
//!   (`second minute hour day-of-month month day-of-week`).
//! - Macros `@yearly`/`@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly` (`0 0 * * 0`),
//!   `@daily`/`@midnight` (`0 0 * * *`), `@hourly` (`0 * * * *`); anything else (`@reboot`) is an error.
//! - Per field: `*`, `n`, `a-b`, `*/n`, `a-b/n` and comma lists of those. A step on a single
//!   number (`5/10`) is an error, as in vixie cron. Months `jan`..`dec` and days `sun`..`sat`
//!   (3 letters, any case) work as values and range ends. Day-of-week 0 and 7 are both Sunday.
//! - Day rule (vixie's `DOM_STAR`/`DOW_STAR`): if the day-of-month or the day-of-week field
//!   starts with `*` (`*/2` included), a day must match both; if both are restricted, a day
//!   matching either fires (`0 0 13 * 5` = every 13th and every Friday).
//!
//! Daylight saving time, as Debian cron handles it. A job is *wildcard* when its minute or
//! hour field starts with `*` (vixie's `MIN_STAR`/`HR_STAR`; `@hourly` is wildcard), otherwise
//! *fixed-time*.
//! - Wildcard jobs follow the wall clock: a local time skipped by a spring-forward gap does
//!   not fire, a local time repeated by a fall-back fires at both instants.
//! - Fixed-time jobs: a local time inside a gap fires once, at the first instant after the
//!   jump (several skipped times collapse into that one fire); a repeated local time fires
//!   only at its first occurrence.
//!
//! Why the `cron` crate is wrapped rather than used directly: it is Quartz-like (seconds
//! field, days of week numbered 1-7 = Sun-Sat, `?`, steps on single numbers), always ANDs
//! day-of-month with day-of-week, and fires every existing instant of a local time (no
//! fixed-time DST rule). So this module parses and validates the Debian expression itself
//! (exact errors, star flags), expands every field to explicit values and builds
//! `cron::Schedule`s from those lists with translated day numbers; the OR day rule is the
//! union of two schedules. The schedules run over naive local time (as if it were UTC) and
//! each candidate is mapped to instants in the zone with the DST rules above. The `cron`
//! crate knows only the years 1970-2100, so no fire is found after 2100.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

/// The fields of a cron expression, as named in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CronField {
    /// Seconds (0-59), only in 6-field expressions.
    Second,
    /// Minutes (0-59).
    Minute,
    /// Hours (0-23).
    Hour,
    /// Day of the month (1-31).
    DayOfMonth,
    /// Month (1-12 or `jan`..`dec`).
    Month,
    /// Day of the week (0-7, 0 and 7 = Sunday, or `sun`..`sat`).
    DayOfWeek,
}

impl CronField {
    /// The smallest value the field accepts.
    pub fn min(self) -> u32 {
        match self {
            CronField::Second | CronField::Minute | CronField::Hour | CronField::DayOfWeek => 0,
            CronField::DayOfMonth | CronField::Month => 1,
        }
    }

    /// The largest value the field accepts.
    pub fn max(self) -> u32 {
        match self {
            CronField::Second | CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    /// Names accepted in the field, and the value of the first name.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            CronField::Month => Some((&MONTH_NAMES, 1)),
            CronField::DayOfWeek => Some((&DAY_NAMES, 0)),
            _ => None,
        }
    }

    fn value_kind(self) -> &'static str {
        match self {
            CronField::Month => "a number or a month name",
            CronField::DayOfWeek => "a number or a day name",
            _ => "a number",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a cron expression was rejected. `text` is always the whole offending field as written.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CronError {
    /// The expression is empty or only whitespace.
    #[error("empty expression")]
    Empty,
    /// The expression has neither 5 nor 6 whitespace-separated fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {found}"
    )]
    FieldCount {
        /// How many fields there were.
        found: usize,
    },
    /// An `@` macro that is not supported (`@reboot` included: it is not a calendar).
    #[error(
        "unknown macro \"{name}\" (supported: @yearly @annually @monthly @weekly @daily @midnight @hourly)"
    )]
    UnknownMacro {
        /// The macro as written.
        name: String,
    },
    /// A macro followed by more text.
    #[error("macro \"{name}\" must stand alone, found extra text \"{extra}\"")]
    MacroWithFields {
        /// The macro.
        name: String,
        /// Everything after it.
        extra: String,
    },
    /// An empty element in a comma-separated list (`1,,2`, `1,`).
    #[error("{field} field \"{text}\": empty list element")]
    EmptyElement {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
    },
    /// A value that is neither a number nor, in the month and day-of-week fields, a name.
    #[error("{field} field \"{text}\": \"{value}\" is not {kind}", kind = .field.value_kind())]
    InvalidValue {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The offending value.
        value: String,
    },
    /// A number outside the field's bounds.
    #[error("{field} field \"{text}\": {value} is out of range {min}-{max}", min = .field.min(), max = .field.max())]
    OutOfRange {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The number as written.
        value: String,
    },
    /// A range `a-b` with `a` greater than `b`.
    #[error("{field} field \"{text}\": range start {start} is greater than end {end}")]
    ReversedRange {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The start as written.
        start: String,
        /// The end as written.
        end: String,
    },
    /// A range missing an end, or with extra parts (`1-`, `-5`, `1-2-3`, `*-5`).
    #[error("{field} field \"{text}\": \"{element}\" is not a valid range, expected start-end")]
    MalformedRange {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The malformed range.
        element: String,
    },
    /// A step with nothing before the slash (`/5`).
    #[error("{field} field \"{text}\": \"{element}\" has no range or * before the step")]
    MissingStepBase {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The list element.
        element: String,
    },
    /// A step that is not a plain number (`*/x`, `*/`, `*/2/3`).
    #[error("{field} field \"{text}\": step \"{step}\" is not a number")]
    InvalidStep {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The step as written.
        step: String,
    },
    /// A step of zero (`*/0`).
    #[error("{field} field \"{text}\": step must be at least 1")]
    ZeroStep {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
    },
    /// A step on a single number (`5/10`), which vixie cron rejects.
    #[error("{field} field \"{text}\": a step needs a range or *, as in \"{start}-{max}/{step}\"", max = .field.max())]
    StepWithoutRange {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
        /// The number before the slash.
        start: String,
        /// The step.
        step: String,
    },
    /// The wrapped `cron` crate rejected the expression this module translated to (a bug here).
    #[error("internal error: the cron crate rejected translated expression \"{expr}\": {message}")]
    Backend {
        /// The translated expression.
        expr: String,
        /// The `cron` crate's message.
        message: String,
    },
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// One expanded field: bit `v` set when value `v` matches; `star` when the text starts with `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FieldSet {
    bits: u64,
    star: bool,
}

impl FieldSet {
    fn has(self, v: u32) -> bool {
        v < 64 && self.bits & (1u64 << v) != 0
    }
}

/// All six fields (a 5-field expression has second = {0}); day-of-week 7 is folded into 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fields {
    second: FieldSet,
    minute: FieldSet,
    hour: FieldSet,
    dom: FieldSet,
    month: FieldSet,
    dow: FieldSet,
}

/// A parsed Debian cron expression; see the module docs for its semantics.
#[derive(Clone, Debug)]
pub struct Schedule {
    source: String,
    has_seconds: bool,
    fields: Fields,
    /// The union of these `cron` schedules (over naive local time) gives the candidates.
    matchers: Vec<cron::Schedule>,
}

/// The `cron` crate enumerates no year after this one.
const LAST_YEAR: i32 = 2100;
/// Largest UTC-offset change the DST search allows for (the window before the reference).
const MAX_SHIFT_MINUTES: i64 = 180;
/// Granularity of the offset probes over that window.
const PROBE_MINUTES: i64 = 5;
/// Hard bound on candidates examined by one `next_after`.
const MAX_CANDIDATES: usize = 250_000;

impl Schedule {
    /// Parses a Debian cron expression (5 or 6 fields, or a macro).
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        let tokens: Vec<&str> = expr.split_whitespace().collect();
        let first = *tokens.first().ok_or(CronError::Empty)?;
        let (fields, has_seconds) = if first.starts_with('@') {
            let body = MACROS
                .iter()
                .find(|(name, _)| *name == first)
                .map(|(_, body)| *body)
                .ok_or_else(|| CronError::UnknownMacro {
                    name: first.to_string(),
                })?;
            if tokens.len() > 1 {
                return Err(CronError::MacroWithFields {
                    name: first.to_string(),
                    extra: tokens[1..].join(" "),
                });
            }
            let body: Vec<&str> = body.split_whitespace().collect();
            (parse_fields(&body)?, false)
        } else {
            (parse_fields(&tokens)?, tokens.len() == 6)
        };
        Ok(Schedule {
            source: expr.to_string(),
            has_seconds,
            matchers: build_matchers(&fields)?,
            fields,
        })
    }

    /// The first fire strictly after `after`, evaluated in `tz`, or `None` if there is none
    /// (`0 0 31 2 *`, or nothing before the end of 2100).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        if after.year() > LAST_YEAR {
            return None;
        }
        // The cron crate starts in 1970; searching from 1969 keeps all arithmetic in range
        // and loses nothing (any fire found is after `after`).
        let floor = NaiveDate::from_ymd_opt(1969, 1, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc();
        let from = after.max(floor);
        // A fall-back soon after `from` repeats local times earlier than its own: start the
        // naive scan that much earlier.
        let start = local_naive(&tz, from) - max_offset_drop(&tz, from);

        let mut best: Option<DateTime<Utc>> = None;
        // Once a fire is known, naive candidates past this cannot map to an earlier instant.
        let mut limit: Option<NaiveDateTime> = None;
        let candidates = Candidates::new(&self.matchers, start.and_utc());
        for (i, naive) in candidates.enumerate() {
            if i >= MAX_CANDIDATES || limit.is_some_and(|l| naive > l) {
                break;
            }
            for x in self.instants(naive, &tz).into_iter().flatten() {
                if x > after && best.is_none_or(|b| x < b) {
                    best = Some(x);
                    limit = Some(local_naive(&tz, x) + max_offset_rise_before(&tz, x));
                }
            }
        }
        best
    }

    /// Up to `n` fires strictly after `after`, ascending.
    pub fn upcoming(&self, after: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n.min(1024));
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor, tz) {
                Some(x) => {
                    out.push(x);
                    cursor = x;
                }
                None => break,
            }
        }
        out
    }

    /// True when the expression has a seconds field.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when day-of-month and day-of-week match every day (both `*`):
    /// only the time fields (and the month) choose.
    pub fn any_day(&self) -> bool {
        let all = |f: FieldSet, min: u32, max: u32| (min..=max).all(|v| f.has(v));
        all(self.fields.dom, 1, 31) && all(self.fields.dow, 0, 6)
    }

    /// True when a local time of day matches the second, minute and hour fields.
    pub fn matches_time(&self, t: chrono::NaiveTime) -> bool {
        self.fields.second.has(t.second())
            && self.fields.minute.has(t.minute())
            && self.fields.hour.has(t.hour())
    }

    /// True when the minute or hour field starts with `*` (the DST "wildcard" class).
    fn is_wildcard(&self) -> bool {
        self.fields.minute.star || self.fields.hour.star
    }

    /// The instants at which the naive local time `naive` fires, per the DST rules.
    fn instants(&self, naive: NaiveDateTime, tz: &Tz) -> [Option<DateTime<Utc>>; 2] {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(x) => [Some(x.with_timezone(&Utc)), None],
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                let (early, late) = if a <= b { (a, b) } else { (b, a) };
                if self.is_wildcard() {
                    [Some(early), Some(late)]
                } else {
                    [Some(early), None]
                }
            }
            LocalResult::None if self.is_wildcard() => [None, None],
            LocalResult::None => [gap_end(tz, naive), None],
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Schedule {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

fn parse_fields(tokens: &[&str]) -> Result<Fields, CronError> {
    let (second, rest) = match tokens.len() {
        5 => (
            FieldSet {
                bits: 1,
                star: false,
            },
            tokens,
        ),
        6 => (parse_field(CronField::Second, tokens[0])?, &tokens[1..]),
        found => return Err(CronError::FieldCount { found }),
    };
    let mut dow = parse_field(CronField::DayOfWeek, rest[4])?;
    if dow.has(7) {
        dow.bits = (dow.bits & !(1 << 7)) | 1;
    }
    Ok(Fields {
        second,
        minute: parse_field(CronField::Minute, rest[0])?,
        hour: parse_field(CronField::Hour, rest[1])?,
        dom: parse_field(CronField::DayOfMonth, rest[2])?,
        month: parse_field(CronField::Month, rest[3])?,
        dow,
    })
}

fn parse_field(field: CronField, text: &str) -> Result<FieldSet, CronError> {
    let mut bits = 0u64;
    for element in text.split(',') {
        let (lo, hi, step) = parse_element(field, text, element)?;
        let mut v = lo;
        while v <= hi {
            bits |= 1u64 << v;
            v = v.saturating_add(step);
        }
    }
    Ok(FieldSet {
        bits,
        star: text.starts_with('*'),
    })
}

/// One list element: `(low, high, step)`, all validated against the field's bounds.
fn parse_element(
    field: CronField,
    text: &str,
    element: &str,
) -> Result<(u32, u32, u32), CronError> {
    let text_owned = || text.to_string();
    if element.is_empty() {
        return Err(CronError::EmptyElement {
            field,
            text: text_owned(),
        });
    }
    let (base, step_text) = match element.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (element, None),
    };
    if base.is_empty() {
        return Err(CronError::MissingStepBase {
            field,
            text: text_owned(),
            element: element.to_string(),
        });
    }
    let (lo, hi, single) = if base == "*" {
        (field.min(), field.max(), false)
    } else if let Some((a, b)) = base.split_once('-') {
        if a.is_empty() || b.is_empty() || b.contains('-') {
            return Err(CronError::MalformedRange {
                field,
                text: text_owned(),
                element: base.to_string(),
            });
        }
        let (lo, hi) = (parse_value(field, text, a)?, parse_value(field, text, b)?);
        if lo > hi {
            return Err(CronError::ReversedRange {
                field,
                text: text_owned(),
                start: a.to_string(),
                end: b.to_string(),
            });
        }
        (lo, hi, false)
    } else {
        let v = parse_value(field, text, base)?;
        (v, v, true)
    };
    let step = match step_text {
        None => 1,
        Some(s) => {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(CronError::InvalidStep {
                    field,
                    text: text_owned(),
                    step: s.to_string(),
                });
            }
            // All digits: only overflow can fail, and a huge step just selects the start.
            let step = s.parse::<u32>().unwrap_or(u32::MAX);
            if step == 0 {
                return Err(CronError::ZeroStep {
                    field,
                    text: text_owned(),
                });
            }
            if single {
                return Err(CronError::StepWithoutRange {
                    field,
                    text: text_owned(),
                    start: base.to_string(),
                    step: s.to_string(),
                });
            }
            step
        }
    };
    Ok((lo, hi, step))
}

fn parse_value(field: CronField, text: &str, value: &str) -> Result<u32, CronError> {
    if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
        return match value.parse::<u32>() {
            Ok(v) if (field.min()..=field.max()).contains(&v) => Ok(v),
            _ => Err(CronError::OutOfRange {
                field,
                text: text.to_string(),
                value: value.to_string(),
            }),
        };
    }
    field
        .names()
        .and_then(|(names, first)| {
            names
                .iter()
                .position(|name| name.eq_ignore_ascii_case(value))
                .map(|i| first + i as u32)
        })
        .ok_or_else(|| CronError::InvalidValue {
            field,
            text: text.to_string(),
            value: value.to_string(),
        })
}

/// Builds the `cron` crate schedules whose union is the Debian calendar (ignoring DST).
fn build_matchers(f: &Fields) -> Result<Vec<cron::Schedule>, CronError> {
    let all_dom = list(f.dom.bits | u64::MAX, 1, 31, 0);
    let all_dow = "*".to_string();
    let dom = list(f.dom.bits, 1, 31, 0);
    // cron crate: 1-7 = Sun-Sat; ours: 0-6 = Sun-Sat.
    let dow = list(f.dow.bits, 0, 6, 1);
    let day_pairs = if f.dom.star || f.dow.star {
        vec![(dom, dow)]
    } else {
        vec![(dom, all_dow), (all_dom, dow)]
    };
    day_pairs
        .into_iter()
        .map(|(dom, dow)| {
            let expr = format!(
                "{} {} {} {} {} {}",
                list(f.second.bits, 0, 59, 0),
                list(f.minute.bits, 0, 59, 0),
                list(f.hour.bits, 0, 23, 0),
                dom,
                list(f.month.bits, 1, 12, 0),
                dow
            );
            cron::Schedule::from_str(&expr).map_err(|e| CronError::Backend {
                message: e.to_string(),
                expr,
            })
        })
        .collect()
}

/// `*` when every value in `min..=max` is set, else the explicit list (shifted by `shift`).
fn list(bits: u64, min: u32, max: u32, shift: u32) -> String {
    let values: Vec<u32> = (min..=max).filter(|&v| bits & (1u64 << v) != 0).collect();
    if values.len() == (max - min + 1) as usize {
        return "*".to_string();
    }
    values
        .iter()
        .map(|v| (v + shift).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Ascending, de-duplicated union of the matchers' fires (naive local times).
struct Candidates<'a> {
    iters: Vec<std::iter::Peekable<cron::ScheduleIterator<'a, Utc>>>,
}

impl<'a> Candidates<'a> {
    fn new(matchers: &'a [cron::Schedule], start: DateTime<Utc>) -> Self {
        Candidates {
            iters: matchers
                .iter()
                .map(|m| m.after(&start).peekable())
                .collect(),
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = NaiveDateTime;

    fn next(&mut self) -> Option<NaiveDateTime> {
        let min = self
            .iters
            .iter_mut()
            .filter_map(|it| it.peek().copied())
            .min()?;
        for it in &mut self.iters {
            if it.peek() == Some(&min) {
                it.next();
            }
        }
        Some(min.naive_utc())
    }
}

fn offset_seconds(tz: &Tz, at: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

fn local_naive(tz: &Tz, at: DateTime<Utc>) -> NaiveDateTime {
    at.with_timezone(tz).naive_local()
}

/// How far the UTC offset drops (fall-back) within `MAX_SHIFT_MINUTES` after `at`.
fn max_offset_drop(tz: &Tz, at: DateTime<Utc>) -> Duration {
    let base = offset_seconds(tz, at);
    let lowest = (1..=MAX_SHIFT_MINUTES / PROBE_MINUTES)
        .map(|k| offset_seconds(tz, at + Duration::minutes(k * PROBE_MINUTES)))
        .min()
        .unwrap_or(base);
    Duration::seconds((base - lowest).max(0))
}

/// How much higher the UTC offset was within `MAX_SHIFT_MINUTES` before `at`.
fn max_offset_rise_before(tz: &Tz, at: DateTime<Utc>) -> Duration {
    let base = offset_seconds(tz, at);
    let highest = (1..=MAX_SHIFT_MINUTES / PROBE_MINUTES)
        .map(|k| offset_seconds(tz, at - Duration::minutes(k * PROBE_MINUTES)))
        .max()
        .unwrap_or(base);
    Duration::seconds((highest - base).max(0))
}

/// For a naive local time inside a spring-forward gap: the instant the clock jumped, i.e.
/// the first instant whose local time is later than `naive`.
pub(crate) fn gap_end(tz: &Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    let minute = naive.with_second(0)?.with_nanosecond(0)?;
    // Find the first existing local minute after `naive` (gaps are at most a day long) ...
    let mut found = None;
    for k in 1..=26 * 60 {
        match tz.from_local_datetime(&(minute + Duration::minutes(k))) {
            LocalResult::Single(x) => found = Some(x),
            LocalResult::Ambiguous(a, b) => found = Some(a.min(b)),
            LocalResult::None => continue,
        }
        break;
    }
    let mut x = found?.with_timezone(&Utc);
    // ... then walk back to the transition itself, should it not be on a whole minute.
    for _ in 0..60 {
        let earlier = x - Duration::seconds(1);
        if local_naive(tz, earlier) <= naive {
            break;
        }
        x = earlier;
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
            .with_timezone(&Utc)
    }

    fn zone(name: &str) -> Tz {
        name.parse()
            .unwrap_or_else(|e| panic!("bad zone {name}: {e}"))
    }

    fn values(set: FieldSet) -> Vec<u32> {
        (0..64).filter(|&v| set.has(v)).collect()
    }

    #[test]
    #[rustfmt::skip]
    fn parses_valid_expressions() {
        use CronField::*;
        // (expression, field, expected values, has_seconds)
        let table: &[(&str, CronField, &[u32], bool)] = &[
            ("* * * * *", Hour, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], false),
            ("0 0 * * mon-fri", DayOfWeek, &[1, 2, 3, 4, 5], false),
            ("0 0 * * MON-Fri", DayOfWeek, &[1, 2, 3, 4, 5], false),
            ("0 0 * * 5-7", DayOfWeek, &[0, 5, 6], false),
            ("0 0 * * 7", DayOfWeek, &[0], false),
            ("0 0 * * 0", DayOfWeek, &[0], false),
            ("0 0 * * 0-7", DayOfWeek, &[0, 1, 2, 3, 4, 5, 6], false),
            ("0 0 * * sun,sat", DayOfWeek, &[0, 6], false),
            ("0 0 * * */2", DayOfWeek, &[0, 2, 4, 6], false),
            ("0 0 * * mon-sat/2", DayOfWeek, &[1, 3, 5], false),
            ("0 0 * * thu-7", DayOfWeek, &[0, 4, 5, 6], false),
            ("0 0 1 jan,jul,DEC *", Month, &[1, 7, 12], false),
            ("0 0 1 feb-apr *", Month, &[2, 3, 4], false),
            ("0 0 1 */5 *", Month, &[1, 6, 11], false),
            ("5,10-12,*/30 * * * *", Minute, &[0, 5, 10, 11, 12, 30], false),
            ("10-30/10 * * * *", Minute, &[10, 20, 30], false),
            ("*/100 * * * *", Minute, &[0], false),
            ("07 * * * *", Minute, &[7], false),
            ("0 */7 * * *", Hour, &[0, 7, 14, 21], false),
            ("0 0 */10 * *", DayOfMonth, &[1, 11, 21, 31], false),
            ("0 0 31 * *", DayOfMonth, &[31], false),
            ("*/15 * * * * *", Second, &[0, 15, 30, 45], true),
            ("59 59 23 31 12 7", Second, &[59], true),
            ("* * * * *", Second, &[0], false),
            ("  0   12 * * *  ", Hour, &[12], false),
            ("@hourly", Minute, &[0], false),
            ("@hourly", Hour, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], false),
            ("@weekly", DayOfWeek, &[0], false),
            ("@annually", Month, &[1], false),
            ("@monthly", DayOfMonth, &[1], false),
        ];
        for &(expr, field, want, secs) in table {
            let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
            let f = s.fields;
            let set = match field {
                Second => f.second,
                Minute => f.minute,
                Hour => f.hour,
                DayOfMonth => f.dom,
                Month => f.month,
                DayOfWeek => f.dow,
            };
            assert_eq!(values(set), want, "{expr:?} {field}");
            assert_eq!(s.has_seconds(), secs, "{expr:?}");
            assert_eq!(s.as_str(), expr);
            assert_eq!(s.to_string(), expr);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn star_flags_and_wildcard_class() {
        // (expression, wildcard, dom_star, dow_star, number of cron-crate schedules)
        let table: &[(&str, bool, bool, bool, usize)] = &[
            ("30 2 * * *", false, true, true, 1),
            ("*/15 * * * *", true, true, true, 1),
            ("30 * * * *", true, true, true, 1),
            ("* 2 * * *", true, true, true, 1),
            ("0 0 13 * 5", false, false, false, 2),
            ("0 0 */2 * 1", false, true, false, 1),
            ("0 0 1-31 * 1", false, false, false, 2),
            ("0 0 1 * *,1", false, false, true, 1),
            ("@hourly", true, true, true, 1),
            ("@daily", false, true, true, 1),
            ("@weekly", false, true, false, 1),
            ("* 30 2 * * *", false, true, true, 1),
        ];
        for &(expr, wild, dom_star, dow_star, matchers) in table {
            let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
            assert_eq!(s.is_wildcard(), wild, "{expr:?} wildcard");
            assert_eq!(s.fields.dom.star, dom_star, "{expr:?} dom star");
            assert_eq!(s.fields.dow.star, dow_star, "{expr:?} dow star");
            assert_eq!(s.matchers.len(), matchers, "{expr:?} matchers");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn rejects_invalid_expressions_with_exact_errors() {
        let table: &[(&str, &str)] = &[
            ("", "empty expression"),
            ("   \t ", "empty expression"),
            ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found 4"),
            ("* * * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found 7"),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month field \"0\": 0 is out of range 1-31"),
            ("0 0 32 * *", "day-of-month field \"32\": 32 is out of range 1-31"),
            ("0 0 * 13 *", "month field \"13\": 13 is out of range 1-12"),
            ("0 0 * 0 *", "month field \"0\": 0 is out of range 1-12"),
            ("0 0 * * 8", "day-of-week field \"8\": 8 is out of range 0-7"),
            ("0 0 * * 1,9", "day-of-week field \"1,9\": 9 is out of range 0-7"),
            ("60 * * * * *", "second field \"60\": 60 is out of range 0-59"),
            ("99999999999 * * * *", "minute field \"99999999999\": 99999999999 is out of range 0-59"),
            ("0 0 * * mon-xyz", "day-of-week field \"mon-xyz\": \"xyz\" is not a number or a day name"),
            ("0 0 * * monday", "day-of-week field \"monday\": \"monday\" is not a number or a day name"),
            ("0 0 * foo *", "month field \"foo\": \"foo\" is not a number or a month name"),
            ("0 0 * * jan", "day-of-week field \"jan\": \"jan\" is not a number or a day name"),
            ("mon * * * *", "minute field \"mon\": \"mon\" is not a number"),
            ("0 0 ? * *", "day-of-month field \"?\": \"?\" is not a number"),
            ("0 0 L * *", "day-of-month field \"L\": \"L\" is not a number"),
            ("0 0 * * 5#2", "day-of-week field \"5#2\": \"5#2\" is not a number or a day name"),
            ("** * * * *", "minute field \"**\": \"**\" is not a number"),
            ("0 5-2 * * *", "hour field \"5-2\": range start 5 is greater than end 2"),
            ("0 0 * * fri-mon", "day-of-week field \"fri-mon\": range start fri is greater than end mon"),
            ("0 0 * * sat-sun", "day-of-week field \"sat-sun\": range start sat is greater than end sun"),
            ("*/0 * * * *", "minute field \"*/0\": step must be at least 1"),
            ("1-5/0 * * * *", "minute field \"1-5/0\": step must be at least 1"),
            ("5/10 * * * *", "minute field \"5/10\": a step needs a range or *, as in \"5-59/10\""),
            ("0 3/2 * * *", "hour field \"3/2\": a step needs a range or *, as in \"3-23/2\""),
            ("*/x * * * *", "minute field \"*/x\": step \"x\" is not a number"),
            ("*/ * * * *", "minute field \"*/\": step \"\" is not a number"),
            ("*/2/3 * * * *", "minute field \"*/2/3\": step \"2/3\" is not a number"),
            ("*/-1 * * * *", "minute field \"*/-1\": step \"-1\" is not a number"),
            ("/5 * * * *", "minute field \"/5\": \"/5\" has no range or * before the step"),
            ("1-2-3 * * * *", "minute field \"1-2-3\": \"1-2-3\" is not a valid range, expected start-end"),
            ("1- * * * *", "minute field \"1-\": \"1-\" is not a valid range, expected start-end"),
            ("-5 * * * *", "minute field \"-5\": \"-5\" is not a valid range, expected start-end"),
            ("0 0 1,,2 * *", "day-of-month field \"1,,2\": empty list element"),
            ("0 0 1, * *", "day-of-month field \"1,\": empty list element"),
            ("@reboot", "unknown macro \"@reboot\" (supported: @yearly @annually @monthly @weekly @daily @midnight @hourly)"),
            ("@DAILY", "unknown macro \"@DAILY\" (supported: @yearly @annually @monthly @weekly @daily @midnight @hourly)"),
            ("@", "unknown macro \"@\" (supported: @yearly @annually @monthly @weekly @daily @midnight @hourly)"),
            ("@daily 0 0", "macro \"@daily\" must stand alone, found extra text \"0 0\""),
        ];
        for &(expr, want) in table {
            match Schedule::parse(expr) {
                Ok(s) => panic!("{expr:?} parsed: {s:?}"),
                Err(e) => assert_eq!(e.to_string(), want, "{expr:?}"),
            }
        }
    }

    #[test]
    fn error_variants_carry_the_field() {
        assert_eq!(
            Schedule::parse("0 0 * * mon-xyz").err(),
            Some(CronError::InvalidValue {
                field: CronField::DayOfWeek,
                text: "mon-xyz".into(),
                value: "xyz".into()
            })
        );
        assert_eq!(
            "* * *".parse::<Schedule>().err(),
            Some(CronError::FieldCount { found: 3 })
        );
    }

    /// Runs `(expr, tz, after, expected fires)` rows: `upcoming` must return exactly the
    /// expected instants (and nothing at all when none are expected).
    fn check_table(table: &[(&str, &str, &str, &[&str])]) {
        for &(expr, tz, after, want) in table {
            let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
            let tz = zone(tz);
            let after = utc(after);
            let want: Vec<DateTime<Utc>> = want.iter().map(|w| utc(w)).collect();
            let got = s.upcoming(after, tz, want.len().max(1));
            assert_eq!(got, want, "{expr:?} in {tz} after {after}");
            assert_eq!(
                s.next_after(after, tz),
                want.first().copied(),
                "{expr:?} in {tz}"
            );
        }
    }

    #[test]
    #[rustfmt::skip]
    fn semantics() {
        // 2026-01-01 is a Thursday.
        check_table(&[
            // OR rule: every 13th and every Friday (Feb/Mar 13th 2026 are Fridays: one fire).
            ("0 0 13 * 5", "UTC", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z", "2026-01-16T00:00:00Z", "2026-01-23T00:00:00Z"]),
            ("0 0 13 * fri", "UTC", "2026-02-01T00:00:00Z", &["2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z", "2026-02-20T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z"]),
            // AND rule: dom starts with `*`, so odd days that are Mondays.
            ("0 0 */2 * 1", "UTC", "2026-01-01T00:00:00Z", &["2026-01-05T00:00:00Z", "2026-01-19T00:00:00Z", "2026-02-09T00:00:00Z", "2026-02-23T00:00:00Z"]),
            // AND rule, dow starts with `*`: the 1st-7th that are Sun/Tue/Thu/Sat.
            ("0 0 1-7 * */2", "UTC", "2026-01-01T00:00:00Z", &["2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-06T00:00:00Z", "2026-02-01T00:00:00Z"]),
            // Restricted dom with a plain `*` dow: just the 13th.
            ("0 0 13 * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"]),
            // Both restricted: OR, so 1-31 means every day whatever the dow says.
            ("0 0 1-31 * 1", "UTC", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]),
            ("0 0 * * 5", "UTC", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"]),
            ("0 12 * * mon-fri", "UTC", "2026-01-02T13:00:00Z", &["2026-01-05T12:00:00Z", "2026-01-06T12:00:00Z", "2026-01-07T12:00:00Z", "2026-01-08T12:00:00Z", "2026-01-09T12:00:00Z", "2026-01-12T12:00:00Z"]),
            // Sunday as 0, 7 and a name; 5-7 = Fri, Sat, Sun.
            ("0 0 * * 0", "UTC", "2026-01-01T00:00:00Z", &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
            ("0 0 * * 7", "UTC", "2026-01-01T00:00:00Z", &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
            ("0 0 * JAN SUN", "UTC", "2026-01-01T00:00:00Z", &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
            ("0 0 * * 5-7", "UTC", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-09T00:00:00Z"]),
            ("0 0 1 jan,jul *", "UTC", "2026-01-01T00:00:00Z", &["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
            // Steps and lists.
            ("*/20 9-10 * * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-01T09:00:00Z", "2026-01-01T09:20:00Z", "2026-01-01T09:40:00Z", "2026-01-01T10:00:00Z", "2026-01-01T10:20:00Z", "2026-01-01T10:40:00Z", "2026-01-02T09:00:00Z"]),
            ("5,10-12,*/30 * * * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z", "2026-01-01T00:11:00Z", "2026-01-01T00:12:00Z", "2026-01-01T00:30:00Z", "2026-01-01T01:00:00Z"]),
            ("10-30/10 * * * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z", "2026-01-01T00:30:00Z", "2026-01-01T01:10:00Z"]),
            ("0 0 31 * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"]),
            // Macros.
            ("@hourly", "UTC", "2026-01-01T00:00:00Z", &["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]),
            ("@daily", "UTC", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]),
            ("@midnight", "UTC", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z"]),
            ("@weekly", "UTC", "2026-01-01T00:00:00Z", &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
            ("@monthly", "UTC", "2026-01-01T00:00:00Z", &["2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"]),
            ("@yearly", "UTC", "2026-01-01T00:00:00Z", &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
            ("@annually", "UTC", "2026-01-01T00:00:00Z", &["2027-01-01T00:00:00Z"]),
            // Seconds field.
            ("*/15 * * * * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-01T00:00:15Z", "2026-01-01T00:00:30Z", "2026-01-01T00:00:45Z", "2026-01-01T00:01:00Z"]),
            ("30 0 12 * * *", "UTC", "2026-01-01T00:00:00Z", &["2026-01-01T12:00:30Z", "2026-01-02T12:00:30Z"]),
            // Strictly after, including sub-second references.
            ("* * * * *", "UTC", "2026-01-01T00:00:30.5Z", &["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]),
            ("* * * * *", "UTC", "2026-01-01T00:01:00Z", &["2026-01-01T00:02:00Z"]),
            ("* * * * * *", "UTC", "2026-01-01T00:00:00.999Z", &["2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]),
            // Other zones without a transition nearby.
            ("0 9 * * *", "Asia/Tokyo", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]),
            ("0 9 * * *", "America/New_York", "2026-01-01T00:00:00Z", &["2026-01-01T14:00:00Z", "2026-01-02T14:00:00Z"]),
            ("30 5 * * *", "Asia/Kolkata", "2026-01-01T00:00:00Z", &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]),
            // Rare and impossible dates.
            ("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]),
            ("0 0 29 2 */7", "UTC", "2026-01-01T00:00:00Z", &["2032-02-29T00:00:00Z"]),
            ("0 0 31 2 *", "UTC", "2026-01-01T00:00:00Z", &[]),
            ("0 0 30 2 *", "Europe/Berlin", "2026-01-01T00:00:00Z", &[]),
            ("0 0 31 4,6,9,11 *", "UTC", "2026-01-01T00:00:00Z", &[]),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn dst_transitions_are_where_the_tests_assume() {
        // (zone, instant of the change, offset before, offset after) in seconds.
        let table: &[(&str, &str, i64, i64)] = &[
            ("Europe/Berlin", "2026-03-29T01:00:00Z", 3600, 7200),
            ("Europe/Berlin", "2026-10-25T01:00:00Z", 7200, 3600),
            ("America/New_York", "2026-03-08T07:00:00Z", -18000, -14400),
            ("America/New_York", "2026-11-01T06:00:00Z", -14400, -18000),
            ("Australia/Lord_Howe", "2026-04-04T15:00:00Z", 39600, 37800),
            ("Australia/Lord_Howe", "2026-10-03T15:30:00Z", 37800, 39600),
        ];
        for &(tz, at, before, after) in table {
            let (tz, at) = (zone(tz), utc(at));
            assert_eq!(offset_seconds(&tz, at - Duration::seconds(1)), before, "{tz} {at}");
            assert_eq!(offset_seconds(&tz, at), after, "{tz} {at}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn dst_europe_berlin() {
        // Spring forward 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00Z.
        // Fall back 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z; 02:00-02:59 happens twice.
        let tz = "Europe/Berlin";
        check_table(&[
            // Fixed time inside the gap: once, right after the jump; skipped times collapse.
            ("30 2 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]),
            ("0,30 2 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T00:30:00Z"]),
            ("0 2,3 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T01:00:00Z"]),
            ("30 2,3 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]),
            ("0 30 2 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]),
            ("30 2 * * *", tz, "2026-03-29T00:59:59Z", &["2026-03-29T01:00:00Z"]),
            // A fire exactly at the jump is not after itself.
            ("30 2 * * *", tz, "2026-03-29T01:00:00Z", &["2026-03-30T00:30:00Z"]),
            // Wildcard jobs skip the gap.
            ("*/15 * * * *", tz, "2026-03-29T00:30:00Z", &["2026-03-29T00:45:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:15:00Z"]),
            ("30 * * * *", tz, "2026-03-29T00:00:00Z", &["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:30:00Z"]),
            ("* 2 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-30T00:00:00Z", "2026-03-30T00:01:00Z"]),
            ("@hourly", tz, "2026-03-29T00:30:00Z", &["2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]),
            // Outside the transition.
            ("0 12 * * *", tz, "2026-03-28T12:00:00Z", &["2026-03-29T10:00:00Z", "2026-03-30T10:00:00Z"]),
            // Fixed time in the repeated hour: first occurrence only.
            ("30 2 * * *", tz, "2026-10-24T12:00:00Z", &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
            ("30 2 * * *", tz, "2026-10-25T00:45:00Z", &["2026-10-26T01:30:00Z"]),
            ("0 2 * * *", tz, "2026-10-24T12:00:00Z", &["2026-10-25T00:00:00Z", "2026-10-26T01:00:00Z"]),
            // Wildcard jobs fire at both instants.
            ("*/15 * * * *", tz, "2026-10-24T23:50:00Z", &["2026-10-25T00:00:00Z", "2026-10-25T00:15:00Z", "2026-10-25T00:30:00Z", "2026-10-25T00:45:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:15:00Z", "2026-10-25T01:30:00Z", "2026-10-25T01:45:00Z", "2026-10-25T02:00:00Z"]),
            ("30 * * * *", tz, "2026-10-24T23:00:00Z", &["2026-10-24T23:30:00Z", "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-25T02:30:00Z"]),
            ("* 2 * * *", tz, "2026-10-25T00:58:00Z", &["2026-10-25T00:59:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:01:00Z"]),
            // From inside the first pass, the second pass (earlier local times) comes next.
            ("*/15 * * * *", tz, "2026-10-25T00:50:00Z", &["2026-10-25T01:00:00Z", "2026-10-25T01:15:00Z"]),
            ("0 * * * *", tz, "2026-10-25T00:59:59Z", &["2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"]),
            // Outside the transition.
            ("0 12 * * *", tz, "2026-10-24T12:00:00Z", &["2026-10-25T11:00:00Z", "2026-10-26T11:00:00Z"]),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn dst_america_new_york() {
        // Spring forward 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z.
        // Fall back 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00Z; 01:00-01:59 happens twice.
        let tz = "America/New_York";
        check_table(&[
            ("30 2 * * *", tz, "2026-03-07T12:00:00Z", &["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]),
            ("*/15 * * * *", tz, "2026-03-08T06:30:00Z", &["2026-03-08T06:45:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:15:00Z"]),
            ("30 * * * *", tz, "2026-03-08T06:00:00Z", &["2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"]),
            ("0 9 * * *", tz, "2026-03-07T15:00:00Z", &["2026-03-08T13:00:00Z", "2026-03-09T13:00:00Z"]),
            ("30 1 * * *", tz, "2026-10-31T12:00:00Z", &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]),
            ("*/15 * * * *", tz, "2026-11-01T04:50:00Z", &["2026-11-01T05:00:00Z", "2026-11-01T05:15:00Z", "2026-11-01T05:30:00Z", "2026-11-01T05:45:00Z", "2026-11-01T06:00:00Z", "2026-11-01T06:15:00Z", "2026-11-01T06:30:00Z", "2026-11-01T06:45:00Z", "2026-11-01T07:00:00Z"]),
            ("30 * * * *", tz, "2026-11-01T04:00:00Z", &["2026-11-01T04:30:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z", "2026-11-01T07:30:00Z"]),
            ("0 9 * * *", tz, "2026-10-31T14:00:00Z", &["2026-11-01T14:00:00Z", "2026-11-02T14:00:00Z"]),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn dst_australia_lord_howe_half_hour() {
        // Fall back 2026-04-05: 02:00 (+11) -> 01:30 (+10:30) at 2026-04-04T15:00Z;
        // 01:30-01:59 happens twice. Spring forward 2026-10-04: 02:00 (+10:30) -> 02:30 (+11)
        // at 2026-10-03T15:30Z; 02:00-02:29 does not exist.
        let tz = "Australia/Lord_Howe";
        check_table(&[
            ("45 1 * * *", tz, "2026-04-04T00:00:00Z", &["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"]),
            ("*/15 * * * *", tz, "2026-04-04T14:10:00Z", &["2026-04-04T14:15:00Z", "2026-04-04T14:30:00Z", "2026-04-04T14:45:00Z", "2026-04-04T15:00:00Z", "2026-04-04T15:15:00Z", "2026-04-04T15:30:00Z"]),
            ("30 * * * *", tz, "2026-04-04T13:00:00Z", &["2026-04-04T13:30:00Z", "2026-04-04T14:30:00Z", "2026-04-04T15:00:00Z", "2026-04-04T16:00:00Z"]),
            ("0 12 * * *", tz, "2026-04-04T00:00:00Z", &["2026-04-04T01:00:00Z", "2026-04-05T01:30:00Z"]),
            ("15 2 * * *", tz, "2026-10-03T00:00:00Z", &["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]),
            ("0,15 2 * * *", tz, "2026-10-03T00:00:00Z", &["2026-10-03T15:30:00Z", "2026-10-04T15:00:00Z", "2026-10-04T15:15:00Z"]),
            ("*/15 * * * *", tz, "2026-10-03T15:00:00Z", &["2026-10-03T15:15:00Z", "2026-10-03T15:30:00Z", "2026-10-03T15:45:00Z"]),
            ("30 * * * *", tz, "2026-10-03T14:00:00Z", &["2026-10-03T15:00:00Z", "2026-10-03T15:30:00Z", "2026-10-03T16:30:00Z"]),
            ("0 12 * * *", tz, "2026-10-03T00:00:00Z", &["2026-10-03T01:30:00Z", "2026-10-04T01:00:00Z", "2026-10-05T01:00:00Z"]),
        ]);
    }

    #[test]
    fn extreme_references_do_not_panic() {
        let s = Schedule::parse("* * * * *").unwrap();
        for tz in [
            chrono_tz::UTC,
            chrono_tz::Pacific::Kiritimati,
            chrono_tz::Etc::GMTPlus12,
        ] {
            assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC, tz), None);
            let early = s.next_after(DateTime::<Utc>::MIN_UTC, tz);
            assert!(early.is_some_and(|x| x.year() >= 1969), "{early:?}");
        }
        // The cron crate stops at 2100.
        assert_eq!(
            s.next_after(utc("2100-12-31T23:59:00Z"), chrono_tz::UTC),
            None
        );
        assert!(s
            .upcoming(utc("2026-01-01T00:00:00Z"), chrono_tz::UTC, 0)
            .is_empty());
    }

    /// Tiny deterministic PRNG (xorshift64*), so the randomized tests are reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let alphabet: Vec<char> = "0123456789*/,- abcdefghijklmnopqrstuvwxyz@"
            .chars()
            .collect();
        let pieces = [
            "*", "*/", "/", "-", ",", "0", "1", "2", "5", "7", "12", "23", "30", "59", "60", "mon",
            "fri", "jan", "dec", "x", "@daily", "@reboot",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut ok, mut evaluated) = (0, 0);
        for i in 0..4000 {
            let s: String = if i % 2 == 0 {
                let len = rng.below(24);
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            } else {
                // Field-shaped noise, so that field parsing and evaluation get exercised too.
                (0..4 + rng.below(4))
                    .map(|_| {
                        if rng.below(2) == 0 {
                            "*".to_string()
                        } else {
                            (0..1 + rng.below(3)).map(|_| rng.pick(&pieces)).collect()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            if let Ok(sched) = Schedule::parse(&s) {
                ok += 1;
                if evaluated < 300 {
                    evaluated += 1;
                    for at in ["2026-10-25T00:30:00Z", "2026-03-29T00:30:00Z"] {
                        let _ = sched.next_after(utc(at), chrono_tz::Europe::Berlin);
                    }
                }
            }
        }
        assert!(ok > 20, "the fuzzer produced only {ok} valid expressions");
    }

    /// Debian's match of one naive local time.
    fn matches_local(f: &Fields, t: NaiveDateTime) -> bool {
        let dom = f.dom.has(t.day());
        let dow = f.dow.has(t.weekday().num_days_from_sunday());
        let day = if f.dom.star || f.dow.star {
            dom && dow
        } else {
            dom || dow
        };
        day && f.second.has(t.second())
            && f.minute.has(t.minute())
            && f.hour.has(t.hour())
            && f.month.has(t.month())
    }

    /// Brute force over instants, minute by minute, following the rules as stated: an
    /// independent check of `next_after` for 5-field expressions.
    fn oracle(s: &Schedule, after: DateTime<Utc>, tz: Tz, minutes: i64) -> Vec<DateTime<Utc>> {
        let mut x = after.with_second(0).unwrap().with_nanosecond(0).unwrap();
        let mut out = vec![];
        for _ in 0..minutes {
            x += Duration::minutes(1);
            let local = local_naive(&tz, x);
            let fires = if s.is_wildcard() {
                matches_local(&s.fields, local)
            } else {
                // First occurrence of a matching local time, or the first instant after a
                // jump over a matching local time.
                let earliest = tz.from_local_datetime(&local).earliest();
                let first = earliest.map(|e| e.with_timezone(&Utc)) == Some(x);
                let mut skipped = false;
                let mut m = local_naive(&tz, x - Duration::minutes(1)) + Duration::minutes(1);
                while m < local {
                    skipped |= matches_local(&s.fields, m);
                    m += Duration::minutes(1);
                }
                (first && matches_local(&s.fields, local)) || skipped
            };
            if fires {
                out.push(x);
            }
        }
        out
    }

    #[test]
    fn agrees_with_brute_force_around_transitions() {
        let minutes = ["*", "*/15", "0", "30", "0,30", "5-10", "*/7", "45", "15,45"];
        let hours = ["*", "*/2", "2", "1-3", "0", "1,2,3", "*/5", "2-4", "12"];
        let doms = ["*", "*/2", "25", "1-15", "25-31", "4,5"];
        let months = ["*", "3,10", "*/3", "4", "10-11"];
        let dows = ["*", "0", "1-5", "5-7", "*/2", "sun", "sat"];
        // (zone, an instant near a transition)
        let refs: &[(&str, &str)] = &[
            ("Europe/Berlin", "2026-03-29T01:00:00Z"),
            ("Europe/Berlin", "2026-10-25T01:00:00Z"),
            ("America/New_York", "2026-03-08T07:00:00Z"),
            ("America/New_York", "2026-11-01T06:00:00Z"),
            ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
            ("UTC", "2026-02-27T12:00:00Z"),
        ];
        let mut rng = Rng(42);
        let horizon = 2 * 24 * 60;
        for _ in 0..400 {
            let expr = format!(
                "{} {} {} {} {}",
                rng.pick(&minutes),
                rng.pick(&hours),
                rng.pick(&doms),
                rng.pick(&months),
                rng.pick(&dows)
            );
            let s = Schedule::parse(&expr).unwrap();
            let (tz, at) = refs[rng.below(refs.len())];
            let tz = zone(tz);
            // Up to a day before the transition, at second granularity.
            let after = utc(at) - Duration::seconds(rng.below(24 * 3600) as i64);
            let want = oracle(&s, after, tz, horizon);
            let end = after.with_second(0).unwrap().with_nanosecond(0).unwrap()
                + Duration::minutes(horizon);
            let got: Vec<_> = s
                .upcoming(after, tz, want.len() + 1)
                .into_iter()
                .filter(|x| *x <= end)
                .collect();
            assert_eq!(got, want, "{expr:?} in {tz} after {after}");
        }
    }
}
