//! The daemon's own configuration (`config/kedge.yaml`).

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::FieldPath;
use super::diagnostic::{parse_duration, Problem};
use super::yaml::DurationText;
use super::yaml::{duration_text, string_enum};

/// The configuration kedge uses when no `--config` is given and
/// `config/kedge.yaml` does not exist: local executor, SQLite under `.kedge/`,
/// jobs from `jobs/`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/kedge.yaml");

/// The kedge daemon configuration (`config/kedge.yaml`, or `--config`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(
    expecting = "a mapping with jobs_dir, calendars_dir, store, executor, limits, pools, guards, http, retention, telemetry, log_format or shutdown_timeout"
)]
#[schemars(deny_unknown_fields, rename = "DaemonConfig")]
pub struct RawDaemon {
    /// Where job definitions (`*.yaml`, `*.yml`) are read from [default: `jobs`].
    /// `--jobs` and `KEDGE_JOBS` override it.
    pub jobs_dir: Option<String>,
    /// Where business calendars (`*.yaml`, `*.yml`, one calendar each) are
    /// read from [default: `calendars`; none when it does not exist].
    /// `--calendars` and `KEDGE_CALENDARS` override it.
    pub calendars_dir: Option<String>,
    /// The state store.
    #[serde(default)]
    pub store: RawStore,
    /// Which executor launches runs, and its settings.
    #[serde(default)]
    pub executor: RawExecutor,
    /// Limits across all jobs.
    #[serde(default)]
    pub limits: RawGlobalLimits,
    /// How log lines are written [default: `pretty`].
    pub log_format: Option<LogFormat>,
    /// Named pools shared across jobs: name → slots (running runs at once).
    /// A job joins one with `limits.pool`.
    #[serde(default)]
    pub pools: std::collections::BTreeMap<String, u32>,
    /// How long a graceful shutdown waits for running processes to stop [default: 30s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub shutdown_timeout: Option<String>,
    /// The HTTP endpoint: /healthz, /readyz and /metrics.
    #[serde(default)]
    pub http: RawHttp,
    /// How long finished history and payloads are kept in the store.
    #[serde(default)]
    pub retention: RawRetention,
    /// Load guards shared by jobs: a job names one in its own `guards:`.
    #[serde(default)]
    pub guards: Vec<super::guard::RawGuard>,
    /// OpenTelemetry traces of each message's way (off unless
    /// `telemetry.otlp.endpoint` is set).
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

/// OpenTelemetry: traces exported over OTLP/HTTP when an endpoint is set.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with otlp")]
#[schemars(deny_unknown_fields, rename = "Telemetry")]
pub struct RawTelemetry {
    /// Where traces go; unset: no traces.
    pub otlp: Option<RawOtlp>,
}

/// An OTLP/HTTP (JSON) trace receiver, e.g. an OpenTelemetry Collector.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with endpoint and service_name")]
#[schemars(deny_unknown_fields, rename = "Otlp")]
pub struct RawOtlp {
    /// The receiver's base URL, `http://collector:4318`; spans are POSTed
    /// to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the spans [default: `kedge`].
    pub service_name: Option<String>,
}

/// Where traces are exported ([`crate::telemetry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
}

/// How long finished history and payloads are kept; pruning runs in small
/// transactions every `interval`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with history, payloads and interval")]
#[schemars(deny_unknown_fields, rename = "Retention")]
pub struct RawRetention {
    /// Finished work items with their runs, fires and dead letters
    /// (replayed or forwarded ones) are deleted after this; it is also the
    /// dedup window [default: 30d].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub history: Option<String>,
    /// Payloads of succeeded work are cleared after this [default: 7d].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub payloads: Option<String>,
    /// How often pruning runs [default: 10m].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<String>,
}

/// The HTTP endpoint: /healthz, /readyz and /metrics (Prometheus).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with listen")]
#[schemars(deny_unknown_fields, rename = "Http")]
pub struct RawHttp {
    /// `HOST:PORT` for /healthz, /readyz and /metrics; port 0 picks a free one.
    pub listen: Option<String>,
}

