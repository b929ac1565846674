//! Pods that never start, as a real cluster shows them (K8S_FIDELITY.md,
//! "Refusals"). Chosen per Job by items of the `kube-sim/outcome` script:
//!
//! - `refuse-pods`: every pod create is refused (Pod Security admission).
//!   The Job exists with no pods; the Job controller records a `Warning`
//!   Event with reason `FailedCreate` on the Job (one Event per Job, its
//!   `count` and `lastTimestamp` bumped on each repeat, as the event
//!   correlator does) and tries again with its API backoff: 1 s doubling,
//!   capped at 60 s (scaled by the time scale).
//! - `image-pull-error`: the pod is scheduled, waits in `ContainerCreating`
//!   for the start-up delay, then in `ErrImagePull`, and one start-up delay
//!   later in `ImagePullBackOff` for good.
//! - `invalid-image`: after the start-up delay, `InvalidImageName`.
//! - `config-error`: after the start-up delay, `CreateContainerConfigError`
//!   (a Secret key the container's env names does not exist).
//!
//! In each case the pod stays `Pending` and the Job gets no terminal
//! condition: the real Job controller fails none of them unless
//! `activeDeadlineSeconds` passes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::resource::EVENTS;
use crate::store::{timestamp, Store};

/// How a pod fails to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFault {
    RefusePods,
    ImagePull,
    InvalidImage,
    ConfigError,
}

impl StartFault {
    /// The script item naming this fault.
    pub fn parse(item: &str) -> Option<StartFault> {
        Some(match item {
            "refuse-pods" => StartFault::RefusePods,
            "image-pull-error" => StartFault::ImagePull,
            "invalid-image" => StartFault::InvalidImage,
            "config-error" => StartFault::ConfigError,
            _ => return None,
        })
    }

    /// The container waiting state (reason, message) the kubelet reports
    /// `waited` after the pod was scheduled, given the start-up delay.
    /// `None` while it is still `ContainerCreating` (and for refused pods).
    pub fn waiting(
        self,
        image: &str,
        waited: Duration,
        delay: Duration,
    ) -> Option<(String, String)> {
        if waited < delay {
            return None;
        }
        let (reason, message) = match self {
            StartFault::RefusePods => return None,
            StartFault::ImagePull if waited < delay * 2 => (
                "ErrImagePull",
                format!(
                    "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {image}: not found"
                ),
            ),
            StartFault::ImagePull => (
                "ImagePullBackOff",
                format!("Back-off pulling image \"{image}\""),
            ),
            StartFault::InvalidImage => (
                "InvalidImageName",
                format!(
                    "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
                ),
            ),
            StartFault::ConfigError => (
                "CreateContainerConfigError",
                "secret \"kube-sim-missing\" not found".to_string(),
            ),
        };
        Some((reason.to_string(), message))
    }
}

/// The Job controller's wait after its `n`-th refused pod create in a row
/// (n ≥ 1): 1 s doubling, capped at 60 s, before scaling.
pub fn refusal_backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << (n.saturating_sub(1)).min(6)).min(Duration::from_secs(60))
}

/// The message Pod Security admission gives for a refused pod of `job`.
pub fn refusal_message(pod: &str) -> String {
    format!(
        "Error creating: pods \"{pod}\" is forbidden: violates PodSecurity \"restricted:latest\": \
         allowPrivilegeEscalation != false (container \"main\" must set securityContext.allowPrivilegeEscalation=false), \
         runAsNonRoot != true (pod or container \"main\" must set securityContext.runAsNonRoot=true)"
    )
}

/// Records a `FailedCreate` Warning on Job `job` (namespace `ns`, uid
/// `uid`): a new Event the first time, the same Event's `count` and
/// `lastTimestamp` bumped on repeats.
pub fn record_failed_create(store: &Store, ns: &str, job: &str, uid: &str, message: &str) {
    let name = format!("{job}.{}", &uid.replace('-', "")[..16.min(uid.len())]);
    let now = timestamp();
    let bumped = store.update(&EVENTS, ns, &name, |cur| {
        let mut n = cur.clone();
        n["count"] = json!(cur["count"].as_i64().unwrap_or(1) + 1);
        n["lastTimestamp"] = json!(now);
        n["message"] = json!(message);
        Ok(n)
    });
    if bumped.is_ok() {
        return;
    }
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "namespace": ns, "name": job, "uid": uid},
        "reason": "FailedCreate",
        "message": message,
        "source": {"component": "job-controller"},
        "reportingComponent": "job-controller",
        "reportingInstance": "",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": "Warning",
    });
    // A create racing another pass's create of the same name loses to it;
    // that pass's Event stands for this refusal too.
    let _ = store.create(&EVENTS, ns, event);
}

/// Sets the first container's waiting state on a Pending pod.
pub fn set_waiting(pod: &mut Value, reason: &str, message: &str) {
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                        "started": false, "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    pod["status"]["containerStatuses"] = json!(statuses);
}

/// The `PodScheduled` condition the scheduler writes.
pub fn scheduled_condition(ok: bool) -> Value {
    if ok {
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": timestamp()})
    } else {
        json!({
            "type": "PodScheduled", "status": "False", "lastProbeTime": null,
            "lastTransitionTime": timestamp(), "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_errors_back_off_after_one_delay() {
        let d = Duration::from_secs(1);
        let f = StartFault::ImagePull;
        assert_eq!(f.waiting("x:1", Duration::from_millis(500), d), None);
        assert_eq!(f.waiting("x:1", d, d).unwrap().0, "ErrImagePull");
        assert_eq!(f.waiting("x:1", d * 3, d).unwrap().0, "ImagePullBackOff");
        let (reason, message) = StartFault::InvalidImage.waiting("Bad Image", d, d).unwrap();
        assert_eq!(reason, "InvalidImageName");
        assert!(message.contains("invalid reference format"));
    }

    #[test]
    fn refusals_back_off_one_second_doubling_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| refusal_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
