//! Deadline-aware sizing: how many pods a run needs to finish inside its
//! window, and whether even the most allowed can. Pure: data in, decision out.
//!
//! # The model
//!
//! A run with `work` units on `p` pods takes
//!
//! ```text
//! time(p) = overhead + work / (p × rate)
//! ```
//!
//! where `rate` is units per pod per hour and `overhead` the fixed cost
//! (scheduling, start-up, final merge). The plan is the smallest `p` with
//! `time(p) ≤ (deadline − now) × (1 − margin)`, clamped to the allowed range.
//! When not even the largest allowed `p` fits, the run is *at risk*.
//!
//! # Learning rate and overhead
//!
//! From a job's finished successful runs, each a sample `x = work / p` (units
//! per pod) against `t` (seconds): `t = overhead + x / rate` is a line, fitted
//! with the Theil–Sen estimator — the slope is the median of the slopes
//! between all pairs of samples, the intercept the median of `t − slope·x` —
//! which ignores up to ~29 % of wild samples (a run that waited for a node,
//! a cache that was warm) where least squares would be dragged by one. With
//! fewer than [`MIN_SAMPLES`] runs, or when the samples cannot give a
//! positive rate (all `x` equal, say), the job's `initial_rate_per_pod` and
//! `initial_overhead` are used; when all `x` are equal but there is history,
//! the overhead stays the initial one and the rate is the median of
//! `x / (t − overhead)`.

use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// Runs of history needed before the fitted model replaces the initial one.
pub const MIN_SAMPLES: usize = 3;

/// One finished, successful run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub work: f64,
    pub parallelism: u32,
    pub duration_s: f64,
}

/// Where a model's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// `sizing.initial_rate_per_pod` / `initial_overhead` (too little history).
    Initial,
    /// Fitted from this many samples.
    Fitted(usize),
}

/// Rate (units per pod per hour) and overhead (seconds) of a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateModel {
    pub rate_per_pod_hour: f64,
    pub overhead_s: f64,
    pub source: ModelSource,
}

impl RateModel {
    /// Projected seconds for `work` on `p` pods.
    pub fn time_s(&self, work: f64, p: u32) -> f64 {
        let p = f64::from(p.max(1));
        self.overhead_s + work / (p * self.rate_per_pod_hour / 3600.0)
    }
}

/// Fits the model from `samples` (see the module docs).
pub fn fit(
    samples: &[Sample],
    initial_rate_per_pod_hour: f64,
    initial_overhead_s: f64,
) -> RateModel {
    let initial = RateModel {
        rate_per_pod_hour: initial_rate_per_pod_hour,
        overhead_s: initial_overhead_s,
        source: ModelSource::Initial,
    };
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.parallelism > 0 && s.work.is_finite() && s.work > 0.0 && s.duration_s > 0.0)
        .map(|s| (s.work / f64::from(s.parallelism), s.duration_s))
        .collect();
    if pts.len() < MIN_SAMPLES {
        return initial;
    }
    let mut slopes = Vec::new();
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dx = pts[j].0 - pts[i].0;
            if dx.abs() > f64::EPSILON * pts[i].0.abs().max(1.0) {
                slopes.push((pts[j].1 - pts[i].1) / dx);
            }
        }
    }
    let fitted = |rate: f64, overhead: f64| RateModel {
        rate_per_pod_hour: rate,
        overhead_s: overhead,
        source: ModelSource::Fitted(pts.len()),
    };
    if let Some(slope) = median(&mut slopes).filter(|s| *s > 0.0) {
        let mut intercepts: Vec<f64> = pts.iter().map(|(x, t)| t - slope * x).collect();
        let overhead = median(&mut intercepts).unwrap_or(0.0).max(0.0);
        return fitted(3600.0 / slope, overhead);
    }
    // No usable slope (all runs had the same work per pod): keep the initial
    // overhead and take the median rate.
    let mut rates: Vec<f64> = pts
        .iter()
        .filter(|(_, t)| *t > initial_overhead_s)
        .map(|(x, t)| x / (t - initial_overhead_s) * 3600.0)
        .collect();
    match median(&mut rates).filter(|r| *r > 0.0 && r.is_finite()) {
        Some(rate) => fitted(rate, initial_overhead_s),
        None => initial,
    }
}

