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
//!    `retention.interval`), the store's wake-up channel for work other
//!    processes store, and (for `kedge run`) the [`crate::reload`] task,
//!    which publishes reloaded definitions: the serving loop takes them
//!    between passes and [`Triggers`] restarts the trigger tasks of the
//!    jobs that changed;
//!    and one [`crate::guards`] watcher per load guard (a guard whose
//!    effect changes wakes the loop).
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
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{DaemonConfig, ExecutorConfig, Job, JobsByName};
use crate::dispatcher::stuck::Watchdog;
use crate::dispatcher::{replan, Dispatcher};
use crate::executor::{Executor, Outcome};
use crate::finalizer;
use crate::guards::Board;
use crate::health::Health;
use crate::lifecycle::RunState;
use crate::reload::{InForce, ReloadFrom, Reloader};
use crate::retention::Pruner;
use crate::store::{Store, StoreError};
use crate::triggers::supervisor::Triggers;
use crate::triggers::TriggerContext;

/// How often running runs are checked: backpressure and re-planning.
const REPLAN_EVERY: Duration = Duration::from_secs(1);

/// A running daemon's parts.
pub struct Daemon<E: Executor> {
    pub config: DaemonConfig,
    pub jobs: Vec<Job>,
    pub store: Store,
    pub executor: E,
    pub outcomes: mpsc::Receiver<Outcome>,
    /// Where to read the definitions again while running (hot reload);
    /// `None`: the jobs stay as given.
    pub reload: Option<ReloadFrom>,
    /// Problems found in the job files at start (shown on `/healthz`).
    pub job_problems: Vec<String>,
}

/// What the serving loop works with.
struct Serving<E: Executor> {
    store: Store,
    executor: E,
    jobs: JobsByName,
    /// The definitions in force; a reload publishes new ones here.
    in_force: watch::Receiver<Arc<InForce>>,
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
            reload,
            job_problems,
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
        health.loaded(job_problems);
        let (in_force_tx, in_force) = watch::channel(Arc::new(InForce {
            config: config.clone(),
            jobs: jobs.clone(),
            generation: 0,
        }));
        if let Some(from) = reload {
            let (requests_tx, requests) = mpsc::channel(8);
            health.accept_reloads(requests_tx);
            let reloader = Reloader::new(from, in_force_tx, health.clone());
            tokio::spawn(reloader.run(requests, triggers_stop.clone()));
        }
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
        // dispatch pass; each is polled by its own task. (Guards are read
        // at start: a reload that changes them applies at the next restart.)
        let board = Board::new(jobs.values().map(|j| j.as_ref()), clock.now());
        let mut triggers = Triggers::start(&jobs, ctx, &health).await;
        crate::metrics::register_jobs(jobs.keys().map(String::as_str));
        let following = in_force.clone();
        triggers.spawn(crate::health::watch_store(
            store.clone(),
            move || following.borrow().jobs.keys().cloned().collect(),
            crate::health::STORE_GAUGES_EVERY,
            triggers_stop.clone(),
        ));
        for watcher in crate::guards::watchers(&board, &store, clock, &wake, &triggers_stop) {
            triggers.spawn(watcher);
        }
        // Pruning stops with the triggers, before the store is closed.
        triggers.spawn(pruner(&config, &store).run(triggers_stop.clone()));
        let triggers = tokio::spawn(follow(triggers, in_force.clone(), triggers_stop.clone()));
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
            in_force,
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
        if let Err(e) = triggers.await {
            tracing::error!(error = %e, "the trigger tasks ended abnormally");
        }
        serving.drain(config.shutdown_timeout).await
    }
}

/// Keeps the trigger tasks in step with the definitions in force until
/// `stop`, then waits for them to end.
async fn follow(
    mut triggers: Triggers,
    mut in_force: watch::Receiver<Arc<InForce>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = in_force.changed() => {
                if changed.is_err() {
                    // The reloader is gone (shutdown): nothing more changes.
                    stop.cancelled().await;
                    break;
                }
                let jobs = in_force.borrow_and_update().jobs.clone();
                crate::metrics::register_jobs(jobs.keys().map(String::as_str));
                triggers.apply(&jobs).await;
            }
        }
    }
    triggers.join().await;
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

impl<E: Executor> Serving<E> {
    /// The loop: a dispatch pass, then wait for the next reason to look
    /// again. Returns on `shutdown`.
    async fn serve(&mut self, mut dispatcher: Dispatcher, shutdown: &CancellationToken) {
        let mut store_failures: u32 = 0;
        let mut generation = self.in_force.borrow().generation;
        let mut watchdog = Watchdog::default();
        let mut replan_tick = tokio::time::interval(REPLAN_EVERY);
        replan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = self.in_force.borrow().clone();
            if now.generation != generation {
                // Between passes: a run launches under one version whole.
                generation = now.generation;
                dispatcher.reload(now.jobs.clone(), &now.config);
                self.jobs = now.jobs.clone();
            }
            // `after`-alone jobs whose upstreams' runs (settled since the
            // last pass, or before a restart) make their expression true.
            // And cron fires of jobs with `after` waiting for theirs.
            let deps = async {
                crate::triggers::after::pass(&self.store, &self.jobs, &self.clock).await?;
                crate::triggers::after::start_waiting(&self.store, &self.jobs, &self.clock).await
            };
            if let Err(e) = deps.await {
                tracing::error!(error = %crate::error_chain(&e), "evaluating dependencies failed");
            }
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
                Ok(()) = self.in_force.changed() => {}
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
            let decisions = finalizer::settle(&self.store, &self.clock, &self.jobs, &o).await;
            for decision in decisions {
                self.executor.record(&o.run_id, decision).await;
            }
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
