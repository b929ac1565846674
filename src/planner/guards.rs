//! Load guards, the pure decision: what a guard's readings mean for its
//! jobs. No I/O: [`crate::guards`] measures and feeds [`observe`]; the
//! dispatcher asks [`effect`] and [`throttled_max`] when it decides what
//! launches and how big.
//!
//! # States
//!
//! A guard keeps a *latch* (`over`) moved only by measured values, and the
//! last measurement's error:
//!
//! - **hold** guards latch when a value is above `max` and unlatch when one
//!   is below `resume_below` (hysteresis; with `resume_below = max`, the
//!   default, when one is not above `max`). While latched: [`Effect::Hold`].
//! - **throttle** guards scale with the value: no effect at or below
//!   `resume_below`, the minimum parallelism at or above `max`, linear in
//!   between ([`throttle_fraction`]). With `resume_below = max` it is a
//!   step: full parallelism up to `max`, the minimum above it.
//! - A failed (or timed-out) measurement keeps the latch and the last
//!   value, and sets the error. With `on_probe_failure: hold` the guard
//!   holds, whatever its action, until a measurement succeeds; with
//!   `ignore` it acts on what it knew before. Before the first
//!   measurement a guard is in error ("not measured yet"): a load nobody
//!   has seen is never taken as fine.
//!
//! # Deadlines
//!
//! A guard that makes a run miss its window flags it at risk with the
//! guard named ([`held_run_at_risk`], and the sizing at launch under a
//! throttle); the job's `sizing.when_at_risk` decides ([`conflict`]).

use crate::config::guard::{GuardAction, GuardProbeFailure};
use crate::config::sizing::AtRiskAction;

use super::sizing::{self, SizingInput};

/// What the decision needs of a guard's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardSpec {
    pub max: f64,
    /// At most `max`.
    pub resume_below: f64,
    pub on_probe_failure: GuardProbeFailure,
    pub action: GuardAction,
}

impl GuardSpec {
    /// The pure decision's view of `guard`.
    pub fn of(guard: &crate::config::guard::Guard) -> GuardSpec {
        GuardSpec {
            max: guard.max,
            resume_below: guard.resume_below,
            on_probe_failure: guard.on_probe_failure,
            action: guard.action,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Value(f64),
    /// The probe failed or timed out; why.
    Failed(String),
}

/// A guard's state between measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardState {
    /// The hysteresis latch of a hold guard (see the module docs); for a
    /// throttle guard, whether the last value throttles.
    pub over: bool,
    /// The last measured value.
    pub value: Option<f64>,
    /// Why the last measurement failed; `None` after a success.
    pub error: Option<String>,
}

impl GuardState {
    /// Before the first measurement.
    pub fn initial() -> GuardState {
        GuardState {
            over: false,
            value: None,
            error: Some("not measured yet".into()),
        }
    }
}

/// The state after `reading`.
pub fn observe(spec: &GuardSpec, prev: &GuardState, reading: Reading) -> GuardState {
    match reading {
        Reading::Value(v) => GuardState {
            over: match spec.action {
                GuardAction::Hold if prev.over => !releases(spec, v),
                GuardAction::Hold => v > spec.max,
                GuardAction::Throttle => throttle_fraction(spec, v) > 0.0,
            },
            value: Some(v),
            error: None,
        },
        Reading::Failed(why) => GuardState {
            error: Some(why),
            ..prev.clone()
        },
    }
}

/// Whether `v` clears a latched hold guard.
fn releases(spec: &GuardSpec, v: f64) -> bool {
    v < spec.resume_below || (spec.resume_below >= spec.max && v <= spec.max)
}

/// What a guard does to its jobs now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    Clear,
    /// Launch nothing new.
    Hold,
    /// Scale parallelism down by this fraction of the way from the full
    /// maximum to the minimum (0 < f ≤ 1).
    Throttle(f64),
}

/// The effect of a guard in `state`.
pub fn effect(spec: &GuardSpec, state: &GuardState) -> Effect {
    if state.error.is_some() && spec.on_probe_failure == GuardProbeFailure::Hold {
        return Effect::Hold;
    }
    match spec.action {
        GuardAction::Hold if state.over => Effect::Hold,
        GuardAction::Hold => Effect::Clear,
        GuardAction::Throttle => match state.value.map(|v| throttle_fraction(spec, v)) {
            Some(f) if f > 0.0 => Effect::Throttle(f),
            _ => Effect::Clear,
        },
    }
}

