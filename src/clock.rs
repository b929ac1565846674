//! Where kedge reads the time of day.
//!
//! Every decision that depends on the wall clock — which cron fires are
//! due, which runs are due, how long a batch has waited, a retry's backoff,
//! a run's deadline — asks a [`Clock`] instead of calling `Utc::now()`.
//! Waiting is always done on tokio's timer (`tokio::time::sleep`), so:
//!
//! - [`Clock::system`] is the real wall clock (the daemon, the CLI);
//! - [`Clock::paused_at`] starts at a chosen instant and moves with tokio's
//!   clock. Under `tokio::time::pause()` it stands still until the test
//!   advances tokio's time, and every sleep of the code under test moves
//!   with it: a simulated week of cron fires runs in milliseconds.

use chrono::{DateTime, Utc};

/// The source of "now". Cheap to clone; clones read the same time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// `None`: the system clock. `Some((at, when))`: `at` was the time when
    /// tokio's clock read `when`.
    origin: Option<(DateTime<Utc>, tokio::time::Instant)>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { origin: None }
    }

    /// A clock that reads `at` now and then moves with tokio's clock (for
    /// tests on paused time). Must be called inside a tokio runtime.
    pub fn paused_at(at: DateTime<Utc>) -> Clock {
        Clock {
            origin: Some((at, tokio::time::Instant::now())),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match self.origin {
            None => Utc::now(),
            Some((at, when)) => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(when);
                at + chrono::TimeDelta::from_std(elapsed).unwrap_or(chrono::TimeDelta::MAX)
            }
        }
    }

    /// Milliseconds since the Unix epoch, now (the store's time unit).
    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// How long from now until `t` (zero when `t` has passed).
    pub fn until(&self, t: DateTime<Utc>) -> std::time::Duration {
        (t - self.now()).to_std().unwrap_or_default()
    }

    /// Sleeps on tokio's timer until this clock reads `t` or later.
    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        tokio::time::sleep(self.until(t)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_only_with_tokio_time() {
        let start = DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z")
            .unwrap()
            .to_utc();
        let clock = Clock::paused_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + chrono::TimeDelta::hours(1));
        let later = start + chrono::TimeDelta::days(7);
        clock.sleep_until(later).await;
        assert_eq!(clock.now(), later, "a week's sleep on paused time");
        assert_eq!(clock.until(start), Duration::ZERO);
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        let before = Utc::now();
        let now = Clock::system().now();
        assert!(now >= before && now <= Utc::now());
    }
}
