//! Replaying dead letters (`kedge dlq replay`): a dead letter goes back to
//! its queue with a fresh retry budget.
//!
//! # Expected flow
//! A broker message goes back into its broker when its job still reads
//! from the source it came from, and the daemon claims it again like any
//! delivery: the work item is marked `replayed` first
//! ([`Store::begin_source_replay`]), so that delivery revives it instead of
//! being dropped as a duplicate; the letter is closed once the broker took
//! the message. Everything else (builtin-queue messages, cron fires,
//! manual triggers, a broker message whose job moved to another source) is
//! queued again in the store as a new pending run, the next attempt.
//!
//! # Guarantees
//! A failed publish leaves the letter open and its work item dead
//! ([`Store::abort_source_replay`]): it can be replayed again.

use crate::config::job::Trigger;
use crate::config::Job;
use crate::lifecycle::{attempt_run_name, TriggerKind};
use crate::sources::{AnySource, Outbox, SourceError};
use crate::store::{DeadLetter, Store, StoreError};

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A letter named for replay is not open (unknown, or replayed
    /// before): nothing was replayed. Bad input.
    #[error("no open dead letter with id {0}")]
    NoSuchLetter(String),
    /// Another replay took the letter between listing and replaying it.
    #[error("dead letter {0} was replayed meanwhile")]
    ReplayedMeanwhile(String),
    /// The broker did not take the message back; the letter stays open
    /// and may be replayed again later.
    #[error("cannot return {id} to {to}")]
    Publish {
        id: String,
        to: String,
        #[source]
        cause: SourceError,
    },
    /// The store failed; what was replayed before stays replayed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a letter was replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Published back into its broker source.
    IntoSource,
    /// Queued again in the store as this new pending run.
    AsRun(String),
    /// Closed meanwhile by another replay: nothing done.
    Closed,
}

/// The open letters to replay: with `all`, every one (of `job`, if given);
/// else the ones `ids` names (of `job`, if given), each of which must be
/// open.
pub async fn choose(
    store: &Store,
    job: Option<&str>,
    ids: &[String],
    all: bool,
) -> Result<Vec<DeadLetter>, ReplayError> {
    let letters = store.dead_letters(job, false, i64::MAX).await?;
    if all {
        return Ok(letters);
    }
    ids.iter()
        .map(|id| {
            letters
                .iter()
                .find(|d| &d.id == id)
                .cloned()
                .ok_or_else(|| ReplayError::NoSuchLetter(id.clone()))
        })
        .collect()
}

/// Replays one letter; `jobs` are the loaded job definitions (they say
/// which source each job reads now).
pub async fn replay(store: &Store, jobs: &[Job], d: &DeadLetter) -> Result<Replayed, ReplayError> {
    if let Some(mut outbox) = broker(jobs, d) {
        into_source(store, &mut outbox, d).await?;
        return Ok(Replayed::IntoSource);
    }
    let next = store.last_attempt(&d.work_item_id).await? + 1;
    let run_id = attempt_run_name(&d.job, trigger_of(d), &d.message_id, next);
    let now = store.clock().now_ms();
    Ok(
        if store.replay_dead_letter(&d.id, &run_id, next, now).await? {
            Replayed::AsRun(run_id)
        } else {
            Replayed::Closed
        },
    )
}

/// The broker `d` goes back into: its job's source, when the job still
/// reads from the one the message came from.
fn broker(jobs: &[Job], d: &DeadLetter) -> Option<AnySource> {
    let job = jobs.iter().find(|j| j.name == d.job)?;
    match &job.trigger {
        Trigger::Queue(q) if q.source.name() == d.source => {
            AnySource::new(&q.source, "kedge-dlq-replay")
        }
        _ => None,
    }
}

/// The trigger of the replayed run: a cron fire stays a cron run; any
/// message (and a manual trigger) is queued.
fn trigger_of(d: &DeadLetter) -> TriggerKind {
    if d.source == "cron" {
        TriggerKind::Cron
    } else {
        TriggerKind::Queue
    }
}

