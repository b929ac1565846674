//! A launch as the dispatcher would make it, without claiming or writing
//! anything: what `kedge render` prints. The run is attempt 1 of one
//! message (or cron fire) at a given time; a job with `sizing:` is sized
//! as at launch ([`super::sizing::preview`]), from the store's history.

use chrono::{DateTime, Utc};

use crate::config::job::Trigger;
use crate::config::Job;
use crate::executor::render::{render, render_batch};
use crate::executor::Launch;
use crate::lifecycle::{attempt_run_name, RunState, TriggerKind};
use crate::store::{Run, Store, StoreError};

/// The message of a previewed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub trigger: TriggerKind,
    /// Names the run (a cron fire's is its time in Unix milliseconds).
    pub message_id: String,
    /// The payload; `None` for a cron fire.
    pub body: Option<String>,
}

/// The pending run `message` of `job` would get at `at`. Pure.
pub fn run(job: &Job, message: Message, at: DateTime<Utc>) -> Run {
    Run {
        run_id: attempt_run_name(&job.name, message.trigger, &message.message_id, 1),
        work_item_id: String::new(),
        job: job.name.clone(),
        attempt: 1,
        state: RunState::Pending,
        trigger: message.trigger,
        scheduled_ms: at.timestamp_millis(),
        started_ms: None,
        finished_ms: None,
        launches: 0,
        first_launch_ms: None,
        error: None,
        source: message.trigger.as_str().into(),
        message_id: message.message_id,
        payload: message.body,
        deadline_ms: job.deadline_after(at).map(|d| d.timestamp_millis()),
        attempt_base: 0,
        sizing: None,
        backfill_id: None,
    }
}

/// The launch of `message`'s run of `job` at `at`: sized (measuring the
/// work with the job's probe) when the job has `sizing:` and a window, a
/// one-member batch for a batching job.
pub async fn launch(
    store: &Store,
    job: &Job,
    message: Message,
    at: DateTime<Utc>,
) -> Result<Launch, StoreError> {
    let run = run(job, message, at);
    let deadline = run
        .deadline_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    let sized = match (&job.sizing, deadline) {
        (Some(cfg), Some(deadline)) => {
            let d = super::sizing::preview(store, job, cfg, at, deadline, None).await?;
            Some(super::sizing::apply(job, &d, at))
        }
        _ => None,
    };
    let job = sized.as_ref().unwrap_or(job);
    Ok(match &job.trigger {
        Trigger::Queue(q) if q.batch.is_some() => {
            render_batch(job, &run, vec![run.payload.clone()])
        }
        _ => render(job, &run),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_previews_as_its_first_attempt() {
        let job = crate::testing::queue_job("q", &[]);
        let at = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let message = Message {
            trigger: TriggerKind::Queue,
            message_id: "rendered".into(),
            body: Some("{\"a\":1}".into()),
        };
        let r = run(&job, message.clone(), at);
        assert_eq!(
            r.run_id,
            attempt_run_name("q", TriggerKind::Queue, "rendered", 1)
        );
        assert_eq!(
            (r.attempt, r.state, r.source.as_str()),
            (1, RunState::Pending, "queue")
        );
        assert_eq!(r.scheduled_ms, 1_700_000_000_000);
        assert_eq!(r.payload.as_deref(), Some("{\"a\":1}"));
        let store = crate::testing::store().await;
        let launch = launch(&store, &job, message, at).await.unwrap();
        assert_eq!(launch.run_id, r.run_id);
        // Nothing was written.
        assert!(store.list_runs(None, None, 10).await.unwrap().is_empty());
    }
}
