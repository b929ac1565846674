//! The dispatcher: due → claim → size → launch.
//!
//! One pass ([`Dispatcher::pass`]):
//!
//! 1. forms the batches that are ready ([`batches`]);
//! 2. reads the due pending runs, earliest first, and dead-letters the
//!    messages whose own deadline passed while they waited;
//! 3. reads the load guards' states ([`crate::guards::Board`]) and asks the
//!    pure planner ([`crate::planner::admit`]) which of the due runs the
//!    limits admit (operator state — paused, held, iced jobs launch
//!    nothing —, per job, backfill caps, pools, global, backpressure, a
//!    holding guard) and with how many pods; runs a guard holds are checked
//!    against their deadline (flagged at risk, naming the guard, when
//!    waiting longer would miss it; `when_at_risk` decides);
//! 4. claims the admitted runs (`pending → running`), a chunk per store
//!    transaction, sizes each run of a sized job ([`sizing`], under a
//!    throttling guard's cap), renders it
//!    and launches it on the executor — up to [`LAUNCH_CONCURRENCY`]
//!    launches in flight, claiming and rendering in order;
//! 5. says how long until the next pending run is due.
//!
//! A failed launch puts its run back to `pending` and ends the pass (the
//! executor is unwell; the rest of the due runs wait for the next pass).
//! Between passes, [`replan`] watches the runs in flight ([`stuck`]: runs
//! that never start). [`preview`]
//! makes a launch without claiming anything (`kedge render`).
//!
//! Where parallelism is decided: the job file's `sizing:` is parsed in
//! [`crate::config::sizing`]; the arithmetic is pure, in
//! [`crate::planner::sizing`]; the I/O around it (probe, history, record,
//! at-risk) is [`sizing`] at launch and [`replan`] in flight; the planner's
//! limits cap both.

pub mod batches;
pub mod preview;
pub mod replan;
pub mod sizing;
pub mod stuck;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::job::Trigger;
use crate::config::queue::OnExpired;
use crate::config::{DaemonConfig, Job, JobsByName};
use crate::executor::render::{render, render_batch};
use crate::executor::{Executor, ExecutorError, Launch, Outcome, OutcomeKind};
use crate::finalizer;
use crate::guards::Board;
use crate::lifecycle::TriggerKind;
use crate::planner::guards::{self, JobGuards};
use crate::planner::sizing::RateModel;
use crate::planner::{self, BackfillCaps, Candidate, Hold, JobCaps, Limits, Usage};
use crate::store::{BackfillOverlap, Run, Store, StoreError};

/// How long dispatching pauses after a launch failed.
const LAUNCH_FAILED_WAIT: Duration = Duration::from_secs(1);

/// Launches in flight at once within a pass.
pub const LAUNCH_CONCURRENCY: usize = 8;

/// Runs claimed per store transaction within a pass.
const CLAIM_CHUNK: usize = 32;

/// Runs launched per dispatch pass at most.
const DISPATCH_BATCH: i64 = 256;

/// Due runs read per other job when a backlog fills a pass.
const HEADS_PER_JOB: i64 = 16;

/// How long to wait when nothing is due and nothing is scheduled (the
/// caller's poll interval caps it).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// A claimed run and the pods the planner granted it.
type Grant<'r> = (&'r Run, u32);

/// Launches runs as the limits admit them. Owned by the daemon's loop.
pub struct Dispatcher {
    store: Store,
    jobs: JobsByName,
    clock: Clock,
    /// The caps of the loaded jobs, pools and the global cap;
    /// `backpressured` is refreshed from [`replan::observe`].
    pub limits: Limits,
    /// Jobs not loaded whose runs were seen (warned about once each).
    warned_unknown: HashSet<String>,
    /// Why each due run the planner held back waits, as last logged: a run
    /// is logged when it starts waiting or its reason changes, not on
    /// every pass.
    held: HashMap<String, Hold>,
    /// Counts finished passes (for tests that must see the dispatcher look
    /// before they conclude that nothing launched).
    passes: watch::Sender<u64>,
    /// How long an attempt's launches may fail transiently before it fails.
    launch_timeout: Duration,
    /// When each job last got a slot (a sequence number): the planner's
    /// round-robin across jobs.
    served: HashMap<String, u64>,
    serve_seq: u64,
    /// The load guards' states ([`crate::guards`]), read every pass.
    guards: Board,
    /// Each loaded job's guards as this pass saw them.
    job_guards: HashMap<String, JobGuards>,
    /// Held jobs' estimates for the deadline check of their waiting runs
    /// (work, rate model): measured once when a guard starts holding the
    /// job, not on every pass nor for every run.
    held_estimates: HashMap<String, (Option<f64>, RateModel)>,
    /// Held runs flagged at risk: run id → the guard, described.
    held_at_risk: HashMap<String, String>,
}

