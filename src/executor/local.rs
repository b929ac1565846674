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
//! A container that cannot start at all — its program missing, not
//! executable, permission denied, its working directory missing — is not
//! a failed pod to replace: every new pod would fail the same way. The
//! attempt fails at once as `rejected` with `spawn: <program>: <why>`, the
//! shape the Kubernetes executor gives a Job the API refuses, and the
//! job's `retry` policy takes over (then a dead letter).
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    Cancel,
    Shutdown,
    /// [`Executor::abandon`]: reported as failed with this reason and message.
    Abandon(String, String),
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
                *ctl.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                ctl.stop.cancel();
                stopped.push(id.clone());
            }
        }
        stopped
    }

    /// Writes what the run's pods read: the payload file, and a batch's
    /// payload folder (one file per completion index).
    async fn prepare_run_dir(&self, launch: &Launch, dir: &Path) -> std::io::Result<BaseEnv> {
        tokio::fs::create_dir_all(dir).await?;
        let payload_file = match &launch.payload_file {
            Some(p) => {
                let path = dir.join("payload");
                tokio::fs::write(&path, p).await?;
                Some(path)
            }
            None => None,
        };
        let payload_dir = if launch.batch.is_empty() {
            None
        } else {
            let pdir = dir.join("payloads");
            tokio::fs::create_dir_all(&pdir).await?;
            for (i, p) in launch.batch.iter().enumerate() {
                tokio::fs::write(pdir.join(i.to_string()), p.as_deref().unwrap_or("")).await?;
            }
            Some(pdir)
        };
        Ok(BaseEnv {
            instance: self.inner.instance.clone(),
            payload_file,
            payload_dir,
        })
    }

    /// Adds the run to the runs in flight; false when it already is one.
    fn register(&self, run_id: &str, ctl: &RunControl) -> bool {
        let mut runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.contains_key(run_id) {
            return false;
        }
        runs.insert(run_id.to_string(), ctl.clone());
        true
    }
}

impl RunControl {
    /// A run about to start, with the JobSpec's parallelism and completions.
    fn new(launch: &Launch) -> Self {
        RunControl {
            stop: CancellationToken::new(),
            why: Arc::new(Mutex::new(None)),
            live: Arc::new(Live {
                parallelism: AtomicU32::new(launch.spec.parallelism.unwrap_or(1).max(0) as u32),
                completed: AtomicU32::new(0),
                total: launch.spec.completions.unwrap_or(1).max(0) as u32,
                started: std::time::Instant::now(),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }
}

impl Inner {
    /// A run's task: runs it to its end, then reports its outcome — or,
    /// when shutdown stopped it, keeps its id for `shutdown()` to return.
    async fn run_to_outcome(
        self: Arc<Self>,
        launch: Launch,
        dir: PathBuf,
        base: BaseEnv,
        ctl: RunControl,
    ) {
        let run_id = launch.run_id.clone();
        let (result, completed_indexes) =
            run_job(&self, launch, dir, base, ctl.stop.clone(), &ctl.live).await;
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        let why = ctl.why.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(kind) = ended_as(result, why) else {
            self.interrupted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(run_id);
            return;
        };
        let outcome = Outcome {
            run_id,
            kind,
            completed_indexes,
        };
        if self.outcomes.send(outcome).await.is_err() {
            tracing::warn!("outcome channel closed; the run will be recovered at start-up");
        }
    }
}

/// What a run that ended reports: its own outcome, even when a stop was
/// asked for meanwhile (it lost the race); `Cancelled` when `cancel()`
/// stopped it; `Failed` with its reason when `abandon()` did; nothing when
/// shutdown did (`shutdown()` returns it).
fn ended_as(result: Option<OutcomeKind>, why: Option<StopReason>) -> Option<OutcomeKind> {
    match (result, why) {
        (Some(kind), _) => Some(kind),
        (None, Some(StopReason::Cancel)) => Some(OutcomeKind::Cancelled),
        (None, Some(StopReason::Abandon(reason, message))) => {
            Some(OutcomeKind::Failed { reason, message })
        }
        (None, _) => None,
    }
}

impl Executor for LocalExecutor {
    async fn launch(&self, launch: Launch) -> Result<(), ExecutorError> {
        if self.inner.closed.is_cancelled() {
            return Err(ExecutorError::ShuttingDown);
        }
        let dir = self.run_dir(&launch.run_id);
        let base = self
            .prepare_run_dir(&launch, &dir)
            .await
            .map_err(|source| ExecutorError::Prepare {
                run_id: launch.run_id.clone(),
                source,
            })?;
        let ctl = RunControl::new(&launch);
        if !self.register(&launch.run_id, &ctl) {
            // Already running here: launching is idempotent.
            return Ok(());
        }
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(inner.run_to_outcome(launch, dir, base, ctl));
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
            stall: None,
        })
    }

    async fn abandon(&self, run_id: &str, reason: &str, message: &str) -> bool {
        let why = StopReason::Abandon(reason.to_string(), message.to_string());
        !self.stop(Some(run_id), why).is_empty()
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
        let killed = match tokio::task::spawn_blocking(move || reap_orphans(&instance, &wanted))
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "looking for processes left by interrupted runs failed; any left keep running");
                0
            }
        };
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
    let mut run = match JobRun::new(&inner.cfg, &launch, dir, base, live) {
        Ok(run) => run,
        Err(unstartable) => return (Some(unstartable), Vec::new()),
    };
    let result = loop {
        run.start_due_pods();
        if let Some(ended) = run.all_ended() {
            break Some(ended);
        }
        let next_retry = run.waiting.iter().map(|(t, _)| *t).min();
        tokio::select! {
            Some(joined) = run.pods.join_next(), if !run.pods.is_empty() => {
                if let Some(ended) = run.reap(joined) {
                    break Some(ended);
                }
            }
            _ = sleep_until(next_retry.unwrap_or_else(far_future)), if next_retry.is_some() => {
                run.release_due_retries();
            }
            _ = sleep_until(run.deadline.unwrap_or_else(far_future)), if run.deadline.is_some() => {
                break Some(run.deadline_exceeded());
            }
            _ = live.changed.notified() => {}
            _ = stop.cancelled() => {
                break None;
            }
        }
    };
    run.finish(result).await
}