/// The state store: SQLite (one file, the embedded default) or PostgreSQL
/// (shared by replicas). Set `url` or `url_env`, not both.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with url or url_env, and poll_interval")]
#[schemars(deny_unknown_fields, rename = "Store")]
pub struct RawStore {
    /// `sqlite://PATH` (created if missing), `sqlite::memory:`, or
    /// `postgres://USER@HOST/DB` [default: `sqlite://.kedge/kedge.db`].
    pub url: Option<String>,
    /// The name of an environment variable holding the URL (keeps a
    /// password out of the file).
    pub url_env: Option<String>,
    /// How often the store is checked for work other processes wrote; they
    /// also wake the daemon at once, so this is the backstop [default: 1s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub poll_interval: Option<String>,
}

/// Which executor launches runs, and the settings of each.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with kind, local and kubernetes")]
#[schemars(deny_unknown_fields, rename = "Executor")]
pub struct RawExecutor {
    /// [default: `local`]
    pub kind: Option<ExecutorKind>,
    /// Settings of the local executor (used when `kind: local`).
    #[serde(default)]
    pub local: RawLocal,
    /// Settings of the Kubernetes executor (checked whichever `kind` is chosen).
    #[serde(default)]
    pub kubernetes: RawKubernetes,
}

/// Settings of the Kubernetes executor.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(
    expecting = "a mapping with kubeconfig, context, namespace, api_qps, api_burst, request_timeout, launch_timeout, successful_jobs_history_limit, failed_jobs_history_limit, ttl_seconds_after_finished or lease"
)]
#[schemars(deny_unknown_fields, rename = "KubernetesExecutor")]
pub struct RawKubernetes {
    /// A kubeconfig file. Unset: `KUBECONFIG`, `~/.kube/config`, then the
    /// pod's service account (in-cluster).
    pub kubeconfig: Option<String>,
    /// The kubeconfig context [default: its current-context].
    pub context: Option<String>,
    /// Where Jobs, payload ConfigMaps and the Lease live [default: the
    /// context's namespace, or the pod's own namespace in-cluster].
    pub namespace: Option<String>,
    /// Client-side limit on API writes, sustained per second [default: 50].
    pub api_qps: Option<u32>,
    /// Client-side limit on API writes, burst [default: 100].
    pub api_burst: Option<u32>,
    /// One API write with no answer in this time is abandoned and retried [default: 30s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub request_timeout: Option<String>,
    /// How long a run's Job create may keep failing transiently (no answer,
    /// 429, 5xx, a quota) before the attempt fails as `launch_timeout` [default: 10m].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub launch_timeout: Option<String>,
    /// Succeeded Jobs kept per job, as a CronJob keeps them [default: 3].
    pub successful_jobs_history_limit: Option<u32>,
    /// Failed Jobs kept per job [default: 1].
    pub failed_jobs_history_limit: Option<u32>,
    /// `ttlSecondsAfterFinished` for templates that set none [default: 86400].
    pub ttl_seconds_after_finished: Option<u32>,
    /// The `coordination.k8s.io/v1` Lease that elects the one launching replica.
    #[serde(default)]
    pub lease: RawLease,
}

/// The Lease that elects the one launching replica.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with name, duration or identity")]
#[schemars(deny_unknown_fields, rename = "Lease")]
pub struct RawLease {
    /// [default: `kedge`]
    pub name: Option<String>,
    /// A follower takes over within this long after the leader dies; at
    /// least 2s [default: 15s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub duration: Option<String>,
    /// This replica's identity in the Lease [default: host name and pid].
    pub identity: Option<String>,
}

