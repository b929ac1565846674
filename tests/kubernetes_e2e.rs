//! The Kubernetes executor through the built binary, against kube-sim (the
//! in-repo API server stand-in, started in this test process on loopback):
//! `kedge run --executor kubernetes` as a user runs it, asserting on what
//! the stand-in recorded (every create request, every object left).
//!
//! Each test has its own stand-in, workspace and SQLite store, so they run
//! in parallel. Simulated time is scaled down (`time_scale`), so a pod's
//! "1 s" start takes 10–50 ms here.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::kube::Cluster;
use support::{http_get, wait_until, Daemon, Workspace};

/// A workspace whose daemon uses the Kubernetes executor on `cluster`,
/// with a request timeout that a loaded machine does not reach.
fn workspace(cluster: &Cluster, lease: &str) -> Workspace {
    workspace_with_timeout(cluster, lease, "10s")
}

/// [`workspace`] with the executor's `request_timeout`.
fn workspace_with_timeout(cluster: &Cluster, lease: &str, request_timeout: &str) -> Workspace {
    let ws = Workspace::new();
    std::fs::write(ws.path().join("kubeconfig"), cluster.sim.kubeconfig_yaml()).unwrap();
    ws.write_config(&format!(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: kubernetes\n  kubernetes:\n    kubeconfig: kubeconfig\n    namespace: default\n    \
         request_timeout: {request_timeout}\n    successful_jobs_history_limit: 0\n    failed_jobs_history_limit: 0\n    \
         lease:\n      duration: {lease}\n\
         shutdown_timeout: 10s\n"
    ));
    ws
}

/// Adds `lines` (four-space indented) to the workspace config's
/// `executor.kubernetes` block, after its `request_timeout`.
fn kubernetes_settings(ws: &Workspace, lines: &str) {
    let config = std::fs::read_to_string(ws.path().join("config/kedge.yaml")).unwrap();
    let anchor = "    request_timeout: 10s\n";
    assert!(
        config.contains(anchor),
        "no request_timeout to add after: {config}"
    );
    ws.write_config(&config.replace(anchor, &format!("{anchor}{lines}")));
}

/// A builtin-queue job whose pods behave as `outcome` (kube-sim's script);
/// `extra` holds more top-level fields (`retry:`, `batch:`).
fn queue_job(ws: &Workspace, name: &str, outcome: &str, extra: &str) {
    queue_job_with(ws, name, outcome, extra, "");
}

/// [`queue_job`] with more JobSpec fields (`spec`, two-space indented).
fn queue_job_with(ws: &Workspace, name: &str, outcome: &str, extra: &str, spec: &str) {
    ws.write_job(
        name,
        &format!(
            "name: {name}\n\
             trigger:\n  queue:\n    builtin: {{}}\n\
             {extra}\
             template:\n  backoffLimit: 0\n{spec}  template:\n    metadata:\n      annotations:\n        kube-sim/outcome: \"{outcome}\"\n    \
             spec:\n      restartPolicy: Never\n      containers:\n        - name: main\n          image: busybox\n"
        ),
    );
}

/// The Events (stored core form) with `reason`.
fn events_with_reason(c: &Cluster, reason: &str) -> Vec<serde_json::Value> {
    c.sim
        .objects("events", "default")
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

fn enqueue(ws: &Workspace, job: &str, id: &str, data: &str) {
    let out = ws.ok(&["enqueue", job, "--id", id, "--data", data]);
    assert!(out.contains("enqueued"), "{out}");
}

fn succeeded(runs: &[serde_json::Value]) -> usize {
    runs.iter().filter(|r| r["state"] == "succeeded").count()
}

/// Waits until the stand-in holds no Job, pod or ConfigMap.
fn wait_all_cleaned_up(c: &Cluster) {
    wait_until(
        Duration::from_secs(30),
        "every Job, pod and ConfigMap deleted",
        || {
            c.left("jobs").is_empty()
                && c.left("pods").is_empty()
                && c.left("configmaps").is_empty()
        },
    );
}

/// The identity a daemon announced (`waiting to lead … identity=…`).
/// The time of the first line of `d`'s JSON log that contains `needle`.
fn log_time(d: &Daemon, needle: &str) -> chrono::DateTime<chrono::Utc> {
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339 timestamp")
        .with_timezone(&chrono::Utc)
}

fn identity(d: &Daemon) -> String {
    for line in d.log().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(id) = v["fields"]["identity"].as_str() {
            return id.to_string();
        }
    }
    panic!("no identity in the log:\n{}", d.log());
}

