//! The daemon: wires triggers, the dispatcher, the executor and the
//! finalizer together and runs them until shutdown.
//!
//! # Expected flow
//!
//! 1. **Recover**: runs the previous daemon left `running` are offered to
//!    the executor, which adopts what still runs; the rest go back to
//!    `pending` to be launched again.
//! 2. **Start**: the HTTP endpoints, one intake task per queue source, the
//!    cron scheduler, the dead-letter [`crate::finalizer::outbox`], the
//!    [`crate::retention`] pruner (a pass now, then every
//!    `retention.interval`), one [`crate::guards`] watcher per load guard
//!    (a guard whose effect changes wakes the loop) and the store's wake-up
//!    channel for work other processes store.
//! 3. **Serve**: one loop owns dispatching and settling, so the two never
//!    race. It runs a [`Dispatcher`] pass, then waits for whichever comes
//!    first: a trigger stored work, another process (`kedge enqueue`,
//!    `kedge trigger`, `kedge dlq replay`) announced work it stored (see
//!    `store::signal`), an outcome arrived, the next pending run is due, the
//!    one-second re-planning tick ([`replan`]), or `poll_interval` passed
//!    (the backstop for a lost announcement).
//! 4. **Drain**, on the shutdown signal: the triggers stop, no new run is
//!    launched, the executor stops its runs (local processes get SIGTERM,
//!    then SIGKILL after their grace period; Kubernetes Jobs keep running
//!    for the next leader) and each interrupted run goes back to
//!    `pending`. Outcomes that arrived meanwhile are settled before the
//!    store is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::job::Trigger;
use crate::config::{DaemonConfig, ExecutorConfig, Job, JobsByName};
use crate::dispatcher::stuck::Watchdog;
use crate::dispatcher::{replan, Dispatcher};
use crate::executor::{Executor, Outcome};
use crate::finalizer::{self, outbox};
use crate::guards::Board;
use crate::health::Health;
use crate::intake;
use crate::lifecycle::RunState;
use crate::retention::Pruner;
use crate::sources::AnySource;
use crate::store::{Store, StoreError};
use crate::triggers::{scheduler, TriggerContext};

/// How often running runs are checked: backpressure and re-planning.
const REPLAN_EVERY: Duration = Duration::from_secs(1);

/// A running daemon's parts.
pub struct Daemon<E: Executor> {
    pub config: DaemonConfig,
    pub jobs: Vec<Job>,
    pub store: Store,
    pub executor: E,
    pub outcomes: mpsc::Receiver<Outcome>,
}

/// What the serving loop works with.
struct Serving<E: Executor> {
    store: Store,
    executor: E,
    jobs: JobsByName,
    clock: Clock,
    outcomes: mpsc::Receiver<Outcome>,
    /// Run ids the scheduler wants cancelled (`overlap: replace`).
    cancels: mpsc::UnboundedReceiver<String>,
    wake: Arc<Notify>,
    poll_interval: Duration,
    /// The load guards' states (in-flight runs are re-planned down under a throttle).
    guards: Board,
}

