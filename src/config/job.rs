//! Job definitions (`jobs/*.yaml`): the file format and its validation.
//!
//! A file is read into [`RawJob`] (the shape, straight from YAML), then
//! [`validate`] checks everything that the shape cannot express and hands
//! out a [`Job`], the only type the rest of kedge sees. Every problem in a
//! file is reported, each with the field it is about.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::Container;
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::{parse_duration, FieldPath, Problem};
pub use super::queue::QueueTrigger;
use super::queue::{RawBatch, RawDeadLetter, RawQueue};
use super::rules::{OnBlackout, RawBlackout, RawRules, Rules, Shift};
use super::sizing::{RawSizing, RawWindow, Sizing, Window};
use super::yaml::DurationText;
use super::yaml::{duration_text, string_enum};
use super::{DaemonConfig, ExecutorKind};
use crate::lifecycle::{JOB_NAME_MAX, K8S_NAME_MAX, RUN_SUFFIX_MAX};
use crate::triggers::cron::Schedule;

/// A kedge job definition (`jobs/*.yaml`): what triggers a run, and the
/// `batch/v1` JobSpec each run launches.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with name, trigger and template")]
#[schemars(deny_unknown_fields, rename = "Job")]
pub struct RawJob {
    /// The job's name: lower-case letters, digits and '-', starting and
    /// ending with a letter or digit, unique across the jobs directory; at
    /// most 49 characters, so that a run's Job name (the name and a suffix
    /// of up to 14) stays within Kubernetes' 63.
    #[schemars(length(min = 1, max = JOB_NAME_MAX), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Free text, shown by `kedge plan` and the API.
    #[serde(default)]
    pub description: Option<String>,
    /// When the global cap or a pool is the constraint, due runs of jobs
    /// with a higher priority launch first; within a priority, jobs take
    /// turns [default: 0].
    #[serde(default)]
    pub priority: i32,
    /// What starts a run: `cron` (with its time zone and policies) or `queue`.
    pub trigger: RawTrigger,
    /// How a failed run is retried before it is dead-lettered.
    #[serde(default)]
    pub retry: RawRetry,
    /// Limits on this job's runs and pods.
    #[serde(default)]
    pub limits: RawLimits,
    /// What a queue message must look like.
    #[serde(default)]
    pub payload: RawPayload,
    /// Names of the daemon's environment variables copied into every container.
    #[serde(default)]
    pub env_from_host: Vec<String>,
    /// When a run must be finished.
    pub window: Option<RawWindow>,
    /// How to size a run to its window.
    pub sizing: Option<RawSizing>,
    /// Queue jobs: how many messages one run takes.
    pub batch: Option<RawBatch>,
    /// Queue jobs: where dead letters are published besides kedge's store.
    pub dead_letter: Option<RawDeadLetter>,
    /// Load guards: names of guards the daemon config shares, or full
    /// guard definitions of this job's own.
    #[serde(default)]
    pub guards: Vec<super::guard::RawGuardRef>,
    /// A `batch/v1` JobSpec, exactly as in a Kubernetes manifest.
    pub template: JobSpec,
}

// `RawJob::name`'s doc (the schema's description) says 49.
const _: () = assert!(JOB_NAME_MAX == 49, "update the doc of RawJob::name");

