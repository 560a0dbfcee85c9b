//! The retry budget shared by every stream.
//!
//! Retries that may add load on the apps are at most `ratio` of the
//! failed attempts judged, plus `min_per_second`, over a sliding window. In
//! a total outage that caps the extra load mulligan asks Envoy to put on the
//! upstreams at `ratio` (plus a trickle), so retries cannot turn into a
//! storm.
//!
//! The window is a ring of one-second slots of atomic counters: recording a
//! request is one atomic add on the hot path, and no lock is ever taken.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

// tokio's clock: the same as std's in a release build, and one a test can
// pause and advance.
use tokio::time::Instant;

#[derive(Debug)]
struct Slot {
    /// The second (since `start`) this slot counts for.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The longest window kept, in one-second slots.
const MAX_WINDOW_SECS: u64 = 3600;

#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: f64,
    slots: Box<[Slot]>,
    start: Instant,
}

impl Budget {
    pub(crate) fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        // One slot per second: a window from the config file must not turn
        // into an allocation the size of the address space. Past an hour it
        // is no longer a retry budget.
        let n = window.as_secs().clamp(1, MAX_WINDOW_SECS) as usize;
        Self {
            ratio: ratio.max(0.0),
            min_per_second: f64::from(min_per_second),
            slots: (0..n)
                .map(|_| Slot {
                    second: AtomicU64::new(u64::MAX),
                    requests: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                })
                .collect(),
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// The slot for `second`, cleared first if it still holds an old second.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % self.slots.len() as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Counts racing with the reset may be lost: the budget is an
            // estimate, and an off-by-one never matters.
            slot.requests.store(0, Ordering::Release);
            slot.retries.store(0, Ordering::Release);
        }
        slot
    }

    /// Records one failed attempt judged.
    pub fn deposit(&self) {
        self.slot(self.now())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn try_withdraw(&self) -> bool {
        let now = self.now();
        let oldest = now.saturating_sub(self.slots.len() as u64 - 1);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in self.slots.iter() {
            let s = slot.second.load(Ordering::Acquire);
            if s != u64::MAX && s >= oldest && s <= now {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.ratio * requests as f64 + self.min_per_second * self.slots.len() as f64;
        if (retries as f64) < allowed {
            self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_window_is_capped() {
        let b = Budget::new(0.2, 1, Duration::from_secs(100_000_000_000));
        assert_eq!(b.slots.len(), MAX_WINDOW_SECS as usize);
        assert!(b.try_withdraw());
    }

    #[test]
    fn ratio_plus_floor_caps_retries() {
        let b = Budget::new(0.2, 1, Duration::from_secs(10));
        for _ in 0..1000 {
            b.deposit();
        }
        // 20% of 1000 plus 1/s over 10 s.
        let granted = (0..1000).filter(|_| b.try_withdraw()).count();
        assert_eq!(granted, 210);
    }

    #[test]
    fn zero_budget_grants_nothing() {
        let b = Budget::new(0.0, 0, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        assert!(!b.try_withdraw());
    }

    /// Guard: the window's lower bound in `try_withdraw` (`s >= oldest`).
    #[tokio::test(start_paused = true)]
    async fn spent_retries_come_back_as_the_window_slides_past_them() {
        let b = Budget::new(0.0, 1, Duration::from_secs(10));
        assert_eq!((0..20).filter(|_| b.try_withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            !b.try_withdraw(),
            "9 s on, the 10 retries are still in the window"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| b.try_withdraw()).count(), 10);
    }

    /// Guard: the slot reset in `slot` (a slot reused for a later second
    /// starts from zero).
    #[tokio::test(start_paused = true)]
    async fn a_reused_slot_forgets_its_old_second() {
        let b = Budget::new(0.0, 1, Duration::from_secs(2));
        assert_eq!((0..10).filter(|_| b.try_withdraw()).count(), 2);
        // Two seconds on, second 2 reuses second 0's slot: the retries
        // counted there are out of the window.
        tokio::time::advance(Duration::from_secs(2)).await;
        b.deposit();
        assert_eq!((0..10).filter(|_| b.try_withdraw()).count(), 2);
    }

    #[test]
    fn floor_allows_retries_with_no_traffic() {
        let b = Budget::new(0.2, 10, Duration::from_secs(10));
        assert_eq!((0..500).filter(|_| b.try_withdraw()).count(), 100);
    }
}