impl<E: Executor> Daemon<E> {
    /// Runs until `shutdown` is cancelled, then drains. `ready` is called
    /// once recovery is done and triggers are running.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: impl FnOnce(),
    ) -> Result<(), StoreError> {
        self.run_reporting(shutdown, ready, watch::Sender::new(0))
            .await
    }

    /// [`Daemon::run`], counting finished dispatch passes on `passes`.
    pub async fn run_reporting(
        self,
        shutdown: CancellationToken,
        ready: impl FnOnce(),
        passes: watch::Sender<u64>,
    ) -> Result<(), StoreError> {
        let Daemon {
            config,
            jobs,
            store,
            executor,
            outcomes,
        } = self;
        // Every part reads the store's clock (the system clock outside
        // tests on paused time).
        let clock = store.clock();
        let jobs: JobsByName = jobs
            .into_iter()
            .map(|j| (j.name.clone(), Arc::new(j)))
            .collect();
        recover(&store, &executor).await?;

        let wake = Arc::new(Notify::new());
        let (cancel_tx, cancels) = mpsc::unbounded_channel::<String>();
        let triggers_stop = shutdown.child_token();
        let health = Health::default();
        serve_http(&config, &health, &shutdown).await;
        let ctx = TriggerContext {
            store: store.clone(),
            wake: wake.clone(),
            cancel: cancel_tx,
            shutdown: triggers_stop.clone(),
            clock,
        };
        // Load guards: every guard's state is on the board (not measured
        // yet: holding, unless `on_probe_failure: ignore`) before the first
        // dispatch pass; each is polled by its own task.
        let board = Board::new(jobs.values().map(|j| j.as_ref()), clock.now());
        let mut triggers = start_triggers(&jobs, ctx, &health).await;
        crate::guards::start(&board, &store, clock, &wake, &triggers_stop, &mut triggers);
        // Pruning stops with the triggers, before the store is closed.
        triggers.spawn(pruner(&config, &store).run(triggers_stop.clone()));
        // Work stored by other processes (`kedge enqueue`, `kedge trigger`)
        // wakes the dispatcher too; the poll is only the backstop.
        store
            .listen_for_work(wake.clone(), triggers_stop.clone())
            .await;
        ready();

        let dispatcher = Dispatcher::new(store.clone(), jobs.clone(), &config, clock)
            .reporting(passes)
            .guarded(board.clone());
        let mut serving = Serving {
            store,
            executor,
            jobs,
            clock,
            outcomes,
            cancels,
            wake,
            poll_interval: config.poll_interval,
            guards: board,
        };
        serving.serve(dispatcher, &shutdown).await;

        tracing::info!("shutting down: stopping triggers and runs");
        triggers_stop.cancel();
        while triggers.join_next().await.is_some() {}
        serving.drain(config.shutdown_timeout).await
    }
}

/// The retention pruner for this daemon: the local executor's run folders
/// go with their runs.
fn pruner(config: &DaemonConfig, store: &Store) -> Pruner {
    let run_dir = match &config.executor {
        ExecutorConfig::Local(l) => Some(l.work_dir.clone()),
        ExecutorConfig::Kubernetes(_) => None,
    };
    Pruner::new(store.clone(), config.retention, run_dir)
}

/// Offers the runs the previous daemon left running to the executor; those
/// it does not adopt go back to `pending`. Always asked, even with nothing
/// interrupted: an executor may have its own leftovers to clean up
/// (payload ConfigMaps, history).
async fn recover<E: Executor>(store: &Store, executor: &E) -> Result<(), StoreError> {
    let interrupted: Vec<String> = store
        .runs_in_state(RunState::Running)
        .await?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
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
    Ok(())
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `http.listen`, if set. A
/// port that cannot be bound is logged; the daemon goes on without it.
async fn serve_http(config: &DaemonConfig, health: &Health, shutdown: &CancellationToken) {
    let Some(addr) = config.http_listen else {
        return;
    };
    match crate::health::serve(addr, health.clone(), shutdown.child_token()).await {
        Ok(bound) => tracing::info!(%bound, "http listening (/healthz, /readyz, /metrics)"),
        Err(e) => tracing::error!(%addr, error = %e, "cannot serve http; continuing without it"),
    }
}

/// Starts the triggers: one intake task per queue source, the cron
/// scheduler (if any job has a schedule) and the dead-letter outbox. They
/// stop on `ctx.shutdown`.
async fn start_triggers(jobs: &JobsByName, ctx: TriggerContext, health: &Health) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let consumer = consumer_name(&ctx.store).await;
    for job in jobs.values() {
        let Trigger::Queue(q) = &job.trigger else {
            continue;
        };
        let Some(source) = AnySource::new(&q.source, &consumer) else {
            continue; // the builtin queue: the dispatcher reads the store
        };
        tasks.spawn(intake::consume(
            source,
            job.clone(),
            health.clone(),
            ctx.clone(),
        ));
    }
    tasks.spawn(outbox::forward(
        jobs.clone(),
        consumer,
        ctx.store.clone(),
        ctx.clock,
        ctx.shutdown.clone(),
    ));
    let cron_jobs: Vec<Arc<Job>> = jobs
        .values()
        .filter(|j| j.cron().is_some())
        .cloned()
        .collect();
    if !cron_jobs.is_empty() {
        tasks.spawn(scheduler::run(cron_jobs, ctx));
    }
    tasks
}

