//! What the daemon says about itself: each queue source's state and
//! counters, served as `/healthz`, `/readyz` and `/metrics` (the
//! [`crate::metrics`] registry, OpenMetrics text) when `http.listen` is
//! configured.
//!
//! `/healthz` answers 200 while the daemon runs, with a JSON body naming
//! every source and its state, and every job's operator state (`jobs`), every load guard's state
//! (`guards`, set by [`crate::guards`] through [`set_guard`], which also
//! feeds the `kedge_guard_holding` and `kedge_guard_value` gauges); `/readyz` answers 503 while any source is
//! degraded (its broker unreachable: intake for that job is paused and
//! reconnecting, nothing is lost). `/healthz`'s `config` says whether the
//! job and config files last read cleanly ([`crate::reload`]), and
//! `POST /-/reload` reloads them now.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::reload::{ReloadReport, ReloadRequest};
use crate::lifecycle::OperatorState;
use crate::store::{Store, StoreError};

/// Runs whose pods have not started, by (job, reason) as the dispatcher
/// last saw them: replaced whole after every look. `/healthz` sums them by
/// reason; `/metrics` has them as `kedge_runs_stuck{job,reason}`.
static RUNS_STUCK: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// Replaces the stuck-run counts (`/healthz` and `kedge_runs_stuck`).
pub fn set_runs_stuck(counts: BTreeMap<(String, String), u64>) {
    crate::metrics::set_runs_stuck(&counts);
    *RUNS_STUCK.lock().unwrap_or_else(|p| p.into_inner()) = counts;
}

/// The stuck-run counts, by (job, reason).
pub fn runs_stuck() -> BTreeMap<(String, String), u64> {
    RUNS_STUCK.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A job's operator state as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStateView {
    pub state: OperatorState,
    pub reason: Option<String>,
    /// Who set it (absent for a job never changed).
    pub by: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// Every loaded job's operator state, as the dispatcher last read it.
static JOB_STATES: Mutex<BTreeMap<String, JobStateView>> = Mutex::new(BTreeMap::new());

/// Replaces the jobs' operator states: each of `jobs` (the loaded ones) is
/// `active` unless `controls` says otherwise.
pub fn set_job_states<'a>(
    jobs: impl Iterator<Item = &'a String>,
    controls: &[crate::store::JobControl],
) {
    let by_job: BTreeMap<&str, &crate::store::JobControl> =
        controls.iter().map(|c| (c.job.as_str(), c)).collect();
    let states: BTreeMap<String, JobStateView> = jobs
        .map(|j| {
            let view = match by_job.get(j.as_str()) {
                Some(c) => JobStateView {
                    state: c.state,
                    reason: c.reason.clone(),
                    by: Some(c.actor.clone()),
                    since: DateTime::from_timestamp_millis(c.since_ms),
                },
                None => JobStateView {
                    state: OperatorState::Active,
                    reason: None,
                    by: None,
                    since: None,
                },
            };
            (j.clone(), view)
        })
        .collect();
    crate::metrics::set_job_states(
        states
            .iter()
            .map(|(job, v): (&String, &JobStateView)| (job.as_str(), v.state)),
    );
    *JOB_STATES.lock().unwrap_or_else(|p| p.into_inner()) = states;
}

/// The jobs' operator states, by job.
pub fn job_states() -> BTreeMap<String, JobStateView> {
    JOB_STATES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One load guard's state ([`crate::guards`]), for `/healthz` and the
/// `kedge_guard_*` gauges.
#[derive(Debug, Clone, Serialize)]
pub struct GuardStatus {
    /// Its jobs are held or throttled (`kedge_guard_holding`).
    pub holding: bool,
    /// `clear`, `holding` or `throttling`.
    pub effect: &'static str,
    pub action: crate::config::guard::GuardAction,
    /// The last measured value (`kedge_guard_value`; NaN before the first).
    pub value: Option<f64>,
    pub max: f64,
    pub resume_below: f64,
    /// Why the last measurement failed; `None` after a success.
    pub error: Option<String>,
    /// Failed measurements since the daemon started.
    pub failures: u64,
    /// Since when `effect` is what it is.
    pub since: DateTime<Utc>,
}

/// Every load guard's state, by name: replaced entry by entry by the guards' watchers.
static GUARDS: Mutex<BTreeMap<String, GuardStatus>> = Mutex::new(BTreeMap::new());

/// Sets guard `name`'s state (`/healthz` `guards`, `kedge_guard_holding`, `kedge_guard_value`).
pub fn set_guard(name: &str, status: GuardStatus) {
    crate::metrics::set_guard(name, status.holding, status.value);
    GUARDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), status);
}

