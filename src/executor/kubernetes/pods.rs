//! Whether a run's pods start: what the pod and Event watchers keep, and
//! the evidence for a run none of whose pods runs.
//!
//! A real cluster has several ways for a Job to exist without doing work,
//! and the Job controller fails none of them unless `activeDeadlineSeconds`
//! passes:
//! - its pods are refused at creation (Pod Security admission, a quota on
//!   pods, a missing ServiceAccount): no pods, `FailedCreate` Events on the
//!   Job;
//! - its pods never schedule: `PodScheduled=False`, reason `Unschedulable`;
//! - its containers never start: `ErrImagePull`/`ImagePullBackOff`,
//!   `InvalidImageName`, `CreateContainerConfigError`.
//!
//! [`stall`] names the most specific of these for a run; the dispatcher
//! decides when that fails the attempt (`limits.start_timeout`).
//!
//! Times here are wall-clock (`Utc::now`), not the daemon's Clock: they
//! are compared with the API server's timestamps (pod creation, container
//! start and finish), which are wall-clock too. The decision on them is
//! the dispatcher's ([`crate::dispatcher::stuck::judge`], tested on paused
//! time); [`stall`] itself takes `now` as an argument.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};

use crate::executor::render::LABEL_RUN;
use crate::executor::Stall;

/// An API timestamp as a chrono time.
pub(super) fn timestamp(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    // jiff's range (years -9999..=9999) is inside chrono's: never the default.
    DateTime::<Utc>::from_timestamp_micros(t.as_microsecond()).unwrap_or_default()
}

/// One pod of a run that has not finished.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub created: DateTime<Utc>,
    /// Phase `Running`.
    pub running: bool,
    /// Why it waits: a container's waiting reason and message, or the
    /// scheduler's.
    pub evidence: Option<(String, String)>,
}

/// What kedge keeps of one run's pods.
#[derive(Debug, Clone, Default)]
pub struct RunPods {
    /// Pods not finished, by name.
    pub pods: HashMap<String, PodView>,
    /// When a pod of the run last started or finished.
    pub progressed: Option<DateTime<Utc>>,
}

impl RunPods {
    pub fn progress(&mut self, at: DateTime<Utc>) {
        self.progressed = Some(self.progressed.map_or(at, |p| p.max(at)));
    }

    /// How long its longest-waiting pod has been Pending.
    pub fn pending_for(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.pods
            .values()
            .filter(|p| !p.running)
            .map(|p| (now - p.created).to_std().unwrap_or_default())
            .max()
    }
}

/// What a pod event says about its run.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Pending or Running.
    Active(String, PodView),
    /// Succeeded or Failed, at this time.
    Finished(String, DateTime<Utc>),
}

/// The run a pod belongs to (its `kedge.dev/run` label) and its name.
pub fn run_of(pod: &Pod) -> Option<(String, String)> {
    let run = pod.metadata.labels.as_ref()?.get(LABEL_RUN)?.clone();
    Some((run, pod.metadata.name.clone()?))
}

/// Reads one pod; `None` for pods of no run.
pub fn see(pod: &Pod) -> Option<(String, Seen)> {
    let (run, name) = run_of(pod)?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let seen = match phase {
        "Succeeded" | "Failed" => {
            Seen::Finished(name, last_container_time(pod).unwrap_or_else(Utc::now))
        }
        _ => Seen::Active(
            name,
            PodView {
                created: pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| timestamp(&t.0))
                    .unwrap_or_else(Utc::now),
                running: phase == "Running",
                evidence: if phase == "Running" {
                    None
                } else {
                    evidence(pod)
                },
            },
        ),
    };
    Some((run, seen))
}