/// How a pass's launches went.
#[derive(Debug, Default)]
struct Launched {
    count: usize,
    failed: bool,
}

impl Dispatcher {
    pub fn new(store: Store, jobs: JobsByName, config: &DaemonConfig, clock: Clock) -> Self {
        let limits = limits_of(&jobs, config);
        Dispatcher {
            store,
            jobs,
            clock,
            limits,
            warned_unknown: HashSet::new(),
            held: HashMap::new(),
            passes: watch::Sender::new(0),
            launch_timeout: config.executor.launch_timeout(),
            served: HashMap::new(),
            serve_seq: 0,
            guards: Board::default(),
            job_guards: HashMap::new(),
            held_estimates: HashMap::new(),
            held_at_risk: HashMap::new(),
        }
    }

    /// Takes reloaded definitions: the jobs and the caps they imply
    /// (backpressure, as last observed, stays until the next look).
    pub fn reload(&mut self, jobs: JobsByName, config: &DaemonConfig) {
        let backpressured = std::mem::take(&mut self.limits.backpressured);
        self.limits = limits_of(&jobs, config);
        self.limits.backpressured = backpressured;
        self.jobs = jobs;
        // A job that is back is no longer unknown.
        self.warned_unknown.retain(|j| !self.jobs.contains_key(j));
    }

    /// Reads the load guards' states from `board` (by default there are none).
    pub fn guarded(mut self, board: Board) -> Self {
        self.guards = board;
        self
    }

    /// Reports the number of finished passes on `passes` (tests wait on
    /// it to know the dispatcher looked, instead of waiting a fixed time).
    pub fn reporting(mut self, passes: watch::Sender<u64>) -> Self {
        self.passes = passes;
        self
    }

    /// One pass: launches what the planner admits. Returns how long until
    /// the next pending run (or partial batch) becomes due.
    pub async fn pass<E: Executor>(&mut self, executor: &E) -> Result<Duration, StoreError> {
        let wait = self.pass_inner(executor).await;
        self.passes.send_modify(|n| *n += 1);
        wait
    }

    async fn pass_inner<E: Executor>(&mut self, executor: &E) -> Result<Duration, StoreError> {
        self.read_operator_states().await?;
        let batch_wait = batches::form(&self.store, &self.jobs, &self.clock).await?;
        let now = self.clock.now_ms();
        let mut due = self.store.due_runs(now, DISPATCH_BATCH).await?;
        let full = due.len() as i64 == DISPATCH_BATCH;
        if full {
            self.add_heads_of_other_jobs(&mut due, now).await?;
        }
        self.expire_overdue(&mut due, now).await?;
        let mut launched = Launched::default();
        self.read_guards();
        if !due.is_empty() {
            let grants = self.admit(&due).await?;
            launched = self.launch_all(executor, &grants).await?;
        }
        if launched.failed {
            // The executor is unwell (the API server is down, say): do not
            // hammer it with the rest of the due runs.
            return Ok(LAUNCH_FAILED_WAIT.min(batch_wait.unwrap_or(LAUNCH_FAILED_WAIT)));
        }
        if full && launched.count > 0 {
            // More due runs than one pass takes: go again at once.
            return Ok(Duration::ZERO);
        }
        let wait = self.until_next_due().await?;
        Ok(batch_wait.map_or(wait, |b| wait.min(b)))
    }

