//! The executor conformance suite: one set of checks that every
//! [`Executor`] must pass, in the manner of River's `riverdrivertest`.
//!
//! # Layout
//!
//! - [`Harness`]: what a suite needs from one executor implementation — build
//!   the executor on an outcome channel, read what a run's containers printed
//!   (as `kubectl logs` would show it), tell whether a process is alive, and
//!   plant a stray process for `recover()`. [`LocalHarness`] is the local
//!   executor's. [`KubernetesHarness`] is the Kubernetes executor's: a
//!   kube-sim per test whose simulated kubelet runs each pod's containers as
//!   local processes ([`Kubelet::Processes`]), so that logs and pids are
//!   real; its strays are Jobs created straight through the API with
//!   kedge's labels, which `recover()` must adopt.
//! - Where an executor's contract means something else, the check branches
//!   on the harness's constants, never on its type:
//!   [`Harness::SHUTDOWN_STOPS_RUNS`] (local stops runs and returns them;
//!   Kubernetes lets them run, and a second executor of the same instance
//!   adopts them and reports each exactly once, and a `cancel()` after
//!   `shutdown()` must leave them alone), [`Harness::RECOVER_ADOPTS`], and
//!   [`Harness::CANCEL_WAITS_FOR_PODS`] (Kubernetes reports `Cancelled` when
//!   the Job is deleted; the grace-period checks then time the processes'
//!   end instead of the outcome), and [`Harness::START_ERROR_REJECTS`] (a
//!   container that cannot start fails the local attempt at once as
//!   `rejected`; on Kubernetes it is a failed pod within `backoffLimit`).
//!   No check is skipped for either executor.
//! - The checks: plain `async fn check<H: Harness>(h: &H)`, generic over the
//!   executor. Each launches Jobs rendered through the real
//!   [`kedge::executor::render`] path and asserts on the outcome channel and
//!   on real process output: the containers `echo` what they see into their
//!   logs.
//! - [`executor_conformance!`] turns every check into a `#[tokio::test]` for
//!   one harness; `executor_conformance!(local, LocalHarness::new())` and
//!   `executor_conformance!(kubernetes, KubernetesHarness::new().await)` at
//!   the bottom are the two instantiations.
//!
//! Container scripts are written as they would be in a manifest: Kubernetes
//! expands `$(VAR)` and `$$` in `command`/`args`, so [`JobSpecBuilder::script`]
//! escapes every `$` (see [`k8s_literal`]) and the shell sees the script as
//! written here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use kedge::config::job::{JobLimits, PayloadPolicy, QueueTrigger, RetryPolicy};
use kedge::config::{Job, KubernetesConfig, LocalConfig, Trigger};
use kedge::executor::render::PAYLOAD_ENV_MAX;
use kedge::executor::{
    render, Executor, ExecutorError, KubernetesExecutor, Launch, LocalExecutor, Outcome,
    OutcomeKind,
};
use kedge::lifecycle::{RunState, TriggerKind};
use kedge::store::Run;
use kube_sim::{KubeSim, Kubelet, SimConfig};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

/// How long any single expected event may take. Generous: the machine may be
/// busy compiling; checks that assert an upper bound use their own.
const WAIT: Duration = Duration::from_secs(10);

/// A container that reports its pid and its background child's pid, says
/// `ready`, then sleeps until killed.
const SLEEPER: &str = "echo pid=$$; sleep 30 & echo child=$!; echo ready; wait";

// ---------------------------------------------------------------------------
// The harness: what a check needs from one executor implementation.
// ---------------------------------------------------------------------------

/// One container's output in one pod.
#[derive(Debug, Clone)]
struct ContainerLog {
    pod: String,
    container: String,
    text: String,
}

/// One executor implementation under test. A harness value is made per test
/// and owns that test's scratch space.
trait Harness {
    type Exec: Executor;
    /// A process planted by [`Harness::plant_stray`].
    type Stray;

    /// `shutdown()` stops in-flight runs and returns their ids (local), as
    /// opposed to letting go of them for the next replica to adopt.
    const SHUTDOWN_STOPS_RUNS: bool;
    /// `recover()` adopts runs that are still running somewhere instead of
    /// killing them and returning their ids for relaunch.
    const RECOVER_ADOPTS: bool;
    /// `cancel()`'s `Cancelled` outcome comes once the run's processes have
    /// stopped (local), as opposed to once the run's Job is deleted, its
    /// pods terminating afterwards in the background (Kubernetes:
    /// `propagationPolicy: Background`).
    const CANCEL_WAITS_FOR_PODS: bool;
    /// A container that cannot start (its program missing or not
    /// executable) fails the attempt at once as `rejected` (local: the
    /// executor itself starts the process and knows), as opposed to being a
    /// failed pod that the Job controller replaces within `backoffLimit`
    /// (Kubernetes: the kubelet's `StartError`).
    const START_ERROR_REJECTS: bool;

    /// A fresh executor whose runs belong to store instance `instance`.
    fn executor(&self, instance: &str, outcomes: mpsc::Sender<Outcome>) -> Self::Exec;

    /// A folder every container of this test can read and write (markers,
    /// shared counters), named by absolute path.
    fn shared_dir(&self) -> PathBuf;

    /// Every container log of `run_id` so far, ordered by pod then container.
    async fn logs(&self, run_id: &str) -> Vec<ContainerLog>;

    /// Whether the process `pid` (as a container printed it) still runs.
    fn process_alive(&self, pid: i32) -> bool;

    /// Starts a long-running process that looks as if it belonged to run
    /// `run_id` of store `instance`, left by a daemon that died.
    async fn plant_stray(&self, instance: &str, run_id: &str) -> Self::Stray;

    /// Whether a planted stray still runs.
    fn stray_running(&self, stray: &mut Self::Stray) -> bool;
}

/// The local executor's harness: a temp dir holding `runs/` (the executor's
/// `work_dir`) and `shared/`.
struct LocalHarness {
    dir: tempfile::TempDir,
}

impl LocalHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("shared")).expect("shared dir");
        LocalHarness { dir }
    }

    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
}

impl Harness for LocalHarness {
    type Exec = LocalExecutor;
    type Stray = tokio::process::Child;

    const SHUTDOWN_STOPS_RUNS: bool = true;
    const RECOVER_ADOPTS: bool = false;
    const CANCEL_WAITS_FOR_PODS: bool = true;
    const START_ERROR_REJECTS: bool = true;

    fn executor(&self, instance: &str, outcomes: mpsc::Sender<Outcome>) -> LocalExecutor {
        let cfg = LocalConfig {
            work_dir: self.work_dir(),
            pod_backoff: Duration::from_millis(50),
            pod_backoff_max: Duration::from_millis(200),
        };
        LocalExecutor::new(cfg, instance.to_string(), outcomes)
    }

