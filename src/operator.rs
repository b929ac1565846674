//! Operator controls: pause/resume, hold/release, ice/unice, backfill and
//! rerun. The CLI calls these now, the HTTP API later; each takes the store,
//! who acts (the OS user for the CLI, [`os_user`]; an API token's name
//! later) and why, and writes its audit record in the same store
//! transaction as the change.
//!
//! # States
//!
//! A job's operator state ([`OperatorState`]) is stored (`job_controls`),
//! so it survives restarts. It is checked where runs are created (the cron
//! scheduler) and where they are launched (the dispatcher's planner, which
//! holds every run of a job that is not `active`).
//!
//! - **paused** (`kedge pause` / `kedge resume`): nothing new of the job
//!   launches. Messages wait: a queue job's messages are still taken into
//!   the store, and their runs wait there (`pending`). A cron fire is
//!   recorded `skipped: paused`. On resume, those fires are caught up as the
//!   job's `catchup` says, exactly as fires missed while kedge was down:
//!   `none` runs none, `latest` the newest, `all` every one (oldest first),
//!   and none older than `starting_deadline`; the others stay `skipped:
//!   paused`. Runs already running when the job is paused run to the end.
//! - **held** (`kedge hold` / `kedge release`, AutoSys ON_HOLD): the job
//!   does not run, and its dependents wait ([`as_upstream`]). Cron fires
//!   are recorded `skipped: held`. On release it runs at once if its
//!   condition holds: for a cron job (no dependencies yet) that is "a fire
//!   came while it was held", so the newest such fire runs on release,
//!   once, whatever its age; the older ones stay `skipped: held`.
//! - **iced** (`kedge ice` / `kedge unice`, AutoSys ON_ICE): the job does
//!   not run, and its dependents treat it as succeeded. Cron fires are
//!   recorded `skipped: iced` and never caught up: after unice the job waits
//!   for its next occurrence.
//!
//! In every state pending runs wait in the store (nothing is lost): a queue
//! job's messages and a run created before the change launch when the job
//! is active again. A change from any state but `active` to another is
//! refused (resume, release or unice it first); resume, release and unice
//! are refused from any state but their own.
//!
//! A change wakes a running daemon through the store's wake-up
//! (`store::signal`): the dispatcher's next pass, milliseconds later,
//! reads the new state.
//!
//! # Backfill
//!
//! [`backfill`] creates the fires a cron job would have had in `[from, to)`,
//! taken from the scheduler's own enumeration
//! ([`crate::triggers::scheduler::fires_between`]), recorded in
//! `cron_fires` like the scheduler's, in one transaction: a fire already
//! recorded is not created again (idempotent; `--rerun failed|all` runs
//! finished ones again as a new attempt), and a backfill interrupted (kill
//! -9) wrote nothing. Its runs launch at most `max_active` at a time
//! (and with `overlap: forbid` only while no other run of the job runs),
//! under the job's own limits too.

use chrono::{DateTime, Utc};

use crate::config::job::{Catchup, Job, Overlap};
use crate::intake;
use crate::lifecycle::{OperatorState, RunState};
use crate::store::{
    AuditEntry, BackfillOverlap, BackfillReport, Changed, JobControl, NewBackfill, NewWorkItem,
    Rerun, StateChange, Store, StoreError,
};
use crate::triggers::scheduler::fires_between;

/// At most this many fires in one backfill (split a longer range).
pub const MAX_BACKFILL_FIRES: usize = 10_000;

/// Operator actions' errors. `Store` is worth retrying; the others need
/// another request.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The store failed.
    #[error("store failed")]
    Store(#[from] StoreError),
    /// The job is not in a state the action applies to.
    #[error("{}", refused(.action, .current))]
    Refused { action: Action, current: JobControl },
    /// Backfill needs a cron schedule.
    #[error("job {0} has no cron schedule: a backfill creates the fires of a cron job")]
    NotCron(String),
    /// A backfill range that is empty or reaches past now.
    #[error("{0}")]
    BadRange(String),
    /// More fires than [`MAX_BACKFILL_FIRES`] in the range.
    #[error("the range holds more than {MAX_BACKFILL_FIRES} fires; backfill it in parts")]
    TooManyFires,
    /// No run with this id.
    #[error("no run {0} in the store (see kedge runs)")]
    NoSuchRun(String),
    /// The run, or a newer attempt of its work, has not finished.
    #[error("run {run} cannot be rerun: its work is still {state}; wait for it to finish")]
    NotFinished { run: String, state: RunState },
    /// A batch run: its messages settle one by one.
    #[error("run {0} is a batch run: its messages are settled one by one; replay failed ones with kedge dlq replay")]
    BatchRun(String),
}

