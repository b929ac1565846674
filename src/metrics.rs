//! kedge's Prometheus metrics: one [`Registry`] of typed families, and the
//! small recording functions each room calls where its event happens
//! (intake counts messages, the dispatcher launches, the finalizer ends
//! runs, the Kubernetes client counts its requests, the store times its
//! queries). [`crate::health`] serves [`render`] as `/metrics`.
//!
//! Naming follows Prometheus: base units (`_seconds`), `_total` on counters
//! (prometheus-client appends it), `_info` for metadata. Label sets are
//! bounded: job names, reasons and verbs from fixed sets, never a run id or
//! a message.
//!
//! The registry is process-wide ([`global`]): a metric is a fact about the
//! process, and a recording function must not need a handle threaded
//! through every stage. Tests render a fresh [`Metrics`] of their own.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `{job, source}`: a queue source's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub job: String,
    pub source: String,
}

/// `{guard}`: a load guard's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub guard: String,
}

/// `{job}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: String,
}

/// `{job, outcome}`: how a run ended ([`Outcome`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub job: String,
    pub outcome: &'static str,
}

/// `{job, reason}`: a reason from a bounded set of words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub job: String,
    pub reason: String,
}

/// `{verb, code}` of a Kubernetes API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub code: String,
}

/// `{verb}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
}

