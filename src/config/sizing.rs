//! The `window` and `sizing` sections of a job definition: when a run must
//! be finished, how much work it has and how to size it (DESIGN §5).
//!
//! ```yaml
//! window:
//!   deadline: "04:00"        # wall clock in the job's time zone, next one after the fire
//!   # within: 3h             # … or a duration after the fire (an RPO)
//! sizing:
//!   work: { static: 400 }    # or sql / http / command / queue_length
//!   unit: GB
//!   initial_rate_per_pod: 40 # units per pod per hour, until 3 runs of history
//!   initial_overhead: 0s
//!   margin: 0.2
//!   parallelism: { min: 1, max: 16 }
//!   shards: 32               # completions; default: one per pod
//!   when_at_risk: run        # run | skip | fail | wait
//!   on_probe_failure: last_known   # last_known | max_parallelism
//!   probe_timeout: 30s
//!   at_risk_webhook: http://alerts.example/kedge
//! ```

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::FieldPath;
use super::diagnostic::{parse_duration, Problem};
use super::probe::{RawWorkProbe, WorkProbe};
use super::yaml::DurationText;
use super::yaml::{duration_text, string_enum};

/// `window`: when a run must be finished, `deadline` or `within` (one of the two).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with `deadline` or `within`")]
#[schemars(deny_unknown_fields, rename = "Window")]
pub struct RawWindow {
    /// A wall-clock time `HH:MM` in the job's time zone: the next one after
    /// the fire (or, for a message, after it arrived).
    #[schemars(regex(pattern = r"^\d{1,2}:\d{2}(:\d{2})?$"))]
    pub deadline: Option<String>,
    /// A duration after the fire (an RPO).
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub within: Option<String>,
}

/// `sizing`: how much work a run has and how to size it to its window.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with `work` and `initial_rate_per_pod`")]
#[schemars(deny_unknown_fields, rename = "Sizing")]
pub struct RawSizing {
    /// How much work a run has: exactly one probe.
    pub work: RawWorkProbe,
    /// The unit of work, for messages and `kedge plan` (e.g. `GB`).
    pub unit: Option<String>,
    /// Units per pod per hour, used until the job has 3 runs of history.
    pub initial_rate_per_pod: f64,
    /// A pod's fixed start-up cost, used until there is history [default: 0s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub initial_overhead: Option<String>,
    /// The share of the window kept spare, at least 0 and less than 1 [default: 0.2].
    pub margin: Option<f64>,
    /// Bounds on the parallelism chosen.
    #[serde(default)]
    pub parallelism: RawRange,
    /// Completions of the Indexed Job [default: one per pod].
    pub shards: Option<u32>,
    /// What to do with a run that cannot make its deadline even at maximum
    /// size [default: run].
    pub when_at_risk: Option<AtRiskAction>,
    /// What a failed or timed-out probe falls back to [default: last_known].
    pub on_probe_failure: Option<ProbeFallback>,
    /// [default: 30s]
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub probe_timeout: Option<String>,
    /// A URL POSTed a JSON notice when a run is at risk.
    pub at_risk_webhook: Option<String>,
}

/// Bounds on the parallelism chosen.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with `min` and `max`")]
#[schemars(deny_unknown_fields, rename = "Parallelism")]
pub struct RawRange {
    /// [default: 1]
    pub min: Option<u32>,
    /// [default: `min`]
    pub max: Option<u32>,
}

/// When must a run be finished?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// By this wall-clock time in the job's time zone: the next occurrence
    /// after the fire (or, for a message, after it arrived).
    Deadline(NaiveTime),
    /// Within this long after the fire (an RPO).
    Within(Duration),
}

