//! The daemon: wires triggers, the dispatcher, the executor and the
//! finalizer together and runs them until shutdown.
//!
//! One loop owns dispatching and settling, so the two never race: it wakes
//! when a trigger stored work, when another process (`kedge enqueue`,
//! `kedge trigger`, `kedge dlq replay`) announces work it stored (see
//! `store::signal`), when an outcome arrives, when the next pending run
//! becomes due, on the one-second re-planning tick, or every
//! `poll_interval` (the backstop for a lost announcement).
//!
//! # Shutdown
//!
//! On the shutdown signal: the cron loops stop, no new run is launched, the
//! executor stops its runs (local processes get SIGTERM, then SIGKILL after
//! their grace period) and each interrupted run goes back to `pending`, to be
//! launched again by the next daemon. Outcomes that arrived meanwhile are
//! settled before the store is closed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::job::Trigger;
use crate::config::queue::OnExpired;
use crate::config::sizing::AtRiskAction;
use crate::config::{DaemonConfig, Job};
use crate::executor::{render, Executor, Outcome};
use crate::executor::{OutcomeKind, Progress};
use crate::finalizer;
use crate::health::Health;
use crate::intake;
use crate::lifecycle::RunState;
use crate::planner::{self, Candidate, Hold, JobCaps, Limits, Usage};
use crate::sizer;
use crate::sources::{AnySource, Letter, Outbox};
use crate::store::{Store, StoreError};
use crate::triggers::scheduler::{self, SchedulerContext};

/// How often running sized runs are checked against their deadline.
const REPLAN_EVERY: Duration = Duration::from_secs(1);

/// How long dispatching pauses after a launch failed.
const LAUNCH_FAILED_WAIT: Duration = Duration::from_secs(1);

/// Launches in flight at once within a pass.
const LAUNCH_CONCURRENCY: usize = 8;

/// Runs claimed per store transaction within a pass.
const CLAIM_CHUNK: usize = 32;

/// Runs launched per dispatch pass at most.
const DISPATCH_BATCH: i64 = 256;

/// A running daemon's parts.
pub struct Daemon<E: Executor> {
    pub config: DaemonConfig,
    pub jobs: Vec<Job>,
    pub store: Store,
    pub executor: E,
    pub outcomes: mpsc::Receiver<Outcome>,
}

