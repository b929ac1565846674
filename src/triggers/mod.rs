//! Triggers: where work comes from. Cron calendars live here ([`cron`],
//! [`rules`] — business calendars, shifts and blackouts — and
//! [`scheduler`]); queue sources are in [`crate::sources`], driven by
//! [`crate::intake::consume`]; the builtin queue is fed through
//! [`crate::intake`] by `kedge enqueue`. Every trigger task gets a
//! [`TriggerContext`].

pub mod after;
pub mod cron;
pub mod rules;
pub mod scheduler;
pub mod supervisor;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::Store;

/// What a trigger task (the cron scheduler, a queue's intake) gets from the
/// daemon.
#[derive(Clone)]
pub struct TriggerContext {
    pub store: Store,
    /// Wakes the dispatcher after work is stored.
    pub wake: Arc<Notify>,
    /// Asks the daemon to cancel a running run (`overlap: replace`).
    pub cancel: mpsc::UnboundedSender<String>,
    /// Stops the trigger.
    pub shutdown: CancellationToken,
    /// Where the trigger reads the time.
    pub clock: Clock,
}
