//! Executors: where a run's Job actually runs.
//!
//! Every executor takes a rendered [`Launch`] (the job's JobSpec with
//! kedge's env and labels, see [`mod@render`]) and later reports exactly one
//! [`Outcome`] per launch on the channel it was built with — unless the
//! daemon shuts down first, in which case [`Executor::shutdown`] returns the
//! interrupted run ids instead. All executors pass the shared conformance
//! suite in `tests/executor_conformance.rs`.

pub mod kubernetes;
pub mod local;
pub mod render;

use std::future::Future;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::JobSpec;

pub use kubernetes::KubernetesExecutor;
pub use local::LocalExecutor;
pub use render::render;

/// Everything an executor needs to start one run.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Deterministic run id; on Kubernetes also the Job name.
    pub run_id: String,
    pub job: String,
    pub attempt: i64,
    /// The job's JobSpec with kedge's env and labels added.
    pub spec: JobSpec,
    /// A payload too large for an env var, delivered as a file instead
    /// (`KEDGE_PAYLOAD_FILE`).
    pub payload_file: Option<String>,
    /// A batch run's messages, one per completion index: delivered as
    /// files `$KEDGE_PAYLOAD_DIR/<index>` (on Kubernetes, a ConfigMap
    /// mounted at that path). Empty for a single-message run.
    pub batch: Vec<Option<String>>,
    pub deadline: Option<DateTime<Utc>>,
    /// What kedge knows about the run, for the Job's annotations
    /// (`kedge.dev/trigger`, `message-id`, `scheduled-at`, `deadline`,
    /// `attempt`). The sizing decision is on the pod template.
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// How a launched run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The Job completed (all completions succeeded).
    Succeeded,
    /// The Job failed; `reason` is a Kubernetes-style reason
    /// (`BackoffLimitExceeded`, `DeadlineExceeded`, `StartError`), or
    /// `rejected` when the run could not start for good (the API refused
    /// its Job; a local container's program cannot be executed).
    Failed { reason: String, message: String },
    /// The run was stopped by [`Executor::cancel`].
    Cancelled,
    /// The run was not started on purpose (at risk with `when_at_risk: skip`).
    Skipped { reason: String },
}

impl OutcomeKind {
    /// A short word for traces: `succeeded`, the failure's reason,
    /// `cancelled` or `skipped`.
    pub fn label(&self) -> String {
        match self {
            OutcomeKind::Succeeded => "succeeded".into(),
            OutcomeKind::Failed { reason, .. } => reason.clone(),
            OutcomeKind::Cancelled => "cancelled".into(),
            OutcomeKind::Skipped { .. } => "skipped".into(),
        }
    }
}

/// One run's end, reported by an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub run_id: String,
    pub kind: OutcomeKind,
    /// Indexed Jobs: the completion indexes that succeeded (Kubernetes'
    /// `status.completedIndexes`). A batch run settles each message on its
    /// own index. Empty for other Jobs.
    pub completed_indexes: Vec<i32>,
}

/// Why none of a running run's pods runs, from the most specific evidence
/// the executor has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Since the run's Job was created, or since a pod of it last ran.
    pub stalled_for: std::time::Duration,
    /// A container's waiting reason (`InvalidImageName`, `ErrImagePull`,
    /// `ImagePullBackOff`, `CreateContainerConfigError`, …), the pod's
    /// scheduling reason (`Unschedulable`), the Job controller's
    /// `FailedCreate`, or, without evidence, `ContainerCreating`,
    /// `Pending` or `NoPods`.
    pub reason: String,
    pub message: String,
}

/// A running run's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Successful completions (pods, or indexes for Indexed Jobs) so far.
    pub completed: u32,
    /// Completions needed.
    pub total: u32,
    pub parallelism: u32,
    /// Since the run was launched.
    pub elapsed: std::time::Duration,
    /// How long the longest-waiting of its pods has been Pending (not
    /// scheduled); `None` when none is. The local executor starts pods at
    /// once, so it always reports `None`.
    pub pending_for: Option<std::time::Duration>,
    /// Set while none of the run's pods runs (it has not started, or its
    /// next pod cannot); `None` while one runs. The local executor starts
    /// a run's processes at launch, so it always reports `None`.
    pub stall: Option<Stall>,
}

