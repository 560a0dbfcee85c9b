//! mulligan's own zero-downtime shutdown.
//!
//! On SIGTERM mulligan stops being ready (so Kubernetes and Envoy's health
//! checks move new streams elsewhere), refuses new ext_proc streams (Envoy's
//! `failure_mode_allow` passes those requests through untouched), and waits
//! for the streams in flight to finish, up to the drain timeout.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::{watch, Notify};

/// Shared drain state: readiness, the drain signal and in-flight streams.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    /// Discovery sources that have not completed their first sync; mulligan
    /// is not ready while any has not.
    unsynced: AtomicUsize,
    in_flight: AtomicUsize,
    idle: Notify,
    signal: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            unsynced: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            signal: watch::channel(false).0,
        })
    }

    /// Ready for new streams: not draining.
    pub(crate) fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }

    /// Ready to be sent traffic (`/readyz`): not draining, and every
    /// discovery source has its first view of the endpoints.
    pub(crate) fn is_serving(&self) -> bool {
        self.is_ready() && self.unsynced.load(Ordering::Acquire) == 0
    }

    /// A discovery source starts; readiness waits for it.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn hold_readiness(&self) {
        self.unsynced.fetch_add(1, Ordering::AcqRel);
    }

    /// That source has synced once.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn release_readiness(&self) {
        let _ = self
            .unsynced
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Starts draining; idempotent.
    pub(crate) fn begin(&self) {
        self.draining.store(true, Ordering::Release);
        self.signal.send_replace(true);
    }

    /// Resolves once [`Drain::begin`] has been called.
    pub(crate) async fn signaled(&self) {
        let mut rx = self.signal.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Admits a new stream, or `None` when draining.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<StreamGuard> {
        if !self.is_ready() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(StreamGuard {
            drain: Arc::clone(self),
        })
    }

    /// Streams admitted and not yet finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves when no admitted stream is left.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by each ext_proc stream; dropping it (however the stream ends)
/// releases the stream's place.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    drain: Arc<Drain>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.drain.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_refuses_new_streams_and_waits_for_old_ones() {
        let drain = Drain::new();
        let guard = drain.admit().expect("ready drain admits");
        drain.begin();
        assert!(!drain.is_ready());
        assert!(drain.admit().is_none(), "draining must refuse new streams");
        let waiter = tokio::spawn({
            let drain = Arc::clone(&drain);
            async move { drain.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one stream still in flight");
        drop(guard);
        waiter.await.expect("idle resolves once the stream ends");
        assert_eq!(drain.in_flight(), 0);
    }
}