/// Settings of the local executor.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with work_dir, pod_backoff or pod_backoff_max")]
#[schemars(deny_unknown_fields, rename = "LocalExecutor")]
pub struct RawLocal {
    /// Per-run folders with each container's output and payload file
    /// [default: `.kedge/runs`].
    pub work_dir: Option<String>,
    /// Delay before a failed pod is replaced, doubling up to
    /// `pod_backoff_max` [default: 10s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub pod_backoff: Option<String>,
    /// [default: 6m]
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub pod_backoff_max: Option<String>,
}

/// Limits across all jobs.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with max_active_runs")]
#[schemars(deny_unknown_fields, rename = "GlobalLimits")]
pub struct RawGlobalLimits {
    /// Runs launched at once across all jobs; at least 1 [default: no cap].
    #[schemars(range(min = 1))]
    pub max_active_runs: Option<u32>,
}

/// Which executor launches runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Child processes on this machine (the embedded default).
    Local,
    /// Kubernetes Jobs, through the API server.
    Kubernetes,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

string_enum!(ExecutorKind {
    Local => "local",
    Kubernetes => "kubernetes",
});
string_enum!(LogFormat {
    Pretty => "pretty",
    Json => "json",
});

/// The validated daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub jobs_dir: PathBuf,
    pub calendars_dir: PathBuf,
    /// The calendars read from `calendars_dir` (by [`super::load_daemon`];
    /// none in a config made by [`validate`] alone), with their problems.
    pub calendars: std::sync::Arc<super::calendar::Calendars>,
    /// The store URL. May hold a password: never log it, use [`crate::redact::redact`].
    pub store_url: String,
    /// How often the store is checked for work written by other processes
    /// (`kedge enqueue`, `kedge trigger`, another replica). Those writers
    /// also wake the daemon at once (`store::signal`); this is the backstop.
    pub poll_interval: Duration,
    pub executor: ExecutorConfig,
    /// Runs launched at once across all jobs. `None`: no global cap.
    pub max_active_runs: Option<u32>,
    pub log_format: LogFormat,
    /// Named pools: name → slots. A job joins one with `limits.pool`; each
    /// running run of the pool's jobs takes one slot.
    pub pools: std::collections::BTreeMap<String, u32>,
    /// How long a graceful shutdown waits for running processes to stop.
    pub shutdown_timeout: Duration,
    /// Where /healthz, /readyz and /metrics are served. `None`: not served.
    pub http_listen: Option<std::net::SocketAddr>,
    /// How long finished history and payloads are kept ([`crate::retention`]).
    pub retention: RetentionConfig,
    /// Where OpenTelemetry traces go; `None`: no traces.
    pub telemetry: Option<OtlpConfig>,
    /// Load guards shared by name ([`super::guard`]).
    pub guards: super::guard::SharedGuards,
}

/// `retention`: how long finished history and payloads are kept, and how
/// often the daemon prunes ([`crate::retention`] has the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Finished work items, their runs, batch members and cron fires, and
    /// closed (replayed or forwarded) dead letters are deleted this long
    /// after they finished or closed; local run folders go with their runs.
    /// Also the window in which a redelivered message is recognised as a
    /// duplicate.
    pub history: Duration,
    /// Payloads of succeeded work items (and of replayed dead letters) are
    /// cleared this long after they finished. At most `history`.
    pub payloads: Duration,
    /// How often the daemon runs a pruning pass.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            history: Duration::from_secs(30 * 86_400),
            payloads: Duration::from_secs(7 * 86_400),
            interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ExecutorConfig {
    Local(LocalConfig),
    Kubernetes(KubernetesConfig),
}

/// How long a run may keep failing to launch for reasons that may pass (the
/// API server unreachable, 429, 5xx) before the attempt fails.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(600);

impl ExecutorConfig {
    pub fn kind(&self) -> ExecutorKind {
        match self {
            ExecutorConfig::Local(_) => ExecutorKind::Local,
            ExecutorConfig::Kubernetes(_) => ExecutorKind::Kubernetes,
        }
    }