impl Window {
    /// The deadline of a run fired (or enqueued) at `t`, in zone `tz`.
    /// A wall-clock deadline is its next occurrence strictly after `t`; one
    /// that falls in a spring-forward gap moves to the end of the gap, one
    /// that occurs twice (fall-back) is the earlier instant.
    pub fn deadline_after(&self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match self {
            Window::Within(d) => {
                t + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX)
            }
            Window::Deadline(time) => {
                let local = t.with_timezone(&tz).date_naive();
                for day in 0..3 {
                    let date = local + chrono::Days::new(day);
                    let naive = date.and_time(*time);
                    let instant = match tz.from_local_datetime(&naive) {
                        LocalResult::Single(x) => x,
                        LocalResult::Ambiguous(a, _) => a,
                        LocalResult::None => {
                            // In a gap: the first minute that exists.
                            let mut n = naive;
                            loop {
                                n += chrono::Duration::minutes(1);
                                if let Some(x) = tz.from_local_datetime(&n).earliest() {
                                    break x;
                                }
                            }
                        }
                    }
                    .with_timezone(&Utc);
                    if instant > t {
                        return instant;
                    }
                }
                t + chrono::Duration::days(1)
            }
        }
    }
}

/// What to do with a run that cannot make its deadline even at maximum size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum AtRiskAction {
    /// Run it anyway at maximum size (the default): late is better than
    /// never. When a load guard is the reason, the deadline wins: the run
    /// launches despite the guard, at the size its deadline needs.
    Run,
    /// Do not run it; the run fails with reason `AtRisk` and is not retried.
    Skip,
    /// Fail it like any failed run (retried, then dead-lettered).
    Fail,
    /// When a load guard is the reason (it holds or throttles the run):
    /// the guard wins, the run keeps waiting (or stays throttled), flagged.
    /// Otherwise the same as `run`.
    Wait,
}
string_enum!(AtRiskAction {
    Run => "run",
    Skip => "skip",
    Fail => "fail",
    Wait => "wait",
});

/// What a failed or timed-out work probe falls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum ProbeFallback {
    /// The work measured for the job's last run (the default); maximum
    /// parallelism when there is none.
    LastKnown,
    /// Run at `parallelism.max`.
    MaxParallelism,
}
string_enum!(ProbeFallback {
    LastKnown => "last_known",
    MaxParallelism => "max_parallelism",
});

/// A validated `sizing` section.
#[derive(Debug, Clone)]
pub struct Sizing {
    pub work: WorkProbe,
    pub unit: String,
    pub initial_rate_per_pod: f64,
    pub initial_overhead: Duration,
    pub margin: f64,
    pub min: u32,
    pub max: u32,
    /// Completions of the Indexed Job; `None`: one per pod.
    pub shards: Option<u32>,
    pub when_at_risk: AtRiskAction,
    pub on_probe_failure: ProbeFallback,
    pub probe_timeout: Duration,
    pub at_risk_webhook: Option<String>,
}

/// Validates `window`; paths are relative to the job file's root.
pub fn validate_window(raw: &RawWindow) -> Result<Window, Vec<Problem>> {
    let wp = FieldPath::root().key("window");
    match (&raw.deadline, &raw.within) {
        (Some(_), Some(_)) => Err(vec![(
            wp,
            "set either `deadline` or `within`, not both".into(),
        )]),
        (None, None) => Err(vec![(
            wp,
            "needs `deadline` (e.g. \"04:00\") or `within` (e.g. 3h)".into(),
        )]),
        (Some(d), None) => NaiveTime::parse_from_str(d, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(d, "%H:%M:%S"))
            .map(Window::Deadline)
            .map_err(|_| {
                vec![(
                    wp.key("deadline"),
                    format!("\"{d}\" is not a time of day (HH:MM or HH:MM:SS, 24-hour)"),
                )]
            }),
        (None, Some(w)) => match parse_duration(w) {
            Ok(d) if d.is_zero() => Err(vec![(wp.key("within"), "must be longer than 0".into())]),
            Ok(d) => Ok(Window::Within(d)),
            Err(e) => Err(vec![(wp.key("within"), e)]),
        },
    }
}