#[test]
fn two_hundred_messages_become_two_hundred_jobs_and_are_cleaned_up() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(&ws, "work", "duration=1s", "");
    let daemon = ws.start_daemon();
    // Every tenth message is too large for an env var: it travels in a
    // ConfigMap owned by its Job.
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(40_000));
    for i in 0..200 {
        let data = if i % 10 == 0 {
            big.clone()
        } else {
            format!("{{\"i\":{i}}}")
        };
        enqueue(&ws, "work", &format!("m{i}"), &data);
    }
    wait_until(Duration::from_secs(120), "200 runs succeeded", || {
        succeeded(&ws.runs()) == 200
    });
    let runs = ws.runs();
    assert_eq!(runs.len(), 200, "one run per message, no retries");
    wait_all_cleaned_up(&c);

    let creates = c.job_creates();
    assert_eq!(creates.len(), 200, "one Job per message");
    assert!(
        creates.values().all(|n| *n == 1),
        "no Job created twice: {creates:?}"
    );
    for r in &runs {
        assert!(
            creates.contains_key(r["run_id"].as_str().unwrap()),
            "run {r} has its Job"
        );
    }
    let config_maps: Vec<_> = c
        .sim
        .creates_of("configmaps")
        .into_iter()
        .filter(|r| r.created())
        .collect();
    assert_eq!(
        config_maps.len(),
        20,
        "one payload ConfigMap per large message"
    );
    // Every Job carried kedge's labels and annotations.
    for r in c.sim.creates_of("jobs") {
        assert_eq!(r.labels["app.kubernetes.io/managed-by"], "kedge");
        assert_eq!(r.labels["kedge.dev/job"], "work");
        assert_eq!(r.annotations["kedge.dev/run"], r.name);
        assert_eq!(r.annotations["kedge.dev/trigger"], "queue");
        assert!(r.annotations["kedge.dev/message-id"].starts_with('m'));
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_failing_message_is_retried_under_a_new_job_name_then_dead_lettered() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(
        &ws,
        "doomed",
        "fail",
        "retry:\n  max_attempts: 2\n  backoff: 100ms\n",
    );
    let daemon = ws.start_daemon();
    enqueue(&ws, "doomed", "poison", "{\"bad\":true}");
    wait_until(Duration::from_secs(60), "the message dead-lettered", || {
        !ws.dead_letters().is_empty()
    });
    let mut runs = ws.runs();
    runs.sort_by_key(|r| r["attempt"].as_i64());
    assert_eq!(runs.len(), 2, "{runs:?}");
    let first = runs[0]["run_id"].as_str().unwrap().to_string();
    let second = runs[1]["run_id"].as_str().unwrap().to_string();
    assert_eq!(second, format!("{first}-2"), "the retry is a new Job name");
    assert_eq!(runs[0]["state"], "failed", "{runs:?}");
    assert_eq!(
        runs[1]["state"], "dead",
        "the last attempt dead-letters: {runs:?}"
    );
    for r in &runs {
        assert!(
            r["error"]
                .as_str()
                .unwrap_or("")
                .contains("BackoffLimitExceeded"),
            "the Job's failure reason is kept: {r}"
        );
    }
    let creates = c.job_creates();
    assert_eq!(
        creates.keys().cloned().collect::<Vec<_>>(),
        vec![first, second]
    );
    let dead = ws.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["message_id"], "poison");
    wait_all_cleaned_up(&c);
    assert!(daemon.stop().success());
}

#[test]
fn api_faults_miss_no_completion_and_duplicate_no_job() {
    let c = Cluster::start(0.02);
    let ws = workspace(&c, "15s");
    queue_job(&ws, "work", "duration=5s", "");
    let daemon = ws.start_daemon();
    let n = 40;
    for i in 0..n {
        enqueue(&ws, "work", &format!("m{i}"), &format!("{{\"i\":{i}}}"));
        // Faults while Jobs are being created and tracked.
        match i % 10 {
            2 => c.sim.cut_watches(),
            3 => c.sim.cut_watches_mid_event(),
            4 => c.sim.fail_next(3, 500),
            6 => {
                c.sim.expire_history();
                c.sim.cut_watches();
            }
            8 => c.sim.hang_next(1),
            _ => {}
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while succeeded(&ws.runs()) != n {
        if Instant::now() > deadline {
            let stuck: Vec<_> = ws
                .runs()
                .into_iter()
                .filter(|r| r["state"] != "succeeded")
                .collect();
            panic!(
                "not every run succeeded: {stuck:#?}\njobs left: {:?}\n{}",
                c.left("jobs"),
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = ws.runs();
    assert_eq!(runs.len(), n, "no run retried: {runs:?}");
    let creates = c.job_creates();
    assert_eq!(creates.len(), n);
    assert!(
        creates.values().all(|k| *k == 1),
        "no duplicate Job: {creates:?}"
    );
    wait_all_cleaned_up(&c);
    assert!(daemon.stop().success());
}

#[test]
fn a_daemon_killed_after_creating_the_job_is_succeeded_by_one_that_adopts_it() {
    // 40 simulated seconds at 0.05: the pod runs for about 2 s.
    let c = Cluster::start(0.05);
    // A lease long enough that a loaded machine never delays a renewal
    // past it; the second daemon waits it out before it takes over.
    let ws = workspace(&c, "10s");
    queue_job(&ws, "slow", "duration=40s", "");
    let first = ws.start_daemon();
    enqueue(&ws, "slow", "only", "{}");
    wait_until(Duration::from_secs(30), "the Job created", || {
        !c.job_creates().is_empty()
    });
    first.kill9();
    let run_id = c.job_creates().keys().next().unwrap().clone();
    assert!(c
        .jobs()
        .iter()
        .any(|j| j["metadata"]["name"] == run_id.as_str()));

    let second = ws.start_daemon();
    wait_until(Duration::from_secs(60), "the adopted run succeeded", || {
        succeeded(&ws.runs()) == 1
    });
    let runs = ws.runs();
    assert_eq!(runs.len(), 1, "the run was not retried: {runs:?}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(c.job_creates()[&run_id], 1, "the Job was not created again");
    assert!(second.log().contains("adopted"), "{}", second.log());
    wait_all_cleaned_up(&c);
    assert!(second.stop().success());
}

#[test]
fn start_up_reconciliation_removes_orphaned_payload_config_maps() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(&ws, "work", "duration=1s", "");
    // The store's instance id, as the objects would carry it.
    let rendered = ws.ok(&["render", "--job", "work"]);
    let instance = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("kedge.dev/instance: "))
        .expect("instance label")
        .trim_matches('"')
        .to_string();
    // What a crash between creating a payload ConfigMap and its Job leaves.
    let orphan = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "work-0123456789", "labels": {
            "app.kubernetes.io/managed-by": "kedge", "kedge.dev/instance": instance,
            "kedge.dev/job": "work", "kedge.dev/run": "work-0123456789"}},
        "data": {"payload": "{}"}
    });
    // Another kedge installation's ConfigMap is not ours to delete.
    let foreign = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "work-9876543210", "labels": {
            "app.kubernetes.io/managed-by": "kedge", "kedge.dev/instance": "someone-else"}},
        "data": {"payload": "{}"}
    });
    let client = kube_client(&c);
    c.rt.block_on(async {
        use k8s_openapi::api::core::v1::ConfigMap;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
        for cm in [orphan, foreign] {
            api.create(&Default::default(), &serde_json::from_value(cm).unwrap())
                .await
                .expect("create ConfigMap");
        }
    });
    let daemon = ws.start_daemon();
    wait_until(Duration::from_secs(30), "the orphan deleted", || {
        c.left("configmaps") == vec!["work-9876543210".to_string()]
    });
    assert!(daemon.stop().success());
}

