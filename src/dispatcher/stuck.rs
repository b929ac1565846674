//! Runs that never start, and jobs whose pods wait too long.
//!
//! Every re-planning tick, [`super::replan::observe`] hands each running
//! run's [`Stall`] (why none of its pods runs, from the executor) to the
//! [`Watchdog`], which applies the job's limits ([`judge`]):
//!
//! | evidence | fails after | reason |
//! |---|---|---|
//! | `InvalidImageName` | at once | `start_failed` |
//! | `ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError` | `limits.image_pull_timeout` (3m) | `image_pull_timeout` |
//! | anything else (`Unschedulable`, `FailedCreate`, `ContainerCreating`, no pods) | `limits.start_timeout` (10m) | `start_timeout` |
//!
//! The clock of a stall starts when the Job was created, or when a pod of
//! the run last ran or finished: an Indexed run whose last index cannot
//! start fails once its other indexes are done and the timeout passes, and
//! keeps the indexes that completed. A failed attempt's Job is deleted
//! and the job's `retry` policy applies; the dead letter names the reason
//! and the evidence (`start_timeout: Unschedulable: 0/3 nodes are
//! available…`).
//!
//! Logging follows state changes only: one WARN when a run becomes stuck
//! (named evidence, or waiting past `limits.pending_timeout`), one INFO
//! when a pod of it runs, one ERROR when it is failed; the same for a job
//! entering and leaving pending-pod backpressure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::config::job::JobLimits;
use crate::executor::{Executor, Stall};
use crate::store::Run;

/// What the limits say about one stalled run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still within ordinary start-up: nothing to say.
    Starting,
    /// Worth a warning: named evidence, or waiting past `pending_timeout`.
    Stuck,
    /// The attempt fails, with this reason.
    Fail(&'static str),
}

/// Applies a job's limits to a run's stall.
pub fn judge(stall: &Stall, limits: &JobLimits) -> Verdict {
    let waited = stall.stalled_for;
    match stall.reason.as_str() {
        "InvalidImageName" => return Verdict::Fail("start_failed"),
        "ErrImagePull" | "ImagePullBackOff" | "CreateContainerConfigError"
            if waited >= limits.image_pull_timeout =>
        {
            return Verdict::Fail("image_pull_timeout")
        }
        _ => {}
    }
    if waited >= limits.start_timeout {
        return Verdict::Fail("start_timeout");
    }
    let ordinary = matches!(
        stall.reason.as_str(),
        "ContainerCreating" | "PodInitializing" | "Pending" | "NoPods"
    );
    if !ordinary || waited >= limits.pending_timeout {
        Verdict::Stuck
    } else {
        Verdict::Starting
    }
}

/// One stuck run, as last logged.
#[derive(Debug, Clone)]
struct Stuck {
    job: String,
    attempt: i64,
    reason: String,
}

/// Remembers which runs are stuck and which jobs are backpressured between
/// ticks, so that each change is logged once and the gauge is current.
#[derive(Debug, Default)]
pub struct Watchdog {
    stuck: HashMap<String, Stuck>,
    backpressured: HashSet<String>,
}

impl Watchdog {
    /// Looks at one running run. Returns true when its attempt was failed
    /// (the executor gave it up; its outcome follows on the channel).
    pub async fn check<E: Executor>(
        &mut self,
        executor: &E,
        limits: &JobLimits,
        run: &Run,
        stall: Option<&Stall>,
    ) -> bool {
        let verdict = stall.map(|s| (s, judge(s, limits)));
        match verdict {
            Some((s, Verdict::Fail(reason))) => {
                let message = format!("{}: {}", s.reason, s.message);
                if !executor.abandon(&run.run_id, reason, &message).await {
                    return false;
                }
                self.stuck.remove(&run.run_id);
                tracing::error!(job = %run.job, run = %run.run_id, attempt = run.attempt,
                    waited = ?round(s.stalled_for), "{reason}: {message}; the attempt failed and its Job was deleted");
                true
            }
            Some((s, Verdict::Stuck)) => {
                let before = self.stuck.insert(
                    run.run_id.clone(),
                    Stuck {
                        job: run.job.clone(),
                        attempt: run.attempt,
                        reason: s.reason.clone(),
                    },
                );
                if before.is_none() {
                    tracing::warn!(job = %run.job, run = %run.run_id, attempt = run.attempt,
                        reason = %s.reason, waited = ?round(s.stalled_for),
                        "run stuck: none of its pods has started: {}", s.message);
                }
                false
            }
            Some((_, Verdict::Starting)) => false,
            None => {
                if self.stuck.remove(&run.run_id).is_some() {
                    tracing::info!(job = %run.job, run = %run.run_id, attempt = run.attempt,
                        "run no longer stuck: a pod of it is running");
                }
                false
            }
        }
    }

