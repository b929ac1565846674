//! Watch through a real kube::Client: events in order, selectors, bookmarks, 410.
mod common;
use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube_sim::SimConfig;
use serde_json::json;
use std::time::Duration;

async fn next(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Job>>> + Unpin),
) -> WatchEvent<Job> {
    tokio::time::timeout(Duration::from_secs(5), s.try_next())
        .await
        .expect("event in time")
        .expect("ok")
        .expect("open")
}

fn name(e: &WatchEvent<Job>) -> (&'static str, String) {
    match e {
        WatchEvent::Added(j) => ("ADDED", j.metadata.name.clone().unwrap()),
        WatchEvent::Modified(j) => ("MODIFIED", j.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(j) => ("DELETED", j.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(_) => ("BOOKMARK", String::new()),
        WatchEvent::Error(e) => panic!("error event {e:?}"),
    }
}

#[tokio::test]
async fn from_a_resource_version_every_later_event_in_order() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    let rv = a.metadata.resource_version.unwrap();
    create(&jobs, "b", json!({})).await;
    jobs.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    jobs.delete("b", &DeleteParams::background()).await.unwrap();
    let mut s = jobs
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert_eq!(name(&next(&mut s).await), ("ADDED", "b".into()));
    assert_eq!(name(&next(&mut s).await), ("MODIFIED", "a".into()));
    match next(&mut s).await {
        WatchEvent::Deleted(j) => {
            assert_eq!(j.metadata.name.as_deref(), Some("b"));
            assert!(
                j.metadata.resource_version.unwrap().parse::<u64>().unwrap()
                    > rv.parse::<u64>().unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn from_zero_current_objects_first_then_live() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let mut s = jobs
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(name(&next(&mut s).await), ("ADDED", "a".into()));
    create(&jobs, "b", json!({})).await;
    assert_eq!(name(&next(&mut s).await), ("ADDED", "b".into()));
}

#[tokio::test]
async fn selector_enter_and_leave_become_added_and_deleted() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let mut s = jobs
        .watch(&WatchParams::default().labels("kedge=yes"), "0")
        .await
        .unwrap()
        .boxed();
    let pp = PatchParams::default();
    jobs.patch(
        "a",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"kedge": "yes"}}})),
    )
    .await
    .unwrap();
    assert_eq!(name(&next(&mut s).await), ("ADDED", "a".into()));
    jobs.patch(
        "a",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"kedge": "no"}}})),
    )
    .await
    .unwrap();
    match next(&mut s).await {
        WatchEvent::Deleted(j) => assert_eq!(
            j.metadata.labels.unwrap()["kedge"],
            "yes",
            "previous content"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_carry_kind_api_version_and_resource_version() {
    let cfg = SimConfig {
        job_controller: false,
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (_sim, client) = start_with(cfg).await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    let mut s = jobs
        .watch(
            &WatchParams {
                bookmarks: true,
                ..Default::default()
            },
            &a.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match next(&mut s).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                (b.types.kind.as_str(), b.types.api_version.as_str()),
                ("Job", "batch/v1")
            );
            assert!(!b.metadata.resource_version.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn too_old_resource_version_is_an_in_stream_410() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let a = create(&jobs, "a", json!({})).await;
    create(&jobs, "b", json!({})).await;
    sim.expire_history();
    let mut s = jobs
        .watch(
            &WatchParams::default(),
            &a.metadata.resource_version.unwrap(),
        )
        .await
        .expect("HTTP 200")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message.starts_with("too old resource version: "),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .is_none(),
        "closed after the error"
    );
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream() {
    let (_sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let mut s = jobs
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    let started = std::time::Instant::now();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("ends in time")
    {
        assert!(matches!(ev, Ok(WatchEvent::Bookmark(_))), "{ev:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn kube_runtime_watcher_relists_after_410_and_sees_everything() {
    use kube::runtime::watcher::{self, Event};
    let cfg = SimConfig {
        job_controller: false,
        history_limit: 3,
        ..Default::default()
    };
    let (sim, client) = start_with(cfg).await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let mut w = watcher::watcher(jobs.clone(), watcher::Config::default()).boxed();
    let mut seen = std::collections::BTreeSet::new();
    let mut cut = false;
    let mut saw_410 = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 6 {
        let ev = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("in time")
            .expect("open");
        let ev = match ev {
            Ok(ev) => ev,
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                saw_410 = true;
                continue;
            }
            Err(e) => panic!("{e:?}"),
        };
        match ev {
            Event::Apply(j) | Event::InitApply(j) => {
                seen.insert(j.metadata.name.unwrap());
            }
            Event::InitDone if !cut => {
                cut = true;
                for n in ["b", "c", "d", "e", "f"] {
                    create(&jobs, n, json!({})).await;
                }
                sim.cut_watches();
            }
            _ => {}
        }
    }
    assert!(
        saw_410,
        "resumed from a compacted version: in-stream 410, then relist"
    );
}
