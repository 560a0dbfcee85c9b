//! Exponential backoff with full jitter between replays.
//!
//! The first replay goes out at once: the failure it answers was one
//! endpoint's, and another endpoint is as likely as ever to serve. Later
//! replays wait a random time in `[0, min(max, base * 2^(n-1))]`, so a burst
//! of failures spreads out instead of arriving together.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before replay number `replay` (1 = the first replay).
    pub(crate) fn delay(&self, replay: u32) -> Duration {
        if replay <= 1 || self.base.is_zero() {
            return Duration::ZERO;
        }
        let exp = (replay - 2).min(20);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_replay_is_immediate_and_later_ones_are_bounded() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        assert_eq!(b.delay(1), Duration::ZERO);
        for _ in 0..1000 {
            assert!(b.delay(2) <= Duration::from_millis(10));
            assert!(b.delay(3) <= Duration::from_millis(20));
            assert!(b.delay(30) <= Duration::from_millis(50));
        }
        // Full jitter: not always the ceiling.
        let spread: std::collections::HashSet<_> = (0..100).map(|_| b.delay(4)).collect();
        assert!(spread.len() > 10);
    }
}
