//! kedge turns events into Kubernetes Jobs: it watches queues and cron
//! calendars, creates one Job per message (or batch, or fire), tracks it to
//! completion, settles the message and cleans up.
//!
//! # Layout
//!
//! Work flows left to right; each stage has one module.
//!
//! ```text
//! triggers ──▶ intake ──▶ planner ──▶ executor ──▶ (tracking) ──▶ finalizer
//!   cron        durable     limits      local        outcomes       succeed / retry /
//!   sources     work items  (pure)      processes,   per run        dead-letter,
//!   builtin q.                          or k8s Jobs  (a watcher)    cleanup
//! ```
//!
//! - [`config`] — the daemon config and job definitions: parse, validate
//!   every field, report all problems as `path:line:column: field: message`.
//! - [`triggers`] — where work comes from: [`triggers::cron`] (Debian cron
//!   expressions, DST rules) and [`triggers::scheduler`] (one timer loop for
//!   every cron job, fires due together recorded in one transaction;
//!   overlap and catch-up policies).
//! - [`sources`] — queue sources behind [`sources::Source`] (claim,
//!   settle): `redis_list`, `redis_stream`, `rabbitmq`, `postgres`; their
//!   dead-letter targets and replays behind [`sources::Outbox`].
//! - [`intake`] — every message, fire and manual trigger becomes a work item
//!   and a pending run in the store before it is acknowledged;
//!   [`intake::consume`] drives a source (claim → store → settle,
//!   reconnect with backoff); bad messages become dead letters;
//!   [`intake::submit`] takes a message given by hand (to the job's broker,
//!   or the store).
//! - [`planner`] — pure: which due runs may launch under the limits (per
//!   job, pools, global), [`planner::sizing`], the parallelism that
//!   finishes a run inside its window, and [`planner::batching`], which
//!   waiting messages go into one batch run.
//! - [`probes`] — measure how much work a run has (`sizing.work`).
//! - [`sizer`] — the I/O around sizing: probe, history, decision applied to
//!   the JobSpec with its annotations, the at-risk signal, re-planning.
//! - [`executor`] — where runs run, behind the [`executor::Executor`] trait:
//!   [`executor::render`] builds the JobSpec with kedge's env,
//!   [`executor::local`] runs it as processes and tracks them to an outcome,
//!   [`executor::kubernetes`] creates Jobs (and payload ConfigMaps) through
//!   the API server, tracks them with one watcher, cleans them up, and
//!   elects the one launching replica on a Lease.
//! - [`finalizer`] — turns an outcome into succeeded / retry / dead letter;
//!   [`finalizer::replay`] returns dead letters to their queue.
//! - [`lifecycle`] — the run state machine, documented, and run names.
//! - [`store`] — SQLite or PostgreSQL through sqlx: work items, runs, cron
//!   fires, dead letters; migrations in `migrations/`.
//! - [`daemon`] — wires the stages together and runs until a signal; also
//!   publishes stored dead letters to their broker target (an outbox).
//! - [`health`] — source states and counters: `/healthz`, `/readyz`,
//!   `/metrics`.
//! - [`cli`] — the `kedge` command line (`main.rs` only calls it): parsing
//!   and printing, one file per command group; the work is the rooms' above.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dispatcher;
pub mod executor;
pub mod finalizer;
pub mod health;
pub mod intake;
pub mod lifecycle;
pub mod planner;
pub mod probes;
pub mod redact;
pub mod sources;
pub mod store;
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