/// How far a throttle guard at `value` scales parallelism down: 0 at or
/// below `resume_below`, 1 at or above `max`, linear in between.
pub fn throttle_fraction(spec: &GuardSpec, value: f64) -> f64 {
    if value <= spec.resume_below {
        0.0
    } else if value >= spec.max || spec.max <= spec.resume_below {
        1.0
    } else {
        (value - spec.resume_below) / (spec.max - spec.resume_below)
    }
}

/// The most pods a run may use under a throttle of `fraction`: `full` at
/// 0, `min` at 1, linear in between (rounded down), never below `min`.
pub fn throttled_max(min: u32, full: u32, fraction: f64) -> u32 {
    let min = min.min(full);
    let span = f64::from(full - min);
    let keep = (span * (1.0 - fraction.clamp(0.0, 1.0)) + 1e-9).floor();
    min + keep as u32
}

/// A guard's state in words for logs, annotations and `kedge plan`:
/// `primary-db-cpu 91 > 80`, `primary-db-cpu 75 ≥ 70 (resume below it)`,
/// `primary-db-cpu 50 ≤ 80`, `primary-db-cpu: probe failed (…)`.
pub fn describe(name: &str, spec: &GuardSpec, state: &GuardState) -> String {
    match (&state.error, state.value) {
        (Some(e), _) if spec.on_probe_failure == GuardProbeFailure::Hold => {
            format!("{name}: probe failed ({e})")
        }
        (_, None) => format!("{name}: not measured"),
        (_, Some(v)) => match spec.action {
            GuardAction::Hold if v > spec.max => format!("{name} {v} > {}", spec.max),
            GuardAction::Hold if state.over => {
                format!("{name} {v} ≥ {} (resume below it)", spec.resume_below)
            }
            GuardAction::Hold => format!("{name} {v} ≤ {}", spec.max),
            GuardAction::Throttle if v > spec.max => format!("{name} {v} > {}", spec.max),
            GuardAction::Throttle if v > spec.resume_below => {
                format!("{name} {v} > {}", spec.resume_below)
            }
            GuardAction::Throttle => format!("{name} {v} ≤ {}", spec.resume_below),
        },
    }
}

/// The guards of one job taken together: the first guard holding, and the
/// strongest throttle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobGuards {
    /// The guard that holds the job's launches, described.
    pub hold: Option<String>,
    /// The strongest throttle: its fraction and its description.
    pub throttle: Option<(f64, String)>,
}

impl JobGuards {
    /// Combines each guard's `(description, effect)`.
    pub fn combine(guards: impl IntoIterator<Item = (String, Effect)>) -> JobGuards {
        let mut out = JobGuards::default();
        for (what, e) in guards {
            match e {
                Effect::Clear => {}
                Effect::Hold => {
                    out.hold.get_or_insert(what);
                }
                Effect::Throttle(f) => {
                    if out.throttle.as_ref().is_none_or(|(g, _)| f > *g) {
                        out.throttle = Some((f, what));
                    }
                }
            }
        }
        out
    }
}

/// Whether a run held by a guard can no longer make its deadline: even
/// launched now at its full maximum it would not finish within the
/// margin-reduced window (`input.max` is the unthrottled maximum).
pub fn held_run_at_risk(input: &SizingInput) -> bool {
    sizing::size(input).at_risk
}

/// Whether a run in flight, throttled to `cap` pods, can no longer make
/// its deadline: the share of its `work` in indexes not yet done, at
/// `cap` pods under the job's rate model, takes longer than the
/// `seconds_left`. Unknown work (not finite, or none) never flags.
pub fn throttled_run_misses(
    model: &sizing::RateModel,
    work: f64,
    completed: u32,
    total: u32,
    cap: u32,
    seconds_left: f64,
) -> bool {
    if total == 0 || completed >= total || !(work.is_finite() && work > 0.0) {
        return false;
    }
    let remaining = work * f64::from(total - completed) / f64::from(total);
    model.time_s(remaining, cap) > seconds_left
}

/// What a run at risk because of a guard does, by `sizing.when_at_risk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The deadline wins: launch now, as if the guard were clear.
    RunAnyway,
    /// The guard wins: keep waiting (held) or stay throttled.
    Wait,
    /// Settle the run as the job's `when_at_risk` says (skipped or failed).
    Settle,
}