impl<E: Executor> Daemon<E> {
    /// Runs until `shutdown` is cancelled, then drains. `ready` is called
    /// once recovery is done and triggers are running.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: impl FnOnce(),
    ) -> Result<(), StoreError> {
        let Daemon {
            config,
            jobs,
            store,
            executor,
            mut outcomes,
        } = self;
        let jobs: HashMap<String, Arc<Job>> = jobs
            .into_iter()
            .map(|j| (j.name.clone(), Arc::new(j)))
            .collect();
        let mut limits = limits_of(&jobs, &config);

        // Recovery: runs the previous daemon left running.
        let interrupted: Vec<String> = store
            .runs_in_state(RunState::Running)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        // Always asked, even with nothing interrupted: an executor may have
        // its own leftovers to clean up (payload ConfigMaps, history).
        let relaunch = executor.recover(interrupted).await;
        for run_id in &relaunch {
            store
                .requeue_run(run_id, "interrupted: the daemon stopped during the run")
                .await?;
        }
        if !relaunch.is_empty() {
            tracing::warn!(
                runs = relaunch.len(),
                "runs interrupted by the previous daemon will be launched again"
            );
        }

        let wake = Arc::new(Notify::new());
        let (cancel_tx, mut cancel_rx) = mpsc::unbounded_channel::<String>();
        let triggers_stop = shutdown.child_token();
        let health = Health::default();
        if let Some(addr) = config.http_listen {
            match crate::health::serve(addr, health.clone(), shutdown.child_token()).await {
                Ok(bound) => tracing::info!(%bound, "http listening (/healthz, /readyz, /metrics)"),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot serve http; continuing without it")
                }
            }
        }
        let mut cron_tasks = tokio::task::JoinSet::new();
        let consumer = consumer_name(&store).await;
        for job in jobs.values() {
            let Trigger::Queue(q) = &job.trigger else {
                continue;
            };
            let Some(source) = AnySource::new(&q.source, &consumer) else {
                continue;
            };
            cron_tasks.spawn(intake::consume(
                source,
                job.clone(),
                store.clone(),
                wake.clone(),
                health.clone(),
                triggers_stop.clone(),
            ));
        }
        cron_tasks.spawn(forward_dead_letters(
            jobs.clone(),
            consumer.clone(),
            store.clone(),
            triggers_stop.clone(),
        ));
        let cron_jobs: Vec<Arc<Job>> = jobs
            .values()
            .filter(|j| j.cron().is_some())
            .cloned()
            .collect();
        if !cron_jobs.is_empty() {
            let ctx = SchedulerContext {
                store: store.clone(),
                wake: wake.clone(),
                cancel: cancel_tx.clone(),
                shutdown: triggers_stop.clone(),
            };
            cron_tasks.spawn(scheduler::run(cron_jobs, ctx));
        }
        // Work stored by other processes (`kedge enqueue`, `kedge trigger`)
        // wakes the dispatcher too; the poll below is only the backstop.
        store
            .listen_for_work(wake.clone(), triggers_stop.clone())
            .await;
        ready();

        let mut warned_unknown: HashSet<String> = HashSet::new();
        let mut store_failures: u32 = 0;
        let mut replan_tick = tokio::time::interval(REPLAN_EVERY);
        replan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let pass = dispatch(&store, &executor, &jobs, &limits, &mut warned_unknown).await;
            let wait = match pass {
                Ok(next_due) => {
                    store_failures = 0;
                    next_due.min(config.poll_interval)
                }
                Err(e) => {
                    store_failures += 1;
                    let backoff = Duration::from_millis(200 * 2u64.pow(store_failures.min(6)));
                    tracing::error!(error = %crate::error_chain(&e), retry_in = ?backoff, "dispatch failed");
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(outcome) = outcomes.recv() => {
                    settle(&store, &jobs, &outcome).await;
                    executor.settled(&outcome.run_id).await;
                    // Settle everything already queued before dispatching again.
                    while let Ok(o) = outcomes.try_recv() {
                        settle(&store, &jobs, &o).await;
                        executor.settled(&o.run_id).await;
                    }
                }
                Some(run_id) = cancel_rx.recv() => {
                    executor.cancel(&run_id).await;
                }
                _ = replan_tick.tick() => {
                    match observe(&store, &executor, &jobs).await {
                        Ok(stuck) => limits.backpressured = stuck,
                        Err(e) => tracing::error!(error = %crate::error_chain(&e), "re-planning failed"),
                    }
                }
            }
        }

        tracing::info!("shutting down: stopping triggers and runs");
        triggers_stop.cancel();
        while cron_tasks.join_next().await.is_some() {}
        let stopped = tokio::time::timeout(config.shutdown_timeout, executor.shutdown()).await;
        match stopped {
            Ok(interrupted) => {
                for run_id in interrupted {
                    store
                        .requeue_run(&run_id, "interrupted: kedge shut down during the run")
                        .await?;
                }
            }
            Err(_) => tracing::error!(
                timeout = ?config.shutdown_timeout,
                "runs did not stop in time; they will be recovered at the next start"
            ),
        }
        outcomes.close();
        while let Some(o) = outcomes.recv().await {
            settle(&store, &jobs, &o).await;
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// One dispatch pass: launches what the planner admits. Returns how long
/// until the next pending run becomes due (capped by the caller).
async fn dispatch<E: Executor>(
    store: &Store,
    executor: &E,
    jobs: &HashMap<String, Arc<Job>>,
    limits: &Limits,
    warned_unknown: &mut HashSet<String>,
) -> Result<Duration, StoreError> {
    let batch_wait = form_batches(store, jobs).await?;
    let now = Utc::now().timestamp_millis();
    let mut due = store.due_runs(now, DISPATCH_BATCH).await?;
    // Messages whose own deadline passed while they waited: dead-letter
    // them (`on_expired: dead_letter`) rather than launch late work.
    let mut expired = Vec::new();
    for r in &due {
        // (Batch runs expire their messages before the batch forms.)
        let expires = jobs.get(&r.job).is_some_and(|j| match &j.trigger {
            Trigger::Queue(q) => {
                q.deadline.is_some() && q.on_expired == OnExpired::DeadLetter && q.batch.is_none()
            }
            Trigger::Cron(_) => false,
        });
        if expires
            && r.deadline_ms.is_some_and(|d| d <= now)
            && store.expire_run(&r.run_id, now).await?
        {
            tracing::warn!(run = %r.run_id, job = %r.job, message = %r.message_id, "message expired before it could run; dead-lettered");
            expired.push(r.run_id.clone());
        }
    }
    due.retain(|r| !expired.contains(&r.run_id));
    let mut launched: usize = 0;
    if !due.is_empty() {
        let usage = Usage {
            running: store
                .active_counts()
                .await?
                .into_iter()
                .map(|(job, running, _)| (job, running.max(0) as u32))
                .collect(),
            pods: store
                .running_pods()
                .await?
                .into_iter()
                .map(|(job, pods)| (job, pods.clamp(0, u32::MAX as i64) as u32))
                .collect(),
        };
        let candidates: Vec<Candidate> = due
            .iter()
            .map(|r| Candidate {
                run_id: &r.run_id,
                job: &r.job,
            })
            .collect();
        let admission = planner::admit(&candidates, &usage, limits);
        for (run_id, hold) in &admission.hold {
            if *hold == Hold::UnknownJob {
                let job = due
                    .iter()
                    .find(|r| r.run_id == *run_id)
                    .map(|r| r.job.clone());
                if let Some(job) = job {
                    if warned_unknown.insert(job.clone()) {
                        tracing::warn!(%job, "runs of a job that is not loaded wait until its definition is valid again");
                    }
                }
            }
        }
        // Claims are committed a chunk at a time (one store transaction for
        // CLAIM_CHUNK runs); launches overlap (an API round trip each on
        // Kubernetes), up to LAUNCH_CONCURRENCY at once; claiming and
        // rendering stay in order.
        let grants: Vec<(&crate::store::Run, u32)> = admission
            .launch
            .iter()
            .filter_map(|g| {
                let run = due.iter().find(|r| r.run_id == g.run_id)?;
                jobs.contains_key(&run.job).then_some((run, g.max_pods))
            })
            .collect();
        let mut in_flight = FuturesUnordered::new();
        let mut failed = false;
        for chunk in grants.chunks(CLAIM_CHUNK) {
            if failed {
                break;
            }
            let ids: Vec<&str> = chunk.iter().map(|(r, _)| r.run_id.as_str()).collect();
            let claimed = store
                .claim_runs(&ids, Utc::now().timestamp_millis())
                .await?;
            let mut claimed: std::collections::VecDeque<_> = chunk
                .iter()
                .zip(claimed)
                .filter_map(|(g, ok)| ok.then_some(*g))
                .collect();
            while let Some((run, max_pods)) = claimed.pop_front() {
                while in_flight.len() >= LAUNCH_CONCURRENCY && !failed {
                    if let Some(done) = in_flight.next().await {
                        failed |= !launched_or_requeued(store, done, &mut launched).await?;
                    }
                }
                if failed {
                    // Not launched: give the claims back untouched.
                    let rest: Vec<&str> = std::iter::once(run)
                        .chain(claimed.iter().map(|(r, _)| *r))
                        .map(|r| r.run_id.as_str())
                        .collect();
                    store.unclaim_runs(&rest).await?;
                    break;
                }
                let Some(job) = jobs.get(&run.job) else {
                    continue; // (grants hold loaded jobs only)
                };
                let sized;
                let job: &Job = match &job.sizing {
                    None => job,
                    Some(cfg) => match size_run(store, job, cfg, run, max_pods).await? {
                        Some(j) => {
                            sized = j;
                            &sized
                        }
                        None => continue,
                    },
                };
                let members = match &job.trigger {
                    Trigger::Queue(q) if q.batch.is_some() => {
                        store.batch_members(&run.run_id).await?
                    }
                    _ => Vec::new(),
                };
                let launch = if members.is_empty() {
                    render(job, run)
                } else {
                    crate::executor::render::render_batch(
                        job,
                        run,
                        members.into_iter().map(|m| m.payload).collect(),
                    )
                };
                in_flight.push(async move { (run, executor.launch(launch).await) });
            }
        }
        while let Some(done) = in_flight.next().await {
            failed |= !launched_or_requeued(store, done, &mut launched).await?;
        }
        if failed {
            // The executor is unwell (the API server is down, say): do not
            // hammer it with the rest of the due runs.
            return Ok(LAUNCH_FAILED_WAIT.min(batch_wait.unwrap_or(LAUNCH_FAILED_WAIT)));
        }
    }
    if due.len() as i64 == DISPATCH_BATCH && launched > 0 {
        // More due runs than one pass takes: go again at once.
        return Ok(Duration::ZERO);
    }
    let next = store.next_due_ms().await?;
    let now = Utc::now().timestamp_millis();
    let wait = match next {
        Some(ms) if ms > now => Duration::from_millis((ms - now) as u64),
        // Due but held back by a limit: an outcome frees the slot and wakes
        // the loop, so there is no need to spin; the caller's poll interval
        // bounds the wait.
        Some(_) | None => Duration::from_secs(3600),
    };
    Ok(batch_wait.map_or(wait, |b| wait.min(b)))
}

/// Logs a finished launch, or puts a failed one back to pending. False
/// when it failed.
async fn launched_or_requeued(
    store: &Store,
    (run, result): (
        &crate::store::Run,
        Result<(), crate::executor::ExecutorError>,
    ),
    launched: &mut usize,
) -> Result<bool, StoreError> {
    match result {
        Ok(()) => {
            *launched += 1;
            tracing::info!(run = %run.run_id, job = %run.job, attempt = run.attempt, "run launched");
            Ok(true)
        }
        Err(e) => {
            tracing::error!(run = %run.run_id, error = %crate::error_chain(&e), "launch failed; the run waits for the next pass");
            store
                .requeue_run(&run.run_id, &format!("launch failed: {e}"))
                .await?;
            Ok(false)
        }
    }
}

/// Puts the waiting messages of batching jobs into batch runs (one index
/// per message) as [`planner::batching::batches`] decides. Returns how long
/// until a partial batch is due, if one is waiting.
async fn form_batches(
    store: &Store,
    jobs: &HashMap<String, Arc<Job>>,
) -> Result<Option<Duration>, StoreError> {
    let mut next: Option<Duration> = None;
    for job in jobs.values() {
        let Trigger::Queue(q) = &job.trigger else {
            continue;
        };
        let Some(batch) = q.batch else { continue };
        let limit = (batch.max_messages as i64 * 16).min(4096);
        let mut waiting = store.awaiting_batch(&job.name, limit).await?;
        let now = Utc::now().timestamp_millis();
        if q.deadline.is_some() && q.on_expired == OnExpired::DeadLetter {
            let mut kept = Vec::with_capacity(waiting.len());
            for w in waiting {
                if w.deadline_ms.is_some_and(|d| d <= now)
                    && store.expire_waiting(&w.work_item_id, now).await?
                {
                    tracing::warn!(job = %job.name, message = %w.message_id, "message expired while waiting for its batch; dead-lettered");
                } else {
                    kept.push(w);
                }
            }
            waiting = kept;
        }
        if waiting.is_empty() {
            continue;
        }
        let view: Vec<planner::batching::Waiting> = waiting
            .iter()
            .map(|w| planner::batching::Waiting {
                payload_bytes: w.payload_bytes.max(0) as usize,
                waited: Duration::from_millis((now - w.created_ms).max(0) as u64),
            })
            .collect();
        let (ready, later) = planner::batching::batches(
            &view,
            batch.max_messages as usize,
            crate::config::queue::BATCH_MAX_BYTES,
            batch.max_wait,
        );
        for range in ready {
            let members = &waiting[range];
            let ids: Vec<String> = members.iter().map(|m| m.work_item_id.clone()).collect();
            let run_id = crate::lifecycle::run_name(
                &job.name,
                crate::lifecycle::RunKey::Message(&format!("batch:{}", ids[0])),
                1,
            );
            // The run's deadline is its first member's: members come
            // earliest deadline first.
            if store
                .create_batch_run(&job.name, &run_id, &ids, now)
                .await?
            {
                tracing::info!(run = %run_id, job = %job.name, messages = ids.len(), "batch formed");
            }
        }
        if let Some(l) = later {
            next = Some(next.map_or(l, |n| n.min(l)));
        }
    }
    Ok(next)
}

async fn settle(store: &Store, jobs: &HashMap<String, Arc<Job>>, outcome: &Outcome) {
    // The outcome is in memory only until settled: retry store errors
    // rather than drop it (a crash meanwhile is covered by recovery).
    let mut delay = Duration::from_millis(100);
    loop {
        let job = match store.get_run(&outcome.run_id).await {
            Ok(Some(run)) => jobs.get(&run.job).cloned(),
            Ok(None) => None,
            Err(_) => None,
        };
        match finalizer::finalize(store, job.as_deref(), outcome).await {
            Ok(_) => return,
            Err(e) => {
                tracing::error!(run = %outcome.run_id, error = %crate::error_chain(&e), "cannot settle; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// This daemon's name among a source's consumers: host, store instance
/// and a per-process suffix, so a restarted daemon is a new consumer and
/// recovers what the dead one left claimed.
async fn consumer_name(store: &Store) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kedge".into());
    let instance = store.instance_id().await.unwrap_or_default();
    let short: String = instance
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    let process = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{short}-{}", &process[..8])
}

/// How often dead letters waiting for their broker target are published.
const FORWARD_EVERY: Duration = Duration::from_millis(500);

/// Publishes stored dead letters to their source's dead-letter target
/// (`dead_letter:` in the job), oldest first, and marks each forwarded
/// once the broker confirmed it. An unreachable broker only delays them:
/// the error is recorded on the letter and it is tried again.
async fn forward_dead_letters(
    jobs: HashMap<String, Arc<Job>>,
    consumer: String,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut targets: Vec<(Arc<Job>, crate::config::queue::DeadLetterTarget, AnySource)> = jobs
        .values()
        .filter_map(|j| match &j.trigger {
            Trigger::Queue(q) => {
                let target = q.dead_letter.clone()?;
                let outbox = AnySource::new(&q.source, &format!("{consumer}-dlq"))?;
                Some((j.clone(), target, outbox))
            }
            Trigger::Cron(_) => None,
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(FORWARD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (job, target, outbox) in &mut targets {
            let letters = match store.dead_letters_to_forward(&job.name, 100).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(job = %job.name, error = %crate::error_chain(&e), "cannot read dead letters to forward");
                    continue;
                }
            };
            for l in letters {
                let letter = Letter {
                    job: l.job.clone(),
                    message_id: l.message_id.clone(),
                    payload: l.payload.clone(),
                    reason: l.reason.clone(),
                    attempts: l.attempts,
                    last_error: l.last_error.clone(),
                    dead_at: chrono::DateTime::from_timestamp_millis(l.created_ms)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                };
                let sent = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = outbox.dead_letter(target, &letter) => r,
                };
                let now = Utc::now().timestamp_millis();
                match sent {
                    Ok(()) => {
                        if let Err(e) = store.mark_forwarded(&l.id, None, now).await {
                            tracing::error!(error = %crate::error_chain(&e), "cannot record a forwarded dead letter; it may be published again");
                        }
                    }
                    Err(e) => {
                        let error = crate::error_chain(&e);
                        tracing::warn!(job = %job.name, letter = %l.id, %error, "cannot publish a dead letter to its target yet; will retry");
                        let _ = store.mark_forwarded(&l.id, Some(&error), now).await;
                        break;
                    }
                }
            }
        }
    }
}

/// The limits of the loaded jobs and the daemon config.
fn limits_of(jobs: &HashMap<String, Arc<Job>>, config: &DaemonConfig) -> Limits {
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
                };
                (n.clone(), caps)
            })
            .collect(),
        pools: config.pools.clone().into_iter().collect(),
        global: config.max_active_runs,
        backpressured: HashSet::new(),
    }
}

