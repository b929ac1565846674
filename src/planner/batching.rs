//! Batching: which waiting messages of a job go into one run. Pure.
//!
//! A batch closes when it holds `max_messages`, when adding the next
//! message would take its payload over the limit (a ConfigMap holds 1 MiB,
//! so a batch that would exceed it is split), or when its oldest message
//! has waited `max_wait` — whichever comes first. A message larger than
//! the limit on its own still runs, alone.

use std::ops::Range;
use std::time::Duration;

/// A waiting message, as the batcher sees it (in launch order: earliest
/// deadline, then oldest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub payload_bytes: usize,
    /// How long it has waited.
    pub waited: Duration,
}

/// The batches to launch now, as ranges of `waiting`; and, when messages
/// are left waiting, how long until the oldest of them reaches `max_wait`.
pub fn batches(
    waiting: &[Waiting],
    max_messages: usize,
    max_bytes: usize,
    max_wait: Duration,
) -> (Vec<Range<usize>>, Option<Duration>) {
    let max_messages = max_messages.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < waiting.len() {
        let mut end = start;
        let mut bytes = 0usize;
        let mut full = false;
        while end < waiting.len() && end - start < max_messages {
            let b = waiting[end].payload_bytes;
            if end > start && bytes + b > max_bytes {
                full = true;
                break;
            }
            bytes += b;
            end += 1;
        }
        full |= end - start == max_messages;
        let oldest = waiting[start..end]
            .iter()
            .map(|w| w.waited)
            .max()
            .unwrap_or_default();
        if full || oldest >= max_wait {
            out.push(start..end);
            start = end;
        } else {
            return (out, Some(max_wait - oldest));
        }
    }
    (out, None)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // lists of one batch are meant
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(bytes: usize, waited_ms: u64) -> Waiting {
        Waiting {
            payload_bytes: bytes,
            waited: Duration::from_millis(waited_ms),
        }
    }

    const MIB: usize = 1024 * 1024;
    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn a_full_batch_goes_at_once_and_the_rest_waits() {
        let waiting: Vec<_> = (0..7).map(|_| w(10, 100)).collect();
        let (b, next) = batches(&waiting, 3, MIB, WAIT);
        assert_eq!(b, vec![0..3, 3..6]);
        assert_eq!(next, Some(Duration::from_millis(1900)));
    }

    #[test]
    fn a_partial_batch_goes_when_its_oldest_waited_max_wait() {
        let waiting = vec![w(10, 2500), w(10, 10)];
        assert_eq!(batches(&waiting, 5, MIB, WAIT), (vec![0..2], None));
    }

    #[test]
    fn a_batch_over_the_byte_limit_is_split() {
        let waiting = vec![w(600 * 1024, 0), w(600 * 1024, 0), w(100, 0)];
        let (b, next) = batches(&waiting, 10, MIB, WAIT);
        assert_eq!(b, vec![0..1]);
        assert_eq!(next, Some(WAIT));
        // A single message over the limit still runs, alone.
        let (b, _) = batches(&[w(2 * MIB, 0), w(1, 0)], 10, MIB, WAIT);
        assert_eq!(b, vec![0..1]);
    }

    proptest! {
        #[test]
        fn batches_respect_every_limit(
            sizes in proptest::collection::vec((0usize..400_000, 0u64..5_000), 0..60),
            max_messages in 1usize..20,
        ) {
            let waiting: Vec<_> = sizes.iter().map(|(b, t)| w(*b, *t)).collect();
            let (b, next) = batches(&waiting, max_messages, MIB, WAIT);
            let mut expect_start = 0;
            for r in &b {
                prop_assert_eq!(r.start, expect_start, "batches are contiguous, in order");
                prop_assert!(!r.is_empty());
                prop_assert!(r.len() <= max_messages);
                let bytes: usize = waiting[r.clone()].iter().map(|w| w.payload_bytes).sum();
                prop_assert!(bytes <= MIB || r.len() == 1);
                expect_start = r.end;
            }
            // Whatever is left waits, and says for how long.
            prop_assert_eq!(next.is_some(), expect_start < waiting.len());
        }
    }
}
