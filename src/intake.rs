//! Intake: every way work enters kedge ends here, as a durable work item and
//! its first pending run, written before anyone is told "accepted".
//!
//! - builtin queue messages (`kedge enqueue`), checked against the job's
//!   payload policy first: a bad payload is refused with the reason, never
//!   stored half-valid;
//! - manual triggers (`kedge trigger`);
//! - cron fires (from [`crate::triggers::scheduler`]), recorded together
//!   with their work item so a restart neither repeats nor drops one.

use chrono::{DateTime, Utc};

use crate::config::job::{PayloadFormat, PayloadPolicy};
use crate::config::Job;
use crate::lifecycle::{run_name, RunKey, TriggerKind};
use crate::store::{NewWorkItem, Store, StoreError};

/// Why a message was refused. None of these is worth retrying as is.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("payload is not UTF-8 text (byte {valid_up_to} is the first that is not)")]
    NotUtf8 { valid_up_to: usize },
    #[error("payload is not JSON, and job {job} takes JSON (payload.format: json): {source}")]
    NotJson {
        job: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("payload is {size} bytes, over job {job}'s payload.max_bytes of {max}")]
    TooLarge { job: String, size: usize, max: u64 },
    /// The store failed; the message was not accepted and may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of offering a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored as a new work item; its first run has this id.
    New { run_id: String },
    /// A message with this id was already stored: nothing written.
    Duplicate,
}

/// Checks `data` against the job's payload policy; returns it as text.
pub fn check_payload(
    job: &str,
    policy: &PayloadPolicy,
    data: &[u8],
) -> Result<String, IntakeError> {
    if data.len() as u64 > policy.max_bytes {
        return Err(IntakeError::TooLarge {
            job: job.to_string(),
            size: data.len(),
            max: policy.max_bytes,
        });
    }
    let text = std::str::from_utf8(data).map_err(|e| IntakeError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    if policy.format == PayloadFormat::Json {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|source| {
            IntakeError::NotJson {
                job: job.to_string(),
                source,
            }
        })?;
    }
    Ok(text.to_string())
}

/// Stores a builtin-queue message for `job`. `message_id` defaults to a
/// fresh id (every enqueue is a new message); give one to make retries of
/// the same enqueue idempotent.
pub async fn enqueue(
    store: &Store,
    job: &Job,
    data: &[u8],
    message_id: Option<String>,
    deadline: Option<DateTime<Utc>>,
) -> Result<Accepted, IntakeError> {
    let payload = check_payload(&job.name, &job.payload, data)?;
    let message_id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let now = Utc::now();
    let deadline = deadline.or_else(|| job.deadline_after(now));
    let item = NewWorkItem {
        job: job.name.clone(),
        source: "builtin".into(),
        run_id: run_name(&job.name, RunKey::Message(&message_id), 1),
        message_id,
        payload: Some(payload),
        deadline_ms: deadline.map(|d| d.timestamp_millis()),
        trigger: TriggerKind::Queue,
        scheduled_ms: now.timestamp_millis(),
    };
    store_item(store, &item).await
}

/// Starts a run of `job` now, outside its schedule.
pub async fn trigger(store: &Store, job: &Job) -> Result<Accepted, IntakeError> {
    let message_id = format!("manual-{}", uuid::Uuid::new_v4());
    let now = Utc::now();
    let item = NewWorkItem {
        job: job.name.clone(),
        source: "manual".into(),
        run_id: run_name(&job.name, RunKey::Message(&message_id), 1),
        message_id,
        payload: None,
        deadline_ms: job.deadline_after(now).map(|d| d.timestamp_millis()),
        trigger: TriggerKind::Manual,
        scheduled_ms: now.timestamp_millis(),
    };
    store_item(store, &item).await
}

async fn store_item(store: &Store, item: &NewWorkItem) -> Result<Accepted, IntakeError> {
    if store.insert_work_item(item).await? {
        Ok(Accepted::New {
            run_id: item.run_id.clone(),
        })
    } else {
        Ok(Accepted::Duplicate)
    }
}

/// The work item of a cron fire of `job` at `fire`. Its `deadline` comes
/// from the job's window counted from the fire ([`Job::deadline_after`]),
/// not from when kedge got to it, so a late catch-up keeps the real deadline.
pub fn cron_work_item(
    job: &str,
    fire: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> NewWorkItem {
    let fire_ms = fire.timestamp_millis();
    NewWorkItem {
        job: job.to_string(),
        source: "cron".into(),
        message_id: fire_ms.to_string(),
        run_id: run_name(job, RunKey::CronFire(fire.timestamp()), 1),
        payload: None,
        deadline_ms: deadline.map(|d| d.timestamp_millis()),
        trigger: TriggerKind::Cron,
        scheduled_ms: fire_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks_name_the_problem() {
        let json = PayloadPolicy {
            format: PayloadFormat::Json,
            max_bytes: 10,
        };
        assert_eq!(
            check_payload("j", &json, b"{\"a\":1}").unwrap(),
            "{\"a\":1}"
        );
        let e = check_payload("j", &json, b"{oops").unwrap_err().to_string();
        assert!(
            e.starts_with("payload is not JSON, and job j takes JSON"),
            "{e}"
        );
        let e = check_payload("j", &json, b"[1,2,3,4,5,6]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "payload is 13 bytes, over job j's payload.max_bytes of 10"
        );
        let text = PayloadPolicy {
            format: PayloadFormat::Text,
            max_bytes: 10,
        };
        assert_eq!(check_payload("j", &text, b"plain").unwrap(), "plain");
        let e = check_payload("j", &text, b"ab\xffc")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "payload is not UTF-8 text (byte 2 is the first that is not)"
        );
    }
}