/// Validates `sizing`; paths are relative to the job file's root.
pub fn validate_sizing(
    raw: &RawSizing,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Sizing, Vec<Problem>> {
    let sp = FieldPath::root().key("sizing");
    let mut problems: Vec<Problem> = Vec::new();
    let work = match super::probe::resolve(&raw.work, env) {
        Ok(w) => Some(w),
        Err(ps) => {
            problems.extend(ps.into_iter().map(|(p, m)| (sp.key("work").join(&p), m)));
            None
        }
    };
    if !(raw.initial_rate_per_pod.is_finite() && raw.initial_rate_per_pod > 0.0) {
        problems.push((
            sp.key("initial_rate_per_pod"),
            format!(
                "{} must be a number greater than 0 (units per pod per hour)",
                raw.initial_rate_per_pod
            ),
        ));
    }
    let mut duration = |field: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            problems.push((sp.key(field), e));
            default
        }),
    };
    let initial_overhead = duration("initial_overhead", &raw.initial_overhead, Duration::ZERO);
    let probe_timeout = duration("probe_timeout", &raw.probe_timeout, Duration::from_secs(30));
    let margin = raw.margin.unwrap_or(0.2);
    if !(0.0..1.0).contains(&margin) {
        problems.push((
            sp.key("margin"),
            format!("{margin} must be at least 0 and less than 1"),
        ));
    }
    let min = raw.parallelism.min.unwrap_or(1);
    let max = raw.parallelism.max.unwrap_or(min.max(1));
    let pp = sp.key("parallelism");
    if min == 0 {
        problems.push((pp.key("min"), "must be at least 1".into()));
    }
    if max < min {
        problems.push((pp.key("max"), format!("{max} is less than min {min}")));
    }
    if let Some(s) = raw.shards {
        if s < max {
            problems.push((
                sp.key("shards"),
                format!(
                    "{s} is less than parallelism.max {max}: pods beyond the shards would sit idle"
                ),
            ));
        }
    }
    if let Some(url) = &raw.at_risk_webhook {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push((
                sp.key("at_risk_webhook"),
                format!("\"{url}\" is not an http(s) URL"),
            ));
        }
    }
    match (problems.is_empty(), work) {
        (true, Some(work)) => Ok(Sizing {
            work,
            unit: raw.unit.clone().unwrap_or_else(|| "units".into()),
            initial_rate_per_pod: raw.initial_rate_per_pod,
            initial_overhead,
            margin,
            min,
            max,
            shards: raw.shards,
            when_at_risk: raw.when_at_risk.unwrap_or(AtRiskAction::Run),
            on_probe_failure: raw.on_probe_failure.unwrap_or(ProbeFallback::LastKnown),
            probe_timeout,
            at_risk_webhook: raw.at_risk_webhook.clone(),
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn deadlines_are_the_next_wall_clock_occurrence() {
        let four = Window::Deadline(NaiveTime::from_hms_opt(4, 0, 0).unwrap());
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Fired 01:00 CET → 04:00 CET the same night.
        assert_eq!(
            four.deadline_after(t("2026-01-10T00:00:00Z"), berlin),
            t("2026-01-10T03:00:00Z")
        );
        // Fired 05:00 CET → tomorrow 04:00.
        assert_eq!(
            four.deadline_after(t("2026-01-10T04:00:00Z"), berlin),
            t("2026-01-11T03:00:00Z")
        );
        // 02:30 on spring-forward night does not exist: the end of the gap.
        let half_two = Window::Deadline(NaiveTime::from_hms_opt(2, 30, 0).unwrap());
        assert_eq!(
            half_two.deadline_after(t("2026-03-28T23:00:00Z"), berlin),
            t("2026-03-29T01:00:00Z")
        );
        let within = Window::Within(Duration::from_secs(3 * 3600));
        assert_eq!(
            within.deadline_after(t("2026-01-10T00:00:00Z"), berlin),
            t("2026-01-10T03:00:00Z")
        );
    }
}
