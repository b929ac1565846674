//! One conformance suite that every queue source passes, against the real
//! Redis, RabbitMQ and PostgreSQL servers (River's driver test, Vector's
//! source compliance harness). Each broker file implements [`Harness`]
//! (a fresh queue of its own, publish, read the dead-letter target,
//! clean up) and instantiates [`suite!`].
//!
//! In CI an unreachable server fails the test; on a developer machine it
//! is skipped with a loud message (see [`unreachable`]).

#![allow(async_fn_in_trait)] // test-only trait, never used as `dyn` or across crates

use std::time::{Duration, Instant};

use kedge::config::queue::DeadLetterTarget;
use kedge::sources::{Delivery, Letter, Outbox, Source};

#[path = "../support/mod.rs"]
mod support;

mod postgres;
mod rabbitmq;
mod redis_list;
mod redis_stream;

/// One broker queue, private to one test.
pub trait Harness: Sized {
    type S: Source + Outbox;
    /// A fresh queue (unique names) on the broker; `None` when the broker
    /// is unreachable outside CI (already reported by [`unreachable`]).
    async fn new() -> Option<Self>;
    /// A new consumer of the queue, as a new daemon would be.
    fn source(&self, consumer: &str) -> Self::S;
    /// Publishes a message the way a producer would; `id` where the broker
    /// carries one (AMQP `message_id`, the Postgres id column).
    async fn publish(&self, body: &[u8], id: Option<&str>);
    /// Whether the broker carries message ids (else the id is the body's hash).
    fn has_ids(&self) -> bool;
    /// Whether a replayed message keeps the id given to `replay` (a Redis
    /// stream entry gets a new one).
    fn replay_keeps_id(&self) -> bool {
        self.has_ids()
    }
    /// Whether the source can tell a redelivery (a Postgres row cannot).
    fn marks_redelivered(&self) -> bool {
        true
    }
    /// The dead-letter target of this queue.
    fn dead_letter_target(&self) -> DeadLetterTarget;
    /// Every letter published to the dead-letter target so far.
    async fn dead_letters(&self) -> Vec<Letter>;
    /// Makes a consumer that died without settling look dead to the
    /// broker (for example by waiting out a lease); a no-op where the
    /// broker notices by itself (a closed connection).
    async fn consumer_died(&self) {}
    /// Deletes everything the test created.
    async fn cleanup(&self);
}

/// Fails under `CI`, else prints a loud skip message; returns `None`.
pub fn unreachable<T>(what: &str, e: impl std::fmt::Display) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is unreachable and CI is set: {e}");
    }
    eprintln!("\n!!! SKIPPING: {what} is unreachable ({e}); start it or run under CI to enforce\n");
    None
}

/// Claims until `n` deliveries arrived or `limit` passed.
pub async fn claim_n<S: Source>(s: &mut S, n: usize, limit: Duration) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < limit {
        let more = s
            .claim(n - got.len(), Duration::from_millis(200))
            .await
            .expect("claim");
        got.extend(more);
    }
    got
}

pub fn letter(job: &str, message_id: &str, payload: &str) -> Letter {
    Letter {
        job: job.into(),
        message_id: message_id.into(),
        payload: Some(payload.into()),
        reason: "failed".into(),
        attempts: 3,
        last_error: Some("exit code 1".into()),
        dead_at: "2026-11-23T10:00:00Z".into(),
    }
}

// ----- the suite ------------------------------------------------------------

/// Consumer `c1`, connected, with three messages (`{"n":0..2}`, ids
/// `m-0..2`) published after it connected.
async fn connected_with_three<H: Harness>(h: &H) -> H::S {
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    for i in 0..3 {
        h.publish(format!("{{\"n\":{i}}}").as_bytes(), Some(&format!("m-{i}")))
            .await;
    }
    s
}

/// Claimed messages arrive once, in full, and are gone after settle.
pub async fn claim_then_settle<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let mut s = connected_with_three(&h).await;
    let got = claim_n(&mut s, 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let mut bodies: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.body.clone()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
    for d in &got {
        assert!(!d.redelivered, "a first delivery is not redelivered: {d:?}");
        if h.has_ids() {
            assert!(d.message_id.starts_with("m-") || !d.message_id.is_empty());
        } else {
            assert_eq!(d.message_id, kedge::sources::body_id(&d.body));
        }
    }
    s.settle(&got).await.expect("settle");
    drop(s);
    h.consumer_died().await;
    let mut again = h.source("c2");
    again.connect().await.expect("connect");
    let rest = again
        .claim(10, Duration::from_millis(500))
        .await
        .expect("claim");
    assert!(rest.is_empty(), "settled messages came back: {rest:?}");
    h.cleanup().await;
}

