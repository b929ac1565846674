//! The lifecycle of work items and runs: states, who moves them, and names.
//!
//! # Expected flow
//!
//! A trigger hands a message, cron fire or manual request to intake, which
//! stores a **work item** and its first **run** (attempt 1) as `pending`, in
//! one transaction. The dispatcher claims due pending runs (`pending →
//! running`) within the planner's limits and launches them on the executor.
//! The executor reports an outcome; the finalizer settles the run:
//!
//! ```text
//!            intake                dispatcher              finalizer
//!   (none) ─────────▶ pending ───────────────▶ running ──┬──▶ succeeded
//!                      │  ▲                      │       ├──▶ failed ──▶ (next attempt: new pending run)
//!                      │  │ launch failed,       │       ├──▶ dead   ──▶ dead letter written
//!                      │  │ shutdown, crash      │       └──▶ failed (cancelled, skipped at risk)
//!                      │  └──────────────────────┘
//!                      ├──▶ failed  (scheduler: `overlap: replace` cancels it)
//!                      └──▶ dead    (dispatcher: the message's deadline passed)
//! ```
//!
//! | run state   | meaning                                        | moved out by |
//! |-------------|------------------------------------------------|--------------|
//! | `pending`   | waiting for its time (`scheduled_at`, retry backoff), for a slot, and for its job to be active (not paused, held or iced) | the dispatcher; the scheduler; the dispatcher's expiry |
//! | `running`   | launched on the executor                       | the finalizer; the dispatcher (launch failed); shutdown; start-up recovery |
//! | `succeeded` | finished well (final)                          | nobody |
//! | `failed`    | this attempt failed; a later attempt exists, or the run was cancelled (final) | nobody |
//! | `dead`      | the last attempt failed, or the message expired; the work item was dead-lettered (final) | nobody |
//!
//! Every transition, who makes it and where:
//!
//! | from → to | who | store call |
//! |-----------|-----|------------|
//! | (none) → `pending` | intake (queue message, manual trigger, cron fire) | `intake_many`, `insert_work_item`, `record_cron_fires` |
//! | (none) → `pending` | the dispatcher forms a batch run | `create_batch_run` |
//! | (none) → `pending` | the finalizer schedules the next attempt; a batch member retried alone | `settle`, `settle_batch` |
//! | (none) → `pending` | `kedge dlq replay` | `replay_dead_letter` |
//! | (none) → `pending` | an operator: `kedge rerun`, `kedge backfill` (new fires, `--rerun`), the catch-up of `kedge resume` / `kedge release` ([`crate::operator`]) | `rerun`, `backfill`, `change_job_state` |
//! | `pending` → `running` | the dispatcher claims a due run | `claim_runs` |
//! | `pending` → `failed` | the scheduler, `overlap: replace`: a newer fire cancels it | `cancel_pending_runs` |
//! | `pending` → `dead` | the dispatcher: the message's own deadline passed (`on_expired: dead_letter`) | `expire_run` |
//! | `running` → `pending` | the dispatcher: a claim not launched after a launch failed in the same pass | `unclaim_runs` |
//! | `running` → `pending` | the dispatcher: the launch failed for a reason that may pass (due again after its backoff) | `requeue_launch` |
//! | `running` → `pending` | the daemon: shutdown or start-up recovery interrupted it | `requeue_run` |
//! | `running` → `succeeded` / `failed` / `dead` | the finalizer, from the executor's outcome (a create the API refused for good, or a local container that cannot be started, is a `rejected` failure), sizing's at-risk skip/fail, or the dispatcher's `launch_timeout` | `settle`, `settle_batch` |
//!
//! Final runs and finished work items are not moved again, only deleted:
//! [`crate::retention`] removes them `retention.history` after they finished
//! (never a `pending` or `running` run, `queued` or `replayed` work, or a
//! dead work item whose dead letter is still open).
//!
//! # Guarantees
//!
//! - A work item is unique per (source, job, message id): a redelivered
//!   message or a re-recorded cron fire is a no-op — for as long as the
//!   work item is kept (`retention.history`); after that a redelivery is
//!   new work.
//! - A work item ends as exactly one `succeeded` run or one dead letter; each
//!   settlement happens in one transaction guarded on the run being `running`,
//!   so an outcome reported twice settles once.
//! - Run ids are deterministic ([`run_name`]), so a re-launch after a crash
//!   reuses the same name (on Kubernetes: 409 AlreadyExists means "already
//!   launched").
//!
//! # Assumptions
//!
//! One daemon dispatches from a store at a time (the Kubernetes executor adds
//! a Lease for that); CLI commands may write to the store concurrently.
//!
//! # Caveats
//!
//! Execution is at-least-once: a run interrupted by a crash or shutdown goes
//! back to `pending` and is launched again under the same run id, so its
//! containers may have run partly before.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The state of one run (one attempt). See the module docs for the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Dead,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Dead => "dead",
        }
    }
    /// True for states nothing moves out of.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Dead
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => RunState::Pending,
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "dead" => RunState::Dead,
            other => return Err(format!("unknown run state {other:?}")),
        })
    }
}