    fn shared_dir(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// `<work_dir>/<run_id>/<pod>/<container>.log`.
    async fn logs(&self, run_id: &str) -> Vec<ContainerLog> {
        let mut out = Vec::new();
        let Ok(mut pods) = tokio::fs::read_dir(self.work_dir().join(run_id)).await else {
            return out;
        };
        while let Ok(Some(pod)) = pods.next_entry().await {
            if !pod.file_type().await.is_ok_and(|t| t.is_dir()) {
                continue; // the payload file
            }
            let pod_name = pod.file_name().to_string_lossy().into_owned();
            let Ok(mut files) = tokio::fs::read_dir(pod.path()).await else {
                continue;
            };
            while let Ok(Some(f)) = files.next_entry().await {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(container) = name.strip_suffix(".log") else {
                    continue;
                };
                let bytes = tokio::fs::read(f.path()).await.expect("read log");
                out.push(ContainerLog {
                    pod: pod_name.clone(),
                    container: container.to_string(),
                    text: String::from_utf8(bytes).expect("logs are UTF-8"),
                });
            }
        }
        out.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
        out
    }

    fn process_alive(&self, pid: i32) -> bool {
        proc_alive(pid)
    }

    async fn plant_stray(&self, instance: &str, run_id: &str) -> tokio::process::Child {
        tokio::process::Command::new("sleep")
            .arg("60")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEDGE_INSTANCE", instance)
            .env("KEDGE_RUN_ID", run_id)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a stray sleep")
    }

    fn stray_running(&self, stray: &mut tokio::process::Child) -> bool {
        matches!(stray.try_wait(), Ok(None))
    }
}

/// The namespace the Kubernetes harness runs Jobs in.
const NAMESPACE: &str = "default";

/// The Kubernetes executor's harness: a kube-sim per test whose simulated
/// kubelet runs each pod's containers as local processes
/// ([`Kubelet::Processes`]), so logs, pids and signals are real. Simulated
/// delays (pod start-up, the 10 s doubling pod backoff, the lag before a
/// terminal condition) run at 1/50; `activeDeadlineSeconds` and
/// `terminationGracePeriodSeconds` bound real processes and run on the
/// wall clock.
struct KubernetesHarness {
    // Dropped first: the stand-in kills every process it still runs.
    sim: KubeSim,
    client: kube::Client,
    /// `pods/` (the kubelet's root) and `shared/`.
    dir: tempfile::TempDir,
}

impl KubernetesHarness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("shared")).expect("shared dir");
        let sim = KubeSim::start(SimConfig {
            time_scale: 0.02,
            kubelet: Kubelet::Processes {
                root: dir.path().join("pods"),
            },
            ..Default::default()
        })
        .await
        .expect("start kube-sim");
        let config = kube::Config::new(sim.url().parse().expect("kube-sim url"));
        let client = kube::Client::try_from(config).expect("kube client");
        KubernetesHarness { sim, client, dir }
    }
}

/// A Job planted through the API as if an earlier daemon had launched it.
struct KubeStray {
    name: String,
    uid: String,
    /// Its container's main process.
    pid: i32,
}

impl Harness for KubernetesHarness {
    type Exec = KubernetesExecutor;
    type Stray = KubeStray;

    const SHUTDOWN_STOPS_RUNS: bool = false;
    const RECOVER_ADOPTS: bool = true;
    const CANCEL_WAITS_FOR_PODS: bool = false;
    const START_ERROR_REJECTS: bool = false;

    fn executor(&self, instance: &str, outcomes: mpsc::Sender<Outcome>) -> KubernetesExecutor {
        let cfg = KubernetesConfig {
            namespace: Some(NAMESPACE.into()),
            request_timeout: Duration::from_secs(5),
            successful_jobs_history_limit: 0,
            failed_jobs_history_limit: 0,
            ..Default::default()
        };
        KubernetesExecutor::new(
            self.client.clone(),
            NAMESPACE,
            cfg,
            instance.to_string(),
            "conformance".into(),
            outcomes,
        )
    }

    fn shared_dir(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// What `kubectl logs` shows for every pod the Job `run_id` ran.
    async fn logs(&self, run_id: &str) -> Vec<ContainerLog> {
        let mut out: Vec<ContainerLog> = self
            .sim
            .job_logs(NAMESPACE, run_id)
            .into_iter()
            .map(|l| ContainerLog {
                pod: l.pod,
                container: l.container,
                text: l.text,
            })
            .collect();
        out.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
        out
    }

    fn process_alive(&self, pid: i32) -> bool {
        proc_alive(pid)
    }

    /// A running Job with kedge's labels and run annotation for `instance`
    /// and `run_id`, created straight through the API. It is named by the
    /// run id, as kedge names Jobs; when that name is taken (another
    /// instance's run of the same id: names are per namespace) it gets a
    /// suffix. Returns once its container runs.
    async fn plant_stray(&self, instance: &str, run_id: &str) -> KubeStray {
        use k8s_openapi::api::batch::v1::Job as KubeJob;
        let jobs: kube::Api<KubeJob> = kube::Api::namespaced(self.client.clone(), NAMESPACE);
        let labels = serde_json::json!({
            "app.kubernetes.io/managed-by": "kedge",
            "kedge.dev/instance": instance,
            "kedge.dev/job": "conformance",
            "kedge.dev/run": run_id,
        });
        let mut n = 0;
        let created = loop {
            let name = if n == 0 {
                run_id.to_string()
            } else {
                format!("{run_id}-{n}")
            };
            let job: KubeJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "labels": labels, "annotations": {"kedge.dev/run": run_id}},
                "spec": {"backoffLimit": 0, "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never", "containers": [{
                        "name": "main", "image": "busybox",
                        "command": sh("echo pid=$$; exec sleep 60"),
                    }]},
                }},
            }))
            .expect("a stray Job");
            match jobs.create(&Default::default(), &job).await {
                Ok(j) => break j,
                Err(kube::Error::Api(s)) if s.is_already_exists() => n += 1,
                Err(e) => panic!("planting a stray Job: {e}"),
            }
        };
        let name = created.metadata.name.clone().expect("a name");
        let uid = created.metadata.uid.clone().expect("a uid");
        let logs = wait_for_log(self, &name, "pid=").await;
        let pid = pids(&logs)[0];
        KubeStray { name, uid, pid }
    }

    /// The planted Job still exists (the same object) and its process runs.
    fn stray_running(&self, stray: &mut KubeStray) -> bool {
        let same = self
            .sim
            .object("jobs", NAMESPACE, &stray.name)
            .is_some_and(|j| j["metadata"]["uid"] == stray.uid.as_str());
        same && proc_alive(stray.pid)
    }
}

/// Alive unless gone or a zombie (a killed grandchild may wait for pid 1 to
/// reap it).
fn proc_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

