//! The Kubernetes executor: each run is a `batch/v1` Job, created through
//! the API server and tracked by one watcher.
//!
//! - [`objects`] (pure) builds the Job and its payload ConfigMap.
//! - [`tracker`] runs one kube-runtime watcher over kedge's label selector
//!   (no per-Job polling; backoff on reconnect, relist on 410) and turns
//!   terminal conditions into [`Outcome`]s.
//! - [`lease`] elects the one replica that launches; [`elect`] waits to
//!   lead and hands out the [`Leader`]'s executor.
//! - [`metered`] counts and times every API request for `/metrics`.
//!
//! # Launch, idempotently
//! The Job is named by its run id. `launch` creates the payload ConfigMap
//! (if any), then the Job, then makes the Job the ConfigMap's controlling
//! owner. A create that answers 409 AlreadyExists is a Job launched
//! earlier (by a daemon that crashed, or a request that timed out after it
//! reached the server): it is adopted when its `kedge.dev/run` annotation
//! and instance label say it is this run's, and the run fails with
//! `NameTaken` otherwise. Every write waits for the client-side rate limit
//! and is abandoned after `request_timeout` (it is safe to repeat).
//!
//! # Cleanup
//! Finished Jobs are deleted (always `propagationPolicy: Background`, so
//! their pods and ConfigMap go too) once their outcome is settled in the
//! store ([`Executor::settled`]), keeping the newest
//! `successful_jobs_history_limit` / `failed_jobs_history_limit` per job.
//! `ttlSecondsAfterFinished` is set as a backstop.
//!
//! # Restart
//! [`Executor::recover`] waits for the watcher's first full list, adopts
//! the runs whose Jobs exist (reporting at once those that finished
//! meanwhile), returns the others for relaunch, and removes payload
//! ConfigMaps a crash left without an owner. `shutdown` lets go of running
//! Jobs: they keep running and the next leader adopts them.

pub mod lease;
pub mod metered;
pub mod notes;
pub mod objects;
pub mod pods;
pub mod tracker;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Decision, Executor, ExecutorError, Launch, Outcome, OutcomeKind, Progress};
use crate::config::KubernetesConfig;
use notes::Notes;
use objects::{Placement, ANNOTATION_RUN, LABEL_INSTANCE};
use tracker::Tracker;

/// Every API call the executor (and its Lease) makes: (API group,
/// resource, verbs). The Roles in `deploy/kubernetes/rbac.yaml` and the Helm
/// chart (`deploy/helm/kedge/templates/rbac.yaml`) grant exactly
/// these; tests keep them equal.
pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
    (
        "batch",
        "jobs",
        &["create", "delete", "get", "list", "patch", "watch"],
    ),
    ("", "configmaps", &["create", "delete", "list", "patch"]),
    ("", "pods", &["list", "watch"]),
    ("", "events", &["list", "watch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "coordination.k8s.io",
        "leases",
        &["create", "get", "update"],
    ),
];

/// How often finished Jobs whose deletion failed are tried again.
const CLEANUP_EVERY: Duration = Duration::from_secs(2);

/// How long `recover` waits for the first full list of Jobs.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates a client from the config: `kubeconfig` (and `context`) when set,
/// else kube-rs's usual order (`KUBECONFIG`, `~/.kube/config`, in-cluster).
/// Returns the client and the namespace to use.
pub async fn client(cfg: &KubernetesConfig) -> anyhow::Result<(Client, String)> {
    use anyhow::Context;
    let options = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None if cfg.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig")?,
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (KUBECONFIG, ~/.kube/config) or in-cluster config")?,
    };
    // A request (or a watch) that gets no bytes for this long is dropped
    // and retried: a hung connection must not stall tracking. Watches are
    // asked to end sooner than that (see `watch_timeout`), so a quiet but
    // healthy watch never trips it.
    let mut config = config;
    config.read_timeout = Some(cfg.request_timeout);
    let namespace = cfg
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&metered::MeteredLayer)
        .build();
    Ok((client, namespace))
}

/// The `timeoutSeconds` of each watch request: three quarters of the
/// request timeout (at least 1 s), so the server ends a quiet watch before
/// the client's read timeout would call it hung.
fn watch_timeout(request_timeout: Duration) -> u32 {
    ((request_timeout.as_secs_f64() * 0.75) as u32).max(1)
}

