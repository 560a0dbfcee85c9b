//! Holding: a failed attempt that another attempt could fix, but for which
//! no endpoint can serve yet (every pod booting or draining, the cluster
//! empty, Envoy's endpoints all refusing connections), waits here until one
//! can. Then mulligan says "retry" and Envoy sends the whole request again
//! through the route.
//!
//! "Can serve" is the registry's word (ready, not penalised) confirmed by a
//! TCP connect, so an endpoint that comes back is noticed within one
//! `interval` even with no probe path configured. Probes are shared: an
//! endpoint is connected to at most once per `interval`, however many
//! requests wait on it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};

use crate::{
    endpoints::{Cluster, Registry},
    metrics::Metrics,
};

/// Why a hold ended without an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unheld {
    /// The deadline came first.
    TooLong,
    /// `rescue.max_held` requests are held already.
    Limit,
}

/// Every request held right now, and what the probes last saw.
#[derive(Debug)]
pub struct Holds {
    registry: Arc<Registry>,
    metrics: Metrics,
    held: AtomicUsize,
    max_held: usize,
    interval: Duration,
    /// Last connect result per endpoint, and when it was taken.
    seen: Mutex<HashMap<SocketAddr, (Instant, bool)>>,
}

impl Holds {
    pub fn new(
        registry: Arc<Registry>,
        metrics: Metrics,
        max_held: usize,
        interval: Duration,
    ) -> Self {
        Self {
            registry,
            metrics,
            held: AtomicUsize::new(0),
            max_held,
            interval: interval.max(Duration::from_millis(1)),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Requests held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether an endpoint of `cluster` other than `except` is usable now
    /// (by the registry alone: no probe).
    pub fn has_other(&self, cluster: &Cluster, except: Option<SocketAddr>) -> bool {
        let now = self.registry.now_ms();
        cluster
            .endpoints
            .iter()
            .any(|e| Some(e.addr) != except && e.usable(now))
    }

    /// Waits until an endpoint of cluster `name` can serve, then `settle`
    /// more (time for Envoy's own view to catch up), or until `deadline`.
    /// The cluster is read afresh on every wake: an endpoint discovered
    /// after the hold began serves it too.
    pub async fn wait(
        &self,
        name: Option<&str>,
        settle: Duration,
        deadline: Instant,
    ) -> Result<(), Unheld> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Unheld::Limit);
        }
        let _held = Held(self);
        self.metrics.held(1.0);
        let mut changes = self.registry.subscribe();
        let mut members = self.registry.membership();
        loop {
            changes.borrow_and_update();
            members.borrow_and_update();
            if self.reachable_in(name).await {
                let ready = Instant::now() + settle;
                tokio::time::sleep_until(ready.min(deadline)).await;
                return if ready <= deadline {
                    Ok(())
                } else {
                    Err(Unheld::TooLong)
                };
            }
            let tick = (Instant::now() + self.interval).min(deadline);
            tokio::select! {
                _ = changes.changed() => {}
                _ = members.changed() => {}
                _ = tokio::time::sleep_until(tick) => {}
            }
            if Instant::now() >= deadline {
                return Err(Unheld::TooLong);
            }
        }
    }

    async fn reachable_in(&self, name: Option<&str>) -> bool {
        match self.registry.cluster(name) {
            Some(cluster) => self.reachable(&cluster).await,
            None => false,
        }
    }

    /// Whether some usable endpoint of `cluster` accepts a connection.
    async fn reachable(&self, cluster: &Cluster) -> bool {
        let now = self.registry.now_ms();
        let usable: Vec<SocketAddr> = cluster
            .endpoints
            .iter()
            .filter(|e| e.usable(now))
            .map(|e| e.addr)
            .collect();
        let probes = usable.into_iter().map(|a| self.connects(a));
        futures::future::join_all(probes)
            .await
            .into_iter()
            .any(|ok| ok)
    }

    /// A connect to `addr`, or the result of one taken less than an
    /// `interval` ago.
    async fn connects(&self, addr: SocketAddr) -> bool {
        if let Some(ok) = self.recent(addr) {
            return ok;
        }
        let ok = matches!(
            tokio::time::timeout(self.interval, TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, (Instant::now(), ok));
        ok
    }

    fn recent(&self, addr: SocketAddr) -> Option<bool> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 4096 {
            // Addresses of pods long gone: start over.
            seen.clear();
        }
        seen.get(&addr)
            .filter(|(at, _)| at.elapsed() < self.interval)
            .map(|(_, ok)| *ok)
    }
}

/// Releases a held request's place, however the hold ends.
struct Held<'a>(&'a Holds);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.held(-1.0);
    }
}
