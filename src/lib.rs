//! kedge turns events into Kubernetes Jobs: it watches queues and cron
//! calendars, creates one Job per message (or batch, or fire), tracks it to
//! completion, settles the message and cleans up.
//!
//! # Layout
//!
//! Work flows left to right; each stage has one room.
//!
//! ```text
//! triggers ──▶ intake ──▶ dispatcher ──────────────▶ executor ──▶ (tracking) ──▶ finalizer
//!   cron        durable     due → claim → size →      local        outcomes       succeed / retry /
//!   sources     work items  launch, under the         processes,   per run        dead-letter,
//!   builtin q.              planner's limits (pure)   or k8s Jobs  (a watcher)    outbox
//! ```
//!
//! - [`config`] — the daemon config, job definitions and business
//!   calendars ([`config::calendar`], `calendars/*.yaml`; `trigger.after`
//!   expressions, their evaluation and cycle check in [`config::after`]; a trigger's
//!   calendar rules in [`config::rules`]): parse, validate every field,
//!   report all problems as `path:line:column: field: message`.
//!   Pure: no store, no probes' measuring ([`config::probe`] only parses and
//!   resolves `sizing.work`). [`config::schema`] derives the files' JSON
//!   Schemas from the same types (`kedge schema`, `deploy/schema/`).
//! - [`triggers`] — where work comes from: [`triggers::cron`] (Debian cron
//!   expressions, DST rules), [`triggers::rules`] (the one place a cron
//!   job's fire times are produced: calendars, business days, shifts and
//!   blackouts applied; the scheduler, `kedge plan` and backfills use it)
//!   [`triggers::after`] (jobs with `trigger.after` alone: a fire each
//!   time their expression over other jobs' runs becomes true, checked by
//!   the serving loop after settlements and at start),
//!   and [`triggers::scheduler`] (one timer loop for
//!   every cron job, fires due together recorded in one transaction;
//!   overlap and catch-up policies). Every trigger task gets a
//!   [`triggers::TriggerContext`]; [`triggers::supervisor`] keeps the tasks
//!   in step with the jobs in force (restarts what a reload changed).
//! - [`sources`] — queue sources behind [`sources::Source`] (claim,
//!   settle): `redis_list`, `redis_stream`, `rabbitmq`, `postgres`; their
//!   dead-letter targets and replays behind [`sources::Outbox`].
//! - [`intake`] — every message, fire and manual trigger becomes a work item
//!   and a pending run in the store before it is acknowledged;
//!   [`intake::consume`] drives a source (claim → store → settle,
//!   reconnect with backoff); bad messages become dead letters;
//!   [`intake::submit`] takes a message given by hand (to the job's broker,
//!   or the store).
//! - [`dispatcher`] — due → claim → size → launch, one pass at a time:
//!   [`dispatcher::batches`] forms batch runs, [`dispatcher::sizing`] sizes
//!   a run at launch (probe → planner → decision on the JobSpec),
//!   [`dispatcher::replan`] watches runs in flight (backpressure, raising
//!   parallelism when a run falls behind its deadline), and
//!   [`dispatcher::stuck`] fails runs whose pods never start
//!   (`limits.start_timeout`). *Where is
//!   parallelism decided?* The arithmetic in [`planner::sizing`], the I/O
//!   around it in `dispatcher::sizing` and `dispatcher::replan`;
//!   [`dispatcher::preview`] shows what a run would launch (`kedge plan`,
//!   `kedge render`).
//! - [`planner`] — pure: which due runs may launch under the limits (per
//!   job, pools, global, backpressure, load guards), in a fair order across jobs
//!   (priority, then turns), [`planner::sizing`], the
//!   parallelism that finishes a run inside its window,
//!   [`planner::batching`], which waiting messages go into one batch run,
//!   and [`planner::guards`], what a load guard's readings mean (hysteresis,
//!   throttle arithmetic, the conflict with a deadline).
//! - [`guards`] — load guards' I/O: one polling task per guard measures
//!   its probe (sql, http, command) with a timeout and keeps its state on
//!   a [`guards::Board`] the dispatcher reads (hold launches, throttle
//!   parallelism, re-plan runs in flight down); `/healthz` and `/metrics`
//!   show it.
//! - [`probes`] — measure how much work a run has (`sizing.work`): sql,
//!   http, command, queue length.
//! - [`executor`] — where runs run, behind the [`executor::Executor`] trait:
//!   [`mod@executor::render`] builds the JobSpec with kedge's env,
//!   [`executor::local`] runs it as processes and tracks them to an outcome,
//!   [`executor::kubernetes`] creates Jobs (and payload ConfigMaps) through
//!   the API server, tracks them with one watcher (and their pods and
//!   `FailedCreate` Events: why a run does not start), publishes kedge's
//!   decisions as Events on them (`executor::kubernetes::notes`), cleans
//!   them up, and elects the one launching replica on a Lease.
//! - [`finalizer`] — turns an outcome into succeeded / retry / dead letter;
//!   [`finalizer::outbox`] publishes stored dead letters to their broker,
//!   [`finalizer::replay`] returns dead letters to their queue.
//! - [`lifecycle`] — the work item and run state machines with every
//!   transition and who makes it, cron fire outcomes, run names and their
//!   length limits.
//! - [`operator`] — operator controls, for the CLI now and the HTTP API
//!   later: pause/resume, hold/release, ice/unice (a job's operator state,
//!   checked by the scheduler and the planner), backfill, rerun; each
//!   audited in the transaction of its change; [`operator::as_upstream`]
//!   says how a job's state looks to its dependents.
//! - [`store`] — SQLite or PostgreSQL through sqlx, one file per table:
//!   work items, runs, cron fires, batches, dead letters, job operator
//!   states, the audit log, backfills; migrations in `migrations/`.
//! - [`retention`] — the store does not grow for ever: finished history
//!   (work items, runs, cron fires, closed dead letters) and local run
//!   folders are deleted after `retention.history`, payloads of succeeded
//!   work cleared after `retention.payloads`, in small batches; the daemon
//!   prunes every `retention.interval`, `kedge prune` by hand.
//! - [`telemetry`] — optional OpenTelemetry traces (`telemetry.otlp`):
//!   intake, launch and run spans, one trace per message.
//! - [`clock`] — where every stage reads the time: the system clock, or one
//!   driven by tokio's paused time in tests.
//! - [`redact`] — passwords out of URLs, for logs and errors.
//! - [`reload`] — hot reload: the running daemon re-reads job and config
//!   files on change (inotify), `SIGHUP` or `POST /-/reload`; a broken file
//!   keeps its jobs' last good version ([`config::reload`]), the rest
//!   applies between dispatch passes.
//! - [`daemon`] — wires the stages together: recover, start the triggers,
//!   serve (one loop for dispatching and settling), drain.
//! - [`health`] — source states and counters: `/healthz`, `/readyz`,
//!   `/metrics`, and the loop reading the store's gauges for it.
//! - [`metrics`] — the Prometheus registry (prometheus-client): every
//!   family kedge exports and the small recording functions each room
//!   calls where its event happens.
//! - [`import`] — other schedulers' definitions into kedge job files:
//!   [`import::cronjob`] (Kubernetes CronJob), [`import::keda`] (KEDA
//!   ScaledJob), [`import::autosys`] (AutoSys JIL command jobs); pure, each field mapped or reported with its reason
//!   (`kedge import`).
//! - [`cli`] — the `kedge` command line (`main.rs` only calls it): parsing
//!   and printing, one file per command group; the work is the rooms' above.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dispatcher;
pub mod executor;
pub mod finalizer;
pub mod guards;
pub mod health;
pub mod import;
pub mod intake;
pub mod lifecycle;
pub mod metrics;
pub mod operator;
pub mod planner;
pub mod probes;
pub mod redact;
pub mod reload;
pub mod retention;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod triggers;

#[cfg(test)]
mod testing;

/// An error and its causes, joined with ": " (for logs).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