fn kube_client(c: &Cluster) -> kube::Client {
    let url = c.sim.url();
    c.rt.block_on(async move {
        let config = kube::Config::new(url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    })
}

#[test]
fn two_daemons_on_one_lease_never_launch_together() {
    let c = Cluster::start(0.02);
    // Long enough that a loaded machine never delays the leader's renewals
    // (every 10/7 s) past two thirds of it, when it would step down.
    let lease = Duration::from_secs(10);
    let ws = workspace(&c, "10s");
    queue_job(&ws, "work", "duration=1s", "");
    let leader = ws.start_daemon();
    let leader_id = identity(&leader);
    let follower = ws.spawn_daemon();
    wait_until(Duration::from_secs(30), "the follower to wait", || {
        follower.log().contains("another replica leads")
    });
    for i in 0..10 {
        enqueue(&ws, "work", &format!("a{i}"), "{}");
    }
    wait_until(Duration::from_secs(60), "the leader's runs", || {
        succeeded(&ws.runs()) == 10
    });
    assert!(
        !follower.log().contains("kedge ready"),
        "{}",
        follower.log()
    );

    let killed_at = chrono::Utc::now();
    let killed = Instant::now();
    leader.kill9();
    wait_until(Duration::from_secs(60), "the follower to take over", || {
        follower.log().contains("kedge ready")
    });
    // When the follower took the Lease, by its own log (start-up after
    // that is not the Lease's business). It judges expiry by its own
    // clock: a lease duration after it first saw the last renewal, which
    // the leader made at most two thirds of a duration before the kill (or
    // it would have stepped down), at most a renew period plus a request
    // before it normally. So: not before a third of the duration (the
    // follower waited the Lease out instead of grabbing it), and not later
    // than a duration plus a retry period (a fifth), plus slack for a
    // loaded machine.
    let took = (log_time(&follower, "this replica now holds the Lease") - killed_at)
        .to_std()
        .unwrap_or_default();
    assert!(took >= lease / 3, "took the Lease after only {took:?}");
    assert!(
        took < lease + lease / 5 + Duration::from_secs(5),
        "took the Lease {took:?} after the kill"
    );
    let follower_id = identity(&follower);
    assert_ne!(leader_id, follower_id);
    for i in 0..10 {
        enqueue(&ws, "work", &format!("b{i}"), "{}");
    }
    wait_until(Duration::from_secs(60), "every run", || {
        succeeded(&ws.runs()) == 20
    });

    // The stand-in's record: every Job create names its launcher, and the
    // two launchers never overlap.
    let creates: Vec<_> = c.sim.creates_of("jobs");
    let by: HashMap<String, Vec<Instant>> = creates.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(r.annotations["kedge.dev/launched-by"].clone())
            .or_default()
            .push(r.at);
        m
    });
    assert_eq!(by.len(), 2, "{by:?}");
    let last_of_leader = by[&leader_id].iter().max().unwrap();
    let first_of_follower = by[&follower_id].iter().min().unwrap();
    assert!(last_of_leader < first_of_follower, "launches overlapped");
    assert!(*last_of_leader < killed && *first_of_follower > killed);
    assert!(c.job_creates().values().all(|n| *n == 1));

    // A graceful stop releases the Lease for the next replica.
    assert!(follower.stop().success());
    let lease = c.sim.object("leases", "default", "kedge").expect("lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    let next = ws.start_daemon();
    // Taken at the first attempt: the next replica never saw it held.
    assert!(
        next.log().contains("this replica now holds the Lease")
            && !next.log().contains("another replica leads"),
        "a released Lease is taken at once:\n{}",
        next.log()
    );
    assert!(next.stop().success());
}