/// `{op}`: a store operation, one of a fixed set of names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// How a run (one attempt) ended: the `outcome` label of `kedge_runs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The run succeeded.
    Succeeded,
    /// The attempt failed; another is scheduled.
    Failed,
    /// The attempt failed for the last time: dead-lettered.
    Dead,
    /// Cancelled (a `replace` overlap, a shutdown that gives up).
    Cancelled,
    /// Its message's deadline passed before it could launch: dead-lettered.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
            Outcome::Cancelled => "cancelled",
            Outcome::Expired => "expired",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn run_duration_buckets() -> Histogram {
    // 1 s … 18 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

fn latency_buckets() -> Histogram {
    // 5 ms … 22 min: a message launches in milliseconds, a cron fire
    // caught up after downtime minutes late.
    Histogram::new(exponential_buckets(0.005, 2.0, 19))
}

fn request_buckets() -> Histogram {
    // 1 ms … 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every family kedge exports.
pub struct Metrics {
    registry: Registry,
    source_up: Family<SourceLabels, Gauge>,
    messages_claimed: Family<SourceLabels, Counter>,
    messages_stored: Family<SourceLabels, Counter>,
    messages_duplicate: Family<SourceLabels, Counter>,
    messages_rejected: Family<SourceLabels, Counter>,
    source_reconnects: Family<SourceLabels, Counter>,
    source_backlog: Family<JobLabels, Gauge>,
    runs_at_risk: Counter,
    launch_failures: Family<ReasonLabels, Counter>,
    runs_stuck: Family<ReasonLabels, Gauge>,
    runs: Family<OutcomeLabels, Counter>,
    run_duration: HistogramFamily<JobLabels>,
    runs_active: Family<JobLabels, Gauge>,
    runs_pending: Family<JobLabels, Gauge>,
    run_retries: Family<JobLabels, Counter>,
    schedule_lateness: HistogramFamily<JobLabels>,
    message_to_launch: HistogramFamily<JobLabels>,
    deadline_slack: Family<JobLabels, Gauge<f64, AtomicU64>>,
    deadline_missed: Family<JobLabels, Counter>,
    launches: Family<JobLabels, Counter>,
    kubernetes_requests: Family<RequestLabels, Counter>,
    kubernetes_request_duration: HistogramFamily<VerbLabels>,
    leader: Gauge,
    watch_restarts: Counter,
    store_query_duration: HistogramFamily<OpLabels>,
    dead_letters: Family<JobLabels, Gauge>,
    config_reload_errors: Counter,
    config_last_reload_successful: Gauge,
    job_paused: Family<JobLabels, Gauge>,
    job_held: Family<JobLabels, Gauge>,
    job_iced: Family<JobLabels, Gauge>,
    guard_holding: Family<GuardLabels, Gauge>,
    guard_value: Family<GuardLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every family registered (and `kedge_build_info`).
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("kedge");
        let m = Metrics {
            registry: Registry::default(),
            source_up: Family::default(),
            messages_claimed: Family::default(),
            messages_stored: Family::default(),
            messages_duplicate: Family::default(),
            messages_rejected: Family::default(),
            source_reconnects: Family::default(),
            source_backlog: Family::default(),
            runs_at_risk: Counter::default(),
            launch_failures: Family::default(),
            runs_stuck: Family::default(),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(run_duration_buckets),
            runs_active: Family::default(),
            runs_pending: Family::default(),
            run_retries: Family::default(),
            schedule_lateness: Family::new_with_constructor(latency_buckets),
            message_to_launch: Family::new_with_constructor(latency_buckets),
            deadline_slack: Family::default(),
            deadline_missed: Family::default(),
            launches: Family::default(),
            kubernetes_requests: Family::default(),
            kubernetes_request_duration: Family::new_with_constructor(request_buckets),
            leader: Gauge::default(),
            watch_restarts: Counter::default(),
            store_query_duration: Family::new_with_constructor(request_buckets),
            dead_letters: Family::default(),
            config_reload_errors: Counter::default(),
            config_last_reload_successful: Gauge::default(),
            job_paused: Family::default(),
            job_held: Family::default(),
            job_iced: Family::default(),
            guard_holding: Family::default(),
            guard_value: Family::default(),
        };
        m.register_sources(&mut r);
        m.register_runs(&mut r);
        m.register_timing(&mut r);
        m.register_kubernetes(&mut r);
        m.register_store_and_build(&mut r);
        m.register_operator_states(&mut r);
        m.register_load_guards(&mut r);
        m.register_definitions(&mut r);
        Metrics { registry: r, ..m }
    }

    /// Registers the sources families.
    fn register_sources(&self, r: &mut Registry) {
        r.register(
            "source_up",
            "1 when the queue source is connected",
            self.source_up.clone(),
        );
        r.register(
            "messages_claimed",
            "Messages claimed from the source",
            self.messages_claimed.clone(),
        );
        r.register(
            "messages_stored",
            "Messages stored as new work items",
            self.messages_stored.clone(),
        );
        r.register(
            "messages_duplicate",
            "Redeliveries of messages already stored",
            self.messages_duplicate.clone(),
        );
        r.register(
            "messages_rejected",
            "Messages dead-lettered at intake (bad payload, expired)",
            self.messages_rejected.clone(),
        );
        r.register(
            "source_reconnects",
            "Times the source was lost and reconnected",
            self.source_reconnects.clone(),
        );
        r.register(
            "source_backlog",
            "Messages waiting in the broker, as it last told (LLEN, stream lag + pending, RabbitMQ messages ready, table rows)",
            self.source_backlog.clone(),
        );
    }

    /// Registers the runs families.
    fn register_runs(&self, r: &mut Registry) {
        r.register(
            "runs",
            "Runs (attempts) ended, by job and outcome (succeeded, failed, dead, cancelled, expired)",
            self.runs.clone(),
        );
        r.register(
            "run_duration_seconds",
            "How long runs took, launch to end",
            self.run_duration.clone(),
        );
        r.register(
            "runs_active",
            "Runs launched and not yet ended, from the store",
            self.runs_active.clone(),
        );
        r.register(
            "runs_pending",
            "Runs waiting to launch, from the store",
            self.runs_pending.clone(),
        );
        r.register(
            "run_retries",
            "Failed attempts retried",
            self.run_retries.clone(),
        );
        r.register(
            "runs_at_risk",
            "Runs that even the maximum parallelism cannot finish by their deadline",
            self.runs_at_risk.clone(),
        );
        r.register(
            "runs_stuck",
            "Runs none of whose pods has started, by job and reason",
            self.runs_stuck.clone(),
        );
    }

    /// Registers the timing families.
    fn register_timing(&self, r: &mut Registry) {
        r.register(
            "schedule_lateness_seconds",
            "Cron fire time to the run's launch",
            self.schedule_lateness.clone(),
        );
        r.register(
            "message_to_launch_seconds",
            "A message's arrival in kedge to its run's launch",
            self.message_to_launch.clone(),
        );
        r.register(
            "deadline_slack_seconds",
            "The last ended run's deadline minus its end; negative means missed",
            self.deadline_slack.clone(),
        );
        r.register(
            "deadline_missed",
            "Runs that ended (or expired) after their deadline",
            self.deadline_missed.clone(),
        );
    }

    /// Registers the kubernetes (and the local executor's launches) families.
    fn register_kubernetes(&self, r: &mut Registry) {
        r.register("launches", "Runs launched", self.launches.clone());
        r.register(
            "launch_failures",
            "Launches that failed, by job and reason (rejected, transient, launch_timeout)",
            self.launch_failures.clone(),
        );
        r.register(
            "kubernetes_requests",
            "Requests to the Kubernetes API server, by verb and HTTP status code (error: no response)",
            self.kubernetes_requests.clone(),
        );
        r.register(
            "kubernetes_request_duration_seconds",
            "Kubernetes API request time to the response's headers, by verb",
            self.kubernetes_request_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        r.register(
            "watch_restarts",
            "Times a Kubernetes watch failed and was started again",
            self.watch_restarts.clone(),
        );
    }

    /// Registers the store and build families.
    fn register_store_and_build(&self, r: &mut Registry) {
        r.register(
            "store_query_duration_seconds",
            "State store operations' time, by operation",
            self.store_query_duration.clone(),
        );
        r.register(
            "dead_letters",
            "Open (not replayed) dead letters, from the store",
            self.dead_letters.clone(),
        );
    }

    /// Registers the operator states families.
    fn register_operator_states(&self, r: &mut Registry) {
        r.register(
            "job_paused",
            "1 when an operator paused the job (kedge pause)",
            self.job_paused.clone(),
        );
        r.register(
            "job_held",
            "1 when the job is on hold (kedge hold)",
            self.job_held.clone(),
        );
        r.register(
            "job_iced",
            "1 when the job is on ice (kedge ice)",
            self.job_iced.clone(),
        );
    }

    /// Registers the load guards families.
    fn register_load_guards(&self, r: &mut Registry) {
        r.register(
            "guard_holding",
            "1 while the load guard holds or throttles its jobs (or its probe fails with on_probe_failure: hold)",
            self.guard_holding.clone(),
        );
        r.register(
            "guard_value",
            "The load guard's last measured value (NaN before the first measurement)",
            self.guard_value.clone(),
        );
    }

    /// Registers the definitions (hot reload) families.
    fn register_definitions(&self, r: &mut Registry) {
        r.register(
            "config_reload_errors",
            "Reloads of the job or config files that found a problem (the last good versions stayed in force)",
            self.config_reload_errors.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last read of the job and config files found no problem",
            self.config_last_reload_successful.clone(),
        );
        r.register(
            "build",
            "kedge's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
    }

    /// The OpenMetrics text of every family ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Replaces the operator-state gauges with `states` (every loaded job):
/// `kedge_job_paused`, `kedge_job_held`, `kedge_job_iced`, 1 for the
/// job's state, else 0.
pub fn set_job_states<'a>(
    states: impl Iterator<Item = (&'a str, crate::lifecycle::OperatorState)>,
) {
    use crate::lifecycle::OperatorState;
    let m = global();
    for family in [&m.job_paused, &m.job_held, &m.job_iced] {
        family.clear();
    }
    for (name, state) in states {
        let l = job(name);
        m.job_paused
            .get_or_create(&l)
            .set(i64::from(state == OperatorState::Paused));
        m.job_held
            .get_or_create(&l)
            .set(i64::from(state == OperatorState::Held));
        m.job_iced
            .get_or_create(&l)
            .set(i64::from(state == OperatorState::Iced));
    }
}

/// Load guard `name`'s gauges: whether it holds, and its last value
/// (NaN before the first measurement).
pub fn set_guard(name: &str, holding: bool, value: Option<f64>) {
    let m = global();
    let l = GuardLabels {
        guard: name.to_string(),
    };
    m.guard_holding.get_or_create(&l).set(i64::from(holding));
    m.guard_value
        .get_or_create(&l)
        .set(value.unwrap_or(f64::NAN));
}

/// The job and config files were read (at start: `reload` false) and
/// found clean (`ok`) or not; a reload with a problem is counted.
pub fn definitions_read(ok: bool, reload: bool) {
    let m = global();
    m.config_last_reload_successful.set(i64::from(ok));
    if reload && !ok {
        m.config_reload_errors.inc();
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// The process's metrics as OpenMetrics text.
pub fn render() -> String {
    global().render()
}

fn job(job: &str) -> JobLabels {
    JobLabels {
        job: job.to_string(),
    }
}

fn source(job: &str, source: &str) -> SourceLabels {
    SourceLabels {
        job: job.to_string(),
        source: source.to_string(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Launch failure reasons (`kedge_launch_failures_total{reason}`).
pub const LAUNCH_FAILURE_REASONS: [&str; 3] = ["rejected", "transient", "launch_timeout"];

/// Starts every loaded job's counters at 0, so a job's series exist
/// before its first event: `increase()` and `rate()` then see the first
/// failure or missed deadline too (a series born at 1 reads as no change).
pub fn register_jobs<'a>(jobs: impl IntoIterator<Item = &'a str>) {
    let m = global();
    for name in jobs {
        let l = job(name);
        for outcome in [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::Dead,
            Outcome::Cancelled,
            Outcome::Expired,
        ] {
            let _ = m.runs.get_or_create(&OutcomeLabels {
                job: name.to_string(),
                outcome: outcome.as_str(),
            });
        }
        for reason in LAUNCH_FAILURE_REASONS {
            let _ = m.launch_failures.get_or_create(&ReasonLabels {
                job: name.to_string(),
                reason: reason.to_string(),
            });
        }
        let _ = m.run_retries.get_or_create(&l);
        let _ = m.launches.get_or_create(&l);
        let _ = m.deadline_missed.get_or_create(&l);
    }
}

// ----- sources (intake, through `health::Health`) ----------------------------

/// A source registered, not yet connected: its series start (at 0).
pub fn source_registered(job: &str, src: &str) {
    source_up(job, src, false);
    messages(job, src, 0, 0, 0, 0);
    let _ = global().source_reconnects.get_or_create(&source(job, src));
}

/// `kedge_source_up`.
pub fn source_up(job: &str, src: &str, up: bool) {
    global()
        .source_up
        .get_or_create(&source(job, src))
        .set(i64::from(up));
}

/// Adds to a source's message counters.
pub fn messages(job: &str, src: &str, claimed: u64, stored: u64, duplicates: u64, rejected: u64) {
    let m = global();
    let l = source(job, src);
    m.messages_claimed.get_or_create(&l).inc_by(claimed);
    m.messages_stored.get_or_create(&l).inc_by(stored);
    m.messages_duplicate.get_or_create(&l).inc_by(duplicates);
    m.messages_rejected.get_or_create(&l).inc_by(rejected);
}

/// A source lost and reconnecting.
pub fn source_reconnect(job: &str, src: &str) {
    global()
        .source_reconnects
        .get_or_create(&source(job, src))
        .inc();
}

/// The broker's count of messages waiting for `job` (a failed poll is not
/// reported: the last value stays).
pub fn source_backlog(job_name: &str, waiting: u64) {
    global()
        .source_backlog
        .get_or_create(&job(job_name))
        .set(waiting.min(i64::MAX as u64) as i64);
}

// ----- runs (dispatcher, finalizer) ------------------------------------------

/// A run flagged at risk (sizing).
pub fn run_at_risk() {
    global().runs_at_risk.inc();
}

/// One failed launch of `job` for `reason` (a bounded set of words, never
/// a message or a run id).
pub fn launch_failure(job: &str, reason: &str) {
    global()
        .launch_failures
        .get_or_create(&ReasonLabels {
            job: job.to_string(),
            reason: reason.to_string(),
        })
        .inc();
}

/// Replaces the stuck-run counts (`kedge_runs_stuck{job,reason}`), a
/// gauge replaced whole after every look.
pub fn set_runs_stuck(counts: &BTreeMap<(String, String), u64>) {
    let f = &global().runs_stuck;
    f.clear();
    for ((job, reason), n) in counts {
        f.get_or_create(&ReasonLabels {
            job: job.clone(),
            reason: reason.clone(),
        })
        .set(*n as i64);
    }
}

/// Which wait a launch ended: a cron fire's or a message's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// Fire time → launch (`kedge_schedule_lateness_seconds`).
    SinceFire(Duration),
    /// Arrival → launch (`kedge_message_to_launch_seconds`).
    SinceMessage(Duration),
    /// A retry or a manual run: no wait to report.
    Nothing,
}

/// A run of `job` launched, after `waited`.
pub fn run_launched(job_name: &str, waited: Waited) {
    let m = global();
    let l = job(job_name);
    m.launches.get_or_create(&l).inc();
    match waited {
        Waited::SinceFire(d) => m.schedule_lateness.get_or_create(&l).observe(secs(d)),
        Waited::SinceMessage(d) => m.message_to_launch.get_or_create(&l).observe(secs(d)),
        Waited::Nothing => {}
    }
}

/// A run of `job` ended as `outcome`, having run for `ran` (when it
/// launched at all).
pub fn run_ended(job_name: &str, outcome: Outcome, ran: Option<Duration>) {
    let m = global();
    m.runs
        .get_or_create(&OutcomeLabels {
            job: job_name.to_string(),
            outcome: outcome.as_str(),
        })
        .inc();
    let l = job(job_name);
    if outcome == Outcome::Failed {
        m.run_retries.get_or_create(&l).inc();
    }
    if let Some(d) = ran {
        m.run_duration.get_or_create(&l).observe(secs(d));
    }
}

/// A run of `job` with a deadline ended (or expired) `slack_ms` before it
/// (negative: after it, a missed deadline).
pub fn deadline_slack(job_name: &str, slack_ms: i64) {
    let m = global();
    let l = job(job_name);
    m.deadline_slack
        .get_or_create(&l)
        .set(slack_ms as f64 / 1000.0);
    if slack_ms < 0 {
        m.deadline_missed.get_or_create(&l).inc();
    }
}

/// The store's view of every job, read on an interval (right after a
/// restart too): runs active and pending, open dead letters. Jobs absent
/// from a map read 0; `jobs` are the loaded jobs, shown even at 0.
pub fn set_store_counts(
    jobs: &[String],
    active: &BTreeMap<String, i64>,
    pending: &BTreeMap<String, i64>,
    dead: &BTreeMap<String, i64>,
) {
    let m = global();
    for (family, counts) in [
        (&m.runs_active, active),
        (&m.runs_pending, pending),
        (&m.dead_letters, dead),
    ] {
        family.clear();
        for name in jobs.iter().chain(counts.keys()) {
            family
                .get_or_create(&job(name))
                .set(counts.get(name).copied().unwrap_or(0));
        }
    }
}

// ----- Kubernetes ----------------------------------------------------------------

/// One request to the API server: its verb, status code (`None`: no
/// response) and time to the response's headers.
pub fn kubernetes_request(verb: &'static str, code: Option<u16>, took: Duration) {
    let m = global();
    m.kubernetes_requests
        .get_or_create(&RequestLabels {
            verb,
            code: code.map_or_else(|| "error".to_string(), |c| c.to_string()),
        })
        .inc();
    m.kubernetes_request_duration
        .get_or_create(&VerbLabels { verb })
        .observe(secs(took));
}

/// This replica holds (or no longer holds) the leader Lease.
pub fn set_leader(leading: bool) {
    global().leader.set(i64::from(leading));
}

/// A watch failed and is started again.
pub fn watch_restart() {
    global().watch_restarts.inc();
}

// ----- store -----------------------------------------------------------------------

/// Times a store operation: records `kedge_store_query_duration_seconds{op}`
/// when dropped (at the end of the operation, however it ended).
#[must_use = "the timer records when dropped"]
pub struct StoreTimer {
    op: &'static str,
    start: std::time::Instant,
}

/// Starts timing store operation `op` (one of the store's fixed names).
pub fn store_timer(op: &'static str) -> StoreTimer {
    StoreTimer {
        op,
        // A measurement, not a scheduling decision: the monotonic clock.
        start: std::time::Instant::now(),
    }
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        global()
            .store_query_duration
            .get_or_create(&OpLabels { op: self.op })
            .observe(secs(self.start.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text` as (name, labels, value).
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("name value");
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                (name.to_string(), labels.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
        samples(text)
            .into_iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| v)
    }

    #[test]
    fn a_fresh_registry_renders_build_info_and_unlabelled_families() {
        let text = Metrics::new().render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert_eq!(value(&text, "kedge_build_info", &version), Some(1.0));
        assert_eq!(value(&text, "kedge_leader", ""), Some(0.0));
        assert_eq!(value(&text, "kedge_runs_at_risk_total", ""), Some(0.0));
        assert_eq!(value(&text, "kedge_watch_restarts_total", ""), Some(0.0));
        // A family shows once it has a series (see `register_jobs`).
        assert!(!text.contains("kedge_runs_total"), "{text}");
        assert!(text.contains("# TYPE kedge_build info\n"), "{text}");
    }

    #[test]
    fn recorded_runs_render_as_counters_and_histograms_with_their_labels() {
        // The global registry is shared by the unit tests: a job name of
        // this test's own.
        let j = "metrics-unit-runs";
        run_launched(j, Waited::SinceFire(Duration::from_millis(1500)));
        run_launched(j, Waited::SinceMessage(Duration::from_millis(20)));
        run_launched(j, Waited::Nothing);
        run_ended(j, Outcome::Succeeded, Some(Duration::from_secs(3)));
        run_ended(j, Outcome::Failed, Some(Duration::from_secs(1)));
        run_ended(j, Outcome::Dead, None);
        deadline_slack(j, -2500);
        launch_failure(j, "transient");
        let text = render();
        let job = format!("job=\"{j}\"");
        assert_eq!(value(&text, "kedge_launches_total", &job), Some(3.0));
        for (outcome, n) in [("succeeded", 1.0), ("failed", 1.0), ("dead", 1.0)] {
            let labels = format!("{job},outcome=\"{outcome}\"");
            assert_eq!(value(&text, "kedge_runs_total", &labels), Some(n), "{text}");
        }
        assert_eq!(value(&text, "kedge_run_retries_total", &job), Some(1.0));
        assert_eq!(
            value(&text, "kedge_run_duration_seconds_count", &job),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "kedge_run_duration_seconds_sum", &job),
            Some(4.0)
        );
        // 1.5 s late: not in the bucket ending at 1.28 s, in the one at 2.56 s.
        let bucket = |le: &str| {
            value(
                &text,
                "kedge_schedule_lateness_seconds_bucket",
                &format!("le=\"{le}\",{job}"),
            )
        };
        assert_eq!(bucket("1.28"), Some(0.0), "{text}");
        assert_eq!(bucket("2.56"), Some(1.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(1.0));
        assert_eq!(
            value(&text, "kedge_message_to_launch_seconds_count", &job),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "kedge_deadline_slack_seconds", &job),
            Some(-2.5)
        );
        assert_eq!(value(&text, "kedge_deadline_missed_total", &job), Some(1.0));
        assert_eq!(
            value(
                &text,
                "kedge_launch_failures_total",
                &format!("{job},reason=\"transient\"")
            ),
            Some(1.0)
        );
    }

    #[test]
    fn store_counts_replace_the_last_and_show_loaded_jobs_at_zero() {
        let (a, b) = ("metrics-unit-a", "metrics-unit-b");
        let loaded = vec![a.to_string(), b.to_string()];
        let counts = BTreeMap::from([(a.to_string(), 2)]);
        set_store_counts(&loaded, &counts, &counts, &counts);
        let text = render();
        for name in [
            "kedge_runs_active",
            "kedge_runs_pending",
            "kedge_dead_letters",
        ] {
            assert_eq!(value(&text, name, &format!("job=\"{a}\"")), Some(2.0));
            assert_eq!(value(&text, name, &format!("job=\"{b}\"")), Some(0.0));
        }
        set_store_counts(
            &loaded,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let text = render();
        assert_eq!(
            value(&text, "kedge_runs_active", &format!("job=\"{a}\"")),
            Some(0.0)
        );
    }

    #[test]
    fn kubernetes_requests_count_by_verb_and_code() {
        kubernetes_request("deletecollection", Some(409), Duration::from_millis(3));
        kubernetes_request("deletecollection", None, Duration::from_millis(3));
        let text = render();
        assert_eq!(
            value(
                &text,
                "kedge_kubernetes_requests_total",
                "verb=\"deletecollection\",code=\"409\""
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "kedge_kubernetes_requests_total",
                "verb=\"deletecollection\",code=\"error\""
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "kedge_kubernetes_request_duration_seconds_count",
                "verb=\"deletecollection\""
            ),
            Some(2.0)
        );
    }

    #[test]
    fn registered_jobs_start_their_counters_at_zero() {
        let j = "metrics-unit-registered";
        register_jobs([j]);
        let text = render();
        let job = format!("job=\"{j}\"");
        for outcome in ["succeeded", "failed", "dead", "cancelled", "expired"] {
            let labels = format!("{job},outcome=\"{outcome}\"");
            assert_eq!(value(&text, "kedge_runs_total", &labels), Some(0.0));
        }
        for name in [
            "kedge_launches_total",
            "kedge_run_retries_total",
            "kedge_deadline_missed_total",
        ] {
            assert_eq!(value(&text, name, &job), Some(0.0), "{name}");
        }
        let labels = format!("{job},reason=\"launch_timeout\"");
        assert_eq!(
            value(&text, "kedge_launch_failures_total", &labels),
            Some(0.0)
        );
    }

    #[test]
    fn store_timers_record_per_operation() {
        drop(store_timer("unit_test_op"));
        let text = render();
        assert_eq!(
            value(
                &text,
                "kedge_store_query_duration_seconds_count",
                "op=\"unit_test_op\""
            ),
            Some(1.0)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let j = "metrics-unit \"quoted\"\\";
        launch_failure(j, "rejected");
        let text = render();
        assert!(
            text.contains(r#"job="metrics-unit \"quoted\"\\",reason="rejected"} 1"#),
            "{text}"
        );
    }
}
