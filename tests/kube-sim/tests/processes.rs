//! The process kubelet (`Kubelet::Processes`) through a real kube::Client:
//! pods really run their containers as local processes.
mod common;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube_sim::{KubeSim, Kubelet, SimConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A scratch root, removed on drop.
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Process mode, 1 simulated second = 20 ms.
async fn processes() -> (KubeSim, kube::Client, Root) {
    let root = std::env::temp_dir().join(format!("kube-sim-processes-{}", uuid::Uuid::new_v4()));
    let (sim, client) = start_with(SimConfig {
        time_scale: 0.02,
        kubelet: Kubelet::Processes { root: root.clone() },
        ..Default::default()
    })
    .await;
    (sim, client, Root(root))
}

/// A Job whose containers are `(name, argv, env)`; `spec` adds JobSpec
/// fields, `pod` adds PodSpec fields.
fn job(name: &str, containers: &[(&str, Value, Value)], spec: Value, pod: Value) -> Job {
    let cs: Vec<Value> = containers
        .iter()
        .map(|(n, cmd, env)| json!({"name": n, "image": "busybox:1", "command": cmd, "env": env}))
        .collect();
    let mut j = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": cs}}}
    });
    for (k, v) in spec.as_object().into_iter().flatten() {
        j["spec"][k] = v.clone();
    }
    for (k, v) in pod.as_object().into_iter().flatten() {
        j["spec"]["template"]["spec"][k] = v.clone();
    }
    serde_json::from_value(j).expect("job")
}

fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

async fn wait_until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Job's terminal condition `(type, reason)`, once it has one.
async fn terminal(jobs: &Api<Job>, name: &str) -> (String, String) {
    wait_until("a terminal condition", async || {
        let j = jobs.get(name).await.ok()?;
        j.status?.conditions?.into_iter().find_map(|c| {
            (matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
                .then(|| (c.type_, c.reason.unwrap_or_default()))
        })
    })
    .await
}

async fn pods_of(client: &kube::Client, job: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

fn terminated(pod: &Pod, key: &str) -> Vec<(i32, String)> {
    let st = pod.status.as_ref().unwrap();
    let cs = if key == "init" {
        st.init_container_statuses.clone()
    } else {
        st.container_statuses.clone()
    };
    cs.unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            let t = c.state?.terminated?;
            Some((t.exit_code, t.reason.unwrap_or_default()))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z' | 'X') | None
        )
    })
}

