//! Scheduler and dispatcher behaviour on tokio's paused time: the code under
//! test reads a [`Clock`] driven by tokio's clock, every sleep of it
//! elapses at once when nothing else can run, so a simulated week takes
//! milliseconds of real time.
//!
//! Each test runs the real scheduler or the real daemon loop (dispatcher,
//! finalizer, re-planning) against an in-memory SQLite store. The executor
//! is a scripted stand-in ([`Scripted`]): it fails or runs launches as told
//! and reports progress computed from the clock. No test waits a fixed time:
//! each waits for an event (a scheduler pass, a state in the store), with a
//! deadline in *real* seconds (a thread, not a tokio timer, which paused time
//! would skip).
//!
//! Time moves only when a test says so. SQLite answers from its own
//! thread, and while a task waits for it tokio would see nothing to do and
//! move its paused clock on to the next timer (a sleeping scheduler's next
//! fire, the pool's acquire timeout): a test would then depend on how fast
//! that thread is. So each test holds tokio's clock still ([`ManualTime`])
//! and steps it itself: to the scheduler's next wake-up, or one re-planning
//! tick at a time for the daemon, each step ending when the scheduler or
//! the dispatcher reports the pass it made.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use kedge::clock::Clock;
use kedge::config::{DaemonConfig, Job};
use kedge::daemon::Daemon;
use kedge::executor::{Executor, ExecutorError, Launch, Outcome, OutcomeKind, Progress, Stall};
use kedge::lifecycle::{FireOutcome, RunState};
use kedge::store::{CronFire, Store};
use kedge::triggers::scheduler::{self, Pass};
use kedge::triggers::TriggerContext;

// ----- harness ---------------------------------------------------------------

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("RFC 3339").to_utc()
}

/// Holds tokio's paused clock still for as long as it lives: a task that
/// only yields keeps the runtime busy, so the clock never auto-advances and
/// moves only by `tokio::time::advance`.
struct ManualTime(tokio::task::JoinHandle<()>);

impl ManualTime {
    fn start() -> ManualTime {
        ManualTime(tokio::spawn(async {
            loop {
                tokio::task::yield_now().await;
            }
        }))
    }
}

impl Drop for ManualTime {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `fut`, or a panic naming `what` after `secs` of real time.
async fn within_real<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        let _ = tx.send(());
    });
    tokio::select! {
        out = fut => out,
        _ = rx => panic!("{what}: not within {secs} s of real time"),
    }
}

fn daemon_config() -> DaemonConfig {
    kedge::config::daemon::validate(Default::default(), &|_| None).expect("default daemon config")
}

