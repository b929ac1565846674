//! The local executor: runs each pod's containers as child processes on this
//! machine, with the environment a pod would get. It needs no cluster, so
//! `kedge run` works on a laptop. Images are ignored: a container must have
//! an explicit `command` (validation checks this).
//!
//! What it honours of the JobSpec, as the Kubernetes Job controller does:
//! `parallelism` (pods at once), `completions` (successful pods needed),
//! `completionMode: Indexed` (one pod per index, `JOB_COMPLETION_INDEX`),
//! `initContainers` (one after another, each to success, before the app
//! containers),
//! `backoffLimit` (failed pods tolerated; a failed pod is replaced after a
//! doubling delay), `activeDeadlineSeconds` (everything killed, reason
//! `DeadlineExceeded`), `terminationGracePeriodSeconds` (SIGTERM, then
//! SIGKILL). Both `restartPolicy` values replace a failed pod by a new one.
//!
//! Each pod's containers run concurrently, each in its own process group so
//! that a kill reaches its children too; a direct child also dies with the
//! daemon (`PR_SET_PDEATHSIG`), and start-up [`recover`](Executor::recover)
//! kills any process left from an interrupted run (found by its
//! `KEDGE_INSTANCE`/`KEDGE_RUN_ID` environment). Output goes to
//! `<work_dir>/<run_id>/<pod>/<container>.log` (stdout and stderr, like
//! `kubectl logs`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Executor, ExecutorError, Launch, Outcome, OutcomeKind, Progress};
use crate::config::LocalConfig;

/// Runs Jobs as local processes. Cheap to clone.
#[derive(Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: LocalConfig,
    /// The store's instance id, put in every process's env so that start-up
    /// recovery only ever kills this store's processes.
    instance: String,
    outcomes: mpsc::Sender<Outcome>,
    /// Runs in flight: run id → how to stop it.
    runs: Mutex<HashMap<String, RunControl>>,
    tasks: TaskTracker,
    closed: CancellationToken,
    /// Runs that a shutdown stopped before they ended on their own.
    interrupted: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct RunControl {
    stop: CancellationToken,
    /// Set before `stop` is cancelled: why the run is being stopped.
    why: Arc<Mutex<Option<StopReason>>>,
    /// Live state shared with the run's task: progress out, parallelism in.
    live: Arc<Live>,
}

/// What the daemon can see and change of a running Job (like a Job's
/// `status` and its mutable `spec.parallelism`).
struct Live {
    parallelism: AtomicU32,
    completed: AtomicU32,
    total: u32,
    started: std::time::Instant,
    /// Wakes the run's loop after `parallelism` changed.
    changed: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancel,
    Shutdown,
}

