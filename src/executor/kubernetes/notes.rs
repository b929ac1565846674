//! kedge's decisions as `events.k8s.io/v1` Events, where `kubectl describe
//! job` and cluster event pipelines show them.
//!
//! | reason | type | on | when |
//! |---|---|---|---|
//! | `Launched` | Normal | the Job | its create was confirmed (attempt, completions, parallelism) |
//! | `Sized` | Normal | the Job | sizing chose its parallelism (the reason) |
//! | `AtRisk` | Warning | the Job | even the maximum parallelism may miss the deadline |
//! | `Retrying` | Warning | the Job | the attempt failed; the next one and when |
//! | `DeadLettered` | Warning | the Job | the last attempt failed; the message is dead-lettered |
//! | `DeadlineMissed` | Warning | the Job | the run finished after its deadline |
//! | `LeaderElection` | Normal | the Lease | this replica became the leader |
//!
//! Publishing goes through kube-runtime's `Recorder`, which makes a repeat
//! of the same reason on the same object within minutes a series on one
//! Event (`series.count`) instead of a new object. Events are best effort
//! and never hold up a launch: they are queued (at most [`QUEUE`]; more are
//! dropped and counted in the log) and sent by one task with its own rate
//! limit, half the executor's `api_qps`, each request bounded by
//! `request_timeout`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{Quota, RateLimiter};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::KubernetesConfig;
use crate::executor::Decision;

/// Events waiting to be sent; beyond this, new ones are dropped.
pub const QUEUE: usize = 1024;
/// `NoteLengthLimit`: the API refuses a longer note.
const NOTE_LIMIT: usize = 1024;

/// The queue of Events to publish. Cheap to clone.
#[derive(Clone)]
pub struct Notes {
    tx: mpsc::Sender<(ObjectReference, Event)>,
}

impl Notes {
    /// Starts the sending task; it stops on `closed`.
    pub fn start(
        client: Client,
        identity: &str,
        cfg: &KubernetesConfig,
        closed: CancellationToken,
    ) -> Notes {
        let (tx, rx) = mpsc::channel(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "kedge".into(),
                instance: Some(identity.to_string()),
            },
        );
        let half = |n: u32| NonZeroU32::new((n / 2).max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(half(cfg.api_qps)).allow_burst(half(cfg.api_burst));
        tokio::spawn(send(recorder, rx, quota, cfg.request_timeout, closed));
        Notes { tx }
    }

    /// Queues `event` about `regarding`. Never waits.
    pub fn publish(&self, regarding: ObjectReference, event: Event) {
        if let Err(mpsc::error::TrySendError::Full((r, e))) = self.tx.try_send((regarding, event)) {
            tracing::debug!(object = ?r.name, reason = %e.reason, "event queue full; event dropped");
        }
    }
}

async fn send(
    recorder: Recorder,
    mut rx: mpsc::Receiver<(ObjectReference, Event)>,
    quota: Quota,
    timeout: Duration,
    closed: CancellationToken,
) {
    let limiter = RateLimiter::direct(quota);
    let mut failures: u64 = 0;
    loop {
        let (regarding, event) = tokio::select! {
            _ = closed.cancelled() => return,
            next = rx.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        limiter.until_ready().await;
        let sent = tokio::time::timeout(timeout, recorder.publish(&event, &regarding)).await;
        let error = match sent {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => crate::error_chain(&e),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        failures += 1;
        // The first failure and then every hundredth: events are best
        // effort, the log must not drown in them.
        if failures % 100 == 1 {
            tracing::warn!(object = ?regarding.name, reason = %event.reason, %error, failures,
                "cannot record a Kubernetes Event");
        }
    }
}

/// A reference to Job `name` (uid when known: `kubectl describe` matches on it).
pub fn job_ref(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        uid,
        ..Default::default()
    }
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note)),
        action: action.into(),
        secondary: None,
    }
}

/// The note cut to the API's limit, on a character boundary.
fn truncate(mut note: String) -> String {
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// `Launched`: what was created.
pub fn launched(attempt: i64, completions: Option<i32>, parallelism: Option<i32>) -> Event {
    let n = |v: Option<i32>| v.unwrap_or(1);
    event(
        EventType::Normal,
        "Launched",
        "Launch",
        format!(
            "attempt {attempt}: {} completion(s), parallelism {}",
            n(completions),
            n(parallelism)
        ),
    )
}

/// `Sized`, or `AtRisk` when even the maximum parallelism may miss the deadline.
pub fn sized(reason: String, at_risk: bool) -> Event {
    if at_risk {
        event(EventType::Warning, "AtRisk", "Size", reason)
    } else {
        event(EventType::Normal, "Sized", "Size", reason)
    }
}

/// The Event for a decision about a finished run.
pub fn decided(decision: &Decision) -> Event {
    match decision {
        Decision::Retrying {
            error,
            next_run,
            delay_ms,
        } => event(
            EventType::Warning,
            "Retrying",
            "Retry",
            format!(
                "attempt failed ({error}); {next_run} launches in {}",
                humantime::format_duration(Duration::from_millis((*delay_ms).max(0) as u64))
            ),
        ),
        Decision::DeadLettered { error, reason } => event(
            EventType::Warning,
            "DeadLettered",
            "DeadLetter",
            format!("{reason}: {error}"),
        ),
        Decision::DeadlineMissed { late_ms } => event(
            EventType::Warning,
            "DeadlineMissed",
            "Finish",
            format!(
                "finished {} after its deadline",
                humantime::format_duration(Duration::from_secs((*late_ms).max(0) as u64 / 1000))
            ),
        ),
    }
}

/// Records `LeaderElection` on Lease `lease` ("`identity` became leader",
/// as client-go's leader election says it). Best effort: a failure is
/// logged.
pub async fn announce_leader(
    client: Client,
    namespace: String,
    lease: String,
    identity: String,
    timeout: Duration,
) {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::{Api, Resource};
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kedge".into(),
            instance: Some(identity.clone()),
        },
    );
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let event = event(
        EventType::Normal,
        "LeaderElection",
        "Lead",
        format!("{identity} became leader"),
    );
    let published = tokio::time::timeout(timeout, async {
        let l = leases.get(&lease).await?;
        recorder.publish(&event, &l.object_ref(&())).await
    })
    .await;
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%lease, error = %crate::error_chain(&e), "cannot record the LeaderElection Event")
        }
        Err(_) => {
            tracing::warn!(%lease, ?timeout, "cannot record the LeaderElection Event: no answer")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_read_as_events_an_operator_understands() {
        let e = decided(&Decision::Retrying {
            error: "BackoffLimitExceeded: boom".into(),
            next_run: "orders-2".into(),
            delay_ms: 90_000,
        });
        assert_eq!(
            (e.reason.as_str(), e.type_),
            ("Retrying", EventType::Warning)
        );
        assert_eq!(
            e.note.as_deref(),
            Some("attempt failed (BackoffLimitExceeded: boom); orders-2 launches in 1m 30s")
        );
        let e = decided(&Decision::DeadlineMissed { late_ms: 125_400 });
        assert_eq!(e.note.as_deref(), Some("finished 2m 5s after its deadline"));
        assert_eq!(sized("x".into(), true).reason, "AtRisk");
        assert_eq!(
            launched(2, Some(8), Some(4)).note.as_deref(),
            Some("attempt 2: 8 completion(s), parallelism 4")
        );
    }

    #[test]
    fn a_long_note_is_cut_to_the_api_limit_on_a_character_boundary() {
        let note = truncate("é".repeat(1000));
        assert!(note.len() <= NOTE_LIMIT);
        assert!(note.ends_with("..."));
    }
}