/// A job from its YAML text (written to a file, as a user would).
fn job(dir: &Path, yaml: &str) -> Job {
    let file = dir.join("job.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (job, _) = kedge::config::load_job_file(&file, &daemon_config(), &|_| None)
        .unwrap_or_else(|d| panic!("job does not load: {d}"));
    job
}

/// A migrated in-memory store that reads `clock`.
async fn store_at(at: DateTime<Utc>) -> Store {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    store.migrate().await.expect("migrate");
    store.with_clock(Clock::paused_at(at))
}

/// The scheduler of one cron job, running on `store`, reporting its passes.
struct Scheduler {
    passes: watch::Receiver<Pass>,
    cancels: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    fn start(job: Job, store: &Store) -> Scheduler {
        let (cancel, cancels) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let ctx = TriggerContext {
            store: store.clone(),
            wake: Arc::new(Notify::new()),
            cancel,
            shutdown: stop.clone(),
            clock: store.clock(),
        };
        let (tx, passes) = watch::channel(Pass::default());
        let task = tokio::spawn(scheduler::run_reporting(vec![Arc::new(job)], ctx, tx));
        Scheduler {
            passes,
            cancels,
            stop,
            task,
        }
    }

    /// Waits for the scheduler's next pass and returns its report.
    async fn next_pass(&mut self) -> Pass {
        self.passes.changed().await.expect("the scheduler runs");
        *self.passes.borrow_and_update()
    }

    /// Moves time on to when the scheduler looks again (it sleeps at most
    /// 30 s at a time) and returns the report of the pass it then makes.
    async fn step(&mut self, clock: Clock) -> Pass {
        let next = self.passes.borrow().next.expect("a further fire");
        tokio::time::advance(clock.until(next).min(Duration::from_secs(30))).await;
        self.next_pass().await
    }

    /// Steps until `job` has `n` fire records; returns them.
    async fn fires(&mut self, store: &Store, job: &str, n: usize) -> Vec<CronFire> {
        within_real(20, &format!("{n} fires of {job}"), async {
            if self.passes.borrow().passes == 0 {
                self.next_pass().await; // the first pass, at start
            }
            loop {
                let fires = store.cron_fires(job).await.unwrap();
                if fires.len() >= n {
                    return fires;
                }
                self.step(store.clock()).await;
            }
        })
        .await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn times(fires: &[CronFire]) -> Vec<DateTime<Utc>> {
    fires
        .iter()
        .map(|f| DateTime::from_timestamp_millis(f.fire_ms).unwrap())
        .collect()
}

fn outcomes(fires: &[CronFire]) -> Vec<FireOutcome> {
    fires.iter().map(|f| f.outcome).collect()
}

/// A nightly job in Berlin: 02:30 local, which does not exist on the
/// spring-forward day (2026-03-29, 02:00 → 03:00 CEST).
fn nightly(dir: &Path, policy: &str) -> Job {
    job(
        dir,
        &format!(
            "name: nightly\n\
             trigger:\n  cron: \"30 2 * * *\"\n  timezone: Europe/Berlin\n{policy}\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers: [{{ name: c, command: [\"true\"] }}]\n"
        ),
    )
}

/// The week of 2026-03-26 .. 2026-04-01 at 02:30 Berlin time, in UTC: CET
/// (UTC+1) until the 28th, the spring-forward day fires right after the
/// jump (Debian cron: 03:00 CEST = 01:00 UTC), then CEST (UTC+2).
fn berlin_week() -> Vec<DateTime<Utc>> {
    [
        "2026-03-26T01:30:00Z",
        "2026-03-27T01:30:00Z",
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-30T00:30:00Z",
        "2026-03-31T00:30:00Z",
        "2026-04-01T00:30:00Z",
    ]
    .map(utc)
    .to_vec()
}

// ----- cron on paused time -----------------------------------------------------

/// A week of a live schedule across the spring-forward day: every fire is
/// recorded at its exact instant (the clock reads the fire time when the
/// fire is recorded: no lateness, no fire early), DST included.
#[tokio::test(start_paused = true)]
async fn a_week_of_nightly_fires_across_dst_each_on_the_dot() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(utc("2026-03-25T12:00:00Z")).await;
    let mut s = Scheduler::start(nightly(dir.path(), "  overlap: allow\n"), &store);
    // When each pass that recorded a fire looked: exactly at the fire.
    let mut recorded_at = Vec::new();
    within_real(20, "a week of fires", async {
        s.next_pass().await;
        while recorded_at.len() < 7 {
            let pass = s.step(store.clock()).await;
            if pass.fires > 0 {
                assert_eq!(pass.fires, 1, "one fire per pass on a live schedule");
                recorded_at.push(pass.at.unwrap());
            }
        }
    })
    .await;
    let fires = store.cron_fires("nightly").await.unwrap();
    assert_eq!(times(&fires), berlin_week());
    assert_eq!(recorded_at, berlin_week(), "each fire recorded on the dot");
    assert!(outcomes(&fires).iter().all(|o| *o == FireOutcome::Recorded));
    let runs = store.list_runs(Some("nightly"), None, 100).await.unwrap();
    assert_eq!(runs.len(), 7, "one pending run per fire");
    s.stop().await;
}

/// A store whose nightly job last fired on 2026-03-25 (02:30 CET), read
/// on 2026-04-01 at noon: a week down, across the DST change.
async fn back_after_a_week_down() -> Store {
    let store = store_at(utc("2026-04-01T12:00:00Z")).await;
    let last = utc("2026-03-25T01:30:00Z").timestamp_millis();
    store
        .record_cron_fire("nightly", last, FireOutcome::Recorded, None, None)
        .await
        .unwrap();
    store
}

/// After a week down (across the DST change), `catchup: all` launches every
/// fire within `starting_deadline` and marks the older ones missed.
#[tokio::test(start_paused = true)]
async fn catchup_all_after_a_week_down_launches_the_fires_within_the_starting_deadline() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let store = back_after_a_week_down().await;
    let policy = "  overlap: allow\n  catchup: all\n  starting_deadline: 84h\n";
    let mut s = Scheduler::start(nightly(dir.path(), policy), &store);
    let fires = s.fires(&store, "nightly", 8).await;
    assert_eq!(times(&fires[1..]), berlin_week());
    // 84 h before 2026-04-01T12:00Z is 2026-03-29T00:00Z: the fires of the
    // 26th to the 28th are too old; the DST day's and later ones run.
    use FireOutcome::{Missed, Recorded};
    assert_eq!(
        outcomes(&fires[1..]),
        [Missed, Missed, Missed, Recorded, Recorded, Recorded, Recorded]
    );
    s.stop().await;
}

/// `catchup: latest` (the default) launches only the newest missed fire.
#[tokio::test(start_paused = true)]
async fn catchup_latest_after_a_week_down_launches_only_the_newest_fire() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let store = back_after_a_week_down().await;
    let mut s = Scheduler::start(nightly(dir.path(), "  overlap: allow\n"), &store);
    let fires = s.fires(&store, "nightly", 8).await;
    assert_eq!(times(&fires[1..]), berlin_week());
    let mut want = vec![FireOutcome::Missed; 6];
    want.push(FireOutcome::Recorded);
    assert_eq!(outcomes(&fires[1..]), want);
    let runs = store.list_runs(Some("nightly"), None, 100).await.unwrap();
    assert_eq!(runs.len(), 1);
    s.stop().await;
}