/// One run's state in [`run_job`]'s loop: what the JobSpec asks for, the
/// pods running, and what is left to do.
struct JobRun<'a> {
    cfg: &'a LocalConfig,
    live: &'a Live,
    run_id: &'a str,
    job: &'a str,
    attempt: i64,
    dir: PathBuf,
    base: BaseEnv,
    pod_spec: PodSpec,
    grace: Duration,
    /// `completions` unset and not Indexed: the first success drains it.
    work_queue: bool,
    /// `backoffLimitPerIndex` (Indexed only).
    per_index_limit: Option<i32>,
    backoff_limit: i32,
    active_deadline_seconds: Option<i64>,
    /// When `activeDeadlineSeconds` runs out.
    deadline: Option<Instant>,

    /// What still has to succeed: an index each (Indexed) or a count.
    todo: VecDeque<Option<i32>>,
    /// Failed pods' replacements, each waiting out its backoff.
    waiting: Vec<(Instant, Option<i32>)>,
    pods: JoinSet<(Option<i32>, PodResult)>,
    /// Cancelled when the run ends: no pod outlives its Job.
    kill_pods: CancellationToken,
    failures: i32,
    pod_seq: u32,
    /// Work queue only: a pod has succeeded, so no pod is started or replaced.
    drained: bool,
    index_failures: HashMap<i32, i32>,
    failed_indexes: BTreeSet<i32>,
    completed_indexes: BTreeSet<i32>,
}