/// The deadline/guard conflict, decided by the job's `when_at_risk`.
pub fn conflict(when_at_risk: AtRiskAction) -> Conflict {
    match when_at_risk {
        AtRiskAction::Run => Conflict::RunAnyway,
        AtRiskAction::Wait => Conflict::Wait,
        AtRiskAction::Skip | AtRiskAction::Fail => Conflict::Settle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    fn hold(max: f64, resume_below: f64) -> GuardSpec {
        GuardSpec {
            max,
            resume_below,
            on_probe_failure: GuardProbeFailure::Hold,
            action: GuardAction::Hold,
        }
    }

    fn run(spec: &GuardSpec, values: &[f64]) -> Vec<bool> {
        let mut s = GuardState::initial();
        values
            .iter()
            .map(|v| {
                s = observe(spec, &s, Reading::Value(*v));
                effect(spec, &s) == Effect::Hold
            })
            .collect()
    }

    #[test]
    fn hysteresis_holds_above_max_and_clears_only_below_resume_below() {
        let spec = hold(80.0, 70.0);
        assert_eq!(
            run(
                &spec,
                &[50.0, 80.0, 81.0, 75.0, 70.0, 69.9, 75.0, 80.0, 91.0]
            ),
            [false, false, true, true, true, false, false, false, true]
        );
        // Without hysteresis (resume_below = max): holds exactly while above max.
        let spec = hold(80.0, 80.0);
        assert_eq!(
            run(&spec, &[81.0, 80.0, 80.5, 79.0]),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_failed_probe_holds_or_keeps_the_last_state_and_is_never_silently_fine() {
        let spec = hold(80.0, 70.0);
        // Before any measurement: held (hold) …
        assert_eq!(effect(&spec, &GuardState::initial()), Effect::Hold);
        let ok = observe(&spec, &GuardState::initial(), Reading::Value(10.0));
        assert_eq!(effect(&spec, &ok), Effect::Clear);
        let failed = observe(&spec, &ok, Reading::Failed("timed out".into()));
        assert_eq!(effect(&spec, &failed), Effect::Hold);
        assert_eq!(failed.value, Some(10.0), "the last value is kept");
        assert_eq!(failed.error.as_deref(), Some("timed out"));
        // … or, with ignore, what it knew: clear, or still latched.
        let ignore = GuardSpec {
            on_probe_failure: GuardProbeFailure::Ignore,
            ..spec
        };
        assert_eq!(effect(&ignore, &GuardState::initial()), Effect::Clear);
        assert_eq!(effect(&ignore, &failed), Effect::Clear);
        let latched = observe(&ignore, &ok, Reading::Value(95.0));
        let failed = observe(&ignore, &latched, Reading::Failed("x".into()));
        assert_eq!(effect(&ignore, &failed), Effect::Hold);
        // A success after the failure clears the error.
        let back = observe(&spec, &failed, Reading::Value(60.0));
        assert_eq!((effect(&spec, &back), back.error), (Effect::Clear, None));
    }

    #[test]
    fn throttle_scales_linearly_from_full_at_resume_below_to_min_at_max() {
        let spec = GuardSpec {
            action: GuardAction::Throttle,
            ..hold(80.0, 70.0)
        };
        let at = |v: f64| throttled_max(2, 12, throttle_fraction(&spec, v));
        assert_eq!(at(60.0), 12);
        assert_eq!(at(70.0), 12);
        assert_eq!(at(72.5), 9); // 25 % of the way: 2 + floor(10 × 0.75)
        assert_eq!(at(75.0), 7);
        assert_eq!(at(79.0), 3);
        assert_eq!(at(80.0), 2);
        assert_eq!(at(500.0), 2, "never below min");
        // A step without hysteresis.
        let step = GuardSpec {
            action: GuardAction::Throttle,
            ..hold(80.0, 80.0)
        };
        assert_eq!(throttle_fraction(&step, 80.0), 0.0);
        assert_eq!(throttle_fraction(&step, 80.1), 1.0);
        // The effect follows the value.
        let s = observe(&spec, &GuardState::initial(), Reading::Value(75.0));
        assert_eq!(effect(&spec, &s), Effect::Throttle(0.5));
        let s = observe(&spec, &s, Reading::Value(65.0));
        assert_eq!(effect(&spec, &s), Effect::Clear);
    }

    proptest! {
        #[test]
        fn throttled_max_stays_between_min_and_full_and_falls_as_load_rises(
            min in 1u32..20, extra in 0u32..50, a in 0.0f64..1.0, b in 0.0f64..1.0,
        ) {
            let full = min + extra;
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let p_lo = throttled_max(min, full, lo);
            let p_hi = throttled_max(min, full, hi);
            prop_assert!(p_hi <= p_lo);
            prop_assert!((min..=full).contains(&p_lo) && (min..=full).contains(&p_hi));
            prop_assert_eq!(throttled_max(min, full, 0.0), full);
            prop_assert_eq!(throttled_max(min, full, 1.0), min);
        }
    }

    #[test]
    fn a_job_is_held_by_its_first_holding_guard_and_throttled_by_its_strongest() {
        let g = JobGuards::combine([
            ("a".to_string(), Effect::Clear),
            ("b 0.3".to_string(), Effect::Throttle(0.3)),
            ("c".to_string(), Effect::Hold),
            ("d 0.8".to_string(), Effect::Throttle(0.8)),
            ("e".to_string(), Effect::Hold),
        ]);
        assert_eq!(g.hold.as_deref(), Some("c"));
        assert_eq!(g.throttle, Some((0.8, "d 0.8".to_string())));
        assert_eq!(JobGuards::combine([]), JobGuards::default());
    }

    #[test]
    fn describe_says_which_guard_and_how_far_over() {
        let spec = hold(80.0, 70.0);
        let s = observe(&spec, &GuardState::initial(), Reading::Value(91.0));
        assert_eq!(
            describe("primary-db-cpu", &spec, &s),
            "primary-db-cpu 91 > 80"
        );
        let s = observe(&spec, &s, Reading::Value(75.0));
        assert_eq!(
            describe("primary-db-cpu", &spec, &s),
            "primary-db-cpu 75 ≥ 70 (resume below it)"
        );
        let s = observe(
            &spec,
            &s,
            Reading::Failed("sql probe timed out after 1s".into()),
        );
        assert_eq!(
            describe("primary-db-cpu", &spec, &s),
            "primary-db-cpu: probe failed (sql probe timed out after 1s)"
        );
    }

    #[test]
    fn a_throttled_run_in_flight_misses_when_its_remaining_work_at_the_cap_outlasts_the_window() {
        let model = sizing::RateModel {
            rate_per_pod_hour: 3600.0, // one unit per pod-second
            overhead_s: 0.0,
            source: sizing::ModelSource::Initial,
        };
        // 128 units in 8 indexes, 2 done: 96 units left.
        assert!(!throttled_run_misses(&model, 128.0, 2, 8, 4, 30.0)); // 24 s at 4 pods
        assert!(throttled_run_misses(&model, 128.0, 2, 8, 1, 30.0)); // 96 s at 1 pod
        assert!(!throttled_run_misses(&model, 128.0, 8, 8, 1, 0.0), "done");
        assert!(
            !throttled_run_misses(&model, f64::NAN, 0, 8, 1, 1.0),
            "work unknown"
        );
        assert!(
            !throttled_run_misses(&model, -1.0, 0, 8, 1, 1.0),
            "work unknown"
        );
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A held backup of 400 GB at 100 GB/pod/h on at most 4 pods needs an
    /// hour; with a 20 % margin its window must have 75 minutes left. On
    /// paused time, the run waits held and is flagged at risk exactly when
    /// waiting longer would miss the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_held_run_is_flagged_at_risk_when_waiting_longer_would_miss_its_deadline() {
        let clock = crate::clock::Clock::paused_at(t0());
        let deadline = t0() + chrono::TimeDelta::minutes(120);
        let model = sizing::RateModel {
            rate_per_pod_hour: 100.0,
            overhead_s: 0.0,
            source: sizing::ModelSource::Initial,
        };
        let input = |now| SizingInput {
            work: 400.0,
            now,
            deadline,
            margin: 0.2,
            min: 1,
            max: 4,
            model,
        };
        let mut flagged_after = None;
        for minute in 0..120 {
            if held_run_at_risk(&input(clock.now())) {
                flagged_after = Some(minute);
                break;
            }
            tokio::time::advance(std::time::Duration::from_secs(60)).await;
        }
        // 120 − 75 = 45 minutes of waiting are affordable; the 46th is not.
        assert_eq!(flagged_after, Some(46));
        // when_at_risk decides who wins.
        assert_eq!(conflict(AtRiskAction::Run), Conflict::RunAnyway);
        assert_eq!(conflict(AtRiskAction::Wait), Conflict::Wait);
        assert_eq!(conflict(AtRiskAction::Skip), Conflict::Settle);
        assert_eq!(conflict(AtRiskAction::Fail), Conflict::Settle);
    }
}
