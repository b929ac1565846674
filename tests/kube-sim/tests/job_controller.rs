//! The simulated Job controller, kubelet and TTL controller through a real kube::Client.
mod common;
use common::*;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube_sim::SimConfig;
use serde_json::{json, Value};
use std::time::Duration;

/// 1 simulated second = 20 ms: Pending → Running 20 ms, backoff 200 ms.
async fn fast() -> (kube_sim::KubeSim, kube::Client) {
    start_with(SimConfig {
        time_scale: 0.02,
        ..Default::default()
    })
    .await
}

fn job_with(name: &str, outcome: &str, spec: Value) -> Job {
    let mut j = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {
            "metadata": {"annotations": {"kube-sim/outcome": outcome}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}
        }}
    });
    if let (Some(s), Some(extra)) = (j["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(j).expect("job")
}

async fn wait_for(jobs: &Api<Job>, name: &str, what: &str, f: impl Fn(&Job) -> bool) -> Job {
    for _ in 0..500 {
        if let Some(j) = jobs.get_opt(name).await.unwrap() {
            if f(&j) {
                return j;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {name}: {what}");
}

fn condition_types(j: &Job) -> Vec<String> {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect()
}

fn has(j: &Job, ty: &str) -> bool {
    condition_types(j).iter().any(|t| t == ty)
}

fn reason(j: &Job, ty: &str) -> String {
    let cs = j.status.as_ref().unwrap().conditions.clone().unwrap();
    let c = cs.into_iter().find(|c| c.type_ == ty).unwrap();
    assert_eq!(c.status, "True");
    c.reason.unwrap()
}

async fn pods_of(client: &kube::Client, job: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

/// Every distinct non-empty list of condition types the Job goes through,
/// seen through a watch opened before this returns, until `last` appears.
async fn condition_history(
    jobs: &Api<Job>,
    name: &str,
    last: &'static str,
) -> tokio::task::JoinHandle<Vec<Vec<String>>> {
    let mut watch = jobs
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={name}")),
            "0",
        )
        .await
        .unwrap()
        .boxed();
    tokio::spawn(async move {
        let mut seen: Vec<Vec<String>> = Vec::new();
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("events")
        {
            if let WatchEvent::Added(j) | WatchEvent::Modified(j) = ev.unwrap() {
                let types = condition_types(&j);
                if !types.is_empty() && seen.last() != Some(&types) {
                    seen.push(types.clone());
                }
                if types.iter().any(|t| t == last) {
                    break;
                }
            }
        }
        seen
    })
}

fn phase(p: &Pod) -> String {
    p.status.as_ref().unwrap().phase.clone().unwrap()
}

#[tokio::test]
async fn success_sets_interim_condition_first_then_complete() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let history = condition_history(&jobs, "a", "Complete").await;
    let created = jobs
        .create(&PostParams::default(), &job_with("a", "succeed", json!({})))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(
        history.await.unwrap(),
        [
            vec!["SuccessCriteriaMet"],
            vec!["SuccessCriteriaMet", "Complete"]
        ],
        "the interim condition is seen on its own first"
    );
    let j = jobs.get("a").await.unwrap();
    assert_eq!(reason(&j, "SuccessCriteriaMet"), "CompletionsReached");
    assert_eq!(reason(&j, "Complete"), "CompletionsReached");
    let st = j.status.unwrap();
    assert_eq!(
        (st.succeeded, st.failed, st.active, st.ready),
        (Some(1), None, None, Some(0))
    );
    assert!(st.start_time.is_some() && st.completion_time.is_some());

    let pods = pods_of(&client, "a").await;
    assert_eq!(pods.len(), 1);
    let p = &pods[0];
    assert_eq!(phase(p), "Succeeded");
    assert!(p.metadata.name.as_ref().unwrap().starts_with("a-"));
    let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller,
            owner.block_owner_deletion
        ),
        ("Job", "a", uid.as_str(), Some(true), Some(true))
    );
    let labels = p.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
    assert_eq!(labels["controller-uid"], uid);
    assert_eq!(labels["job-name"], "a");
    let cs = &p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
}

#[tokio::test]
async fn parallelism_bounds_active_pods() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let spec = json!({"completions": 5, "parallelism": 2});
    jobs.create(&PostParams::default(), &job_with("p", "duration=10s", spec))
        .await
        .unwrap();
    loop {
        let j = jobs.get("p").await.unwrap();
        let running = pods_of(&client, "p")
            .await
            .iter()
            .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
            .count();
        assert!(running <= 2, "never more than parallelism pods at once");
        if has(&j, "Complete") {
            assert_eq!(j.status.unwrap().succeeded, Some(5));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pods_of(&client, "p").await.len(), 5);
}

#[tokio::test]
async fn failed_pods_are_replaced_within_backoff_limit() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_with("f", "fail-times=2", json!({})),
    )
    .await
    .unwrap();
    let j = wait_for(&jobs, "f", "Complete", |j| has(j, "Complete")).await;
    let st = j.status.unwrap();
    assert_eq!((st.succeeded, st.failed), (Some(1), Some(2)));
    let pods = pods_of(&client, "f").await;
    let mut phases: Vec<String> = pods.iter().map(phase).collect();
    phases.sort();
    assert_eq!(phases, ["Failed", "Failed", "Succeeded"]);
}