// ---------------------------------------------------------------------------
// Test builders: a JobSpec, and a Job + Run rendered into a Launch.
// ---------------------------------------------------------------------------

/// Escapes `s` so that Kubernetes' `$(VAR)` expansion leaves it as written.
fn k8s_literal(s: &str) -> String {
    s.replace('$', "$$")
}

/// A JobSpec with one container `main` running `true`, `restartPolicy:
/// Never`. Container methods (`script`, `command`, `args`, `env`) apply to
/// the container added last.
#[derive(Debug, Clone)]
struct JobSpecBuilder {
    spec: JobSpec,
}

impl JobSpecBuilder {
    fn new() -> Self {
        JobSpecBuilder {
            spec: JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        containers: vec![container("main")],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
        }
    }

    fn pod(&mut self) -> &mut PodSpec {
        self.spec.template.spec.as_mut().expect("pod spec")
    }

    fn last(&mut self) -> &mut Container {
        self.pod().containers.last_mut().expect("a container")
    }

    fn completions(mut self, n: i32) -> Self {
        self.spec.completions = Some(n);
        self
    }

    fn parallelism(mut self, n: i32) -> Self {
        self.spec.parallelism = Some(n);
        self
    }

    /// `completionMode: Indexed` with `n` completions.
    fn indexed(mut self, n: i32) -> Self {
        self.spec.completion_mode = Some("Indexed".into());
        self.spec.completions = Some(n);
        self
    }

    fn backoff_limit(mut self, n: i32) -> Self {
        self.spec.backoff_limit = Some(n);
        self
    }

    fn active_deadline_seconds(mut self, s: i64) -> Self {
        self.spec.active_deadline_seconds = Some(s);
        self
    }

    fn termination_grace_period_seconds(mut self, s: i64) -> Self {
        self.pod().termination_grace_period_seconds = Some(s);
        self
    }

    /// Adds an app container running `true`.
    fn container(mut self, name: &str) -> Self {
        self.pod().containers.push(container(name));
        self
    }

    /// Adds an init container running `sh -c script`.
    fn init_container(mut self, name: &str, script: &str) -> Self {
        let mut c = container(name);
        c.command = Some(sh(script));
        self.pod()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(c);
        self
    }

    fn command<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.last().command = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    fn args<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.last().args = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// `sh -c script`, the script escaped from `$(VAR)` expansion.
    fn script(self, script: &str) -> Self {
        self.command(sh(script))
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.last().env.get_or_insert_with(Vec::new).push(EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        });
        self
    }

    fn build(self) -> JobSpec {
        self.spec
    }
}

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: Some("busybox".into()),
        command: Some(vec!["true".into()]),
        ..Default::default()
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), k8s_literal(script)]
}

/// A validated-looking job plus one run of it; [`TestRun::launch`] renders
/// them through [`kedge::executor::render`].
struct TestRun {
    job: Job,
    run: Run,
}

impl TestRun {
    fn new(run_id: &str, spec: JobSpecBuilder) -> Self {
        let job = Job {
            name: "conformance".into(),
            description: None,
            priority: 0,
            file: PathBuf::from("jobs/conformance.yaml"),
            trigger: Trigger::Queue(QueueTrigger::builtin()),
            after: None,
            retry: RetryPolicy::default(),
            limits: JobLimits::default(),
            payload: PayloadPolicy::default(),
            host_env: Vec::new(),
            window: None,
            sizing: None,
            guards: Vec::new(),
            spec: spec.build(),
        };
        let run = Run {
            run_id: run_id.into(),
            work_item_id: format!("wi-{run_id}"),
            job: job.name.clone(),
            attempt: 1,
            state: RunState::Running,
            trigger: TriggerKind::Manual,
            scheduled_ms: 0,
            started_ms: None,
            finished_ms: None,
            launches: 0,
            first_launch_ms: None,
            error: None,
            source: "manual".into(),
            message_id: format!("msg-{run_id}"),
            payload: None,
            deadline_ms: None,
            attempt_base: 0,
            sizing: None,
            backfill_id: None,
        };
        TestRun { job, run }
    }

    fn job_name(mut self, name: &str) -> Self {
        self.job.name = name.into();
        self.run.job = name.into();
        self
    }

    fn attempt(mut self, n: i64) -> Self {
        self.run.attempt = n;
        self
    }

    fn trigger(mut self, t: TriggerKind) -> Self {
        self.run.trigger = t;
        self
    }

    fn message_id(mut self, id: &str) -> Self {
        self.run.message_id = id.into();
        self
    }

    fn payload(mut self, p: &str) -> Self {
        self.run.payload = Some(p.into());
        self
    }

    fn deadline_ms(mut self, ms: i64) -> Self {
        self.run.deadline_ms = Some(ms);
        self
    }

    fn host_env(mut self, name: &str, value: &str) -> Self {
        self.job.host_env.push((name.into(), value.into()));
        self
    }

    fn launch(&self) -> Launch {
        render(&self.job, &self.run)
    }
}

// ---------------------------------------------------------------------------
// The rig: one executor and its outcome channel, plus observation helpers.
// ---------------------------------------------------------------------------

struct Rig<E: Executor> {
    exec: E,
    outcomes: mpsc::Receiver<Outcome>,
    instance: String,
}

impl<E: Executor> Rig<E> {
    fn start<H: Harness<Exec = E>>(h: &H) -> Self {
        Self::start_as(h, &format!("conformance-{}", uuid::Uuid::new_v4()))
    }

    /// An executor of store instance `instance` (a second replica, or the
    /// daemon after a restart).
    fn start_as<H: Harness<Exec = E>>(h: &H, instance: &str) -> Self {
        let (tx, outcomes) = mpsc::channel(64);
        let instance = instance.to_string();
        Rig {
            exec: h.executor(&instance, tx),
            outcomes,
            instance,
        }
    }

    async fn launch(&self, launch: Launch) {
        let id = launch.run_id.clone();
        if let Err(e) = self.exec.launch(launch).await {
            panic!("launch {id}: {e:?}");
        }
    }

    /// The next outcome, which must be `run_id`'s.
    async fn outcome_of(&mut self, run_id: &str) -> OutcomeKind {
        let o = self.next_outcome().await;
        assert_eq!(o.run_id, run_id, "outcome for another run: {o:?}");
        o.kind
    }

    async fn next_outcome(&mut self) -> Outcome {
        match tokio::time::timeout(WAIT, self.outcomes.recv()).await {
            Ok(Some(o)) => o,
            Ok(None) => panic!("the outcome channel closed"),
            Err(_) => panic!("no outcome within {WAIT:?}"),
        }
    }

    /// Ends the check: nothing is in flight any more and no outcome beyond
    /// the ones already received is ever sent.
    async fn finish(mut self) {
        let stopped = self.exec.shutdown().await;
        assert!(
            stopped.is_empty(),
            "runs still in flight at the end: {stopped:?}"
        );
        assert_no_outcome(&mut self.outcomes);
    }
}