    /// Reads the jobs' operator states, every pass: a `kedge pause` in
    /// another process takes effect at the next pass (its write wakes the
    /// daemon). Shown in `/healthz` and the metrics.
    async fn read_operator_states(&mut self) -> Result<(), StoreError> {
        let controls = self.store.job_controls().await?;
        self.limits.stopped = (controls.iter())
            .filter(|c| c.state.stops_launches())
            .map(|c| (c.job.clone(), c.state))
            .collect();
        crate::health::set_job_states(self.jobs.keys(), &controls);
        Ok(())
    }

    /// A backlog in one job fills `due` (the earliest due runs): adds the
    /// first due runs of every other loaded job, so the planner can share
    /// the free slots fairly.
    async fn add_heads_of_other_jobs(
        &self,
        due: &mut Vec<Run>,
        now: i64,
    ) -> Result<(), StoreError> {
        let present: HashSet<String> = due.iter().map(|r| r.job.clone()).collect();
        for job in self.jobs.keys().filter(|j| !present.contains(*j)) {
            due.extend(self.store.due_runs_of(job, now, HEADS_PER_JOB).await?);
        }
        Ok(())
    }

    /// Dead-letters the due single-message runs whose message's own
    /// deadline passed while they waited (`on_expired: dead_letter`) rather
    /// than launch late work, and drops them from `due`. (Batch runs
    /// expire their messages before the batch forms.)
    async fn expire_overdue(&self, due: &mut Vec<Run>, now: i64) -> Result<(), StoreError> {
        let mut expired = HashSet::new();
        for r in due.iter() {
            let expires = self.jobs.get(&r.job).is_some_and(|j| match &j.trigger {
                Trigger::Queue(q) => {
                    q.deadline.is_some()
                        && q.on_expired == OnExpired::DeadLetter
                        && q.batch.is_none()
                }
                Trigger::Cron(_) | Trigger::After => false,
            });
            if expires
                && r.deadline_ms.is_some_and(|d| d <= now)
                && self.store.expire_run(&r.run_id, now).await?
            {
                tracing::warn!(run = %r.run_id, job = %r.job, attempt = r.attempt, message = %r.message_id, "message expired before it could run; dead-lettered");
                crate::metrics::run_ended(&r.job, crate::metrics::Outcome::Expired, None);
                if let Some(d) = r.deadline_ms {
                    crate::metrics::deadline_slack(&r.job, d - now);
                }
                expired.insert(r.run_id.clone());
            }
        }
        due.retain(|r| !expired.contains(&r.run_id));
        Ok(())
    }