/// The message a stored payload stands for: text as is, and bytes that
/// were not text (stored `base64:…` by intake) decoded. Text that only
/// looks like base64 is kept as it is.
pub fn payload_bytes(payload: Option<&str>) -> Vec<u8> {
    use base64::Engine;
    let Some(p) = payload else {
        return Vec::new();
    };
    p.strip_prefix("base64:")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| p.as_bytes().to_vec())
}

/// Publishes `d`'s message back into its broker source (see the module's
/// *Expected flow*).
async fn into_source(
    store: &Store,
    outbox: &mut AnySource,
    d: &DeadLetter,
) -> Result<(), ReplayError> {
    let Some(letter) = store
        .begin_source_replay(&d.id, store.clock().now_ms())
        .await?
    else {
        return Err(ReplayError::ReplayedMeanwhile(d.id.clone()));
    };
    let payload = payload_bytes(letter.payload.as_deref());
    if let Err(cause) = outbox.replay(&letter.message_id, &payload).await {
        // Best effort: if this write fails too, the item stays `replayed`
        // and the open letter can still be replayed again.
        let _ = store
            .abort_source_replay(&letter.work_item_id, store.clock().now_ms())
            .await;
        return Err(ReplayError::Publish {
            id: d.id.clone(),
            to: d.source.clone(),
            cause,
        });
    }
    store
        .finish_source_replay(&d.id, store.clock().now_ms())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::{offer, Offered};
    use crate::sources::{Delivery, Receipt};

    #[test]
    fn stored_payloads_decode_to_the_message() {
        assert_eq!(payload_bytes(None), b"");
        assert_eq!(payload_bytes(Some("{\"a\":1}")), b"{\"a\":1}");
        assert_eq!(payload_bytes(Some("base64://4=")), b"\xff\xfe");
        assert_eq!(
            payload_bytes(Some("base64:not base64!")),
            b"base64:not base64!"
        );
    }

    /// A store holding one dead letter of builtin-queue job `q` (a message
    /// that is not JSON, dead-lettered at intake).
    async fn one_letter() -> (Store, Job, DeadLetter) {
        let store = crate::testing::store().await;
        let job = crate::testing::queue_job("q", &[]);
        let Trigger::Queue(queue) = &job.trigger else {
            panic!("a queue job")
        };
        let d = Delivery {
            message_id: "m1".into(),
            body: b"not json".to_vec(),
            headers: Vec::new(),
            redelivered: false,
            receipt: Receipt::RedisList {
                processing: "p".into(),
            },
        };
        let offered = offer(&store, &job, queue, "builtin", &d, store.clock().now())
            .await
            .unwrap();
        assert_eq!(offered, Offered::Rejected("not_json".into()));
        let letter = store.dead_letters(None, false, 10).await.unwrap().remove(0);
        (store, job, letter)
    }

    #[tokio::test]
    async fn named_letters_must_be_open() {
        let (store, _, letter) = one_letter().await;
        let chosen = choose(&store, None, std::slice::from_ref(&letter.id), false)
            .await
            .unwrap();
        assert_eq!(chosen.len(), 1);
        assert_eq!(choose(&store, Some("q"), &[], true).await.unwrap().len(), 1);
        assert!(choose(&store, Some("other"), &[], true)
            .await
            .unwrap()
            .is_empty());
        let missing = choose(&store, None, &["nope".into()], false)
            .await
            .unwrap_err();
        assert_eq!(missing.to_string(), "no open dead letter with id nope");
    }

    #[tokio::test]
    async fn a_store_message_is_queued_again_once() {
        let (store, job, letter) = one_letter().await;
        let jobs = [job];
        let Replayed::AsRun(run_id) = replay(&store, &jobs, &letter).await.unwrap() else {
            panic!("not queued as a run")
        };
        assert_eq!(run_id, attempt_run_name("q", TriggerKind::Queue, "m1", 1));
        let runs = store.list_runs(Some("q"), None, 10).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].run_id, run_id);
        assert!(store
            .dead_letters(None, false, 10)
            .await
            .unwrap()
            .is_empty());
        // A second replay of the same letter finds it closed.
        assert_eq!(
            replay(&store, &jobs, &letter).await.unwrap(),
            Replayed::Closed
        );
    }
}