impl<'a> JobRun<'a> {
    /// The run as the JobSpec sets it up; `Err` is the outcome of a Job
    /// that cannot start.
    fn new(
        cfg: &'a LocalConfig,
        launch: &'a Launch,
        dir: PathBuf,
        base: BaseEnv,
        live: &'a Live,
    ) -> Result<Self, OutcomeKind> {
        let spec = &launch.spec;
        let Some(pod_spec) = spec.template.spec.clone() else {
            return Err(failed("StartError", "the pod template has no spec".into()));
        };
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let work_queue = spec.completions.is_none() && !indexed;
        let completions = match spec.completions {
            Some(c) => c.max(0),
            None if work_queue => parallelism,
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
        let deadline = spec
            .active_deadline_seconds
            .map(|s| Instant::now() + Duration::from_secs(s.max(0) as u64));
        let grace = Duration::from_secs(
            pod_spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .clamp(0, 3600) as u64,
        );
        let todo = (0..completions).map(|i| indexed.then_some(i)).collect();
        Ok(JobRun {
            cfg,
            live,
            run_id: &launch.run_id,
            job: &launch.job,
            attempt: launch.attempt,
            dir,
            base,
            pod_spec,
            grace,
            work_queue,
            per_index_limit,
            backoff_limit,
            active_deadline_seconds: spec.active_deadline_seconds,
            deadline,
            todo,
            waiting: Vec::new(),
            pods: JoinSet::new(),
            kill_pods: CancellationToken::new(),
            failures: 0,
            pod_seq: 0,
            drained: false,
            index_failures: HashMap::new(),
            failed_indexes: BTreeSet::new(),
            completed_indexes: BTreeSet::new(),
        })
    }

    /// Starts pods for what is to do, up to the current parallelism (which
    /// the daemon may have changed since the last pass).
    fn start_due_pods(&mut self) {
        let parallelism = self.live.parallelism.load(Ordering::Relaxed) as usize;
        while self.pods.len() < parallelism {
            let Some(index) = self.todo.pop_front() else {
                break;
            };
            self.pod_seq += 1;
            let pod_name = match index {
                Some(i) => format!("{}-{i}-{}", self.run_id, self.pod_seq),
                None => format!("{}-{}", self.run_id, self.pod_seq),
            };
            let pod = PodRun {
                spec: self.pod_spec.clone(),
                name: pod_name.clone(),
                index,
                dir: self.dir.join(&pod_name),
                base: self.base.clone(),
                grace: self.grace,
                kill: self.kill_pods.child_token(),
            };
            self.pods.spawn(async move { (index, pod.run().await) });
        }
    }

    /// The outcome once nothing runs, waits or is left to do.
    fn all_ended(&self) -> Option<OutcomeKind> {
        if !(self.pods.is_empty() && self.todo.is_empty() && self.waiting.is_empty()) {
            return None;
        }
        if self.failed_indexes.is_empty() {
            return Some(OutcomeKind::Succeeded);
        }
        let list: Vec<String> = self.failed_indexes.iter().map(|i| i.to_string()).collect();
        Some(failed(
            "FailedIndexes",
            format!(
                "index(es) {} failed more than backoffLimitPerIndex {} time(s)",
                list.join(","),
                self.per_index_limit.unwrap_or_default()
            ),
        ))
    }

    /// Counts a pod that ended; `Some` when that ends the run.
    fn reap(
        &mut self,
        joined: Result<(Option<i32>, PodResult), tokio::task::JoinError>,
    ) -> Option<OutcomeKind> {
        let (index, result) = match joined {
            Ok(r) => r,
            Err(e) => (None, PodResult::Failed(format!("pod task failed: {e}"))),
        };
        match result {
            PodResult::Succeeded => {
                self.live.completed.fetch_add(1, Ordering::Relaxed);
                if let Some(i) = index {
                    self.completed_indexes.insert(i);
                }
                if self.work_queue {
                    // The queue is drained: start nothing more.
                    self.drained = true;
                    self.todo.clear();
                    self.waiting.clear();
                }
                None
            }
            PodResult::Killed => None,
            PodResult::Failed(why) => self.pod_failed(index, why),
            PodResult::Rejected(why) => Some(self.rejected(why)),
        }
    }

    /// A container that cannot start at all (see [`SpawnError::Rejected`]):
    /// a new pod would fail the same way, so the attempt fails at once as
    /// `rejected`, as the Kubernetes executor fails a Job the API refuses,
    /// and the job's retry policy takes over.
    fn rejected(&self, why: String) -> OutcomeKind {
        tracing::error!(run = %self.run_id, job = %self.job, attempt = self.attempt, refusal = %why,
            "a container of the run cannot start; the attempt fails");
        crate::metrics::launch_failure(self.job, "rejected");
        failed("rejected", why)
    }

    /// Counts a failed pod against the backoff limits and, within them,
    /// schedules its replacement.
    fn pod_failed(&mut self, index: Option<i32>, why: String) -> Option<OutcomeKind> {
        self.failures += 1;
        if let (Some(limit), Some(i)) = (self.per_index_limit, index) {
            let n = self.index_failures.entry(i).or_default();
            *n += 1;
            if *n > limit {
                tracing::info!(run = %self.run_id, job = %self.job, attempt = self.attempt, index = i, %why, "index failed for good");
                self.failed_indexes.insert(i);
                return None;
            }
        }
        if self.failures > self.backoff_limit {
            return Some(failed(
                "BackoffLimitExceeded",
                format!(
                    "{} pod(s) failed (backoffLimit {}); last: {why}",
                    self.failures, self.backoff_limit
                ),
            ));
        }
        if !self.drained {
            let delay = pod_backoff(self.cfg, self.failures);
            self.waiting.push((Instant::now() + delay, index));
        }
        None
    }

    /// Moves the replacements whose backoff has passed back to the to-do list.
    fn release_due_retries(&mut self) {
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|(t, _)| *t <= now);
        self.waiting = later;
        self.todo.extend(ready.into_iter().map(|(_, i)| i));
    }

