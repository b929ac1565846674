//! Jobs through a real kube::Client: create, get, list, update, patch, delete.
mod common;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn create_fills_server_metadata() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let mut j = job("a", json!({}));
    j.status = Some(Default::default());
    j.status.as_mut().unwrap().succeeded = Some(9);
    let a = jobs.create(&PostParams::default(), &j).await.unwrap();
    let b = create(&jobs, "b", json!({})).await;
    let (ma, mb) = (&a.metadata, &b.metadata);
    assert!(ma.uid.is_some() && ma.creation_timestamp.is_some());
    assert_eq!(ma.generation, Some(1));
    let rva: u64 = ma.resource_version.as_ref().unwrap().parse().unwrap();
    let rvb: u64 = mb.resource_version.as_ref().unwrap().parse().unwrap();
    assert!(rvb > rva, "one global increasing counter");
    assert_eq!(a.status.unwrap().succeeded, None, "client status dropped");
    let spec = a.spec.unwrap();
    assert_eq!(
        (spec.parallelism, spec.completions, spec.backoff_limit),
        (Some(1), Some(1), Some(6))
    );
    assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
    let uid = ma.uid.clone().unwrap();
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["batch.kubernetes.io/controller-uid"],
        uid
    );
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    for k in ["job-name", "batch.kubernetes.io/job-name"] {
        assert_eq!(labels[k], "a");
    }
    for k in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
        assert_eq!(labels[k], uid);
    }
}