/// No outcome is queued. Called after `shutdown()` returned: by then every
/// outcome the executor will ever send has been sent.
fn assert_no_outcome(outcomes: &mut mpsc::Receiver<Outcome>) {
    match outcomes.try_recv() {
        Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
        Ok(o) => panic!("unexpected outcome: {o:?}"),
    }
}

fn failed_reason(kind: &OutcomeKind) -> Option<&str> {
    match kind {
        OutcomeKind::Failed { reason, .. } => Some(reason),
        _ => None,
    }
}

/// The distinct pods that ran.
fn pods(logs: &[ContainerLog]) -> BTreeSet<String> {
    logs.iter().map(|l| l.pod.clone()).collect()
}

/// Every `key=value` line's value, in log order.
fn values(logs: &[ContainerLog], key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    logs.iter()
        .flat_map(|l| l.text.lines())
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn pids(logs: &[ContainerLog]) -> Vec<i32> {
    let mut out: Vec<i32> = values(logs, "pid")
        .into_iter()
        .chain(values(logs, "child"))
        .map(|v| v.parse().expect("a pid"))
        .collect();
    out.sort_unstable();
    out
}

/// Waits until some container of `run_id` has printed `needle`.
async fn wait_for_log<H: Harness>(h: &H, run_id: &str, needle: &str) -> Vec<ContainerLog> {
    let start = Instant::now();
    loop {
        let logs = h.logs(run_id).await;
        if logs.iter().any(|l| l.text.contains(needle)) {
            return logs;
        }
        assert!(
            start.elapsed() < WAIT,
            "no {needle:?} in the logs of {run_id} within {WAIT:?}: {logs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until none of `pids` is alive (a SIGKILLed grandchild is reaped by
/// pid 1 asynchronously).
async fn assert_gone<H: Harness>(h: &H, pids: &[i32]) {
    assert!(!pids.is_empty(), "no pids to check");
    let start = Instant::now();
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| h.process_alive(*p))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "processes still alive: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// One pod exiting 0 → `Succeeded`, exactly once.
async fn success<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let t = TestRun::new("conf-success", JobSpecBuilder::new().script("echo hello"));
    rig.launch(t.launch()).await;
    assert_eq!(rig.outcome_of("conf-success").await, OutcomeKind::Succeeded);
    let logs = h.logs("conf-success").await;
    assert_eq!(pods(&logs).len(), 1, "{logs:#?}");
    assert_eq!(logs[0].container, "main");
    assert_eq!(logs[0].text, "hello\n");
    rig.finish().await;
}

/// NonIndexed, completions 3, parallelism 1 → three pods, no index.
async fn completions_non_indexed<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .completions(3)
        .parallelism(1)
        .script("echo index=${JOB_COMPLETION_INDEX-none}");
    rig.launch(TestRun::new("conf-completions", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-completions").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-completions").await;
    assert_eq!(pods(&logs).len(), 3, "{logs:#?}");
    assert_eq!(values(&logs, "index"), ["none", "none", "none"]);
    rig.finish().await;
}

/// completions unset, parallelism 3 → a work queue: three pods start, and
/// once one has succeeded no failed pod is replaced; the Job succeeds.
async fn work_queue_without_completions<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    // The first pod to claim the marker succeeds at once, the others fail
    // after it: none of them may be replaced. (Pod names are no sequence
    // to go by: Kubernetes' carry a random suffix.) The others fail 2 s
    // later, so even on a loaded machine the first has exited by then.
    let first = h.shared_dir().join("workqueue-first");
    let spec = JobSpecBuilder::new()
        .parallelism(3)
        .backoff_limit(10)
        .env("FIRST", &first.display().to_string())
        .script(
            "echo pod=$HOSTNAME; if mkdir \"$FIRST\" 2>/dev/null; then exit 0; fi; sleep 2; exit 1",
        );
    rig.launch(TestRun::new("conf-workqueue", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-workqueue").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-workqueue").await;
    assert_eq!(pods(&logs).len(), 3, "{logs:#?}");
    rig.finish().await;
}

/// completions 4, parallelism 2 → at most two pods at once, and two do run
/// at once.
async fn parallelism_is_honoured<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    // Each pod marks that it runs and waits (up to 20 s) until two have,
    // so the first two overlap however late the second starts on a loaded
    // machine; then it stays 1 s, long enough for a third pod started
    // with them (parallelism not honoured) to overlap too.
    let spec = JobSpecBuilder::new()
        .completions(4)
        .parallelism(2)
        .env("SHARED", &h.shared_dir().display().to_string())
        .script(
            "echo start=$(date +%s%N); touch $SHARED/parallel.$$; i=0; \
             while [ $(ls $SHARED | grep -c '^parallel\\.') -lt 2 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
             sleep 1; echo end=$(date +%s%N)",
        );
    rig.launch(TestRun::new("conf-parallel", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-parallel").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-parallel").await;
    assert_eq!(pods(&logs).len(), 4, "{logs:#?}");
    // Each pod's [start, end]; sweep them to find the most alive at once.
    let mut events: Vec<(u128, i32)> = Vec::new();
    for l in &logs {
        let one = |key| -> u128 {
            values(std::slice::from_ref(l), key)
                .first()
                .unwrap_or_else(|| panic!("no {key} in {l:?}"))
                .parse()
                .expect("nanoseconds")
        };
        events.push((one("start"), 1));
        events.push((one("end"), -1));
    }
    events.sort(); // at equal times an end (-1) sorts before a start
    let (mut alive, mut max) = (0, 0);
    for (_, d) in events {
        alive += d;
        max = max.max(alive);
    }
    assert_eq!(max, 2, "most pods alive at once");
    rig.finish().await;
}

/// Indexed, completions 4 → each index once, with `JOB_COMPLETION_INDEX`
/// and `KEDGE_SHARDS=4`.
async fn indexed_runs_each_index_once<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .indexed(4)
        .parallelism(2)
        .script("echo index=$JOB_COMPLETION_INDEX; echo shards=$KEDGE_SHARDS");
    rig.launch(TestRun::new("conf-indexed", spec).launch())
        .await;
    assert_eq!(rig.outcome_of("conf-indexed").await, OutcomeKind::Succeeded);
    let logs = h.logs("conf-indexed").await;
    assert_eq!(pods(&logs).len(), 4, "{logs:#?}");
    let mut indexes = values(&logs, "index");
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2", "3"]);
    assert_eq!(values(&logs, "shards"), ["4", "4", "4", "4"]);
    rig.finish().await;
}

/// A failed index is retried with the same index; the others run once.
async fn indexed_retry_keeps_index<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .indexed(3)
        .parallelism(3)
        .backoff_limit(1)
        .env("SHARED", &h.shared_dir().display().to_string())
        .script(
            "echo index=$JOB_COMPLETION_INDEX; m=$SHARED/index-$JOB_COMPLETION_INDEX; \
             if [ $JOB_COMPLETION_INDEX = 1 ] && [ ! -e $m ]; then touch $m; exit 1; fi",
        );
    rig.launch(TestRun::new("conf-indexed-retry", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-indexed-retry").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-indexed-retry").await;
    assert_eq!(pods(&logs).len(), 4, "{logs:#?}");
    let mut indexes = values(&logs, "index");
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "1", "2"]);
    rig.finish().await;
}