#[test]
fn render_prints_the_objects_a_run_creates() {
    let ws = Workspace::new();
    queue_job(&ws, "work", "succeed", "");
    let big = format!("{{\"blob\":\"{}\"}}", "y".repeat(40_000));
    std::fs::write(ws.path().join("big.json"), &big).unwrap();
    let out = ws.ok(&[
        "render",
        "--job",
        "work",
        "--payload",
        "@big.json",
        "--namespace",
        "batch",
    ]);
    let docs: Vec<&str> = out
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .collect();
    assert_eq!(docs.len(), 2, "{out}");
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_saphyr::from_str(docs[0]).unwrap();
    let job: k8s_openapi::api::batch::v1::Job = serde_saphyr::from_str(docs[1]).unwrap();
    assert_eq!(cm.data.unwrap()["payload"], big);
    assert_eq!(job.metadata.namespace.as_deref(), Some("batch"));
    assert_eq!(job.metadata.name, cm.metadata.name);
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.volumes.unwrap()[0].config_map.as_ref().unwrap().name,
        job.metadata.name.unwrap()
    );
    // The same run renders the same name (deterministic).
    let again = ws.ok(&["render", "--job", "work", "--payload", "@big.json"]);
    assert!(again.contains(cm.metadata.name.as_deref().unwrap()));

    let bad = ws.run(&["render", "--job", "work", "--namespace", "Not_A_Namespace"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--namespace"));
    let unknown = ws.run(&["render", "--job", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn a_batch_settles_each_message_on_its_own_index() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    // Index 1 of every batch Job fails; a message retried alone is not
    // Indexed, so it succeeds.
    queue_job(
        &ws,
        "batched",
        "fail-indexes=1",
        "batch: { max_messages: 3, max_wait: 300ms }\nretry: { max_attempts: 2, backoff: 50ms }\n",
    );
    for i in 0..6 {
        enqueue(&ws, "batched", &format!("m{i}"), &format!("{{\"i\":{i}}}"));
    }
    let daemon = ws.start_daemon();
    // A member's state is its message's: succeeded in the batch, or later
    // when retried alone.
    let all_done = |runs: &[serde_json::Value]| {
        let members: Vec<&serde_json::Value> = runs
            .iter()
            .filter_map(|r| r["batch"].as_array())
            .flatten()
            .collect();
        members.len() == 6 && members.iter().all(|m| m["state"] == "succeeded")
    };
    wait_until(Duration::from_secs(60), "every message done", || {
        all_done(&ws.runs())
    });
    let runs = ws.runs();
    let batches: Vec<&serde_json::Value> = runs.iter().filter(|r| r["batch"].is_array()).collect();
    let mut failed_index: Vec<String> = Vec::new();
    for b in &batches {
        let members = b["batch"].as_array().unwrap();
        if members.len() > 1 {
            assert_eq!(b["state"], "failed", "{b}");
            assert!(
                b["error"].as_str().unwrap_or("").contains("FailedIndexes"),
                "{b}"
            );
            failed_index.extend(
                members
                    .iter()
                    .filter(|m| m["index"] == 1)
                    .map(|m| m["message_id"].as_str().unwrap().to_string()),
            );
        } else {
            assert_eq!(b["state"], "succeeded", "{b}");
        }
    }
    let mut alone: Vec<String> = runs
        .iter()
        .filter(|r| r["batch"].is_null())
        .map(|r| {
            assert_eq!(
                (r["attempt"].as_i64(), r["state"].as_str()),
                (Some(2), Some("succeeded")),
                "{r}"
            );
            r["message_id"].as_str().unwrap().to_string()
        })
        .collect();
    alone.sort();
    failed_index.sort();
    assert_eq!(
        alone, failed_index,
        "only the failed index is retried, alone: {runs:#?}"
    );
    // Each batch Job was Indexed, one completion per message, its payloads
    // in a ConfigMap.
    let indexed = c
        .sim
        .creates_of("jobs")
        .iter()
        .filter(|r| r.created() && batches.iter().any(|b| b["run_id"] == r.name.as_str()))
        .count();
    assert_eq!(indexed, batches.len());
    let config_maps = c
        .sim
        .creates_of("configmaps")
        .iter()
        .filter(|r| r.created())
        .count();
    assert_eq!(config_maps, batches.len());
    wait_all_cleaned_up(&c);
    assert!(daemon.stop().success());
}

#[test]
fn a_job_removed_by_its_ttl_before_kedge_looked_still_reports_its_result() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    // The TTL controller deletes each Job the moment it finishes: kedge
    // learns the result from the deletion event's last state.
    queue_job_with(
        &ws,
        "brief",
        "duration=1s",
        "",
        "  ttlSecondsAfterFinished: 0\n",
    );
    let daemon = ws.start_daemon();
    for i in 0..5 {
        enqueue(&ws, "brief", &format!("t{i}"), "{}");
    }
    wait_until(Duration::from_secs(60), "5 runs succeeded", || {
        succeeded(&ws.runs()) == 5
    });
    assert_eq!(ws.runs().len(), 5, "no run retried");
    assert!(c.job_creates().values().all(|n| *n == 1));
    wait_all_cleaned_up(&c);
    assert!(daemon.stop().success());
}

#[test]
fn api_writes_keep_to_the_client_side_rate_limit() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    kubernetes_settings(&ws, "    api_qps: 10\n    api_burst: 2\n");
    queue_job(&ws, "work", "duration=1s", "");
    for i in 0..20 {
        enqueue(&ws, "work", &format!("r{i}"), "{}");
    }
    let daemon = ws.start_daemon();
    wait_until(Duration::from_secs(60), "20 runs succeeded", || {
        succeeded(&ws.runs()) == 20
    });
    // 20 creates (plus the deletes in between) at 10/s after a burst of 2:
    // the creates alone span at least 1.8 s.
    let at: Vec<Instant> = c.sim.creates_of("jobs").iter().map(|r| r.at).collect();
    let span = *at.iter().max().unwrap() - *at.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(1700),
        "20 creates within {span:?}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn pods_stuck_pending_stop_further_launches_of_their_job() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(
        &ws,
        "stuck",
        "unschedulable",
        "limits: { pending_timeout: 300ms }\n",
    );
    let daemon = ws.start_daemon();
    enqueue(&ws, "stuck", "first", "{}");
    wait_until(Duration::from_secs(20), "the backpressure warning", || {
        daemon.log().contains("pods stuck Pending")
    });
    assert_eq!(c.job_creates().len(), 1);
    for i in 0..3 {
        enqueue(&ws, "stuck", &format!("held{i}"), "{}");
    }
    // The dispatcher looked at each held run and said why it waits: the
    // pass that logged it is the pass that did not launch it.
    wait_until(Duration::from_secs(20), "the three runs held back", || {
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("run held back") && l.contains("backpressure"))
            .count()
            >= 3
    });
    assert_eq!(
        c.job_creates().len(),
        1,
        "no launch while pods are stuck Pending"
    );
    let pending = ws.runs().iter().filter(|r| r["state"] == "pending").count();
    assert_eq!(pending, 3, "the held runs wait, nothing is lost");
    // Logged when it began, not on every look since.
    assert_eq!(
        log_lines(&daemon, "WARN", "pods stuck Pending").len(),
        1,
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_run_flagged_at_risk_gets_a_warning_event_on_its_job() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    // 100 GB at 1 GB/h per pod, at most 2 pods, within a minute: at risk.
    ws.write_job(
        "backup",
        "name: backup\n\
         trigger:\n  queue:\n    builtin: {}\n\
         window:\n  within: 1m\n\
         sizing:\n  work: { static: 100 }\n  unit: GB\n  initial_rate_per_pod: 1\n  \
         parallelism: { min: 1, max: 2 }\n  when_at_risk: run\n\
         template:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations:\n        \
         kube-sim/outcome: \"duration=1s\"\n    spec:\n      restartPolicy: Never\n      \
         containers:\n        - name: main\n          image: busybox\n",
    );
    let daemon = ws.start_daemon();
    enqueue(&ws, "backup", "nightly", "{}");
    wait_until(Duration::from_secs(30), "the at-risk Event", || {
        !events_with_reason(&c, "AtRisk").is_empty()
    });
    let run_id = c.job_creates().keys().next().unwrap().clone();
    let events = events_with_reason(&c, "AtRisk");
    let e = &events[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["involvedObject"]["kind"], "Job");
    assert_eq!(e["involvedObject"]["name"], run_id.as_str());
    assert!(e["message"].as_str().unwrap_or("").len() > 10, "{e}");
    // Published through events.k8s.io/v1 (a "new" Event: eventTime and
    // the reporting controller set), seen here in its stored core form.
    assert_eq!(e["reportingComponent"], "kedge");
    assert!(e["eventTime"].is_string(), "{e}");
    assert!(
        events_with_reason(&c, "Sized").is_empty(),
        "at risk is said instead of sized"
    );
    let job = c.sim.creates_of("jobs").remove(0);
    assert_eq!(job.annotations["kedge.dev/at-risk"], "true");
    assert!(daemon.stop().success());
}