/// The guards' states, by name.
pub fn guards() -> BTreeMap<String, GuardStatus> {
    GUARDS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One queue source's state as intake sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// `builtin`, `redis_list:orders`, … (the work items' `source`).
    pub source: String,
    /// `up`, `connecting` or `degraded`.
    pub state: &'static str,
    /// Why it is degraded (URLs redacted).
    pub error: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub claimed: u64,
    pub stored: u64,
    pub duplicates: u64,
    /// Refused at intake (bad payload, expired) and dead-lettered.
    pub rejected: u64,
    pub reconnects: u64,
}

/// The definitions' state: the last reload and the problems it found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// Bumped by each reload that changed something (0: as started).
    pub generation: u64,
    /// When the definitions were last read (start or reload).
    pub read_at: Option<DateTime<Utc>>,
    /// Whether that read found no problem.
    pub ok: bool,
    /// Its problems, `file:line:column: field: message`.
    pub problems: Vec<String>,
    /// Jobs running at their last good version because their file is broken.
    pub kept: Vec<String>,
    /// Config fields changed in the file that apply at the next restart.
    pub restart_needed: Vec<String>,
    /// Reloads that found a problem since the daemon started.
    #[serde(skip)]
    pub reload_errors: u64,
}

/// Shared by intake tasks (writers) and the HTTP server (reader).
#[derive(Debug, Clone, Default)]
pub struct Health {
    sources: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
    config: Arc<Mutex<ConfigStatus>>,
    /// Where `POST /-/reload` asks for a reload (set when hot reload runs).
    reload: Arc<Mutex<Option<mpsc::Sender<ReloadRequest>>>>,
}

impl Health {
    fn with<R>(&self, job: &str, f: impl FnOnce(&mut SourceStatus) -> R) -> R {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(job.to_string()).or_default())
    }

    /// Registers `job`'s source, not yet connected.
    pub fn register(&self, job: &str, source: &str) {
        self.with(job, |s| {
            s.source = source.to_string();
            s.state = "connecting";
            s.since = Some(Utc::now());
            crate::metrics::source_registered(job, source);
        });
    }

    pub fn up(&self, job: &str) {
        self.with(job, |s| {
            if s.state != "up" {
                s.state = "up";
                s.error = None;
                s.since = Some(Utc::now());
                crate::metrics::source_up(job, &s.source, true);
            }
        });
    }

    pub fn degraded(&self, job: &str, error: &str) {
        self.with(job, |s| {
            if s.state != "degraded" {
                s.since = Some(Utc::now());
            }
            s.state = "degraded";
            s.error = Some(error.to_string());
            s.reconnects += 1;
            crate::metrics::source_up(job, &s.source, false);
            crate::metrics::source_reconnect(job, &s.source);
        });
    }

    /// Forgets `job`'s source (its job was removed or is restarting).
    pub fn unregister(&self, job: &str) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job);
    }

    /// Records the definitions read at start: their problems, no reload yet.
    pub fn loaded(&self, problems: Vec<String>) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.read_at = Some(Utc::now());
        c.ok = problems.is_empty();
        c.problems = problems;
        crate::metrics::definitions_read(c.ok, false);
    }

    /// Records a reload's outcome.
    pub fn reloaded(&self, report: &ReloadReport) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.generation = report.generation;
        c.read_at = Some(Utc::now());
        c.ok = report.ok();
        c.problems = report.problems.clone();
        c.kept = report.kept.clone();
        c.restart_needed = report.restart_needed.clone();
        c.reload_errors += u64::from(!report.ok());
        crate::metrics::definitions_read(c.ok, true);
    }

    pub fn config_status(&self) -> ConfigStatus {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lets `POST /-/reload` reach the reload task.
    pub fn accept_reloads(&self, requests: mpsc::Sender<ReloadRequest>) {
        *self.reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(requests);
    }

    /// Adds to `job`'s counters.
    pub fn count(&self, job: &str, claimed: u64, stored: u64, duplicates: u64, rejected: u64) {
        self.with(job, |s| {
            s.claimed += claimed;
            s.stored += stored;
            s.duplicates += duplicates;
            s.rejected += rejected;
            crate::metrics::messages(job, &s.source, claimed, stored, duplicates, rejected);
        });
    }

    pub fn snapshot(&self) -> BTreeMap<String, SourceStatus> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn any_degraded(&self) -> bool {
        self.snapshot().values().any(|s| s.state != "up")
    }
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    sources: BTreeMap<String, SourceStatus>,
    /// Runs whose pods have not started, counted by reason
    /// (`Unschedulable`, `ImagePullBackOff`, `FailedCreate`, …).
    stuck_runs: BTreeMap<String, u64>,
    /// The job and config files' state (hot reload).
    config: ConfigStatus,
    /// Every loaded job's operator state (active, paused, held, iced),
    /// with who set it, when and why.
    jobs: BTreeMap<String, JobStateView>,
    /// Every load guard's state, by name.
    guards: BTreeMap<String, GuardStatus>,
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    let sources = h.snapshot();
    let status = if sources.values().all(|s| s.state == "up") {
        "ok"
    } else {
        "degraded"
    };
    let mut stuck_runs = BTreeMap::new();
    for ((_, reason), n) in runs_stuck() {
        *stuck_runs.entry(reason).or_default() += n;
    }
    Json(HealthBody {
        status,
        sources,
        stuck_runs,
        config: h.config_status(),
        jobs: job_states(),
        guards: guards(),
    })
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.any_degraded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: a queue source is unreachable\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
}