/// The pod sees kedge's variables, the template's env (with `$(VAR)`
/// expansion), `env_from_host` values literally, `$(VAR)` expanded in args —
/// and nothing else of the daemon's environment.
async fn env_is_exactly_what_a_pod_gets<H: Harness>(h: &H) {
    const SENTINEL: &str = "KEDGE_CONFORMANCE_DAEMON_ONLY";
    static SET: std::sync::Once = std::sync::Once::new();
    // The daemon's own variable; std's env lock makes this safe against
    // concurrent spawns in other tests.
    SET.call_once(|| std::env::set_var(SENTINEL, "must-not-leak"));

    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .env("GREETING", "hello")
        .env("DERIVED", "$(GREETING)-world")
        .env("KEDGE_RUN_ID", "spoofed-by-template")
        .command(
            sh("env; printf 'arg=%s\\n' \"$@\"")
                .into_iter()
                .chain(["sh".into()]),
        )
        .args(["$(KEDGE_JOB)/$(GREETING)/$$(KEDGE_JOB)/$(NOPE)"]);
    let t = TestRun::new("conf-env", spec)
        .job_name("conf-env-job")
        .attempt(3)
        .trigger(TriggerKind::Queue)
        .message_id("msg-42")
        .deadline_ms(1_893_456_000_000)
        .host_env("FROM_HOST", "literal $(GREETING) $$ $(");
    rig.launch(t.launch()).await;
    assert_eq!(rig.outcome_of("conf-env").await, OutcomeKind::Succeeded);
    let logs = h.logs("conf-env").await;
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let env: BTreeMap<&str, &str> = logs[0]
        .text
        .lines()
        .filter(|l| !l.starts_with("arg="))
        .filter_map(|l| l.split_once('='))
        .collect();

    let expect = [
        ("KEDGE_JOB", "conf-env-job"),
        ("KEDGE_RUN_ID", "conf-env"),
        ("KEDGE_ATTEMPT", "3"),
        ("KEDGE_SHARDS", "1"),
        ("KEDGE_TRIGGER", "queue"),
        ("KEDGE_MESSAGE_ID", "msg-42"),
        ("KEDGE_DEADLINE", "2030-01-01T00:00:00Z"),
        ("GREETING", "hello"),
        ("DERIVED", "hello-world"),
        ("FROM_HOST", "literal $(GREETING) $$ $("),
    ];
    for (k, v) in expect {
        assert_eq!(env.get(k).copied(), Some(v), "{k} in {env:#?}");
    }
    assert_eq!(
        values(&logs, "arg"),
        ["conf-env-job/hello/$(KEDGE_JOB)/$(NOPE)"]
    );
    for absent in [
        "KEDGE_PAYLOAD",
        "KEDGE_PAYLOAD_FILE",
        "JOB_COMPLETION_INDEX",
    ] {
        assert!(!env.contains_key(absent), "{absent} set: {env:#?}");
    }
    // What a pod may share with the daemon's environment: what a container
    // image or the kubelet sets, or kedge itself.
    let allowed = [
        "PATH", "HOME", "LANG", "TZ", "HOSTNAME", "PWD", "SHLVL", "_",
    ];
    assert!(
        !env.contains_key(SENTINEL),
        "the daemon's env leaked: {env:#?}"
    );
    for (k, v) in std::env::vars() {
        if allowed.contains(&k.as_str()) || k.starts_with("KEDGE_") {
            continue;
        }
        assert_ne!(env.get(k.as_str()).copied(), Some(v.as_str()), "{k} leaked");
    }
    rig.finish().await;
}

/// Prints where the payload came from, then the payload itself.
const PAYLOAD_ECHO: &str = "\
if [ -n \"${KEDGE_PAYLOAD+x}\" ] && [ -n \"${KEDGE_PAYLOAD_FILE+x}\" ]; then echo both; exit 1; fi
if [ -n \"${KEDGE_PAYLOAD_FILE+x}\" ]; then echo via=file; cat \"$KEDGE_PAYLOAD_FILE\";
else echo via=env; printf '%s' \"$KEDGE_PAYLOAD\"; fi";

async fn payload_round_trip<H: Harness>(h: &H, run_id: &str, payload: &str, via: &str) {
    let mut rig = Rig::start(h);
    let t = TestRun::new(run_id, JobSpecBuilder::new().script(PAYLOAD_ECHO)).payload(payload);
    rig.launch(t.launch()).await;
    assert_eq!(rig.outcome_of(run_id).await, OutcomeKind::Succeeded);
    let logs = h.logs(run_id).await;
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let text = &logs[0].text;
    let head: String = text.chars().take(80).collect();
    let got = text
        .strip_prefix(&format!("via={via}\n"))
        .unwrap_or_else(|| panic!("payload not delivered via {via}: {head:?}…"));
    if got != payload {
        // Show where they part, not 40 KiB of both.
        let at = got
            .char_indices()
            .zip(payload.chars())
            .find(|((_, g), w)| g != w)
            .map_or(got.len().min(payload.len()), |((i, _), _)| i);
        let from = got[..at].char_indices().rev().nth(20).map_or(0, |(i, _)| i);
        let snip = |s: &str| s[from..].chars().take(60).collect::<String>();
        panic!(
            "payload changed on the way ({} bytes sent, {} received), from byte {from}:\n got: {:?}\nwant: {:?}",
            payload.len(),
            got.len(),
            snip(got),
            snip(payload),
        );
    }
    rig.finish().await;
}

/// A small payload arrives in `KEDGE_PAYLOAD` byte for byte: nothing in it
/// is expanded, neither Kubernetes' `$(VAR)`/`$$` nor shell syntax.
async fn payload_small_is_byte_exact<H: Harness>(h: &H) {
    let payload = concat!(
        r#"{"text":"it's \"quoted\" and 'single'","n":1}"#,
        "\nline two\n\ttabbed\r\n",
        "unicode: héllo ✓ 日本語 🚀\n",
        "k8s: $(x) $(HOME) $(KEDGE_JOB) $$ $$(KEDGE_RUN_ID) $( $\n",
        "shell: `id` $(id) ${HOME} $HOME; rm -rf /nonexistent && echo pwned | cat >/dev/null * ? ~ \\ <>& %s %n\n",
        "  trailing spaces and no newline  "
    );
    payload_round_trip(h, "conf-payload-small", payload, "env").await;
}

/// The largest payload that still goes in the env var.
async fn payload_at_env_limit<H: Harness>(h: &H) {
    let payload = "$".repeat(PAYLOAD_ENV_MAX);
    payload_round_trip(h, "conf-payload-limit", &payload, "env").await;
}

/// A payload over 32 KiB arrives as `KEDGE_PAYLOAD_FILE`, byte for byte.
async fn payload_large_goes_to_file<H: Harness>(h: &H) {
    let chunk = "$(HOME) `id` 日本語 🚀 \"q\" 'q' \\ \n";
    let payload = chunk.repeat(40 * 1024 / chunk.len() + 1);
    assert!(payload.len() > PAYLOAD_ENV_MAX);
    payload_round_trip(h, "conf-payload-large", &payload, "file").await;
}

/// A pod that always fails, backoffLimit 2 → three pods, then
/// `BackoffLimitExceeded`.
async fn backoff_limit_exceeded<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .backoff_limit(2)
        .script("echo tried; exit 3");
    rig.launch(TestRun::new("conf-backoff", spec).launch())
        .await;
    let kind = rig.outcome_of("conf-backoff").await;
    assert_eq!(
        failed_reason(&kind),
        Some("BackoffLimitExceeded"),
        "{kind:?}"
    );
    let logs = h.logs("conf-backoff").await;
    assert_eq!(pods(&logs).len(), 3, "{logs:#?}");
    assert!(logs.iter().all(|l| l.text == "tried\n"), "{logs:#?}");
    rig.finish().await;
}