/// kedge's decisions are Events where `kubectl describe job` looks: each
/// attempt's Job says it was launched, the failed ones why they are retried
/// or dead-lettered, a late run that it missed its deadline, and the Lease
/// who leads.
#[test]
fn decisions_become_events_on_the_jobs_and_the_lease() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(
        &ws,
        "flaky",
        "fail",
        "retry:\n  max_attempts: 2\n  backoff: 100ms\n",
    );
    // 200 simulated seconds at 0.01: about 2 s, past the 1 s window.
    queue_job(&ws, "late", "duration=200s", "window:\n  within: 1s\n");
    queue_job(
        &ws,
        "sized",
        "succeed",
        "window:\n  within: 1h\n\
         sizing:\n  work: { static: 10 }\n  unit: GB\n  initial_rate_per_pod: 100\n  \
         parallelism: { min: 1, max: 4 }\n",
    );
    let daemon = ws.start_daemon();
    enqueue(&ws, "flaky", "f1", "{}");
    enqueue(&ws, "late", "l1", "{}");
    enqueue(&ws, "sized", "s1", "{}");
    let seen = || -> Vec<String> {
        c.sim
            .objects("events", "default")
            .iter()
            .map(|e| format!("{} {}", e["reason"], e["involvedObject"]["name"]))
            .collect()
    };
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(60), "the dead letter's Event", || {
            !events_with_reason(&c, "DeadLettered").is_empty()
                && !events_with_reason(&c, "DeadlineMissed").is_empty()
                && !events_with_reason(&c, "Sized").is_empty()
        })
    }));
    assert!(
        waited.is_ok(),
        "events: {:?}\nruns: {:?}\nlog: {}",
        seen(),
        ws.runs(),
        daemon.log()
    );
    let about = |reason: &str| -> Vec<String> {
        let mut names: Vec<String> = events_with_reason(&c, reason)
            .iter()
            .map(|e| e["involvedObject"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let runs = ws.runs();
    let mut flaky: Vec<String> = runs
        .iter()
        .filter(|r| r["job"] == "flaky")
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    flaky.sort_by_key(|id| {
        runs.iter().find(|r| r["run_id"] == id.as_str()).unwrap()["attempt"].as_i64()
    });
    assert_eq!(flaky.len(), 2, "two attempts: {runs:?}");
    let late = runs.iter().find(|r| r["job"] == "late").unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sized = runs.iter().find(|r| r["job"] == "sized").unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut launched = flaky.clone();
    launched.extend([late.clone(), sized.clone()]);
    launched.sort();
    assert_eq!(about("Launched"), launched);
    assert_eq!(about("Sized"), [sized]);
    assert!(about("AtRisk").is_empty());
    assert_eq!(about("Retrying"), [flaky[0].clone()]);
    assert_eq!(about("DeadLettered"), [flaky[1].clone()]);
    assert_eq!(about("DeadlineMissed"), [late]);
    let retrying = &events_with_reason(&c, "Retrying")[0];
    let note = retrying["message"].as_str().unwrap();
    assert!(
        note.contains(&flaky[1]) && note.contains("attempt failed"),
        "{note}"
    );
    assert_eq!(retrying["type"], "Warning");
    // Each Job Event names the Job's uid, as `kubectl describe` matches it.
    assert!(events_with_reason(&c, "Launched")
        .iter()
        .all(|e| e["involvedObject"]["uid"].is_string()));

    let leader = events_with_reason(&c, "LeaderElection");
    assert_eq!(leader.len(), 1, "{leader:?}");
    assert_eq!(leader[0]["involvedObject"]["kind"], "Lease");
    assert!(leader[0]["message"]
        .as_str()
        .unwrap()
        .ends_with("became leader"));
    assert!(daemon.stop().success());
}

#[test]
fn a_graceful_stop_leaves_jobs_running_for_the_next_leader_to_adopt() {
    // 200 simulated seconds at 0.05: each pod runs about 10 s, far longer
    // than creating three Jobs and stopping takes on a loaded machine. The
    // messages wait before the daemon starts, so its first pass creates all.
    let c = Cluster::start(0.05);
    let ws = workspace(&c, "15s");
    queue_job(&ws, "long", "duration=200s", "");
    for i in 0..3 {
        enqueue(&ws, "long", &format!("g{i}"), "{}");
    }
    let first = ws.start_daemon();
    wait_until(Duration::from_secs(30), "3 Jobs created", || {
        c.job_creates().len() == 3
    });
    assert!(first.stop().success());
    // SIGTERM drained kedge, not the cluster: the Jobs run on.
    assert_eq!(
        c.left("jobs").len(),
        3,
        "running Jobs are not deleted on shutdown"
    );
    assert!(ws.runs().iter().all(|r| r["state"] == "running"));

    let second = ws.start_daemon();
    wait_until(
        Duration::from_secs(60),
        "the adopted runs succeeded",
        || succeeded(&ws.runs()) == 3,
    );
    assert_eq!(ws.runs().len(), 3, "nothing relaunched under a new attempt");
    assert!(
        c.job_creates().values().all(|n| *n == 1),
        "no Job created again"
    );
    wait_all_cleaned_up(&c);
    assert!(second.stop().success());
}

#[test]
fn a_hung_request_does_not_cost_the_leader_its_lease() {
    let c = Cluster::start(0.01);
    // Short on purpose: a hung renewal must time out (2 s) and be retried
    // well within the 3 s Lease.
    let ws = workspace_with_timeout(&c, "3s", "2s");
    queue_job(&ws, "work", "duration=1s", "");
    let daemon = ws.start_daemon();
    // While idle, the Lease renewals (a seventh of the Lease apart) are most of the
    // requests: hang a few of them. After each hang, two more renewals must
    // land: the leader got over the hung request and kept its Lease.
    let renewed = || {
        let lease = c.sim.object("leases", "default", "kedge").expect("lease");
        lease["spec"]["renewTime"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    for i in 0..3 {
        c.sim.hang_next(1);
        wait_until(Duration::from_secs(20), &format!("hang {i} taken"), || {
            c.sim.sim().faults.hang_next.remaining() == 0
        });
        for k in 0..2 {
            let before = renewed();
            wait_until(
                Duration::from_secs(20),
                &format!("renewal {k} after hang {i}"),
                || renewed() != before,
            );
        }
    }
    assert!(
        !daemon.log().contains("stops launching"),
        "{}",
        daemon.log()
    );
    enqueue(&ws, "work", "after", "{}");
    wait_until(Duration::from_secs(30), "the run", || {
        succeeded(&ws.runs()) == 1
    });
    let lease = c.sim.object("leases", "default", "kedge").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], identity(&daemon).as_str());
    assert!(daemon.stop().success());
}

#[test]
fn run_flags_choose_the_kubernetes_executor_its_kubeconfig_and_namespace() {
    // The config says local executor; the flags alone point kedge at the
    // stand-in, in namespace `batch`.
    let c = Cluster::start(0.01);
    let ws = Workspace::new();
    std::fs::write(ws.path().join("flags.kubeconfig"), c.sim.kubeconfig_yaml()).unwrap();
    // (With a command, so `kedge enqueue`, which reads the config's local
    // executor, takes the job too.)
    ws.write_job(
        "work",
        "name: work\ntrigger:\n  queue:\n    builtin: {}\n\
         template:\n  template:\n    metadata:\n      annotations:\n        kube-sim/outcome: \"duration=1s\"\n    \
         spec:\n      restartPolicy: Never\n      containers:\n        - name: main\n          image: busybox\n          command: [\"true\"]\n",
    );
    c.rt.block_on(async {
        let client =
            kube::Client::try_from(kube::Config::new(c.sim.url().parse().unwrap())).unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        let ns =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "batch"}})).unwrap();
        api.create(&Default::default(), &ns)
            .await
            .expect("namespace batch");
    });
    let daemon = ws.spawn_daemon_args(
        &[
            "--executor",
            "kubernetes",
            "--kubeconfig",
            "flags.kubeconfig",
            "--namespace",
            "batch",
        ],
        &[],
    );
    wait_until(Duration::from_secs(30), "the daemon to be ready", || {
        daemon.log().contains("kedge ready")
    });
    enqueue(&ws, "work", "flagged", "{}");
    wait_until(Duration::from_secs(30), "the run", || {
        succeeded(&ws.runs()) == 1
    });
    let creates: Vec<_> = c
        .sim
        .creates_of("jobs")
        .into_iter()
        .filter(|r| r.created())
        .collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].namespace, "batch");
    assert!(
        c.sim.object("leases", "batch", "kedge").is_some(),
        "the Lease is in the namespace too"
    );
    assert!(daemon.stop().success());

    // --kubeconfig without the Kubernetes executor is a usage error.
    let out = ws.run(&["run", "--kubeconfig", "flags.kubeconfig"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--executor kubernetes"));
}

/// The create records (any answer) of Jobs whose name starts with `prefix`.
fn create_answers(c: &Cluster, prefix: &str) -> Vec<kube_sim::CreateRecord> {
    c.sim
        .creates_of("jobs")
        .into_iter()
        .filter(|r| r.name.starts_with(prefix))
        .collect()
}

#[test]
fn a_create_the_api_refuses_for_good_fails_the_attempt_then_dead_letters() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    // An admission webhook denies every Job of `poison`.
    c.sim.deny_creates(
        "poison-",
        403,
        "admission webhook \"deny.example.com\" denied the request: {name} is not allowed",
    );
    queue_job(
        &ws,
        "poison",
        "duration=1s",
        "retry:\n  max_attempts: 2\n  backoff: 100ms\n",
    );
    queue_job(&ws, "work", "duration=1s", "");
    let daemon = ws.start_daemon();
    enqueue(&ws, "poison", "p1", "{}");
    enqueue(&ws, "work", "w1", "{}");
    wait_until(
        Duration::from_secs(60),
        "the refused message dead-lettered",
        || !ws.dead_letters().is_empty(),
    );
    let dead = ws.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["message_id"], "p1");
    let error = dead[0]["last_error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(
            "rejected: Forbidden: admission webhook \"deny.example.com\" denied the request"
        ),
        "the API's refusal is the reason: {}",
        dead[0]
    );
    // One create per attempt: no retry loop on a refusal.
    let answers = create_answers(&c, "poison-");
    assert_eq!(
        answers.iter().map(|r| r.code).collect::<Vec<_>>(),
        [403, 403],
        "{answers:?}"
    );
    wait_until(Duration::from_secs(60), "the other job's run", || {
        ws.runs()
            .iter()
            .any(|r| r["job"] == "work" && r["state"] == "succeeded")
    });
    let log = daemon.log();
    assert_eq!(
        log.matches("the API refused the run's Job").count(),
        2,
        "one line per refused attempt:\n{log}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_create_that_fails_transiently_backs_off_per_run_and_launches_when_the_api_recovers() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    // (500: kube-rs's client itself retries 429, 503 and 504 within one
    // request, up to request_timeout; kedge's backoff is between launches.)
    c.sim
        .deny_creates("flaky-", 500, "etcdserver: leader changed");
    queue_job(&ws, "flaky", "duration=1s", "retry:\n  max_attempts: 1\n");
    queue_job(&ws, "work", "duration=1s", "");
    let daemon = ws.start_daemon();
    enqueue(&ws, "flaky", "f1", "{}");
    wait_until(Duration::from_secs(30), "four refused creates", || {
        create_answers(&c, "flaky-").len() >= 4
    });
    // Meanwhile other runs launch.
    enqueue(&ws, "work", "w1", "{}");
    wait_until(Duration::from_secs(30), "the other job's run", || {
        ws.runs()
            .iter()
            .any(|r| r["job"] == "work" && r["state"] == "succeeded")
    });
    let flaky = ws
        .runs()
        .into_iter()
        .find(|r| r["job"] == "flaky")
        .expect("the flaky run");
    assert_eq!(flaky["state"], "pending", "waits out its backoff: {flaky}");
    // The gaps between tries grow (1 s, 2 s, 4 s, ±20 %): no hot loop.
    let at: Vec<std::time::Instant> = create_answers(&c, "flaky-").iter().map(|r| r.at).collect();
    for (k, pair) in at.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        let least = Duration::from_millis(800 << k);
        assert!(gap >= least, "gap {k} is {gap:?}, at least {least:?}");
    }
    // The API recovers: the same attempt launches and succeeds.
    c.sim.allow_creates();
    wait_until(Duration::from_secs(60), "the flaky run succeeded", || {
        ws.runs()
            .iter()
            .any(|r| r["job"] == "flaky" && r["state"] == "succeeded")
    });
    let runs: Vec<_> = ws
        .runs()
        .into_iter()
        .filter(|r| r["job"] == "flaky")
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "no new attempt for a transient failure: {runs:?}"
    );
    assert!(ws.dead_letters().is_empty());
    assert!(daemon.stop().success());
}

