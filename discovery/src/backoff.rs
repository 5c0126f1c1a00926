//! Capped exponential backoff with jitter for the etcd retry loops.
//!
//! Membership and registration both retry forever while etcd is away; the cap keeps
//! catch-up fast once it returns, and the jitter spreads the reconnects of a whole
//! cluster that lost etcd at the same moment.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delays that double from `initial` up to `max`, each shortened by up to a quarter
/// at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first delay is `initial` and whose delays never pass `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
            failures: 0,
        }
    }

    /// The delay to wait now; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        // A fresh `RandomState` is randomly keyed, which is all the randomness jitter needs.
        let random = RandomState::new().hash_one(0u8);
        let quarter = delay / 4;
        let jitter = quarter.mul_f64((random % 1024) as f64 / 1024.0);
        delay - jitter
    }

    /// Starts over from the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
        self.failures = 0;
    }

    /// Delays handed out since the last reset: the failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the latest failure is worth a warning: the 1st, 2nd, 4th, 8th... in a
    /// row, so an outage of minutes logs a handful of lines, not one per retry.
    pub fn should_warn(&self) -> bool {
        self.failures.is_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        let bounds = [100, 200, 400, 800, 1000, 1000];
        for (delay, bound) in delays.iter().zip(bounds) {
            let bound = Duration::from_millis(bound);
            assert!(
                *delay <= bound && *delay >= bound * 3 / 4,
                "{delay:?} vs {bound:?}"
            );
        }
        assert_eq!(backoff.failures(), 6);
        assert!(!backoff.should_warn());
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        assert!(backoff.should_warn());
    }
}