/// The state of a work item: `queued` (a run is pending or running, or a
/// retry is waiting), then exactly one of `succeeded`, `dead`, `cancelled`.
/// A replayed dead letter goes back to `queued`. A broker message's dead
/// letter replayed into its source is `replayed` until the source delivers
/// it again; that delivery (same source and message id) revives the item
/// instead of being dropped as a duplicate. Who moves items out of:
/// `queued` — the finalizer; `replayed` — intake; the others are final
/// until `kedge dlq replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkState {
    Queued,
    Succeeded,
    Dead,
    Cancelled,
    Replayed,
}

impl WorkState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Queued => "queued",
            WorkState::Succeeded => "succeeded",
            WorkState::Dead => "dead",
            WorkState::Cancelled => "cancelled",
            WorkState::Replayed => "replayed",
        }
    }
}

impl fmt::Display for WorkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for WorkState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => WorkState::Queued,
            "succeeded" => WorkState::Succeeded,
            "dead" => WorkState::Dead,
            "cancelled" => WorkState::Cancelled,
            "replayed" => WorkState::Replayed,
            other => return Err(format!("unknown work item state {other:?}")),
        })
    }
}

/// What the cron scheduler decided about one fire, recorded once per (job,
/// fire time). A fire recorded again is left as it was. Only an operator
/// moves a fire that never ran (`skipped`, `missed`) to `recorded`: the
/// catch-up of `kedge resume` / `kedge release`, or `kedge backfill`.
///
/// | outcome    | meaning                                                  |
/// |------------|----------------------------------------------------------|
/// | `recorded` | a work item and its first run were stored with the fire; the run waits for a slot |
/// | `launched` | as `recorded`, and the run has started (never stored: read from the run) |
/// | `skipped`  | not run: the overlap policy (or a newer fire) held it back, or the job was paused, held or iced (detail `paused`, `held`, `iced`; resume and release may catch it up later, then it reads `recorded`) |
/// | `missed`   | not run: kedge was down at the time and the catch-up policy dropped it |
/// | `replaced` | run, after cancelling the job's active runs (overlap `replace`) |
/// | `waiting`  | a fire of a job with `trigger.after` waiting for its expression (`triggers::after` moves it to `recorded` when it holds, or to `skipped: dependency timeout` after `wait_timeout`) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    Recorded,
    Launched,
    Skipped,
    Missed,
    Replaced,
    Waiting,
}

impl FireOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Recorded => "recorded",
            FireOutcome::Launched => "launched",
            FireOutcome::Skipped => "skipped",
            FireOutcome::Missed => "missed",
            FireOutcome::Replaced => "replaced",
            FireOutcome::Waiting => "waiting",
        }
    }
}