    /// The due runs the planner admits now, in launch order, with their
    /// pod grants. Runs of jobs that are not loaded wait (warned once).
    async fn admit<'r>(&mut self, due: &'r [Run]) -> Result<Vec<Grant<'r>>, StoreError> {
        let backfills = self.store.active_backfills().await?;
        self.limits.backfills = (backfills.iter())
            .map(|b| {
                let caps = BackfillCaps {
                    max_active: b.max_active,
                    exclusive: b.overlap == BackfillOverlap::Forbid,
                };
                (b.id.clone(), caps)
            })
            .collect();
        let usage = Usage {
            backfill_running: (backfills.into_iter()).map(|b| (b.id, b.running)).collect(),
            running: (self.store.active_counts().await?.into_iter())
                .map(|(job, running, _)| (job, running.max(0) as u32))
                .collect(),
            pods: (self.store.running_pods().await?.into_iter())
                .map(|(job, pods)| (job, pods.clamp(0, u32::MAX as i64) as u32))
                .collect(),
            served: self.served.clone(),
        };
        let candidates: Vec<Candidate> = due
            .iter()
            .map(|r| Candidate {
                run_id: &r.run_id,
                job: &r.job,
                backfill: r.backfill_id.as_deref(),
            })
            .collect();
        let admission = planner::admit(&candidates, &usage, &self.limits);
        self.log_holds(due, &admission.hold);
        self.held_by_guards(due, &admission.hold).await?;
        let by_id: HashMap<&str, &Run> = due.iter().map(|r| (r.run_id.as_str(), r)).collect();
        let mut grants = Vec::with_capacity(admission.launch.len());
        for g in &admission.launch {
            let Some(run) = by_id.get(g.run_id).copied() else {
                continue;
            };
            if self.jobs.contains_key(&run.job) {
                self.serve_seq += 1;
                self.served.insert(run.job.clone(), self.serve_seq);
                grants.push((run, g.max_pods));
            }
        }
        Ok(grants)
    }

    /// Logs each held run once per reason (a job that is not loaded once
    /// per job), and forgets the runs no longer held.
    fn log_holds(&mut self, due: &[Run], holds: &[(&str, Hold)]) {
        let by_id: HashMap<&str, &Run> = due.iter().map(|r| (r.run_id.as_str(), r)).collect();
        let mut now_held = HashMap::with_capacity(holds.len());
        for (run_id, hold) in holds {
            let Some(run) = by_id.get(run_id) else {
                continue;
            };
            if *hold == Hold::UnknownJob {
                if self.warned_unknown.insert(run.job.clone()) {
                    tracing::warn!(job = %run.job, "runs of a job that is not loaded wait until its definition is valid again");
                }
            } else if self.held.get(*run_id) != Some(hold) {
                let guard = self
                    .job_guards
                    .get(&run.job)
                    .and_then(|g| g.hold.as_deref());
                match (hold, guard) {
                    (Hold::Guard, Some(g)) => {
                        tracing::info!(run = %run_id, job = %run.job, attempt = run.attempt,
                        reason = hold.describe(), guard = g, "run held back by a load guard")
                    }
                    _ => {
                        tracing::info!(run = %run_id, job = %run.job, attempt = run.attempt, reason = hold.describe(), "run held back")
                    }
                }
            }
            now_held.insert(run_id.to_string(), *hold);
        }
        self.held = now_held;
    }

    /// Reads every loaded job's guards from the board; jobs a guard holds
    /// get no new launches this pass ([`Limits::guarded`]).
    fn read_guards(&mut self) {
        self.job_guards = (self.jobs.iter())
            .filter(|(_, j)| !j.guards.is_empty())
            .map(|(n, j)| (n.clone(), self.guards.for_job(j)))
            .collect();
        self.limits.guarded = (self.job_guards.iter())
            .filter(|(_, g)| g.hold.is_some())
            .map(|(n, _)| n.clone())
            .collect();
    }

    /// The deadline check of runs a guard holds (see
    /// [`crate::planner::guards::held_run_at_risk`]): a sized run that
    /// could no longer make its window even launched now at its maximum
    /// is flagged at risk, once, with the guard named (log, metric,
    /// webhook, and the run's sizing record), and `when_at_risk` decides
    /// ([`guards::conflict`]):
    /// `wait` keeps it held; `run` lets it through (the deadline wins),
    /// `skip`/`fail` let it through to be settled at launch.
    async fn held_by_guards(
        &mut self,
        due: &[Run],
        holds: &[(&str, Hold)],
    ) -> Result<(), StoreError> {
        let held: HashSet<&str> = (holds.iter())
            .filter(|(_, h)| *h == Hold::Guard)
            .map(|(id, _)| *id)
            .collect();
        let guarded = &self.limits.guarded;
        self.held_estimates.retain(|job, _| guarded.contains(job));
        let due_ids: HashSet<&str> = due.iter().map(|r| r.run_id.as_str()).collect();
        self.held_at_risk
            .retain(|id, _| due_ids.contains(id.as_str()));
        self.limits
            .let_through
            .retain(|id| due_ids.contains(id.as_str()));
        let now = self.clock.now();
        for run in due.iter().filter(|r| held.contains(r.run_id.as_str())) {
            let Some(job) = self.jobs.get(&run.job).cloned() else {
                continue;
            };
            let (Some(cfg), Some(deadline)) = (
                &job.sizing,
                run.deadline_ms
                    .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis),
            ) else {
                continue;
            };
            if self.held_at_risk.contains_key(&run.run_id) {
                continue;
            }
            if !self.held_estimates.contains_key(&job.name) {
                let measured = sizing::measure_work(&self.store, &job, cfg).await?;
                let model = sizing::model(&self.store, &job, cfg).await?;
                self.held_estimates
                    .insert(job.name.clone(), (measured.work, model));
            }
            let (work, model) = self.held_estimates[&job.name];
            // Unknown work: nothing to judge the deadline by.
            let Some(work) = work else { continue };
            let full = cfg.max.min(job.limits.max_pods.unwrap_or(u32::MAX)).max(1);
            let input = crate::planner::sizing::SizingInput {
                work,
                now,
                deadline,
                margin: cfg.margin,
                min: cfg.min,
                max: full,
                model,
            };
            if !guards::held_run_at_risk(&input) {
                continue;
            }
            let guard = (self.job_guards.get(&run.job))
                .and_then(|g| g.hold.clone())
                .unwrap_or_else(|| "?".into());
            let mut d = sizing::decide(
                &job,
                cfg,
                model,
                sizing::Measured::given(work),
                now,
                deadline,
                full,
            );
            d.at_risk = true;
            d.reason = format!(
                "held by guard {guard}: waiting longer misses the window; {}",
                d.reason
            );
            d.guards = Some(format!("held by guard {guard}"));
            self.store
                .record_sizing(&run.run_id, &sizing::record(&d))
                .await?;
            sizing::signal_at_risk(run, &d, cfg.at_risk_webhook.as_deref());
            match guards::conflict(cfg.when_at_risk) {
                guards::Conflict::Wait => {
                    tracing::warn!(run = %run.run_id, job = %run.job, guard = %guard,
                    "run at risk while a guard holds it; it keeps waiting (when_at_risk: wait)")
                }
                _ => {
                    tracing::warn!(run = %run.run_id, job = %run.job, guard = %guard, when_at_risk = ?cfg.when_at_risk,
                        "run at risk while a guard holds it; it is let through (the guard is overridden for this run)");
                    self.limits.let_through.insert(run.run_id.clone());
                }
            }
            self.held_at_risk.insert(run.run_id.clone(), guard);
        }
        Ok(())
    }

    /// What the job's guards impose on sizing run `run_id` now.
    fn guarded_run(
        &self,
        job: &Job,
        cfg: &crate::config::sizing::Sizing,
        run_id: &str,
    ) -> sizing::Guarded {
        let g = self.job_guards.get(&job.name);
        sizing::Guarded {
            throttle: g
                .and_then(|g| g.throttle.as_ref())
                .map(|(f, why)| (guards::throttled_max(cfg.min, cfg.max, *f), why.clone())),
            // Flagged while held (let through, or launched after the guard
            // cleared): the signal was raised then, not again at launch.
            held: self.held_at_risk.get(run_id).cloned(),
        }
    }

    /// Claims and launches `grants`: claims are committed a chunk at a time
    /// (one store transaction for [`CLAIM_CHUNK`] runs); launches overlap
    /// (an API round trip each on Kubernetes), up to
    /// [`LAUNCH_CONCURRENCY`] at once. After a failed launch nothing more
    /// is launched and the claims not yet used are given back.
    async fn launch_all<E: Executor>(
        &self,
        executor: &E,
        grants: &[Grant<'_>],
    ) -> Result<Launched, StoreError> {
        let mut in_flight = FuturesUnordered::new();
        let mut launched = Launched::default();
        for chunk in grants.chunks(CLAIM_CHUNK) {
            if launched.failed {
                break;
            }
            let mut claimed = self.claim(chunk).await?;
            while let Some((run, max_pods)) = claimed.pop_front() {
                while in_flight.len() >= LAUNCH_CONCURRENCY && !launched.failed {
                    if let Some(done) = in_flight.next().await {
                        self.launched_or_requeued(done, &mut launched).await?;
                    }
                }
                if launched.failed {
                    // Not launched: give the claims back untouched.
                    let rest: Vec<&str> = std::iter::once(run)
                        .chain(claimed.iter().map(|(r, _)| *r))
                        .map(|r| r.run_id.as_str())
                        .collect();
                    self.store.unclaim_runs(&rest).await?;
                    break;
                }
                if let Some(launch) = self.prepare(run, max_pods).await? {
                    in_flight.push(async move { (run, executor.launch(launch).await) });
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            self.launched_or_requeued(done, &mut launched).await?;
        }
        Ok(launched)
    }

    /// Claims a chunk of granted runs in one transaction; returns those
    /// this pass won, in order.
    async fn claim<'r>(&self, chunk: &[Grant<'r>]) -> Result<VecDeque<Grant<'r>>, StoreError> {
        let ids: Vec<&str> = chunk.iter().map(|(r, _)| r.run_id.as_str()).collect();
        let won = self.store.claim_runs(&ids, self.clock.now_ms()).await?;
        Ok(chunk
            .iter()
            .zip(won)
            .filter_map(|(g, ok)| ok.then_some(*g))
            .collect())
    }

    /// Sizes (for a job with `sizing:`) and renders a claimed run. `None`
    /// when sizing settled the run instead (at risk with `skip`/`fail`).
    async fn prepare(&self, run: &Run, max_pods: u32) -> Result<Option<Launch>, StoreError> {
        let Some(job) = self.jobs.get(&run.job) else {
            return Ok(None); // (grants hold loaded jobs only)
        };
        let sized;
        let job: &Job = match &job.sizing {
            None => job,
            Some(cfg) => {
                let guarded = self.guarded_run(job, cfg, &run.run_id);
                match sizing::size_claimed(
                    &self.store,
                    &self.clock,
                    job,
                    cfg,
                    run,
                    max_pods,
                    &guarded,
                )
                .await?
                {
                    Some(j) => {
                        sized = j;
                        &sized
                    }
                    None => return Ok(None),
                }
            }
        };
        let members = match &job.trigger {
            Trigger::Queue(q) if q.batch.is_some() => self.store.batch_members(&run.run_id).await?,
            _ => Vec::new(),
        };
        Ok(Some(if members.is_empty() {
            render(job, run)
        } else {
            render_batch(job, run, members.into_iter().map(|m| m.payload).collect())
        }))
    }

    /// Logs a finished launch, or handles a failed one
    /// ([`Dispatcher::launch_failed`]).
    async fn launched_or_requeued(
        &self,
        (run, result): (&Run, Result<(), ExecutorError>),
        launched: &mut Launched,
    ) -> Result<(), StoreError> {
        match result {
            Ok(()) => {
                launched.count += 1;
                crate::metrics::run_launched(&run.job, waited(run, self.clock.now_ms()));
                tracing::info!(run = %run.run_id, job = %run.job, attempt = run.attempt, "run launched");
                crate::telemetry::span(crate::telemetry::Stage {
                    name: "kedge.launch",
                    job: &run.job,
                    message_id: &run.message_id,
                    start_ms: run.scheduled_ms,
                    end_ms: self.clock.now_ms(),
                    attributes: crate::telemetry::run_attributes(run),
                    error: None,
                });
            }
            Err(e) => {
                launched.failed = true;
                self.launch_failed(run, e).await?;
            }
        }
        Ok(())
    }

    /// A launch that failed for a reason that may pass (the executor has
    /// already failed the attempt itself when the refusal is for good): the
    /// run goes back to `pending` and waits out a backoff of its own
    /// ([`launch_backoff`]), so it never loops hot and other runs launch
    /// meanwhile. When its launches have failed for `launch_timeout`, the
    /// attempt fails as `launch_timeout` and the job's retry policy decides.
    async fn launch_failed(&self, run: &Run, e: ExecutorError) -> Result<(), StoreError> {
        let note = format!("launch failed: {e}");
        if matches!(e, ExecutorError::ShuttingDown) {
            self.store.requeue_run(&run.run_id, &note).await?;
            return Ok(());
        }
        let now = self.clock.now_ms();
        let tried = Duration::from_millis((now - run.first_launch_ms.unwrap_or(now)).max(0) as u64);
        if tried >= self.launch_timeout {
            crate::metrics::launch_failure(&run.job, "launch_timeout");
            let message = format!(
                "no launch succeeded within {}; the last: {e}",
                humantime::format_duration(self.launch_timeout)
            );
            tracing::error!(run = %run.run_id, job = %run.job, attempt = run.attempt, %message, "launch timed out; the attempt fails");
            let outcome = Outcome {
                run_id: run.run_id.clone(),
                kind: OutcomeKind::Failed {
                    reason: "launch_timeout".into(),
                    message,
                },
                completed_indexes: Vec::new(),
            };
            let job = self.jobs.get(&run.job).cloned();
            finalizer::finalize(&self.store, &self.clock, job.as_deref(), &outcome).await?;
            return Ok(());
        }
        crate::metrics::launch_failure(&run.job, "transient");
        // The claim counted this launch.
        let backoff = launch_backoff(run.launches + 1);
        tracing::warn!(run = %run.run_id, job = %run.job, attempt = run.attempt, error = %crate::error_chain(&e),
            retry_in = ?backoff, "launch failed; the run is tried again after its backoff");
        let not_before = now + backoff.as_millis() as i64;
        self.store
            .requeue_launch(&run.run_id, &note, not_before)
            .await?;
        Ok(())
    }

    /// How long until the next pending run is due. A run that is due but
    /// held back by a limit does not count: an outcome frees the slot and
    /// wakes the loop, so there is no need to spin.
    async fn until_next_due(&self) -> Result<Duration, StoreError> {
        let next = self.store.next_due_ms().await?;
        let now = self.clock.now_ms();
        Ok(match next {
            Some(ms) if ms > now => Duration::from_millis((ms - now) as u64),
            Some(_) | None => IDLE_WAIT,
        })
    }
}