#[test]
fn a_launch_that_keeps_failing_past_launch_timeout_fails_the_attempt() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    kubernetes_settings(&ws, "    launch_timeout: 3s\n");
    c.sim
        .deny_creates("stuck-", 500, "etcdserver: request timed out");
    queue_job(&ws, "stuck", "duration=1s", "retry:\n  max_attempts: 1\n");
    let daemon = ws.start_daemon();
    enqueue(&ws, "stuck", "s1", "{}");
    wait_until(Duration::from_secs(60), "the message dead-lettered", || {
        !ws.dead_letters().is_empty()
    });
    let dead = ws.dead_letters();
    let error = dead[0]["last_error"].as_str().unwrap_or("");
    assert!(
        error.starts_with("launch_timeout: no launch succeeded within 3s"),
        "{}",
        dead[0]
    );
    assert!(error.contains("etcdserver: request timed out"), "{error}");
    let tries = create_answers(&c, "stuck-").len();
    assert!(
        (2..=5).contains(&tries),
        "backed off, not hammered: {tries} tries in 3 s"
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_hung_request_while_taking_the_lease_is_given_up_and_retried() {
    use kedge::executor::kubernetes::lease::LeaderLease;
    let c = Cluster::start(0.01);
    let client = kube_client(&c);
    // The first request of the acquisition (reading the Lease) never gets
    // an answer: the replica must give up on it and look again, not wait
    // for the client's read timeout (minutes).
    c.sim.hang_next(1);
    let took = c.rt.block_on(async move {
        let lease = LeaderLease::new(
            client,
            "default",
            "kedge-hang",
            "me",
            Duration::from_secs(3),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let start = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(20), lease.acquire(&stop)).await;
        assert_eq!(
            got.ok(),
            Some(true),
            "the Lease taken despite the hung request"
        );
        start.elapsed()
    });
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(
        c.sim.sim().faults.hang_next.remaining(),
        0,
        "the hang was taken"
    );
}

/// Milliseconds from a run's start to its end (`kedge runs --json`).
fn run_took_ms(r: &serde_json::Value) -> i64 {
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().unwrap_or_else(|| panic!("{k}: {r}")))
            .unwrap()
            .timestamp_millis()
    };
    at("finished_at") - at("started_at")
}