    /// How long launches of one attempt may fail transiently before it
    /// fails as `launch_timeout` (`executor.kubernetes.launch_timeout`;
    /// [`LAUNCH_TIMEOUT`] for the local executor).
    pub fn launch_timeout(&self) -> Duration {
        match self {
            ExecutorConfig::Local(_) => LAUNCH_TIMEOUT,
            ExecutorConfig::Kubernetes(k) => k.launch_timeout,
        }
    }
}

/// Settings of the Kubernetes executor.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// A kubeconfig file. `None`: kube-rs's usual order — `KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: its current-context].
    pub context: Option<String>,
    /// Where Jobs are created [default: the context's namespace, else `default`].
    pub namespace: Option<String>,
    /// Client-side limit on API writes: sustained per second, and burst.
    pub api_qps: u32,
    pub api_burst: u32,
    /// How long one API write may take before it is abandoned (and retried:
    /// creates are idempotent by name).
    pub request_timeout: Duration,
    /// How long a run's Job create may keep failing transiently (no answer,
    /// 429, 5xx, a quota) before the attempt fails as `launch_timeout`.
    pub launch_timeout: Duration,
    /// Finished Jobs kept per job, as a CronJob's history limits.
    pub successful_jobs_history_limit: u32,
    pub failed_jobs_history_limit: u32,
    /// `ttlSecondsAfterFinished` for templates that set none: a backstop
    /// that removes finished Jobs even if kedge never gets to.
    pub ttl_seconds_after_finished: u32,
    /// The `coordination.k8s.io/v1` Lease that elects the one launching replica.
    pub lease_name: String,
    pub lease_duration: Duration,
    /// This replica's identity in the Lease [default: host name and pid].
    pub identity: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            context: None,
            namespace: None,
            api_qps: 50,
            api_burst: 100,
            request_timeout: Duration::from_secs(30),
            launch_timeout: LAUNCH_TIMEOUT,
            successful_jobs_history_limit: 3,
            failed_jobs_history_limit: 1,
            ttl_seconds_after_finished: 86_400,
            lease_name: "kedge".into(),
            lease_duration: Duration::from_secs(15),
            identity: None,
        }
    }
}

/// Settings of the local executor.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Per-run folders with each container's stdout/stderr and payload file.
    pub work_dir: PathBuf,
    /// Delay before a failed pod is replaced, doubling up to `pod_backoff_max`
    /// (Kubernetes uses 10 s doubling up to 6 min).
    pub pod_backoff: Duration,
    pub pod_backoff_max: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            work_dir: PathBuf::from(".kedge/runs"),
            pod_backoff: Duration::from_secs(10),
            pod_backoff_max: Duration::from_secs(360),
        }
    }
}

/// Validates a parsed daemon config.
pub fn validate(
    raw: RawDaemon,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DaemonConfig, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let durations = Durations::validate(&raw, &mut problems);
    let store_url = validate_store_url(&raw.store, env, &mut problems);
    if raw.limits.max_active_runs == Some(0) {
        problems.push((
            FieldPath::root().key("limits").key("max_active_runs"),
            "must be at least 1 (0 would never run anything)".into(),
        ));
    }
    check_kubernetes(&raw.executor.kubernetes, &durations, &mut problems);
    let executor = executor_config(&raw.executor, &durations);
    check_pools(&raw.pools, &mut problems);
    let http_listen = validate_http_listen(&raw.http, &mut problems);
    check_retention(&durations.retention, &mut problems);
    let telemetry = validate_otlp(&raw.telemetry, &mut problems);
    let guards = super::guard::validate_shared(&raw.guards, env, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(DaemonConfig {
        http_listen,
        pools: raw.pools.clone(),
        jobs_dir: PathBuf::from(raw.jobs_dir.unwrap_or_else(|| "jobs".into())),
        calendars_dir: PathBuf::from(raw.calendars_dir.unwrap_or_else(|| "calendars".into())),
        calendars: Default::default(),
        store_url,
        poll_interval: durations.poll_interval,
        executor,
        max_active_runs: raw.limits.max_active_runs,
        log_format: raw.log_format.unwrap_or_default(),
        shutdown_timeout: durations.shutdown_timeout,
        retention: durations.retention,
        guards,
        telemetry,
    })
}

fn validate_otlp(t: &RawTelemetry, problems: &mut Vec<Problem>) -> Option<OtlpConfig> {
    let otlp = t.otlp.as_ref()?;
    let endpoint = otlp.endpoint.trim().trim_end_matches('/').to_string();
    let ok = reqwest::Url::parse(&endpoint)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        problems.push((
            FieldPath::root()
                .key("telemetry")
                .key("otlp")
                .key("endpoint"),
            format!(
                "\"{}\" is not an http(s) URL (for example http://otel-collector:4318)",
                otlp.endpoint
            ),
        ));
        return None;
    }
    Some(OtlpConfig {
        endpoint,
        service_name: otlp.service_name.clone().unwrap_or_else(|| "kedge".into()),
    })
}