// ----- overlap policies ----------------------------------------------------------

/// An hourly job; the scheduler starts at 10:30, so fires come at 11:00,
/// 12:00, 13:00. Nothing launches the runs unless the test claims them.
fn hourly(dir: &Path, overlap: &str) -> Job {
    job(
        dir,
        &format!(
            "name: hourly\n\
             trigger:\n  cron: \"0 * * * *\"\n  overlap: {overlap}\n\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers: [{{ name: c, command: [\"true\"] }}]\n"
        ),
    )
}

const OVERLAP_START: &str = "2026-06-01T10:30:00Z";

/// Runs the hourly job's scheduler until the 11:00 fire, optionally claims
/// its run (as the dispatcher would: it is then running), then until the
/// 12:00 fire. Returns the fires and the scheduler.
async fn two_fires(overlap: &str, claim_first: bool) -> (Store, Scheduler, Vec<CronFire>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(utc(OVERLAP_START)).await;
    let mut s = Scheduler::start(hourly(dir.path(), overlap), &store);
    let first = s.fires(&store, "hourly", 1).await;
    assert_eq!(first[0].outcome, FireOutcome::Recorded);
    if claim_first {
        let run = &store.list_runs(Some("hourly"), None, 10).await.unwrap()[0];
        // The scheduler sleeps until 12:00 meanwhile; the clock stands
        // still while the test claims, so the claim lands before that fire.
        let claimed = store
            .claim_runs(&[run.run_id.as_str()], store.clock().now_ms())
            .await
            .unwrap();
        assert_eq!(claimed, [true]);
        assert!(store.clock().now() < utc("2026-06-01T12:00:00Z"));
    }
    let fires = s.fires(&store, "hourly", 2).await;
    assert_eq!(
        times(&fires),
        [utc("2026-06-01T11:00:00Z"), utc("2026-06-01T12:00:00Z")]
    );
    (store, s, fires)
}

async fn states(store: &Store) -> Vec<RunState> {
    let mut runs = store.list_runs(Some("hourly"), None, 10).await.unwrap();
    runs.sort_by_key(|r| r.scheduled_ms);
    runs.into_iter().map(|r| r.state).collect()
}

