//! Pure: a rendered [`Launch`] → the Kubernetes objects that carry it (a
//! `batch/v1` Job and, when the payload does not fit in an env var or the
//! run is a batch, a ConfigMap). `kedge render` prints exactly these.
//!
//! Every object carries kedge's labels — `app.kubernetes.io/managed-by:
//! kedge`, `kedge.dev/instance` (the store's id, so two kedge installations
//! can share a namespace), `kedge.dev/job`, `kedge.dev/run` — and the Job
//! carries annotations that say why it exists (trigger, message id,
//! scheduled time, deadline, attempt, sizing reason). The Job is named by
//! its run id, which is deterministic (DESIGN §4), so re-creating it after a
//! crash answers 409 and the existing Job is adopted.
//!
//! The ConfigMap has the Job's name and is mounted read-only at
//! [`PAYLOAD_DIR`]: key `payload` for a large single payload
//! (`KEDGE_PAYLOAD_FILE`), keys `0`…`n-1` for a batch (one per completion
//! index). It is created *before* the Job, so no pod ever waits for it, and
//! then given the Job as its controlling owner ([`owned_by`]); start-up
//! reconciliation removes one left without an owner by a crash.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, EnvVar, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::config::KubernetesConfig;
use crate::executor::render::{literal, LABEL_JOB, LABEL_MANAGED_BY, LABEL_RUN, PAYLOAD_DIR};
use crate::executor::Launch;

/// The store instance a kedge object belongs to.
pub const LABEL_INSTANCE: &str = "kedge.dev/instance";
/// The run a Job was created for; checked before adopting an existing Job.
pub const ANNOTATION_RUN: &str = "kedge.dev/run";
/// Why sizing chose the run's parallelism (on the pod template and the Job).
pub const ANNOTATION_SIZING_REASON: &str = "kedge.dev/sizing-reason";
/// Which daemon created the Job (its leader identity).
pub const ANNOTATION_LAUNCHED_BY: &str = "kedge.dev/launched-by";
/// The volume that mounts the payload ConfigMap.
pub const PAYLOAD_VOLUME: &str = "kedge-payload";
/// The ConfigMap key of a single large payload.
pub const PAYLOAD_KEY: &str = "payload";

/// Where and as whom the objects are created.
#[derive(Debug, Clone)]
pub struct Placement {
    pub namespace: String,
    /// The store's instance id ([`LABEL_INSTANCE`]).
    pub instance: String,
    /// The daemon's identity ([`ANNOTATION_LAUNCHED_BY`]).
    pub identity: String,
    /// `ttlSecondsAfterFinished` when the template sets none: a backstop
    /// that removes a finished Job even if kedge never gets to.
    pub ttl_seconds_after_finished: i32,
}

impl Placement {
    /// Where `cfg`'s executor puts a launch's objects: in `namespace`,
    /// labelled with the store's `instance`, launched by `identity`.
    pub fn new(
        cfg: &KubernetesConfig,
        namespace: String,
        instance: String,
        identity: String,
    ) -> Placement {
        Placement {
            namespace,
            instance,
            identity,
            ttl_seconds_after_finished: cfg.ttl_seconds_after_finished.min(i32::MAX as u32) as i32,
        }
    }
}

/// The objects of one launch.
#[derive(Debug, Clone)]
pub struct Objects {
    pub job: Job,
    /// The payload ConfigMap, without its owner (set once the Job exists).
    pub config_map: Option<ConfigMap>,
}

/// The label selector that matches every object of this kedge instance.
pub fn selector(instance: &str) -> String {
    format!("{LABEL_MANAGED_BY}=kedge,{LABEL_INSTANCE}={instance}")
}