#[tokio::test]
async fn over_backoff_limit_is_failure_target_then_failed() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let history = condition_history(&jobs, "x", "Failed").await;
    jobs.create(
        &PostParams::default(),
        &job_with("x", "fail", json!({"backoffLimit": 1})),
    )
    .await
    .unwrap();
    assert_eq!(
        history.await.unwrap(),
        [vec!["FailureTarget"], vec!["FailureTarget", "Failed"]],
        "the interim condition is seen on its own first"
    );
    let j = wait_for(&jobs, "x", "Failed", |j| has(j, "Failed")).await;
    assert_eq!(condition_types(&j), ["FailureTarget", "Failed"]);
    assert_eq!(reason(&j, "FailureTarget"), "BackoffLimitExceeded");
    assert_eq!(reason(&j, "Failed"), "BackoffLimitExceeded");
    let st = j.status.unwrap();
    assert_eq!((st.failed, st.succeeded, st.active), (Some(2), None, None));
    assert!(
        st.completion_time.is_none(),
        "completionTime is for success only"
    );
    assert_eq!(pods_of(&client, "x").await.len(), 2);
}

#[tokio::test]
async fn active_deadline_fails_with_deadline_exceeded() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let spec = json!({"activeDeadlineSeconds": 10});
    jobs.create(&PostParams::default(), &job_with("d", "hang", spec))
        .await
        .unwrap();
    let j = wait_for(&jobs, "d", "Failed", |j| has(j, "Failed")).await;
    assert_eq!(condition_types(&j), ["FailureTarget", "Failed"]);
    assert_eq!(reason(&j, "Failed"), "DeadlineExceeded");
    assert_eq!(j.status.unwrap().active, None);
    assert!(
        pods_of(&client, "d").await.is_empty(),
        "active pods are removed"
    );
}

#[tokio::test]
async fn indexed_pods_carry_their_index_and_completed_indexes_compress() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let spec = json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed"});
    jobs.create(&PostParams::default(), &job_with("i", "succeed", spec))
        .await
        .unwrap();
    let j = wait_for(&jobs, "i", "Complete", |j| has(j, "Complete")).await;
    let st = j.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-3"));
    assert_eq!(st.succeeded, Some(4));
    let mut idx: Vec<String> = Vec::new();
    for p in pods_of(&client, "i").await {
        let i = p.metadata.annotations.as_ref().unwrap()
            ["batch.kubernetes.io/job-completion-index"]
            .clone();
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"],
            i
        );
        assert!(p
            .metadata
            .name
            .as_ref()
            .unwrap()
            .starts_with(&format!("i-{i}-")));
        let env = p.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
        idx.push(i);
    }
    idx.sort();
    assert_eq!(idx, ["0", "1", "2", "3"]);
}

#[tokio::test]
async fn backoff_limit_per_index_fails_only_the_bad_indexes() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let spec = json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed", "backoffLimitPerIndex": 1});
    jobs.create(
        &PostParams::default(),
        &job_with("b", "fail-indexes=1,3", spec),
    )
    .await
    .unwrap();
    let j = wait_for(&jobs, "b", "Failed", |j| has(j, "Failed")).await;
    assert_eq!(condition_types(&j), ["FailureTarget", "Failed"]);
    assert_eq!(reason(&j, "Failed"), "FailedIndexes");
    let st = j.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(st.failed_indexes.as_deref(), Some("1,3"));
    assert_eq!(
        (st.succeeded, st.failed),
        (Some(2), Some(4)),
        "each bad index tried twice"
    );
}