/// How often [`watch_store`] reads the store's counts.
pub const STORE_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Reads the gauges whose truth is in the store — runs active and pending,
/// open dead letters, per job — now and every `every` until `stop`, so
/// `/metrics` is right after a restart too. A failed read is logged and the
/// last values stay (a store hiccup is not "zero dead letters").
/// `jobs` names the jobs in force at each look (they change on reload).
pub async fn watch_store(
    store: Store,
    jobs: impl Fn() -> Vec<String> + Send + 'static,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match store_counts(&store).await {
            Ok((active, pending, dead)) => {
                crate::metrics::set_store_counts(&jobs(), &active, &pending, &dead)
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot read run and dead-letter counts for /metrics; they keep their last values")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

type Counts = BTreeMap<String, i64>;

async fn store_counts(store: &Store) -> Result<(Counts, Counts, Counts), StoreError> {
    let (mut active, mut pending) = (Counts::new(), Counts::new());
    for (job, running, waiting) in store.active_counts().await? {
        active.insert(job.clone(), running);
        pending.insert(job, waiting);
    }
    let dead = store.open_dead_letter_counts().await?.into_iter().collect();
    Ok((active, pending, dead))
}

/// `POST /-/reload`: reloads now and answers with what changed (200), or
/// with the problems found (422: the good parts applied, broken files kept
/// their last good version). 503 when hot reload is not running.
async fn reload(State(h): State<Health>) -> axum::response::Response {
    let requests = h.reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(requests) = requests else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "hot reload is not running\n",
        )
            .into_response();
    };
    let (tx, rx) = oneshot::channel();
    if requests.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "hot reload has stopped\n").into_response();
    }
    match rx.await {
        Ok(report) if report.ok() => (StatusCode::OK, Json(report)).into_response(),
        Ok(report) => (StatusCode::UNPROCESSABLE_ENTITY, Json(report)).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "hot reload has stopped\n").into_response(),
    }
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address
/// (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/-/reload", post(reload))
        .with_state(health);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_state_gauges_are_one_for_the_current_state() {
        let controls = [crate::store::JobControl {
            job: "nightly".into(),
            state: OperatorState::Paused,
            reason: Some("db \"migration\"".into()),
            actor: "alice".into(),
            since_ms: 1_800_000_000_000,
        }];
        let jobs = ["nightly".to_string(), "orders".to_string()];
        set_job_states(jobs.iter(), &controls);
        let states = job_states();
        assert_eq!(states["orders"].state, OperatorState::Active);
        assert_eq!(states["nightly"].by.as_deref(), Some("alice"));
        let out = crate::metrics::render();
        for line in [
            "# TYPE kedge_job_paused gauge",
            "kedge_job_paused{job=\"nightly\"} 1",
            "kedge_job_paused{job=\"orders\"} 0",
            "kedge_job_held{job=\"nightly\"} 0",
            "kedge_job_iced{job=\"orders\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
        }
    }
}
