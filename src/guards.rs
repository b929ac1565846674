//! Load guards, the I/O: one polling task per guard measures its probe
//! every `interval` and keeps the guard's state on a shared [`Board`]; the
//! dispatcher reads the board when it decides what launches and how big
//! ([`crate::planner::guards`] decides what a state means).
//!
//! # Expected flow
//!
//! 1. The daemon starts one [`watch`] task per guard its jobs use (a shared
//!    guard once, however many jobs name it). The board holds every guard
//!    in its initial state, "not measured yet", from the start, so the
//!    dispatcher's first pass already respects it.
//! 2. Each tick measures once, bounded by the guard's `timeout` (plus a
//!    second of grace around the probe's own deadline), so a hanging
//!    probe never blocks: it is a failed measurement.
//! 3. The reading moves the state ([`crate::planner::guards::observe`]).
//!    At the first measurement and when the guard's effect changes
//!    (clear, holding, throttling, probe failing), one log line says so and the dispatcher is woken, so held
//!    runs launch as soon as a guard clears; otherwise nothing is logged.
//!    Every state is published to `/healthz` and `/metrics`
//!    ([`crate::health::set_guard`]).
//!
//! # Guarantees
//!
//! A probe that fails or hangs never crashes the daemon and never counts
//! as fine in silence: it is logged (at the change), counted in
//! `/healthz` (`failures`, `error`), and with `on_probe_failure: hold` (the
//! default) it holds the guard's jobs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::guard::Guard;
use crate::config::Job;
use crate::planner::guards::{self as decide, Effect, GuardState, JobGuards, Reading};
use crate::probes::{self, ProbeContext};
use crate::store::Store;

/// Extra time granted around a probe's own timeout before the watcher
/// gives up on it (the probe normally stops itself first).
const GRACE: Duration = Duration::from_secs(1);

/// One guard's entry on the board.
#[derive(Debug, Clone)]
struct Entry {
    guard: Arc<Guard>,
    state: GuardState,
    /// Since when the effect is what it is.
    since: DateTime<Utc>,
    /// Failed measurements since the daemon started.
    failures: u64,
    /// No measurement yet: the first one is always reported.
    unmeasured: bool,
}

/// Every guard's current state, shared by the watchers (writers) and the
/// dispatcher (reader). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Board {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Board {
    /// A board with every guard of `jobs` in its initial state.
    pub fn new<'a>(jobs: impl IntoIterator<Item = &'a Job>, now: DateTime<Utc>) -> Board {
        let board = Board::default();
        {
            let mut m = board.lock();
            for g in jobs.into_iter().flat_map(|j| j.guards.iter()) {
                m.entry(g.name.clone()).or_insert_with(|| Entry {
                    guard: g.clone(),
                    state: GuardState::initial(),
                    since: now,
                    failures: 0,
                    unmeasured: true,
                });
            }
        }
        board.publish_all();
        board
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guards on the board.
    pub fn guards(&self) -> Vec<Arc<Guard>> {
        self.lock().values().map(|e| e.guard.clone()).collect()
    }

    /// Records a reading of guard `name` at `now`. Returns the new effect
    /// described when the effect changed (the caller logs it once and
    /// wakes the dispatcher), `None` when it did not.
    pub fn record(&self, name: &str, reading: Reading, now: DateTime<Utc>) -> Option<Change> {
        let mut m = self.lock();
        let e = m.get_mut(name)?;
        let spec = crate::planner::guards::GuardSpec::of(&e.guard);
        let before = decide::effect(&spec, &e.state);
        let failed_before = e.state.error.is_some();
        if matches!(reading, Reading::Failed(_)) {
            e.failures += 1;
        }
        e.state = decide::observe(&spec, &e.state, reading);
        let after = decide::effect(&spec, &e.state);
        let failing = e.state.error.is_some();
        let first = std::mem::take(&mut e.unmeasured);
        let changed = first || kind(before) != kind(after) || failed_before != failing;
        if changed {
            e.since = now;
        }
        crate::health::set_guard(name, status(e));
        if !changed {
            return None;
        }
        Some(Change {
            effect: after,
            described: decide::describe(name, &spec, &e.state),
            error: e.state.error.clone(),
        })
    }

    /// The guards of `job` taken together, now.
    pub fn for_job(&self, job: &Job) -> JobGuards {
        let m = self.lock();
        JobGuards::combine(job.guards.iter().filter_map(|g| {
            let e = m.get(&g.name)?;
            let spec = crate::planner::guards::GuardSpec::of(&e.guard);
            Some((
                decide::describe(&g.name, &spec, &e.state),
                decide::effect(&spec, &e.state),
            ))
        }))
    }

    fn publish_all(&self) {
        for (name, e) in self.lock().iter() {
            crate::health::set_guard(name, status(e));
        }
    }
}

/// The kind of an effect, for "did it change" (a throttle's level moves
/// with every value and is not a change worth a log line).
fn kind(e: Effect) -> u8 {
    match e {
        Effect::Clear => 0,
        Effect::Hold => 1,
        Effect::Throttle(_) => 2,
    }
}

fn status(e: &Entry) -> crate::health::GuardStatus {
    let spec = crate::planner::guards::GuardSpec::of(&e.guard);
    let effect = decide::effect(&spec, &e.state);
    crate::health::GuardStatus {
        holding: effect != Effect::Clear,
        effect: match effect {
            Effect::Clear => "clear",
            Effect::Hold => "holding",
            Effect::Throttle(_) => "throttling",
        },
        action: e.guard.action,
        value: e.state.value,
        max: e.guard.max,
        resume_below: e.guard.resume_below,
        error: e.state.error.clone(),
        failures: e.failures,
        since: e.since,
    }
}