/// A pod that fails once and then succeeds, backoffLimit 1 → `Succeeded`.
async fn backoff_then_success<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let marker = h.shared_dir().join("backoff-marker");
    let spec = JobSpecBuilder::new()
        .backoff_limit(1)
        .env("MARKER", &marker.display().to_string())
        .script(
            "if [ -e \"$MARKER\" ]; then echo try=second; exit 0; fi; \
             touch \"$MARKER\"; echo try=first; exit 1",
        );
    rig.launch(TestRun::new("conf-backoff-ok", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-backoff-ok").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-backoff-ok").await;
    assert_eq!(pods(&logs).len(), 2, "{logs:#?}");
    let mut tries = values(&logs, "try");
    tries.sort();
    assert_eq!(tries, ["first", "second"]);
    rig.finish().await;
}

/// A container that cannot start — its program missing, or not
/// executable — fails the attempt; it never succeeds, and no more pods run
/// than `backoffLimit` allows. How soon depends on who starts the process
/// ([`Harness::START_ERROR_REJECTS`]): the local executor starts it itself,
/// knows the start failed for good, and fails the attempt at once as
/// `rejected` with `spawn: <program>: <why>` (a new pod would fail the same
/// way; the job's `retry` policy decides what follows, as for a Job the
/// API refuses). On Kubernetes the kubelet's `StartError` is a failed pod
/// that the Job controller replaces within `backoffLimit`, and the attempt
/// fails as the Job does, `BackoffLimitExceeded`.
async fn unstartable_container_fails_the_attempt<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let not_executable = h.shared_dir().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\necho ran\n").expect("write script");
    let programs = [
        (
            "conf-unstartable-missing",
            "/nonexistent/kedge-conformance-binary".to_string(),
            "No such file or directory",
        ),
        (
            "conf-unstartable-mode",
            not_executable.display().to_string(),
            "Permission denied",
        ),
    ];
    for (run_id, program, why) in &programs {
        let spec = JobSpecBuilder::new()
            .backoff_limit(1)
            .command([program.as_str()]);
        rig.launch(TestRun::new(run_id, spec).launch()).await;
        let kind = rig.outcome_of(run_id).await;
        if H::START_ERROR_REJECTS {
            assert_eq!(
                kind,
                OutcomeKind::Failed {
                    reason: "rejected".into(),
                    message: format!("spawn: {program}: {why}"),
                },
            );
            let logs = h.logs(run_id).await;
            assert_eq!(pods(&logs).len(), 1, "no pod replaced: {logs:#?}");
        } else {
            assert_eq!(
                failed_reason(&kind),
                Some("BackoffLimitExceeded"),
                "{kind:?}"
            );
        }
    }
    rig.finish().await;
}

/// A pod's containers all run, in the same pod; one failing fails the pod.
async fn pod_containers_share_fate<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .script("echo host=$HOSTNAME")
        .container("side")
        .script("echo host=$HOSTNAME");
    rig.launch(TestRun::new("conf-two-containers", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-two-containers").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-two-containers").await;
    let names: Vec<&str> = logs.iter().map(|l| l.container.as_str()).collect();
    assert_eq!(names, ["main", "side"], "{logs:#?}");
    assert_eq!(pods(&logs).len(), 1);
    let hosts = values(&logs, "host");
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        hosts[0], hosts[1],
        "containers of one pod share its hostname"
    );
    assert_eq!(hosts[0], logs[0].pod, "the hostname is the pod name");

    let spec = JobSpecBuilder::new()
        .backoff_limit(0)
        .script("exit 0")
        .container("side")
        .script("exit 4");
    rig.launch(TestRun::new("conf-one-fails", spec).launch())
        .await;
    let kind = rig.outcome_of("conf-one-fails").await;
    assert_eq!(
        failed_reason(&kind),
        Some("BackoffLimitExceeded"),
        "{kind:?}"
    );
    rig.finish().await;
}

/// Init containers run first, one after another, before the app containers;
/// a failing one fails the pod and the app containers never run.
async fn init_containers_run_first<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let order = h.shared_dir().join("init-order").display().to_string();
    let spec = JobSpecBuilder::new()
        .init_container("init-a", &format!("sleep 0.2; echo init-a >> '{order}'"))
        .init_container("init-b", &format!("echo init-b=$KEDGE_RUN_ID >> '{order}'"))
        .script(&format!("echo main >> '{order}'; cat '{order}'"));
    rig.launch(TestRun::new("conf-init", spec).launch()).await;
    assert_eq!(rig.outcome_of("conf-init").await, OutcomeKind::Succeeded);
    let logs = h.logs("conf-init").await;
    let main = logs
        .iter()
        .find(|l| l.container == "main")
        .unwrap_or_else(|| panic!("no main log: {logs:#?}"));
    assert_eq!(main.text, "init-a\ninit-b=conf-init\nmain\n");

    let spec = JobSpecBuilder::new()
        .backoff_limit(0)
        .init_container("init", "echo init-failed; exit 2")
        .script("echo main-ran");
    rig.launch(TestRun::new("conf-init-fails", spec).launch())
        .await;
    let kind = rig.outcome_of("conf-init-fails").await;
    assert_eq!(
        failed_reason(&kind),
        Some("BackoffLimitExceeded"),
        "{kind:?}"
    );
    let logs = h.logs("conf-init-fails").await;
    assert!(
        logs.iter().all(|l| !l.text.contains("main-ran")),
        "the app container ran after its init container failed: {logs:#?}"
    );
    rig.finish().await;
}