/// Applies one pod event to its run's record. A finished pod of a run
/// kedge neither tracks (`tracked`) nor has a record of is not recorded:
/// its run ended.
pub fn apply(runs: &mut HashMap<String, RunPods>, run: String, seen: Seen, tracked: bool) {
    match seen {
        Seen::Active(name, view) => {
            let entry = runs.entry(run).or_default();
            if view.running {
                entry.progress(Utc::now());
            }
            entry.pods.insert(name, view);
        }
        Seen::Finished(name, at) => {
            let entry = match runs.get_mut(&run) {
                Some(e) => e,
                None if tracked => runs.entry(run).or_default(),
                None => return,
            };
            entry.pods.remove(&name);
            entry.progress(at);
        }
    }
}

/// A pod was deleted: it no longer waits. A run with no pods left is
/// forgotten unless kedge tracks it and knows when it last progressed.
pub fn remove(runs: &mut HashMap<String, RunPods>, run: &str, name: &str, tracked: bool) {
    if let Some(entry) = runs.get_mut(run) {
        if entry.pods.remove(name).is_some_and(|p| p.running) {
            entry.progress(Utc::now());
        }
        if entry.pods.is_empty() && !(tracked && entry.progressed.is_some()) {
            runs.remove(run);
        }
    }
}

/// The latest time a container of `pod` started or finished.
fn last_container_time(pod: &Pod) -> Option<DateTime<Utc>> {
    statuses(pod)
        .filter_map(|c| {
            let state = c.state.as_ref()?;
            let t = match (&state.terminated, &state.running) {
                (Some(t), _) => t.finished_at.as_ref().or(t.started_at.as_ref()),
                (None, Some(r)) => r.started_at.as_ref(),
                _ => None,
            }?;
            Some(timestamp(&t.0))
        })
        .max()
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let s = pod.status.as_ref();
    let init = s.and_then(|s| s.init_container_statuses.as_deref());
    let app = s.and_then(|s| s.container_statuses.as_deref());
    init.unwrap_or_default()
        .iter()
        .chain(app.unwrap_or_default())
}

/// Why a Pending pod waits: a container's waiting reason other than the
/// ordinary `ContainerCreating`/`PodInitializing`, else the scheduler's
/// `PodScheduled=False` reason, else the ordinary reason if any.
fn evidence(pod: &Pod) -> Option<(String, String)> {
    let waiting: Vec<(String, String)> = statuses(pod)
        .filter_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
        })
        .collect();
    let ordinary = |r: &str| matches!(r, "ContainerCreating" | "PodInitializing");
    if let Some(w) = waiting.iter().find(|(r, _)| !ordinary(r)) {
        return Some(w.clone());
    }
    let unscheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
    if let Some(c) = unscheduled {
        return Some((
            c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
            c.message.clone().unwrap_or_default(),
        ));
    }
    waiting.into_iter().next()
}

/// How specific a piece of evidence is: lower is more telling.
fn rank(reason: &str) -> u8 {
    match reason {
        "InvalidImageName" => 0,
        "CreateContainerConfigError" | "ErrImagePull" | "ImagePullBackOff" => 1,
        "ContainerCreating" | "PodInitializing" => 4,
        "Unschedulable" => 3,
        _ => 2,
    }
}