/// Every duration in the daemon config, each its default when unset or
/// wrong (a wrong one is a problem).
struct Durations {
    poll_interval: Duration,
    pod_backoff: Duration,
    pod_backoff_max: Duration,
    shutdown_timeout: Duration,
    request_timeout: Duration,
    launch_timeout: Duration,
    lease_duration: Duration,
    retention: RetentionConfig,
}

impl Durations {
    /// Parses them in the order problems are reported.
    fn validate(raw: &RawDaemon, problems: &mut Vec<Problem>) -> Durations {
        let root = FieldPath::root();
        let lp = root.key("executor").key("local");
        let kp = root.key("executor").key("kubernetes");
        let local = LocalConfig::default();
        let kubernetes = KubernetesConfig::default();
        let rp = root.key("retention");
        let retention = RetentionConfig::default();
        let rk = &raw.executor.kubernetes;
        let mut duration = |field: FieldPath, v: &Option<String>, default: Duration| match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                problems.push((field, e));
                default
            }),
        };
        // Struct fields are evaluated in the order written.
        Durations {
            poll_interval: duration(
                root.key("store").key("poll_interval"),
                &raw.store.poll_interval,
                Duration::from_secs(1),
            ),
            pod_backoff: duration(
                lp.key("pod_backoff"),
                &raw.executor.local.pod_backoff,
                local.pod_backoff,
            ),
            pod_backoff_max: duration(
                lp.key("pod_backoff_max"),
                &raw.executor.local.pod_backoff_max,
                local.pod_backoff_max,
            ),
            shutdown_timeout: duration(
                root.key("shutdown_timeout"),
                &raw.shutdown_timeout,
                Duration::from_secs(30),
            ),
            request_timeout: duration(
                kp.key("request_timeout"),
                &rk.request_timeout,
                kubernetes.request_timeout,
            ),
            launch_timeout: duration(
                kp.key("launch_timeout"),
                &rk.launch_timeout,
                kubernetes.launch_timeout,
            ),
            lease_duration: duration(
                kp.key("lease").key("duration"),
                &rk.lease.duration,
                kubernetes.lease_duration,
            ),
            retention: RetentionConfig {
                history: duration(rp.key("history"), &raw.retention.history, retention.history),
                payloads: duration(
                    rp.key("payloads"),
                    &raw.retention.payloads,
                    retention.payloads,
                ),
                interval: duration(
                    rp.key("interval"),
                    &raw.retention.interval,
                    retention.interval,
                ),
            },
        }
    }
}