#[tokio::test(start_paused = true)]
async fn overlap_allow_launches_every_fire() {
    let _time = ManualTime::start();
    let (store, s, fires) = two_fires("allow", true).await;
    // The first fire's run was claimed: it reads launched.
    assert_eq!(
        outcomes(&fires),
        [FireOutcome::Launched, FireOutcome::Recorded]
    );
    assert_eq!(states(&store).await, [RunState::Running, RunState::Pending]);
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn overlap_forbid_skips_a_fire_while_a_run_is_active() {
    let _time = ManualTime::start();
    for claim_first in [false, true] {
        let (store, s, fires) = two_fires("forbid", claim_first).await;
        let first = if claim_first {
            FireOutcome::Launched
        } else {
            FireOutcome::Recorded
        };
        assert_eq!(outcomes(&fires), [first, FireOutcome::Skipped]);
        assert!(fires[1].detail.as_deref().unwrap().contains("forbid"));
        assert_eq!(states(&store).await.len(), 1, "no second run");
        s.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn overlap_buffer_one_keeps_one_fire_waiting_behind_a_running_run() {
    let _time = ManualTime::start();
    // Running first run: the 12:00 fire waits behind it …
    let (store, mut s, fires) = two_fires("buffer_one", true).await;
    assert_eq!(
        outcomes(&fires),
        [FireOutcome::Launched, FireOutcome::Recorded]
    );
    // … and the 13:00 fire is skipped: one is already waiting.
    let fires = s.fires(&store, "hourly", 3).await;
    assert_eq!(fires[2].outcome, FireOutcome::Skipped);
    assert!(fires[2].detail.as_deref().unwrap().contains("buffer_one"));
    assert_eq!(states(&store).await, [RunState::Running, RunState::Pending]);
    s.stop().await;
    // A pending (not yet running) first run: the 12:00 fire is skipped.
    let (_, s, fires) = two_fires("buffer_one", false).await;
    assert_eq!(
        outcomes(&fires),
        [FireOutcome::Recorded, FireOutcome::Skipped]
    );
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn overlap_replace_cancels_the_active_run_for_the_new_fire() {
    let _time = ManualTime::start();
    // A pending run is cancelled in the store …
    use FireOutcome::{Launched, Recorded, Replaced};
    let (store, s, fires) = two_fires("replace", false).await;
    assert_eq!(outcomes(&fires), [Recorded, Replaced]);
    assert_eq!(states(&store).await, [RunState::Failed, RunState::Pending]);
    s.stop().await;
    // … a running one is handed to the daemon to stop on the executor.
    let (store, mut s, fires) = two_fires("replace", true).await;
    assert_eq!(outcomes(&fires), [Launched, Replaced]);
    let running = store
        .list_runs(Some("hourly"), Some(RunState::Running), 10)
        .await
        .unwrap();
    assert_eq!(s.cancels.try_recv().ok(), Some(running[0].run_id.clone()));
    s.stop().await;
}

// ----- the daemon loop on paused time ------------------------------------------------

/// What the scripted executor saw.
#[derive(Debug, Default)]
struct Seen {
    /// Run id, when launched, parallelism and completions of the JobSpec.
    launches: Vec<(String, DateTime<Utc>, u32, u32)>,
    /// Run id, new parallelism, when.
    raised: Vec<(String, u32, DateTime<Utc>)>,
    /// Running runs: launched at, parallelism, completions.
    running: HashMap<String, (DateTime<Utc>, u32, u32)>,
    /// Runs given up on: run id, reason, message, when.
    abandoned: Vec<(String, String, String, DateTime<Utc>)>,
}

/// An executor that fails every launch (`fail`) or keeps runs running and
/// reports progress from the clock: each pod completes one index per
/// `index_every` of simulated time.
#[derive(Clone)]
struct Scripted {
    seen: Arc<Mutex<Seen>>,
    outcomes: mpsc::Sender<Outcome>,
    clock: Clock,
    fail: bool,
    index_every: Duration,
    /// Runs never start: progress reports this stall reason from launch on.
    stall: Option<&'static str>,
}

impl Scripted {
    fn new(clock: Clock, fail: bool) -> (Scripted, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel(64);
        let s = Scripted {
            seen: Arc::default(),
            outcomes: tx,
            clock,
            fail,
            index_every: Duration::from_secs(1800),
            stall: None,
        };
        (s, rx)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

impl Executor for Scripted {
    async fn launch(&self, launch: Launch) -> Result<(), ExecutorError> {
        let now = self.clock.now();
        let parallelism = launch.spec.parallelism.unwrap_or(1) as u32;
        let completions = launch.spec.completions.unwrap_or(1) as u32;
        {
            let mut seen = self.seen();
            seen.launches
                .push((launch.run_id.clone(), now, parallelism, completions));
            if !self.fail {
                seen.running
                    .insert(launch.run_id.clone(), (now, parallelism, completions));
            }
        }
        if self.fail {
            let outcome = Outcome {
                run_id: launch.run_id,
                kind: OutcomeKind::Failed {
                    reason: "BackoffLimitExceeded".into(),
                    message: "scripted failure".into(),
                },
                completed_indexes: Vec::new(),
            };
            self.outcomes.send(outcome).await.unwrap();
        }
        Ok(())
    }

    async fn cancel(&self, _run_id: &str) {}

    async fn progress(&self, run_id: &str) -> Option<Progress> {
        let (at, parallelism, total) = *self.seen().running.get(run_id)?;
        let elapsed = (self.clock.now() - at).to_std().unwrap_or_default();
        let per_pod = (elapsed.as_secs() / self.index_every.as_secs()) as u32;
        Some(Progress {
            completed: (per_pod * parallelism).min(total),
            total,
            parallelism,
            elapsed,
            pending_for: None,
            stall: self.stall.map(|reason| Stall {
                stalled_for: elapsed,
                reason: reason.into(),
                message: "0/3 nodes are available: 3 Insufficient cpu.".into(),
            }),
        })
    }

    async fn abandon(&self, run_id: &str, reason: &str, message: &str) -> bool {
        let now = self.clock.now();
        {
            let mut seen = self.seen();
            if seen.running.remove(run_id).is_none() {
                return false;
            }
            seen.abandoned
                .push((run_id.into(), reason.into(), message.into(), now));
        }
        let outcome = Outcome {
            run_id: run_id.into(),
            kind: OutcomeKind::Failed {
                reason: reason.into(),
                message: message.into(),
            },
            completed_indexes: Vec::new(),
        };
        self.outcomes.send(outcome).await.unwrap();
        true
    }

    async fn set_parallelism(&self, run_id: &str, parallelism: u32) -> bool {
        let now = self.clock.now();
        let mut seen = self.seen();
        let Some(run) = seen.running.get_mut(run_id) else {
            return false;
        };
        run.1 = parallelism;
        seen.raised.push((run_id.to_string(), parallelism, now));
        true
    }

    async fn recover(&self, run_ids: Vec<String>) -> Vec<String> {
        run_ids
    }

    async fn shutdown(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A daemon running `job` on `store` with `executor`, until stopped.
struct Running {
    passes: watch::Receiver<u64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(
        job: Job,
        store: &Store,
        executor: Scripted,
        outcomes: mpsc::Receiver<Outcome>,
    ) -> Self {
        let stop = CancellationToken::new();
        let daemon = Daemon {
            config: daemon_config(),
            jobs: vec![job],
            store: store.clone(),
            executor,
            outcomes,
            reload: None,
            job_problems: Vec::new(),
        };
        let shutdown = stop.clone();
        let (tx, passes) = watch::channel(0);
        let task = tokio::spawn(async move {
            daemon
                .run_reporting(shutdown, || {}, tx)
                .await
                .expect("the daemon runs");
        });
        Running { passes, stop, task }
    }

    /// Moves time on by one re-planning tick (1 s) and waits for the
    /// dispatch pass that follows it.
    async fn step(&mut self) {
        tokio::time::advance(Duration::from_secs(1)).await;
        self.passes.changed().await.expect("the daemon runs");
    }

    /// Steps until `cond` holds.
    async fn until<F, Fut>(&mut self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        within_real(20, what, async {
            self.passes.changed().await.expect("the first pass");
            while !cond().await {
                self.step().await;
            }
        })
        .await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A failing message is retried after 1 min, then 2 min (the backoff
/// doubles), then dead-lettered after the third attempt: each retry is
/// launched exactly when its backoff ends.
#[tokio::test(start_paused = true)]
async fn retry_backoff_doubles_then_the_message_is_dead_lettered() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let t0 = utc("2026-06-01T09:00:00Z");
    let store = store_at(t0).await;
    let job = job(
        dir.path(),
        "name: flaky\n\
         trigger:\n  queue:\n    builtin: {}\n\
         retry: { max_attempts: 3, backoff: 1m }\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{ name: c, command: [\"false\"] }]\n",
    );
    kedge::intake::enqueue(&store, &job, b"{}", Some("m-1".into()), None)
        .await
        .unwrap();
    let (executor, outcomes) = Scripted::new(store.clock(), true);
    let mut daemon = Running::start(job, &store, executor.clone(), outcomes);
    daemon
        .until("the message is dead-lettered", || async {
            !store
                .dead_letters(Some("flaky"), false, 10)
                .await
                .unwrap()
                .is_empty()
        })
        .await;

    let mut runs = store.list_runs(Some("flaky"), None, 10).await.unwrap();
    runs.sort_by_key(|r| r.attempt);
    let states: Vec<RunState> = runs.iter().map(|r| r.state).collect();
    assert_eq!(states, [RunState::Failed, RunState::Failed, RunState::Dead]);
    // Each retry is due exactly its backoff after the attempt before it
    // failed: 1 min, then 2 min.
    for (k, backoff) in [(1, 60_000), (2, 120_000)] {
        let failed_at = runs[k - 1].finished_ms.expect("finished");
        assert_eq!(
            runs[k].scheduled_ms - failed_at,
            backoff,
            "attempt {}",
            k + 1
        );
    }
    // … and launched when due: not before, and at once (the dispatcher
    // sleeps until the next due run, not a poll interval).
    let launches: Vec<DateTime<Utc>> = executor.seen().launches.iter().map(|l| l.1).collect();
    assert_eq!(launches.len(), 3, "three attempts: {launches:?}");
    for (run, launched) in runs.iter().zip(&launches) {
        let late = launched.timestamp_millis() - run.scheduled_ms;
        assert!(
            (0..=1_000).contains(&late),
            "{} launched {late} ms after due",
            run.run_id
        );
    }
    let letter = &store.dead_letters(Some("flaky"), false, 10).await.unwrap()[0];
    assert_eq!(letter.attempts, 3);
    assert!(letter.reason.contains("3 of 3"), "{}", letter.reason);
    daemon.stop().await;
}

/// A run whose pods never start fails exactly its `limits.start_timeout`
/// after launch, with the executor's evidence; it is retried after its
/// backoff, and the last attempt's failure dead-letters the message with
/// the reason (`start_timeout: Unschedulable: …`).
#[tokio::test(start_paused = true)]
async fn a_run_that_never_starts_fails_at_its_start_timeout_then_is_retried_and_dead_lettered() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let t0 = utc("2026-06-01T09:00:00Z");
    let store = store_at(t0).await;
    let job = job(
        dir.path(),
        "name: stuck\n\
         trigger:\n  queue:\n    builtin: {}\n\
         retry: { max_attempts: 2, backoff: 1m }\n\
         limits: { start_timeout: 2m }\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{ name: c, command: [\"true\"] }]\n",
    );
    kedge::intake::enqueue(&store, &job, b"{}", Some("m-1".into()), None)
        .await
        .unwrap();
    let (mut executor, outcomes) = Scripted::new(store.clock(), false);
    executor.stall = Some("Unschedulable");
    let mut daemon = Running::start(job, &store, executor.clone(), outcomes);
    daemon
        .until("the message is dead-lettered", || async {
            !store
                .dead_letters(Some("stuck"), false, 10)
                .await
                .unwrap()
                .is_empty()
        })
        .await;
    {
        let seen = executor.seen();
        assert_eq!(seen.launches.len(), 2, "{:?}", seen.launches);
        assert_eq!(seen.abandoned.len(), 2, "{:?}", seen.abandoned);
        for ((run, launched, ..), (gave_up, reason, message, at)) in
            seen.launches.iter().zip(&seen.abandoned)
        {
            assert_eq!((run, reason.as_str()), (gave_up, "start_timeout"));
            assert_eq!(
                message,
                "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."
            );
            let waited = (*at - *launched).num_milliseconds();
            assert!(
                (120_000..=121_000).contains(&waited),
                "{run} given up after {waited} ms"
            );
        }
    }
    let letter = &store.dead_letters(Some("stuck"), false, 10).await.unwrap()[0];
    assert!(
        letter
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("start_timeout: Unschedulable: 0/3 nodes are available")),
        "{:?}",
        letter.last_error
    );
    daemon.stop().await;
}

/// A sized run that falls behind its deadline gets more pods on the next
/// re-planning tick after its first index completes, never more than the
/// job's maximum, and the decision is recorded on the run.
#[tokio::test(start_paused = true)]
async fn a_run_behind_its_deadline_is_replanned_up_within_its_maximum() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(utc("2026-06-01T01:00:00Z")).await;
    // 100 GB at an assumed 100 GB/h per pod: one pod finishes in an hour of
    // a two-hour window. The run really does one of its 8 indexes per pod
    // per half hour (four hours on one pod): behind pace.
    let job = job(
        dir.path(),
        "name: backup\n\
         trigger:\n  queue:\n    builtin: {}\n\
         window: { within: 2h }\n\
         sizing:\n  work: { static: 100 }\n  unit: GB\n  initial_rate_per_pod: 100\n  \
         initial_overhead: 0s\n  margin: 0.2\n  parallelism: { min: 1, max: 6 }\n  shards: 8\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{ name: c, command: [\"true\"] }]\n",
    );
    kedge::intake::enqueue(&store, &job, b"{}", Some("nightly".into()), None)
        .await
        .unwrap();
    let (executor, outcomes) = Scripted::new(store.clock(), false);
    let mut daemon = Running::start(job, &store, executor.clone(), outcomes);
    daemon
        .until("the run is raised", || async {
            !executor.seen().raised.is_empty()
        })
        .await;

    let (launched, raised) = {
        let seen = executor.seen();
        (seen.launches[0].clone(), seen.raised[0].clone())
    };
    let (run_id, launched_at, first, completions) = launched;
    assert_eq!(completions, 8);
    let (raised_run, to, at) = raised;
    assert_eq!(raised_run, run_id);
    assert!(
        to > first && to <= 6,
        "raised from {first} to {to}, at most 6"
    );
    // Nothing is known until the first index completes (30 min per index);
    // the 1 s re-planning tick acts right after.
    let after = (at - launched_at).to_std().unwrap();
    assert!(
        (Duration::from_secs(1800)..=Duration::from_secs(1803)).contains(&after),
        "raised {after:?} after launch"
    );
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    let sizing = run.sizing.expect("sized");
    assert_eq!(sizing.parallelism, i64::from(to));
    assert!(
        sizing
            .note
            .contains(&format!("raised from {first} to {to} pods")),
        "{}",
        sizing.note
    );
    daemon.stop().await;
}

// ----- operator controls ---------------------------------------------------------

/// Runs the hourly job (`trigger` after `overlap:`) from 10:30 with the job
/// put in `action`'s state at once; fires at 11:00, 12:00, 13:00 are
/// skipped. At 13:30 `undo` takes it out again; then the 14:00 fire comes.
/// Returns every fire (through 14:00) and what `undo` caught up.
async fn stopped_then_back(
    trigger: &str,
    action: kedge::operator::Action,
    undo: kedge::operator::Action,
) -> (Vec<CronFire>, Vec<DateTime<Utc>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(utc(OVERLAP_START)).await;
    let job = hourly(dir.path(), trigger);
    let t = kedge::operator::change(&store, &job, action, "alice", Some("maintenance"))
        .await
        .expect("the job stops");
    assert!(t.caught_up.is_empty());
    let mut s = Scheduler::start(job.clone(), &store);
    let fires = s.fires(&store, "hourly", 3).await;
    let state = action.to().as_str();
    for f in &fires {
        assert_eq!(
            (f.outcome, f.detail.as_deref()),
            (FireOutcome::Skipped, Some(state)),
            "a fire while {state}"
        );
    }
    assert!(store
        .list_runs(Some("hourly"), None, 10)
        .await
        .unwrap()
        .is_empty());
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    assert_eq!(store.clock().now(), utc("2026-06-01T13:30:00Z"));
    let back = kedge::operator::change(&store, &job, undo, "bob", None)
        .await
        .expect("the job is back");
    let fires = s.fires(&store, "hourly", 4).await;
    assert_eq!(
        fires[3].outcome,
        FireOutcome::Recorded,
        "14:00 runs as usual"
    );
    s.stop().await;
    (fires, back.caught_up)
}

/// While paused every fire is recorded `skipped: paused`; resume catches
/// them up exactly as `catchup` (and `starting_deadline`) would after
/// downtime — all of them counted as late.
#[tokio::test(start_paused = true)]
async fn resume_catches_up_fires_skipped_while_paused_as_catchup_says() {
    use kedge::operator::Action::{Pause, Resume};
    let _time = ManualTime::start();
    let at = |h: u32| utc(&format!("2026-06-01T{h}:00:00Z"));
    for (trigger, want) in [
        ("allow\n  catchup: latest", vec![at(13)]),
        (
            "allow\n  catchup: all\n  starting_deadline: 2h",
            vec![at(12), at(13)],
        ),
        ("allow\n  catchup: all", vec![at(11), at(12), at(13)]),
        ("allow\n  catchup: none", vec![]),
    ] {
        let (fires, caught_up) = stopped_then_back(trigger, Pause, Resume).await;
        assert_eq!(caught_up, want, "{trigger}");
        for f in &fires[..3] {
            let t = DateTime::from_timestamp_millis(f.fire_ms).unwrap();
            let expected = if want.contains(&t) {
                (FireOutcome::Recorded, Some("caught up on resume"))
            } else {
                (FireOutcome::Skipped, Some("paused"))
            };
            assert_eq!((f.outcome, f.detail.as_deref()), expected, "{trigger}: {t}");
        }
    }
}

/// Release runs the newest fire that came while held, at once; unice runs
/// none of the fires that came while iced: the job waits for its next one.
#[tokio::test(start_paused = true)]
async fn release_runs_the_newest_held_fire_and_unice_waits_for_the_next() {
    use kedge::operator::Action::{Hold, Ice, Release, Unice};
    let _time = ManualTime::start();
    let (fires, caught_up) = stopped_then_back("allow\n  catchup: none", Hold, Release).await;
    assert_eq!(caught_up, [utc("2026-06-01T13:00:00Z")]);
    assert_eq!(
        fires[..3]
            .iter()
            .map(|f| (f.outcome, f.detail.as_deref()))
            .collect::<Vec<_>>(),
        [
            (FireOutcome::Skipped, Some("held")),
            (FireOutcome::Skipped, Some("held")),
            (FireOutcome::Recorded, Some("caught up on release")),
        ]
    );
    let (fires, caught_up) = stopped_then_back("allow\n  catchup: all", Ice, Unice).await;
    assert!(caught_up.is_empty());
    assert!(fires[..3]
        .iter()
        .all(|f| f.outcome == FireOutcome::Skipped && f.detail.as_deref() == Some("iced")));
}

// ----- blackouts on paused time ------------------------------------------------

/// An hourly job (UTC) with a blackout window and `on_blackout` as given.
fn blacked_out(dir: &Path, window: &str, on_blackout: &str) -> Job {
    job(
        dir,
        &format!(
            "name: blacked\n\
             trigger:\n  cron: \"0 * * * *\"\n  overlap: allow\n  \
             blackout: [{window}]\n  on_blackout: {on_blackout}\n\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers: [{{ name: c, command: [\"true\"] }}]\n"
        ),
    )
}

/// The fires recorded, each with the clock's reading when its pass looked.
async fn fires_with_pass_times(
    s: &mut Scheduler,
    store: &Store,
    n: usize,
) -> (Vec<CronFire>, Vec<DateTime<Utc>>) {
    let mut looked = Vec::new();
    within_real(20, &format!("{n} fires"), async {
        s.next_pass().await;
        loop {
            let fires = store.cron_fires("blacked").await.unwrap();
            if fires.len() >= n {
                return (fires, looked);
            }
            let pass = s.step(store.clock()).await;
            if pass.fires > 0 {
                looked.push(pass.at.unwrap());
            }
        }
    })
    .await
}

/// `on_blackout: skip` (the default): the fires inside 12:00–14:00 are
/// recorded at their time as `skipped: blackout`, with no run; the fires
/// around the window run.
#[tokio::test(start_paused = true)]
async fn a_fire_inside_a_blackout_is_recorded_as_skipped() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(utc("2026-06-01T10:30:00Z")).await;
    let job = blacked_out(dir.path(), "{from: \"12:00\", to: \"14:00\"}", "skip");
    let mut s = Scheduler::start(job, &store);
    let (fires, _) = fires_with_pass_times(&mut s, &store, 4).await;
    assert_eq!(
        times(&fires),
        [
            "2026-06-01T11:00:00Z",
            "2026-06-01T12:00:00Z",
            "2026-06-01T13:00:00Z",
            "2026-06-01T14:00:00Z"
        ]
        .map(utc)
    );
    use FireOutcome::{Recorded, Skipped};
    assert_eq!(outcomes(&fires), [Recorded, Skipped, Skipped, Recorded]);
    for f in &fires[1..3] {
        assert_eq!(f.detail.as_deref(), Some("blackout (12:00-14:00)"));
        assert_eq!(f.work_item_id, None, "a skipped fire has no run");
    }
    let runs = store.list_runs(Some("blacked"), None, 10).await.unwrap();
    assert_eq!(runs.len(), 2, "runs only for the fires outside the window");
    s.stop().await;
}

/// `on_blackout: defer`: the 12:00 and 13:00 fires, inside 11:30–13:45,
/// become one fire at 13:45, recorded (and its run created) when the
/// window ends, not before.
#[tokio::test(start_paused = true)]
async fn a_deferred_fire_is_launched_when_the_window_ends() {
    let _time = ManualTime::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(utc("2026-06-01T10:30:00Z")).await;
    let job = blacked_out(dir.path(), "{from: \"11:30\", to: \"13:45\"}", "defer");
    let mut s = Scheduler::start(job, &store);
    let (fires, looked) = fires_with_pass_times(&mut s, &store, 3).await;
    let want = [
        "2026-06-01T11:00:00Z",
        "2026-06-01T13:45:00Z",
        "2026-06-01T14:00:00Z",
    ]
    .map(utc);
    assert_eq!(times(&fires), want);
    assert_eq!(
        looked, want,
        "each fire recorded on the dot, the deferred one at the window's end"
    );
    assert!(outcomes(&fires).iter().all(|o| *o == FireOutcome::Recorded));
    let detail = fires[1].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("deferred from 2026-06-01 12:00 by blackout (11:30-13:45)"),
        "{detail}"
    );
    let runs = store.list_runs(Some("blacked"), None, 10).await.unwrap();
    assert_eq!(
        runs.len(),
        3,
        "one run per fire, the two deferred ones as one"
    );
    s.stop().await;
}