/// The sentence for a refused state change.
fn refused(action: &Action, c: &JobControl) -> String {
    let since = DateTime::<Utc>::from_timestamp_millis(c.since_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let why = c
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let hint = match c.state {
        OperatorState::Active => {
            let from = action.from()[0];
            let article = if from == OperatorState::Iced {
                "an"
            } else {
                "a"
            };
            format!("{} applies to {article} {from} job", action.name())
        }
        OperatorState::Paused => "resume it first (kedge resume)".into(),
        OperatorState::Held => "release it first (kedge release)".into(),
        OperatorState::Iced => "unice it first (kedge unice)".into(),
    };
    if c.state == OperatorState::Active {
        format!(
            "cannot {} job {}: it is active; {hint}",
            action.name(),
            c.job
        )
    } else {
        format!(
            "cannot {} job {}: it is {} (by {} since {since}{why}); {hint}",
            action.name(),
            c.job,
            c.state,
            c.actor
        )
    }
}

/// A change of a job's operator state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Hold,
    Release,
    Ice,
    Unice,
}

impl Action {
    /// The action's name, as the CLI command and the audit log spell it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Ice => "ice",
            Action::Unice => "unice",
        }
    }
    /// The state the job is in afterwards.
    pub fn to(self) -> OperatorState {
        match self {
            Action::Pause => OperatorState::Paused,
            Action::Hold => OperatorState::Held,
            Action::Ice => OperatorState::Iced,
            Action::Resume | Action::Release | Action::Unice => OperatorState::Active,
        }
    }
    /// The states the action applies to.
    pub fn from(self) -> &'static [OperatorState] {
        match self {
            Action::Pause | Action::Hold | Action::Ice => &[OperatorState::Active],
            Action::Resume => &[OperatorState::Paused],
            Action::Release => &[OperatorState::Held],
            Action::Unice => &[OperatorState::Iced],
        }
    }
}

/// What a state change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub job: String,
    pub action: Action,
    pub to: OperatorState,
    /// Fires skipped while paused or held that now run.
    pub caught_up: Vec<DateTime<Utc>>,
}

/// How a job's operator state looks to the jobs that depend on it (a
/// dependency's `success(x)`, `done(x)`…, evaluated by the dependencies'
/// trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Evaluate its recorded runs as usual (active, or paused: a paused job
    /// makes no new runs, so a condition waiting for one waits).
    Runs,
    /// Held: its dependents wait, whatever its runs say.
    Wait,
    /// Iced: its dependents treat it as succeeded.
    Succeeded,
}

/// How a job in `state` looks to its dependents (AutoSys: ON_HOLD keeps
/// dependents waiting, ON_ICE counts as success).
pub fn as_upstream(state: OperatorState) -> Upstream {
    match state {
        OperatorState::Active | OperatorState::Paused => Upstream::Runs,
        OperatorState::Held => Upstream::Wait,
        OperatorState::Iced => Upstream::Succeeded,
    }
}

/// Pauses `job`: nothing new of it launches until [`resume`].
pub async fn pause(
    store: &Store,
    job: &Job,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    change(store, job, Action::Pause, actor, reason).await
}

/// Resumes a paused `job`, catching up the fires skipped meanwhile as its
/// `catchup` says.
pub async fn resume(
    store: &Store,
    job: &Job,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    change(store, job, Action::Resume, actor, reason).await
}

/// Holds `job` (ON_HOLD) until [`release`].
pub async fn hold(
    store: &Store,
    job: &Job,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    change(store, job, Action::Hold, actor, reason).await
}

/// Releases a held `job`: the newest fire that came while it was held runs
/// at once.
pub async fn release(
    store: &Store,
    job: &Job,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    change(store, job, Action::Release, actor, reason).await
}

/// Ices `job` (ON_ICE) until [`unice`].
pub async fn ice(
    store: &Store,
    job: &Job,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    change(store, job, Action::Ice, actor, reason).await
}

/// Unices an iced `job`: it waits for its next occurrence.
pub async fn unice(
    store: &Store,
    job: &Job,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    change(store, job, Action::Unice, actor, reason).await
}

