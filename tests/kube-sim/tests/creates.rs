//! The create log (`KubeSim::creates`) and the object accessors
//! (`KubeSim::objects`, `KubeSim::object`) that other crates' tests assert on.
mod common;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

fn annotated(name: &str, who: &str) -> Job {
    let mut j = job(name, json!({"app": "kedge"}));
    j.metadata.annotations = Some([("kedge.dev/launched-by".to_string(), who.to_string())].into());
    j
}

#[tokio::test]
async fn every_create_request_is_recorded_with_its_outcome() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let a = jobs.create(&pp, &annotated("a", "daemon-a")).await.unwrap();
    status(
        jobs.create(&pp, &annotated("a", "daemon-b"))
            .await
            .unwrap_err(),
    );
    status(jobs.create(&pp, &job("Bad", json!({}))).await.unwrap_err());
    let mut g = annotated("", "daemon-a");
    g.metadata.name = None;
    g.metadata.generate_name = Some("run-".into());
    let generated = jobs.create(&pp, &g).await.unwrap();
    sim.fail_next(1, 500);
    status(
        jobs.create(&pp, &annotated("b", "daemon-a"))
            .await
            .unwrap_err(),
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    jobs.create(&dry, &annotated("c", "daemon-a"))
        .await
        .unwrap();
    let elsewhere: Api<Job> = Api::namespaced(client.clone(), "missing-ns");
    status(
        elsewhere
            .create(&pp, &job("d", json!({})))
            .await
            .unwrap_err(),
    );
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "cm"}})).unwrap(),
    )
    .await
    .unwrap();
    // Reads, updates and deletes are not creates.
    jobs.get("a").await.unwrap();

    let log = sim.creates();
    let summary: Vec<(&str, &str, &str, u16, bool)> = log
        .iter()
        .map(|r| {
            (
                r.resource.as_str(),
                r.namespace.as_str(),
                r.name.as_str(),
                r.code,
                r.created(),
            )
        })
        .collect();
    let gen_name = generated.metadata.name.clone().unwrap();
    assert_eq!(
        summary,
        [
            ("jobs", "default", "a", 201, true),
            ("jobs", "default", "a", 409, false),
            ("jobs", "default", "Bad", 422, false),
            ("jobs", "default", gen_name.as_str(), 201, true),
            ("jobs", "default", "b", 500, false),
            ("jobs", "default", "c", 201, false),
            ("jobs", "missing-ns", "d", 404, false),
            ("configmaps", "default", "cm", 201, true),
        ]
    );
    assert_eq!(log[0].resource_version, a.metadata.resource_version);
    assert_eq!(log[0].uid, a.metadata.uid);
    assert_eq!(log[0].annotations["kedge.dev/launched-by"], "daemon-a");
    assert_eq!(log[0].labels["app"], "kedge");
    assert_eq!(log[0].generate_name, None);
    assert_eq!(
        log[1].annotations["kedge.dev/launched-by"], "daemon-b",
        "as sent, though refused"
    );
    assert_eq!(
        (log[1].resource_version.as_ref(), log[1].uid.as_ref()),
        (None, None)
    );
    assert_eq!(log[3].generate_name.as_deref(), Some("run-"));
    assert!(gen_name.starts_with("run-"));
    assert!(log[5].dry_run && log[5].resource_version.is_none());
    assert!(log[7].annotations.is_empty() && log[7].labels.is_empty());
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at), "monotonic");
    assert_eq!(sim.creates_of("configmaps").len(), 1);
}

#[tokio::test]
async fn objects_and_object_read_the_store() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let others: Api<Job> = Api::namespaced(client, "kube-system");
    create(&jobs, "b", json!({})).await;
    create(&jobs, "a", json!({})).await;
    create(&others, "c", json!({})).await;
    let names: Vec<String> = sim
        .objects("jobs", "default")
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let a = sim.object("jobs", "default", "a").expect("stored");
    assert_eq!(
        (a["apiVersion"].as_str(), a["kind"].as_str()),
        (Some("batch/v1"), Some("Job"))
    );
    assert!(sim.object("jobs", "default", "c").is_none());
    assert!(sim.objects("leases", "default").is_empty());
    // count: every namespace, only the one resource.
    assert_eq!(sim.count("jobs"), 3);
    assert_eq!(sim.count("leases"), 0);
    assert_eq!(sim.count("namespaces"), 3);
    assert_eq!(sim.count("pods"), 0);
}

#[test]
#[should_panic(expected = "does not serve a resource named \"widgets\"")]
fn objects_of_an_unknown_resource_panics() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(kube_sim::KubeSim::start(Default::default()))
        .unwrap();
    let _guard = rt.enter();
    sim.objects("widgets", "default");
}