/// What starts a run: `cron` (and its policies) or `queue`, exactly one.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with `cron` or `queue`")]
#[schemars(deny_unknown_fields, rename = "Trigger")]
pub struct RawTrigger {
    /// A 5-field Debian cron expression (crontab(5): names, ranges, steps,
    /// lists, day-of-week 0 and 7 = Sunday), a 6-field one with seconds in
    /// front, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: Option<String>,
    /// Cron jobs: the IANA time zone the expression is read in [default: UTC].
    pub timezone: Option<String>,
    /// Cron jobs: what a fire does while an earlier run is active [default: forbid].
    pub overlap: Option<Overlap>,
    /// Cron jobs: which fires missed while kedge was down run when it is back [default: latest].
    pub catchup: Option<Catchup>,
    /// Cron jobs: a missed fire older than this is not caught up [default: no bound].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub starting_deadline: Option<String>,
    /// Cron jobs: fire only on the working days of this calendar (a file
    /// in the calendars directory), evaluated in the job's time zone.
    pub calendar: Option<String>,
    /// Cron jobs: no fire on the working days of this calendar.
    pub exclude_calendar: Option<String>,
    /// Cron jobs: only the n-th business day of the month (1 = the first),
    /// and the n-th last (-1 = the last), at the cron expression's times.
    /// Business days are `calendar`'s working days (mon to fri without one),
    /// minus `exclude_calendar`'s.
    pub business_days: Option<Vec<i32>>,
    /// Cron jobs: a cron-matched day that is not a working day: `none` and
    /// `skip` drop it, `next` and `previous` move it to the nearest working day [default: none].
    pub shift: Option<Shift>,
    /// Cron jobs: windows in which no fire runs.
    pub blackout: Option<Vec<RawBlackout>>,
    /// Cron jobs: a fire inside a blackout window is `skip`ped (recorded as
    /// `skipped: blackout`) or `defer`red to the window's end [default: skip].
    pub on_blackout: Option<OnBlackout>,
    /// Run after other jobs' runs: a boolean expression such as
    /// `success(load-orders) and success(load-customers)`, with `success`,
    /// `failure`, `done` and `notrunning`, each with an optional look-back
    /// (`success(x, 12h)`), combined with `and`, `or`, `not` and
    /// parentheses. With `cron`, a fire waits for it; alone, the job runs
    /// each time it becomes true.
    pub after: Option<String>,
    /// Cron jobs with `after`: how long a fire waits for the expression
    /// before it is recorded `skipped: dependency timeout` [default: 12h].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub wait_timeout: Option<String>,
    /// Queue jobs: where messages come from.
    pub queue: Option<RawQueue>,
}

/// Retries of a failed run: `max_attempts` runs in all, the n-th retry
/// waiting `backoff × 2^(n-1)`, capped at `max_backoff`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with max_attempts, backoff or max_backoff")]
#[schemars(deny_unknown_fields, rename = "Retry")]
pub struct RawRetry {
    /// Runs in all, the first included [default: 3].
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// The wait before the first retry [default: 10s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub backoff: Option<String>,
    /// The longest wait between retries [default: 1h].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub max_backoff: Option<String>,
}

/// Limits on this job's runs and pods, and how long its pods may take to start.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(
    expecting = "a mapping with max_active, max_pods, pool, pending_timeout, start_timeout or image_pull_timeout"
)]
#[schemars(deny_unknown_fields, rename = "Limits")]
pub struct RawLimits {
    /// Runs of this job launched at once [default: only the global cap;
    /// 1 for a cron job whose overlap is not `allow`].
    pub max_active: Option<u32>,
    /// Pods (the sum of running runs' parallelism) of this job at once.
    pub max_pods: Option<u32>,
    /// A pool from the daemon config whose slots this job's runs take.
    pub pool: Option<String>,
    /// Pods Pending longer than this stop new launches of the job until
    /// they schedule [default: 5m].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub pending_timeout: Option<String>,
    /// A run none of whose pods has started for this long fails as
    /// `start_timeout` [default: 10m].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub start_timeout: Option<String>,
    /// Sooner for an image that cannot be pulled or a missing Secret:
    /// fails as `image_pull_timeout` [default: 3m].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub image_pull_timeout: Option<String>,
}

/// What a queue message must look like.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with format or max_bytes")]
#[schemars(deny_unknown_fields, rename = "Payload")]
pub struct RawPayload {
    /// [default: json]
    pub format: Option<PayloadFormat>,
    /// The largest message taken [default: 1048576, 1 MiB].
    pub max_bytes: Option<u64>,
}

/// What happens when a cron fire comes while an earlier run of the job is
/// still active (pending, running or waiting for a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start another run alongside.
    Allow,
    /// Skip the new fire (recorded as skipped). The default.
    Forbid,
    /// Stop the active run, then start the new one.
    Replace,
    /// Keep at most one fire waiting behind the active run; skip further ones.
    BufferOne,
}

/// Which fires missed while kedge was down (or asleep) run when it is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    /// Run none of them (Debian cron's behaviour).
    None,
    /// Run only the most recent one (Kubernetes CronJob's behaviour). The default.
    Latest,
    /// Run every one of them, oldest first.
    All,
}

/// How a message payload must look for this job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Any UTF-8 text.
    Text,
    /// A JSON document (the default).
    Json,
}