/// Applies `action` to `job`, with its audit record and catch-up, in one
/// store transaction.
pub async fn change(
    store: &Store,
    job: &Job,
    action: Action,
    actor: &str,
    reason: Option<&str>,
) -> Result<Transition, OperatorError> {
    let now = store.clock().now();
    let catch_up = |skipped: &[i64]| catch_up(job, action, skipped, now);
    let has_catch_up = matches!(action, Action::Resume | Action::Release) && job.cron().is_some();
    let change = StateChange {
        job: &job.name,
        to: action.to(),
        from: action.from(),
        reason,
        audit: AuditEntry {
            actor: actor.to_string(),
            action: action.name().to_string(),
            job: Some(job.name.clone()),
            run_id: None,
            reason: reason.map(str::to_string),
            details: None,
        },
        catch_up: has_catch_up.then_some(&catch_up as _),
    };
    match store.change_job_state(&change).await? {
        Changed::Refused { current } => Err(OperatorError::Refused { action, current }),
        Changed::Done { caught_up, .. } => {
            tracing::info!(job = %job.name, action = action.name(), %actor, caught_up = caught_up.len(), "operator changed the job's state");
            Ok(Transition {
                job: job.name.clone(),
                action,
                to: action.to(),
                caught_up: caught_up
                    .into_iter()
                    .filter_map(DateTime::from_timestamp_millis)
                    .collect(),
            })
        }
    }
}

/// The work items of the fires `skipped` (ascending, Unix ms) that run
/// when `job` leaves its state by `action`: on resume, as `catchup` says
/// (with `starting_deadline`, as after downtime); on release, the newest.
pub fn catch_up(
    job: &Job,
    action: Action,
    skipped: &[i64],
    now: DateTime<Utc>,
) -> Vec<NewWorkItem> {
    let Some(cron) = job.cron() else {
        return Vec::new();
    };
    let fires: Vec<DateTime<Utc>> = skipped
        .iter()
        .filter_map(|ms| DateTime::from_timestamp_millis(*ms))
        .collect();
    // Every skipped fire is late by now (it was decided when it came), so
    // `catchup` applies to all of them, as after downtime.
    let eligible: Vec<DateTime<Utc>> = fires
        .iter()
        .copied()
        .filter(|f| {
            let age = (now - *f).to_std().unwrap_or_default();
            cron.starting_deadline.is_none_or(|d| age <= d)
        })
        .collect();
    let run: Vec<DateTime<Utc>> = match (action, cron.catchup) {
        (Action::Resume, Catchup::None) => Vec::new(),
        (Action::Resume, Catchup::Latest) => eligible.last().copied().into_iter().collect(),
        (Action::Resume, Catchup::All) => eligible,
        (Action::Release, _) => fires.last().copied().into_iter().collect(),
        _ => Vec::new(),
    };
    run.into_iter()
        .map(|f| intake::cron_work_item(&job.name, f, job.deadline_after(f)))
        .collect()
}

/// What `kedge backfill` asks for.
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `None`: `forbid`, unless the job's own `overlap` is `allow`.
    pub overlap: Option<BackfillOverlap>,
    pub max_active: u32,
    pub rerun: Rerun,
    pub dry_run: bool,
    pub reason: Option<String>,
}