impl fmt::Display for FireOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for FireOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "recorded" => FireOutcome::Recorded,
            "launched" => FireOutcome::Launched,
            "skipped" => FireOutcome::Skipped,
            "missed" => FireOutcome::Missed,
            "replaced" => FireOutcome::Replaced,
            "waiting" => FireOutcome::Waiting,
            other => return Err(format!("unknown cron fire outcome {other:?}")),
        })
    }
}

/// A job's operator state (`kedge pause | hold | ice` and back), kept in
/// the store so it survives restarts. Checked where runs are created (the
/// cron scheduler) and launched (the dispatcher); see [`crate::operator`]
/// for each state's semantics.
///
/// | state    | set by   | left by           | cron fires meanwhile | on leaving |
/// |----------|----------|-------------------|----------------------|------------|
/// | `active` | (default), resume, release, unice | — | run | — |
/// | `paused` | `kedge pause`  | `kedge resume`  | `skipped: paused` | caught up as `catchup` says |
/// | `held`   | `kedge hold`   | `kedge release` | `skipped: held`   | the latest runs at once |
/// | `iced`   | `kedge ice`    | `kedge unice`   | `skipped: iced`   | nothing: the next fire runs |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorState {
    Active,
    Paused,
    Held,
    Iced,
}

impl OperatorState {
    pub const ALL: [OperatorState; 4] = [
        OperatorState::Active,
        OperatorState::Paused,
        OperatorState::Held,
        OperatorState::Iced,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorState::Active => "active",
            OperatorState::Paused => "paused",
            OperatorState::Held => "held",
            OperatorState::Iced => "iced",
        }
    }
    /// True when nothing new of the job launches.
    pub fn stops_launches(self) -> bool {
        self != OperatorState::Active
    }
}

impl fmt::Display for OperatorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for OperatorState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        OperatorState::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown operator state {s:?}"))
    }
}

/// Where a work item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Cron,
    Queue,
    Manual,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Cron => "cron",
            TriggerKind::Queue => "queue",
            TriggerKind::Manual => "manual",
        }
    }
}

impl FromStr for TriggerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "cron" => TriggerKind::Cron,
            "queue" => TriggerKind::Queue,
            "manual" => TriggerKind::Manual,
            other => return Err(format!("unknown trigger kind {other:?}")),
        })
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The longest suffix kedge adds to a job name to make a run's Job name:
/// `-<10 digits>-<2 digits>` for cron fires, `-<10 hex>-<2 digits>` for messages.
pub const RUN_SUFFIX_MAX: usize = 14;
/// Kubernetes limits a Job name (it becomes a label value) to 63 characters.
pub const K8S_NAME_MAX: usize = 63;
/// The longest job name that still leaves room for [`RUN_SUFFIX_MAX`].
pub const JOB_NAME_MAX: usize = K8S_NAME_MAX - RUN_SUFFIX_MAX;

/// What a run's name is derived from.
#[derive(Debug, Clone, Copy)]
pub enum RunKey<'a> {
    /// A cron fire at this Unix time (seconds).
    CronFire(i64),
    /// A message (or manual trigger) with this id.
    Message(&'a str),
}

/// The deterministic run id, also the Kubernetes Job name (DESIGN §4):
/// `<job>-<unix minutes>` for a cron fire on a minute (`<unix seconds>` when
/// the schedule has seconds), `<job>-<10 hex of sha256(message id)>` for a
/// message; attempts after the first append `-<attempt>`. At most
/// `job.len() + 14` characters, DNS-1123.
///
/// Attempts beyond 99 (`max_attempts` is at most 99, but each dlq replay
/// adds a fresh budget) can make that longer than Kubernetes' 63: such a
/// name is replaced by `<job>-<10 hex of sha256(the long name)>`, still
/// deterministic, so a re-create still answers 409.
pub fn run_name(job: &str, key: RunKey<'_>, attempt: u32) -> String {
    let name = long_run_name(job, key, attempt);
    if name.len() <= K8S_NAME_MAX {
        return name;
    }
    format!("{job}-{}", hex10(name.as_bytes()))
}

