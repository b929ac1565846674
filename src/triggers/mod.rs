//! Triggers: where work comes from. Cron calendars live here; the builtin
//! queue is fed through [`crate::intake`] by `kedge enqueue`.

pub mod cron;
pub mod scheduler;