#[tokio::test]
async fn already_exists_and_not_found_are_status_objects() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    create(&jobs, "x", json!({})).await;
    let s = status(
        jobs.create(&PostParams::default(), &job("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (409, "AlreadyExists", r#"jobs.batch "x" already exists"#)
    );
    let d = s.details.unwrap();
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("x", "batch", "jobs")
    );
    let s = status(jobs.get("nope").await.unwrap_err());
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", r#"jobs.batch "nope" not found"#)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let s = status(cms.get("cm").await.unwrap_err());
    assert_eq!(s.message, r#"configmaps "cm" not found"#);
    assert_eq!(s.details.unwrap().group, "");
    let other: Api<Job> = Api::namespaced(client, "missing-ns");
    let s = status(
        other
            .create(&PostParams::default(), &job("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.message, r#"namespaces "missing-ns" not found"#);
}

#[tokio::test]
async fn invalid_names_are_422_with_causes() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let s = status(
        jobs.create(&PostParams::default(), &job("Bad_Name", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(s.message.starts_with(r#"Job.batch "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#), "{}", s.message);
    let d = s.details.unwrap();
    assert_eq!(d.kind, "Job");
    assert_eq!(d.causes[0].field, "metadata.name");
    assert_eq!(d.causes[0].reason, "FieldValueInvalid");
    let long = "a".repeat(64);
    let s = status(
        jobs.create(&PostParams::default(), &job(&long, json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains("must be no more than 63 characters"),
        "{}",
        s.message
    );
    let ok = "a".repeat(63);
    jobs.create(&PostParams::default(), &job(&ok, json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn generate_name_cuts_and_appends() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let mut j = job("", json!({}));
    j.metadata.name = None;
    j.metadata.generate_name = Some(format!("{}-", "g".repeat(70)));
    let made = jobs.create(&PostParams::default(), &j).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert_eq!(name.len(), 63);
    assert!(name.starts_with(&"g".repeat(58)));
}

#[tokio::test]
async fn list_label_and_field_selectors() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({"app": "kedge", "tier": "x"})).await;
    create(&jobs, "b", json!({"app": "kedge", "tier": "y"})).await;
    create(&jobs, "c", json!({"app": "other"})).await;
    let names = |l: kube::core::ObjectList<Job>| {
        l.items
            .into_iter()
            .map(|j| j.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(jobs.list(&q("app=kedge")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(jobs.list(&q("tier in (y,z)")).await.unwrap()), ["b"]);
    assert_eq!(
        names(jobs.list(&q("tier notin (x)")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(names(jobs.list(&q("tier")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(jobs.list(&q("!tier")).await.unwrap()), ["c"]);
    assert_eq!(names(jobs.list(&q("app!=kedge")).await.unwrap()), ["c"]);
    assert_eq!(
        names(
            jobs.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let s = status(
        jobs.list(&ListParams::default().fields("spec.parallelism=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    let list = jobs.list(&ListParams::default()).await.unwrap();
    assert!(list.metadata.resource_version.is_some());
}

#[tokio::test]
async fn list_pages_share_a_snapshot() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    for n in ["a", "b", "c"] {
        create(&jobs, n, json!({})).await;
    }
    let p1 = jobs.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(p1.items.len(), 2);
    let token = p1.metadata.continue_.clone().unwrap();
    jobs.delete("c", &DeleteParams::background()).await.unwrap();
    create(&jobs, "d", json!({})).await;
    let p2 = jobs
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<_> = p2
        .items
        .iter()
        .map(|j| j.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["c"],
        "the second page is read at the first page's snapshot"
    );
    assert_eq!(p2.metadata.resource_version, p1.metadata.resource_version);
    sim.expire_history();
    let s = status(
        jobs.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn stale_resource_version_on_update_is_409_conflict() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    let mut fresh = a.clone();
    fresh.spec.as_mut().unwrap().parallelism = Some(3);
    let updated = jobs
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(
        updated.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    let mut stale = a.clone();
    stale.spec.as_mut().unwrap().parallelism = Some(4);
    let s = status(
        jobs.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        r#"Operation cannot be fulfilled on jobs.batch "a": the object has been modified; please apply your changes to the latest version and try again"#
    );
}

#[tokio::test]
async fn merge_patch_and_template_immutability() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    let pp = PatchParams::default();
    let p = jobs
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}, "spec": {"parallelism": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["x"], "1");
    assert_eq!(p.spec.unwrap().parallelism, Some(2));
    let s = status(jobs.patch("a", &pp, &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "other:2"}]}}}}))).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.contains("spec.template: Invalid value")
            && s.message.contains("field is immutable"),
        "{}",
        s.message
    );
    let stale_rv = a.metadata.resource_version.unwrap();
    let s = status(
        jobs.patch(
            "a",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": stale_rv, "labels": {"y": "1"}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.reason, "Conflict");
    let s = jobs
        .patch("a", &pp, &Patch::Merge(json!({"status": {"succeeded": 3}})))
        .await
        .unwrap()
        .status
        .unwrap()
        .succeeded;
    assert_eq!(s, None, "status is not changed through the main resource");
    let st = jobs
        .patch_status("a", &pp, &Patch::Merge(json!({"status": {"succeeded": 3}})))
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().succeeded, Some(3));
}

#[tokio::test]
async fn delete_background_returns_success_status_and_collects_dependents() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    owned_cm(&cms, "cm-a", &a).await;
    let r = jobs.delete("a", &DeleteParams::background()).await.unwrap();
    let s = r.right().expect("a Success Status");
    assert_eq!(s.details.unwrap().uid, a.metadata.uid.unwrap());
    assert_eq!(status(jobs.get("a").await.unwrap_err()).code, 404);
    eventually(|| async { cms.get_opt("cm-a").await.unwrap().is_none() }).await;
}

#[tokio::test]
async fn delete_without_policy_orphans_a_jobs_dependents() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    owned_cm(&cms, "cm-a", &a).await;
    let r = jobs.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = r.left().expect("the Job, marked for deletion");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.finalizers.unwrap(), ["orphan"]);
    eventually(|| async { jobs.get_opt("a").await.unwrap().is_none() }).await;
    let cm = cms.get("cm-a").await.unwrap();
    assert!(
        cm.metadata.owner_references.is_none(),
        "orphaned: owner reference removed, object kept"
    );
}

#[tokio::test]
async fn delete_foreground_removes_dependents_first() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    owned_cm(&cms, "cm-a", &a).await;
    let r = jobs.delete("a", &DeleteParams::foreground()).await.unwrap();
    assert_eq!(
        r.left().unwrap().metadata.finalizers.unwrap(),
        ["foregroundDeletion"]
    );
    eventually(|| async { jobs.get_opt("a").await.unwrap().is_none() }).await;
    assert!(cms.get_opt("cm-a").await.unwrap().is_none());
}

#[tokio::test]
async fn delete_preconditions_and_dangling_owner() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let s = status(jobs.delete("a", &dp).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message
            .contains("Precondition failed: UID in precondition: wrong"),
        "{}",
        s.message
    );
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::background()
    };
    jobs.delete("a", &dry).await.unwrap();
    assert!(
        jobs.get_opt("a").await.unwrap().is_some(),
        "dryRun deletes nothing"
    );
    let mut ghost = job("ghost", json!({}));
    ghost.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    owned_cm(&cms, "cm-dangling", &ghost).await;
    eventually(|| async { cms.get_opt("cm-dangling").await.unwrap().is_none() }).await;
}

async fn owned_cm(cms: &Api<ConfigMap>, name: &str, owner: &Job) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": owner.metadata.name, "uid": owner.metadata.uid,
            "controller": true, "blockOwnerDeletion": true}]},
        "data": {"k": "v"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
}

async fn eventually<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 5 s");
}