/// Builds the objects for `launch`.
pub fn objects(launch: &Launch, at: &Placement) -> Objects {
    let labels: BTreeMap<String, String> = [
        (LABEL_MANAGED_BY, "kedge"),
        (LABEL_INSTANCE, at.instance.as_str()),
        (LABEL_JOB, launch.job.as_str()),
        (LABEL_RUN, launch.run_id.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let mut spec = launch.spec.clone();
    if spec.ttl_seconds_after_finished.is_none() {
        spec.ttl_seconds_after_finished = Some(at.ttl_seconds_after_finished);
    }
    // Pods carry the instance label too, so one selector finds them.
    let pod_meta = spec.template.metadata.get_or_insert_with(Default::default);
    pod_meta
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());

    // The Job's annotations: what kedge knows about the run, plus the
    // sizing decision the dispatcher wrote on the pod template.
    let mut annotations: BTreeMap<String, String> = launch.annotations.clone();
    if let Some(a) = &pod_meta.annotations {
        for (k, v) in a {
            if k.starts_with(crate::executor::render::ANNOTATION_PREFIX) {
                annotations.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    annotations.insert(ANNOTATION_RUN.into(), launch.run_id.clone());
    annotations.insert(ANNOTATION_LAUNCHED_BY.into(), at.identity.clone());

    let data: Option<BTreeMap<String, String>> = if !launch.batch.is_empty() {
        Some(
            launch
                .batch
                .iter()
                .enumerate()
                .map(|(i, p)| (i.to_string(), p.clone().unwrap_or_default()))
                .collect(),
        )
    } else {
        launch
            .payload_file
            .as_ref()
            .map(|p| [(PAYLOAD_KEY.to_string(), p.clone())].into())
    };
    let config_map = data.map(|data| {
        mount_payload(&mut spec, &launch.run_id, launch.batch.is_empty());
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(launch.run_id.clone()),
                namespace: Some(at.namespace.clone()),
                labels: Some(labels.clone()),
                annotations: Some([(ANNOTATION_RUN.to_string(), launch.run_id.clone())].into()),
                ..Default::default()
            },
            data: Some(data),
            immutable: Some(true),
            ..Default::default()
        }
    });

    let job = Job {
        metadata: ObjectMeta {
            name: Some(launch.run_id.clone()),
            namespace: Some(at.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    Objects { job, config_map }
}

/// Mounts ConfigMap `name` read-only at [`PAYLOAD_DIR`] in every container;
/// a single payload also gets `KEDGE_PAYLOAD_FILE`.
fn mount_payload(spec: &mut k8s_openapi::api::batch::v1::JobSpec, name: &str, single: bool) {
    let Some(pod) = spec.template.spec.as_mut() else {
        return;
    };
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: PAYLOAD_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    });
    for c in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
    {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: PAYLOAD_VOLUME.into(),
                mount_path: PAYLOAD_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        if single {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "KEDGE_PAYLOAD_FILE".into(),
                value: Some(literal(&format!("{PAYLOAD_DIR}/{PAYLOAD_KEY}"))),
                value_from: None,
            });
        }
    }
}

/// The sizing explanation when it flagged the Job at risk of missing its
/// deadline (`kedge.dev/at-risk: "true"`), `None` otherwise.
pub fn at_risk(job: &Job) -> Option<String> {
    let a = job.metadata.annotations.as_ref()?;
    if a.get("kedge.dev/at-risk").map(String::as_str) != Some("true") {
        return None;
    }
    Some(
        a.get(ANNOTATION_SIZING_REASON)
            .cloned()
            .unwrap_or_else(|| "the run may miss its deadline".into()),
    )
}

/// The ownerReference that makes `job` the controlling owner of a payload
/// ConfigMap: deleting the Job (Background) collects the ConfigMap.
pub fn owned_by(job_name: &str, job_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job_name.to_string(),
        uid: job_uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    fn launch() -> Launch {
        Launch {
            run_id: "orders-0a1b2c3d4e".into(),
            job: "orders".into(),
            attempt: 1,
            spec: JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "main".into(),
                            image: Some("busybox".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            payload_file: None,
            batch: Vec::new(),
            deadline: None,
            annotations: [("kedge.dev/trigger".to_string(), "queue".to_string())].into(),
        }
    }

    fn placement() -> Placement {
        Placement {
            namespace: "batch".into(),
            instance: "i-1".into(),
            identity: "kedge-0".into(),
            ttl_seconds_after_finished: 3600,
        }
    }

    #[test]
    fn small_payload_needs_no_config_map() {
        let o = objects(&launch(), &placement());
        assert!(o.config_map.is_none());
        let meta = &o.job.metadata;
        assert_eq!(meta.name.as_deref(), Some("orders-0a1b2c3d4e"));
        assert_eq!(meta.namespace.as_deref(), Some("batch"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_INSTANCE], "i-1");
        assert_eq!(labels[LABEL_RUN], "orders-0a1b2c3d4e");
        let ann = meta.annotations.as_ref().unwrap();
        assert_eq!(ann[ANNOTATION_RUN], "orders-0a1b2c3d4e");
        assert_eq!(ann[ANNOTATION_LAUNCHED_BY], "kedge-0");
        assert_eq!(ann["kedge.dev/trigger"], "queue");
        let spec = o.job.spec.as_ref().unwrap();
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(pod_labels[LABEL_INSTANCE], "i-1");
        assert!(spec.template.spec.as_ref().unwrap().volumes.is_none());
    }

    #[test]
    fn template_ttl_wins_over_the_backstop() {
        let mut l = launch();
        l.spec.ttl_seconds_after_finished = Some(5);
        let o = objects(&l, &placement());
        assert_eq!(o.job.spec.unwrap().ttl_seconds_after_finished, Some(5));
    }

    #[test]
    fn large_payload_goes_to_a_mounted_config_map() {
        let mut l = launch();
        l.payload_file = Some("x".repeat(40_000));
        let o = objects(&l, &placement());
        let cm = o.config_map.expect("config map");
        assert_eq!(cm.metadata.name.as_deref(), Some("orders-0a1b2c3d4e"));
        assert_eq!(cm.data.as_ref().unwrap()[PAYLOAD_KEY].len(), 40_000);
        let pod = o.job.spec.unwrap().template.spec.unwrap();
        let vol = &pod.volumes.unwrap()[0];
        assert_eq!(vol.config_map.as_ref().unwrap().name, "orders-0a1b2c3d4e");
        let c = &pod.containers[0];
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, PAYLOAD_DIR);
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "KEDGE_PAYLOAD_FILE"
            && e.value.as_deref() == Some("/var/run/kedge/payload/payload")));
    }

    #[test]
    fn batch_has_one_key_per_index() {
        let mut l = launch();
        l.batch = vec![Some("{\"a\":1}".into()), None, Some("{}".into())];
        let o = objects(&l, &placement());
        let data = o.config_map.unwrap().data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
        assert_eq!(data["1"], "");
        let c = &o.job.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(
            c.env.is_none(),
            "batches read $KEDGE_PAYLOAD_DIR, not a file var"
        );
    }

    #[test]
    fn owner_reference_is_a_blocking_controller() {
        let r = owned_by("j", "uid-1");
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str()),
            ("batch/v1", "Job")
        );
    }
}