/// A guard's effect changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub effect: Effect,
    /// `primary-db-cpu 91 > 80`.
    pub described: String,
    pub error: Option<String>,
}

/// Measures `guard` once, never taking longer than its timeout and a
/// second: a probe that fails or hangs is a [`Reading::Failed`].
pub async fn measure(guard: &Guard, store: &Store) -> Reading {
    let ctx = ProbeContext {
        store,
        job: &guard.name,
    };
    let probe = probes::measure(&guard.probe, &ctx, guard.timeout);
    match tokio::time::timeout(guard.timeout + GRACE, probe).await {
        Ok(Ok(v)) => Reading::Value(v),
        Ok(Err(e)) => Reading::Failed(crate::error_chain(&e)),
        Err(_) => Reading::Failed(format!(
            "{} probe did not answer within {}",
            guard.probe.kind(),
            humantime::format_duration(guard.timeout + GRACE)
        )),
    }
}

/// Polls `guard` every `interval` (the first measurement at once) until
/// `shutdown`, recording each reading on `board`; a change of effect is
/// logged and wakes the dispatcher through `wake`.
pub async fn watch(
    guard: Arc<Guard>,
    board: Board,
    store: Store,
    clock: Clock,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let reading = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = measure(&guard, &store) => r,
        };
        if let Reading::Failed(why) = &reading {
            tracing::debug!(guard = %guard.name, error = %why, "guard probe failed");
        }
        if let Some(change) = board.record(&guard.name, reading, clock.now()) {
            log_change(&guard, &change);
            wake.notify_one();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(guard.interval) => {}
        }
    }
}

/// The one log line of a change.
fn log_change(guard: &Guard, c: &Change) {
    let action = guard.action;
    match (c.effect, &c.error) {
        (Effect::Hold, Some(e)) => tracing::warn!(guard = %guard.name, ?action, error = %e,
            "guard probe failing; the guard holds its jobs (on_probe_failure: hold)"),
        (_, Some(e)) => {
            tracing::warn!(guard = %guard.name, ?action, error = %e, state = %c.described,
            "guard probe failing; the guard keeps its last state (on_probe_failure: ignore)")
        }
        (Effect::Hold, None) => {
            tracing::warn!(guard = %guard.name, state = %c.described, "guard holding: no new runs of its jobs launch")
        }
        (Effect::Throttle(_), None) => tracing::warn!(guard = %guard.name, state = %c.described,
            "guard throttling: its jobs' runs get less parallelism"),
        (Effect::Clear, None) => {
            tracing::info!(guard = %guard.name, state = %c.described, "guard clear")
        }
    }
}

/// A [`watch`] task for every guard on `board`, for the daemon to spawn.
pub fn watchers(
    board: &Board,
    store: &Store,
    clock: Clock,
    wake: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
    board
        .guards()
        .into_iter()
        .map(|g| {
            watch(
                g,
                board.clone(),
                store.clone(),
                clock,
                wake.clone(),
                shutdown.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with_guard(guard: &str) -> Job {
        crate::testing::job(&format!(
            "name: j\ntrigger:\n  queue:\n    builtin: {{}}\nguards:\n  - {guard}\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n"
        ))
    }

    /// A probe that hangs is a failed reading after its timeout (and a
    /// second), on paused time: it neither blocks for ever nor reads as fine.
    #[tokio::test]
    async fn a_hanging_probe_is_a_failure_after_its_timeout() {
        let job = job_with_guard(
            "{ name: slow, probe: { command: [sleep, '600'] }, max: 1, timeout: 2s }",
        );
        let store = crate::testing::store().await;
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let r = measure(&job.guards[0], &store).await;
        assert!(
            matches!(&r, Reading::Failed(e) if e.contains("timed out") || e.contains("did not answer")),
            "{r:?}"
        );
        let bound = Duration::from_secs(2) + GRACE + Duration::from_millis(10);
        assert!(started.elapsed() <= bound, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_board_reports_changes_once_and_holds_on_failure() {
        let job = job_with_guard(
            "{ name: board-cpu, probe: { command: [echo, '1'] }, max: 80, resume_below: 70 }",
        );
        let now = Utc::now();
        let board = Board::new([&job], now);
        // Not measured yet: held.
        assert!(board.for_job(&job).hold.is_some());
        // The first reading is always a change (here: from "not measured").
        let c = board
            .record("board-cpu", Reading::Value(50.0), now)
            .unwrap();
        assert_eq!(c.effect, Effect::Clear);
        assert!(board.for_job(&job).hold.is_none());
        assert_eq!(
            board.record("board-cpu", Reading::Value(60.0), now),
            None,
            "no change, no line"
        );
        let c = board
            .record("board-cpu", Reading::Value(91.0), now)
            .unwrap();
        assert_eq!(
            (c.effect, c.described.as_str()),
            (Effect::Hold, "board-cpu 91 > 80")
        );
        assert_eq!(
            board.for_job(&job).hold.as_deref(),
            Some("board-cpu 91 > 80")
        );
        assert_eq!(board.record("board-cpu", Reading::Value(75.0), now), None);
        let c = board
            .record("board-cpu", Reading::Value(65.0), now)
            .unwrap();
        assert_eq!(c.effect, Effect::Clear);
        let c = board
            .record("board-cpu", Reading::Failed("boom".into()), now)
            .unwrap();
        assert_eq!((c.effect, c.error.as_deref()), (Effect::Hold, Some("boom")));
        let h = crate::health::guards();
        assert_eq!(h["board-cpu"].failures, 1);
        assert_eq!(h["board-cpu"].error.as_deref(), Some("boom"));
        assert!(h["board-cpu"].holding);
    }
}
