//! Core-group ConfigMaps and Events through a real kube::Client, and the
//! garbage collection of a ConfigMap owned by a Job.
mod common;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

fn cm(name: &str, extra: serde_json::Value) -> ConfigMap {
    let mut v = json!({"metadata": {"name": name, "labels": {"app": "kedge"}}, "data": {"payload.json": "{}"}});
    merge(&mut v, extra);
    serde_json::from_value(v).expect("configmap")
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Polls `f` until it holds, for at most 5 s.
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "not reached in 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn configmaps_create_get_list_replace_delete() {
    let (_sim, client) = start_quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let made = cms.create(&pp, &cm("a", json!({}))).await.unwrap();
    cms.create(
        &pp,
        &cm("b", json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    assert_eq!(
        made.metadata.generation, None,
        "ConfigMaps have no generation"
    );
    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.clone().unwrap()["payload.json"], "{}");
    let listed = cms
        .list(&ListParams::default().labels("app=kedge"))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    let mut changed = got;
    changed.data = Some([("payload.json".to_string(), "[1]".to_string())].into());
    let out = cms.replace("a", &pp, &changed).await.unwrap();
    assert_eq!(out.data.unwrap()["payload.json"], "[1]");
    let gone = cms.delete("a", &DeleteParams::default()).await.unwrap();
    let s = gone
        .right()
        .expect("ConfigMaps default to Background: gone at once");
    assert_eq!(s.details.unwrap().uid, made.metadata.uid.unwrap());
    let s = status(cms.get("a").await.unwrap_err());
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", r#"configmaps "a" not found"#)
    );
    let d = s.details.unwrap();
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("a", "", "configmaps")
    );
    let s = status(cms.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(
        (s.code, s.message.as_str()),
        (404, r#"configmaps "a" not found"#)
    );
    let s = status(cms.create(&pp, &cm("b", json!({}))).await.unwrap_err());
    assert_eq!(
        (s.code, s.message.as_str()),
        (409, r#"configmaps "b" already exists"#)
    );
}

#[tokio::test]
async fn configmap_keys_and_size_are_validated() {
    let (_sim, client) = start_quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let s = status(
        cms.create(&pp, &cm("bad", json!({"data": {"no spaces": "x"}})))
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.starts_with(r#"ConfigMap "bad" is invalid: data[no spaces]: Invalid value: "no spaces": a valid config key"#),
        "{}",
        s.message
    );
    assert_eq!(s.details.unwrap().kind, "ConfigMap");
    let big = "x".repeat(validation_max() + 1);
    let s = status(
        cms.create(&pp, &cm("big", json!({"data": {"payload.json": big}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    assert!(s.message.contains("Too long"), "{}", s.message);
    let fits = "x".repeat(validation_max());
    cms.create(&pp, &cm("fits", json!({"data": {"payload.json": fits}})))
        .await
        .unwrap();
}

fn validation_max() -> usize {
    kube_sim::validation::MAX_CONFIGMAP_BYTES
}

fn event(name: &str, involved_ns: &str, job: &Job) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
                           "namespace": involved_ns, "uid": job.metadata.uid},
        "reason": "Launched", "message": "kedge launched the run", "type": "Normal",
        "source": {"component": "kedge"}, "count": 1,
        "firstTimestamp": "2024-05-06T07:08:09Z", "lastTimestamp": "2024-05-06T07:08:09Z"
    }))
    .expect("event")
}

#[tokio::test]
async fn events_create_get_list_delete() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let j = create(&jobs, "run-1", json!({})).await;
    let made = events
        .create(&pp, &event("run-1.1", "default", &j))
        .await
        .unwrap();
    assert_eq!(made.reason.as_deref(), Some("Launched"));
    let got = events.get("run-1.1").await.unwrap();
    assert_eq!(got.involved_object.uid, j.metadata.uid);
    let listed = events
        .list(&ListParams::default().fields("metadata.name=run-1.1"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let s = status(
        events
            .create(&pp, &event("run-1.2", "elsewhere", &j))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (
            422,
            r#"Event "run-1.2" is invalid: involvedObject.namespace: Invalid value: "elsewhere": does not match event.namespace"#
        )
    );
    events
        .delete("run-1.1", &DeleteParams::default())
        .await
        .unwrap();
    let s = status(events.get("run-1.1").await.unwrap_err());
    assert_eq!(s.message, r#"events "run-1.1" not found"#);
}

async fn owned_by(cms: &Api<ConfigMap>, name: &str, uid: Option<String>, owner: &str) {
    let c = cm(
        name,
        json!({"metadata": {"ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": owner, "uid": uid,
            "controller": true, "blockOwnerDeletion": true}]}}),
    );
    cms.create(&PostParams::default(), &c).await.unwrap();
}

#[tokio::test]
async fn a_configmap_owned_by_a_job_follows_the_deletion_policy() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let bg = create(&jobs, "bg", json!({})).await;
    let orphan = create(&jobs, "orphan", json!({})).await;
    owned_by(&cms, "cm-bg", bg.metadata.uid.clone(), "bg").await;
    owned_by(&cms, "cm-orphan", orphan.metadata.uid.clone(), "orphan").await;

    jobs.delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    eventually("cm-bg collected", || async {
        cms.get_opt("cm-bg").await.unwrap().is_none()
    })
    .await;

    jobs.delete("orphan", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually("job orphan gone", || async {
        jobs.get_opt("orphan").await.unwrap().is_none()
    })
    .await;
    let kept = cms.get("cm-orphan").await.unwrap();
    assert!(
        kept.metadata.owner_references.is_none(),
        "orphaned: reference removed"
    );
}

#[tokio::test]
async fn a_configmap_whose_owner_uid_does_not_exist_is_collected() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let elsewhere: Api<Job> = Api::namespaced(client, "kube-system");
    let live = create(&jobs, "live", json!({})).await;
    let other_ns = create(&elsewhere, "there", json!({})).await;
    owned_by(&cms, "cm-live", live.metadata.uid.clone(), "live").await;
    owned_by(
        &cms,
        "cm-ghost",
        Some("00000000-0000-0000-0000-000000000000".into()),
        "ghost",
    )
    .await;
    owned_by(&cms, "cm-cross-ns", other_ns.metadata.uid.clone(), "there").await;
    eventually("dangling dependents collected", || async {
        cms.get_opt("cm-ghost").await.unwrap().is_none()
            && cms.get_opt("cm-cross-ns").await.unwrap().is_none()
    })
    .await;
    assert!(cms.get_opt("cm-live").await.unwrap().is_some());
}

/// events.k8s.io/v1 Events are the core Events seen through another
/// version: kube-runtime's Recorder creates one and patches its series,
/// and the core API shows the same object converted.
#[tokio::test]
async fn events_k8s_io_v1_share_storage_with_core_events_and_are_validated_strictly() {
    use k8s_openapi::api::events::v1::Event as EventV1;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
    use kube::Resource;
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let j = create(&jobs, "run-9", json!({})).await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kedge".into(),
            instance: Some("kedge-0".into()),
        },
    );
    let note = Note {
        type_: EventType::Warning,
        reason: "AtRisk".into(),
        note: Some("may miss its deadline".into()),
        action: "Size".into(),
        secondary: None,
    };
    let reference = j.object_ref(&());
    recorder.publish(&note, &reference).await.unwrap();
    recorder.publish(&note, &reference).await.unwrap();

    let v1: Api<EventV1> = Api::namespaced(client.clone(), "default");
    let listed = v1
        .list(&ListParams::default().fields("regarding.name=run-9,reason=AtRisk"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "the repeat is a series on one Event");
    let e = &listed.items[0];
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(e.note.as_deref(), Some("may miss its deadline"));

    let core: Api<Event> = Api::namespaced(client.clone(), "default");
    let same = core.get(e.metadata.name.as_deref().unwrap()).await.unwrap();
    assert_eq!(same.message.as_deref(), Some("may miss its deadline"));
    assert_eq!(same.reporting_component.as_deref(), Some("kedge"));
    assert_eq!(same.involved_object.uid, j.metadata.uid);
    assert_eq!(same.series.as_ref().and_then(|s| s.count), Some(2));
    // A field label of the other version is not known.
    let s = status(
        v1.list(&ListParams::default().fields("involvedObject.name=run-9"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 400, "{}", s.message);

    // Strict create: eventTime required, no deprecated fields.
    let bad: EventV1 = serde_json::from_value(json!({
        "metadata": {"name": "bad.1"},
        "regarding": {"kind": "Job", "name": "run-9", "namespace": "default"},
        "reason": "Launched", "action": "Create", "type": "Normal",
        "reportingController": "kedge", "reportingInstance": "kedge-0",
        "deprecatedCount": 2
    }))
    .unwrap();
    let s = status(v1.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(s.code, 422);
    assert_eq!(
        s.message,
        r#"Event.events.k8s.io "bad.1" is invalid: [eventTime: Required value, deprecatedCount: Invalid value: "": needs to be unset]"#
    );
    // Only the series may change.
    let s = status(
        v1.patch(
            e.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(json!({"note": "something else"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    assert!(
        s.message
            .contains("message: Invalid value: \"something else\": field is immutable"),
        "{}",
        s.message
    );
}