impl LocalExecutor {
    /// `outcomes` receives one [`Outcome`] per launched run.
    pub fn new(cfg: LocalConfig, instance: String, outcomes: mpsc::Sender<Outcome>) -> Self {
        LocalExecutor {
            inner: Arc::new(Inner {
                cfg,
                instance,
                outcomes,
                runs: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                closed: CancellationToken::new(),
                interrupted: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The folder holding a run's logs and payload file.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.inner.cfg.work_dir.join(run_id)
    }

    fn stop(&self, run_id: Option<&str>, why: StopReason) -> Vec<String> {
        let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut stopped = Vec::new();
        for (id, ctl) in runs.iter() {
            if run_id.is_none_or(|r| r == id) {
                *ctl.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                ctl.stop.cancel();
                stopped.push(id.clone());
            }
        }
        stopped
    }
}

impl Executor for LocalExecutor {
    async fn launch(&self, launch: Launch) -> Result<(), ExecutorError> {
        if self.inner.closed.is_cancelled() {
            return Err(ExecutorError::ShuttingDown);
        }
        let dir = self.run_dir(&launch.run_id);
        let prepare = |source| ExecutorError::Prepare {
            run_id: launch.run_id.clone(),
            source,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(prepare)?;
        let payload_path = match &launch.payload_file {
            Some(p) => {
                let path = dir.join("payload");
                tokio::fs::write(&path, p).await.map_err(prepare)?;
                Some(path)
            }
            None => None,
        };
        // A batch: one payload file per completion index.
        let payload_dir = if launch.batch.is_empty() {
            None
        } else {
            let pdir = dir.join("payloads");
            tokio::fs::create_dir_all(&pdir).await.map_err(prepare)?;
            for (i, p) in launch.batch.iter().enumerate() {
                tokio::fs::write(pdir.join(i.to_string()), p.as_deref().unwrap_or(""))
                    .await
                    .map_err(prepare)?;
            }
            Some(pdir)
        };
        let ctl = RunControl {
            stop: CancellationToken::new(),
            why: Arc::new(Mutex::new(None)),
            live: Arc::new(Live {
                parallelism: AtomicU32::new(launch.spec.parallelism.unwrap_or(1).max(0) as u32),
                completed: AtomicU32::new(0),
                total: launch.spec.completions.unwrap_or(1).max(0) as u32,
                started: std::time::Instant::now(),
                changed: tokio::sync::Notify::new(),
            }),
        };
        {
            let mut runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
            if runs.contains_key(&launch.run_id) {
                // Already running here: launching is idempotent.
                return Ok(());
            }
            runs.insert(launch.run_id.clone(), ctl.clone());
        }
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let run_id = launch.run_id.clone();
            let (result, completed_indexes) = run_job(
                &inner,
                launch,
                dir,
                BaseEnv {
                    instance: inner.instance.clone(),
                    payload_file: payload_path,
                    payload_dir,
                },
                ctl.stop.clone(),
                &ctl.live,
            )
            .await;
            inner
                .runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run_id);
            let why = *ctl.why.lock().unwrap_or_else(|e| e.into_inner());
            // A run that ended on its own reports its outcome even when a
            // stop was asked for in the meantime (it lost the race).
            let kind = match (result, why) {
                (Some(kind), _) => kind,
                (None, Some(StopReason::Cancel)) => OutcomeKind::Cancelled,
                // Interrupted by shutdown: no outcome; shutdown() reports it.
                (None, _) => {
                    inner
                        .interrupted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(run_id);
                    return;
                }
            };
            let outcome = Outcome {
                run_id,
                kind,
                completed_indexes,
            };
            if inner.outcomes.send(outcome).await.is_err() {
                tracing::warn!("outcome channel closed; the run will be recovered at start-up");
            }
        });
        Ok(())
    }

    async fn cancel(&self, run_id: &str) {
        self.stop(Some(run_id), StopReason::Cancel);
    }

    async fn progress(&self, run_id: &str) -> Option<Progress> {
        let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        let live = &runs.get(run_id)?.live;
        Some(Progress {
            completed: live.completed.load(Ordering::Relaxed),
            total: live.total,
            parallelism: live.parallelism.load(Ordering::Relaxed),
            elapsed: live.started.elapsed(),
            pending_for: None,
        })
    }

    async fn set_parallelism(&self, run_id: &str, parallelism: u32) -> bool {
        let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ctl) = runs.get(run_id) else {
            return false;
        };
        ctl.live.parallelism.store(parallelism, Ordering::Relaxed);
        ctl.live.changed.notify_one();
        true
    }

    async fn recover(&self, run_ids: Vec<String>) -> Vec<String> {
        // Local processes cannot be adopted (their output pipes and exit
        // status belonged to the previous daemon): kill what is left of
        // them and launch the runs again.
        let wanted: HashSet<String> = run_ids.iter().cloned().collect();
        let instance = self.inner.instance.clone();
        let killed = tokio::task::spawn_blocking(move || reap_orphans(&instance, &wanted))
            .await
            .unwrap_or_default();
        if killed > 0 {
            tracing::info!(killed, "killed processes left by interrupted runs");
        }
        run_ids
    }

