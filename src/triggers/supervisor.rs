//! Keeps the trigger tasks in step with the jobs in force: one intake task
//! per queue job, the cron scheduler (for every cron job) and the
//! dead-letter outbox.
//!
//! # Expected flow
//!
//! [`Triggers::start`] starts them for the jobs loaded at start. When the
//! definitions are reloaded, [`Triggers::apply`] compares each job with the
//! version its task runs and restarts only what changed: a changed or
//! removed queue job's intake task is stopped (it stores and settles what it
//! already claimed, exactly as at shutdown) before the new one starts, so a
//! message is never handled under two versions at once; the scheduler is
//! restarted when any cron job changed, and resumes after each job's last
//! recorded fire (fires due within [`scheduler::ON_TIME`] are still on
//! time, so a restart drops none); the outbox when any job changed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{scheduler, TriggerContext};
use crate::config::job::Trigger;
use crate::config::{Job, JobsByName};
use crate::finalizer::outbox;
use crate::health::Health;
use crate::intake;
use crate::sources::AnySource;

/// A running trigger task and the version of the definitions it runs.
struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
    version: String,
}

impl Task {
    async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "a trigger task ended abnormally");
        }
    }
}

/// The trigger tasks of a running daemon.
pub struct Triggers {
    ctx: TriggerContext,
    health: Health,
    /// This daemon's name among the sources' consumers.
    consumer: String,
    /// Intake tasks by job name.
    intake: HashMap<String, Task>,
    scheduler: Option<Task>,
    outbox: Option<Task>,
    /// Tasks that do not follow the jobs (the pruner).
    others: JoinSet<()>,
}

/// A job's version: its whole validated definition. (`Job` has no `Eq`:
/// `cron::Schedule` and the JobSpec's quantities do not compare; the Debug
/// form covers every field.)
fn version(job: &Job) -> String {
    format!("{job:?}")
}

impl Triggers {
    /// Starts every trigger task for `jobs`. Tasks stop on `ctx.shutdown`.
    pub async fn start(jobs: &JobsByName, ctx: TriggerContext, health: &Health) -> Triggers {
        let consumer = intake::consumer_name(&ctx.store).await;
        let mut triggers = Triggers {
            ctx,
            health: health.clone(),
            consumer,
            intake: HashMap::new(),
            scheduler: None,
            outbox: None,
            others: JoinSet::new(),
        };
        triggers.apply(jobs).await;
        triggers
    }

    /// Runs `task` beside the triggers until shutdown.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.others.spawn(task);
    }

    /// Brings the tasks in step with `jobs`: starts what is new, restarts
    /// what changed, stops what is gone.
    pub async fn apply(&mut self, jobs: &JobsByName) {
        self.apply_intake(jobs).await;
        let mut cron: Vec<&Arc<Job>> = jobs.values().filter(|j| j.cron().is_some()).collect();
        cron.sort_by(|a, b| a.name.cmp(&b.name));
        let cron_version: String = cron.iter().map(|j| version(j)).collect();
        if self.scheduler.as_ref().map(|t| &t.version) != Some(&cron_version) {
            if let Some(old) = self.scheduler.take() {
                old.stop().await;
            }
            if !cron.is_empty() {
                let cron: Vec<Arc<Job>> = cron.into_iter().cloned().collect();
                self.scheduler = Some(self.run(cron_version, |ctx| scheduler::run(cron, ctx)));
            }
        }
        let mut all: Vec<&Arc<Job>> = jobs.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let all_version: String = all.iter().map(|j| version(j)).collect();
        if self.outbox.as_ref().map(|t| &t.version) != Some(&all_version) {
            if let Some(old) = self.outbox.take() {
                old.stop().await;
            }
            let (jobs, consumer) = (jobs.clone(), self.consumer.clone());
            self.outbox = Some(self.run(all_version, |ctx| {
                outbox::forward(jobs, consumer, ctx.store, ctx.clock, ctx.shutdown)
            }));
        }
    }

    async fn apply_intake(&mut self, jobs: &JobsByName) {
        let gone: Vec<String> = self
            .intake
            .keys()
            .filter(|name| {
                jobs.get(*name)
                    .is_none_or(|j| version(j) != self.intake[*name].version)
            })
            .cloned()
            .collect();
        for name in gone {
            if let Some(task) = self.intake.remove(&name) {
                task.stop().await;
                self.health.unregister(&name);
            }
        }
        for job in jobs.values() {
            if self.intake.contains_key(&job.name) {
                continue;
            }
            let Trigger::Queue(q) = &job.trigger else {
                continue;
            };
            let Some(source) = AnySource::new(&q.source, &self.consumer) else {
                continue; // the builtin queue: the dispatcher reads the store
            };
            let (name, job, health) = (job.name.clone(), job.clone(), self.health.clone());
            let task = self.run(version(&job), |ctx| {
                intake::consume(source, job, health, ctx)
            });
            self.intake.insert(name, task);
        }
    }

    /// Spawns `task` with its own stop token (a child of the shutdown).
    fn run<F, Fut>(&self, version: String, task: F) -> Task
    where
        F: FnOnce(TriggerContext) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.ctx.shutdown.child_token();
        let ctx = TriggerContext {
            shutdown: stop.clone(),
            ..self.ctx.clone()
        };
        Task {
            stop,
            handle: tokio::spawn(task(ctx)),
            version,
        }
    }

    /// Waits for every task to end (after the shutdown was cancelled).
    pub async fn join(mut self) {
        for (_, task) in self.intake.drain() {
            task.stop().await;
        }
        for task in [self.scheduler.take(), self.outbox.take()]
            .into_iter()
            .flatten()
        {
            task.stop().await;
        }
        while self.others.join_next().await.is_some() {}
    }
}