/// The JSON log lines of `d` at `level` whose message contains `needle`.
fn log_lines(d: &Daemon, level: &str, needle: &str) -> Vec<serde_json::Value> {
    d.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["level"] == level
                && v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
        })
        .collect()
}

#[test]
fn a_run_whose_pods_never_schedule_fails_at_its_start_timeout_then_is_retried_and_dead_lettered() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(
        &ws,
        "stuck",
        "unschedulable",
        "retry: { max_attempts: 2, backoff: 100ms }\nlimits: { start_timeout: 6s }\n",
    );
    let config = std::fs::read_to_string(ws.path().join("config/kedge.yaml")).unwrap();
    ws.write_config(&format!("{config}http:\n  listen: 127.0.0.1:0\n"));
    let daemon = ws.start_daemon();
    enqueue(&ws, "stuck", "s1", "{}");
    // While it waits, the stuck run shows in /healthz and /metrics.
    let addr = daemon.http_addr();
    wait_until(Duration::from_secs(20), "the stuck run in /healthz", || {
        let (_, body) = http_get(&addr, "/healthz");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        health["stuck_runs"]["Unschedulable"] == 1
    });
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("kedge_runs_stuck{job=\"stuck\",reason=\"Unschedulable\"} 1"),
        "{metrics}"
    );
    wait_until(Duration::from_secs(60), "the message dead-lettered", || {
        !ws.dead_letters().is_empty()
    });
    let dead = ws.dead_letters();
    let error = dead[0]["last_error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(
            "start_timeout: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu"
        ),
        "the scheduler's message is the reason: {}",
        dead[0]
    );
    let table = ws.ok(&["dlq", "list"]);
    assert!(
        table.contains("failed 2 of 2 attempts / start_timeout: Unschedulable: 0/3 nodes"),
        "kedge dlq list names the reason:\n{table}"
    );
    // Two attempts, each its own Job, each failed no sooner than 6 s after
    // its create, each deleted.
    let creates = c.job_creates();
    assert_eq!(creates.len(), 2, "{creates:?}");
    let runs = ws.runs();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(
            r["state"],
            if r["attempt"] == 2 { "dead" } else { "failed" },
            "{r}"
        );
        let took = run_took_ms(r);
        assert!(took >= 6_000, "{} failed after {took} ms", r["run_id"]);
    }
    wait_until(Duration::from_secs(30), "both Jobs deleted", || {
        c.left("jobs").is_empty() && c.left("pods").is_empty()
    });
    // One line per state change per attempt: stuck (WARN), failed (ERROR).
    assert_eq!(
        log_lines(&daemon, "WARN", "run stuck").len(),
        2,
        "{}",
        daemon.log()
    );
    assert_eq!(
        log_lines(&daemon, "ERROR", "start_timeout: Unschedulable").len(),
        2
    );
    assert!(log_lines(&daemon, "INFO", "no longer stuck").is_empty());
    assert!(daemon.stop().success());
}