/// A pod whose main process exits leaves nothing behind: its background
/// children are killed with it, as a pod sandbox's are.
async fn finished_pod_leaves_no_processes<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new().script("sleep 30 & echo child=$!; echo pid=$$");
    rig.launch(TestRun::new("conf-leftovers", spec).launch())
        .await;
    assert_eq!(
        rig.outcome_of("conf-leftovers").await,
        OutcomeKind::Succeeded
    );
    let logs = h.logs("conf-leftovers").await;
    assert_gone(h, &pids(&logs)).await;
    rig.finish().await;
}

/// activeDeadlineSeconds 1 on a `sleep 30` → `DeadlineExceeded` in about a
/// second, and the whole process tree is gone.
async fn deadline_exceeded_kills_the_tree<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .active_deadline_seconds(1)
        .script(SLEEPER);
    let start = Instant::now();
    rig.launch(TestRun::new("conf-deadline", spec).launch())
        .await;
    let logs = wait_for_log(h, "conf-deadline", "ready").await;
    let kind = rig.outcome_of("conf-deadline").await;
    let took = start.elapsed();
    assert_eq!(failed_reason(&kind), Some("DeadlineExceeded"), "{kind:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "deadline outcome after {took:?}"
    );
    assert_gone(h, &pids(&logs)).await;
    rig.finish().await;
}

/// cancel() of a running run → `Cancelled`, processes gone.
async fn cancel_stops_the_run<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    rig.launch(TestRun::new("conf-cancel", JobSpecBuilder::new().script(SLEEPER)).launch())
        .await;
    let logs = wait_for_log(h, "conf-cancel", "ready").await;
    let start = Instant::now();
    rig.exec.cancel("conf-cancel").await;
    assert_eq!(rig.outcome_of("conf-cancel").await, OutcomeKind::Cancelled);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_gone(h, &pids(&logs)).await;
    rig.finish().await;
}

/// cancel() of an unknown or finished run does nothing.
async fn cancel_ignores_unknown_and_finished<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    rig.exec.cancel("conf-never-launched").await;
    rig.launch(TestRun::new("conf-done", JobSpecBuilder::new()).launch())
        .await;
    assert_eq!(rig.outcome_of("conf-done").await, OutcomeKind::Succeeded);
    rig.exec.cancel("conf-done").await;
    rig.finish().await;
}

/// terminationGracePeriodSeconds: SIGTERM comes first, the pod's handler
/// gets time to finish (it takes 0.3 s here), and a pod that exits on it is
/// not made to wait out the rest of the grace period.
async fn grace_period_lets_sigterm_trap_run<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .termination_grace_period_seconds(20)
        .script(&format!(
            "trap 'sleep 0.3; echo got-term; exit 0' TERM; {SLEEPER}"
        ));
    rig.launch(TestRun::new("conf-grace", spec).launch()).await;
    let logs = wait_for_log(h, "conf-grace", "ready").await;
    let start = Instant::now();
    rig.exec.cancel("conf-grace").await;
    assert_eq!(rig.outcome_of("conf-grace").await, OutcomeKind::Cancelled);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "waited out the grace period: {:?}",
        start.elapsed()
    );
    let after = if H::CANCEL_WAITS_FOR_PODS {
        h.logs("conf-grace").await
    } else {
        // The Job is gone; its pod is terminating in the background.
        wait_for_log(h, "conf-grace", "got-term").await
    };
    assert!(after[0].text.ends_with("got-term\n"), "{after:#?}");
    assert_gone(h, &pids(&logs)).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "waited out the grace period: {:?}",
        start.elapsed()
    );
    rig.finish().await;
}

/// terminationGracePeriodSeconds: a pod that ignores SIGTERM is SIGKILLed
/// once the grace period is over, children included.
async fn grace_period_ends_in_sigkill<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let spec = JobSpecBuilder::new()
        .termination_grace_period_seconds(1)
        .script(&format!("trap '' TERM; {SLEEPER}"));
    rig.launch(TestRun::new("conf-sigkill", spec).launch())
        .await;
    let logs = wait_for_log(h, "conf-sigkill", "ready").await;
    let start = Instant::now();
    rig.exec.cancel("conf-sigkill").await;
    assert_eq!(rig.outcome_of("conf-sigkill").await, OutcomeKind::Cancelled);
    if H::CANCEL_WAITS_FOR_PODS {
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(5),
            "SIGKILL after {took:?}"
        );
        assert_gone(h, &pids(&logs)).await;
    } else {
        // The outcome came with the Job's deletion; the pod's processes
        // must outlive SIGTERM by the grace period, then die.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_gone(h, &pids(&logs)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(5),
            "SIGKILL after {took:?}"
        );
    }
    rig.finish().await;
}

/// shutdown() with a run in flight: the run is returned, no outcome is sent
/// for it, its processes are gone; runs that already ended are not
/// returned; launching afterwards is refused.
async fn shutdown_interrupts_runs<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    rig.launch(TestRun::new("conf-before", JobSpecBuilder::new()).launch())
        .await;
    assert_eq!(rig.outcome_of("conf-before").await, OutcomeKind::Succeeded);
    // The in-flight run ends well on its own once its gate opens (or after
    // 60 s): a replica that let it go can then see it finish.
    let gate = h.shared_dir().join("inflight-gate");
    let inflight = JobSpecBuilder::new()
        .env("GATE", &gate.display().to_string())
        .script("echo pid=$$; sleep 30 & echo child=$!; echo ready; i=0; while [ ! -e $GATE ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done");
    rig.launch(TestRun::new("conf-inflight", inflight).launch())
        .await;
    let logs = wait_for_log(h, "conf-inflight", "ready").await;

    let stopped = tokio::time::timeout(WAIT, rig.exec.shutdown())
        .await
        .expect("shutdown in time");
    if H::SHUTDOWN_STOPS_RUNS {
        assert_eq!(stopped, ["conf-inflight"]);
        assert_gone(h, &pids(&logs)).await;
    } else {
        // Let go of, not stopped: the run goes on for the next replica
        // (proved at the end, where that replica adopts it).
        assert!(stopped.is_empty(), "{stopped:?}");
    }
    assert_no_outcome(&mut rig.outcomes);

    let refused = rig
        .exec
        .launch(TestRun::new("conf-after", JobSpecBuilder::new().script("echo ran")).launch())
        .await;
    assert!(
        matches!(refused, Err(ExecutorError::ShuttingDown)),
        "{refused:?}"
    );
    assert!(h.logs("conf-after").await.is_empty());
    rig.exec.cancel("conf-inflight").await;
    assert_no_outcome(&mut rig.outcomes);
    if !H::SHUTDOWN_STOPS_RUNS {
        // A run this executor let go of belongs to the next replica now:
        // neither shutdown() nor a cancel() after it may have stopped it.
        // Both have returned, so anything they did to the run is done; the
        // next replica must find the run still there to adopt, and see it
        // end well once its gate opens (a stopped run would be returned for
        // relaunch, or fail).
        for pid in pids(&logs) {
            assert!(h.process_alive(pid), "a let-go run was stopped: {pid}");
        }
        let mut next = Rig::start_as(h, &rig.instance);
        let relaunch = next.exec.recover(vec!["conf-inflight".into()]).await;
        assert!(
            relaunch.is_empty(),
            "a let-go run was not adoptable: {relaunch:?}"
        );
        std::fs::write(&gate, "").unwrap();
        assert_eq!(
            next.outcome_of("conf-inflight").await,
            OutcomeKind::Succeeded
        );
        next.finish().await;
    }
}