/// `store`: `url`, `url_env` (read now), or the SQLite file under `.kedge/`.
fn validate_store_url(
    store: &RawStore,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> String {
    let sp = FieldPath::root().key("store");
    match (&store.url, &store.url_env) {
        (Some(_), Some(_)) => {
            problems.push((sp, "set either `url` or `url_env`, not both".into()));
            String::new()
        }
        (Some(u), None) => u.clone(),
        (None, Some(name)) => env(name).unwrap_or_else(|| {
            problems.push((
                sp.key("url_env"),
                format!("environment variable {name} is not set"),
            ));
            String::new()
        }),
        (None, None) => "sqlite://.kedge/kedge.db".to_string(),
    }
}

/// `executor.kubernetes`: a lease long enough to renew, API rates of at
/// least 1, valid namespace and Lease names. Checked whichever executor
/// is chosen.
fn check_kubernetes(rk: &RawKubernetes, durations: &Durations, problems: &mut Vec<Problem>) {
    let kp = FieldPath::root().key("executor").key("kubernetes");
    if durations.lease_duration < Duration::from_secs(2) {
        problems.push((
            kp.key("lease").key("duration"),
            "must be at least 2s (the leader renews every seventh of it and steps down after two thirds without a renewal)".into(),
        ));
    }
    for (field, v) in [("api_qps", rk.api_qps), ("api_burst", rk.api_burst)] {
        if v == Some(0) {
            problems.push((kp.key(field), "must be at least 1".into()));
        }
    }
    if let Some(ns) = &rk.namespace {
        if !super::names::is_dns1123_label(ns) {
            problems.push((
                kp.key("namespace"),
                format!("\"{ns}\" is not a valid namespace name (lower-case letters, digits and '-', at most 63)"),
            ));
        }
    }
    if let Some(name) = &rk.lease.name {
        if !super::names::is_dns1123_label(name) {
            problems.push((
                kp.key("lease").key("name"),
                format!("\"{name}\" is not a valid Lease name (lower-case letters, digits and '-', at most 63)"),
            ));
        }
    }
}

/// The chosen executor's settings, defaults filled in.
fn executor_config(raw: &RawExecutor, durations: &Durations) -> ExecutorConfig {
    match raw.kind.unwrap_or(ExecutorKind::Local) {
        ExecutorKind::Kubernetes => {
            ExecutorConfig::Kubernetes(kubernetes_config(&raw.kubernetes, durations))
        }
        ExecutorKind::Local => ExecutorConfig::Local(LocalConfig {
            work_dir: raw
                .local
                .work_dir
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or(LocalConfig::default().work_dir),
            pod_backoff: durations.pod_backoff,
            pod_backoff_max: durations.pod_backoff_max,
        }),
    }
}

/// `executor.kubernetes`, defaults filled in.
fn kubernetes_config(rk: &RawKubernetes, durations: &Durations) -> KubernetesConfig {
    let defaults = KubernetesConfig::default();
    KubernetesConfig {
        kubeconfig: rk.kubeconfig.as_ref().map(PathBuf::from),
        context: rk.context.clone(),
        namespace: rk.namespace.clone(),
        api_qps: rk.api_qps.unwrap_or(defaults.api_qps).max(1),
        api_burst: rk.api_burst.unwrap_or(defaults.api_burst).max(1),
        request_timeout: durations.request_timeout,
        launch_timeout: durations.launch_timeout,
        successful_jobs_history_limit: rk
            .successful_jobs_history_limit
            .unwrap_or(defaults.successful_jobs_history_limit),
        failed_jobs_history_limit: rk
            .failed_jobs_history_limit
            .unwrap_or(defaults.failed_jobs_history_limit),
        ttl_seconds_after_finished: rk
            .ttl_seconds_after_finished
            .unwrap_or(defaults.ttl_seconds_after_finished),
        lease_name: rk.lease.name.clone().unwrap_or(defaults.lease_name),
        lease_duration: durations.lease_duration,
        identity: rk.lease.identity.clone(),
    }
}

/// `retention`: every duration at least a second (zero would forget a
/// message as soon as it finished, and turn the pruning loop into a busy
/// loop), and payloads kept no longer than the rows that hold them.
fn check_retention(r: &RetentionConfig, problems: &mut Vec<Problem>) {
    let rp = FieldPath::root().key("retention");
    let second = Duration::from_secs(1);
    for (field, d) in [
        ("history", r.history),
        ("payloads", r.payloads),
        ("interval", r.interval),
    ] {
        if d < second {
            problems.push((rp.key(field), "must be at least 1s".into()));
        }
    }
    if r.payloads > r.history {
        problems.push((
            rp.key("payloads"),
            format!(
                "must not be longer than retention.history ({}): a work item's payload is deleted with it",
                humantime::format_duration(r.history)
            ),
        ));
    }
}

/// `pools`: each a valid name with at least one slot.
fn check_pools(pools: &std::collections::BTreeMap<String, u32>, problems: &mut Vec<Problem>) {
    let pp = FieldPath::root().key("pools");
    for (name, slots) in pools {
        if *slots == 0 {
            problems.push((
                pp.key(name),
                "must be at least 1 slot (0 would never run anything)".into(),
            ));
        }
        if !super::names::is_dns1123_label(name) {
            problems.push((
                pp.key(name),
                format!("\"{name}\" is not a valid pool name (lower-case letters, digits and '-')"),
            ));
        }
    }
}

/// `http.listen`: an IP address and port, if set.
fn validate_http_listen(
    http: &RawHttp,
    problems: &mut Vec<Problem>,
) -> Option<std::net::SocketAddr> {
    let l = http.listen.as_deref()?;
    l.trim()
        .parse::<std::net::SocketAddr>()
        .map_err(|_| {
            problems.push((
                FieldPath::root().key("http").key("listen"),
                format!("\"{l}\" is not HOST:PORT with an IP address (for example 127.0.0.1:9464)"),
            ))
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_daemon, Sources};

    /// The daemon config `yaml`, loaded from a file as `kedge` would.
    fn load(yaml: &str) -> Result<DaemonConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kedge.yaml");
        std::fs::write(&file, yaml).unwrap();
        let sources = Sources {
            config: Some(file),
            jobs: None,
            store: None,
            calendars: None,
        };
        load_daemon(&sources).map_err(|d| {
            d.to_string()
                .replace(&format!("{}/", dir.path().display()), "")
        })
    }

    #[test]
    fn retention_defaults_to_30_days_of_history_and_7_of_payloads() {
        let cfg = load("jobs_dir: jobs\n").unwrap();
        assert_eq!(cfg.retention, RetentionConfig::default());
        assert_eq!(cfg.retention.history, Duration::from_secs(30 * 86_400));
        assert_eq!(cfg.retention.payloads, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.retention.interval, Duration::from_secs(600));
        // The embedded default spells out the same values.
        let embedded = load(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(embedded.retention, RetentionConfig::default());
    }

    #[test]
    fn retention_takes_durations() {
        let cfg = load("retention:\n  history: 1m\n  payloads: 30s\n  interval: 5s\n").unwrap();
        assert_eq!(
            cfg.retention,
            RetentionConfig {
                history: Duration::from_secs(60),
                payloads: Duration::from_secs(30),
                interval: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn retention_problems_name_the_field() {
        let err = load("retention:\n  history: forever\n  payloads: 0s\n  interval: 500ms\n")
            .unwrap_err();
        assert_eq!(
            err.trim_end(),
            "kedge.yaml:2:3: retention.history: \"forever\" is not a duration (examples: 500ms, 30s, 15m, 1h30m)\n\
             kedge.yaml:3:3: retention.payloads: must be at least 1s\n\
             kedge.yaml:4:3: retention.interval: must be at least 1s"
        );
        let err = load("retention:\n  history: 1d\n  payloads: 2d\n").unwrap_err();
        assert_eq!(
            err.trim_end(),
            "kedge.yaml:3:3: retention.payloads: must not be longer than retention.history (1day): a work item's payload is deleted with it"
        );
        let err = load("retention:\n  histroy: 1d\n").unwrap_err();
        assert!(
            err.contains("retention.histroy: unknown field `histroy`"),
            "{err}"
        );
    }
}
