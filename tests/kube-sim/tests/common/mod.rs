#![allow(dead_code)]
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kube_sim::{KubeSim, SimConfig};
use serde_json::json;

pub async fn start() -> (KubeSim, kube::Client) {
    start_with(SimConfig::default()).await
}

/// A stand-in without the Job controller (a bare API server), for tests
/// that count every event on a Job.
pub async fn start_quiet() -> (KubeSim, kube::Client) {
    start_with(SimConfig {
        job_controller: false,
        ..Default::default()
    })
    .await
}

pub async fn start_with(cfg: SimConfig) -> (KubeSim, kube::Client) {
    let sim = KubeSim::start(cfg).await.expect("start kube-sim");
    let config = kube::Config::new(sim.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    (sim, client)
}

/// A minimal valid Job.
pub fn job(name: &str, labels: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}
    }))
    .expect("job")
}

pub async fn create(jobs: &Api<Job>, name: &str, labels: serde_json::Value) -> Job {
    jobs.create(&PostParams::default(), &job(name, labels))
        .await
        .expect("create")
}

/// The Status inside a kube error.
pub fn status(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