#[tokio::test]
async fn a_pod_runs_its_command_and_its_exit_code_decides_the_phase() {
    let (sim, client, _root) = processes().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let ok = job(
        "ok",
        &[(
            "main",
            sh("echo out; echo err >&2; echo host=$HOSTNAME"),
            json!([]),
        )],
        json!({}),
        json!({}),
    );
    jobs.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(
        terminal(&jobs, "ok").await,
        ("Complete".into(), "CompletionsReached".into())
    );
    let pods = pods_of(&client, "ok").await;
    assert_eq!(
        pods[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(terminated(&pods[0], "app"), [(0, "Completed".to_string())]);
    let logs = sim.job_logs("default", "ok");
    let pod = pods[0].metadata.name.clone().unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        (logs[0].pod.as_str(), logs[0].container.as_str()),
        (pod.as_str(), "main")
    );
    assert_eq!(logs[0].text, format!("out\nerr\nhost={pod}\n"));

    let bad = job(
        "bad",
        &[("main", sh("exit 3"), json!([]))],
        json!({}),
        json!({}),
    );
    jobs.create(&PostParams::default(), &bad).await.unwrap();
    assert_eq!(
        terminal(&jobs, "bad").await,
        ("Failed".into(), "BackoffLimitExceeded".into())
    );
    let pods = pods_of(&client, "bad").await;
    assert_eq!(
        pods[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Failed")
    );
    assert_eq!(terminated(&pods[0], "app"), [(3, "Error".to_string())]);

    let missing = job(
        "missing",
        &[("main", json!(["/nonexistent/kube-sim-binary"]), json!([]))],
        json!({}),
        json!({}),
    );
    jobs.create(&PostParams::default(), &missing).await.unwrap();
    assert_eq!(terminal(&jobs, "missing").await.0, "Failed");
    let pods = pods_of(&client, "missing").await;
    assert_eq!(
        terminated(&pods[0], "app"),
        [(128, "StartError".to_string())]
    );
}

#[tokio::test]
async fn command_args_and_env_expand_as_kubernetes_does() {
    let (sim, client, _root) = processes().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    std::env::set_var("KUBE_SIM_HOST_ONLY", "leak");
    let mut j = job(
        "env",
        &[(
            "main",
            json!(["sh", "-c", "env | sort; printf 'arg=%s\\n' \"$@\"", "sh"]),
            json!([
                {"name": "A", "value": "x"},
                {"name": "B", "value": "$(A)-y-$$(A)-$(LATER)"},
                {"name": "LATER", "value": "z"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ]),
        )],
        json!({}),
        json!({}),
    );
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .args = Some(vec!["$(B)|$$(A)|$(NOPE)|$".into()]);
    jobs.create(&PostParams::default(), &j).await.unwrap();
    assert_eq!(terminal(&jobs, "env").await.0, "Complete");
    let text = sim.job_logs("default", "env")[0].text.clone();
    let pod = pods_of(&client, "env").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let line = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    assert_eq!(line("B").as_deref(), Some("x-y-$(A)-$(LATER)"));
    assert_eq!(line("POD").as_deref(), Some(pod.as_str()));
    assert_eq!(line("HOSTNAME").as_deref(), Some(pod.as_str()));
    assert_eq!(
        line("KUBERNETES_SERVICE_HOST").as_deref(),
        Some("10.96.0.1")
    );
    assert_eq!(
        line("arg").as_deref(),
        Some("x-y-$(A)-$(LATER)|$(A)|$(NOPE)|$")
    );
    assert_eq!(line("KUBE_SIM_HOST_ONLY"), None, "the host's env leaked");
}

#[tokio::test]
async fn init_containers_run_in_order_and_indexes_reach_every_container() {
    let (sim, client, _root) = processes().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let mut j = job(
        "idx",
        &[("main", sh("echo main=$JOB_COMPLETION_INDEX"), json!([]))],
        json!({"completionMode": "Indexed", "completions": 2, "parallelism": 2}),
        json!({"initContainers": [
            {"name": "a", "image": "busybox:1", "command": ["sh", "-c", "sleep 0.1; echo a=$JOB_COMPLETION_INDEX"]},
            {"name": "b", "image": "busybox:1", "command": ["sh", "-c", "echo b"]},
        ]}),
    );
    j.metadata.name = Some("idx".into());
    jobs.create(&PostParams::default(), &j).await.unwrap();
    assert_eq!(terminal(&jobs, "idx").await.0, "Complete");
    let logs = sim.job_logs("default", "idx");
    assert_eq!(logs.len(), 6, "{logs:#?}");
    let mut seen: Vec<String> = logs.iter().map(|l| l.text.clone()).collect();
    seen.sort();
    assert_eq!(
        seen,
        ["a=0\n", "a=1\n", "b\n", "b\n", "main=0\n", "main=1\n"]
    );
    for pod in pods_of(&client, "idx").await {
        assert_eq!(terminated(&pod, "init").len(), 2);
    }

    let failing = job(
        "init-fails",
        &[("main", sh("echo main-ran"), json!([]))],
        json!({}),
        json!({"initContainers": [{"name": "init", "image": "busybox:1", "command": ["sh", "-c", "exit 2"]}]}),
    );
    jobs.create(&PostParams::default(), &failing).await.unwrap();
    assert_eq!(terminal(&jobs, "init-fails").await.0, "Failed");
    let logs = sim.job_logs("default", "init-fails");
    assert_eq!(logs.len(), 1, "only the init container ran: {logs:#?}");
    assert_eq!(logs[0].container, "init");
    let pod = &pods_of(&client, "init-fails").await[0];
    assert_eq!(terminated(pod, "init"), [(2, "Error".to_string())]);
    assert_eq!(terminated(pod, "app"), []);
}

#[tokio::test]
async fn a_missing_config_map_keeps_the_pod_pending_until_it_exists() {
    let (sim, client, _root) = processes().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let j = job(
        "cm",
        &[(
            "main",
            sh("cat \"$FILE\"; ls \"$DIR\""),
            json!([{"name": "FILE", "value": "/etc/conf/greeting"}, {"name": "DIR", "value": "/etc/conf"}]),
        )],
        json!({}),
        json!({"volumes": [{"name": "conf", "configMap": {"name": "conf"}}]}),
    );
    let mut j = j;
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .volume_mounts = Some(vec![serde_json::from_value(
        json!({"name": "conf", "mountPath": "/etc/conf"}),
    )
    .unwrap()]);
    jobs.create(&PostParams::default(), &j).await.unwrap();
    let reason = wait_until("ContainerCreating", async || {
        let pod = pods_of(&client, "cm").await.pop()?;
        let c = pod.status?.container_statuses?.pop()?;
        c.state?.waiting?.reason
    })
    .await;
    assert_eq!(reason, "ContainerCreating");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pod = pods_of(&client, "cm").await.pop().unwrap();
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
    assert!(sim.job_logs("default", "cm").is_empty());

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "conf"}, "data": {"greeting": "hello\n", "other": "x"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(terminal(&jobs, "cm").await.0, "Complete");
    assert_eq!(
        sim.job_logs("default", "cm")[0].text,
        "hello\ngreeting\nother\n"
    );
}

#[tokio::test]
async fn a_deleted_pod_gets_sigterm_then_sigkill_after_its_grace_period() {
    let (sim, client, _root) = processes().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    // Handles SIGTERM and goes on; its background child ignores it.
    let j = job(
        "stubborn",
        &[(
            "main",
            sh("trap 'echo got-term' TERM; echo pid=$$$$; (trap '' TERM; exec sleep 30) & echo child=$!; wait; wait"),
            json!([]),
        )],
        json!({}),
        json!({"terminationGracePeriodSeconds": 1}),
    );
    jobs.create(&PostParams::default(), &j).await.unwrap();
    let pids: Vec<i32> = wait_until("pids", async || {
        let text = sim.job_logs("default", "stubborn").pop()?.text;
        let pids: Vec<i32> = text
            .lines()
            .filter_map(|l| l.split_once('=').and_then(|(_, v)| v.parse().ok()))
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    let start = Instant::now();
    jobs.delete("stubborn", &DeleteParams::background())
        .await
        .unwrap();
    wait_until("SIGTERM handled", async || {
        sim.job_logs("default", "stubborn")
            .pop()
            .filter(|l| l.text.contains("got-term"))
    })
    .await;
    assert!(
        pids.iter().all(|p| alive(*p)),
        "killed before the grace period"
    );
    wait_until("processes gone", async || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "SIGKILL after {took:?}"
    );
}

#[tokio::test]
async fn active_deadline_is_wall_clock_and_the_job_fails_after_its_pods_stopped() {
    let (sim, client, _root) = processes().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    // SIGTERM takes 0.5 s to handle: the Failed condition must wait for it.
    let j = job(
        "late",
        &[(
            "main",
            sh("trap 'sleep 0.5; echo bye; exit 1' TERM; sleep 30 & wait"),
            json!([]),
        )],
        json!({"activeDeadlineSeconds": 1}),
        json!({}),
    );
    let start = Instant::now();
    jobs.create(&PostParams::default(), &j).await.unwrap();
    assert_eq!(
        terminal(&jobs, "late").await,
        ("Failed".into(), "DeadlineExceeded".into())
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1450), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(sim.job_logs("default", "late")[0].text.contains("bye"));
}