/// Errors starting a run. The run is not running after one of these.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Could not prepare the run's folder or payload file; retry later.
    #[error("cannot prepare run {run_id}")]
    Prepare {
        run_id: String,
        #[source]
        source: std::io::Error,
    },
    /// The executor is shutting down and takes no new runs.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The Kubernetes API did not take the run's objects (an error answer,
    /// no answer, or a timeout); launching again is safe.
    #[error("cannot create run {run_id}'s Job: {message}")]
    Api { run_id: String, message: String },
}

/// A decision kedge made about a finished run, for the executor to publish
/// where operators look (Kubernetes: an `events.k8s.io/v1` Event on the
/// run's Job, which `kubectl describe job` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The attempt failed; `next_run` runs after `delay_ms`.
    Retrying {
        error: String,
        next_run: String,
        delay_ms: i64,
    },
    /// The last attempt failed; the message is dead-lettered.
    DeadLettered { error: String, reason: String },
    /// The run finished `late_ms` after its deadline.
    DeadlineMissed { late_ms: i64 },
}

/// A place where runs run. See the module docs for the contract.
pub trait Executor: Send + Sync + 'static {
    /// Starts a run. Returns once it is started (not finished); the outcome
    /// comes later on the outcome channel.
    fn launch(&self, launch: Launch) -> impl Future<Output = Result<(), ExecutorError>> + Send;

    /// Stops a run; its outcome is reported as [`OutcomeKind::Cancelled`].
    /// Unknown or finished runs are ignored.
    fn cancel(&self, run_id: &str) -> impl Future<Output = ()> + Send;

    /// How far a running run is: completions done of the total, and its
    /// parallelism now. `None` for runs this executor does not track.
    fn progress(&self, run_id: &str) -> impl Future<Output = Option<Progress>> + Send;

    /// Gives up on a run that cannot start: stops it (on Kubernetes its Job
    /// is deleted, Background, so no pod of it can start later) and
    /// reports it as [`OutcomeKind::Failed`] with `reason` and `message`,
    /// keeping the indexes it completed. False when the run is not running
    /// here.
    fn abandon(
        &self,
        run_id: &str,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = bool> + Send;

    /// Changes a running run's parallelism (Kubernetes lets `spec.parallelism`
    /// of a running Job change). False when the run is not running here.
    fn set_parallelism(&self, run_id: &str, parallelism: u32) -> impl Future<Output = bool> + Send;

    /// At start-up: runs the store says were running when the previous
    /// daemon stopped. Returns the ids that are no longer running anywhere
    /// and must be launched again; the rest the executor tracks (adopts).
    fn recover(&self, run_ids: Vec<String>) -> impl Future<Output = Vec<String>> + Send;

    /// The daemon has stored `run_id`'s outcome: what the executor kept of
    /// the run may go (the Kubernetes executor deletes finished Jobs beyond
    /// the history limits only then, so a crash before settling can still
    /// read the outcome).
    fn settled(&self, run_id: &str) -> impl Future<Output = ()> + Send {
        let _ = run_id;
        async {}
    }

    /// Publishes `decision` about `run_id` (best effort, never blocks on the
    /// API: the Kubernetes executor queues it). The local executor's runs
    /// have nowhere to show it; the log has it already.
    fn record(&self, run_id: &str, decision: Decision) -> impl Future<Output = ()> + Send {
        let _ = (run_id, decision);
        async {}
    }

    /// Stops taking runs and stops (or lets go of) the running ones. Returns
    /// the run ids that were interrupted and need launching again.
    fn shutdown(&self) -> impl Future<Output = Vec<String>> + Send;
}