#[tokio::test]
async fn ttl_after_finished_deletes_the_job_and_its_pods() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_with("t", "succeed", json!({"ttlSecondsAfterFinished": 5})),
    )
    .await
    .unwrap();
    wait_for(&jobs, "t", "Complete", |j| has(j, "Complete")).await;
    for _ in 0..500 {
        if jobs.get_opt("t").await.unwrap().is_none() && pods_of(&client, "t").await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the Job and its pods outlived the TTL");
}

#[tokio::test]
async fn unschedulable_pods_stay_pending() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_with("u", "unschedulable", json!({})),
    )
    .await
    .unwrap();
    wait_for(&jobs, "u", "active", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // 25 simulated seconds
    let j = jobs.get("u").await.unwrap();
    assert!(condition_types(&j).is_empty());
    let st = j.status.unwrap();
    assert_eq!((st.active, st.ready), (Some(1), Some(0)));
    let pods = pods_of(&client, "u").await;
    assert_eq!(pods.len(), 1);
    let s = pods[0].status.as_ref().unwrap();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let c = &s.conditions.as_ref().unwrap()[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
        ("PodScheduled", "False", Some("Unschedulable"))
    );
    assert!(pods[0].spec.as_ref().unwrap().node_name.is_none());
}

/// Waits until `f` holds for the pods of `job`.
async fn wait_pods(
    client: &kube::Client,
    job: &str,
    what: &str,
    f: impl Fn(&[Pod]) -> bool,
) -> Vec<Pod> {
    for _ in 0..500 {
        let pods = pods_of(client, job).await;
        if f(&pods) {
            return pods;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for the pods of {job}: {what}");
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test]
async fn unschedulable_pods_carry_the_schedulers_message() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_with("um", "unschedulable", json!({})),
    )
    .await
    .unwrap();
    let pods = wait_pods(&client, "um", "one pod", |p| p.len() == 1).await;
    let c = &pods[0]
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()[0];
    assert!(
        c.message
            .as_deref()
            .is_some_and(|m| m.starts_with("0/3 nodes are available: 3 Insufficient cpu")),
        "{c:?}"
    );
}

#[tokio::test]
async fn pods_unschedulable_for_a_while_then_schedule_and_run() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    // 5 simulated seconds unschedulable = 100 ms.
    jobs.create(
        &PostParams::default(),
        &job_with("us", "unschedulable=5s", json!({})),
    )
    .await
    .unwrap();
    let pods = wait_pods(&client, "us", "one pod", |p| p.len() == 1).await;
    assert!(pods[0].spec.as_ref().unwrap().node_name.is_none());
    let j = wait_for(&jobs, "us", "Complete", |j| has(j, "Complete")).await;
    assert_eq!(j.status.unwrap().succeeded, Some(1));
    let pods = pods_of(&client, "us").await;
    assert_eq!(
        pods[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some("kube-sim-node")
    );
}

