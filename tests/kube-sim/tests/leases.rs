//! Leases (coordination.k8s.io/v1) through a real kube::Client: MicroTime
//! kept to the microsecond, optimistic concurrency on replace.
mod common;
use common::*;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;

fn micro(s: &str) -> MicroTime {
    MicroTime(s.parse().expect("timestamp"))
}

fn lease(name: &str, holder: &str, renew: &str) -> Lease {
    Lease {
        metadata: kube::core::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(micro("2024-05-06T07:08:09.123456Z")),
            renew_time: Some(micro(renew)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn create_get_replace_keep_microseconds() {
    let (sim, client) = start_quiet().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let made = leases
        .create(
            &PostParams::default(),
            &lease("kedge", "a", "2024-05-06T07:08:09.654321Z"),
        )
        .await
        .unwrap();
    assert!(made.metadata.uid.is_some() && made.metadata.resource_version.is_some());
    assert_eq!(made.metadata.generation, None, "Lease has no generation");
    let got = leases.get("kedge").await.unwrap();
    let spec = got.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(
        spec.acquire_time,
        Some(micro("2024-05-06T07:08:09.123456Z"))
    );
    assert_eq!(spec.renew_time, Some(micro("2024-05-06T07:08:09.654321Z")));
    let raw = sim.object("leases", "default", "kedge").unwrap();
    assert_eq!(
        (&raw["apiVersion"], &raw["kind"]),
        (&json!("coordination.k8s.io/v1"), &json!("Lease"))
    );
    assert_eq!(raw["spec"]["renewTime"], "2024-05-06T07:08:09.654321Z");

    let mut renewed = got.clone();
    let s = renewed.spec.as_mut().unwrap();
    s.renew_time = Some(micro("2024-05-06T07:08:19.000001Z"));
    s.holder_identity = Some("b".into());
    s.lease_transitions = Some(1);
    let out = leases
        .replace("kedge", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert_ne!(out.metadata.resource_version, got.metadata.resource_version);
    let spec = leases.get("kedge").await.unwrap().spec.unwrap();
    assert_eq!(spec.renew_time, Some(micro("2024-05-06T07:08:19.000001Z")));
    assert_eq!(
        (spec.holder_identity.as_deref(), spec.lease_transitions),
        (Some("b"), Some(1))
    );
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_a_conflict() {
    let (_sim, client) = start_quiet().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let first = leases
        .create(&pp, &lease("x", "a", "2024-05-06T07:08:09.000000Z"))
        .await
        .unwrap();
    let mut renew = first.clone();
    renew.spec.as_mut().unwrap().renew_time = Some(micro("2024-05-06T07:08:11.000000Z"));
    leases.replace("x", &pp, &renew).await.unwrap();
    let mut stale = first;
    stale.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let s = status(leases.replace("x", &pp, &stale).await.unwrap_err());
    assert_eq!(
        (s.code, s.reason.as_str(), s.status),
        (
            409,
            "Conflict",
            Some(kube::core::response::StatusSummary::Failure)
        )
    );
    assert_eq!(
        s.message,
        r#"Operation cannot be fulfilled on leases.coordination.k8s.io "x": the object has been modified; please apply your changes to the latest version and try again"#
    );
    let d = s.details.unwrap();
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("x", "coordination.k8s.io", "leases")
    );
    let held = leases.get("x").await.unwrap().spec.unwrap();
    assert_eq!(held.holder_identity.as_deref(), Some("a"));
}

#[tokio::test]
async fn of_two_concurrent_replacers_exactly_one_wins() {
    let (_sim, client) = start_quiet().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    leases
        .create(&pp, &lease("x", "nobody", "2024-05-06T07:08:09.000000Z"))
        .await
        .unwrap();
    for round in 0..20 {
        let seen = leases.get("x").await.unwrap();
        let take = |who: &str| {
            let mut l = seen.clone();
            l.spec.as_mut().unwrap().holder_identity = Some(format!("{who}-{round}"));
            l
        };
        let (a, b) = (take("a"), take("b"));
        let (ra, rb) = tokio::join!(leases.replace("x", &pp, &a), leases.replace("x", &pp, &b));
        let winner = match (ra, rb) {
            (Ok(_), Err(e)) => {
                assert_eq!(status(e).code, 409);
                format!("a-{round}")
            }
            (Err(e), Ok(_)) => {
                assert_eq!(status(e).code, 409);
                format!("b-{round}")
            }
            other => panic!("round {round}: exactly one must win, got {other:?}"),
        };
        let held = leases.get("x").await.unwrap().spec.unwrap();
        assert_eq!(held.holder_identity, Some(winner));
    }
}

#[tokio::test]
async fn replace_without_a_resource_version_is_refused_for_leases() {
    // leaseStrategy.AllowUnconditionalUpdate is false; the generic registry
    // then names the resource where the kind belongs.
    let (_sim, client) = start_quiet().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let made = leases
        .create(&pp, &lease("x", "a", "2024-05-06T07:08:09.000000Z"))
        .await
        .unwrap();
    let mut blind = made;
    blind.metadata.resource_version = None;
    let s = status(leases.replace("x", &pp, &blind).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        r#"leases.coordination.k8s.io "x" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"#
    );
    let d = s.details.unwrap();
    assert_eq!(
        (d.kind.as_str(), d.group.as_str()),
        ("leases", "coordination.k8s.io")
    );
    assert_eq!(d.causes[0].field, "metadata.resourceVersion");
}

#[tokio::test]
async fn replace_of_a_missing_lease_creates_it() {
    // leaseStrategy.AllowCreateOnUpdate is true (unlike Jobs and ConfigMaps).
    let (_sim, client) = start_quiet().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let made = leases
        .replace("y", &pp, &lease("y", "a", "2024-05-06T07:08:09.000001Z"))
        .await
        .unwrap();
    assert!(made.metadata.uid.is_some());
    let spec = leases.get("y").await.unwrap().spec.unwrap();
    assert_eq!(spec.renew_time, Some(micro("2024-05-06T07:08:09.000001Z")));
    let s = status(
        leases
            .replace(
                "z",
                &pp,
                &lease("other", "a", "2024-05-06T07:08:09.000001Z"),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (
            400,
            "the name of the object (other) does not match the name on the URL (z)"
        )
    );
}