    async fn shutdown(&self) -> Vec<String> {
        self.inner.closed.cancel();
        self.stop(None, StopReason::Shutdown);
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        std::mem::take(
            &mut *self
                .inner
                .interrupted
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

/// Runs one Job to its end: the Job controller's loop for one Job.
/// Returns `None` when `stop` ended it before it ended on its own, and the
/// completion indexes that succeeded (Indexed Jobs).
///
/// With `completions` unset the Job is a work queue, as in Kubernetes:
/// `parallelism` pods start, no pod is started after the first success, and
/// the Job succeeds once one pod has succeeded and all have ended.
///
/// With `backoffLimitPerIndex` (Indexed only) each index has its own retry
/// budget: an index that fails more often is marked failed and not run
/// again, the others carry on, and the Job fails at the end with reason
/// `FailedIndexes` — as the Kubernetes Job controller does.
async fn run_job(
    inner: &Inner,
    launch: Launch,
    dir: PathBuf,
    base: BaseEnv,
    stop: CancellationToken,
    live: &Live,
) -> (Option<OutcomeKind>, Vec<i32>) {
    let spec = &launch.spec;
    let Some(pod_spec) = spec.template.spec.clone() else {
        return (
            Some(failed("StartError", "the pod template has no spec".into())),
            Vec::new(),
        );
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let work_queue = spec.completions.is_none() && !indexed;
    let completions = match spec.completions {
        Some(c) => c.max(0),
        None if work_queue => parallelism as i32,
        None => 1,
    };
    let per_index_limit = spec
        .backoff_limit_per_index
        .filter(|_| indexed)
        .map(|l| l.max(0));
    // With a per-index limit the Job-wide one defaults to "no limit".
    let backoff_limit = match per_index_limit {
        Some(_) => spec.backoff_limit.unwrap_or(i32::MAX).max(0),
        None => spec.backoff_limit.unwrap_or(6).max(0),
    };
    let mut index_failures: HashMap<i32, i32> = HashMap::new();
    let mut failed_indexes: BTreeSet<i32> = BTreeSet::new();
    let mut completed_indexes: BTreeSet<i32> = BTreeSet::new();
    let deadline = spec
        .active_deadline_seconds
        .map(|s| Instant::now() + Duration::from_secs(s.max(0) as u64));
    let grace = Duration::from_secs(
        pod_spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .clamp(0, 3600) as u64,
    );

    // What still has to succeed: an index each (Indexed) or a count.
    let mut todo: VecDeque<Option<i32>> = if indexed {
        (0..completions).map(Some).collect()
    } else {
        (0..completions).map(|_| None).collect()
    };
    let mut waiting: Vec<(Instant, Option<i32>)> = Vec::new();
    let mut pods: JoinSet<(Option<i32>, PodResult)> = JoinSet::new();
    let kill_pods = CancellationToken::new();
    let mut failures: i32 = 0;
    let mut pod_seq: u32 = 0;
    // Work queue only: a pod has succeeded, so no pod is started or replaced.
    let mut drained = false;

    let result = loop {
        parallelism = live.parallelism.load(Ordering::Relaxed) as usize;
        while pods.len() < parallelism {
            let Some(index) = todo.pop_front() else { break };
            pod_seq += 1;
            let pod_name = match index {
                Some(i) => format!("{}-{i}-{pod_seq}", launch.run_id),
                None => format!("{}-{pod_seq}", launch.run_id),
            };
            let pod = PodRun {
                spec: pod_spec.clone(),
                name: pod_name.clone(),
                index,
                dir: dir.join(&pod_name),
                base: base.clone(),
                grace,
                kill: kill_pods.child_token(),
            };
            pods.spawn(async move { (index, pod.run().await) });
        }
        if pods.is_empty() && todo.is_empty() && waiting.is_empty() {
            if failed_indexes.is_empty() {
                break Some(OutcomeKind::Succeeded);
            }
            let list: Vec<String> = failed_indexes.iter().map(|i| i.to_string()).collect();
            break Some(failed(
                "FailedIndexes",
                format!(
                    "index(es) {} failed more than backoffLimitPerIndex {} time(s)",
                    list.join(","),
                    per_index_limit.unwrap_or_default()
                ),
            ));
        }
        let next_retry = waiting.iter().map(|(t, _)| *t).min();
        tokio::select! {
            Some(joined) = pods.join_next(), if !pods.is_empty() => {
                let (index, result) = match joined {
                    Ok(r) => r,
                    Err(e) => (None, PodResult::Failed(format!("pod task failed: {e}"))),
                };
                if matches!(result, PodResult::Succeeded) {
                    live.completed.fetch_add(1, Ordering::Relaxed);
                    if let Some(i) = index {
                        completed_indexes.insert(i);
                    }
                }
                match result {
                    PodResult::Succeeded if work_queue => {
                        // The queue is drained: start nothing more.
                        drained = true;
                        todo.clear();
                        waiting.clear();
                    }
                    PodResult::Succeeded => {}
                    PodResult::Killed => {}
                    PodResult::Failed(why) => {
                        failures += 1;
                        if let (Some(limit), Some(i)) = (per_index_limit, index) {
                            let n = index_failures.entry(i).or_default();
                            *n += 1;
                            if *n > limit {
                                tracing::info!(run = %launch.run_id, index = i, %why, "index failed for good");
                                failed_indexes.insert(i);
                                continue;
                            }
                        }
                        if failures > backoff_limit {
                            break Some(failed(
                                "BackoffLimitExceeded",
                                format!("{failures} pod(s) failed (backoffLimit {backoff_limit}); last: {why}"),
                            ));
                        }
                        if !drained {
                            let delay = pod_backoff(&inner.cfg, failures);
                            waiting.push((Instant::now() + delay, index));
                        }
                    }
                }
            }
            _ = sleep_until(next_retry.unwrap_or_else(far_future)), if next_retry.is_some() => {
                let now = Instant::now();
                let (ready, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(t, _)| *t <= now);
                waiting = later;
                todo.extend(ready.into_iter().map(|(_, i)| i));
            }
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                break Some(failed(
                    "DeadlineExceeded",
                    format!(
                        "activeDeadlineSeconds {} passed",
                        spec.active_deadline_seconds.unwrap_or_default()
                    ),
                ));
            }
            _ = live.changed.notified() => {}
            _ = stop.cancelled() => {
                break None;
            }
        }
    };
    // Whatever the outcome, no pod outlives its Job.
    kill_pods.cancel();
    while pods.join_next().await.is_some() {}
    (result, completed_indexes.into_iter().collect())
}

fn failed(reason: &str, message: String) -> OutcomeKind {
    OutcomeKind::Failed {
        reason: reason.to_string(),
        message,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Delay before replacing the `failures`-th failed pod: doubling, capped.
fn pod_backoff(cfg: &LocalConfig, failures: i32) -> Duration {
    let doublings = (failures.max(1) - 1).min(20) as u32;
    cfg.pod_backoff
        .saturating_mul(1u32 << doublings)
        .min(cfg.pod_backoff_max)
}

#[derive(Debug)]
enum PodResult {
    Succeeded,
    Failed(String),
    /// Stopped by kedge (deadline, backoff limit reached elsewhere, shutdown).
    Killed,
}

#[derive(Clone)]
struct BaseEnv {
    instance: String,
    payload_file: Option<PathBuf>,
    /// A batch run's payload folder (`KEDGE_PAYLOAD_DIR`), one file per index.
    payload_dir: Option<PathBuf>,
}

struct PodRun {
    spec: PodSpec,
    name: String,
    index: Option<i32>,
    dir: PathBuf,
    base: BaseEnv,
    grace: Duration,
    kill: CancellationToken,
}

impl PodRun {
    async fn run(self) -> PodResult {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            return PodResult::Failed(format!("cannot create {}: {e}", self.dir.display()));
        }
        // As the kubelet does: init containers first, one at a time, each
        // to success; only then the app containers, all at once.
        for c in self.spec.init_containers.iter().flatten() {
            match self
                .run_containers(std::slice::from_ref(c), "init container")
                .await
            {
                PodResult::Succeeded => {}
                ended => return ended,
            }
        }
        self.run_containers(&self.spec.containers, "container")
            .await
    }

    /// Runs `containers` concurrently until all have exited (the pod's
    /// result) or the pod is killed.
    async fn run_containers(&self, containers: &[Container], kind: &str) -> PodResult {
        let mut children: Vec<(String, Child)> = Vec::new();
        for c in containers {
            match self.spawn(c) {
                Ok(child) => children.push((c.name.clone(), child)),
                Err(e) => {
                    kill_all(&mut children, Duration::ZERO).await;
                    return PodResult::Failed(format!("{kind} {}: cannot start: {e}", c.name));
                }
            }
        }
        let pgids: Vec<i32> = children
            .iter()
            .filter_map(|(_, c)| c.id().map(|p| p as i32))
            .collect();
        let waited = tokio::select! {
            r = wait_all(&mut children) => Some(r),
            _ = self.kill.cancelled() => None,
        };
        match waited {
            Some(statuses) => {
                // The main processes are done; take their process groups down
                // too, as a pod's sandbox would.
                for pgid in pgids {
                    signal_group(pgid, libc::SIGKILL);
                }
                let failures: Vec<String> = statuses
                    .into_iter()
                    .filter(|(_, s)| !s.success)
                    .map(|(name, s)| format!("{kind} {name} {}", s.describe))
                    .collect();
                if failures.is_empty() {
                    PodResult::Succeeded
                } else {
                    PodResult::Failed(failures.join("; "))
                }
            }
            None => {
                kill_all(&mut children, self.grace).await;
                PodResult::Killed
            }
        }
    }

    fn spawn(&self, c: &Container) -> std::io::Result<Child> {
        let mut env: Vec<(String, String)> = Vec::new();
        for key in ["PATH", "HOME", "LANG", "TZ"] {
            if let Ok(v) = std::env::var(key) {
                env.push((key.to_string(), v));
            }
        }
        env.push(("HOSTNAME".into(), self.name.clone()));
        env.push(("KEDGE_INSTANCE".into(), self.base.instance.clone()));
        if let Some(i) = self.index {
            env.push(("JOB_COMPLETION_INDEX".into(), i.to_string()));
        }
        if let Some(p) = &self.base.payload_file {
            env.push(("KEDGE_PAYLOAD_FILE".into(), absolute(p)));
        }
        for e in c.env.iter().flatten() {
            // Kubernetes expands $(VAR) in env values using earlier entries.
            let value = expand(e.value.as_deref().unwrap_or(""), &env);
            env.retain(|(k, _)| k != &e.name);
            env.push((e.name.clone(), value));
        }
        if let Some(d) = &self.base.payload_dir {
            // Here the payload files are in the run's folder, not at the
            // ConfigMap mount path the rendered env names.
            env.retain(|(k, _)| k != "KEDGE_PAYLOAD_DIR");
            env.push(("KEDGE_PAYLOAD_DIR".into(), absolute(d)));
        }
        let mut argv: Vec<String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| expand(a, &env))
            .collect();
        if argv.is_empty() {
            return Err(std::io::Error::other("no command"));
        }
        let program = argv.remove(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", c.name)))?;
        let mut cmd = Command::new(program);
        cmd.args(argv)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(wd) = &c.working_dir {
            cmd.current_dir(wd);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

struct ExitStatus {
    success: bool,
    describe: String,
}

async fn wait_all(children: &mut [(String, Child)]) -> Vec<(String, ExitStatus)> {
    let mut out = Vec::new();
    for (name, child) in children.iter_mut() {
        let status = match child.wait().await {
            Ok(s) if s.success() => ExitStatus {
                success: true,
                describe: "exited with code 0".into(),
            },
            Ok(s) => ExitStatus {
                success: false,
                describe: match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (None, Some(sig)) => format!("was killed by signal {sig}"),
                    (None, None) => "ended abnormally".into(),
                },
            },
            Err(e) => ExitStatus {
                success: false,
                describe: format!("could not be waited for: {e}"),
            },
        };
        out.push((name.clone(), status));
    }
    out
}

/// SIGTERM to every container's process group, SIGKILL after `grace`.
async fn kill_all(children: &mut [(String, Child)], grace: Duration) {
    let pgids: Vec<i32> = children
        .iter()
        .filter_map(|(_, c)| c.id().map(|p| p as i32))
        .collect();
    for pgid in &pgids {
        signal_group(*pgid, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(grace, wait_all(children)).await;
    for pgid in &pgids {
        signal_group(*pgid, libc::SIGKILL);
    }
    let _ = wait_all(children).await;
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Kubernetes' `$(VAR)` expansion: known names are replaced, `$$` is a
/// literal `$`, anything else is left as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Kills every process whose environment says it belongs to one of `run_ids`
/// of this store `instance`. Returns how many were signalled.
fn reap_orphans(instance: &str, run_ids: &HashSet<String>) -> usize {
    if run_ids.is_empty() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id() as i32;
    let want_instance = format!("KEDGE_INSTANCE={instance}");
    let mut killed = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let ours = vars.contains(&want_instance.as_bytes());
        let run = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"KEDGE_RUN_ID="))
            .and_then(|v| std::str::from_utf8(v).ok());
        if ours && run.is_some_and(|r| run_ids.contains(r)) {
            // SAFETY: kill(2) on a pid we just identified; no memory is touched.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "two".to_string()),
        ];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5 $(A", &env), "cost $5 $(A");
    }

    #[test]
    fn rendered_literals_survive_expansion() {
        let env = vec![("A".to_string(), "1".to_string())];
        for s in ["$(A)", "$$(A)", "$$", "$", "a$", "$(A", "x $(B) $$$ $(A)$"] {
            assert_eq!(expand(&super::super::render::literal(s), &env), s);
        }
    }

    #[test]
    fn pod_backoff_doubles_and_caps() {
        let cfg = LocalConfig {
            pod_backoff: Duration::from_secs(10),
            pod_backoff_max: Duration::from_secs(60),
            ..LocalConfig::default()
        };
        assert_eq!(pod_backoff(&cfg, 1), Duration::from_secs(10));
        assert_eq!(pod_backoff(&cfg, 2), Duration::from_secs(20));
        assert_eq!(pod_backoff(&cfg, 4), Duration::from_secs(60));
    }
}