/// A message claimed by a consumer that died before settling is handed to
/// the next consumer, with the same message id.
pub async fn unsettled_is_redelivered<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let mut a = h.source("dead-consumer");
    a.connect().await.expect("connect");
    h.publish(b"{\"x\":1}", Some("only")).await;
    let first = claim_n(&mut a, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    drop(a);
    h.consumer_died().await;
    let mut b = h.source("next-consumer");
    b.connect().await.expect("connect");
    let again = claim_n(&mut b, 1, Duration::from_secs(15)).await;
    assert_eq!(again.len(), 1, "the unsettled message was not redelivered");
    assert_eq!(again[0].message_id, first[0].message_id);
    assert_eq!(again[0].body, first[0].body);
    if h.marks_redelivered() {
        assert!(again[0].redelivered, "{:?}", again[0]);
    }
    b.settle(&again).await.expect("settle");
    h.cleanup().await;
}

/// An empty queue makes claim wait (no busy loop) and return nothing.
pub async fn empty_claim_waits<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    let start = Instant::now();
    let got = s.claim(5, Duration::from_millis(400)).await.expect("claim");
    let took = start.elapsed();
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "claim on an empty queue took {took:?}"
    );
    // A message published while waiting is claimed at once.
    let producer = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.publish(b"{}", Some("late")).await;
    };
    let start = Instant::now();
    let (got, ()) = tokio::join!(s.claim(1, Duration::from_secs(5)), producer);
    let got = got.expect("claim");
    assert_eq!(got.len(), 1, "a message arriving mid-wait was not claimed");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    s.settle(&got).await.expect("settle");
    h.cleanup().await;
}

/// Dead letters reach the target with their reason, attempts and error.
pub async fn dead_letters_reach_the_target<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let mut s = h.source("c1");
    let l = letter("orders", "m-7", "{\"order\":7}");
    s.dead_letter(&h.dead_letter_target(), &l)
        .await
        .expect("dead letter");
    let got = h.dead_letters().await;
    assert_eq!(got, vec![l]);
    h.cleanup().await;
}

/// A replayed message comes back through the source.
pub async fn replay_returns_to_the_source<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    s.replay("r-1", b"{\"again\":true}").await.expect("replay");
    let got = claim_n(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"{\"again\":true}");
    if h.replay_keeps_id() {
        assert_eq!(got[0].message_id, "r-1");
    }
    s.settle(&got).await.expect("settle");
    h.cleanup().await;
}

/// Many messages in, all claimed once across two consumers.
pub async fn two_consumers_share_without_duplicates<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let n = 200;
    for i in 0..n {
        h.publish(
            format!("{{\"i\":{i}}}").as_bytes(),
            Some(&format!("id-{i}")),
        )
        .await;
    }
    let mut a = h.source("a");
    let mut b = h.source("b");
    a.connect().await.expect("connect");
    b.connect().await.expect("connect");
    let mut seen = std::collections::HashSet::new();
    let start = Instant::now();
    while seen.len() < n && start.elapsed() < Duration::from_secs(30) {
        for s in [&mut a, &mut b] {
            let got = s
                .claim(16, Duration::from_millis(100))
                .await
                .expect("claim");
            for d in &got {
                assert!(seen.insert(d.body.clone()), "claimed twice: {d:?}");
            }
            s.settle(&got).await.expect("settle");
        }
    }
    assert_eq!(seen.len(), n);
    h.cleanup().await;
}

/// Asks `s` for its backlog until it is `n` (at most 10 s); the last answer.
async fn backlog_becomes<S: Source>(s: &mut S, n: u64) -> Option<u64> {
    let start = Instant::now();
    loop {
        let seen = s.backlog().await.expect("backlog");
        if seen == Some(n) || start.elapsed() > Duration::from_secs(10) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backlog counts the messages waiting in the broker, and none once
/// they are claimed and settled (`kedge_source_backlog`).
pub async fn backlog_counts_waiting_messages<H: Harness>() {
    let Some(h) = H::new().await else { return };
    let mut s = connected_with_three(&h).await;
    // A broker may count a published message a moment later.
    assert_eq!(backlog_becomes(&mut s, 3).await, Some(3));
    let got = claim_n(&mut s, 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    s.settle(&got).await.expect("settle");
    assert_eq!(backlog_becomes(&mut s, 0).await, Some(0));
    h.cleanup().await;
}

/// Instantiates the suite for one harness type.
#[macro_export]
macro_rules! suite {
    ($h:ty) => {
        #[tokio::test]
        async fn claim_then_settle() {
            $crate::claim_then_settle::<$h>().await
        }
        #[tokio::test]
        async fn unsettled_is_redelivered() {
            $crate::unsettled_is_redelivered::<$h>().await
        }
        #[tokio::test]
        async fn empty_claim_waits() {
            $crate::empty_claim_waits::<$h>().await
        }
        #[tokio::test]
        async fn dead_letters_reach_the_target() {
            $crate::dead_letters_reach_the_target::<$h>().await
        }
        #[tokio::test]
        async fn replay_returns_to_the_source() {
            $crate::replay_returns_to_the_source::<$h>().await
        }
        #[tokio::test]
        async fn backlog_counts_waiting_messages() {
            $crate::backlog_counts_waiting_messages::<$h>().await
        }
        #[tokio::test]
        async fn two_consumers_share_without_duplicates() {
            $crate::two_consumers_share_without_duplicates::<$h>().await
        }
    };
}