/// Sizes a claimed run of a job with `sizing`; returns the job with its
/// JobSpec sized, or `None` when the run was settled instead (at risk with
/// `when_at_risk: skip | fail`).
async fn size_run(
    store: &Store,
    job: &Job,
    cfg: &crate::config::sizing::Sizing,
    run: &crate::store::Run,
    max_pods: u32,
) -> Result<Option<Job>, StoreError> {
    let now = Utc::now();
    let deadline = run
        .deadline_ms
        .and_then(chrono::DateTime::<Utc>::from_timestamp_millis)
        .or_else(|| job.deadline_after(now))
        .unwrap_or(now);
    let measured = sizer::measure_work(store, job, cfg).await?;
    let model = sizer::model(store, job, cfg).await?;
    let d = sizer::decide(job, cfg, model, measured, now, deadline, max_pods);
    store.record_sizing(&run.run_id, &sizer::record(&d)).await?;
    tracing::info!(run = %run.run_id, job = %job.name, parallelism = d.parallelism,
        completions = d.completions, deadline = %d.deadline, projected_finish = %d.projected_finish,
        reason = %d.reason, "run sized");
    if d.at_risk {
        sizer::signal_at_risk(&run.run_id, &d, cfg.at_risk_webhook.as_deref());
        let kind = match cfg.when_at_risk {
            AtRiskAction::Run => None,
            AtRiskAction::Skip => Some(OutcomeKind::Skipped {
                reason: format!("skipped: at risk: {}", d.reason),
            }),
            AtRiskAction::Fail => Some(OutcomeKind::Failed {
                reason: "AtRisk".into(),
                message: d.reason.clone(),
            }),
        };
        if let Some(kind) = kind {
            let outcome = Outcome {
                completed_indexes: Vec::new(),
                run_id: run.run_id.clone(),
                kind,
            };
            finalizer::finalize(store, Some(job), &outcome).await?;
            return Ok(None);
        }
    }
    Ok(Some(sizer::apply(job, &d, now)))
}