    /// The tick is over: `running` are the runs still running, `pressed`
    /// the jobs now backpressured. Forgets runs that ended, logs jobs
    /// entering and leaving backpressure, publishes the gauge.
    pub fn tick_done(&mut self, running: &HashSet<String>, pressed: &HashSet<String>) {
        self.stuck.retain(|run, s| {
            let still = running.contains(run);
            if !still {
                tracing::info!(job = %s.job, run = %run, attempt = s.attempt, "run no longer stuck: it ended");
            }
            still
        });
        for job in pressed.difference(&self.backpressured) {
            tracing::warn!(job = %job,
                "pods stuck Pending past limits.pending_timeout: no new launches of this job until they schedule");
        }
        for job in self.backpressured.difference(pressed) {
            tracing::info!(job = %job, "pods scheduled again: launches of this job resume");
        }
        self.backpressured.clone_from(pressed);
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for s in self.stuck.values() {
            *counts.entry((s.job.clone(), s.reason.clone())).or_default() += 1;
        }
        crate::health::set_runs_stuck(counts);
    }
}

/// A duration to the second, for logs.
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(reason: &str, secs: u64) -> Stall {
        Stall {
            stalled_for: Duration::from_secs(secs),
            reason: reason.into(),
            message: String::new(),
        }
    }

    #[test]
    fn each_kind_of_evidence_fails_after_its_own_timeout() {
        let limits = JobLimits::default(); // start 10m, image pull 3m, pending 5m
        assert_eq!(
            judge(&stall("InvalidImageName", 0), &limits),
            Verdict::Fail("start_failed")
        );
        assert_eq!(judge(&stall("ErrImagePull", 179), &limits), Verdict::Stuck);
        assert_eq!(
            judge(&stall("ImagePullBackOff", 180), &limits),
            Verdict::Fail("image_pull_timeout")
        );
        assert_eq!(
            judge(&stall("CreateContainerConfigError", 180), &limits),
            Verdict::Fail("image_pull_timeout")
        );
        assert_eq!(judge(&stall("Unschedulable", 599), &limits), Verdict::Stuck);
        assert_eq!(
            judge(&stall("Unschedulable", 600), &limits),
            Verdict::Fail("start_timeout")
        );
        assert_eq!(
            judge(&stall("FailedCreate", 600), &limits),
            Verdict::Fail("start_timeout")
        );
        assert_eq!(
            judge(&stall("NoPods", 600), &limits),
            Verdict::Fail("start_timeout")
        );
    }

    #[test]
    fn ordinary_start_up_is_quiet_until_the_pending_timeout() {
        let limits = JobLimits::default();
        assert_eq!(
            judge(&stall("ContainerCreating", 30), &limits),
            Verdict::Starting
        );
        assert_eq!(judge(&stall("Pending", 299), &limits), Verdict::Starting);
        assert_eq!(judge(&stall("Pending", 300), &limits), Verdict::Stuck);
        assert_eq!(judge(&stall("Unschedulable", 1), &limits), Verdict::Stuck);
    }

    #[test]
    fn a_short_start_timeout_wins_over_the_image_pull_timeout() {
        let limits = JobLimits {
            start_timeout: Duration::from_secs(60),
            ..JobLimits::default()
        };
        assert_eq!(
            judge(&stall("ErrImagePull", 60), &limits),
            Verdict::Fail("start_timeout")
        );
    }
}