/// Every launch ends exactly once: with an outcome, or (shut down first) in
/// shutdown()'s list — never both, never neither.
async fn every_launch_ends_exactly_once<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    let ids: Vec<String> = (0..8).map(|i| format!("conf-many-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let script = format!("sleep 0.{i}");
        rig.launch(TestRun::new(id, JobSpecBuilder::new().script(&script)).launch())
            .await;
    }
    let mut ended: Vec<String> = Vec::new();
    ended.push(rig.next_outcome().await.run_id);
    ended.push(rig.next_outcome().await.run_id);
    let stopped = rig.exec.shutdown().await;
    while let Ok(o) = rig.outcomes.try_recv() {
        ended.push(o.run_id);
    }
    let ended_set: BTreeSet<&String> = ended.iter().collect();
    assert_eq!(ended_set.len(), ended.len(), "an outcome twice: {ended:?}");
    for id in &stopped {
        assert!(!ended_set.contains(id), "{id} both stopped and ended");
    }
    let mut all: Vec<String> = ended.into_iter().chain(stopped).collect();
    if !H::SHUTDOWN_STOPS_RUNS {
        // The runs shutdown() let go of keep running; the next replica
        // adopts them and reports each one exactly once.
        assert!(H::RECOVER_ADOPTS, "a let-go run must be adoptable");
        let rest: Vec<String> = ids.iter().filter(|id| !all.contains(id)).cloned().collect();
        let mut next = Rig::start_as(h, &rig.instance);
        let relaunch = next.exec.recover(rest.clone()).await;
        assert!(relaunch.is_empty(), "not adopted: {relaunch:?}");
        for _ in &rest {
            all.push(next.next_outcome().await.run_id);
        }
        next.finish().await;
    }
    all.sort();
    assert_eq!(all, ids);
}

/// Launching a run that is already running is a no-op (re-creating a Job
/// after a crash → AlreadyExists).
async fn launch_is_idempotent<H: Harness>(h: &H) {
    let mut rig = Rig::start(h);
    // The pod runs until the gate opens after the second launch (or 30 s
    // pass), so the second launch always finds it running.
    let gate = h.shared_dir().join("twice-gate");
    let t = TestRun::new(
        "conf-twice",
        JobSpecBuilder::new()
            .env("GATE", &gate.display().to_string())
            .script("echo ran; i=0; while [ ! -e $GATE ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"),
    );
    rig.launch(t.launch()).await;
    wait_for_log(h, "conf-twice", "ran").await;
    rig.launch(t.launch()).await;
    std::fs::write(&gate, "").unwrap();
    assert_eq!(rig.outcome_of("conf-twice").await, OutcomeKind::Succeeded);
    let logs = h.logs("conf-twice").await;
    assert_eq!(pods(&logs).len(), 1, "{logs:#?}");
    rig.finish().await;
}

/// recover(): a stray of a listed run of this instance is killed and the run
/// returned for relaunch (or adopted); strays of other instances or of
/// unlisted runs are left alone.
async fn recover_handles_strays<H: Harness>(h: &H) {
    let rig = Rig::start(h);
    let other_instance = format!("{}-other", rig.instance);
    let mut ours = h.plant_stray(&rig.instance, "conf-stray").await;
    let mut other = h.plant_stray(&other_instance, "conf-stray").await;
    let mut unlisted = h.plant_stray(&rig.instance, "conf-unlisted").await;

    let mut back = rig
        .exec
        .recover(vec!["conf-stray".into(), "conf-gone".into()])
        .await;
    back.sort();
    if H::RECOVER_ADOPTS {
        assert_eq!(back, ["conf-gone"]);
        assert!(h.stray_running(&mut ours), "an adopted run was killed");
    } else {
        assert_eq!(back, ["conf-gone", "conf-stray"]);
        let start = Instant::now();
        while h.stray_running(&mut ours) {
            assert!(
                start.elapsed() < WAIT,
                "the stray of a recovered run survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // recover() has sent its signals; a SIGKILLed process may take a moment
    // to stop, so watch the ones that must survive for a while.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        assert!(
            h.stray_running(&mut other),
            "killed another instance's process"
        );
        assert!(
            h.stray_running(&mut unlisted),
            "killed a run not asked about"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rig.exec.recover(Vec::new()).await.is_empty());
    assert!(h.stray_running(&mut unlisted));
    rig.finish().await;
}

// ---------------------------------------------------------------------------
// Instantiation.
// ---------------------------------------------------------------------------

/// `executor_conformance!(module, harness_expr)`: one `#[tokio::test]` per
/// check in `mod module`, each with a fresh `harness_expr` (evaluated inside
/// the test's async body, so it may `.await`).
macro_rules! executor_conformance {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;
            executor_conformance!(@tests $harness;
                success,
                completions_non_indexed,
                work_queue_without_completions,
                parallelism_is_honoured,
                indexed_runs_each_index_once,
                indexed_retry_keeps_index,
                env_is_exactly_what_a_pod_gets,
                payload_small_is_byte_exact,
                payload_at_env_limit,
                payload_large_goes_to_file,
                backoff_limit_exceeded,
                backoff_then_success,
                unstartable_container_fails_the_attempt,
                pod_containers_share_fate,
                init_containers_run_first,
                finished_pod_leaves_no_processes,
                deadline_exceeded_kills_the_tree,
                cancel_stops_the_run,
                cancel_ignores_unknown_and_finished,
                grace_period_lets_sigterm_trap_run,
                grace_period_ends_in_sigkill,
                shutdown_interrupts_runs,
                every_launch_ends_exactly_once,
                launch_is_idempotent,
                recover_handles_strays,
            );
        }
    };
    (@tests $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness;
                super::$check(&harness).await;
            }
        )*
    };
}

executor_conformance!(local, LocalHarness::new());
executor_conformance!(kubernetes, KubernetesHarness::new().await);
