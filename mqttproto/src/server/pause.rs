//! How long a broker's owner may stop taking input for one connection's writer that fell
//! behind (both drivers): a slow reader then slows the publishers down through TCP instead of
//! overflowing, but only for a bounded share of the broker's time.

use std::time::{Duration, Instant};

/// The longest the owner waits at a time for a writer that fell behind.
pub(crate) const BACKLOG_WAIT: Duration = Duration::from_millis(100);
/// A connection's pause budget at first, and at most.
pub(crate) const PAUSE_BURST: Duration = Duration::from_secs(1);
/// A connection earns one unit of pause per `PAUSE_SHARE` units of time: at most a tenth of
/// the broker's time goes to waiting for one slow reader.
pub(crate) const PAUSE_SHARE: u32 = 10;

/// A connection's budget for holding everyone else up: [`PAUSE_BURST`] at first, then refilled
/// at one [`PAUSE_SHARE`]th of the time that passes, never above [`PAUSE_BURST`].
#[derive(Debug)]
pub(crate) struct PauseCredit {
    left: Duration,
    at: Instant,
}

impl PauseCredit {
    /// A full budget.
    pub(crate) fn new(now: Instant) -> PauseCredit {
        PauseCredit {
            left: PAUSE_BURST,
            at: now,
        }
    }

    /// Adds what was earned since the last refill.
    pub(crate) fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at) / PAUSE_SHARE;
        self.left = (self.left + earned).min(PAUSE_BURST);
        self.at = now;
    }

    /// What is left.
    pub(crate) fn left(&self) -> Duration {
        self.left
    }

    /// How long the owner may wait now: at most [`BACKLOG_WAIT`], at most what is left.
    pub(crate) fn next_wait(&self) -> Duration {
        BACKLOG_WAIT.min(self.left)
    }

    /// Takes `waited` off the budget.
    pub(crate) fn spend(&mut self, waited: Duration) {
        self.left = self.left.saturating_sub(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pause budget of one connection: 1 s at first, spent by waits, earned back at a
    /// tenth of the time that passes, never above 1 s.
    #[test]
    fn pause_credit_is_bounded_and_refills_at_a_tenth() {
        let t0 = Instant::now();
        let mut c = PauseCredit::new(t0);
        c.spend(Duration::from_millis(1500));
        assert_eq!(c.left(), Duration::ZERO);
        c.refill(t0 + Duration::from_secs(5));
        assert_eq!(c.left(), Duration::from_millis(500));
        c.refill(t0 + Duration::from_secs(60));
        assert_eq!(c.left(), PAUSE_BURST);
    }
}