#[tokio::test]
async fn image_pull_errors_back_off_and_never_finish() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_with("ip", "image-pull-error", json!({})),
    )
    .await
    .unwrap();
    let pods = wait_pods(&client, "ip", "ErrImagePull", |p| {
        p.first().and_then(waiting_reason).as_deref() == Some("ErrImagePull")
    })
    .await;
    let w = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .waiting
        .clone()
        .unwrap();
    assert!(w.message.unwrap().contains("busybox:1"));
    let pods = wait_pods(&client, "ip", "ImagePullBackOff", |p| {
        p.first().and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(
        pods[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // 15 simulated seconds
    let j = jobs.get("ip").await.unwrap();
    assert!(condition_types(&j).is_empty(), "{:?}", condition_types(&j));
    assert_eq!(
        waiting_reason(&pods_of(&client, "ip").await[0]).as_deref(),
        Some("ImagePullBackOff")
    );
}

#[tokio::test]
async fn invalid_images_and_missing_secrets_wait_with_their_reason() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    for (name, script, reason) in [
        ("ii", "invalid-image", "InvalidImageName"),
        ("cc", "config-error", "CreateContainerConfigError"),
    ] {
        jobs.create(&PostParams::default(), &job_with(name, script, json!({})))
            .await
            .unwrap();
        wait_pods(&client, name, reason, |p| {
            p.first().and_then(waiting_reason).as_deref() == Some(reason)
        })
        .await;
    }
}

#[tokio::test]
async fn refused_pods_leave_failed_create_events_and_back_off() {
    use k8s_openapi::api::core::v1::Event;
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_with("rp", "refuse-pods", json!({})),
    )
    .await
    .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default()
        .fields("involvedObject.kind=Job,involvedObject.name=rp,reason=FailedCreate");
    // The first refusal, then the fourth: the Job controller waits 1 + 2 +
    // 4 simulated seconds (140 ms) between them; without a backoff its
    // 20 ms passes would take 60 ms.
    let count = |min: i32| {
        let (events, lp) = (events.clone(), lp.clone());
        async move {
            for _ in 0..500 {
                let list = events.list(&lp).await.unwrap().items;
                if let Some(e) = list.into_iter().find(|e| e.count.unwrap_or(0) >= min) {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no FailedCreate event with count >= {min}");
        }
    };
    count(1).await;
    let first = std::time::Instant::now();
    let e = count(4).await;
    assert!(
        first.elapsed() >= Duration::from_millis(100),
        "{:?}",
        first.elapsed()
    );
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let msg = e.message.unwrap();
    assert!(
        msg.starts_with("Error creating: pods \"rp-") && msg.contains("violates PodSecurity"),
        "{msg}"
    );
    assert!(pods_of(&client, "rp").await.is_empty());
    let j = jobs.get("rp").await.unwrap();
    assert!(condition_types(&j).is_empty());
    assert_eq!(j.status.and_then(|s| s.active), None);
    let other = events
        .list(&ListParams::default().fields("reason=FailedCreate,involvedObject.name=nope"))
        .await
        .unwrap();
    assert!(other.items.is_empty());
    // A field the server does not index is refused, as kube-apiserver does.
    let bad = events
        .list(&ListParams::default().fields("message=x"))
        .await;
    assert!(matches!(bad, Err(kube::Error::Api(s)) if s.code == 400));
}

#[tokio::test]
async fn hanging_pods_run_and_are_ready() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(&PostParams::default(), &job_with("h", "hang", json!({})))
        .await
        .unwrap();
    let j = wait_for(&jobs, "h", "ready", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    assert_eq!(j.status.unwrap().active, Some(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(condition_types(&jobs.get("h").await.unwrap()).is_empty());
    assert_eq!(phase(&pods_of(&client, "h").await[0]), "Running");
}

#[tokio::test]
async fn time_scale_stretches_every_delay() {
    // At scale 10 a pod stays Pending for 10 s, so still after 1 s.
    let (_sim, client) = start_with(SimConfig {
        time_scale: 10.0,
        ..Default::default()
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(&PostParams::default(), &job_with("s", "succeed", json!({})))
        .await
        .unwrap();
    wait_for(&jobs, "s", "active", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods = pods_of(&client, "s").await;
    assert_eq!(phase(&pods[0]), "Pending");
    let st = jobs.get("s").await.unwrap().status.unwrap();
    assert_eq!((st.ready, st.succeeded), (Some(0), None));
}

#[tokio::test]
async fn a_deleted_running_pod_counts_as_failed_and_is_replaced() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(&PostParams::default(), &job_with("r", "hang", json!({})))
        .await
        .unwrap();
    wait_for(&jobs, "r", "ready", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    let first = pods_of(&client, "r").await.remove(0);
    let first_name = first.metadata.name.clone().unwrap();
    pods.delete(&first_name, &Default::default()).await.unwrap();
    let j = wait_for(&jobs, "r", "failed 1, active 1", |j| {
        let s = j.status.as_ref().unwrap();
        (s.failed, s.active) == (Some(1), Some(1))
    })
    .await;
    assert!(condition_types(&j).is_empty());
    let now = pods_of(&client, "r").await;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].metadata.name.as_ref(), Some(&first_name));
}

#[tokio::test]
async fn max_failed_indexes_ends_the_job_early() {
    let (_sim, client) = fast().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let spec = json!({"completions": 3, "parallelism": 1, "completionMode": "Indexed",
        "backoffLimitPerIndex": 0, "maxFailedIndexes": 0});
    jobs.create(
        &PostParams::default(),
        &job_with("m", "fail-indexes=0", spec),
    )
    .await
    .unwrap();
    let j = wait_for(&jobs, "m", "Failed", |j| has(j, "Failed")).await;
    assert_eq!(reason(&j, "Failed"), "MaxFailedIndexesExceeded");
    let st = j.status.unwrap();
    assert_eq!(st.failed_indexes.as_deref(), Some("0"));
    assert_eq!(st.completed_indexes, None);
    assert_eq!(st.active, None);
    assert_eq!(
        pods_of(&client, "m").await.len(),
        1,
        "indexes 1 and 2 never started"
    );
}