/// The first 10 hex digits of sha256(`bytes`).
fn hex10(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

fn long_run_name(job: &str, key: RunKey<'_>, attempt: u32) -> String {
    let base = match key {
        RunKey::CronFire(secs) if secs % 60 == 0 => format!("{job}-{}", secs / 60),
        RunKey::CronFire(secs) => format!("{job}-{secs}"),
        RunKey::Message(id) => format!("{job}-{}", hex10(id.as_bytes())),
    };
    if attempt <= 1 {
        base
    } else {
        format!("{base}-{attempt}")
    }
}

/// The run id of attempt `attempt` of a work item, from what the work item
/// stores: cron work items keep their fire time (Unix ms) as message id.
pub fn attempt_run_name(job: &str, trigger: TriggerKind, message_id: &str, attempt: i64) -> String {
    let attempt = attempt.clamp(1, u32::MAX as i64) as u32;
    match (trigger, message_id.parse::<i64>()) {
        (TriggerKind::Cron, Ok(fire_ms)) => {
            run_name(job, RunKey::CronFire(fire_ms / 1000), attempt)
        }
        _ => run_name(job, RunKey::Message(message_id), attempt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        use RunState as R;
        for s in [R::Pending, R::Running, R::Succeeded, R::Failed, R::Dead] {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        use WorkState as W;
        for s in [W::Queued, W::Succeeded, W::Dead, W::Cancelled, W::Replayed] {
            assert_eq!(s.as_str().parse::<WorkState>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        use FireOutcome as F;
        for s in [F::Launched, F::Skipped, F::Missed, F::Replaced] {
            assert_eq!(s.as_str().parse::<FireOutcome>(), Ok(s));
            assert_eq!(serde_json::json!(s), s.as_str());
        }
        for s in [TriggerKind::Cron, TriggerKind::Queue, TriggerKind::Manual] {
            assert_eq!(s.as_str().parse::<TriggerKind>(), Ok(s));
        }
        for s in OperatorState::ALL {
            assert_eq!(s.as_str().parse::<OperatorState>(), Ok(s));
            assert_eq!(serde_json::json!(s), s.as_str());
        }
        assert!("launched ".parse::<FireOutcome>().is_err());
        assert!("".parse::<WorkState>().is_err());
    }

    #[test]
    fn run_names_are_deterministic_and_short() {
        // A fire off the minute (6-field schedules) is named by its second.
        assert_eq!(
            run_name("backup", RunKey::CronFire(1_800_000_001), 1),
            "backup-1800000001"
        );
        assert_eq!(
            run_name("backup", RunKey::CronFire(1_799_999_940), 1),
            "backup-29999999"
        );
        assert_eq!(
            run_name("backup", RunKey::CronFire(1_799_999_940), 2),
            "backup-29999999-2"
        );
        let a = run_name("q", RunKey::Message("m-1"), 1);
        assert_eq!(a, run_name("q", RunKey::Message("m-1"), 1));
        assert_ne!(a, run_name("q", RunKey::Message("m-2"), 1));
        assert_eq!(a.len(), "q-".len() + 10);
        let longest = run_name(&"j".repeat(49), RunKey::Message("x"), 99);
        assert_eq!(longest.len(), 63);
        assert!(crate::config::job::is_dns1123_label(&longest));
        // Past 99 attempts (dlq replays), a long job's names stay within 63,
        // distinct and deterministic.
        let a100 = run_name(&"j".repeat(49), RunKey::Message("x"), 100);
        let a101 = run_name(&"j".repeat(49), RunKey::Message("x"), 101);
        assert_eq!(a100.len(), 60);
        assert_ne!(a100, a101);
        assert_eq!(a100, run_name(&"j".repeat(49), RunKey::Message("x"), 100));
        assert_eq!(
            run_name("short", RunKey::Message("x"), 100).len(),
            "short".len() + 15
        );
    }
}