    /// The outcome when `activeDeadlineSeconds` has passed.
    fn deadline_exceeded(&self) -> OutcomeKind {
        failed(
            "DeadlineExceeded",
            format!(
                "activeDeadlineSeconds {} passed",
                self.active_deadline_seconds.unwrap_or_default()
            ),
        )
    }

    /// Whatever the outcome, no pod outlives its Job: kills what still
    /// runs and waits for it.
    async fn finish(mut self, result: Option<OutcomeKind>) -> (Option<OutcomeKind>, Vec<i32>) {
        self.kill_pods.cancel();
        while self.pods.join_next().await.is_some() {}
        (result, self.completed_indexes.into_iter().collect())
    }
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
    /// A container could not start at all: fails the run at once.
    Rejected(String),
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
            let failed = match self.spawn(c) {
                Ok(child) => {
                    children.push((c.name.clone(), child));
                    continue;
                }
                Err(SpawnError::Rejected(why)) => PodResult::Rejected(why),
                Err(SpawnError::Failed(e)) => {
                    PodResult::Failed(format!("{kind} {}: cannot start: {e}", c.name))
                }
            };
            kill_all(&mut children, Duration::ZERO).await;
            return failed;
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

    /// Starts container `c` as a process in its own process group, its
    /// output appended to `<pod dir>/<container>.log`.
    fn spawn(&self, c: &Container) -> Result<Child, SpawnError> {
        let env = self.env(c);
        let mut argv = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| expand(a, &env));
        let Some(program) = argv.next() else {
            return Err(SpawnError::Rejected(format!(
                "spawn: container {} has no command",
                c.name
            )));
        };
        if let Some(wd) = &c.working_dir {
            // Checked here: a missing working directory would otherwise
            // read as a missing program.
            match std::fs::metadata(wd) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(SpawnError::Rejected(format!(
                        "spawn: {program}: working directory {wd}: Not a directory"
                    )))
                }
                Err(e) => {
                    return Err(SpawnError::Rejected(format!(
                        "spawn: {program}: working directory {wd}: {}",
                        os_message(&e)
                    )))
                }
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", c.name)))
            .map_err(SpawnError::Failed)?;
        let mut cmd = Command::new(&program);
        cmd.args(argv)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(SpawnError::Failed)?)
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
        cmd.spawn().map_err(|e| SpawnError::of(&program, e))
    }

    /// The environment container `c` gets: what a pod's container would
    /// (`HOSTNAME`, `JOB_COMPLETION_INDEX`, kedge's payload variables, the
    /// container's `env` with `$(VAR)` expanded) plus a few of the host's.
    fn env(&self, c: &Container) -> Vec<(String, String)> {
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
        env
    }
}

/// Why a container did not start.
#[derive(Debug)]
enum SpawnError {
    /// It cannot start on this machine at all — no command, the program or
    /// its working directory missing, permission denied, not an executable
    /// (`spawn: <program>: <why>`). A new pod would fail the same way.
    Rejected(String),
    /// Anything else (its log cannot be opened, no processes left): the pod
    /// fails and is replaced within `backoffLimit`, as any failed pod.
    Failed(std::io::Error),
}

impl SpawnError {
    /// Classifies `program`'s failed spawn by the `execve` error.
    fn of(program: &str, e: std::io::Error) -> SpawnError {
        const FOR_GOOD: [i32; 7] = [
            libc::ENOENT,
            libc::EACCES,
            libc::EPERM,
            libc::ENOEXEC,
            libc::ENOTDIR,
            libc::ELOOP,
            libc::ENAMETOOLONG,
        ];
        match e.raw_os_error() {
            Some(code) if FOR_GOOD.contains(&code) => {
                SpawnError::Rejected(format!("spawn: {program}: {}", os_message(&e)))
            }
            _ => SpawnError::Failed(e),
        }
    }
}

/// An OS error's message without Rust's " (os error N)" suffix:
/// `No such file or directory`.
fn os_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
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
    // Out of time is expected here: SIGKILL follows.
    let _ = tokio::time::timeout(grace, wait_all(children)).await;
    for pgid in &pgids {
        signal_group(*pgid, libc::SIGKILL);
    }
    // Only reaped: how a killed process ended says nothing.
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
    let entries = match std::fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, "cannot list /proc; processes left by interrupted runs keep running");
            return 0;
        }
    };
    let me = std::process::id() as i32;
    let want_instance = format!("KEDGE_INSTANCE={instance}");
    let mut killed = 0;
    // An entry or an environ that cannot be read is a process that ended
    // meanwhile, or one of another user's: not ours to kill either way.
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