impl<E: Executor> Serving<E> {
    /// The loop: a dispatch pass, then wait for the next reason to look
    /// again. Returns on `shutdown`.
    async fn serve(&mut self, mut dispatcher: Dispatcher, shutdown: &CancellationToken) {
        let mut store_failures: u32 = 0;
        let mut watchdog = Watchdog::default();
        let mut replan_tick = tokio::time::interval(REPLAN_EVERY);
        replan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wait = match dispatcher.pass(&self.executor).await {
                Ok(next_due) => {
                    store_failures = 0;
                    next_due.min(self.poll_interval)
                }
                Err(e) => {
                    store_failures += 1;
                    let backoff = Duration::from_millis(200 * 2u64.pow(store_failures.min(6)));
                    tracing::error!(error = %crate::error_chain(&e), retry_in = ?backoff, "dispatch failed");
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(outcome) = self.outcomes.recv() => self.settle_queued(outcome).await,
                Some(run_id) = self.cancels.recv() => self.executor.cancel(&run_id).await,
                _ = replan_tick.tick() => {
                    match replan::observe(&self.store, &self.executor, &self.jobs, &self.guards, &self.clock, &mut watchdog).await {
                        Ok(stuck) => dispatcher.limits.backpressured = stuck,
                        Err(e) => tracing::error!(error = %crate::error_chain(&e), "re-planning failed"),
                    }
                }
            }
        }
    }

    /// Settles `first` and every outcome already queued behind it, before
    /// the next dispatch pass.
    async fn settle_queued(&mut self, first: Outcome) {
        let mut next = Some(first);
        while let Some(o) = next {
            finalizer::settle(&self.store, &self.clock, &self.jobs, &o).await;
            self.executor.settled(&o.run_id).await;
            // Empty or closed: either way nothing more is queued now.
            next = self.outcomes.try_recv().ok();
        }
    }

    /// Stops the executor's runs (each interrupted run back to `pending`),
    /// settles the outcomes that arrived meanwhile, closes the store.
    async fn drain(mut self, timeout: Duration) -> Result<(), StoreError> {
        match tokio::time::timeout(timeout, self.executor.shutdown()).await {
            Ok(interrupted) => {
                for run_id in interrupted {
                    self.store
                        .requeue_run(&run_id, "interrupted: kedge shut down during the run")
                        .await?;
                }
            }
            Err(_) => tracing::error!(
                ?timeout,
                "runs did not stop in time; they will be recovered at the next start"
            ),
        }
        self.outcomes.close();
        while let Some(o) = self.outcomes.recv().await {
            finalizer::settle(&self.store, &self.clock, &self.jobs, &o).await;
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// This daemon's name among a source's consumers: host, store instance
/// and a per-process suffix, so a restarted daemon is a new consumer and
/// recovers what the dead one left claimed.
async fn consumer_name(store: &Store) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kedge".into());
    // Without the store's id the name is still unique to this process (the
    // random suffix below); the id only makes it easier to read.
    let instance = match store.instance_id().await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the store's instance id; the consumer name goes without it");
            String::new()
        }
    };
    let short: String = instance
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    let process = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{short}-{}", &process[..8])
}
