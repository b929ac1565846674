//! What the daemon says about itself: each queue source's state and
//! counters, served as `/healthz`, `/readyz` and `/metrics` (Prometheus
//! text) when `http.listen` is configured.
//!
//! `/healthz` answers 200 while the daemon runs, with a JSON body naming
//! every source and its state, stuck runs, and every load guard's state
//! (`guards`, set by [`crate::guards`] through [`set_guard`], which also
//! feeds the `kedge_guard_holding` and `kedge_guard_value` gauges); `/readyz` answers 503 while any source is
//! degraded (its broker unreachable: intake for that job is paused and
//! reconnecting, nothing is lost).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Runs flagged at risk since the daemon started (a counter for operators;
/// the dispatcher's sizing raises it).
pub static AT_RISK_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Launches that failed, by (job, reason): `rejected` (the API refused for
/// good), `transient` (tried again after a backoff), `launch_timeout`.
static LAUNCH_FAILURES: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// Counts one failed launch of `job` for `reason` (a bounded set of words,
/// never a message or a run id).
pub fn count_launch_failure(job: &str, reason: &'static str) {
    let mut m = LAUNCH_FAILURES.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry((job.to_string(), reason.to_string())).or_default() += 1;
}

/// The launch failures counted so far, by (job, reason).
pub fn launch_failures() -> BTreeMap<(String, String), u64> {
    LAUNCH_FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Runs whose pods have not started, by (job, reason) as the dispatcher
/// last saw them: a gauge, replaced whole after every look.
static RUNS_STUCK: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// Replaces the stuck-run counts (`kedge_runs_stuck{job,reason}`).
pub fn set_runs_stuck(counts: BTreeMap<(String, String), u64>) {
    *RUNS_STUCK.lock().unwrap_or_else(|p| p.into_inner()) = counts;
}

/// The stuck-run counts, by (job, reason).
pub fn runs_stuck() -> BTreeMap<(String, String), u64> {
    RUNS_STUCK.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    GUARDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), status);
}

/// The guards' states, by name.
pub fn guards() -> BTreeMap<String, GuardStatus> {
    GUARDS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The `kedge_guard_holding` and `kedge_guard_value` families, by guard.
fn render_guards(out: &mut String) {
    use std::fmt::Write;
    let guards = guards();
    let _ = writeln!(
        out,
        "# HELP kedge_guard_holding 1 while the load guard holds or throttles its jobs (or its probe fails with on_probe_failure: hold).\n\
         # TYPE kedge_guard_holding gauge"
    );
    for (name, g) in &guards {
        let _ = writeln!(
            out,
            "kedge_guard_holding{{guard=\"{}\"}} {}",
            label(name),
            u8::from(g.holding)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kedge_guard_value The load guard's last measured value (NaN before the first measurement).\n\
         # TYPE kedge_guard_value gauge"
    );
    for (name, g) in &guards {
        let v = g.value.map_or("NaN".to_string(), |v| v.to_string());
        let _ = writeln!(out, "kedge_guard_value{{guard=\"{}\"}} {v}", label(name));
    }
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

/// Shared by intake tasks (writers) and the HTTP server (reader).
#[derive(Debug, Clone, Default)]
pub struct Health {
    sources: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
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
        });
    }

    pub fn up(&self, job: &str) {
        self.with(job, |s| {
            if s.state != "up" {
                s.state = "up";
                s.error = None;
                s.since = Some(Utc::now());
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
        });
    }

    /// Adds to `job`'s counters.
    pub fn count(&self, job: &str, claimed: u64, stored: u64, duplicates: u64, rejected: u64) {
        self.with(job, |s| {
            s.claimed += claimed;
            s.stored += stored;
            s.duplicates += duplicates;
            s.rejected += rejected;
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

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    use std::fmt::Write;
    // `writeln!` into a String cannot fail: the results below are ignored.
    let mut out = String::new();
    let sources = h.snapshot();
    let mut family = |name: &str, help: &str, kind: &str, value: &dyn Fn(&SourceStatus) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (job, s) in &sources {
            let _ = writeln!(
                out,
                "{name}{{job=\"{job}\",source=\"{}\"}} {}",
                s.source.replace('"', "'"),
                value(s)
            );
        }
    };
    family(
        "kedge_source_up",
        "1 when the queue source is connected.",
        "gauge",
        &|s| u64::from(s.state == "up"),
    );
    family(
        "kedge_messages_claimed_total",
        "Messages claimed from the source.",
        "counter",
        &|s| s.claimed,
    );
    family(
        "kedge_messages_stored_total",
        "Messages stored as new work items.",
        "counter",
        &|s| s.stored,
    );
    family(
        "kedge_messages_duplicate_total",
        "Redeliveries of messages already stored.",
        "counter",
        &|s| s.duplicates,
    );
    family(
        "kedge_messages_rejected_total",
        "Messages dead-lettered at intake (bad payload, expired).",
        "counter",
        &|s| s.rejected,
    );
    family(
        "kedge_source_reconnects_total",
        "Times the source was lost and reconnected.",
        "counter",
        &|s| s.reconnects,
    );
    let _ = writeln!(
        out,
        "# HELP kedge_runs_at_risk_total Runs that even the maximum parallelism cannot finish by their deadline.\n\
         # TYPE kedge_runs_at_risk_total counter\nkedge_runs_at_risk_total {}",
        AT_RISK_TOTAL.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP kedge_launch_failures_total Launches that failed, by job and reason (rejected, transient, launch_timeout).\n\
         # TYPE kedge_launch_failures_total counter"
    );
    for ((job, reason), n) in launch_failures() {
        let _ = writeln!(
            out,
            "kedge_launch_failures_total{{job=\"{}\",reason=\"{reason}\"}} {n}",
            job.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    let _ = writeln!(
        out,
        "# HELP kedge_runs_stuck Runs none of whose pods has started, by job and reason.\n\
         # TYPE kedge_runs_stuck gauge"
    );
    for ((job, reason), n) in runs_stuck() {
        let _ = writeln!(
            out,
            "kedge_runs_stuck{{job=\"{}\",reason=\"{}\"}} {n}",
            label(&job),
            label(&reason)
        );
    }
    render_guards(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