/// The fires `job` would have had in `[from, to)`, from the scheduler's
/// enumeration. Errors: not a cron job, an empty range or one past now, or
/// more than [`MAX_BACKFILL_FIRES`] fires.
pub fn backfill_fires(
    job: &Job,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, OperatorError> {
    let Some(cron) = job.cron() else {
        return Err(OperatorError::NotCron(job.name.clone()));
    };
    let show = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if from >= to {
        return Err(OperatorError::BadRange(format!(
            "--from {} is not before --to {}: the range [from, to) is empty",
            show(from),
            show(to)
        )));
    }
    if to > now {
        return Err(OperatorError::BadRange(format!(
            "--to {} is after now ({}): fires from now on are the scheduler's; end the range at now or earlier",
            show(to),
            show(now)
        )));
    }
    let ms = chrono::Duration::milliseconds(1);
    // With the job's calendar rules: a fire its blackout skips is not
    // created; a shifted or deferred one at the time it would have run.
    let fires: Vec<DateTime<Utc>> = fires_between(cron, from - ms, to - ms, MAX_BACKFILL_FIRES + 1)
        .into_iter()
        .filter(|f| !matches!(f.outcome, crate::triggers::rules::Planned::Skipped { .. }))
        .map(|f| f.at)
        .collect();
    if fires.len() > MAX_BACKFILL_FIRES {
        return Err(OperatorError::TooManyFires);
    }
    Ok(fires)
}

/// Creates `job`'s fires in `[from, to)` that never ran (and, as
/// `rerun` says, runs finished ones again), recorded with their audit
/// entry in one transaction. Idempotent without `rerun`.
pub async fn backfill(
    store: &Store,
    job: &Job,
    req: &BackfillRequest,
    actor: &str,
) -> Result<BackfillReport, OperatorError> {
    let fires = backfill_fires(job, req.from, req.to, store.clock().now())?;
    let items: Vec<NewWorkItem> = fires
        .iter()
        .map(|f| intake::cron_work_item(&job.name, *f, job.deadline_after(*f)))
        .collect();
    let overlap = req.overlap.unwrap_or(match job.cron().map(|c| c.overlap) {
        Some(Overlap::Allow) => BackfillOverlap::Allow,
        _ => BackfillOverlap::Forbid,
    });
    let report = store
        .backfill(&NewBackfill {
            job: &job.name,
            from_ms: req.from.timestamp_millis(),
            to_ms: req.to.timestamp_millis(),
            max_active: req.max_active.max(1),
            overlap,
            rerun: req.rerun,
            fires: &items,
            dry_run: req.dry_run,
            audit: AuditEntry {
                actor: actor.to_string(),
                action: "backfill".into(),
                job: Some(job.name.clone()),
                run_id: None,
                reason: req.reason.clone(),
                details: None,
            },
        })
        .await?;
    if !req.dry_run {
        tracing::info!(job = %job.name, %actor, fires = report.fires.len(), started = report.started(), backfill = ?report.id, "backfill recorded");
    }
    Ok(report)
}

/// Runs a finished run's work again as a new attempt (same work item and
/// payload, a fresh retry budget). Returns the new run's id. Refused while
/// the run, or a newer attempt of the same work, is pending or running.
pub async fn rerun(
    store: &Store,
    run_id: &str,
    actor: &str,
    reason: Option<&str>,
) -> Result<String, OperatorError> {
    let Some(run) = store.get_run(run_id).await? else {
        return Err(OperatorError::NoSuchRun(run_id.to_string()));
    };
    if !store.batch_members(run_id).await?.is_empty() {
        return Err(OperatorError::BatchRun(run_id.to_string()));
    }
    let audit = AuditEntry {
        actor: actor.to_string(),
        action: "rerun".into(),
        job: Some(run.job.clone()),
        run_id: Some(run_id.to_string()),
        reason: reason.map(str::to_string),
        details: None,
    };
    match store.rerun(run_id, &audit).await? {
        None => Err(OperatorError::NoSuchRun(run_id.to_string())),
        Some(Err(state)) => Err(OperatorError::NotFinished {
            run: run_id.to_string(),
            state,
        }),
        Some(Ok(new_run)) => {
            tracing::info!(run = %run_id, %new_run, %actor, "operator reran a run");
            Ok(new_run)
        }
    }
}

/// The OS user running this process: its passwd entry's name, else
/// `$USER`, else `uid <n>`. The CLI's actor in the audit log.
pub fn os_user() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into `pwd` and
    // `buf`, which outlive the call, and `result` points into them.
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        if let Ok(n) = name.to_str() {
            if !n.is_empty() {
                return n.to_string();
            }
        }
    }
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_jobs_keep_dependents_waiting_and_iced_ones_count_as_succeeded() {
        assert_eq!(as_upstream(OperatorState::Active), Upstream::Runs);
        assert_eq!(as_upstream(OperatorState::Paused), Upstream::Runs);
        assert_eq!(as_upstream(OperatorState::Held), Upstream::Wait);
        assert_eq!(as_upstream(OperatorState::Iced), Upstream::Succeeded);
    }

    #[test]
    fn each_action_goes_from_its_states_to_its_state() {
        use OperatorState::*;
        for (a, from, to) in [
            (Action::Pause, Active, Paused),
            (Action::Resume, Paused, Active),
            (Action::Hold, Active, Held),
            (Action::Release, Held, Active),
            (Action::Ice, Active, Iced),
            (Action::Unice, Iced, Active),
        ] {
            assert_eq!(a.from(), [from], "{}", a.name());
            assert_eq!(a.to(), to, "{}", a.name());
        }
    }

    #[test]
    fn a_refusal_says_who_why_and_what_to_do() {
        let c = JobControl {
            job: "nightly".into(),
            state: OperatorState::Held,
            reason: Some("investigating".into()),
            actor: "alice".into(),
            since_ms: 1_800_000_000_000,
        };
        assert_eq!(
            refused(&Action::Pause, &c),
            "cannot pause job nightly: it is held (by alice since 2027-01-15T08:00:00Z: investigating); release it first (kedge release)"
        );
        let active = JobControl {
            state: OperatorState::Active,
            ..c
        };
        assert_eq!(
            refused(&Action::Resume, &active),
            "cannot resume job nightly: it is active; resume applies to a paused job"
        );
    }

    #[test]
    fn the_os_user_has_a_name() {
        assert!(!os_user().is_empty());
    }
}
