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
    /// The letter's payload says it is base64 (`base64:…`, how intake
    /// keeps a body that is not text) but does not decode: nothing was
    /// replayed, rather than the encoded text in place of the message.
    #[error("dead letter {id}: its payload starts with \"base64:\" but is not base64")]
    BadPayload {
        id: String,
        #[source]
        cause: base64::DecodeError,
    },
    /// The broker did not take the message back, and the store then failed
    /// to mark its work item dead again (retried): the letter stays open
    /// and can be replayed again, its work item stays `replayed` until then.
    #[error("cannot return {id} to {to} ({}); and cannot mark work item {work_item_id} dead again, it stays replayed until {id} is replayed again", crate::error_chain(cause.as_ref()))]
    PublishNotUndone {
        id: String,
        to: String,
        work_item_id: String,
        cause: Box<SourceError>,
        #[source]
        store: Box<StoreError>,
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
    // Checked before anything changes: a letter whose payload cannot be
    // read back stays open, its work item dead.
    let payload = payload_bytes(&d.id, d.payload.as_deref())?;
    if let Some(mut outbox) = broker(jobs, d) {
        into_source(store, &mut outbox, d, &payload).await?;
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

/// How intake marks a stored payload that is base64 of the message's bytes
/// (a body that was not text).
pub const BASE64_PREFIX: &str = "base64:";

/// The message letter `id`'s stored payload stands for: text as is, and
/// `base64:…` (bytes that were not text, kept so by intake) decoded. A
/// `base64:` payload that does not decode is an error naming the letter,
/// never replayed as its encoded text.
pub fn payload_bytes(id: &str, payload: Option<&str>) -> Result<Vec<u8>, ReplayError> {
    use base64::Engine;
    let Some(p) = payload else {
        return Ok(Vec::new());
    };
    match p.strip_prefix(BASE64_PREFIX) {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|cause| ReplayError::BadPayload {
                id: id.to_string(),
                cause,
            }),
        None => Ok(p.as_bytes().to_vec()),
    }
}

/// How often, and how far apart at first, undoing a failed replay's first
/// step is tried before giving up (0.1 + 0.2 + 0.4 + 0.8 s).
const UNDO_TRIES: u32 = 5;
const UNDO_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Publishes `d`'s message (`payload`) back into its broker source (see
/// the module's *Expected flow*).
async fn into_source(
    store: &Store,
    outbox: &mut AnySource,
    d: &DeadLetter,
    payload: &[u8],
) -> Result<(), ReplayError> {
    let Some(letter) = store
        .begin_source_replay(&d.id, store.clock().now_ms())
        .await?
    else {
        return Err(ReplayError::ReplayedMeanwhile(d.id.clone()));
    };
    if let Err(cause) = outbox.replay(&letter.message_id, payload).await {
        return Err(match undo_begin(store, &letter.work_item_id).await {
            Ok(()) => ReplayError::Publish {
                id: d.id.clone(),
                to: d.source.clone(),
                cause,
            },
            Err(store) => ReplayError::PublishNotUndone {
                id: d.id.clone(),
                to: d.source.clone(),
                work_item_id: letter.work_item_id.clone(),
                cause: Box::new(cause),
                store: Box::new(store),
            },
        });
    }
    store
        .finish_source_replay(&d.id, store.clock().now_ms())
        .await?;
    Ok(())
}

/// Marks `work_item_id` dead again after its replay's publish failed
/// ([`Store::abort_source_replay`]), retrying the store a few times: left
/// `replayed`, the item would wait for a delivery that never comes.
async fn undo_begin(store: &Store, work_item_id: &str) -> Result<(), StoreError> {
    let mut pause = UNDO_FIRST_PAUSE;
    let mut tries = 1;
    loop {
        match store
            .abort_source_replay(work_item_id, store.clock().now_ms())
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if tries >= UNDO_TRIES => return Err(e),
            Err(e) => {
                tracing::warn!(work_item = %work_item_id, error = %crate::error_chain(&e),
                    "cannot mark a work item dead again after its replay failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::{offer, Offered};
    use crate::sources::{Delivery, Receipt};

    #[test]
    fn stored_payloads_decode_to_the_message() {
        let bytes = |p| payload_bytes("d-1", p).unwrap();
        assert_eq!(bytes(None), b"");
        assert_eq!(bytes(Some("{\"a\":1}")), b"{\"a\":1}");
        assert_eq!(bytes(Some("base64://4=")), b"\xff\xfe");
    }

    #[test]
    fn a_payload_marked_base64_that_does_not_decode_is_an_error_naming_the_letter() {
        let e = payload_bytes("d-7", Some("base64:not base64!")).unwrap_err();
        assert!(
            matches!(&e, ReplayError::BadPayload { id, .. } if id == "d-7"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "dead letter d-7: its payload starts with \"base64:\" but is not base64"
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

    #[tokio::test]
    async fn a_letter_whose_base64_payload_is_corrupt_is_not_replayed() {
        let (store, job, letter) = one_letter().await;
        sqlx::query("UPDATE dead_letters SET payload = $1 WHERE id = $2")
            .bind("base64:%%% not base64")
            .bind(&letter.id)
            .execute(store.pool_for_tests())
            .await
            .unwrap();
        let letter = choose(&store, None, std::slice::from_ref(&letter.id), false)
            .await
            .unwrap()
            .remove(0);
        let e = replay(&store, &[job], &letter).await.unwrap_err();
        assert!(
            matches!(&e, ReplayError::BadPayload { id, .. } if *id == letter.id),
            "{e:?}"
        );
        // Nothing changed: the letter is still open and no run was queued.
        assert_eq!(store.dead_letters(None, false, 10).await.unwrap().len(), 1);
        assert!(store
            .list_runs(Some("q"), None, 10)
            .await
            .unwrap()
            .is_empty());
    }
}