fn median(v: &mut Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// What sizing needs to decide.
#[derive(Debug, Clone, Copy)]
pub struct SizingInput {
    pub work: f64,
    pub now: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Fraction of the time left held back as safety (0.2 = plan to finish
    /// with 20 % of the window to spare).
    pub margin: f64,
    /// `sizing.parallelism.min`.
    pub min: u32,
    /// `sizing.parallelism.max`, already lowered to what the limits allow now.
    pub max: u32,
    pub model: RateModel,
}

/// The sizing decision for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub parallelism: u32,
    pub projected_finish: DateTime<Utc>,
    /// Even `max` pods cannot finish within the margin-reduced window.
    pub at_risk: bool,
    /// One line for annotations and logs.
    pub reason: String,
}

/// Sizes a run (see the module docs). `max < min` (the limits leave less
/// than the minimum) plans `max` pods, at least 1, and reports why.
pub fn size(input: &SizingInput) -> Sizing {
    let m = &input.model;
    let available_s = ((input.deadline - input.now).num_milliseconds() as f64 / 1000.0).max(0.0)
        * (1.0 - input.margin.clamp(0.0, 0.99));
    let max = input.max.max(1);
    let min = input.min.clamp(1, max);
    let rate_per_s = m.rate_per_pod_hour / 3600.0;
    let budget = available_s - m.overhead_s;
    let needed: Option<u32> = if input.work <= 0.0 {
        Some(1)
    } else if budget <= 0.0 || rate_per_s <= 0.0 {
        None
    } else {
        let p = (input.work / (rate_per_s * budget)).ceil();
        // Guard against rounding: step up while the model says it is late.
        let mut p = if p.is_finite() && p < f64::from(u32::MAX) {
            p.max(1.0) as u32
        } else {
            u32::MAX
        };
        while p < u32::MAX && m.time_s(input.work, p) > available_s {
            p += 1;
        }
        while p > 1 && m.time_s(input.work, p - 1) <= available_s {
            p -= 1;
        }
        Some(p)
    };
    let (parallelism, at_risk) = match needed {
        Some(p) if p <= max => (p.max(min), false),
        _ => (max, true),
    };
    let finish_s = m.time_s(input.work, parallelism);
    let projected_finish =
        input.now + ChronoDuration::milliseconds((finish_s * 1000.0).min(1e15) as i64);
    let reason = match (at_risk, needed) {
        (false, _) => format!(
            "{parallelism} pod(s): {:.1} units at {:.2}/pod/h + {:.0}s overhead finish in {:.0}s of {:.0}s usable",
            input.work, m.rate_per_pod_hour, m.overhead_s, finish_s, available_s
        ),
        (true, Some(p)) => format!(
            "at risk: needs {p} pod(s) but at most {max} allowed; projected {:.0}s of {:.0}s usable",
            finish_s, available_s
        ),
        (true, None) => format!(
            "at risk: {:.0}s usable is not more than the {:.0}s overhead",
            available_s, m.overhead_s
        ),
    };
    Sizing {
        parallelism,
        projected_finish,
        at_risk,
        reason,
    }
}

/// In-flight re-planning of an Indexed run: `completed` of `total` indexes
/// done after `elapsed_s` on `current` pods. Returns a higher parallelism when
/// the observed pace misses the deadline, at most `max`; `None` to keep it.
pub fn replan(
    completed: u32,
    total: u32,
    elapsed_s: f64,
    current: u32,
    max: u32,
    seconds_left: f64,
) -> Option<u32> {
    if completed == 0 || completed >= total || current >= max || elapsed_s <= 0.0 {
        return None;
    }
    // Observed pace: indexes per pod-second.
    let pace = f64::from(completed) / (elapsed_s * f64::from(current));
    let remaining = f64::from(total - completed);
    let finish_s = remaining / (pace * f64::from(current));
    if finish_s <= seconds_left {
        return None;
    }
    let needed = if seconds_left <= 0.0 {
        max
    } else {
        (remaining / (pace * seconds_left))
            .ceil()
            .min(f64::from(max)) as u32
    };
    // More pods than remaining indexes help nobody.
    let target = needed.min(max).min(total - completed).max(current);
    (target > current).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn model(rate: f64, overhead: f64) -> RateModel {
        RateModel {
            rate_per_pod_hour: rate,
            overhead_s: overhead,
            source: ModelSource::Initial,
        }
    }

    fn input(work: f64, secs_left: i64, min: u32, max: u32, m: RateModel) -> SizingInput {
        SizingInput {
            work,
            now: t0(),
            deadline: t0() + ChronoDuration::seconds(secs_left),
            margin: 0.2,
            min,
            max,
            model: m,
        }
    }

    #[test]
    fn sizes_a_backup_to_its_window() {
        // 400 GB at 40 GB/pod/h, 3h window, 20% margin: 2.4h usable → 5 pods (4.17 exact).
        let s = size(&input(400.0, 3 * 3600, 1, 16, model(40.0, 0.0)));
        assert_eq!(s.parallelism, 5);
        assert!(!s.at_risk);
        assert_eq!(s.projected_finish, t0() + ChronoDuration::seconds(7200));
        // Only 4 allowed: at risk, planned at the maximum.
        let s = size(&input(400.0, 3 * 3600, 1, 4, model(40.0, 0.0)));
        assert_eq!((s.parallelism, s.at_risk), (4, true));
        assert!(
            s.reason.starts_with("at risk: needs 5 pod(s)"),
            "{}",
            s.reason
        );
        // The overhead alone eats the window.
        let s = size(&input(1.0, 100, 1, 16, model(40.0, 90.0)));
        assert!(s.at_risk);
        // No work: the minimum.
        let s = size(&input(0.0, 100, 2, 16, model(40.0, 0.0)));
        assert_eq!((s.parallelism, s.at_risk), (2, false));
    }

    #[test]
    fn fit_recovers_rate_and_overhead_and_shrugs_off_an_outlier() {
        // t = 60 + x / (100/h) → 36 s per unit.
        let mut samples: Vec<Sample> = [(100.0, 1), (400.0, 2), (300.0, 1), (800.0, 2), (500.0, 1)]
            .iter()
            .map(|(w, p)| {
                let x = w / f64::from(*p);
                Sample {
                    work: *w,
                    parallelism: *p,
                    duration_s: 60.0 + x * 36.0,
                }
            })
            .collect();
        samples.push(Sample {
            work: 300.0,
            parallelism: 1,
            duration_s: 90_000.0,
        });
        let m = fit(&samples, 1.0, 0.0);
        assert_eq!(m.source, ModelSource::Fitted(6));
        assert!((m.rate_per_pod_hour - 100.0).abs() < 1.0, "{m:?}");
        assert!((m.overhead_s - 60.0).abs() < 10.0, "{m:?}");
        // Too little history: the initial values.
        assert_eq!(fit(&samples[..2], 7.0, 3.0), model(7.0, 3.0));
    }

    #[test]
    fn fit_with_equal_work_per_pod_keeps_the_initial_overhead() {
        let s = Sample {
            work: 100.0,
            parallelism: 2,
            duration_s: 110.0,
        };
        let m = fit(&[s, s, s], 1.0, 10.0);
        assert_eq!(m.overhead_s, 10.0);
        assert!(
            (m.rate_per_pod_hour - 50.0 / 100.0 * 3600.0).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn replan_raises_parallelism_when_behind() {
        // 2 of 16 done in 60 s on 2 pods; 120 s left: pace 1/60 per pod-s, 14 left → 7 pods.
        assert_eq!(replan(2, 16, 60.0, 2, 8, 120.0), Some(7));
        // On pace: keep.
        assert_eq!(replan(8, 16, 60.0, 2, 8, 120.0), None);
        // Capped by max and by remaining indexes.
        assert_eq!(replan(2, 16, 60.0, 2, 4, 120.0), Some(4));
        // Only 2 indexes left on 2 pods: more pods would sit idle.
        assert_eq!(replan(14, 16, 600.0, 2, 8, 1.0), None);
    }

    proptest! {
        #[test]
        fn p_is_the_minimum_within_limits_and_at_risk_iff_max_cannot(
            work in 0.0f64..10_000.0,
            secs in 1i64..100_000,
            rate in 0.1f64..1000.0,
            overhead in 0.0f64..5000.0,
            min in 1u32..8,
            extra in 0u32..32,
        ) {
            let max = min + extra;
            let m = model(rate, overhead);
            let inp = input(work, secs, min, max, m);
            let s = size(&inp);
            let usable = secs as f64 * 0.8;
            prop_assert!(s.parallelism >= min && s.parallelism <= max);
            let max_fits = work <= 0.0 || m.time_s(work, max) <= usable;
            prop_assert_eq!(s.at_risk, !max_fits);
            if !s.at_risk {
                prop_assert!(work <= 0.0 || m.time_s(work, s.parallelism) <= usable + 1e-6);
                if s.parallelism > min {
                    prop_assert!(m.time_s(work, s.parallelism - 1) > usable);
                }
            }
        }

        #[test]
        fn p_never_decreases_when_work_grows_or_time_shrinks(
            work in 0.0f64..10_000.0,
            more in 0.0f64..10_000.0,
            secs in 2i64..100_000,
            less in 0i64..100_000,
            rate in 0.1f64..1000.0,
            overhead in 0.0f64..500.0,
            max in 1u32..64,
        ) {
            let m = model(rate, overhead);
            let base = size(&input(work, secs, 1, max, m)).parallelism;
            prop_assert!(size(&input(work + more, secs, 1, max, m)).parallelism >= base);
            let shorter = (secs - less).max(1);
            prop_assert!(size(&input(work, shorter, 1, max, m)).parallelism >= base);
        }
    }
}