#[test]
fn runs_that_cannot_start_fail_with_the_most_specific_evidence() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    let once = |timeouts: &str| format!("retry: {{ max_attempts: 1 }}\nlimits: {{ {timeouts} }}\n");
    // Refused pods wait for the start timeout; image and Secret errors for
    // the (shorter) image-pull timeout; an invalid image fails at once.
    queue_job(&ws, "refused", "refuse-pods", &once("start_timeout: 2s"));
    let pull = once("start_timeout: 60s, image_pull_timeout: 1s");
    queue_job(&ws, "pull", "image-pull-error", &pull);
    queue_job(&ws, "secret", "config-error", &pull);
    queue_job(&ws, "invalid", "invalid-image", &once("start_timeout: 60s"));
    let daemon = ws.start_daemon();
    for job in ["refused", "pull", "secret", "invalid"] {
        enqueue(&ws, job, &format!("{job}-1"), "{}");
    }
    wait_until(Duration::from_secs(60), "four dead letters", || {
        ws.dead_letters().len() == 4
    });
    let error_of = |job: &str| {
        let dead = ws.dead_letters();
        let d = dead.iter().find(|d| d["job"] == job).unwrap();
        d["last_error"].as_str().unwrap_or("").to_string()
    };
    let refused = error_of("refused");
    assert!(
        refused.starts_with("start_timeout: FailedCreate: Error creating: pods \"refused-")
            && refused.contains("violates PodSecurity"),
        "{refused}"
    );
    let pull = error_of("pull");
    assert!(
        pull.starts_with(
            "image_pull_timeout: ImagePullBackOff: Back-off pulling image \"busybox\""
        ) || pull.starts_with("image_pull_timeout: ErrImagePull: "),
        "{pull}"
    );
    let secret = error_of("secret");
    assert!(
        secret.starts_with("image_pull_timeout: CreateContainerConfigError: secret "),
        "{secret}"
    );
    let invalid = error_of("invalid");
    assert!(
        invalid.starts_with("start_failed: InvalidImageName: Failed to apply default image tag"),
        "{invalid}"
    );
    // Each failed within its own timeout (plus a re-planning tick or two).
    for r in ws.runs() {
        let took = run_took_ms(&r);
        let (min, max) = match r["job"].as_str().unwrap() {
            "refused" => (2_000, 10_000),
            "pull" | "secret" => (1_000, 10_000),
            _ => (0, 10_000),
        };
        assert!((min..=max).contains(&took), "{}: {took} ms", r["job"]);
    }
    wait_until(Duration::from_secs(30), "every Job deleted", || {
        c.left("jobs").is_empty() && c.left("pods").is_empty()
    });
    assert!(daemon.stop().success());
}

#[test]
fn a_pod_that_schedules_before_the_start_timeout_lets_the_run_finish() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    // Unschedulable for 150 simulated seconds = 1.5 s here.
    queue_job(
        &ws,
        "late",
        "unschedulable=150s; duration=300s",
        "retry: { max_attempts: 1 }\nlimits: { start_timeout: 20s }\n",
    );
    let daemon = ws.start_daemon();
    enqueue(&ws, "late", "l1", "{}");
    wait_until(Duration::from_secs(60), "the run succeeded", || {
        succeeded(&ws.runs()) == 1
    });
    assert!(ws.dead_letters().is_empty());
    assert_eq!(
        log_lines(&daemon, "WARN", "run stuck").len(),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(log_lines(&daemon, "INFO", "no longer stuck").len(), 1);
    assert!(log_lines(&daemon, "ERROR", "start_timeout").is_empty());
    assert!(daemon.stop().success());
}

#[test]
fn an_index_whose_pod_cannot_start_fails_alone() {
    let c = Cluster::start(0.01);
    let ws = workspace(&c, "15s");
    queue_job(
        &ws,
        "shards",
        "unschedulable-indexes=1",
        "batch: { max_messages: 3, max_wait: 300ms }\nretry: { max_attempts: 1 }\nlimits: { start_timeout: 2s }\n",
    );
    for i in 0..3 {
        enqueue(&ws, "shards", &format!("m{i}"), "{}");
    }
    let daemon = ws.start_daemon();
    wait_until(
        Duration::from_secs(60),
        "the stuck index dead-lettered",
        || !ws.dead_letters().is_empty(),
    );
    let dead = ws.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let runs = ws.runs();
    let batch = runs.iter().find(|r| r["batch"].is_array()).unwrap();
    let members = batch["batch"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{batch}");
    for m in members {
        let want = if m["index"] == 1 { "dead" } else { "succeeded" };
        assert_eq!(m["state"], want, "{m}");
        if m["index"] == 1 {
            assert_eq!(dead[0]["message_id"], m["message_id"]);
        }
    }
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("start_timeout: Unschedulable"),
        "{}",
        dead[0]
    );
    assert!(daemon.stop().success());
}