/// This replica's identity: the configured one, else `HOSTNAME-pid`.
pub fn identity(cfg: &KubernetesConfig) -> String {
    cfg.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "kedge".into());
        format!("{host}-{}", std::process::id())
    })
}

/// A replica elected on the Lease: it alone launches, through
/// [`Leader::executor`], until [`Leader::step_down`].
pub struct Leader {
    client: Client,
    namespace: String,
    identity: String,
    leadership: lease::Leadership,
}

/// Connects as `cfg` says and waits to hold the Lease
/// (`cfg.lease_name`); losing it later cancels `shutdown`. `None` if
/// `shutdown` came first.
pub async fn elect(
    cfg: &KubernetesConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Leader>> {
    let (client, namespace) = client(cfg).await?;
    let identity = identity(cfg);
    let lease = lease::LeaderLease::new(
        client.clone(),
        &namespace,
        &cfg.lease_name,
        &identity,
        cfg.lease_duration,
    );
    tracing::info!(%namespace, %identity, lease = %cfg.lease_name, "waiting to lead (only the Lease holder launches)");
    let Some(leadership) = lease.lead(shutdown).await else {
        return Ok(None);
    };
    tokio::spawn(notes::announce_leader(
        client.clone(),
        namespace.clone(),
        cfg.lease_name.clone(),
        identity.clone(),
        cfg.request_timeout,
    ));
    Ok(Some(Leader {
        client,
        namespace,
        identity,
        leadership,
    }))
}

impl Leader {
    /// The executor this leader launches with; `instance` is the store's
    /// instance id, `outcomes` where finished runs are reported.
    pub fn executor(
        &self,
        cfg: KubernetesConfig,
        instance: String,
        outcomes: mpsc::Sender<Outcome>,
    ) -> KubernetesExecutor {
        KubernetesExecutor::new(
            self.client.clone(),
            &self.namespace,
            cfg,
            instance,
            self.identity.clone(),
            outcomes,
        )
    }

    /// Stops renewing and releases the Lease; `Err` if it was lost while
    /// leading.
    pub async fn step_down(self) -> Result<(), lease::LeaseLost> {
        self.leadership.step_down().await
    }
}

/// Runs Jobs on Kubernetes. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Api<Job>,
    config_maps: Api<ConfigMap>,
    /// kedge's decisions as Events ([`notes`]).
    notes: Notes,
    at: Placement,
    cfg: KubernetesConfig,
    limiter: DefaultDirectRateLimiter,
    tracker: Tracker,
    closed: CancellationToken,
    /// Jobs of abandoned runs whose deletion failed: tried again with the
    /// history clean-up, so no pod of them starts later.
    doomed: std::sync::Mutex<Vec<String>>,
}