string_enum!(Overlap {
    Allow => "allow",
    Forbid => "forbid",
    Replace => "replace",
    BufferOne => "buffer_one",
});
string_enum!(Catchup {
    None => "none",
    Latest => "latest",
    All => "all",
});
string_enum!(PayloadFormat {
    Text => "text",
    Json => "json",
});

/// A validated job definition.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub description: Option<String>,
    /// Higher launches first when slots are short (`priority`, default 0);
    /// within a priority, jobs take turns.
    pub priority: i32,
    /// The file it came from.
    pub file: PathBuf,
    pub trigger: Trigger,
    /// `trigger.after`, with `cron` or alone.
    pub after: Option<After>,
    pub retry: RetryPolicy,
    pub limits: JobLimits,
    pub payload: PayloadPolicy,
    /// `(name, value)` copied from the daemon's environment at load time.
    pub host_env: Vec<(String, String)>,
    pub window: Option<Window>,
    pub sizing: Option<Sizing>,
    /// Load guards ([`super::guard`]): shared ones and the job's own.
    pub guards: Vec<std::sync::Arc<super::guard::Guard>>,
    pub spec: JobSpec,
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Cron(CronTrigger),
    Queue(QueueTrigger),
    /// `after` alone: a run each time the expression becomes true.
    After,
}

/// A job's `trigger.after`: what it waits for.
#[derive(Debug, Clone)]
pub struct After {
    pub expr: super::after::Expr,
    /// With `cron`: how long a fire waits for `expr`.
    pub wait_timeout: Duration,
    /// Where the expression's text starts in the file (line, and the
    /// column of its first character inside any quote), for the checks
    /// across job files.
    pub position: super::Position,
}

/// The default `trigger.wait_timeout`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub schedule: Schedule,
    pub timezone: Tz,
    pub overlap: Overlap,
    pub catchup: Catchup,
    /// A missed fire older than this is not caught up. `None`: no bound.
    pub starting_deadline: Option<Duration>,
    /// Calendars, business days, shift and blackouts
    /// ([`crate::triggers::rules`] applies them).
    pub rules: Rules,
}

/// Retries of a failed run: `max_attempts` runs in all, the n-th retry
/// waiting `backoff × 2^(n-1)`, capped at `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 for the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(30);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLimits {
    /// Runs of this job launched at once. `None`: only the global cap.
    pub max_active: Option<u32>,
    /// Pods (the sum of running runs' parallelism) of this job at once.
    pub max_pods: Option<u32>,
    /// A pool from the daemon config whose slots this job's runs take (one
    /// slot per running run), shared with the other jobs of the pool.
    pub pool: Option<String>,
    /// Pods Pending longer than this stop new launches of the job until
    /// they schedule (pending-pod backpressure). Default 5 minutes.
    pub pending_timeout: Duration,
    /// A run none of whose pods has started for this long (since its Job
    /// was created, or since its last pod ran) fails as `start_timeout`,
    /// and its Job is deleted. Default 10 minutes.
    pub start_timeout: Duration,
    /// Sooner for evidence a registry or a Secret may still fix
    /// (`ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`):
    /// fails as `image_pull_timeout`. Default 3 minutes.
    pub image_pull_timeout: Duration,
}