/// Watches running runs, every [`REPLAN_EVERY`]:
/// - pending-pod backpressure: returns the jobs with a pod Pending longer
///   than their `limits.pending_timeout`;
/// - in-flight re-planning: for each running run of a sized job, compares
///   its pace with its deadline and raises its parallelism when it falls
///   behind, within `sizing.parallelism.max` and the job's `max_pods`.
async fn observe<E: Executor>(
    store: &Store,
    executor: &E,
    jobs: &HashMap<String, Arc<Job>>,
) -> Result<HashSet<String>, StoreError> {
    let pods: HashMap<String, i64> = store.running_pods().await?.into_iter().collect();
    let mut stuck = HashSet::new();
    for run in store.runs_in_state(RunState::Running).await? {
        let Some(job) = jobs.get(&run.job) else {
            continue;
        };
        let Some(progress) = executor.progress(&run.run_id).await else {
            continue;
        };
        if progress
            .pending_for
            .is_some_and(|p| p > job.limits.pending_timeout)
            && stuck.insert(job.name.clone())
        {
            tracing::warn!(job = %job.name, run = %run.run_id,
                "pods stuck Pending: no new launches of this job until they schedule");
        }
        let (Some(cfg), Some(sized), Some(deadline)) = (
            &job.sizing,
            &run.sizing,
            run.deadline_ms
                .and_then(chrono::DateTime::<Utc>::from_timestamp_millis),
        ) else {
            continue;
        };
        let Progress {
            completed,
            total,
            parallelism,
            elapsed,
            ..
        } = progress;
        let others = pods.get(&run.job).copied().unwrap_or(0) - i64::from(parallelism);
        let max = match job.limits.max_pods {
            Some(mp) => cfg
                .max
                .min((i64::from(mp) - others).clamp(0, u32::MAX as i64) as u32),
            None => cfg.max,
        };
        let now = Utc::now();
        let Some(p) = sizer::replan(completed, total, elapsed, parallelism, max, deadline, now)
        else {
            continue;
        };
        if !executor.set_parallelism(&run.run_id, p).await {
            continue;
        }
        let why = format!(
            "raised from {parallelism} to {p} pods after {:.0}s: {completed} of {total} done, behind the pace for {}",
            elapsed.as_secs_f64(),
            deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        tracing::warn!(run = %run.run_id, job = %run.job, %why, "run behind its deadline; parallelism raised");
        let mut record = sized.clone();
        record.parallelism = i64::from(p);
        record.note = format!("{}; {why}", record.note);
        store.record_sizing(&run.run_id, &record).await?;
    }
    Ok(stuck)
}
