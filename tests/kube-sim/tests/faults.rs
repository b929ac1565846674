//! Fault hooks: fail the next N requests with a code, hang, cut watches.
mod common;
use common::*;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, WatchParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn fail_next_requests_with_a_chosen_code() {
    let (sim, client) = start().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    sim.fail_next(2, 500);
    for _ in 0..2 {
        let s = status(jobs.get("x").await.unwrap_err());
        assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    }
    assert_eq!(status(jobs.get("x").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn hang_next_request() {
    let (sim, client) = start().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    sim.hang_next(1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), jobs.get_opt("x"))
            .await
            .is_err()
    );
    assert!(jobs.get_opt("x").await.unwrap().is_none());
}

#[tokio::test]
async fn cut_watches_ends_open_streams() {
    let (sim, client) = start().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let mut s = jobs
        .watch(
            &WatchParams {
                bookmarks: false,
                ..Default::default()
            },
            "0",
        )
        .await
        .unwrap()
        .boxed();
    assert!(s.next().await.unwrap().is_ok());
    sim.cut_watches();
    // The Job controller keeps writing the Job's status, so events may still
    // arrive before the end of the stream.
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = s.next().await {
            ev.unwrap();
        }
    })
    .await
    .expect("the stream ends");
}