impl KubernetesExecutor {
    /// Starts the executor: its watcher begins listing at once. `instance`
    /// is the store's id (objects are labelled with it), `identity` this
    /// replica's (recorded on the Jobs it creates).
    pub fn new(
        client: Client,
        namespace: &str,
        cfg: KubernetesConfig,
        instance: String,
        identity: String,
        outcomes: mpsc::Sender<Outcome>,
    ) -> Self {
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let events: Api<Event> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let closed = CancellationToken::new();
        let notes = Notes::start(client, &identity, &cfg, closed.clone());
        let at = Placement::new(&cfg, namespace.to_string(), instance, identity);
        let quota = Quota::per_second(NonZeroU32::new(cfg.api_qps).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.api_burst).unwrap_or(NonZeroU32::MIN));
        let tracker = Tracker::start(
            jobs.clone(),
            pods,
            events,
            objects::selector(&at.instance),
            watch_timeout(cfg.request_timeout),
            outcomes,
            closed.clone(),
        );
        let executor = KubernetesExecutor {
            inner: Arc::new(Inner {
                jobs,
                config_maps,
                notes,
                at,
                cfg,
                limiter: RateLimiter::direct(quota),
                tracker,
                closed,
                doomed: std::sync::Mutex::new(Vec::new()),
            }),
        };
        // Deletions that failed are tried again, independent of new outcomes.
        let cleaner = executor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CLEANUP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cleaner.inner.closed.cancelled() => return,
                    _ = tick.tick() => cleaner.trim_history().await,
                }
            }
        });
        executor
    }

    /// The objects a launch creates (what `kedge render` prints).
    pub fn placement(&self) -> &Placement {
        &self.inner.at
    }

    /// Waits for the rate limit, then runs one API write with the request
    /// timeout.
    async fn write<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, WriteError> {
        self.inner.limiter.until_ready().await;
        match tokio::time::timeout(self.inner.cfg.request_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(s))) => Err(WriteError::Status(s)),
            Ok(Err(e)) => Err(WriteError::Other(format!(
                "{what}: {}",
                crate::error_chain(&e)
            ))),
            Err(_) => Err(WriteError::Other(format!(
                "{what}: no answer within {:?}",
                self.inner.cfg.request_timeout
            ))),
        }
    }

    /// Creates (or adopts) the run's objects. `Ok(false)`: the name is
    /// taken by a Job that is not this run's.
    async fn create(&self, launch: &Launch) -> Result<bool, WriteError> {
        let objs = objects::objects(launch, &self.inner.at);
        let pp = PostParams::default();
        if let Some(cm) = &objs.config_map {
            match self
                .write(
                    "creating the payload ConfigMap",
                    self.inner.config_maps.create(&pp, cm),
                )
                .await
            {
                Ok(_) => {}
                Err(WriteError::Status(s)) if s.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
        let job = match self
            .write("creating the Job", self.inner.jobs.create(&pp, &objs.job))
            .await
        {
            Ok(job) => job,
            Err(WriteError::Status(s)) if s.is_already_exists() => {
                let existing = tokio::time::timeout(
                    self.inner.cfg.request_timeout,
                    self.inner.jobs.get(&launch.run_id),
                )
                .await
                .map_err(|_| WriteError::Other("reading the existing Job: timed out".into()))?
                .map_err(|e| WriteError::Other(format!("reading the existing Job: {e}")))?;
                let ours = existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_RUN))
                    == Some(&launch.run_id)
                    && existing
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_INSTANCE))
                        == Some(&self.inner.at.instance);
                if !ours {
                    return Ok(false);
                }
                tracing::info!(run = %launch.run_id, job = %launch.job, attempt = launch.attempt, "the run's Job already exists; adopted");
                existing
            }
            Err(e) => return Err(e),
        };
        // The payload ConfigMap's ownerReference needs the uid: without it
        // the garbage collector would delete the ConfigMap under the Job.
        let Some(uid) = job.metadata.uid.clone() else {
            return Err(WriteError::Other(format!(
                "the API server answered Job {} without a uid",
                launch.run_id
            )));
        };
        if objs.config_map.is_some() {
            self.own_config_map(&launch.run_id, &uid).await?;
        }
        self.note_launch(launch, &job, &objs.job, uid);
        Ok(true)
    }

    /// Queues the `Launched` Event, and `Sized` or `AtRisk` when sizing
    /// chose the parallelism (`created` is the API's answer, `sent` what
    /// kedge sent: its annotations say how it was sized).
    fn note_launch(&self, launch: &Launch, created: &Job, sent: &Job, uid: String) {
        let at = &self.inner.at;
        let regarding = notes::job_ref(&at.namespace, &launch.run_id, Some(uid));
        let spec = created.spec.as_ref();
        self.inner.notes.publish(
            regarding.clone(),
            notes::launched(
                launch.attempt,
                spec.and_then(|s| s.completions),
                spec.and_then(|s| s.parallelism),
            ),
        );
        let sizing = sent
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(objects::ANNOTATION_SIZING_REASON));
        if let Some(reason) = sizing {
            let at_risk = objects::at_risk(sent).is_some();
            self.inner
                .notes
                .publish(regarding, notes::sized(reason.clone(), at_risk));
        }
    }

    /// Makes Job `name` (uid `uid`) the controlling owner of its ConfigMap.
    async fn own_config_map(&self, name: &str, uid: &str) -> Result<(), WriteError> {
        let patch = serde_json::json!({
            "metadata": { "ownerReferences": [objects::owned_by(name, uid)] }
        });
        self.write(
            "setting the payload ConfigMap's owner",
            self.inner
                .config_maps
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// Deletes a Job with `propagationPolicy: Background` (its pods and
    /// ConfigMap are collected). A Job already gone is fine.
    async fn delete_job(&self, name: &str) -> Result<(), WriteError> {
        match self
            .write(
                "deleting the Job",
                self.inner.jobs.delete(name, &DeleteParams::background()),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(WriteError::Status(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes finished Jobs beyond the history limits, and abandoned
    /// runs' Jobs whose deletion failed.
    async fn trim_history(&self) {
        let doomed =
            std::mem::take(&mut *self.inner.doomed.lock().unwrap_or_else(|p| p.into_inner()));
        for name in doomed {
            if let Err(e) = self.delete_job(&name).await {
                let (job, attempt) = self.inner.tracker.job_and_attempt(&name);
                tracing::warn!(run = %name, %job, attempt, error = %e, "cannot delete a run's Job that never started; trying again shortly");
                self.inner
                    .doomed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name);
            }
        }
        let excess = self.inner.tracker.excess_history(
            self.inner.cfg.successful_jobs_history_limit as usize,
            self.inner.cfg.failed_jobs_history_limit as usize,
        );
        for (job, name, ok) in excess {
            if let Err(e) = self.delete_job(&name).await {
                let attempt = self.inner.tracker.job_and_attempt(&name).1;
                tracing::warn!(run = %name, %job, attempt, error = %e, "cannot delete a finished Job; trying again shortly");
                self.inner.tracker.history_delete_failed(job, name, ok);
            }
        }
    }

    /// Payload ConfigMaps without an owner (a crash between creating the
    /// ConfigMap and the Job, or before the owner was set): owned by their
    /// Job if it exists, deleted otherwise.
    async fn reconcile_config_maps(&self) {
        let lp = ListParams::default().labels(&objects::selector(&self.inner.at.instance));
        let list = match self.inner.config_maps.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot list payload ConfigMaps; orphans stay until the next start");
                return;
            }
        };
        for cm in list.items {
            let Some(name) = cm.metadata.name.clone() else {
                continue;
            };
            if cm
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| !o.is_empty())
            {
                continue; // the garbage collector's
            }
            let result = match self.inner.tracker.uid_of(&name) {
                Some(uid) => self.own_config_map(&name, &uid).await,
                None => {
                    tracing::info!(config_map = %name, "deleting a payload ConfigMap left without its Job");
                    match self
                        .write(
                            "deleting an orphaned ConfigMap",
                            self.inner
                                .config_maps
                                .delete(&name, &DeleteParams::background()),
                        )
                        .await
                    {
                        Err(WriteError::Status(s)) if s.is_not_found() => Ok(()),
                        r => r.map(|_| ()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!(config_map = %name, error = %e, "cannot reconcile a payload ConfigMap");
            }
        }
    }
}

/// A failed API write.
#[derive(Debug)]
enum WriteError {
    /// The server answered with a Status (4xx/5xx).
    Status(Box<kube::core::Status>),
    /// No answer, a connection error, or a timeout.
    Other(String),
}

impl WriteError {
    /// Why the API refused for good — `<reason>: <message>` — or `None`
    /// when the same request may succeed later.
    ///
    /// Transient: no answer, a connection error or timeout, 429, 5xx, and a
    /// 403 whose message says `exceeded quota` (a ResourceQuota frees up as
    /// other Jobs end; the Job controller retries those too). Permanent:
    /// every other 4xx — 400, 403 from admission or RBAC, 404 (the namespace
    /// does not exist), 422 (409 never reaches here: it means "already
    /// launched").
    fn refusal(&self) -> Option<String> {
        let WriteError::Status(s) = self else {
            return None;
        };
        let quota = s.code == 403 && s.message.contains("exceeded quota");
        if !(400..500).contains(&s.code) || s.code == 429 || s.code == 409 || quota {
            return None;
        }
        let reason = if s.reason.is_empty() {
            s.code.to_string()
        } else {
            s.reason.clone()
        };
        Some(format!("{reason}: {}", s.message))
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Status(s) => write!(f, "{} ({} {})", s.message, s.code, s.reason),
            WriteError::Other(s) => f.write_str(s),
        }
    }
}

impl Executor for KubernetesExecutor {
    async fn launch(&self, launch: Launch) -> Result<(), ExecutorError> {
        if self.inner.closed.is_cancelled() {
            return Err(ExecutorError::ShuttingDown);
        }
        let run_id = launch.run_id.clone();
        // Tracked before the create, so an outcome the watcher sees at
        // once is not missed.
        self.inner.tracker.track(&run_id);
        match self.create(&launch).await {
            Ok(true) => {
                self.inner.tracker.created(&run_id).await;
                Ok(())
            }
            Ok(false) => {
                tracing::error!(run = %run_id, job = %launch.job, attempt = launch.attempt, "a Job with this run's name exists and is not this run's; the attempt fails");
                self.inner
                    .tracker
                    .report(
                        &run_id,
                        OutcomeKind::Failed {
                            reason: "NameTaken".into(),
                            message: format!(
                                "a Job named {run_id} exists in namespace {} and was not created by kedge for this run",
                                self.inner.at.namespace
                            ),
                        },
                    )
                    .await;
                Ok(())
            }
            Err(e) => match e.refusal() {
                Some(why) => {
                    // Trying again would be refused again: the attempt fails
                    // now and the job's retry policy takes over.
                    tracing::error!(run = %run_id, job = %launch.job, attempt = launch.attempt, refusal = %why, "the API refused the run's Job; the attempt fails");
                    crate::metrics::launch_failure(&launch.job, "rejected");
                    let failed = OutcomeKind::Failed {
                        reason: "rejected".into(),
                        message: why,
                    };
                    self.inner.tracker.report(&run_id, failed).await;
                    Ok(())
                }
                None => {
                    self.inner.tracker.untrack(&run_id);
                    Err(ExecutorError::Api {
                        run_id,
                        message: e.to_string(),
                    })
                }
            },
        }
    }

    async fn cancel(&self, run_id: &str) {
        // After shutdown the running Jobs belong to the next leader.
        if self.inner.closed.is_cancelled() || !self.inner.tracker.mark_cancelled(run_id) {
            return;
        }
        if let Err(e) = self.delete_job(run_id).await {
            let (job, attempt) = self.inner.tracker.job_and_attempt(run_id);
            tracing::warn!(run = %run_id, %job, attempt, error = %e, "cannot delete a cancelled run's Job");
        }
    }

    async fn progress(&self, run_id: &str) -> Option<Progress> {
        self.inner.tracker.progress(run_id)
    }

    async fn abandon(&self, run_id: &str, reason: &str, message: &str) -> bool {
        // After shutdown the running Jobs belong to the next leader.
        if self.inner.closed.is_cancelled() {
            return false;
        }
        let kind = OutcomeKind::Failed {
            reason: reason.to_string(),
            message: message.to_string(),
        };
        if !self.inner.tracker.abandon(run_id, kind).await {
            return false;
        }
        if let Err(e) = self.delete_job(run_id).await {
            let (job, attempt) = self.inner.tracker.job_and_attempt(run_id);
            tracing::warn!(run = %run_id, %job, attempt, error = %e, "cannot delete a run's Job that never started; trying again shortly");
            self.inner
                .doomed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(run_id.to_string());
        }
        true
    }

    async fn set_parallelism(&self, run_id: &str, parallelism: u32) -> bool {
        if !self.inner.tracker.is_tracked(run_id) {
            return false;
        }
        let patch = serde_json::json!({ "spec": { "parallelism": parallelism } });
        let result = self
            .write(
                "raising parallelism",
                self.inner
                    .jobs
                    .patch(run_id, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await;
        match result {
            Ok(_) => true,
            Err(e) => {
                let (job, attempt) = self.inner.tracker.job_and_attempt(run_id);
                tracing::warn!(run = %run_id, %job, attempt, error = %e, "cannot change a Job's parallelism");
                false
            }
        }
    }

    async fn recover(&self, run_ids: Vec<String>) -> Vec<String> {
        if !self.inner.tracker.wait_synced(SYNC_TIMEOUT).await {
            // Relaunching is safe: names are deterministic, so a Job that
            // does exist answers 409 and is adopted.
            tracing::warn!("the Job list did not arrive in time; interrupted runs are launched again and adopted on 409");
            return run_ids;
        }
        let relaunch = self.inner.tracker.adopt(&run_ids).await;
        if run_ids.len() > relaunch.len() {
            tracing::info!(
                adopted = run_ids.len() - relaunch.len(),
                "adopted Jobs the previous daemon launched"
            );
        }
        self.reconcile_config_maps().await;
        self.trim_history().await;
        relaunch
    }

    async fn record(&self, run_id: &str, decision: Decision) {
        let uid = self.inner.tracker.uid_of(run_id);
        let regarding = notes::job_ref(&self.inner.at.namespace, run_id, uid);
        self.inner
            .notes
            .publish(regarding, notes::decided(&decision));
    }

    async fn settled(&self, run_id: &str) {
        if self.inner.tracker.finish(run_id) {
            self.trim_history().await;
        }
    }

    async fn shutdown(&self) -> Vec<String> {
        // Running Jobs keep running; the next leader adopts them.
        self.inner.closed.cancel();
        self.inner.tracker.stopped().await;
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Role's rules as (group, resource, sorted verbs), sorted.
    fn granted(rules: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
        let mut granted: Vec<(String, String, Vec<String>)> = rules
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let one = |k: &str| {
                    r[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                };
                let (groups, resources, mut verbs) =
                    (one("apiGroups"), one("resources"), one("verbs"));
                assert_eq!(
                    (groups.len(), resources.len()),
                    (1, 1),
                    "one group and resource per rule"
                );
                verbs.sort();
                (groups[0].clone(), resources[0].clone(), verbs)
            })
            .collect();
        granted.sort();
        granted
    }

    fn used() -> Vec<(String, String, Vec<String>)> {
        let mut used: Vec<(String, String, Vec<String>)> = PERMISSIONS
            .iter()
            .map(|(g, r, v)| {
                let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
                v.sort();
                (g.to_string(), r.to_string(), v)
            })
            .collect();
        used.sort();
        used
    }

    #[test]
    fn role_grants_exactly_what_kedge_uses() {
        let text = include_str!("../../../deploy/kubernetes/rbac.yaml");
        let role = text
            .split("\n---\n")
            .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).expect("rbac.yaml parses"))
            .find(|d| d["kind"] == "Role")
            .expect("a Role");
        assert_eq!(granted(&role["rules"]), used());
    }

    /// The Helm chart's Role template keeps its rules literal, so they are
    /// read here without rendering (tests/deploy.rs also checks the
    /// rendered Role).
    #[test]
    fn chart_role_grants_exactly_what_kedge_uses() {
        let text = include_str!("../../../deploy/helm/kedge/templates/rbac.yaml");
        let rules = text
            .split_once("\nrules:\n")
            .and_then(|(_, rest)| rest.split("\n---\n").next())
            .expect("the Role's rules, then ---");
        assert!(!rules.contains("{{"), "template directives in the rules");
        let rules: serde_json::Value = serde_saphyr::from_str(rules).expect("the rules parse");
        assert_eq!(granted(&rules), used());
    }

    #[test]
    fn watches_end_before_the_read_timeout() {
        assert_eq!(watch_timeout(Duration::from_secs(30)), 22);
        assert_eq!(watch_timeout(Duration::from_secs(1)), 1);
    }

    fn status(code: u16, reason: &str, message: &str) -> WriteError {
        WriteError::Status(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn creates_refused_for_good_are_told_from_those_worth_retrying() {
        let admission = "admission webhook \"x\" denied the request: no";
        assert_eq!(
            status(403, "Forbidden", admission).refusal().as_deref(),
            Some("Forbidden: admission webhook \"x\" denied the request: no")
        );
        for (code, reason) in [(400, "BadRequest"), (404, "NotFound"), (422, "Invalid")] {
            assert!(status(code, reason, "m").refusal().is_some(), "{code}");
        }
        let quota =
            "jobs.batch \"j\" is forbidden: exceeded quota: q, requested: count/jobs.batch=1";
        for e in [
            status(403, "Forbidden", quota),
            status(429, "TooManyRequests", "slow down"),
            status(500, "InternalError", "etcd"),
            status(503, "ServiceUnavailable", "later"),
            status(409, "AlreadyExists", "exists"),
            WriteError::Other("no answer within 10s".into()),
        ] {
            assert_eq!(e.refusal(), None, "{e}");
        }
        assert_eq!(
            status(403, "", "nope").refusal().as_deref(),
            Some("403: nope")
        );
    }
}