/// What a run launched at `now_ms` waited for, for the metrics: the first
/// attempt of a cron fire waited since the fire, of a message since it was
/// stored; a retry (waiting out its backoff) or a manual run reports
/// nothing.
fn waited(run: &Run, now_ms: i64) -> crate::metrics::Waited {
    use crate::metrics::Waited;
    let since = Duration::from_millis((now_ms - run.scheduled_ms).max(0) as u64);
    if run.attempt > run.attempt_base + 1 {
        return Waited::Nothing;
    }
    match run.trigger {
        TriggerKind::Cron => Waited::SinceFire(since),
        TriggerKind::Queue => Waited::SinceMessage(since),
        TriggerKind::Manual => Waited::Nothing,
    }
}

/// The wait before launching a run again after its `launches`-th launch
/// failed transiently: 1 s doubling per failure, at most 1 min, with ±20 %
/// jitter so runs that failed together do not retry together.
pub fn launch_backoff(launches: i64) -> Duration {
    let doublings = (launches - 1).clamp(0, 6) as u32;
    let base = Duration::from_secs(1 << doublings).min(Duration::from_secs(60));
    base.mul_f64(rand::random_range(0.8..1.2))
}

/// The limits of the loaded jobs and the daemon config.
fn limits_of(jobs: &JobsByName, config: &DaemonConfig) -> Limits {
    Limits {
        jobs: jobs
            .iter()
            .map(|(n, j)| {
                let fixed = j.spec.parallelism.unwrap_or(1).max(1) as u32;
                let (min_pods, want_pods) = match &j.sizing {
                    Some(s) => (s.min, s.max),
                    None => (fixed, fixed),
                };
                let caps = JobCaps {
                    max_active: j.effective_max_active(),
                    max_pods: j.limits.max_pods,
                    pool: j.limits.pool.clone(),
                    min_pods,
                    want_pods,
                    priority: j.priority,
                };
                (n.clone(), caps)
            })
            .collect(),
        pools: config.pools.clone().into_iter().collect(),
        global: config.max_active_runs,
        backpressured: HashSet::new(),
        stopped: HashMap::new(),
        backfills: HashMap::new(),
        guarded: HashSet::new(),
        let_through: HashSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_backoff_doubles_from_a_second_to_a_minute_with_jitter() {
        for _ in 0..200 {
            for (launches, secs) in [
                (1, 1.0),
                (2, 2.0),
                (3, 4.0),
                (6, 32.0),
                (7, 60.0),
                (50, 60.0),
            ] {
                let b = launch_backoff(launches).as_secs_f64();
                assert!(
                    (secs * 0.8..=secs * 1.2).contains(&b),
                    "after {launches} failed launches: {b} s, want {secs} s ± 20 %"
                );
            }
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| launch_backoff(3).as_millis()).collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }
}