impl JobLimits {
    /// `limits.pending_timeout` when the file does not set it.
    pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration::from_secs(300);
    /// `limits.start_timeout` when the file does not set it.
    pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(600);
    /// `limits.image_pull_timeout` when the file does not set it.
    pub const DEFAULT_IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(180);
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_active: None,
            max_pods: None,
            pool: None,
            pending_timeout: Self::DEFAULT_PENDING_TIMEOUT,
            start_timeout: Self::DEFAULT_START_TIMEOUT,
            image_pull_timeout: Self::DEFAULT_IMAGE_PULL_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadPolicy {
    pub format: PayloadFormat,
    pub max_bytes: u64,
}

impl Default for PayloadPolicy {
    fn default() -> Self {
        PayloadPolicy {
            format: PayloadFormat::Json,
            max_bytes: 1024 * 1024,
        }
    }
}

impl Job {
    /// The limit on active runs, including the one the overlap policy implies.
    pub fn effective_max_active(&self) -> Option<u32> {
        let overlap_cap = match &self.trigger {
            Trigger::Cron(c) if c.overlap != Overlap::Allow => Some(1),
            _ => None,
        };
        match (self.limits.max_active, overlap_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The job's time zone (its cron trigger's; UTC for queue jobs).
    pub fn timezone(&self) -> Tz {
        self.cron().map(|c| c.timezone).unwrap_or(Tz::UTC)
    }

    /// The deadline of a run triggered at `t`, when the job has a window.
    pub fn deadline_after(
        &self,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.window.map(|w| w.deadline_after(t, self.timezone()))
    }

    pub fn cron(&self) -> Option<&CronTrigger> {
        match &self.trigger {
            Trigger::Cron(c) => Some(c),
            Trigger::Queue(_) | Trigger::After => None,
        }
    }
}

pub use super::names::{has_dns1123_characters, is_dns1123_label};

/// Validates a parsed job file. `env` looks up the daemon's environment.
pub fn validate(
    raw: RawJob,
    file: PathBuf,
    daemon: &DaemonConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Job, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let root = FieldPath::root();
    check_name(&raw.name, &mut problems);
    let trigger = validate_trigger(&raw, daemon, env, &mut problems);
    let after = validate_after(&raw.trigger, &mut problems);
    check_queue_only_fields(&raw, &mut problems);
    let retry = validate_retry(&raw.retry, &root.key("retry"), &mut problems);
    let limits = validate_limits(&raw, daemon, &mut problems);
    let (window, sizing) = validate_window_and_sizing(&raw, env, &mut problems);
    let payload = validate_payload(&raw.payload, &mut problems);
    let host_env = read_host_env(&raw.env_from_host, env, &mut problems);
    let guards = super::guard::resolve_job_guards(
        &raw.guards,
        &daemon.guards,
        &file,
        raw.sizing.is_some(),
        env,
        &mut problems,
    );
    for (path, msg) in check_job_spec(&raw.template, daemon.executor.kind()) {
        problems.push((root.key("template").join(&path), msg));
    }

    match (problems.is_empty(), trigger) {
        (true, Some(trigger)) => Ok(Job {
            name: raw.name,
            description: raw.description,
            priority: raw.priority,
            file,
            trigger,
            after,
            retry,
            limits,
            payload,
            host_env,
            window,
            sizing,
            guards,
            spec: raw.template,
        }),
        _ => Err(problems),
    }
}

/// `name`: the characters and the length are separate problems.
fn check_name(name: &str, problems: &mut Vec<Problem>) {
    let path = FieldPath::root().key("name");
    if !has_dns1123_characters(name) {
        problems.push((
            path.clone(),
            format!(
                "\"{name}\" is not a valid Kubernetes name: use lower-case letters, digits and '-', starting and ending with a letter or digit"
            ),
        ));
    }
    let name_chars = name.chars().count();
    if name_chars > JOB_NAME_MAX {
        problems.push((
            path,
            format!(
                "\"{name}\" is {name_chars} characters; with the run suffix kedge adds (up to {RUN_SUFFIX_MAX}) a Job name must stay within {K8S_NAME_MAX}, so at most {JOB_NAME_MAX}",
            ),
        ));
    }
}

/// `trigger`: exactly one of `cron` or `queue`.
fn validate_trigger(
    raw: &RawJob,
    daemon: &DaemonConfig,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Trigger> {
    let t = &raw.trigger;
    let tp = FieldPath::root().key("trigger");
    match (&t.cron, &t.queue) {
        (Some(_), Some(_)) => {
            problems.push((tp, "set either `cron` or `queue`, not both".into()));
            None
        }
        (None, None) if t.after.is_some() => {
            check_cron_only_fields(
                t,
                &tp,
                "to `after` alone (add `cron` to wait on a schedule)",
                problems,
            );
            Some(Trigger::After)
        }
        (None, None) => {
            problems.push((tp, "needs `cron`, `queue` or `after`".into()));
            None
        }
        (Some(expr), None) => {
            validate_cron(expr, t, &daemon.calendars, &tp, problems).map(Trigger::Cron)
        }
        (None, Some(q)) => validate_queue_trigger(raw, q, &tp, env, problems).map(Trigger::Queue),
    }
}

/// `trigger.cron` with its time zone, overlap, catch-up and starting deadline.
fn validate_cron(
    expr: &str,
    t: &RawTrigger,
    calendars: &super::calendar::Calendars,
    tp: &FieldPath,
    problems: &mut Vec<Problem>,
) -> Option<CronTrigger> {
    let schedule = Schedule::parse(expr)
        .map_err(|e| problems.push((tp.key("cron"), e.to_string())))
        .ok();
    let timezone = match &t.timezone {
        None => Some(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| {
                problems.push((
                    tp.key("timezone"),
                    format!("unknown time zone \"{name}\" (use an IANA name such as Europe/Berlin or UTC)"),
                ))
            })
            .ok(),
    };
    let starting_deadline = match &t.starting_deadline {
        None => Some(None),
        Some(s) => parse_duration(s)
            .map_err(|e| problems.push((tp.key("starting_deadline"), e)))
            .ok()
            .map(Some),
    };
    let rules = super::rules::validate(
        &RawRules {
            calendar: t.calendar.as_deref(),
            exclude_calendar: t.exclude_calendar.as_deref(),
            business_days: t.business_days.as_deref(),
            shift: t.shift,
            blackout: t.blackout.as_deref(),
            on_blackout: t.on_blackout,
        },
        calendars,
        schedule.as_ref().is_none_or(Schedule::any_day),
        tp,
        problems,
    );
    Some(CronTrigger {
        rules,
        schedule: schedule?,
        timezone: timezone?,
        overlap: t.overlap.unwrap_or(Overlap::Forbid),
        catchup: t.catchup.unwrap_or(Catchup::Latest),
        starting_deadline: starting_deadline?,
    })
}

/// `trigger.queue`, with the job's `batch` and `dead_letter`; the cron
/// settings do not apply.
fn validate_queue_trigger(
    raw: &RawJob,
    q: &RawQueue,
    tp: &FieldPath,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<QueueTrigger> {
    let t = &raw.trigger;
    check_cron_only_fields(t, tp, "to cron triggers", problems);
    if t.after.is_some() {
        problems.push((
            tp.key("after"),
            "applies to cron triggers or alone, not to queue triggers".into(),
        ));
    }
    super::queue::validate(
        q,
        raw.batch.as_ref(),
        raw.dead_letter.as_ref(),
        &tp.key("queue"),
        &FieldPath::root(),
        env,
        problems,
    )
}

/// The cron-only trigger fields, reported when set on a trigger that is
/// not a cron one (`applies`: to what they do apply).
fn check_cron_only_fields(
    t: &RawTrigger,
    tp: &FieldPath,
    applies: &str,
    problems: &mut Vec<Problem>,
) {
    for (field, set) in [
        ("timezone", t.timezone.is_some()),
        ("overlap", t.overlap.is_some()),
        ("catchup", t.catchup.is_some()),
        ("starting_deadline", t.starting_deadline.is_some()),
        ("calendar", t.calendar.is_some()),
        ("exclude_calendar", t.exclude_calendar.is_some()),
        ("business_days", t.business_days.is_some()),
        ("shift", t.shift.is_some()),
        ("blackout", t.blackout.is_some()),
        ("on_blackout", t.on_blackout.is_some()),
    ] {
        if set {
            problems.push((tp.key(field), format!("only applies {applies}")));
        }
    }
}

/// `trigger.after` and `trigger.wait_timeout`. The names it mentions are
/// checked across the job files ([`super::reload::read_jobs`]).
fn validate_after(t: &RawTrigger, problems: &mut Vec<Problem>) -> Option<After> {
    let tp = FieldPath::root().key("trigger");
    if t.wait_timeout.is_some() && (t.after.is_none() || t.cron.is_none()) {
        problems.push((
            tp.key("wait_timeout"),
            "only applies to cron triggers with `after`".into(),
        ));
    }
    let text = t.after.as_ref()?;
    // The position is the key's; the message names the character.
    let expr = super::after::parse(text)
        .map_err(|e| problems.push((tp.key("after"), e.to_string())))
        .ok();
    let wait_timeout = match &t.wait_timeout {
        None => Some(DEFAULT_WAIT_TIMEOUT),
        Some(s) => parse_duration(s)
            .map_err(|e| problems.push((tp.key("wait_timeout"), e)))
            .ok(),
    };
    Some(After {
        expr: expr?,
        wait_timeout: wait_timeout?,
        position: super::Position::start(),
    })
}

/// `batch` sets the run's completions itself; `batch` and `dead_letter`
/// only apply to queue triggers.
fn check_queue_only_fields(raw: &RawJob, problems: &mut Vec<Problem>) {
    let root = FieldPath::root();
    if raw.batch.is_some() {
        if raw.sizing.is_some() {
            problems.push((
                root.key("batch"),
                "cannot be combined with `sizing`: a batch run's completions are its messages"
                    .into(),
            ));
        }
        for (field, set) in [
            ("completions", raw.template.completions.is_some()),
            ("completionMode", raw.template.completion_mode.is_some()),
        ] {
            if set {
                problems.push((
                    root.key("template").key(field),
                    "is set by kedge for a batch job (Indexed, one completion per message); remove it".into(),
                ));
            }
        }
    }
    if raw.trigger.queue.is_none() {
        for (field, set) in [
            ("batch", raw.batch.is_some()),
            ("dead_letter", raw.dead_letter.is_some()),
        ] {
            if set {
                problems.push((root.key(field), "only applies to queue triggers".into()));
            }
        }
    }
}

/// `retry` (at `rp`): 1-99 attempts, `max_backoff` not below `backoff`.
fn validate_retry(raw: &RawRetry, rp: &FieldPath, problems: &mut Vec<Problem>) -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    if let Some(n) = raw.max_attempts {
        if (1..=99).contains(&n) {
            retry.max_attempts = n;
        } else {
            problems.push((rp.key("max_attempts"), format!("{n} is out of range 1-99")));
        }
    }
    for (field, text, value) in [
        ("backoff", &raw.backoff, &mut retry.backoff),
        ("max_backoff", &raw.max_backoff, &mut retry.max_backoff),
    ] {
        if let Some(s) = text {
            match parse_duration(s) {
                Ok(d) => *value = d,
                Err(e) => problems.push((rp.key(field), e)),
            }
        }
    }
    if retry.max_backoff < retry.backoff {
        problems.push((
            rp.key("max_backoff"),
            "must not be shorter than `backoff`".into(),
        ));
    }
    retry
}

/// `limits`: caps of at least 1, a pool the daemon defines, `max_pods`
/// that lets a run start (without `sizing`; with it, see
/// [`validate_window_and_sizing`]).
fn validate_limits(raw: &RawJob, daemon: &DaemonConfig, problems: &mut Vec<Problem>) -> JobLimits {
    let lp = FieldPath::root().key("limits");
    let limits = &raw.limits;
    for (field, v) in [
        ("max_active", limits.max_active),
        ("max_pods", limits.max_pods),
    ] {
        if v == Some(0) {
            problems.push((
                lp.key(field),
                "must be at least 1 (0 would never run anything)".into(),
            ));
        }
    }
    if let Some(pool) = &limits.pool {
        if !daemon.pools.contains_key(pool) {
            let known: Vec<&str> = daemon.pools.keys().map(String::as_str).collect();
            problems.push((
                lp.key("pool"),
                format!(
                    "unknown pool \"{pool}\" (the daemon config defines: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    if raw.sizing.is_none() {
        if let Some(mp) = limits.max_pods {
            let p = raw.template.parallelism.unwrap_or(1);
            if i64::from(p) > i64::from(mp) {
                problems.push((
                    lp.key("max_pods"),
                    format!("{mp} is less than template.parallelism {p}: no run could ever start"),
                ));
            }
        }
    }
    // A zero start timeout would fail every run before its pods could start.
    let mut timeout = |field: &str, text: &Option<String>, default: Duration| match text {
        None => default,
        Some(t) => match parse_duration(t) {
            Ok(d) if d.is_zero() && field != "pending_timeout" => {
                problems.push((lp.key(field), "must be longer than 0s".to_string()));
                default
            }
            Ok(d) => d,
            Err(e) => {
                problems.push((lp.key(field), e));
                default
            }
        },
    };
    JobLimits {
        max_active: limits.max_active,
        max_pods: limits.max_pods,
        pool: limits.pool.clone(),
        pending_timeout: timeout(
            "pending_timeout",
            &limits.pending_timeout,
            JobLimits::DEFAULT_PENDING_TIMEOUT,
        ),
        start_timeout: timeout(
            "start_timeout",
            &limits.start_timeout,
            JobLimits::DEFAULT_START_TIMEOUT,
        ),
        image_pull_timeout: timeout(
            "image_pull_timeout",
            &limits.image_pull_timeout,
            JobLimits::DEFAULT_IMAGE_PULL_TIMEOUT,
        ),
    }
}

/// `window` and `sizing`: sizing needs a window, and `limits.max_pods`
/// must allow its minimum parallelism.
fn validate_window_and_sizing(
    raw: &RawJob,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> (Option<Window>, Option<Sizing>) {
    let window = raw.window.as_ref().and_then(|w| {
        super::sizing::validate_window(w)
            .map_err(|ps| problems.extend(ps))
            .ok()
    });
    let Some(s) = &raw.sizing else {
        return (window, None);
    };
    if raw.window.is_none() {
        problems.push((
            FieldPath::root().key("sizing"),
            "needs a `window` to size against".into(),
        ));
    }
    let sizing = match super::sizing::validate_sizing(s, env) {
        Ok(s) => s,
        Err(ps) => {
            problems.extend(ps);
            return (window, None);
        }
    };
    if let Some(mp) = raw.limits.max_pods {
        if mp < sizing.min {
            problems.push((
                FieldPath::root().key("limits").key("max_pods"),
                format!("{mp} is less than sizing.parallelism.min {}", sizing.min),
            ));
        }
    }
    (window, Some(sizing))
}

/// `payload`: a format and a size cap of at least 1 byte.
fn validate_payload(raw: &RawPayload, problems: &mut Vec<Problem>) -> PayloadPolicy {
    let mut payload = PayloadPolicy::default();
    if let Some(f) = raw.format {
        payload.format = f;
    }
    if let Some(m) = raw.max_bytes {
        if m == 0 {
            problems.push((
                FieldPath::root().key("payload").key("max_bytes"),
                "must be at least 1".into(),
            ));
        }
        payload.max_bytes = m;
    }
    payload
}

/// `env_from_host`: each variable read from the daemon's environment now.
fn read_host_env(
    names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Vec<(String, String)> {
    let mut host_env = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match env(name) {
            Some(v) => host_env.push((name.clone(), v)),
            None => problems.push((
                FieldPath::root().key("env_from_host").index(i),
                format!("environment variable {name} is not set"),
            )),
        }
    }
    host_env
}

/// What a Kubernetes API server would reject in a JobSpec, plus what the
/// local executor cannot do. Paths are relative to the JobSpec.
fn check_job_spec(spec: &JobSpec, executor: ExecutorKind) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    check_job_counts(spec, &mut out);
    let pod = FieldPath::root().key("template").key("spec");
    let Some(pod_spec) = &spec.template.spec else {
        out.push((pod, "is required: the pod template needs a spec".into()));
        return out;
    };
    match pod_spec.restart_policy.as_deref() {
        Some("Never") | Some("OnFailure") => {}
        None => out.push((
            pod.key("restartPolicy"),
            "is required for a Job: Never or OnFailure".into(),
        )),
        Some(other) => out.push((
            pod.key("restartPolicy"),
            format!("\"{other}\" is not allowed for a Job: use Never or OnFailure"),
        )),
    }
    if pod_spec.containers.is_empty() {
        out.push((pod.key("containers"), "needs at least one container".into()));
    }
    let mut names = BTreeSet::new();
    // Init containers share the name space with the app containers and
    // need the same things from the local executor.
    let all = pod_spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (pod.key("initContainers").index(i), c))
        .chain(
            pod_spec
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| (pod.key("containers").index(i), c)),
        );
    for (cp, c) in all {
        check_container(c, &cp, &mut names, executor, &mut out);
    }
    out
}

/// The JobSpec's own counts: parallelism, completions, backoffLimit,
/// activeDeadlineSeconds and completionMode.
fn check_job_counts(spec: &JobSpec, out: &mut Vec<Problem>) {
    let root = FieldPath::root();
    for (field, v) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
    ] {
        if let Some(n) = v.filter(|n| *n < 0) {
            out.push((root.key(field), format!("{n} must be 0 or more")));
        }
    }
    if let Some(d) = spec.active_deadline_seconds {
        if d <= 0 {
            out.push((
                root.key("activeDeadlineSeconds"),
                format!("{d} must be greater than 0"),
            ));
        }
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.completions.is_none() {
                out.push((
                    root.key("completions"),
                    "is required when completionMode is Indexed".into(),
                ));
            }
        }
        Some(other) => out.push((
            root.key("completionMode"),
            format!("\"{other}\" is not one of NonIndexed, Indexed"),
        )),
    }
}

/// One container (at `cp`): a unique DNS-1123 name (`names` holds the ones
/// seen), named env entries, and what the local executor needs.
fn check_container(
    c: &Container,
    cp: &FieldPath,
    names: &mut BTreeSet<String>,
    executor: ExecutorKind,
    out: &mut Vec<Problem>,
) {
    if c.name.is_empty() {
        // k8s-openapi reads a missing required string as "".
        out.push((cp.key("name"), "is required".into()));
    } else if !is_dns1123_label(&c.name) {
        out.push((
            cp.key("name"),
            format!(
                "\"{}\" is not a valid container name (DNS-1123 label)",
                c.name
            ),
        ));
    } else if !names.insert(c.name.clone()) {
        out.push((
            cp.key("name"),
            format!("\"{}\" is used by another container", c.name),
        ));
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            out.push((cp.key("env").index(j).key("name"), "is required".into()));
        }
    }
    if executor == ExecutorKind::Local {
        if c.command.as_ref().is_none_or(|v| v.is_empty()) {
            out.push((
                cp.key("command"),
                "the local executor needs an explicit command (it cannot run an image's entrypoint)".into(),
            ));
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            if e.value_from.is_some() {
                out.push((
                    cp.key("env").index(j).key("valueFrom"),
                    "is not supported by the local executor; use value or env_from_host".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(35),
        };
        assert_eq!(p.delay_before(2), Duration::from_secs(10));
        assert_eq!(p.delay_before(3), Duration::from_secs(20));
        assert_eq!(p.delay_before(4), Duration::from_secs(35));
        assert_eq!(p.delay_before(60), Duration::from_secs(35));
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "a-b", "0abc", "x1"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    /// The problems `validate` finds in `yaml`, as `field: message`.
    fn problems(yaml: &str) -> Vec<String> {
        let doc = super::super::yaml::Located::parse(yaml).expect("parses");
        let (raw, diags) = doc.deserialize::<RawJob>(&FieldPath::root());
        assert!(diags.is_empty(), "{diags:?}");
        let env = |name: &str| (name == "SET_VAR").then(|| "x".to_string());
        let daemon = super::super::daemon::validate(Default::default(), &|_| None)
            .expect("the default daemon config is valid");
        assert_eq!(daemon.executor.kind(), ExecutorKind::Local);
        match validate(raw.expect("shape"), "t.yaml".into(), &daemon, &env) {
            Ok(_) => Vec::new(),
            Err(ps) => ps.into_iter().map(|(p, m)| format!("{p}: {m}")).collect(),
        }
    }

    fn job_yaml(name: &str, container: &str) -> String {
        format!(
            "name: {name}\ntrigger: {{cron: '0 1 * * *'}}\nenv_from_host: [SET_VAR]\n\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n{container}"
        )
    }

    #[test]
    fn validation_table() {
        let ok = "        - name: main\n          command: [x]\n";
        let long_ok = "a".repeat(JOB_NAME_MAX);
        let too_long = "a".repeat(JOB_NAME_MAX + 1);
        let too_long_bad = "A".repeat(K8S_NAME_MAX + 1);
        let long_msg = |n: &str| {
            format!(
                "name: \"{n}\" is {} characters; with the run suffix kedge adds (up to {RUN_SUFFIX_MAX}) a Job name must stay within {K8S_NAME_MAX}, so at most {JOB_NAME_MAX}",
                n.len()
            )
        };
        let chars_msg = |n: &str| {
            format!("name: \"{n}\" is not a valid Kubernetes name: use lower-case letters, digits and '-', starting and ending with a letter or digit")
        };
        let cases: Vec<(String, &str, Vec<String>)> = vec![
            ("ok".into(), ok, vec![]),
            (long_ok, ok, vec![]),
            (too_long.clone(), ok, vec![long_msg(&too_long)]),
            // Too long and badly spelt: both reported.
            (
                too_long_bad.clone(),
                ok,
                vec![chars_msg(&too_long_bad), long_msg(&too_long_bad)],
            ),
            ("-a".into(), ok, vec![chars_msg("-a")]),
            (
                "ok".into(),
                "        - command: [x]\n",
                vec!["template.template.spec.containers[0].name: is required".into()],
            ),
            (
                "ok".into(),
                "        - name: main\n          command: [x]\n          env: [{value: v}]\n",
                vec!["template.template.spec.containers[0].env[0].name: is required".into()],
            ),
        ];
        for (name, container, want) in cases {
            assert_eq!(problems(&job_yaml(&name, container)), want, "name {name:?}");
        }
    }
}