/// Why none of a run's pods runs, or `None` while one does.
/// `job_started`: the Job's start (or creation); `refused`: the Job
/// controller's latest `FailedCreate` message for the Job.
pub fn stall(
    job_started: Option<DateTime<Utc>>,
    pods: Option<&RunPods>,
    refused: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Stall> {
    let empty = RunPods::default();
    let pods = pods.unwrap_or(&empty);
    if pods.pods.values().any(|p| p.running) {
        return None;
    }
    // Since the Job began, its last pod ran, or its oldest waiting pod was
    // created: whichever is latest (a pod created just now has not had its
    // chance yet, and after a restart kedge may not know when a pod last ran).
    let oldest_waiting = pods.pods.values().map(|p| p.created).min();
    let since = [job_started, pods.progressed, oldest_waiting]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
    let best = pods
        .pods
        .iter()
        .filter_map(|(name, p)| Some((name, p.evidence.as_ref()?)))
        .min_by_key(|(name, (reason, _))| (rank(reason), name.as_str()));
    let (reason, message) = match (best, refused) {
        (Some((_, (reason, message))), _) => (reason.clone(), message.clone()),
        (None, Some(m)) if pods.pods.is_empty() => ("FailedCreate".to_string(), m.to_string()),
        (None, _) if pods.pods.is_empty() => {
            ("NoPods".to_string(), "the Job has no pods".to_string())
        }
        (None, _) => {
            let name = pods.pods.keys().min().cloned().unwrap_or_default();
            ("Pending".to_string(), format!("pod {name} has not started"))
        }
    };
    Some(Stall {
        stalled_for: (now - since).to_std().unwrap_or_default(),
        reason,
        message,
    })
}

/// A `FailedCreate` Event's Job name and message.
pub fn failed_create(e: &Event) -> Option<(String, String)> {
    if e.reason.as_deref() != Some("FailedCreate") {
        return None;
    }
    Some((
        e.involved_object.name.clone()?,
        e.message.clone().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "r-1-abcde", "labels": {LABEL_RUN: "r-1"},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": status,
        }))
        .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_container_error_is_more_telling_than_scheduling_or_creating() {
        let p = pod(json!({"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}],
            "containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}));
        assert_eq!(
            evidence(&p),
            Some(("ErrImagePull".into(), "not found".into()))
        );
        let p = pod(json!({"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}));
        assert_eq!(
            evidence(&p),
            Some(("Unschedulable".into(), "0/3 nodes".into()))
        );
        let p = pod(json!({"phase": "Pending",
            "containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(
            evidence(&p),
            Some(("ContainerCreating".into(), String::new()))
        );
    }

    #[test]
    fn a_stall_counts_from_the_latest_of_job_start_progress_and_oldest_waiting_pod() {
        let now = at("2026-01-01T00:10:00Z");
        let mut runs = HashMap::new();
        let (run, seen) = see(&pod(json!({"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]})))
        .unwrap();
        apply(&mut runs, run, seen, false);
        let s = stall(Some(at("2025-12-31T23:59:00Z")), runs.get("r-1"), None, now).unwrap();
        assert_eq!(
            (s.stalled_for, s.reason.as_str()),
            (Duration::from_secs(600), "Unschedulable")
        );
        runs.get_mut("r-1").unwrap().progressed = Some(at("2026-01-01T00:05:00Z"));
        let s = stall(None, runs.get("r-1"), None, now).unwrap();
        assert_eq!(s.stalled_for, Duration::from_secs(300));
    }

    #[test]
    fn a_running_pod_means_no_stall_and_no_pods_reads_the_refusal() {
        let now = at("2026-01-01T00:10:00Z");
        let mut runs = HashMap::new();
        let (run, seen) = see(&pod(json!({"phase": "Running"}))).unwrap();
        apply(&mut runs, run, seen, false);
        assert_eq!(stall(None, runs.get("r-1"), None, now), None);
        let s = stall(
            Some(at("2026-01-01T00:00:00Z")),
            None,
            Some("Error creating: forbidden"),
            now,
        )
        .unwrap();
        assert_eq!(
            (s.reason.as_str(), s.message.as_str()),
            ("FailedCreate", "Error creating: forbidden")
        );
        let s = stall(Some(at("2026-01-01T00:00:00Z")), None, None, now).unwrap();
        assert_eq!(s.reason, "NoPods");
    }

    #[test]
    fn finished_and_deleted_pods_count_as_progress_only_for_known_runs() {
        let mut runs = HashMap::new();
        let (run, seen) = see(&pod(json!({"phase": "Succeeded"}))).unwrap();
        apply(&mut runs, run, seen, false);
        assert!(
            runs.is_empty(),
            "a finished pod of an unknown run is not recorded"
        );
        let (run, seen) = see(&pod(json!({"phase": "Pending"}))).unwrap();
        apply(&mut runs, run, seen, false);
        remove(&mut runs, "r-1", "r-1-abcde", false);
        assert!(runs.is_empty(), "nothing left to know about r-1");
    }
}
