//! kube-sim at scale: thousands of Jobs through the HTTP API with the Job
//! controller and garbage collector running, as kedge's soak and bench
//! tests drive it. Guards against passes that cost O(jobs × pods) or copy
//! every object after each write.
mod common;
use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, PostParams};
use kube_sim::SimConfig;
use serde_json::json;
use std::time::{Duration, Instant};

const JOBS: usize = 2_000;
/// From the first create to the last Complete took 120–200 s when every
/// controller pass scanned every pod per Job and the collector cloned the
/// store after each write; ~8–11 s since (debug build, 2 shared cores).
const DEADLINE: Duration = Duration::from_secs(40);

fn is_complete(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_jobs_complete_within_the_deadline() {
    // 1 simulated second = 20 ms: each pod is Pending 20 ms and runs 20 ms.
    let (sim, client) = start_with(SimConfig {
        time_scale: 0.02,
        ..Default::default()
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let t0 = Instant::now();
    let deadline = t0 + DEADLINE;
    futures::stream::iter(0..JOBS)
        .map(|i| {
            let jobs = jobs.clone();
            async move {
                let j = job(&format!("scale-{i:04}"), json!({"app": "scale"}));
                jobs.create(&PostParams::default(), &j).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("create");
    eprintln!("created {JOBS} Jobs in {:?}", t0.elapsed());
    assert_eq!(sim.count("jobs"), JOBS);

    let lp = ListParams::default().labels("app=scale");
    let mut complete = 0;
    while Instant::now() < deadline {
        let list = jobs.list(&lp).await.expect("list");
        assert_eq!(list.items.len(), JOBS);
        complete = list.items.iter().filter(|j| is_complete(j)).count();
        if complete == JOBS {
            for j in &list.items {
                let st = j.status.as_ref().expect("status");
                assert_eq!(st.succeeded, Some(1), "{:?}", j.metadata.name);
                assert!(st.completion_time.is_some(), "{:?}", j.metadata.name);
            }
            eprintln!("{JOBS} Jobs Complete after {:?}", t0.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "only {complete} of {JOBS} Jobs Complete after {:?}",
        t0.elapsed()
    );
}
